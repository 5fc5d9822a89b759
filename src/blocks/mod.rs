//! Transformer block detection: finds the residual stream and the attention / feed-forward
//! sub-blocks of any exported text encoder from dataflow alone (no node names).
//!
//! This file holds the contract every later phase consumes (`Analysis`); the detection itself
//! lives in the submodules.

mod hoist;
mod partition;
mod shapes;
mod signature;
mod stream;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::error::SkrrError;
use crate::graph::{self, describe, Graph};
use crate::onnx::{GraphProto, ModelProto, NodeProto, TensorProto};
use partition::{Partition, Region};

/// The two kinds of sub-block of a transformer layer (method doc, "Units").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Attention,
    Ffn,
}

/// As the plan file spells it, for messages.
impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Attention => "attention",
            Kind::Ffn => "ffn",
        })
    }
}

/// One residual branch: maps stream value `input` to stream value `output`.
#[derive(Debug, Clone, Serialize)]
pub struct SubBlock {
    /// `p = 2l` for attention, `2l + 1` for feed-forward.
    pub index: usize,
    pub layer: usize,
    pub kind: Kind,
    /// Indices into `Analysis::graph.node`, in topological order. Only nodes that depend on the
    /// stream's data; stream-independent work (mask, rotary, T5 position bias) is in the prologue.
    pub nodes: Vec<usize>,
    /// Stream value entering the sub-block.
    pub input: String,
    /// Stream value leaving the sub-block.
    pub output: String,
    /// Non-stream, non-initializer values the nodes read (graph inputs or prologue values),
    /// in a structural order that is the same for every sub-block of the same kind, so that a
    /// re-use of `q` at `p` can bind `p`'s side inputs to `q`'s slots position by position.
    pub side_inputs: Vec<String>,
    /// Initializers the nodes read (names, sorted).
    pub initializers: Vec<String>,
    /// Elements of the initializers that only this sub-block uses.
    pub params: u64,
    /// Structural signature (op types, attributes, wiring, weight shapes; no names, no values).
    pub signature: String,
}

/// The result of block detection on one model.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The graph the indices refer to: the input graph, topologically sorted, with reads of a
    /// stream value's *shape* redirected to the first stream value (all stream values have the
    /// same shape) so that stream-independent work can live in the prologue. A shape read of
    /// another stream-derived value whose dimensions are provably the stream's or constants
    /// (T5 reads the key length from `Shape(key_states)`) becomes a selection from the first
    /// stream value's shape (a few nodes named `skrr/...`), and nodes left without readers are
    /// dropped. Semantically equal to the input graph (tests compare both in ONNX Runtime);
    /// initializers are the input's (external ones stay references).
    pub graph: GraphProto,
    pub sub_blocks: Vec<SubBlock>,
    /// Nodes that run before/independently of the sub-blocks (embeddings, mask, position bias).
    pub prologue: Vec<usize>,
    /// Nodes after the last stream value (final norm, pooling, projection).
    pub epilogue: Vec<usize>,
    pub prologue_params: u64,
    pub epilogue_params: u64,
    /// Parameters used by more than one region (e.g. tied embeddings, or all-ones norms an
    /// exporter merged across layers), or by no node at all; counted once, here.
    pub shared_params: u64,
    /// All initializer elements of the model.
    pub total_params: u64,
    pub layers: usize,
    /// Recognised architecture family ("t5", "bert", "clip", "llama", ...), if any.
    pub family: Option<String>,
    /// Hash of the ordered sub-block signatures: plans are refused on a model where it differs.
    pub structure_signature: String,
}

/// The newest default-domain opset whose operators the analysis knows (ONNX 1.23).
pub const MAX_OPSET: i64 = 28;

