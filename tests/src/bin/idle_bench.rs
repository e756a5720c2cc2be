//! Idle-agent benchmark (not a test): what a volunteer's `formic node`
//! costs while it has nothing to compute. Run with
//!
//! ```sh
//! cargo build --release -p formic-node
//! cargo run --release -p formic-tests --bin idle_bench [-- --peers 10 --seconds 60]
//! ```
//!
//! It starts `peers + 1` real `formic node` processes (the release binary,
//! `target/release/formic` unless `--formic PATH`), each with its own data
//! directory and an empty config directory (default preferences, so the
//! real idle governor and an idle-priority compute thread run as for a
//! volunteer), listening on loopback TCP with Kademlia in server mode and
//! mDNS off; the first is the bootstrap peer of the others. There is no
//! project, so nothing computes. Once the measured node — the bootstrap
//! peer, which every other peer dials — has `peers` peers connected, it
//! samples that process for `seconds`: resident memory (VmRSS from
//! /proc/PID/status, every second) and CPU time (utime + stime from
//! /proc/PID/stat, at both ends, also per thread name to show where it
//! goes). It does the same for one ordinary member as a second figure.
//! Goals (the README's figures): RSS ≤ 25 MB and CPU ≤ 0.5 % of one core.

// A benchmark tool, not production code: it stops on the first failure,
// with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

struct Args {
    peers: usize,
    seconds: u64,
    formic: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        peers: 10,
        seconds: 60,
        formic: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/formic"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--peers" => args.peers = value()?.parse().context("--peers")?,
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--formic" => args.formic = PathBuf::from(value()?),
            other => bail!("unknown argument {other} (--peers N, --seconds S, --formic PATH)"),
        }
    }
    Ok(args)
}

/// The started nodes; stopped (SIGTERM, then SIGKILL) when dropped, also
/// when the benchmark fails half-way.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &self.0 {
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: kill(2) on the id of a child this process started
                // and has not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.0 {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(formic: &Path, root: &Path, i: usize, bootstrap: Option<&str>) -> anyhow::Result<Child> {
    let data = root.join(format!("node{i}"));
    let config = root.join(format!("config{i}"));
    std::fs::create_dir_all(&config)?;
    let mut cmd = Command::new(formic);
    cmd.arg("node")
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--kad-server",
        ])
        .args(["--log-level", "warn"])
        // Default preferences, whatever the user running this has set.
        .env("XDG_CONFIG_HOME", &config)
        .env_remove("FORMIC_DATA_DIR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    cmd.spawn()
        .with_context(|| format!("starting {} (build it first)", formic.display()))
}

/// The node's status over its control API, once it answers.
fn status(data: &Path, timeout: Duration) -> anyhow::Result<formic_node::api::NodeStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match formic_node::api::client::status(data) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime, in clock ticks, from a /proc/.../stat line (fields 14 and
/// 15, counted after the parenthesised command name, which may hold spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn process_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    cpu_ticks(&stat).context("unreadable /proc/PID/stat")
}

/// CPU ticks per thread name (threads of one name summed).
fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let ticks = std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| cpu_ticks(&s))
            .unwrap_or(0);
        *out.entry(name.trim().to_owned()).or_insert(0) += ticks;
    }
    out
}

/// VmRSS, RssAnon and RssFile in KiB. Most of an idle agent's RSS is
/// file-backed pages of its own binary (shared, clean, reclaimable), the
/// rest its heap and stacks; both count in VmRSS, the figure of the goal.
fn rss_kib(pid: u32) -> anyhow::Result<[u64; 3]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok([field("VmRSS:")?, field("RssAnon:")?, field("RssFile:")?])
}

struct Sample {
    pid: u32,
    ticks0: u64,
    threads0: BTreeMap<String, u64>,
    /// One [`rss_kib`] reading a second.
    rss: Vec<[u64; 3]>,
}

impl Sample {
    fn begin(pid: u32) -> anyhow::Result<Sample> {
        Ok(Sample {
            pid,
            ticks0: process_ticks(pid)?,
            threads0: thread_ticks(pid),
            rss: Vec::new(),
        })
    }

