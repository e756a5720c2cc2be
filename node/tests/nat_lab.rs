//! Formic where its users live: behind home NAT.
//!
//! `tests/nat-lab/lab.sh` builds network namespaces around a bridge that
//! plays the internet (198.18.0.0/24): one public host, and hosts that
//! each sit behind their own router, which masquerades and drops
//! unsolicited inbound traffic. Real `formic` processes run in them:
//!
//! - a public node, `--kad-server --threads 0` (relays and stores, no
//!   computing), which everyone bootstraps from;
//! - an owner, three volunteers and a researcher, each behind NAT.
//!
//! Phase one: the owner publishes 24 units with quorum 2 and goes offline
//! when `publish` returns; the researcher's `formic results --wait` gets
//! every unit validated and correct. Phase two: a second project; once the
//! volunteers hold direct (hole-punched) connections to each other and the
//! researcher holds one to a volunteer, the public node is killed
//! mid-project, and the volunteers finish over their direct connections
//! while the researcher collects everything.
//!
//! Needs root, `ip` and `iptables` (CI installs iptables). Elsewhere it is
//! skipped with a message, unless `FORMIC_REQUIRE_NAT_LAB=1` (as in CI)
//! makes that a failure.

// Child processes and namespaces run in real time.
#![allow(clippy::disallowed_methods)]
// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FORMIC: &str = env!("CARGO_BIN_EXE_formic");
const PUBLIC_IP: &str = "198.18.0.2";

fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/nat-lab/lab.sh")
}

/// Whether this machine can build the lab; says why not.
fn lab_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// The lab's namespaces, torn down when dropped.
struct Lab {
    prefix: String,
}

