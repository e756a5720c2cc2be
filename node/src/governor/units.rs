//! Making running units obey the governor: pause in place, resume later.
//!
//! Units are never killed when the user comes back: the sandbox's
//! [`UnitControl::pause`] parks the unit's thread at its next epoch check
//! (~10 ms) with its memory and fuel intact, and `resume` continues it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use formic_work_units::UnitControl;
use tokio::sync::watch;

use super::{Decision, GovernorSnapshot};

/// Applies `decision` to every control: pause when suspended, resume when
/// running.
pub fn apply_decision<'a>(decision: Decision, controls: impl IntoIterator<Item = &'a UnitControl>) {
    for c in controls {
        match decision {
            Decision::Suspended => c.pause(),
            Decision::Running => c.resume(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    decision: Decision,
    next_id: u64,
    units: HashMap<u64, UnitControl>,
}

/// The running units a governor controls. Register a unit's control before
/// starting it; the returned guard removes it when dropped (when the unit
/// ends). A unit registered while computing is suspended starts paused.
#[derive(Debug, Clone)]
pub struct UnitSet {
    inner: Arc<Mutex<Inner>>,
}

impl Default for UnitSet {
    fn default() -> Self {
        Self::new()
    }
}

impl UnitSet {
    /// An empty set; until a governor applies a decision, units start
    /// paused (suspended is the safe default).
    pub fn new() -> Self {
        UnitSet {
            inner: Arc::new(Mutex::new(Inner {
                decision: Decision::Suspended,
                next_id: 0,
                units: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent whatever a panicking holder did.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `control`, applying the current decision to it at once.
    pub fn register(&self, control: UnitControl) -> UnitGuard {
        let mut inner = self.lock();
        apply_decision(inner.decision, [&control]);
        let id = inner.next_id;
        inner.next_id += 1;
        inner.units.insert(id, control);
        UnitGuard {
            set: self.clone(),
            id,
        }
    }

    /// Records `decision` and applies it to every registered unit.
    pub fn apply(&self, decision: Decision) {
        let mut inner = self.lock();
        inner.decision = decision;
        apply_decision(decision, inner.units.values());
    }

    /// The last decision applied.
    pub fn decision(&self) -> Decision {
        self.lock().decision
    }

    /// Number of registered units.
    pub fn len(&self) -> usize {
        self.lock().units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps a unit registered in a [`UnitSet`]; unregisters on drop.
#[derive(Debug)]
pub struct UnitGuard {
    set: UnitSet,
    id: u64,
}

impl Drop for UnitGuard {
    fn drop(&mut self) {
        self.set.lock().units.remove(&self.id);
    }
}

/// Drives `units` from a snapshot channel (for a governor in another
/// component); [`super::spawn`] already applies its own decisions directly,
/// which is faster. Ends when the sender is gone.
pub fn drive_units(
    mut rx: watch::Receiver<GovernorSnapshot>,
    units: UnitSet,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let state = rx.borrow_and_update().state;
            units.apply(state);
            if rx.changed().await.is_err() {
                break;
            }
        }
    })
}
