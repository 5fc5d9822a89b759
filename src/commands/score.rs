//! `skrr-onnx score MODEL --plan plan.json`: the discrepancy D (D_c + D_null) of a plan on the
//! calibration set, as the search would measure it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use crate::calibrate::{CalibArgs, Engine, Outcome, Part};
use crate::cli::Context;
use crate::plan::PlanFile;
use crate::{blocks, model_io, runtime};

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
}

pub fn run(args: &ScoreArgs, ctx: &Context) -> Result<()> {
    runtime::init(&ctx.runtime)?;
    let model = model_io::read_model(&args.model)?;
    let analysis = blocks::analyze_at(&model.proto, &args.model)?;
    crate::loadable::check_input(&model.proto, &args.model)?;
    let actions = PlanFile::load_actions(&args.plan, &analysis, &model.path)?;
    let calib = args.calib.calib_set(&model, Part::Calibration)?;
    let prompts = calib.prompts.len();
    let start = Instant::now();
    let mut engine = Engine::new(&model, &analysis, calib, args.calib.engine_options()?)?;
    let score = match engine.score(&actions, None)? {
        Outcome::Scored(score) => score,
        Outcome::Abandoned { .. } => bail!("scoring without a bound was abandoned"),
    };
    let seconds = start.elapsed().as_secs_f64();
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": args.model,
                "plan": args.plan,
                "prompts": prompts,
                "d": score.d(),
                "d_c": score.d_c,
                "d_null": score.d_null,
                "seconds": seconds,
                "stats": engine.stats(),
            }))?
        );
    } else {
        println!("D      = {:.6e}", score.d());
        println!("D_c    = {:.6e}  ({prompts} prompts)", score.d_c);
        println!("D_null = {:.6e}", score.d_null);
    }
    Ok(())
}