/// What the analysis can reason about: standard ONNX operators of a known opset with as many
/// inputs and outputs as their schemas allow (`crate::ops`), and tensor sizes that fit in 63 bits (they come from the file; checked once here so that the
/// parameter accounting cannot overflow).
fn check_supported(model: &ModelProto, g: &GraphProto) -> Result<(), String> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version());
    if let Some(v) = opset.filter(|v| !(1..=MAX_OPSET).contains(v)) {
        return Err(format!(
            "default-domain opset {v} is not supported (1 to {MAX_OPSET})"
        ));
    }
    if let Some((i, n)) = g
        .node
        .iter()
        .enumerate()
        .find(|(_, n)| !n.op_domain().is_empty())
    {
        return Err(format!(
            "node {} is in operator domain '{}'; only standard ONNX operators are supported",
            describe(n, i),
            n.op_domain()
        ));
    }
    crate::ops::check_graph(g, opset.unwrap_or(MAX_OPSET))?;
    let mut total = 0u64;
    for t in &g.initializer {
        let n = crate::model_io::element_count(t).map_err(|e| format!("{e:#}"))?;
        total = total
            .checked_add(n)
            .filter(|&s| s <= i64::MAX as u64)
            .ok_or_else(|| {
                format!(
                    "initializer '{}': sizes add up past 2^63 elements",
                    t.name()
                )
            })?;
    }
    Ok(())
}

/// Graphs in forms only ONNX Runtime's own operators express, each named with the way out:
/// quantized with operators outside standard ONNX (the QOperator format's `QLinear*`, 4-bit
/// `MatMulNBits`, fused integer products), or fused by its transformer optimizer.
/// (Standard-op quantization, dynamic int8 and QDQ, is analyzed like a float model.)
fn refuse_foreign_forms(g: &GraphProto) -> Result<(), String> {
    let ops = |pick: &dyn Fn(&NodeProto) -> bool| -> Vec<&str> {
        let set: BTreeSet<&str> = g
            .node
            .iter()
            .filter(|n| pick(n))
            .map(|n| n.op_type())
            .collect();
        set.into_iter().collect()
    };
    let quantized = ops(&|n| {
        let op = n.op_type();
        (n.op_domain() == "com.microsoft" || op.starts_with("QLinear"))
            && (op.starts_with("QLinear")
                || op.starts_with("QOrdered")
                || op.starts_with("QAttention")
                || op.contains("Integer")
                || op.contains("Quantize")
                || op.contains("NBits")
                || op.contains("BlockQuantized"))
    });
    if !quantized.is_empty() {
        return Err(format!(
            "a quantized model in a form only ONNX Runtime's own operators express ({}); prune \
             the float export, then quantize it (quantize_dynamic, or QDQ with quantize_static, \
             are supported as they are)",
            quantized.join(", ")
        ));
    }
    let fused = ops(&|n| n.op_domain() == "com.microsoft");
    if !fused.is_empty() {
        return Err(format!(
            "this graph was optimized by ONNX Runtime's transformer optimizer (fused \
             com.microsoft ops: {}); export the unoptimized model",
            fused.join(", ")
        ));
    }
    Ok(())
}

/// Refuses the files of an encoder-decoder (a whole T5 from Optimum's
/// `main_export(task="feature-extraction")`, or its decoder alone), whose second stream the
/// analysis would otherwise take for the encoder's and refuse for reasons that help nobody.
/// Told by the interface, which every exporter of `transformers` models names alike.
fn not_encoder_decoder(g: &GraphProto) -> Result<(), String> {
    const WAY_OUT: &str = "skrr-onnx prunes the text encoder alone: export it by itself \
        (e.g. torch.onnx.export of transformers' T5EncoderModel / UMT5EncoderModel, or the \
        text_encoder*/model.onnx that Optimum writes for a diffusers pipeline)";
    let fed: Vec<&str> = graph::fed_inputs(g).map(|i| i.name()).collect();
    if let Some(d) = fed.iter().find(|n| n.starts_with("decoder_")) {
        return Err(format!(
            "an encoder-decoder model (it takes {d} besides the encoder's inputs); {WAY_OUT}"
        ));
    }
    let cross = [
        "encoder_hidden_states",
        "encoder_attention_mask",
        "encoder_outputs",
    ];
    if let Some(e) = fed.iter().find(|n| cross.contains(n)) {
        return Err(format!(
            "the decoder of an encoder-decoder model (it reads the encoder's output as {e}); \
             {WAY_OUT}"
        ));
    }
    Ok(())
}

