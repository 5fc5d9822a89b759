//! The in-memory dataflow graph of a model: ONNX nodes as vertices and the values between them as
//! edges. Initializers stay outside the graph, referenced by name, so building a graph never
//! copies or touches weight bytes (a 4 GB external-data model costs only its node list).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use anyhow::{bail, Result};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::onnx::{GraphProto, NodeProto, TensorProto, ValueInfoProto};

/// Where a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Output `slot` of node `node`.
    Node {
        node: usize,
        slot: usize,
    },
    Input,
    Initializer,
}

/// Dataflow view of one `GraphProto`. Vertex `i` of `dag` is `proto.node[i]`; an edge carries the
/// name of the value it stands for.
pub struct Graph<'a> {
    pub proto: &'a GraphProto,
    pub dag: DiGraph<usize, &'a str>,
    sources: HashMap<&'a str, Source>,
    consumers: HashMap<&'a str, Vec<usize>>,
    initializers: HashMap<&'a str, &'a TensorProto>,
    /// Per node: the values it reads, explicit inputs first, then the outer-scope values its
    /// subgraphs (If/Loop/Scan bodies) read implicitly. Empty names (absent optionals) dropped.
    reads: Vec<Vec<&'a str>>,
}

impl<'a> Graph<'a> {
    /// Builds the graph and checks it: names unique, every read value defined.
    pub fn new(proto: &'a GraphProto) -> Result<Graph<'a>> {
        let mut sources: HashMap<&str, Source> = HashMap::new();
        let mut initializers = HashMap::new();
        for t in &proto.initializer {
            if initializers.insert(t.name(), t).is_some() {
                bail!("initializer {:?} is defined twice", t.name());
            }
            sources.insert(t.name(), Source::Initializer);
        }
        for i in &proto.input {
            // Before IR version 4 initializers were also listed as graph inputs.
            if initializers.contains_key(i.name()) {
                continue;
            }
            if sources.insert(i.name(), Source::Input).is_some() {
                bail!("graph input {:?} is defined twice", i.name());
            }
        }
        for (n, node) in proto.node.iter().enumerate() {
            for (slot, o) in node.output.iter().enumerate() {
                if o.is_empty() {
                    continue;
                }
                if sources.insert(o, Source::Node { node: n, slot }).is_some() {
                    bail!(
                        "value {o:?} is defined twice (again as output of node {})",
                        describe(node, n)
                    );
                }
            }
        }
        let mut dag = DiGraph::with_capacity(proto.node.len(), proto.node.len() * 2);
        for n in 0..proto.node.len() {
            dag.add_node(n);
        }
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut reads = Vec::with_capacity(proto.node.len());
        for (n, node) in proto.node.iter().enumerate() {
            let mut r: Vec<&str> = node
                .input
                .iter()
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .collect();
            for name in implicit_inputs(node) {
                if !r.contains(&name) {
                    r.push(name);
                }
            }
            for &v in &r {
                match sources.get(v) {
                    None => bail!(
                        "node {} reads {v:?}, which no node, input or initializer defines",
                        describe(node, n)
                    ),
                    Some(Source::Node { node: p, .. }) => {
                        dag.add_edge(NodeIndex::new(*p), NodeIndex::new(n), v);
                    }
                    Some(_) => {}
                }
                let c = consumers.entry(v).or_default();
                if c.last() != Some(&n) {
                    c.push(n);
                }
            }
            reads.push(r);
        }
        for o in &proto.output {
            if !sources.contains_key(o.name()) {
                bail!(
                    "graph output {:?} is not defined by any node or input",
                    o.name()
                );
            }
        }
        Ok(Graph {
            proto,
            dag,
            sources,
            consumers,
            initializers,
            reads,
        })
    }

    pub fn len(&self) -> usize {
        self.proto.node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.proto.node.is_empty()
    }

    pub fn node(&self, n: usize) -> &'a NodeProto {
        &self.proto.node[n]
    }

    pub fn source(&self, value: &str) -> Option<Source> {
        self.sources.get(value).copied()
    }

    /// The node producing `value`, if a node does.
    pub fn producer(&self, value: &str) -> Option<usize> {
        match self.sources.get(value) {
            Some(Source::Node { node, .. }) => Some(*node),
            _ => None,
        }
    }

