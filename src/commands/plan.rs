//! `skrr-onnx plan MODEL -o plan.json --sparsity S` (`pipeline::plan`): search a plan and write
//! the plan file of the method doc; `--sweep 0.1,0.2,...` writes one plan per level from a
//! single search, plus a table and a plot of D against sparsity.

use std::path::PathBuf;

use anyhow::Result;

use crate::commands::args::{CalibArgs, SearchArgs};
use crate::commands::Context;
use crate::error::SkrrError;
use crate::pipeline::plan::{plan, PlanJob};
use crate::report;

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The dense model (.onnx).
    pub model: PathBuf,
    /// Where to write the plan (JSON). With --sweep, plans go to STEM-LEVEL.json beside it and
    /// the plot to STEM-sweep.png.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Target sparsity: parameters removed / all parameters of the model, in (0, 1).
    #[arg(long, required_unless_present = "sweep", conflicts_with = "sweep")]
    pub sparsity: Option<f64>,
    /// Several target sparsities, comma-separated: one search up to the highest, a plan per level.
    #[arg(long, value_delimiter = ',', value_name = "S,S,...")]
    pub sweep: Option<Vec<f64>>,
    #[command(flatten)]
    pub search: SearchArgs,
    #[command(flatten)]
    pub calib: CalibArgs,
}

pub fn run(args: &PlanArgs, ctx: &Context) -> Result<()> {
    let usage = |m: String| -> anyhow::Error { SkrrError::Usage(m).into() };
    let targets: Vec<f64> = match (&args.sweep, args.sparsity) {
        (Some(levels), _) => levels.clone(),
        (None, Some(s)) => vec![s],
        (None, None) => return Err(usage("give --sparsity S or --sweep S,S,...".into())),
    };
    let mut sorted = targets.clone();
    sorted.sort_by(f64::total_cmp);
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(usage(format!("--sweep lists a level twice: {targets:?}")));
    }
    let report = plan(&PlanJob {
        model: args.model.clone(),
        output: args.output.clone(),
        targets,
        sweep: args.sweep.is_some(),
        search: args.search.config()?,
        compensate: args.search.compensate,
        calib: args.calib.config()?,
        runtime: ctx.runtime,
    })?;
    report::emit(&report, ctx.json)
}
