//! How many scratch vector registers an elementwise body needs when it is
//! evaluated in place on one register (a GEMM accumulator or a loop's data).
//!
//! This is the contract between the planner and the emitter: the planner
//! rejects an epilogue whose need exceeds what the microkernel leaves free,
//! and the emitter must lower any accepted body within this many scratch
//! registers (its tests check that it does).

use crate::device::Isa;
use crate::trace::{Body, OpTrace, TraceOp, ValueId};

/// Scratch registers a vector math routine needs beyond its argument/result
/// register (kept in step with `codegen`'s MathApprox).
pub fn math_temps(op: &TraceOp) -> usize {
    match op {
        // Two for the reduction, two more for the shorter polynomial chain.
        TraceOp::Exp(_) => 4,
        // Three working registers plus a copy of the argument, which these
        // routines still need after the result register is first written.
        TraceOp::Log(_) | TraceOp::Tanh(_) => 4,
        TraceOp::Math(m, _) => crate::codegen::math::unary_temps(*m),
        // A register for the exponent (or the base), which the
        // multiplication forms reuse as their spare.
        TraceOp::Pow(..) => 1,
        // The sign bits of the second operand.
        TraceOp::CopySign(..) => 1,
        _ => 0,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Home {
    /// Lives in the register being transformed (the element's own input).
    Data,
    /// A memory or broadcast operand: constants, params, extra inputs.
    Memory,
    /// A computed value: needs a register while live.
    Register,
    /// An AVX-512 comparison result: lives in an opmask register.
    Mask,
}

/// Scratch vector registers needed to evaluate `body` in place on the
/// register holding input `data_input`, for the given ISA.
///
/// Model: the data register holds the input until its last use, then is a
/// register like any other; every computed value takes a register from its
/// definition to its last use, and may take over the register of an operand
/// that dies at that op; the final result ends in the data register (one
/// move if needed). Memory operands cost nothing unless an instruction needs
/// them in a register (first operand of a non-commutative op, comparisons,
/// FMAs with two memory operands), which costs one register. The count is
/// the peak number of registers in use, minus the data register itself.
pub fn scratch_registers(body: &Body, data_input: u8, isa: Isa) -> usize {
    let ops = &body.ops;
    if body.outputs.is_empty() {
        return 0;
    }
    let mut last_use = vec![0usize; ops.len()];
    for (i, op) in ops.iter().enumerate() {
        for a in op.operands() {
            last_use[a as usize] = i;
        }
    }
    let home: Vec<Home> = ops
        .iter()
        .map(|op| match op {
            TraceOp::Input(k) if *k == data_input => Home::Data,
            TraceOp::Input(_)
            | TraceOp::Param(_)
            | TraceOp::Dim(_)
            | TraceOp::Const(_)
            | TraceOp::Acc
            | TraceOp::FoldResult(_)
            | TraceOp::RowScalar(_) => Home::Memory,
            TraceOp::Cmp(..) if isa.caps().opmask => Home::Mask,
            _ => Home::Register,
        })
        .collect();
    // All `Input(data)` ops are one value: the data register.
    let data_last = (0..ops.len()).filter(|&i| home[i] == Home::Data).map(|i| last_use[i]).max();
    let mut live = usize::from(data_last.is_some());
    let mut peak = 1usize;
    for (i, op) in ops.iter().enumerate() {
        if home[i] != Home::Register {
            continue;
        }
        let operands = op.operands();
        let mut dying: Vec<ValueId> = operands
            .iter()
            .copied()
            .filter(|&a| home[a as usize] == Home::Register && last_use[a as usize] == i)
            .collect();
        dying.sort_unstable();
        dying.dedup();
        let data_dies = data_last == Some(i) && operands.iter().any(|&a| home[a as usize] == Home::Data);
        let freed = dying.len() + usize::from(data_dies);
        // During the op: registers in use, its result (unless it takes over
        // a dying operand's), the math routine's temps, and one temporary
        // when an operand must be in a register but the result's register
        // is still an input.
        let result_reg = usize::from(freed == 0);
        let is_mem = |a: &ValueId| home[*a as usize] == Home::Memory;
        let temp = match op {
            TraceOp::Sub(a, _) | TraceOp::Div(a, _) | TraceOp::Max(a, _) | TraceOp::Min(a, _) => {
                is_mem(a) && result_reg == 0
            }
            TraceOp::Select(_, _, b) => is_mem(b) && result_reg == 0,
            TraceOp::Cmp(_, a, _) => is_mem(a),
            TraceOp::Fma(..) => operands.iter().filter(|a| is_mem(a)).count() >= 2,
            _ => false,
        };
        let during = live + result_reg + math_temps(op) + usize::from(temp);
        peak = peak.max(during);
        live = live + 1 - freed;
    }
    peak - 1
}

/// Vector registers a loop kernel's element pass over `trace` (a group's
/// composed trace) needs, and how many the register file leaves it after
/// the kernel's reservations: the AVX2 tail mask, the row length when the
/// trace reads it, one per fold result and one per row scalar. An upper
/// bound on what the loop emitter asks for (its transformations only trade
/// a division by a row scalar for one more row scalar, or a recomputed
/// fold value for one more stream), so a group the planner accepts always
/// compiles.
pub fn loop_kernel_registers(trace: &OpTrace, isa: Isa) -> (usize, usize) {
    let bodies = || trace.folds.iter().map(|f| &f.combine).chain([&trace.row, &trace.body]);
    let uses_dim = bodies().any(|b| b.ops.iter().any(|o| matches!(o, TraceOp::Dim(_))));
    let row_divisions = trace
        .body
        .ops
        .iter()
        .filter(|o| matches!(o, TraceOp::Div(_, b) if matches!(trace.body.ops[*b as usize], TraceOp::RowScalar(_))))
        .count();
    let reserved = usize::from(!isa.caps().opmask)
        + usize::from(uses_dim)
        + trace.folds.len()
        + trace.row.outputs.len()
        + row_divisions;
    let need = scratch_registers(&trace.body, u8::MAX, isa)
        + trace.body.inputs_used().len()
        + trace.body.outputs.len()
        + usize::from(!trace.folds.is_empty());
    (need, isa.num_simd_regs().saturating_sub(reserved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::{OpKind, ScalarOpRegistry};

    fn need(kind: OpKind, isa: Isa) -> usize {
        let t = ScalarOpRegistry::global().trace(kind).unwrap();
        scratch_registers(&t.body, 0, isa)
    }

    #[test]
    fn builtin_epilogue_needs() {
        // bias/residual/scale read a memory operand: nothing extra.
        for k in [OpKind::BiasAdd, OpKind::Add, OpKind::Mul, OpKind::Scale] {
            assert_eq!(need(k, Isa::Avx512), 0, "{k}");
        }
        // relu = max(0, x): the constant must be in a register first.
        assert_eq!(need(OpKind::Relu, Isa::Avx2), 1);
        // silu = x / (1 + exp(-x)): -x, then exp's four temps.
        assert_eq!(need(OpKind::Silu, Isa::Avx512), 5);
        assert!(need(OpKind::Gelu, Isa::Avx512) >= 4);
    }
}
