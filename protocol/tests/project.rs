//! The per-project state machine driven by several in-memory workers with
//! real keys and signatures: assignment, claims, commit-before-reveal,
//! validation, a saboteur proven faulty, and hostile records rejected.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use formic_protocol::messages::*;
use formic_protocol::project::{Applied, ProjectState, RecordError};
use formic_protocol::{ContentId, Signed, SignerKey};
use libp2p_identity::Keypair;

const LEASE_MS: u64 = 10_000;

fn project(
    owner: &Keypair,
    units: u64,
    quorum: u16,
    max_replicas: u16,
) -> (Signed<ProjectManifest>, Signed<Batch>) {
    let manifest = ProjectManifest {
        name: "reverse".into(),
        app: BlobRef::of(b"app"),
        engine: "test".into(),
        limits: Limits {
            fuel_per_unit: 1_000_000,
            memory_bytes: 1 << 20,
            max_output_bytes: 1024,
            wall_clock_ms: 1000,
        },
        policy: Policy {
            quorum,
            max_replicas,
            lease_ms: LEASE_MS,
            audit_rate_ppm: 0,
        },
        created_at_ms: 0,
    };
    let m = Signed::sign(owner, &manifest).expect("sign");
    let batch = Batch {
        project: m.id(),
        seq: 0,
        seed: [42; 32],
        units: (0..units)
            .map(|i| UnitSpec {
                index: i,
                input: Data::Inline(format!("unit-{i}").into_bytes()),
            })
            .collect(),
    };
    let b = Signed::sign(owner, &batch).expect("sign");
    (m, b)
}

/// The "app": reverse the input bytes.
fn compute(input: &Data) -> Vec<u8> {
    match input {
        Data::Inline(b) => b.iter().rev().copied().collect(),
        Data::Blob(_) => unreachable!("inline inputs only in this test"),
    }
}

struct Worker {
    manifest: Signed<ProjectManifest>,
    key: Keypair,
    state: ProjectState,
    wrong: bool,
    held: Vec<Signed<Reveal>>,
}

/// Delivers `record` to every worker (perfect gossip).
fn broadcast(workers: &mut [Worker], record: &Gossip) {
    for w in workers.iter_mut() {
        let _ = w.state.apply(record);
    }
}

fn run(workers: &mut [Worker], rounds: usize) {
    let mut now = 0;
    for _ in 0..rounds {
        now += 100;
        for i in 0..workers.len() {
            let me = SignerKey::of(&workers[i].key).expect("ed25519");
            let draw = (i as u32).wrapping_mul(2_654_435_761);
            if let Some(order) = workers[i]
                .state
                .next_work(&me, now, draw, &Default::default())
            {
                if let Some(claim) = workers[i]
                    .state
                    .claim(&workers[i].key, &order, now)
                    .expect("claim")
                {
                    broadcast(workers, &Gossip::Claim(claim));
                }
                let mut out = compute(&order.input);
                if workers[i].wrong {
                    out = b"colluding wrong answer".to_vec();
                }
                let (commit, reveal) = workers[i]
                    .state
                    .commit(
                        &workers[i].key,
                        order.unit,
                        Data::for_bytes(&out),
                        7,
                        "test",
                        [i as u8; 32],
                    )
                    .expect("commit");
                broadcast(workers, &Gossip::Commit(commit));
                workers[i].held.push(reveal);
            }
            // Open every held commit whose unit has a quorum of commits.
            let held = std::mem::take(&mut workers[i].held);
            for r in held {
                let unit = r.verify().expect("own reveal").unit;
                if workers[i].state.may_reveal(&unit) {
                    broadcast(workers, &Gossip::Reveal(r));
                } else {
                    workers[i].held.push(r);
                }
            }
        }
    }
}

