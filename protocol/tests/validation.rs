//! Tests of `validate()`: quorum, probation, disputes, spot checks,
//! backtracking, signed-evidence checks, and determinism under reordering.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use formic_protocol::messages::{Commit, Data, Reveal, SpotCheckKey, UnitRef, seal};
use formic_protocol::validation::*;
use formic_protocol::{ContentId, Signed, SignerKey};
use libp2p_identity::Keypair;
use proptest::prelude::*;

fn w(n: u8) -> SignerKey {
    SignerKey::from_bytes([n; 32])
}

fn unit(i: u64) -> UnitRef {
    UnitRef {
        project: ContentId::of(b"project"),
        index: i,
    }
}

fn res(tag: &str) -> ContentId {
    ContentId::of(tag.as_bytes())
}

fn reveal(ev: &mut Evidence, worker: u8, u: u64, result: &str) {
    ev.add_reveal(RevealEvidence {
        worker: w(worker),
        unit: unit(u),
        result_hash: res(result),
        fuel_used: 1,
    });
}

const Q2: ValidationPolicy = ValidationPolicy::quorum(2);

#[test]
fn quorum_of_matching_results_validates() {
    let mut ev = Evidence::new();
    reveal(&mut ev, 1, 0, "ok");
    let out = validate(&ev, &Q2);
    assert_eq!(
        out.verdicts[&unit(0)],
        Verdict::Pending {
            need: Need::MoreReplicas,
            have: 1
        }
    );
    reveal(&mut ev, 2, 0, "ok");
    let out = validate(&ev, &Q2);
    assert_eq!(
        out.verdicts[&unit(0)],
        Verdict::Validated {
            result_hash: res("ok"),
            workers: vec![w(1), w(2)]
        }
    );
    assert!(out.faulty.is_empty());
}

#[test]
fn dispute_needs_replicas_then_settles_and_proves_the_minority_faulty() {
    let mut ev = Evidence::new();
    reveal(&mut ev, 1, 0, "ok");
    reveal(&mut ev, 2, 0, "bad");
    assert_eq!(
        validate(&ev, &Q2).verdicts[&unit(0)],
        Verdict::Pending {
            need: Need::DisputeReplicas,
            have: 2
        }
    );
    reveal(&mut ev, 3, 0, "ok");
    // 2 vs 1: not yet clear (the lead must be by the dispute margin, or
    // veterans only on one side).
    assert!(!validate(&ev, &Q2).verdicts[&unit(0)].is_validated());
    reveal(&mut ev, 4, 0, "ok");
    // 3 vs 1: a lead of two is not yet the default margin of three.
    assert!(!validate(&ev, &Q2).verdicts[&unit(0)].is_validated());
    reveal(&mut ev, 5, 0, "ok");
    let out = validate(&ev, &Q2);
    assert_eq!(
        out.verdicts[&unit(0)],
        Verdict::Validated {
            result_hash: res("ok"),
            workers: vec![w(1), w(3), w(4), w(5)]
        }
    );
    assert_eq!(out.faulty.get(&w(2)), Some(&Fault::Outvoted(unit(0))));
}

#[test]
fn a_failed_spot_check_backtracks_every_unit_the_worker_validated() {
    let mut ev = Evidence::new();
    // Worker 9 and 8 (colluding) agree on units 0..3, unit 3 is a spot check.
    for u in 0..3 {
        reveal(&mut ev, 9, u, "wrong");
        reveal(&mut ev, 8, u, "wrong");
    }
    let out = validate(&ev, &Q2);
    assert_eq!(out.validated().count(), 3, "undetected collusion validates");
    reveal(&mut ev, 9, 3, "wrong");
    ev.add_known_answer(unit(3), res("right"));
    let out = validate(&ev, &Q2);
    assert_eq!(
        out.faulty.get(&w(9)),
        Some(&Fault::FailedSpotCheck(unit(3)))
    );
    // Without 9, units 0..3 have only worker 8's result: re-opened.
    for u in 0..3 {
        assert_eq!(
            out.verdicts[&unit(u)],
            Verdict::Pending {
                need: Need::MoreReplicas,
                have: 1
            }
        );
    }
    // An honest replica now disagrees with 8 and, with a second, settles it.
    for honest in 1..=4 {
        reveal(&mut ev, honest, 0, "right");
    }
    let out = validate(&ev, &Q2);
    assert_eq!(out.faulty.get(&w(8)), Some(&Fault::Outvoted(unit(0))));
    assert!(
        matches!(&out.verdicts[&unit(0)], Verdict::Validated { result_hash, .. } if *result_hash == res("right"))
    );
    // And 8's other units are re-opened too (backtracking spreads).
    assert_eq!(
        out.verdicts[&unit(1)],
        Verdict::Pending {
            need: Need::MoreReplicas,
            have: 0
        }
    );
}

