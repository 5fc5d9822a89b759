//! Splits an analysed model into standalone ONNX models the engine runs as separate sessions:
//! the prologue (graph inputs → first stream value and every side value), one model per
//! sub-block (stream in + side inputs → stream out) and the epilogue (last stream value → the
//! output D is measured on).
//!
//! Weights are held once, in this process, as ONNX Runtime values that every session which reads
//! them shares through `AddInitializer` (`SessionBuilder::with_initializer`). Measured with ONNX
//! Runtime 1.32: this is the one initializer API that does not copy — the external-initializer and
//! in-memory-external-file APIs both copy the bytes into each session — and it stops copying only
//! with pre-packing disabled (pre-packing makes a packed copy per session, which the engine
//! accepts only when the copies fit in memory: `Prepack`). The partition model
//! must still declare the initializer, so large ones are written as external data pointing at a
//! sparse placeholder file that ONNX Runtime validates but never reads because the shared value
//! replaces it. Small initializers (scalars, shape constants) are inlined: graph optimizers
//! read their values (e.g. to recognise Gelu or a norm's epsilon), and copying them costs nothing.
//! Weights of element types the CPU kernels do not read directly (float16, ...) are inlined too
//! (see `shareable`). A shared initializer read by several parts (exporters merge all-ones
//! norms) is held once; an inlined one is copied into each part that reads it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType};
use prost::Message;

