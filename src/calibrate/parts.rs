//! Splits an analysed model into standalone ONNX models the engine runs as separate sessions:
//! the prologue (graph inputs → first stream value and every side value), one model per
//! sub-block (stream in + side inputs → stream out) and the epilogue (last stream value → the
//! output D is measured on).
//!
//! Each part model reads its large initializers straight from the input's files: it declares
//! them as external data at their place in the model's data file, or inside the model file itself
//! for inline weights, and its session is built from memory with the files' real folder
//! (symlinks resolved, see `RealFiles`) as the external-data folder. So this process never
//! copies a weight. ONNX Runtime memory-maps
//! page-aligned ranges (the usual layout of large external data, and what `model_io` writes):
//! the weights then live in the page cache, shared by every session and by other processes,
//! and can be evicted. It copies unaligned ranges, once, into the one session that reads them.
//! With pre-packing (`Prepack`) it packs each MatMul weight and drops the unpacked bytes. Measured
//! with ONNX Runtime 1.32 on a 1 GiB external-data T5, pre-packing off: 32 MiB anonymous memory
//! and 1.1 GiB of mapped file after a run. The earlier design shared one copy of each weight
//! through `AddInitializer`, plus the packed copies, so it held the weights twice.
//! Small initializers (scalars, shape constants) are inlined: graph optimizers read their values
//! (e.g. to recognise Gelu or a norm's epsilon), and copying them costs nothing. A large one
//! read by several parts (weights tied across layers) is loaded by each of their sessions:
//! mapped once when aligned, copied per session otherwise. `repeated_bytes` counts it, and the
//! engine logs it; it is zero for every fixture and for MiniLM.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use ort::value::TensorElementType;
use prost::Message;

use crate::blocks::{Analysis, SubBlock};
use crate::error::SkrrError;
use crate::model_io::{Source, WeightStore};
use crate::onnx::proto::tensor_proto::{data_location, data_type};
use crate::onnx::proto::tensor_shape_proto::dimension;
use crate::onnx::{
    GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto, ValueInfoProto,
};
use crate::runtime::Sessions;

/// Initializers up to this size are inlined into each part that reads them.
const INLINE_BYTES: usize = 1024;

