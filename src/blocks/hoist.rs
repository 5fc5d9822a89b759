//! Rewriting shape reads of stream-derived values into reads of the first stream value's shape,
//! so that shape-derived work (reshape targets, T5's position bias) no longer depends on any
//! sub-block and can run in the prologue whatever is skipped.

use std::collections::{HashSet, VecDeque};

use anyhow::Result;

use super::shapes::{shape_read_range, Mono, Shapes};
use super::stream::is_shape_read;
use crate::graph::{self, Graph};
use crate::onnx::{tensor_proto::data_type, AttributeProto, GraphProto, NodeProto, TensorProto};

/// Returns the graph with every provable `Shape(v)` of a value computed from `h0` replaced:
/// by `Shape(h0)` when `v` has `h0`'s shape, else by a selection from `Shape(h0)` and constants.
/// Shape reads that cannot be proven stay as they are (their work then stays in its sub-block).
/// `stream` holds the residual stream values, `h0` first.
pub fn hoist_shapes(proto: &GraphProto, stream: &[String]) -> Result<GraphProto> {
    let h0 = stream[0].as_str();
    let g = Graph::new(proto)?;
    let order: Vec<usize> = (0..g.len()).collect();
    let shapes = Shapes::infer(&g, &order, stream);
    let Some(root) = g.producer(h0) else {
        return Ok(proto.clone());
    };
    let tainted = downstream(&g, root, |c| !is_shape_read(g.node(c).op_type()));
    let h0_shape = shapes.known_shape(h0);
    let mut selections = Selections {
        h0,
        names: Names::new(&g),
        stream_shape: None,
    };
    let mut out = proto.clone();
    // New nodes go right before the node they feed, so that the file order stays topological
    // and sorting keeps every layer's nodes in the same relative order.
    let mut added: Vec<Vec<NodeProto>> = vec![Vec::new(); proto.node.len()];
    for (n, node) in proto.node.iter().enumerate() {
        if node.op_type() != "Shape" || node.op_domain() != "" {
            continue;
        }
        let Some(v) = node.input.first() else {
            continue;
        };
        if v == h0 || !g.producer(v).is_some_and(|p| tainted[p] || p == root) {
            continue;
        }
        let (Some(vs), Some(hs)) = (shapes.known_shape(v), h0_shape.as_ref()) else {
            continue;
        };
        if vs == *hs {
            out.node[n].input[0] = h0.to_string();
        } else if let Some(dims) = dims_read(&vs[shape_read_range(node, vs.len())], hs) {
            out.node[n] = selections.replace(node, &dims, hs.len(), &mut added[n]);
        }
    }
    let nodes = std::mem::take(&mut out.node);
    for (node, before) in nodes.into_iter().zip(added) {
        out.node.extend(before);
        out.node.push(node);
    }
    graph::sorted(&prune_dead(out))
}

/// Where each dimension a shape read returns comes from.
enum Pick {
    /// An axis of h0's shape.
    Axis(usize),
    /// The `k`th of `DimsRead::consts`.
    Const(usize),
}

struct DimsRead {
    picks: Vec<Pick>,
    consts: Vec<i64>,
}

/// Each of `dims` as an axis of `h0`'s shape or a constant; `None` when one is neither.
fn dims_read(dims: &[Mono], h0: &[Mono]) -> Option<DimsRead> {
    let mut read = DimsRead {
        picks: Vec::new(),
        consts: Vec::new(),
    };
    for d in dims {
        if let Some(c) = d.as_const() {
            read.picks.push(Pick::Const(read.consts.len()));
            read.consts.push(c);
        } else {
            read.picks.push(Pick::Axis(h0.iter().position(|x| x == d)?));
        }
    }
    Some(read)
}

/// The nodes that compute a proven shape read from `Shape(h0)` and constants.
struct Selections<'a> {
    h0: &'a str,
    names: Names,
    /// The one `Shape(h0)` every selection reads, once made.
    stream_shape: Option<String>,
}

