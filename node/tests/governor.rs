//! The idle governor and the compute pool, as a volunteer relies on them:
//! every suspend rule with fake sources, a real governor thread reacting to
//! user activity within a second (and a real sandbox unit that stops using
//! fuel), the pause file written by `formic pause`/`formic resume`, and
//! compute threads running at idle priority.

// These tests wait on child processes and OS threads, in real time.
#![allow(clippy::disallowed_methods)]
// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use formic_node::compute_pool::{ComputePool, PoolConfig, SubmitError, ThreadPriority};
use formic_node::governor::fake::FakeSources;
use formic_node::governor::{
    self, Decision, ManualPause, Policy, PowerState, Readings, Reason, ReasonKind, UnitSet,
    UserIdle, pause_file,
};
use formic_node::preferences::{AllowedHours, Preferences};
use tokio::sync::watch;

fn policy() -> Policy {
    Policy::from(&Preferences::default())
}

fn clear() -> Readings {
    Readings {
        now: SystemTime::now(),
        local_minute_of_day: 12 * 60,
        user_idle: UserIdle::IdleFor(Duration::from_secs(3600)),
        other_cpu_percent: Some(3.0),
        power: PowerState::Ac,
        manual_pause: ManualPause::NotPaused,
    }
}

#[test]
fn all_clear_runs() {
    assert_eq!(
        governor::decide(&clear(), &policy()),
        (Decision::Running, Reason::AllClear)
    );
    // No session, or no way to tell, counts as idle.
    for idle in [UserIdle::NoSession, UserIdle::Unknown] {
        let r = Readings {
            user_idle: idle,
            ..clear()
        };
        assert_eq!(governor::decide(&r, &policy()).0, Decision::Running);
    }
}

#[test]
fn user_activity_suspends_until_idle_after() {
    let p = policy();
    let r = Readings {
        user_idle: UserIdle::IdleFor(Duration::from_secs(5)),
        ..clear()
    };
    let (d, reason) = governor::decide(&r, &p);
    assert_eq!(d, Decision::Suspended);
    assert_eq!(reason.kind(), ReasonKind::UserActive);
    assert!(reason.to_string().contains("user is active"), "{reason}");
    let r = Readings {
        user_idle: UserIdle::IdleFor(p.idle_after),
        ..clear()
    };
    assert_eq!(governor::decide(&r, &p).0, Decision::Running);
}

#[test]
fn idle_sources_combine_to_the_most_active_reading() {
    use formic_node::governor::{IdleSource, MostActive, X11IdleSource, combine_idle};
    let min = |s| Duration::from_secs(s);
    // Input seen by any source (logind, X11) means the user is there.
    assert_eq!(
        combine_idle(&[UserIdle::IdleFor(min(600)), UserIdle::IdleFor(min(2))]),
        UserIdle::IdleFor(min(2))
    );
    // A source that cannot tell does not mask one that can.
    assert_eq!(
        combine_idle(&[UserIdle::Unknown, UserIdle::IdleFor(min(30))]),
        UserIdle::IdleFor(min(30))
    );
    assert_eq!(
        combine_idle(&[UserIdle::NoSession, UserIdle::Unknown]),
        UserIdle::NoSession
    );
    assert_eq!(
        combine_idle(&[UserIdle::NoSession, UserIdle::IdleFor(min(0))]),
        UserIdle::IdleFor(min(0))
    );
    assert_eq!(combine_idle(&[]), UserIdle::Unknown);
    // Without an X display the X11 source stays out of the way; with one
    // (e.g. `Xvfb :99` and DISPLAY=:99) it reports the server's idle time.
    let mut x11 = MostActive(vec![Box::new(X11IdleSource::new())]);
    let reading = x11.user_idle();
    if std::env::var_os("DISPLAY").is_none() {
        assert_eq!(reading, UserIdle::Unknown);
    } else {
        eprintln!("X11 reading: {reading:?}");
        assert!(matches!(reading, UserIdle::IdleFor(_) | UserIdle::Unknown));
    }
}