/// One standalone model of the split.
#[derive(Debug, Clone)]
pub struct Part {
    /// File stem, for messages ("prologue", "sub-block 3", ...).
    pub label: String,
    /// Values it reads, in binding order. For a sub-block: the stream, then its side inputs.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    nodes: Vec<usize>,
    /// Large initializers it reads (from the input's files).
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
pub struct SessionParts {
    /// How the part sessions are built.
    sessions: Sessions,
    /// The real folder the part models' external data locations point into (`None` when no
    /// weight is read from a file).
    folder: Option<PathBuf>,
    model_meta: ModelProto,
    graph: GraphProto,
    pub prologue: Part,
    pub blocks: Vec<Part>,
    /// `None` when the measured output is a stream value itself (e.g. BERT's last one).
    pub epilogue: Option<Part>,
    /// Sub-blocks that run before the measured output: all of them, or fewer when it is a
    /// stream value inside the encoder (`hidden_states.N`, the penultimate layer SD 2 and SDXL
    /// condition on), which later sub-blocks cannot change.
    pub measured_after: usize,
    /// The model output D is measured on.
    pub output: String,
    /// Graph inputs that are fed, as declared by the model (the prologue and side inputs read
    /// them); not those that only declare an initializer.
    pub graph_inputs: Vec<ValueInfoProto>,
    /// Bytes of the large initializers the parts read from the input's files (each once).
    pub shared_bytes: u64,
    /// Bytes of large initializers read by a second (third, ...) part, counted per extra part:
    /// ONNX Runtime loads them in each session, mapped once when aligned, else copied.
    pub repeated_bytes: u64,
    /// Bytes of small initializers inlined, summed over the parts that inline them.
    pub inlined_bytes: u64,
}

impl SessionParts {
    /// The part models of `analysis` measuring output `measure` (`graph::measured_output`),
    /// their weights declared where they lie in the input's files, their sessions to be built
    /// by `sessions`.
    pub fn build(
        sessions: Sessions,
        model: &ModelProto,
        analysis: &Analysis,
        weights: &WeightStore,
        measure: Option<&str>,
    ) -> Result<SessionParts> {
        let graph = &analysis.graph;
        if analysis.sub_blocks.is_empty() {
            return Err(anyhow!("the analysis found no sub-blocks"));
        }
        let output = crate::graph::measured_output(graph, measure)?;
        let maker = PartMaker {
            graph,
            inits: graph.initializer.iter().map(|t| (t.name(), t)).collect(),
        };
        // Graph inputs that only declare an initializer are weights, not feeds.
        let fed: Vec<ValueInfoProto> = crate::graph::fed_inputs(graph).cloned().collect();
        // Epilogue: only the nodes the measured output needs.
        let epilogue_nodes = backward_slice(graph, &analysis.epilogue, &output);
        let epilogue_reads = external_reads(graph, &epilogue_nodes, &maker.inits);
        let prologue = maker.prologue(analysis, &fed, &epilogue_reads);
        let blocks: Vec<Part> = analysis
            .sub_blocks
            .iter()
            .map(|sb| maker.block(sb))
            .collect();
        // A stream value inside the encoder, as a graph output (a `hidden_states.N` tap).
        let tapped = analysis
            .sub_blocks
            .iter()
            .position(|sb| sb.output == output);
        let measured_after = tapped.map_or(analysis.sub_blocks.len(), |p| p + 1);
        let epilogue = match tapped {
            Some(_) => None,
            None => Some(maker.epilogue(analysis, &output, epilogue_nodes, epilogue_reads)?),
        };
        let parts = std::iter::once(&prologue)
            .chain(&blocks)
            .chain(epilogue.as_ref());
        let declared = maker.declare_weights(parts, weights)?;
        let model_meta = ModelProto {
            graph: None,
            ..model.clone()
        };
        Ok(SessionParts {
            sessions,
            folder: declared.folder,
            model_meta,
            graph: GraphProto {
                node: graph.node.clone(),
                initializer: declared.initializers,
                ..Default::default()
            },
            prologue,
            blocks,
            epilogue,
            measured_after,
            output,
            graph_inputs: fed,
            shared_bytes: declared.shared_bytes,
            repeated_bytes: declared.repeated_bytes,
            inlined_bytes: declared.inlined_bytes,
        })
    }

    /// Builds the session of `part`, its inputs declared with `types` (graph inputs keep the
    /// model's own declaration), with the initializers `replaced` names stood in for by those
    /// tensors (a merged compensation's folds).
    pub fn session(
        &self,
        part: &Part,
        types: &[InputType],
        prepack: bool,
        replaced: &[TensorProto],
    ) -> Result<Session> {
        let proto = self.part_model(part, types, replaced)?.encode_to_vec();
        // Without pre-packing every MatMul re-packs its weight on every run (about 15 % of the
        // search's CPU on MiniLM), with it each weight gets a packed copy. Spinning intra-op
        // threads of one part's session starve the next part's run (measured: 2.4× vs 8.3× in
        // the calibration benchmark).
        let ort_err = |e: ort::Error<SessionBuilder>| anyhow!("ONNX Runtime: {e}");
        let mut builder = self
            .sessions
            .builder()?
            .with_prepacking(prepack)
            .map_err(ort_err)?
            .with_intra_op_spinning(false)
            .map_err(ort_err)?;
        if let Some(folder) = &self.folder {
            builder = builder
                .with_config_entry(
                    "session.model_external_initializers_file_folder_path",
                    folder.to_string_lossy(),
                )
                .map_err(ort_err)?;
        }
        builder.commit_from_memory(&proto).map_err(|e| {
            SkrrError::Runtime(format!(
                "ONNX Runtime refused the {} part of the model: {e}",
                part.label
            ))
            .into()
        })
    }

