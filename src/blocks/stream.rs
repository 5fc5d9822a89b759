//! Finding the residual stream: the chain of values every path from the embedding to the output
//! passes through, and the residual branches between them.
//!
//! 1. `CutDag`: the dataflow DAG with shape reads cut (every stream value has the same shape,
//!    so reading it carries no data; otherwise T5's position bias, computed from shapes inside
//!    layer 0 and read by every layer, would be a path around every stream value), plus a
//!    virtual sink after the final outputs and a vertex per graph input.
//! 2. `PostDominators`: the post-dominator tree towards the sink. The stream is the chain of
//!    post-dominators of its start (`stream_start`): the token-embedding lookup, or the graph
//!    input of a model fed embeddings. Mask and rotary paths join the chain only at the end.
//! 3. `Segments`: the nodes between consecutive chain values. A segment that does a matrix
//!    product and whose end adds its own input back is a residual branch.
//! 4. `Segments::stream`: the other segments (post-norm LayerNorm, fp16 clamps, casts) are
//!    merged into the branch before them; before the first branch they are prologue, and after
//!    the last one the last sub-block takes as many as the previous one of its kind did.

use petgraph::algo::dominators::{simple_fast, Dominators};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::Reversed;

use crate::graph::{Graph, Source};

/// The sub-block boundaries on the stream.
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

pub fn find(g: &Graph) -> Result<Stream, NotFound> {
    let order = g.topo_order().map_err(|e| NotFound(e.to_string()))?;
    let cut = CutDag::new(g);
    let pdom = PostDominators::new(&cut, &order);
    let start = stream_start(&cut, &pdom, &order)
        .ok_or_else(|| NotFound("no node reaches the graph outputs".into()))?;
    let segments = Segments::new(&cut, &order, pdom.chain(start));
    let branches = segments.residual_branches();
    log::debug!(
        "stream: chain of {} values, residual branches at segments {branches:?}",
        segments.chain.len()
    );
    if branches.len() < 2 {
        return Err(NotFound(format!(
            "found {} stream values but {} residual branch{} (a transformer encoder has an \
             attention and a feed-forward branch per layer)",
            segments.chain.len(),
            branches.len(),
            if branches.len() == 1 { "" } else { "es" }
        )));
    }
    segments.stream(&branches)
}

/// The dataflow DAG the stream is a chain of post-dominators on. Vertices: the graph's nodes
/// (same indices), then a virtual sink, then one vertex per fed graph input (so that a model fed
/// embeddings directly has its first stream value on the chain). Edges into shape reads are cut.
struct CutDag<'a, 'g> {
    g: &'a Graph<'g>,
    dag: DiGraph<(), ()>,
    inputs: Vec<&'g str>,
}

impl<'a, 'g> CutDag<'a, 'g> {
    fn new(g: &'a Graph<'g>) -> Self {
        let inputs: Vec<&str> = g
            .proto
            .input
            .iter()
            .map(|i| i.name())
            .filter(|&i| g.source(i) == Some(Source::Input))
            .collect();
        let vertices = g.len() + 1 + inputs.len();
        let mut dag = DiGraph::with_capacity(vertices, g.dag.edge_count() + 4);
        for _ in 0..vertices {
            dag.add_node(());
        }
        let mut cut = CutDag { g, dag, inputs };
        cut.add_data_edges();
        cut.add_sink_edges();
        cut
    }

    fn add_data_edges(&mut self) {
        let g = self.g;
        for e in g.dag.raw_edges() {
            let (p, c) = (e.source().index(), e.target().index());
            if self.reads_data(c) {
                self.dag.add_edge(NodeIndex::new(p), NodeIndex::new(c), ());
            }
        }
        for (j, &i) in self.inputs.iter().enumerate() {
            for &c in g.consumers(i) {
                if self.reads_data(c) {
                    let input = NodeIndex::new(g.len() + 1 + j);
                    self.dag.add_edge(input, NodeIndex::new(c), ());
                }
            }
        }
    }

