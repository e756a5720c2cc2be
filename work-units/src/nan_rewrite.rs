//! NaN canonicalization where a NaN's bits can be observed: a rewrite of the
//! guest module at compile time.
//!
//! Why: a float operation that yields NaN leaves its payload and sign to the
//! CPU (x86 gives `0xffc00000` for `0/0`, Arm `0x7fc00000`). wasmtime's
//! `cranelift_nan_canonicalization` makes results deterministic by putting a
//! compare-and-select after *every* float arithmetic instruction, which made
//! float kernels ~5× slower than native. But a NaN's bits only matter where
//! the guest can see them; no arithmetic or comparison result depends on
//! them. This pass canonicalizes only there, and the module is then compiled
//! with wasmtime's canonicalization off.
//!
//! # What the rewrite guarantees
//!
//! Every observable behaviour (memory, stdout, exit status, traps, fuel of
//! the *rewritten* module) is bit-identical to running the original module
//! under wasmtime's full canonicalization, on every host. The reference
//! semantics ("full") canonicalize the result of exactly the operations
//! Cranelift's pass does: scalar and vector `add sub mul div min max sqrt
//! ceil floor trunc nearest`, `demote` and `promote`. Nothing else (loads,
//! constants, `neg`, `abs`, `copysign`, `reinterpret`) changes bits.
//!
//! # How
//!
//! Each scalar float value is tracked with a [`Taint`]:
//! * `Canon`: its bits are right under both readings (not a NaN, or exactly
//!   the canonical NaN), e.g. a constant or an integer conversion;
//! * `Dirty`: the result of an arithmetic operation, not yet canonicalized:
//!   its true value is `canon(bits)`;
//! * `Exact`: its bits are the true value and must not be canonicalized
//!   (a load, a parameter, a `neg`; a NaN here may carry any payload, put
//!   there by the guest).
//!
//! A `Dirty` value is canonicalized (a `select` between it and the
//! canonical NaN) only where its bits would escape: before a store,
//! `reinterpret`, `neg`/`abs`/`copysign`, a lane `splat`/`replace`, a
//! `global.set`, a call argument, a function or block result, and where two
//! control-flow paths meet with `Dirty` on one and `Exact` on the other. The
//! last needs a per-function dataflow fixpoint over locals (structured
//! control flow: blocks join at their end, loops at their header).
//!
//! Vector (`v128`) float arithmetic is canonicalized eagerly after each
//! operation, exactly as wasmtime does: a `v128` is reinterpreted freely by
//! integer lane operations, and tracking it lane by lane is not worth it for
//! the guests this serves (clang and rustc emit SIMD only when asked).
//!
//! Inserted instructions are ordinary wasm, so they consume fuel (one unit
//! each, as any instruction); the rewrite is deterministic, so the fuel
//! figure is the same on every host running the same engine version.
//!
//! Anything the pass does not model (an operator it cannot type, a dirty
//! value reaching an operator it has no rule for, a fixpoint that does not
//! settle) is an [`RewriteError`]: the caller then compiles the original
//! module with wasmtime's full canonicalization instead.

use std::collections::HashMap;

use thiserror::Error;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{Function, Instruction};
use wasmparser::{
    BlockType, FuncToValidate, FuncValidator, FuncValidatorAllocations, ModuleArity, Operator,
    Parser, ValType, Validator, ValidatorResources, WasmFeatures, WasmModuleResources,
};

/// Canonical NaN bit patterns (positive, quiet, zero payload): the ones
/// Cranelift's own pass uses.
pub(crate) const CANON_F32: u32 = 0x7fc0_0000;
pub(crate) const CANON_F64: u64 = 0x7ff8_0000_0000_0000;

/// Passes over one function before its fixpoint must have settled. Each
/// pass can only raise a label's state (three levels per float local), so
/// real code settles in two or three.
const MAX_PASSES: usize = 16;

/// Bound on label-state work per pass (float locals × branches): beyond it
/// the module falls back rather than make compilation quadratic.
const MAX_LABEL_WORK: u64 = 1 << 26;

/// Why a module could not be rewritten (it then runs with wasmtime's full
/// canonicalization).
#[derive(Debug, Error)]
pub enum RewriteError {
    /// The module does not parse or validate with the sandbox's features
    /// (wasmtime then reports its own error for it).
    #[error("not a valid module for the sandbox's feature set: {0}")]
    Invalid(#[from] wasmparser::BinaryReaderError),
    /// Function `func` uses something the rewrite has no rule for.
    #[error("function {func}: {what}")]
    Unsupported {
        /// Index of the function in the module's function space.
        func: u32,
        /// What was not modelled.
        what: String,
    },
    /// Function `func`'s dataflow did not settle.
    #[error("function {func}: the float dataflow did not settle in {MAX_PASSES} passes")]
    NoFixpoint {
        /// Index of the function in the module's function space.
        func: u32,
    },
    /// wasm-encoder could not re-encode a section.
    #[error("cannot re-encode the module: {0}")]
    Encode(String),
    /// The rewrite produced an invalid module (a bug in the rewrite; the
    /// original then runs under full canonicalization).
    #[error("the rewritten module does not validate: {0}")]
    OutputInvalid(wasmparser::BinaryReaderError),
}

/// The wasm features the sandbox's engine enables (see `sandbox.rs`). A
/// module that uses anything else is rejected here, falls back, and is then
/// rejected by wasmtime with its own error.
pub(crate) fn features() -> WasmFeatures {
    WasmFeatures::WASM2 | WasmFeatures::TAIL_CALL | WasmFeatures::EXTENDED_CONST
}

/// What the rewrite did, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewriteStats {
    /// Functions rewritten.
    pub functions: u32,
    /// Canonicalizations inserted (scalar, at observation points).
    pub scalar_canons: u32,
    /// Locals canonicalized where control-flow paths meet.
    pub join_canons: u32,
    /// Vector float operations canonicalized eagerly.
    pub vector_canons: u32,
}

