//! End to end over real loopback sockets: volunteers including a colluding
//! pair, an owner who publishes and goes offline, and a researcher who
//! joins after publishing, collects, and re-checks the results offline.

use std::time::Duration;

use formic_node::collect;
use formic_node::demo::{self, DemoConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_peers_with_a_colluding_pair_validate_sixty_units_correctly() {
    let root = tempfile::tempdir().expect("tempdir");
    let out = root.path().join("results");
    // Six peers, two of them colluders that always agree: a unit both of
    // them answered is 4 against 2, short of the dispute margin (3), so
    // counting alone may never settle it. The owner's planted spot checks,
    // revealed by the researcher, prove the colluders faulty and settle it.
    let config = DemoConfig {
        peers: 6,
        spot_checks: 0.1,
        units: 60,
        saboteurs: 2,
        // Units of ~10 ms of CPU: with shorter ones the four honest peers
        // finished all 60 before a colluder's first pick (each volunteer
        // waits up to 0.5 s before its first), so it computed nothing and
        // there was nothing to prove it faulty by.
        range: 1_000_000,
        timeout: Duration::from_secs(150),
        results_dir: Some(out.clone()),
        ..DemoConfig::default()
    };
    // demo::run stops the owner as soon as two peers hold the project, and
    // starts the researcher only after that.
    let report = demo::run(root.path(), &config, &|_, _, _| {})
        .await
        .expect("the demo completes");
    assert_eq!(report.spot_checks, 6, "10% of the units planted");
    assert_eq!(report.validated, 60, "every unit validated");
    assert_eq!(
        report.wrong_accepted, 0,
        "every validated output equals an honest local run"
    );
    assert_eq!(
        report.faulty_workers, 2,
        "both colluders are proven faulty by the evidence"
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
