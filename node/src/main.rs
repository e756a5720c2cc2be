//! `formic`: the one binary for all three of Formic's users.
//!
//! Volunteers run `formic node`; project owners run `formic publish`;
//! researchers run `formic results`. This file only parses the command line,
//! sets up logging and hands off to `formic_node::commands`; everything with
//! behaviour lives in the library so tests can drive it without a process.

use std::process::ExitCode;

use clap::Parser;
use formic_node::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo runs a dozen nodes in one process: their routine info lines
    // would bury its progress bar and summary, so it defaults to warnings.
    let default_level = match cli.command {
        formic_node::cli::Command::Demo(_) => Some("warn"),
        _ => None,
    };
    if let Err(err) = formic_node::logging::init(cli.global.log_level.as_deref().or(default_level))
    {
        eprintln!("formic: could not set up logging: {err:#}");
        return ExitCode::from(1);
    }
    match formic_node::commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("formic: error: {}", describe(&err));
            ExitCode::from(1)
        }
    }
}

/// The whole context chain on one line — what we tried, and what failed
/// under it — which is what a user needs to act.
fn describe(err: &anyhow::Error) -> String {
    formic_node::error_report::error_chain(err.as_ref())
}
