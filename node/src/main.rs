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
    if let Err(err) = formic_node::logging::init(cli.global.log_level.as_deref()) {
        eprintln!("formic: could not set up logging: {err:#}");
        return ExitCode::from(1);
    }
    match formic_node::commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole anyhow context chain on one line, which is
            // what a user needs to act: what we tried, and what failed under it.
            eprintln!("formic: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
