//! One module per subcommand. Each exposes its clap `Args` and a `run`
//! returning the process exit code; `dispatch` picks one.
//!
//! Exit codes are a contract: 0 success; 1 an error (for `exec`, a unit
//! error; for `demo`, a run that left a unit unvalidated or accepted a
//! wrong result); 2 a command line that clap rejects (its usage error,
//! before any subcommand runs); 3 `results` wrote its folder but not every
//! unit is validated yet ([`results::EXIT_INCOMPLETE`]).

pub mod demo;
pub mod exec;
pub mod join;
pub mod node;
pub mod pause;
pub mod publish;
pub mod results;
pub mod resume;
pub mod service;
pub mod status;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Node(args) => node::run(&global, args),
        Command::Exec(args) => exec::run(&global, args),
        Command::Publish(args) => publish::run(&global, args),
        Command::Status(args) => status::run(&global, args),
        Command::Results(args) => results::run(&global, args),
        Command::Pause(args) => pause::run(&global, args),
        Command::Resume(args) => resume::run(&global, args),
        Command::Demo(args) => demo::run(&global, args),
        Command::Service(args) => service::run(&global, args),
    }
}
