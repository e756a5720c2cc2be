//! The computing layer obeys the idle governor: while it says suspended no
//! unit starts, and units start as soon as it says running. Real nodes over
//! loopback; the governor's decision is set directly on its unit set.

use std::time::{Duration, Instant};

use formic_node::governor::{Decision, UnitSet};
use formic_node::network::NodeConfig;
use formic_node::owner::{self, PublishOptions};
use formic_node::session::{Role, Session};
use formic_work_units::apps;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unit_starts_while_the_governor_says_suspended() {
    let root = tempfile::tempdir().expect("tempdir");
    let units = UnitSet::new();
    units.apply(Decision::Suspended);
    let volunteer_role = Role {
        governed: Some(units.clone()),
        idle_priority: true,
        ..Role::volunteer(1)
    };
    let volunteer = Session::start(NodeConfig::local(root.path().join("v")), volunteer_role)
        .await
        .expect("volunteer starts");
    let mut owner_cfg = NodeConfig::local(root.path().join("o"));
    owner_cfg.bootstrap = volunteer.node.dial_addrs();
    let owner_node = Session::start(owner_cfg, Role::observer())
        .await
        .expect("owner starts");
    assert!(owner_node.wait_for_peers(1, Duration::from_secs(20)).await >= 1);

    let key = libp2p::identity::Keypair::generate_ed25519();
    let inputs: Vec<Vec<u8>> = (0..4u64)
        .map(|i| apps::primes_input(i * 1000, (i + 1) * 1000))
        .collect();
    let opts = PublishOptions {
        quorum: 1,
        max_replicas: 2,
        ..PublishOptions::default()
    };
    let project = owner::build_project(
        &key,
        apps::PRIMES_WAT.as_bytes().to_vec(),
        &inputs,
        &opts,
        0,
        [9; 32],
    )
    .expect("build");
    owner::publish(&owner_node.client(), &project)
        .await
        .expect("publish");

    // The volunteer follows the project but computes nothing while suspended.
    let status = volunteer.compute.status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status.borrow().projects.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the volunteer never followed the project"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status.borrow().computed,
        0,
        "a unit ran while the governor said suspended"
    );
    assert_eq!(status.borrow().running, 0);

    // Running: the units get computed.
    units.apply(Decision::Running);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status.borrow().computed < 4 {
        assert!(
            Instant::now() < deadline,
            "units did not run after the governor said running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = owner_node.shutdown().await;
    let _ = volunteer.shutdown().await;
}
