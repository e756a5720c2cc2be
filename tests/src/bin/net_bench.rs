//! Network benchmark (not a test): run with
//! `cargo run --release -p formic-tests --bin net_bench [-- N...]`.
//!
//! For each N (default 10 and 50) it starts N nodes in this process on
//! loopback (Kademlia, gossipsub, default connection limits), bootstrapping
//! from the first, and measures:
//! - time for a gossip message to reach all other N−1 peers (p50, p99, max
//!   over 20 messages from different publishers);
//! - connections per peer after the network settles, and again after the
//!   idle-connection pruning has had time to run;
//! - resident memory per peer (process RSS growth ÷ N).
//!
//! Then blob throughput between two nodes over loopback (64 MiB, chunked
//! and verified) against a plain TCP copy of the same bytes.

// A benchmark tool, not production code: it stops on the first failure,
// with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use formic_node::network::{NetworkEvent, Topic};
use formic_node::node::RunningNode;
use formic_tests::{commit, percentile, project, rss_bytes, start_node, test_bytes, wait_until};
use libp2p::identity::Keypair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const MESSAGES: u64 = 20;

async fn connections(nodes: &[RunningNode]) -> anyhow::Result<(f64, usize)> {
    let mut total = 0;
    let mut max = 0;
    for n in nodes {
        let c = n.client().status().await?.connections;
        total += c;
        max = max.max(c);
    }
    Ok((total as f64 / nodes.len() as f64, max))
}

async fn gossip_bench(n: usize) -> anyhow::Result<()> {
    let rss_before = rss_bytes();
    let dirs: Vec<_> = (0..n)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut nodes: Vec<RunningNode> = Vec::new();
    let started = Instant::now();
    for dir in &dirs {
        let bootstrap = nodes.first().map(|b| b.dial_addrs()).unwrap_or_default();
        nodes.push(start_node(dir.path(), bootstrap).await?);
    }
    let project = project("bench");
    let topic = Topic::Project(project);
    // Every node's events go to one collector: (node index, record).
    let (tx, mut rx) = mpsc::channel::<(usize, formic_protocol::messages::Gossip)>(65_536);
    for (i, node) in nodes.iter_mut().enumerate() {
        node.client().subscribe(topic).await?;
        let mut events = node.take_events().context("events")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let NetworkEvent::Record { gossip, .. } = ev {
                    let _ = tx.send((i, gossip)).await;
                }
            }
        });
    }
    // Wait for every node to have topic peers (the mesh can form).
    let want = (n - 1).min(4);
    wait_until(
        Duration::from_secs(60),
        "every node has topic peers",
        || {
            let nodes = &nodes;
            async move {
                for node in nodes {
                    match node.client().status().await {
                        Ok(s) if s.connections >= want => {}
                        _ => return false,
                    }
                }
                true
            }
        },
    )
    .await?;
    let formed = started.elapsed();
    // Let gossipsub's heartbeats build the mesh.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let key = Keypair::generate_ed25519();
    let mut latencies = Vec::new();
    let mut delivered_all = 0;
    for m in 0..MESSAGES {
        let publisher = (m as usize * 7) % n;
        let record = commit(&key, project, m);
        let t0 = Instant::now();
        nodes[publisher]
            .client()
            .publish(topic, record.clone())
            .await?;
        let mut got: HashMap<usize, ()> = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.len() < n - 1 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((i, g))) if g == record => {
                    got.insert(i, ());
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        if got.len() == n - 1 {
            delivered_all += 1;
            latencies.push(t0.elapsed());
        }
    }
    latencies.sort();
    let (avg_conn, max_conn) = connections(&nodes).await?;
    let rss = rss_bytes().saturating_sub(rss_before);
    println!(
        "N={n}: network formed in {:.2} s; {delivered_all}/{MESSAGES} messages reached all {} peers; \
         latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        formed.as_secs_f64(),
        n - 1,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    println!(
        "N={n}: connections per peer avg {avg_conn:.1}, max {max_conn}; memory {:.1} MB per peer (RSS growth {:.0} MB)",
        rss as f64 / n as f64 / 1e6,
        rss as f64 / 1e6
    );
    // Idle pruning runs above 25 peers after 30 s without traffic.
    if n > 26 {
        tokio::time::sleep(Duration::from_secs(40)).await;
        let (avg_conn, max_conn) = connections(&nodes).await?;
        println!(
            "N={n}: after 40 s idle (pruning): connections per peer avg {avg_conn:.1}, max {max_conn}"
        );
    }
    for node in nodes {
        node.shutdown().await?;
    }
    Ok(())
}

async fn blob_bench() -> anyhow::Result<()> {
    const SIZE: usize = 64 * 1024 * 1024;
    let bytes = test_bytes(SIZE, 3);
    let dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let a = start_node(dirs[0].path(), vec![]).await?;
    let b = start_node(dirs[1].path(), a.dial_addrs()).await?;
    wait_until(Duration::from_secs(10), "the two nodes connect", || {
        let c = b.client();
        async move { c.connected_peers().await.is_ok_and(|p| !p.is_empty()) }
    })
    .await?;
    let blob = a.client().put_blob(bytes.clone()).await?;
    let t0 = Instant::now();
    let got = b.client().fetch_blob_with(blob, vec![a.peer_id()]).await?.0;
    let blob_time = t0.elapsed();
    anyhow::ensure!(got == bytes, "blob differs");

    // Plain TCP copy of the same bytes over loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let data = bytes.clone();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.write_all(&data).await?;
        s.shutdown().await?;
        anyhow::Ok(())
    });
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = Vec::with_capacity(SIZE);
    s.read_to_end(&mut buf).await?;
    let tcp_time = t0.elapsed();
    server.await??;
    anyhow::ensure!(buf.len() == SIZE, "TCP copy short");

    let mb = SIZE as f64 / 1e6;
    println!(
        "blob {:.0} MB over loopback: fetch (1 MiB chunks, verified, stored) {:.0} MB/s ({:.2} s); plain TCP copy {:.0} MB/s ({:.3} s); ratio {:.1}x",
        mb,
        mb / blob_time.as_secs_f64(),
        blob_time.as_secs_f64(),
        mb / tcp_time.as_secs_f64(),
        tcp_time.as_secs_f64(),
        blob_time.as_secs_f64() / tcp_time.as_secs_f64()
    );
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    formic_tests::init_tracing();
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 50]
    } else {
        sizes
    };
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH
    );
    for n in sizes {
        gossip_bench(n).await?;
    }
    blob_bench().await?;
    Ok(())
}
