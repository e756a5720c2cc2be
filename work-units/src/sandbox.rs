//! The sandbox: one wasmtime engine configured for determinism, compiling
//! apps (once, with an on-disk cache) and running units under limits.
//!
//! Why each engine setting:
//! * NaN canonicalization: x86 and Arm produce different NaN bit patterns
//!   for the same float operation; canonical NaNs make float results
//!   bit-identical across hosts. The app is rewritten at compile time to
//!   canonicalize only where a NaN's bits can be observed
//!   (`nan_rewrite.rs`), and compiled with wasmtime's own canonicalization
//!   (a compare and select after every float operation, ~5× on float
//!   kernels) off. A module the rewrite cannot handle is compiled as is on a
//!   second engine with wasmtime's canonicalization on: same results, the
//!   old speed.
//! * Relaxed SIMD off (and deterministic, should it be enabled later): its
//!   instructions are allowed to differ per CPU.
//! * Threads, shared memory, memory64, multi-memory, GC, the component
//!   model: off. Threads are nondeterministic; the rest is not needed by
//!   WASI preview 1 commands and only widens the attack surface.
//! * Fuel: the work measure. Counted for the `_start` call only, because
//!   fuel spent instantiating differs between platforms. It is also what
//!   interrupts a unit: the store yields every [`FUEL_YIELD_INTERVAL`]
//!   fuel, and at each yield (and after each host call) the unit's
//!   wall-clock limit, cancellation and pause are checked and progress is
//!   published (see `driver.rs`). Yields never change what the guest
//!   computes or the fuel it uses.
//! * No epoch interruption: its check at every loop header cost as much as
//!   the fuel check on tight loops (README, "Benchmark"), and the fuel
//!   check already gives a place to stop.
//! * `max_wasm_stack`: bounded guest stack; overflow is a trap, and a trap
//!   is never a comparable result (depth differs between hosts).

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use thiserror::Error;
use wasmtime::{
    CallHook, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, OptLevel,
    PoolingAllocationConfig, Store, StoreLimitsBuilder, Strategy, Trap,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

use crate::cache::ModuleCache;
use crate::control::UnitControl;
use crate::driver::{FUEL_YIELD_INTERVAL, Watch, block_on};
use crate::error::{CompileError, UnitError};
use crate::host::{
    self, FixedMonotonicClock, FixedWallClock, HostStop, Limiter, StopReason, UnitState,
};
use crate::limits::SandboxLimits;
use crate::nan_rewrite;

/// Guest stack limit. Units run on a wasmtime fiber stack (wasmtime's
/// default `async_stack_size`, 2 MiB), not on the calling thread's stack,
/// so this leaves about 1.5 MiB of it for host functions.
pub const MAX_WASM_STACK: usize = 512 * 1024;

/// Largest number of table elements a unit may have.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Tables a unit may have (the store limiter allows as many).
const MAX_TABLES: u32 = 4;

/// Units one sandbox can run at once: slots of the instance pool, twice the
/// cores (a node runs one unit per compute thread, by default one fewer
/// than the cores), at least 16, and at least the units its user says it
/// will run at once (`SandboxConfig::concurrent_units`, e.g. a node's
/// `--threads`), up to [`MAX_POOL_SLOTS`]. Each slot reserves, but does not
/// use, about 4 GiB of address space for its linear memory. A unit that
/// finds every slot taken ends in [`UnitError::HostBusy`]: the host's
/// condition, not the unit's failure.
fn pool_slots(concurrent_units: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(8, |n| n.get());
    let by_cores = u32::try_from(cores.saturating_mul(2)).map_or(256, |n| n.clamp(16, 256));
    by_cores.max(concurrent_units).min(MAX_POOL_SLOTS)
}

/// Most pool slots (4 TiB of reserved address space, a quarter of what
/// x86-64's user space has room for).
const MAX_POOL_SLOTS: u32 = 1024;

const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// Options for [`Sandbox::new`].
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// Where compiled modules are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Units the caller will run at once, at most; 0 for the default (twice
    /// the cores). Runs beyond the instance pool's slots fail with
    /// [`UnitError::HostBusy`], so a caller that runs more than that at
    /// once says so here.
    pub concurrent_units: u32,
}

