//! Random TraceOp bodies through the emitter against the trace interpreter:
//! every IEEE op (add, sub, mul, div, max, min, fma, neg, abs, sqrt, cmp,
//! select, copysign, the roundings) must come out bit for bit, whatever the register allocation had to
//! do (reuse, temporaries, memory first operands, masks), on both ISAs and in
//! the masked tail. Also: in-place lowering always fits the planner's
//! scratch-register estimate.

mod support;

use support::profiles;

use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
use gllm_kernels::codegen::lower::{emit_trace_ops, InPlace, Operand};
use gllm_kernels::codegen::pool::ConstPool;
use gllm_kernels::codegen::vasm::{Mem, VecAsm, V};
use gllm_kernels::codegen::CodegenError;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion::pressure::scratch_registers;
use gllm_kernels::trace::{Body, CmpPred, ComputePattern, MathOp, OpTrace, TraceOp, ValueId};
use proptest::prelude::*;
use support::Rng;

const INPUTS: u8 = 3;
/// The exact roundings (libm's approximated functions are not bit-exact).
const ROUNDINGS: [MathOp; 5] = [MathOp::Floor, MathOp::Ceil, MathOp::Trunc, MathOp::Round, MathOp::RoundEven];
const PREDS: [CmpPred; 8] = [
    CmpPred::Eq,
    CmpPred::Lt,
    CmpPred::Le,
    CmpPred::Ne,
    CmpPred::Nlt,
    CmpPred::Nle,
    CmpPred::Unord,
    CmpPred::Ord,
];

/// Builds a body from choices: leaves first (the three inputs and a few
/// constants), then ops on earlier numeric values. Comparisons only feed
/// selects; the last numeric values are the outputs.
fn body_from(choices: &[(u8, u16, u16, u16)], outputs: usize) -> Body {
    let mut ops: Vec<TraceOp> = (0..INPUTS).map(TraceOp::Input).collect();
    for c in [0.5f32, -2.0, 0.0, 3.0] {
        ops.push(TraceOp::Const(c.to_bits()));
    }
    let mut numeric: Vec<ValueId> = (0..ops.len() as ValueId).collect();
    for &(kind, a, b, c) in choices {
        let pick = |x: u16| numeric[x as usize % numeric.len()];
        let (a, b, c) = (pick(a), pick(b), pick(c));
        let op = match kind % 14 {
            0 => TraceOp::Add(a, b),
            1 => TraceOp::Sub(a, b),
            2 => TraceOp::Mul(a, b),
            3 => TraceOp::Div(a, b),
            4 => TraceOp::Max(a, b),
            5 => TraceOp::Min(a, b),
            6 => TraceOp::Fma(a, b, c),
            7 => TraceOp::Neg(a),
            8 => TraceOp::Abs(a),
            9 => TraceOp::Sqrt(a),
            10 => TraceOp::CopySign(a, b),
            11 => TraceOp::Math(ROUNDINGS[(kind as usize / 14) % ROUNDINGS.len()], a),
            _ => {
                ops.push(TraceOp::Cmp(PREDS[(kind as usize / 14) % PREDS.len()], a, b));
                TraceOp::Select((ops.len() - 1) as ValueId, c, a)
            }
        };
        ops.push(op);
        numeric.push((ops.len() - 1) as ValueId);
    }
    let outs = numeric.iter().rev().take(outputs).copied().collect();
    Body { ops, outputs: outs }
}

fn trace_of(body: &Body) -> OpTrace {
    OpTrace {
        pattern: ComputePattern::Injective { num_inputs: INPUTS as usize, num_outputs: body.outputs.len() },
        folds: Vec::new(),
        row: Body::default(),
        body: body.clone(),
        num_inputs: INPUTS as usize,
        loops: Vec::new(),
        assumed_no_nan: false,
    }
}

fn check_body(body: &Body, profiles: &[DeviceProfile], seed: u64) -> Result<(), TestCaseError> {
    let trace = trace_of(body);
    let n = 37; // two full AVX2 vectors + a tail; one full zmm + a tail
    let mut rng = Rng(seed);
    let sv = support::special_values();
    let inputs: Vec<Vec<f32>> = (0..INPUTS)
        .map(|_| {
            (0..n)
                .map(|i| {
                    if i % 5 == 0 {
                        sv[(rng.next_u64() as usize) % sv.len()]
                    } else {
                        rng.uniform(-3.0, 3.0)
                    }
                })
                .collect()
        })
        .collect();
    let ins: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let mut want: Vec<Vec<f32>> = vec![vec![0.0; n]; body.outputs.len()];
    {
        let mut outs: Vec<&mut [f32]> = want.iter_mut().map(|v| v.as_mut_slice()).collect();
        trace.eval(&ins, &[], &[], &mut outs).unwrap();
    }
    for p in profiles {
        let prog = LoopProgram::elementwise(body.clone(), INPUTS as usize, Vec::new());
        let kernel = match LoopKernel::compile(&prog, p) {
            Ok(k) => k,
            // A body wider than the register file is refused, never miscompiled.
            Err(CodegenError::OutOfRegisters { .. }) => continue,
            Err(e) => return Err(TestCaseError::fail(format!("{} on {}: {e}", body_str(body), p.isa))),
        };
        let mut got: Vec<Vec<f32>> = vec![vec![f32::NAN; n]; body.outputs.len()];
        {
            let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|v| v.as_mut_slice()).collect();
            kernel.run(&ins, &mut outs, 1, n, 1).unwrap();
        }
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            gllm_kernels::oracle::check(g, w, &[], &gllm_kernels::oracle::Tolerance::EXACT).map_err(|e| {
                TestCaseError::fail(format!("{} on {}: output {j}{e}; inputs {ins:?}", body_str(body), p.isa))
            })?;
        }
        // The in-place form fits the planner's estimate (single-output bodies).
        if body.outputs.len() == 1 {
            let need = scratch_registers(body, 0, p.isa);
            if need < p.isa.num_simd_regs() {
                let scratch: Vec<V> = (1..=need as u8).map(V).collect();
                let mut asm = VecAsm::new(p.isa).unwrap();
                let mut pool = ConstPool::new();
                let mut leaf = |op: &TraceOp, _: &mut ConstPool| match *op {
                    TraceOp::Input(k) => Ok(Operand::Mem(Mem::base(iced_x86::code_asm::rdi, 64 * k as i32))),
                    other => panic!("unexpected leaf {other}"),
                };
                let r = emit_trace_ops(
                    &mut asm,
                    &mut pool,
                    body,
                    &mut leaf,
                    Some(InPlace { input: 0, reg: V(0) }),
                    &scratch,
                );
                prop_assert!(
                    r.is_ok(),
                    "{} on {}: in place with {need} scratch: {:?}",
                    body_str(body),
                    p.isa,
                    r.err()
                );
            }
        }
    }
    Ok(())
}

fn body_str(body: &Body) -> String {
    let ops: Vec<String> = body.ops.iter().enumerate().map(|(i, o)| format!("%{i} = {o}")).collect();
    format!("[{}] => {:?}", ops.join("; "), body.outputs)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn random_bodies_match_the_interpreter_bit_for_bit(
        choices in prop::collection::vec((any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>()), 1..60),
        outputs in 1usize..3,
        seed in any::<u64>(),
    ) {
        let body = body_from(&choices, outputs);
        check_body(&body, &profiles(), seed | 1)?;
    }
}
