//! Per-unit resource limits and the parsers for their command-line forms.
//!
//! The parsers live here rather than in the `formic` binary because several
//! commands take the same quantities (`exec --memory/--timeout`, and the
//! publisher's memory and deadline options) and must read them identically.

use std::time::Duration;

use thiserror::Error;

/// Limits for one unit run. Exceeding any of them ends the unit with the
/// matching [`crate::UnitError`] naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Fuel budget for the `_start` call (roughly one unit per wasm
    /// instruction). Exceeding it: [`crate::UnitError::FuelExhausted`].
    pub fuel: u64,
    /// Largest linear memory, in bytes. Exceeding it:
    /// [`crate::UnitError::MemoryLimit`].
    pub memory_bytes: u64,
    /// Largest stdout, in bytes. Exceeding it:
    /// [`crate::UnitError::OutputTooLarge`].
    pub max_output_bytes: u64,
    /// Wall-clock ceiling on running time (time spent paused does not
    /// count). Exceeding it: [`crate::UnitError::Timeout`].
    pub wall_clock: Duration,
}

impl Default for SandboxLimits {
    /// Generous limits for `formic exec`: 10 G fuel (several seconds of
    /// compute), 256 MiB memory, 16 MiB output, 60 s.
    fn default() -> Self {
        SandboxLimits {
            fuel: 10_000_000_000,
            memory_bytes: 256 * 1024 * 1024,
            max_output_bytes: 16 * 1024 * 1024,
            wall_clock: Duration::from_secs(60),
        }
    }
}

/// A quantity on the command line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Nothing was given.
    #[error("empty value")]
    Empty,
    /// The number part does not parse (the whole input).
    #[error("invalid number in {0:?}")]
    Number(String),
    /// The unit suffix is not one this quantity accepts.
    #[error("unknown unit {unit:?} in {input:?} (expected one of {expected})")]
    Unit {
        /// The whole input.
        input: String,
        /// The suffix that was not recognized.
        unit: String,
        /// The suffixes accepted.
        expected: &'static str,
    },
    /// The value does not fit in 64 bits (the whole input).
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// Splits `s` into a leading decimal number (digits, `_`, at most one `.`)
/// and the rest.
fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .map_or(s.len(), |(i, _)| i);
    s.split_at(end)
}

/// `number × scale`, where `number` may have a fractional part, truncated
/// toward zero. Exact integer arithmetic (no floats), so "1.5GiB" is exact.
fn scaled(number: &str, scale: u128, input: &str) -> Result<u128, ParseError> {
    let number: String = number.chars().filter(|&c| c != '_').collect();
    let (int, frac) = number.split_once('.').unwrap_or((&number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(ParseError::Number(input.to_owned()));
    }
    let overflow = || ParseError::Overflow(input.to_owned());
    let mut value: u128 = 0;
    for c in int.chars() {
        let d = c
            .to_digit(10)
            .ok_or_else(|| ParseError::Number(input.to_owned()))?;
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(d)))
            .ok_or_else(overflow)?;
    }
    let whole = value.checked_mul(scale).ok_or_else(overflow)?;
    // The fraction as digits / 10^len, scaled exactly and then truncated.
    let (mut digits, mut denominator): (u128, u128) = (0, 1);
    for c in frac.chars().take(30) {
        let d = c
            .to_digit(10)
            .ok_or_else(|| ParseError::Number(input.to_owned()))?;
        digits = digits * 10 + u128::from(d);
        denominator *= 10;
    }
    if frac.chars().skip(30).any(|c| !c.is_ascii_digit()) {
        return Err(ParseError::Number(input.to_owned()));
    }
    let part = digits.checked_mul(scale).ok_or_else(overflow)? / denominator;
    let result = whole.checked_add(part).ok_or_else(overflow)?;
    Ok(result)
}

