//! `formic status`: show what the local node is doing: peers, topics, blob store, governor, running units.

use std::process::ExitCode;

use clap::Args;

use crate::cli::GlobalArgs;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_global: &GlobalArgs, _args: StatusArgs) -> anyhow::Result<ExitCode> {
    super::not_yet(
        "status",
        "status needs the control API of the peer-to-peer layer",
    )
}