impl Selections<'_> {
    /// The node standing for shape read `node` (whose dimensions are `dims`, `rank` being h0's
    /// rank): a `Constant` when every dimension is one, else a `Gather` from `Shape(h0)` (with
    /// the constants appended), its new inputs pushed to `added`.
    fn replace(
        &mut self,
        node: &NodeProto,
        dims: &DimsRead,
        rank: usize,
        added: &mut Vec<NodeProto>,
    ) -> NodeProto {
        let out_name = node.output[0].clone();
        if dims.picks.iter().all(|p| matches!(p, Pick::Const(_))) {
            return NodeProto {
                name: node.name.clone(),
                op_type: Some("Constant".into()),
                output: vec![out_name],
                attribute: vec![tensor_attr("value", int64_tensor(&dims.consts))],
                ..Default::default()
            };
        }
        let src_shape = self.stream_shape(added);
        let source = if dims.consts.is_empty() {
            src_shape
        } else {
            let c = self.names.fresh(&format!("{out_name}/skrr_consts"));
            added.push(constant(&c, &dims.consts));
            let cat = self.names.fresh(&format!("{out_name}/skrr_dims"));
            added.push(NodeProto {
                name: Some(cat.clone()),
                op_type: Some("Concat".into()),
                input: vec![src_shape, c],
                output: vec![cat.clone()],
                attribute: vec![int_attr("axis", 0)],
                ..Default::default()
            });
            cat
        };
        let idx: Vec<i64> = dims
            .picks
            .iter()
            .map(|p| match *p {
                Pick::Axis(j) => j as i64,
                Pick::Const(k) => (rank + k) as i64,
            })
            .collect();
        let idx_name = self.names.fresh(&format!("{out_name}/skrr_pick"));
        added.push(constant(&idx_name, &idx));
        NodeProto {
            name: node.name.clone(),
            op_type: Some("Gather".into()),
            input: vec![source, idx_name],
            output: vec![out_name],
            attribute: vec![int_attr("axis", 0)],
            ..Default::default()
        }
    }

    /// `Shape(h0)`'s value, its node pushed to `added` the first time.
    fn stream_shape(&mut self, added: &mut Vec<NodeProto>) -> String {
        if let Some(name) = &self.stream_shape {
            return name.clone();
        }
        let name = self.names.fresh("skrr/stream_shape");
        added.push(NodeProto {
            name: Some(name.clone()),
            op_type: Some("Shape".into()),
            input: vec![self.h0.to_string()],
            output: vec![name.clone()],
            ..Default::default()
        });
        self.stream_shape = Some(name.clone());
        name
    }
}

/// Drops nodes whose outputs nobody reads (after the rewrite, e.g. a transpose that only fed a
/// shape read). Semantically neutral, and keeps layer 0 structurally equal to the others.
fn prune_dead(mut proto: GraphProto) -> GraphProto {
    loop {
        let mut read: HashSet<&str> = proto.output.iter().map(|o| o.name()).collect();
        for node in &proto.node {
            read.extend(node.input.iter().map(String::as_str));
            for sub in graph::implicit_inputs(node) {
                read.insert(sub);
            }
        }
        let live: Vec<bool> = proto
            .node
            .iter()
            .map(|n| n.output.iter().any(|o| read.contains(o.as_str())))
            .collect();
        if live.iter().all(|&l| l) {
            return proto;
        }
        let mut keep = live.into_iter();
        proto.node.retain(|_| keep.next().unwrap_or(true));
    }
}

/// Nodes strictly downstream of `root` along edges into nodes accepted by `follow`.
pub fn downstream(g: &Graph, root: usize, follow: impl Fn(usize) -> bool) -> Vec<bool> {
    let mut seen = vec![false; g.len()];
    let mut queue = VecDeque::from([root]);
    while let Some(i) = queue.pop_front() {
        for s in g.successors(i) {
            if !seen[s] && follow(s) {
                seen[s] = true;
                queue.push_back(s);
            }
        }
    }
    seen
}

/// Fresh value/node names that collide with nothing in the graph.
struct Names {
    taken: HashSet<String>,
}

impl Names {
    fn new(g: &Graph) -> Names {
        let mut taken: HashSet<String> = HashSet::new();
        for node in &g.proto.node {
            taken.extend(node.output.iter().cloned());
            taken.insert(node.name().to_string());
        }
        taken.extend(g.proto.input.iter().map(|i| i.name().to_string()));
        taken.extend(g.proto.initializer.iter().map(|t| t.name().to_string()));
        Names { taken }
    }
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.taken.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.taken.insert(name.clone());
        name
    }
}

fn int64_tensor(v: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![v.len() as i64],
        data_type: Some(data_type::INT64),
        raw_data: Some(
            v.iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ),
        ..Default::default()
    }
}