fn setup(
    n: usize,
    wrong: &[usize],
    units: u64,
    quorum: u16,
    max_replicas: u16,
) -> (Keypair, Vec<Worker>) {
    let owner = Keypair::generate_ed25519();
    let (m, b) = project(&owner, units, quorum, max_replicas);
    let workers = (0..n)
        .map(|i| {
            let mut state = ProjectState::new(&m, 0).expect("manifest");
            assert_eq!(state.add_batch(&b), Ok(Applied::New));
            Worker {
                manifest: m.clone(),
                key: Keypair::generate_ed25519(),
                state,
                wrong: wrong.contains(&i),
                held: Vec::new(),
            }
        })
        .collect();
    (owner, workers)
}

#[test]
fn honest_workers_validate_every_unit_with_quorum_two() {
    let (_, mut workers) = setup(4, &[], 20, 2, 4);
    run(&mut workers, 30);
    for w in workers.iter_mut() {
        assert!(
            w.state.is_complete(),
            "every worker sees all units validated"
        );
        let validated = w.state.validated();
        assert_eq!(validated.len(), 20);
        for v in validated {
            let (index, hash, output, agreeing) = (v.index, v.result_hash, v.output, v.workers);
            let expected: Vec<u8> = format!("unit-{index}").bytes().rev().collect();
            assert_eq!(hash, ContentId::of(&expected));
            assert_eq!(output, Data::Inline(expected));
            assert!(agreeing.len() >= 2);
        }
        same_as_a_full_validation(&mut w.state, 2);
    }
}

#[test]
fn a_saboteur_is_outvoted_proven_faulty_and_never_accepted() {
    let (_, mut workers) = setup(7, &[0], 30, 2, 7);
    run(&mut workers, 60);
    let bad = SignerKey::of(&workers[0].key).expect("ed25519");
    let state = &mut workers[1].state;
    assert!(state.is_complete());
    for v in state.validated() {
        let (index, hash, agreeing) = (v.index, v.result_hash, v.workers);
        let expected: Vec<u8> = format!("unit-{index}").bytes().rev().collect();
        assert_eq!(
            hash,
            ContentId::of(&expected),
            "unit {index} accepted a wrong result"
        );
        assert!(!agreeing.contains(&bad));
    }
    assert!(
        state.outcome().faulty.contains_key(&bad),
        "the saboteur is proven faulty"
    );
    same_as_a_full_validation(state, 2);
}

/// The state's outcome, kept up to date one reveal at a time, equals
/// validating all its evidence at once.
fn same_as_a_full_validation(state: &mut ProjectState, quorum: u16) {
    let full = formic_protocol::validation::validate(
        state.evidence(),
        &formic_protocol::validation::ValidationPolicy::quorum(quorum),
    );
    let kept = state.outcome();
    assert_eq!(kept.verdicts, full.verdicts);
    assert_eq!(kept.faulty, full.faulty);
    assert_eq!(kept.standing, full.standing);
}