#[test]
fn cpu_load_over_threshold_suspends() {
    let r = Readings {
        other_cpu_percent: Some(60.0),
        ..clear()
    };
    let (d, reason) = governor::decide(&r, &policy());
    assert_eq!(d, Decision::Suspended);
    assert_eq!(
        reason,
        Reason::CpuBusy {
            percent: 60.0,
            threshold: 25
        }
    );
    assert!(reason.to_string().contains("60%"), "{reason}");
    // At the threshold, and before the first measurement: still running.
    for cpu in [Some(25.0), None] {
        let r = Readings {
            other_cpu_percent: cpu,
            ..clear()
        };
        assert_eq!(governor::decide(&r, &policy()).0, Decision::Running);
    }
}

#[test]
fn battery_suspends_unless_allowed() {
    let r = Readings {
        power: PowerState::Battery,
        ..clear()
    };
    assert_eq!(
        governor::decide(&r, &policy()),
        (Decision::Suspended, Reason::OnBattery)
    );
    let allow = Policy {
        run_on_battery: true,
        ..policy()
    };
    assert_eq!(governor::decide(&r, &allow).0, Decision::Running);
    let unknown = Readings {
        power: PowerState::Unknown,
        ..clear()
    };
    assert_eq!(governor::decide(&unknown, &policy()).0, Decision::Running);
}

#[test]
fn outside_allowed_hours_suspends() {
    let window = AllowedHours::parse("22:00-07:00").expect("window");
    let p = Policy {
        allowed_hours: Some(window),
        ..policy()
    };
    for (minute, expected) in [
        (12 * 60, Decision::Suspended),
        (21 * 60 + 59, Decision::Suspended),
        (22 * 60, Decision::Running),
        (3 * 60, Decision::Running),
        (7 * 60, Decision::Suspended),
    ] {
        let r = Readings {
            local_minute_of_day: minute,
            ..clear()
        };
        let (d, reason) = governor::decide(&r, &p);
        assert_eq!(d, expected, "at minute {minute}");
        if d == Decision::Suspended {
            assert_eq!(reason, Reason::OutsideAllowedHours { window });
            assert!(reason.to_string().contains("22:00-07:00"));
        }
    }
}

#[test]
fn manual_pause_wins_and_expires() {
    let now = SystemTime::now();
    let until = now + Duration::from_secs(60);
    // Paused beats every other reason, even with a busy user on battery.
    let r = Readings {
        manual_pause: ManualPause::Until(until),
        power: PowerState::Battery,
        user_idle: UserIdle::IdleFor(Duration::ZERO),
        ..clear()
    };
    assert_eq!(
        governor::decide(&r, &policy()),
        (
            Decision::Suspended,
            Reason::ManuallyPaused { until: Some(until) }
        )
    );
    let expired = Readings {
        now: until,
        manual_pause: ManualPause::Until(until),
        ..clear()
    };
    assert_eq!(governor::decide(&expired, &policy()).0, Decision::Running);
    let forever = Readings {
        manual_pause: ManualPause::Forever,
        ..clear()
    };
    assert_eq!(
        governor::decide(&forever, &policy()),
        (Decision::Suspended, Reason::ManuallyPaused { until: None })
    );
}

/// Waits until the snapshot's state is `want`, returning how long it took.
async fn wait_for(
    rx: &mut watch::Receiver<governor::GovernorSnapshot>,
    want: Decision,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(timeout, rx.wait_for(|s| s.state == want))
        .await
        .unwrap_or_else(|_| panic!("governor did not report {want:?} within {timeout:?}"))
        .expect("governor alive");
    start.elapsed()
}

#[tokio::test]
async fn a_real_governor_suspends_within_a_second_of_user_activity() {
    let fakes = FakeSources::new();
    let (_prefs_tx, prefs_rx) = watch::channel(Preferences::default());
    let handle = governor::spawn(
        fakes.sources(),
        prefs_rx,
        UnitSet::new(),
        governor::DEFAULT_TICK,
    )
    .expect("spawn governor");
    assert_eq!(handle.snapshot().state, Decision::Running);
    assert_eq!(handle.snapshot().reason, ReasonKind::AllClear);
    let mut rx = handle.subscribe();

    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        fakes.idle.set(UserIdle::IdleFor(Duration::ZERO));
        let latency = wait_for(&mut rx, Decision::Suspended, Duration::from_secs(3)).await;
        worst = worst.max(latency);
        let snap = rx.borrow().clone();
        assert_eq!(snap.reason, ReasonKind::UserActive);
        assert!(snap.reason_text.contains("user is active"));
        fakes.idle.set(UserIdle::IdleFor(Duration::from_secs(600)));
        wait_for(&mut rx, Decision::Running, Duration::from_secs(3)).await;
    }
    eprintln!(
        "activity -> Suspended on the watch channel: worst {worst:?} of 3 (tick {:?})",
        governor::DEFAULT_TICK
    );
    assert!(worst <= Duration::from_secs(1), "took {worst:?}");
    handle.shutdown();
}

