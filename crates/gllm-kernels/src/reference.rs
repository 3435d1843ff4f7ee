//! Scalar reference execution of a graph: every node evaluated by calling
//! its registered scalar function, in topological order, with no JIT.
//!
//! ```text
//!   SemanticGraph ──[per node: registry fn over rows / elements / matrices]──> outputs
//! ```
//!
//! This is the oracle a compiled graph is compared with end to end (a whole
//! model runs through it behind `gllm run --reference`). It knows how to
//! *call* each function form — per element, per row, a matrix product per
//! batch element, a rotary pair per head — but nothing about what any
//! function computes.

use crate::graph::{BatchLayout, MatMulParams, OpParams, SemanticGraph, TensorId, TensorRef};
use crate::scalar::{AbiValue, Arg, FnForm, RegisteredOp, Returns, ScalarOpRegistry};
use crate::trace::ComputePattern;
use rayon::prelude::*;
use thiserror::Error;

/// Why a graph could not be evaluated.
#[derive(Debug, Error)]
pub enum ReferenceError {
    #[error("the graph takes {want} inputs, {got} given")]
    InputCount { want: usize, got: usize },
    #[error("{what} has {got} elements, the graph declares {want}")]
    Length { what: String, got: usize, want: usize },
    #[error("weight `{0}` is missing")]
    MissingWeight(String),
    #[error("node `{node}`: {problem}")]
    Node { node: String, problem: String },
}

/// Evaluates `sem` on `inputs` (in graph input order) and the weights
/// `weight` returns by name; returns the graph's outputs in order.
pub fn evaluate<'w>(
    sem: &SemanticGraph,
    registry: &ScalarOpRegistry,
    inputs: &[&[f32]],
    weight: &dyn Fn(&str) -> Option<&'w [f32]>,
) -> Result<Vec<Vec<f32>>, ReferenceError> {
    evaluate_keeping(sem, registry, inputs, weight, Keep::Outputs)
}

/// Like [`evaluate`], but returns the value of every tensor, indexed by
/// [`TensorId`] (inputs and weights copied): what a check of one fusion
/// group in the middle of a graph needs as its inputs and its answer.
pub fn evaluate_all<'w>(
    sem: &SemanticGraph,
    registry: &ScalarOpRegistry,
    inputs: &[&[f32]],
    weight: &dyn Fn(&str) -> Option<&'w [f32]>,
) -> Result<Vec<Vec<f32>>, ReferenceError> {
    evaluate_keeping(sem, registry, inputs, weight, Keep::All)
}

/// Which tensors an evaluation returns (copying every weight of a model
/// for each call of [`evaluate`] would cost more than the evaluation).
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    Outputs,
    All,
}

