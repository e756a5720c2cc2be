//! `formic demo`: start a whole local network over loopback and run a sample project through it end to end.

use std::process::ExitCode;

use clap::Args;

use crate::cli::GlobalArgs;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of volunteer peers to start.
    #[arg(long, default_value_t = 5)]
    pub peers: usize,
    /// Number of work units in the sample project.
    #[arg(long, default_value_t = 60)]
    pub units: usize,
    /// How many of the peers are saboteurs returning wrong results.
    #[arg(long, default_value_t = 1)]
    pub saboteurs: usize,
}

pub fn run(_global: &GlobalArgs, _args: DemoArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("demo", "the demo needs the serverless computing layer")
}
