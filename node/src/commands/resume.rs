//! `formic resume`: resume computing after `formic pause`.

use std::process::ExitCode;

use clap::Args;

use crate::cli::GlobalArgs;

#[derive(Debug, Args)]
pub struct ResumeArgs {}

pub fn run(_global: &GlobalArgs, _args: ResumeArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("resume", "resuming needs the volunteer agent")
}
