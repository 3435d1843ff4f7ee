// Arbitrary bytes → the inputs of the compiler's readers, shared by the
// property tests in the suite (tests/fuzz_equivalents.rs) and the
// cargo-fuzz targets (fuzz/fuzz_targets/*.rs include this file by path).
// Whatever the bytes, the entry points here must return (Ok or an error),
// never panic, abort or hang.

use gllm_kernels::codegen::layer::compile_graph;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::graph::{
    BatchLayout, CompilerGraph, CompilerNode, CompilerOp, DType, MatMulParams, OpParams, TensorDesc,
    TensorRef,
};
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};

/// Reads the fuzz input front to back; zeros once it runs out.
pub struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, at: 0 }
    }

    pub fn u8(&mut self) -> u8 {
        let v = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        v
    }

    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    /// Mostly small (0..=64), sometimes anything (absurd sizes included).
    pub fn dim(&mut self) -> usize {
        match self.u8() {
            0..=239 => usize::from(self.u8() % 65),
            240..=251 => self.u16() as usize,
            _ => (u64::from(self.u32()) << (self.u8() % 33)) as usize,
        }
    }

    pub fn f32(&mut self) -> f32 {
        match self.u8() % 4 {
            0 => f32::from_bits(self.u32()),
            _ => f32::from(self.u8()) / 16.0,
        }
    }

    pub fn is_exhausted(&self) -> bool {
        self.at >= self.data.len()
    }
}

fn desc(b: &mut Bytes) -> TensorDesc {
    let rank = 1 + usize::from(b.u8() % 3);
    let shape: Vec<usize> = (0..rank).map(|_| b.dim()).collect();
    let dtype = match b.u8() % 8 {
        0 => DType::F16,
        1 => DType::BF16,
        _ => DType::F32,
    };
    TensorDesc::new(shape, dtype)
}

fn layout(b: &mut Bytes) -> BatchLayout {
    if b.u8() % 2 == 0 {
        BatchLayout::Stacked
    } else {
        BatchLayout::Interleaved
    }
}

fn op(b: &mut Bytes) -> CompilerOp {
    let kinds = OpKind::BUILTIN;
    let kind = match b.u8() {
        // A name no registry knows.
        255 => OpKind::Custom("no_such_op"),
        k => kinds[usize::from(k) % kinds.len()],
    };
    let params = match b.u8() % 8 {
        0 => OpParams::MatMul(MatMulParams {
            transpose_b: b.u8() % 2 == 0,
            batch: b.dim(),
            b_shared_by: b.dim(),
            a_layout: layout(b),
            b_layout: layout(b),
            c_layout: layout(b),
            ..MatMulParams::new(b.dim(), b.dim(), b.dim())
        }),
        1 => OpParams::Norm { eps: b.f32() },
        2 => OpParams::PairedHalves { period: b.dim() },
        3 => OpParams::Softmax { axis: i32::from(b.u8() as i8) },
        4 => OpParams::Scalars((0..b.u8() % 3).map(|_| b.f32()).collect()),
        // The params the kind's usual constructor gives (valid more often).
        _ => match kind {
            OpKind::RmsNorm | OpKind::LayerNorm => OpParams::Norm { eps: 1e-5 },
            OpKind::Softmax => OpParams::Softmax { axis: -1 },
            OpKind::Scale => OpParams::Scalars(vec![0.5]),
            _ => OpParams::None,
        },
    };
    CompilerOp::with_params(kind, params)
}

fn tensor_ref(b: &mut Bytes, g: &CompilerGraph, node: usize) -> TensorRef {
    match b.u8() % 8 {
        0 | 1 => TensorRef::Input(usize::from(b.u8()) % (g.inputs.len() + 1)),
        2 | 3 => match g.weights.get(usize::from(b.u8()) % (g.weights.len() + 1)) {
            Some((name, _)) => TensorRef::weight(name.clone()),
            None => TensorRef::weight("undeclared"),
        },
        // Mostly earlier nodes; sometimes itself or a later one (a cycle).
        _ => TensorRef::Node { node: usize::from(b.u8()) % (node + 2), output: usize::from(b.u8() % 8 / 7) },
    }
}

/// One byte in sixteen says "break the rule here".
fn corrupt(b: &mut Bytes) -> bool {
    b.u8() % 16 == 0
}

