//! The sample apps, checked against reference implementations written
//! independently in Rust.

use std::sync::Arc;

use formic_work_units::{SandboxLimits, UnitError, apps};

use super::{compile, sandbox};

/// Reference: plain sieve up to `hi`.
fn primes_below(hi: u64) -> Vec<bool> {
    let n = hi as usize;
    let mut is = vec![true; n.max(2)];
    is[0] = false;
    is[1] = false;
    let mut i = 2;
    while i * i < n {
        if is[i] {
            let mut j = i * i;
            while j < n {
                is[j] = false;
                j += i;
            }
        }
        i += 1;
    }
    is.truncate(n);
    is
}

/// Reference: trial division, for ranges far from zero.
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

fn run_primes(lo: u64, hi: u64) -> (String, u64) {
    let sandbox = sandbox();
    let app = compile(&sandbox, apps::PRIMES_WAT);
    let out = sandbox
        .run(
            &app,
            &apps::primes_input(lo, hi),
            [0; 32],
            &SandboxLimits::default(),
            None,
        )
        .expect("primes run");
    (String::from_utf8(out.output).expect("utf-8"), out.fuel_used)
}

#[test]
fn primes_small_ranges() {
    let table = primes_below(2000);
    for (lo, hi) in [
        (0, 0),
        (0, 2),
        (2, 3),
        (0, 3),
        (1, 100),
        (10, 10),
        (90, 97),
        (90, 98),
        (0, 2000),
        (1000, 1999),
    ] {
        let expected = (lo..hi).filter(|&n| table[n as usize]).count();
        let (out, _) = run_primes(lo, hi);
        assert_eq!(out, format!("{expected}\n"), "range [{lo}, {hi})");
    }
}

#[test]
fn primes_to_a_million() {
    let expected = primes_below(1_000_000).iter().filter(|&&p| p).count();
    assert_eq!(expected, 78_498);
    assert_eq!(run_primes(0, 1_000_000).0, "78498\n");
    // Across several segment boundaries with an odd offset.
    let table = primes_below(300_001);
    let expected = (123_457..300_001).filter(|&n| table[n]).count();
    assert_eq!(run_primes(123_457, 300_001).0, format!("{expected}\n"));
}

#[test]
fn primes_far_from_zero() {
    let (lo, hi) = (10_000_000_000, 10_000_020_000);
    let expected = (lo..hi).filter(|&n| is_prime(n)).count();
    assert_eq!(run_primes(lo, hi).0, format!("{expected}\n"));
}

#[test]
fn primes_cost_grows_with_range_size() {
    let base = 1_000_000_000;
    let (_, f1) = run_primes(base, base + 200_000);
    let (_, f2) = run_primes(base, base + 400_000);
    let ratio = f2 as f64 / f1 as f64;
    assert!(
        (1.8..2.2).contains(&ratio),
        "fuel {f1} -> {f2}, ratio {ratio}"
    );
}

