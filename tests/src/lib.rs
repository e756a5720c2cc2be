//! Harness for Formic's multi-node tests: start real nodes in-process on
//! loopback sockets, make signed records, and wait on conditions and events
//! with deadlines (gossipsub runs on real time: never sleep a fixed time).

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use formic_node::network::{NetworkEvent, RecordVia};
use formic_node::node::{self, NodeConfig, RunningNode};
use formic_protocol::messages::{Commit, Gossip, ProjectId, UnitRef};
use formic_protocol::{ContentId, Signed};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

/// Logs to stderr when `RUST_LOG` is set (once per test binary).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

/// Config of a test node in `dir`: loopback TCP, no mDNS, Kademlia server.
pub fn test_config(dir: &Path, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    let mut config = NodeConfig::local(dir.to_path_buf());
    config.network.bootstrap = bootstrap;
    // Tests want convergence in seconds.
    config.network.bootstrap_interval = Duration::from_secs(2);
    config
}

/// Starts a test node in `dir`.
pub async fn start_node(dir: &Path, bootstrap: Vec<Multiaddr>) -> anyhow::Result<RunningNode> {
    node::start(test_config(dir, bootstrap))
        .await
        .context("starting a test node")
}

/// Starts a test node in `dir` with no bootstrap peer whose network identity
/// is `key`, so the test can sign records as that node's own (its outbox
/// bundles and batch-signs only those).
pub async fn start_node_with_key(dir: &Path, key: &Keypair) -> anyhow::Result<RunningNode> {
    let mut config = test_config(dir, vec![]);
    config.keypair = Some(key.clone());
    node::start(config).await.context("starting a test node")
}

/// Polls `check` every 50 ms until it returns true, for at most `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node` is connected to `peer`, for at most `timeout`.
pub async fn wait_connected(
    node: &RunningNode,
    peer: PeerId,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    wait_until(timeout, what, || {
        let c = node.client();
        async move { c.connected_peers().await.is_ok_and(|p| p.contains(&peer)) }
    })
    .await
}

/// Waits for the first event matching `pred`, skipping others.
pub async fn wait_event<T>(
    events: &mut mpsc::Receiver<NetworkEvent>,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&NetworkEvent) -> Option<T>,
) -> anyhow::Result<T> {
    let wait = async {
        while let Some(ev) = events.recv().await {
            if let Some(t) = pred(&ev) {
                return Some(t);
            }
        }
        None
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => bail!("event stream closed while waiting for {what}"),
        Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Waits for a record whose bytes equal `expected`'s; returns who sent it
/// and how (gossip, or pull-sync when a sync was faster).
pub async fn wait_record(
    events: &mut mpsc::Receiver<NetworkEvent>,
    timeout: Duration,
    expected: &Gossip,
) -> anyhow::Result<(PeerId, RecordVia)> {
    wait_event(events, timeout, "a record", |ev| match ev {
        NetworkEvent::Record {
            source,
            via,
            gossip,
            ..
        } if gossip == expected => Some((*source, *via)),
        _ => None,
    })
    .await
}

/// A project id for tests.
pub fn project(name: &str) -> ProjectId {
    ContentId::of(name.as_bytes())
}

/// A signed Commit record for unit `index` of `project`.
pub fn commit(key: &Keypair, project: ProjectId, index: u64) -> Gossip {
    let commit = Commit {
        unit: UnitRef { project, index },
        seal: ContentId::of(&index.to_be_bytes()),
    };
    // Signing with a freshly generated ed25519 key cannot fail.
    Gossip::Commit(Signed::sign(key, &commit).expect("signing a test record"))
}

/// Deterministic pseudo-random bytes (xorshift), fast to make in bulk.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every pair of nodes is in the other's routing table, or all see each
/// other as connected peers: polls each node's status.
pub async fn all_know_each_other(nodes: &[&RunningNode]) -> bool {
    for n in nodes {
        let Ok(status) = n.client().status().await else {
            return false;
        };
        let known = status.routing_table_size;
        if known < nodes.len() - 1 {
            return false;
        }
    }
    true
}

/// This process's resident memory (VmRSS), 0 where /proc is not readable.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The `p` quantile (0..=1) of already sorted durations; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
