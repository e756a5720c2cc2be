//! Differential fuzzing of the NaN rewrite: wasm-smith modules (float-heavy,
//! within the sandbox's features) run as is under wasmtime's full NaN
//! canonicalization and rewritten under none must agree on every exported
//! result, trap, global and memory. The harness is shared with the
//! bounded property test in work-units/tests/sandbox/nan_differential.rs.
#![no_main]

#[path = "../../work-units/reference/nan_differential.rs"]
#[allow(dead_code)]
mod harness;

use std::sync::LazyLock;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

static ENGINES: LazyLock<harness::Engines> = LazyLock::new(harness::Engines::new);

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(module) = wasm_smith::Module::new(harness::smith_config(), &mut u) else {
        return;
    };
    if let Err(difference) = harness::check(&ENGINES, &module.to_bytes()) {
        panic!("the rewrite changed behaviour: {difference}");
    }
});