#[tokio::test]
async fn each_source_drives_a_live_governor_and_pause_expires() {
    let fakes = FakeSources::new();
    let (prefs_tx, prefs_rx) = watch::channel(Preferences::default());
    let tick = Duration::from_millis(20);
    let handle =
        governor::spawn(fakes.sources(), prefs_rx, UnitSet::new(), tick).expect("spawn governor");
    let mut rx = handle.subscribe();
    let t = Duration::from_secs(3);

    fakes.cpu.set(Some(80.0));
    wait_for(&mut rx, Decision::Suspended, t).await;
    assert_eq!(rx.borrow().reason, ReasonKind::CpuBusy);
    fakes.cpu.set(Some(1.0));
    wait_for(&mut rx, Decision::Running, t).await;

    fakes.power.set(PowerState::Battery);
    wait_for(&mut rx, Decision::Suspended, t).await;
    assert_eq!(rx.borrow().reason, ReasonKind::OnBattery);
    // Preferences reloaded (e.g. on SIGHUP) take effect on the next tick.
    prefs_tx.send_modify(|p| p.run_on_battery = true);
    wait_for(&mut rx, Decision::Running, t).await;

    let start = SystemTime::now();
    prefs_tx.send_modify(|p| p.allowed_hours = AllowedHours::parse("01:00-02:00").ok());
    wait_for(&mut rx, Decision::Suspended, t).await;
    assert_eq!(rx.borrow().reason, ReasonKind::OutsideAllowedHours);
    fakes.clock.set(start, 90);
    wait_for(&mut rx, Decision::Running, t).await;
    prefs_tx.send_modify(|p| p.allowed_hours = None);

    // Manual pause until T: suspended until the clock passes T, then running.
    let until = start + Duration::from_secs(120);
    fakes.pause.set(ManualPause::Until(until));
    wait_for(&mut rx, Decision::Suspended, t).await;
    assert_eq!(rx.borrow().reason, ReasonKind::ManuallyPaused);
    fakes.clock.set(start + Duration::from_secs(119), 90);
    tokio::time::sleep(tick * 5).await;
    assert_eq!(rx.borrow().state, Decision::Suspended, "resumed before T");
    fakes.clock.set(until, 90);
    wait_for(&mut rx, Decision::Running, t).await;
    assert_eq!(rx.borrow().reason, ReasonKind::AllClear);
    handle.shutdown();
}

#[tokio::test]
async fn the_pause_file_is_read_every_tick() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = FakeSources::new();
    let mut sources = fakes.sources();
    sources.pause = Box::new(pause_file::FilePauseSource::new(dir.path()));
    let (_prefs_tx, prefs_rx) = watch::channel(Preferences::default());
    let handle = governor::spawn(sources, prefs_rx, UnitSet::new(), Duration::from_millis(20))
        .expect("spawn");
    let mut rx = handle.subscribe();
    let t = Duration::from_secs(3);
    pause_file::write_pause(dir.path(), None, SystemTime::now()).expect("pause");
    wait_for(&mut rx, Decision::Suspended, t).await;
    assert_eq!(rx.borrow().reason, ReasonKind::ManuallyPaused);
    assert!(pause_file::clear_pause(dir.path()).expect("resume"));
    wait_for(&mut rx, Decision::Running, t).await;
    // A corrupt file counts as paused: the volunteer asked for a pause.
    std::fs::write(pause_file::pause_path(dir.path()), b"garbage").expect("write");
    wait_for(&mut rx, Decision::Suspended, t).await;
    handle.shutdown();
}

