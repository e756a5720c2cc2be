//! NaN canonicalization at observation points: a corpus of guests that make
//! NaNs with every float operation, from operands of every sign and payload
//! (quiet and signalling), and write their bits through every place a NaN
//! can be observed. The rewritten module on an engine without wasmtime's
//! canonicalization must write exactly the bytes the original writes under
//! wasmtime's full canonicalization, on Cranelift (x86_64 here) and on
//! Pulley, wasmtime's portable interpreter, standing in for another CPU.

use std::fmt::Write as _;

use formic_work_units::{EngineTuning, NanCanonicalization, Sandbox, SandboxConfig, SandboxLimits};

/// One float type's view for the generator.
#[derive(Clone, Copy)]
struct Ty {
    name: &'static str,
    int: &'static str,
    vec: &'static str,
    /// Where its operand table starts in memory.
    table: u32,
    size: u32,
    /// The conversion that makes this type from the other one.
    from_other: &'static str,
    /// The vector conversion from the other type's vector.
    vec_from_other: &'static str,
}

const F32: Ty = Ty {
    name: "f32",
    int: "i32",
    vec: "f32x4",
    table: 0x1000,
    size: 4,
    from_other: "f32.demote_f64",
    vec_from_other: "f32x4.demote_f64x2_zero",
};
const F64: Ty = Ty {
    name: "f64",
    int: "i64",
    vec: "f64x2",
    table: 0x2000,
    size: 8,
    from_other: "f64.promote_f32",
    vec_from_other: "f64x2.promote_low_f32x4",
};

/// Operand bit patterns: canonical NaNs of both signs, quiet and signalling
/// NaNs with payloads, infinities, zeros, ordinary, subnormal and extreme
/// values.
const F32_VALUES: [u64; 14] = [
    0x7fc0_0000,
    0xffc0_0000,
    0x7fc1_2345,
    0xffd0_0001,
    0x7f80_0001,
    0xff81_2345,
    0x7f80_0000,
    0xff80_0000,
    0x0000_0000,
    0x8000_0000,
    0x3f80_0000,
    0xbfc0_0000,
    0x0000_0001,
    0x7f7f_ffff,
];
const F64_VALUES: [u64; 14] = [
    0x7ff8_0000_0000_0000,
    0xfff8_0000_0000_0000,
    0x7ff8_0000_dead_beef,
    0xfffc_0000_0000_0001,
    0x7ff0_0000_0000_0001,
    0xfff0_0000_0001_2345,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    0,
    0x8000_0000_0000_0000,
    0x3ff0_0000_0000_0000,
    0xbff8_0000_0000_0000,
    1,
    0x7fef_ffff_ffff_ffff,
];
/// A NaN the guest put there itself: its bits must survive untouched.
const F32_EXACT_NAN: u64 = 0xffa0_0bad;
const F64_EXACT_NAN: u64 = 0x7ff0_0000_0000_bad0;
const EXACT_SLOT: u32 = 15;
/// Operands used with every observation path (the full table is swept
/// through plain stores).
const SMALL: [u32; 6] = [2, 5, 6, 7, 8, 10];

const BINARY: [&str; 7] = ["add", "sub", "mul", "div", "min", "max", "copysign"];
const UNARY: [&str; 7] = ["sqrt", "ceil", "floor", "trunc", "nearest", "neg", "abs"];
const VEC_BINARY: [&str; 8] = ["add", "sub", "mul", "div", "min", "max", "pmin", "pmax"];
const VEC_UNARY: [&str; 7] = ["sqrt", "ceil", "floor", "trunc", "nearest", "neg", "abs"];

/// Where the output starts; every write goes to the next free slot.
const OUT_BASE: u32 = 0x1_0000;

fn load(ty: Ty, slot: u32) -> String {
    format!(
        "i32.const 0 {}.load offset={} ",
        ty.name,
        ty.table + 8 * slot
    )
}

fn other(ty: Ty) -> Ty {
    if ty.name == "f32" { F64 } else { F32 }
}