/// How an app's float results are made deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NanCanonicalization {
    /// The module was rewritten to canonicalize NaNs only where their bits
    /// become observable (the production path).
    AtObservation,
    /// wasmtime canonicalizes the result of every float operation: the
    /// fallback for a module the rewrite cannot handle, and the engine
    /// before the rewrite. Same results, slower float code.
    Full,
    /// No canonicalization: results may differ between hosts. Benchmarks
    /// only.
    Off,
}

impl NanCanonicalization {
    /// A short name for logs and summary lines.
    pub fn as_str(self) -> &'static str {
        match self {
            NanCanonicalization::AtObservation => "observed",
            NanCanonicalization::Full => "full",
            NanCanonicalization::Off => "off",
        }
    }
}

impl std::fmt::Display for NanCanonicalization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Engine switches for measurements only (the benchmark compares the cost
/// of metering and determinism). Results obtained with anything but the
/// default are not comparable with other hosts' results.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct EngineTuning {
    /// Fuel metering. Off, nothing interrupts pure guest code: no pause,
    /// cancel or wall-clock limit between host calls.
    pub fuel: bool,
    /// Compiles in the epoch checks the sandbox used before it stopped
    /// units through fuel yields, with a deadline never reached, so their
    /// cost can still be measured. Off in production.
    pub epochs: bool,
    /// `AtObservation` in production; `Full` is the engine before the
    /// rewrite (and the fallback), `Off` has no determinism for floats.
    pub nan: NanCanonicalization,
    /// A compilation target other than the host, e.g. `"pulley64"`
    /// (wasmtime's portable interpreter, with wasmtime's `pulley` feature):
    /// the tests use it as a second architecture.
    pub target: Option<&'static str>,
}

impl Default for EngineTuning {
    fn default() -> Self {
        EngineTuning {
            fuel: true,
            epochs: false,
            nan: NanCanonicalization::AtObservation,
            target: None,
        }
    }
}

/// The sandbox could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SandboxError {
    /// wasmtime refused the engine configuration or the linker setup.
    #[error("cannot create the wasm engine: {reason}")]
    Engine {
        /// wasmtime's message.
        reason: String,
    },
}

/// A compiled, import-checked app, ready to run any number of units.
#[derive(Clone)]
pub struct App {
    id: [u8; 32],
    pre: InstancePre<UnitState>,
    from_cache: bool,
    /// BLAKE3 of the module compiled (the rewritten one, if rewritten): the
    /// compile cache's key.
    code_id: [u8; 32],
    nan: NanCanonicalization,
    fallback_reason: Option<Arc<str>>,
}

impl App {
    /// The AppId: BLAKE3 of the wasm binary (after WAT → wasm).
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// Whether the compiled code came from the on-disk cache.
    pub fn loaded_from_cache(&self) -> bool {
        self.from_cache
    }

    /// How this app's NaNs are canonicalized.
    pub fn nan_canonicalization(&self) -> NanCanonicalization {
        self.nan
    }

    /// Why the NaN rewrite could not be used for this app, when the
    /// sandbox fell back to full canonicalization.
    pub fn nan_fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &blake3::Hash::from_bytes(self.id).to_hex().as_str())
            .field("from_cache", &self.from_cache)
            .field("nan", &self.nan)
            .finish()
    }
}