/// A node that is well-formed unless the bytes say otherwise: the op's
/// arity from the registry, a data input chosen among existing tensors,
/// weights declared with the shapes the op needs, MatMul parameters that
/// fit — each rule broken now and then.
fn plausible_node(b: &mut Bytes, g: &mut CompilerGraph, known: &mut Vec<(TensorRef, Vec<usize>)>, n: usize) {
    use gllm_kernels::scalar::{Arg, TensorRole};
    let registry = ScalarOpRegistry::global();
    let kinds = OpKind::BUILTIN;
    let kind = kinds[usize::from(b.u8()) % kinds.len()];
    let Ok(registered) = registry.get(kind) else { return };
    let (data, shape) = known[usize::from(b.u8()) % known.len()].clone();
    let rows = shape[..shape.len().saturating_sub(1)].iter().fold(1usize, |a, &d| a.saturating_mul(d));
    let width = *shape.last().unwrap_or(&1);
    let name = format!("n{n}");
    let mut inputs = vec![data.clone()];
    let mut out_shape = shape.clone();
    let params = match kind {
        OpKind::MatMul => {
            let cols = if corrupt(b) { b.dim() } else { 1 + usize::from(b.u8() % 48) };
            let k = if corrupt(b) { b.dim() } else { width };
            let w = format!("{name}.w");
            g.weights.push((w.clone(), TensorDesc::f32([k, cols])));
            inputs.push(TensorRef::weight(w));
            out_shape = vec![rows, cols];
            OpParams::MatMul(MatMulParams::new(rows, cols, k))
        }
        OpKind::RmsNorm | OpKind::LayerNorm => {
            OpParams::Norm { eps: if corrupt(b) { b.f32() } else { 1e-5 } }
        }
        OpKind::Softmax | OpKind::Top2Softmax if !corrupt(b) => OpParams::Softmax { axis: -1 },
        OpKind::Rope => {
            let period = if corrupt(b) { b.dim() } else { 2 * (1 + usize::from(b.u8() % 8)) };
            OpParams::PairedHalves { period }
        }
        OpKind::Scale => OpParams::Scalars(vec![b.f32()]),
        _ if corrupt(b) => op(b).params,
        _ => OpParams::None,
    };
    if kind != OpKind::MatMul {
        for (_, a) in registered.signature().inputs().skip(1) {
            let role = match a {
                Arg::Input { role, .. } | Arg::Element { role, .. } => *role,
                _ => TensorRole::Activation,
            };
            let r = match role {
                TensorRole::Activation | TensorRole::Residual if !corrupt(b) => {
                    // Another tensor of the same shape if there is one.
                    known.iter().rev().find(|(_, s)| *s == shape).map_or(data.clone(), |(r, _)| r.clone())
                }
                TensorRole::Table => {
                    let half = match &params {
                        OpParams::PairedHalves { period } => period / 2,
                        _ => 1,
                    };
                    let w = format!("{name}.t{}", inputs.len());
                    g.weights.push((w.clone(), TensorDesc::f32([rows, half])));
                    TensorRef::weight(w)
                }
                _ => {
                    let w = format!("{name}.w{}", inputs.len());
                    let len = if corrupt(b) { b.dim() } else { width };
                    g.weights.push((w.clone(), TensorDesc::f32([len])));
                    TensorRef::weight(w)
                }
            };
            inputs.push(r);
        }
        if matches!(kind, OpKind::ReduceSum | OpKind::ReduceMax | OpKind::Dot) {
            out_shape = vec![rows, 1];
        }
    }
    if corrupt(b) {
        inputs.push(tensor_ref(b, g, n));
    }
    if corrupt(b) {
        out_shape = (0..1 + b.u8() % 3).map(|_| b.dim()).collect();
    }
    g.nodes.push(CompilerNode {
        name,
        op: CompilerOp::with_params(kind, params),
        inputs,
        outputs: vec![TensorDesc::f32(out_shape.clone())],
    });
    known.push((TensorRef::node(g.nodes.len() - 1), out_shape));
}

/// A graph from arbitrary bytes. The first byte chooses between a
/// plausible graph (built from the registry's signatures, with rules broken
/// now and then — so the fuzzer reaches the planner, the code generator and
/// the kernels) and one where shapes, ops, parameters and references are
/// whatever the bytes say (undeclared weights, dangling references, cycles,
/// absurd sizes, unknown ops).
pub fn graph_from_bytes(data: &[u8]) -> CompilerGraph {
    let mut b = Bytes::new(data);
    if b.u8() % 4 != 0 {
        return plausible_graph(&mut b);
    }
    let mut g = CompilerGraph::new();
    for i in 0..1 + b.u8() % 3 {
        g.inputs.push((format!("x{i}"), desc(&mut b)));
    }
    for i in 0..b.u8() % 4 {
        g.weights.push((format!("w{i}"), desc(&mut b)));
    }
    let nodes = usize::from(b.u8() % 12);
    for n in 0..nodes {
        if b.is_exhausted() {
            break;
        }
        let op = op(&mut b);
        let inputs = (0..1 + b.u8() % 3).map(|_| tensor_ref(&mut b, &g, n)).collect();
        let outputs = (0..1 + b.u8() % 8 / 7).map(|_| desc(&mut b)).collect();
        g.nodes.push(CompilerNode { name: format!("n{n}"), op, inputs, outputs });
    }
    for _ in 0..1 + b.u8() % 3 {
        let r = tensor_ref(&mut b, &g, g.nodes.len().saturating_sub(1));
        g.outputs.push(r);
    }
    g
}

