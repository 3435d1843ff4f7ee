//! Composing trace bodies: a consumer appended to its producer's body, so a
//! fused chain is lowered as one body (loop fusion, row-op epilogues, GEMM
//! epilogues all use this).

use super::CodegenError;
use crate::trace::{Body, TraceOp, ValueId};

/// Appends `consumer` to `body` as the consumer of each of `body`'s outputs
/// (one for an ordinary op; RoPE's two halves): the consumer's input
/// `data_slot` becomes that value, each other input
/// `slot` becomes stream `streams[slot]`, and its `Param(k)` become
/// `Param(param_base + k)`. The consumer's outputs (per output of `body`)
/// become `body`'s outputs.
pub fn append_consumer(
    body: &mut Body,
    consumer: &Body,
    data_slot: usize,
    streams: &[Option<u8>],
    param_base: u8,
) -> Result<(), CodegenError> {
    if body.outputs.is_empty() {
        return Err(CodegenError::Unsupported("a consumer of an op with no element outputs".into()));
    }
    // A body with several outputs computes several elements of one tensor
    // per step (RoPE's two halves): the consumer applies to each. Its other
    // inputs would need a stream per output, which the kernels do not have.
    if body.outputs.len() > 1 && streams.iter().enumerate().any(|(k, s)| k != data_slot && s.is_some()) {
        return Err(CodegenError::Unsupported(
            "a consumer with other inputs after an op that computes several elements per step".into(),
        ));
    }
    let mut outputs = Vec::with_capacity(body.outputs.len() * consumer.outputs.len());
    for prev in body.outputs.clone() {
        let mut map: Vec<ValueId> = Vec::with_capacity(consumer.ops.len());
        for op in &consumer.ops {
            let new = match *op {
                TraceOp::Input(k) if k as usize == data_slot => {
                    map.push(prev);
                    continue;
                }
                TraceOp::Input(k) => {
                    let s = streams.get(k as usize).copied().flatten().ok_or_else(|| {
                        CodegenError::Unsupported(format!("consumer input {k} has no stream"))
                    })?;
                    TraceOp::Input(s)
                }
                TraceOp::Param(k) => TraceOp::Param(param_base + k),
                other => other.map_operands(|v| map[v as usize]),
            };
            body.ops.push(new);
            map.push((body.ops.len() - 1) as ValueId);
        }
        outputs.extend(consumer.outputs.iter().map(|&o| map[o as usize]));
    }
    body.outputs = outputs;
    Ok(())
}