/// Rewrites `wasm` so that NaNs are canonicalized only where observable.
pub fn rewrite(wasm: &[u8]) -> Result<(Vec<u8>, RewriteStats), RewriteError> {
    // Validate the module's sections first, collecting each function's
    // validator in code-section order: the rewrite feeds it the function's
    // operators, which validates the body and types the operand stack.
    let mut validator = Validator::new_with_features(features());
    let mut funcs = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let wasmparser::ValidPayload::Func(func, _) = validator.payload(&payload?)? {
            funcs.push(func);
        }
    }
    let mut rewriter = ModuleRewriter {
        funcs: funcs.into_iter(),
        stats: RewriteStats::default(),
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| match e {
            wasm_encoder::reencode::Error::UserError(e) => e,
            other => RewriteError::Encode(other.to_string()),
        })?;
    let out = module.finish();
    Validator::new_with_features(features())
        .validate_all(&out)
        .map_err(RewriteError::OutputInvalid)?;
    Ok((out, rewriter.stats))
}

struct ModuleRewriter {
    funcs: std::vec::IntoIter<FuncToValidate<ValidatorResources>>,
    stats: RewriteStats,
}

impl Reencode for ModuleRewriter {
    type Error = RewriteError;

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        body: wasmparser::FunctionBody<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<RewriteError>> {
        let user = wasm_encoder::reencode::Error::UserError;
        let func = self.funcs.next().ok_or_else(|| {
            user(RewriteError::Encode(
                "more function bodies than functions".into(),
            ))
        })?;
        let index = func.index;
        let mut base = func.into_validator(FuncValidatorAllocations::default());
        let mut locals_reader = body.get_locals_reader()?;
        let mut declared = Vec::new();
        for _ in 0..locals_reader.get_count() {
            let offset = locals_reader.original_position();
            let (count, ty) = locals_reader.read()?;
            base.define_locals(offset, count, ty)
                .map_err(|e| user(e.into()))?;
            declared.push((count, ty));
        }
        let function =
            rewrite_function(index, &base, &body, &declared, &mut self.stats).map_err(user)?;
        code.function(&function);
        self.stats.functions += 1;
        Ok(())
    }
}

/// A scalar value's canonicalization state (see the module docs). Ordered:
/// a join takes the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Taint {
    Canon,
    Dirty,
    Exact,
}

/// The float type of a scalar that may need canonicalizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Float {
    F32,
    F64,
}

impl Float {
    fn of(ty: ValType) -> Option<Float> {
        match ty {
            ValType::F32 => Some(Float::F32),
            ValType::F64 => Some(Float::F64),
            _ => None,
        }
    }

    fn val_type(self) -> ValType {
        match self {
            Float::F32 => ValType::F32,
            Float::F64 => ValType::F64,
        }
    }

    /// Pushes the canonical NaN of this type.
    fn canonical_nan(self) -> Instruction<'static> {
        match self {
            Float::F32 => Instruction::F32Const(f32::from_bits(CANON_F32).into()),
            Float::F64 => Instruction::F64Const(f64::from_bits(CANON_F64).into()),
        }
    }

    /// `x == x`: false exactly for NaNs.
    fn eq(self) -> Instruction<'static> {
        match self {
            Float::F32 => Instruction::F32Eq,
            Float::F64 => Instruction::F64Eq,
        }
    }
}

/// One operand stack slot as the rewrite sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    taint: Taint,
    /// Set for f32/f64 slots (the only ones that can be `Dirty`).
    float: Option<Float>,
}

const EXACT: Slot = Slot {
    taint: Taint::Exact,
    float: None,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Function,
    Block,
    Loop,
    If,
}

#[derive(Debug)]
struct Frame {
    kind: Kind,
    /// Index of this frame's label in the per-pass label tables.
    label: usize,
    /// Operand stack height below which this frame cannot reach.
    height: usize,
    params: usize,
    results: usize,
    /// The rest of this frame is unreachable (after `br`, `return`, …).
    unreachable: bool,
    /// Opened inside unreachable code: nothing in it ever runs, so it is
    /// copied as is and not tracked.
    dead: bool,
    /// For `if`: the locals' state on entry (the implicit `else` path).
    entry: Option<Vec<Taint>>,
    has_else: bool,
}

/// Scratch locals appended after the function's own, by role.
#[derive(Debug, Default)]
struct Scratch {
    base: u32,
    types: Vec<wasm_encoder::ValType>,
    index: HashMap<(ValType, u32), u32>,
}

impl Scratch {
    /// The scratch local of `ty` for `role` (0: the one `canon_top` tees
    /// into; n + 1: the n-th spill slot of that type).
    fn get(&mut self, ty: ValType, role: u32) -> Result<u32, String> {
        if let Some(&i) = self.index.get(&(ty, role)) {
            return Ok(i);
        }
        let encoded = RoundtripReencoder
            .val_type(ty)
            .map_err(|e| format!("scratch local of type {ty}: {e}"))?;
        let i = self.base + self.types.len() as u32;
        self.types.push(encoded);
        self.index.insert((ty, role), i);
        Ok(i)
    }
}