    /// The sink follows the final outputs only: an output that is also read further on (SDXL
    /// exports list every layer's `hidden_states`; `last_hidden_state` feeds the pooler) is a
    /// tap on the stream, and an edge from it to the sink would bypass every later stream value.
    fn add_sink_edges(&mut self) {
        let g = self.g;
        let through_identity = |mut v: &'g str| {
            while let Some(p) = g.producer(v) {
                match g.node(p) {
                    n if n.op_type() == "Identity" && !n.input.is_empty() => v = &n.input[0],
                    _ => break,
                }
            }
            v
        };
        let is_tap = |v: &'g str| {
            g.consumers(through_identity(v))
                .iter()
                .any(|&c| g.node(c).op_type() != "Identity")
        };
        let outputs = || g.proto.output.iter().map(|o| o.name());
        let finals: Vec<&str> = outputs().filter(|&o| !is_tap(o)).collect();
        let finals = if finals.is_empty() {
            outputs().collect()
        } else {
            finals
        };
        for o in finals {
            if let Some(p) = g.producer(o).or_else(|| self.input_vertex(o)) {
                let sink = NodeIndex::new(self.sink());
                self.dag.add_edge(NodeIndex::new(p), sink, ());
            }
        }
    }

    /// Whether node `c` reads its inputs' data (not only their shape).
    fn reads_data(&self, c: usize) -> bool {
        !is_shape_read(self.g.node(c).op_type())
    }

    fn sink(&self) -> usize {
        self.g.len()
    }

    fn input_vertex(&self, name: &str) -> Option<usize> {
        let j = self.inputs.iter().position(|&i| i == name)?;
        Some(self.g.len() + 1 + j)
    }

    fn is_input_vertex(&self, v: usize) -> bool {
        v > self.sink()
    }

    fn vertices(&self) -> usize {
        self.dag.node_count()
    }
}

/// The post-dominator tree of the cut DAG, rooted at the sink, with each vertex's depth in it.
struct PostDominators {
    tree: Dominators<NodeIndex>,
    sink: usize,
    depth: Vec<Option<usize>>,
}

impl PostDominators {
    /// `order` is the graph's topological order.
    fn new(cut: &CutDag, order: &[usize]) -> Self {
        let sink = cut.sink();
        let tree = simple_fast(Reversed(&cut.dag), NodeIndex::new(sink));
        let mut pdom = PostDominators {
            tree,
            sink,
            depth: vec![None; cut.vertices()],
        };
        // The nodes come in reverse topological order so that a node's immediate
        // post-dominator (always later) is done first.
        pdom.depth[sink] = Some(0);
        for i in order.iter().rev().copied().chain(sink + 1..cut.vertices()) {
            pdom.depth[i] = pdom.parent(i).and_then(|p| pdom.depth[p]).map(|d| d + 1);
        }
        pdom
    }

    fn parent(&self, i: usize) -> Option<usize> {
        self.tree
            .immediate_dominator(NodeIndex::new(i))
            .map(|x| x.index())
    }

    /// The post-dominators of `start`, nearest first, `start` included and the sink not.
    fn chain(&self, start: usize) -> Vec<usize> {
        let mut chain = vec![start];
        while let Some(p) = self.parent(*chain.last().unwrap_or(&self.sink)) {
            if p == self.sink {
                break;
            }
            chain.push(p);
        }
        chain
    }
}

/// Where the stream starts: the token-embedding lookup, a Gather from a 2-D weight table with
/// indices computed from a graph input (the deepest one in the post-dominator tree). Depth
/// alone would pick a node inside layer 0's attention, whose single-path chain down to the next
/// stream value is longer than the embedding's. A model without one (fed embeddings directly)
/// starts at the deepest graph input, and failing that at the deepest node.
fn stream_start(cut: &CutDag, pdom: &PostDominators, order: &[usize]) -> Option<usize> {
    let g = cut.g;
    let mut from_input = vec![false; g.len()];
    for &i in order {
        from_input[i] = cut.reads_data(i)
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
            .chain(cut.sink() + 1..cut.vertices())
            .filter(|&i| pdom.depth[i].is_some() && pick(i))
            .max_by_key(|&i| (pdom.depth[i], std::cmp::Reverse(i)))
    };
    let is_node = |i: usize| i < cut.sink();
    deepest_of(&|i| is_node(i) && is_embedding(i))
        .or_else(|| deepest_of(&|i| cut.is_input_vertex(i)))
        .or_else(|| deepest_of(&is_node))
}

