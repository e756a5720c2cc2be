//! Verified blob exchange: a 20 MB blob added on A is fetched by E after A
//! has gone offline, from peers that fetched it earlier; and a provider
//! serving a corrupted chunk is caught, dropped and the chunk re-fetched
//! from another provider.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use formic_node::network::NetworkEvent;
use formic_node::node::RunningNode;
use formic_protocol::blob_transfer::CHUNK_SIZE;
use formic_tests::*;

async fn network(
    dirs: &[tempfile::TempDir],
    corrupt: &[usize],
) -> anyhow::Result<Vec<RunningNode>> {
    let mut nodes: Vec<RunningNode> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let bootstrap = nodes.first().map(|n| n.dial_addrs()).unwrap_or_default();
        let mut config = test_config(dir.path(), bootstrap);
        config.network.fault.corrupt_chunks = corrupt.contains(&i);
        nodes.push(formic_node::node::start(config).await?);
    }
    let all: Vec<_> = nodes.iter().collect();
    wait_until(Duration::from_secs(10), "all nodes know each other", || {
        all_know_each_other(&all)
    })
    .await?;
    Ok(nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_survives_its_publisher_going_offline() -> anyhow::Result<()> {
    init_tracing();
    let dirs: Vec<_> = (0..5)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut nodes = network(&dirs, &[]).await?;
    let bytes = test_bytes(20 * 1000 * 1000, 7);

    let a = nodes.remove(0);
    let blob = a.client().put_blob(bytes.clone()).await?;
    assert_eq!(blob.size, bytes.len() as u64);

    // B and C fetch it (from A) and so become providers too.
    for n in &nodes[..2] {
        let (got, report) = n.client().fetch_blob_with(blob, vec![]).await?;
        assert!(got == bytes, "fetched bytes differ");
        assert!(report.rejected.is_empty());
    }
    a.shutdown().await?;

    let e = &nodes[3];
    let (got, report) = e.client().fetch_blob_with(blob, vec![]).await?;
    assert!(got == bytes, "E's bytes differ");
    let b_or_c = [nodes[0].peer_id(), nodes[1].peer_id()];
    assert!(!report.served_by.is_empty());
    assert!(
        report.served_by.iter().all(|p| b_or_c.contains(p)),
        "served by {:?}",
        report.served_by
    );
    // E stored it and provides it in turn.
    assert!(e.blob_store().has(&blob.id));
    let providers = nodes[2].client().find_providers(blob.id).await?;
    assert!(
        providers.contains(&e.peer_id()),
        "E does not provide the blob"
    );

    for n in nodes {
        n.shutdown().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_chunk_is_rejected_and_fetched_from_another_provider() -> anyhow::Result<()> {
    init_tracing();
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    // Node 0 serves every chunk with a flipped byte.
    let mut nodes = network(&dirs, &[0]).await?;
    let bytes = test_bytes(3 * CHUNK_SIZE + 12_345, 11);
    let blob = nodes[0].client().put_blob(bytes.clone()).await?;
    nodes[1].client().put_blob(bytes.clone()).await?;
    let (bad, good) = (nodes[0].peer_id(), nodes[1].peer_id());

    let fetcher = nodes[2].client();
    let (got, report) = fetcher.fetch_blob_with(blob, vec![bad, good]).await?;
    assert!(got == bytes, "fetched bytes differ");
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(report.rejected[0].0, bad);
    assert!(report.refetched_chunks >= 1);
    assert_eq!(report.served_by, vec![good]);

    let Some(events) = nodes[2].events() else {
        anyhow::bail!("events taken")
    };
    wait_event(
        events,
        Duration::from_secs(5),
        "the bad provider to be reported",
        |ev| match ev {
            NetworkEvent::PeerMisbehaved { peer, .. } if *peer == bad => Some(()),
            _ => None,
        },
    )
    .await?;

    for n in nodes {
        n.shutdown().await?;
    }
    Ok(())
}