/// Rewrites one function body: passes until the label states settle, then
/// the last pass's output is the function.
fn rewrite_function(
    func: u32,
    base: &FuncValidator<ValidatorResources>,
    body: &wasmparser::FunctionBody<'_>,
    declared: &[(u32, ValType)],
    stats: &mut RewriteStats,
) -> Result<Function, RewriteError> {
    let unsupported = |what: String| RewriteError::Unsupported { func, what };
    let resources = base.resources();
    let ty = resources
        .type_index_of_function(func)
        .and_then(|t| resources.sub_type_at(t))
        .and_then(|t| match &t.composite_type.inner {
            wasmparser::CompositeInnerType::Func(f) => Some(f),
            _ => None,
        })
        .ok_or_else(|| unsupported("no function type".into()))?
        .clone();
    let mut local_types: Vec<ValType> = ty.params().to_vec();
    for (count, t) in declared {
        for _ in 0..*count {
            local_types.push(*t);
        }
    }
    let mut labels: Vec<Option<Vec<Taint>>> = Vec::new();
    for _ in 0..MAX_PASSES {
        let mut pass = Pass::new(func, base.clone(), &local_types, ty.params().len(), &labels);
        pass.scratch.base =
            u32::try_from(local_types.len()).map_err(|_| unsupported("too many locals".into()))?;
        pass.run(body, ty.results().len())?;
        if pass.new_labels == labels {
            let mut locals: Vec<(u32, wasm_encoder::ValType)> = Vec::new();
            for (count, t) in declared {
                let t = RoundtripReencoder
                    .val_type(*t)
                    .map_err(|e| unsupported(e.to_string()))?;
                locals.push((*count, t));
            }
            locals.extend(pass.scratch.types.iter().map(|t| (1, *t)));
            let mut f = Function::new(locals);
            for ins in &pass.out {
                f.instruction(ins);
            }
            stats.scalar_canons += pass.stats.scalar_canons;
            stats.join_canons += pass.stats.join_canons;
            stats.vector_canons += pass.stats.vector_canons;
            return Ok(f);
        }
        labels = pass.new_labels;
    }
    Err(RewriteError::NoFixpoint { func })
}

/// One walk over a function body.
struct Pass<'l, 'a> {
    func: u32,
    val: FuncValidator<ValidatorResources>,
    /// For each local: its float type and its slot in `locals`, `None` for
    /// the others (only floats can be dirty, so label states hold floats).
    local_float: Vec<Option<(Float, usize)>>,
    /// Which local each slot of `locals` is.
    float_locals: Vec<u32>,
    /// Taint of each float local, by slot.
    locals: Vec<Taint>,
    /// Work done on label states (entries joined or scanned), bounded so a
    /// hostile module cannot make compilation quadratic.
    work: u64,
    stack: Vec<Slot>,
    frames: Vec<Frame>,
    /// Label states the previous pass computed (fix decisions use them).
    old_labels: &'l [Option<Vec<Taint>>],
    /// Label states this pass computes: the join of every edge into it.
    new_labels: Vec<Option<Vec<Taint>>>,
    scratch: Scratch,
    out: Vec<Instruction<'a>>,
    stats: RewriteStats,
}

impl<'l, 'a> Pass<'l, 'a> {
    fn new(
        func: u32,
        val: FuncValidator<ValidatorResources>,
        local_types: &[ValType],
        params: usize,
        old_labels: &'l [Option<Vec<Taint>>],
    ) -> Self {
        let mut local_float = Vec::with_capacity(local_types.len());
        let mut float_locals = Vec::new();
        let mut locals = Vec::new();
        for (i, t) in local_types.iter().enumerate() {
            match Float::of(*t) {
                Some(f) => {
                    local_float.push(Some((f, float_locals.len())));
                    float_locals.push(i as u32);
                    // Parameters come from callers, which canonicalize dirty
                    // arguments: exact. Declared locals start at zero.
                    locals.push(if i < params {
                        Taint::Exact
                    } else {
                        Taint::Canon
                    });
                }
                None => local_float.push(None),
            }
        }
        Pass {
            func,
            val,
            local_float,
            float_locals,
            locals,
            work: 0,
            stack: Vec::new(),
            frames: Vec::new(),
            old_labels,
            new_labels: Vec::new(),
            scratch: Scratch::default(),
            out: Vec::new(),
            stats: RewriteStats::default(),
        }
    }

    fn unsupported(&self, what: impl Into<String>) -> RewriteError {
        RewriteError::Unsupported {
            func: self.func,
            what: what.into(),
        }
    }

    fn run(
        &mut self,
        body: &wasmparser::FunctionBody<'a>,
        results: usize,
    ) -> Result<(), RewriteError> {
        let label = self.new_label();
        self.frames.push(Frame {
            kind: Kind::Function,
            label,
            height: 0,
            params: 0,
            results,
            unreachable: false,
            dead: false,
            entry: None,
            has_else: false,
        });
        let mut reader = body.get_operators_reader()?;
        while !reader.eof() {
            let offset = reader.original_position();
            let op = reader.read()?;
            self.step(offset, op)?;
        }
        reader.finish()?;
        Ok(())
    }

