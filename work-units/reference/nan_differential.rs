//! Differential check of the NaN rewrite (src/nan_rewrite.rs): a module run
//! as is under wasmtime's full NaN canonicalization, and rewritten under no
//! canonicalization, must behave identically: every exported function's
//! results (as bits) or trap, every exported global, and a hash of every
//! exported memory. Included by path from the property test
//! (tests/sandbox/nan_differential.rs) and the fuzz target
//! (fuzz/fuzz_targets/nan_rewrite.rs), so there is one copy.
//!
//! Fuel differs between the two (the rewrite inserts instructions), so a
//! call that runs out of fuel or stack on either side is not compared; each
//! call runs in a fresh instance, so the others still are.

use wasmtime::{
    Config, Engine, Extern, Instance, Module, Store, StoreLimits, StoreLimitsBuilder, Trap, Val,
    ValType,
};

/// Fuel for instantiation and for each exported call.
pub(crate) const FUEL: u64 = 200_000;

/// A wasm-smith configuration for float-heavy modules within the sandbox's
/// feature set: no imports, everything exported.
pub(crate) fn smith_config() -> wasm_smith::Config {
    wasm_smith::Config {
        max_imports: 0,
        min_funcs: 3,
        max_funcs: 8,
        export_everything: true,
        canonicalize_nans: false,
        // Guarded memory accesses and arithmetic: functions run to the end
        // instead of trapping at their first random address.
        disallow_traps: true,
        exceptions_enabled: false,
        gc_enabled: false,
        memory64_enabled: false,
        relaxed_simd_enabled: false,
        threads_enabled: false,
        wide_arithmetic_enabled: false,
        custom_page_sizes_enabled: false,
        shared_everything_threads_enabled: false,
        simd_enabled: true,
        tail_call_enabled: true,
        // With reference types wasm-smith also emits types wasmtime counts
        // as GC types (disabled in the sandbox); floats do not need them.
        reference_types_enabled: false,
        max_memories: 1,
        min_memories: 1,
        max_memory32_bytes: 4 << 16,
        max_tables: 1,
        max_instructions: 1000,
        max_nesting_depth: 6,
        // Numeric (float and integer), locals and globals, select, memory
        // and control: where NaNs are made, moved and observed. Vector
        // operations are left out: most are integer lane operations that
        // crowd out the scalar floats, and the rewrite canonicalizes vector
        // float arithmetic eagerly, as wasmtime does (the NaN corpus covers
        // them).
        allowed_instructions: wasm_smith::InstructionKinds::new(&[
            wasm_smith::InstructionKind::Numeric,
            wasm_smith::InstructionKind::Parametric,
            wasm_smith::InstructionKind::Variable,
            wasm_smith::InstructionKind::Memory,
            wasm_smith::InstructionKind::Control,
        ]),
        ..wasm_smith::Config::default()
    }
}

/// What one side did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Results as raw bits.
    Returned(Vec<u128>),
    Trapped(String),
    /// Out of fuel or stack: not comparable (the two sides differ in
    /// instructions and frame sizes).
    Stopped,
}

/// Everything observable after running each exported function, each in a
/// fresh instance (so a call that runs out of fuel costs only itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observation {
    pub(crate) instantiate: Outcome,
    pub(crate) calls: Vec<Call>,
}

/// One exported function's call in its own instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) name: String,
    pub(crate) outcome: Outcome,
    /// Then the exported globals (bits) and a BLAKE3 of each exported
    /// memory, in export order (empty when the call stopped).
    pub(crate) state: Vec<(String, u128)>,
}

fn engine(full_canonicalization: bool) -> Engine {
    let mut config = Config::new();
    config
        .cranelift_nan_canonicalization(full_canonicalization)
        .consume_fuel(true)
        .wasm_relaxed_simd(false)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        .gc_support(false)
        .wasm_gc(false)
        .wasm_function_references(false)
        .wasm_exceptions(false)
        .max_wasm_stack(256 * 1024);
    Engine::new(&config).expect("engine")
}

/// The two engines: full canonicalization (reference) and none (rewrite).
pub(crate) struct Engines {
    full: Engine,
    none: Engine,
}

