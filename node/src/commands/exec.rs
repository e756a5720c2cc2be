//! `formic exec`: run one work unit locally in the deterministic sandbox, exactly as a volunteer would.
//!
//! The unit's output goes to stdout byte for byte, so it can be piped or
//! compared; one summary line (fuel, wall time, BLAKE3 of the output) goes
//! to stderr. Exit 0 on success, 1 on a unit (or compile) error described in
//! words. Compiled modules are cached under `<data dir>/wasm-cache`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use formic_work_units::{ENGINE_VERSION, Sandbox, SandboxConfig, SandboxLimits};

use super::GlobalArgs;
use crate::error_report::Chain;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The app: a WASI command module (.wasm) or its text form (.wat).
    pub app: std::path::PathBuf,
    /// The unit input file, or - for standard input.
    #[arg(long, value_name = "FILE")]
    pub input: String,
    /// Fuel budget for the unit (e.g. 10000000000, 5G, 2.5M).
    #[arg(long, value_name = "N", value_parser = parse_fuel)]
    pub fuel: Option<u64>,
    /// Largest linear memory (e.g. 256MiB, 64M, 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Wall-clock limit (e.g. 30s, 2m, 500ms).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Largest output (e.g. 16MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_output: Option<u64>,
    /// The 32-byte unit seed for `random_get`, as 64 hex digits. Default:
    /// BLAKE3(AppId ‖ input).
    #[arg(long, value_name = "HEX", value_parser = parse_seed)]
    pub seed: Option<[u8; 32]>,
}

fn parse_fuel(s: &str) -> Result<u64, String> {
    formic_work_units::parse_fuel(s).map_err(|e| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    formic_work_units::parse_size(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    formic_work_units::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_seed(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return Err("expected 64 hex digits".to_owned());
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| "expected 64 hex digits".to_owned())?;
    }
    Ok(seed)
}

/// The default seed: BLAKE3(AppId ‖ input), so `exec` is reproducible and
/// different inputs get different random streams.
fn default_seed(app_id: &[u8; 32], input: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(app_id);
    h.update(input);
    *h.finalize().as_bytes()
}

pub fn run(global: &GlobalArgs, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let app_bytes = std::fs::read(&args.app)
        .with_context(|| format!("cannot read app {}", args.app.display()))?;
    let input = if args.input == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the input from standard input")?;
        buf
    } else {
        std::fs::read(&args.input).with_context(|| format!("cannot read input {}", args.input))?
    };
    let defaults = SandboxLimits::default();
    let limits = SandboxLimits {
        fuel: args.fuel.unwrap_or(defaults.fuel),
        memory_bytes: args.memory.unwrap_or(defaults.memory_bytes),
        max_output_bytes: args.max_output.unwrap_or(defaults.max_output_bytes),
        wall_clock: args.timeout.unwrap_or(defaults.wall_clock),
    };

    // A cache that cannot be placed only costs a compile, so fall back to
    // none rather than failing.
    let cache_dir: Option<PathBuf> = match crate::data_dir::resolve(global.data_dir.as_deref()) {
        Ok(dir) => Some(dir.join("wasm-cache")),
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "no data directory; compiling without a cache");
            None
        }
    };
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir,
        ..SandboxConfig::default()
    })?;
    let app = match sandbox.compile(&app_bytes) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("formic exec: {}: {e}", args.app.display());
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(why) = app.nan_fallback_reason() {
        eprintln!(
            "formic exec: the NaN rewrite cannot handle this app ({why}); its floats are canonicalized after every operation instead (same results, slower)"
        );
    }
    let seed = args.seed.unwrap_or_else(|| default_seed(&app.id(), &input));
    let (result, guest_stderr) = sandbox.run_with_stderr(&app, &input, seed, &limits, None);
    // The guest's own diagnostics first, so the summary stays the last line.
    if !guest_stderr.is_empty() {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(&guest_stderr);
        if !guest_stderr.ends_with(b"\n") {
            let _ = stderr.write_all(b"\n");
        }
    }
    match result {
        Ok(outcome) => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&outcome.output)
                .and_then(|()| stdout.flush())
                .context("cannot write the unit output")?;
            eprintln!(
                "formic exec: ok fuel={} wall={:.3}s output={}B blake3={} engine={ENGINE_VERSION} nan={}",
                outcome.fuel_used,
                outcome.wall_time.as_secs_f64(),
                outcome.output.len(),
                blake3::hash(&outcome.output).to_hex(),
                outcome.nan,
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("formic exec: unit failed: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(parse_seed(&hex).map(|s| s[31]), Ok(0xff));
        assert!(parse_seed("abc").is_err());
        assert!(parse_seed(&"zz".repeat(32)).is_err());
        assert!(parse_seed(&"é".repeat(32)).is_err());
        assert_ne!(default_seed(&[0; 32], b"a"), default_seed(&[0; 32], b"b"));
    }
}
