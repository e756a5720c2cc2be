//! Three nodes, each restarted in turn with the same identity (its data
//! directory): the network re-forms (from the peers remembered in
//! `peers.json`, with no bootstrap list), records published while a node was
//! down reach it by pull-sync, and fresh gossip reaches everyone again.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use formic_node::network::{NetworkEvent, RecordVia, Topic};
use formic_node::node::RunningNode;
use formic_tests::*;
use libp2p::PeerId;
use libp2p::identity::Keypair;

const WAIT: Duration = Duration::from_secs(15);

/// A test node that sends each record at once, alone. Bundling holds a
/// record published within 25 ms of the previous one, and this test runs
/// fast enough that a held record could leave after the stopped node is
/// back, arriving by gossip instead of the pull-sync the test is about.
async fn start_unbundled(
    dir: &std::path::Path,
    bootstrap: Vec<libp2p::Multiaddr>,
) -> anyhow::Result<RunningNode> {
    let mut config = test_config(dir, bootstrap);
    config.network.limits.bundle_window = Duration::ZERO;
    Ok(formic_node::node::start(config).await?)
}

/// Whether every node has every other in its Kademlia routing table, which
/// is what `peers.json` remembers. Being connected is not enough: a peer
/// enters the table once identify reports its listen addresses, and a node
/// stopped before that (it happened under load, in CI) restarts on a new
/// port knowing nobody, while the others only know its old port.
async fn all_known(nodes: &[RunningNode]) -> bool {
    for n in nodes {
        match n.client().routing_table().await {
            Ok(table) if lists_the_others(nodes, n, &table) => {}
            _ => return false,
        }
    }
    true
}

async fn fully_connected(nodes: &[RunningNode]) -> bool {
    for n in nodes {
        match n.client().connected_peers().await {
            Ok(peers) if lists_the_others(nodes, n, &peers) => {}
            _ => return false,
        }
    }
    true
}

/// Whether `list`, as seen from node `me`, holds every other node.
fn lists_the_others(nodes: &[RunningNode], me: &RunningNode, list: &[PeerId]) -> bool {
    nodes
        .iter()
        .all(|o| o.peer_id() == me.peer_id() || list.contains(&o.peer_id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_reforms_after_each_node_restarts() -> anyhow::Result<()> {
    init_tracing();
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let project = project("restarts");
    let topic = Topic::Project(project);
    let key = Keypair::generate_ed25519();

    let mut nodes: Vec<RunningNode> = Vec::new();
    let mut events = Vec::new();
    for dir in &dirs {
        let bootstrap = nodes.iter().flat_map(|n| n.dial_addrs()).collect();
        let mut node = start_unbundled(dir.path(), bootstrap).await?;
        node.client().subscribe(topic).await?;
        let Some(ev) = node.take_events() else {
            anyhow::bail!("events taken")
        };
        events.push(ev);
        nodes.push(node);
    }
    wait_until(WAIT, "the three nodes are connected", || {
        fully_connected(&nodes)
    })
    .await?;

    let mut next_index = 0u64;
    for round in 0..3 {
        wait_until(WAIT, "every node knows the others", || all_known(&nodes)).await?;
        // Stop node `round`; the others keep publishing meanwhile.
        let old = nodes.remove(round);
        let old_id = old.peer_id();
        old.shutdown().await?;
        let missed = commit(&key, project, next_index);
        next_index += 1;
        nodes[0].client().publish(topic, missed.clone()).await?;

        // Restart with the same data directory and no bootstrap list.
        let mut back = start_unbundled(dirs[round].path(), vec![]).await?;
        assert_eq!(back.peer_id(), old_id, "identity changed across restart");
        back.client().subscribe(topic).await?;
        let Some(ev) = back.take_events() else {
            anyhow::bail!("events taken")
        };
        events[round] = ev;
        nodes.insert(round, back);
        wait_until(
            WAIT,
            &format!("round {round}: the network re-formed"),
            || fully_connected(&nodes),
        )
        .await?;

        // What it missed while down arrives by pull-sync.
        let via = wait_event(
            &mut events[round],
            WAIT,
            "the missed record",
            |ev| match ev {
                NetworkEvent::Record { gossip, via, .. } if *gossip == missed => Some(*via),
                _ => None,
            },
        )
        .await?;
        assert!(
            matches!(via, RecordVia::Sync { .. }),
            "missed record came by {via:?}"
        );

        // Fresh gossip from the restarted node reaches the others, and theirs reaches it.
        let fresh = commit(&key, project, next_index);
        next_index += 1;
        nodes[round].client().publish(topic, fresh.clone()).await?;
        for (i, ev) in events.iter_mut().enumerate() {
            if i != round {
                wait_record(ev, WAIT, &fresh).await?;
            }
        }
        let other = (round + 1) % 3;
        let reply = commit(&key, project, next_index);
        next_index += 1;
        nodes[other].client().publish(topic, reply.clone()).await?;
        for (i, ev) in events.iter_mut().enumerate() {
            if i != other {
                wait_record(ev, WAIT, &reply).await?;
            }
        }

        // Every node now holds every record published so far.
        for n in &nodes {
            let held = n.client().records(project).await?.len() as u64;
            assert_eq!(
                held,
                next_index,
                "round {round}: {} holds {held} of {next_index} records",
                n.peer_id()
            );
        }
    }
    for n in nodes {
        n.shutdown().await?;
    }
    Ok(())
}

/// `peers.json` is written while a node runs, soon after it joins, not only
/// when it stops: another command on the same data dir (or a crash) must
/// find the peers of a running node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_json_is_written_while_the_node_runs() -> anyhow::Result<()> {
    init_tracing();
    let dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let first = start_node(dirs[0].path(), vec![]).await?;
    let second = start_node(dirs[1].path(), first.dial_addrs()).await?;
    let path = dirs[1].path().join("peers.json");
    let first_id = first.peer_id().to_string();
    wait_until(Duration::from_secs(30), "peers.json names the peer", || {
        let path = path.clone();
        let first_id = first_id.clone();
        async move { std::fs::read_to_string(&path).is_ok_and(|text| text.contains(&first_id)) }
    })
    .await?;
    let _ = second.shutdown().await;
    let _ = first.shutdown().await;
    Ok(())
}
