//! Composing trace bodies: a consumer appended to its producer's body, so a
//! fused chain is lowered as one body (loop fusion, row-op epilogues, GEMM
//! epilogues all use this).

use super::CodegenError;
use crate::trace::{Body, TraceOp, ValueId};

/// Appends `consumer` to `body` as the consumer of `body`'s first output:
/// the consumer's input `data_slot` becomes that value, each other input
/// `slot` becomes stream `streams[slot]`, and its `Param(k)` become
/// `Param(param_base + k)`. The consumer's outputs become `body`'s outputs.
pub fn append_consumer(
    body: &mut Body,
    consumer: &Body,
    data_slot: usize,
    streams: &[Option<u8>],
    param_base: u8,
) -> Result<(), CodegenError> {
    let prev = *body
        .outputs
        .first()
        .ok_or_else(|| CodegenError::Unsupported("a consumer of an op with no element outputs".into()))?;
    let mut map: Vec<ValueId> = Vec::with_capacity(consumer.ops.len());
    for op in &consumer.ops {
        let new = match *op {
            TraceOp::Input(k) if k as usize == data_slot => {
                map.push(prev);
                continue;
            }
            TraceOp::Input(k) => {
                let s =
                    streams.get(k as usize).copied().flatten().ok_or_else(|| {
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
    body.outputs = consumer.outputs.iter().map(|&o| map[o as usize]).collect();
    Ok(())
}
