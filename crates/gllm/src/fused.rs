//! `FusedGraph`: the front end's graph of model-level operations, and its
//! expansion into the compiler's atomic-op [`CompilerGraph`].
//!
//! ```text
//!   model config ──> FusedGraph (FusedQkvRope, Gqa, SwiGlu, …) ──[expand]──> CompilerGraph ──> gllm-kernels
//! ```
//!
//! A model is described with a handful of operations a model author thinks
//! in; the compiler only ever sees atomic ops (one scalar reference function
//! each) and decides itself what to fuse. Expansion is one table:
//!
//! | fused op | inputs | atomic nodes (names `scope.part`) |
//! |---|---|---|
//! | `FusedRmsLinear` | x, norm weight, W | `norm` rms_norm → `linear` matmul |
//! | `FusedQkvRope` | x, norm weight, Wq, Wk, Wv, cos, sin | `attn_norm` rms_norm → `attn_q`, `attn_k`, `attn_v` matmul → `rope_q`, `rope_k` rope; outputs q, k, v |
//! | `Rope` | x, cos, sin | `rope` |
//! | `SwiGlu` | x, Wgate, Wup, Wdown | `ffn_gate`, `ffn_up` matmul → `ffn_silu` silu → `ffn_gated` mul → `ffn_down` matmul |
//! | `FlashAttention` | q, k, v, mask | as `Gqa` with one query head per KV head |
//! | `Gqa` | q, k, v, mask | `attn_scores` batched matmul q·kᵀ → `attn_scale` scale 1/√d → `attn_mask` add → `attn_softmax` softmax → `attn_pv` batched matmul ·v |
//! | `MoERouting` | x, Wrouter `[h, E]`, Wgate and Wup `[h, E·f]`, Wdown `[E·f, h]` (experts side by side) | `router` matmul → `router_top2` top2_softmax (weights of the two chosen experts, zero elsewhere); `ffn_gate`, `ffn_up` matmul → `ffn_silu` → `ffn_gated` (all experts at once) → `ffn_down` batched matmul (one per expert) → `mix` batched matmul (per token: weights · expert outputs) |
//! | `AtomicOp { op_type }` | the op's inputs | one node named `scope`, op looked up by name in the registry |
//!
//! Shapes come from the inputs: activations are `[tokens, width]`, weights
//! `[in, out]` (so `x · W`), attention heads are column blocks.

use gllm_kernels::graph::{
    BatchLayout, CompilerGraph, CompilerOp, MatMulParams, OpParams, TensorDesc, TensorRef,
};
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use thiserror::Error;

/// A value in a [`FusedGraph`]: a graph input, an output of a node, or a weight.
#[derive(Debug, Clone, PartialEq)]
pub enum FusedValue {
    Input(usize),
    Node { node: usize, output: usize },
    Weight(String),
}

/// The model-level operations; see the module table for their expansion.
#[derive(Debug, Clone, PartialEq)]
pub enum FusedOp {
    /// RMSNorm (with its weight) feeding one projection.
    FusedRmsLinear { eps: f32 },
    /// The attention prologue: RMSNorm, the Q/K/V projections, rotary
    /// embedding of Q and K. Three outputs: q, k, v.
    FusedQkvRope { eps: f32, head_dim: usize, theta: f32 },
    /// Rotary embedding on the halves of every `head_dim` block.
    Rope { head_dim: usize, theta: f32 },
    /// `(silu(x·Wg) ⊙ x·Wu) · Wd`.
    SwiGlu,
    /// Multi-head attention (every query head has its own K/V head).
    FlashAttention { heads: usize, head_dim: usize },
    /// Grouped-query attention: `heads / kv_heads` query heads share a K/V head.
    Gqa { heads: usize, kv_heads: usize, head_dim: usize },
    /// A mixture of SwiGLU experts: router, top-k weights (a softmax over the
    /// chosen experts' router logits), the weighted sum of the experts'
    /// outputs. Every expert runs on every token (dense); `top_k` is 2.
    MoERouting { experts: usize, top_k: usize },
    /// One registry operator by name (`matmul`, `add`, `rms_norm`, …) with
    /// its scalar parameters (eps, a scale factor).
    AtomicOp { op_type: String, params: Vec<f32> },
}

