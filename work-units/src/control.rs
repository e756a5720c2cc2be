//! [`UnitControl`]: pause, resume, cancel and watch a running unit from
//! another thread.
//!
//! The running store checks the control on every epoch tick (about every
//! 10 ms, see [`crate::Sandbox`]). Pausing blocks the unit's thread inside
//! that check, so the guest's state — memory, stack, fuel — stays exactly
//! where it was and resumes without losing progress; the time spent paused
//! is not counted toward the wall-clock limit.

use std::sync::atomic::{AtomicU64, Ordering};
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
    fuel_used: AtomicU64,
}

/// A handle to control one unit run; cheap to clone and shareable between
/// threads. Create it, pass it to [`crate::Sandbox::run`], and keep a clone.
#[derive(Debug, Clone, Default)]
pub struct UnitControl {
    inner: Arc<Inner>,
}

/// What the epoch callback should do after a control check.
pub(crate) enum Check {
    Continue { paused_for: Duration },
    Cancelled,
}

impl UnitControl {
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

    /// Asks the unit to stop at its next epoch check (within ~10 ms) and wait.
    pub fn pause(&self) {
        self.lock().paused = true;
        self.inner.changed.notify_all();
    }

    /// Lets a paused unit continue where it stopped.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.inner.changed.notify_all();
    }

    /// Ends the unit with [`crate::UnitError::Cancelled`] at its next epoch
    /// check, paused or not.
    pub fn cancel(&self) {
        self.lock().cancelled = true;
        self.inner.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

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

    /// Fuel the `_start` call has used so far, updated on every epoch tick
    /// and at the end of the run.
    pub fn fuel_used(&self) -> u64 {
        self.inner.fuel_used.load(Ordering::Relaxed)
    }

    pub(crate) fn set_fuel_used(&self, fuel: u64) {
        self.inner.fuel_used.store(fuel, Ordering::Relaxed);
    }

    /// Called from the epoch callback: blocks while paused, reports cancel.
    pub(crate) fn check(&self) -> Check {
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