    fn report(&self, label: &str, seconds: f64, hz: f64) -> anyhow::Result<()> {
        let ticks = process_ticks(self.pid)? - self.ticks0;
        let cpu = ticks as f64 / hz / seconds * 100.0;
        let mb = |kib: f64| kib * 1024.0 / 1e6;
        let n = self.rss.len().max(1) as f64;
        let mean = |i: usize| mb(self.rss.iter().map(|r| r[i]).sum::<u64>() as f64 / n);
        let max = mb(self.rss.iter().map(|r| r[0]).max().unwrap_or(0) as f64);
        println!(
            "{label}: RSS mean {:.1} MB (anonymous {:.1}, file {:.1}), max {max:.1} MB; \
             CPU {cpu:.2} % of one core ({ticks} ticks in {seconds:.0} s)",
            mean(0),
            mean(1),
            mean(2),
        );
        let threads1 = thread_ticks(self.pid);
        let mut by_thread: Vec<(u64, &String)> = threads1
            .iter()
            .map(|(n, t)| (t.saturating_sub(*self.threads0.get(n).unwrap_or(&0)), n))
            .filter(|(t, _)| *t > 0)
            .collect();
        by_thread.sort_by(|a, b| b.cmp(a));
        let parts: Vec<String> = by_thread
            .iter()
            .map(|(t, n)| format!("{n} {:.2} %", *t as f64 / hz / seconds * 100.0))
            .collect();
        println!("  by thread: {}", parts.join(", "));
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let root = tempfile::tempdir()?;
    let hz = clock_ticks_per_second();
    let mut nodes = Nodes(Vec::new());
    nodes.0.push(start(&args.formic, root.path(), 0, None)?);
    let boot_dir = root.path().join("node0");
    let boot = status(&boot_dir, Duration::from_secs(30)).context("the bootstrap node's API")?;
    let addr = boot
        .network
        .listen_addrs
        .iter()
        .find(|a| a.contains("/tcp/"))
        .context("the bootstrap node has no TCP address")?
        .clone();
    for i in 1..=args.peers {
        nodes
            .0
            .push(start(&args.formic, root.path(), i, Some(&addr))?);
    }
    let member_dir = root.path().join("node1");
    let started = Instant::now();
    loop {
        let boot = status(&boot_dir, Duration::from_secs(10))?;
        let member = status(&member_dir, Duration::from_secs(10))?;
        if boot.network.peers.len() >= args.peers && member.network.peers.len() >= args.peers {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} (bootstrap) and {} (member) of {} peers connected after 120 s",
                boot.network.peers.len(),
                member.network.peers.len(),
                args.peers
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{} peers connected after {:.1} s; sampling for {} s",
        args.peers,
        started.elapsed().as_secs_f64(),
        args.seconds
    );

    let mut boot_sample = Sample::begin(nodes.0[0].id())?;
    let mut member_sample = Sample::begin(nodes.0[1].id())?;
    let t0 = Instant::now();
    let window = Duration::from_secs(args.seconds);
    let mut next = t0;
    while t0.elapsed() < window {
        boot_sample.rss.push(rss_kib(boot_sample.pid)?);
        member_sample.rss.push(rss_kib(member_sample.pid)?);
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let seconds = t0.elapsed().as_secs_f64();
    // The window only counts if the peers stayed connected through it.
    let boot = status(&boot_dir, Duration::from_secs(10))?;
    let member = status(&member_dir, Duration::from_secs(10))?;
    boot_sample.report("bootstrap node", seconds, hz)?;
    member_sample.report("member node", seconds, hz)?;
    let governor = boot
        .governor
        .as_ref()
        .map(|g| format!("{:?}: {}", g.state, g.reason_text))
        .unwrap_or_else(|| "none".into());
    println!(
        "peers at the end: {} (bootstrap), {} (member); governor: {governor}",
        boot.network.peers.len(),
        member.network.peers.len()
    );
    if boot.network.peers.len() < args.peers {
        bail!("the bootstrap node lost peers during the window");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cpu_ticks;

    #[test]
    fn reads_utime_and_stime_after_a_command_with_spaces() {
        let stat = "42 (tokio rt) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(12));
    }
}
