//! Network scale benchmark (not a test): N peers spread over several
//! processes, up to N = 1,000 on one machine. Run with
//!
//! ```sh
//! cargo run --release -p formic-tests --bin scale_bench -- --peers 300 --procs 15
//! ```
//!
//! The parent process runs peer 0, the bootstrap peer every other peer is
//! given (a Kademlia server, as `formic node --kad-server` would be), and
//! starts `--procs` worker processes of this same binary, each running its
//! share of the other peers on loopback TCP with the default connection
//! limits. Workers talk to the parent over stdin/stdout lines:
//!
//! - parent → worker: `status`, `publish <local index> <message>`, `quit`;
//! - worker → parent: `ready`, `status <json>`, and
//!   `recv <global index> <message> <unix ns>` for every bench record heard.
//!
//! It reports, once every peer has at least `min(4, N−1)` connections and a
//! gossip mesh peer:
//! - how long forming took;
//! - time for a gossip message to reach all other N−1 peers (p50, p99, max
//!   over `--messages` messages from publishers spread over all processes),
//!   measured on one host clock (receive time − publish time), once right
//!   after forming and once after the idle pause;
//! - connections per peer, right after forming and after `--idle` seconds
//!   without traffic (idle-connection pruning);
//! - resident memory per peer (each worker's RSS growth ÷ its peers);
//! - CPU used by all peers while idle, which on a small machine tells
//!   whether the latencies above are the protocol's or a saturated CPU's.

// A benchmark tool, not production code: it stops on the first failure,
// with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use formic_node::network::{NetworkEvent, Topic};
use formic_node::node::RunningNode;
use formic_protocol::messages::Gossip;
use formic_tests::{commit, percentile, project, rss_bytes, start_node};
use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;

fn flag<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// CPU time this process has used (user + system), in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) close with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 11 and 12 here.
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Many peers per process need many sockets: raise the soft descriptor
/// limit to the hard one.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The bench's records, the same in every process: message `m` is a
/// commit for unit `m` signed with a fixed key.
fn bench_records(messages: u64) -> Vec<Gossip> {
    let key = Keypair::ed25519_from_bytes([7u8; 32]).expect("a 32-byte ed25519 secret");
    (0..messages)
        .map(|m| commit(&key, project("scale"), m))
        .collect()
}

/// Forwards every bench record one node hears as `(global index, m, ns)`.
fn watch(node: &mut RunningNode, global: usize, records: &[Gossip], tx: mpsc::Sender<String>) {
    let Some(mut events) = node.take_events() else {
        return;
    };
    let records = records.to_vec();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let NetworkEvent::Record { gossip, .. } = ev
                && let Some(m) = records.iter().position(|r| *r == gossip)
            {
                let _ = tx.send(format!("recv {global} {m} {}", unix_ns())).await;
            }
        }
    });
}

async fn node_status(node: &RunningNode) -> (usize, usize) {
    node.client()
        .status()
        .await
        .map_or((0, 0), |s| (s.connections, s.mesh_peers))
}

// ---------------------------------------------------------------- worker --

