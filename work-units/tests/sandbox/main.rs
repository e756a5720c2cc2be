//! Integration tests of the sandbox: sample apps against independent Rust
//! reference implementations, hostile guests against the limits, pause and
//! resume, and the compiled-module cache. One test binary (with modules)
//! so the wasmtime-heavy link happens once.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apps;
mod cache;
mod control;
mod hostile;
mod nan;
mod nan_differential;
mod pool;

use formic_work_units::{App, Sandbox, SandboxConfig, SandboxLimits, UnitError, UnitOutcome};

pub fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig::default()).expect("sandbox")
}

pub fn compile(sandbox: &Sandbox, wat: &str) -> App {
    sandbox.compile(wat.as_bytes()).expect("compile")
}

/// Small limits so hostile tests finish fast.
pub fn small_limits() -> SandboxLimits {
    SandboxLimits {
        fuel: 50_000_000,
        memory_bytes: 16 << 20,
        max_output_bytes: 64 << 10,
        wall_clock: std::time::Duration::from_secs(20),
    }
}

pub fn run_wat(wat: &str, input: &[u8], limits: &SandboxLimits) -> Result<UnitOutcome, UnitError> {
    let sandbox = sandbox();
    let app = compile(&sandbox, wat);
    sandbox.run(&app, input, [7; 32], limits, None)
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Sandbox>();
    check::<App>();
    check::<formic_work_units::UnitControl>();
    check::<UnitOutcome>();
    check::<UnitError>();
}

/// Fuel and results are comparable only within one engine version: the
/// wasmtime version and the NaN rewrite's version. Changing either (or the
/// rewrite's behaviour, or wasmparser's) must change this string.
#[test]
fn engine_version_is_pinned() {
    assert_eq!(
        formic_work_units::ENGINE_VERSION,
        "wasmtime-48.0.8+nan-observed.1"
    );
}
