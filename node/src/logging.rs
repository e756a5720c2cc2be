//! Logging: tracing-subscriber writing human-readable lines to stderr.
//!
//! stdout is reserved for command output (PeerIds, unit outputs, `--json`),
//! so scripts can pipe it; everything diagnostic goes to stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` wins when set, so an operator
/// can raise one module's level without touching flags; otherwise the
/// `--log-level` flag applies, defaulting to `info`. Colour only when
/// stderr is a terminal: a journal or a log file gets plain text.
pub fn init(level_flag: Option<&str>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(spec)?,
        _ => EnvFilter::try_new(level_flag.unwrap_or("info"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}