#[test]
fn pause_and_resume_commands_write_and_remove_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let formic = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_formic"));
        c.env_remove("RUST_LOG").env_remove("FORMIC_DATA_DIR");
        c.arg("--data-dir").arg(dir.path());
        c
    };
    let path = pause_file::pause_path(dir.path());

    let before = SystemTime::now();
    let out = formic()
        .args(["pause", "--for", "2h"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused for 2h"));
    let text = std::fs::read_to_string(&path).expect("pause file");
    let Some(ManualPause::Until(until)) = pause_file::parse_pause(&text) else {
        panic!("not a deadline: {text:?}");
    };
    let d = until.duration_since(before).expect("in the future");
    assert!(
        d >= Duration::from_secs(7199) && d <= Duration::from_secs(7300),
        "{d:?}"
    );

    let out = formic().arg("pause").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("until `formic resume`"));
    assert_eq!(
        std::fs::read_to_string(&path).expect("read").trim(),
        "forever"
    );

    let out = formic().arg("resume").output().expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed"));
    assert!(!path.exists());
    let out = formic().arg("resume").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("was not paused"));

    let out = formic()
        .args(["pause", "--for", "soon"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--for"));
}

#[test]
fn a_running_unit_stops_using_fuel_within_a_second_of_activity() {
    use formic_work_units::{Sandbox, SandboxConfig, SandboxLimits, UnitControl, apps};

    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    // Monte Carlo pi calls the host for randomness inside its loop, and the
    // sandbox publishes fuel progress at calls, so progress is visible.
    let app = sandbox
        .compile(apps::MONTECARLO_PI_WAT.as_bytes())
        .expect("compile");
    let fakes = FakeSources::new();
    let (_prefs_tx, prefs_rx) = watch::channel(Preferences::default());
    let units = UnitSet::new();
    let handle = governor::spawn(
        fakes.sources(),
        prefs_rx,
        units.clone(),
        governor::DEFAULT_TICK,
    )
    .expect("spawn");
    assert_eq!(units.decision(), Decision::Running);

    let control = UnitControl::new();
    let guard = units.register(control.clone());
    let limits = SandboxLimits {
        fuel: 1_000_000_000_000_000,
        wall_clock: Duration::from_secs(120),
        ..SandboxLimits::default()
    };
    let runner = {
        let control = control.clone();
        std::thread::spawn(move || {
            // Big enough to run for minutes; it is cancelled below.
            sandbox.run(&app, b"1000000000000", [0; 32], &limits, Some(&control))
        })
    };
    // Wait until the unit is really computing.
    let start = Instant::now();
    while control.fuel_used() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "unit never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let activity = Instant::now();
    fakes.idle.set(UserIdle::IdleFor(Duration::ZERO));
    assert!(
        control.wait_parked(Duration::from_secs(2)),
        "unit not parked 2 s after user activity"
    );
    let parked_after = activity.elapsed();
    let fuel = control.fuel_used();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(control.fuel_used(), fuel, "fuel still rising while parked");
    eprintln!("activity -> unit parked (fuel stopped): {parked_after:?}");
    assert!(
        parked_after <= Duration::from_secs(1),
        "took {parked_after:?}"
    );

    // Back to idle: the unit continues where it stopped.
    fakes.idle.set(UserIdle::IdleFor(Duration::from_secs(3600)));
    let start = Instant::now();
    while control.fuel_used() == fuel {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "unit did not resume: decision {:?}, paused {}, parked {}, snapshot {:?}, finished {}",
            units.decision(),
            control.is_paused(),
            control.is_parked(),
            handle.snapshot(),
            runner.is_finished()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    control.cancel();
    let outcome = runner.join().expect("runner thread");
    assert!(outcome.is_err(), "cancelled unit must end with an error");
    drop(guard);
    assert!(units.is_empty());
    handle.shutdown();
}

#[test]
fn drive_units_applies_snapshots_from_a_channel() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let units = UnitSet::new();
    let control = formic_work_units::UnitControl::new();
    let _guard = units.register(control.clone());
    // Registered before any decision: suspended is the safe default.
    assert!(control.is_paused());
    let snap = |state| governor::GovernorSnapshot {
        state,
        reason: ReasonKind::AllClear,
        reason_text: String::new(),
        since_unix_ms: 0,
    };
    let (tx, rx) = watch::channel(snap(Decision::Running));
    let task = {
        let _runtime = rt.enter();
        governor::drive_units(rx, units.clone())
    };
    let wait = |paused: bool| {
        let start = Instant::now();
        while control.is_paused() != paused {
            assert!(start.elapsed() < Duration::from_secs(2));
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait(false);
    tx.send_replace(snap(Decision::Suspended));
    wait(true);
    drop(tx);
    rt.block_on(task)
        .expect("task ends when the sender is gone");
}

#[test]
fn real_linux_sources_give_sane_readings() {
    use formic_node::governor::{CpuLoadSource, PowerSource, ProcCpuLoad, SysfsPower};

    let mut cpu = ProcCpuLoad::new();
    // Measured over windows of at least CPU_WINDOW; nothing before the first.
    assert_eq!(cpu.other_cpu_percent(), None);
    std::thread::sleep(formic_node::governor::sources::CPU_WINDOW);
    let pct = cpu.other_cpu_percent().expect("a reading after a window");
    assert!((0.0..=100.0).contains(&pct), "{pct}");
    // Within the next window the same figure is repeated.
    assert_eq!(cpu.other_cpu_percent(), Some(pct));

    // Fake sysfs trees for the power rules.
    let supply = |root: &std::path::Path, name: &str, files: &[(&str, &str)]| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        for (f, v) in files {
            std::fs::write(d.join(f), format!("{v}\n")).expect("write");
        }
    };
    let laptop = tempfile::tempdir().expect("tempdir");
    supply(laptop.path(), "AC", &[("type", "Mains"), ("online", "0")]);
    supply(
        laptop.path(),
        "BAT0",
        &[("type", "Battery"), ("status", "Discharging")],
    );
    supply(
        laptop.path(),
        "hidpp_battery_0",
        &[
            ("type", "Battery"),
            ("scope", "Device"),
            ("status", "Discharging"),
        ],
    );
    assert_eq!(
        SysfsPower::with_root(laptop.path()).power_state(),
        PowerState::Battery
    );
    std::fs::write(laptop.path().join("AC/online"), "1\n").expect("write");
    std::fs::write(laptop.path().join("BAT0/status"), "Charging\n").expect("write");
    assert_eq!(
        SysfsPower::with_root(laptop.path()).power_state(),
        PowerState::Ac
    );
    // A desktop with only a wireless mouse's battery is not "on battery".
    let desktop = tempfile::tempdir().expect("tempdir");
    supply(
        desktop.path(),
        "hidpp_battery_0",
        &[
            ("type", "Battery"),
            ("scope", "Device"),
            ("status", "Discharging"),
        ],
    );
    assert_eq!(
        SysfsPower::with_root(desktop.path()).power_state(),
        PowerState::Unknown
    );
    assert_eq!(
        SysfsPower::with_root(std::path::Path::new("/nonexistent")).power_state(),
        PowerState::Unknown
    );
}

#[test]
fn the_real_sources_run_a_real_governor() {
    use formic_node::governor::{IdleSource, LogindIdleSource};

    // Without logind (as in CI containers) the answer is Unknown, at once.
    let start = Instant::now();
    let idle = LogindIdleSource::new().user_idle();
    eprintln!("logind says {idle:?} in {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(5));

    let dir = tempfile::tempdir().expect("tempdir");
    let (_prefs_tx, prefs_rx) = watch::channel(Preferences::default());
    let handle = governor::spawn(
        governor::Sources::linux(dir.path()),
        prefs_rx,
        UnitSet::new(),
        Duration::from_millis(50),
    )
    .expect("spawn");
    let first = handle.snapshot();
    eprintln!("real governor: {first:?}");
    assert!(!first.reason_text.is_empty());
    pause_file::write_pause(dir.path(), None, SystemTime::now()).expect("pause");
    let start = Instant::now();
    while handle.snapshot().reason != ReasonKind::ManuallyPaused {
        assert!(start.elapsed() < Duration::from_secs(3), "pause not seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(handle.snapshot().state, Decision::Suspended);
    handle.shutdown();
}

#[test]
fn proc_stat_parsing() {
    use formic_node::governor::sources::{parse_own_ticks, parse_proc_stat};
    let stat = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
    assert_eq!(parse_proc_stat(stat), Some((981, 161)));
    assert_eq!(parse_proc_stat("garbage"), None);
    let own = "1234 (formic node) S 1 1234 1234 0 -1 4194560 100 0 0 0 42 8 0 0 20 0 5 0 100";
    assert_eq!(parse_own_ticks(own), Some(50));
    assert_eq!(parse_own_ticks("1234 (x"), None);
}

/// Field `n` (1-based, as in proc(5)) of /proc/self/task/<tid>/stat.
fn task_stat_field(tid: i64, n: usize) -> i64 {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("task stat");
    let after = &text[text.rfind(')').expect("comm") + 1..];
    after
        .split_whitespace()
        .nth(n - 3)
        .expect("field")
        .parse()
        .expect("number")
}

#[tokio::test]
async fn compute_threads_run_at_idle_priority() {
    let pool = ComputePool::new(PoolConfig::with_threads(2)).expect("pool");
    assert_eq!(pool.workers().len(), 2);
    for w in pool.workers() {
        // proc(5): field 19 is nice, field 41 the scheduling policy.
        let nice = task_stat_field(w.tid, 19);
        let policy = task_stat_field(w.tid, 41);
        eprintln!(
            "compute thread {}: {:?}, policy {policy} (SCHED_IDLE = {}), nice {nice}",
            w.tid,
            w.priority,
            libc::SCHED_IDLE
        );
        match w.priority {
            ThreadPriority::SchedIdle => assert_eq!(policy, i64::from(libc::SCHED_IDLE)),
            ThreadPriority::Nice19 => assert_eq!(nice, 19),
            ThreadPriority::Unchanged => panic!("priority not lowered"),
        }
        assert!(
            policy == i64::from(libc::SCHED_IDLE) || nice == 19,
            "thread {} runs at normal priority",
            w.tid
        );
    }
    // The test's own thread is untouched.
    // SAFETY: sched_getscheduler(0) only reads the calling thread's policy.
    assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);

    // Jobs run and return their results.
    let rx = pool.submit(|| 6 * 7).await.expect("submit");
    assert_eq!(rx.await.expect("result"), 42);
    // The job itself sees the lowered priority.
    let rx = pool
        // SAFETY: sched_getscheduler(0) only reads the calling thread's policy.
        .submit(|| unsafe { libc::sched_getscheduler(0) })
        .await
        .expect("submit");
    let seen = rx.await.expect("result");
    assert!(seen == libc::SCHED_IDLE || pool.workers()[0].priority == ThreadPriority::Nice19);
    // A panicking job is reported as a dropped result, the pool survives.
    let rx = pool
        .submit(|| -> u32 { panic!("job panics") })
        .await
        .expect("submit");
    assert!(rx.await.is_err());
    let rx = pool.submit(|| 1).await.expect("submit");
    assert_eq!(rx.await.expect("pool still works"), 1);
    tokio::task::spawn_blocking(move || pool.shutdown())
        .await
        .expect("shutdown");
}

#[test]
fn the_queue_is_bounded_and_shutdown_drains_it() {
    let pool = ComputePool::new(PoolConfig {
        threads: 1,
        queue_capacity: 2,
    })
    .expect("pool");
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let blocker = pool
        .try_submit(move || {
            let _ = started_tx.send(());
            let _ = release_rx.recv();
            "done"
        })
        .expect("first job");
    started_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("worker took the first job");
    // The worker is busy: two jobs fit in the queue, the third does not.
    let a = pool.try_submit(|| 1).expect("queued");
    let b = pool.try_submit(|| 2).expect("queued");
    assert_eq!(pool.try_submit(|| 3).err(), Some(SubmitError::Full));
    release_tx.send(()).expect("release");
    pool.shutdown();
    assert_eq!(blocker.blocking_recv().expect("blocker"), "done");
    assert_eq!(a.blocking_recv().expect("a"), 1);
    assert_eq!(b.blocking_recv().expect("b"), 2);
}
