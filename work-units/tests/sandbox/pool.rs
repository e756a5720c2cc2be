//! The instance pool: the production engine gets one, and a sandbox told
//! how many units its caller runs at once has a slot for each of them.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use formic_work_units::{Sandbox, SandboxConfig, SandboxLimits, UnitControl, UnitError, apps};

use super::{compile, sandbox};

#[test]
fn the_production_engine_runs_units_in_the_instance_pool() {
    // The fallback to a mapping per unit is for hosts that refuse the
    // address space; on the test hosts a silent fallback would be a bug.
    assert!(sandbox().is_pooled());
}

/// The pool's default size, as `pool_slots` computes it.
fn default_slots() -> usize {
    let cores = thread::available_parallelism().map_or(8, |n| n.get());
    (cores * 2).clamp(16, 256)
}

/// Starts `n` units at once, each paused before its first fuel slice so
/// that all hold their slot together, then lets them finish. Returns how
/// many found the pool full.
fn host_busy_among(sandbox: Sandbox, n: usize) -> usize {
    let sandbox = Arc::new(sandbox);
    let app = compile(&sandbox, apps::PRIMES_WAT);
    let controls: Vec<UnitControl> = (0..n)
        .map(|_| {
            let c = UnitControl::new();
            c.pause();
            c
        })
        .collect();
    let runs: Vec<_> = controls
        .iter()
        .map(|control| {
            let (sandbox, app, control) = (sandbox.clone(), app.clone(), control.clone());
            thread::spawn(move || {
                sandbox.run(
                    &app,
                    &apps::primes_input(0, 100_000),
                    [0; 32],
                    &SandboxLimits::default(),
                    Some(&control),
                )
            })
        })
        .collect();
    // A unit either parks (it holds a slot) or has already come back busy.
    for (control, run) in controls.iter().zip(&runs) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !control.is_parked() && !run.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "a unit neither parked nor ended"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
    for control in &controls {
        control.resume();
    }
    let mut busy = 0;
    for run in runs {
        match run.join().expect("unit thread") {
            Ok(out) => assert_eq!(out.output, b"9592\n"),
            Err(UnitError::HostBusy { .. }) => busy += 1,
            Err(e) => panic!("unexpected unit error: {e}"),
        }
    }
    busy
}

#[test]
fn units_beyond_the_default_pool_are_host_busy_unless_the_sandbox_is_told() {
    let n = default_slots() + 3;
    assert_eq!(
        host_busy_among(sandbox(), n),
        3,
        "the default pool has exactly its slots"
    );
    let told = Sandbox::new(SandboxConfig {
        concurrent_units: u32::try_from(n).expect("small"),
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    assert!(told.is_pooled());
    assert_eq!(host_busy_among(told, n), 0, "a slot for every unit");
}