#[test]
fn revealed_spot_checks_settle_a_colluding_pair_and_unanswered_checks_get_a_replica() {
    // Four honest workers and a colluding pair, every unit open to all six.
    let (owner, mut workers) = setup(6, &[0, 1], 12, 2, 6);
    let right = |i: u64| ContentId::of(&compute(&Data::Inline(format!("unit-{i}").into_bytes())));
    let project = workers[2].manifest.id();
    let key = |answers: Vec<(u64, ContentId)>| {
        Gossip::SpotCheckKey(
            Signed::sign(
                &owner,
                &SpotCheckKey {
                    project,
                    batch_seq: 0,
                    answers,
                },
            )
            .expect("sign"),
        )
    };
    // One answer revealed before anyone worked on its unit: validated by the
    // answer alone, it still draws one replica to supply the output.
    let early = key(vec![(11, right(11))]);
    broadcast(&mut workers, &early);
    assert!(!workers[2].state.is_complete());
    run(&mut workers, 60);
    // The rest revealed when collecting, as `formic results` does. Which
    // units the colluders answer depends on the random keys, so the checks
    // are taken among units each of them answered (the owner's random
    // sample catches them only if it hits one: the end-to-end test covers
    // that); what is tested here is that one answered check unmasks a
    // worker and re-opens everything it validated.
    let bad: Vec<SignerKey> = workers[..2]
        .iter()
        .map(|w| SignerKey::of(&w.key).expect("ed25519"))
        .collect();
    let answered_by = |who: &SignerKey| {
        workers[2]
            .state
            .records()
            .iter()
            .find_map(|r| match r {
                Gossip::Reveal(rv) if rv.signer() == *who => rv.verify().ok().map(|v| v.unit.index),
                _ => None,
            })
            .expect("each colluder answered a unit")
    };
    let checks: Vec<(u64, ContentId)> = bad
        .iter()
        .map(|b| {
            let i = answered_by(b);
            (i, right(i))
        })
        .collect();
    let late = key(checks);
    broadcast(&mut workers, &late);
    run(&mut workers, 40);
    let state = &mut workers[2].state;
    assert!(state.is_complete(), "{:?}", state.outcome().verdicts);
    let validated = state.validated();
    assert_eq!(validated.len(), 12);
    for v in validated {
        assert_eq!(
            v.result_hash,
            right(v.index),
            "unit {} accepted a wrong result",
            v.index
        );
        assert!(
            !v.workers.is_empty(),
            "unit {} has an output to collect",
            v.index
        );
    }
    for b in &bad {
        assert!(state.outcome().faulty.contains_key(b), "a colluder escaped");
    }
}

#[test]
fn hostile_records_are_rejected_with_a_reason() {
    let (owner, mut workers) = setup(2, &[], 3, 2, 4);
    let other_owner = Keypair::generate_ed25519();
    let (_, foreign_batch) = project(&other_owner, 3, 2, 4);
    let w = &mut workers[0];
    assert_eq!(
        w.state.add_batch(&foreign_batch),
        Err(RecordError::NotOwner)
    );

    let id = w.state.id();
    let k = Keypair::generate_ed25519();
    let unknown = Commit {
        unit: UnitRef {
            project: id,
            index: 99,
        },
        seal: ContentId::of(b"x"),
    };
    assert_eq!(
        w.state
            .apply(&Gossip::Commit(Signed::sign(&k, &unknown).expect("sign"))),
        Err(RecordError::UnknownUnit(99))
    );

    // A reveal that does not open the worker's own commit.
    let unit = UnitRef {
        project: id,
        index: 0,
    };
    let (commit, _) = w
        .state
        .commit(&k, unit, Data::Inline(b"a".to_vec()), 1, "test", [1; 32])
        .expect("commit");
    let (_, other_reveal) = w
        .state
        .commit(&k, unit, Data::Inline(b"b".to_vec()), 1, "test", [1; 32])
        .expect("commit");
    assert_eq!(
        w.state.apply(&Gossip::Commit(commit.clone())),
        Ok(Applied::New)
    );
    assert_eq!(
        w.state.apply(&Gossip::Commit(commit)),
        Ok(Applied::Duplicate)
    );
    assert_eq!(
        w.state.apply(&Gossip::Reveal(other_reveal)),
        Err(RecordError::SealMismatch)
    );

    // A reveal whose output does not hash to its result.
    let lying = Reveal {
        unit,
        result_hash: ContentId::of(b"a"),
        output: Data::Inline(b"not a".to_vec()),
        fuel_used: 1,
        engine: "test".into(),
        // The salt of the commit above, so the seal opens and the output
        // is what is checked.
        salt: [1; 32],
    };
    assert_eq!(
        w.state
            .apply(&Gossip::Reveal(Signed::sign(&k, &lying).expect("sign"))),
        Err(RecordError::OutputMismatch)
    );

    // A spot-check key not from the owner.
    let key = SpotCheckKey {
        project: id,
        batch_seq: 0,
        answers: vec![],
    };
    assert_eq!(
        w.state
            .apply(&Gossip::SpotCheckKey(Signed::sign(&k, &key).expect("sign"))),
        Err(RecordError::NotOwner)
    );
    assert_eq!(
        w.state.apply(&Gossip::SpotCheckKey(
            Signed::sign(&owner, &key).expect("sign")
        )),
        Ok(Applied::New)
    );
}