fn evaluate_keeping<'w>(
    sem: &SemanticGraph,
    registry: &ScalarOpRegistry,
    inputs: &[&[f32]],
    weight: &dyn Fn(&str) -> Option<&'w [f32]>,
    keep: Keep,
) -> Result<Vec<Vec<f32>>, ReferenceError> {
    let mut values: Vec<Option<Vec<f32>>> = vec![None; sem.tensors.len()];
    let mut borrowed: Vec<Option<&[f32]>> = vec![None; sem.tensors.len()];
    let n_inputs = sem.graph.inputs.len();
    if inputs.len() != n_inputs {
        return Err(ReferenceError::InputCount { want: n_inputs, got: inputs.len() });
    }
    for t in &sem.tensors {
        let data = match &t.source {
            TensorRef::Input(k) => inputs[*k],
            TensorRef::Weight(name) => {
                weight(name).ok_or_else(|| ReferenceError::MissingWeight(name.clone()))?
            }
            TensorRef::Node { .. } => continue,
        };
        if data.len() != t.desc.numel() {
            return Err(ReferenceError::Length {
                what: t.source.to_string(),
                got: data.len(),
                want: t.desc.numel(),
            });
        }
        borrowed[t.id] = Some(data);
    }
    for &id in &sem.order {
        let node = &sem.nodes[id];
        let cnode = sem.node(id);
        let fail = |problem: String| ReferenceError::Node { node: cnode.name.clone(), problem };
        let op = registry.get(cnode.op.kind).map_err(|e| fail(e.to_string()))?;
        let ins: Vec<&[f32]> = node
            .inputs
            .iter()
            .map(|&t| {
                borrowed[t]
                    .or(values[t].as_deref())
                    .ok_or_else(|| fail(format!("input tensor {t} not computed")))
            })
            .collect::<Result<_, _>>()?;
        let [out_id] = node.outputs[..] else {
            return Err(fail(format!(
                "{} outputs (the reference evaluates single-output nodes)",
                node.outputs.len()
            )));
        };
        let out_desc = &sem.tensors[out_id].desc;
        let mut out = vec![0.0f32; out_desc.numel()];
        let params = cnode.op.params.scalar_args();
        match &cnode.op.params {
            OpParams::MatMul(p) => matmul(op, p, &ins, &mut out).map_err(fail)?,
            OpParams::PairedHalves { period } => paired_halves(op, *period, &ins, &mut out).map_err(fail)?,
            _ => match op.signature().form() {
                FnForm::PerElement => per_element(op, &ins, &params, &mut out).map_err(fail)?,
                FnForm::Slices => {
                    let data = &sem.tensors[node.inputs[0]].desc;
                    rows(op, &ins, &params, data.rows(), data.row_len(), &mut [&mut out]).map_err(fail)?
                }
            },
        }
        values[out_id] = Some(out);
    }
    let value_of = |values: &mut [Option<Vec<f32>>], t: TensorId| {
        values[t].take().or_else(|| borrowed[t].map(<[f32]>::to_vec)).unwrap_or_default()
    };
    Ok(match keep {
        Keep::All => (0..sem.tensors.len()).map(|t| value_of(&mut values, t)).collect(),
        // An output listed twice gets its value twice (so cloned, not taken).
        Keep::Outputs => sem
            .output_tensors()
            .into_iter()
            .map(|t| values[t].clone().or_else(|| borrowed[t].map(<[f32]>::to_vec)).unwrap_or_default())
            .collect(),
    })
}

fn call(op: &RegisteredOp, args: &[AbiValue]) -> Result<Option<f32>, String> {
    // SAFETY: every pointer argument points into a buffer of at least the
    // length the op's signature declares for it (the callers size them from
    // the same dimensions they pass).
    unsafe { op.func().call(args) }
        .ok_or_else(|| format!("arguments do not match `{}`'s signature", op.kind().name()))
}

pub(crate) fn per_element(
    op: &RegisteredOp,
    ins: &[&[f32]],
    params: &[f32],
    out: &mut [f32],
) -> Result<(), String> {
    if ins.iter().any(|v| v.is_empty() && !out.is_empty()) {
        return Err("an empty input broadcast over a non-empty output".into());
    }
    let mut args = Vec::with_capacity(op.signature().args().len());
    for (i, o) in out.iter_mut().enumerate() {
        args.clear();
        let (mut k, mut p) = (0, 0);
        for a in op.signature().args() {
            args.push(match a {
                Arg::Element { .. } => {
                    let v = ins.get(k).ok_or("too few inputs")?;
                    k += 1;
                    AbiValue::F32(v[i % v.len()])
                }
                _ => {
                    p += 1;
                    AbiValue::F32(*params.get(p - 1).ok_or("too few scalar parameters")?)
                }
            });
        }
        *o = call(op, &args)?.ok_or("a per-element function returned nothing")?;
    }
    Ok(())
}

