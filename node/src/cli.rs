//! The command-line surface of `formic`, under its historical path: the
//! types live in `commands`, next to the dispatch that consumes them, so
//! this module depends on `commands` and nothing depends back.

pub use crate::commands::{Cli, Command, GlobalArgs};
