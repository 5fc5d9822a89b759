//! Finding the residual stream: the chain of values every path from the embedding to the output
//! passes through, and the residual branches between them.
//!
//! Shape reads are cut first (every stream value has the same shape, so reading it carries no
//! data); otherwise T5's position bias, computed from shapes inside layer 0 and read by every
//! layer, would be a path around every stream value. On the remaining dataflow DAG the stream is
//! a chain of post-dominators; we take the chain of the deepest node in the post-dominator tree,
//! which starts in the embedding (mask and rotary paths join the chain only late).

use anyhow::Result;
use petgraph::algo::dominators::simple_fast;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::Reversed;

use crate::graph::{Graph, Source};

/// What pass 1 finds: the sub-block boundaries on the stream.
#[derive(Debug, Clone)]
pub struct Stream {
    /// `h_0 .. h_K`: sub-block `i` maps `values[i]` to `values[i + 1]`.
    pub values: Vec<String>,
    /// How many weight-free-of-matmul segments (post-norm LayerNorm, fp16 clamps, casts) were
    /// merged after each residual branch.
    pub trailing: Vec<usize>,
}

/// Ops whose read of a tensor is a read of its shape only.
pub fn is_shape_read(op: &str) -> bool {
    matches!(op, "Shape" | "Size")
}

fn is_matmul(op: &str) -> bool {
    matches!(op, "MatMul" | "Gemm" | "Einsum" | "Conv" | "MatMulInteger")
}

/// Explanation of a failure, for `SkrrError::BadModel`.
#[derive(Debug)]
pub struct NotFound(pub String);

