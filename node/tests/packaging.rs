//! Packaging: the service files, `formic service install|uninstall`, and the
//! Debian package built by cargo-deb.
//!
//! The .deb test needs cargo-deb. Where `cargo deb --version` fails it is
//! skipped with a message, unless FORMIC_REQUIRE_DEB is set (CI sets it
//! after installing cargo-deb), in which case it fails.

// These tests wait on child processes and OS threads, in real time.
#![allow(clippy::disallowed_methods)]
// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn packaging(file: &str) -> String {
    std::fs::read_to_string(workspace_root().join("packaging").join(file))
        .unwrap_or_else(|e| panic!("read packaging/{file}: {e}"))
}

fn formic() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_formic"));
    c.env_remove("RUST_LOG").env_remove("FORMIC_DATA_DIR");
    c
}

#[test]
fn the_units_ask_for_idle_priority_and_hardening() {
    let user = packaging("formic.service");
    for line in [
        "ExecStart=/usr/bin/formic node",
        "Nice=19",
        "CPUSchedulingPolicy=idle",
        "Restart=on-failure",
        "WantedBy=default.target",
    ] {
        assert!(
            user.lines().any(|l| l == line),
            "formic.service lacks {line}"
        );
    }
    let system = packaging("formic-system.service");
    for line in [
        "DynamicUser=yes",
        "StateDirectory=formic",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "CPUWeight=1",
        "CPUSchedulingPolicy=idle",
        "Nice=19",
        "Restart=on-failure",
    ] {
        assert!(
            system.lines().any(|l| l == line),
            "formic-system.service lacks {line}"
        );
    }
    assert!(system.lines().any(|l| l.starts_with("MemoryMax=")));
    let plist = packaging("org.formic.node.plist");
    for needle in [
        "<string>org.formic.node</string>",
        "<key>LowPriorityIO</key>",
        "<key>ProcessType</key>\n    <string>Background</string>",
        "<key>Nice</key>\n    <integer>19</integer>",
    ] {
        assert!(plist.contains(needle), "plist lacks {needle}");
    }
}