/// Parses a byte size: a number with an optional unit.
///
/// `B` (or none) = bytes; `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` are
/// powers of 1024 (bare letters follow the docker/ulimit habit);
/// `KB`, `MB`, `GB`, `TB` are powers of 1000. Case-insensitive, optional
/// space before the unit, fractions allowed ("1.5GiB"), `_` ignored.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let input = s.trim();
    if input.is_empty() {
        return Err(ParseError::Empty);
    }
    let (number, unit) = split_number(input);
    let scale: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(ParseError::Unit {
                input: input.to_owned(),
                unit: other.to_owned(),
                expected: "B, K, KiB, KB, M, MiB, MB, G, GiB, GB, T, TiB, TB",
            });
        }
    };
    let bytes = scaled(number, scale, input)?;
    u64::try_from(bytes).map_err(|_| ParseError::Overflow(input.to_owned()))
}

/// Parses a duration: one or more `<number><unit>` parts, summed, e.g.
/// "30s", "2m", "500ms", "1m30s", "1.5h". Units: `ns`, `us`/`µs`, `ms`,
/// `s`, `m`, `h`, `d`. A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let input = s.trim();
    if input.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut rest = input;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (number, after) = split_number(rest);
        if number.is_empty() {
            return Err(ParseError::Number(input.to_owned()));
        }
        let unit_end = after
            .char_indices()
            .find(|&(_, c)| c.is_ascii_digit() || c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, next) = after.split_at(unit_end);
        let nanos_per: u128 = match unit.trim() {
            "" | "s" | "sec" | "secs" => 1_000_000_000,
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "m" | "min" | "mins" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            other => {
                return Err(ParseError::Unit {
                    input: input.to_owned(),
                    unit: other.to_owned(),
                    expected: "ns, us, ms, s, m, h, d",
                });
            }
        };
        total = total
            .checked_add(scaled(number, nanos_per, input)?)
            .ok_or_else(|| ParseError::Overflow(input.to_owned()))?;
        rest = next;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| ParseError::Overflow(input.to_owned()))?;
    // The remainder is below 1e9 and so fits in u32.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Parses a fuel amount: a plain integer, `_` allowed, with an optional
/// decimal suffix `k` (10³), `M` (10⁶), `G` (10⁹), `T` (10¹²).
pub fn parse_fuel(s: &str) -> Result<u64, ParseError> {
    let input = s.trim();
    if input.is_empty() {
        return Err(ParseError::Empty);
    }
    let (number, unit) = split_number(input);
    let scale: u128 = match unit.trim() {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => {
            return Err(ParseError::Unit {
                input: input.to_owned(),
                unit: other.to_owned(),
                expected: "k, M, G, T",
            });
        }
    };
    let fuel = scaled(number, scale, input)?;
    u64::try_from(fuel).map_err(|_| ParseError::Overflow(input.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64mb"), Ok(64_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 2 KiB "), Ok(2048));
        assert_eq!(parse_size("1_000B"), Ok(1000));
        assert!(matches!(parse_size("12XB"), Err(ParseError::Unit { .. })));
        assert!(matches!(parse_size("MiB"), Err(ParseError::Number(_))));
        assert!(matches!(parse_size("1.2.3M"), Err(ParseError::Number(_))));
        assert_eq!(parse_size(""), Err(ParseError::Empty));
        assert!(matches!(
            parse_size("99999999999TiB"),
            Err(ParseError::Overflow(_))
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0.25s"), Ok(Duration::from_millis(250)));
        assert!(matches!(
            parse_duration("3 fortnights"),
            Err(ParseError::Unit { .. })
        ));
        assert!(matches!(parse_duration("s"), Err(ParseError::Number(_))));
        assert_eq!(parse_duration("  "), Err(ParseError::Empty));
    }

    #[test]
    fn fuel() {
        assert_eq!(parse_fuel("10_000_000"), Ok(10_000_000));
        assert_eq!(parse_fuel("5G"), Ok(5_000_000_000));
        assert_eq!(parse_fuel("2.5M"), Ok(2_500_000));
        assert!(parse_fuel("-1").is_err());
        assert!(parse_fuel("99999999999T").is_err());
    }
}
