//! The host side of one running unit: the per-store state and the WASI
//! preview 1 functions the sandbox implements itself instead of taking them
//! from `wasmtime-wasi`.
//!
//! `wasmtime-wasi` provides the bulk of preview 1 (stdin, args, environment,
//! the file-descriptor table, clocks through our fixed clock objects). Four
//! functions are shadowed here because the stock behaviour is either not
//! deterministic or does not let a limit end the unit with a precise error:
//!
//! * `fd_write` — the unit's output must stop *with an error* at the output
//!   cap. The stock implementation over `MemoryOutputPipe` reports the pipe
//!   as closed once full, so a guest that ignores write errors would spin
//!   until its fuel ran out and the unit would end as `FuelExhausted` instead
//!   of `OutputTooLarge`. It also writes only the first non-empty iovec per
//!   call, which is legal but surprising. Here stdout is a bounded buffer
//!   that traps at the cap and stderr a bounded buffer that silently drops
//!   the excess (it is diagnostics, never part of the result).
//! * `random_get` — a BLAKE3 extendable-output stream keyed by the unit seed,
//!   so the stream is fixed by this crate and not by whatever RNG a future
//!   `wasmtime-wasi` chooses.
//! * `poll_oneoff` — the stock one sleeps on the real clock for clock
//!   subscriptions; that both wastes a volunteer's time and leaks real time
//!   into the guest. The stub reports every subscription as ready at once.
//! * the clocks are not shadowed; `wasmtime-wasi` is handed clock objects
//!   that always return the same instant (see [`FixedWallClock`]).

use std::time::Duration;

use wasmtime::{Caller, Extern, Linker, ResourceLimiter, StoreLimits};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// Seconds since the Unix epoch that the guest's wall clock always reads:
/// 2000-01-01T00:00:00Z. Any constant works; a plausible date keeps guests
/// that sanity-check the time from failing.
pub const FIXED_WALL_CLOCK_SECS: u64 = 946_684_800;

/// Nanoseconds the guest's monotonic clock always reads.
pub const FIXED_MONOTONIC_NANOS: u64 = 0;

/// Domain-separation context for the `random_get` stream. The stream is
/// `BLAKE3-XOF(key = unit seed, input = RANDOM_CONTEXT)`, read sequentially
/// across all `random_get` calls of a unit. Changing it changes every result
/// that uses randomness, so it is versioned.
pub const RANDOM_CONTEXT: &[u8] = b"formic.random_get.v1";

/// Bytes of stderr kept for diagnostics; the rest is dropped silently.
pub const STDERR_CAP: usize = 64 * 1024;

const MODULE: &str = "wasi_snapshot_preview1";

// WASI preview 1 errno values used by the shadowed functions.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

/// A wall clock stuck at [`FIXED_WALL_CLOCK_SECS`].
pub(crate) struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_secs(FIXED_WALL_CLOCK_SECS)
    }
}

/// A monotonic clock stuck at [`FIXED_MONOTONIC_NANOS`].
pub(crate) struct FixedMonotonicClock;

impl HostMonotonicClock for FixedMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        FIXED_MONOTONIC_NANOS
    }
}

/// Wraps wasmtime's [`StoreLimits`] to remember *why* a grow failed, so a
/// memory-limit trap can be reported as [`crate::UnitError::MemoryLimit`]
/// without parsing error strings.
pub(crate) struct Limiter {
    pub(crate) inner: StoreLimits,
    pub(crate) memory_limit: usize,
    pub(crate) memory_limit_hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_limit_hit = true;
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Everything a store owns for one unit run.
pub(crate) struct UnitState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: Limiter,
    pub(crate) random: blake3::OutputReader,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stdout_cap: u64,
    pub(crate) stdout_overflow: bool,
    pub(crate) stderr: Vec<u8>,
    /// Set by the call hook when it ends the unit, so the caller can tell a
    /// limit from a guest trap.
    pub(crate) stop: Option<StopReason>,
}

/// Why the host stopped a unit (at a fuel yield or after a host call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Timeout,
    Cancelled,
}

