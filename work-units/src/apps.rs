//! Sample apps shipped with Formic, as WAT text (no toolchain needed), and
//! helpers that build their inputs. The demo and the network tests publish
//! these; each file's header documents its input and output formats.

/// Counts primes in `[lo, hi)`. Input: `"lo hi"` in decimal
/// (`hi <= 10^12`); output: the count in decimal and `"\n"`. Cost grows
/// with `hi - lo` and, as every segment walks the base primes up to
/// `sqrt(hi)`, with `hi` too: a number near 10^10 costs about twice one near
/// 10^8 (see [`primes_input`]).
pub const PRIMES_WAT: &str = include_str!("../apps/primes.wat");

/// One Mandelbrot tile in f64. Input: [`mandelbrot_input`]; output:
/// `width * height` little-endian u32 iteration counts, row by row.
pub const MANDELBROT_WAT: &str = include_str!("../apps/mandelbrot.wat");

/// Monte-Carlo estimate of pi from `random_get`. Input: the sample count in
/// decimal; output: `"<hits> <samples> <pi to 6 decimals>\n"`.
pub const MONTECARLO_PI_WAT: &str = include_str!("../apps/montecarlo_pi.wat");

/// Input for [`PRIMES_WAT`]: count primes in `[lo, hi)`.
pub fn primes_input(lo: u64, hi: u64) -> Vec<u8> {
    format!("{lo} {hi}").into_bytes()
}

/// Input for [`MANDELBROT_WAT`]: the tile whose pixel `(x, y)` is
/// `c = (x0 + x*step) + (y0 + y*step)i`, iterating at most `max_iter` times.
pub fn mandelbrot_input(
    x0: f64,
    y0: f64,
    step: f64,
    width: u32,
    height: u32,
    max_iter: u32,
) -> Vec<u8> {
    let mut input = Vec::with_capacity(36);
    input.extend_from_slice(&x0.to_le_bytes());
    input.extend_from_slice(&y0.to_le_bytes());
    input.extend_from_slice(&step.to_le_bytes());
    input.extend_from_slice(&width.to_le_bytes());
    input.extend_from_slice(&height.to_le_bytes());
    input.extend_from_slice(&max_iter.to_le_bytes());
    input
}

/// Input for [`MONTECARLO_PI_WAT`]: the number of samples.
pub fn montecarlo_pi_input(samples: u64) -> Vec<u8> {
    samples.to_string().into_bytes()
}
