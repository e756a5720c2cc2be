//! End to end over real loopback sockets: volunteers including a colluding
//! pair, an owner who publishes and goes offline, and a researcher who
//! joins after publishing, collects, and re-checks the results offline.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use formic_protocol::messages::Gossip;
use formic_protocol::validation::Verdict;

use formic_node::collect;
use formic_node::demo::{self, DemoConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_peers_with_a_colluding_pair_validate_sixty_units_correctly() {
    let root = tempfile::tempdir().expect("tempdir");
    let out = root.path().join("results");
    // Six peers, two of them colluders that always agree: a unit both of
    // them answered is 4 against 2, short of the dispute margin (3), so
    // counting alone never settles it. Only a planted spot check, revealed
    // by the researcher, proves a colluder faulty (and then the other is
    // outvoted 4 to 1). So the run needs one of them to have answered a
    // spot check: at 10% planted that failed about once in 30 runs, hence
    // 25%. Fewer spot checks is a liveness limit of so small a network,
    // not a safety one: no wrong result is accepted either way
    // (docs/VALIDATION.md).
    let config = DemoConfig {
        peers: 6,
        spot_checks: 0.25,
        units: 60,
        saboteurs: 2,
        // Units of ~30 ms of CPU, so that the colluders take part: each
        // volunteer waits up to 0.5 s before its first pick, and with
        // units of a few ms the four honest peers finished all 60 first,
        // leaving nothing to prove a colluder faulty by.
        range: 3_000_000,
        timeout: Duration::from_secs(150),
        results_dir: Some(out.clone()),
        ..DemoConfig::default()
    };
    // demo::run stops the owner as soon as two peers hold the project, and
    // starts the researcher only after that.
    let report = demo::run(root.path(), &config, &|_, _, _| {})
        .await
        .expect("the demo completes");
    assert_eq!(report.spot_checks, 15, "25% of the units planted");
    assert_eq!(report.validated, 60, "every unit validated");
    assert_eq!(
        report.wrong_accepted, 0,
        "every validated output equals an honest local run"
    );

    // Exactly the workers that revealed a wrong result are proven faulty:
    // every colluder that took part, and no honest peer. (A colluder that
    // got no unit before the work ran out has nothing to be proven by.)
    let mut state = report.state.clone();
    let outcome = state.outcome().clone();
    let mut dissenters = BTreeSet::new();
    for record in state.records() {
        let Gossip::Reveal(signed) = record else {
            continue;
        };
        let reveal = signed.verify().expect("stored records verify");
        match outcome.verdicts.get(&reveal.unit) {
            Some(Verdict::Validated { result_hash, .. }) if *result_hash != reveal.result_hash => {
                dissenters.insert(signed.signer());
            }
            _ => {}
        }
    }
    assert!(
        !dissenters.is_empty(),
        "the colluders revealed wrong results"
    );
    assert!(dissenters.len() <= 2, "only the two colluders were wrong");
    let faulty: BTreeSet<_> = outcome.faulty.keys().copied().collect();
    assert_eq!(
        faulty, dissenters,
        "exactly the workers with wrong results are proven faulty"
    );

    // The results folder re-checks offline from its signed evidence alone.
    let summary = collect::verify_dir(&out).expect("the results folder verifies");
    assert_eq!(summary.listed, 60);
    assert_eq!(summary.project, report.project);
    for i in 0..60 {
        assert!(out.join("outputs").join(i.to_string()).is_file());
    }

    // A changed output or a forged table entry is caught.
    let victim = out.join("outputs/7");
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes.push(b'!');
    std::fs::write(&victim, &bytes).expect("write");
    assert!(matches!(
        collect::verify_dir(&out),
        Err(collect::CollectError::OutputMismatch { index: 7 })
    ));
}
