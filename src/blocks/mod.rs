//! Transformer block detection: finds the residual stream and the attention / feed-forward
//! sub-blocks of any exported text encoder from dataflow alone (no node names).
//!
//! This file holds the contract every later phase consumes (`Analysis`); the detection itself
//! lives in the submodules.

use serde::{Deserialize, Serialize};

use crate::onnx::GraphProto;

/// The two kinds of sub-block of a transformer layer (method doc, "Units").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Attention,
    Ffn,
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
    /// same shape) so that stream-independent work can live in the prologue. Semantically equal
    /// to the input graph; initializers are the input's (external ones stay references).
    pub graph: GraphProto,
    pub sub_blocks: Vec<SubBlock>,
    /// Nodes that run before/independently of the sub-blocks (embeddings, mask, position bias).
    pub prologue: Vec<usize>,
    /// Nodes after the last stream value (final norm, pooling, projection).
    pub epilogue: Vec<usize>,
    pub prologue_params: u64,
    pub epilogue_params: u64,
    /// Parameters used by more than one region (e.g. tied embeddings); counted once, here.
    pub shared_params: u64,
    /// All initializer elements of the model.
    pub total_params: u64,
    pub layers: usize,
    /// Recognised architecture family ("t5", "bert", "clip", "llama", ...), if any.
    pub family: Option<String>,
    /// Hash of the ordered sub-block signatures: plans are refused on a model where it differs.
    pub structure_signature: String,
}