/// A successful unit run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOutcome {
    /// Everything the guest wrote to stdout: the unit's result.
    pub output: Vec<u8>,
    /// Fuel used by `_start`; identical on every host for the same (app,
    /// input, seed) and [`crate::ENGINE_VERSION`].
    pub fuel_used: u64,
    /// The first [`host::STDERR_CAP`] bytes of stderr, for diagnostics only.
    pub stderr: Vec<u8>,
    /// Running time, paused time excluded. Not comparable between hosts.
    pub wall_time: Duration,
    /// How NaNs were canonicalized (a property of the app under this
    /// [`crate::ENGINE_VERSION`], the same on every host).
    pub nan: NanCanonicalization,
}

/// The deterministic, metered wasm sandbox. `Send + Sync`: share one (e.g.
/// in an `Arc`) between worker threads; each [`Sandbox::run`] uses its own
/// store.
pub struct Sandbox {
    /// Compiles and runs apps under the tuning's canonicalization
    /// (rewritten apps, in production).
    main: EngineParts,
    /// wasmtime's full canonicalization, for apps the rewrite cannot
    /// handle; made on first need (its instance pool reserves address
    /// space).
    fallback: OnceLock<Result<EngineParts, SandboxError>>,
    allowed_imports: HashSet<String>,
    cache_dir: Option<PathBuf>,
    concurrent_units: u32,
    tuning: EngineTuning,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("tuning", &self.tuning)
            .field("pooled", &self.main.pooled)
            .field("cache_dir", &self.cache_dir)
            .field("fallback_engine", &self.fallback.get().is_some())
            .finish_non_exhaustive()
    }
}

/// One wasmtime engine with what compiling and running on it needs.
struct EngineParts {
    engine: Engine,
    linker: Linker<UnitState>,
    cache: Option<ModuleCache>,
    pooled: bool,
}

impl EngineParts {
    /// An engine with wasmtime's NaN canonicalization `full` or not, and
    /// the tuning's metering.
    fn new(
        tuning: EngineTuning,
        full_canonicalization: bool,
        concurrent_units: u32,
        cache_dir: Option<&PathBuf>,
    ) -> Result<EngineParts, SandboxError> {
        // The pool reserves its address space up front, which a host with
        // a small address space (`ulimit -v`, 39-bit arm64 kernels) may
        // refuse; units then get fresh mappings, as before the pool.
        let slots = pool_slots(concurrent_units);
        let engine_error = |e: wasmtime::Error| SandboxError::Engine {
            reason: format!("{e:#}"),
        };
        let config =
            engine_config(tuning, full_canonicalization, Some(slots)).map_err(engine_error)?;
        let (engine, pooled) = match Engine::new(&config) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::warn!(error = %e, slots, "cannot reserve the sandbox's instance pool; mapping each unit's memory on its own");
                let config =
                    engine_config(tuning, full_canonicalization, None).map_err(engine_error)?;
                (Engine::new(&config).map_err(engine_error)?, false)
            }
        };
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| SandboxError::Engine {
            reason: e.to_string(),
        })?;
        let cache = cache_dir.map(|dir| ModuleCache::new(dir.clone(), &engine));
        Ok(EngineParts {
            engine,
            linker,
            cache,
            pooled,
        })
    }
}

