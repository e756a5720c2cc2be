//! Drives a unit's wasmtime calls on the calling thread and watches the
//! unit while it runs: wall-clock limit, cancel, pause and progress.
//!
//! Why this shape: interrupting a guest needs a check compiled into its
//! loops. Fuel metering already puts one at every loop header, so the
//! sandbox reuses it instead of adding epoch checks (which cost about as
//! much again on tight loops): the store yields every
//! [`FUEL_YIELD_INTERVAL`] units of fuel
//! (`Store::fuel_async_yield_interval`). Yielding needs wasmtime's async
//! entry points, so the calls are futures; [`block_on`] polls them on the
//! current thread and, each time the guest yields, checks the unit's
//! [`Watch`] before polling again. A pause blocks right there, with the
//! guest suspended exactly where it was (memory, stack, fuel), so resuming
//! loses nothing. Stopping (cancel, timeout) drops the future, which
//! unwinds the guest.
//!
//! Fuel does not bound time spent inside one host call (e.g. a huge
//! `random_get`), so the store's call hook runs the same checks whenever a
//! host call returns (see `Sandbox::run_in`).
//!
//! No async runtime is involved: this runs on any blocking thread,
//! including tokio's blocking pool, and the wasmtime-wasi functions in use
//! complete without waiting on I/O (stdin is in memory, there are no files).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::control::{Check, UnitControl};
use crate::host::StopReason;

/// Fuel between two yields of a running unit, i.e. between two checks of
/// its wall clock, cancel and pause. The sample apps burn 4 (Mandelbrot)
/// to 20 (primes) G fuel/s, so that is every 50–250 µs; a guest that
/// misses the cache on every load would take a few tens of milliseconds.
/// A yield costs about 0.2 µs (measured with 10 k-fuel intervals), under
/// 0.5 % of the run at this interval. It changes
/// neither the fuel figure nor where a unit runs out of fuel: wasmtime
/// traps at the first fuel check where the total used reaches the budget,
/// whatever the slices.
pub const FUEL_YIELD_INTERVAL: u64 = 1_000_000;

/// How long the executor sleeps when a future is pending without having
/// asked to be polled again (never expected: fuel yields re-poll at once
/// and the WASI functions in use do not wait), before checking the watch.
const IDLE_CHECK: Duration = Duration::from_millis(10);

/// What a running unit is checked against; shared by the executor (at fuel
/// yields) and the store's call hook (after host calls), which run on the
/// same thread, one at a time.
pub(crate) struct Watch {
    control: Option<UnitControl>,
    started: Instant,
    wall_limit: Duration,
    /// Total time spent parked in a pause, in nanoseconds.
    paused_nanos: AtomicU64,
    /// Set when `_start` is called: progress excludes instantiation.
    counting: AtomicBool,
}

impl Watch {
    /// Starts the wall clock now.
    pub(crate) fn new(control: Option<UnitControl>, wall_limit: Duration) -> Self {
        Watch {
            control,
            started: Instant::now(),
            wall_limit,
            paused_nanos: AtomicU64::new(0),
            counting: AtomicBool::new(false),
        }
    }

    /// Blocks while the unit is paused; then says whether it must stop.
    pub(crate) fn check(&self) -> Result<(), StopReason> {
        if let Some(control) = &self.control {
            match control.check() {
                Check::Continue { paused_for } => {
                    if !paused_for.is_zero() {
                        let nanos = u64::try_from(paused_for.as_nanos()).unwrap_or(u64::MAX);
                        self.paused_nanos.fetch_add(nanos, Ordering::Relaxed);
                    }
                }
                Check::Cancelled => return Err(StopReason::Cancelled),
            }
        }
        if self.started.elapsed().saturating_sub(self.paused()) > self.wall_limit {
            return Err(StopReason::Timeout);
        }
        Ok(())
    }

    /// Time spent paused so far.
    pub(crate) fn paused(&self) -> Duration {
        Duration::from_nanos(self.paused_nanos.load(Ordering::Relaxed))
    }

    pub(crate) fn start_counting(&self) {
        self.counting.store(true, Ordering::Relaxed);
    }

    pub(crate) fn counting(&self) -> bool {
        self.counting.load(Ordering::Relaxed)
    }

    /// Publishes a lower bound of the fuel `_start` has used so far.
    pub(crate) fn report_progress(&self, fuel_used: u64) {
        if let Some(control) = &self.control {
            control.note_fuel_used(fuel_used);
        }
    }
}

/// Wakes the executor's thread; remembers that a wake happened so a wake
/// before the park is not lost.
struct ThreadWaker {
    thread: Thread,
    woken: AtomicBool,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Polls `future` to completion on this thread, checking `watch` at every
/// yield. With `fuel_per_yield`, each yield also publishes progress: after
/// `k` fuel yields the guest has used at least `k × fuel_per_yield` fuel
/// (wasmtime refills the active slice only once it is used up, and
/// carries any overshoot into the total), which is the figure published —
/// a lower bound, exact at the end of the run. On a stop the future is
/// dropped, which unwinds the guest, and the reason is returned.
pub(crate) fn block_on<F: Future>(
    future: F,
    watch: &Watch,
    fuel_per_yield: Option<u64>,
) -> Result<F::Output, StopReason> {
    let mut future = pin!(future);
    let waker_state = Arc::new(ThreadWaker {
        thread: thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(waker_state.clone());
    let mut cx = Context::from_waker(&waker);
    let mut yields: u64 = 0;
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Ok(output);
        }
        // A fuel yield asks to be polled again before returning `Pending`.
        let mut woken = waker_state.woken.swap(false, Ordering::Acquire);
        if woken && let Some(per_yield) = fuel_per_yield {
            yields += 1;
            watch.report_progress(yields.saturating_mul(per_yield));
        }
        watch.check()?;
        while !woken {
            thread::park_timeout(IDLE_CHECK);
            woken = waker_state.woken.swap(false, Ordering::Acquire);
            watch.check()?;
        }
    }
}
