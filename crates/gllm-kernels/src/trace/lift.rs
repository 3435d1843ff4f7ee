//! From per-element expression DAGs to an [`OpTrace`].
//!
//! For every output element the analyser has one expression. Lifting:
//! 1. finds fold chains: `F_k = combine(F_{k-1}, elements at position k)`
//!    down to an identity constant — a node depending on all positions with a
//!    child depending on exactly positions 0..n-2 is a fold's last step;
//! 2. turns the fold's last step into a combine template and checks every
//!    earlier step matches it;
//! 3. makes row scalars of what is computed from fold results alone;
//! 4. turns the rest into the per-element body.
//!
//! The result must be identical for every output element and for two run
//! sizes; otherwise the function is not an operator of a known shape.

use super::cfg::CodeMap;
use super::error::{TraceError, TraceErrorKind};
use super::exec::{self, RunResult};
use super::expr::{BinOp, Expr, ExprId, ExprPool, UnOp};
use super::memory::CodeMemory;
use super::{Body, ComputePattern, Fold, GemmLayout, OpTrace, TraceOp, ValueId};
use crate::scalar::{Arg, FnForm, Len, OpSignature, Returns};
use std::collections::{HashMap, HashSet};

/// Where the fold positions of loads are, for one output element.
#[derive(Debug, Clone, Copy)]
enum Geometry {
    /// Per-element function: no folds, element loads at index 0.
    PerElement,
    /// Row op over `n` positions; output element `j` (if any) reads index `j`.
    Row { n: usize, elem: Option<usize> },
    /// GEMM output (i, j): A = input 0 (m×k), B = input 1 (k×n), each
    /// row-major or transposed as `layout` says.
    Gemm { i: usize, j: usize, m: usize, n: usize, k: usize, layout: GemmLayout },
}

impl Geometry {
    fn folds(&self) -> usize {
        match *self {
            Geometry::PerElement => 0,
            Geometry::Row { n, .. } => n,
            Geometry::Gemm { k, .. } => k,
        }
    }

    /// Fold position of a load, if it belongs to this element's folds.
    fn pos(&self, input: u8, index: usize) -> Option<usize> {
        match *self {
            Geometry::PerElement => None,
            Geometry::Row { n, .. } => (index < n).then_some(index),
            Geometry::Gemm { i, j, m, n, k, layout } => {
                let (a_row, a_pos) = if layout.a_transposed {
                    (index % m.max(1), index / m.max(1))
                } else {
                    (index / k, index % k)
                };
                let (b_col, b_pos) = if layout.b_transposed {
                    (index / k, index % k)
                } else {
                    (index % n.max(1), index / n.max(1))
                };
                match input {
                    0 if a_row == i && a_pos < k => Some(a_pos),
                    1 if b_col == j && b_pos < k => Some(b_pos),
                    _ => None,
                }
            }
        }
    }

    /// Whether a load is the current element of its input.
    fn is_elem(&self, index: usize) -> bool {
        match *self {
            Geometry::PerElement => index == 0,
            Geometry::Row { elem, .. } => elem == Some(index),
            Geometry::Gemm { .. } => false,
        }
    }
}

type Res<T> = Result<T, TraceError>;

struct Ctx<'a> {
    code: &'a CodeMap,
    pool: &'a ExprPool,
}

impl Ctx<'_> {
    fn err(&self, msg: impl Into<String>) -> TraceError {
        self.code.error(self.code.entry, TraceErrorKind::Unrecognised(msg.into()))
    }

    /// An error about the value `node` (a read, a fold step, an output):
    /// it names the instruction that computed it (the function's entry if
    /// unknown).
    fn err_at(&self, node: ExprId, msg: impl Into<String>) -> TraceError {
        let at = self.pool.site(node).unwrap_or(self.code.entry);
        self.code.error(at, TraceErrorKind::Unrecognised(msg.into()))
    }
}

/// Dimension values for the runs: small, distinct, and one row long enough
/// for vectorised loop bodies and their remainders.
fn run_dims(num_dims: usize) -> Vec<Vec<usize>> {
    match num_dims {
        0 => vec![vec![]],
        1 => vec![vec![5], vec![127]],
        _ => vec![[5, 3, 7, 2, 11, 13][..num_dims].to_vec(), [3, 19, 9, 4, 6, 10][..num_dims].to_vec()],
    }
}

pub fn lift(name: &str, code: &CodeMap, sig: &OpSignature, memory: &dyn CodeMemory) -> Res<OpTrace> {
    let mut result: Option<(OpTrace, Vec<usize>)> = None;
    let mut assumed_no_nan = false;
    for dims in run_dims(sig.num_dims()) {
        let mut pool = ExprPool::new();
        let run = exec::run(code, sig, memory, &mut pool, &dims)?;
        assumed_no_nan |= run.assumed_no_nan;
        let ctx = Ctx { code, pool: &pool };
        // A GEMM's operand layout is whichever one its reads fit: the plain
        // one first (its error is the one reported if none fits).
        let trace = match lift_run(&ctx, sig, &run, &dims, GemmLayout::default()) {
            Err(plain) if is_gemm_shaped(sig) => GemmLayout::ALL[1..]
                .iter()
                .find_map(|&layout| lift_run(&ctx, sig, &run, &dims, layout).ok())
                .ok_or(plain)?,
            other => other?,
        };
        match &result {
            None => result = Some((trace, dims)),
            Some((first, first_dims)) if *first != trace => {
                return Err(ctx.err(format!(
                    "`{name}` computes differently for dimensions {first_dims:?} and {dims:?}"
                )))
            }
            Some(_) => {}
        }
    }
    let (mut trace, _) = result.expect("at least one run");
    trace.loops = code.loops.clone();
    trace.assumed_no_nan = assumed_no_nan;
    Ok(trace)
}

/// A signature whose single output is a product of two dimensions, over two
/// inputs and three dimensions: what a matrix product looks like.
fn is_gemm_shaped(sig: &OpSignature) -> bool {
    sig.num_dims() == 3
        && sig.num_inputs() == 2
        && sig.num_outputs() == 1
        && sig.outputs().all(|(_, a)| matches!(a, Arg::Output { len: Len::Product(..), .. }))
}