/// Snippets that each push one value of `ty`: arithmetic on operands of
/// every kind, sign operations, conversions, calls that return a dirty
/// value, and plain loads (exact NaNs that must not be canonicalized).
fn producers(ty: Ty, operands: &[u32]) -> Vec<String> {
    let mut out = Vec::new();
    for op in BINARY {
        for &a in operands {
            for &b in operands {
                out.push(format!("{}{}{}.{op} ", load(ty, a), load(ty, b), ty.name));
                if op != "copysign" {
                    out.push(format!(
                        "{}{}call ${}_{op} ",
                        load(ty, a),
                        load(ty, b),
                        ty.name
                    ));
                }
            }
        }
    }
    for op in UNARY {
        for &a in operands {
            out.push(format!("{}{}.{op} ", load(ty, a), ty.name));
        }
    }
    for &a in operands {
        out.push(format!("{}{} ", load(other(ty), a), ty.from_other));
        out.push(load(ty, a));
    }
    out.push(load(ty, EXACT_SLOT));
    out
}

/// The ways a value's bits reach memory. Each returns code that stores the
/// value `p` pushes at `addr` (and how many bytes it takes).
/// Code that stores the value a producer pushes at an address.
type Path = Box<dyn Fn(&str, u32) -> String>;

fn paths(ty: Ty) -> Vec<(&'static str, Path)> {
    let t = ty.name;
    let i = ty.int;
    let v = ty.vec;
    let exact = load(ty, EXACT_SLOT);
    let mut paths: Vec<(&'static str, Path)> = Vec::new();
    paths.push((
        "store",
        Box::new(move |p, a| format!("i32.const {a} {p}{t}.store ")),
    ));
    paths.push((
        "reinterpret",
        Box::new(move |p, a| format!("i32.const {a} {p}{i}.reinterpret_{t} {i}.store ")),
    ));
    paths.push((
        "local",
        Box::new(move |p, a| {
            format!("{p}local.set $x_{t} i32.const {a} local.get $x_{t} {t}.store ")
        }),
    ));
    paths.push((
        "tee",
        Box::new(move |p, a| format!("i32.const {a} {p}local.tee $x_{t} {t}.store ")),
    ));
    paths.push((
        "call-arg",
        Box::new(move |p, a| format!("i32.const {a} {p}call $id_{t} {t}.store ")),
    ));
    paths.push((
        "global",
        Box::new(move |p, a| {
            format!("{p}global.set $g_{t} i32.const {a} global.get $g_{t} {t}.store ")
        }),
    ));
    paths.push((
        "neg",
        Box::new(move |p, a| format!("i32.const {a} {p}{t}.neg {t}.store ")),
    ));
    paths.push((
        "abs",
        Box::new(move |p, a| format!("i32.const {a} {p}{t}.abs {t}.store ")),
    ));
    paths.push((
        "copysign-sign",
        Box::new(move |p, a| format!("i32.const {a} {t}.const 1 {p}{t}.copysign {t}.store ")),
    ));
    paths.push((
        "copysign-magnitude",
        Box::new(move |p, a| format!("i32.const {a} {p}{t}.const -2 {t}.copysign {t}.store ")),
    ));
    paths.push((
        "block-result",
        Box::new(move |p, a| format!("i32.const {a} block (result {t}) {p}end {t}.store ")),
    ));
    paths.push((
        "br-value",
        Box::new(move |p, a| format!("i32.const {a} block (result {t}) {p}br 0 end {t}.store ")),
    ));
    paths.push((
        "br_if-taken",
        Box::new(move |p, a| {
            format!("i32.const {a} block (result {t}) {p}i32.const 1 br_if 0 end {t}.store ")
        }),
    ));
    paths.push((
        "br_if-not-taken",
        Box::new(move |p, a| {
            format!("i32.const {a} block (result {t}) {p}i32.const 0 br_if 0 end {t}.store ")
        }),
    ));
    paths.push((
        "br_table",
        Box::new(move |p, a| {
            format!(
                "i32.const {a} block (result {t}) block (result {t}) {p}i32.const 1 br_table 0 1 end {t}.neg end {t}.store "
            )
        }),
    ));
    for (name, c) in [("select-ours", 1), ("select-exact", 0)] {
        let exact = exact.clone();
        paths.push((
            name,
            Box::new(move |p, a| {
                format!("i32.const {a} {p}{exact}i32.const {c} select {t}.store ")
            }),
        ));
    }
    for (name, c) in [("if-else-ours", 1), ("if-else-exact", 0)] {
        let exact = exact.clone();
        paths.push((
            name,
            Box::new(move |p, a| {
                format!(
                    "i32.const {c} if {p}local.set $x_{t} else {exact}local.set $x_{t} end i32.const {a} local.get $x_{t} {t}.store "
                )
            }),
        ));
    }
    for (name, c) in [("if-no-else-kept", 0), ("if-no-else-replaced", 1)] {
        let exact = exact.clone();
        paths.push((
            name,
            Box::new(move |p, a| {
                format!(
                    "{p}local.set $x_{t} i32.const {c} if {exact}local.set $x_{t} end i32.const {a} local.get $x_{t} {t}.store "
                )
            }),
        ));
    }
    {
        let exact = exact.clone();
        paths.push((
            "loop-carried",
            Box::new(move |p, a| {
                format!(
                    "{exact}local.set $x_{t} i32.const 0 local.set $n loop local.get $n i32.eqz if {p}local.set $x_{t} i32.const 1 local.set $n br 1 end end i32.const {a} local.get $x_{t} {t}.store "
                )
            }),
        ));
    }
    paths.push((
        "splat-extract",
        Box::new(move |p, a| format!("i32.const {a} {p}{v}.splat {v}.extract_lane 1 {t}.store ")),
    ));
    paths.push((
        "splat-store",
        Box::new(move |p, a| format!("i32.const {a} {p}{v}.splat v128.store ")),
    ));
    paths.push((
        "replace-lane",
        Box::new(move |p, a| {
            format!("i32.const {a} v128.const i64x2 0 0 {p}{v}.replace_lane 1 v128.store ")
        }),
    ));
    paths
}

/// A guest that writes every (producer, path) pair's bits, then its whole
/// output region to stdout.
fn corpus() -> String {
    let mut data = String::new();
    for (ty, values, exact) in [
        (F32, F32_VALUES, F32_EXACT_NAN),
        (F64, F64_VALUES, F64_EXACT_NAN),
    ] {
        let slots = values
            .iter()
            .copied()
            .enumerate()
            .map(|(i, b)| (i as u32, b));
        for (slot, bits) in slots.chain([(EXACT_SLOT, exact)]) {
            let mut escaped = String::new();
            for b in &bits.to_le_bytes()[..ty.size as usize] {
                let _ = write!(escaped, "\\{b:02x}");
            }
            let _ = writeln!(
                data,
                "  (data (i32.const {}) \"{escaped}\")",
                ty.table + 8 * slot
            );
        }
    }
    let mut funcs = String::new();
    let mut calls = String::new();
    let mut addr = OUT_BASE;
    let mut n = 0;
    for ty in [F32, F64] {
        let t = ty.name;
        let all: Vec<u32> = (0..14).collect();
        let _ = writeln!(
            funcs,
            "  (func $id_{t} (param {t}) (result {t}) local.get 0)"
        );
        for op in BINARY {
            if op != "copysign" {
                let _ = writeln!(
                    funcs,
                    "  (func ${t}_{op} (param {t} {t}) (result {t}) local.get 0 local.get 1 {t}.{op})"
                );
            }
        }
        for (name, path) in paths(ty) {
            let operands: &[u32] = if name == "store" || name == "reinterpret" {
                &all
            } else {
                &SMALL
            };
            let mut body = String::new();
            for p in producers(ty, operands) {
                body.push_str(&path(&p, addr));
                body.push('\n');
                addr += 16;
            }
            let _ = writeln!(
                funcs,
                "  (func $path{n} (local $x_f32 f32) (local $x_f64 f64) (local $n i32) ;; {t} {name}\n{body}  )"
            );
            let _ = write!(calls, "call $path{n} ");
            n += 1;
        }
        // Vector arithmetic, canonicalized eagerly by the rewrite.
        let v = ty.vec;
        let mut body = String::new();
        for op in VEC_BINARY {
            for &a in &SMALL {
                for &b in &SMALL {
                    let _ = writeln!(
                        body,
                        "i32.const {addr} {}{v}.splat {}{v}.splat {v}.{op} v128.store",
                        load(ty, a),
                        load(ty, b)
                    );
                    addr += 16;
                }
            }
        }
        for op in VEC_UNARY {
            for &a in &SMALL {
                let _ = writeln!(
                    body,
                    "i32.const {addr} {}{v}.splat {v}.{op} v128.store",
                    load(ty, a)
                );
                addr += 16;
            }
        }
        for &a in &SMALL {
            let o = other(ty);
            let _ = writeln!(
                body,
                "i32.const {addr} {}{}.splat {} v128.store",
                load(o, a),
                o.vec,
                ty.vec_from_other
            );
            addr += 16;
        }
        let _ = writeln!(funcs, "  (func $path{n}\n{body}  )");
        let _ = write!(calls, "call $path{n} ");
        n += 1;
    }
    let len = addr - OUT_BASE;
    let pages = addr.div_ceil(65536) + 1;
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (global $g_f32 (mut f32) (f32.const 0))
  (global $g_f64 (mut f64) (f64.const 0))
{data}{funcs}  (func (export "_start")
    {calls}
    (i32.store (i32.const 0) (i32.const {OUT_BASE}))
    (i32.store (i32.const 4) (i32.const {len}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
)"#
    )
}

fn run(tuning: EngineTuning, wat: &str) -> (Vec<u8>, NanCanonicalization) {
    let sandbox = Sandbox::with_tuning(SandboxConfig::default(), tuning).expect("sandbox");
    let app = sandbox.compile(wat.as_bytes()).expect("compile corpus");
    let out = sandbox
        .run(&app, b"", [0; 32], &SandboxLimits::default(), None)
        .expect("run corpus");
    assert_eq!(out.nan, app.nan_canonicalization());
    (out.output, out.nan)
}

fn tuning(nan: NanCanonicalization, target: Option<&'static str>) -> EngineTuning {
    EngineTuning {
        nan,
        target,
        ..EngineTuning::default()
    }
}

#[test]
fn corpus_writes_the_same_bits_as_full_canonicalization() {
    let wat = corpus();
    let (full, _) = run(tuning(NanCanonicalization::Full, None), &wat);
    let (observed, how) = run(tuning(NanCanonicalization::AtObservation, None), &wat);
    // The rewrite must really have run, or this compares full with full.
    assert_eq!(how, NanCanonicalization::AtObservation);
    assert!(
        full.len() > 100_000,
        "corpus too small: {} bytes",
        full.len()
    );
    if let Some(i) = full.iter().zip(&observed).position(|(a, b)| a != b) {
        panic!(
            "first difference at output byte {i} (slot {}): full {:02x?}, rewrite {:02x?}",
            i / 16,
            &full[i / 16 * 16..i / 16 * 16 + 16],
            &observed[i / 16 * 16..i / 16 * 16 + 16]
        );
    }
    assert_eq!(full, observed);
    // Both canonical patterns occur (0/0 and friends in f32 and f64), and
    // so do exact NaNs the guest wrote itself.
    for pattern in [
        &0x7fc0_0000u32.to_le_bytes()[..],
        &0x7ff8_0000_0000_0000u64.to_le_bytes()[..],
        &(F32_EXACT_NAN as u32).to_le_bytes()[..],
        &F64_EXACT_NAN.to_le_bytes()[..],
    ] {
        assert!(
            full.windows(pattern.len()).any(|w| w == pattern),
            "pattern {pattern:02x?} never written"
        );
    }
    // Without canonicalization the host's own NaN bits show: the corpus
    // does observe them.
    let (off, _) = run(tuning(NanCanonicalization::Off, None), &wat);
    assert_ne!(off, full, "the corpus never observes a host NaN");
}

#[test]
fn pulley_gives_the_same_bits_as_cranelift() {
    let wat = corpus();
    let (native, _) = run(tuning(NanCanonicalization::AtObservation, None), &wat);
    let (pulley, how) = run(
        tuning(NanCanonicalization::AtObservation, Some("pulley64")),
        &wat,
    );
    assert_eq!(how, NanCanonicalization::AtObservation);
    assert_eq!(native, pulley);
    let (pulley_full, _) = run(tuning(NanCanonicalization::Full, Some("pulley64")), &wat);
    assert_eq!(native, pulley_full);
}

#[test]
fn rewrite_leaves_integer_code_alone_and_fuel_deterministic() {
    // No float instruction, nothing inserted: the same fuel as the original
    // under full canonicalization.
    let primes = formic_work_units::apps::PRIMES_WAT;
    let input = b"1 100000";
    let full = Sandbox::with_tuning(
        SandboxConfig::default(),
        tuning(NanCanonicalization::Full, None),
    )
    .expect("sandbox");
    let observed = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let a = full.compile(primes.as_bytes()).expect("compile");
    let b = observed.compile(primes.as_bytes()).expect("compile");
    let ra = full
        .run(&a, input, [0; 32], &SandboxLimits::default(), None)
        .expect("run");
    let rb = observed
        .run(&b, input, [0; 32], &SandboxLimits::default(), None)
        .expect("run");
    assert_eq!(ra.output, rb.output);
    assert_eq!(ra.fuel_used, rb.fuel_used);
    assert_eq!(b.nan_canonicalization(), NanCanonicalization::AtObservation);
    // The float sample app: same output; fuel differs by the inserted
    // canonicalizations only, and is the same run after run.
    let mandel = formic_work_units::apps::MANDELBROT_WAT;
    let input = formic_work_units::apps::mandelbrot_input(-2.0, -1.5, 0.01, 64, 48, 200);
    let a = full.compile(mandel.as_bytes()).expect("compile");
    let b = observed.compile(mandel.as_bytes()).expect("compile");
    let ra = full
        .run(&a, &input, [0; 32], &SandboxLimits::default(), None)
        .expect("run");
    let rb = observed
        .run(&b, &input, [0; 32], &SandboxLimits::default(), None)
        .expect("run");
    let rb2 = observed
        .run(&b, &input, [0; 32], &SandboxLimits::default(), None)
        .expect("run");
    assert_eq!(ra.output, rb.output);
    assert_eq!(rb.fuel_used, rb2.fuel_used);
}

#[test]
fn a_module_the_rewrite_cannot_handle_falls_back_to_full_canonicalization() {
    // 40,000 float locals and 2,000 branches: past the rewrite's bound on
    // tracking work, so it falls back; the app still compiles and runs.
    let mut body = String::new();
    for _ in 0..2_000 {
        body.push_str("(block (br_if 0 (i32.const 0)))\n");
    }
    let wat = format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (local {}) {body}))"#,
        "f64 ".repeat(40_000)
    );
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let app = sandbox.compile(wat.as_bytes()).expect("compile");
    assert_eq!(app.nan_canonicalization(), NanCanonicalization::Full);
    assert!(app.nan_fallback_reason().is_some());
    let out = sandbox
        .run(&app, b"", [0; 32], &SandboxLimits::default(), None)
        .expect("run");
    assert_eq!(out.nan, NanCanonicalization::Full);
}

