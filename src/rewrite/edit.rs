//! Graph edits: the data a plan becomes, and the one function that applies them.
//!
//! In the spirit of tract's `ModelPatch`: deciding *what* to change (`plan_edits`) is separate
//! from changing it (`apply_edits`), so the edits can be logged, tested and audited on their own,
//! and every rewrite goes through the same code path whatever the plan.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{anyhow, bail, ensure, Result};

use crate::action::Action;
use crate::blocks::Analysis;
use crate::compensate::{Compensation, OutputMap};
use crate::graph;
use crate::onnx::{GraphProto, NodeProto, TensorProto, ValueInfoProto};

use super::ReuseWeights;

/// One change to the graph. Indices refer to the nodes of the graph the edits were planned on
/// (`Analysis::graph`).
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Drop the nodes of sub-block `at` (skipped, or replaced by a re-use).
    Remove { at: usize, nodes: Vec<usize> },
    /// Every reader of value `from` (nodes and graph outputs) reads `to` instead: a skipped
    /// sub-block's output becomes its input, a replaced one's becomes the clone's output.
    Bypass { from: String, to: String },
    /// A second call of sub-block `source` at position `at`: copies of its `nodes` with every
    /// value renamed through `values` (names not listed, the initializers in share mode, stay)
    /// and node names through `node_names` (parallel to `nodes`).
    Clone {
        source: usize,
        at: usize,
        nodes: Vec<usize>,
        values: BTreeMap<String, String>,
        node_names: Vec<Option<String>>,
    },
    /// A copy of initializer `from` named `to` (`--reuse-weights copy`, for engines that cannot
    /// share a weight between two layers). A graph input declaring `from` is copied along.
    CopyInitializer { from: String, to: String },
    /// Graph output `output` becomes `Add(MatMul(pre, weight), bias)`, `pre` being the value
    /// that computed it, renamed; every node that read the output reads `pre`, so the other
    /// outputs (a pooler) are the uncompensated plan's (issue #13, output placement).
    OutputMap {
        output: String,
        pre: String,
        product: String,
        /// The weight `[d, d]` and the bias `[d]`.
        tensors: Box<[TensorProto; 2]>,
        node_names: [String; 2],
    },
    /// The nodes of kept sub-block `at` read the initializers of `tensors` (named afresh)
    /// instead of the ones they replace (`(replaced, new)`): a merged compensation's fold.
    /// Nodes elsewhere keep reading the originals.
    Fold {
        at: usize,
        nodes: Vec<usize>,
        tensors: Vec<(String, TensorProto)>,
    },
}

/// Turns a validated plan into edits on `analysis.graph`.
///
/// Skip at `p`: remove `p`, bypass its output to its input. Re-use of `q` at `p`: remove `p`,
/// clone `q` reading `p`'s stream input and `p`'s side inputs (bound position by position, the
/// order `Analysis` guarantees), bypass `p`'s output to the clone's output. Chains of skips
/// resolve transitively when the edits are applied.
pub fn plan_edits(
    analysis: &Analysis,
    actions: &[Action],
    reuse: ReuseWeights,
    compensation: Option<&Compensation>,
) -> Result<Vec<Edit>> {
    ensure!(
        actions.len() == analysis.sub_blocks.len(),
        "plan has {} actions, the model has {} sub-blocks",
        actions.len(),
        analysis.sub_blocks.len()
    );
    crate::action::validate(analysis, actions)?;
    let graph = &analysis.graph;
    let mut names = Names::of(graph);
    let mut edits = Vec::new();
    for (p, action) in actions.iter().enumerate() {
        let sb = &analysis.sub_blocks[p];
        match *action {
            Action::Keep => {}
            Action::Skip => {
                edits.push(Edit::Remove {
                    at: p,
                    nodes: sb.nodes.clone(),
                });
                edits.push(Edit::Bypass {
                    from: sb.output.clone(),
                    to: sb.input.clone(),
                });
            }
            Action::Reuse(q) => {
                reuse_edits(analysis, p, q, reuse, &mut names, &mut edits)?;
            }
        }
    }
    match compensation {
        Some(Compensation::Output(c)) => edits.push(output_map_edit(graph, c, &mut names)?),
        Some(Compensation::Merged(folds)) => {
            for f in folds {
                edits.push(fold_edit(analysis, actions, f, &mut names)?);
            }
        }
        None => {}
    }
    Ok(edits)
}

