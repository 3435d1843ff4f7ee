//! The planner's scratch-register estimate is an upper bound of what the
//! emitter uses: every elementwise body lowers in place on one register with
//! exactly the estimated number of scratch registers, on both ISAs.

mod support;

use gllm_kernels::codegen::lower::{emit_trace_ops, InPlace, Operand};
use gllm_kernels::codegen::pool::ConstPool;
use gllm_kernels::codegen::vasm::{Mem, VecAsm, V};
use gllm_kernels::device::Isa;
use gllm_kernels::fusion::pressure::scratch_registers;
use gllm_kernels::scalar::ScalarOpRegistry;
use gllm_kernels::trace::{ComputePattern, OpTrace, TraceOp};
use iced_x86::code_asm::rdi;

fn check(name: &str, trace: &OpTrace) {
    for isa in Isa::ALL {
        for data in 0..trace.num_inputs as u8 {
            let need = scratch_registers(&trace.body, data, isa);
            let scratch: Vec<V> = (1..=need as u8).map(V).collect();
            let mut asm = VecAsm::new(isa).unwrap();
            let mut pool = ConstPool::new();
            let mut leaf = |op: &TraceOp, _: &mut ConstPool| match *op {
                TraceOp::Input(k) => Ok(Operand::Mem(Mem::base(rdi, 64 * k as i32))),
                TraceOp::Param(_) => Ok(Operand::Mem(Mem::base(rdi, 1024))),
                other => panic!("unexpected leaf {other}"),
            };
            let out = emit_trace_ops(
                &mut asm,
                &mut pool,
                &trace.body,
                &mut leaf,
                Some(InPlace { input: data, reg: V(0) }),
                &scratch,
            )
            .unwrap_or_else(|e| {
                panic!("{name} on {isa} (data input {data}) with {need} scratch registers: {e}")
            });
            assert_eq!(out, vec![V(0)], "{name}: the result is written back in place");
        }
    }
}

#[test]
fn every_elementwise_body_fits_its_estimate() {
    let registry = ScalarOpRegistry::global();
    for op in registry.iter() {
        let trace = op.trace().unwrap();
        if matches!(trace.pattern, ComputePattern::Elementwise | ComputePattern::BinaryElementwise) {
            check(op.kind().name(), &trace);
        }
    }
    let (unseen, kinds) = support::unseen_registry();
    for k in kinds {
        let trace = unseen.trace(k).unwrap();
        if trace.pattern == ComputePattern::Elementwise {
            check(k.name(), &trace);
        }
    }
}
