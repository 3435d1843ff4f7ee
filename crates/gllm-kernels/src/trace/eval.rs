//! Runs an [`OpTrace`] on concrete data: the tool that proves a trace right.

use super::cfg::libm_call;
use super::{Body, ComputePattern, OpTrace, TraceOp};

/// Why a trace could not be evaluated on the given data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("expected {expected} input slices, got {got}")]
    InputCount { expected: usize, got: usize },
    #[error("expected {expected} output slices, got {got}")]
    OutputCount { expected: usize, got: usize },
    #[error("slice {which} has {got} elements, expected {expected}")]
    Length { which: String, expected: usize, got: usize },
    #[error("trace needs parameter or dimension {0}, which was not given")]
    Missing(String),
    #[error("malformed trace: {0}")]
    Malformed(String),
}

/// What the leaves of a body evaluate to.
struct Env<'a> {
    inputs: &'a [f32],
    params: &'a [f32],
    dims: &'a [usize],
    acc: f32,
    row: &'a [f32],
    folds: &'a [f32],
}

fn mask(b: bool) -> f32 {
    f32::from_bits(if b { u32::MAX } else { 0 })
}

/// Evaluates `body`, writing its outputs into `out`.
fn run_body(body: &Body, env: &Env, vals: &mut Vec<f32>, out: &mut [f32]) -> Result<(), EvalError> {
    vals.clear();
    for op in &body.ops {
        let v = |i: u32| vals[i as usize];
        let missing = |what: &str, k: u8| EvalError::Missing(format!("{what} {k}"));
        let x = match *op {
            TraceOp::Input(k) => *env.inputs.get(k as usize).ok_or_else(|| missing("input", k))?,
            TraceOp::Param(k) => *env.params.get(k as usize).ok_or_else(|| missing("param", k))?,
            TraceOp::Dim(k) => *env.dims.get(k as usize).ok_or_else(|| missing("dim", k))? as f32,
            TraceOp::Const(b) => f32::from_bits(b),
            TraceOp::Acc => env.acc,
            TraceOp::FoldResult(k) => *env.folds.get(k as usize).ok_or_else(|| missing("fold result", k))?,
            TraceOp::RowScalar(k) => *env.row.get(k as usize).ok_or_else(|| missing("row scalar", k))?,
            TraceOp::Add(a, b) => v(a) + v(b),
            TraceOp::Sub(a, b) => v(a) - v(b),
            TraceOp::Mul(a, b) => v(a) * v(b),
            TraceOp::Div(a, b) => v(a) / v(b),
            TraceOp::Max(a, b) => {
                if v(a) > v(b) {
                    v(a)
                } else {
                    v(b)
                }
            }
            TraceOp::Min(a, b) => {
                if v(a) < v(b) {
                    v(a)
                } else {
                    v(b)
                }
            }
            TraceOp::Fma(a, b, c) => v(a).mul_add(v(b), v(c)),
            TraceOp::Neg(a) => f32::from_bits(v(a).to_bits() ^ 0x8000_0000),
            TraceOp::Abs(a) => f32::from_bits(v(a).to_bits() & 0x7FFF_FFFF),
            TraceOp::Sqrt(a) => v(a).sqrt(),
            TraceOp::Exp(a) => libm_call(super::cfg::MathFn::Exp, v(a)),
            TraceOp::Log(a) => libm_call(super::cfg::MathFn::Log, v(a)),
            TraceOp::Tanh(a) => libm_call(super::cfg::MathFn::Tanh, v(a)),
            TraceOp::Math(m, a) => m.eval(v(a)),
            TraceOp::Pow(a, b) => super::cfg::libm_pow(v(a), v(b)),
            TraceOp::CopySign(a, b) => v(a).copysign(v(b)),
            TraceOp::Cmp(p, a, b) => mask(p.eval(v(a), v(b))),
            TraceOp::Select(c, a, b) => {
                if v(c).to_bits() != 0 {
                    v(a)
                } else {
                    v(b)
                }
            }
        };
        vals.push(x);
    }
    for (slot, &o) in out.iter_mut().zip(&body.outputs) {
        *slot = vals[o as usize];
    }
    Ok(())
}