fn engine_config(
    tuning: EngineTuning,
    full_canonicalization: bool,
    pool_slots_wanted: Option<u32>,
) -> Result<Config, wasmtime::Error> {
    let mut config = Config::new();
    if let Some(target) = tuning.target {
        config.target(target)?;
    }
    config
        .strategy(Strategy::Cranelift)
        .cranelift_opt_level(OptLevel::Speed)
        .cranelift_nan_canonicalization(full_canonicalization)
        .consume_fuel(tuning.fuel)
        .epoch_interruption(tuning.epochs)
        .max_wasm_stack(MAX_WASM_STACK)
        .wasm_relaxed_simd(false)
        .relaxed_simd_deterministic(true)
        // `wasm_threads` only exists with wasmtime's `threads` feature, which
        // is not compiled in: shared memories are rejected at validation.
        .wasm_shared_everything_threads(false)
        .wasm_memory64(false)
        .wasm_multi_memory(false)
        // No GC heap: the workspace builds wasmtime with `gc` but no
        // collector, and units need none (funcref tables still work).
        .gc_support(false)
        .wasm_gc(false)
        .wasm_function_references(false)
        .wasm_exceptions(false)
        .wasm_stack_switching(false)
        .wasm_component_model(false);
    // Pooled instances: each unit's linear memory, tables and fiber stack
    // come from slots reserved once per engine and reused, instead of an
    // mmap and a munmap per unit. Unmapping made every short unit pay a
    // TLB shootdown across the process's threads: freeing a unit's store
    // was 6 % of the protocol-ceiling run's CPU. The pool's own limits are
    // set at or above the store limiter's, so the limiter (whose errors
    // name the limit) is what a unit meets first; only the 4 GiB memory
    // cap, wasm32's own, is the pool's.
    let Some(slots) = pool_slots_wanted else {
        return Ok(config);
    };
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots * MAX_TABLES)
        .total_stacks(slots)
        .max_memories_per_module(1)
        .max_tables_per_module(MAX_TABLES)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memory_size(4 << 30)
        // Instance metadata grows with a module's functions and globals;
        // the default 1 MiB refuses large compiled guests.
        .max_core_instance_size(16 << 20)
        // A finished unit's first MiB of memory is zeroed in place instead
        // of returned to the kernel: small units then cost no page faults
        // and no TLB shootdowns (madvise) at all.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(config)
}

fn new_state(input: &[u8], seed: &[u8; 32], limits: &SandboxLimits) -> UnitState {
    let memory_limit = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
    let wasi = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(input.to_vec()))
        // argv[0] only; no environment, no preopens, no network.
        .arg("unit")
        .wall_clock(FixedWallClock)
        .monotonic_clock(FixedMonotonicClock)
        // `random_get` is shadowed (see host.rs); these only make sure no
        // OS randomness is reachable through any other WASI path.
        .secure_random(wasmtime_wasi::Deterministic::new(seed.to_vec()))
        .insecure_random(wasmtime_wasi::Deterministic::new(seed.to_vec()))
        .insecure_random_seed(0)
        .build_p1();
    UnitState {
        wasi,
        limiter: Limiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                .table_elements(MAX_TABLE_ELEMENTS)
                .instances(1)
                .tables(4)
                .memories(1)
                .trap_on_grow_failure(true)
                .build(),
            memory_limit,
            memory_limit_hit: false,
        },
        random: host::random_stream(seed),
        stdout: Vec::new(),
        stdout_cap: limits.max_output_bytes,
        stdout_overflow: false,
        stderr: Vec::new(),
        stop: None,
    }
}