/// Block detection on a model; errors name the model as "model" (see `analyze_at`).
pub fn analyze(model: &ModelProto) -> Result<Analysis> {
    analyze_at(model, Path::new("model"))
}

/// Block detection, in the steps docs/architecture.md describes; `path` names the model in
/// errors (`SkrrError::BadModel`).
pub fn analyze_at(model: &ModelProto, path: &Path) -> Result<Analysis> {
    let bad = |msg: String| -> anyhow::Error {
        SkrrError::BadModel {
            path: path.to_path_buf(),
            msg,
        }
        .into()
    };
    let input = model
        .graph
        .as_ref()
        .ok_or_else(|| bad("the model has no graph".into()))?;
    refuse(model, input).map_err(bad)?;
    let sorted = graph::sorted(input).map_err(|e| bad(format!("invalid graph: {e:#}")))?;
    let found = stream::find(&Graph::new(&sorted)?).map_err(|stream::NotFound(m)| bad(m))?;
    let graph = hoist::hoist_shapes(&sorted, &found.values)?;
    let g = Graph::new(&graph)?;
    let part = partition::partition(&g, &found.values).map_err(bad)?;
    let description = description(model, &g, &found, &part).map_err(bad)?;
    Ok(Analysis {
        layers: description.sub_blocks.len() / 2,
        sub_blocks: description.sub_blocks,
        prologue: part.prologue,
        epilogue: part.epilogue,
        prologue_params: description.params.prologue,
        epilogue_params: description.params.epilogue,
        shared_params: description.params.shared,
        total_params: description.params.total,
        family: description.family,
        structure_signature: description.structure_signature,
        graph,
    })
}

/// Step 1: what the analysis refuses before looking for the stream.
fn refuse(model: &ModelProto, g: &GraphProto) -> Result<(), String> {
    refuse_foreign_forms(g)?;
    check_supported(model, g)?;
    not_encoder_decoder(g)
}

/// Step 5's findings on the partitioned graph.
struct Description {
    sub_blocks: Vec<SubBlock>,
    params: Params,
    family: Option<String>,
    structure_signature: String,
}

/// Step 5: what each sub-block is (refusing layers that are not alike), the parameter
/// accounting, and the architecture.
fn description(
    model: &ModelProto,
    g: &Graph,
    found: &stream::Stream,
    part: &Partition,
) -> Result<Description, String> {
    let kinds: Vec<Kind> = part
        .sub_nodes
        .iter()
        .map(|n| signature::kind(g, n))
        .collect();
    refuse_unpaired(model, &kinds, found.values.len())?;
    refuse_control_flow(g, part)?;
    let signatures = same_kind_signatures(g, part, &found.values, &kinds)?;
    let params = Params::count(g, &part.region, kinds.len());
    let (family, structure_signature) = architecture(g, found, part, &kinds);
    let sub_blocks = kinds
        .iter()
        .zip(signatures)
        .enumerate()
        .map(|(i, (&kind, signature))| SubBlock {
            index: i,
            layer: i / 2,
            kind,
            nodes: part.sub_nodes[i].clone(),
            input: found.values[i].clone(),
            output: found.values[i + 1].clone(),
            side_inputs: part.side_inputs[i].clone(),
            initializers: part.initializers[i].clone(),
            params: params.sub[i],
            signature,
        })
        .collect();
    Ok(Description {
        sub_blocks,
        params,
        family,
        structure_signature,
    })
}