fn plausible_graph(b: &mut Bytes) -> CompilerGraph {
    let mut g = CompilerGraph::new();
    let mut known: Vec<(TensorRef, Vec<usize>)> = Vec::new();
    for i in 0..1 + b.u8() % 2 {
        let shape = vec![1 + usize::from(b.u8() % 9), 1 + usize::from(b.u8() % 64)];
        g.inputs.push((format!("x{i}"), TensorDesc::f32(shape.clone())));
        known.push((TensorRef::Input(usize::from(i)), shape));
    }
    for n in 0..1 + usize::from(b.u8() % 10) {
        if b.is_exhausted() {
            break;
        }
        plausible_node(b, &mut g, &mut known, n);
    }
    // Every node nobody reads is an output (the validator wants each used).
    let read: Vec<bool> =
        (0..g.nodes.len()).map(|i| g.nodes.iter().any(|n| n.inputs.contains(&TensorRef::node(i)))).collect();
    for (i, r) in read.iter().enumerate() {
        if !r {
            g.outputs.push(TensorRef::node(i));
        }
    }
    if corrupt(b) {
        let r = tensor_ref(b, &g, g.nodes.len());
        g.outputs.push(r);
    }
    g
}

/// Analyses, plans and (if small) compiles and runs a graph from bytes:
/// every stage must answer with a value or an error.
pub fn check_graph_bytes(data: &[u8], profile: &DeviceProfile) {
    let g = graph_from_bytes(data);
    let registry = ScalarOpRegistry::global();
    let Ok(sem) = g.analyse(registry) else { return };
    let total: usize = sem.tensors.iter().map(|t| t.desc.numel()).sum();
    if total > 1 << 16 {
        return;
    }
    let Ok(layer) = compile_graph(&g, profile, registry) else { return };
    let weights: Vec<(String, Vec<f32>)> =
        g.weights.iter().map(|(n, d)| (n.clone(), vec![0.5; d.numel()])).collect();
    let lookup = |name: &str| weights.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
    let Ok(prepared) = layer.prepare_weights(&lookup) else { return };
    let inputs: Vec<Vec<f32>> = g.inputs.iter().map(|(_, d)| vec![0.25; d.numel()]).collect();
    let ins: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let _ = layer.run(&prepared, &ins);
}

/// A device profile from arbitrary text: an error or a profile, never a
/// panic (and a profile that loads must describe itself and plan GEMMs).
pub fn check_profile_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = DeviceProfile::from_toml_str(text, "fuzz input") {
        let _ = p.to_string();
        let _ = p.gemm_blocking();
        let _ = p.to_toml();
    }
}

/// Where the fuzzed machine code pretends to live.
pub const CODE_BASE: u64 = 0x7000_0000;

/// Symbolic execution and lifting of arbitrary bytes as machine code, under
/// a signature the first byte picks (per element, a row function, a GEMM):
/// a trace or an error naming the instruction, never a panic or a hang.
pub fn check_code_bytes(data: &[u8]) {
    use gllm_kernels::scalar::{Arg, Len, OpSignature, Returns, TensorRole};
    use gllm_kernels::trace::{analyse_in, BufferMemory};
    let Some((&which, code)) = data.split_first() else { return };
    let x = |name| Arg::Input { name, role: TensorRole::Activation, len: Len::Dim(0) };
    let sig = match which % 3 {
        0 => {
            OpSignature::new(vec![Arg::Element { name: "x", role: TensorRole::Activation }], Returns::Element)
        }
        1 => OpSignature::new(
            vec![x("x"), Arg::Output { name: "y", len: Len::Dim(0) }, Arg::Dim { name: "n" }],
            Returns::Nothing,
        ),
        _ => OpSignature::new(vec![x("x"), Arg::Dim { name: "n" }], Returns::RowScalar),
    };
    let Ok(sig) = sig else { return };
    let memory = BufferMemory { base: CODE_BASE, bytes: code.to_vec() };
    if let Ok(trace) = analyse_in("fuzzed", CODE_BASE, &sig, &memory) {
        let _ = trace.to_string();
    }
}
