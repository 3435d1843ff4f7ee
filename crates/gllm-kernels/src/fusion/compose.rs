//! Composing trace bodies: a consumer appended to its producer's body, so a
//! fused chain is lowered as one body (loop fusion, row-op epilogues, GEMM
//! epilogues all use this).
//!
//! ```text
//!   head OpTrace + [(consumer node, data slot)] ──[compose_group]──> one OpTrace over streams
//! ```
//!
//! The planner composes a candidate chain to check that its loop kernel
//! fits the register file ([`super::pressure::loop_kernel_registers`]); the
//! code generator compiles the same composition. Both call this module, so
//! what was checked is what is compiled.

use crate::graph::{OpParams, SemanticGraph, TensorId};
use crate::trace::{Body, OpTrace, TraceOp, ValueId};
use thiserror::Error;

/// Why bodies could not be composed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ComposeError {
    #[error("a consumer of an op with no element outputs")]
    NoOutputs,
    #[error("a consumer with other inputs after an op that computes several elements per step")]
    StreamsPerOutput,
    #[error("consumer input {0} has no stream")]
    NoStream(u8),
    #[error("a loop-fusion chain whose nodes are not consecutive")]
    NotAChain,
}

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
) -> Result<(), ComposeError> {
    if body.outputs.is_empty() {
        return Err(ComposeError::NoOutputs);
    }
    // A body with several outputs computes several elements of one tensor
    // per step (RoPE's two halves): the consumer applies to each. Its other
    // inputs would need a stream per output, which the kernels do not have.
    if body.outputs.len() > 1 && streams.iter().enumerate().any(|(k, s)| k != data_slot && s.is_some()) {
        return Err(ComposeError::StreamsPerOutput);
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
                    let s = streams.get(k as usize).copied().flatten().ok_or(ComposeError::NoStream(k))?;
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

/// A group's nodes composed into one trace over its streams.
#[derive(Debug, Clone)]
pub struct ComposedGroup {
    /// The head's trace with every consumer appended to its body; `Input(k)`
    /// is stream `k`.
    pub trace: OpTrace,
    /// The tensor each stream reads (RoPE's two halves: the same tensor twice).
    pub streams: Vec<TensorId>,
    /// Scalar parameters of all nodes, renumbered in order.
    pub params: Vec<f32>,
}

/// Composes `head` (a row op, an elementwise or injective op) with its
/// `chain` of `(consumer node, data input slot)`: each consumer's data input
/// becomes the previous result, every other input a stream (one per
/// distinct tensor), its parameters renumbered after the earlier nodes'.
pub fn compose_group(
    sem: &SemanticGraph,
    head: usize,
    chain: &[(usize, usize)],
) -> Result<ComposedGroup, ComposeError> {
    let mut streams: Vec<TensorId> = Vec::new();
    let stream_of = |t: TensorId, streams: &mut Vec<TensorId>| -> u8 {
        match streams.iter().position(|&s| s == t) {
            Some(i) => i as u8,
            None => {
                streams.push(t);
                (streams.len() - 1) as u8
            }
        }
    };
    let head_node = sem.node(head);
    let head_inputs = &sem.nodes[head].inputs;
    // Head: its inputs are streams in order (paired halves are streams 0
    // and 1 of the same tensor).
    let mut head_streams: Vec<u8> = Vec::new();
    if matches!(head_node.op.params, OpParams::PairedHalves { .. }) {
        head_streams.extend([0u8, 1u8]);
        streams.push(head_inputs[0]);
        streams.push(head_inputs[0]);
        for &t in &head_inputs[1..] {
            head_streams.push(stream_of(t, &mut streams));
        }
    } else {
        for &t in head_inputs {
            head_streams.push(stream_of(t, &mut streams));
        }
    }
    let mut params: Vec<f32> = head_node.op.params.scalar_args();
    let mut trace: OpTrace = (*sem.nodes[head].trace).clone();
    rename_leaves(&mut trace, &head_streams);
    for &(node, data_slot) in chain {
        let n = &sem.nodes[node];
        let param_base = params.len() as u8;
        params.extend(sem.node(node).op.params.scalar_args());
        let input_map: Vec<Option<u8>> = n
            .inputs
            .iter()
            .enumerate()
            .map(|(slot, &t)| (slot != data_slot).then(|| stream_of(t, &mut streams)))
            .collect();
        append_consumer(&mut trace.body, &n.trace.body, data_slot, &input_map, param_base)?;
    }
    trace.num_inputs = streams.len();
    Ok(ComposedGroup { trace, streams, params })
}

/// The `(consumer, data slot)` chain of a loop-fusion group's nodes after
/// its head: each reads the previous node's output.
pub fn loop_chain(sem: &SemanticGraph, nodes: &[usize]) -> Result<Vec<(usize, usize)>, ComposeError> {
    nodes
        .windows(2)
        .map(|w| {
            let prev_out = sem.nodes[w[0]].outputs[0];
            let slot =
                sem.nodes[w[1]].inputs.iter().position(|&t| t == prev_out).ok_or(ComposeError::NotAChain)?;
            Ok((w[1], slot))
        })
        .collect()
}

/// Renumbers every `Input(k)` of the trace to `Input(map[k])`.
fn rename_leaves(trace: &mut OpTrace, map: &[u8]) {
    let fix = |b: &mut Body| {
        for op in &mut b.ops {
            if let TraceOp::Input(k) = *op {
                *op = TraceOp::Input(map[k as usize]);
            }
        }
    };
    fix(&mut trace.body);
    fix(&mut trace.row);
    for f in &mut trace.folds {
        fix(&mut f.combine);
    }
}