/// The edits of a re-use of sub-block `q` at `p`: remove `p`, clone `q` bound to `p`'s stream
/// and side inputs (copies of the initializers it reads, with `--reuse-weights copy`), bypass
/// `p`'s output to the clone's.
fn reuse_edits(
    analysis: &Analysis,
    p: usize,
    q: usize,
    reuse: ReuseWeights,
    names: &mut Names,
    edits: &mut Vec<Edit>,
) -> Result<()> {
    let graph = &analysis.graph;
    let (sb, src) = (&analysis.sub_blocks[p], &analysis.sub_blocks[q]);
    ensure!(
        src.side_inputs.len() == sb.side_inputs.len(),
        "sub-block {p} has {} side inputs but its re-use source {q} has {}; \
         the block analysis did not align them",
        sb.side_inputs.len(),
        src.side_inputs.len()
    );
    let tag = format!("skrr{p}");
    // The values the clone's nodes compute, named afresh, and the nodes' names.
    let mut values = BTreeMap::new();
    let mut node_names = Vec::with_capacity(src.nodes.len());
    for &i in &src.nodes {
        let node = graph
            .node
            .get(i)
            .ok_or_else(|| anyhow!("sub-block {q} names node {i}, which does not exist"))?;
        if graph::has_subgraph(node) {
            bail!(
                "sub-block {q} contains node {:?} ({}) with a subgraph; re-using it is not supported",
                node.name(),
                node.op_type()
            );
        }
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            let fresh = names.fresh_value(o, &tag);
            values.insert(o.clone(), fresh);
        }
        node_names.push(node.name.as_ref().map(|n| names.fresh_node(n, &tag)));
    }
    // The values it reads from outside: `p`'s stream and side inputs in place of `q`'s.
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    for &i in &src.nodes {
        for input in graph.node[i].input.iter().filter(|s| !s.is_empty()) {
            if values.contains_key(input) {
                continue;
            }
            let bound = if *input == src.input {
                Some(sb.input.clone())
            } else if let Some(k) = src.side_inputs.iter().position(|s| s == input) {
                Some(sb.side_inputs[k].clone())
            } else if reuse == ReuseWeights::Copy && initializers.contains(input.as_str()) {
                let to = names.fresh_value(input, &tag);
                edits.push(Edit::CopyInitializer {
                    from: input.clone(),
                    to: to.clone(),
                });
                Some(to)
            } else {
                // Initializers (shared) and stream-independent values such as the redirected
                // shape source stay as they are.
                None
            };
            if let Some(b) = bound {
                values.insert(input.clone(), b);
            }
        }
    }
    let out = values.get(&src.output).cloned().ok_or_else(|| {
        anyhow!(
            "sub-block {q}'s nodes do not produce its output {:?}",
            src.output
        )
    })?;
    edits.push(Edit::Remove {
        at: p,
        nodes: sb.nodes.clone(),
    });
    edits.push(Edit::Clone {
        source: q,
        at: p,
        nodes: src.nodes.clone(),
        values,
        node_names,
    });
    edits.push(Edit::Bypass {
        from: sb.output.clone(),
        to: out,
    });
    Ok(())
}