/// A compiler-built guest (clang -O2, wasi-libc's libm and printf) printing
/// the bits of math results on NaN-rich operands: real code, not just the
/// generated corpus. Source and build command: fixtures/libm_nan.c.
const LIBM_NAN_WASM: &[u8] = include_bytes!("fixtures/libm_nan.wasm");

fn run_bytes(tuning: EngineTuning, wasm: &[u8]) -> (Vec<u8>, NanCanonicalization) {
    let sandbox = Sandbox::with_tuning(SandboxConfig::default(), tuning).expect("sandbox");
    let app = sandbox.compile(wasm).expect("compile");
    let out = sandbox
        .run(&app, b"", [0; 32], &SandboxLimits::default(), None)
        .expect("run");
    (out.output, out.nan)
}

#[test]
fn compiled_c_with_libm_prints_the_same_bits_as_full_canonicalization() {
    let (full, _) = run_bytes(tuning(NanCanonicalization::Full, None), LIBM_NAN_WASM);
    let (observed, how) = run_bytes(
        tuning(NanCanonicalization::AtObservation, None),
        LIBM_NAN_WASM,
    );
    assert_eq!(how, NanCanonicalization::AtObservation);
    assert!(full.len() > 10_000);
    assert_eq!(
        String::from_utf8_lossy(&full),
        String::from_utf8_lossy(&observed)
    );
    let (pulley, _) = run_bytes(
        tuning(NanCanonicalization::AtObservation, Some("pulley64")),
        LIBM_NAN_WASM,
    );
    assert_eq!(
        String::from_utf8_lossy(&full),
        String::from_utf8_lossy(&pulley)
    );
    let (off, _) = run_bytes(tuning(NanCanonicalization::Off, None), LIBM_NAN_WASM);
    assert_ne!(off, full, "the guest never prints a host NaN's bits");
}