#[test]
fn a_pair_that_answers_every_unit_together_is_settled_only_by_a_spot_check() {
    // The shape that stalled a six-peer network: four honest workers and a
    // colluding pair answered every unit. 4 against 2 is short of the
    // dispute margin, and neither colluder is ever alone to be outvoted.
    let mut ev = Evidence::new();
    for u in 0..10 {
        for honest in 1..=4 {
            reveal(&mut ev, honest, u, "right");
        }
        reveal(&mut ev, 8, u, "wrong");
        reveal(&mut ev, 9, u, "wrong");
    }
    let out = validate(&ev, &Q2);
    assert_eq!(out.validated().count(), 0);
    assert!(out.faulty.is_empty());
    assert!(out.verdicts.values().all(|v| matches!(
        v,
        Verdict::Pending {
            need: Need::DisputeReplicas,
            have: 6
        }
    )));
    // One planted answer (unit 4) proves both faulty; every unit settles.
    ev.add_known_answer(unit(4), res("right"));
    let out = validate(&ev, &Q2);
    assert_eq!(out.faulty.len(), 2);
    assert_eq!(
        out.faulty.get(&w(8)),
        Some(&Fault::FailedSpotCheck(unit(4)))
    );
    for u in 0..10 {
        assert_eq!(
            out.verdicts[&unit(u)],
            Verdict::Validated {
                result_hash: res("right"),
                workers: (1..=4).map(w).collect()
            }
        );
    }
}

#[test]
fn new_identities_are_on_probation_until_corroborated() {
    let policy = ValidationPolicy {
        quorum: 1,
        probation: 2,
        dispute_margin: 3,
    };
    let mut ev = Evidence::new();
    reveal(&mut ev, 1, 0, "a");
    assert_eq!(
        validate(&ev, &policy).verdicts[&unit(0)],
        Verdict::Pending {
            need: Need::VeteranReplica,
            have: 1
        }
    );
    // Worker 1 and 2 corroborate each other on two units: both become veterans.
    reveal(&mut ev, 2, 0, "a");
    reveal(&mut ev, 1, 1, "b");
    reveal(&mut ev, 2, 1, "b");
    let out = validate(&ev, &policy);
    assert!(out.is_veteran(&w(1), &policy));
    assert!(out.verdicts[&unit(0)].is_validated());
    // Now a veteran's single result is enough at quorum 1.
    reveal(&mut ev, 1, 2, "c");
    assert!(validate(&ev, &policy).verdicts[&unit(2)].is_validated());
    // But a fresh identity's single result is not.
    reveal(&mut ev, 7, 3, "d");
    assert_eq!(
        validate(&ev, &policy).verdicts[&unit(3)],
        Verdict::Pending {
            need: Need::VeteranReplica,
            have: 1
        }
    );
}

#[test]
fn equivocation_is_a_fault() {
    let mut ev = Evidence::new();
    reveal(&mut ev, 1, 0, "a");
    reveal(&mut ev, 1, 0, "b");
    let out = validate(&ev, &Q2);
    assert_eq!(out.faulty.get(&w(1)), Some(&Fault::Equivocated(unit(0))));
}

#[test]
fn signed_evidence_is_checked() {
    let kp = Keypair::generate_ed25519();
    let other = Keypair::generate_ed25519();
    let me = SignerKey::of(&kp).expect("ed25519");
    let u = unit(0);
    let out_bytes = b"42".to_vec();
    let result_hash = ContentId::of(&out_bytes);
    let reveal = Reveal {
        unit: u,
        result_hash,
        output: Data::Inline(out_bytes),
        fuel_used: 10,
        engine: "e".into(),
        salt: [9; 32],
    };
    let good_commit = Commit {
        unit: u,
        seal: seal(&result_hash, &[9; 32], &me, &u),
    };
    let signed_reveal = Signed::sign(&kp, &reveal).expect("sign");

    let mut ev = Evidence::new();
    ev.add_signed(
        &Signed::sign(&kp, &good_commit).expect("sign"),
        &signed_reveal,
    )
    .expect("valid pair");
    assert_eq!(ev.len(), 1);

    let wrong_seal = Commit {
        unit: u,
        seal: seal(&res("other"), &[9; 32], &me, &u),
    };
    // The right result under another salt does not open the commit either:
    // the salt is part of what was committed to.
    let wrong_salt = Commit {
        unit: u,
        seal: seal(&result_hash, &[8; 32], &me, &u),
    };
    assert_eq!(
        ev.add_signed(
            &Signed::sign(&kp, &wrong_salt).expect("sign"),
            &signed_reveal
        ),
        Err(EvidenceError::SealMismatch)
    );
    assert_eq!(
        ev.add_signed(
            &Signed::sign(&kp, &wrong_seal).expect("sign"),
            &signed_reveal
        ),
        Err(EvidenceError::SealMismatch)
    );
    assert_eq!(
        ev.add_signed(
            &Signed::sign(&other, &good_commit).expect("sign"),
            &signed_reveal
        ),
        Err(EvidenceError::SignerMismatch)
    );
    let owner = Keypair::generate_ed25519();
    let key = SpotCheckKey {
        project: u.project,
        batch_seq: 0,
        answers: vec![(5, res("x"))],
    };
    let signed_key = Signed::sign(&other, &key).expect("sign");
    assert_eq!(
        ev.add_spot_check_key(&signed_key, &SignerKey::of(&owner).expect("ed25519")),
        Err(EvidenceError::NotOwner)
    );
}