    /// The standalone model of `part` (also useful to inspect a split by hand).
    pub fn part_model(
        &self,
        part: &Part,
        types: &[InputType],
        replaced: &[TensorProto],
    ) -> Result<ModelProto> {
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
            .chain(replaced)
            .map(|t| (t.name(), t))
            .collect();
        if let Some(t) = replaced.iter().find(|t| {
            !part
                .inline
                .iter()
                .chain(&part.shared)
                .any(|n| n == t.name())
        }) {
            return Err(anyhow!("{} does not read {}", part.label, t.name()));
        }
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
}

/// The analysed graph, cut into part models.
struct PartMaker<'a> {
    graph: &'a GraphProto,
    inits: HashMap<&'a str, &'a TensorProto>,
}

/// The initializers the part models declare, and the bytes they read each way.
struct Declared {
    /// The real folder the external data locations point into (`None` when no weight is read
    /// from a file).
    folder: Option<PathBuf>,
    initializers: Vec<TensorProto>,
    shared_bytes: u64,
    repeated_bytes: u64,
    inlined_bytes: u64,
}

impl PartMaker<'_> {
    fn part(
        &self,
        label: String,
        nodes: Vec<usize>,
        inputs: Vec<String>,
        outputs: Vec<String>,
    ) -> Part {
        let (shared, inline) = split_inits(self.graph, &nodes, &self.inits);
        Part {
            label,
            inputs,
            outputs,
            nodes,
            shared,
            inline,
        }
    }

    /// The prologue: from the fed graph inputs it reads to the values it hands over, the first
    /// stream value, every side input it produces, and whatever else the epilogue reads from
    /// it.
    fn prologue(
        &self,
        analysis: &Analysis,
        fed: &[ValueInfoProto],
        epilogue_reads: &[String],
    ) -> Part {
        let graph = self.graph;
        let prologue_made: HashSet<&str> = analysis
            .prologue
            .iter()
            .flat_map(|&n| graph.node[n].output.iter().map(String::as_str))
            .collect();
        let mut handed: Vec<String> = vec![analysis.sub_blocks[0].input.clone()];
        let side_and_epilogue = analysis
            .sub_blocks
            .iter()
            .flat_map(|sb| sb.side_inputs.iter())
            .chain(epilogue_reads);
        for v in side_and_epilogue {
            if prologue_made.contains(v.as_str()) && !handed.contains(v) {
                handed.push(v.clone());
            }
        }
        let fed: HashSet<&str> = fed.iter().map(|i| i.name()).collect();
        let inputs: Vec<String> = external_reads(graph, &analysis.prologue, &self.inits)
            .into_iter()
            .filter(|v| fed.contains(v.as_str()))
            .collect();
        self.part("prologue".into(), analysis.prologue.clone(), inputs, handed)
    }

    /// A sub-block: its input stream value and side inputs in, its output stream value out.
    fn block(&self, sb: &SubBlock) -> Part {
        let mut inputs = vec![sb.input.clone()];
        inputs.extend(sb.side_inputs.iter().cloned());
        self.part(
            format!("sub-block-{}", sb.index),
            sb.nodes.clone(),
            inputs,
            vec![sb.output.clone()],
        )
    }

    /// The epilogue's `nodes` computing `output` from the last stream value (and the other
    /// values it `reads`); refused when `output` does not depend on the last stream value.
    fn epilogue(
        &self,
        analysis: &Analysis,
        output: &str,
        nodes: Vec<usize>,
        reads: Vec<String>,
    ) -> Result<Part> {
        let last = &analysis.sub_blocks[analysis.sub_blocks.len() - 1].output;
        if !reads.contains(last) {
            return Err(SkrrError::BadInput(format!(
                "output {output} is neither a stream value between layers nor computed \
                 from the encoder's last layer (its last stream value is {last}): D is measured \
                 on one of those"
            ))
            .into());
        }
        let mut inputs = vec![last.clone()];
        inputs.extend(reads.into_iter().filter(|v| v != last));
        Ok(self.part("epilogue".into(), nodes, inputs, vec![output.to_string()]))
    }