impl StopReason {
    pub(crate) fn message(self) -> &'static str {
        match self {
            StopReason::Timeout => "wall-clock limit exceeded",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// Marker error raised inside the guest when a host-enforced limit ends it;
/// the real reason is recorded in [`UnitState`].
#[derive(Debug)]
pub(crate) struct HostStop(pub(crate) &'static str);

impl std::fmt::Display for HostStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for HostStop {}

/// The random stream for a unit seed (see [`RANDOM_CONTEXT`]).
pub(crate) fn random_stream(seed: &[u8; 32]) -> blake3::OutputReader {
    let mut hasher = blake3::Hasher::new_keyed(seed);
    hasher.update(RANDOM_CONTEXT);
    hasher.finalize_xof()
}

/// Adds WASI preview 1 and the shadowed functions to `linker`. The
/// `wasmtime-wasi` functions are its async versions: units run through
/// wasmtime's async entry points (see `driver.rs`), and the sync versions
/// would block on a Tokio runtime of their own inside every call. The
/// shadowed functions are plain sync functions, which async calls allow.
pub(crate) fn add_to_linker(linker: &mut Linker<UnitState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, |s: &mut UnitState| &mut s.wasi)?;
    linker.allow_shadowing(true);
    linker.func_wrap(MODULE, "fd_write", fd_write)?;
    linker.func_wrap(MODULE, "random_get", random_get)?;
    linker.func_wrap(MODULE, "poll_oneoff", poll_oneoff)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The guest's exported memory and the store state, or `None` when the guest
/// exports no memory (every WASI guest does; without one nothing can be
/// exchanged, so callers answer `EFAULT`).
fn memory_and_state<'a>(
    caller: &'a mut Caller<'_, UnitState>,
) -> Option<(&'a mut [u8], &'a mut UnitState)> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Some(memory.data_and_store_mut(caller)),
        _ => None,
    }
}

/// `len` bytes at guest address `ptr`, bounds-checked.
fn guest_range(mem_len: usize, ptr: u32, len: u64) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(ptr).ok()?;
    let len = usize::try_from(len).ok()?;
    let end = start.checked_add(len)?;
    (end <= mem_len).then_some(start..end)
}

