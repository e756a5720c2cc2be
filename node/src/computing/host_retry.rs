//! Units this host could not run (a full sandbox pool, an input it could not
//! fetch, a lost thread), and when to try each again.
//!
//! Such a failure is the host's, not the unit's, so it is not counted as a
//! failed unit, and another worker takes the unit once this node's claim
//! lapses. But this node must not give up on it either: with a single
//! worker, or a trouble that passes, the unit would never be done. Nor may
//! it retry at once: a hidden audit leaves no claim to keep it from being
//! picked again, in a loop for as long as the trouble lasts. So each unit
//! waits, doubling from [`HOST_RETRY_FIRST`] to [`HOST_RETRY_MAX`] with each
//! failure in a row, and is released once. A unit this node is not
//! involved in (a hidden audit, or one that failed before its claim was
//! made) goes back to `schedule`'s pick, which offers it again only while
//! it still wants replicas; a unit this node claimed is one `next_work`
//! will never offer it again, so the computing layer queues it to run again
//! itself, renewing its claim if the lease ran out. A computed result the
//! node could not store waits the same way.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) const HOST_RETRY_FIRST: Duration = Duration::from_secs(5);
pub(crate) const HOST_RETRY_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub(crate) struct HostRetries {
    /// By unit index: when it is released (None once it has been), and the
    /// wait that led there.
    units: HashMap<u64, (Option<Instant>, Duration)>,
}

impl HostRetries {
    /// The unit failed on this host at `now`: returns how long it waits.
    pub(crate) fn failed(&mut self, unit: u64, now: Instant) -> Duration {
        let wait = self
            .units
            .get(&unit)
            .map_or(HOST_RETRY_FIRST, |(_, w)| (*w * 2).min(HOST_RETRY_MAX));
        self.units.insert(unit, (Some(now + wait), wait));
        wait
    }

    /// The unit ran (whatever its result): its next host failure starts the
    /// waits over.
    pub(crate) fn ran(&mut self, unit: u64) {
        self.units.remove(&unit);
    }

    /// The units whose wait is over at `now`, each returned once: a unit
    /// picked again is busy because it runs, and must stay so.
    pub(crate) fn release_due(&mut self, now: Instant) -> Vec<u64> {
        let mut due = Vec::new();
        for (unit, (at, _)) in &mut self.units {
            if at.is_some_and(|t| t <= now) {
                *at = None;
                due.push(*unit);
            }
        }
        due
    }

    /// Forgets the units that are settled (validated) and so will not run
    /// here again: their waits would otherwise stay on record for good.
    pub(crate) fn forget_settled(&mut self, mut settled: impl FnMut(u64) -> bool) {
        self.units
            .retain(|unit, (at, _)| at.is_some() || !settled(*unit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_released_once_after_a_wait_that_doubles_up_to_the_cap() {
        let mut r = HostRetries::default();
        let t0 = Instant::now();
        assert_eq!(r.failed(7, t0), HOST_RETRY_FIRST);
        assert!(r.release_due(t0).is_empty(), "not before its wait");
        let t1 = t0 + HOST_RETRY_FIRST;
        assert_eq!(r.release_due(t1), vec![7]);
        assert!(
            r.release_due(t1 + HOST_RETRY_MAX).is_empty(),
            "released once"
        );
        assert_eq!(r.failed(7, t1), HOST_RETRY_FIRST * 2, "doubles");
        let mut wait = HOST_RETRY_FIRST * 2;
        for _ in 0..10 {
            wait = r.failed(7, t1);
        }
        assert_eq!(wait, HOST_RETRY_MAX, "capped");
        r.ran(7);
        assert_eq!(r.failed(7, t1), HOST_RETRY_FIRST, "a run starts over");
    }

    #[test]
    fn units_wait_independently() {
        let mut r = HostRetries::default();
        let t0 = Instant::now();
        r.failed(1, t0);
        r.failed(1, t0 + HOST_RETRY_FIRST); // second failure: waits 10 s
        r.failed(2, t0 + HOST_RETRY_FIRST); // first: waits 5 s
        assert_eq!(r.release_due(t0 + HOST_RETRY_FIRST * 2), vec![2]);
        assert_eq!(r.release_due(t0 + HOST_RETRY_FIRST * 3), vec![1]);
    }

    #[test]
    fn released_units_are_forgotten_once_settled_and_waiting_ones_kept() {
        let mut r = HostRetries::default();
        let t0 = Instant::now();
        r.failed(1, t0);
        r.failed(2, t0 + HOST_RETRY_MAX);
        assert_eq!(r.release_due(t0 + HOST_RETRY_FIRST).len(), 1);
        r.forget_settled(|_| true);
        // Unit 1 (released, settled) is gone: its next failure starts over.
        assert_eq!(r.failed(1, t0), HOST_RETRY_FIRST);
        // Unit 2 still waits: not forgotten while its wait runs.
        assert_eq!(r.failed(2, t0), HOST_RETRY_FIRST * 2);
    }
}
