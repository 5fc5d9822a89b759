//! Rewrite: a plan becomes a smaller ONNX model (method doc; issue #6).
//!
//! plan → `edit::plan_edits` (data) → `edit::apply_edits` (the one function that changes the
//! graph) → `dce::dce` (frees what nothing reads any more) → `check` (the result must be a valid,
//! acyclic, fully connected graph) → a `ModelProto` that keeps the input's interface, IR version,
//! opsets and metadata and records the plan. Weights are never touched: initializers keep their
//! raw bytes or external references, so writing streams them like any other model.

mod dce;
pub mod edit;

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::blocks::Analysis;
use crate::onnx::{
    tensor_proto::data_type, GraphProto, ModelProto, StringStringEntryProto, TensorProto,
};
use crate::plan::{Action, PlanFile};

pub use edit::{apply_edits, plan_edits, Edit};

/// Metadata key holding the applied plan (compact JSON of the plan file).
pub const META_PLAN: &str = "skrr.plan";
/// Metadata key holding the skrr-onnx version that rewrote the model.
pub const META_VERSION: &str = "skrr.version";

/// How a re-used sub-block gets its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReuseWeights {
    /// The clone reads the source's initializers: stored once, loaded once.
    #[default]
    Share,
    /// The clone reads copies under new names, for engines that cannot bind one weight to two
    /// layers; costs the copied bytes (reported).
    Copy,
}

#[derive(Debug, Clone, Default)]
pub struct RewriteOptions {
    pub reuse_weights: ReuseWeights,
    /// The plan to record in the output's metadata; `PlanFile::describe` of the actions when
    /// absent. Pass the plan file as given so its search details (skip order, D) travel along.
    pub plan_record: Option<PlanFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reuse {
    pub at: usize,
    pub source: usize,
}

/// What the rewrite did, in the units users check (nodes, parameters, bytes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewriteReport {
    pub edits: usize,
    pub skipped: Vec<usize>,
    pub reused: Vec<Reuse>,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub initializers_before: usize,
    pub initializers_after: usize,
    pub params_before: u64,
    pub params_after: u64,
    /// Elements of the input's initializers that the output no longer has.
    pub params_removed: u64,
    pub bytes_removed: u64,
    /// Elements and bytes added by `--reuse-weights copy` (0 when sharing).
    pub params_copied: u64,
    pub bytes_copied: u64,
}

/// Rewrites `analysis.graph` under `actions`: edits, dead-code elimination, check.
pub fn rewrite_graph(
    analysis: &Analysis,
    actions: &[Action],
    opts: &RewriteOptions,
) -> Result<(GraphProto, RewriteReport)> {
    let edits = plan_edits(analysis, actions, opts.reuse_weights)?;
    for e in &edits {
        log::debug!("edit: {e:?}");
    }
    let mut graph = apply_edits(&analysis.graph, &edits)?;
    dce::dce(&mut graph);
    check(&graph)
        .context("the rewritten graph is invalid (a bug in skrr-onnx: please report it)")?;

    let before = &analysis.graph;
    let kept: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    let gone = before
        .initializer
        .iter()
        .filter(|t| !kept.contains(t.name()));
    let copied: HashSet<&str> = edits
        .iter()
        .filter_map(|e| match e {
            Edit::CopyInitializer { to, .. } => Some(to.as_str()),
            _ => None,
        })
        .collect();
    let copies = graph
        .initializer
        .iter()
        .filter(|t| copied.contains(t.name()));
    let report = RewriteReport {
        edits: edits.len(),
        skipped: (0..actions.len())
            .filter(|&p| actions[p] == Action::Skip)
            .collect(),
        reused: actions
            .iter()
            .enumerate()
            .filter_map(|(at, a)| match *a {
                Action::Reuse(source) => Some(Reuse { at, source }),
                _ => None,
            })
            .collect(),
        nodes_before: before.node.len(),
        nodes_after: graph.node.len(),
        initializers_before: before.initializer.len(),
        initializers_after: graph.initializer.len(),
        params_before: before.initializer.iter().map(elements).sum(),
        params_after: graph.initializer.iter().map(elements).sum(),
        params_removed: gone.clone().map(elements).sum(),
        bytes_removed: gone.map(bytes).sum(),
        params_copied: copies.clone().map(elements).sum(),
        bytes_copied: copies.map(bytes).sum(),
    };
    Ok((graph, report))
}

