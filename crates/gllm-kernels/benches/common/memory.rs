//! The memory-bound workloads shared by the `loops` table and the
//! `memory_kernels` divan bench: 16M-element tensors, the single-op groups
//! and the fused SiLU·mul·add chain, compiled through the planner like a
//! layer's groups (so they get the same code: streaming stores for outputs
//! beyond the last-level cache).

use gllm_kernels::codegen::group::CompiledGroup;
use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion;
use gllm_kernels::graph::{CompilerGraph, CompilerOp, TensorDesc};
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use rayon::prelude::*;

pub const N: usize = 1 << 24;
pub const ROW: usize = 4096;
pub const ROWS: usize = N / ROW;

/// The inputs: activations `x` and `res` (N each) and a weight row `w`.
pub struct Tensors {
    pub x: Vec<f32>,
    pub res: Vec<f32>,
    pub w: Vec<f32>,
}

impl Tensors {
    pub fn new() -> Tensors {
        Tensors {
            x: (0..N).map(|i| ((i % 1000) as f32 - 500.0) * 0.01).collect(),
            res: (0..N).map(|i| ((i % 777) as f32) * 0.001).collect(),
            w: (0..ROW).map(|i| 1.0 + (i % 7) as f32 * 0.1).collect(),
        }
    }

    /// The tensor a graph input or weight of these graphs names.
    fn by_name(&self, name: &str) -> &[f32] {
        match name {
            "x" => &self.x,
            "res" => &self.res,
            _ => &self.w,
        }
    }
}

fn matrix() -> TensorDesc {
    TensorDesc::f32([ROWS, ROW])
}

fn compile(g: &CompilerGraph, profile: &DeviceProfile) -> (CompiledGroup, Vec<String>) {
    let sem = g.analyse(ScalarOpRegistry::global()).expect("valid graph");
    let plan = fusion::plan(&sem, profile);
    let group = CompiledGroup::compile(&sem, &plan.groups[0], profile).expect("compiles");
    let names = group
        .inputs()
        .iter()
        .map(|&t| plan.tensor_names[t].split(' ').next().unwrap_or("").to_string())
        .collect();
    (group, names)
}

/// A one-group graph and the names of its inputs, in the group's order.
pub struct Workload {
    pub group: CompiledGroup,
    names: Vec<String>,
}

impl Workload {
    /// `op` on `x` (and the weight row `w`).
    pub fn single(op: CompilerOp, with_weight: bool, profile: &DeviceProfile) -> Workload {
        let mut g = CompilerGraph::new();
        let mut ins = vec![g.input("x", matrix())];
        if with_weight {
            ins.push(g.weight("w", TensorDesc::f32([ROW])));
        }
        let y = g.node("op", op, ins, matrix());
        g.output(y);
        let (group, names) = compile(&g, profile);
        Workload { group, names }
    }

    /// SiLU(x)·w + res, fused by the planner.
    pub fn silu_mul_add(profile: &DeviceProfile) -> Workload {
        let mut g = CompilerGraph::new();
        let x = g.input("x", matrix());
        let res = g.input("res", matrix());
        let w = g.weight("w", TensorDesc::f32([ROW]));
        let a = g.node("silu", CompilerOp::new(OpKind::Silu), vec![x], matrix());
        let b = g.node("mul", CompilerOp::new(OpKind::Mul), vec![a, w], matrix());
        let c = g.node("add", CompilerOp::new(OpKind::Add), vec![b, res], matrix());
        g.output(c);
        let (group, names) = compile(&g, profile);
        Workload { group, names }
    }

    /// The group's inputs from `t`.
    pub fn inputs<'t>(&self, t: &'t Tensors) -> Vec<&'t [f32]> {
        self.names.iter().map(|n| t.by_name(n)).collect()
    }
}

/// A built-in op's loop kernel on its own (the unfused chain's pieces).
fn loop_kernel(kind: OpKind, profile: &DeviceProfile) -> LoopKernel {
    let op = ScalarOpRegistry::global().get(kind).expect("built-in");
    let prog = LoopProgram::from_trace(&op.trace().expect("analysable"), vec![]).expect("loop program");
    LoopKernel::compile(&prog, profile).expect("compiles")
}

/// The same chain as three kernels, through two N-element temporaries.
pub struct Unfused {
    silu: LoopKernel,
    mul: LoopKernel,
    add: LoopKernel,
}

impl Unfused {
    pub fn new(profile: &DeviceProfile) -> Unfused {
        Unfused {
            silu: loop_kernel(OpKind::Silu, profile),
            mul: loop_kernel(OpKind::Mul, profile),
            add: loop_kernel(OpKind::Add, profile),
        }
    }

    pub fn run(&self, t: &Tensors, (t1, t2): (&mut [f32], &mut [f32]), out: &mut [f32], threads: usize) {
        self.silu.run(&[&t.x], &mut [&mut *t1], 1, N, threads).unwrap();
        self.mul.run(&[t1, &t.w], &mut [&mut *t2], ROWS, ROW, threads).unwrap();
        self.add.run(&[t2, &t.res], &mut [out], 1, N, threads).unwrap();
    }
}

/// The copy reference (1 read + 1 write), in `threads` parts.
pub fn copy(out: &mut [f32], x: &[f32], threads: usize) {
    let part = N / threads;
    out.par_chunks_mut(part).zip(x.par_chunks(part)).for_each(|(o, i)| o.copy_from_slice(i));
}

/// The triad reference `out = x + s·res` (2 reads + 1 write), in `threads` parts.
pub fn triad(out: &mut [f32], t: &Tensors, threads: usize) {
    let part = N / threads;
    let s = std::hint::black_box(0.5f32);
    out.par_chunks_mut(part).zip(t.x.par_chunks(part).zip(t.res.par_chunks(part))).for_each(|(o, (x, r))| {
        for ((o, x), r) in o.iter_mut().zip(x).zip(r) {
            *o = x + s * r;
        }
    });
}
