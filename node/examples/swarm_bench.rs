//! Swarm benchmarks of the README's figures, over real loopback sockets in
//! one process:
//!
//! - swarm efficiency: validated units/s ÷ (cores ÷ unit CPU time ÷
//!   replication), with units of about `--unit-ms` of CPU each;
//! - protocol ceiling: trivial units validated per second;
//! - publish → first validated result.
//!
//! cargo run --release -p formic-node --example swarm_bench -- efficiency [--unit-ms 1000] [--units 20] [--peers 5]
//! cargo run --release -p formic-node --example swarm_bench -- ceiling [--units 2000] [--peers 5]

// A benchmark tool, not production code: it stops on the first failure,
// with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::time::Instant;

use formic_node::demo::{self, DemoConfig};
use formic_work_units::{Sandbox, SandboxConfig, SandboxLimits, apps};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The prime-counting range width at which the middle one of `units` units
/// (unit i counts primes in [i × width, (i + 1) × width)) takes about `ms` of
/// CPU here, the measured CPU time of that unit, and this host's fuel per
/// second on it. The middle unit, because the cost per number grows with the
/// numbers: a width timed at 0 gives units far longer than asked for.
fn calibrate(ms: u64, units: u64) -> (u64, Duration, f64) {
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let app = sandbox
        .compile(apps::PRIMES_WAT.as_bytes())
        .expect("compile");
    let limits = SandboxLimits {
        fuel: u64::MAX / 2,
        wall_clock: Duration::from_secs(600),
        ..SandboxLimits::default()
    };
    let fuel_rate = std::cell::Cell::new(0.0);
    let mid = units / 2;
    // Thread CPU time where the platform has it (other processes on the
    // machine then do not skew the width), else wall time.
    let time = |width: u64| {
        let t = Instant::now();
        let (out, cpu) = formic_node::os_clocks::with_thread_cpu(|| {
            sandbox.run(
                &app,
                &apps::primes_input(mid * width, (mid + 1) * width),
                [0; 32],
                &limits,
                None,
            )
        });
        let out = out.expect("run");
        let took = cpu.unwrap_or_else(|| t.elapsed());
        fuel_rate.set(out.fuel_used as f64 / took.as_secs_f64());
        took
    };
    let target = ms as f64 / 1000.0;
    // Scale the width by the time ratio until the middle unit is within
    // 10 % of the target (the cost per number moves with the width, so a
    // few rounds).
    let mut width: u64 = 2_000_000;
    let mut took = time(width);
    for round in 0.. {
        let ratio = target / took.as_secs_f64().max(1e-6);
        if (0.9..=1.1).contains(&ratio) {
            break;
        }
        if round == 6 {
            eprintln!(
                "calibration: the middle unit takes {:.3} s, not within 10 % of {target} s",
                took.as_secs_f64()
            );
            break;
        }
        width = ((width as f64 * ratio) as u64).max(1);
        took = time(width);
    }
    (width, took, fuel_rate.get())
}

fn main() {
    // Quiet by default; RUST_LOG=formic_node::computing=debug shows each unit.
    let _ = formic_node::logging::init(Some("warn"));
    let mode = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "efficiency".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let peers = arg("--peers", 5) as usize;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let root = tempfile::tempdir().expect("tempdir");
    match mode.as_str() {
        "efficiency" => {
            let unit_ms = arg("--unit-ms", 1000);
            let units = arg("--units", 20) as usize;
            let (range, unit_time, fuel_per_s) = calibrate(unit_ms, units as u64);
            let config = DemoConfig {
                peers,
                units,
                saboteurs: 0,
                // Comparable with the figures measured before spot checks.
                spot_checks: 0.0,
                range,
                timeout: Duration::from_secs(1800),
                ..DemoConfig::default()
            };
            let mut report = runtime
                .block_on(demo::run(root.path(), &config, &|_, _, _| {}))
                .expect("run");
            // Unit CPU time three ways: the final honest re-run of the same
            // units one at a time (the headline); each run's thread CPU time
            // in the swarm, as the volunteers report it; and each unit's fuel
            // at the calibration run's fuel rate. The last is how the figure
            // was once estimated, with the calibration at 0: the fuel rate
            // falls as the numbers grow, so that read 0.71 (see
            // docs/benchmarks.md).
            let validated = report.state.validated();
            let fuel_cpu: f64 = validated
                .iter()
                .map(|v| v.fuel_used as f64 / fuel_per_s)
                .sum::<f64>()
                / validated.len().max(1) as f64;
            let measured_cpu = report.runs_cpu.as_secs_f64() / report.runs.max(1) as f64;
            let alone_cpu = report.recheck_cpu.as_secs_f64() / validated.len().max(1) as f64;
            let replication = report.executions as f64 / report.validated as f64;
            let secs = report.publish_to_complete.as_secs_f64();
            let rate = report.validated as f64 / secs;
            let ideal = |unit_cpu: f64| cores as f64 / unit_cpu / replication;
            println!(
                "cores {cores}, peers {peers}, units {units} (range {range}; calibration unit {:.3} s)",
                unit_time.as_secs_f64()
            );
            println!(
                "mean unit CPU time: in the swarm {measured_cpu:.3} s over {} runs; the same units alone {alone_cpu:.3} s; \
                 estimated from fuel {fuel_cpu:.3} s (at {:.2e} fuel/s)",
                report.runs, fuel_per_s
            );
            println!("executions per validated unit {replication:.2}");
            println!(
                "publish -> all {} validated in {secs:.1} s; whole run (start-up and the final honest re-check included) {:.1} s",
                report.validated,
                report.wall_time.as_secs_f64()
            );
            // The unit CPU time the efficiency formula divides by, three ways:
            // the same units run alone is the headline; in the swarm shows
            // how busy the cores were with units (the protocol's share is
            // the rest); from fuel is the estimate used before.
            for (cpu, label) in [
                (alone_cpu, "unit CPU of the same units run alone"),
                (measured_cpu, "unit CPU as measured in the swarm"),
                (fuel_cpu, "unit CPU estimated from fuel"),
            ] {
                if cpu > 0.0 {
                    println!(
                        "validated units/s {rate:.3}; ideal {:.3}; swarm efficiency {:.2} ({label})",
                        ideal(cpu),
                        rate / ideal(cpu)
                    );
                }
            }
            if let Some(t) = report.first_validated_after_publish {
                println!("publish -> first validated result {:.2} s", t.as_secs_f64());
            }
        }
        "ceiling" => {
            let units = arg("--units", 2000) as usize;
            let config = DemoConfig {
                peers,
                units,
                saboteurs: 0,
                // Comparable with the figures measured before spot checks.
                spot_checks: 0.0,
                range: 10,
                timeout: Duration::from_secs(1800),
                ..DemoConfig::default()
            };
            let report = runtime
                .block_on(demo::run(root.path(), &config, &|_, _, _| {}))
                .expect("run");
            let secs = report.publish_to_complete.as_secs_f64();
            println!(
                "peers {peers}, trivial units {units}: publish -> all {} validated in {secs:.1} s = {:.0} validated/s \
                 (whole run with network start-up {:.1} s); executions per validated unit {:.2}",
                report.validated,
                report.validated as f64 / secs,
                report.wall_time.as_secs_f64(),
                report.executions as f64 / report.validated.max(1) as f64
            );
        }
        other => eprintln!("unknown mode {other}: use efficiency or ceiling"),
    }
}
