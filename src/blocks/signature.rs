//! What a sub-block is, from its structure alone: its kind, its structural signature (for
//! repetition and re-use compatibility), and the architecture family of the whole encoder.

use std::collections::HashMap;
use std::fmt::Write;

use sha2::{Digest, Sha256};

use super::Kind;
use crate::graph::{Graph, Source};
use crate::onnx::{tensor_proto::data_type, AttributeProto, TensorProto};

fn hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

fn tensor_shape(t: &TensorProto) -> String {
    format!("{}{:?}", t.data_type(), t.dims)
}

fn attr_text(a: &AttributeProto) -> String {
    let mut s = format!("{}=", a.name());
    if let Some(i) = a.i {
        let _ = write!(s, "i{i}");
    }
    if let Some(f) = a.f {
        let _ = write!(s, "f{:08x}", f.to_bits());
    }
    if let Some(b) = &a.s {
        let _ = write!(s, "s{}", String::from_utf8_lossy(b));
    }
    if let Some(t) = &a.t {
        // Shape and type of an embedded tensor, not its values.
        let _ = write!(s, "t{}", tensor_shape(t));
    }
    if !a.ints.is_empty() {
        let _ = write!(s, "I{:?}", a.ints);
    }
    if !a.floats.is_empty() {
        let bits: Vec<u32> = a.floats.iter().map(|f| f.to_bits()).collect();
        let _ = write!(s, "F{bits:x?}");
    }
    if !a.strings.is_empty() {
        let _ = write!(s, "S{:?}", a.strings);
    }
    s
}

/// The sub-block's nodes in an order that does not depend on where an exporter or quantizer
/// put its stream-independent work: the nodes computed from the stream keep their file order,
/// and each is preceded by the stream-independent nodes it reads (recursively, in input order)
/// that no earlier node read. ONNX Runtime's QDQ quantizer writes every weight's
/// `DequantizeLinear` at the top of the graph, sorted by weight name as text, so with the
/// dynamo exporter's `val_119`-style names layer 0's come in another order than layer 1's.
fn canonical_order(g: &Graph, nodes: &[usize], input: &str) -> Vec<usize> {
    let inside: HashMap<usize, usize> = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut from_stream = vec![false; nodes.len()];
    for (i, &n) in nodes.iter().enumerate() {
        from_stream[i] = g.node(n).input.iter().any(|v| {
            v == input
                || g.producer(v)
                    .and_then(|p| inside.get(&p))
                    .is_some_and(|&j| from_stream[j])
        });
    }
    let mut placed = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    fn place(
        g: &Graph,
        i: usize,
        nodes: &[usize],
        inside: &HashMap<usize, usize>,
        placed: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        if placed[i] {
            return;
        }
        placed[i] = true;
        for v in &g.node(nodes[i]).input {
            if let Some(&j) = g.producer(v).and_then(|p| inside.get(&p)) {
                place(g, j, nodes, inside, placed, order);
            }
        }
        order.push(nodes[i]);
    }
    for (i, _) in from_stream.iter().enumerate().filter(|(_, s)| **s) {
        place(g, i, nodes, &inside, &mut placed, &mut order);
    }
    for i in 0..nodes.len() {
        place(g, i, nodes, &inside, &mut placed, &mut order);
    }
    order
}

/// Op types, attributes, wiring and weight shapes of the nodes, in a canonical order
/// (`canonical_order`); no names, no values.
pub fn signature(g: &Graph, nodes: &[usize], input: &str, side: &[String]) -> String {
    let nodes = &canonical_order(g, nodes, input);
    // An Identity of an initializer (the legacy exporter's copy of a merged weight) reads as
    // the initializer itself, so that a layer reading the copy matches one reading the original.
    let mut weight_alias: HashMap<&str, &str> = HashMap::new();
    let mut local: HashMap<usize, usize> = HashMap::new();
    for &n in nodes {
        let node = g.node(n);
        let src = node.input.first().map(String::as_str).unwrap_or("");
        let src = weight_alias.get(src).copied().unwrap_or(src);
        if node.op_type() == "Identity" && g.initializer(src).is_some() {
            if let Some(o) = node.output.first() {
                weight_alias.insert(o, src);
            }
            continue;
        }
        local.insert(n, local.len());
    }
    let mut text = String::new();
    for &n in nodes {
        if !local.contains_key(&n) {
            continue;
        }
        let node = g.node(n);
        let _ = write!(text, "{}::{}(", node.op_domain(), node.op_type());
        for v in &node.input {
            let v = weight_alias.get(v.as_str()).copied().unwrap_or(v);
            if v.is_empty() {
                text.push_str("-,");
            } else if v == input {
                text.push_str("s,");
            } else if let Some(k) = side.iter().position(|s| s == v) {
                let _ = write!(text, "x{k},");
            } else {
                match g.source(v) {
                    Some(Source::Node { node: p, slot }) if local.contains_key(&p) => {
                        let _ = write!(text, "n{}.{slot},", local[&p]);
                    }
                    Some(Source::Initializer) => {
                        let t = g.initializer(v).map(tensor_shape).unwrap_or_default();
                        let _ = write!(text, "w{t},");
                    }
                    _ => text.push_str("?,"),
                }
            }
        }
        let mut attrs: Vec<String> = node.attribute.iter().map(attr_text).collect();
        attrs.sort();
        let _ = writeln!(text, ")[{}]{}", attrs.join(";"), node.output.len());
    }
    hash(&text)
}