impl FusedOp {
    /// The name used in errors and `explain`.
    pub fn name(&self) -> &str {
        match self {
            FusedOp::FusedRmsLinear { .. } => "FusedRMSLinear",
            FusedOp::FusedQkvRope { .. } => "FusedQkvRope",
            FusedOp::Rope { .. } => "RoPE",
            FusedOp::SwiGlu => "SwiGLU",
            FusedOp::FlashAttention { .. } => "FlashAttention",
            FusedOp::Gqa { .. } => "GQA",
            FusedOp::MoERouting { .. } => "MoERouting",
            FusedOp::AtomicOp { op_type, .. } => op_type,
        }
    }

    fn num_outputs(&self) -> usize {
        match self {
            FusedOp::FusedQkvRope { .. } => 3,
            _ => 1,
        }
    }
}

/// One operation: `scope` prefixes the names of the atomic nodes it expands to.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedNode {
    pub scope: String,
    pub op: FusedOp,
    pub inputs: Vec<FusedValue>,
}

/// A graph of model-level operations over named inputs and weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FusedGraph {
    pub inputs: Vec<(String, TensorDesc)>,
    pub weights: Vec<(String, TensorDesc)>,
    pub nodes: Vec<FusedNode>,
    pub outputs: Vec<FusedValue>,
}

/// Why a [`FusedGraph`] could not be expanded.
#[derive(Debug, Error, PartialEq)]
pub enum ExpandError {
    #[error("node `{scope}`: unknown op_type `{op_type}` (known: {known})")]
    UnknownOp { scope: String, op_type: String, known: String },
    #[error("node `{scope}` ({op}): {problem}")]
    Bad { scope: String, op: String, problem: String },
    #[error("node `{scope}` reads {value:?}, which does not exist (yet)")]
    Dangling { scope: String, value: FusedValue },
}

impl FusedGraph {
    pub fn new() -> FusedGraph {
        FusedGraph::default()
    }

    pub fn input(&mut self, name: impl Into<String>, desc: TensorDesc) -> FusedValue {
        self.inputs.push((name.into(), desc));
        FusedValue::Input(self.inputs.len() - 1)
    }

    pub fn weight(&mut self, name: impl Into<String>, desc: TensorDesc) -> FusedValue {
        let name = name.into();
        self.weights.push((name.clone(), desc));
        FusedValue::Weight(name)
    }

    /// Appends a node; returns its outputs (three for `FusedQkvRope`, else one).
    pub fn node(
        &mut self,
        scope: impl Into<String>,
        op: FusedOp,
        inputs: Vec<FusedValue>,
    ) -> Vec<FusedValue> {
        let n = op.num_outputs();
        self.nodes.push(FusedNode { scope: scope.into(), op, inputs });
        let node = self.nodes.len() - 1;
        (0..n).map(|output| FusedValue::Node { node, output }).collect()
    }

    /// [`FusedGraph::node`] for single-output operations.
    pub fn node1(&mut self, scope: impl Into<String>, op: FusedOp, inputs: Vec<FusedValue>) -> FusedValue {
        self.node(scope, op, inputs).swap_remove(0)
    }

    pub fn output(&mut self, v: FusedValue) {
        self.outputs.push(v);
    }

    /// Expands into the atomic graph (see the module table). Operator names
    /// of `AtomicOp`s are looked up in `registry`.
    pub fn expand(&self, registry: &ScalarOpRegistry) -> Result<CompilerGraph, ExpandError> {
        let mut g = CompilerGraph::new();
        for (name, d) in &self.inputs {
            g.input(name.clone(), d.clone());
        }
        for (name, d) in &self.weights {
            g.weight(name.clone(), d.clone());
        }
        let mut produced: Vec<Vec<TensorRef>> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let ins: Vec<TensorRef> = node
                .inputs
                .iter()
                .map(|v| {
                    resolve(v, &produced, &g)
                        .ok_or_else(|| ExpandError::Dangling { scope: node.scope.clone(), value: v.clone() })
                })
                .collect::<Result<_, _>>()?;
            let mut x = Expander { g: &mut g, scope: &node.scope, op: node.op.name() };
            let outs = x.expand(&node.op, &ins, registry)?;
            produced.push(outs);
        }
        for v in &self.outputs {
            let r = resolve(v, &produced, &g)
                .ok_or_else(|| ExpandError::Dangling { scope: "outputs".into(), value: v.clone() })?;
            g.output(r);
        }
        Ok(g)
    }
}

fn resolve(v: &FusedValue, produced: &[Vec<TensorRef>], g: &CompilerGraph) -> Option<TensorRef> {
    match v {
        FusedValue::Input(k) => (*k < g.inputs.len()).then_some(TensorRef::Input(*k)),
        FusedValue::Weight(name) => {
            g.weights.iter().any(|(n, _)| n == name).then(|| TensorRef::Weight(name.clone()))
        }
        FusedValue::Node { node, output } => produced.get(*node)?.get(*output).cloned(),
    }
}