    /// Nodes reading `value` (each once, in node order).
    pub fn consumers(&self, value: &str) -> &[usize] {
        self.consumers.get(value).map_or(&[], Vec::as_slice)
    }

    pub fn initializer(&self, name: &str) -> Option<&'a TensorProto> {
        self.initializers.get(name).copied()
    }

    /// Values node `n` reads, explicit and implicit (subgraph outer-scope references).
    pub fn reads(&self, n: usize) -> &[&'a str] {
        &self.reads[n]
    }

    pub fn predecessors(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.dag
            .neighbors_directed(NodeIndex::new(n), Direction::Incoming)
            .map(|i| i.index())
    }

    pub fn successors(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.dag
            .neighbors_directed(NodeIndex::new(n), Direction::Outgoing)
            .map(|i| i.index())
    }

    /// A topological order that keeps the file's order wherever it is already valid (Kahn's
    /// algorithm taking the lowest index first), so that repeated layers stay in the same
    /// relative order and their signatures compare equal.
    pub fn topo_order(&self) -> Result<Vec<usize>> {
        let n = self.len();
        let mut indegree = vec![0usize; n];
        for e in self.dag.raw_edges() {
            indegree[e.target().index()] += 1;
        }
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for e in self
                .dag
                .edges_directed(NodeIndex::new(i), Direction::Outgoing)
            {
                let t = petgraph::visit::EdgeRef::target(&e).index();
                indegree[t] -= 1;
                if indegree[t] == 0 {
                    ready.push(Reverse(t));
                }
            }
        }
        if order.len() < n {
            let stuck = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
            bail!(
                "the graph has a cycle through node {}",
                describe(self.node(stuck), stuck)
            );
        }
        Ok(order)
    }
}

/// A node for error messages: its name if it has one, else its op type, plus its index.
pub fn describe(node: &NodeProto, index: usize) -> String {
    if node.name().is_empty() {
        format!("#{index} ({})", node.op_type())
    } else {
        format!("#{index} {:?} ({})", node.name(), node.op_type())
    }
}

/// Structural checks every graph we read or write must pass: value names unique, every read
/// value defined, graph outputs defined, no cycle.
pub fn check(proto: &GraphProto) -> Result<()> {
    Graph::new(proto)?.topo_order().map(|_| ())
}

/// The graph inputs a caller must feed. An input with an initializer of the same name only
/// declares that initializer (required before IR version 4, and what exporters write with
/// `keep_initializers_as_inputs`): ONNX Runtime uses the initializer when nothing is fed.
pub fn fed_inputs(proto: &GraphProto) -> impl Iterator<Item = &ValueInfoProto> {
    let initializers: HashSet<&str> = proto.initializer.iter().map(|t| t.name()).collect();
    proto
        .input
        .iter()
        .filter(move |i| !initializers.contains(i.name()))
}

/// `proto` with its nodes in `Graph::topo_order`.
pub fn sorted(proto: &GraphProto) -> Result<GraphProto> {
    let order = Graph::new(proto)?.topo_order()?;
    let mut out = GraphProto {
        node: Vec::with_capacity(proto.node.len()),
        ..proto.clone_without_nodes()
    };
    out.node
        .extend(order.into_iter().map(|i| proto.node[i].clone()));
    Ok(out)
}

impl GraphProto {
    /// A copy of everything but the node list (initializers share their bytes).
    pub fn clone_without_nodes(&self) -> GraphProto {
        GraphProto {
            node: Vec::new(),
            name: self.name.clone(),
            initializer: self.initializer.clone(),
            sparse_initializer: self.sparse_initializer.clone(),
            doc_string: self.doc_string.clone(),
            input: self.input.clone(),
            output: self.output.clone(),
            value_info: self.value_info.clone(),
            quantization_annotation: self.quantization_annotation.clone(),
            metadata_props: self.metadata_props.clone(),
        }
    }
}

