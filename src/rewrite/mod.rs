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

use crate::action::Action;
use crate::blocks::Analysis;
use crate::compensate::Compensation;
use crate::model_io::{element_count, stored_len};
use crate::onnx::{
    GraphProto, ModelProto, StringStringEntryProto, TensorProto, META_PLAN, META_VERSION,
};
use crate::plan::PlanFile;

pub use edit::{apply_edits, plan_edits, Edit};

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
    /// A fitted compensation written with the plan (issue #13).
    pub compensation: Option<Compensation>,
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
    /// The value carrying the residual stream after each position in the output graph (a
    /// skipped position carries its input on), so callers can tap the pruned model's stream.
    pub stream_values: Vec<String>,
    /// Elements and bytes added by `--reuse-weights copy` (0 when sharing).
    pub params_copied: u64,
    pub bytes_copied: u64,
    /// Elements the compensation added (0 without): an output map's, and a fold's copies of
    /// initializers other nodes still read (exporters share all-ones norms between layers).
    pub params_added: u64,
    /// Elements of initializers a merged compensation's folds replaced by as many.
    pub params_replaced: u64,
}

/// Rewrites `analysis.graph` under `actions`: edits, dead-code elimination, check.
pub fn rewrite_graph(
    analysis: &Analysis,
    actions: &[Action],
    opts: &RewriteOptions,
) -> Result<(GraphProto, RewriteReport)> {
    let edits = plan_edits(
        analysis,
        actions,
        opts.reuse_weights,
        opts.compensation.as_ref(),
    )?;
    for e in &edits {
        log::debug!("edit: {e:?}");
    }
    let mut graph = apply_edits(&analysis.graph, &edits)?;
    dce::dce(&mut graph);
    check(&graph)
        .and_then(|()| check_interface(&analysis.graph, &graph))
        .context("the rewritten graph is invalid (a bug in skrr-onnx: please report it)")?;

    let before = &analysis.graph;
    let kept: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    // A fold's tensor replaces an initializer (not counted as removed) or, where other nodes
    // still read the original, adds a copy.
    let folds: Vec<(&str, &TensorProto)> = edits
        .iter()
        .filter_map(|e| match e {
            Edit::Fold { tensors, .. } => Some(tensors.iter().map(|(old, t)| (old.as_str(), t))),
            _ => None,
        })
        .flatten()
        .collect();
    let (fold_copies, fold_replaced): (Vec<_>, Vec<_>) =
        folds.iter().partition(|(old, _)| kept.contains(old));
    let replaced: HashSet<&str> = fold_replaced.iter().map(|(old, _)| *old).collect();
    let gone = before
        .initializer
        .iter()
        .filter(|t| !kept.contains(t.name()) && !replaced.contains(t.name()));
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
    let bypass: HashMap<&str, &str> = edits
        .iter()
        .filter_map(|e| match e {
            Edit::Bypass { from, to } => Some((from.as_str(), to.as_str())),
            _ => None,
        })
        .collect();
    let stream_values = analysis
        .sub_blocks
        .iter()
        .map(|sb| {
            let mut v = sb.output.as_str();
            while let Some(next) = bypass.get(v) {
                v = next;
            }
            v.to_string()
        })
        .collect();
    let report = RewriteReport {
        edits: edits.len(),
        stream_values,
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
        params_before: sum(before.initializer.iter(), element_count)?,
        params_after: sum(graph.initializer.iter(), element_count)?,
        params_removed: sum(gone.clone(), element_count)?,
        bytes_removed: sum(gone, stored_len)?,
        params_copied: sum(copies.clone(), element_count)?,
        bytes_copied: sum(copies, stored_len)?,
        params_added: match &opts.compensation {
            Some(Compensation::Output(c)) => c.map.params(),
            _ => sum(fold_copies.iter().map(|(_, t)| *t), element_count)?,
        },
        params_replaced: sum(fold_replaced.iter().map(|(_, t)| *t), element_count)?,
    };
    Ok((graph, report))
}

fn sum<'a>(
    tensors: impl Iterator<Item = &'a TensorProto>,
    measure: fn(&TensorProto) -> Result<u64>,
) -> Result<u64> {
    tensors.map(measure).sum()
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
    let (graph, mut report) = rewrite_graph(analysis, actions, opts)?;
    // The analysis graph may hold a few more nodes than the file (hoisted shape reads); users
    // compare with the file they gave.
    report.nodes_before = model.graph.as_ref().map_or(0, |g| g.node.len());
    let plan = opts
        .plan_record
        .clone()
        .unwrap_or_else(|| PlanFile::describe(analysis, actions));
    // A model pruned before keeps the record of that rewrite: its plan and version move to
    // `skrr.plan.N` / `skrr.version.N`, N one above the highest already there (1, the oldest,
    // first), so no key is written twice even if some were deleted.
    let earlier = model
        .metadata_props
        .iter()
        .filter_map(|e| e.key().strip_prefix(&format!("{META_PLAN}.")))
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let mut metadata: Vec<StringStringEntryProto> = model
        .metadata_props
        .iter()
        .map(|e| match e.key() {
            META_PLAN | META_VERSION => {
                StringStringEntryProto::new(format!("{}.{earlier}", e.key()), e.value())
            }
            _ => e.clone(),
        })
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

/// The rewritten graph must be fed exactly what the input is fed. `check` alone accepts a node
/// reading a removed initializer when a graph input still declares it (IR version < 4,
/// `keep_initializers_as_inputs`); that input would then be one callers must feed.
pub fn check_interface(before: &GraphProto, after: &GraphProto) -> Result<()> {
    fn fed(g: &GraphProto) -> Vec<&str> {
        crate::graph::fed_inputs(g).map(|i| i.name()).collect()
    }
    let (want, got) = (fed(before), fed(after));
    if got != want {
        bail!("the rewritten graph must be fed {got:?}, the model is fed {want:?}");
    }
    Ok(())
}

/// Structural validity of a rewritten graph: `graph::check` (values defined once, every read
/// defined, graph outputs defined, acyclic), plus what a written ONNX file further needs: nodes
/// in topological order, node names unique, no value_info for a value that no longer exists.
pub fn check(graph: &GraphProto) -> Result<()> {
    crate::graph::check(graph)?;
    let mut defined: HashSet<&str> = graph.input.iter().map(|v| v.name()).collect();
    defined.extend(graph.initializer.iter().map(|t| t.name()));
    let mut node_names: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        if let Some(v) = node
            .input
            .iter()
            .find(|v| !v.is_empty() && !defined.contains(v.as_str()))
        {
            bail!(
                "node {} reads {v:?} before it is computed (nodes out of order)",
                crate::graph::describe(node, i)
            );
        }
        defined.extend(node.output.iter().map(String::as_str));
        if let Some(name) = node.name.as_deref().filter(|n| !n.is_empty()) {
            if let Some(prev) = node_names.insert(name, i) {
                bail!("node name {name:?} is used by nodes {prev} and {i}");
            }
        }
    }
    if let Some(v) = graph
        .value_info
        .iter()
        .find(|v| !defined.contains(v.name()))
    {
        bail!("value_info names {:?}, which does not exist", v.name());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