/// Row functions (norms, softmax, reductions): one call per row of `n`;
/// inputs are full or one broadcast row; one output buffer per output
/// argument (a reduction's single output holds one value per row).
pub(crate) fn rows(
    op: &RegisteredOp,
    ins: &[&[f32]],
    params: &[f32],
    rows: usize,
    n: usize,
    outs: &mut [&mut [f32]],
) -> Result<(), String> {
    let sig = op.signature();
    let per_row = sig.returns() == Returns::RowScalar;
    let want_out = if per_row { rows } else { rows * n };
    if outs.len() != sig.num_outputs().max(usize::from(per_row)) || outs.iter().any(|o| o.len() != want_out) {
        return Err(format!("{} output(s) for {rows} rows of {n}", outs.len()));
    }
    for v in ins {
        if v.len() != n && v.len() != rows * n {
            return Err(format!("input of {} elements for {rows} rows of {n}", v.len()));
        }
    }
    for r in 0..rows {
        let (mut k, mut j, mut p) = (0, 0, 0);
        let mut args = Vec::new();
        for a in sig.args() {
            args.push(match a {
                Arg::Input { .. } => {
                    let v = ins.get(k).ok_or("too few inputs")?;
                    k += 1;
                    AbiValue::ConstPtr(v[if v.len() == n { 0 } else { r * n }..].as_ptr())
                }
                Arg::Output { .. } => {
                    j += 1;
                    AbiValue::MutPtr(outs[j - 1][r * n..].as_mut_ptr())
                }
                Arg::Dim { .. } => AbiValue::Usize(n),
                Arg::Scalar { .. } | Arg::Element { .. } => {
                    p += 1;
                    AbiValue::F32(*params.get(p - 1).ok_or("too few scalar parameters")?)
                }
            });
        }
        if let Some(v) = call(op, &args)? {
            outs[0][r] = v;
        }
    }
    Ok(())
}

/// Index of element (r, c) of batch element `i` of an operand holding
/// `count` elements of `rows × cols` in `layout`.
fn at(layout: BatchLayout, count: usize, i: usize, rows: usize, cols: usize, r: usize, c: usize) -> usize {
    match layout {
        BatchLayout::Stacked => (i * rows + r) * cols + c,
        BatchLayout::Interleaved => r * (count * cols) + i * cols + c,
    }
}

/// Columns of C computed per call of the scalar matmul: B is gathered in
/// column blocks so that its rows stay in cache across the function's
/// strided inner loop. Each output element is still the function's own sum
/// over k, in its order.
const COLUMN_BLOCK: usize = 64;

/// A (batched) product: each batch element's operands gathered into
/// contiguous row-major matrices (B a block of columns at a time),
/// multiplied by the scalar function, and scattered into C.
pub(crate) fn matmul(
    op: &RegisteredOp,
    p: &MatMulParams,
    ins: &[&[f32]],
    out: &mut [f32],
) -> Result<(), String> {
    let [a, b] = ins[..] else { return Err(format!("{} inputs to a matmul", ins.len())) };
    let (m, n, k) = (p.m, p.n, p.k);
    if p.b_shared_by == 0 || p.batch % p.b_shared_by != 0 {
        return Err(format!("batch {} is not a multiple of b_shared_by {}", p.batch, p.b_shared_by));
    }
    let bb = p.batch / p.b_shared_by;
    if a.len() != p.batch * m * k || b.len() != bb * k * n || out.len() != p.batch * m * n {
        return Err(format!("operand sizes {}, {}, {} for {p:?}", a.len(), b.len(), out.len()));
    }
    // The function's own operand layout (learned by Phase 0): the gathered
    // operands are laid out the way it reads them.
    let layout = match op.trace().map_err(|e| e.to_string())?.pattern {
        ComputePattern::Gemm { layout, .. } => layout,
        _ => return Err(format!("`{}` is not a matrix product", op.kind())),
    };
    let mut ai = Vec::with_capacity(m * k);
    for i in 0..p.batch {
        ai.clear();
        if layout.a_transposed {
            ai.resize(m * k, 0.0);
            for r in 0..m {
                for c in 0..k {
                    ai[c * m + r] = a[at(p.a_layout, p.batch, i, m, k, r, c)];
                }
            }
        }
        for r in (0..m).filter(|_| !layout.a_transposed) {
            if p.a_layout == BatchLayout::Stacked || p.batch == 1 {
                let start = at(p.a_layout, p.batch, i, m, k, r, 0);
                ai.extend_from_slice(&a[start..start + k]);
            } else {
                ai.extend((0..k).map(|c| a[at(p.a_layout, p.batch, i, m, k, r, c)]));
            }
        }
        let j = i / p.b_shared_by;
        // Column blocks are independent: computed in parallel, each by one
        // call of the scalar function on its own gathered block of B.
        let blocks: Vec<usize> = (0..n).step_by(COLUMN_BLOCK).collect();
        let results: Vec<Result<Vec<f32>, String>> = blocks
            .par_iter()
            .map(|&c0| {
                let nb = COLUMN_BLOCK.min(n - c0);
                let mut bi = Vec::with_capacity(k * nb);
                for r in 0..k {
                    if p.transpose_b {
                        bi.extend((c0..c0 + nb).map(|c| b[at(p.b_layout, bb, j, n, k, c, r)]));
                    } else {
                        let start = at(p.b_layout, bb, j, k, n, r, c0);
                        bi.extend_from_slice(&b[start..start + nb]);
                    }
                }
                if layout.b_transposed {
                    // k × nb gathered; the function reads nb × k.
                    let mut t = vec![0.0f32; k * nb];
                    for r in 0..k {
                        for c in 0..nb {
                            t[c * k + r] = bi[r * nb + c];
                        }
                    }
                    bi = t;
                }
                let mut ci = vec![0.0f32; m * nb];
                call(
                    op,
                    &[
                        AbiValue::ConstPtr(ai.as_ptr()),
                        AbiValue::ConstPtr(bi.as_ptr()),
                        AbiValue::MutPtr(ci.as_mut_ptr()),
                        AbiValue::Usize(m),
                        AbiValue::Usize(nb),
                        AbiValue::Usize(k),
                    ],
                )?;
                Ok(ci)
            })
            .collect();
        for (&c0, ci) in blocks.iter().zip(results) {
            let ci = ci?;
            let nb = COLUMN_BLOCK.min(n - c0);
            for r in 0..m {
                for c in 0..nb {
                    out[at(p.c_layout, p.batch, i, m, n, r, c0 + c)] = ci[r * nb + c];
                }
            }
        }
    }
    Ok(())
}

