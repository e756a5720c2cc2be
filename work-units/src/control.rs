//! [`UnitControl`]: pause, resume, cancel and watch a running unit from
//! another thread.
//!
//! The running unit checks the control every [`crate::FUEL_YIELD_INTERVAL`]
//! units of fuel (well under a millisecond for typical guest code) and
//! whenever a host call returns (see `driver.rs`). Pausing blocks the unit's
//! thread inside that check, so the guest's state — memory, stack, fuel —
//! stays exactly where it was and resumes without losing progress; the time
//! spent paused is not counted toward the wall-clock limit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    paused: bool,
    cancelled: bool,
    /// True while the unit's thread is actually blocked in a pause.
    parked: bool,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    /// `paused || cancelled`, readable without the lock: the unit checks
    /// it on every host-call return, so the common case must be one load.
    attention: AtomicBool,
    fuel_used: AtomicU64,
}

/// A handle to control one unit run; cheap to clone and shareable between
/// threads. Create it, pass it to [`crate::Sandbox::run`], and keep a clone.
#[derive(Debug, Clone, Default)]
pub struct UnitControl {
    inner: Arc<Inner>,
}

/// What the running unit should do after a control check.
pub(crate) enum Check {
    Continue { paused_for: Duration },
    Cancelled,
}

impl UnitControl {
    /// A control for one unit: running, not paused, not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is three booleans, valid whatever a panicking holder did.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Updates the state under the lock, keeping `attention` in step.
    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.lock();
        f(&mut state);
        self.inner
            .attention
            .store(state.paused || state.cancelled, Ordering::Release);
        drop(state);
        self.inner.changed.notify_all();
    }

    /// Asks the unit to stop at its next check (normally within a
    /// millisecond) and wait.
    pub fn pause(&self) {
        self.update(|s| s.paused = true);
    }

    /// Lets a paused unit continue where it stopped.
    pub fn resume(&self) {
        self.update(|s| s.paused = false);
    }

    /// Ends the unit with [`crate::UnitError::Cancelled`] at its next check,
    /// paused or not.
    pub fn cancel(&self) {
        self.update(|s| s.cancelled = true);
    }

    /// Whether a pause was asked for (the unit may not have stopped yet).
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Whether the unit was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// True once the unit has actually stopped in a pause (as opposed to
    /// pause having been requested).
    pub fn is_parked(&self) -> bool {
        self.lock().parked
    }

    /// Waits until the unit is parked or `timeout` passes; returns whether it
    /// is parked.
    pub fn wait_parked(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.parked {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self
                .inner
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Fuel the `_start` call has used so far: while it runs, a lower bound
    /// updated at every check (at least every
    /// [`crate::FUEL_YIELD_INTERVAL`] fuel), never decreasing; at the end
    /// of the run, the exact figure.
    pub fn fuel_used(&self) -> u64 {
        self.inner.fuel_used.load(Ordering::Relaxed)
    }

    /// Publishes progress while running; keeps the largest figure seen, as
    /// the executor and the call hook report separately.
    pub(crate) fn note_fuel_used(&self, fuel: u64) {
        self.inner.fuel_used.fetch_max(fuel, Ordering::Relaxed);
    }

    /// Publishes the exact figure at the end of the run.
    pub(crate) fn set_fuel_used(&self, fuel: u64) {
        self.inner.fuel_used.store(fuel, Ordering::Relaxed);
    }

    /// Called by the running unit: blocks while paused, reports cancel.
    pub(crate) fn check(&self) -> Check {
        if !self.inner.attention.load(Ordering::Acquire) {
            return Check::Continue {
                paused_for: Duration::ZERO,
            };
        }
        let mut state = self.lock();
        if state.cancelled {
            return Check::Cancelled;
        }
        if !state.paused {
            return Check::Continue {
                paused_for: Duration::ZERO,
            };
        }
        let started = Instant::now();
        state.parked = true;
        self.inner.changed.notify_all();
        while state.paused && !state.cancelled {
            state = self
                .inner
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.parked = false;
        self.inner.changed.notify_all();
        if state.cancelled {
            return Check::Cancelled;
        }
        Check::Continue {
            paused_for: started.elapsed(),
        }
    }
}