/// Refuses residual branches that do not come as (attention, feed-forward) pairs; `values` is
/// the number of stream values.
fn refuse_unpaired(model: &ModelProto, kinds: &[Kind], values: usize) -> Result<(), String> {
    let k = kinds.len();
    if k % 2 == 0
        && kinds
            .iter()
            .enumerate()
            .all(|(i, kd)| (*kd == Kind::Attention) == (i % 2 == 0))
    {
        return Ok(());
    }
    let pattern: String = kinds
        .iter()
        .map(|k| match k {
            Kind::Attention => 'A',
            Kind::Ffn => 'F',
        })
        .collect();
    // A model this tool pruned with uneven skips is the usual way to get here.
    let pruned = model
        .metadata_props
        .iter()
        .any(|e| e.key() == crate::onnx::META_PLAN);
    let hint = if pruned {
        "; this model was already pruned by skrr-onnx (metadata skrr.plan): prune the \
         original model to the sparsity you want instead"
    } else {
        ""
    };
    Err(format!(
        "found {values} stream values and {k} residual branches, but not the repeating \
         (attention, feed-forward) pattern of a transformer encoder: {pattern} \
         (A = attention, F = feed-forward){hint}"
    ))
}

fn refuse_control_flow(g: &Graph, part: &Partition) -> Result<(), String> {
    for (i, nodes) in part.sub_nodes.iter().enumerate() {
        if let Some(&n) = nodes.iter().find(|&&n| graph::has_subgraph(g.node(n))) {
            return Err(format!(
                "sub-block {i} contains node {} with a nested subgraph (If/Loop/Scan); \
                 control flow inside a transformer layer is not supported",
                describe(g.node(n), n)
            ));
        }
    }
    Ok(())
}

/// Each sub-block's signature, refused unless every one equals the first of its kind.
fn same_kind_signatures(
    g: &Graph,
    part: &Partition,
    stream: &[String],
    kinds: &[Kind],
) -> Result<Vec<String>, String> {
    let signatures: Vec<String> = (0..kinds.len())
        .map(|i| signature::signature(g, &part.sub_nodes[i], &stream[i], &part.side_inputs[i]))
        .collect();
    for i in 2..kinds.len() {
        if signatures[i] != signatures[i % 2]
            || part.side_inputs[i].len() != part.side_inputs[i % 2].len()
        {
            return Err(format!(
                "sub-block {i} ({:?}, layer {}) differs in structure from sub-block {} \
                 ({} nodes vs {}); layers of different structure are not supported",
                kinds[i],
                i / 2,
                i % 2,
                part.sub_nodes[i].len(),
                part.sub_nodes[i % 2].len()
            ));
        }
    }
    Ok(signatures)
}

/// Initializer elements per region: an initializer belongs to the one region reading it, else
/// (read by several, or by none) it is shared.
struct Params {
    sub: Vec<u64>,
    prologue: u64,
    epilogue: u64,
    shared: u64,
    total: u64,
}

impl Params {
    /// `region` holds each node's region, `k` is the number of sub-blocks.
    fn count(g: &Graph, region: &[Region], k: usize) -> Params {
        let mut users: HashMap<&str, BTreeSet<Region>> = HashMap::new();
        for (n, r) in region.iter().enumerate() {
            for &v in g.reads(n) {
                if g.initializer(v).is_some() {
                    users.entry(v).or_default().insert(*r);
                }
            }
        }
        let mut p = Params {
            sub: vec![0; k],
            prologue: 0,
            epilogue: 0,
            shared: 0,
            total: 0,
        };
        for t in &g.proto.initializer {
            let n = elements(t);
            p.total += n;
            match users
                .get(t.name())
                .map(|u| u.iter().copied().collect::<Vec<_>>())
                .as_deref()
            {
                Some([Region::Sub(i)]) => p.sub[*i] += n,
                Some([Region::Prologue]) => p.prologue += n,
                Some([Region::Epilogue]) => p.epilogue += n,
                _ => p.shared += n,
            }
        }
        p
    }
}

/// Elements of an initializer (its dims were checked by `check_supported`).
fn elements(t: &TensorProto) -> u64 {
    t.dims.iter().map(|&d| d.max(0) as u64).product()
}

