//! Differential property test of the NaN rewrite: random float-heavy
//! modules (wasm-smith) run as is under wasmtime's full canonicalization
//! and rewritten under none must agree on every result, trap, exported
//! global and memory. The harness is shared with the fuzz target
//! (fuzz/fuzz_targets/nan_rewrite.rs), which runs it without a bound.
//! `PROPTEST_CASES` raises the case count here (CI runs the default).

#[path = "../../reference/nan_differential.rs"]
#[allow(dead_code)]
mod harness;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::Unstructured;
use proptest::prelude::*;

static ENGINES: LazyLock<harness::Engines> = LazyLock::new(harness::Engines::new);
static COMPARED: AtomicUsize = AtomicUsize::new(0);
static FALLBACKS: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn rewritten_modules_behave_like_fully_canonicalized_ones(
        bytes in proptest::collection::vec(any::<u8>(), 2048..16384)
    ) {
        let mut u = Unstructured::new(&bytes);
        let Ok(module) = wasm_smith::Module::new(harness::smith_config(), &mut u) else {
            return Ok(());
        };
        let wasm = module.to_bytes();
        match harness::check(&ENGINES, &wasm) {
            Ok(harness::Verdict::Same { .. }) => {
                COMPARED.fetch_add(1, Ordering::Relaxed);
            }
            Ok(harness::Verdict::Fallback(why)) => {
                FALLBACKS.fetch_add(1, Ordering::Relaxed);
                eprintln!("fallback: {why}");
            }
            Ok(harness::Verdict::Rejected(_)) => {}
            Err(difference) => {
                let text = wasmprinter::print_bytes(&wasm).unwrap_or_default();
                prop_assert!(false, "{difference}\nmodule:\n{text}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// An app's bytes are untrusted: the rewrite returns a module or an
    /// error on anything, including damaged valid modules.
    #[test]
    fn rewrite_never_panics_on_damaged_modules(
        bytes in proptest::collection::vec(any::<u8>(), 256..4096),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
    ) {
        let _ = formic_work_units::nan_rewrite::rewrite(&bytes);
        let mut u = Unstructured::new(&bytes);
        if let Ok(module) = wasm_smith::Module::new(harness::smith_config(), &mut u) {
            let mut wasm = module.to_bytes();
            for (at, bits) in flips {
                let n = wasm.len();
                if n > 0 {
                    wasm[at % n] ^= bits;
                }
            }
            let _ = formic_work_units::nan_rewrite::rewrite(&wasm);
        }
    }
}

/// The property above must really compare modules, not skip them all.
#[test]
fn the_generator_yields_comparable_modules() {
    let mut compared = 0;
    let mut fallbacks = 0;
    let mut calls = 0;
    let mut canons = 0;
    // FORMIC_NAN_DIFF_MODULES raises the count for a longer run.
    let modules: usize = std::env::var("FORMIC_NAN_DIFF_MODULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..modules {
        let bytes: Vec<u8> = (0..16384)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut u = Unstructured::new(&bytes);
        let module = match wasm_smith::Module::new(harness::smith_config(), &mut u) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("not generated: {e}");
                continue;
            }
        };
        match harness::check(&ENGINES, &module.to_bytes()) {
            Ok(harness::Verdict::Same {
                calls: c,
                canons: k,
            }) => {
                compared += 1;
                calls += c;
                canons += k;
            }
            Ok(harness::Verdict::Fallback(_)) => fallbacks += 1,
            Ok(harness::Verdict::Rejected(why)) => eprintln!("rejected: {why}"),
            Err(difference) => panic!("{difference}"),
        }
    }
    assert!(
        compared >= modules / 2,
        "only {compared} of {modules} modules compared ({fallbacks} fell back)"
    );
    assert_eq!(fallbacks, 0, "the rewrite declined generated modules");
    eprintln!("{compared} modules, {calls} calls compared, {canons} canonicalizations inserted");
    assert!(calls >= 12, "only {calls} exported calls compared");
    assert!(
        canons > 0,
        "the generated modules never needed a canonicalization"
    );
}