async fn worker(
    dir: PathBuf,
    first: usize,
    count: usize,
    bootstrap: Multiaddr,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let messages = flag("--messages", 20u64);
    // Two rounds: after forming, and after the idle pause.
    let records = bench_records(2 * messages);
    let topic = Topic::Project(project("scale"));
    let (tx, mut rx) = mpsc::channel::<String>(65_536);
    // One writer owns stdout, so lines never interleave.
    tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(line) = rx.recv().await {
            if out.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                break;
            }
            let _ = out.flush().await;
        }
    });
    let rss_before = rss_bytes();
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        let node_dir = dir.join(format!("peer-{}", first + i));
        let mut node = start_node(&node_dir, vec![bootstrap.clone()]).await?;
        node.client().subscribe(topic).await?;
        watch(&mut node, first + i, &records, tx.clone());
        nodes.push(node);
    }
    tx.send("ready".into()).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status"] => {
                let mut peers = Vec::with_capacity(nodes.len());
                for n in &nodes {
                    peers.push(node_status(n).await);
                }
                let rss = rss_bytes().saturating_sub(rss_before);
                let status = json!({ "peers": peers, "rss": rss, "cpu": cpu_seconds() });
                tx.send(format!("status {status}")).await?;
            }
            ["publish", local, m] => {
                let (local, m): (usize, usize) = (local.parse()?, m.parse()?);
                let (Some(node), Some(record)) = (nodes.get(local), records.get(m)) else {
                    bail!("no peer {local} or message {m} here");
                };
                node.client().publish(topic, record.clone()).await?;
            }
            ["quit"] => break,
            _ => bail!("unknown command {line:?}"),
        }
    }
    for node in nodes {
        let _ = node.shutdown().await;
    }
    Ok(())
}

// ---------------------------------------------------------------- parent --

struct Worker {
    first: usize,
    count: usize,
    stdin: ChildStdin,
}

struct Status {
    /// (connections, mesh peers) of every peer, peer 0 first.
    peers: Vec<(usize, usize)>,
    rss: u64,
    /// CPU seconds used so far by every process, the parent included.
    cpu: f64,
}

/// Lines from all workers, tagged with the worker's index.
type Lines = mpsc::Receiver<(usize, String)>;

async fn status(
    node0: &RunningNode,
    workers: &mut [Worker],
    lines: &mut Lines,
) -> anyhow::Result<Status> {
    for w in workers.iter_mut() {
        w.stdin.write_all(b"status\n").await?;
    }
    let mut per_worker: HashMap<usize, Status> = HashMap::new();
    while per_worker.len() < workers.len() {
        let (w, line) = tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .context("a worker did not answer status in 60 s")?
            .context("a worker exited")?;
        if let Some(body) = line.strip_prefix("status ") {
            let v: serde_json::Value = serde_json::from_str(body)?;
            let peers: Vec<(usize, usize)> = serde_json::from_value(v["peers"].clone())?;
            let cpu = v["cpu"].as_f64().unwrap_or(0.0);
            let rss = v["rss"].as_u64().unwrap_or(0);
            per_worker.insert(w, Status { peers, rss, cpu });
        }
    }
    let mut peers = vec![node_status(node0).await];
    let mut rss = 0;
    let mut cpu = cpu_seconds();
    for w in 0..workers.len() {
        if let Some(s) = per_worker.remove(&w) {
            peers.extend(s.peers);
            rss += s.rss;
            cpu += s.cpu;
        }
    }
    Ok(Status { peers, rss, cpu })
}

fn conn_summary(s: &Status) -> String {
    let total: usize = s.peers.iter().map(|p| p.0).sum();
    let max = s.peers.iter().map(|p| p.0).max().unwrap_or(0);
    let min = s.peers.iter().map(|p| p.0).min().unwrap_or(0);
    let mesh: usize = s.peers.iter().map(|p| p.1).sum();
    let mesh_min = s.peers.iter().map(|p| p.1).min().unwrap_or(0);
    format!(
        "connections per peer avg {:.1}, min {min}, max {max}; gossip mesh peers avg {:.1}, min {mesh_min}",
        total as f64 / s.peers.len().max(1) as f64,
        mesh as f64 / s.peers.len().max(1) as f64
    )
}

