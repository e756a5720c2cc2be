//! Sandbox speed benchmark (not a test): wasm ÷ native on the same kernel.
//!
//! Run: `cargo bench -p formic-work-units --bench sandbox`
//! (optional args: `<primes_hi> <mandelbrot_side> <runs>`).
//!
//! Kernels, each implemented once in WAT (the shipped sample apps) and once
//! in Rust with the same algorithm and operation order:
//! * integer: segmented sieve counting primes below `hi` (apps/primes.wat);
//! * float: a Mandelbrot tile in f64 (apps/mandelbrot.wat).
//!
//! Each wasm configuration is timed around `Sandbox::run` (instantiation
//! included, compilation excluded — apps are compiled once), median of
//! `runs` runs after one warm-up; outputs are checked against native.
//!
//! Then, when clang can build for both the host and `wasm32-wasi` (Debian:
//! `clang lld wasi-libc libclang-rt-14-dev-wasm32`), the C kernels in
//! `benches/kernels/` are built with `-O2` for both and timed alternately:
//! the native process, production (`formic exec`'s engine: fuel, NaN
//! canonicalization at observation points) and the engine before the
//! rewrite (fuel, full NaN canonicalization). These are the headline
//! figures: compiler-built code, as volunteers will run it; the WAT rows
//! above are hand-written worst cases.

// Benchmark code: a failing unwrap or expect is a benchmark failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use formic_work_units::{
    EngineTuning, NanCanonicalization, Sandbox, SandboxConfig, SandboxLimits, apps,
};

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut last = f(); // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        last = f();
        times.push(t.elapsed());
    }
    (median(times), last)
}

/// Native twin of apps/primes.wat: same segment size, same byte flags,
/// same loops.
fn primes_native(lo: u64, hi: u64) -> u64 {
    let lo = lo.max(2);
    if lo >= hi {
        return 0;
    }
    let mut r = ((hi - 1) as f64).sqrt() as u64;
    while r * r > hi - 1 {
        r -= 1;
    }
    while (r + 1) * (r + 1) < hi {
        r += 1;
    }
    let r = r as usize;
    let mut base = vec![1u8; r + 1];
    let mut i = 2;
    while i * i <= r {
        if base[i] != 0 {
            let mut j = i * i;
            while j <= r {
                base[j] = 0;
                j += i;
            }
        }
        i += 1;
    }
    let primes: Vec<u32> = (2..=r)
        .filter(|&i| base[i] != 0)
        .map(|i| i as u32)
        .collect();
    let mut seg = vec![0u8; 32768 + 8];
    let mut count = 0u64;
    let mut seg_lo = lo;
    while seg_lo < hi {
        let seg_hi = (seg_lo + 32768).min(hi);
        let len = (seg_hi - seg_lo) as usize;
        seg[..len].fill(1);
        for &p in &primes {
            let p = u64::from(p);
            if p * p >= seg_hi {
                break;
            }
            let start = (seg_lo.div_ceil(p) * p).max(p * p);
            let mut j = (start - seg_lo) as usize;
            let step = p as usize;
            while j + 3 * step < len {
                seg[j] = 0;
                seg[j + step] = 0;
                seg[j + 2 * step] = 0;
                seg[j + 3 * step] = 0;
                j += 4 * step;
            }
            while j < len {
                seg[j] = 0;
                j += step;
            }
        }
        seg[len..len + 8].fill(0);
        count += seg[..len.next_multiple_of(8)]
            .chunks_exact(8)
            .map(|w| {
                u64::from(
                    u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
                        .count_ones(),
                )
            })
            .sum::<u64>();
        seg_lo = seg_hi;
    }
    count
}

#[path = "../reference/mandelbrot.rs"]
mod mandelbrot;
use mandelbrot::mandelbrot_native;

struct Variant {
    name: &'static str,
    tuning: EngineTuning,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let primes_hi = arg(0, 200_000_000);
    let side = arg(1, 600) as u32;
    let runs = arg(2, 5) as usize;
    let max_iter = 500;
    let (x0, y0, step) = (-2.0, -1.25, 2.5 / f64::from(side));