use crate::blocks::Analysis;
use crate::error::SkrrError;
use crate::model_io::WeightStore;
use crate::onnx::proto::tensor_proto::{data_location, data_type};
use crate::onnx::proto::tensor_shape_proto::{dimension, Dimension};
use crate::onnx::proto::type_proto;
use crate::onnx::{
    GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

/// Initializers up to this size are inlined into each part that reads them.
const INLINE_BYTES: usize = 1024;
const PLACEHOLDER: &str = "skrr-shared-weights.bin";

/// One standalone model of the partition.
#[derive(Debug, Clone)]
pub struct Part {
    /// File stem, for messages ("prologue", "sub-block 3", ...).
    pub label: String,
    /// Values it reads, in binding order. For a sub-block: the stream, then its side inputs.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    nodes: Vec<usize>,
    /// Large initializers it reads (shared values).
    shared: Vec<String>,
    /// Small initializers it reads (inlined).
    inline: Vec<String>,
}

/// Element type and rank of a value, to declare a part's input.
#[derive(Debug, Clone, PartialEq)]
pub struct InputType {
    pub elem_type: i32,
    pub dims: Vec<i64>,
}

/// The parts of one model and the weights they share.
pub struct Partition {
    dir: tempfile::TempDir,
    model_meta: ModelProto,
    graph: GraphProto,
    pub prologue: Part,
    pub blocks: Vec<Part>,
    /// `None` when the measured output is the last stream value itself (e.g. BERT).
    pub epilogue: Option<Part>,
    /// The model output D is measured on.
    pub output: String,
    /// Graph inputs, as declared by the model (the prologue and side inputs read them).
    pub graph_inputs: Vec<ValueInfoProto>,
    shared: HashMap<String, Arc<DynValue>>,
    /// Bytes held by shared initializers (each once).
    pub shared_bytes: u64,
    /// Bytes of small initializers inlined, summed over the parts that inline them.
    pub inlined_bytes: u64,
}

/// Picks the output D is measured on: `last_hidden_state` when present, else the first output.
fn measured_output(graph: &GraphProto) -> Result<String> {
    graph
        .output
        .iter()
        .find(|o| o.name() == "last_hidden_state")
        .or_else(|| graph.output.first())
        .map(|o| o.name().to_string())
        .ok_or_else(|| anyhow!("the model has no outputs"))
}

impl Partition {
    pub fn build(
        model: &ModelProto,
        analysis: &Analysis,
        weights: &WeightStore,
    ) -> Result<Partition> {
        let graph = &analysis.graph;
        let first = analysis
            .sub_blocks
            .first()
            .ok_or_else(|| anyhow!("the analysis found no sub-blocks"))?;
        let last = analysis.sub_blocks.last().unwrap_or(first);
        let output = measured_output(graph)?;
        let inits: HashMap<&str, &TensorProto> =
            graph.initializer.iter().map(|t| (t.name(), t)).collect();
        let graph_inputs: HashSet<&str> = graph.input.iter().map(|i| i.name()).collect();

        // Epilogue: only the nodes the measured output needs.
        let epilogue_nodes = backward_slice(graph, &analysis.epilogue, &output);
        let epilogue_reads = external_reads(graph, &epilogue_nodes, &inits);

        // Values the prologue must hand over: the first stream value, every side input it
        // produces, and whatever else the epilogue reads from it.
        let prologue_made: HashSet<&str> = analysis
            .prologue
            .iter()
            .flat_map(|&n| graph.node[n].output.iter().map(String::as_str))
            .collect();
        let mut handed: Vec<String> = vec![first.input.clone()];
        let side_and_epilogue = analysis
            .sub_blocks
            .iter()
            .flat_map(|sb| sb.side_inputs.iter())
            .chain(epilogue_reads.iter());
        for v in side_and_epilogue {
            if prologue_made.contains(v.as_str()) && !handed.contains(v) {
                handed.push(v.clone());
            }
        }

        let make_part = |label: String, nodes: Vec<usize>, inputs: Vec<String>, outputs| {
            let (shared, inline) = split_inits(graph, &nodes, &inits);
            Part {
                label,
                inputs,
                outputs,
                nodes,
                shared,
                inline,
            }
        };
        let prologue_inputs: Vec<String> = external_reads(graph, &analysis.prologue, &inits)
            .into_iter()
            .filter(|v| graph_inputs.contains(v.as_str()))
            .collect();
        let prologue = make_part(
            "prologue".into(),
            analysis.prologue.clone(),
            prologue_inputs,
            handed,
        );
        let blocks = analysis
            .sub_blocks
            .iter()
            .map(|sb| {
                let mut inputs = vec![sb.input.clone()];
                inputs.extend(sb.side_inputs.iter().cloned());
                make_part(
                    format!("sub-block-{}", sb.index),
                    sb.nodes.clone(),
                    inputs,
                    vec![sb.output.clone()],
                )
            })
            .collect::<Vec<_>>();
        let epilogue = if output == last.output {
            None
        } else {
            if !epilogue_reads.contains(&last.output) {
                return Err(anyhow!(
                    "output {output} is not computed from the last stream value {}",
                    last.output
                ));
            }
            let mut inputs = vec![last.output.clone()];
            inputs.extend(epilogue_reads.into_iter().filter(|v| *v != last.output));
            Some(make_part(
                "epilogue".into(),
                epilogue_nodes,
                inputs,
                vec![output.clone()],
            ))
        };

        // Shared weights: one value per initializer, whichever parts read it. The kept copy of
        // the graph holds only what the part models need: small initializers with their data,
        // placeholders for the shared ones.
        let mut shared = HashMap::new();
        let mut shared_bytes = 0u64;
        let mut max_len = 0usize;
        let mut inlined_bytes = 0u64;
        let mut kept: HashMap<String, TensorProto> = HashMap::new();
        for part in std::iter::once(&prologue)
            .chain(&blocks)
            .chain(epilogue.as_ref())
        {
            for name in &part.shared {
                if shared.contains_key(name) {
                    continue;
                }
                let t = inits[name.as_str()];
                let bytes = weights.bytes(t)?;
                max_len = max_len.max(bytes.len());
                shared_bytes += bytes.len() as u64;
                shared.insert(name.clone(), Arc::new(ort_value(t, &bytes)?));
                kept.insert(name.clone(), placeholder(t));
            }
            for name in &part.inline {
                let t = inits[name.as_str()];
                inlined_bytes += byte_len(t).unwrap_or(0);
                if !kept.contains_key(name) {
                    kept.insert(name.clone(), inline_copy(t, weights)?);
                }
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("skrr-partition-")
            .tempdir()
            .context("cannot create a temporary folder for the partition models")?;
        // Sparse: validated by ONNX Runtime, never read, costs no disk.
        std::fs::File::create(dir.path().join(PLACEHOLDER))
            .and_then(|f| f.set_len(max_len as u64))
            .context("cannot create the partition's placeholder weight file")?;

        let model_meta = ModelProto {
            graph: None,
            ..model.clone()
        };
        Ok(Partition {
            dir,
            model_meta,
            graph: GraphProto {
                node: graph.node.clone(),
                initializer: kept.into_values().collect(),
                ..Default::default()
            },
            prologue,
            blocks,
            epilogue,
            output,
            graph_inputs: graph.input.clone(),
            shared,
            shared_bytes,
            inlined_bytes,
        })
    }

    /// Builds the session of `part`, its inputs declared with `types` (graph inputs keep the
    /// model's own declaration). `builder` comes configured (provider, threads).
    pub fn session(&self, part: &Part, types: &[InputType], prepack: bool) -> Result<Session> {
        let proto = self.part_model(part, types)?;
        let path = self.dir.path().join(format!("{}.onnx", part.label));
        std::fs::write(&path, proto.encode_to_vec())
            .with_context(|| format!("cannot write {}", path.display()))?;
        // Without pre-packing every MatMul re-packs its weight on every run (about 15 % of the
        // search's CPU on MiniLM), with it each shared weight gets a packed copy. Spinning
        // intra-op threads of one part's session starve the next part's run (measured: 2.4× vs
        // 8.3× in the calibration benchmark).
        let ort_err = |e: ort::Error<SessionBuilder>| anyhow!("ONNX Runtime: {e}");
        let mut builder = crate::runtime::session_builder()?
            .with_prepacking(prepack)
            .map_err(ort_err)?
            .with_intra_op_spinning(false)
            .map_err(ort_err)?;
        for name in &part.shared {
            builder = builder
                .with_initializer(name, self.shared[name].clone())
                .map_err(|e| anyhow!("ONNX Runtime: sharing initializer {name}: {e}"))?;
        }
        builder.commit_from_file(&path).map_err(|e| {
            SkrrError::Runtime(format!(
                "ONNX Runtime refused the {} part of the model: {e}",
                part.label
            ))
            .into()
        })
    }

    /// The standalone model of `part` (also useful to inspect a partition by hand).
    pub fn part_model(&self, part: &Part, types: &[InputType]) -> Result<ModelProto> {
        if types.len() != part.inputs.len() {
            return Err(anyhow!(
                "{}: {} input types for {} inputs",
                part.label,
                types.len(),
                part.inputs.len()
            ));
        }
        let by_name: HashMap<&str, &TensorProto> = self
            .graph
            .initializer
            .iter()
            .map(|t| (t.name(), t))
            .collect();
        let input = part
            .inputs
            .iter()
            .zip(types)
            .map(|(name, ty)| {
                self.graph_inputs
                    .iter()
                    .find(|i| i.name() == name)
                    .cloned()
                    .unwrap_or_else(|| value_info(name, ty))
            })
            .collect();
        let initializer: Vec<TensorProto> = part
            .inline
            .iter()
            .chain(&part.shared)
            .map(|n| by_name[n.as_str()].clone())
            .collect();
        let graph = GraphProto {
            name: Some(part.label.clone()),
            node: part
                .nodes
                .iter()
                .map(|&n| self.graph.node[n].clone())
                .collect(),
            initializer,
            input,
            output: part
                .outputs
                .iter()
                .map(|n| ValueInfoProto {
                    name: Some(n.clone()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Ok(ModelProto {
            graph: Some(graph),
            ..self.model_meta.clone()
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Values `nodes` read that none of them produce and that are not initializers, in first-read
/// order.
fn external_reads(
    graph: &GraphProto,
    nodes: &[usize],
    inits: &HashMap<&str, &TensorProto>,
) -> Vec<String> {
    let made: HashSet<&str> = nodes
        .iter()
        .flat_map(|&n| graph.node[n].output.iter().map(String::as_str))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for &n in nodes {
        for v in &graph.node[n].input {
            if !v.is_empty()
                && !made.contains(v.as_str())
                && !inits.contains_key(v.as_str())
                && !out.contains(v)
            {
                out.push(v.clone());
            }
        }
    }
    out
}

/// The subset of `nodes` (topologically ordered) that `target` depends on.
fn backward_slice(graph: &GraphProto, nodes: &[usize], target: &str) -> Vec<usize> {
    let mut need: HashSet<&str> = HashSet::from([target]);
    let mut keep = Vec::new();
    for &n in nodes.iter().rev() {
        let node: &NodeProto = &graph.node[n];
        if node.output.iter().any(|o| need.contains(o.as_str())) {
            keep.push(n);
            need.extend(node.input.iter().map(String::as_str));
        }
    }
    keep.reverse();
    keep
}

/// Initializers `nodes` read, split into shared (large) and inlined (small) names.
fn split_inits(
    graph: &GraphProto,
    nodes: &[usize],
    inits: &HashMap<&str, &TensorProto>,
) -> (Vec<String>, Vec<String>) {
    let mut seen = HashSet::new();
    let (mut shared, mut inline) = (Vec::new(), Vec::new());
    for &n in nodes {
        for v in &graph.node[n].input {
            if let Some(t) = inits.get(v.as_str()) {
                if seen.insert(v.as_str()) {
                    match byte_len(t) {
                        Some(len) if len > INLINE_BYTES as u64 && shareable(t) => {
                            shared.push(v.clone())
                        }
                        _ => inline.push(v.clone()),
                    }
                }
            }
        }
    }
    (shared, inline)
}

/// Whether ONNX Runtime's CPU kernels read this element type as is. For others (float16,
/// bfloat16, 8-bit) ONNX Runtime inserts a Cast of the weight and constant-folds it while
/// optimizing, before a shared value replaces the placeholder: the fold would read the
/// placeholder's zeros (seen on the fp16 T5 fixture). Those are inlined instead.
fn shareable(t: &TensorProto) -> bool {
    matches!(
        t.data_type(),
        data_type::FLOAT | data_type::DOUBLE | data_type::INT64 | data_type::INT32
    )
}

/// Declared size in bytes, `None` for types the engine does not share (strings, ...) or
/// nonsensical dims.
fn byte_len(t: &TensorProto) -> Option<u64> {
    let size = element_size(t.data_type())? as u64;
    t.dims.iter().try_fold(size, |acc, &d| {
        u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// `t` with its data inline as `raw_data` (external data resolved).
fn inline_copy(t: &TensorProto, weights: &WeightStore) -> Result<TensorProto> {
    if !t.is_external() {
        return Ok(t.clone());
    }
    let bytes = weights.bytes(t)?;
    Ok(TensorProto {
        raw_data: Some(bytes::Bytes::copy_from_slice(&bytes)),
        external_data: Vec::new(),
        data_location: Some(data_location::DEFAULT),
        ..t.clone()
    })
}

/// The declaration of a shared initializer inside a part: same name, type and dims, data
/// "external" in the sparse placeholder (replaced by the shared value before anything reads it).
fn placeholder(t: &TensorProto) -> TensorProto {
    let len = byte_len(t).unwrap_or(0);
    TensorProto {
        dims: t.dims.clone(),
        data_type: t.data_type,
        name: t.name.clone(),
        data_location: Some(data_location::EXTERNAL),
        external_data: vec![
            StringStringEntryProto::new("location", PLACEHOLDER),
            StringStringEntryProto::new("offset", "0"),
            StringStringEntryProto::new("length", len.to_string()),
        ],
        ..Default::default()
    }
}

fn value_info(name: &str, ty: &InputType) -> ValueInfoProto {
    // Every axis symbolic: batch and sequence vary between chunks, and side values (masks,
    // position bias) carry the sequence length on any axis. The rank is still declared.
    let dim = (0..ty.dims.len())
        .map(|i| Dimension {
            value: Some(dimension::Value::DimParam(format!("{name}_d{i}"))),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(ty.elem_type),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn element_size(dt: i32) -> Option<usize> {
    Some(match dt {
        data_type::DOUBLE | data_type::INT64 => 8,
        data_type::FLOAT | data_type::INT32 => 4,
        data_type::FLOAT16 | data_type::BFLOAT16 => 2,
        data_type::INT8 | data_type::UINT8 | data_type::BOOL => 1,
        _ => return None,
    })
}

/// ONNX data type number of an ONNX Runtime element type.
pub fn onnx_data_type(ty: TensorElementType) -> Option<i32> {
    Some(match ty {
        TensorElementType::Float32 => data_type::FLOAT,
        TensorElementType::Float16 => data_type::FLOAT16,
        TensorElementType::Bfloat16 => data_type::BFLOAT16,
        TensorElementType::Float64 => data_type::DOUBLE,
        TensorElementType::Int64 => data_type::INT64,
        TensorElementType::Int32 => data_type::INT32,
        TensorElementType::Int8 => data_type::INT8,
        TensorElementType::Uint8 => data_type::UINT8,
        TensorElementType::Bool => data_type::BOOL,
        _ => return None,
    })
}

/// An ONNX Runtime value owning an aligned copy of the initializer's bytes (the one copy the
/// engine holds).
fn ort_value(t: &TensorProto, bytes: &[u8]) -> Result<DynValue> {
    let bad = |msg: String| -> anyhow::Error {
        SkrrError::BadModel {
            path: PathBuf::from(t.name()),
            msg,
        }
        .into()
    };
    let size = element_size(t.data_type())
        .ok_or_else(|| bad(format!("unsupported initializer type {}", t.data_type())))?;
    let dims: Vec<i64> = t.dims.clone();
    let count = dims.iter().try_fold(1u64, |acc, &d| {
        u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    });
    if count.and_then(|c| c.checked_mul(size as u64)) != Some(bytes.len() as u64) {
        return Err(bad(format!(
            "initializer has {} bytes, its dims {dims:?} need {count:?} elements of {size} bytes",
            bytes.len()
        )));
    }
    let value = match t.data_type() {
        data_type::FLOAT => Tensor::from_array((dims, typed::<f32>(bytes)))?.into_dyn(),
        data_type::FLOAT16 => Tensor::from_array((dims, typed::<half::f16>(bytes)))?.into_dyn(),
        data_type::BFLOAT16 => Tensor::from_array((dims, typed::<half::bf16>(bytes)))?.into_dyn(),
        data_type::DOUBLE => Tensor::from_array((dims, typed::<f64>(bytes)))?.into_dyn(),
        data_type::INT64 => Tensor::from_array((dims, typed::<i64>(bytes)))?.into_dyn(),
        data_type::INT32 => Tensor::from_array((dims, typed::<i32>(bytes)))?.into_dyn(),
        data_type::INT8 => Tensor::from_array((dims, typed::<i8>(bytes)))?.into_dyn(),
        data_type::UINT8 => Tensor::from_array((dims, bytes.to_vec()))?.into_dyn(),
        data_type::BOOL => {
            Tensor::from_array((dims, bytes.iter().map(|&b| b != 0).collect::<Vec<bool>>()))?
                .into_dyn()
        }
        other => return Err(bad(format!("unsupported initializer type {other}"))),
    };
    Ok(value)
}

/// An aligned, typed copy of little-endian bytes whose length is a multiple of `T`'s size.
fn typed<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let mut v = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
    bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
    v
}