/// Why a row's output can depend on the other rows of its batch, if it can. Such a model is run
/// one prompt at a time, as a pipeline encoding one prompt runs it, so that D is a property of
/// the prompts (method doc: the same alone or in a padded batch) and not of how they were
/// batched:
/// - `DynamicQuantizeLinear` (dynamic int8 quantization) takes one scale and zero point over the
///   whole tensor, so each prompt's embedding changes with its batch mates and their padding;
/// - a model fed no attention mask (Optimum's `t5-encoder` and `clip-text` exports) sees a
///   batch's padding as tokens; a bidirectional one (T5) then changes each prompt's output with
///   the longest prompt of its batch. Unless every prompt is padded to one length
///   (`include_padding`), as SD3 and FLUX feed T5.
pub fn batch_coupling(g: &GraphProto, include_padding: bool) -> Option<&'static str> {
    if g.node
        .iter()
        .any(|n| n.op_type() == "DynamicQuantizeLinear")
    {
        return Some(
            "dynamically quantized model (DynamicQuantizeLinear: one scale per batch): each \
             prompt runs alone",
        );
    }
    let masked = fed_inputs(g).any(|i| i.name().to_ascii_lowercase().contains("mask"));
    (!masked && !include_padding).then_some(
        "the model takes no attention mask, so a prompt would attend to its batch mates' \
         padding: each prompt runs alone (--include-padding pads every prompt to --max-length \
         and batches them, as SD3 and FLUX feed T5)",
    )
}

/// `chunk` prompts per batch, or one when a model run has coupled rows ([`batch_coupling`]).
pub fn batch_size(coupling: Option<&str>, chunk: usize) -> usize {
    match coupling {
        Some(why) if chunk > 1 => {
            log::info!("{why}");
            1
        }
        _ => chunk,
    }
}

/// True when the node carries a subgraph (If/Loop/Scan bodies, or any custom op's graph).
pub fn has_subgraph(node: &NodeProto) -> bool {
    node.attribute
        .iter()
        .any(|a| a.g.is_some() || !a.graphs.is_empty())
}

/// Outer-scope values read by the node's subgraphs: names used inside and not defined inside.
pub fn implicit_inputs(node: &NodeProto) -> Vec<&str> {
    let mut out = Vec::new();
    for a in &node.attribute {
        for g in a.g.iter().map(|g| g.as_ref()).chain(a.graphs.iter()) {
            collect_outer_reads(g, &mut HashSet::new(), &mut out);
        }
    }
    out
}

fn collect_outer_reads<'a>(
    g: &'a GraphProto,
    outer_defined: &mut HashSet<&'a str>,
    out: &mut Vec<&'a str>,
) {
    let mut defined: HashSet<&str> = outer_defined.clone();
    defined.extend(g.input.iter().map(|i| i.name()));
    defined.extend(g.initializer.iter().map(|t| t.name()));
    for n in &g.node {
        defined.extend(n.output.iter().map(String::as_str));
    }
    for n in &g.node {
        for i in &n.input {
            if !i.is_empty() && !defined.contains(i.as_str()) && !out.contains(&i.as_str()) {
                out.push(i);
            }
        }
        for a in &n.attribute {
            for sub in a.g.iter().map(|g| g.as_ref()).chain(a.graphs.iter()) {
                let mut d = defined.clone();
                collect_outer_reads(sub, &mut d, out);
            }
        }
    }
    for o in &g.output {
        if !defined.contains(o.name()) && !out.contains(&o.name()) {
            out.push(o.name());
        }
    }
}

/// The element type a value info declares, when it declares a tensor.
pub fn elem_type(vi: &ValueInfoProto) -> Option<i32> {
    match vi.r#type.as_ref()?.value.as_ref()? {
        crate::onnx::type_proto::Value::TensorType(t) => t.elem_type,
        _ => None,
    }
}

