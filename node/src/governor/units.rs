//! Making running units obey the governor: pause in place, resume later.
//!
//! Units are never killed when the user comes back: the sandbox's
//! [`UnitControl::pause`] parks the unit's thread at its next control
//! check (well under a millisecond) with its memory and fuel intact, and
//! `resume` continues it.
//!
//! The set is also the one place that knows every running unit, so
//! `formic status` lists them from here ([`UnitSet::running`]): each unit
//! is registered with a [`UnitLabel`] (project, index, fuel budget) and its
//! progress is read live from its control's fuel counter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use formic_work_units::UnitControl;
use serde::{Deserialize, Serialize};
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

/// What a running unit is, for status: which project and unit, and how
/// much fuel it may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitLabel {
    /// The project's short id (as logs print it).
    pub project: String,
    /// The unit's index in its project.
    pub index: u64,
    /// The project's `limits.fuel_per_unit`; 0 when unknown.
    pub fuel_budget: u64,
}

/// One running unit as `formic status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningUnit {
    pub project: String,
    pub index: u64,
    /// Fuel used so far, as the sandbox last reported it to the control.
    pub fuel_used: u64,
    pub fuel_budget: u64,
    /// Stopped in place by the governor.
    pub paused: bool,
}

impl RunningUnit {
    /// Progress as a fraction of the budget, 0..=1 (0 when the budget is
    /// unknown). A unit may finish well before its budget: the budget is a
    /// ceiling, not an estimate.
    pub fn progress(&self) -> f64 {
        if self.fuel_budget == 0 {
            return 0.0;
        }
        (self.fuel_used as f64 / self.fuel_budget as f64).min(1.0)
    }
}

#[derive(Debug)]
struct Inner {
    decision: Decision,
    next_id: u64,
    /// Ordered by registration, so status lists the oldest unit first.
    units: BTreeMap<u64, (UnitControl, UnitLabel)>,
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
                units: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent whatever a panicking holder did.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `control` without a label, applying the current decision to it
    /// at once.
    pub fn register(&self, control: UnitControl) -> UnitGuard {
        self.register_unit(control, UnitLabel::default())
    }

    /// Adds `control` for the unit described by `label`, applying the
    /// current decision to it at once.
    pub fn register_unit(&self, control: UnitControl, label: UnitLabel) -> UnitGuard {
        let mut inner = self.lock();
        apply_decision(inner.decision, [&control]);
        let id = inner.next_id;
        inner.next_id += 1;
        inner.units.insert(id, (control, label));
        UnitGuard {
            set: self.clone(),
            id,
        }
    }

    /// Records `decision` and applies it to every registered unit.
    pub fn apply(&self, decision: Decision) {
        let mut inner = self.lock();
        inner.decision = decision;
        apply_decision(decision, inner.units.values().map(|(c, _)| c));
    }

    /// The registered units with their live fuel counters, oldest first.
    pub fn running(&self) -> Vec<RunningUnit> {
        self.lock()
            .units
            .values()
            .map(|(control, label)| RunningUnit {
                project: label.project.clone(),
                index: label.index,
                fuel_used: control.fuel_used(),
                fuel_budget: label.fuel_budget,
                paused: control.is_paused(),
            })
            .collect()
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