impl Engines {
    pub(crate) fn new() -> Self {
        Engines {
            full: engine(true),
            none: engine(false),
        }
    }
}

impl Default for Engines {
    fn default() -> Self {
        Self::new()
    }
}

/// Arguments rich in NaNs of every sign and payload.
fn arg(ty: &ValType, i: usize) -> Option<Val> {
    const F32: [u32; 8] = [
        0x7fc0_0001,
        0xff80_0001,
        0x7fc0_0000,
        0xffc0_0000,
        0x0000_0000,
        0x8000_0000,
        0x7f80_0000,
        0x3fc0_0000,
    ];
    const F64: [u64; 8] = [
        0x7ff8_0000_0000_0001,
        0xfff0_0000_0000_0001,
        0x7ff8_0000_0000_0000,
        0xfff8_0000_0000_0000,
        0,
        0x8000_0000_0000_0000,
        0x7ff0_0000_0000_0000,
        0x3ff8_0000_0000_0000,
    ];
    Some(match ty {
        ValType::I32 => Val::I32(i as i32 * 7 - 3),
        ValType::I64 => Val::I64(i as i64 * 11 - 5),
        ValType::F32 => Val::F32(F32[i % F32.len()]),
        ValType::F64 => Val::F64(F64[i % F64.len()]),
        ValType::V128 => {
            let lo = u128::from(F32[i % F32.len()]) | (u128::from(F32[(i + 1) % F32.len()]) << 32);
            Val::V128((lo | (u128::from(F64[(i + 2) % F64.len()]) << 64)).into())
        }
        ValType::Ref(r) => Val::null_ref(r.heap_type()),
    })
}

fn bits(v: &Val) -> u128 {
    match v {
        Val::I32(x) => u128::from(*x as u32),
        Val::I64(x) => u128::from(*x as u64),
        Val::F32(x) => u128::from(*x),
        Val::F64(x) => u128::from(*x),
        Val::V128(x) => x.as_u128(),
        // References: only whether they are null is comparable.
        other => u128::from(other.ref_().is_some_and(|r| r.is_null())),
    }
}

fn outcome_of(e: &wasmtime::Error) -> Outcome {
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel | Trap::StackOverflow) => Outcome::Stopped,
        Some(trap) => Outcome::Trapped(format!("{trap:?}")),
        None => Outcome::Trapped(format!("{e}")),
    }
}

/// Runs `wasm` on `engine`: for each exported function, instantiates the
/// module afresh, calls the function with NaN-rich arguments, then reads the
/// exported state.
pub(crate) fn observe(engine: &Engine, wasm: &[u8]) -> Result<Observation, String> {
    let module = Module::new(engine, wasm).map_err(|e| format!("{e:#}"))?;
    let instantiate =
        |store: &mut Store<StoreLimits>| -> Result<Result<Instance, Outcome>, String> {
            store.set_fuel(FUEL).map_err(|e| e.to_string())?;
            Ok(Instance::new(&mut *store, &module, &[]).map_err(|e| outcome_of(&e)))
        };
    let new_store = || {
        let limits: StoreLimits = StoreLimitsBuilder::new()
            .memory_size(4 << 20)
            .table_elements(10_000)
            .build();
        let mut store = Store::new(engine, limits);
        store.limiter(|l| l);
        store
    };
    let mut store = new_store();
    let names: Vec<String> = match instantiate(&mut store)? {
        Ok(instance) => instance
            .exports(&mut store)
            .filter(|e| matches!(e.clone().into_extern(), Extern::Func(_)))
            .map(|e| e.name().to_owned())
            .collect(),
        Err(outcome) => {
            return Ok(Observation {
                instantiate: outcome,
                calls: Vec::new(),
            });
        }
    };
    let mut calls = Vec::new();
    for name in names {
        let mut store = new_store();
        let instance = match instantiate(&mut store)? {
            Ok(i) => i,
            Err(outcome) => {
                calls.push(Call {
                    name,
                    outcome,
                    state: Vec::new(),
                });
                continue;
            }
        };
        let Some(f) = instance.get_func(&mut store, &name) else {
            continue;
        };
        let ty = f.ty(&store);
        let args: Option<Vec<Val>> = ty.params().enumerate().map(|(i, t)| arg(&t, i)).collect();
        let Some(args) = args else { continue };
        let mut results: Vec<Val> = ty
            .results()
            .map(|t| Val::default_for_ty(&t).unwrap_or(Val::I32(0)))
            .collect();
        store.set_fuel(FUEL).map_err(|e| e.to_string())?;
        let outcome = match f.call(&mut store, &args, &mut results) {
            Ok(()) => Outcome::Returned(results.iter().map(bits).collect()),
            Err(e) => outcome_of(&e),
        };
        let state = if outcome == Outcome::Stopped {
            Vec::new()
        } else {
            exported_state(&mut store, &instance)
        };
        calls.push(Call {
            name,
            outcome,
            state,
        });
    }
    Ok(Observation {
        instantiate: Outcome::Returned(Vec::new()),
        calls,
    })
}

