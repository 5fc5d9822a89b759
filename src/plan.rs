//! The plan: which sub-blocks are kept, skipped or re-use a neighbour (method doc, "The plan
//! file"). It is the unit that moves between `plan`, `score`, `apply` and the main command.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::action::{self, Action, Actions};
use crate::blocks::{Analysis, Kind, SubBlock};
use crate::compensate::merged::{Fold, FoldSite, FoldTensor};
use crate::compensate::{map_params, Compensation, LinearMap, OutputMap};
use crate::error::SkrrError;
use crate::model_io::write_file;
use crate::onnx::GraphProto;

pub const FORMAT: &str = "skrr-plan/1";

/// A plan entry's `action`, spelled by `as_str`. Reading a plan refuses any other word, naming
/// the three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum ActionName {
    Keep,
    Skip,
    Reuse,
}

impl ActionName {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionName::Keep => "keep",
            ActionName::Skip => "skip",
            ActionName::Reuse => "reuse",
        }
    }
}

impl From<ActionName> for &'static str {
    fn from(a: ActionName) -> &'static str {
        a.as_str()
    }
}

impl TryFrom<String> for ActionName {
    type Error = String;

    fn try_from(word: String) -> Result<ActionName, String> {
        [ActionName::Keep, ActionName::Skip, ActionName::Reuse]
            .into_iter()
            .find(|a| a.as_str() == word)
            .ok_or_else(|| format!("action {word:?} is not keep, skip or reuse"))
    }
}

