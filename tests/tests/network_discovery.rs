//! Five nodes bootstrapping from one find each other through Kademlia
//! within 10 s (mDNS off), over TCP and QUIC, and a gossip message reaches
//! all of them.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use formic_node::network::{RecordVia, Topic, loopback_quic, loopback_tcp};
use formic_tests::*;
use libp2p::identity::Keypair;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_discover_each_other_and_gossip_reaches_all() -> anyhow::Result<()> {
    init_tracing();
    let dirs: Vec<_> = (0..5)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;

    // The bootstrap node listens on TCP and QUIC; one peer joins over QUIC.
    let mut config = test_config(dirs[0].path(), vec![]);
    config.network.listen = vec![loopback_tcp(), loopback_quic()];
    let boot = formic_node::node::start(config).await?;
    let boot_addrs = boot.dial_addrs();
    let tcp = boot_addrs
        .iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .cloned();
    let quic = boot_addrs
        .iter()
        .find(|a| a.to_string().contains("/quic-v1"))
        .cloned();
    let (Some(tcp), Some(quic)) = (tcp, quic) else {
        anyhow::bail!("bootstrap node lacks a TCP or QUIC address")
    };

    let started = Instant::now();
    let mut nodes = vec![boot];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let via = if i == 1 { quic.clone() } else { tcp.clone() };
        nodes.push(start_node(dir.path(), vec![via]).await?);
    }
    let ids: Vec<_> = nodes.iter().map(|n| n.peer_id()).collect();

    // Everyone's routing table holds every other node.
    wait_until(
        Duration::from_secs(10),
        "every routing table holds all other nodes",
        || {
            let nodes = &nodes;
            let ids = &ids;
            async move {
                for n in nodes {
                    let Ok(table) = n.client().routing_table().await else {
                        return false;
                    };
                    let table: HashSet<_> = table.into_iter().collect();
                    if ids
                        .iter()
                        .any(|id| *id != n.peer_id() && !table.contains(id))
                    {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await?;
    let discovery = started.elapsed();
    eprintln!("full discovery took {discovery:?}");
    assert!(discovery < Duration::from_secs(10));

    // Gossip: everyone joins the project topic; the last node publishes.
    let project = project("discovery");
    for n in &nodes {
        n.client().subscribe(Topic::Project(project)).await?;
    }
    let key = Keypair::generate_ed25519();
    let record = commit(&key, project, 1);
    let publisher = nodes[4].client();
    publisher
        .publish(Topic::Project(project), record.clone())
        .await?;
    for n in nodes.iter_mut().take(4) {
        let Some(events) = n.events() else {
            anyhow::bail!("events taken")
        };
        let (source, via) = wait_record(events, Duration::from_secs(10), &record).await?;
        // Subscribing starts a pull-sync, which may win the race with gossip.
        // Gossip is anonymous: who sent it is the peer it came from; who
        // wrote it is the record's own signature (wait_record matched the
        // exact signed bytes).
        match via {
            RecordVia::Gossip { propagation_source } => {
                assert_eq!(source, propagation_source);
                assert!(ids.contains(&source));
            }
            RecordVia::Sync { peer } => assert_eq!(source, peer),
        }
    }

    for n in nodes {
        n.shutdown().await?;
    }
    Ok(())
}

/// Without `kad_server`, Kademlia stays a client until AutoNAT v2 confirms
/// an external address (here: a loopback address another peer dialed back)
/// or a peer dials it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kademlia_is_a_client_until_an_address_is_confirmed() -> anyhow::Result<()> {
    init_tracing();
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let boot = start_node(dirs[0].path(), vec![]).await?;
    let mut config = test_config(dirs[1].path(), boot.dial_addrs());
    config.network.kad_server = false;
    let node = formic_node::node::start(config).await?;
    // Checked before a second peer exists: one that dials this node in
    // would make it serve at once (see the test below).
    assert_eq!(node.client().status().await?.kad_mode, "client");
    let helper = start_node(dirs[2].path(), boot.dial_addrs()).await?;

    // AutoNAT v2 probes every 5 s by default.
    wait_until(
        Duration::from_secs(30),
        "an external address is confirmed and Kademlia serves",
        || {
            let c = node.client();
            async move {
                c.status()
                    .await
                    .is_ok_and(|s| !s.external_addrs.is_empty() && s.kad_mode == "server")
            }
        },
    )
    .await?;
    for n in [boot, node, helper] {
        n.shutdown().await?;
    }
    Ok(())
}

/// The way `formic node` runs by default: nobody is told to serve the DHT.
/// The first node, which everyone else dials, starts serving as soon as a
/// peer reaches it, so the others find each other and each other's blobs
/// through it. (It used to stay a client until AutoNAT confirmed it, which
/// on a fresh network could be never: every peer then knew only the first
/// node and no provider was ever found.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_in_automatic_mode_form_a_dht_through_their_first_node() -> anyhow::Result<()> {
    init_tracing();
    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let auto = |dir: &std::path::Path, bootstrap| {
        let mut config = test_config(dir, bootstrap);
        config.network.kad_server = false;
        formic_node::node::start(config)
    };
    let first = auto(dirs[0].path(), vec![]).await?;
    let mut nodes = vec![first];
    for dir in dirs.iter().skip(1) {
        let boot = nodes[0].dial_addrs();
        nodes.push(auto(dir.path(), boot).await?);
    }
    wait_until(
        Duration::from_secs(10),
        "the first node serves and every routing table holds the others",
        || {
            let refs: Vec<&formic_node::node::RunningNode> = nodes.iter().collect();
            let first = nodes[0].client();
            async move {
                first.status().await.is_ok_and(|s| s.kad_mode == "server")
                    && all_know_each_other(&refs).await
            }
        },
    )
    .await?;

    // A blob stored on the last node is found as provided by another.
    let blob = nodes[3].client().put_blob(test_bytes(4096, 7)).await?;
    let holder = nodes[3].peer_id();
    wait_until(
        Duration::from_secs(10),
        "the blob's provider is found through the DHT",
        || {
            let c = nodes[1].client();
            async move {
                c.find_providers(blob.id)
                    .await
                    .is_ok_and(|p| p.contains(&holder))
            }
        },
    )
    .await?;
    for n in nodes {
        n.shutdown().await?;
    }
    Ok(())
}

/// A node refused by its bootstrap peer (at its connection cap) keeps
/// trying with backoff and joins once the bootstrap peer has room. Before,
/// such a node stayed alone for good: measured with 100 peers starting
/// together, 16 never joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refused_by_a_full_bootstrap_peer_joins_when_there_is_room() -> anyhow::Result<()> {
    init_tracing();
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    // A bootstrap peer with room for one connection.
    let mut config = test_config(dirs[0].path(), vec![]);
    config.network.limits.max_connections = 1;
    let boot = formic_node::node::start(config).await?;
    let boot_id = boot.peer_id();
    let first = start_node(dirs[1].path(), boot.dial_addrs()).await?;
    wait_connected(&first, boot_id, WAIT, "the first peer joins").await?;

    let refused = start_node(dirs[2].path(), boot.dial_addrs()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        refused.client().connected_peers().await?.is_empty(),
        "the bootstrap peer was full, yet the second peer got in"
    );
    // The first peer leaves: there is room now.
    first.shutdown().await?;
    wait_connected(
        &refused,
        boot_id,
        Duration::from_secs(30),
        "the refused peer reaches the bootstrap peer",
    )
    .await?;
    refused.shutdown().await?;
    boot.shutdown().await?;
    Ok(())
}

/// A node whose bootstrap peer is down when it starts keeps dialling it
/// with backoff (Kademlia's periodic bootstrap) and joins once it is up: a
/// volunteer started before the network's first node must not need a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_once_its_bootstrap_peer_comes_up_late() -> anyhow::Result<()> {
    use libp2p::multiaddr::Protocol;
    init_tracing();
    let boot_dir = tempfile::tempdir()?;
    let late_dir = tempfile::tempdir()?;
    // The bootstrap peer's identity and a free port, known before it runs.
    let boot_id = formic_node::identity::load_or_create_node_identity(boot_dir.path())?
        .public()
        .to_peer_id();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = loopback_tcp()
        .replace(1, |_| Some(Protocol::Tcp(port)))
        .expect("loopback_tcp has a TCP port");
    let boot_addr = listen.clone().with(Protocol::P2p(boot_id));

    let late = start_node(late_dir.path(), vec![boot_addr]).await?;
    // Down for longer than a few periodic bootstraps (every 2 s at first
    // in tests).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut config = test_config(boot_dir.path(), vec![]);
    config.network.listen = vec![listen];
    let boot = formic_node::node::start(config).await?;
    assert_eq!(boot.peer_id(), boot_id);

    wait_connected(
        &late,
        boot_id,
        Duration::from_secs(30),
        "the node reaches its late bootstrap peer",
    )
    .await?;
    late.shutdown().await?;
    boot.shutdown().await?;
    Ok(())
}