/// Publishes every bench message from peers spread over all processes and
/// returns the delivery latency of those that reached all other peers.
async fn gossip_round(
    n: usize,
    messages: std::ops::Range<u64>,
    node0: &RunningNode,
    records: &[Gossip],
    workers: &mut [Worker],
    lines: &mut Lines,
    local_recv: &mut mpsc::Receiver<String>,
) -> anyhow::Result<Vec<Duration>> {
    let topic = Topic::Project(project("scale"));
    let mut latencies = Vec::new();
    let round = records
        .iter()
        .enumerate()
        .take(messages.end as usize)
        .skip(messages.start as usize);
    for (m, record) in round {
        let publisher = (m * 7919 + 1) % n;
        let t0 = unix_ns();
        if publisher == 0 {
            node0.client().publish(topic, record.clone()).await?;
        } else {
            let w = workers
                .iter_mut()
                .find(|w| (w.first..w.first + w.count).contains(&publisher))
                .context("publisher has no worker")?;
            let local = publisher - w.first;
            w.stdin
                .write_all(format!("publish {local} {m}\n").as_bytes())
                .await?;
        }
        let mut heard: HashSet<usize> = HashSet::new();
        let mut last = t0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while heard.len() < n - 1 {
            let line = tokio::select! {
                l = lines.recv() => l.map(|(_, l)| l),
                l = local_recv.recv() => l,
                () = tokio::time::sleep_until(deadline) => None,
            };
            let Some(line) = line else { break };
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["recv", peer, got, ns] = words.as_slice()
                && got.parse::<usize>() == Ok(m)
            {
                let (peer, ns): (usize, u128) = (peer.parse()?, ns.parse()?);
                if peer != publisher && heard.insert(peer) {
                    last = last.max(ns);
                }
            }
        }
        if heard.len() == n - 1 {
            latencies.push(Duration::from_nanos((last.saturating_sub(t0)) as u64));
        } else {
            println!(
                "  message {m} from peer {publisher}: heard by {} of {} peers in 15 s",
                heard.len(),
                n - 1
            );
        }
    }
    latencies.sort();
    Ok(latencies)
}

fn latency_line(what: &str, messages: u64, n: usize, l: &[Duration]) -> String {
    format!(
        "{what}: {}/{messages} messages reached all {} other peers; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        l.len(),
        n - 1,
        percentile(l, 0.5).as_secs_f64() * 1e3,
        percentile(l, 0.99).as_secs_f64() * 1e3,
        l.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    )
}