#[test]
fn primes_rejects_bad_input() {
    let sandbox = sandbox();
    let app = compile(&sandbox, apps::PRIMES_WAT);
    for input in [
        &b""[..],
        b"12",
        b"5 3",
        b"1 x",
        b"1 2 3",
        b"0 1000000000001",
        &[b'9'; 2000],
    ] {
        let err = sandbox
            .run(&app, input, [0; 32], &SandboxLimits::default(), None)
            .expect_err("bad input");
        assert_eq!(
            err,
            UnitError::Exit { code: 2 },
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn same_unit_same_output_and_fuel_every_time() {
    let sandbox = sandbox();
    let app = compile(&sandbox, apps::PRIMES_WAT);
    let input = apps::primes_input(5_000_000, 5_100_000);
    let first = sandbox
        .run(&app, &input, [1; 32], &SandboxLimits::default(), None)
        .expect("run");
    for seed in [[1; 32], [2; 32]] {
        let again = sandbox
            .run(&app, &input, seed, &SandboxLimits::default(), None)
            .expect("run");
        assert_eq!(again.output, first.output);
        assert_eq!(again.fuel_used, first.fuel_used);
    }
    // And from several threads at once on one shared sandbox.
    let sandbox = Arc::new(sandbox);
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (sandbox, app, input) = (sandbox.clone(), app.clone(), input.clone());
            std::thread::spawn(move || {
                sandbox
                    .run(&app, &input, [3; 32], &SandboxLimits::default(), None)
                    .expect("run")
            })
        })
        .collect();
    for t in threads {
        let out = t.join().expect("thread");
        assert_eq!(
            (out.output, out.fuel_used),
            (first.output.clone(), first.fuel_used)
        );
    }
}

#[path = "../../reference/mandelbrot.rs"]
mod mandelbrot;
use mandelbrot::mandelbrot_native as mandelbrot_reference;

#[test]
fn mandelbrot_tile_matches_reference() {
    let sandbox = sandbox();
    let app = compile(&sandbox, apps::MANDELBROT_WAT);
    for (x0, y0, step, w, h, max) in [
        (-2.0, -1.25, 2.5 / 64.0, 64, 48, 200),
        (-0.75, 0.1, 0.0005, 17, 9, 1000),
        (0.0, 0.0, 1.0, 0, 5, 10),
        (f64::NAN, 0.0, 1.0, 2, 2, 7),
    ] {
        let out = sandbox
            .run(
                &app,
                &apps::mandelbrot_input(x0, y0, step, w, h, max),
                [0; 32],
                &SandboxLimits::default(),
                None,
            )
            .expect("mandelbrot run");
        assert_eq!(out.output.len(), (w * h * 4) as usize);
        assert_eq!(
            out.output,
            mandelbrot_reference(x0, y0, step, w, h, max),
            "tile {x0} {y0} {step} {w}x{h}"
        );
    }
    // Wrong input size is an error, not a result.
    let err = sandbox
        .run(&app, b"short", [0; 32], &SandboxLimits::default(), None)
        .expect_err("short input");
    assert_eq!(err, UnitError::Exit { code: 2 });
}

/// Reference Monte-Carlo pi over the documented random stream.
fn montecarlo_reference(seed: [u8; 32], samples: u64) -> String {
    let mut hasher = blake3::Hasher::new_keyed(&seed);
    hasher.update(formic_work_units::RANDOM_CONTEXT);
    let mut stream = hasher.finalize_xof();
    let mut hits = 0u64;
    for _ in 0..samples {
        let mut b = [0u8; 8];
        stream.fill(&mut b);
        let x = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 1);
        let y = u64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]]) >> 1);
        if x * x + y * y < 1 << 62 {
            hits += 1;
        }
    }
    let micro = (hits * 4_000_000).checked_div(samples).unwrap_or(0);
    format!(
        "{hits} {samples} {}.{:06}\n",
        micro / 1_000_000,
        micro % 1_000_000
    )
}

#[test]
fn montecarlo_pi_matches_reference_and_depends_on_seed() {
    let sandbox = sandbox();
    let app = compile(&sandbox, apps::MONTECARLO_PI_WAT);
    let run = |seed: [u8; 32], n: u64| {
        let out = sandbox
            .run(
                &app,
                &apps::montecarlo_pi_input(n),
                seed,
                &SandboxLimits::default(),
                None,
            )
            .expect("pi run");
        (String::from_utf8(out.output).expect("utf-8"), out.fuel_used)
    };
    for (seed, n) in [
        ([0; 32], 0),
        ([1; 32], 1),
        ([2; 32], 513),
        ([9; 32], 200_000),
    ] {
        assert_eq!(
            run(seed, n).0,
            montecarlo_reference(seed, n),
            "seed {seed:?} n {n}"
        );
    }
    let (a, fa) = run([4; 32], 200_000);
    let (b, fb) = run([4; 32], 200_000);
    let (c, _) = run([5; 32], 200_000);
    assert_eq!((&a, fa), (&b, fb));
    assert_ne!(a, c, "a different seed gives a different sample");
    let pi: f64 = a
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("pi field");
    assert!((pi - std::f64::consts::PI).abs() < 0.02, "estimate {pi}");
}
