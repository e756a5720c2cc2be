//! `formic-work-units`: the deterministic, metered WebAssembly sandbox that
//! runs Formic work units.
//!
//! An *app* is a WASI preview 1 command module (binary or WAT). A *unit* is
//! one run of an app on one input: stdin carries the input, stdout is the
//! result, and the same (app, input, seed) gives the same output bytes and
//! the same fuel figure on every host running the same
//! [`ENGINE_VERSION`]. See README.md for the guest ABI.
//!
//! ```no_run
//! use formic_work_units::{Sandbox, SandboxConfig, SandboxLimits, apps};
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! let app = sandbox.compile(apps::PRIMES_WAT.as_bytes())?;
//! let out = sandbox.run(&app, b"1 100", [0; 32], &SandboxLimits::default(), None)?;
//! assert_eq!(out.output, b"25\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod apps;
mod cache;
mod control;
mod driver;
mod error;
mod host;
pub mod limits;
pub mod nan_rewrite;
mod sandbox;

pub use control::UnitControl;
pub use driver::FUEL_YIELD_INTERVAL;
pub use error::{CompileError, UnitError};
pub use host::{FIXED_MONOTONIC_NANOS, FIXED_WALL_CLOCK_SECS, RANDOM_CONTEXT, STDERR_CAP};
pub use limits::{ParseError, SandboxLimits, parse_duration, parse_fuel, parse_size};
#[doc(hidden)]
pub use sandbox::EngineTuning;
pub use sandbox::{
    App, MAX_WASM_STACK, NanCanonicalization, Sandbox, SandboxConfig, SandboxError, UnitOutcome,
};

/// The engine that produced every fuel figure and compiled artifact. Fuel
/// is comparable only between hosts reporting the same version, so results
/// carry it.
///
/// The suffix names the NaN canonicalization rewrite (`nan_rewrite.rs`):
/// it decides which instructions a module runs, so fuel figures of
/// different rewrite versions differ, and results computed before the
/// rewrite (`"wasmtime-48.0.8"`) are never counted with results after it.
pub const ENGINE_VERSION: &str = "wasmtime-48.0.8+nan-observed.1";

/// The AppId of an app given as wasm or WAT, without compiling it: BLAKE3 of
/// the wasm binary. `None` when WAT text does not parse.
pub fn app_id(bytes: &[u8]) -> Option<[u8; 32]> {
    if bytes.starts_with(b"\0asm") {
        Some(*blake3::hash(bytes).as_bytes())
    } else {
        wat::parse_bytes(bytes)
            .ok()
            .map(|wasm| *blake3::hash(&wasm).as_bytes())
    }
}