/// Exported globals (bits) and a hash of each exported memory.
fn exported_state(store: &mut Store<StoreLimits>, instance: &Instance) -> Vec<(String, u128)> {
    let exports: Vec<(String, Extern)> = instance
        .exports(&mut *store)
        .map(|e| (e.name().to_owned(), e.into_extern()))
        .collect();
    exports
        .into_iter()
        .filter_map(|(name, ext)| match ext {
            Extern::Global(g) => Some((name, bits(&g.get(&mut *store)))),
            Extern::Memory(m) => {
                let hash = blake3::hash(m.data(&*store));
                let mut h = [0u8; 16];
                h.copy_from_slice(&hash.as_bytes()[..16]);
                Some((name, u128::from_le_bytes(h)))
            }
            _ => None,
        })
        .collect()
}

/// What one differential case found.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Both sides agree on everything comparable: `calls` exported calls
    /// compared, `canons` canonicalizations the rewrite inserted.
    Same { calls: usize, canons: u32 },
    /// The rewrite declined the module (it would run with full
    /// canonicalization: nothing to compare).
    Fallback(String),
    /// The reference engine rejected the module (wasm-smith produced
    /// something outside the sandbox's features): skipped.
    Rejected(String),
}

/// Compares the module under full canonicalization with its rewrite.
/// Returns an error describing the first difference.
pub(crate) fn check(engines: &Engines, wasm: &[u8]) -> Result<Verdict, String> {
    let reference = match observe(&engines.full, wasm) {
        Ok(o) => o,
        Err(e) => return Ok(Verdict::Rejected(e)),
    };
    let (rewritten, stats) = match formic_work_units::nan_rewrite::rewrite(wasm) {
        Ok(r) => r,
        Err(e) => return Ok(Verdict::Fallback(e.to_string())),
    };
    let canons = stats.scalar_canons + stats.join_canons + stats.vector_canons;
    let candidate = observe(&engines.none, &rewritten)
        .map_err(|e| format!("the rewritten module does not compile: {e}"))?;
    if reference.instantiate != candidate.instantiate {
        if reference.instantiate == Outcome::Stopped || candidate.instantiate == Outcome::Stopped {
            return Ok(Verdict::Same { calls: 0, canons });
        }
        return Err(format!(
            "instantiation: full {:?}, rewrite {:?}",
            reference.instantiate, candidate.instantiate
        ));
    }
    if reference.calls.len() != candidate.calls.len() {
        return Err(format!(
            "exported functions: full {}, rewrite {}",
            reference.calls.len(),
            candidate.calls.len()
        ));
    }
    let mut compared = 0;
    for (a, b) in reference.calls.iter().zip(&candidate.calls) {
        if a.outcome == Outcome::Stopped || b.outcome == Outcome::Stopped {
            continue;
        }
        if a != b {
            return Err(format!(
                "export {:?}: full {:x?} then {:x?}, rewrite {:x?} then {:x?}",
                a.name, a.outcome, a.state, b.outcome, b.state
            ));
        }
        compared += 1;
    }
    Ok(Verdict::Same {
        calls: compared,
        canons,
    })
}
