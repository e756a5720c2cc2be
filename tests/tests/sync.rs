//! Pull-sync over real sockets is incremental: each sync with a peer starts
//! where the last one with it ended, so a researcher that syncs every few
//! seconds pulls only what is new, not the whole project again.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use formic_protocol::messages::Gossip;
use formic_tests::*;
use libp2p::identity::Keypair;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sync_pulls_only_the_records_added_since() -> anyhow::Result<()> {
    init_tracing();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let key = Keypair::generate_ed25519();
    let a = start_node_with_key(dirs[0].path(), &key).await?;
    let p = project("incremental-sync");
    let topic = formic_node::network::Topic::Project(p);
    a.client().subscribe(topic).await?;
    for i in 0..30 {
        a.client().publish(topic, commit(&key, p, i)).await?;
    }
    let b = start_node(dirs[1].path(), a.dial_addrs()).await?;
    b.client().subscribe(topic).await?;
    let holds = |n: usize| {
        let b = b.client();
        move || {
            let b = b.clone();
            async move {
                b.records(p)
                    .await
                    .is_ok_and(|r| r.iter().filter(|g| matches!(g, Gossip::Commit(_))).count() >= n)
            }
        }
    };
    // However the first 30 arrive (the sync at subscription, the publish
    // queue, an explicit sync), after one explicit sync that ends cleanly
    // the next one has nothing to pull.
    wait_until(WAIT, "the second node holds the first records", holds(30)).await?;
    let first = b.client().sync_records(p).await?;
    assert!(first.failures.is_empty(), "{first:?}");
    assert_eq!(first.peers_synced, 1);
    let again = b.client().sync_records(p).await?;
    assert_eq!(again.records_received, 0, "nothing new: {again:?}");

    // Ten more: the next sync pulls those ten and nothing before them.
    for i in 30..40 {
        a.client().publish(topic, commit(&key, p, i)).await?;
    }
    wait_until(WAIT, "the second node holds the new records", holds(40)).await?;
    let after = b.client().sync_records(p).await?;
    assert_eq!(after.records_received, 10, "{after:?}");
    assert_eq!(after.new_records, 0, "gossip brought them first");

    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}