fn lift_run(
    ctx: &Ctx,
    sig: &OpSignature,
    run: &RunResult,
    dims: &[usize],
    layout: GemmLayout,
) -> Res<OpTrace> {
    let num_inputs = sig.num_inputs();
    let num_outputs = sig.num_outputs();
    let ret = || run.ret.ok_or_else(|| ctx.err("no return value"));
    // (geometry, roots) for every output element.
    let mut elements: Vec<(Geometry, Vec<ExprId>)> = Vec::new();
    let mut gemm: Option<(u8, u8, u8, GemmLayout)> = None;
    match (sig.form(), sig.returns()) {
        (FnForm::PerElement, _) => elements.push((Geometry::PerElement, vec![ret()?])),
        (FnForm::Slices, Returns::RowScalar) => {
            let n = row_len(ctx, sig, dims)?;
            elements.push((Geometry::Row { n, elem: None }, vec![ret()?]));
        }
        (FnForm::Slices, _) => {
            let out_lens: Vec<Len> = sig
                .outputs()
                .map(|(_, a)| if let Arg::Output { len, .. } = a { *len } else { unreachable!() })
                .collect();
            let written = |o: usize, e: usize| {
                run.outputs[o][e].ok_or_else(|| ctx.err(format!("output {o} element {e} was not written")))
            };
            match out_lens[0] {
                Len::Dim(d) if out_lens.iter().all(|l| *l == Len::Dim(d)) => {
                    let n = row_len(ctx, sig, dims)?;
                    for e in 0..dims[d as usize] {
                        let roots = (0..out_lens.len()).map(|o| written(o, e)).collect::<Res<Vec<_>>>()?;
                        elements.push((Geometry::Row { n, elem: Some(e) }, roots));
                    }
                }
                Len::Product(..) if is_gemm_shaped(sig) => {
                    let (m, n, k, geos) = gemm_geometry(ctx, sig, dims, layout)?;
                    gemm = Some((m, n, k, layout));
                    for (e, g) in geos.into_iter().enumerate() {
                        elements.push((g, vec![written(0, e)?]));
                    }
                }
                _ => return Err(ctx.err("outputs of different or unsupported shapes")),
            }
        }
    }
    let mut lifted: Option<(Vec<Fold>, Body, Body)> = None;
    // A row op's elements share their folds: analyse those once, over every
    // element's expressions. A GEMM element has its own folds.
    let shared = match elements.first() {
        Some((geo @ Geometry::Row { .. }, _)) => {
            let all_roots: Vec<ExprId> = elements.iter().flat_map(|(_, r)| r.iter().copied()).collect();
            Some(analyse_folds(ctx, *geo, &all_roots)?)
        }
        _ => None,
    };
    for (index, (geo, roots)) in elements.iter().enumerate() {
        let own;
        let analysis = match &shared {
            Some(a) => a,
            None => {
                own = analyse_folds(ctx, *geo, roots)?;
                &own
            }
        };
        let this = lift_element(ctx, *geo, roots, analysis)?;
        match &lifted {
            None => lifted = Some(this),
            Some(first) if *first != this => {
                let at = roots.first().copied().unwrap_or(0);
                return Err(
                    ctx.err_at(at, format!("output element {index} is computed differently from element 0"))
                );
            }
            Some(_) => {}
        }
    }
    let (folds, row, body) = lifted.ok_or_else(|| ctx.err("no output elements to learn from"))?;
    let pattern = if let Some((m, n, k, layout)) = gemm {
        if folds.len() != 1 || !body.inputs_used().is_empty() {
            return Err(ctx.err("matrix-product shape without a single multiply-accumulate fold"));
        }
        // The GEMM kernels compute Σ A·B and nothing else: anything else in
        // this shape would run as a plain product, silently wrong.
        if let Some(why) = not_a_plain_product(&folds[0], &row, &body) {
            let fold_root = elements.first().and_then(|(_, roots)| roots.first().copied()).unwrap_or(0);
            return Err(ctx.err_at(
                fold_root,
                format!(
                    "matrix-product shape whose {why}; the GEMM kernels compute only C = Σ_p A[i,p]·B[p,j] \
                 (fold: {})",
                    one_line(&folds[0].combine)
                ),
            ));
        }
        ComputePattern::Gemm { m, n, k, layout }
    } else if folds.is_empty() {
        match (num_inputs, num_outputs) {
            (1, 1) => ComputePattern::Elementwise,
            (2, 1) => ComputePattern::BinaryElementwise,
            _ => ComputePattern::Injective { num_inputs, num_outputs },
        }
    } else if body.inputs_used().is_empty() {
        ComputePattern::Reduction
    } else {
        ComputePattern::NormLike
    };
    Ok(OpTrace { pattern, folds, row, body, num_inputs, loops: Vec::new(), assumed_no_nan: false })
}

/// Why a GEMM-shaped trace is not `C[i,j] = Σ_p A[i,p]·B[p,j]` starting
/// from +0 (the fold `acc + a·b` or `fma(a, b, acc)`, the element the fold's
/// result unchanged), or `None` if it is.
fn not_a_plain_product(fold: &Fold, row: &Body, body: &Body) -> Option<&'static str> {
    use TraceOp::*;
    if fold.identity != 0 {
        return Some("fold does not start from 0");
    }
    let c = &fold.combine;
    let op = |v: ValueId| c.ops.get(v as usize).copied();
    let is_ab = |x: ValueId, y: ValueId| {
        matches!((op(x), op(y)), (Some(Input(0)), Some(Input(1))) | (Some(Input(1)), Some(Input(0))))
    };
    let is_product = |v: ValueId| matches!(op(v), Some(Mul(x, y)) if is_ab(x, y));
    let multiply_add = match (c.outputs.as_slice(), c.outputs.first().and_then(|&v| op(v))) {
        ([_], Some(Add(x, y))) => {
            (op(x) == Some(Acc) && is_product(y)) || (op(y) == Some(Acc) && is_product(x))
        }
        ([_], Some(Fma(x, y, z))) => is_ab(x, y) && op(z) == Some(Acc),
        _ => false,
    };
    if !multiply_add {
        return Some("fold is not a multiply-add of A and B");
    }
    // The element: the fold's result, possibly through a row scalar.
    let result = |b: &Body, v: ValueId| b.ops.get(v as usize).copied();
    let element = match body.outputs.as_slice() {
        [v] => result(body, *v),
        _ => None,
    };
    let plain = match element {
        Some(FoldResult(0)) => true,
        Some(RowScalar(r)) => {
            matches!(row.outputs.get(r as usize).and_then(|&v| result(row, v)), Some(FoldResult(0)))
        }
        _ => false,
    };
    if !plain {
        return Some("element is not the fold's result as is");
    }
    None
}