impl Sandbox {
    /// A sandbox with the production engine settings.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        Self::with_tuning(config, EngineTuning::default())
    }

    /// A sandbox with some metering or determinism switched off; for
    /// benchmarks only.
    #[doc(hidden)]
    pub fn with_tuning(
        config: SandboxConfig,
        tuning: EngineTuning,
    ) -> Result<Sandbox, SandboxError> {
        let main = EngineParts::new(
            tuning,
            tuning.nan == NanCanonicalization::Full,
            config.concurrent_units,
            config.cache_dir.as_ref(),
        )?;
        // The import allow-list is exactly what the linker defines; listing
        // it needs a store, so use a throwaway one.
        let mut scratch = Store::new(
            &main.engine,
            new_state(&[], &[0; 32], &SandboxLimits::default()),
        );
        let allowed_imports = main
            .linker
            .iter(&mut scratch)
            .filter(|(module, _, _)| *module == WASI_MODULE)
            .map(|(_, name, _)| name.to_owned())
            .collect();
        drop(scratch);
        Ok(Sandbox {
            main,
            fallback: OnceLock::new(),
            allowed_imports,
            cache_dir: config.cache_dir,
            concurrent_units: config.concurrent_units,
            tuning,
        })
    }

    /// Whether units run in the instance pool (false where the host refused
    /// its address space and each unit maps its own memory).
    pub fn is_pooled(&self) -> bool {
        self.main.pooled
    }

    /// The engine with wasmtime's full canonicalization, for apps the
    /// rewrite cannot handle.
    fn fallback(&self) -> Result<&EngineParts, CompileError> {
        self.fallback
            .get_or_init(|| {
                EngineParts::new(
                    self.tuning,
                    true,
                    self.concurrent_units,
                    self.cache_dir.as_ref(),
                )
            })
            .as_ref()
            .map_err(|e| CompileError::InvalidModule {
                reason: e.to_string(),
            })
    }

    /// Compiles an app (wasm binary, or WAT text when the bytes do not start
    /// with `\0asm`), using the cache when possible, and checks that it only
    /// imports WASI preview 1 functions.
    pub fn compile(&self, bytes: &[u8]) -> Result<App, CompileError> {
        let wasm: Cow<'_, [u8]> = if bytes.starts_with(b"\0asm") {
            Cow::Borrowed(bytes)
        } else {
            wat::parse_bytes(bytes).map_err(|e| CompileError::InvalidModule {
                reason: e.to_string(),
            })?
        };
        let id = *blake3::hash(&wasm).as_bytes();
        // What is compiled, on which engine: the rewritten module on the
        // main engine, or (fallback, or a benchmark's tuning) the original.
        let (parts, code, nan, fallback_reason) = match self.tuning.nan {
            NanCanonicalization::AtObservation => match nan_rewrite::rewrite(&wasm) {
                Ok((rewritten, stats)) => {
                    tracing::debug!(app = %blake3::Hash::from_bytes(id), ?stats, "NaN canonicalization at observation points");
                    (
                        &self.main,
                        Cow::Owned(rewritten),
                        NanCanonicalization::AtObservation,
                        None,
                    )
                }
                Err(e) => {
                    tracing::warn!(app = %blake3::Hash::from_bytes(id), error = %e, "cannot rewrite the app's NaN canonicalization; using full canonicalization (same results, slower float code)");
                    (
                        self.fallback()?,
                        wasm,
                        NanCanonicalization::Full,
                        Some(Arc::<str>::from(e.to_string())),
                    )
                }
            },
            other => (&self.main, wasm, other, None),
        };
        // The cache is keyed by what is compiled (the rewritten module when
        // there is one) and by the engine's settings.
        let key = *blake3::hash(&code).as_bytes();
        let cached = parts
            .cache
            .as_ref()
            .and_then(|cache| cache.load(&parts.engine, &key));
        let from_cache = cached.is_some();
        let module = match cached {
            Some(module) => module,
            None => Module::from_binary(&parts.engine, &code).map_err(|e| {
                CompileError::InvalidModule {
                    reason: format!("{e:#}"),
                }
            })?,
        };
        for import in module.imports() {
            if import.module() != WASI_MODULE || !self.allowed_imports.contains(import.name()) {
                return Err(CompileError::ForbiddenImport {
                    module: import.module().to_owned(),
                    name: import.name().to_owned(),
                });
            }
        }
        // Resolves every import and checks its type once, here.
        let pre =
            parts
                .linker
                .instantiate_pre(&module)
                .map_err(|e| CompileError::InvalidModule {
                    reason: format!("{e:#}"),
                })?;
        if !from_cache && let Some(cache) = &parts.cache {
            cache.store(&key, &module);
        }
        Ok(App {
            id,
            pre,
            from_cache,
            code_id: key,
            nan,
            fallback_reason,
        })
    }

    /// Where the compiled artifact of `app` is cached, if caching is on.
    pub fn cache_file(&self, app: &App) -> Option<PathBuf> {
        let parts = self.parts_of(app)?;
        parts.cache.as_ref().map(|c| c.file_for(&app.code_id))
    }

    /// Which of this sandbox's engines compiled `app`; `None` for an app
    /// of another sandbox.
    fn parts_of(&self, app: &App) -> Option<&EngineParts> {
        let engine = app.pre.module().engine();
        if Engine::same(engine, &self.main.engine) {
            return Some(&self.main);
        }
        self.fallback
            .get()
            .and_then(|f| f.as_ref().ok())
            .filter(|f| Engine::same(engine, &f.engine))
    }

    /// Runs one unit: `app`'s `_start` with `input` on stdin and the random
    /// stream seeded by `seed`, under `limits`. `control`, if given, can
    /// pause, resume or cancel it from another thread and shows progress.
    pub fn run(
        &self,
        app: &App,
        input: &[u8],
        seed: [u8; 32],
        limits: &SandboxLimits,
        control: Option<&UnitControl>,
    ) -> Result<UnitOutcome, UnitError> {
        self.run_with_stderr(app, input, seed, limits, control).0
    }

    /// Like [`Sandbox::run`], and also returns the guest's (bounded) stderr
    /// whatever the outcome, for diagnosing failed units. On success it is
    /// the same as [`UnitOutcome::stderr`].
    pub fn run_with_stderr(
        &self,
        app: &App,
        input: &[u8],
        seed: [u8; 32],
        limits: &SandboxLimits,
        control: Option<&UnitControl>,
    ) -> (Result<UnitOutcome, UnitError>, Vec<u8>) {
        // An app compiled by another sandbox belongs to another engine;
        // wasmtime would panic on instantiating it here.
        let Some(parts) = self.parts_of(app) else {
            let reason = "app was compiled by a different Sandbox".to_owned();
            return (Err(UnitError::InvalidModule { reason }), Vec::new());
        };
        let mut store = Store::new(&parts.engine, new_state(input, &seed, limits));
        store.limiter(|state| &mut state.limiter);
        let result = self.run_in(&mut store, app, limits, control);
        let stderr = match &result {
            Ok(outcome) => outcome.stderr.clone(),
            Err(_) => std::mem::take(&mut store.data_mut().stderr),
        };
        (result, stderr)
    }

    fn run_in(
        &self,
        store: &mut Store<UnitState>,
        app: &App,
        limits: &SandboxLimits,
        control: Option<&UnitControl>,
    ) -> Result<UnitOutcome, UnitError> {
        let budget = limits.fuel;
        let fuel_on = self.tuning.fuel;
        // The wall clock starts now: instantiation counts toward the limit.
        let watch = Arc::new(Watch::new(control.cloned(), limits.wall_clock));
        {
            // Fuel bounds the guest's own code, not the time spent inside a
            // single host call (a `random_get` of the whole memory costs one
            // call), so check again whenever a host call returns. The exact
            // fuel figure is readable here, unlike at a fuel yield.
            let watch = Arc::clone(&watch);
            store.call_hook(move |mut ctx, hook| {
                if !matches!(hook, CallHook::ReturningFromHost) {
                    return Ok(());
                }
                if fuel_on
                    && watch.counting()
                    && let Ok(left) = ctx.get_fuel()
                {
                    watch.report_progress(budget.saturating_sub(left));
                }
                watch.check().map_err(|reason| {
                    ctx.data_mut().stop = Some(reason);
                    wasmtime::Error::new(HostStop(reason.message()))
                })
            });
        }
        if fuel_on {
            store
                .fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL))
                .map_err(|e| UnitError::InvalidModule {
                    reason: format!("cannot set the fuel yield interval: {e}"),
                })?;
            // Instantiation (a `start` function, data segments) is bounded by
            // the same budget but not counted; `_start` gets a fresh budget.
            self.set_fuel(store, budget)?;
        }
        if self.tuning.epochs {
            // Measurement only: the checks run, the deadline is never met
            // (nothing increments the epoch).
            store.set_epoch_deadline(u64::MAX / 2);
        }
        let instance = block_on(app.pre.instantiate_async(&mut *store), &watch, None)
            .map_err(|reason| stop_error(reason, limits))?
            .map_err(|e| classify(e, store.data(), limits, Phase::Instantiate))?;
        let start = instance
            .get_func(&mut *store, "_start")
            .ok_or_else(|| UnitError::MissingExport {
                name: "_start".to_owned(),
            })?
            .typed::<(), ()>(&*store)
            .map_err(|e| UnitError::InvalidModule {
                reason: format!("_start has the wrong type: {e}"),
            })?;
        if fuel_on {
            self.set_fuel(store, budget)?;
        }
        watch.start_counting();
        let paused_before = watch.paused();
        let run_started = Instant::now();
        let progress_per_yield = fuel_on.then_some(FUEL_YIELD_INTERVAL);
        let result = block_on(
            start.call_async(&mut *store, ()),
            &watch,
            progress_per_yield,
        );
        let run_time = run_started.elapsed();
        let fuel_used = if fuel_on {
            budget.saturating_sub(store.get_fuel().unwrap_or(0))
        } else {
            0
        };
        if let Some(control) = control {
            control.set_fuel_used(fuel_used);
        }
        let result = result.map_err(|reason| stop_error(reason, limits))?;
        if let Err(e) = result {
            let exited_ok = e
                .downcast_ref::<wasmtime_wasi::I32Exit>()
                .is_some_and(|exit| exit.0 == 0);
            if !exited_ok {
                return Err(classify(e, store.data(), limits, Phase::Run));
            }
        }
        let paused = watch.paused().saturating_sub(paused_before);
        let state = store.data_mut();
        Ok(UnitOutcome {
            output: std::mem::take(&mut state.stdout),
            fuel_used,
            stderr: std::mem::take(&mut state.stderr),
            wall_time: run_time.saturating_sub(paused),
            nan: app.nan,
        })
    }

    fn set_fuel(&self, store: &mut Store<UnitState>, fuel: u64) -> Result<(), UnitError> {
        store.set_fuel(fuel).map_err(|e| UnitError::InvalidModule {
            reason: format!("cannot set fuel: {e}"),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Instantiate,
    Run,
}

/// The unit error for a unit the host stopped.
fn stop_error(reason: StopReason, limits: &SandboxLimits) -> UnitError {
    match reason {
        StopReason::Timeout => UnitError::Timeout {
            limit: limits.wall_clock,
        },
        StopReason::Cancelled => UnitError::Cancelled,
    }
}

/// Turns a wasmtime error into the unit error naming its cause. Host-side
/// records (why the call hook stopped the unit, which limit the limiter or
/// the stdout writer hit) take precedence over the trap they caused.
fn classify(
    e: wasmtime::Error,
    state: &UnitState,
    limits: &SandboxLimits,
    phase: Phase,
) -> UnitError {
    if let Some(reason) = state.stop {
        return stop_error(reason, limits);
    }
    if let Some(full) = e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return UnitError::HostBusy {
            reason: full.to_string(),
        };
    }
    if state.stdout_overflow {
        return UnitError::OutputTooLarge {
            limit: limits.max_output_bytes,
        };
    }
    if state.limiter.memory_limit_hit {
        return UnitError::MemoryLimit {
            limit: limits.memory_bytes,
        };
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return UnitError::Exit { code: exit.0 };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => UnitError::FuelExhausted {
            budget: limits.fuel,
        },
        Some(trap) => UnitError::Trap {
            message: trap.to_string(),
        },
        None if phase == Phase::Instantiate => UnitError::InvalidModule {
            reason: format!("{e:#}"),
        },
        None => UnitError::Trap {
            message: format!("{e:#}"),
        },
    }
}