/// The fixed sizes a value info declares for a tensor's axes (`None` for a symbolic or missing
/// size), or `None` when it declares no shape.
pub fn fixed_dims(vi: &ValueInfoProto) -> Option<Vec<Option<i64>>> {
    use crate::onnx::proto::tensor_shape_proto::dimension::Value;
    match vi.r#type.as_ref()?.value.as_ref()? {
        crate::onnx::type_proto::Value::TensorType(t) => Some(
            t.shape
                .as_ref()?
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Vocabulary size of the model: rows of the embedding table gathered by `input_ids`.
pub fn model_vocab(graph: &GraphProto) -> Option<usize> {
    let input = graph.input.iter().find(|i| i.name() == "input_ids")?.name();
    graph
        .node
        .iter()
        .filter(|n| n.op_type() == "Gather" && n.input.get(1).map(String::as_str) == Some(input))
        .find_map(|n| {
            let table = graph
                .initializer
                .iter()
                .find(|t| Some(t.name()) == n.input.first().map(String::as_str))?;
            usize::try_from(*table.dims.first()?).ok()
        })
}

/// The output D and the fidelity check are measured on, the same for the engine and for
/// `compare`: `chosen` (`--measure`) when given, else `last_hidden_state` when the model has it
/// (CLIP with projection lists `text_embeds` first), else the first output.
pub fn measured_output(graph: &GraphProto, chosen: Option<&str>) -> Result<String> {
    if let Some(name) = chosen {
        if graph.output.iter().any(|o| o.name() == name) {
            return Ok(name.to_string());
        }
        let names: Vec<&str> = graph.output.iter().map(|o| o.name()).collect();
        return Err(crate::error::SkrrError::BadInput(format!(
            "--measure {name}: the model has no such output (its outputs: {})",
            names.join(", ")
        ))
        .into());
    }
    graph
        .output
        .iter()
        .find(|o| o.name() == "last_hidden_state")
        .or_else(|| graph.output.first())
        .map(|o| o.name().to_string())
        .ok_or_else(|| anyhow::anyhow!("the model has no outputs"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::onnx::{AttributeProto, ValueInfoProto};

    /// A node with an op type and value names, nothing else (shared by graph-level unit tests).
    pub(crate) fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn vi(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn graph(nodes: Vec<NodeProto>) -> GraphProto {
        GraphProto {
            node: nodes,
            input: vec![vi("x")],
            output: vec![vi("z")],
            initializer: vec![TensorProto {
                name: Some("w".into()),
                dims: vec![2],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn sorts_out_of_order_nodes_stably() {
        let g = graph(vec![
            node("Relu", &["y"], &["z"]),
            node("Add", &["x", "w"], &["y"]),
            node("Neg", &["x"], &["unused"]),
        ]);
        let order = Graph::new(&g).unwrap().topo_order().unwrap();
        assert_eq!(order, vec![1, 0, 2]);
        check(&g).unwrap();
        let s = sorted(&g).unwrap();
        assert_eq!(s.node[0].op_type(), "Add");
    }

    #[test]
    fn reports_cycles_undefined_values_and_duplicates() {
        let cyc = graph(vec![
            node("Add", &["x", "b"], &["a"]),
            node("Relu", &["a"], &["b"]),
            node("Relu", &["a"], &["z"]),
        ]);
        let e = check(&cyc).unwrap_err().to_string();
        assert!(e.contains("cycle") && e.contains("Add"), "{e}");

        let undef = graph(vec![node("Add", &["x", "nope"], &["z"])]);
        let e = check(&undef).unwrap_err().to_string();
        assert!(e.contains("\"nope\""), "{e}");

        let dup = graph(vec![
            node("Relu", &["x"], &["z"]),
            node("Neg", &["x"], &["z"]),
        ]);
        let e = check(&dup).unwrap_err().to_string();
        assert!(e.contains("defined twice"), "{e}");

        let missing_out = graph(vec![node("Relu", &["x"], &["y"])]);
        assert!(check(&missing_out).is_err());
    }

    #[test]
    fn subgraph_outer_reads_are_edges() {
        let body = GraphProto {
            node: vec![node("Identity", &["y"], &["o"])],
            output: vec![vi("o")],
            ..Default::default()
        };
        let mut iff = node("If", &["c"], &["z"]);
        iff.attribute.push(AttributeProto {
            name: Some("then_branch".into()),
            g: Some(Box::new(body)),
            ..Default::default()
        });
        let g = graph(vec![
            iff,
            node("Relu", &["x"], &["y"]),
            node("Cast", &["x"], &["c"]),
        ]);
        let graph = Graph::new(&g).unwrap();
        assert_eq!(graph.reads(0), &["c", "y"]);
        assert_eq!(graph.topo_order().unwrap(), vec![1, 2, 0]);
        assert!(has_subgraph(&g.node[0]));
    }
}
