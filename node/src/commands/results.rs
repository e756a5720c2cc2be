//! `formic results`: collect every validated output of a project, with the signed evidence that proves it.

use std::process::ExitCode;

use clap::Args;

use crate::cli::GlobalArgs;

#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// The ProjectId printed by `formic publish`.
    pub project: Option<String>,
}

pub fn run(_global: &GlobalArgs, _args: ResultsArgs) -> anyhow::Result<ExitCode> {
    super::not_yet(
        "results",
        "collecting results needs the serverless computing layer",
    )
}
