//! The `formic` binary's contract with users and scripts: the subcommands
//! `--help` lists, a stable identity per data directory, and clear errors
//! (exit code 1) for a corrupt identity file or an out-of-range flag.

// These tests wait on child processes and OS threads, in real time.
#![allow(clippy::disallowed_methods)]
// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn formic() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_formic"));
    c.env_remove("RUST_LOG").env_remove("FORMIC_DATA_DIR");
    c
}

#[test]
fn help_lists_the_nine_subcommands() {
    let out = formic().arg("--help").output().expect("run formic --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "node", "exec", "publish", "status", "results", "pause", "resume", "demo", "service",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(sub)),
            "`formic --help` does not list `{sub}`:\n{text}"
        );
    }
    // Each subcommand has help of its own that says what it is for.
    for sub in [
        "node", "exec", "publish", "status", "results", "pause", "resume", "demo", "service",
    ] {
        let out = formic()
            .args([sub, "--help"])
            .output()
            .expect("run subcommand --help");
        assert!(out.status.success(), "`formic {sub} --help` failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    }
}

/// Starts `formic node` on a data dir, reads the PeerId it prints first on
/// stdout, and stops it.
fn peer_id_of(data_dir: &std::path::Path) -> String {
    // Default preferences, whatever the user running the tests has set.
    let config = tempfile::tempdir().expect("tempdir");
    start_node(data_dir, config.path(), "/ip4/127.0.0.1/tcp/0", &[])
        .peer_id
        .clone()
}

#[test]
fn the_same_data_dir_gives_the_same_peer_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = peer_id_of(dir.path());
    assert!(
        first.starts_with("12D3KooW"),
        "not an ed25519 PeerId: {first:?}"
    );
    assert_eq!(
        first,
        peer_id_of(dir.path()),
        "identity changed between runs"
    );
    let other = tempfile::tempdir().expect("tempdir");
    assert_ne!(
        first,
        peer_id_of(other.path()),
        "two data dirs share an identity"
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("identity.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "identity key must be private");
    }
}

#[test]
fn a_corrupt_identity_file_is_a_clear_error_not_a_new_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("identity.key"), b"not a key").expect("write");
    let out = formic()
        .args(["node", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("identity.key")).expect("read"),
        b"not a key",
        "must not overwrite"
    );
}