/// The library entry point of `apply` and of the end-to-end command: the rewritten model,
/// which keeps everything of `model` but its graph, plus metadata recording the plan.
/// `model` is the model `analysis` was made from (only its header fields are read here; the
/// graph comes from the analysis).
pub fn apply_plan(
    model: &ModelProto,
    analysis: &Analysis,
    actions: &[Action],
    opts: &RewriteOptions,
) -> Result<(ModelProto, RewriteReport)> {
    let (graph, report) = rewrite_graph(analysis, actions, opts)?;
    let plan = opts
        .plan_record
        .clone()
        .unwrap_or_else(|| PlanFile::describe(analysis, actions));
    let mut metadata: Vec<StringStringEntryProto> = model
        .metadata_props
        .iter()
        .filter(|e| e.key() != META_PLAN && e.key() != META_VERSION)
        .cloned()
        .collect();
    metadata.push(StringStringEntryProto::new(
        META_PLAN,
        serde_json::to_string(&plan)?,
    ));
    metadata.push(StringStringEntryProto::new(
        META_VERSION,
        env!("CARGO_PKG_VERSION"),
    ));
    let out = ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        graph: Some(graph),
        metadata_props: metadata,
        training_info: model.training_info.clone(),
        functions: model.functions.clone(),
        configuration: model.configuration.clone(),
    };
    Ok((out, report))
}

/// Structural validity of a rewritten graph: nodes in topological order with every input
/// produced before use (hence acyclic), every value produced once, node names unique, every
/// graph output produced, no value_info for a value that does not exist.
pub fn check(graph: &GraphProto) -> Result<()> {
    let mut produced: HashSet<&str> = graph.input.iter().map(|v| v.name()).collect();
    for t in &graph.initializer {
        // An initializer may also be listed as a graph input (IR < 4 style): one value.
        if !produced.insert(t.name()) && !graph.input.iter().any(|v| v.name() == t.name()) {
            bail!("initializer {:?} is defined twice", t.name());
        }
    }
    let mut node_names: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for v in node.input.iter().filter(|v| !v.is_empty()) {
            if !produced.contains(v.as_str()) {
                bail!(
                    "node {i} ({:?}, {}) reads {v:?}, which no earlier node, input or initializer produces",
                    node.name(),
                    node.op_type()
                );
            }
        }
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            if !produced.insert(o.as_str()) {
                bail!(
                    "value {o:?} is produced twice (again by node {:?})",
                    node.name()
                );
            }
        }
        if let Some(name) = node.name.as_deref().filter(|n| !n.is_empty()) {
            if let Some(prev) = node_names.insert(name, i) {
                bail!("node name {name:?} is used by nodes {prev} and {i}");
            }
        }
    }
    for o in &graph.output {
        if !produced.contains(o.name()) {
            bail!("graph output {:?} is not produced by anything", o.name());
        }
    }
    for v in &graph.value_info {
        if !produced.contains(v.name()) {
            bail!("value_info names {:?}, which does not exist", v.name());
        }
    }
    Ok(())
}

/// Elements of a tensor (its parameter count).
pub fn elements(t: &TensorProto) -> u64 {
    t.dims.iter().map(|&d| d.max(0) as u64).product()
}

/// Bytes a tensor's data takes in a file.
pub fn bytes(t: &TensorProto) -> u64 {
    if let Some(raw) = &t.raw_data {
        return raw.len() as u64;
    }
    if t.is_external() {
        if let Some(len) = t.external_data.iter().find(|e| e.key() == "length") {
            if let Ok(n) = len.value().parse() {
                return n;
            }
        }
    }
    let size = match t.data_type() {
        data_type::DOUBLE | data_type::INT64 | data_type::UINT64 | data_type::COMPLEX64 => 8,
        data_type::COMPLEX128 => 16,
        data_type::FLOAT | data_type::INT32 | data_type::UINT32 => 4,
        data_type::FLOAT16 | data_type::BFLOAT16 | data_type::INT16 | data_type::UINT16 => 2,
        _ => 1,
    };
    elements(t) * size
}

#[cfg(test)]
mod tests;
