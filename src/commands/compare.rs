//! `skrr-onnx compare DENSE PRUNED` (`pipeline::compare`). Polygraphy conventions: every check
//! printed with its limit, a final PASSED/FAILED line, exit status 1 on FAILED.

use std::path::PathBuf;

use anyhow::Result;

use crate::commands::args::{CalibArgs, ToleranceArgs};
use crate::commands::Context;
use crate::pipeline::compare::{compare, CompareJob};
use crate::report;

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The original (dense) model.
    pub dense: PathBuf,
    /// The pruned model to judge.
    pub pruned: PathBuf,
    #[command(flatten)]
    pub calib: CalibArgs,
    #[command(flatten)]
    pub tolerances: ToleranceArgs,
}

pub fn run(args: &CompareArgs, ctx: &Context) -> Result<()> {
    let f = compare(&CompareJob {
        dense: args.dense.clone(),
        pruned: args.pruned.clone(),
        calib: args.calib.config()?,
        tolerances: args.tolerances.tolerances()?,
        runtime: ctx.runtime,
    })?;
    report::emit(&f, ctx.json)?;
    f.verdict()
}