pub fn find<'a>(g: &Graph<'a>) -> Result<Stream, NotFound> {
    // Vertices: the nodes, then a virtual sink, then one vertex per graph input (so that a
    // model fed embeddings directly has its first stream value on the chain).
    let n = g.len();
    let sink = n;
    let inputs: Vec<&str> = g
        .proto
        .input
        .iter()
        .map(|i| i.name())
        .filter(|&i| g.source(i) == Some(Source::Input))
        .collect();
    let input_vertex = |name: &str| inputs.iter().position(|&i| i == name).map(|j| n + 1 + j);
    let vertices = n + 1 + inputs.len();
    let mut dag: DiGraph<(), ()> = DiGraph::with_capacity(vertices, g.dag.edge_count() + 4);
    for _ in 0..vertices {
        dag.add_node(());
    }
    let data_edge = |c: usize| !is_shape_read(g.node(c).op_type());
    for e in g.dag.raw_edges() {
        let (p, c) = (e.source().index(), e.target().index());
        if data_edge(c) {
            dag.add_edge(NodeIndex::new(p), NodeIndex::new(c), ());
        }
    }
    for (j, &i) in inputs.iter().enumerate() {
        for &c in g.consumers(i) {
            if data_edge(c) {
                dag.add_edge(NodeIndex::new(n + 1 + j), NodeIndex::new(c), ());
            }
        }
    }
    // The sink follows the final outputs only: an output that is also read further on (SDXL
    // exports list every layer's `hidden_states`; `last_hidden_state` feeds the pooler) is a tap
    // on the stream, and an edge from it to the sink would bypass every later stream value.
    let through_identity = |mut v: &'a str| {
        while let Some(p) = g.producer(v) {
            match g.node(p) {
                n if n.op_type() == "Identity" && !n.input.is_empty() => v = &n.input[0],
                _ => break,
            }
        }
        v
    };
    let is_tap = |v: &'a str| {
        g.consumers(through_identity(v))
            .iter()
            .any(|&c| g.node(c).op_type() != "Identity")
    };
    let finals: Vec<&str> = g
        .proto
        .output
        .iter()
        .map(|o| o.name())
        .filter(|&o| !is_tap(o))
        .collect();
    let finals = if finals.is_empty() {
        g.proto.output.iter().map(|o| o.name()).collect()
    } else {
        finals
    };
    for o in finals {
        if let Some(p) = g.producer(o).or_else(|| input_vertex(o)) {
            dag.add_edge(NodeIndex::new(p), NodeIndex::new(sink), ());
        }
    }
    let order = g.topo_order().map_err(|e| NotFound(e.to_string()))?;
    let pdom = simple_fast(Reversed(&dag), NodeIndex::new(sink));
    let ipdom = |i: usize| {
        pdom.immediate_dominator(NodeIndex::new(i))
            .map(|x| x.index())
    };

    // Depth in the post-dominator tree; the nodes come in reverse topological order so a node's
    // immediate post-dominator (always later) is done first.
    let mut depth: Vec<Option<usize>> = vec![None; vertices];
    depth[sink] = Some(0);
    for i in order.iter().rev().copied().chain(n + 1..vertices) {
        depth[i] = ipdom(i).and_then(|p| depth[p]).map(|d| d + 1);
    }
    // The stream starts at the token-embedding lookup: a Gather from a 2-D weight table with
    // indices computed from a graph input. (Depth in the post-dominator tree alone would pick a
    // node inside layer 0's attention, whose single-path chain down to the next stream value is
    // longer than the embedding's.) Models without one (fed embeddings directly) start at the
    // deepest graph input.
    let mut from_input = vec![false; n];
    for &i in &order {
        from_input[i] = data_edge(i)
            && (g
                .reads(i)
                .iter()
                .any(|v| g.source(v) == Some(Source::Input))
                || g.predecessors(i).any(|p| from_input[p]));
    }
    let is_embedding = |i: usize| {
        let node = g.node(i);
        node.op_type() == "Gather"
            && node
                .input
                .first()
                .and_then(|t| g.initializer(t))
                .is_some_and(|t| t.dims.len() == 2)
            && node.input.get(1).is_some_and(|ix| {
                g.source(ix) == Some(Source::Input) || g.producer(ix).is_some_and(|p| from_input[p])
            })
    };
    let deepest_of = |pick: &dyn Fn(usize) -> bool| {
        order
            .iter()
            .copied()
            .chain(n + 1..vertices)
            .filter(|&i| depth[i].is_some() && pick(i))
            .max_by_key(|&i| (depth[i], std::cmp::Reverse(i)))
    };
    let Some(deepest) = deepest_of(&|i| i < n && is_embedding(i))
        .or_else(|| deepest_of(&|i| i > n))
        .or_else(|| deepest_of(&|i| i < n))
    else {
        return Err(NotFound("no node reaches the graph outputs".into()));
    };
    let mut chain = vec![deepest];
    while let Some(p) = ipdom(*chain.last().unwrap_or(&sink)) {
        if p == sink {
            break;
        }
        chain.push(p);
    }
    let mut pos = vec![None; vertices];
    for (k, &c) in chain.iter().enumerate() {
        pos[c] = Some(k);
    }

    // The latest chain node each node is (strictly) downstream of: its segment.
    let mut anc: Vec<Option<usize>> = vec![None; n];
    for &i in &order {
        if !data_edge(i) {
            continue;
        }
        let from_inputs = g.reads(i).iter().filter_map(|v| pos[input_vertex(v)?]);
        anc[i] = g
            .predecessors(i)
            .filter_map(|p| anc[p].max(pos[p]))
            .chain(from_inputs)
            .max();
    }
    let segments = chain.len().saturating_sub(1);
    let mut seg_nodes: Vec<Vec<usize>> = vec![Vec::new(); segments];
    for &i in &order {
        if let Some(k) = anc[i] {
            if k < segments {
                seg_nodes[k].push(i);
            }
        }
    }
    let value_of = |k: usize| -> Option<&str> {
        if chain[k] > n {
            return Some(inputs[chain[k] - n - 1]);
        }
        let c = g.node(chain[k]);
        let readers: &[usize] = seg_nodes.get(k).map_or(&[], |s| s.as_slice());
        c.output
            .iter()
            .find(|o| !o.is_empty() && g.consumers(o).iter().any(|r| readers.contains(r)))
            .map(String::as_str)
    };
    // A residual branch: it does matrix products and its end adds the segment's input back.
    let heavy: Vec<usize> = (0..segments)
        .filter(|&k| {
            let Some(start) = value_of(k) else {
                return false;
            };
            let nodes = &seg_nodes[k];
            nodes.iter().any(|&i| is_matmul(g.node(i).op_type()))
                && nodes.iter().any(|&i| {
                    let node = g.node(i);
                    node.op_type() == "Add" && node.input.iter().any(|x| x == start)
                })
        })
        .collect();
    log::debug!(
        "stream: chain of {} values, residual branches at segments {heavy:?}",
        chain.len()
    );
    if heavy.len() < 2 {
        return Err(NotFound(format!(
            "found {} stream values but {} residual branch{} (a transformer encoder has an \
             attention and a feed-forward branch per layer)",
            chain.len(),
            heavy.len(),
            if heavy.len() == 1 { "" } else { "es" }
        )));
    }
    let mut trailing: Vec<usize> = heavy.windows(2).map(|w| w[1] - w[0] - 1).collect();
    let last = *heavy.last().unwrap_or(&0);
    let after_last = segments - last - 1;
    let same_kind_before = if heavy.len() >= 3 {
        trailing[heavy.len() - 3]
    } else {
        trailing[heavy.len() - 2]
    };
    trailing.push(same_kind_before.min(after_last));
    let mut values = Vec::with_capacity(heavy.len() + 1);
    for (i, &k) in heavy.iter().enumerate() {
        values.push(value_of(k));
        if i + 1 == heavy.len() {
            let end = k + 1 + trailing[i];
            values.push(if end < chain.len() && chain[end] < n {
                g.node(chain[end])
                    .output
                    .iter()
                    .find(|o| !o.is_empty())
                    .map(String::as_str)
            } else {
                None
            });
        }
    }
    let values: Option<Vec<String>> = values.into_iter().map(|v| v.map(str::to_string)).collect();
    let values =
        values.ok_or_else(|| NotFound("a stream node has no output read downstream".into()))?;
    Ok(Stream { values, trailing })
}
