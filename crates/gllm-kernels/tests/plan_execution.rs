//! Differential test of planning + group compilation: random elementwise
//! graphs (ReLU, add, mul by a weight row, bias, scale; shared producers,
//! broadcast rows) are planned, every group is compiled and run in plan
//! order, and every graph output must equal node-by-node evaluation of the
//! ops' traces bit for bit (these ops are exact IEEE arithmetic).

mod support;

use support::profiles;

use gllm_kernels::codegen::group::CompiledGroup;
use gllm_kernels::fusion::fuse;
use gllm_kernels::graph::{CompilerGraph, CompilerOp, TensorDesc, TensorRef};
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use proptest::prelude::*;
use std::collections::HashMap;
use support::Rng;

fn random_graph(choices: &[(u8, u16, u16)], rows: usize, n: usize) -> CompilerGraph {
    let mut g = CompilerGraph::new();
    let full = || TensorDesc::f32([rows, n]);
    let mut tensors: Vec<TensorRef> = vec![g.input("x0", full()), g.input("x1", full())];
    for (i, &(op, a, b)) in choices.iter().enumerate() {
        let ta = tensors[a as usize % tensors.len()].clone();
        let tb = tensors[b as usize % tensors.len()].clone();
        let name = format!("n{i}");
        let (cop, ins) = match op % 5 {
            0 => (CompilerOp::new(OpKind::Relu), vec![ta]),
            1 => (CompilerOp::new(OpKind::Add), vec![ta, tb]),
            2 => {
                (CompilerOp::new(OpKind::Mul), vec![ta, g.weight(format!("{name}.w"), TensorDesc::f32([n]))])
            }
            3 => (
                CompilerOp::new(OpKind::BiasAdd),
                vec![ta, g.weight(format!("{name}.b"), TensorDesc::f32([n]))],
            ),
            _ => (CompilerOp::scale(0.5 + (b % 7) as f32 * 0.25), vec![ta]),
        };
        tensors.push(g.node(name, cop, ins, full()));
    }
    support::output_unread_nodes(&mut g, 4);
    g
}

fn check(g: &CompilerGraph, seed: u64) -> Result<(), TestCaseError> {
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    let mut rng = Rng(seed);
    // Values of graph inputs and weights.
    let mut values: HashMap<usize, Vec<f32>> = HashMap::new();
    for t in &sem.tensors {
        if t.producer.is_none() {
            values.insert(t.id, (0..t.desc.numel()).map(|_| rng.uniform(-4.0, 4.0)).collect());
        }
    }
    // Reference: each node's trace, node by node (broadcast rows expanded).
    let mut want = values.clone();
    for &id in &sem.order {
        let node = &sem.nodes[id];
        let out_len = sem.tensors[node.outputs[0]].desc.numel();
        let ins: Vec<Vec<f32>> = node
            .inputs
            .iter()
            .map(|&t| {
                let v = &want[&t];
                (0..out_len).map(|i| v[i % v.len()]).collect()
            })
            .collect();
        let refs: Vec<&[f32]> = ins.iter().map(|v| v.as_slice()).collect();
        let mut out = vec![0.0; out_len];
        let params = sem.node(id).op.params.scalar_args();
        node.trace.eval(&refs, &params, &[], &mut [&mut out]).unwrap();
        want.insert(node.outputs[0], out);
    }
    for profile in profiles() {
        let plan = fuse(g, &profile).unwrap();
        let mut got = values.clone();
        for group in &plan.groups {
            let cg = CompiledGroup::compile(&sem, group, &profile)
                .map_err(|e| TestCaseError::fail(format!("group {}: {e}", group.id)))?;
            let ins: Vec<&[f32]> = cg.inputs().iter().map(|t| got[t].as_slice()).collect();
            let mut out = vec![f32::NAN; sem.tensors[cg.output()].desc.numel()];
            cg.run(&ins, &mut out).unwrap();
            got.insert(cg.output(), out);
        }
        for t in sem.tensors.iter().filter(|t| t.is_graph_output) {
            let (g, w) = (&got[&t.id], &want[&t.id]);
            gllm_kernels::oracle::check(g, w, &[], &gllm_kernels::oracle::Tolerance::EXACT).map_err(|e| {
                TestCaseError::fail(format!(
                    "{} tensor {} ({}){e}; plan\n{}",
                    profile.isa,
                    t.id,
                    plan.tensor_names[t.id],
                    plan.explain(sem.graph)
                ))
            })?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, .. ProptestConfig::default() })]

    #[test]
    fn planned_and_compiled_groups_equal_node_by_node_evaluation(
        choices in prop::collection::vec((any::<u8>(), any::<u16>(), any::<u16>()), 1..20),
        rows in 1usize..5,
        n in 1usize..70,
        seed in any::<u64>(),
    ) {
        check(&random_graph(&choices, rows, n), seed | 1)?;
    }
}
