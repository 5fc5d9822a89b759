//! `skrr-onnx score MODEL --plan plan.json`: the discrepancy D (D_c + D_null) of a plan on the
//! calibration set, as the search would measure it; with `--compensate linear`, also D after a
//! linear map fitted on those prompts (`compensate`), on them and on held-out prompts.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use crate::blocks::Analysis;
use crate::calibrate::{CalibArgs, Engine, Outcome, PromptHalf};
use crate::cli::Context;
use crate::compensate::{self, Compensate, Compensation, Effect, Fitted};
use crate::model_io::Model;
use crate::plan::{Action, PlanFile};
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
    runtime::init(&ctx.runtime)?;
    let model = model_io::read_model(&args.model)?;
    let analysis = blocks::analyze_at(&model.proto, &args.model)?;
    crate::loadable::check_input(&model, &args.model)?;
    let actions = PlanFile::load_actions(&args.plan, &analysis, &model.path)?;
    let calib = args.calib.calib_set(&model, PromptHalf::Calibration)?;
    let prompts = calib.prompts.len();
    let start = Instant::now();
    let mut engine = Engine::new(&model, &analysis, calib, args.calib.engine_options()?)?;
    let score = match engine.score(&actions, None)? {
        Outcome::Scored(score) => score,
        Outcome::Abandoned { .. } => bail!("scoring without a bound was abandoned"),
    };
    let compensation = compensated(args, &model, &analysis, &actions, &mut engine)?;
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
                "compensation": compensation,
                "seconds": seconds,
                "stats": engine.stats(),
            }))?
        );
    } else {
        println!("D      = {:.6e}", score.d());
        println!("D_c    = {:.6e}  ({prompts} prompts)", score.d_c);
        println!("D_null = {:.6e}", score.d_null);
        if let Some(c) = &compensation {
            println!("compensation: {}", c.fit);
            if let Some(h) = &c.held_out {
                println!(
                    "held-out ({} prompts, {}): {}",
                    h.prompts, h.source, h.effect
                );
            }
        }
    }
    Ok(())
}

/// The compensation's fit and, where held-out prompts exist, its D on them.
#[derive(Debug, serde::Serialize)]
struct Compensated {
    fit: Fitted,
    held_out: Option<HeldOut>,
}

#[derive(Debug, serde::Serialize)]
struct HeldOut {
    source: String,
    prompts: usize,
    #[serde(flatten)]
    effect: Effect,
}

fn compensated(
    args: &ScoreArgs,
    model: &Model,
    analysis: &Analysis,
    actions: &[Action],
    engine: &mut Engine,
) -> Result<Option<Compensated>> {
    let Some((comp, fit)) =
        compensate::compensate(args.compensate, engine, model, analysis, actions)?
    else {
        return Ok(None);
    };
    let user = args.calib.calib.is_some() || args.calib.prompts.is_some();
    // Prompts the map was not fitted on: a --heldout file, or the built-in held-out half. The
    // user's own calibration file alone has none (the main job holds some of it out instead).
    if args.heldout.is_none() && user {
        log::warn!(
            "no held-out prompts (--heldout FILE): the compensation is judged in-sample only"
        );
        return Ok(Some(Compensated {
            fit,
            held_out: None,
        }));
    }
    let (_, held, source) = args
        .calib
        .calib_and_held_out(model, args.heldout.as_deref())?;
    let prompts = held.prompts.len();
    let mut held_engine = Engine::new(model, analysis, held, args.calib.engine_options()?)?;
    let effect = match &comp {
        Compensation::Output(m) => compensate::effect(&mut held_engine, actions, &m.map)?,
        Compensation::Merged(folds) => {
            compensate::merged::effect(&mut held_engine, actions, folds)?
        }
    };
    Ok(Some(Compensated {
        fit,
        held_out: Some(HeldOut {
            source,
            prompts,
            effect,
        }),
    }))
}