/// `systemd-analyze verify` on both units (with ExecStart pointed at the
/// built binary, which must exist for verify); skipped without systemd-analyze.
#[test]
fn systemd_accepts_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).expect("runtime dir");
    let exe = env!("CARGO_BIN_EXE_formic");
    for (file, user) in [("formic-system.service", false), ("formic.service", true)] {
        let unit = packaging(file).replace("/usr/bin/formic", exe);
        let path = dir.path().join(file);
        std::fs::write(&path, unit).expect("write unit");
        let mut cmd = Command::new("systemd-analyze");
        if user {
            cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
        }
        let out = cmd
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("run systemd-analyze");
        assert!(
            out.status.success(),
            "systemd-analyze verify {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn service_install_writes_a_user_unit_for_this_binary_and_uninstall_removes_it() {
    let home = tempfile::tempdir().expect("tempdir");
    let config = home.path().join("config");
    let unit = config.join("systemd/user/formic.service");
    let run = |args: &[&str]| {
        formic()
            .args(args)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", &config)
            .output()
            .expect("run formic")
    };

    // The service joins through the peers given to `service install`.
    let boot = [
        "/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        "/ip4/198.18.0.3/udp/4001/quic-v1",
    ];
    let out = run(&[
        "service",
        "install",
        "--no-enable",
        "--bootstrap",
        boot[0],
        "--bootstrap",
        boot[1],
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&unit).expect("unit written");
    let env_line = format!("Environment=\"FORMIC_BOOTSTRAP={},{}\"", boot[0], boot[1]);
    assert!(text.lines().any(|l| l == env_line), "{text}");

    let out = run(&["service", "install", "--no-enable"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&unit.display().to_string()));
    let text = std::fs::read_to_string(&unit).expect("unit written");
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_formic")).expect("exe");
    let exec_start = text
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    let written = exec_start
        .strip_prefix("ExecStart=")
        .and_then(|s| s.strip_suffix(" node"))
        .expect("ExecStart=<exe> node");
    assert_eq!(
        std::fs::canonicalize(written).expect("ExecStart names an existing file"),
        exe
    );
    assert!(text.contains("Nice=19") && text.contains("CPUSchedulingPolicy=idle"));

    let out = run(&["service", "uninstall", "--no-disable"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!unit.exists());
    let out = run(&["service", "uninstall", "--no-disable"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no unit file"));

    // Without --no-enable, a machine without systemctl gets a clear error.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = formic()
        .args(["service", "install"])
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", &config)
        .env("PATH", empty.path())
        .output()
        .expect("run formic");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("systemctl") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn systemd_quoting_of_unusual_paths() {
    use formic_node::service::{render_user_unit, systemd_quote};
    assert_eq!(
        systemd_quote(Path::new("/usr/bin/formic")),
        "/usr/bin/formic"
    );
    assert_eq!(
        systemd_quote(Path::new("/home/a b/100%/formic")),
        "\"/home/a b/100%%/formic\""
    );
    let unit = render_user_unit(Path::new("/opt/formic"), &[]);
    assert!(unit.lines().any(|l| l == "ExecStart=/opt/formic node"));
    assert_eq!(unit.matches("ExecStart=").count(), 1);
    assert!(!unit.contains("FORMIC_BOOTSTRAP"));
    assert_eq!(
        formic_node::service::systemd_environment("X", r#"a%b"c\d"#),
        r#"Environment="X=a%%b\"c\\d""#
    );
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

#[test]
fn the_deb_contains_the_binary_and_both_units() {
    let have_deb = cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_deb {
        assert!(
            std::env::var_os("FORMIC_REQUIRE_DEB").is_none(),
            "FORMIC_REQUIRE_DEB is set but `cargo deb` is not installed (cargo install cargo-deb --locked)"
        );
        eprintln!(
            "SKIPPED: cargo-deb is not installed (`cargo install cargo-deb --locked`); \
             set FORMIC_REQUIRE_DEB=1 to make this a failure"
        );
        return;
    }
    // Pack the debug binary cargo already built for this test: a release
    // build of the node takes 10+ minutes on CI's 2 cores. cargo-deb takes
    // `target/release/formic` from the target dir, so the binary is copied
    // into a scratch target dir (cargo-deb deprecates `--profile dev`).
    // `--compress-system` uses the gzip tool: cargo-deb's built-in
    // compressor needs minutes for a debug binary, gzip seconds.
    let exe = Path::new(env!("CARGO_BIN_EXE_formic"));
    let scratch = tempfile::tempdir().expect("tempdir");
    let release = scratch.path().join("target/release");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::copy(exe, release.join("formic")).expect("copy binary");
    let out_dir = scratch.path().join("out");
    let started = std::time::Instant::now();
    let out = cargo()
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", scratch.path().join("target"))
        .args([
            "deb",
            "-p",
            "formic-node",
            "--no-build",
            "--no-strip",
            "--no-dbgsym",
            "--fast",
            "-Z",
            "gz",
            "--compress-system",
            "-o",
        ])
        .arg(&out_dir)
        .output()
        .expect("run cargo deb");
    assert!(
        out.status.success(),
        "cargo deb failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("cargo deb took {:?}", started.elapsed());
    let deb = std::fs::read_dir(&out_dir)
        .expect("read out dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb was written");
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .expect("dpkg-deb -c");
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    for path in [
        "./usr/bin/formic",
        "./lib/systemd/system/formic-system.service",
        "./usr/lib/systemd/user/formic.service",
        "./usr/share/doc/formic/examples/formic.toml",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{} lacks {path}:\n{listing}",
            deb.display()
        );
    }
    let bin = listing
        .lines()
        .find(|l| l.ends_with("./usr/bin/formic"))
        .expect("binary line");
    assert!(bin.starts_with("-rwxr-xr-x"), "{bin}");
    let info = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Package")
        .output()
        .expect("dpkg-deb -f");
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "formic");
    eprintln!("built and checked {}", deb.display());
}

/// The system unit's seccomp filter lets the agent run: the node starts its
/// compute threads (which lower their own priority, calls in @resources)
/// and `formic exec` computes a unit. packaging/seccomp-launch.py builds the
/// filter from the unit file as systemd would (groups from the installed
/// systemd-analyze) and execs the binary under it. Skipped where the
/// launcher cannot (it exits 77: no systemd-analyze or python3-seccomp),
/// unless FORMIC_REQUIRE_SECCOMP is set, in which case it fails.
#[cfg(target_os = "linux")]
#[test]
fn the_system_unit_syscall_filter_lets_the_agent_compute() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let launcher = workspace_root().join("packaging/seccomp-launch.py");
    let unit = workspace_root().join("packaging/formic-system.service");
    let home = tempfile::tempdir().expect("tempdir");
    let config = home.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let path = |p: &Path| p.to_str().expect("UTF-8 temp path").to_owned();
    let launch = |args: &[String]| {
        let mut c = Command::new("python3");
        c.arg(&launcher)
            .arg(&unit)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_formic"))
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("FORMIC_DATA_DIR")
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", &config)
            .stdin(Stdio::null());
        c
    };
    let skip = |why: String| {
        assert!(
            std::env::var_os("FORMIC_REQUIRE_SECCOMP").is_none(),
            "FORMIC_REQUIRE_SECCOMP is set but {why}"
        );
        eprintln!("SKIPPED: {why}; set FORMIC_REQUIRE_SECCOMP=1 to make this a failure");
    };

    // Can the filter be built here at all?
    let probe = match launch(&["--version".to_owned()]).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            skip(format!("python3 is not installed ({e})"));
            return;
        }
        Err(e) => panic!("run the seccomp launcher: {e}"),
    };
    if probe.status.code() == Some(77) {
        skip(format!(
            "the seccomp launcher cannot run here: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
        return;
    }
    assert!(
        probe.status.success(),
        "formic --version under the unit's filter: {probe:?}"
    );

    // (i) The node stays up for 5 s, and its compute pool has started (its
    // threads lowered their priority) by then.
    let log = home.path().join("node.log");
    let stdout = home.path().join("node.out");
    let mut node = launch(&[
        "node".to_owned(),
        "--data-dir".to_owned(),
        path(&home.path().join("data")),
        "--listen".to_owned(),
        "/ip4/127.0.0.1/tcp/0".to_owned(),
        "--no-mdns".to_owned(),
        "--threads".to_owned(),
        "1".to_owned(),
    ])
    .stdout(std::fs::File::create(&stdout).expect("stdout file"))
    .stderr(std::fs::File::create(&log).expect("log file"))
    .spawn()
    .expect("start the node under the unit's filter");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let started = Instant::now();
    loop {
        if let Some(status) = node.try_wait().expect("poll the node") {
            panic!(
                "the node exited under the unit's filter after {:?}: {status:?} \
                 (signal {:?}; SIGSYS = {} means a system call the unit denies)\n{}",
                started.elapsed(),
                status.signal(),
                libc::SIGSYS,
                read(&log)
            );
        }
        let pool_started = read(&log).contains("compute pool started");
        if started.elapsed() >= Duration::from_secs(5) && pool_started {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = node.kill();
            let _ = node.wait();
            panic!(
                "the compute pool did not start within 60 s:\n{}",
                read(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stop it as `systemctl stop` would; shutting down must not trip the
    // filter either.
    let pid = libc::pid_t::try_from(node.id()).expect("pid fits pid_t");
    // SAFETY: signals our own child, which has not been reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = node.try_wait().expect("poll the node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            break node.wait().expect("reap the node");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log_text = read(&log);
    assert_ne!(
        status.signal(),
        Some(libc::SIGSYS),
        "the node was killed by the filter on shutdown:\n{log_text}"
    );
    assert!(
        read(&stdout)
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("12D3Koo")),
        "the node printed no PeerId:\n{log_text}"
    );
    // The priority calls are allowed, not merely failing soft with EPERM.
    assert!(
        !log_text.contains("could not lower compute thread priority"),
        "the compute threads could not lower their priority under the unit's filter \
         (are sched_setscheduler/setpriority denied?):\n{log_text}"
    );

    // (ii) A unit computes under the filter.
    let input = home.path().join("input");
    std::fs::write(&input, "1 100").expect("write input");
    let app = workspace_root().join("work-units/apps/primes.wat");
    let out = launch(&[
        "exec".to_owned(),
        path(&app),
        "--input".to_owned(),
        path(&input),
        "--data-dir".to_owned(),
        path(&home.path().join("exec-data")),
    ])
    .output()
    .expect("run formic exec under the unit's filter");
    assert!(
        out.status.success(),
        "formic exec under the unit's filter: {out:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "25\n");
}
