//! Assigning every node to the prologue, one sub-block, or the epilogue, and proving that the
//! assignment is a valid partition: a sub-block reads only its input stream value, initializers,
//! and prologue values or graph inputs (its side inputs). Calibration runs sub-blocks as separate
//! units and re-use binds side inputs by position, so this must hold exactly.

use std::collections::{BTreeSet, HashMap};

use super::hoist::downstream;
use super::stream::is_shape_read;
use crate::graph::{describe, Graph, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Region {
    Prologue,
    Sub(usize),
    Epilogue,
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Region::Prologue => write!(f, "the prologue"),
            Region::Sub(i) => write!(f, "sub-block {i}"),
            Region::Epilogue => write!(f, "the epilogue"),
        }
    }
}

pub struct Partition {
    pub region: Vec<Region>,
    pub prologue: Vec<usize>,
    pub epilogue: Vec<usize>,
    pub sub_nodes: Vec<Vec<usize>>,
    pub side_inputs: Vec<Vec<String>>,
    pub initializers: Vec<Vec<String>>,
}

/// Stream-independent work computed from a table only one sub-block's work reads (UMT5's
/// per-layer relative-attention-bias: a `Gather` from layer `l`'s table and what follows it
/// up to that layer's attention) is that sub-block's, not the prologue's: under re-use the
/// source's table must be read, and a skip must remove the table with its parameters. Work
/// read by several regions (T5's one bias, computed from layer 0's table and read by every
/// layer; masks; rotary tables) stays in the prologue, and so do its inputs that are shared.
///
/// A prologue node moves to sub-block `i` when every region its values reach (through other
/// prologue nodes, not through the first stream value) is `i` and it reads a table owned by `i` or a value of a node that moved.
/// A table is an initializer of more than one element whose readers are all prologue nodes
/// reaching only `i` (scalars and index constants are not parameters of anyone).
fn own_tables(g: &Graph, region: &mut [Region], h0: &str) {
    let outputs: BTreeSet<&str> = g.proto.output.iter().map(|o| o.name()).collect();
    // Regions reached from each prologue node; `None` for "several, or a graph output".
    let mut reach: Vec<Option<Region>> = vec![None; g.len()];
    for n in (0..g.len()).rev() {
        // The first stream value is every sub-block's input, not sub-block 0's side value.
        if region[n] != Region::Prologue
            || g.node(n)
                .output
                .iter()
                .any(|o| o == h0 || outputs.contains(o.as_str()))
        {
            continue;
        }
        let mut to: BTreeSet<Option<Region>> = BTreeSet::new();
        for s in g.successors(n) {
            to.insert(match region[s] {
                Region::Prologue => reach[s],
                r => Some(r),
            });
        }
        reach[n] = match to.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(r @ Region::Sub(_))] => Some(*r),
            _ => None,
        };
    }
    let mut owner: HashMap<&str, Option<Region>> = HashMap::new();
    for n in 0..g.len() {
        for &v in g.reads(n) {
            if g.initializer(v).is_some() {
                let r = if region[n] == Region::Prologue {
                    reach[n]
                } else {
                    None
                };
                owner
                    .entry(v)
                    .and_modify(|o| {
                        if *o != r {
                            *o = None
                        }
                    })
                    .or_insert(r);
            }
        }
    }
    let table = |v: &str| g.initializer(v).is_some_and(|t| super::elements(t) > 1);
    for n in 0..g.len() {
        let Some(r) = reach[n] else { continue };
        let owned = g
            .reads(n)
            .iter()
            .any(|&v| table(v) && owner.get(v).copied().flatten() == Some(r));
        if owned
            || g.predecessors(n)
                .any(|p| reach[p] == Some(r) && region[p] == r)
        {
            region[n] = r;
        }
    }
}

/// `stream` holds `h_0 .. h_K`; `g` must be topologically sorted.
pub fn partition(g: &Graph, stream: &[String]) -> Result<Partition, String> {
    let h0 = stream[0].as_str();
    let tainted = stream_dependent(g, h0);
    let mut region = regions_by_stream(g, stream, &tainted);
    own_tables(g, &mut region, h0);
    place_weight_only_work(g, &tainted, &mut region);
    let mut part = Partition::collect(region, stream.len() - 1);
    part.bind_sub_blocks(g, stream)?;
    part.check_prologue(g)?;
    part.check_epilogue(g, stream)?;
    Ok(part)
}

/// Nodes downstream of the first stream value through data edges. Reading h0's shape does not
/// depend on any sub-block: h0 is computed in the prologue.
fn stream_dependent(g: &Graph, h0: &str) -> Vec<bool> {
    let follow = |c: usize| {
        let node = g.node(c);
        !(is_shape_read(node.op_type()) && node.input.first().is_some_and(|i| i == h0))
    };
    let mut tainted = vec![false; g.len()];
    let roots: Vec<usize> = match g.producer(h0) {
        Some(p) => vec![p],
        None => g
            .consumers(h0)
            .iter()
            .copied()
            .filter(|&c| follow(c))
            .collect(),
    };
    for &r in &roots {
        for (i, t) in downstream(g, r, follow).into_iter().enumerate() {
            tainted[i] |= t;
        }
        if g.producer(h0).is_none() {
            tainted[r] = true;
        }
    }
    tainted
}

