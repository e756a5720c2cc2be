//! Gossip bundles over real sockets: a burst of a node's own records leaves
//! as bundles signed as one batch and arrives whole, each record once and
//! each verifiable alone; and a node that reads its events too slowly is
//! told which project's records it missed, and finds them in the store;
//! and a node that stops while it holds records sends them first.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use formic_node::network::{NetworkEvent, RecordVia, Topic};
use formic_node::node::RunningNode;
use formic_protocol::messages::Gossip;
use formic_tests::*;
use libp2p::identity::Keypair;

const WAIT: Duration = Duration::from_secs(20);

/// Two connected nodes in one project's topic, its mesh formed: `a` signs
/// with `key`; `b`'s event queue holds `event_queue` events, and `events`
/// is it, drained of the probes that formed the mesh.
struct Pair {
    a: RunningNode,
    b: RunningNode,
    events: tokio::sync::mpsc::Receiver<NetworkEvent>,
    key: Keypair,
    project: formic_protocol::messages::ProjectId,
    topic: Topic,
    _dirs: [tempfile::TempDir; 2],
}

async fn pair(event_queue: usize) -> anyhow::Result<Pair> {
    init_tracing();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let key = Keypair::generate_ed25519();
    let a = start_node_with_key(dirs[0].path(), &key).await?;
    let mut config = test_config(dirs[1].path(), a.dial_addrs());
    config.network.limits.event_queue = event_queue;
    let mut b = formic_node::node::start(config).await?;
    let mut events = b
        .take_events()
        .ok_or_else(|| anyhow::anyhow!("events taken"))?;
    let project = project("bundles");
    let topic = Topic::Project(project);
    a.client().subscribe(topic).await?;
    b.client().subscribe(topic).await?;
    mesh_up(&a, &mut events, &key, topic).await?;
    while events.try_recv().is_ok() {}
    Ok(Pair {
        a,
        b,
        events,
        key,
        project,
        topic,
        _dirs: dirs,
    })
}

impl Pair {
    /// Publishes commits for units 0..n from `a`, back to back.
    async fn burst(&self, n: u64) -> anyhow::Result<()> {
        for i in 0..n {
            self.a
                .client()
                .publish(self.topic, commit(&self.key, self.project, i))
                .await?;
        }
        Ok(())
    }
}

/// Publishes probes from `a` until `b` hears one: the topic's mesh is up.
async fn mesh_up(
    a: &RunningNode,
    events: &mut tokio::sync::mpsc::Receiver<NetworkEvent>,
    key: &Keypair,
    topic: Topic,
) -> anyhow::Result<()> {
    let p = project("bundles");
    for i in 0..40u64 {
        let probe = commit(key, p, 1_000_000 + i);
        a.client().publish(topic, probe.clone()).await?;
        if wait_record(events, Duration::from_millis(500), &probe)
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    anyhow::bail!("the topic's mesh never formed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_records_arrives_bundled_and_batch_signed() -> anyhow::Result<()> {
    let pair = pair(1024).await?;
    let n = 60u64;
    pair.burst(n).await?;
    // The rest of `pair` (its data dirs) lives to the end of the test.
    let Pair {
        a,
        b,
        mut events,
        project: p,
        ..
    } = pair;
    let mut seen = std::collections::BTreeSet::new();
    let (mut gossiped, mut batch_signed) = (0, 0);
    while seen.len() < n as usize {
        let (index, by_gossip, batched) =
            wait_event(&mut events, WAIT, "the burst's records", |ev| match ev {
                NetworkEvent::Record {
                    gossip: Gossip::Commit(c),
                    via,
                    ..
                } => {
                    // Each record verifies alone, from its own bytes.
                    let bytes = Gossip::Commit(c.clone()).to_bytes().ok()?;
                    let fresh = Gossip::from_bytes(&bytes).ok()?;
                    fresh.verify().ok()?;
                    let index = c.verify().ok()?.unit.index;
                    let by_gossip = matches!(via, RecordVia::Gossip { .. });
                    (index < n).then_some((index, by_gossip, c.is_batch_signed()))
                }
                _ => None,
            })
            .await?;
        assert!(seen.insert(index), "record {index} reported twice");
        gossiped += usize::from(by_gossip);
        batch_signed += usize::from(by_gossip && batched);
    }
    // 60 records published back to back cannot all go alone: the first
    // does, the rest wait for the topic's window and share a signature.
    // Only gossip counts: `b`'s first pull-sync from `a` (when it learns
    // of `a`'s subscription) may race the burst and fetch records in the
    // ≤ 25 ms before their bundle leaves, in their single-signed form.
    assert!(
        batch_signed * 2 >= gossiped,
        "only {batch_signed} of the {gossiped} records gossiped came signed as a batch"
    );
    // Each node holds every record once: the sender swapped its own forms
    // for the batch-signed ones instead of adding them.
    for node in [&a, &b] {
        let held = node.client().records(p).await?;
        let burst = held
            .iter()
            .filter(
                |g| matches!(g, Gossip::Commit(c) if c.verify().is_ok_and(|c| c.unit.index < n)),
            )
            .count();
        assert_eq!(burst, n as usize);
    }
    let sender_batched = a
        .client()
        .records(p)
        .await?
        .iter()
        .filter(|g| matches!(g, Gossip::Commit(c) if c.is_batch_signed()))
        .count();
    assert!(
        sender_batched >= (n as usize) / 2,
        "the sender kept {sender_batched} batch forms"
    );
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopping_mid_window_sends_what_it_held() -> anyhow::Result<()> {
    let pair = pair(1024).await?;
    let n = 20u64;
    // All but the first wait in the outbox for the topic's window, and the
    // node stops inside it: the stop must send them, since nobody can sync
    // them from a stopped node.
    pair.burst(n).await?;
    let Pair {
        a, b, mut events, ..
    } = pair;
    a.shutdown().await?;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < n as usize {
        let index = wait_event(&mut events, WAIT, "the held records", |ev| match ev {
            NetworkEvent::Record {
                gossip: Gossip::Commit(c),
                ..
            } => c.verify().ok().map(|c| c.unit.index).filter(|i| *i < n),
            _ => None,
        })
        .await?;
        seen.insert(index);
    }
    b.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_record_events_are_reported_and_the_records_kept() -> anyhow::Result<()> {
    // Room for a handful of events only.
    let pair = pair(4).await?;
    let n = 100u64;
    pair.burst(n).await?;
    let Pair {
        a,
        b,
        mut events,
        project: p,
        ..
    } = pair;
    // Not reading events meanwhile: most of them are dropped.
    wait_until(WAIT, "the second node stores the burst", || async {
        b.client().records(p).await.is_ok_and(|r| {
            r.iter()
                .filter(|g| matches!(g, Gossip::Commit(c) if c.verify().is_ok_and(|c| c.unit.index < n)))
                .count()
                == n as usize
        })
    })
    .await?;
    let mut delivered = 0;
    let missed = wait_event(
        &mut events,
        WAIT,
        "word of the missed records",
        |ev| match ev {
            NetworkEvent::Record { .. } => {
                delivered += 1;
                None
            }
            NetworkEvent::RecordsMissed { project } => Some(*project),
            _ => None,
        },
    )
    .await?;
    assert_eq!(missed, p);
    assert!(
        delivered < n,
        "every event was delivered: nothing to report"
    );
    let status = b.client().status().await?;
    assert!(status.dropped_events > 0);
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}
