//! `formic exec`: run one work unit locally in the deterministic sandbox, exactly as a volunteer would.

use std::process::ExitCode;

use clap::Args;

use crate::cli::GlobalArgs;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The app: a WASI command module (.wasm) or its text form (.wat).
    pub app: std::path::PathBuf,
    /// The unit input file, or - for standard input.
    #[arg(long, value_name = "FILE")]
    pub input: String,
}

pub fn run(_global: &GlobalArgs, _args: ExecArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("exec", "the sandbox has not landed")
}
