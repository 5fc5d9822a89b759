//! Applying a plan: the rewrite of a model under a plan's actions, checked and written. The
//! `apply` command runs it on a plan file; the main job on the plan it just searched.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::action::{self, Action};
use crate::blocks::{self, Analysis};
use crate::model_io::{self, Model, WriteOptions, WriteReport};
use crate::plan::PlanFile;
use crate::rewrite::{self, ReuseWeights, RewriteOptions, RewriteReport};

/// Everything `apply` did, as printed with `--json` (and embedded in the main command's report).
#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub sub_blocks: usize,
    pub rewrite: RewriteReport,
    /// The plan's parameter accounting on this model (`action::removed_params`); equals
    /// `rewrite.params_removed` (checked).
    pub plan_params_removed: u64,
    /// Parameters removed / all parameters of the input model.
    pub sparsity: f64,
    /// Bytes of the input model file and its external data files.
    pub input_bytes: u64,
    /// Bytes of the output model file and its external data file.
    pub output_bytes: u64,
    pub write: WriteReport,
    pub seconds: f64,
}

/// What `apply` needs: the files and how to write.
#[derive(Debug, Clone)]
pub struct ApplyJob {
    pub input: PathBuf,
    pub plan: PathBuf,
    pub output: PathBuf,
    pub reuse_weights: ReuseWeights,
    pub write: WriteOptions,
}

/// Applies the plan file `job.plan` to the model `job.input` and writes `job.output`: read →
/// analyze → validate the plan against the model's block structure → rewrite → write.
pub fn apply_file(job: &ApplyJob) -> Result<ApplyReport> {
    let start = Instant::now();
    // A missing output folder or an output over the input is known before reading and
    // rewriting anything (the writer checks the input's data files too, when it knows them).
    model_io::check_output_not_input(&job.output, &job.input, "pruned model")?;
    let model = model_io::read_model(&job.input)?;
    let plan = PlanFile::read(&job.plan)?;
    let data = job
        .output
        .with_file_name(job.write.data_file_name(&job.output)?);
    let sidecar = plan
        .compensation
        .as_ref()
        .and_then(|c| c.file.as_ref())
        .map(|f| job.plan.with_file_name(f));
    let reads: Vec<PathBuf> = model
        .files()
        .into_iter()
        .chain([job.plan.clone()])
        .chain(sidecar)
        .collect();
    model_io::check_outputs_apart(
        &[
            (&job.output, "pruned model"),
            (&data, "pruned model's external data"),
        ],
        &reads.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )?;
    let analysis = blocks::analyze_at(&model.proto, &model.path)?;
    crate::loadable::check_input(&model, &model.path)?;
    plan.check_model_file(&model.path)?;
    let actions = plan.to_actions(&analysis).with_context(|| {
        format!(
            "plan {} does not fit {}",
            job.plan.display(),
            job.input.display()
        )
    })?;
    let compensation = plan.load_compensation(&job.plan, &analysis, &actions)?;
    let opts = RewriteOptions {
        reuse_weights: job.reuse_weights,
        plan_record: Some(plan.clone()),
        compensation,
    };
    let mut report = apply_to_file(&model, &analysis, &actions, &opts, &job.output, &job.write)?;
    if let Some(said) = plan.params_removed {
        if said != report.rewrite.params_removed {
            // The output is already in place; it is correct for this model, but the user
            // should know the plan's numbers were computed for something else.
            log::warn!(
                "the plan says it removes {said} parameters; on {} it removes {}",
                job.input.display(),
                report.rewrite.params_removed
            );
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Rewrites `model` under `actions` and writes the result to `out`. The caller has validated
/// `actions` against `analysis` (e.g. with `PlanFile::to_actions`).
pub fn apply_to_file(
    model: &Model,
    analysis: &Analysis,
    actions: &[Action],
    opts: &RewriteOptions,
    out: &Path,
    write_opts: &WriteOptions,
) -> Result<ApplyReport> {
    let start = Instant::now();
    let (proto, report) = rewrite::apply_plan(&model.proto, analysis, actions, opts)?;
    let plan_params_removed = action::removed_params(analysis, actions);
    if plan_params_removed != report.params_removed {
        anyhow::bail!(
            "internal accounting mismatch: the plan removes {plan_params_removed} parameters, the \
             rewrite removed {} (a bug in skrr-onnx: please report it)",
            report.params_removed
        );
    }
    crate::loadable::check_rewritten(&proto)?;
    let write = model_io::write_model(&proto, &model.weights, out, write_opts)?;
    let input_bytes = model.file_bytes()?;
    Ok(ApplyReport {
        input: model.path.clone(),
        output: write.model_path.clone(),
        sub_blocks: analysis.sub_blocks.len(),
        sparsity: report.params_removed as f64 / report.params_before.max(1) as f64,
        plan_params_removed,
        rewrite: report,
        input_bytes,
        output_bytes: write.model_bytes + write.data_bytes,
        write,
        seconds: start.elapsed().as_secs_f64(),
    })
}