/// A body on one line, for error messages.
fn one_line(b: &Body) -> String {
    let ops: Vec<String> = b.ops.iter().enumerate().map(|(i, op)| format!("%{i} = {op}")).collect();
    let outs: Vec<String> = b.outputs.iter().map(|o| format!("%{o}")).collect();
    format!("{}; => {}", ops.join("; "), outs.join(", "))
}

/// The row length: the common length of the inputs.
fn row_len(ctx: &Ctx, sig: &OpSignature, dims: &[usize]) -> Res<usize> {
    let mut len = None;
    for (_, a) in sig.inputs() {
        if let Arg::Input { len: l, name, .. } = a {
            let v = l.eval(dims).ok_or_else(|| ctx.err(format!("length of `{name}`")))?;
            if *len.get_or_insert(v) != v {
                return Err(ctx.err("row inputs of different lengths"));
            }
        }
    }
    len.ok_or_else(|| ctx.err("no row input"))
}

/// Finds which dimension is m, n, k by trying every assignment against the
/// signature's lengths: A is m×k, B is k×n, C is m×n (row-major; A and B
/// transposed as `layout` says).
fn gemm_geometry(
    ctx: &Ctx,
    sig: &OpSignature,
    dims: &[usize],
    layout: GemmLayout,
) -> Res<(u8, u8, u8, Vec<Geometry>)> {
    let lens: Vec<Len> = sig
        .args()
        .iter()
        .filter_map(|a| match a {
            Arg::Input { len, .. } | Arg::Output { len, .. } => Some(*len),
            _ => None,
        })
        .collect();
    let same = |l: Len, x: u8, y: u8| matches!(l, Len::Product(p, q) if (p, q) == (x, y) || (p, q) == (y, x));
    for (m, n, k) in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)] {
        if same(lens[0], m, k) && same(lens[1], k, n) && same(lens[2], m, n) {
            let (mv, nv, kv) = (dims[m as usize], dims[n as usize], dims[k as usize]);
            let geos = (0..mv * nv)
                .map(|e| Geometry::Gemm { i: e / nv, j: e % nv, m: mv, n: nv, k: kv, layout })
                .collect();
            return Ok((m, n, k, geos));
        }
    }
    Err(ctx.err("matrix shapes do not fit A[m,k]·B[k,n] = C[m,n]"))
}

/// Positions 0..=k as a bit set.
fn prefix(k: usize) -> u128 {
    if k >= 127 {
        u128::MAX >> (127 - k.min(127))
    } else {
        (1u128 << (k + 1)) - 1
    }
}

/// A value for every node reachable from `roots`, children before parents,
/// without recursion (traces can be deep). `leaf` settles a node without
/// looking at its children; `combine` gets the node and its children's values.
fn bottom_up<T: Copy>(
    ctx: &Ctx,
    roots: &[ExprId],
    leaf: impl Fn(ExprId) -> Option<T>,
    mut combine: impl FnMut(ExprId, &[T]) -> Res<T>,
) -> Res<HashMap<ExprId, T>> {
    let mut value: HashMap<ExprId, T> = HashMap::new();
    let mut stack: Vec<(ExprId, bool)> = roots.iter().map(|&r| (r, false)).collect();
    while let Some((node, expanded)) = stack.pop() {
        if value.contains_key(&node) {
            continue;
        }
        if let Some(v) = leaf(node) {
            value.insert(node, v);
            continue;
        }
        let kids = ctx.pool.children(node);
        if !expanded {
            stack.push((node, true));
            stack.extend(kids.iter().filter(|k| !value.contains_key(k)).map(|&k| (k, false)));
            continue;
        }
        let kid_values: Vec<T> = kids.iter().map(|k| value[k]).collect();
        let v = combine(node, &kid_values)?;
        value.insert(node, v);
    }
    Ok(value)
}

/// Which fold positions each node depends on (opaque nodes depend on none).
fn positions(
    ctx: &Ctx,
    geo: Geometry,
    roots: &[ExprId],
    opaque: &HashSet<ExprId>,
) -> Res<HashMap<ExprId, u128>> {
    let leaf = |node| opaque.contains(&node).then_some(0);
    bottom_up(ctx, roots, leaf, |node, kids| match ctx.pool.get(node) {
        Expr::Load { input, index } => match geo.pos(input, index as usize) {
            Some(p) => Ok(1u128 << p),
            None if geo.is_elem(index as usize) => Ok(0),
            None => Err(ctx.err_at(
                node,
                format!("reads element {index} of input {input}, outside what this output may depend on"),
            )),
        },
        _ => Ok(kids.iter().fold(0, |acc, k| acc | k)),
    })
}

struct Builder<'a> {
    ctx: &'a Ctx<'a>,
    ops: Vec<TraceOp>,
    memo: HashMap<ExprId, ValueId>,
}

impl<'a> Builder<'a> {
    fn new(ctx: &'a Ctx<'a>) -> Self {
        Builder { ctx, ops: Vec::new(), memo: HashMap::new() }
    }

    fn push(&mut self, op: TraceOp) -> ValueId {
        if let Some(i) = self.ops.iter().position(|o| *o == op && op.operands().is_empty()) {
            return i as ValueId;
        }
        self.ops.push(op);
        (self.ops.len() - 1) as ValueId
    }