proptest! {
    /// Same evidence in any order gives the same outcome; honest-only
    /// evidence never proves anyone faulty.
    #[test]
    fn deterministic_and_order_independent(
        reveals in proptest::collection::vec((0u8..8, 0u64..6, 0u8..3), 0..60),
        seed in any::<u64>(),
        quorum in 1u16..4,
        probation in 0u32..3,
    ) {
        let policy = ValidationPolicy { quorum, probation, dispute_margin: 3 };
        let mut a = Evidence::new();
        for (worker, u, r) in &reveals {
            reveal(&mut a, *worker, *u, &format!("r{r}"));
        }
        let mut shuffled = reveals.clone();
        // Deterministic shuffle from the seed.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let mut b = Evidence::new();
        for (worker, u, r) in &shuffled {
            reveal(&mut b, *worker, *u, &format!("r{r}"));
        }
        // Equivocation depends on which result came first per worker, so
        // compare only when no worker revealed twice for a unit.
        let mut seen = std::collections::BTreeSet::new();
        let unique = reveals.iter().all(|(worker, u, _)| seen.insert((*worker, *u)));
        let oa = validate(&a, &policy);
        if unique {
            let ob = validate(&b, &policy);
            prop_assert_eq!(&oa.verdicts, &ob.verdicts);
            prop_assert_eq!(&oa.faulty, &ob.faulty);
        }
        let mut honest = Evidence::new();
        for (worker, u, _) in &reveals {
            reveal(&mut honest, *worker, *u, &format!("truth{u}"));
        }
        prop_assert!(validate(&honest, &policy).faulty.is_empty());
    }
}

proptest! {
    /// Deciding one unit after each new reveal (`revalidate_unit`) gives
    /// exactly what `validate()` gives on the whole evidence, or declines
    /// and lets the caller run `validate()`.
    #[test]
    fn revalidating_one_unit_equals_validating_everything(
        quorum in 1u16..=3,
        steps in proptest::collection::vec((0u8..8, 0u64..6, 0u8..3, 0u8..20), 1..80),
    ) {
        let policy = ValidationPolicy::quorum(quorum);
        let mut ev = Evidence::new();
        let mut outcome = validate(&ev, &policy);
        let mut incremental = 0;
        for (worker, u, result, extra) in steps {
            if extra == 0 {
                // Now and then the owner's answer to a unit (as a spot-check
                // key does); ProjectState re-validates fully then.
                ev.add_known_answer(unit(u), res("r0"));
                outcome = validate(&ev, &policy);
                continue;
            }
            let before = unit_credit(&ev, &outcome, &unit(u));
            reveal(&mut ev, worker + 1, u, &format!("r{result}"));
            if revalidate_unit(&ev, &policy, &mut outcome, &unit(u), &before) {
                incremental += 1;
                let full = validate(&ev, &policy);
                prop_assert_eq!(&outcome.verdicts, &full.verdicts);
                prop_assert_eq!(&outcome.faulty, &full.faulty);
                prop_assert_eq!(&outcome.standing, &full.standing);
            } else {
                outcome = validate(&ev, &policy);
            }
        }
        let _ = incremental;
    }
}

#[test]
fn honest_reveals_are_decided_one_unit_at_a_time() {
    let policy = ValidationPolicy::quorum(2);
    let mut ev = Evidence::new();
    let mut outcome = validate(&ev, &policy);
    for u in 0..10 {
        for worker in 1..=3 {
            let before = unit_credit(&ev, &outcome, &unit(u));
            reveal(&mut ev, worker, u, "ok");
            assert!(
                revalidate_unit(&ev, &policy, &mut outcome, &unit(u), &before),
                "no fault can appear, so no full run is needed"
            );
        }
    }
    let full = validate(&ev, &policy);
    assert_eq!(outcome.verdicts, full.verdicts);
    assert_eq!(outcome.standing, full.standing);
    assert_eq!(outcome.validated().count(), 10);
}