    let variants = [
        Variant {
            name: "fuel + NaN canon at observation points (production)",
            tuning: EngineTuning::default(),
        },
        Variant {
            name: "fuel + full NaN canon (the engine before the rewrite)",
            tuning: EngineTuning {
                nan: NanCanonicalization::Full,
                ..EngineTuning::default()
            },
        },
        Variant {
            name: "fuel + epoch checks + NaN canon at observation points",
            tuning: EngineTuning {
                epochs: true,
                ..EngineTuning::default()
            },
        },
        Variant {
            name: "fuel off, NaN canon at observation points",
            tuning: EngineTuning {
                fuel: false,
                ..EngineTuning::default()
            },
        },
        Variant {
            name: "fuel off, full NaN canon",
            tuning: EngineTuning {
                fuel: false,
                nan: NanCanonicalization::Full,
                ..EngineTuning::default()
            },
        },
        Variant {
            name: "fuel off, no NaN canon",
            tuning: EngineTuning {
                fuel: false,
                nan: NanCanonicalization::Off,
                ..EngineTuning::default()
            },
        },
    ];

    let limits = SandboxLimits {
        fuel: u64::MAX / 4,
        wall_clock: Duration::from_secs(600),
        ..SandboxLimits::default()
    };

    println!(
        "engine {}; median of {runs} runs after 1 warm-up",
        formic_work_units::ENGINE_VERSION
    );
    let (native_int, count) = time(runs, || primes_native(black_box(0), black_box(primes_hi)));
    let (native_float, tile) = time(runs, || {
        mandelbrot_native(black_box(x0), black_box(y0), step, side, side, max_iter)
    });
    println!(
        "native: primes below {primes_hi} = {count} in {native_int:?}; mandelbrot {side}x{side} \
         (max {max_iter}) in {native_float:?}"
    );
    println!();
    println!("| configuration | primes (int) wasm | ÷ native | mandelbrot (f64) wasm | ÷ native |");
    println!("|---|---|---|---|---|");
    let primes_input = apps::primes_input(0, primes_hi);
    let tile_input = apps::mandelbrot_input(x0, y0, step, side, side, max_iter);
    for v in &variants {
        let sandbox = Sandbox::with_tuning(SandboxConfig::default(), v.tuning).expect("sandbox");
        let primes = sandbox
            .compile(apps::PRIMES_WAT.as_bytes())
            .expect("compile");
        let mandel = sandbox
            .compile(apps::MANDELBROT_WAT.as_bytes())
            .expect("compile");
        let (t_int, out) = time(runs, || {
            sandbox
                .run(&primes, &primes_input, [0; 32], &limits, None)
                .expect("primes")
        });
        assert_eq!(
            out.output,
            format!("{count}\n").into_bytes(),
            "primes output differs"
        );
        let (t_float, out) = time(runs, || {
            sandbox
                .run(&mandel, &tile_input, [0; 32], &limits, None)
                .expect("mandelbrot")
        });
        assert_eq!(out.output, tile, "mandelbrot output differs from native");
        println!(
            "| {} | {:.3} s | {:.2} | {:.3} s | {:.2} |",
            v.name,
            t_int.as_secs_f64(),
            t_int.as_secs_f64() / native_int.as_secs_f64(),
            t_float.as_secs_f64(),
            t_float.as_secs_f64() / native_float.as_secs_f64(),
        );
    }

    c_kernels(runs);
}

/// A C kernel: its source, its input, and what it measures.
struct Kernel {
    file: &'static str,
    source: &'static str,
    input: &'static str,
    kind: &'static str,
}

const KERNELS: [Kernel; 3] = [
    Kernel {
        file: "primes_trial",
        source: include_str!("kernels/primes_trial.c"),
        input: "3000000",
        kind: "integer: trial-division prime count",
    },
    Kernel {
        file: "sieve",
        source: include_str!("kernels/sieve.c"),
        input: "20000000 5",
        kind: "integer: sieve of Eratosthenes, repeated",
    },
    Kernel {
        file: "mandelbrot",
        source: include_str!("kernels/mandelbrot.c"),
        input: "800",
        kind: "float: Mandelbrot area, 500 iterations",
    },
];