/// The stream's chain of post-dominators and the nodes between consecutive chain vertices:
/// segment `k` holds the nodes whose latest chain ancestor is `chain[k]`.
struct Segments<'c, 'a, 'g> {
    cut: &'c CutDag<'a, 'g>,
    chain: Vec<usize>,
    nodes: Vec<Vec<usize>>,
}

impl<'c, 'a, 'g> Segments<'c, 'a, 'g> {
    fn new(cut: &'c CutDag<'a, 'g>, order: &[usize], chain: Vec<usize>) -> Self {
        let g = cut.g;
        let mut pos = vec![None; cut.vertices()];
        for (k, &c) in chain.iter().enumerate() {
            pos[c] = Some(k);
        }
        // The latest chain vertex each node is (strictly) downstream of.
        let mut latest: Vec<Option<usize>> = vec![None; g.len()];
        for &i in order {
            if !cut.reads_data(i) {
                continue;
            }
            let from_inputs = g.reads(i).iter().filter_map(|v| pos[cut.input_vertex(v)?]);
            latest[i] = g
                .predecessors(i)
                .filter_map(|p| latest[p].max(pos[p]))
                .chain(from_inputs)
                .max();
        }
        let mut nodes: Vec<Vec<usize>> = vec![Vec::new(); chain.len().saturating_sub(1)];
        for &i in order {
            if let Some(segment) = latest[i].and_then(|k| nodes.get_mut(k)) {
                segment.push(i);
            }
        }
        Segments { cut, chain, nodes }
    }

    /// The value chain vertex `k` hands to its segment.
    fn value(&self, k: usize) -> Option<&'g str> {
        let cut = self.cut;
        if cut.is_input_vertex(self.chain[k]) {
            return Some(cut.inputs[self.chain[k] - cut.sink() - 1]);
        }
        let readers: &[usize] = self.nodes.get(k).map_or(&[], |s| s.as_slice());
        cut.g
            .node(self.chain[k])
            .output
            .iter()
            .find(|o| !o.is_empty() && cut.g.consumers(o).iter().any(|r| readers.contains(r)))
            .map(String::as_str)
    }

    /// Segments that are residual branches: they do matrix products and their end adds the
    /// segment's input back.
    fn residual_branches(&self) -> Vec<usize> {
        let g = self.cut.g;
        (0..self.nodes.len())
            .filter(|&k| {
                let Some(start) = self.value(k) else {
                    return false;
                };
                let nodes = &self.nodes[k];
                nodes.iter().any(|&i| is_matmul(g.node(i).op_type()))
                    && nodes.iter().any(|&i| {
                        let node = g.node(i);
                        node.op_type() == "Add" && node.input.iter().any(|x| x == start)
                    })
            })
            .collect()
    }

    /// The sub-block boundaries, with the segments between branches merged into the branch
    /// before them; `branches` has at least two.
    fn stream(&self, branches: &[usize]) -> Result<Stream, NotFound> {
        let mut trailing: Vec<usize> = branches.windows(2).map(|w| w[1] - w[0] - 1).collect();
        let last = *branches.last().unwrap_or(&0);
        let after_last = self.nodes.len() - last - 1;
        let same_kind_before = if branches.len() >= 3 {
            trailing[branches.len() - 3]
        } else {
            trailing[branches.len() - 2]
        };
        trailing.push(same_kind_before.min(after_last));
        let end = last + 1 + trailing[branches.len() - 1];
        let values: Option<Vec<String>> = branches
            .iter()
            .map(|&k| self.value(k))
            .chain([self.first_output(end)])
            .map(|v| v.map(str::to_string))
            .collect();
        let values =
            values.ok_or_else(|| NotFound("a stream node has no output read downstream".into()))?;
        Ok(Stream { values, trailing })
    }

    /// The first output of chain vertex `k` when it is a node (the value the last sub-block
    /// ends with).
    fn first_output(&self, k: usize) -> Option<&'g str> {
        let &v = self.chain.get(k).filter(|&&v| v < self.cut.sink())?;
        let node = self.cut.g.node(v);
        node.output
            .iter()
            .find(|o| !o.is_empty())
            .map(String::as_str)
    }
}
