//! Volunteer preferences (`formic.toml`): defaults, the shipped example,
//! and errors that name the key a volunteer got wrong.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use formic_node::preferences::{
    AllowedHours, PreferenceOverrides, Preferences, PreferencesError, bootstrap_list,
    default_threads,
};

fn parse(text: &str) -> Result<Preferences, PreferencesError> {
    Preferences::from_toml(text, Path::new("formic.toml"))
}

#[test]
fn defaults_are_gentle() {
    let p = Preferences::default();
    assert_eq!(p.idle_after, Duration::from_secs(180));
    assert_eq!(p.cpu_threshold_percent, 25);
    assert!(!p.run_on_battery);
    assert_eq!(p.allowed_hours, None);
    assert_eq!(p.disk_quota, 10 << 30);
    assert_eq!(p.max_memory, 256 << 20);
    assert_eq!(p.data_dir, None);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(p.threads, (cores - 1).max(1));
    assert_eq!(parse("").expect("empty file"), p);
}

#[test]
fn the_shipped_example_is_valid_and_matches_the_defaults() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/formic.example.toml"
    );
    let p = Preferences::load(Path::new(example)).expect("example loads");
    assert_eq!(p, Preferences::default());
}

#[test]
fn every_key_is_read() {
    let p = parse(
        r#"
        threads = 3
        idle_after = "90s"
        cpu_threshold_percent = 50
        run_on_battery = true
        allowed_hours = "22:00-07:30"
        max_memory = "1GiB"
        disk_quota = "500MB"
        data_dir = "/srv/formic"
        bootstrap = ["/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]
        "#,
    )
    .expect("valid");
    assert_eq!(
        p.bootstrap,
        vec![
            "/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
                .parse::<libp2p::Multiaddr>()
                .unwrap()
        ]
    );
    assert_eq!(p.threads, 3);
    assert_eq!(p.idle_after, Duration::from_secs(90));
    assert_eq!(p.cpu_threshold_percent, 50);
    assert!(p.run_on_battery);
    assert_eq!(
        p.allowed_hours,
        Some(AllowedHours {
            start_minute: 22 * 60,
            end_minute: 7 * 60 + 30
        })
    );
    assert_eq!(p.max_memory, 1 << 30);
    assert_eq!(p.disk_quota, 500_000_000);
    assert_eq!(p.data_dir.as_deref(), Some(Path::new("/srv/formic")));
    assert_eq!(
        parse("threads = 0").expect("auto").threads,
        default_threads()
    );
}

/// Asserts that `text` is rejected with a message naming `key`.
fn rejects(text: &str, key: &str) -> String {
    let err = parse(text).expect_err(text);
    let msg = err.to_string();
    assert!(
        msg.contains(key),
        "error for {text:?} does not name `{key}`: {msg}"
    );
    assert!(
        msg.contains("formic.toml"),
        "error does not name the file: {msg}"
    );
    msg
}

#[test]
fn bad_toml_is_an_error() {
    let msg = rejects("threads = = 3", "threads");
    assert!(msg.contains("not valid"), "{msg}");
    rejects("idle_after = \"3m", "idle_after");
}

#[test]
fn unknown_keys_are_errors_naming_them() {
    let msg = rejects("run_on_batery = true", "run_on_batery");
    assert!(msg.contains("unknown field"), "{msg}");
    // The message lists the keys that do exist.
    assert!(msg.contains("run_on_battery"), "{msg}");
}

#[test]
fn wrong_types_name_the_key() {
    rejects("run_on_battery = \"yes\"", "run_on_battery");
    rejects("threads = \"four\"", "threads");
    rejects("idle_after = 180", "idle_after");
}

#[test]
fn out_of_range_values_name_the_key_and_the_range() {
    for (text, key) in [
        ("threads = -1", "threads"),
        ("threads = 100000", "threads"),
        ("cpu_threshold_percent = 0", "cpu_threshold_percent"),
        ("cpu_threshold_percent = 101", "cpu_threshold_percent"),
        ("idle_after = \"30d\"", "idle_after"),
        ("idle_after = \"3 fortnights\"", "idle_after"),
        ("max_memory = \"512KiB\"", "max_memory"),
        ("max_memory = \"16GiB\"", "max_memory"),
        ("max_memory = \"lots\"", "max_memory"),
        ("disk_quota = \"1MiB\"", "disk_quota"),
        ("allowed_hours = \"22-07\"", "allowed_hours"),
        ("allowed_hours = \"25:00-07:00\"", "allowed_hours"),
        ("allowed_hours = \"07:00-07:00\"", "allowed_hours"),
        ("data_dir = \"\"", "data_dir"),
    ] {
        let err = parse(text).expect_err(text);
        assert_eq!(err.key(), Some(key), "{text}: {err}");
        rejects(text, key);
    }
    let msg = rejects("cpu_threshold_percent = 101", "cpu_threshold_percent");
    assert!(msg.contains("1..=100"), "{msg}");
}

#[test]
fn allowed_hours_windows() {
    let night = AllowedHours::parse("22:00-07:00").expect("night");
    assert!(night.contains(23 * 60) && night.contains(0) && night.contains(6 * 60 + 59));
    assert!(!night.contains(7 * 60) && !night.contains(12 * 60));
    let day = AllowedHours::parse("09:00-17:00").expect("day");
    assert!(day.contains(9 * 60) && !day.contains(17 * 60));
    let all = AllowedHours::parse("00:00-24:00").expect("all day");
    assert!(all.contains(0) && all.contains(1439));
    assert_eq!(night.to_string(), "22:00-07:00");
    assert_eq!(
        parse("allowed_hours = \"\"").expect("empty").allowed_hours,
        None
    );
}

#[test]
fn missing_and_unreadable_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("formic.toml");
    assert_eq!(
        Preferences::load_or_default(&missing).expect("defaults"),
        Preferences::default()
    );
    let err = Preferences::load(&missing).expect_err("missing file");
    assert!(err.to_string().contains("formic.toml"), "{err}");
    std::fs::write(&missing, "cpu_threshold_percent = 500\n").expect("write");
    let err = Preferences::load_or_default(&missing).expect_err("bad file is not defaulted");
    assert_eq!(err.key(), Some("cpu_threshold_percent"));
    std::fs::write(&missing, [0xff, 0xfe, 0x00]).expect("write");
    assert!(Preferences::load(&missing).is_err(), "not UTF-8");
}