fn read_u32(mem: &[u8], at: usize) -> Option<u32> {
    let bytes = mem.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u64(mem: &[u8], at: usize) -> Option<u64> {
    let bytes = mem.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn write_bytes(mem: &mut [u8], at: usize, bytes: &[u8]) -> Option<()> {
    mem.get_mut(at..at.checked_add(bytes.len())?)?
        .copy_from_slice(bytes);
    Some(())
}

/// `fd_write(fd, iovs, iovs_len, nwritten) -> errno`.
fn fd_write(
    mut caller: Caller<'_, UnitState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> wasmtime::Result<i32> {
    if fd != 1 && fd != 2 {
        // No preopens and no path_open success means fds 0–2 are the only
        // ones that exist, and stdin is not writable.
        return Ok(ERRNO_BADF);
    }
    let Some((mem, state)) = memory_and_state(&mut caller) else {
        return Ok(ERRNO_FAULT);
    };
    let (iovs, iovs_len, nwritten) = (iovs as u32, iovs_len as u32, nwritten as u32);
    let Some(list) = guest_range(mem.len(), iovs, u64::from(iovs_len) * 8) else {
        return Ok(ERRNO_FAULT);
    };
    // Validate every iovec before writing anything, so a fault leaves the
    // output unchanged.
    let mut total: u64 = 0;
    for i in 0..iovs_len as usize {
        let at = list.start + i * 8;
        let (Some(ptr), Some(len)) = (read_u32(mem, at), read_u32(mem, at + 4)) else {
            return Ok(ERRNO_FAULT);
        };
        if guest_range(mem.len(), ptr, u64::from(len)).is_none() {
            return Ok(ERRNO_FAULT);
        }
        total += u64::from(len);
    }
    if fd == 1 && state.stdout.len() as u64 + total > state.stdout_cap {
        state.stdout_overflow = true;
        return Err(wasmtime::Error::new(HostStop("output limit exceeded")));
    }
    for i in 0..iovs_len as usize {
        let at = list.start + i * 8;
        let (Some(ptr), Some(len)) = (read_u32(mem, at), read_u32(mem, at + 4)) else {
            return Ok(ERRNO_FAULT);
        };
        let Some(range) = guest_range(mem.len(), ptr, u64::from(len)) else {
            return Ok(ERRNO_FAULT);
        };
        let Some(data) = mem.get(range) else {
            return Ok(ERRNO_FAULT);
        };
        if fd == 1 {
            state.stdout.extend_from_slice(data);
        } else {
            let room = STDERR_CAP.saturating_sub(state.stderr.len());
            state
                .stderr
                .extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    // `total` fits in u32: the iovecs all lie in a memory of at most 4 GiB
    // and the stdout cap is checked above; clamp rather than trust that.
    let written = u32::try_from(total).unwrap_or(u32::MAX);
    if write_bytes(mem, nwritten as usize, &written.to_le_bytes()).is_none() {
        return Ok(ERRNO_FAULT);
    }
    Ok(ERRNO_SUCCESS)
}

/// `random_get(buf, len) -> errno`: the next `len` bytes of the unit's stream.
fn random_get(mut caller: Caller<'_, UnitState>, buf: i32, len: i32) -> wasmtime::Result<i32> {
    let Some((mem, state)) = memory_and_state(&mut caller) else {
        return Ok(ERRNO_FAULT);
    };
    let Some(range) = guest_range(mem.len(), buf as u32, u64::from(len as u32)) else {
        return Ok(ERRNO_FAULT);
    };
    let Some(dest) = mem.get_mut(range) else {
        return Ok(ERRNO_FAULT);
    };
    state.random.fill(dest);
    Ok(ERRNO_SUCCESS)
}

/// `poll_oneoff(in, out, nsubscriptions, nevents) -> errno`: every
/// subscription fires at once. Clock subscriptions would otherwise sleep on
/// the host clock; fd subscriptions only concern stdio, which is always
/// ready (stdin is in memory, stdout/stderr are buffers).
fn poll_oneoff(
    mut caller: Caller<'_, UnitState>,
    sub_ptr: i32,
    event_ptr: i32,
    nsubscriptions: i32,
    nevents_ptr: i32,
) -> wasmtime::Result<i32> {
    // Layouts from the preview 1 witx: subscription = 48 bytes
    // (userdata u64 @0, tag u8 @8, ...), event = 32 bytes (userdata u64 @0,
    // error u16 @8, type u8 @10, fd_readwrite.nbytes u64 @16, flags u16 @24).
    const SUB_SIZE: u64 = 48;
    const EVENT_SIZE: u64 = 32;
    let n = nsubscriptions as u32;
    if n == 0 {
        return Ok(ERRNO_INVAL);
    }
    let Some((mem, _state)) = memory_and_state(&mut caller) else {
        return Ok(ERRNO_FAULT);
    };
    let (Some(subs), Some(events)) = (
        guest_range(mem.len(), sub_ptr as u32, u64::from(n) * SUB_SIZE),
        guest_range(mem.len(), event_ptr as u32, u64::from(n) * EVENT_SIZE),
    ) else {
        return Ok(ERRNO_FAULT);
    };
    for i in 0..n as usize {
        let sub = subs.start + i * SUB_SIZE as usize;
        let (Some(userdata), Some(tag)) = (read_u64(mem, sub), mem.get(sub + 8).copied()) else {
            return Ok(ERRNO_FAULT);
        };
        let mut event = [0u8; EVENT_SIZE as usize];
        event[0..8].copy_from_slice(&userdata.to_le_bytes());
        // error = 0 (success); type = the subscription's tag; nbytes/flags 0.
        event[10] = tag;
        if write_bytes(mem, events.start + i * EVENT_SIZE as usize, &event).is_none() {
            return Ok(ERRNO_FAULT);
        }
    }
    if write_bytes(mem, nevents_ptr as u32 as usize, &n.to_le_bytes()).is_none() {
        return Ok(ERRNO_FAULT);
    }
    Ok(ERRNO_SUCCESS)
}