/// The edit of fold `f` of a merged compensation, into a sub-block the plan keeps.
fn fold_edit(
    analysis: &Analysis,
    actions: &[Action],
    f: &crate::compensate::merged::Fold,
    names: &mut Names,
) -> Result<Edit> {
    ensure!(
        actions.get(f.at) == Some(&Action::Keep),
        "a fold changes sub-block {}, which the plan does not keep",
        f.at
    );
    let tensors = f
        .tensors
        .iter()
        .map(|t| {
            let name = names.fresh_value(&t.replaces, &format!("skrr_fold{}", f.at));
            Ok((t.replaces.clone(), t.proto(&name)?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Edit::Fold {
        at: f.at,
        nodes: analysis.sub_blocks[f.at].nodes.clone(),
        tensors,
    })
}

/// The edit writing output map `c` after the graph's output.
fn output_map_edit(graph: &GraphProto, c: &OutputMap, names: &mut Names) -> Result<Edit> {
    let (width, elem) = crate::compensate::output_spec(graph, &c.output)?;
    ensure!(
        width == c.map.dim,
        "the compensation maps {} channels; output {:?} has {width}",
        c.map.dim,
        c.output
    );
    let tag = "skrr_compensation";
    let (weight, bias) = c.map.tensors(
        elem,
        &names.fresh_value(&format!("{}.weight", c.output), tag),
        &names.fresh_value(&format!("{}.bias", c.output), tag),
    )?;
    Ok(Edit::OutputMap {
        pre: names.fresh_value(&c.output, "skrr_uncompensated"),
        product: names.fresh_value(&format!("{}.product", c.output), tag),
        output: c.output.clone(),
        tensors: Box::new([weight, bias]),
        node_names: [
            names.fresh_node(&format!("{}/MatMul", c.output), tag),
            names.fresh_node(&format!("{}/Add", c.output), tag),
        ],
    })
}

/// Applies `edits` to `graph` and returns the edited graph, topologically sorted (stable: the
/// file's order wherever it is valid, clones where the sub-block they replace was), with graph
/// outputs that a bypass took away re-created by an `Identity` (output names are the model's
/// interface). Dead code is not removed here (see `dce`).
pub fn apply_edits(graph: &GraphProto, edits: &[Edit]) -> Result<GraphProto> {
    let mut patch = Patch::new(graph, edits);
    for e in edits {
        patch.record(e)?;
    }
    let mut out = patch.assemble()?;
    for e in edits {
        if let Edit::OutputMap {
            output,
            pre,
            product,
            tensors,
            node_names,
        } = e
        {
            map_output(&mut out, output, pre, product, tensors, node_names)?;
        }
    }
    crate::graph::sorted(&out)
}

/// The edits gathered per kind, checked one by one, before the graph is rebuilt from them.
struct Patch<'g> {
    graph: &'g GraphProto,
    removed: Vec<bool>,
    bypass: HashMap<&'g str, &'g str>,
    /// Where each removed sub-block's first node was: clones go there; the final sort fixes any
    /// other order (a re-use of a later sub-block reads nothing not already computed there).
    anchors: HashMap<usize, usize>,
    /// Cloned nodes by the index of the node they go before.
    inserted: BTreeMap<usize, Vec<NodeProto>>,
    cloned_info: Vec<ValueInfoProto>,
    /// Node → (replaced initializer, its fold's) for `Fold` edits.
    folded: HashMap<usize, Vec<(String, String)>>,
    /// New initializers (copies, then folds) and the graph inputs declaring them.
    copies: Vec<TensorProto>,
    fold_inits: Vec<TensorProto>,
    declared: Vec<ValueInfoProto>,
}

impl<'g> Patch<'g> {
    fn new(graph: &'g GraphProto, edits: &[Edit]) -> Patch<'g> {
        let n = graph.node.len();
        let anchors = edits
            .iter()
            .filter_map(|e| match e {
                Edit::Remove { at, nodes } => Some((*at, nodes.iter().copied().min().unwrap_or(n))),
                _ => None,
            })
            .collect();
        Patch {
            graph,
            removed: vec![false; n],
            bypass: HashMap::new(),
            anchors,
            inserted: BTreeMap::new(),
            cloned_info: Vec::new(),
            folded: HashMap::new(),
            copies: Vec::new(),
            fold_inits: Vec::new(),
            declared: Vec::new(),
        }
    }

    fn record(&mut self, e: &'g Edit) -> Result<()> {
        let n = self.graph.node.len();
        match e {
            Edit::Remove { at, nodes } => {
                for &i in nodes {
                    ensure!(
                        i < n,
                        "edit removes node {i} of sub-block {at}; the graph has {n}"
                    );
                    ensure!(
                        !self.removed[i],
                        "node {i} is removed twice (sub-block {at})"
                    );
                    self.removed[i] = true;
                }
            }
            Edit::Bypass { from, to } => {
                ensure!(from != to, "bypass of {from:?} onto itself");
                if self.bypass.insert(from.as_str(), to.as_str()).is_some() {
                    bail!("value {from:?} is bypassed twice");
                }
            }
            Edit::Clone {
                source,
                at,
                nodes,
                values,
                node_names,
            } => self.clone_nodes(*source, *at, nodes, values, node_names)?,
            Edit::OutputMap { .. } => {}
            Edit::Fold { at, nodes, tensors } => {
                for &i in nodes {
                    ensure!(
                        i < n,
                        "fold at sub-block {at} names node {i}; the graph has {n}"
                    );
                    let slot = self.folded.entry(i).or_default();
                    slot.extend(
                        tensors
                            .iter()
                            .map(|(old, t)| (old.clone(), t.name().to_string())),
                    );
                }
                for (old, t) in tensors {
                    self.fold_inits.push(t.clone());
                    self.declare_like(old, t.name());
                }
            }
            Edit::CopyInitializer { from, to } => {
                let t = self
                    .graph
                    .initializer
                    .iter()
                    .find(|t| t.name() == from)
                    .ok_or_else(|| {
                        anyhow!("edit copies initializer {from:?}, which does not exist")
                    })?;
                let mut t = t.clone();
                t.name = Some(to.clone());
                self.copies.push(t);
                self.declare_like(from, to);
            }
        }
        Ok(())
    }

    /// Copies of `nodes` renamed through `values` and `node_names`, placed where sub-block `at`
    /// started, with the value infos of the values they compute.
    fn clone_nodes(
        &mut self,
        source: usize,
        at: usize,
        nodes: &[usize],
        values: &BTreeMap<String, String>,
        node_names: &[Option<String>],
    ) -> Result<()> {
        let graph = self.graph;
        ensure!(
            nodes.len() == node_names.len(),
            "clone of {source} at {at}: node names do not match nodes"
        );
        let anchor = *self.anchors.get(&at).unwrap_or(&graph.node.len());
        let slot = self.inserted.entry(anchor).or_default();
        for (&i, name) in nodes.iter().zip(node_names) {
            let orig = graph
                .node
                .get(i)
                .ok_or_else(|| anyhow!("clone of {source} names node {i}, which does not exist"))?;
            let mut node = orig.clone();
            node.name = name.clone();
            for v in node.input.iter_mut().chain(node.output.iter_mut()) {
                if let Some(new) = values.get(v.as_str()) {
                    *v = new.clone();
                }
            }
            slot.push(node);
        }
        for vi in &graph.value_info {
            if let Some(new) = values.get(vi.name()) {
                if nodes
                    .iter()
                    .any(|&i| graph.node[i].output.iter().any(|o| o == vi.name()))
                {
                    let mut vi = vi.clone();
                    vi.name = Some(new.clone());
                    self.cloned_info.push(vi);
                }
            }
        }
        Ok(())
    }

    /// A graph input declaring `name`, if the graph has one, copied as a declaration of `new`.
    fn declare_like(&mut self, name: &str, new: &str) {
        if let Some(declared) = self.graph.input.iter().find(|i| i.name() == name) {
            let mut declared = declared.clone();
            declared.name = Some(new.to_string());
            self.declared.push(declared);
        }
    }

    /// Where a value's readers read from once every bypass is followed.
    fn resolve(&self, name: &str) -> Result<String> {
        let mut cur = name;
        for _ in 0..=self.bypass.len() {
            match self.bypass.get(cur) {
                Some(next) => cur = next,
                None => return Ok(cur.to_string()),
            }
        }
        bail!("bypasses of {name:?} form a cycle")
    }

    /// The graph with the recorded edits: nodes kept, clones inserted, folds' readers renamed,
    /// every input resolved through the bypasses, bypassed outputs re-created, new initializers
    /// and declarations appended.
    fn assemble(mut self) -> Result<GraphProto> {
        let graph = self.graph;
        let mut out = GraphProto {
            node: Vec::with_capacity(graph.node.len()),
            ..graph.clone()
        };
        out.node.clear();
        for (i, node) in graph.node.iter().enumerate() {
            if let Some(clones) = self.inserted.remove(&i) {
                out.node.extend(clones);
            }
            if !self.removed[i] {
                let mut node = node.clone();
                for (old, new) in self.folded.get(&i).into_iter().flatten() {
                    for v in node.input.iter_mut().filter(|v| *v == old) {
                        *v = new.clone();
                    }
                }
                out.node.push(node);
            }
        }
        for clones in std::mem::take(&mut self.inserted).into_values() {
            out.node.extend(clones);
        }
        let resolve = |name: &str| self.resolve(name);
        for node in &mut out.node {
            rename_inputs(node, &resolve)?;
        }
        let mut names = Names::of(&out);
        for o in &graph.output {
            if self.bypass.contains_key(o.name()) {
                let src = self.resolve(o.name())?;
                let name = names.fresh_node(o.name(), "skrr_output");
                out.node.push(NodeProto {
                    input: vec![src],
                    output: vec![o.name().to_string()],
                    name: Some(name),
                    op_type: Some("Identity".into()),
                    ..Default::default()
                });
            }
        }
        out.initializer.extend(self.copies);
        out.initializer.extend(self.fold_inits);
        out.input.extend(self.declared);
        out.value_info.extend(self.cloned_info);
        Ok(out)
    }
}

/// `Edit::OutputMap` on the edited graph.
fn map_output(
    g: &mut GraphProto,
    output: &str,
    pre: &str,
    product: &str,
    [weight, bias]: &[TensorProto; 2],
    [matmul, add]: &[String; 2],
) -> Result<()> {
    ensure!(
        g.output.iter().any(|o| o.name() == output),
        "the compensation's output {output:?} is not a graph output"
    );
    let producer = g
        .node
        .iter_mut()
        .find(|n| n.output.iter().any(|o| o == output))
        .ok_or_else(|| {
            anyhow!("output {output:?} is not computed by a node, so it cannot be compensated")
        })?;
    for o in producer.output.iter_mut().filter(|o| *o == output) {
        *o = pre.to_string();
    }
    let rename = |v: &str| -> Result<String> { Ok(if v == output { pre } else { v }.to_string()) };
    for node in &mut g.node {
        rename_inputs(node, &rename)?;
    }
    for vi in g.value_info.iter_mut().filter(|v| v.name() == output) {
        vi.name = Some(pre.to_string());
    }
    let node = |op: &str, name: &str, inputs: [&str; 2], out: &str| NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.to_string()],
        name: Some(name.to_string()),
        op_type: Some(op.into()),
        ..Default::default()
    };
    g.node
        .push(node("MatMul", matmul, [pre, weight.name()], product));
    g.node
        .push(node("Add", add, [product, bias.name()], output));
    // A graph that declares its initializers as inputs (IR version < 4 requires it) declares
    // these too.
    let declared: HashSet<&str> = g.input.iter().map(|i| i.name()).collect();
    if g.initializer.iter().any(|t| declared.contains(t.name())) {
        let declare =
            |t: &TensorProto| ValueInfoProto::fixed_tensor(t.name(), t.data_type(), &t.dims);
        g.input.extend([declare(weight), declare(bias)]);
    }
    g.initializer.extend([weight.clone(), bias.clone()]);
    Ok(())
}

/// Redirects a node's inputs (and the outer-scope reads of its subgraphs) through `resolve`.
fn rename_inputs(node: &mut NodeProto, resolve: &dyn Fn(&str) -> Result<String>) -> Result<()> {
    for v in node.input.iter_mut().filter(|v| !v.is_empty()) {
        *v = resolve(v)?;
    }
    for a in &mut node.attribute {
        for g in a.g.iter_mut().map(|g| &mut **g).chain(a.graphs.iter_mut()) {
            for sub in &mut g.node {
                rename_inputs(sub, resolve)?;
            }
        }
    }
    Ok(())
}

/// Every value and node name in use, so that new names never collide with any of them
/// (including names inside subgraphs, which share the value namespace).
struct Names {
    values: HashSet<String>,
    nodes: HashSet<String>,
}

impl Names {
    fn of(graph: &GraphProto) -> Names {
        let mut names = Names {
            values: HashSet::new(),
            nodes: HashSet::new(),
        };
        names.add_graph(graph);
        names
    }

    fn add_graph(&mut self, g: &GraphProto) {
        let vi = g.input.iter().chain(&g.output).chain(&g.value_info);
        self.values.extend(vi.map(|v| v.name().to_string()));
        self.values
            .extend(g.initializer.iter().map(|t| t.name().to_string()));
        for node in &g.node {
            self.values
                .extend(node.input.iter().chain(&node.output).cloned());
            if let Some(n) = &node.name {
                self.nodes.insert(n.clone());
            }
            for a in &node.attribute {
                for sub in a.g.iter().map(|g| &**g).chain(a.graphs.iter()) {
                    self.add_graph(sub);
                }
            }
        }
    }

    fn fresh_value(&mut self, base: &str, tag: &str) -> String {
        fresh(&mut self.values, base, tag)
    }

    fn fresh_node(&mut self, base: &str, tag: &str) -> String {
        fresh(&mut self.nodes, base, tag)
    }
}

/// `base` tagged with why it was made (e.g. `skrr5` for the re-use at position 5, readable in
/// Netron), de-duplicated against every name in use.
fn fresh(taken: &mut HashSet<String>, base: &str, tag: &str) -> String {
    let mut candidate = format!("{base}/{tag}");
    let mut k = 1;
    while taken.contains(&candidate) {
        candidate = format!("{base}/{tag}_{k}");
        k += 1;
    }
    taken.insert(candidate.clone());
    candidate
}
