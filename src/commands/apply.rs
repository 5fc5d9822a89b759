//! `skrr-onnx apply IN PLAN OUT`: apply a plan file to a model and write the smaller model.
//!
//! read → analyze → validate the plan against the model's block structure → rewrite → write
//! (atomic, weights streamed) → report. `apply_to_file` is the same pipeline for callers that
//! already hold the model, its analysis and the actions (the end-to-end command).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::blocks::{self, Analysis};
use crate::cli::Context;
use crate::commands::ExternalDataArgs;
use crate::model_io::{self, Model, WriteOptions, WriteReport};
use crate::plan::{self, Action, PlanFile};
use crate::rewrite::{self, ReuseWeights, RewriteOptions, RewriteReport};

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The model to prune (.onnx; external data is found beside it).
    pub input: PathBuf,
    /// The plan (JSON, from `skrr-onnx plan` or written by hand).
    pub plan: PathBuf,
    /// Where to write the pruned model (written atomically; never over the input).
    pub output: PathBuf,
    /// How re-used sub-blocks get their weights: shared with the source (stored once) or
    /// copied, for engines that cannot bind one weight to two layers.
    #[arg(long, value_enum, default_value_t = ReuseWeights::Share)]
    pub reuse_weights: ReuseWeights,
    #[command(flatten)]
    pub data: ExternalDataArgs,
}

/// Everything `apply` did, as printed with `--json` (and embedded in the main command's report).
#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub sub_blocks: usize,
    pub rewrite: RewriteReport,
    /// The plan's parameter accounting on this model (`plan::removed_params`); equals
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

pub fn run(args: &ApplyArgs, ctx: &Context) -> Result<()> {
    let start = Instant::now();
    // A missing output folder or an output over the input is known before reading and
    // rewriting anything (the writer checks the input's data files too, when it knows them).
    model_io::check_output_not_input(&args.output, &args.input, "pruned model")?;
    let model = model_io::read_model(&args.input)?;
    let plan = PlanFile::read(&args.plan)?;
    let data = args
        .output
        .with_file_name(args.data.write_options().data_file_name(&args.output)?);
    let sidecar = plan
        .compensation
        .as_ref()
        .and_then(|c| c.file.as_ref())
        .map(|f| args.plan.with_file_name(f));
    let reads: Vec<PathBuf> = model
        .files()
        .into_iter()
        .chain([args.plan.clone()])
        .chain(sidecar)
        .collect();
    model_io::check_outputs_apart(
        &[
            (&args.output, "pruned model"),
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
            args.plan.display(),
            args.input.display()
        )
    })?;
    let compensation = plan.load_compensation(&args.plan, &analysis, &actions)?;
    let opts = RewriteOptions {
        reuse_weights: args.reuse_weights,
        plan_record: Some(plan.clone()),
        compensation,
    };
    let mut report = apply_to_file(
        &model,
        &analysis,
        &actions,
        &opts,
        &args.output,
        &args.data.write_options(),
    )?;
    if let Some(said) = plan.params_removed {
        if said != report.rewrite.params_removed {
            // The output is already in place; it is correct for this model, but the user
            // should know the plan's numbers were computed for something else.
            log::warn!(
                "the plan says it removes {said} parameters; on {} it removes {}",
                args.input.display(),
                report.rewrite.params_removed
            );
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    print_report(&report, ctx.json)
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
    let plan_params_removed = plan::removed_params(analysis, actions);
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

/// Writes the report to stdout; a closed pipe is an error, not a panic (`println!` panics).
fn print_report(r: &ApplyReport, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(r)?)?;
        return Ok(());
    }
    let rw = &r.rewrite;
    writeln!(out, "wrote {}", r.output.display())?;
    let reused: Vec<String> = rw
        .reused
        .iter()
        .map(|u| format!("{}<-{}", u.at, u.source))
        .collect();
    writeln!(
        out,
        "  sub-blocks   {} : skipped {} {:?}, re-used {} [{}]",
        r.sub_blocks,
        rw.skipped.len(),
        rw.skipped,
        rw.reused.len(),
        reused.join(", ")
    )?;
    writeln!(
        out,
        "  parameters   {} -> {}  (removed {}, sparsity {:.4})",
        rw.params_before, rw.params_after, rw.params_removed, r.sparsity
    )?;
    if rw.params_added > 0 || rw.params_replaced > 0 {
        writeln!(
            out,
            "  compensation {} parameters added, {} replaced by folds: net sparsity {:.4}",
            rw.params_added,
            rw.params_replaced,
            (rw.params_removed as f64 - rw.params_added as f64) / rw.params_before.max(1) as f64
        )?;
    }
    if rw.params_copied > 0 {
        let net = rw.params_before.saturating_sub(rw.params_after);
        writeln!(
            out,
            "  copied       {} parameters, {} bytes (--reuse-weights copy): the file has {} \
             fewer parameters than the input ({:.1}%)",
            rw.params_copied,
            rw.bytes_copied,
            net,
            100.0 * net as f64 / rw.params_before.max(1) as f64
        )?;
    }
    writeln!(
        out,
        "  nodes        {} -> {}",
        rw.nodes_before, rw.nodes_after
    )?;
    writeln!(
        out,
        "  initializers {} -> {}",
        rw.initializers_before, rw.initializers_after
    )?;
    let data = match &r.write.data_path {
        Some(d) => format!(
            " (model {} + data {} in {})",
            r.write.model_bytes,
            r.write.data_bytes,
            d.display()
        ),
        None => String::new(),
    };
    writeln!(
        out,
        "  file bytes   {} -> {}{data}",
        r.input_bytes, r.output_bytes
    )?;
    writeln!(out, "  time         {:.3} s", r.seconds)?;
    Ok(())
}