    fn new_label(&mut self) -> usize {
        self.new_labels.push(None);
        self.new_labels.len() - 1
    }

    fn live(&self) -> bool {
        self.frames
            .last()
            .is_some_and(|f| !f.unreachable && !f.dead)
    }

    fn emit(&mut self, ins: Instruction<'a>) {
        self.out.push(ins);
    }

    fn emit_op(&mut self, op: &Operator<'a>) -> Result<(), RewriteError> {
        let ins = RoundtripReencoder
            .instruction(op.clone())
            .map_err(|e| self.unsupported(format!("cannot re-encode {op:?}: {e}")))?;
        self.out.push(ins);
        Ok(())
    }

    fn pop(&mut self, n: usize) -> Result<Vec<Slot>, RewriteError> {
        let floor = self.frames.last().map_or(0, |f| f.height);
        if self.stack.len() < floor + n {
            return Err(self.unsupported("operand stack underflow in the rewrite's model"));
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    /// The type of the operand `depth` slots below the top, before the
    /// current operator.
    fn operand_type(&self, depth: usize) -> Result<ValType, RewriteError> {
        match self.val.get_operand_type(depth) {
            Some(Some(t)) => Ok(t),
            _ => Err(self.unsupported(format!("untyped operand at depth {depth}"))),
        }
    }

    /// Canonicalizes the value on top of the stack (its type is `float`).
    fn canon_top(&mut self, float: Float) -> Result<(), RewriteError> {
        let t = self
            .scratch
            .get(float.val_type(), 0)
            .map_err(|e| self.unsupported(e))?;
        // [x] -> [x, canon, x == x] -> select: x unless it is a NaN.
        self.emit(Instruction::LocalTee(t));
        self.emit(float.canonical_nan());
        self.emit(Instruction::LocalGet(t));
        self.emit(Instruction::LocalGet(t));
        self.emit(float.eq());
        self.emit(Instruction::Select);
        Ok(())
    }

    /// Canonicalizes every dirty slot among the top `k` (depth 0 = top), in
    /// place; they become `Canon`. Deeper slots are reached by spilling the
    /// ones above into scratch locals and pushing them back.
    fn canon_top_k(&mut self, k: usize) -> Result<(), RewriteError> {
        let len = self.stack.len();
        if k > len {
            return Err(self.unsupported("operand stack underflow in the rewrite's model"));
        }
        let dirty: Vec<bool> = (0..k)
            .map(|d| self.stack[len - 1 - d].taint == Taint::Dirty)
            .collect();
        let Some(deepest) = dirty.iter().rposition(|d| *d) else {
            return Ok(());
        };
        if deepest == 0 {
            let float = self.stack[len - 1]
                .float
                .ok_or_else(|| self.unsupported("dirty non-float slot"))?;
            self.canon_top(float)?;
            self.stack[len - 1].taint = Taint::Canon;
            self.stats.scalar_canons += 1;
            return Ok(());
        }
        // Spill slots 0..=deepest (top first), then push them back in order,
        // canonicalizing the dirty ones.
        let mut spilled = Vec::with_capacity(deepest + 1);
        let mut per_type: HashMap<ValType, u32> = HashMap::new();
        for d in 0..=deepest {
            let ty = self.operand_type(d)?;
            let n = per_type.entry(ty).or_insert(0);
            *n += 1;
            let local = self.scratch.get(ty, *n).map_err(|e| self.unsupported(e))?;
            self.emit(Instruction::LocalSet(local));
            spilled.push(local);
        }
        for d in (0..=deepest).rev() {
            self.emit(Instruction::LocalGet(spilled[d]));
            if dirty[d] {
                let slot = &self.stack[len - 1 - d];
                let float = slot
                    .float
                    .ok_or_else(|| self.unsupported("dirty non-float slot"))?;
                self.canon_top(float)?;
                self.stack[len - 1 - d].taint = Taint::Canon;
                self.stats.scalar_canons += 1;
            }
        }
        Ok(())
    }

    /// Canonicalizes the float local in `slot` in place (no scratch needed).
    fn canon_local(&mut self, slot: usize) -> Result<(), RewriteError> {
        let idx = self.float_locals[slot];
        let Some(Some((float, _))) = self.local_float.get(idx as usize).copied() else {
            return Err(self.unsupported("dirty non-float local"));
        };
        // Like `canon_top`, reading the local instead of a scratch copy.
        self.emit(Instruction::LocalGet(idx));
        self.emit(float.canonical_nan());
        self.emit(Instruction::LocalGet(idx));
        self.emit(Instruction::LocalGet(idx));
        self.emit(float.eq());
        self.emit(Instruction::Select);
        self.emit(Instruction::LocalSet(idx));
        self.locals[slot] = Taint::Canon;
        self.stats.join_canons += 1;
        Ok(())
    }

    /// The edge from here to `label`: canonicalizes the locals that are
    /// dirty here but exact at the label (the previous pass's view), then
    /// joins this state into the label.
    fn edge_to(&mut self, label: usize) -> Result<(), RewriteError> {
        self.work += 2 * self.locals.len() as u64 + 1;
        if self.work > MAX_LABEL_WORK {
            return Err(self.unsupported(
                "too many float locals times branches to track (the module is too large for the rewrite)",
            ));
        }
        for i in self.fixes_for(label) {
            self.canon_local(i)?;
        }
        let state = self.locals.clone();
        let slot = &mut self.new_labels[label];
        match slot {
            None => *slot = Some(state),
            Some(joined) => {
                for (j, s) in joined.iter_mut().zip(state) {
                    *j = (*j).max(s);
                }
            }
        }
        Ok(())
    }

    /// The float locals (by slot) that are dirty here but exact at `label`
    /// in the previous pass's view: an edge there must canonicalize them.
    fn fixes_for(&self, label: usize) -> Vec<usize> {
        match self.old_labels.get(label) {
            Some(Some(at_label)) => (0..self.locals.len())
                .filter(|&i| self.locals[i] == Taint::Dirty && at_label[i] == Taint::Exact)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The number of values a branch to `depth` carries, and the label.
    fn branch_target(&self, depth: u32) -> Result<(usize, usize, Kind), RewriteError> {
        let i = self
            .frames
            .len()
            .checked_sub(1 + depth as usize)
            .ok_or_else(|| self.unsupported("branch depth out of range"))?;
        let f = &self.frames[i];
        let n = if f.kind == Kind::Loop {
            f.params
        } else {
            f.results
        };
        Ok((n, f.label, f.kind))
    }

    fn set_unreachable(&mut self) {
        if let Some(f) = self.frames.last_mut() {
            f.unreachable = true;
            let h = f.height;
            self.stack.truncate(h);
        }
    }

    fn block_arity(&self, blockty: BlockType) -> Result<(usize, usize), RewriteError> {
        let (p, r) = self
            .val
            .block_type_arity(blockty)
            .ok_or_else(|| self.unsupported("block type"))?;
        Ok((p as usize, r as usize))
    }

    fn step(&mut self, offset: u64, op: Operator<'a>) -> Result<(), RewriteError> {
        if !self.live() {
            return self.step_unreachable(offset, op);
        }
        // Arity and operand types come from the validator before it sees
        // the operator; the rewrite's inserted code is never fed to it (it
        // is stack-neutral by construction, and the whole output is
        // validated at the end).
        let arity = op.operator_arity(&self.val);
        match &op {
            Operator::Block { blockty } | Operator::Loop { blockty } | Operator::If { blockty } => {
                let (params, results) = self.block_arity(*blockty)?;
                let is_if = matches!(op, Operator::If { .. });
                let cond = usize::from(is_if);
                // Block parameters: canonicalize dirty ones (the condition of
                // an `if` sits above them) and treat them as exact inside.
                self.canon_top_k(params + cond)?;
                if is_if {
                    self.pop(1)?;
                }
                let h = self.stack.len() - params;
                for s in &mut self.stack[h..] {
                    s.taint = Taint::Exact;
                }
                let label = self.new_label();
                let kind = match op {
                    Operator::Block { .. } => Kind::Block,
                    Operator::Loop { .. } => Kind::Loop,
                    _ => Kind::If,
                };
                if kind == Kind::Loop {
                    // The entry edge joins the header; inside, the state is
                    // the header's (from the previous pass, once known).
                    self.edge_to(label)?;
                    if let Some(Some(header)) = self.old_labels.get(label) {
                        self.locals = header.clone();
                    }
                }
                let entry = (kind == Kind::If).then(|| self.locals.clone());
                self.emit_op(&op)?;
                self.frames.push(Frame {
                    kind,
                    label,
                    height: h,
                    params,
                    results,
                    unreachable: false,
                    dead: false,
                    entry,
                    has_else: false,
                });
            }
            Operator::Else => {
                let (results, label, entry) = {
                    let f = self.frames.last().ok_or_else(|| self.unsupported("else"))?;
                    (f.results, f.label, f.entry.clone())
                };
                self.canon_top_k(results)?;
                self.edge_to(label)?;
                self.emit_op(&op)?;
                let Some(f) = self.frames.last_mut() else {
                    return Err(self.unsupported("else"));
                };
                f.has_else = true;
                f.unreachable = false;
                let (h, params) = (f.height, f.params);
                self.stack.truncate(h);
                self.stack.extend(std::iter::repeat_n(EXACT, params));
                if let Some(entry) = entry {
                    self.locals = entry;
                }
            }
            Operator::End => {
                let (kind, results, label) = {
                    let f = self.frames.last().ok_or_else(|| self.unsupported("end"))?;
                    (f.kind, f.results, f.label)
                };
                self.canon_top_k(results)?;
                if matches!(kind, Kind::Block | Kind::If) {
                    self.edge_to(label)?;
                }
                self.close_frame(op.clone())?;
            }
            Operator::Br { relative_depth } => {
                let (n, label, kind) = self.branch_target(*relative_depth)?;
                self.canon_top_k(n)?;
                if kind != Kind::Function {
                    self.edge_to(label)?;
                }
                self.emit_op(&op)?;
                self.set_unreachable();
            }
            Operator::BrIf { relative_depth } => {
                let (n, label, kind) = self.branch_target(*relative_depth)?;
                // The condition is on top; the branch's values below it.
                self.canon_top_k(n + 1)?;
                if kind != Kind::Function {
                    self.edge_to(label)?;
                }
                self.emit_op(&op)?;
                self.pop(1)?;
            }
            Operator::BrTable { targets } => {
                let (n, _, _) = self.branch_target(targets.default())?;
                self.canon_top_k(n + 1)?;
                let mut depths = vec![targets.default()];
                for t in targets.targets() {
                    depths.push(t?);
                }
                for d in depths {
                    let (_, label, kind) = self.branch_target(d)?;
                    if kind != Kind::Function {
                        self.edge_to(label)?;
                    }
                }
                self.emit_op(&op)?;
                self.set_unreachable();
            }
            Operator::Return => {
                let results = self.frames.first().map_or(0, |f| f.results);
                self.canon_top_k(results)?;
                self.emit_op(&op)?;
                self.set_unreachable();
            }
            Operator::Unreachable => {
                self.emit_op(&op)?;
                self.set_unreachable();
            }
            Operator::ReturnCall { .. } | Operator::ReturnCallIndirect { .. } => {
                let (args, _) = arity.ok_or_else(|| self.unsupported("call arity"))?;
                self.canon_top_k(args as usize)?;
                self.emit_op(&op)?;
                self.set_unreachable();
            }
            Operator::Call { .. } | Operator::CallIndirect { .. } => {
                let (args, results) = arity.ok_or_else(|| self.unsupported("call arity"))?;
                // Arguments (and, for call_indirect, the table index above
                // them, which is never dirty) leave this function exactly.
                self.canon_top_k(args as usize)?;
                self.emit_op(&op)?;
                self.pop(args as usize)?;
                self.push_exact(results as usize);
            }
            Operator::LocalGet { local_index } => {
                let i = *local_index as usize;
                let slot = Slot {
                    taint: self.local_taint(i),
                    float: self.local_float.get(i).copied().flatten().map(|(f, _)| f),
                };
                self.emit_op(&op)?;
                self.stack.push(slot);
            }
            Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                let i = *local_index as usize;
                let slot = *self
                    .stack
                    .last()
                    .ok_or_else(|| self.unsupported("local.set on an empty stack"))?;
                if let Some(Some((_, s))) = self.local_float.get(i) {
                    self.locals[*s] = slot.taint;
                }
                self.emit_op(&op)?;
                if matches!(op, Operator::LocalSet { .. }) {
                    self.pop(1)?;
                }
            }
            Operator::Select | Operator::TypedSelect { .. } => {
                // [a, b, cond]: the result is a or b, so if one is dirty
                // and the other exact, the dirty one is canonicalized first.
                let len = self.stack.len();
                if len < 3 {
                    return Err(self.unsupported("select on a short stack"));
                }
                let (a, b) = (self.stack[len - 3], self.stack[len - 2]);
                let joined = a.taint.max(b.taint);
                if joined == Taint::Exact && (a.taint == Taint::Dirty || b.taint == Taint::Dirty) {
                    self.canon_top_k(3)?;
                }
                let (a, b) = (self.stack[len - 3], self.stack[len - 2]);
                let out = Slot {
                    taint: a.taint.max(b.taint),
                    float: a.float.or(b.float),
                };
                self.emit_op(&op)?;
                self.pop(3)?;
                self.stack.push(out);
            }
            Operator::F32Const { value } => {
                let bits = value.bits();
                let other_nan = f32::from_bits(bits).is_nan() && bits != CANON_F32;
                self.push_const(&op, Float::F32, other_nan)?;
            }
            Operator::F64Const { value } => {
                let bits = value.bits();
                let other_nan = f64::from_bits(bits).is_nan() && bits != CANON_F64;
                self.push_const(&op, Float::F64, other_nan)?;
            }
            Operator::F32Abs | Operator::F64Abs => {
                // |canonical NaN| is the canonical NaN: abs keeps `Canon`.
                self.canon_top_k(1)?;
                let t = self.pop(1)?[0];
                self.emit_op(&op)?;
                self.stack.push(t);
            }
            _ => self.step_plain(&op, arity)?,
        }
        self.val.op(offset, &op)?;
        if self.live() && self.stack.len() != self.val.operand_stack_height() as usize {
            return Err(self.unsupported(format!(
                "operand stack model out of step after {op:?} ({} vs {})",
                self.stack.len(),
                self.val.operand_stack_height()
            )));
        }
        Ok(())
    }

    /// A float constant: canonical unless it is a NaN other than the
    /// canonical one, whose bits the guest chose.
    fn push_const(
        &mut self,
        op: &Operator<'a>,
        float: Float,
        other_nan: bool,
    ) -> Result<(), RewriteError> {
        self.emit_op(op)?;
        let taint = if other_nan {
            Taint::Exact
        } else {
            Taint::Canon
        };
        self.stack.push(float_slot(taint, float));
        Ok(())
    }

    fn local_taint(&self, i: usize) -> Taint {
        match self.local_float.get(i) {
            Some(Some((_, slot))) => self.locals[*slot],
            _ => Taint::Exact,
        }
    }

    fn push_exact(&mut self, n: usize) {
        self.stack.extend(std::iter::repeat_n(EXACT, n));
    }

    /// Operators with a fixed arity and no control flow.
    fn step_plain(
        &mut self,
        op: &Operator<'a>,
        arity: Option<(u32, u32)>,
    ) -> Result<(), RewriteError> {
        let (pops, pushes) = arity.ok_or_else(|| self.unsupported(format!("arity of {op:?}")))?;
        let (pops, pushes) = (pops as usize, pushes as usize);
        match classify(op) {
            Class::Arith(float) => {
                self.emit_op(op)?;
                self.pop(pops)?;
                self.stack.push(float_slot(Taint::Dirty, float));
            }
            Class::FromInt(float) => {
                self.emit_op(op)?;
                self.pop(pops)?;
                self.stack.push(float_slot(Taint::Canon, float));
            }
            Class::Observe(float_out) => {
                // The bits of every float operand escape: canonicalize dirty
                // ones first.
                self.canon_top_k(pops)?;
                self.emit_op(op)?;
                self.pop(pops)?;
                for _ in 0..pushes {
                    self.stack.push(match float_out {
                        Some(f) => float_slot(Taint::Exact, f),
                        None => EXACT,
                    });
                }
            }
            Class::Consume => {
                // Comparisons and float → int conversions: no result bit
                // depends on a NaN's payload or sign.
                self.emit_op(op)?;
                self.pop(pops)?;
                self.push_exact(pushes);
            }
            Class::VectorArith(lanes) => {
                self.emit_op(op)?;
                self.canon_v128(lanes)?;
                self.pop(pops)?;
                self.push_exact(pushes);
            }
            Class::Other => {
                let popped = self.pop(pops)?;
                if popped.iter().any(|s| s.taint == Taint::Dirty) {
                    return Err(self.unsupported(format!(
                        "a not yet canonical float reaches {op:?}, which has no rule"
                    )));
                }
                self.emit_op(op)?;
                for _ in 0..pushes {
                    self.stack.push(EXACT);
                }
                // Any float this pushes is exact: the only float producers
                // that are not are classified above.
                let n = self.stack.len();
                for d in 0..pushes {
                    if let Some(f) = self.result_float(op, d) {
                        self.stack[n - 1 - d].float = Some(f);
                    }
                }
            }
        }
        Ok(())
    }

    /// For ops classified `Other` that push floats (loads, globals,
    /// lane extraction, reinterpretation of integers): their float type.
    fn result_float(&self, op: &Operator<'a>, _depth: usize) -> Option<Float> {
        match op {
            Operator::F32Load { .. }
            | Operator::F32ReinterpretI32
            | Operator::F32x4ExtractLane { .. } => Some(Float::F32),
            Operator::F64Load { .. }
            | Operator::F64ReinterpretI64
            | Operator::F64x2ExtractLane { .. } => Some(Float::F64),
            _ => None,
        }
    }

    /// Canonicalizes the v128 on top, whose lanes are `lanes`.
    fn canon_v128(&mut self, lanes: Float) -> Result<(), RewriteError> {
        let t = self
            .scratch
            .get(ValType::V128, 0)
            .map_err(|e| self.unsupported(e))?;
        let (canon, eq) = match lanes {
            Float::F32 => (
                i128::from_le_bytes(splat_bytes(&CANON_F32.to_le_bytes())),
                Instruction::F32x4Eq,
            ),
            Float::F64 => (
                i128::from_le_bytes(splat_bytes(&CANON_F64.to_le_bytes())),
                Instruction::F64x2Eq,
            ),
        };
        // [v] -> [v, canon, v == v] -> bitselect: v's lanes where not NaN.
        self.emit(Instruction::LocalTee(t));
        self.emit(Instruction::V128Const(canon));
        self.emit(Instruction::LocalGet(t));
        self.emit(Instruction::LocalGet(t));
        self.emit(eq);
        self.emit(Instruction::V128Bitselect);
        self.stats.vector_canons += 1;
        Ok(())
    }

    /// Ends the innermost frame: emits `end` (with an `else` first when an
    /// `if` without one needs locals fixed on its implicit else path).
    fn close_frame(&mut self, op: Operator<'a>) -> Result<(), RewriteError> {
        let frame = self.frames.pop().ok_or_else(|| self.unsupported("end"))?;
        if frame.kind == Kind::If && !frame.has_else && !frame.dead {
            // The implicit else path carries the entry state to the end.
            if let Some(entry) = frame.entry.clone() {
                let saved = std::mem::replace(&mut self.locals, entry);
                if !self.fixes_for(frame.label).is_empty() {
                    self.emit(Instruction::Else);
                }
                // Joins the (fixed) entry state into the label.
                self.frames.push(frame);
                let label = self.frames.last().map_or(0, |f| f.label);
                self.edge_to(label)?;
                let frame = self.frames.pop().ok_or_else(|| self.unsupported("end"))?;
                self.locals = saved;
                return self.finish_close(frame, op);
            }
        }
        self.finish_close(frame, op)
    }

    fn finish_close(&mut self, frame: Frame, op: Operator<'a>) -> Result<(), RewriteError> {
        self.emit_op(&op)?;
        if frame.dead {
            return Ok(());
        }
        self.stack.truncate(frame.height);
        self.push_exact(frame.results);
        match frame.kind {
            Kind::Function => {}
            Kind::Loop => {
                // Falling out of a loop continues with the body's state.
                if frame.unreachable {
                    self.mark_after_unreachable();
                }
            }
            Kind::Block | Kind::If => match self.new_labels[frame.label].clone() {
                Some(joined) => self.locals = joined,
                None => self.mark_after_unreachable(),
            },
        }
        Ok(())
    }

    /// Nothing reaches the code after a frame: the parent is unreachable
    /// from here on.
    fn mark_after_unreachable(&mut self) {
        self.set_unreachable();
    }

    /// An operator in unreachable code: copied as is. Frames opened here are
    /// dead; the validator still tracks them.
    fn step_unreachable(&mut self, offset: u64, op: Operator<'a>) -> Result<(), RewriteError> {
        match &op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => {
                let label = self.new_label();
                self.emit_op(&op)?;
                self.frames.push(Frame {
                    kind: Kind::Block,
                    label,
                    height: self.stack.len(),
                    params: 0,
                    results: 0,
                    unreachable: true,
                    dead: true,
                    entry: None,
                    has_else: false,
                });
            }
            Operator::Else => {
                let dead = self.frames.last().is_some_and(|f| f.dead);
                if dead {
                    self.emit_op(&op)?;
                } else {
                    // The then-branch ended unreachable: nothing to join;
                    // the else path starts from the entry state.
                    let (h, params, entry) = {
                        let f = self.frames.last().ok_or_else(|| self.unsupported("else"))?;
                        (f.height, f.params, f.entry.clone())
                    };
                    self.emit_op(&op)?;
                    if let Some(f) = self.frames.last_mut() {
                        f.has_else = true;
                        f.unreachable = false;
                    }
                    self.stack.truncate(h);
                    self.push_exact(params);
                    if let Some(entry) = entry {
                        self.locals = entry;
                    }
                }
            }
            Operator::End => {
                self.close_frame(op.clone())?;
            }
            _ => self.emit_op(&op)?,
        }
        self.val.op(offset, &op)?;
        Ok(())
    }
}

fn float_slot(taint: Taint, float: Float) -> Slot {
    Slot {
        taint,
        float: Some(float),
    }
}

fn splat_bytes<const N: usize>(lane: &[u8; N]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(N) {
        chunk.copy_from_slice(lane);
    }
    out
}

/// How an operator with fixed arity relates to NaN bits.
enum Class {
    /// Scalar arithmetic Cranelift canonicalizes: the result is dirty.
    Arith(Float),
    /// Integer → float conversion: never a NaN.
    FromInt(Float),
    /// Lets its float operands' bits escape (store, reinterpret, sign
    /// operations, lane insertion, `global.set`); pushes an exact float of
    /// this type, if any.
    Observe(Option<Float>),
    /// Reads float operands without exposing NaN bits.
    Consume,
    /// Vector float arithmetic: canonicalized right after.
    VectorArith(Float),
    /// Anything else: must not see a dirty operand.
    Other,
}

fn classify(op: &Operator<'_>) -> Class {
    use Float::{F32, F64};
    use Operator as O;
    match op {
        O::F32Add
        | O::F32Sub
        | O::F32Mul
        | O::F32Div
        | O::F32Min
        | O::F32Max
        | O::F32Sqrt
        | O::F32Ceil
        | O::F32Floor
        | O::F32Trunc
        | O::F32Nearest
        | O::F32DemoteF64 => Class::Arith(F32),
        O::F64Add
        | O::F64Sub
        | O::F64Mul
        | O::F64Div
        | O::F64Min
        | O::F64Max
        | O::F64Sqrt
        | O::F64Ceil
        | O::F64Floor
        | O::F64Trunc
        | O::F64Nearest
        | O::F64PromoteF32 => Class::Arith(F64),
        O::F32ConvertI32S | O::F32ConvertI32U | O::F32ConvertI64S | O::F32ConvertI64U => {
            Class::FromInt(F32)
        }
        O::F64ConvertI32S | O::F64ConvertI32U | O::F64ConvertI64S | O::F64ConvertI64U => {
            Class::FromInt(F64)
        }
        O::F32Store { .. }
        | O::F64Store { .. }
        | O::GlobalSet { .. }
        | O::I32ReinterpretF32
        | O::I64ReinterpretF64
        | O::F32x4Splat
        | O::F64x2Splat
        | O::F32x4ReplaceLane { .. }
        | O::F64x2ReplaceLane { .. } => Class::Observe(None),
        O::F32Neg | O::F32Copysign => Class::Observe(Some(F32)),
        O::F64Neg | O::F64Copysign => Class::Observe(Some(F64)),
        O::F32Eq
        | O::F32Ne
        | O::F32Lt
        | O::F32Gt
        | O::F32Le
        | O::F32Ge
        | O::F64Eq
        | O::F64Ne
        | O::F64Lt
        | O::F64Gt
        | O::F64Le
        | O::F64Ge
        | O::I32TruncF32S
        | O::I32TruncF32U
        | O::I32TruncF64S
        | O::I32TruncF64U
        | O::I64TruncF32S
        | O::I64TruncF32U
        | O::I64TruncF64S
        | O::I64TruncF64U
        | O::I32TruncSatF32S
        | O::I32TruncSatF32U
        | O::I32TruncSatF64S
        | O::I32TruncSatF64U
        | O::I64TruncSatF32S
        | O::I64TruncSatF32U
        | O::I64TruncSatF64S
        | O::I64TruncSatF64U
        | O::Drop => Class::Consume,
        O::F32x4Add
        | O::F32x4Sub
        | O::F32x4Mul
        | O::F32x4Div
        | O::F32x4Min
        | O::F32x4Max
        | O::F32x4Sqrt
        | O::F32x4Ceil
        | O::F32x4Floor
        | O::F32x4Trunc
        | O::F32x4Nearest
        | O::F32x4DemoteF64x2Zero => Class::VectorArith(F32),
        O::F64x2Add
        | O::F64x2Sub
        | O::F64x2Mul
        | O::F64x2Div
        | O::F64x2Min
        | O::F64x2Max
        | O::F64x2Sqrt
        | O::F64x2Ceil
        | O::F64x2Floor
        | O::F64x2Trunc
        | O::F64x2Nearest
        | O::F64x2PromoteLowF32x4 => Class::VectorArith(F64),
        _ => Class::Other,
    }
}
