//! `formic pause`: stop computing on this machine for a while, without stopping the node.
//!
//! Works without the network or a running node: it writes
//! `<data-dir>/paused`, which the node's governor reads on every tick and
//! obeys within a second (running units pause in place).

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::Args;

use super::GlobalArgs;
use crate::governor::pause_file;

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// How long to pause (e.g. 30m, 2h); until `formic resume` when omitted.
    #[arg(long = "for", value_name = "DUR")]
    pub for_duration: Option<String>,
}

pub fn run(global: &GlobalArgs, args: PauseArgs) -> anyhow::Result<ExitCode> {
    let duration = args
        .for_duration
        .as_deref()
        .map(|s| {
            formic_work_units::parse_duration(s)
                .with_context(|| format!("--for {s:?} is not a duration like 30m or 2h"))
        })
        .transpose()?;
    let data_dir = crate::data_dir::resolve(global.data_dir.as_deref())?;
    pause_file::write_pause(&data_dir, duration, SystemTime::now()).context("formic pause")?;
    match (duration, args.for_duration.as_deref()) {
        (Some(_), Some(text)) => println!(
            "Computing paused for {text} (data dir {}); `formic resume` resumes it sooner.",
            data_dir.display()
        ),
        _ => println!(
            "Computing paused until `formic resume` (data dir {}).",
            data_dir.display()
        ),
    }
    println!("Running units pause in place within a second; the node stays connected.");
    Ok(ExitCode::SUCCESS)
}
