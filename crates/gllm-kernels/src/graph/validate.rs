//! Graph validation: every way a graph can be malformed gets its own error,
//! naming the node and the problem.

use super::{
    BatchLayout, CompilerGraph, CompilerNode, DType, MatMulParams, NodeId, OpParams, TensorDesc, TensorRef,
};
use crate::scalar::{Arg, FnForm, Len, OpSignature, RegistryError, Returns, ScalarOpRegistry, TensorRole};
use crate::trace::{ComputePattern, OpTrace};
use std::fmt;

/// Names a node in an error: index, name and operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLabel {
    pub index: NodeId,
    pub name: Box<str>,
    pub op: &'static str,
}

impl NodeLabel {
    pub(super) fn of(graph: &CompilerGraph, index: NodeId) -> NodeLabel {
        let n = &graph.nodes[index];
        NodeLabel { index, name: n.name.as_str().into(), op: n.op.kind.name() }
    }
}

impl fmt::Display for NodeLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} `{}` ({})", self.index, self.name, self.op)
    }
}

fn shape_str(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// Why a graph is not a valid compiler input.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    #[error("{node}: operator is not registered ({source})")]
    UnknownOp {
        node: NodeLabel,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{node}: the operator's reference function could not be analysed: {source}")]
    Trace {
        node: NodeLabel,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{node}: takes {expected} input(s), got {got}")]
    Arity { node: NodeLabel, expected: usize, got: usize },
    #[error("{node}: produces {expected} output(s), {got} declared")]
    OutputArity { node: NodeLabel, expected: usize, got: usize },
    #[error("{node}: input {input} refers to graph input {index}, but the graph has {count} input(s)")]
    DanglingInput { node: NodeLabel, input: usize, index: usize, count: usize },
    #[error("{node}: input {input} refers to node {target}, which does not exist ({count} nodes)")]
    DanglingNode { node: NodeLabel, input: usize, target: NodeId, count: usize },
    #[error("{node}: input {input} refers to output {output} of node {target}, which has {count} output(s)")]
    DanglingOutput { node: NodeLabel, input: usize, target: NodeId, output: usize, count: usize },
    #[error("{node}: input {input} refers to weight `{name}`, which is not declared")]
    UnknownWeight { node: NodeLabel, input: usize, name: String },
    #[error("graph output {index} refers to {target}, which is not a node output")]
    BadGraphOutput { index: usize, target: String },
    #[error("graph output {index} ({target}) is already graph output {first}: list each tensor once")]
    DuplicateGraphOutput { index: usize, first: usize, target: String },
    #[error("graph has a cycle through {}", .nodes.join(" -> "))]
    Cycle { nodes: Vec<String> },
    #[error("{node}: {problem}")]
    Params { node: NodeLabel, problem: String },
    #[error("{node}: {what} is {got}, expected {expected}")]
    DtypeMismatch { node: NodeLabel, what: String, expected: DType, got: DType },
    #[error("{node}: {what} has shape {}, expected {}", shape_str(.got), shape_str(.expected))]
    ShapeMismatch { node: NodeLabel, what: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("the graph has {count} nodes, more than the limit of {limit}")]
    TooManyNodes { count: usize, limit: usize },
    #[error("{what} has shape {} ({}), more than the limit of {} bytes per tensor", shape_str(.shape), .bytes.map_or("more bytes than a usize holds".to_string(), |b| format!("{b} bytes")), .limit)]
    TensorTooLarge { what: String, shape: Vec<usize>, bytes: Option<usize>, limit: usize },
    #[error("{node}: output {output} is never used and is not a graph output")]
    UnusedOutput { node: NodeLabel, output: usize },
}

/// Graph-level arity of an op: its signature's, except that paired halves
/// feed the function's two half inputs from one tensor and write one.
fn graph_arity(sig: &OpSignature, params: &OpParams) -> (usize, usize) {
    match params {
        OpParams::PairedHalves { .. } => (sig.num_inputs().saturating_sub(1), 1),
        _ => (sig.num_inputs(), sig.num_outputs()),
    }
}

struct Checker<'a> {
    graph: &'a CompilerGraph,
    index: NodeId,
}

impl Checker<'_> {
    fn label(&self) -> NodeLabel {
        NodeLabel::of(self.graph, self.index)
    }

    fn params(&self, problem: impl Into<String>) -> GraphError {
        GraphError::Params { node: self.label(), problem: problem.into() }
    }

    fn shape(&self, what: impl Into<String>, expected: Vec<usize>, got: &[usize]) -> Result<(), GraphError> {
        if expected == got {
            return Ok(());
        }
        Err(GraphError::ShapeMismatch { node: self.label(), what: what.into(), expected, got: got.to_vec() })
    }

    fn node(&self) -> &CompilerNode {
        &self.graph.nodes[self.index]
    }

    fn input_shape(&self, i: usize) -> &[usize] {
        &self.graph.desc(&self.node().inputs[i]).expect("references checked").shape
    }
}