/// A function of two halves applied to every `period`-long block of each
/// row, with the row's line of every table (the layout the compiled
/// paired-halves group uses; RoPE's heads and cos/sin tables).
fn paired_halves(op: &RegisteredOp, period: usize, ins: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
    let Some((x, tables)) = ins.split_first() else { return Err("no inputs".into()) };
    let half = period / 2;
    let Some(first) = tables.first() else { return Err("paired halves without tables".into()) };
    if half == 0 || tables.iter().any(|t| t.len() != first.len()) || first.len() % half != 0 {
        return Err(format!(
            "tables of {:?} elements for period {period}",
            tables.iter().map(|t| t.len()).collect::<Vec<_>>()
        ));
    }
    let rows = first.len() / half;
    if rows == 0 || x.len() % rows != 0 || (x.len() / rows) % period != 0 || out.len() != x.len() {
        return Err(format!("{} elements for {rows} rows of blocks of {period}", x.len()));
    }
    let width = x.len() / rows;
    let mut args = Vec::with_capacity(op.signature().args().len());
    for r in 0..rows {
        for b in 0..width / period {
            let base = r * width + b * period;
            let (o0, o1) = out[base..base + period].split_at_mut(half);
            args.clear();
            let (mut inputs, mut outputs) = (0, 0);
            for a in op.signature().args() {
                args.push(match a {
                    Arg::Input { .. } => {
                        inputs += 1;
                        match inputs {
                            1 => AbiValue::ConstPtr(x[base..].as_ptr()),
                            2 => AbiValue::ConstPtr(x[base + half..].as_ptr()),
                            i => match tables.get(i - 3) {
                                Some(t) => AbiValue::ConstPtr(t[r * half..].as_ptr()),
                                None => {
                                    return Err(format!(
                                        "a function with more inputs than 2 + {} tables",
                                        tables.len()
                                    ))
                                }
                            },
                        }
                    }
                    Arg::Output { .. } => {
                        outputs += 1;
                        AbiValue::MutPtr(if outputs == 1 { o0.as_mut_ptr() } else { o1.as_mut_ptr() })
                    }
                    Arg::Dim { .. } => AbiValue::Usize(half),
                    _ => return Err(format!("argument `{}` in a paired-halves function", a.name())),
                });
            }
            if inputs != 2 + tables.len() || outputs != 2 {
                return Err(format!("{inputs} inputs and {outputs} outputs for {} tables", tables.len()));
            }
            call(op, &args)?;
        }
    }
    Ok(())
}
