//! Typed errors, one enum per operation: compiling an app and running a unit.
//!
//! A unit error is an *outcome* of the unit, not a fault of the host: the
//! caller reports it (and never compares it as a result, since e.g. the
//! exact point of a stack overflow differs between hosts).

use std::time::Duration;

use thiserror::Error;

/// Why an app could not be turned into a runnable [`crate::App`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompileError {
    /// Not valid WebAssembly (binary or text), or rejected by the sandbox's
    /// feature set (threads, memory64, multiple memories, …).
    #[error("invalid module: {reason}")]
    InvalidModule {
        /// The parser's or wasmtime's message.
        reason: String,
    },
    /// The module imports something outside WASI preview 1.
    #[error("forbidden import {module}::{name}: only wasi_snapshot_preview1 functions are allowed")]
    ForbiddenImport {
        /// The import's module name.
        module: String,
        /// The import's field name.
        name: String,
    },
}

/// Why a unit ended without a result.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    /// The `_start` call used its whole fuel budget.
    #[error("fuel limit exhausted (budget {budget})")]
    FuelExhausted {
        /// The budget, in fuel units.
        budget: u64,
    },
    /// The guest tried to grow linear memory beyond the limit (bytes).
    #[error("memory limit exceeded (limit {limit} bytes)")]
    MemoryLimit {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The guest wrote more than the output limit (bytes) to stdout.
    #[error("output limit exceeded (limit {limit} bytes)")]
    OutputTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The unit ran longer than the wall-clock limit (paused time excluded).
    #[error("wall-clock limit exceeded (limit {limit:?})")]
    Timeout {
        /// The limit.
        limit: Duration,
    },
    /// The unit was cancelled through its [`crate::UnitControl`].
    #[error("cancelled")]
    Cancelled,
    /// The guest trapped (unreachable, out-of-bounds access, stack overflow,
    /// division by zero, …).
    #[error("trap: {message}")]
    Trap {
        /// wasmtime's description of the trap.
        message: String,
    },
    /// The guest called `proc_exit` with a non-zero status.
    #[error("exited with status {code}")]
    Exit {
        /// The status the guest passed to `proc_exit`.
        code: i32,
    },
    /// The module could not be instantiated or its `_start` has the wrong
    /// type.
    #[error("invalid module: {reason}")]
    InvalidModule {
        /// wasmtime's message.
        reason: String,
    },
    /// The module does not export the named function (`_start`).
    #[error("missing export {name}")]
    MissingExport {
        /// The export's name.
        name: String,
    },
    /// This host already runs as many units as its sandbox has slots: a
    /// condition of the host, not of the unit, which may run later.
    #[error("the sandbox is full ({reason}); try again later")]
    HostBusy {
        /// Why the host could not take the unit.
        reason: String,
    },
}

impl UnitError {
    /// Whether the error comes from this host's state rather than from the
    /// unit: such a unit is not failed, only not run yet. The limits, traps
    /// and exits recur on any host; `Timeout` (wall clock) and `Cancelled`
    /// depend on the host too, but are the unit's own budget or the
    /// volunteer's decision, and are treated as its failure.
    pub fn is_host_condition(&self) -> bool {
        matches!(self, UnitError::HostBusy { .. })
    }
}