/// Attention mixes positions: a softmax, or a product of two stream-derived values (scores).
pub fn kind(g: &Graph, nodes: &[usize]) -> Kind {
    let inside: std::collections::HashSet<usize> = nodes.iter().copied().collect();
    let attention = nodes.iter().any(|&n| {
        let node = g.node(n);
        // `Attention` is the fused standard op of opset 23. A weight computed inside (QDQ's
        // `DequantizeLinear` of an int8 weight) is not an activation.
        matches!(node.op_type(), "Softmax" | "Attention")
            || (matches!(node.op_type(), "MatMul" | "Einsum")
                && node
                    .input
                    .iter()
                    .filter(|v| {
                        g.producer(v).is_some_and(|p| inside.contains(&p))
                            && !super::is_weight(g, v)
                    })
                    .count()
                    >= 2)
    });
    if attention {
        Kind::Attention
    } else {
        Kind::Ffn
    }
}

/// Architecture-level identity of the block structure: family, norm position, kinds and the
/// shapes of the float weights each sub-block reads. Equal for fp32/fp16 and legacy/dynamo exports of one model,
/// so that a plan made on one applies to the other. The weights are those its nodes *read*, owned
/// or not: an exporter merges identical default-initialized norms and biases into one initializer
/// every layer reads (directly, or through an `Identity` as Optimum writes), which must not make
/// a default-initialized export another architecture than a trained one.
pub fn structure(g: &Graph, architecture: &str, blocks: &[(Kind, &[usize])]) -> String {
    let mut text = format!("{architecture}\n");
    for (kind, nodes) in blocks {
        // By the value read (two aliases of one merged initializer are two weights).
        let mut read: Vec<(&str, &TensorProto)> = Vec::new();
        for &n in nodes.iter() {
            let node = g.node(n);
            // An alias (`Identity` of an initializer) is counted where it is read.
            if node.op_type() == "Identity" && node.input.iter().all(|i| g.initializer(i).is_some())
            {
                continue;
            }
            for v in &node.input {
                let t = g.initializer(v).or_else(|| {
                    let p = g.node(g.producer(v)?);
                    (p.op_type() == "Identity")
                        .then(|| p.input.first().and_then(|i| g.initializer(i)))
                        .flatten()
                });
                if let Some(t) = t.filter(|_| !read.iter().any(|(r, _)| r == v)) {
                    read.push((v, t));
                }
            }
        }
        let mut shapes: Vec<Vec<i64>> = read
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| {
                matches!(
                    t.data_type(),
                    data_type::FLOAT | data_type::FLOAT16 | data_type::BFLOAT16 | data_type::DOUBLE
                ) && t.dims.iter().product::<i64>() >= 2
            })
            .map(|t| {
                let mut d = t.dims.clone();
                d.sort_unstable();
                d
            })
            .collect();
        shapes.sort();
        let _ = writeln!(text, "{kind:?}{shapes:?}");
    }
    hash(&text)
}

/// Facts the family rules look at.
pub struct Traits {
    pub prologue_ops: Vec<String>,
    pub attention_ops: Vec<String>,
    pub ffn_ops: Vec<String>,
    pub post_norm: bool,
    /// Embedding tables looked up in the prologue (Gather from a rank-2 initializer).
    pub embedding_lookups: usize,
}

impl Traits {
    fn has(ops: &[String], op: &str) -> bool {
        ops.iter().any(|o| o == op)
    }
    /// LayerNorm subtracts the mean (explicitly or as the ONNX op); RMSNorm does not.
    fn mean_centred(&self) -> bool {
        let all = || self.attention_ops.iter().chain(&self.ffn_ops);
        all().any(|o| o == "LayerNormalization")
            || (all().any(|o| o == "ReduceMean") && all().any(|o| o == "Sub"))
            || (self.post_norm && Self::has(&self.prologue_ops, "LayerNormalization"))
    }
}

pub fn family(t: &Traits) -> Option<&'static str> {
    let rotary = Traits::has(&t.prologue_ops, "Cos") && Traits::has(&t.prologue_ops, "Sin");
    if rotary && !t.mean_centred() {
        // SwiGLU (x * sigmoid(x)) in Llama; GeGLU in Gemma: tanh or erf gelu, or opset 20's
        // one `Gelu` op (the dynamo exporter's).
        let gelu = ["Tanh", "Erf", "Gelu"]
            .iter()
            .any(|op| Traits::has(&t.ffn_ops, op));
        return Some(if gelu && !Traits::has(&t.ffn_ops, "Sigmoid") {
            "gemma"
        } else {
            "llama"
        });
    }
    // Relative position buckets are logarithmic.
    if Traits::has(&t.prologue_ops, "Log") && !t.mean_centred() && !t.post_norm {
        return Some("t5");
    }
    if t.post_norm && t.embedding_lookups >= 2 {
        return Some("bert");
    }
    // quick_gelu: x * sigmoid(1.702 x), with LayerNorm and learned absolute positions.
    if !t.post_norm && t.mean_centred() && Traits::has(&t.ffn_ops, "Sigmoid") {
        return Some("clip");
    }
    None
}