/// Each stream-dependent node goes to the sub-block of the latest stream value above it (or
/// to the epilogue, after the last one); every other node is prologue.
fn regions_by_stream(g: &Graph, stream: &[String], tainted: &[bool]) -> Vec<Region> {
    let k = stream.len() - 1;
    let h0 = stream[0].as_str();
    let mut boundary: HashMap<usize, usize> = HashMap::new();
    for (i, v) in stream.iter().enumerate() {
        if let Some(p) = g.producer(v) {
            boundary.insert(p, i);
        }
    }
    let mut anc: Vec<Option<usize>> = vec![None; g.len()];
    let mut region = vec![Region::Prologue; g.len()];
    for n in 0..g.len() {
        if !tainted[n] {
            continue;
        }
        let mut a = if g.reads(n).contains(&h0) {
            Some(0)
        } else {
            None
        };
        for p in g.predecessors(n) {
            if tainted[p] || boundary.contains_key(&p) {
                a = a.max(anc[p]).max(boundary.get(&p).copied());
            }
        }
        anc[n] = a;
        region[n] = match a {
            Some(a) if a < k => Region::Sub(a),
            _ => Region::Epilogue,
        };
    }
    region
}

/// Weight-only work (constants, and the Identity copies the legacy exporter makes of a merged
/// initializer) goes where its only readers are, so that a sub-block is self-contained and its
/// side inputs are the same for every layer.
fn place_weight_only_work(g: &Graph, tainted: &[bool], region: &mut [Region]) {
    let mut fixed = vec![false; g.len()];
    for n in 0..g.len() {
        fixed[n] = !tainted[n]
            && g.reads(n).iter().all(|v| match g.source(v) {
                Some(Source::Initializer) => true,
                Some(Source::Node { node, .. }) => fixed[node],
                _ => false,
            });
    }
    for n in (0..g.len()).rev() {
        if !fixed[n] {
            continue;
        }
        let readers: BTreeSet<Region> = g.successors(n).map(|s| region[s]).collect();
        if readers.len() == 1 {
            region[n] = *readers.iter().next().unwrap_or(&Region::Prologue);
        }
    }
}

impl Partition {
    /// The nodes of each region, in order; `k` is the number of sub-blocks.
    fn collect(region: Vec<Region>, k: usize) -> Partition {
        let mut part = Partition {
            prologue: Vec::new(),
            epilogue: Vec::new(),
            sub_nodes: vec![Vec::new(); k],
            side_inputs: vec![Vec::new(); k],
            initializers: vec![Vec::new(); k],
            region,
        };
        for (n, r) in part.region.iter().enumerate() {
            match r {
                Region::Prologue => part.prologue.push(n),
                Region::Epilogue => part.epilogue.push(n),
                Region::Sub(i) => part.sub_nodes[*i].push(n),
            }
        }
        part
    }

    /// Each sub-block's side inputs and initializers, proving that it computes its output
    /// stream value and reads only its input stream value, initializers, its own values and
    /// prologue values or graph inputs.
    fn bind_sub_blocks(&mut self, g: &Graph, stream: &[String]) -> Result<(), String> {
        for (i, nodes) in self.sub_nodes.iter().enumerate() {
            let me = Region::Sub(i);
            match g.producer(&stream[i + 1]) {
                Some(p) if self.region[p] == me => {}
                _ => {
                    return Err(format!(
                        "sub-block {i} does not compute its output stream value {:?}",
                        stream[i + 1]
                    ))
                }
            }
            let mut side: Vec<String> = Vec::new();
            let mut inits: BTreeSet<String> = BTreeSet::new();
            for &n in nodes {
                for &v in g.reads(n) {
                    let from = match g.source(v) {
                        Some(Source::Initializer) => {
                            inits.insert(v.to_string());
                            continue;
                        }
                        Some(Source::Input) => Region::Prologue,
                        Some(Source::Node { node, .. }) => self.region[node],
                        None => return Err(format!("value {v:?} is not defined")),
                    };
                    if from == me || v == stream[i] {
                        continue;
                    }
                    if from != Region::Prologue {
                        return Err(format!(
                            "node {} of sub-block {i} reads {v:?}, computed in {from}: the \
                             branches are not separable",
                            describe(g.node(n), n)
                        ));
                    }
                    if !side.iter().any(|s| s == v) {
                        side.push(v.to_string());
                    }
                }
            }
            self.side_inputs[i] = side;
            self.initializers[i] = inits.into_iter().collect();
        }
        Ok(())
    }

    /// The prologue reads nothing computed later.
    fn check_prologue(&self, g: &Graph) -> Result<(), String> {
        for &n in &self.prologue {
            for &v in g.reads(n) {
                if let Some(p) = g.producer(v) {
                    if self.region[p] != Region::Prologue {
                        return Err(format!(
                            "prologue node {} reads {v:?}, computed in {}",
                            describe(g.node(n), n),
                            self.region[p]
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The epilogue reads no sub-block's inner values (stream values are fine).
    fn check_epilogue(&self, g: &Graph, stream: &[String]) -> Result<(), String> {
        for &n in &self.epilogue {
            for &v in g.reads(n) {
                if let Some(p) = g.producer(v) {
                    if matches!(self.region[p], Region::Sub(_)) && !stream.iter().any(|s| s == v) {
                        return Err(format!(
                            "epilogue node {} reads {v:?}, an inner value of {}",
                            describe(g.node(n), n),
                            self.region[p]
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