    /// Post-order translation of `root`; `leaf` decides nodes that become
    /// leaves (inputs, accumulator, row scalars) or errors.
    fn build(&mut self, root: ExprId, leaf: &mut dyn FnMut(ExprId) -> Res<Option<TraceOp>>) -> Res<ValueId> {
        if let Some(&v) = self.memo.get(&root) {
            return Ok(v);
        }
        if let Some(op) = leaf(root)? {
            let v = self.push(op);
            self.memo.insert(root, v);
            return Ok(v);
        }
        let pool = self.ctx.pool;
        let op = match pool.get(root) {
            Expr::Undef => return Err(self.ctx.err("an output depends on an undefined value")),
            Expr::Opaque(site) => return Err(self.ctx.code.error(site, TraceErrorKind::OpaqueBitOperation)),
            Expr::Const(b) => TraceOp::Const(b),
            Expr::Param(k) => TraceOp::Param(k),
            Expr::Dim(k) => TraceOp::Dim(k),
            Expr::Load { input, index } => {
                return Err(self
                    .ctx
                    .err_at(root, format!("unexpected read of element {index} of input {input}")))
            }
            Expr::Un(op, a) => {
                let a = self.build(a, leaf)?;
                match op {
                    UnOp::Neg => TraceOp::Neg(a),
                    UnOp::Abs => TraceOp::Abs(a),
                    UnOp::Sqrt => TraceOp::Sqrt(a),
                    UnOp::Exp => TraceOp::Exp(a),
                    UnOp::Log => TraceOp::Log(a),
                    UnOp::Tanh => TraceOp::Tanh(a),
                    UnOp::Math(m) => TraceOp::Math(m, a),
                }
            }
            Expr::Bin(op, a, b) => {
                let a = self.build(a, leaf)?;
                let b = self.build(b, leaf)?;
                match op {
                    BinOp::Add => TraceOp::Add(a, b),
                    BinOp::Sub => TraceOp::Sub(a, b),
                    BinOp::Mul => TraceOp::Mul(a, b),
                    BinOp::Div => TraceOp::Div(a, b),
                    BinOp::Max => TraceOp::Max(a, b),
                    BinOp::Min => TraceOp::Min(a, b),
                    BinOp::Pow => TraceOp::Pow(a, b),
                    BinOp::CopySign => TraceOp::CopySign(a, b),
                }
            }
            Expr::Fma(a, b, c) => {
                let (a, b, c) = (self.build(a, leaf)?, self.build(b, leaf)?, self.build(c, leaf)?);
                TraceOp::Fma(a, b, c)
            }
            Expr::Cmp(p, a, b) => {
                let (a, b) = (self.build(a, leaf)?, self.build(b, leaf)?);
                TraceOp::Cmp(p, a, b)
            }
            Expr::Select(c, a, b) => {
                let (c, a, b) = (self.build(c, leaf)?, self.build(a, leaf)?, self.build(b, leaf)?);
                TraceOp::Select(c, a, b)
            }
        };
        let v = self.push(op);
        self.memo.insert(root, v);
        Ok(v)
    }

    fn finish(self, outputs: Vec<ValueId>) -> Body {
        canonicalize(&Body { ops: self.ops, outputs })
    }
}

fn commutative(op: &TraceOp) -> bool {
    matches!(op, TraceOp::Add(..) | TraceOp::Mul(..) | TraceOp::Fma(..))
}

