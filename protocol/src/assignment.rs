//! Unsteerable assignment: which units a worker should take, in what order.
//!
//! Each worker ranks a batch's units by `blake3(seed ‖ unit id ‖ worker key)`
//! (rendezvous hashing) and takes the first one that still needs a replica.
//! The seed is chosen by the owner when signing the batch, after the worker
//! keys exist, so a worker cannot choose where its units fall; colluding
//! identities cannot arrange to land on the same unit except by chance, and
//! every peer can recompute a worker's order to check it.
//!
//! Hidden audits: honest workers also re-execute, with private randomness at
//! rate `audit_rate_ppm`, units that already have commits. The primary worker
//! cannot know before committing whether its unit will be audited, which is
//! what makes a single visible replica plus audits safe (docs/VALIDATION.md).

use crate::content_id::ContentId;
use crate::messages::UnitRef;
use crate::signed::SignerKey;

/// A worker's rank for a unit: lower ranks are taken first.
pub fn rank(seed: &[u8; 32], unit: &UnitRef, worker: &SignerKey) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"formic/v1/rank");
    h.update(seed);
    h.update(unit.id().as_bytes());
    h.update(worker.as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// The order in which `worker` should consider `units` (lowest rank first).
/// Ties (astronomically rare) break by unit, so the order is total.
pub fn preference_order(seed: &[u8; 32], units: &[UnitRef], worker: &SignerKey) -> Vec<UnitRef> {
    let mut ranked: Vec<(u64, UnitRef)> =
        units.iter().map(|u| (rank(seed, u, worker), *u)).collect();
    ranked.sort_unstable();
    ranked.into_iter().map(|(_, u)| u).collect()
}

/// Whether an honest worker should audit a unit, given a uniformly random
/// `draw` from its *private* randomness (never derived from public data, or
/// the audited worker could predict it).
pub fn should_audit(draw: u32, audit_rate_ppm: u32) -> bool {
    draw % 1_000_000 < audit_rate_ppm
}

/// The id a worker's sandbox uses as its deterministic random seed for a
/// unit: the same for every replica, so honest replicas agree bit for bit.
pub fn unit_seed(unit: &UnitRef) -> ContentId {
    unit.id()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(n: u8) -> SignerKey {
        SignerKey::from_bytes([n; 32])
    }

    #[test]
    fn order_is_a_permutation_and_differs_between_workers() {
        let project = ContentId::of(b"p");
        let units: Vec<UnitRef> = (0..50).map(|index| UnitRef { project, index }).collect();
        let seed = [7u8; 32];
        let a = preference_order(&seed, &units, &worker(1));
        let b = preference_order(&seed, &units, &worker(2));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, units);
        assert_ne!(a, b, "two workers should not share an order");
        assert_eq!(
            a,
            preference_order(&seed, &units, &worker(1)),
            "deterministic"
        );
        assert_ne!(
            a,
            preference_order(&[8u8; 32], &units, &worker(1)),
            "seed matters"
        );
    }

    #[test]
    fn audit_rate_is_respected() {
        let hits = (0..1_000_000u32)
            .filter(|d| should_audit(d.wrapping_mul(2_654_435_761), 250_000))
            .count();
        assert!((240_000..260_000).contains(&hits), "{hits}");
    }
}