    /// Large initializers are declared where their bytes are in the input's files (each once,
    /// whichever parts read it); small ones are copied in with their data.
    /// ONNX Runtime resolves a location against one folder and refuses any that leaves it once
    /// symlinks are resolved; so locations are the files' real names, in the real folder of the
    /// first file, and a weight in a file elsewhere is copied in instead.
    fn declare_weights<'p>(
        &self,
        parts: impl Iterator<Item = &'p Part>,
        weights: &WeightStore,
    ) -> Result<Declared> {
        let inits = &self.inits;
        let mut real = RealFiles::default();
        let (mut shared_bytes, mut repeated_bytes, mut inlined_bytes) = (0u64, 0u64, 0u64);
        let mut kept: HashMap<String, TensorProto> = HashMap::new();
        for part in parts {
            for name in &part.shared {
                if kept.contains_key(name) {
                    repeated_bytes += byte_len(inits[name.as_str()]).unwrap_or(0);
                    continue;
                }
                let t = inits[name.as_str()];
                let declared = match weights.source(t)? {
                    Source::File { file, offset, len } => match real.location(&file.path)? {
                        Some(location) => {
                            shared_bytes += len;
                            reference(t, &location, offset, len)
                        }
                        None => {
                            inlined_bytes += len;
                            inline_copy(t, weights)?
                        }
                    },
                    // Typed fields (float_data, ...) have no bytes in a file.
                    Source::Mem(bytes) => TensorProto {
                        raw_data: Some(bytes::Bytes::copy_from_slice(&bytes)),
                        ..plain(t)
                    },
                };
                kept.insert(name.clone(), declared);
            }
            for name in &part.inline {
                let t = inits[name.as_str()];
                inlined_bytes += byte_len(t).unwrap_or(0);
                if !kept.contains_key(name) {
                    kept.insert(name.clone(), inline_copy(t, weights)?);
                }
            }
        }
        Ok(Declared {
            folder: real.folder,
            initializers: kept.into_values().collect(),
            shared_bytes,
            repeated_bytes,
            inlined_bytes,
        })
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
                        Some(len) if len > INLINE_BYTES as u64 => shared.push(v.clone()),
                        _ => inline.push(v.clone()),
                    }
                }
            }
        }
    }
    (shared, inline)
}

/// Declared size in bytes; `None` for element types without a fixed size (strings have no byte
/// layout a part could point at, so they stay inline) or nonsensical dims.
fn byte_len(t: &TensorProto) -> Option<u64> {
    let size = element_size(t.data_type())? as u64;
    t.dims.iter().try_fold(size, |acc, &d| {
        u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// `t`'s declaration without its data.
fn plain(t: &TensorProto) -> TensorProto {
    TensorProto {
        dims: t.dims.clone(),
        data_type: t.data_type,
        name: t.name.clone(),
        ..Default::default()
    }
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

/// The real (symlink-free) folder part models read weights from, and the location in it of
/// each file of the input.
#[derive(Default)]
struct RealFiles {
    folder: Option<PathBuf>,
    names: HashMap<PathBuf, Option<String>>,
}

impl RealFiles {
    /// `path`'s real file name when it lies in the real folder (set by the first file asked
    /// about), `None` when it lies elsewhere.
    fn location(&mut self, path: &std::path::Path) -> Result<Option<String>> {
        if let Some(known) = self.names.get(path) {
            return Ok(known.clone());
        }
        let real = path
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        let (Some(dir), Some(name)) = (real.parent(), real.file_name()) else {
            return Err(anyhow!("{} is not a file in a folder", real.display()));
        };
        let folder = self.folder.get_or_insert_with(|| dir.to_path_buf());
        let location = (dir == folder.as_path()).then(|| name.to_string_lossy().into_owned());
        self.names.insert(path.to_path_buf(), location.clone());
        Ok(location)
    }
}

/// The declaration of a large initializer inside a part: same name, type and dims, data
/// external at `len` bytes from `offset` of `location` (relative to the model's folder).
fn reference(t: &TensorProto, location: &str, offset: u64, len: u64) -> TensorProto {
    TensorProto {
        data_location: Some(data_location::EXTERNAL),
        external_data: vec![
            StringStringEntryProto::new("location", location),
            StringStringEntryProto::new("offset", offset.to_string()),
            StringStringEntryProto::new("length", len.to_string()),
        ],
        ..plain(t)
    }
}

fn value_info(name: &str, ty: &InputType) -> ValueInfoProto {
    // Every axis symbolic: batch and sequence vary between chunks, and side values (masks,
    // position bias) carry the sequence length on any axis. The rank is still declared.
    let dims = (0..ty.dims.len()).map(|i| dimension::Value::DimParam(format!("{name}_d{i}")));
    ValueInfoProto::tensor(name, ty.elem_type, dims)
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