#[test]
fn a_worker_never_gets_a_unit_twice_and_leases_expire() {
    let (_, mut workers) = setup(1, &[], 2, 2, 4);
    let w = &mut workers[0];
    let me = SignerKey::of(&w.key).expect("ed25519");
    let first = w
        .state
        .next_work(&me, 0, 0, &Default::default())
        .expect("work");
    let claim = w
        .state
        .claim(&w.key, &first, 0)
        .expect("claim")
        .expect("not an audit");
    w.state.apply(&Gossip::Claim(claim)).expect("apply");
    let second = w
        .state
        .next_work(&me, 0, 0, &Default::default())
        .expect("other unit");
    assert_ne!(first.unit, second.unit, "never the same unit twice");

    // Two live claims fill both slots of `second` (quorum 2): a third
    // worker is sent elsewhere until the leases expire without commits.
    let other = Keypair::generate_ed25519();
    let c = w
        .state
        .claim(&other, &second, 0)
        .expect("claim")
        .expect("not an audit");
    w.state.apply(&Gossip::Claim(c)).expect("apply");
    let mine = w
        .state
        .claim(&w.key, &second, 0)
        .expect("claim")
        .expect("not an audit");
    w.state.apply(&Gossip::Claim(mine)).expect("apply");
    let third = SignerKey::of(&Keypair::generate_ed25519()).expect("ed25519");
    let before = w
        .state
        .next_work(&third, 1, 0, &Default::default())
        .expect("unit `first` is open");
    assert_eq!(
        before.unit, first.unit,
        "`second` is full while its leases live"
    );
    let first_claim = w
        .state
        .claim(&Keypair::generate_ed25519(), &first, 1)
        .expect("claim")
        .expect("not an audit");
    w.state.apply(&Gossip::Claim(first_claim)).expect("apply");
    assert!(
        w.state
            .next_work(&third, 2, 0, &Default::default())
            .is_none(),
        "every slot is claimed"
    );
    assert!(
        w.state
            .next_work(&third, LEASE_MS + 10, 0, &Default::default())
            .is_some(),
        "expired leases free their slots"
    );
}

#[test]
fn an_evidence_bundle_rechecks_offline_and_catches_tampering() {
    use formic_protocol::results::{CheckError, EvidenceBundle, ResultEntry};

    let (owner, mut workers) = setup(4, &[], 6, 2, 4);
    run(&mut workers, 20);
    let owner_key = SignerKey::of(&owner).expect("ed25519");
    let state = &mut workers[0].state;
    let entries: Vec<ResultEntry> = state
        .validated()
        .into_iter()
        .map(|v| ResultEntry {
            index: v.index,
            input: ContentId::of(format!("unit-{}", v.index).as_bytes()),
            result_hash: v.result_hash,
            output_size: v.output.len(),
            fuel_used: v.fuel_used,
            workers: v.workers.iter().map(|w| w.to_string()).collect(),
        })
        .collect();
    assert_eq!(entries.len(), 6);
    let manifest = workers[0].manifest.clone();
    let bundle = EvidenceBundle::from_state(manifest, &workers[0].state);
    let bytes = bundle.to_bytes().expect("encode");
    let back = EvidenceBundle::from_bytes(&bytes).expect("decode");
    assert_eq!(back.check(&entries, Some(&owner_key)), Ok(6));

    // A listed result that the evidence does not support.
    let mut forged = entries.clone();
    forged[2].result_hash = ContentId::of(b"forged");
    assert!(matches!(
        back.check(&forged, Some(&owner_key)),
        Err(CheckError::WrongResult { index: 2, .. })
    ));

    // The wrong trust anchor.
    let stranger = SignerKey::of(&Keypair::generate_ed25519()).expect("ed25519");
    assert!(matches!(
        back.check(&entries, Some(&stranger)),
        Err(CheckError::WrongOwner { .. })
    ));

    // Dropping the reveals of a unit un-validates it.
    let mut thin = back.clone();
    thin.records.retain(|r| !matches!(r, Gossip::Reveal(s) if s.verify().map(|r| r.unit.index == 3).unwrap_or(false)));
    assert_eq!(
        thin.check(&entries, Some(&owner_key)),
        Err(CheckError::NotValidated(3))
    );
}