pub(super) fn validate(graph: &CompilerGraph, registry: &ScalarOpRegistry) -> Result<(), GraphError> {
    check_limits(graph)?;
    for index in 0..graph.nodes.len() {
        check_node(&Checker { graph, index }, registry)?;
    }
    for (index, out) in graph.outputs.iter().enumerate() {
        let ok = matches!(out, TensorRef::Node { .. }) && graph.desc(out).is_some();
        if !ok {
            return Err(GraphError::BadGraphOutput { index, target: out.to_string() });
        }
        if let Some(first) = graph.outputs[..index].iter().position(|o| o == out) {
            return Err(GraphError::DuplicateGraphOutput { index, first, target: out.to_string() });
        }
    }
    check_acyclic(graph)?;
    check_all_used(graph)
}

/// Node count and every tensor's byte size, overflow-checked, before any
/// analysis sizes buffers from them.
fn check_limits(graph: &CompilerGraph) -> Result<(), GraphError> {
    use super::{MAX_NODES, MAX_TENSOR_BYTES};
    if graph.nodes.len() > MAX_NODES {
        return Err(GraphError::TooManyNodes { count: graph.nodes.len(), limit: MAX_NODES });
    }
    let check = |what: &dyn Fn() -> String, d: &TensorDesc| match d.checked_size_bytes() {
        Some(b) if b <= MAX_TENSOR_BYTES => Ok(()),
        bytes => Err(GraphError::TensorTooLarge {
            what: what(),
            shape: d.shape.clone(),
            bytes,
            limit: MAX_TENSOR_BYTES,
        }),
    };
    for (name, d) in &graph.inputs {
        check(&|| format!("graph input `{name}`"), d)?;
    }
    for (name, d) in &graph.weights {
        check(&|| format!("weight `{name}`"), d)?;
    }
    for index in 0..graph.nodes.len() {
        for (o, d) in graph.nodes[index].outputs.iter().enumerate() {
            check(&|| format!("{}: output {o}", NodeLabel::of(graph, index)), d)?;
        }
    }
    Ok(())
}

fn check_node(c: &Checker, registry: &ScalarOpRegistry) -> Result<(), GraphError> {
    let node = c.node();
    let op = registry
        .get(node.op.kind)
        .map_err(|e| GraphError::UnknownOp { node: c.label(), source: Box::new(e) })?;
    let sig = op.signature();
    let (n_in, n_out) = graph_arity(sig, &node.op.params);
    if node.inputs.len() != n_in {
        return Err(GraphError::Arity { node: c.label(), expected: n_in, got: node.inputs.len() });
    }
    if node.outputs.len() != n_out {
        return Err(GraphError::OutputArity { node: c.label(), expected: n_out, got: node.outputs.len() });
    }
    check_references(c)?;
    let scalars = sig.scalars().count();
    let given = node.op.params.scalar_args().len();
    if scalars != given {
        return Err(c.params(format!(
            "the operator takes {scalars} scalar parameter(s), {given} given by {:?}",
            node.op.params
        )));
    }
    let trace = op.trace().map_err(|e| GraphError::Trace { node: c.label(), source: Box::new(e.into()) })?;
    check_dtypes(c)?;
    check_shapes(c, sig, &trace)
}

