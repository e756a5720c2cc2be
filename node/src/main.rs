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
    // A command whose output is piped into a reader that stops early
    // (`formic status | head -1`) ends quietly, as other command-line tools
    // do, instead of panicking in println! on EPIPE. Not for the long-lived
    // commands: an agent must not die because a log reader went away.
    #[cfg(unix)]
    if !matches!(
        cli.command,
        formic_node::cli::Command::Node(_) | formic_node::cli::Command::Demo(_)
    ) {
        // SAFETY: first thing in main, before any other thread exists;
        // restoring SIGPIPE's default disposition touches nothing else.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