#[test]
fn a_spot_check_fraction_outside_zero_to_one_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = formic()
        .args([
            "publish",
            "app.wat",
            "--inputs",
            "in",
            "--spot-checks",
            "1.5",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--spot-checks must be between 0 and 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `formic exec` on a WAT app with empty input; returns (stdout,
/// stderr).
fn exec_wat(wat: &str) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app.wat");
    std::fs::write(&app, wat).expect("write app");
    let out = formic()
        .arg("exec")
        .arg(&app)
        .args(["--input", "-", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run formic exec");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (out.stdout, stderr)
}

#[test]
fn exec_says_how_nans_were_canonicalized() {
    // 0/0 written through memory: x86 makes 0xffc00000, the sandbox the
    // canonical 0x7fc00000 on every host.
    let (stdout, stderr) = exec_wat(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $zero (result f32) f32.const 0)
  (func (export "_start")
    (f32.store (i32.const 16) (f32.div (call $zero) (call $zero)))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    );
    assert_eq!(stdout, 0x7fc0_0000u32.to_le_bytes());
    let summary = stderr.lines().last().unwrap_or_default();
    assert!(
        summary.contains("engine=wasmtime-48.0.8+nan-observed.1")
            && summary.ends_with("nan=observed"),
        "{stderr}"
    );

    // A module the rewrite declines (too many float locals times branches
    // to track) runs with full canonicalization, and says so.
    let mut body = String::new();
    for _ in 0..2_000 {
        body.push_str("(block (br_if 0 (i32.const 0)))\n");
    }
    let (_, stderr) = exec_wat(&format!(
        "(module (memory (export \"memory\") 1) (func (export \"_start\") (local {}) {body}))",
        "f64 ".repeat(40_000)
    ));
    let mut lines = stderr.lines().rev();
    let summary = lines.next().unwrap_or_default();
    assert!(summary.ends_with("nan=full"), "{stderr}");
    assert!(
        stderr.contains("the NaN rewrite cannot handle this app"),
        "{stderr}"
    );
}

/// A `formic node` child process, killed when dropped.
struct NodeProcess {
    child: std::process::Child,
    peer_id: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `formic node` on `data_dir` with `config_home` as its
/// XDG_CONFIG_HOME (where formic/formic.toml is read) and `env` set.
fn start_node(
    data_dir: &std::path::Path,
    config_home: &std::path::Path,
    listen: &str,
    env: &[(&str, &str)],
) -> NodeProcess {
    let mut cmd = formic();
    cmd.args(["node", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", listen, "--no-mdns"])
        .env("XDG_CONFIG_HOME", config_home)
        .env_remove("FORMIC_BOOTSTRAP")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn formic node");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("formic node printed its PeerId");
    NodeProcess {
        child,
        peer_id: line.trim().to_owned(),
    }
}

/// Waits until `formic status --json` on `data_dir` lists `peer` as connected.
fn wait_until_connected(data_dir: &std::path::Path, peer: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = formic()
            .args(["status", "--json", "--data-dir"])
            .arg(data_dir)
            .output()
            .expect("run formic status");
        if out.status.success() {
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("status --json is JSON");
            let peers = json["peers"].as_array().cloned().unwrap_or_default();
            if peers.iter().any(|p| p.as_str() == Some(peer)) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never connected to {peer}",
            data_dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_node_joins_through_the_bootstrap_peers_of_its_environment_and_of_formic_toml() {
    let root = tempfile::tempdir().expect("tempdir");
    let empty_config = root.path().join("no-config");
    std::fs::create_dir_all(&empty_config).expect("config dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let hub = start_node(
        &root.path().join("hub"),
        &empty_config,
        &format!("/ip4/127.0.0.1/tcp/{port}"),
        &[],
    );
    let hub_addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", hub.peer_id);

    // FORMIC_BOOTSTRAP, as a service unit written by
    // `formic service install --bootstrap` sets it (a bad entry first would
    // fail the start, so the list is exactly the hub).
    let by_env_dir = root.path().join("by-env");
    let by_env = start_node(
        &by_env_dir,
        &empty_config,
        "/ip4/127.0.0.1/tcp/0",
        &[("FORMIC_BOOTSTRAP", &hub_addr)],
    );
    wait_until_connected(&by_env_dir, &hub.peer_id);
    drop(by_env);

    // `bootstrap = [...]` in formic.toml.
    let config_home = root.path().join("config");
    std::fs::create_dir_all(config_home.join("formic")).expect("config dir");
    std::fs::write(
        config_home.join("formic/formic.toml"),
        format!("bootstrap = [\"{hub_addr}\"]\n"),
    )
    .expect("write formic.toml");
    let by_file_dir = root.path().join("by-file");
    let _by_file = start_node(&by_file_dir, &config_home, "/ip4/127.0.0.1/tcp/0", &[]);
    wait_until_connected(&by_file_dir, &hub.peer_id);
}

#[test]
fn a_malformed_formic_bootstrap_is_a_clear_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let out = formic()
        .args(["node", "--data-dir"])
        .arg(root.path().join("data"))
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .env("XDG_CONFIG_HOME", root.path())
        .env("FORMIC_BOOTSTRAP", "/ip4/127.0.0.1/tcp/4001,not-an-address")
        .output()
        .expect("run formic node");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FORMIC_BOOTSTRAP: entry 2"), "{err}");
}

#[cfg(unix)]
#[test]
fn output_into_a_closed_pipe_ends_quietly_not_in_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    // A pipe whose reader is gone before formic writes: its first write
    // fails with EPIPE, as `formic status | head -1` does once head exits.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    std::fs::write(&input, "1 100").expect("input");
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/../work-units/apps/primes.wat");
    let out = formic()
        .args(["exec", app, "--input"])
        .arg(&input)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run formic");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "formic should end by SIGPIPE like other tools: {:?} {stderr}",
        out.status
    );
}