impl From<Action> for ActionName {
    /// The action as a plan entry spells it (a re-use's source is the entry's `source`).
    fn from(a: Action) -> ActionName {
        match a {
            Action::Keep => ActionName::Keep,
            Action::Skip => ActionName::Skip,
            Action::Reuse(_) => ActionName::Reuse,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structure: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Discrepancy {
    pub skip: f64,
    #[serde(rename = "final")]
    pub final_: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubBlockEntry {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<u64>,
    pub action: ActionName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<usize>,
}

/// How a plan compensates what it removes (issue #13): a linear map on a graph output
/// (`placement: "output"`, `y = x W + b`), or maps folded into the kept sub-block before each
/// skipped run (`placement: "merged"`, `folds`). The values are in a sidecar file beside the plan
/// (little-endian f64 in order: W row-major then b; or every fold's tensors, each row-major;
/// exactly as the written model holds them once rounded to its element types), checked by
/// SHA-256 when the plan is applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompensationEntry {
    /// `linear`.
    pub kind: String,
    /// `output`: the map computes graph output `output` from the value the plan leaves there;
    /// `merged`: the folds replace weights of kept sub-blocks.
    pub placement: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<Vec<FoldEntry>>,
    /// Parameters the map adds (`dim² + dim`; 0 for folds).
    pub params: u64,
    /// SHA-256 of the map's values (the sidecar's bytes).
    pub sha256: String,
    /// The sidecar's file name, in the plan's folder. Absent in a plan recorded without one
    /// (the main job without `--plan-out`): the model written holds the map itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The ridge term the fit chose, relative to the mean channel energy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ridge: Option<f64>,
    /// D of the plan with the map, on the calibration prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discrepancy: Option<f64>,
}

/// One fold of a merged compensation: sub-block `at` compensates the skipped run `run` with the
/// initializers it reads replaced, in the sidecar's order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FoldEntry {
    pub at: usize,
    pub run: [usize; 2],
    pub tensors: Vec<FoldTensorEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FoldTensorEntry {
    pub replaces: String,
    pub dims: Vec<i64>,
}

/// The JSON plan file. Only `sub_blocks[].index/.action/.source` are required.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanFile {
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_sparsity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_sparsity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_removed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beam: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_order: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discrepancy: Option<Discrepancy>,
    /// Parameters the compensation adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_added: Option<u64>,
    /// (Parameters removed − parameters added) / all parameters: what the target is met with
    /// when the plan compensates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_sparsity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationEntry>,
    pub sub_blocks: Vec<SubBlockEntry>,
}

fn default_format() -> String {
    FORMAT.to_string()
}

impl PlanFile {
    pub fn read(path: &Path) -> Result<PlanFile> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SkrrError::BadInput(format!("cannot read plan {}: {e}", path.display()))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            SkrrError::BadInput(format!("{}: not a valid plan file: {e}", path.display())).into()
        })
    }

    /// The plan a pruned model records in its metadata (`skrr.plan`), when it has a readable one.
    pub fn recorded_in(model: &crate::onnx::ModelProto) -> Option<PlanFile> {
        let entry = model
            .metadata_props
            .iter()
            .find(|e| e.key() == crate::onnx::META_PLAN)?;
        serde_json::from_str(entry.value()).ok()
    }

    /// Builds the file form of `actions` for `analysis`, with every informative field filled.
    pub fn describe(analysis: &Analysis, actions: &[Action]) -> PlanFile {
        let sub_blocks = analysis
            .sub_blocks
            .iter()
            .zip(actions)
            .map(|(sb, a)| SubBlockEntry {
                index: sb.index,
                layer: Some(sb.layer),
                kind: Some(sb.kind),
                params: Some(sb.params),
                action: ActionName::from(*a),
                source: match a {
                    Action::Reuse(q) => Some(*q),
                    _ => None,
                },
            })
            .collect();
        let removed = action::removed_params(analysis, actions);
        PlanFile {
            format: FORMAT.to_string(),
            model: Some(ModelInfo {
                sha256: None,
                layers: Some(analysis.layers),
                structure: Some(analysis.structure_signature.clone()),
            }),
            target_sparsity: None,
            achieved_sparsity: Some(removed as f64 / analysis.total_params.max(1) as f64),
            params_total: Some(analysis.total_params),
            params_removed: Some(removed),
            method: None,
            beam: None,
            skip_order: None,
            discrepancy: None,
            params_added: None,
            net_sparsity: None,
            compensation: None,
            sub_blocks,
        }
    }

    /// Records `comp` (D `d` with it on the calibration prompts; `ridge` for an output map) and
    /// the net sparsity it leaves. `file` names the sidecar `write` will put beside the plan.
    pub fn compensate(
        &mut self,
        comp: &Compensation,
        analysis: &Analysis,
        ridge: Option<f64>,
        d: f64,
        file: Option<String>,
    ) {
        let added = comp.params_added(analysis);
        let (output, dim, folds) = match comp {
            Compensation::Output(m) => (Some(m.output.clone()), Some(m.map.dim), None),
            Compensation::Merged(folds) => {
                let entries = folds
                    .iter()
                    .map(|f| FoldEntry {
                        at: f.at,
                        run: [f.run.0, f.run.1],
                        tensors: f
                            .tensors
                            .iter()
                            .map(|t| FoldTensorEntry {
                                replaces: t.replaces.clone(),
                                dims: t.dims.clone(),
                            })
                            .collect(),
                    })
                    .collect();
                (None, None, Some(entries))
            }
        };
        self.params_added = Some(added);
        if let (Some(total), Some(removed)) = (self.params_total, self.params_removed) {
            let net = (removed as f64 - added as f64) / total.max(1) as f64;
            self.net_sparsity = Some(net);
            if let Some(target) = self.target_sparsity.filter(|&t| net < t) {
                log::warn!(
                    "the compensation adds {added} parameters (copies of weights the exporter \
                     shares between layers): net sparsity {net:.4} is below the target {target}"
                );
            }
        }
        self.compensation = Some(CompensationEntry {
            kind: "linear".into(),
            placement: match comp {
                Compensation::Output(_) => "output",
                Compensation::Merged(_) => "merged",
            }
            .into(),
            output,
            dim,
            folds,
            params: added,
            sha256: hex::encode(Sha256::digest(comp.to_le_bytes())),
            file,
            ridge,
            discrepancy: Some(d),
        });
    }

    /// The sidecar's file name for a plan written at `path`: `plan.json` → `plan.map.bin`.
    pub fn sidecar_name(path: &Path) -> String {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plan".into());
        format!("{stem}.map.bin")
    }

    /// Writes the plan to `path`, and first the compensation's values to the sidecar its entry
    /// names (each file atomically).
    pub fn write(&self, path: &Path, comp: Option<&Compensation>) -> Result<()> {
        match (
            self.compensation.as_ref().and_then(|c| c.file.as_ref()),
            comp,
        ) {
            (Some(file), Some(c)) => write_file(&path.with_file_name(file), &c.to_le_bytes())?,
            (None, None) => {}
            _ => bail!("a plan's compensation entry and its values must be written together"),
        }
        write_file(
            path,
            format!("{}\n", serde_json::to_string_pretty(self)?).as_bytes(),
        )
    }

    /// The compensation of a plan read from `path`, validated against the model (`analysis`)
    /// and the plan's `actions`: its sidecar read from the plan's folder only, its size and
    /// SHA-256 checked.
    pub fn load_compensation(
        &self,
        path: &Path,
        analysis: &Analysis,
        actions: &[Action],
    ) -> Result<Option<Compensation>> {
        let Some(c) = &self.compensation else {
            return Ok(None);
        };
        let bad = |m: String| -> anyhow::Error {
            SkrrError::BadInput(format!("plan {}: {m}", path.display())).into()
        };
        let expected = self.expected_values(c, analysis, actions, &bad)?;
        let (sidecar, bytes) = read_sidecar(path, c, &bad)?;
        let what = |e: anyhow::Error| bad(format!("its map {}: {e}", sidecar.display()));
        let values = crate::compensate::f64_values(&bytes, expected).map_err(what)?;
        c.compensation(&analysis.graph, values, &what).map(Some)
    }

    /// How many values the sidecar of `c` must hold, checked before it is read: the fields of
    /// one placement, and none of the other's.
    fn expected_values(
        &self,
        c: &CompensationEntry,
        analysis: &Analysis,
        actions: &[Action],
        bad: &dyn Fn(String) -> anyhow::Error,
    ) -> Result<u64> {
        match (
            c.kind.as_str(),
            c.placement.as_str(),
            &c.output,
            c.dim,
            &c.folds,
        ) {
            ("linear", "output", Some(output), Some(dim), None) => {
                let (width, _) = crate::compensate::output_spec(&analysis.graph, output)
                    .map_err(|e| bad(format!("compensation: {e}")))?;
                if width != dim || c.params != map_params(dim) {
                    return Err(bad(format!(
                        "the compensation is a map on {dim} channels ({} parameters); output \
                         {output:?} has {width}",
                        c.params
                    )));
                }
                Ok(map_params(dim))
            }
            ("linear", "merged", None, None, Some(folds)) => {
                self.check_folds(folds, analysis, actions).map_err(bad)?;
                Ok(folds
                    .iter()
                    .flat_map(|f| &f.tensors)
                    .map(|t| t.dims.iter().map(|&d| d as u64).product::<u64>())
                    .sum())
            }
            ("linear", "output" | "merged", ..) => Err(bad(format!(
                "its {:?} compensation must give {} and nothing of the other placement",
                c.placement,
                if c.placement == "output" {
                    "`output` and `dim`"
                } else {
                    "`folds`"
                }
            ))),
            (kind, placement, ..) => Err(bad(format!(
                "compensation {kind:?} placed at {placement:?} is not one this version \
                 applies (linear, at output or merged)"
            ))),
        }
    }

    /// Each fold must sit where a fit could have put it: a kept, not re-used sub-block just
    /// before the skipped run it names, replacing only what its fold site holds, at their shapes.
    fn check_folds(
        &self,
        folds: &[FoldEntry],
        analysis: &Analysis,
        actions: &[Action],
    ) -> std::result::Result<(), String> {
        let runs = crate::compensate::merged::skipped_runs(actions);
        if folds.windows(2).any(|w| w[0].at >= w[1].at) {
            return Err(
                "its folds must be listed once each, in the order of their sub-blocks".into(),
            );
        }
        for f in folds {
            let at = f.at;
            if at >= actions.len() {
                return Err(format!(
                    "its fold names sub-block {at}; the model has {}",
                    actions.len()
                ));
            }
            if !runs.contains(&(f.run[0], f.run[1])) || Some(f.run[0]) != at.checked_add(1) {
                return Err(format!(
                    "its fold at sub-block {at} compensates {:?}, which is not a run of skips \
                     right after it in this plan",
                    f.run
                ));
            }
            if actions.contains(&Action::Reuse(at)) {
                return Err(format!("its fold changes sub-block {at}, which is re-used"));
            }
            let site = FoldSite::find(analysis, at)
                .map_err(|e| format!("its fold at sub-block {at} does not fit the model: {e}"))?;
            // Exactly what a fit replaces there, in the fit's order (the sidecar's).
            let site_tensors: Vec<&String> = [Some(&site.weight), site.bias.as_ref()]
                .into_iter()
                .chain(site.norm.iter().flat_map(|(s, b, _)| [Some(s), b.as_ref()]))
                .flatten()
                .collect();
            let named: Vec<&String> = f.tensors.iter().map(|t| &t.replaces).collect();
            if named != site_tensors {
                return Err(format!(
                    "its fold at sub-block {at} replaces {named:?}; that fold site's are \
                     {site_tensors:?}, in that order"
                ));
            }
            for t in &f.tensors {
                let init = analysis
                    .graph
                    .initializer
                    .iter()
                    .find(|i| i.name() == t.replaces);
                if init.is_none_or(|i| i.dims != t.dims) {
                    return Err(format!(
                        "its fold at sub-block {at} gives {:?} the shape {:?}, which is not the \
                         model's",
                        t.replaces, t.dims
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads the plan file at `path` and maps it onto `analysis`; every error names the file
    /// (a plan that does not fit the model is a user's mix-up of files).
    pub fn load_actions(path: &Path, analysis: &Analysis, model: &Path) -> Result<Actions> {
        let plan = Self::read(path)?;
        plan.check_model_file(model)?;
        plan.to_actions(analysis)
            .with_context(|| path.display().to_string())
    }

    /// The plan's `model.sha256`, when it has one, against the model file. A plan applies to
    /// another export of the same encoder (fp16 of an fp32 plan) when the block structure
    /// matches, so a different file is reported, not refused.
    pub fn check_model_file(&self, model: &Path) -> Result<()> {
        let Some(said) = self.model.as_ref().and_then(|m| m.sha256.as_deref()) else {
            return Ok(());
        };
        let actual = file_sha256(model)?;
        if !said.eq_ignore_ascii_case(&actual) {
            log::warn!(
                "the plan was made for another file (sha256 {said}, {} has {actual}); it is \
                 applied because the block structure matches",
                model.display()
            );
        }
        Ok(())
    }

    /// Validates the plan against `analysis` and returns one action per sub-block position.
    /// Informative fields, when present, must agree with the model.
    pub fn to_actions(&self, analysis: &Analysis) -> Result<Actions> {
        self.check_model(analysis)?;
        let bad = |msg: String| -> anyhow::Error { SkrrError::BadInput(msg).into() };
        let n = analysis.sub_blocks.len();
        let mut actions = vec![None; n];
        for e in &self.sub_blocks {
            let sb = analysis.sub_blocks.get(e.index).ok_or_else(|| {
                bad(format!(
                    "plan names sub-block {}, the model has {n}",
                    e.index
                ))
            })?;
            if actions[e.index].replace(e.action_on(sb)?).is_some() {
                return Err(bad(format!("plan lists sub-block {} twice", e.index)));
            }
        }
        let actions: Actions = actions
            .into_iter()
            .enumerate()
            .map(|(i, a)| a.ok_or_else(|| bad(format!("plan does not list sub-block {i}"))))
            .collect::<Result<_>>()?;
        action::validate(analysis, &actions).map_err(|e| bad(e.to_string()))?;
        Ok(actions)
    }

    /// Refuses a plan of another format, or made for a model with another number of layers or
    /// another block structure; a different parameter total is only reported.
    fn check_model(&self, analysis: &Analysis) -> Result<()> {
        let bad = |msg: String| -> anyhow::Error { SkrrError::BadInput(msg).into() };
        if self.format != FORMAT {
            return Err(bad(format!(
                "plan format is {:?}, expected {FORMAT:?}",
                self.format
            )));
        }
        if let Some(info) = &self.model {
            if let Some(layers) = info.layers {
                if layers != analysis.layers {
                    return Err(bad(format!(
                        "plan is for a model with {layers} layers, this model has {}",
                        analysis.layers
                    )));
                }
            }
            if let Some(s) = &info.structure {
                if *s != analysis.structure_signature {
                    return Err(bad(format!(
                        "plan was made for a model with another block structure ({s}, this model: {})",
                        analysis.structure_signature
                    )));
                }
            }
        }
        if let Some(said) = self.params_total.filter(|&t| t != analysis.total_params) {
            log::warn!(
                "the plan was made for a model of {said} parameters; this one has {}",
                analysis.total_params
            );
        }
        Ok(())
    }
}

impl SubBlockEntry {
    /// The action this entry gives sub-block `sb`, refused when the entry describes another
    /// kind or layer than the model's.
    fn action_on(&self, sb: &SubBlock) -> Result<Action> {
        let bad = |msg: String| -> anyhow::Error { SkrrError::BadInput(msg).into() };
        let e = self;
        if e.kind.is_some_and(|k| k != sb.kind) || e.layer.is_some_and(|l| l != sb.layer) {
            let kind = e.kind.map_or("a sub-block".into(), |k| k.to_string());
            let layer = e.layer.map_or(String::new(), |l| format!(" of layer {l}"));
            return Err(bad(format!(
                "plan says sub-block {} is {kind}{layer}; the model's is {} of layer {}",
                e.index, sb.kind, sb.layer
            )));
        }
        // Counts can differ between exports of one architecture (an exporter may store a
        // tensor shared by two sub-blocks once or twice), so they are reported, not refused.
        if let Some(said) = e.params.filter(|&p| p != sb.params) {
            log::warn!(
                "the plan says sub-block {} has {said} parameters; the model's has {}",
                e.index,
                sb.params
            );
        }
        match (e.action, e.source) {
            (ActionName::Keep, None) => Ok(Action::Keep),
            (ActionName::Skip, None) => Ok(Action::Skip),
            (ActionName::Reuse, Some(q)) => Ok(Action::Reuse(q)),
            (ActionName::Reuse, None) => {
                Err(bad(format!("sub-block {}: reuse needs a source", e.index)))
            }
            (a, Some(q)) => Err(bad(format!(
                "sub-block {}: action {:?} with source {q} is not keep, skip, or reuse with a \
                 source",
                e.index,
                a.as_str()
            ))),
        }
    }
}

/// The sidecar of `c`, beside the plan at `path` (a bare file name, never elsewhere), with its
/// bytes, which must have the SHA-256 the plan records.
fn read_sidecar(
    path: &Path,
    c: &CompensationEntry,
    bad: &dyn Fn(String) -> anyhow::Error,
) -> Result<(PathBuf, Vec<u8>)> {
    let Some(file) = &c.file else {
        return Err(bad(
            "its compensation names no file holding the map (a plan recorded inside a \
             pruned model); apply the plan file written with --plan-out"
                .into(),
        ));
    };
    if Path::new(file).file_name().and_then(|n| n.to_str()) != Some(file.as_str()) {
        return Err(bad(format!(
            "the compensation's file {file:?} must be a file name in the plan's folder"
        )));
    }
    let sidecar = path.with_file_name(file);
    let bytes = std::fs::read(&sidecar)
        .map_err(|e| bad(format!("cannot read its map {}: {e}", sidecar.display())))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    if !sha.eq_ignore_ascii_case(&c.sha256) {
        return Err(bad(format!(
            "its map {} has SHA-256 {sha}, the plan says {} (the file was changed or belongs \
             to another plan)",
            sidecar.display(),
            c.sha256
        )));
    }
    Ok((sidecar, bytes))
}

impl CompensationEntry {
    /// The compensation these fields describe, made of the sidecar's `values` (checked in
    /// number by `expected_values`), each tensor rounded to the type it is stored in.
    fn compensation(
        &self,
        graph: &GraphProto,
        values: Vec<f64>,
        what: &dyn Fn(anyhow::Error) -> anyhow::Error,
    ) -> Result<Compensation> {
        if let (Some(output), Some(dim)) = (&self.output, self.dim) {
            let (_, elem) = crate::compensate::output_spec(graph, output)?;
            let map = LinearMap::from_values(dim, values)
                .and_then(|m| m.stored_as(elem))
                .map_err(what)?;
            return Ok(Compensation::Output(OutputMap {
                output: output.clone(),
                map,
            }));
        }
        let mut values = values.into_iter();
        let mut out = Vec::new();
        for f in self.folds.as_deref().unwrap_or_default() {
            let mut tensors = Vec::new();
            for t in &f.tensors {
                let n = t.dims.iter().map(|&d| d as usize).product::<usize>();
                let elem_type = graph
                    .initializer
                    .iter()
                    .find(|i| i.name() == t.replaces)
                    .map_or(0, |i| i.data_type());
                let v: Vec<f64> = values.by_ref().take(n).collect();
                tensors.push(FoldTensor {
                    replaces: t.replaces.clone(),
                    elem_type,
                    dims: t.dims.clone(),
                    values: crate::compensate::stored_as(&v, elem_type).map_err(what)?,
                });
            }
            out.push(Fold {
                at: f.at,
                run: (f.run[0], f.run[1]),
                tensors,
            });
        }
        Ok(Compensation::Merged(out))
    }
}

/// SHA-256 of the model file, read in pieces (models can be many GB).
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan file spells actions as it always did, and refuses any other word by name.
    #[test]
    fn actions_are_spelled_as_words_and_unknown_ones_refused() {
        let entry =
            |action: &str| format!(r#"{{"sub_blocks": [{{"index": 0, "action": {action}}}]}}"#);
        for a in [Action::Keep, Action::Skip, Action::Reuse(1)] {
            let word = serde_json::to_string(&ActionName::from(a)).unwrap();
            assert_eq!(word, format!("{:?}", ActionName::from(a).as_str()));
            let plan: PlanFile = serde_json::from_str(&entry(&word)).unwrap();
            assert_eq!(plan.sub_blocks[0].action, ActionName::from(a));
        }
        for (bad, needle) in [
            (r#""Skip""#, r#"action "Skip" is not keep, skip or reuse"#),
            (r#""drop""#, r#"action "drop" is not keep, skip or reuse"#),
            ("1", "expected a string"),
        ] {
            let err = serde_json::from_str::<PlanFile>(&entry(bad)).unwrap_err();
            assert!(err.to_string().contains(needle), "{bad}: {err}");
        }
    }
}