impl Lab {
    fn up(public: usize, nated: usize) -> Lab {
        let prefix = format!("fl{}", std::process::id() % 100_000);
        let out = Command::new("bash")
            .arg(lab_script())
            .args(["up", &prefix, &public.to_string(), &nated.to_string()])
            .output()
            .expect("run lab.sh");
        assert!(
            out.status.success(),
            "lab.sh up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Lab { prefix }
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(lab_script())
            .args(["down", &self.prefix])
            .output();
    }
}

/// A `formic` process in a namespace, killed when dropped; its stderr goes
/// to a log file shown when the test fails.
struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, at most `limit`.
    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[from..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct World {
    lab: Lab,
    /// Removed when the test passes, kept (and named) when it fails.
    root: PathBuf,
    config: PathBuf,
    procs: Vec<Proc>,
}

impl Drop for World {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
        if std::thread::panicking() {
            eprintln!("NAT lab files kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl World {
    fn new(nated: usize) -> World {
        let lab = Lab::up(1, nated);
        let root = tempfile::tempdir().expect("tempdir").keep();
        // Preferences that let every node compute on this busy machine (the
        // governor would otherwise see the other volunteers as the user's
        // load), and no UPnP (the lab's routers have none).
        let config = root.join("config");
        std::fs::create_dir_all(config.join("formic")).expect("config dir");
        std::fs::write(
            config.join("formic/formic.toml"),
            "cpu_threshold_percent = 100\nthreads = 1\nidle_after = \"1s\"\nrun_on_battery = true\nupnp = false\n",
        )
        .expect("formic.toml");
        World {
            lab,
            root,
            config,
            procs: Vec::new(),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn command(&self, host: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.ns(host), FORMIC])
            .args(args)
            .env("XDG_CONFIG_HOME", &self.config)
            .env_remove("FORMIC_BOOTSTRAP")
            .env(
                "RUST_LOG",
                "info,formic_node::network=debug,formic_node::computing=debug,libp2p_autonat=debug,libp2p_relay=debug,libp2p_dcutr=debug",
            );
        cmd
    }

    /// Starts `formic ARGS` in `host`; returns the process index.
    fn spawn(&mut self, name: &str, host: &str, args: &[&str], env: &[(&str, &str)]) -> usize {
        let log = self.dir(&format!("{name}.log"));
        let mut cmd = self.command(host, args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn formic");
        self.procs.push(Proc {
            child,
            name: name.to_owned(),
            log,
        });
        self.procs.len() - 1
    }

    /// The first line the process prints on stdout (a PeerId, a ProjectId).
    fn first_line(&mut self, proc: usize, limit: Duration) -> String {
        let stdout = self.procs[proc].child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the child never blocks on a full pipe.
            let mut sink = String::new();
            while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        match rx.recv_timeout(limit) {
            Ok(line) if !line.trim().is_empty() => line.trim().to_owned(),
            _ => self.fail(&format!(
                "{} printed nothing in {limit:?}",
                self.procs[proc].name
            )),
        }
    }

    /// `formic status --json` of a running node.
    fn status(&self, host: &str, data_dir: &Path) -> Option<serde_json::Value> {
        let out = self
            .command(host, &["status", "--json", "--data-dir"])
            .arg(data_dir)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Project `n`: `formic publish` from the owner's host (nat0), quorum
    /// 2, two other holders, plus `extra` flags. Returns the ProjectId once
    /// publish has returned (the owner is then offline).
    fn publish(
        &mut self,
        n: usize,
        app: &Path,
        inputs: &Path,
        bootstrap: &str,
        extra: &[&str],
    ) -> String {
        let name = format!("nat-lab-{n}");
        let owner = self.dir("owner");
        let mut args = vec![
            "publish",
            app.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--name",
            &name,
            "--quorum",
            "2",
            "--replicate",
            "2",
            "--timeout",
            "4m",
            "--data-dir",
            owner.to_str().unwrap(),
            "--no-mdns",
            "--bootstrap",
            bootstrap,
        ];
        args.extend_from_slice(extra);
        let publish = self.spawn(&format!("publish-{n}"), "nat0", &args, &[]);
        let project = self.first_line(publish, Duration::from_secs(300));
        match self.procs[publish].wait(Duration::from_secs(30)) {
            Some(s) if s.success() => project,
            other => self.fail(&format!("publish of project {n} ended with {other:?}")),
        }
    }

    /// `formic results PROJECT --wait` from the researcher's host (nat4),
    /// with a data dir of its own; returns the process and its output dir.
    fn collect(&mut self, n: usize, project: &str, bootstrap: &str) -> (usize, PathBuf) {
        let out = self.dir(&format!("results{n}"));
        let data = self.dir(&format!("researcher{n}"));
        let p = self.spawn(
            &format!("results-{n}"),
            "nat4",
            &[
                "results",
                project,
                "--wait",
                "--out",
                out.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--no-mdns",
                "--bootstrap",
                bootstrap,
            ],
            &[],
        );
        (p, out)
    }

    /// Fails the test with `why` and every process's log tail.
    fn fail(&self, why: &str) -> ! {
        let logs: Vec<String> = self.procs.iter().map(Proc::log_tail).collect();
        panic!("{why}\n{}", logs.join("\n"));
    }

    /// Polls `check` every half second until it holds, or fails.
    fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut(&World) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            if Instant::now() > deadline {
                self.fail(&format!("timed out after {limit:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The primes app's answer for `"lo hi"`: primes in `[lo, hi)`.
fn count_primes(lo: u64, hi: u64) -> u64 {
    let n = hi as usize;
    let mut sieve = vec![true; n.max(2)];
    sieve[0] = false;
    sieve[1] = false;
    let mut i = 2;
    while i * i < n {
        if sieve[i] {
            let mut j = i * i;
            while j < n {
                sieve[j] = false;
                j += i;
            }
        }
        i += 1;
    }
    (lo as usize..n).filter(|&k| sieve[k]).count() as u64
}

/// Writes `units` primes inputs of `width` numbers each to a file.
fn write_inputs(path: &Path, units: u64, width: u64) -> Vec<(u64, u64)> {
    let ranges: Vec<(u64, u64)> = (0..units).map(|i| (i * width, (i + 1) * width)).collect();
    let text: String = ranges
        .iter()
        .map(|(lo, hi)| format!("{lo} {hi}\n"))
        .collect();
    std::fs::write(path, text).expect("inputs");
    ranges
}

/// Every unit's output is the right count.
fn check_outputs(world: &World, out: &Path, ranges: &[(u64, u64)]) {
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        let got = std::fs::read_to_string(out.join("outputs").join(i.to_string()))
            .unwrap_or_else(|e| world.fail(&format!("output {i} missing: {e}")));
        assert_eq!(
            got.trim(),
            count_primes(*lo, *hi).to_string(),
            "unit {i} ({lo} {hi})"
        );
    }
}

fn peers_of(status: &serde_json::Value, kind: &str) -> HashSet<String> {
    status["peer_connections"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|c| c["kind"] == kind)
                .filter_map(|c| c["peer"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn volunteers_behind_nat_compute_through_relays_then_finish_without_the_public_node() {
    if let Some(why) = lab_missing() {
        assert!(
            std::env::var_os("FORMIC_REQUIRE_NAT_LAB").is_none(),
            "FORMIC_REQUIRE_NAT_LAB is set but the NAT lab cannot run: {why}"
        );
        eprintln!("SKIPPED: the NAT lab needs root, ip and iptables: {why}");
        return;
    }
    // nat0: owner, nat1..=3: volunteers, nat4: researcher.
    let mut w = World::new(5);

    // The public node: bootstrap, relay and store, no computing.
    let pub_dir = w.dir("public");
    let public = w.spawn(
        "public",
        "pub0",
        &[
            "node",
            "--data-dir",
            pub_dir.to_str().unwrap(),
            "--kad-server",
            "--threads",
            "0",
            "--no-mdns",
            "--listen",
            "/ip4/0.0.0.0/tcp/4001",
            "--listen",
            "/ip4/0.0.0.0/udp/4001/quic-v1",
            "--log-level",
            "info",
        ],
        &[],
    );
    let public_id = w.first_line(public, Duration::from_secs(30));
    let bootstrap = format!("/ip4/{PUBLIC_IP}/tcp/4001/p2p/{public_id}");

    // Volunteers, joining through FORMIC_BOOTSTRAP as a service would.
    let mut volunteers: Vec<(String, PathBuf, String)> = Vec::new();
    for k in 1..=3 {
        let host = format!("nat{k}");
        let dir = w.dir(&format!("volunteer{k}"));
        let p = w.spawn(
            &format!("volunteer{k}"),
            &host,
            &[
                "node",
                "--data-dir",
                dir.to_str().unwrap(),
                "--threads",
                "1",
                "--no-mdns",
                "--log-level",
                "info",
            ],
            &[("FORMIC_BOOTSTRAP", &bootstrap)],
        );
        let id = w.first_line(p, Duration::from_secs(30));
        volunteers.push((host, dir, id));
    }

    // Each volunteer finds it is private and reserves a relay slot.
    let started = Instant::now();
    w.wait_for(
        "every volunteer private with a relay reservation",
        Duration::from_secs(120),
        |w| {
            volunteers.iter().all(|(host, dir, _)| {
                w.status(host, dir).is_some_and(|s| {
                    s["reachability"] == "private"
                        && s["relays"].as_array().is_some_and(|r| !r.is_empty())
                })
            })
        },
    );
    let reservations: Vec<u64> = volunteers
        .iter()
        .filter_map(|(h, d, _)| w.status(h, d)?["first_reservation_ms"].as_u64())
        .collect();
    eprintln!(
        "relay reservations {reservations:?} ms after start (all within {:?})",
        started.elapsed()
    );

    // Phase one: publish from behind NAT, go offline, collect from behind NAT.
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("../work-units/apps/primes.wat");
    let inputs1 = w.dir("inputs1.txt");
    let ranges1 = write_inputs(&inputs1, 24, 20_000);
    let project1 = w.publish(1, &app, &inputs1, &bootstrap, &[]);
    let (researcher, out1) = w.collect(1, &project1, &bootstrap);
    match w.procs[researcher].wait(Duration::from_secs(300)) {
        Some(s) if s.success() => {}
        other => w.fail(&format!("results (phase one) ended with {other:?}")),
    }
    check_outputs(&w, &out1, &ranges1);

    // Phase two: a longer project; the public node goes away mid-project.
    let inputs2 = w.dir("inputs2.txt");
    // Units of about a second each (2 replicas of 30 on 2 cores: half a
    // minute), so the project is still running when the public node goes.
    let ranges2 = write_inputs(&inputs2, 30, 500_000_000);
    let project2 = w.publish(2, &app, &inputs2, &bootstrap, &["--fuel", "200G"]);
    let (researcher2, out2) = w.collect(2, &project2, &bootstrap);

    // Volunteers connect to each other directly (hole punching), and the
    // researcher (the one peer neither public nor a volunteer) to one of them.
    let volunteer_ids: HashSet<String> = volunteers.iter().map(|v| v.2.clone()).collect();
    w.wait_for(
        "direct connections between all volunteers, and the researcher to one",
        Duration::from_secs(180),
        |w| {
            let direct: HashMap<String, HashSet<String>> = volunteers
                .iter()
                .map(|(h, d, id)| {
                    (
                        id.clone(),
                        w.status(h, d)
                            .map(|s| peers_of(&s, "direct"))
                            .unwrap_or_default(),
                    )
                })
                .collect();
            // The volunteers' direct links connect all three.
            let mut reached = HashSet::from([volunteers[0].2.clone()]);
            for _ in 0..volunteers.len() {
                for (id, peers) in &direct {
                    if reached.contains(id) {
                        reached
                            .extend(peers.iter().filter(|p| volunteer_ids.contains(*p)).cloned());
                    }
                }
            }
            let researcher_direct = direct
                .values()
                .flatten()
                .any(|p| *p != public_id && !volunteer_ids.contains(p));
            reached.len() == volunteers.len() && researcher_direct
        },
    );
    let punched: u64 = volunteers
        .iter()
        .filter_map(|(h, d, _)| w.status(h, d)?["hole_punches"]["succeeded"].as_u64())
        .sum();
    let validated_at_kill = volunteers
        .iter()
        .filter_map(|(h, d, _)| {
            let s = w.status(h, d)?;
            s["compute"]["projects"]
                .as_array()?
                .iter()
                .find(|p| p["project"] == project2.as_str())?["validated"]
                .as_u64()
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "killing the public node with {validated_at_kill}/{} units validated; {punched} hole punches so far",
        ranges2.len()
    );
    assert!(
        (validated_at_kill as usize) < ranges2.len(),
        "the project finished before the public node was stopped: phase two proves nothing"
    );
    w.procs[public].kill();

    match w.procs[researcher2].wait(Duration::from_secs(300)) {
        Some(s) if s.success() => {}
        other => w.fail(&format!(
            "results (phase two, public node gone) ended with {other:?}"
        )),
    }
    // Correct: the evidence re-checks offline, and a sample of units
    // computed here gives the same outputs.
    let verify = Command::new(FORMIC)
        .args(["results", "--verify"])
        .arg(&out2)
        .output()
        .expect("run formic results --verify");
    assert!(verify.status.success(), "{verify:?}");
    for i in [0, ranges2.len() / 2, ranges2.len() - 1] {
        let (lo, hi) = ranges2[i];
        let input = w.dir(&format!("unit-{i}.txt"));
        std::fs::write(&input, format!("{lo} {hi}")).expect("input");
        let exec = Command::new(FORMIC)
            .args(["exec", app.to_str().unwrap(), "--fuel", "200G", "--input"])
            .arg(&input)
            .output()
            .expect("run formic exec");
        assert!(exec.status.success(), "{exec:?}");
        let got = std::fs::read(out2.join("outputs").join(i.to_string())).expect("output");
        assert_eq!(got, exec.stdout, "unit {i} ({lo} {hi})");
    }
}
