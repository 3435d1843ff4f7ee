//! Phase 1 analysis of a validated graph: traces and classes per node, tensor
//! def-use edges with byte sizes, consumer counts and post-dominators.

use super::validate::{topological_order, GraphError, NodeLabel};
use super::{CompilerGraph, CompilerNode, NodeId, TensorDesc, TensorRef};
use crate::scalar::ScalarOpRegistry;
use crate::trace::{OpClass, OpTrace};
use std::collections::HashMap;
use std::sync::Arc;

/// Index of a tensor in [`SemanticGraph::tensors`].
pub type TensorId = usize;

/// One tensor and who defines and uses it.
#[derive(Debug, Clone)]
pub struct TensorEdge {
    pub id: TensorId,
    /// Where it comes from (graph input, weight or node output).
    pub source: TensorRef,
    pub desc: TensorDesc,
    /// The node that writes it (`None` for graph inputs and weights).
    pub producer: Option<NodeId>,
    /// `(node, input slot)` for every read, in node order.
    pub consumers: Vec<(NodeId, usize)>,
    /// Whether the caller reads it back.
    pub is_graph_output: bool,
}

impl TensorEdge {
    pub fn size_bytes(&self) -> usize {
        self.desc.size_bytes()
    }

    /// Distinct nodes reading this tensor.
    pub fn consumer_nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.consumers.iter().map(|(n, _)| *n).collect();
        v.dedup();
        v
    }

    /// An intermediate lives only inside the layer (the compiler owns its memory).
    pub fn is_intermediate(&self) -> bool {
        self.producer.is_some() && !self.is_graph_output
    }
}

/// A node with what Phase 0 and Phase 1 know about it.
#[derive(Debug, Clone)]
pub struct SemanticNode {
    pub id: NodeId,
    pub trace: Arc<OpTrace>,
    /// Derived from the trace's pattern, never declared.
    pub class: OpClass,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
}

/// A validated graph with its Phase 1 analysis.
#[derive(Debug, Clone)]
pub struct SemanticGraph<'g> {
    pub graph: &'g CompilerGraph,
    /// Indexed by node id.
    pub nodes: Vec<SemanticNode>,
    pub tensors: Vec<TensorEdge>,
    /// Node ids in a topological order (the front end's order when it is one).
    pub order: Vec<NodeId>,
    /// Immediate post-dominator of each node; `None` = the graph's exit.
    pub ipost_dom: Vec<Option<NodeId>>,
}

pub(super) fn analyse<'g>(
    graph: &'g CompilerGraph,
    registry: &ScalarOpRegistry,
) -> Result<SemanticGraph<'g>, GraphError> {
    let order = topological_order(graph).expect("validated graphs are acyclic");
    let mut tensors: Vec<TensorEdge> = Vec::new();
    let mut ids: HashMap<TensorRef, TensorId> = HashMap::new();
    let mut intern = |r: &TensorRef, producer: Option<NodeId>, tensors: &mut Vec<TensorEdge>| {
        *ids.entry(r.clone()).or_insert_with(|| {
            tensors.push(TensorEdge {
                id: tensors.len(),
                source: r.clone(),
                desc: graph.desc(r).expect("validated").clone(),
                producer,
                consumers: Vec::new(),
                is_graph_output: false,
            });
            tensors.len() - 1
        })
    };
    let mut nodes: Vec<Option<SemanticNode>> = vec![None; graph.nodes.len()];
    for &id in &order {
        let node: &CompilerNode = &graph.nodes[id];
        let trace = registry
            .trace(node.op.kind)
            .map_err(|e| GraphError::Trace { node: NodeLabel::of(graph, id), source: Box::new(e) })?;
        let inputs: Vec<TensorId> = node.inputs.iter().map(|r| intern(r, None, &mut tensors)).collect();
        for (slot, &t) in inputs.iter().enumerate() {
            tensors[t].consumers.push((id, slot));
        }
        let outputs = (0..node.outputs.len())
            .map(|output| intern(&TensorRef::Node { node: id, output }, Some(id), &mut tensors))
            .collect();
        nodes[id] = Some(SemanticNode { id, class: trace.class(), trace, inputs, outputs });
    }
    for out in &graph.outputs {
        let t = intern(out, None, &mut tensors);
        tensors[t].is_graph_output = true;
    }
    let nodes: Vec<SemanticNode> =
        nodes.into_iter().map(|n| n.expect("every node is in the order")).collect();
    let ipost_dom = post_dominators(&nodes, &tensors, &order);
    Ok(SemanticGraph { graph, nodes, tensors, order, ipost_dom })
}

/// Immediate post-dominators on the DAG with a virtual exit that every graph
/// output (and every sink) flows into. One pass in reverse topological order
/// suffices on a DAG (Cooper, Harvey & Kennedy's intersection).
fn post_dominators(nodes: &[SemanticNode], tensors: &[TensorEdge], order: &[NodeId]) -> Vec<Option<NodeId>> {
    const EXIT: usize = usize::MAX;
    let mut rank = vec![0usize; nodes.len()]; // exit has rank 0; larger = earlier in the DAG
    let mut ipdom = vec![EXIT; nodes.len()];
    let rank_of = |rank: &[usize], n: usize| if n == EXIT { 0 } else { rank[n] };
    for (i, &n) in order.iter().rev().enumerate() {
        let mut succs: Vec<usize> = Vec::new();
        for &t in &nodes[n].outputs {
            if tensors[t].is_graph_output || tensors[t].consumers.is_empty() {
                succs.push(EXIT);
            }
            succs.extend(tensors[t].consumers.iter().map(|(c, _)| *c));
        }
        let mut dom = succs[0];
        for &s in &succs[1..] {
            let (mut a, mut b) = (dom, s);
            while a != b {
                while rank_of(&rank, a) > rank_of(&rank, b) {
                    a = ipdom[a];
                }
                while rank_of(&rank, b) > rank_of(&rank, a) {
                    b = ipdom[b];
                }
            }
            dom = a;
        }
        ipdom[n] = dom;
        rank[n] = i + 1;
    }
    ipdom.into_iter().map(|d| (d != EXIT).then_some(d)).collect()
}

impl SemanticGraph<'_> {
    pub fn node(&self, id: NodeId) -> &CompilerNode {
        &self.graph.nodes[id]
    }

    /// Distinct nodes that read any output of `id`.
    pub fn consumers_of(&self, id: NodeId) -> Vec<NodeId> {
        let mut v: Vec<NodeId> =
            self.nodes[id].outputs.iter().flat_map(|&t| self.tensors[t].consumer_nodes()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The tensor of each graph output, in the graph's output order (an
    /// output listed twice appears twice).
    pub fn output_tensors(&self) -> Vec<TensorId> {
        self.graph
            .outputs
            .iter()
            .map(|r| {
                self.tensors.iter().position(|t| &t.source == r).expect("every graph output is a tensor")
            })
            .collect()
    }

    /// Whether any output of `id` is read back by the caller.
    pub fn feeds_graph_output(&self, id: NodeId) -> bool {
        self.nodes[id].outputs.iter().any(|&t| self.tensors[t].is_graph_output)
    }

    /// Whether `a` post-dominates `b` (every path from `b` to the exit passes `a`).
    pub fn post_dominates(&self, a: NodeId, b: NodeId) -> bool {
        let mut cur = Some(b);
        while let Some(n) = cur {
            if n == a {
                return true;
            }
            cur = self.ipost_dom[n];
        }
        false
    }
}
