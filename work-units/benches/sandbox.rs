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

use std::hint::black_box;
use std::time::{Duration, Instant};

use formic_work_units::{EngineTuning, Sandbox, SandboxConfig, SandboxLimits, apps};

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
            name: "fuel + NaN canon (production)",
            tuning: EngineTuning::default(),
        },
        Variant {
            name: "fuel + epoch checks + NaN canon (before #3)",
            tuning: EngineTuning {
                epochs: true,
                ..EngineTuning::default()
            },
        },
        Variant {
            name: "fuel off, epoch checks, NaN canon",
            tuning: EngineTuning {
                fuel: false,
                epochs: true,
                nan_canonicalization: true,
            },
        },
        Variant {
            name: "fuel off, NaN canon",
            tuning: EngineTuning {
                fuel: false,
                epochs: false,
                nan_canonicalization: true,
            },
        },
        Variant {
            name: "fuel off, no NaN canon",
            tuning: EngineTuning {
                fuel: false,
                epochs: false,
                nan_canonicalization: false,
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
}
