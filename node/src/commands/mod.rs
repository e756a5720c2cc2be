//! The command-line surface of `formic` and its dispatch: every
//! subcommand, flag and default, and one module per subcommand, each with
//! its clap `Args` and a `run` returning the process exit code.
//!
//! Flag names here are a contract with users' scripts: add, never rename.
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

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "formic",
    version,
    about = "Formic: a serverless, peer-to-peer volunteer computing network",
    long_about = "Formic: a serverless, peer-to-peer volunteer computing network.\n\n\
Volunteers donate idle CPU with `formic node`. Project owners publish a wasm app \
and its inputs with `formic publish`, then may go offline. Researchers collect \
cross-validated results, with signed proof, using `formic results`.\n\n\
Try `formic demo` to watch a whole local network run a sample project."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where this node keeps its identity, blobs, state and API files.
    /// Defaults to the platform data directory (e.g. ~/.local/share/formic).
    #[arg(long, global = true, env = "FORMIC_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log level or filter (error, warn, info, debug, trace, or a
    /// tracing filter such as `formic_node=debug`). `RUST_LOG` overrides it.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Volunteers: run a peer that joins the network and computes work units on idle CPU.
    Node(node::NodeArgs),
    /// Owners: run one work unit locally in the sandbox, exactly as a volunteer would.
    Exec(exec::ExecArgs),
    /// Owners: publish an app and its inputs to the network, signed with your owner key.
    Publish(publish::PublishArgs),
    /// Everyone: show what the local node is doing (peers, governor, running units).
    Status(status::StatusArgs),
    /// Researchers: collect validated results of a project, with the evidence that proves them.
    Results(results::ResultsArgs),
    /// Volunteers: stop computing for a while (or until `formic resume`).
    Pause(pause::PauseArgs),
    /// Volunteers: resume computing after `formic pause`.
    Resume(resume::ResumeArgs),
    /// Everyone: start a whole local network and run a sample project through it end to end.
    Demo(demo::DemoArgs),
    /// Volunteers: install or remove the agent as a systemd user service.
    Service(service::ServiceArgs),
}

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