/// Re-emits a body in a canonical order: post-order from the outputs, with
/// commutative operands ordered by a hash of their structure. Bodies that
/// compute the same thing with operands swapped become identical.
fn canonicalize(body: &Body) -> Body {
    use std::hash::{Hash, Hasher};
    let mut hashes: Vec<u64> = Vec::with_capacity(body.ops.len());
    for op in &body.ops {
        let mut kids: Vec<u64> = op.operands().iter().map(|&o| hashes[o as usize]).collect();
        if commutative(op) {
            kids[..2].sort_unstable();
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        // The op without its operands: kind, predicate, function, constant, index.
        op.map_operands(|_| 0).hash(&mut h);
        kids.hash(&mut h);
        hashes.push(h.finish());
    }
    let mut out: Vec<TraceOp> = Vec::new();
    let mut memo: HashMap<ValueId, ValueId> = HashMap::new();
    fn emit(
        v: ValueId,
        body: &Body,
        hashes: &[u64],
        out: &mut Vec<TraceOp>,
        memo: &mut HashMap<ValueId, ValueId>,
    ) -> ValueId {
        if let Some(&n) = memo.get(&v) {
            return n;
        }
        let op = body.ops[v as usize];
        let mut operands = op.operands();
        let swap = commutative(&op) && hashes[operands[1] as usize] < hashes[operands[0] as usize];
        if swap {
            operands.swap(0, 1);
        }
        for &o in &operands {
            emit(o, body, hashes, out, memo);
        }
        let new = op.map_operands(|o| memo[&o]);
        let new = match new {
            TraceOp::Add(a, b) if swap => TraceOp::Add(b, a),
            TraceOp::Mul(a, b) if swap => TraceOp::Mul(b, a),
            TraceOp::Fma(a, b, c) if swap => TraceOp::Fma(b, a, c),
            other => other,
        };
        let id = match out.iter().position(|o| *o == new) {
            Some(i) => i as ValueId,
            None => {
                out.push(new);
                (out.len() - 1) as ValueId
            }
        };
        memo.insert(v, id);
        id
    }
    let outputs = body.outputs.iter().map(|&o| emit(o, body, &hashes, &mut out, &mut memo)).collect();
    Body { ops: out, outputs }
}

struct FoldFound {
    top: ExprId,
    acc_child: ExprId,
}

/// Folds found in a set of output expressions, verified, with their combine
/// bodies and the row scalars those use.
struct FoldAnalysis {
    tops: HashMap<ExprId, u8>,
    deps: HashMap<ExprId, u128>,
    depends_on_fold: HashSet<ExprId>,
    folds: Vec<Fold>,
    /// Row scalars in order of first use so far.
    row_scalars: Vec<ExprId>,
}

impl FoldAnalysis {
    fn is_row_scalar(&self, x: ExprId) -> bool {
        self.deps.get(&x) == Some(&0) && self.depends_on_fold.contains(&x)
    }
}

fn row_index(x: ExprId, row_scalars: &mut Vec<ExprId>) -> u8 {
    match row_scalars.iter().position(|&r| r == x) {
        Some(i) => i as u8,
        None => {
            row_scalars.push(x);
            (row_scalars.len() - 1) as u8
        }
    }
}

fn analyse_folds(ctx: &Ctx, geo: Geometry, roots: &[ExprId]) -> Res<FoldAnalysis> {
    let n = geo.folds();
    let mut found: Vec<FoldFound> = Vec::new();
    let mut opaque: HashSet<ExprId> = HashSet::new();
    if n >= 3 {
        let all = prefix(n - 1);
        let before_last = prefix(n - 2);
        loop {
            let deps = positions(ctx, geo, roots, &opaque)?;
            // Last steps of folds, grouped by their accumulator child.
            let mut groups: HashMap<ExprId, ExprId> = HashMap::new();
            for (&node, &d) in &deps {
                if d != all || opaque.contains(&node) {
                    continue;
                }
                // The accumulator is a value over exactly the earlier
                // positions — not a comparison mask of it (f32::max's
                // `isnan(acc)` also depends on exactly those): look through
                // masks to the value they compare.
                let earlier = |x: &ExprId| deps.get(x) == Some(&before_last);
                let children = ctx.pool.children(node);
                let value =
                    children.iter().find(|c| earlier(c) && !matches!(ctx.pool.get(**c), Expr::Cmp(..)));
                let through_mask = || {
                    children
                        .iter()
                        .filter(|c| matches!(ctx.pool.get(**c), Expr::Cmp(..)))
                        .flat_map(|c| ctx.pool.children(*c))
                        .find(|c| earlier(c))
                };
                if let Some(acc) = value.copied().or_else(through_mask) {
                    let top = groups.entry(acc).or_insert(node);
                    *top = (*top).max(node);
                }
            }
            if groups.is_empty() {
                break;
            }
            let mut round: Vec<FoldFound> =
                groups.into_iter().map(|(acc_child, top)| FoldFound { top, acc_child }).collect();
            let order = first_visit_order(ctx, roots);
            round.sort_by_key(|f| order.get(&f.top).copied().unwrap_or(usize::MAX));
            for f in round {
                opaque.insert(f.top);
                found.push(f);
            }
        }
    }
    let tops: HashMap<ExprId, u8> = found.iter().enumerate().map(|(i, f)| (f.top, i as u8)).collect();
    // With every fold opaque: nodes depending on no position.
    let deps = positions(ctx, geo, roots, &opaque)?;
    let depends_on_fold = fold_dependence(ctx, roots, &tops)?;
    let mut analysis =
        FoldAnalysis { tops, deps, depends_on_fold, folds: Vec::new(), row_scalars: Vec::new() };

    // Combine bodies, checked against every step of their chain.
    for f in &found {
        let mut b = Builder::new(ctx);
        let last = n - 1;
        let mut row_scalars = std::mem::take(&mut analysis.row_scalars);
        let out = b.build(f.top, &mut |x| {
            if x == f.acc_child {
                return Ok(Some(TraceOp::Acc));
            }
            if x != f.top && analysis.is_row_scalar(x) {
                return Ok(Some(TraceOp::RowScalar(row_index(x, &mut row_scalars))));
            }
            if let Expr::Load { input, index } = ctx.pool.get(x) {
                return match geo.pos(input, index as usize) {
                    Some(p) if p == last => Ok(Some(TraceOp::Input(input))),
                    _ => Err(ctx.err_at(x, "a fold step reads an element of another position")),
                };
            }
            Ok(None)
        })?;
        let combine = b.finish(vec![out]);
        let identity = check_chain(ctx, geo, &combine, f.top, &row_scalars)?;
        analysis.row_scalars = row_scalars;
        analysis.folds.push(Fold { identity, combine });
    }
    Ok(analysis)
}

fn lift_element(
    ctx: &Ctx,
    geo: Geometry,
    roots: &[ExprId],
    analysis: &FoldAnalysis,
) -> Res<(Vec<Fold>, Body, Body)> {
    let mut row_scalars = analysis.row_scalars.clone();
    let folds = &analysis.folds;
    let deps = &analysis.deps;
    let tops = &analysis.tops;
    let is_row_scalar = |x: ExprId| analysis.is_row_scalar(x);

    // The element body.
    let mut b = Builder::new(ctx);
    let mut outs = Vec::new();
    for &root in roots {
        let v = b.build(root, &mut |x| {
            if is_row_scalar(x) {
                return Ok(Some(TraceOp::RowScalar(row_index(x, &mut row_scalars))));
            }
            if let Expr::Load { input, index } = ctx.pool.get(x) {
                return if geo.is_elem(index as usize) {
                    Ok(Some(TraceOp::Input(input)))
                } else {
                    Err(ctx.err_at(
                        x,
                        format!("an output element reads element {index} of input {input}, not its own"),
                    ))
                };
            }
            if deps.get(&x).is_some_and(|&d| d != 0) && !matches!(geo, Geometry::Row { elem: Some(_), .. }) {
                return Err(ctx.err_at(x, "an output depends on part of a row without reducing all of it"));
            }
            Ok(None)
        })?;
        outs.push(v);
    }
    let body = b.finish(outs);

    // Number row scalars by first use in the canonical bodies, so the
    // numbering does not depend on the order operands happened to be in.
    let mut perm: Vec<Option<u8>> = vec![None; row_scalars.len()];
    let mut next = 0u8;
    for ops in folds.iter().map(|f| &f.combine.ops).chain([&body.ops]) {
        for op in ops {
            if let TraceOp::RowScalar(k) = *op {
                if perm[k as usize].is_none() {
                    perm[k as usize] = Some(next);
                    next += 1;
                }
            }
        }
    }
    let perm: Vec<u8> = perm.into_iter().map(|p| p.expect("every row scalar is used")).collect();
    let renumber = |b: &Body| {
        let ops = b
            .ops
            .iter()
            .map(
                |op| if let TraceOp::RowScalar(k) = *op { TraceOp::RowScalar(perm[k as usize]) } else { *op },
            )
            .collect();
        canonicalize(&Body { ops, outputs: b.outputs.clone() })
    };
    let folds: Vec<Fold> =
        folds.iter().map(|f| Fold { identity: f.identity, combine: renumber(&f.combine) }).collect();
    let body = renumber(&body);
    let mut ordered = row_scalars.clone();
    for (old, &new) in perm.iter().enumerate() {
        ordered[new as usize] = row_scalars[old];
    }
    let row_scalars = ordered;

    // The row body: row scalars from fold results.
    let mut b = Builder::new(ctx);
    let mut outs = Vec::new();
    for i in 0.. {
        let Some(&x) = row_scalars.get(i) else { break };
        let v = b.build(x, &mut |y| Ok(tops.get(&y).map(|&k| TraceOp::FoldResult(k))))?;
        outs.push(v);
    }
    let row = b.finish(outs);
    Ok((folds, row, body))
}

/// Nodes (reachable from roots) that depend on some fold's result.
fn fold_dependence(ctx: &Ctx, roots: &[ExprId], tops: &HashMap<ExprId, u8>) -> Res<HashSet<ExprId>> {
    let leaf = |node| tops.contains_key(&node).then_some(true);
    let depends = bottom_up(ctx, roots, leaf, |_, kids| Ok(kids.iter().any(|&k| k)))?;
    Ok(depends.into_iter().filter(|&(_, d)| d).map(|(node, _)| node).collect())
}

/// Node → first-visit index of a left-to-right DFS from the roots (a
/// numbering that does not depend on node ids).
fn first_visit_order(ctx: &Ctx, roots: &[ExprId]) -> HashMap<ExprId, usize> {
    let mut order = HashMap::new();
    let mut stack: Vec<ExprId> = roots.iter().rev().copied().collect();
    while let Some(x) = stack.pop() {
        if order.contains_key(&x) {
            continue;
        }
        order.insert(x, order.len());
        stack.extend(ctx.pool.children(x).into_iter().rev());
    }
    order
}

/// Walks the chain from its last step down, matching each step against the
/// combine template; returns the identity (the accumulator's initial constant).
fn check_chain(ctx: &Ctx, geo: Geometry, combine: &Body, top: ExprId, row_scalars: &[ExprId]) -> Res<u32> {
    let mut node = top;
    for pos in (0..geo.folds()).rev() {
        let mut bind: Vec<Option<ExprId>> = vec![None; combine.ops.len()];
        let mut acc: Option<ExprId> = None;
        if !unify(ctx, geo, combine, combine.outputs[0], node, pos, &mut bind, &mut acc, row_scalars) {
            // The first step, with the identity constant for the
            // accumulator, may have been simplified (f32::max's
            // `isnan(0.0)` test folded away): it matches if the combine,
            // instantiated with one of its constants as the accumulator,
            // builds the same expression.
            // (Only a combine that tests the accumulator can simplify so.)
            let tests_acc = combine.ops.iter().any(|op| matches!(op, TraceOp::Cmp(..)));
            if pos == 0 && tests_acc {
                if let Some(identity) = first_step_identity(ctx, geo, combine, node, row_scalars) {
                    return Ok(identity);
                }
            }
            // LLVM vectorises max/min folds by lanes and merges the lanes in
            // a tree: the same fold when the combine is order-insensitive.
            if let Some(identity) = tree_fold(ctx, geo, combine, node, pos, row_scalars) {
                return Ok(identity);
            }
            return Err(ctx
                .err_at(node, format!("fold step at position {pos} does not match the fold's other steps")));
        }
        node = acc.ok_or_else(|| ctx.err("fold step without an accumulator"))?;
    }
    ctx.pool
        .const_bits(node)
        .ok_or_else(|| ctx.err("a fold does not start from a constant (first iteration peeled?)"))
}

/// The accumulator's initial constant if `node` is `combine` applied to it
/// at position 0 (as simplified when built): tries each constant in `node`.
fn first_step_identity(
    ctx: &Ctx,
    geo: Geometry,
    combine: &Body,
    node: ExprId,
    row_scalars: &[ExprId],
) -> Option<u32> {
    // The position-0 loads and the constants under `node`.
    let mut loads: HashMap<u8, ExprId> = HashMap::new();
    let mut consts: Vec<ExprId> = Vec::new();
    let mut stack = vec![node];
    let mut seen = HashSet::new();
    while let Some(x) = stack.pop() {
        if !seen.insert(x) {
            continue;
        }
        match ctx.pool.get(x) {
            Expr::Load { input, index } if geo.pos(input, index as usize) == Some(0) => {
                loads.insert(input, x);
            }
            Expr::Const(_) => consts.push(x),
            _ => stack.extend(ctx.pool.children(x)),
        }
    }
    // One scratch copy: instantiating only adds nodes, so earlier attempts
    // cannot make a later one match.
    identity_step(&mut ctx.pool.clone(), combine, node, &loads, consts, row_scalars)
}

/// The constant among `consts` that, as the accumulator, makes `combine`
/// over `loads` build exactly `node` (a first step simplified by its
/// identity), if any.
fn identity_step(
    pool: &mut ExprPool,
    combine: &Body,
    node: ExprId,
    loads: &HashMap<u8, ExprId>,
    consts: Vec<ExprId>,
    row_scalars: &[ExprId],
) -> Option<u32> {
    let c = consts.into_iter().find(|&c| instantiate(pool, combine, c, loads, row_scalars) == Some(node))?;
    pool.const_bits(c)
}

/// Placeholders for the two operands of a combine written as a binary
/// operator (parameters no signature has this many of).
const TREE_LEFT: u8 = 250;
const TREE_RIGHT: u8 = 251;

/// The identity if `node` is `combine` applied as a tree — pairs of partial
/// results combined, each leaf one position's element (possibly combined
/// with the identity constant, as a simplified first step) — over exactly
/// positions 0..=last, and the combine is order-insensitive (associative
/// and commutative on random and special values, ±0 and NaN payloads
/// aside). That is how LLVM vectorises `f32::max`/`min` folds: per-lane
/// accumulators, then a horizontal merge. A sum is not order-insensitive in
/// floating point, so a sum tree is never taken for a fold.
fn tree_fold(
    ctx: &Ctx,
    geo: Geometry,
    combine: &Body,
    node: ExprId,
    last: usize,
    row_scalars: &[ExprId],
) -> Option<u32> {
    let (binary, element) = split_combine(combine)?;
    let mut pool = ctx.pool.clone();
    if !order_insensitive(&mut pool, &binary) {
        return None;
    }
    let (left, right) = (pool.param(TREE_LEFT), pool.param(TREE_RIGHT));
    let template = instantiate(&mut pool, &binary, left, &HashMap::from([(u8::MAX, right)]), row_scalars)?;
    let mut seen = vec![false; last + 1];
    let mut identity: Option<u32> = None;
    let mut stack = vec![node];
    while let Some(t) = stack.pop() {
        let mut bind = [None, None];
        if match_template(&pool, template, t, &mut bind, (left, right)) {
            stack.extend(bind.iter().flatten());
            continue;
        }
        // A leaf: one position's element, alone or combined with a constant.
        let (p, loads, consts) = leaf_parts(&pool, geo, t)?;
        if p > last || std::mem::replace(&mut seen[p], true) {
            return None;
        }
        if instantiate(&mut pool, &element, left, &loads, row_scalars) == Some(t) {
            continue;
        }
        let bits = identity_step(&mut pool, combine, t, &loads, consts, row_scalars)?;
        if *identity.get_or_insert(bits) != bits {
            return None;
        }
    }
    if seen.iter().all(|&s| s) {
        identity
    } else {
        None
    }
}

/// The combine as a binary operator — its element sub-expression (the one
/// value computed from the position's inputs alone that the accumulator's
/// computation uses) replaced by `Input(u8::MAX)` — and that element
/// sub-expression as a body of its own.
fn split_combine(combine: &Body) -> Option<(Body, Body)> {
    let root = element_root(combine)?;
    let element = Body { ops: combine.ops[..=root as usize].to_vec(), outputs: vec![root] };
    let mut b = combine.clone();
    // With one element root every input read is under it: dead once it is
    // replaced (a constant keeps the numbering).
    for op in b.ops.iter_mut() {
        if matches!(op, TraceOp::Input(_)) {
            *op = TraceOp::Const(0);
        }
    }
    b.ops[root as usize] = TraceOp::Input(u8::MAX);
    Some((b, element))
}

/// The one maximal accumulator-free value of `combine` that an
/// accumulator-dependent op reads.
fn element_root(combine: &Body) -> Option<ValueId> {
    let mut uses_acc = vec![false; combine.ops.len()];
    for (i, op) in combine.ops.iter().enumerate() {
        uses_acc[i] = *op == TraceOp::Acc || op.operands().iter().any(|&a| uses_acc[a as usize]);
    }
    let mut roots: Vec<ValueId> = Vec::new();
    for (i, op) in combine.ops.iter().enumerate() {
        if uses_acc[i] {
            for a in op.operands() {
                let leafish = matches!(combine.ops[a as usize], TraceOp::Const(_) | TraceOp::Param(_));
                if !uses_acc[a as usize] && !leafish && !roots.contains(&a) {
                    roots.push(a);
                }
            }
        }
    }
    match roots[..] {
        [r] => Some(r),
        _ => None,
    }
}

/// Checks C(a, b) = C(b, a) and C(C(a, b), c) = C(a, C(b, c)) on a spread
/// of values by constant folding in `pool` (a combine that does not fold to
/// constants — a libm call — is not taken to be order-insensitive).
fn order_insensitive(pool: &mut ExprPool, binary: &Body) -> bool {
    let values: [f32; 9] = [0.0, 1.5, -2.25, 3.0e5, -7.0e-3, f32::INFINITY, f32::NEG_INFINITY, 4.5, f32::NAN];
    let same = super::same_value;
    let apply = |pool: &mut ExprPool, a: f32, b: f32| -> Option<f32> {
        let (ka, kb) = (pool.konst(a.to_bits()), pool.konst(b.to_bits()));
        let r = instantiate(pool, binary, ka, &HashMap::from([(u8::MAX, kb)]), &[])?;
        pool.const_bits(r).map(f32::from_bits)
    };
    for &a in &values {
        for &b in &values {
            let (Some(ab), Some(ba)) = (apply(pool, a, b), apply(pool, b, a)) else { return false };
            if !same(ab, ba) {
                return false;
            }
            for &c in &values[..5] {
                let left = apply(pool, ab, c);
                let right = apply(pool, b, c).and_then(|bc| apply(pool, a, bc));
                match (left, right) {
                    (Some(l), Some(r)) if same(l, r) => {}
                    _ => return false,
                }
            }
        }
    }
    true
}

/// Structural match of `x` against `template`, binding the two placeholder
/// parameters (commutative operands may be swapped, as interning orders them).
fn match_template(
    pool: &ExprPool,
    template: ExprId,
    x: ExprId,
    bind: &mut [Option<ExprId>; 2],
    (left, right): (ExprId, ExprId),
) -> bool {
    if template == left || template == right {
        let slot = &mut bind[usize::from(template == right)];
        return *slot.get_or_insert(x) == x;
    }
    if template == x {
        return true;
    }
    let (t, e) = (pool.get(template), pool.get(x));
    let same_op = match (t, e) {
        (Expr::Un(a, _), Expr::Un(b, _)) => a == b,
        (Expr::Bin(a, ..), Expr::Bin(b, ..)) => a == b,
        (Expr::Cmp(a, ..), Expr::Cmp(b, ..)) => a == b,
        (Expr::Fma(..), Expr::Fma(..)) | (Expr::Select(..), Expr::Select(..)) => true,
        _ => false,
    };
    if !same_op {
        return false;
    }
    let (tk, ek) = (pool.children(template), pool.children(x));
    let saved = *bind;
    if tk.iter().zip(&ek).all(|(&a, &b)| match_template(pool, a, b, bind, (left, right))) {
        return true;
    }
    *bind = saved;
    let commutes = matches!(t, Expr::Bin(BinOp::Add | BinOp::Mul, ..) | Expr::Fma(..));
    if commutes {
        let mut swapped = ek.clone();
        swapped.swap(0, 1);
        if tk.iter().zip(&swapped).all(|(&a, &b)| match_template(pool, a, b, bind, (left, right))) {
            return true;
        }
        *bind = saved;
    }
    false
}

/// A tree leaf's position (all its loads must be of one position), those
/// loads by input, and the constants in it.
type LeafParts = (usize, HashMap<u8, ExprId>, Vec<ExprId>);

fn leaf_parts(pool: &ExprPool, geo: Geometry, leaf: ExprId) -> Option<LeafParts> {
    let (mut pos, mut loads, mut consts) = (None, HashMap::new(), Vec::new());
    let mut stack = vec![leaf];
    let mut seen = HashSet::new();
    while let Some(x) = stack.pop() {
        if !seen.insert(x) {
            continue;
        }
        match pool.get(x) {
            Expr::Load { input, index } => {
                let p = geo.pos(input, index as usize)?;
                if *pos.get_or_insert(p) != p {
                    return None;
                }
                loads.insert(input, x);
            }
            Expr::Const(_) => consts.push(x),
            _ => stack.extend(pool.children(x)),
        }
    }
    Some((pos?, loads, consts))
}

/// Builds `body` in `pool` with `Acc` = `acc`, `Input(k)` = `inputs[k]`,
/// `RowScalar(r)` = `row_scalars[r]` (None for what cannot be built).
fn instantiate(
    pool: &mut ExprPool,
    body: &Body,
    acc: ExprId,
    inputs: &HashMap<u8, ExprId>,
    row_scalars: &[ExprId],
) -> Option<ExprId> {
    let mut v: Vec<ExprId> = Vec::with_capacity(body.ops.len());
    for op in &body.ops {
        let at = |i: ValueId| v[i as usize];
        let x = match *op {
            TraceOp::Acc => acc,
            TraceOp::Input(k) => *inputs.get(&k)?,
            TraceOp::RowScalar(r) => *row_scalars.get(r as usize)?,
            TraceOp::Param(k) => pool.param(k),
            TraceOp::Dim(k) => pool.dim(k),
            TraceOp::Const(b) => pool.konst(b),
            TraceOp::FoldResult(_) => return None,
            TraceOp::Add(a, b) => pool.bin(BinOp::Add, at(a), at(b)),
            TraceOp::Sub(a, b) => pool.bin(BinOp::Sub, at(a), at(b)),
            TraceOp::Mul(a, b) => pool.bin(BinOp::Mul, at(a), at(b)),
            TraceOp::Div(a, b) => pool.bin(BinOp::Div, at(a), at(b)),
            TraceOp::Max(a, b) => pool.bin(BinOp::Max, at(a), at(b)),
            TraceOp::Min(a, b) => pool.bin(BinOp::Min, at(a), at(b)),
            TraceOp::Fma(a, b, c) => pool.fma(at(a), at(b), at(c)),
            TraceOp::Neg(a) => pool.un(UnOp::Neg, at(a)),
            TraceOp::Abs(a) => pool.un(UnOp::Abs, at(a)),
            TraceOp::Sqrt(a) => pool.un(UnOp::Sqrt, at(a)),
            TraceOp::Exp(a) => pool.un(UnOp::Exp, at(a)),
            TraceOp::Log(a) => pool.un(UnOp::Log, at(a)),
            TraceOp::Tanh(a) => pool.un(UnOp::Tanh, at(a)),
            TraceOp::Math(m, a) => pool.un(UnOp::Math(m), at(a)),
            TraceOp::Pow(a, b) => pool.bin(BinOp::Pow, at(a), at(b)),
            TraceOp::CopySign(a, b) => pool.bin(BinOp::CopySign, at(a), at(b)),
            TraceOp::Cmp(p, a, b) => pool.cmp(p, at(a), at(b)),
            TraceOp::Select(c, a, b) => pool.select(at(c), at(a), at(b))?,
        };
        v.push(x);
    }
    v.get(*body.outputs.first()? as usize).copied()
}

#[allow(clippy::too_many_arguments)]
fn unify(
    ctx: &Ctx,
    geo: Geometry,
    body: &Body,
    v: ValueId,
    x: ExprId,
    pos: usize,
    bind: &mut Vec<Option<ExprId>>,
    acc: &mut Option<ExprId>,
    row_scalars: &[ExprId],
) -> bool {
    if let Some(b) = bind[v as usize] {
        return b == x;
    }
    let pool = ctx.pool;
    let ok = match (body.ops[v as usize], pool.get(x)) {
        (TraceOp::Acc, _) => *acc.get_or_insert(x) == x,
        (TraceOp::Input(s), Expr::Load { input, index }) => {
            input == s && geo.pos(input, index as usize) == Some(pos)
        }
        (TraceOp::RowScalar(r), _) => row_scalars.get(r as usize) == Some(&x),
        (TraceOp::Const(a), Expr::Const(b)) => a == b,
        (TraceOp::Param(a), Expr::Param(b)) | (TraceOp::Dim(a), Expr::Dim(b)) => a == b,
        (op, e) => {
            let same_kind = matches!(
                (op, e),
                (TraceOp::Neg(_), Expr::Un(UnOp::Neg, _))
                    | (TraceOp::Abs(_), Expr::Un(UnOp::Abs, _))
                    | (TraceOp::Sqrt(_), Expr::Un(UnOp::Sqrt, _))
                    | (TraceOp::Exp(_), Expr::Un(UnOp::Exp, _))
                    | (TraceOp::Log(_), Expr::Un(UnOp::Log, _))
                    | (TraceOp::Tanh(_), Expr::Un(UnOp::Tanh, _))
                    | (TraceOp::Add(..), Expr::Bin(BinOp::Add, ..))
                    | (TraceOp::Sub(..), Expr::Bin(BinOp::Sub, ..))
                    | (TraceOp::Mul(..), Expr::Bin(BinOp::Mul, ..))
                    | (TraceOp::Div(..), Expr::Bin(BinOp::Div, ..))
                    | (TraceOp::Max(..), Expr::Bin(BinOp::Max, ..))
                    | (TraceOp::Min(..), Expr::Bin(BinOp::Min, ..))
                    | (TraceOp::Pow(..), Expr::Bin(BinOp::Pow, ..))
                    | (TraceOp::CopySign(..), Expr::Bin(BinOp::CopySign, ..))
                    | (TraceOp::Fma(..), Expr::Fma(..))
                    | (TraceOp::Select(..), Expr::Select(..))
            ) || matches!((op, e), (TraceOp::Cmp(p, ..), Expr::Cmp(q, ..)) if p == q)
                || matches!((op, e), (TraceOp::Math(m, _), Expr::Un(UnOp::Math(n), _)) if m == n);
            same_kind && {
                let ops = op.operands();
                let kids = pool.children(x);
                let try_order =
                    |kids: &[ExprId], bind: &mut Vec<Option<ExprId>>, acc: &mut Option<ExprId>| {
                        ops.len() == kids.len()
                            && ops
                                .iter()
                                .zip(kids)
                                .all(|(&o, &k)| unify(ctx, geo, body, o, k, pos, bind, acc, row_scalars))
                    };
                let (saved_bind, saved_acc) = (bind.clone(), *acc);
                try_order(&kids, bind, acc) || {
                    *bind = saved_bind;
                    *acc = saved_acc;
                    commutative(&op) && {
                        let mut swapped = kids.clone();
                        swapped.swap(0, 1);
                        try_order(&swapped, bind, acc)
                    }
                }
            }
        }
    };
    if ok {
        bind[v as usize] = Some(x);
    }
    ok
}

#[cfg(test)]
mod tree_tests {
    use super::*;
    use crate::trace::CmpPred;

    fn order_insensitive_combine(ops: Vec<TraceOp>) -> bool {
        let out = ops.len() as ValueId - 1;
        let combine = Body { ops, outputs: vec![out] };
        let binary = split_combine(&combine).expect("one element root").0;
        order_insensitive(&mut ExprPool::new(), &binary)
    }

    #[test]
    fn only_order_insensitive_combines_are_taken_as_trees() {
        use TraceOp::*;
        // f32::max's NaN-ignoring step: a tree of it is the same fold.
        let maxnum = vec![Acc, Cmp(CmpPred::Unord, 0, 0), Input(0), Abs(2), Max(3, 0), Select(1, 3, 4)];
        assert!(order_insensitive_combine(maxnum));
        // A float sum depends on the order: a sum tree is not the fold.
        assert!(!order_insensitive_combine(vec![Acc, Input(0), Abs(1), Add(0, 2)]));
        // x86 `max` alone returns its second operand on NaN: not commutative.
        assert!(!order_insensitive_combine(vec![Acc, Input(0), Abs(1), Max(2, 0)]));
    }
}