async fn parent(root: &Path) -> anyhow::Result<()> {
    raise_fd_limit();
    let n: usize = flag("--peers", 100);
    let procs: usize = flag::<usize>("--procs", 4).clamp(1, n.saturating_sub(1).max(1));
    let messages: u64 = flag("--messages", 20);
    let idle: u64 = flag("--idle", 40);
    let form_timeout: u64 = flag("--form-timeout", 300);
    if n < 2 {
        bail!("--peers must be at least 2");
    }
    println!(
        "machine: {} cores; {n} peers: peer 0 here, {} in {procs} worker processes",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        n - 1
    );
    let records = bench_records(2 * messages);
    let topic = Topic::Project(project("scale"));
    let started = Instant::now();
    let mut node0 = start_node(&root.join("peer-0"), vec![]).await?;
    node0.client().subscribe(topic).await?;
    let (local_tx, mut local_recv) = mpsc::channel(65_536);
    watch(&mut node0, 0, &records, local_tx);
    let bootstrap = node0
        .dial_addrs()
        .into_iter()
        .next()
        .context("peer 0 has no address")?;

    let exe = std::env::current_exe()?;
    let (line_tx, mut lines) = mpsc::channel::<(usize, String)>(1 << 20);
    let mut workers = Vec::new();
    let mut children = Vec::new();
    let mut first = 1;
    for w in 0..procs {
        // Spread the N−1 peers as evenly as possible.
        let count = (n - 1) / procs + usize::from(w < (n - 1) % procs);
        let mut child = Command::new(&exe)
            .arg("--worker")
            .args(["--dir", &root.display().to_string()])
            .args(["--first", &first.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--bootstrap", &bootstrap.to_string()])
            .args(["--messages", &messages.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let tx = line_tx.clone();
        tokio::spawn(async move {
            let mut out = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send((w, line)).await.is_err() {
                    break;
                }
            }
        });
        workers.push(Worker {
            first,
            count,
            stdin,
        });
        children.push(child);
        first += count;
    }
    let mut ready = 0;
    while ready < procs {
        let (_, line) = tokio::time::timeout(Duration::from_secs(form_timeout), lines.recv())
            .await
            .context("workers did not start their peers in time")?
            .context("a worker exited while starting")?;
        if line == "ready" {
            ready += 1;
        }
    }
    println!(
        "all {n} peers started in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Formed: every peer has min(4, N−1) connections and a mesh peer.
    let want = (n - 1).min(4);
    let form_deadline = started + Duration::from_secs(form_timeout);
    let mut last_report = Instant::now();
    let formed = loop {
        let s = status(&node0, &mut workers, &mut lines).await?;
        let short = s
            .peers
            .iter()
            .filter(|(c, mesh)| *c < want || *mesh == 0)
            .count();
        if short == 0 {
            break s;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "  {:.0} s: {short} of {n} peers short; {}",
                started.elapsed().as_secs_f64(),
                conn_summary(&s)
            );
        }
        if Instant::now() >= form_deadline {
            println!(
                "NOT FORMED after {form_timeout} s: {short} of {n} peers have fewer than {want} connections or no mesh peer; {}",
                conn_summary(&s)
            );
            break s;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "formed in {:.1} s; {}; memory {:.1} MB per peer (worker RSS growth {:.0} MB)",
        started.elapsed().as_secs_f64(),
        conn_summary(&formed),
        formed.rss as f64 / (n - 1) as f64 / 1e6,
        formed.rss as f64 / 1e6
    );
    // Gossipsub heartbeats (1 s) graft the mesh.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let l = gossip_round(
        n,
        0..messages,
        &node0,
        &records,
        &mut workers,
        &mut lines,
        &mut local_recv,
    )
    .await?;
    println!("{}", latency_line("just formed", messages, n, &l));

    if idle > 0 {
        // CPU over the whole pause, and over its last third alone: the
        // first part still holds the tail of forming (Kademlia lookups,
        // pruning), the last is what a settled network costs.
        let before = status(&node0, &mut workers, &mut lines).await?;
        let t0 = Instant::now();
        let tail = Duration::from_secs(idle / 3);
        tokio::time::sleep(Duration::from_secs(idle) - tail).await;
        let mid = status(&node0, &mut workers, &mut lines).await?;
        let t1 = Instant::now();
        tokio::time::sleep(tail).await;
        let s = status(&node0, &mut workers, &mut lines).await?;
        let cores = (s.cpu - before.cpu) / t0.elapsed().as_secs_f64();
        let settled = (s.cpu - mid.cpu) / t1.elapsed().as_secs_f64().max(1e-3);
        println!(
            "after {idle} s idle (pruning): {}; CPU {:.2} cores in all, {:.2} % of a core per peer; \
             last {} s alone {:.2} cores, {:.3} % per peer",
            conn_summary(&s),
            cores,
            cores / n as f64 * 100.0,
            tail.as_secs(),
            settled,
            settled / n as f64 * 100.0
        );
        let l = gossip_round(
            n,
            messages..2 * messages,
            &node0,
            &records,
            &mut workers,
            &mut lines,
            &mut local_recv,
        )
        .await?;
        println!("{}", latency_line("after pruning", messages, n, &l));
    }
    for w in &mut workers {
        let _ = w.stdin.write_all(b"quit\n").await;
    }
    for mut c in children {
        let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
    }
    node0.shutdown().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    formic_tests::init_tracing();
    if std::env::args().any(|a| a == "--worker") {
        let dir: PathBuf = flag("--dir", PathBuf::from("."));
        let bootstrap: Multiaddr = flag("--bootstrap", Multiaddr::empty());
        return worker(dir, flag("--first", 1), flag("--count", 1), bootstrap).await;
    }
    let root = tempfile::tempdir()?;
    parent(root.path()).await
}
