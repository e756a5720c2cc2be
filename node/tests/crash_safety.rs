//! kill -9 at any moment, then restart: no reported result is lost and
//! nothing is corrupt. A real `formic node` process computes alongside two
//! in-process volunteers and is killed with SIGKILL again and again right
//! after it commits a result; each time it restarts on the same data dir.
//! One volunteer is held suspended meanwhile, so no unit reaches its quorum
//! of three and every result the victim committed is still an unpublished
//! reveal when it dies. In the end every unit it claimed or committed to
//! has its reveal, and the project completes with every result agreed.

// These tests wait on child processes and OS threads, in real time.
#![allow(clippy::disallowed_methods)]
// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use formic_node::governor::{Decision, UnitSet};
use formic_node::node::NodeConfig;
use formic_node::node::{Role, Session};
use formic_node::owner::{self, PublishOptions};
use formic_protocol::SignerKey;
use formic_protocol::messages::Gossip;
use formic_work_units::apps;
use rand::Rng;

const KILLS: usize = 4;

/// The victim process, killed when dropped so a failing test leaves no
/// node running behind it.
struct Victim(Child);

impl Victim {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the victim: the real binary, computing one unit at a time, with
/// preferences that let it compute on this busy test machine.
fn start_victim(root: &Path, bootstrap: &str, run: usize) -> Victim {
    let log = std::fs::File::create(root.join(format!("victim-{run}.log"))).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_formic"))
        .args([
            "node",
            "--data-dir",
            root.join("victim").to_str().expect("utf-8 path"),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--threads",
            "1",
            "--bootstrap",
            bootstrap,
            "--log-level",
            "info",
        ])
        .env("XDG_CONFIG_HOME", root.join("config"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Victim)
        .expect("start formic node")
}

/// Every run's log, without terminal colour codes.
fn victim_log(root: &Path) -> String {
    let mut all = String::new();
    for run in 0..=KILLS {
        if let Ok(text) = std::fs::read_to_string(root.join(format!("victim-{run}.log"))) {
            all.push_str(&format!("--- run {run}\n{text}"));
        }
    }
    let mut plain = String::with_capacity(all.len());
    let mut chars = all.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// (claimed or committed units, revealed units) of `who` in `records`.
fn work_of(records: &[Gossip], who: &SignerKey) -> (Vec<u64>, Vec<u64>) {
    let mut started = Vec::new();
    let mut revealed = Vec::new();
    for r in records {
        match r {
            Gossip::Claim(c) if c.signer() == *who => {
                started.extend(c.verify().ok().map(|c| c.unit.index))
            }
            Gossip::Commit(c) if c.signer() == *who => {
                started.extend(c.verify().ok().map(|c| c.unit.index))
            }
            Gossip::Reveal(c) if c.signer() == *who => {
                revealed.extend(c.verify().ok().map(|c| c.unit.index))
            }
            _ => {}
        }
    }
    started.sort_unstable();
    started.dedup();
    revealed.sort_unstable();
    revealed.dedup();
    (started, revealed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_work_again_and_again_loses_no_reported_result() {
    let root = tempfile::tempdir().expect("tempdir");
    let root: PathBuf = root.path().to_path_buf();
    let config_dir = root.join("config/formic");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(
        config_dir.join("formic.toml"),
        // Compute whatever this machine is doing (a desktop user, battery).
        "cpu_threshold_percent = 100\nthreads = 1\nidle_after = \"1s\"\nrun_on_battery = true\n",
    )
    .expect("preferences");

    let local = |name: &str| NodeConfig::local(root.join(name));
    let v0 = Session::start(local("v0"), Role::volunteer(1))
        .await
        .expect("v0");
    let mut cfg = local("v1");
    cfg.network.bootstrap = v0.node.dial_addrs();
    let held_back = UnitSet::new();
    held_back.apply(Decision::Suspended);
    let v1 = Session::start(
        cfg,
        Role {
            governed: Some(held_back.clone()),
            ..Role::volunteer(1)
        },
    )
    .await
    .expect("v1");
    let bootstrap = v0
        .node
        .dial_addrs()
        .first()
        .expect("v0 listens")
        .to_string();

    let mut victim = start_victim(&root, &bootstrap, 0);
    // Its identity exists once it has started; its records are signed with it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let key_file = root.join("victim/identity.key");
    while !key_file.exists() {
        assert!(Instant::now() < deadline, "the victim never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let victim_key = formic_node::identity::load_or_create_node_identity(&root.join("victim"))
        .expect("victim identity");
    let victim_signer = SignerKey::of(&victim_key).expect("ed25519");
    assert!(
        v0.wait_for_peers(2, Duration::from_secs(20)).await >= 2,
        "the victim joined"
    );

    // The owner publishes units of about half a second each and stays to
    // watch (it computes nothing).
    let mut cfg = local("owner");
    cfg.network.bootstrap = v0.node.dial_addrs();
    let owner_node = Session::start(cfg, Role::observer()).await.expect("owner");
    owner_node.wait_for_peers(1, Duration::from_secs(20)).await;
    let units = 40u64;
    let inputs: Vec<Vec<u8>> = (0..units)
        .map(|_| apps::montecarlo_pi_input(20_000_000))
        .collect();
    let owner_key = libp2p::identity::Keypair::generate_ed25519();
    let opts = PublishOptions {
        name: "crash safety".into(),
        quorum: 3,
        max_replicas: 3,
        // Leases outlast a kill and a restart: the victim's claims stay its
        // own to finish.
        lease_ms: 120_000,
        fuel_per_unit: 100_000_000_000,
        ..PublishOptions::default()
    };
    let project = owner::build_project(
        &owner_key,
        apps::MONTECARLO_PI_WAT.as_bytes().to_vec(),
        &inputs,
        &opts,
        0,
        [5; 32],
    )
    .expect("build");
    let id = project.id();
    owner::publish(&owner_node.client(), &project)
        .await
        .expect("publish");
    owner_node.compute.follow(id).await;

    // Kill the victim right after each new commit of its own.
    let mut rng = rand::thread_rng();
    let commits_of = |records: &[Gossip]| -> HashSet<u64> {
        records
            .iter()
            .filter_map(|r| match r {
                Gossip::Commit(c) if c.signer() == victim_signer => {
                    c.verify().ok().map(|c| c.unit.index)
                }
                _ => None,
            })
            .collect()
    };
    let mut seen = HashSet::new();
    for kill in 1..=KILLS {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let records = owner_node
                .compute
                .snapshot(id)
                .await
                .map(|s| s.state.records())
                .unwrap_or_default();
            let now = commits_of(&records);
            if now.iter().any(|u| !seen.contains(u)) {
                seen = now;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the victim committed nothing new before kill {kill}\n{}",
                victim_log(&root)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
        // Child::kill sends SIGKILL: no shutdown code runs.
        victim.kill();
        victim = start_victim(&root, &bootstrap, kill);
    }
    // The held-back volunteer joins in; quorums can now be reached.
    held_back.apply(Decision::Running);

    // The project completes, and every unit the victim claimed or committed
    // to before any of its deaths has its reveal.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last_sync = Instant::now();
    let snap = loop {
        if last_sync.elapsed() > Duration::from_secs(2) {
            let _ = owner_node.client().sync_records(id).await;
            last_sync = Instant::now();
        }
        if let Some(mut snap) = owner_node.compute.snapshot(id).await {
            let (started, revealed) = work_of(&snap.state.records(), &victim_signer);
            if snap.state.is_complete() && started.iter().all(|u| revealed.contains(u)) {
                break snap;
            }
            assert!(
                Instant::now() < deadline,
                "after {KILLS} kills: complete={}, victim started {started:?} but revealed {revealed:?}\n{}",
                snap.state.is_complete(),
                victim_log(&root)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut state = snap.state;
    let (started, revealed) = work_of(&state.records(), &victim_signer);
    assert!(
        revealed.len() >= KILLS,
        "the victim finished work across its restarts: {revealed:?}"
    );
    assert_eq!(started, revealed);
    assert!(
        state.outcome().faulty.is_empty(),
        "every worker is honest, so nobody may be proven faulty"
    );
    assert_eq!(state.validated().len(), units as usize);
    let log = victim_log(&root);
    assert!(
        log.contains("records restored from the state store"),
        "the victim reloaded its state:\n{log}"
    );
    // Its unpublished reveals came back from disk, not from re-running.
    let restored: Vec<u64> = log
        .match_indices("held_reveals=")
        .filter_map(|(i, m)| {
            log[i + m.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .collect();
    assert!(
        restored.iter().any(|n| *n > 0),
        "no restart took back a held reveal: {restored:?}\n{log}"
    );

    victim.kill();
    let _ = owner_node.shutdown().await;
    let _ = v1.shutdown().await;
    let _ = v0.shutdown().await;
}