fn check_references(c: &Checker) -> Result<(), GraphError> {
    let g = c.graph;
    for (input, r) in c.node().inputs.iter().enumerate() {
        match r {
            TensorRef::Input(index) if *index >= g.inputs.len() => {
                return Err(GraphError::DanglingInput {
                    node: c.label(),
                    input,
                    index: *index,
                    count: g.inputs.len(),
                })
            }
            TensorRef::Node { node, .. } if *node >= g.nodes.len() => {
                return Err(GraphError::DanglingNode {
                    node: c.label(),
                    input,
                    target: *node,
                    count: g.nodes.len(),
                })
            }
            TensorRef::Node { node, output } if *output >= g.nodes[*node].outputs.len() => {
                return Err(GraphError::DanglingOutput {
                    node: c.label(),
                    input,
                    target: *node,
                    output: *output,
                    count: g.nodes[*node].outputs.len(),
                })
            }
            TensorRef::Weight(name) if g.desc(r).is_none() => {
                return Err(GraphError::UnknownWeight { node: c.label(), input, name: name.clone() })
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_dtypes(c: &Checker) -> Result<(), GraphError> {
    let node = c.node();
    let expected = node.outputs[0].dtype;
    let inputs = node.inputs.iter().map(|r| c.graph.desc(r).expect("references checked").dtype);
    let tensors = inputs.enumerate().map(|(i, d)| (format!("input {i}"), d));
    let outputs = node.outputs.iter().enumerate().skip(1).map(|(i, d)| (format!("output {i}"), d.dtype));
    for (what, got) in tensors.chain(outputs) {
        if got != expected {
            return Err(GraphError::DtypeMismatch { node: c.label(), what, expected, got });
        }
    }
    Ok(())
}

fn check_shapes(c: &Checker, sig: &OpSignature, trace: &OpTrace) -> Result<(), GraphError> {
    let node = c.node();
    match (&trace.pattern, &node.op.params) {
        (ComputePattern::Gemm { .. }, OpParams::MatMul(p)) => check_matmul(c, p),
        (ComputePattern::Gemm { .. }, _) => Err(c.params("a GEMM needs MatMul parameters (m, n, k)")),
        (_, OpParams::MatMul(_)) => Err(c.params("MatMul parameters on an operator that is not a GEMM")),
        (ComputePattern::Injective { num_inputs, num_outputs: 2 }, OpParams::PairedHalves { period })
            if *num_inputs >= 2 =>
        {
            check_paired_halves(c, *period)
        }
        (_, OpParams::PairedHalves { .. }) => Err(c.params(
            "paired halves need an elementwise function of two half inputs (and tables) with two outputs",
        )),
        (ComputePattern::NormLike | ComputePattern::Reduction, OpParams::Softmax { axis }) if *axis != -1 => {
            Err(c.params(format!("softmax over axis {axis} is not supported; only the last axis (-1)")))
        }
        (_, OpParams::Softmax { .. }) if trace.pattern != ComputePattern::NormLike => {
            Err(c.params("softmax parameters on an operator that is not a row normalisation"))
        }
        (_, OpParams::Norm { .. })
            if !matches!(trace.pattern, ComputePattern::NormLike | ComputePattern::Reduction) =>
        {
            Err(c.params("norm parameters on an operator that is not row-wise"))
        }
        _ => check_rowwise_or_elementwise(c, sig),
    }
}

/// Elementwise ops and row ops (norms, softmax, reductions): the first
/// activation input is the data; other activation inputs match it exactly;
/// weights, biases, residuals and tables broadcast over leading dimensions.
fn check_rowwise_or_elementwise(c: &Checker, sig: &OpSignature) -> Result<(), GraphError> {
    let node = c.node();
    let per_row = sig.form() == FnForm::Slices;
    if per_row && sig.args().iter().any(|a| matches!(a, Arg::Input { len: Len::Product(..), .. })) {
        return Err(
            c.params("operators with matrix-shaped inputs other than GEMMs are not supported in graphs")
        );
    }
    let roles: Vec<TensorRole> = sig
        .inputs()
        .map(|(_, a)| match a {
            Arg::Element { role, .. } | Arg::Input { role, .. } => *role,
            _ => unreachable!("inputs() yields tensor arguments"),
        })
        .collect();
    let data = roles.iter().position(|r| *r == TensorRole::Activation).unwrap_or(0);
    let data_shape = c.input_shape(data).to_vec();
    if data_shape.is_empty() {
        return Err(GraphError::ShapeMismatch {
            node: c.label(),
            what: format!("input {data}"),
            expected: vec![1],
            got: vec![],
        });
    }
    for (i, role) in roles.iter().enumerate() {
        let shape = c.input_shape(i);
        if *role == TensorRole::Activation {
            c.shape(format!("input {i}"), data_shape.clone(), shape)?;
        } else if per_row {
            c.shape(format!("input {i} ({role:?})"), vec![*data_shape.last().unwrap()], shape)?;
        } else if shape.is_empty() || !data_shape.ends_with(shape) {
            // Broadcast over leading dimensions only: report the full shape.
            c.shape(format!("input {i} ({role:?}, broadcast)"), data_shape.clone(), shape)?;
        }
    }
    let mut out_shape = data_shape;
    if sig.returns() == Returns::RowScalar {
        *out_shape.last_mut().unwrap() = 1;
    }
    c.shape("output 0", out_shape, &node.outputs[0].shape)
}

fn check_paired_halves(c: &Checker, period: usize) -> Result<(), GraphError> {
    if period == 0 || period % 2 != 0 {
        return Err(c.params(format!("the paired-halves period must be even and non-zero, got {period}")));
    }
    let x = c.input_shape(0).to_vec();
    let width = x.last().copied().unwrap_or(0);
    if x.len() < 2 || width % period != 0 {
        return Err(c.params(format!(
            "a paired-halves input must be [rows, blocks·{period}], got {}",
            shape_str(&x)
        )));
    }
    let rows = x[..x.len() - 1].iter().product();
    for i in 1..c.node().inputs.len() {
        c.shape(format!("input {i} (table)"), vec![rows, period / 2], c.input_shape(i))?;
    }
    c.shape("output 0", x, &c.node().outputs[0].shape)
}

fn check_matmul(c: &Checker, p: &MatMulParams) -> Result<(), GraphError> {
    if p.batch == 0 || p.b_shared_by == 0 || p.batch % p.b_shared_by != 0 {
        return Err(c.params(format!(
            "batch {} must be a non-zero multiple of b_shared_by {}",
            p.batch, p.b_shared_by
        )));
    }
    let operand = |batch: usize, rows: usize, cols: usize, layout: BatchLayout| match (batch, layout) {
        (1, _) => vec![rows, cols],
        (_, BatchLayout::Stacked) => vec![batch, rows, cols],
        (_, BatchLayout::Interleaved) => vec![rows, batch * cols],
    };
    // A batched operand is a view of contiguous row-major memory: its layout,
    // not its shape, says where each batch element is, so any shape with the
    // right number of elements names the same memory (a mixture of experts
    // reads one tensor per expert in one product and per token in the next).
    let check = |what: &str, batch: usize, expected: Vec<usize>, got: &[usize]| {
        let n = |s: &[usize]| s.iter().product::<usize>();
        if batch > 1 && n(&expected) == n(got) {
            return Ok(());
        }
        c.shape(what, expected, got)
    };
    let b_batch = p.batch / p.b_shared_by;
    let (b_rows, b_cols) = if p.transpose_b { (p.n, p.k) } else { (p.k, p.n) };
    check("input 0 (A)", p.batch, operand(p.batch, p.m, p.k, p.a_layout), c.input_shape(0))?;
    check("input 1 (B)", b_batch, operand(b_batch, b_rows, b_cols, p.b_layout), c.input_shape(1))?;
    check("output 0 (C)", p.batch, operand(p.batch, p.m, p.n, p.c_layout), &c.node().outputs[0].shape)
}

/// Kahn's algorithm; on failure, walks predecessors inside the leftover set
/// until a node repeats, and reports that cycle.
fn check_acyclic(graph: &CompilerGraph) -> Result<(), GraphError> {
    if topological_order(graph).is_some() {
        return Ok(());
    }
    let preds = |n: NodeId| {
        graph.nodes[n].inputs.iter().filter_map(|r| match r {
            TensorRef::Node { node, .. } => Some(*node),
            _ => None,
        })
    };
    // Some node on a cycle: follow predecessors that cannot be scheduled.
    let order = partial_order(graph);
    let mut scheduled = vec![false; graph.nodes.len()];
    for n in order {
        scheduled[n] = true;
    }
    let start = (0..graph.nodes.len()).find(|&n| !scheduled[n]).expect("a cycle leaves nodes unscheduled");
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = preds(cur).find(|&p| !scheduled[p]).expect("unscheduled nodes have unscheduled preds");
        if let Some(pos) = path.iter().position(|&n| n == next) {
            let mut cycle: Vec<NodeId> = path[pos..].to_vec();
            cycle.reverse();
            // Start at the lowest node so the report does not depend on the walk.
            let lowest = cycle.iter().enumerate().min_by_key(|(_, &n)| n).map_or(0, |(i, _)| i);
            cycle.rotate_left(lowest);
            cycle.push(cycle[0]);
            let nodes = cycle.iter().map(|&n| format!("node {n} `{}`", graph.nodes[n].name)).collect();
            return Err(GraphError::Cycle { nodes });
        }
        path.push(next);
        cur = next;
    }
}

fn partial_order(graph: &CompilerGraph) -> Vec<NodeId> {
    let n = graph.nodes.len();
    let mut indegree = vec![0usize; n];
    let mut consumers: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    for (i, node) in graph.nodes.iter().enumerate() {
        for r in &node.inputs {
            if let TensorRef::Node { node: p, .. } = r {
                indegree[i] += 1;
                consumers[*p].push(i);
            }
        }
    }
    // Lowest index first: keeps the front end's order when it is already topological.
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<NodeId>> =
        (0..n).filter(|&i| indegree[i] == 0).map(std::cmp::Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &c in &consumers[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(std::cmp::Reverse(c));
            }
        }
    }
    order
}

/// A topological order of the nodes (stable: lowest index first), or `None`
/// if the graph has a cycle.
pub(super) fn topological_order(graph: &CompilerGraph) -> Option<Vec<NodeId>> {
    let order = partial_order(graph);
    (order.len() == graph.nodes.len()).then_some(order)
}

fn check_all_used(graph: &CompilerGraph) -> Result<(), GraphError> {
    let mut used: Vec<Vec<bool>> = graph.nodes.iter().map(|n| vec![false; n.outputs.len()]).collect();
    let refs = graph.nodes.iter().flat_map(|n| n.inputs.iter()).chain(&graph.outputs);
    for r in refs {
        if let TensorRef::Node { node, output } = r {
            used[*node][*output] = true;
        }
    }
    for (index, outs) in used.iter().enumerate() {
        if let Some(output) = outs.iter().position(|u| !u) {
            return Err(GraphError::UnusedOutput { node: NodeLabel::of(graph, index), output });
        }
    }
    Ok(())
}
