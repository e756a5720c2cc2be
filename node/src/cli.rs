//! The command-line surface of `formic`: every subcommand, flag and default.
//!
//! Flag names here are a contract with users' scripts: add, never rename.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands;

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
    Node(commands::node::NodeArgs),
    /// Owners: run one work unit locally in the sandbox, exactly as a volunteer would.
    Exec(commands::exec::ExecArgs),
    /// Owners: publish an app and its inputs to the network, signed with your owner key.
    Publish(commands::publish::PublishArgs),
    /// Everyone: show what the local node is doing (peers, governor, running units).
    Status(commands::status::StatusArgs),
    /// Researchers: collect validated results of a project, with the evidence that proves them.
    Results(commands::results::ResultsArgs),
    /// Volunteers: stop computing for a while (or until `formic resume`).
    Pause(commands::pause::PauseArgs),
    /// Volunteers: resume computing after `formic pause`.
    Resume(commands::resume::ResumeArgs),
    /// Everyone: start a whole local network and run a sample project through it end to end.
    Demo(commands::demo::DemoArgs),
    /// Volunteers: install or remove the agent as a systemd user service.
    Service(commands::service::ServiceArgs),
}