#[test]
fn the_verdicts_revision_changes_whenever_the_verdicts_do() {
    // A saboteur among them, so verdicts also move by proven faults.
    let (_, mut workers) = setup(4, &[1], 20, 2, 4);
    let mut last: Option<(u64, String)> = None;
    let mut moves = 0;
    for _ in 0..30 {
        run(&mut workers, 1);
        let w = &mut workers[0];
        let revision = w.state.verdicts_revision();
        let verdicts = format!("{:?}", w.state.outcome().verdicts);
        if let Some((r, v)) = &last {
            if *r == revision {
                assert_eq!(*v, verdicts, "the verdicts changed under one revision");
            } else {
                moves += 1;
            }
        }
        last = Some((revision, verdicts));
    }
    assert!(moves > 0, "the revision never moved");
    // A claim changes no verdict, and so not the revision.
    let before = workers[0].state.verdicts_revision();
    let me = SignerKey::of(&workers[2].key).expect("ed25519");
    let order = workers[2]
        .state
        .work_order(0, false)
        .expect("unit 0 exists");
    let claim = workers[2]
        .state
        .claim(&workers[2].key, &order, 1_000_000)
        .expect("claim")
        .expect("not an audit");
    assert_eq!(claim.signer(), me);
    let _ = workers[0].state.apply(&Gossip::Claim(claim));
    assert_eq!(workers[0].state.verdicts_revision(), before);
}

/// Results computed on different sandbox engines are never counted
/// together: a reveal from another engine is refused, so two workers on
/// different engines do not make a quorum of two, whatever they answer.
#[test]
fn results_of_two_engines_never_meet_in_one_quorum() {
    let (_, mut workers) = setup(1, &[], 1, 2, 3);
    let w = &mut workers[0];
    let unit = UnitRef {
        project: w.state.id(),
        index: 0,
    };
    let output = Data::Inline(b"same answer".to_vec());
    let on_engine = |state: &ProjectState, engine: &str| {
        let key = Keypair::generate_ed25519();
        state
            .commit(&key, unit, output.clone(), 7, engine, [7; 32])
            .expect("commit")
    };
    // One worker on the project's engine, one on an older engine.
    let (c1, r1) = on_engine(&w.state, "test");
    let (c2, r2) = on_engine(&w.state, "older-engine");
    for g in [Gossip::Commit(c1), Gossip::Commit(c2), Gossip::Reveal(r1)] {
        assert_eq!(w.state.apply(&g), Ok(Applied::New));
    }
    assert_eq!(
        w.state.apply(&Gossip::Reveal(r2)),
        Err(RecordError::WrongEngine {
            expected: "test".into(),
            found: "older-engine".into(),
        })
    );
    assert!(
        w.state.validated().is_empty(),
        "a quorum was made across engines"
    );
    // A second worker on the project's engine completes the quorum.
    let (c3, r3) = on_engine(&w.state, "test");
    assert_eq!(w.state.apply(&Gossip::Commit(c3)), Ok(Applied::New));
    assert_eq!(w.state.apply(&Gossip::Reveal(r3)), Ok(Applied::New));
    let validated = w.state.validated();
    assert_eq!(validated.len(), 1);
    assert_eq!(validated[0].workers.len(), 2);
}
