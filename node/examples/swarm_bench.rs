//! Swarm benchmarks of issue 5, over real loopback sockets in one process:
//!
//! - swarm efficiency: validated units/s ÷ (cores ÷ unit CPU time ÷
//!   replication), with units of about `--unit-ms` of CPU each;
//! - protocol ceiling: trivial units validated per second;
//! - publish → first validated result.
//!
//! cargo run --release -p formic-node --example swarm_bench -- efficiency [--unit-ms 1000] [--units 20] [--peers 5]
//! cargo run --release -p formic-node --example swarm_bench -- ceiling [--units 2000] [--peers 5]

use std::time::{Duration, Instant};

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

/// The prime-counting range width that takes about `ms` of CPU here, the
/// measured time per unit at that width, and this host's fuel per second.
fn calibrate(ms: u64) -> (u64, Duration, f64) {
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
    let time = |range: u64| {
        let t = Instant::now();
        let out = sandbox
            .run(&app, &apps::primes_input(0, range), [0; 32], &limits, None)
            .expect("run");
        let elapsed = t.elapsed();
        fuel_rate.set(out.fuel_used as f64 / elapsed.as_secs_f64());
        elapsed
    };
    let probe = 2_000_000;
    let per = time(probe).as_secs_f64() / probe as f64;
    let range = ((ms as f64 / 1000.0) / per) as u64;
    // Median of three at the chosen width.
    let mut t: Vec<Duration> = (0..3).map(|_| time(range)).collect();
    t.sort();
    (range, t[1], fuel_rate.get())
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
            let (range, unit_time, fuel_per_s) = calibrate(unit_ms);
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
            // The CPU the validated units really needed, from their fuel
            // (deterministic) and this host's fuel rate measured above.
            let validated = report.state.validated();
            let unit_cpu: f64 = validated
                .iter()
                .map(|v| v.fuel_used as f64 / fuel_per_s)
                .sum::<f64>()
                / validated.len().max(1) as f64;
            let replication = report.executions as f64 / report.validated as f64;
            let secs = report.publish_to_complete.as_secs_f64();
            let rate = report.validated as f64 / secs;
            let ideal = cores as f64 / unit_cpu / replication;
            println!(
                "cores {cores}, peers {peers}, units {units} (range {range}; calibration unit {:.3} s)",
                unit_time.as_secs_f64()
            );
            println!(
                "mean unit CPU time {unit_cpu:.3} s (from fuel at {:.2e} fuel/s)",
                fuel_per_s
            );
            println!("executions per validated unit {replication:.2}");
            println!(
                "publish -> all {} validated in {secs:.1} s; whole run (start-up and the final honest re-check included) {:.1} s",
                report.validated,
                report.wall_time.as_secs_f64()
            );
            println!(
                "validated units/s {rate:.3}; ideal {ideal:.3}; swarm efficiency {:.2}",
                rate / ideal
            );
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
                 (whole run with network start-up {:.1} s)",
                report.validated,
                report.validated as f64 / secs,
                report.wall_time.as_secs_f64()
            );
        }
        other => eprintln!("unknown mode {other}: use efficiency or ceiling"),
    }
}
