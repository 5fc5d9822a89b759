//! `skrr-onnx score MODEL --plan plan.json` (`pipeline::score`).

use std::path::PathBuf;

use anyhow::Result;

use crate::commands::args::CalibArgs;
use crate::commands::Context;
use crate::compensate::Compensate;
use crate::pipeline::score::{score, ScoreJob};
use crate::report;

#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// The dense ONNX model.
    pub model: PathBuf,
    /// Plan file (skrr-plan/1) to score; a hand-written one needs only sub_blocks[].index,
    /// .action and .source.
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Also fit a compensation for the plan (`linear`: a map on its output; `merged`: maps
    /// folded into the kept sub-blocks before the skipped runs) and report D with it.
    #[arg(long, value_enum, default_value_t = Compensate::None)]
    pub compensate: Compensate,
    /// Held-out prompts (same format as --calib / --prompts) to judge the compensation on. The
    /// built-in set's held-out half is used when the calibration prompts are the built-in ones.
    #[arg(long, value_name = "FILE", requires = "compensate")]
    pub heldout: Option<PathBuf>,
}

pub fn run(args: &ScoreArgs, ctx: &Context) -> Result<()> {
    let report = score(&ScoreJob {
        model: args.model.clone(),
        plan: args.plan.clone(),
        calib: args.calib.config()?,
        compensate: args.compensate,
        heldout: args.heldout.clone(),
        runtime: ctx.runtime,
    })?;
    report::emit(&report, ctx.json)
}