/// The recognised family and the structure signature, which hashes it with the norm position
/// and the sub-blocks' kinds and weight shapes.
fn architecture(
    g: &Graph,
    found: &stream::Stream,
    part: &Partition,
    kinds: &[Kind],
) -> (Option<String>, String) {
    let ops = |nodes: &[usize]| -> Vec<String> {
        let set: BTreeSet<&str> = nodes.iter().map(|&n| g.node(n).op_type()).collect();
        set.into_iter().map(str::to_string).collect()
    };
    let post_norm = found.trailing[0] > 0 && ends_with_norm(g, &found.values[1]);
    let traits = signature::Traits {
        prologue_ops: ops(&part.prologue),
        attention_ops: ops(&part.sub_nodes[0]),
        ffn_ops: ops(&part.sub_nodes[1]),
        post_norm,
        embedding_lookups: embedding_lookups(g, &part.prologue),
    };
    let family = signature::family(&traits).map(str::to_string);
    let blocks: Vec<(Kind, &[usize])> = kinds
        .iter()
        .zip(&part.sub_nodes)
        .map(|(&kind, nodes)| (kind, nodes.as_slice()))
        .collect();
    let architecture = format!("{family:?} post_norm={post_norm}");
    let structure = signature::structure(g, &architecture, &blocks);
    (family, structure)
}

/// Gathers from a 2-D weight table among `prologue`'s nodes (BERT has word, position and
/// token-type embeddings).
fn embedding_lookups(g: &Graph, prologue: &[usize]) -> usize {
    prologue
        .iter()
        .filter(|&&n| {
            let node = g.node(n);
            node.op_type() == "Gather"
                && node
                    .input
                    .first()
                    .and_then(|v| stored_weight(g, v))
                    .is_some_and(|t| t.dims.len() == 2)
        })
        .count()
}

/// A sub-block ends with its norm (post-norm, BERT: `norm(h + f(h))`) when the node making its
/// output is a LayerNormalization or applies a weight (the affine part of a decomposed norm);
/// a pre-norm sub-block ends with the residual Add (or weight-free fp16 clamps).
fn ends_with_norm(g: &Graph, output: &str) -> bool {
    // A QDQ model quantizes the stream after the residual Add: the pair's scales are not a
    // norm's weights.
    let mut producer = g.producer(output);
    while let Some(p) =
        producer.filter(|&p| matches!(g.node(p).op_type(), "QuantizeLinear" | "DequantizeLinear"))
    {
        producer = g.node(p).input.first().and_then(|v| g.producer(v));
    }
    producer.is_some_and(|p| {
        let node = g.node(p);
        matches!(node.op_type(), "LayerNormalization" | "RMSNormalization")
            || node.input.iter().any(|v| is_weight(g, v))
    })
}

/// The initializer `v` is, or is a stored form of: an int8 table that QDQ quantization reads
/// through `DequantizeLinear` (the dims are the table's either way).
fn stored_weight<'g>(g: &Graph<'g>, v: &str) -> Option<&'g TensorProto> {
    let mut v = v;
    for _ in 0..4 {
        if let Some(t) = g.initializer(v) {
            return Some(t);
        }
        let node = g.node(g.producer(v)?);
        if !matches!(node.op_type(), "DequantizeLinear" | "Identity" | "Cast") {
            return None;
        }
        v = node.input.first()?;
    }
    None
}

/// An initializer, or a value computed from initializers only (the legacy exporter reads a
/// merged all-zeros bias through an `Identity` copy).
fn is_weight(g: &Graph, v: &str) -> bool {
    let mut todo = vec![v];
    let mut seen = 0;
    while let Some(v) = todo.pop() {
        seen += 1;
        if seen > 16 {
            return false;
        }
        match g.source(v) {
            Some(graph::Source::Initializer) => {}
            Some(graph::Source::Node { node, .. }) if !g.reads(node).is_empty() => {
                todo.extend(g.reads(node).iter().copied())
            }
            _ => return false,
        }
    }
    true
}

/// `"post"` for post-norm encoders (BERT), `"pre"` otherwise.
pub fn norm_position(a: &Analysis) -> Result<&'static str> {
    let g = Graph::new(&a.graph)?;
    let post = a
        .sub_blocks
        .first()
        .is_some_and(|sb| sb.input != sb.output && ends_with_norm(&g, &sb.output));
    Ok(if post { "post" } else { "pre" })
}