#[test]
fn overrides_apply_on_top_and_are_validated() {
    let base = parse("threads = 2\nrun_on_battery = false").expect("valid");
    let p = base
        .clone()
        .apply_overrides(&PreferenceOverrides {
            threads: Some(5),
            run_on_battery: Some(true),
            allowed_hours: Some(None),
            ..PreferenceOverrides::default()
        })
        .expect("valid overrides");
    assert_eq!(p.threads, 5);
    assert!(p.run_on_battery);
    assert_eq!(p.cpu_threshold_percent, base.cpu_threshold_percent);
    let err = base
        .apply_overrides(&PreferenceOverrides {
            cpu_threshold_percent: Some(0),
            ..PreferenceOverrides::default()
        })
        .expect_err("out of range");
    assert_eq!(err.key(), Some("cpu_threshold_percent"));
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_file_keeps_the_old_preferences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("formic.toml");
    std::fs::write(&path, "cpu_threshold_percent = 30\n").expect("write");
    let first = Preferences::load(&path).expect("load");
    let (tx, mut rx) = tokio::sync::watch::channel(first);
    let task = formic_node::preferences::spawn_reload_on_sighup(
        path.clone(),
        PreferenceOverrides {
            threads: Some(1),
            ..PreferenceOverrides::default()
        },
        tx,
    )
    .expect("listen for SIGHUP");
    let hup = || {
        // SAFETY: sending SIGHUP to ourselves; the handler above is installed.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    };

    std::fs::write(&path, "cpu_threshold_percent = 60\n").expect("write");
    hup();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("reloaded within 5 s")
        .expect("sender alive");
    assert_eq!(rx.borrow().cpu_threshold_percent, 60);
    assert_eq!(rx.borrow().threads, 1, "overrides re-applied");

    std::fs::write(&path, "cpu_threshold_percent = 600\n").expect("write");
    hup();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.changed())
            .await
            .is_err(),
        "a bad file must not replace the preferences"
    );
    assert_eq!(rx.borrow().cpu_threshold_percent, 60);
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("task ends when receivers are gone")
        .expect("no panic");
}

#[test]
fn a_bad_bootstrap_entry_is_named() {
    let msg = rejects(
        r#"bootstrap = ["/ip4/198.18.0.2/tcp/4001", "not an address"]"#,
        "bootstrap",
    );
    assert!(msg.contains("entry 2"), "{msg}");
    rejects(r#"bootstrap = "/ip4/198.18.0.2/tcp/4001""#, "bootstrap");
}

#[test]
fn bootstrap_peers_come_from_flags_environment_and_file_in_that_order() {
    let a: libp2p::Multiaddr = "/ip4/192.0.2.1/tcp/4001".parse().unwrap();
    let b: libp2p::Multiaddr = "/ip4/192.0.2.2/udp/4001/quic-v1".parse().unwrap();
    let c: libp2p::Multiaddr = "/dns4/boot.example.org/tcp/4001".parse().unwrap();
    let prefs =
        parse(r#"bootstrap = ["/dns4/boot.example.org/tcp/4001", "/ip4/192.0.2.1/tcp/4001"]"#)
            .unwrap();
    let env = " /ip4/192.0.2.2/udp/4001/quic-v1 ,, /ip4/192.0.2.1/tcp/4001";
    let list = bootstrap_list(std::slice::from_ref(&a), Some(env), &prefs).unwrap();
    assert_eq!(list, vec![a.clone(), b, c.clone()]);
    // No environment: flags then file.
    assert_eq!(bootstrap_list(&[], None, &prefs).unwrap(), vec![c, a]);
    let err = bootstrap_list(&[], Some("/ip4/192.0.2.1/tcp/4001,bogus"), &prefs).unwrap_err();
    assert!(
        err.to_string().starts_with("FORMIC_BOOTSTRAP: entry 2"),
        "{err}"
    );
}