struct Expander<'a> {
    g: &'a mut CompilerGraph,
    scope: &'a str,
    op: &'a str,
}

impl Expander<'_> {
    fn bad(&self, problem: impl Into<String>) -> ExpandError {
        ExpandError::Bad { scope: self.scope.to_string(), op: self.op.to_string(), problem: problem.into() }
    }

    fn name(&self, part: &str) -> String {
        format!("{}.{part}", self.scope)
    }

    fn desc(&self, r: &TensorRef) -> Result<TensorDesc, ExpandError> {
        self.g.desc(r).cloned().ok_or_else(|| self.bad(format!("{r} has no shape")))
    }

    /// `[rows, cols]` of a 2-D (or 1-D: one row) tensor.
    fn dims(&self, r: &TensorRef) -> Result<(usize, usize), ExpandError> {
        let d = self.desc(r)?;
        match d.shape[..] {
            [n] => Ok((1, n)),
            [m, n] => Ok((m, n)),
            _ => Err(self.bad(format!("{r} has shape {:?}; expected [rows, cols]", d.shape))),
        }
    }

    fn arity(&self, ins: &[TensorRef], want: usize) -> Result<(), ExpandError> {
        if ins.len() != want {
            return Err(self.bad(format!("takes {want} inputs, {} given", ins.len())));
        }
        Ok(())
    }

    /// The node `scope.part` computing `x · w`.
    fn matmul(&mut self, part: &str, x: &TensorRef, w: &TensorRef) -> Result<TensorRef, ExpandError> {
        let name = self.name(part);
        self.product(name, &format!("`{part}`: "), x, w)
    }

    /// A plain `[m, k] · [k, n]` node named `name`; a shape error starts with `context`.
    fn product(
        &mut self,
        name: String,
        context: &str,
        x: &TensorRef,
        w: &TensorRef,
    ) -> Result<TensorRef, ExpandError> {
        let (m, k) = self.dims(x)?;
        let (wk, n) = self.dims(w)?;
        if wk != k {
            return Err(self.bad(format!("{context}[{m}, {k}] · [{wk}, {n}]: inner dimensions differ")));
        }
        Ok(self.g.node(
            name,
            CompilerOp::matmul(MatMulParams::new(m, n, k)),
            vec![x.clone(), w.clone()],
            TensorDesc::f32([m, n]),
        ))
    }

    fn unary(&mut self, part: &str, op: CompilerOp, ins: Vec<TensorRef>) -> Result<TensorRef, ExpandError> {
        let d = self.desc(&ins[0])?;
        let name = self.name(part);
        Ok(self.g.node(name, op, ins, d))
    }

    fn expand(
        &mut self,
        op: &FusedOp,
        ins: &[TensorRef],
        registry: &ScalarOpRegistry,
    ) -> Result<Vec<TensorRef>, ExpandError> {
        match op {
            FusedOp::FusedRmsLinear { eps } => {
                self.arity(ins, 3)?;
                let normed =
                    self.unary("norm", CompilerOp::rms_norm(*eps), vec![ins[0].clone(), ins[1].clone()])?;
                Ok(vec![self.matmul("linear", &normed, &ins[2])?])
            }
            FusedOp::FusedQkvRope { eps, head_dim, theta: _ } => {
                self.arity(ins, 7)?;
                let normed = self.unary(
                    "attn_norm",
                    CompilerOp::rms_norm(*eps),
                    vec![ins[0].clone(), ins[1].clone()],
                )?;
                let q = self.matmul("attn_q", &normed, &ins[2])?;
                let k = self.matmul("attn_k", &normed, &ins[3])?;
                let v = self.matmul("attn_v", &normed, &ins[4])?;
                let rope = CompilerOp::rope(*head_dim);
                let tables = [ins[5].clone(), ins[6].clone()];
                let q = self.rope("rope_q", &rope, q, &tables, *head_dim)?;
                let k = self.rope("rope_k", &rope, k, &tables, *head_dim)?;
                Ok(vec![q, k, v])
            }
            FusedOp::Rope { head_dim, theta: _ } => {
                self.arity(ins, 3)?;
                let rope = CompilerOp::rope(*head_dim);
                Ok(vec![self.rope("rope", &rope, ins[0].clone(), &ins[1..], *head_dim)?])
            }
            FusedOp::SwiGlu => {
                self.arity(ins, 4)?;
                Ok(vec![self.swiglu("", &ins[0], &ins[1], &ins[2], &ins[3])?])
            }
            FusedOp::FlashAttention { heads, head_dim } => {
                self.arity(ins, 4)?;
                Ok(vec![self.attention(ins, *heads, *heads, *head_dim)?])
            }
            FusedOp::Gqa { heads, kv_heads, head_dim } => {
                self.arity(ins, 4)?;
                Ok(vec![self.attention(ins, *heads, *kv_heads, *head_dim)?])
            }
            FusedOp::MoERouting { experts, top_k } => Ok(vec![self.moe(ins, *experts, *top_k)?]),
            FusedOp::AtomicOp { op_type, params } => {
                let reg = registry.lookup(op_type).map_err(|_| ExpandError::UnknownOp {
                    scope: self.scope.to_string(),
                    op_type: op_type.clone(),
                    known: registry.iter().map(|o| o.kind().name()).collect::<Vec<_>>().join(", "),
                })?;
                Ok(vec![self.atomic(reg.kind(), params, ins)?])
            }
        }
    }

    fn rope(
        &mut self,
        part: &str,
        op: &CompilerOp,
        x: TensorRef,
        tables: &[TensorRef],
        head_dim: usize,
    ) -> Result<TensorRef, ExpandError> {
        let (_, width) = self.dims(&x)?;
        if head_dim == 0 || head_dim % 2 != 0 || width % head_dim != 0 {
            return Err(self
                .bad(format!("`{part}`: width {width} is not a whole number of even heads of {head_dim}")));
        }
        let mut inputs = vec![x];
        inputs.extend(tables.iter().cloned());
        self.unary(part, op.clone(), inputs)
    }

    fn swiglu(
        &mut self,
        prefix: &str,
        x: &TensorRef,
        wg: &TensorRef,
        wu: &TensorRef,
        wd: &TensorRef,
    ) -> Result<TensorRef, ExpandError> {
        let gate = self.matmul(&format!("{prefix}ffn_gate"), x, wg)?;
        let up = self.matmul(&format!("{prefix}ffn_up"), x, wu)?;
        let act = self.unary(&format!("{prefix}ffn_silu"), CompilerOp::new(OpKind::Silu), vec![gate])?;
        let gated = self.unary(&format!("{prefix}ffn_gated"), CompilerOp::new(OpKind::Mul), vec![act, up])?;
        self.matmul(&format!("{prefix}ffn_down"), &gated, wd)
    }

    fn attention(
        &mut self,
        ins: &[TensorRef],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<TensorRef, ExpandError> {
        let (q, k, v, mask) = (&ins[0], &ins[1], &ins[2], &ins[3]);
        let (seq, q_dim) = self.dims(q)?;
        let (ctx, kv_dim) = self.dims(k)?;
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(self.bad(format!("{heads} query heads cannot share {kv_heads} KV heads")));
        }
        if q_dim != heads * head_dim || kv_dim != kv_heads * head_dim || self.dims(v)? != (ctx, kv_dim) {
            return Err(self.bad(format!(
                "q [{seq}, {q_dim}], k [{ctx}, {kv_dim}], v {:?} do not match {heads} heads / {kv_heads} KV heads of {head_dim}",
                self.dims(v)?
            )));
        }
        if self.dims(mask)? != (seq, ctx) {
            return Err(self.bad(format!("the mask must be [{seq}, {ctx}]")));
        }
        let heads_p = MatMulParams {
            batch: heads,
            b_shared_by: heads / kv_heads,
            ..MatMulParams::new(seq, ctx, head_dim)
        };
        let scores_p = MatMulParams {
            transpose_b: true,
            a_layout: BatchLayout::Interleaved,
            b_layout: BatchLayout::Interleaved,
            c_layout: BatchLayout::Stacked,
            ..heads_p
        };
        let per_head = TensorDesc::f32([heads, seq, ctx]);
        let scores = self.g.node(
            self.name("attn_scores"),
            CompilerOp::matmul(scores_p),
            vec![q.clone(), k.clone()],
            per_head.clone(),
        );
        let scale = 1.0 / (head_dim as f32).sqrt();
        let scaled =
            self.g.node(self.name("attn_scale"), CompilerOp::scale(scale), vec![scores], per_head.clone());
        let masked = self.g.node(
            self.name("attn_mask"),
            CompilerOp::new(OpKind::Add),
            vec![scaled, mask.clone()],
            per_head.clone(),
        );
        let probs = self.g.node(self.name("attn_softmax"), CompilerOp::softmax(), vec![masked], per_head);
        let pv_p = MatMulParams {
            n: head_dim,
            k: ctx,
            a_layout: BatchLayout::Stacked,
            b_layout: BatchLayout::Interleaved,
            c_layout: BatchLayout::Interleaved,
            ..heads_p
        };
        Ok(self.g.node(
            self.name("attn_pv"),
            CompilerOp::matmul(pv_p),
            vec![probs, v.clone()],
            TensorDesc::f32([seq, q_dim]),
        ))
    }

    fn atomic(&mut self, kind: OpKind, params: &[f32], ins: &[TensorRef]) -> Result<TensorRef, ExpandError> {
        let first = ins.first().ok_or_else(|| self.bad("no inputs"))?;
        let scope = self.scope.to_string();
        let param = |i: usize, what: &str| {
            params.get(i).copied().ok_or_else(|| self.bad(format!("needs its {what} as parameter {i}")))
        };
        let op = match kind {
            OpKind::MatMul => {
                self.arity(ins, 2)?;
                return self.product(scope, "", &ins[0], &ins[1]);
            }
            OpKind::RmsNorm => CompilerOp::rms_norm(param(0, "eps")?),
            OpKind::LayerNorm => CompilerOp::layer_norm(param(0, "eps")?),
            OpKind::Softmax => CompilerOp::softmax(),
            OpKind::Rope => CompilerOp::rope(param(0, "head_dim")? as usize),
            _ if params.is_empty() => CompilerOp::new(kind),
            _ => CompilerOp::with_params(kind, OpParams::Scalars(params.to_vec())),
        };
        let d = self.desc(first)?;
        Ok(self.g.node(scope, op, ins.to_vec(), d))
    }

    /// Dense mixture of experts: every expert runs on every token, and the
    /// routing weights (zero for experts a token did not choose) mix them.
    /// The same result as dispatching each token to its chosen experts only.
    fn moe(&mut self, ins: &[TensorRef], experts: usize, top_k: usize) -> Result<TensorRef, ExpandError> {
        if experts < 2 || top_k != 2 {
            return Err(self.bad(format!(
                "top-{top_k} of {experts} experts: routing is top-2 (Mixtral-style) over at least 2 experts"
            )));
        }
        self.arity(ins, 5)?;
        let (x, router, gate, up, down) = (&ins[0], &ins[1], &ins[2], &ins[3], &ins[4]);
        let (seq, h) = self.dims(x)?;
        if self.dims(router)? != (h, experts) {
            return Err(self.bad(format!("the router must be [{h}, {experts}]")));
        }
        let (_, ef) = self.dims(gate)?;
        if ef % experts != 0 || self.dims(up)? != (h, ef) || self.dims(down)? != (ef, h) {
            return Err(self.bad(format!(
                "expert weights gate {:?}, up {:?}, down {:?}: expected [{h}, E·f], [{h}, E·f], [E·f, {h}] with E = {experts}",
                self.dims(gate)?,
                self.dims(up)?,
                self.dims(down)?
            )));
        }
        let f = ef / experts;
        let logits = self.matmul("router", x, router)?;
        let weights = self.unary("router_top2", CompilerOp::new(OpKind::Top2Softmax), vec![logits])?;
        let g = self.matmul("ffn_gate", x, gate)?;
        let u = self.matmul("ffn_up", x, up)?;
        let act = self.unary("ffn_silu", CompilerOp::new(OpKind::Silu), vec![g])?;
        let gated = self.unary("ffn_gated", CompilerOp::new(OpKind::Mul), vec![act, u])?;
        // Expert e's hidden units are column block e of `gated`; its output
        // is block e of `outs` ([E, seq·h]).
        let per_expert = MatMulParams {
            batch: experts,
            a_layout: BatchLayout::Interleaved,
            b_layout: BatchLayout::Stacked,
            c_layout: BatchLayout::Stacked,
            ..MatMulParams::new(seq, h, f)
        };
        let outs = self.g.node(
            self.name("ffn_down"),
            CompilerOp::matmul(per_expert),
            vec![gated, down.clone()],
            TensorDesc::f32([experts, seq * h]),
        );
        // Per token t: [1, E] weights · [E, h] expert outputs, whose rows are
        // row t of each expert's block (Interleaved: offset t·h, stride seq·h).
        let mix = MatMulParams {
            batch: seq,
            b_layout: BatchLayout::Interleaved,
            ..MatMulParams::new(1, h, experts)
        };
        Ok(self.g.node(
            self.name("mix"),
            CompilerOp::matmul(mix),
            vec![weights, outs],
            TensorDesc::f32([seq, h]),
        ))
    }
}