impl OpTrace {
    /// Runs the trace on concrete data, as the scalar reference would.
    ///
    /// * Elementwise / injective: all inputs and outputs have the same length.
    /// * Reduction: inputs are one row; `outputs[0]` has one element.
    /// * NormLike: inputs and outputs are one row.
    /// * Gemm: `inputs = [A (m·k), B (k·n)]`, `outputs = [C (m·n)]`, `dims` as the signature orders them.
    pub fn eval(
        &self,
        inputs: &[&[f32]],
        params: &[f32],
        dims: &[usize],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), EvalError> {
        if inputs.len() != self.num_inputs {
            return Err(EvalError::InputCount { expected: self.num_inputs, got: inputs.len() });
        }
        if outputs.len() != self.body.outputs.len() {
            return Err(EvalError::OutputCount { expected: self.body.outputs.len(), got: outputs.len() });
        }
        let mut vals = Vec::new();
        let mut out = vec![0.0; self.body.outputs.len()];
        let check = |which: String, got: usize, expected: usize| {
            if got == expected {
                Ok(())
            } else {
                Err(EvalError::Length { which, expected, got })
            }
        };
        match self.pattern {
            ComputePattern::Gemm { m, n, k, layout } => {
                let get = |d: u8| {
                    dims.get(d as usize).copied().ok_or_else(|| EvalError::Missing(format!("dim {d}")))
                };
                let (m, n, k) = (get(m)?, get(n)?, get(k)?);
                check("A".into(), inputs[0].len(), m * k)?;
                check("B".into(), inputs[1].len(), k * n)?;
                check("C".into(), outputs[0].len(), m * n)?;
                for i in 0..m {
                    for j in 0..n {
                        let row_data = |p: usize| {
                            vec![inputs[0][layout.a_index(i, p, m, k)], inputs[1][layout.b_index(p, j, n, k)]]
                        };
                        let (folds, row) = self.row_values(k, row_data, params, dims, &mut vals)?;
                        let env = Env { inputs: &[], params, dims, acc: 0.0, row: &row, folds: &folds };
                        run_body(&self.body, &env, &mut vals, &mut out)?;
                        outputs[0][i * n + j] = out[0];
                    }
                }
            }
            ComputePattern::Reduction => {
                let len = inputs.first().map_or(0, |s| s.len());
                for (i, s) in inputs.iter().enumerate() {
                    check(format!("input {i}"), s.len(), len)?;
                }
                check("output 0".into(), outputs[0].len(), 1)?;
                let (folds, row) =
                    self.row_values(len, |p| inputs.iter().map(|s| s[p]).collect(), params, dims, &mut vals)?;
                let env = Env { inputs: &[], params, dims, acc: 0.0, row: &row, folds: &folds };
                run_body(&self.body, &env, &mut vals, &mut out)?;
                outputs[0][0] = out[0];
            }
            _ => {
                let len = outputs.first().map_or(0, |s| s.len());
                for (i, s) in inputs.iter().enumerate() {
                    check(format!("input {i}"), s.len(), len)?;
                }
                for (i, s) in outputs.iter().enumerate() {
                    check(format!("output {i}"), s.len(), len)?;
                }
                let (folds, row) =
                    self.row_values(len, |p| inputs.iter().map(|s| s[p]).collect(), params, dims, &mut vals)?;
                let mut elem = vec![0.0; inputs.len()];
                for j in 0..len {
                    for (e, s) in elem.iter_mut().zip(inputs) {
                        *e = s[j];
                    }
                    let env = Env { inputs: &elem, params, dims, acc: 0.0, row: &row, folds: &folds };
                    run_body(&self.body, &env, &mut vals, &mut out)?;
                    for (o, &v) in outputs.iter_mut().zip(&out) {
                        o[j] = v;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the folds over `len` positions and computes the row scalars.
    fn row_values(
        &self,
        len: usize,
        at: impl Fn(usize) -> Vec<f32>,
        params: &[f32],
        dims: &[usize],
        vals: &mut Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>), EvalError> {
        let mut folds: Vec<f32> = Vec::with_capacity(self.folds.len());
        let mut row: Vec<f32> = Vec::new();
        let mut acc_out = [0.0f32];
        for fold in &self.folds {
            // Row scalars this fold may use depend only on earlier folds.
            row = self.row_scalars(&folds, params, dims, vals)?;
            let mut acc = f32::from_bits(fold.identity);
            for p in 0..len {
                let elems = at(p);
                let env = Env { inputs: &elems, params, dims, acc, row: &row, folds: &folds };
                run_body(&fold.combine, &env, vals, &mut acc_out)?;
                acc = acc_out[0];
            }
            folds.push(acc);
        }
        if !self.row.ops.is_empty() {
            row = self.row_scalars(&folds, params, dims, vals)?;
        }
        Ok((folds, row))
    }

    /// Row scalars computable from the folds done so far (NaN placeholders
    /// for the others, which a well-formed trace never reads).
    fn row_scalars(
        &self,
        folds: &[f32],
        params: &[f32],
        dims: &[usize],
        vals: &mut Vec<f32>,
    ) -> Result<Vec<f32>, EvalError> {
        if self.row.ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut padded = folds.to_vec();
        padded.resize(self.folds.len(), f32::NAN);
        let env = Env { inputs: &[], params, dims, acc: 0.0, row: &[], folds: &padded };
        let mut out = vec![0.0; self.row.outputs.len()];
        run_body(&self.row, &env, vals, &mut out)?;
        Ok(out)
    }
}