/// Builds `source` with clang, natively or for wasm32-wasi; `None` (with
/// the reason printed once) when the toolchain is missing.
fn clang(
    dir: &std::path::Path,
    name: &str,
    source: &str,
    wasm: bool,
) -> Option<std::path::PathBuf> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).ok()?;
    let out = dir.join(if wasm {
        format!("{name}.wasm")
    } else {
        format!("{name}.native")
    });
    let mut cmd = std::process::Command::new("clang");
    if wasm {
        cmd.args(["--target=wasm32-wasi", "-Wl,--strip-all"]);
    }
    let status = cmd.arg("-O2").arg(&src).arg("-o").arg(&out).status();
    match status {
        Ok(s) if s.success() => Some(out),
        Ok(s) => {
            eprintln!(
                "clang {} failed for {name} ({s})",
                if wasm { "wasm32-wasi" } else { "native" }
            );
            None
        }
        Err(e) => {
            eprintln!("no clang ({e})");
            None
        }
    }
}

fn c_kernels(runs: usize) {
    println!();
    let Ok(tmp) = tempfile::tempdir() else {
        println!("C kernels skipped: no temporary directory");
        return;
    };
    let dir = tmp.path();
    let limits = SandboxLimits {
        fuel: u64::MAX / 4,
        wall_clock: Duration::from_secs(600),
        ..SandboxLimits::default()
    };
    let observed = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let full = Sandbox::with_tuning(
        SandboxConfig::default(),
        EngineTuning {
            nan: NanCanonicalization::Full,
            ..EngineTuning::default()
        },
    )
    .expect("sandbox");
    println!(
        "C kernels, clang -O2; native, production and the engine before the rewrite run alternately, median of {runs}:"
    );
    println!();
    println!(
        "| kernel (C, clang -O2) | native | wasm, production | ÷ native | wasm, full NaN canon | ÷ native |"
    );
    println!("|---|---|---|---|---|---|");
    for k in &KERNELS {
        let (Some(native), Some(wasm)) = (
            clang(dir, k.file, k.source, false),
            clang(dir, k.file, k.source, true),
        ) else {
            println!(
                "| {} | skipped: clang with the wasm32-wasi target is not installed | | | | |",
                k.kind
            );
            continue;
        };
        let bytes = std::fs::read(&wasm).expect("read wasm");
        let app_observed = observed.compile(&bytes).expect("compile");
        let app_full = full.compile(&bytes).expect("compile");
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for i in 0..=runs {
            let t = Instant::now();
            let out = std::process::Command::new(&native)
                .stdin_piped_with(k.input)
                .expect("native run");
            let t_native = t.elapsed();
            let t = Instant::now();
            let a = observed
                .run(&app_observed, k.input.as_bytes(), [0; 32], &limits, None)
                .expect("wasm run");
            let t_observed = t.elapsed();
            let t = Instant::now();
            let b = full
                .run(&app_full, k.input.as_bytes(), [0; 32], &limits, None)
                .expect("wasm run");
            let t_full = t.elapsed();
            assert_eq!(a.output, out, "{}: wasm output differs from native", k.file);
            assert_eq!(b.output, out, "{}: wasm output differs from native", k.file);
            if i > 0 {
                times[0].push(t_native);
                times[1].push(t_observed);
                times[2].push(t_full);
            }
        }
        let [n, o, f] = times.map(median);
        println!(
            "| {} | {:.3} s | {:.3} s | **{:.2}** | {:.3} s | {:.2} |",
            k.kind,
            n.as_secs_f64(),
            o.as_secs_f64(),
            o.as_secs_f64() / n.as_secs_f64(),
            f.as_secs_f64(),
            f.as_secs_f64() / n.as_secs_f64(),
        );
    }
}

/// Runs a command with `input` on stdin and returns its stdout.
trait StdinPiped {
    fn stdin_piped_with(&mut self, input: &str) -> std::io::Result<Vec<u8>>;
}

impl StdinPiped for std::process::Command {
    fn stdin_piped_with(&mut self, input: &str) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(out.stdout)
    }
}
