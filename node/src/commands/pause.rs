//! `formic pause`: stop computing on this machine for a while, without stopping the node.

use std::process::ExitCode;

use clap::Args;

use crate::cli::GlobalArgs;

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// How long to pause (e.g. 30m, 2h); until `formic resume` when omitted.
    #[arg(long = "for", value_name = "DUR")]
    pub for_duration: Option<String>,
}

pub fn run(_global: &GlobalArgs, _args: PauseArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("pause", "pausing needs the volunteer agent")
}
