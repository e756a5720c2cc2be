//! `formic resume`: resume computing after `formic pause`, by removing
//! `<data-dir>/paused` (works without the network or a running node).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::GlobalArgs;
use crate::governor::pause_file;

#[derive(Debug, Args)]
pub struct ResumeArgs {}

pub fn run(global: &GlobalArgs, _args: ResumeArgs) -> anyhow::Result<ExitCode> {
    let data_dir = crate::data_dir::resolve(global.data_dir.as_deref())?;
    if pause_file::clear_pause(&data_dir).context("formic resume")? {
        println!(
            "Computing resumed (data dir {}); it still waits for the machine to be idle.",
            data_dir.display()
        );
    } else {
        println!(
            "Computing was not paused (data dir {}); nothing to do.",
            data_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
