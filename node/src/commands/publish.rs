//! `formic publish`: publish an app (wasm) and its inputs, signed with the owner key, so the network holds them and computes every unit.

use std::process::ExitCode;

use clap::Args;

use crate::cli::GlobalArgs;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The app: a WASI command module (.wasm) or its text form (.wat).
    pub app: std::path::PathBuf,
    /// A directory (one unit per file, in name order, index from 0) or a file (one unit per line).
    #[arg(long, value_name = "PATH")]
    pub inputs: std::path::PathBuf,
}

pub fn run(_global: &GlobalArgs, _args: PublishArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("publish", "publishing needs the serverless computing layer")
}
