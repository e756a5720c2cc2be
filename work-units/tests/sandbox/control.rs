//! Pause, resume and cancel of a running unit through `UnitControl`.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use formic_work_units::{SandboxLimits, UnitControl, UnitError, apps};

use super::{compile, sandbox};

/// A primes unit of about half a second.
fn long_input() -> Vec<u8> {
    apps::primes_input(0, 150_000_000)
}

fn wait_for_progress(control: &UnitControl) {
    let t = Instant::now();
    while control.fuel_used() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no progress reported"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn pause_and_resume_in_place_gives_the_same_result() {
    let sandbox = Arc::new(sandbox());
    let app = compile(&sandbox, apps::PRIMES_WAT);
    let limits = SandboxLimits::default();
    let reference = sandbox
        .run(&app, &long_input(), [0; 32], &limits, None)
        .expect("reference run");

    let control = UnitControl::new();
    let runner = {
        let (sandbox, app, control) = (sandbox.clone(), app.clone(), control.clone());
        thread::spawn(move || sandbox.run(&app, &long_input(), [0; 32], &limits, Some(&control)))
    };
    wait_for_progress(&control);
    control.pause();
    assert!(
        control.wait_parked(Duration::from_secs(10)),
        "unit did not park"
    );
    let at_pause = control.fuel_used();
    assert!(at_pause > 0 && at_pause < reference.fuel_used);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(control.fuel_used(), at_pause, "progress moved while paused");
    assert!(control.is_parked());
    control.resume();
    let resumed = runner.join().expect("runner").expect("resumed run");
    assert_eq!(resumed.output, reference.output);
    assert_eq!(resumed.fuel_used, reference.fuel_used);
    assert_eq!(control.fuel_used(), reference.fuel_used);
    assert!(!control.is_parked());
}

#[test]
fn paused_time_does_not_count_toward_the_wall_clock() {
    let sandbox = Arc::new(sandbox());
    let app = compile(&sandbox, apps::PRIMES_WAT);
    let input = apps::primes_input(0, 20_000_000);
    let reference = sandbox
        .run(&app, &input, [0; 32], &SandboxLimits::default(), None)
        .expect("reference");
    // Allow the unit several times its own running time, but pause it for
    // longer than the limit.
    let limit = (reference.wall_time * 4).max(Duration::from_millis(500));
    let limits = SandboxLimits {
        wall_clock: limit,
        ..SandboxLimits::default()
    };
    let control = UnitControl::new();
    control.pause(); // parks at the first check (fuel yield or host call)
    let runner = {
        let (sandbox, app, control) = (sandbox.clone(), app.clone(), control.clone());
        thread::spawn(move || sandbox.run(&app, &input, [0; 32], &limits, Some(&control)))
    };
    assert!(control.wait_parked(Duration::from_secs(10)));
    thread::sleep(limit + Duration::from_millis(200));
    control.resume();
    let out = runner.join().expect("runner").expect("not a timeout");
    assert_eq!(out.output, reference.output);
    assert!(
        out.wall_time < limit,
        "wall time {:?} includes the pause",
        out.wall_time
    );
}

#[test]
fn cancel_while_paused_and_while_running() {
    let sandbox = Arc::new(sandbox());
    let app = compile(&sandbox, apps::PRIMES_WAT);
    for pause_first in [true, false] {
        let control = UnitControl::new();
        let runner = {
            let (sandbox, app, control) = (sandbox.clone(), app.clone(), control.clone());
            let input = apps::primes_input(0, 900_000_000);
            thread::spawn(move || {
                sandbox.run(
                    &app,
                    &input,
                    [0; 32],
                    &SandboxLimits::default(),
                    Some(&control),
                )
            })
        };
        wait_for_progress(&control);
        if pause_first {
            control.pause();
            assert!(control.wait_parked(Duration::from_secs(10)));
        }
        let t = Instant::now();
        control.cancel();
        assert_eq!(runner.join().expect("runner"), Err(UnitError::Cancelled));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn progress_advances_while_the_guest_makes_no_host_calls() {
    // Primes makes host calls only to read its input and write its count;
    // everything between is one long host-call-free loop, so progress must
    // come from the fuel yields.
    let sandbox = Arc::new(sandbox());
    let app = compile(&sandbox, apps::PRIMES_WAT);
    let control = UnitControl::new();
    let runner = {
        let (sandbox, app, control) = (sandbox.clone(), app.clone(), control.clone());
        thread::spawn(move || {
            sandbox.run(
                &app,
                &long_input(),
                [0; 32],
                &SandboxLimits::default(),
                Some(&control),
            )
        })
    };
    let mut seen = Vec::new();
    while !runner.is_finished() {
        seen.push(control.fuel_used());
        thread::sleep(Duration::from_millis(1));
    }
    let out = runner.join().expect("runner").expect("run");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards"
    );
    let mut mid_run: Vec<u64> = seen
        .into_iter()
        .filter(|&f| f > 0 && f < out.fuel_used)
        .collect();
    mid_run.dedup();
    assert!(
        mid_run.len() >= 3,
        "fuel_used took only {mid_run:?} before the end (total {})",
        out.fuel_used
    );
    assert_eq!(control.fuel_used(), out.fuel_used);
}
