//! The main job on the command line, `skrr-onnx IN OUT --sparsity S`: its arguments, converted
//! into a `pipeline::Job`, and the report.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::commands::args::{CalibArgs, ExternalDataArgs, SearchArgs, ToleranceArgs};
use crate::commands::Context;
use crate::error::SkrrError;
use crate::pipeline::{self, Job};
use crate::report;
use crate::rewrite::ReuseWeights;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The dense text encoder (.onnx; external data beside it is followed), or a diffusers
    /// pipeline folder (model_index.json and a folder per component, as Optimum exports it).
    #[arg(required = true)]
    pub input: Option<PathBuf>,
    /// Where to write the pruned model (written whole or not at all; never over the input), or
    /// the new pipeline folder (which must not exist).
    #[arg(required = true)]
    pub output: Option<PathBuf>,
    /// With a pipeline folder: a text encoder to prune (repeatable; default: the largest).
    #[arg(long = "encoder", value_name = "NAME", value_delimiter = ',')]
    pub encoders: Vec<String>,
    /// Target sparsity: parameters removed / all parameters of the model, in (0, 1).
    #[arg(long, required = true, allow_negative_numbers = true)]
    pub sparsity: Option<f64>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Also write the plan file here.
    #[arg(long, value_name = "FILE")]
    pub plan_out: Option<PathBuf>,
    /// Share re-used weights (default) or copy them for engines that cannot share.
    #[arg(long, value_enum, default_value_t = ReuseWeights::Share)]
    pub reuse_weights: ReuseWeights,
    /// Write a JSON report of the whole run (plan, timings, sizes, fidelity) here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Skip the held-out fidelity comparison.
    #[arg(long)]
    pub no_compare: bool,
    /// Prompts for the fidelity check, in the format of the calibration input (text lines, or
    /// token ids with --calib). Default: the built-in held-out prompts, or every 4th of your
    /// --prompts / --calib lines (the search then calibrates on the others).
    #[arg(long, value_name = "FILE", conflicts_with = "no_compare")]
    pub heldout: Option<PathBuf>,
    #[command(flatten)]
    pub data: ExternalDataArgs,
    #[command(flatten)]
    pub calib: CalibArgs,
    #[command(flatten)]
    pub tolerances: ToleranceArgs,
}

impl RunArgs {
    /// The job; refuses what clap lets through (the positional arguments are optional in its
    /// grammar so that subcommands can go without them).
    pub fn job(&self, ctx: &Context) -> Result<Job> {
        let (Some(input), Some(output), Some(sparsity)) =
            (self.input.clone(), self.output.clone(), self.sparsity)
        else {
            return Err(SkrrError::Usage(
                "usage: skrr-onnx IN OUT --sparsity S (or a subcommand; see --help)".into(),
            )
            .into());
        };
        Ok(Job {
            input,
            output,
            sparsity,
            search: self.search.config()?,
            compensate: self.search.compensate,
            plan_out: self.plan_out.clone(),
            reuse_weights: self.reuse_weights,
            report: self.report.clone(),
            compare: !self.no_compare,
            heldout: self.heldout.clone(),
            write: self.data.write_options(),
            calib: self.calib.config()?,
            tolerances: self.tolerances.tolerances()?,
            runtime: ctx.runtime,
        })
    }
}

pub fn run(args: &RunArgs, ctx: &Context) -> Result<()> {
    if args.input.as_deref().is_some_and(Path::is_dir) {
        let report = crate::diffusers::prune(&args.job(ctx)?, &args.encoders)?;
        report::emit(&report, ctx.json)?;
        return report.checked();
    }
    if !args.encoders.is_empty() {
        return Err(SkrrError::Usage(
            "--encoder chooses among the text encoders of a diffusers pipeline folder, and the \
             input is a model file: leave it out"
                .into(),
        )
        .into());
    }
    let report = pipeline::run(&args.job(ctx)?)?;
    report::emit(&report, ctx.json)?;
    report.fidelity.as_ref().map_or(Ok(()), |f| f.verdict())
}