fn tensor_attr(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(crate::onnx::attribute_type::TENSOR),
        t: Some(t),
        ..Default::default()
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(crate::onnx::attribute_type::INT),
        i: Some(i),
        ..Default::default()
    }
}

fn constant(name: &str, v: &[i64]) -> NodeProto {
    NodeProto {
        name: Some(name.to_string()),
        op_type: Some("Constant".into()),
        output: vec![name.to_string()],
        attribute: vec![tensor_attr("value", int64_tensor(v))],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::node;
    use crate::onnx::tensor_shape_proto::{dimension::Value, Dimension};
    use crate::onnx::{type_proto, TensorShapeProto, TypeProto, ValueInfoProto};

    fn input(name: &str, dims: &[&str]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d.parse::<i64>() {
                    Ok(v) => Value::DimValue(v),
                    Err(_) => Value::DimParam(d.to_string()),
                }),
                denotation: None,
            })
            .collect();
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(1),
                    shape: Some(TensorShapeProto { dim }),
                })),
                denotation: None,
            }),
            ..Default::default()
        }
    }

    /// `h0 -> MatMul -> Reshape [b, s, 2, 4] -> Transpose [b, 2, s, 4]`, with shape reads of
    /// the transposed value and of a same-shaped value.
    fn graph() -> GraphProto {
        let mut perm = int_attr("perm", 0);
        perm.i = None;
        perm.ints = vec![0, 2, 1, 3];
        perm.r#type = Some(crate::onnx::attribute_type::INTS);
        let mut transpose = node("Transpose", &["r"], &["t"]);
        transpose.attribute.push(perm);
        GraphProto {
            node: vec![
                node("Identity", &["x"], &["h0"]),
                node("MatMul", &["h0", "w"], &["q"]),
                constant("target", &[0, 0, 2, 4]),
                node("Reshape", &["q", "target"], &["r"]),
                transpose,
                node("Shape", &["t"], &["st"]),
                node("Relu", &["h0"], &["n"]),
                node("Shape", &["n"], &["sn"]),
            ],
            input: vec![input("x", &["b", "s", "8"])],
            output: vec![
                ValueInfoProto {
                    name: Some("st".into()),
                    ..Default::default()
                },
                ValueInfoProto {
                    name: Some("sn".into()),
                    ..Default::default()
                },
            ],
            initializer: vec![TensorProto {
                name: Some("w".into()),
                dims: vec![8, 8],
                data_type: Some(1),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn shape_reads_become_selections_from_the_stream_shape() {
        let out = hoist_shapes(&graph(), &["h0".into()]).unwrap();
        graph::check(&out).unwrap();
        let by_output = |v: &str| out.node.iter().find(|n| n.output[0] == v).unwrap();
        // Same shape as h0: a plain redirect.
        let sn = by_output("sn");
        assert_eq!(
            (sn.op_type(), sn.input.as_slice()),
            ("Shape", &["h0".to_string()][..])
        );
        // [b, 2, s, 4] = [b, s, 8, 2, 4] picked at [0, 3, 1, 4].
        let st = by_output("st");
        assert_eq!(st.op_type(), "Gather");
        let cat = by_output(&st.input[0]);
        assert_eq!(cat.op_type(), "Concat");
        let shape = by_output(&cat.input[0]);
        assert_eq!((shape.op_type(), shape.input[0].as_str()), ("Shape", "h0"));
        let ints = |v: &str| {
            let t = by_output(v)
                .attr("value")
                .and_then(|a| a.t.clone())
                .unwrap();
            let raw = t.raw_data.unwrap();
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ints(&cat.input[1]), vec![2, 4]);
        assert_eq!(ints(&st.input[1]), vec![0, 3, 1, 4]);
        // The transpose only fed the shape read: dropped as dead.
        assert!(out.node.iter().all(|n| n.output[0] != "t"));
    }

    #[test]
    fn unprovable_shape_reads_stay() {
        let mut g = graph();
        // A reshape to a target computed at run time: [b, s, 2, 4] is no longer provable.
        g.input.push(input("target_in", &["4"]));
        g.node[3].input[1] = "target_in".into();
        let out = hoist_shapes(&g, &["h0".into()]).unwrap();
        let st = out.node.iter().find(|n| n.output[0] == "st").unwrap();
        assert_eq!((st.op_type(), st.input[0].as_str()), ("Shape", "t"));
    }
}
