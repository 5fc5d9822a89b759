//! `score`: the discrepancy D (D_c + D_null) of a plan on the calibration set, as the search
//! would measure it; with a compensation, also D after it is fitted on those prompts, on them and
//! on held-out prompts.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::action::Action;
use crate::blocks::Analysis;
use crate::calibrate::{CalibConfig, Engine, EngineStats, Outcome, PromptHalf};
use crate::compensate::{self, Compensate, Compensation, Effect, Fitted};
use crate::model_io::Model;
use crate::plan::PlanFile;
use crate::runtime::{RuntimeConfig, Sessions};
use crate::{blocks, model_io};

#[derive(Debug, Clone)]
pub struct ScoreJob {
    /// The dense model.
    pub model: PathBuf,
    /// The plan file to score.
    pub plan: PathBuf,
    pub calib: CalibConfig,
    pub compensate: Compensate,
    /// Held-out prompts to judge the compensation on.
    pub heldout: Option<PathBuf>,
    pub runtime: RuntimeConfig,
}

/// D of the plan, and of its compensation.
#[derive(Debug, Serialize)]
pub struct ScoreReport {
    pub model: PathBuf,
    pub plan: PathBuf,
    pub prompts: usize,
    pub d: f64,
    pub d_c: f64,
    pub d_null: f64,
    pub compensation: Option<Compensated>,
    pub seconds: f64,
    pub stats: EngineStats,
}

pub fn score(job: &ScoreJob) -> Result<ScoreReport> {
    let sessions = Sessions::new(job.runtime)?;
    let model = model_io::read_model(&job.model)?;
    let analysis = blocks::analyze_at(&model.proto, &job.model)?;
    crate::loadable::check_input(&model, &job.model)?;
    let actions = PlanFile::load_actions(&job.plan, &analysis, &model.path)?;
    let calib = job.calib.calib_set(&model, PromptHalf::Calibration)?;
    let prompts = calib.prompts.len();
    let start = Instant::now();
    let mut engine = Engine::new(&model, &analysis, calib, job.calib.engine_options(sessions))?;
    let score = match engine.score(&actions, None)? {
        Outcome::Scored(score) => score,
        Outcome::Abandoned { .. } => bail!("scoring without a bound was abandoned"),
    };
    let compensation = compensated(job, sessions, &model, &analysis, &actions, &mut engine)?;
    Ok(ScoreReport {
        model: job.model.clone(),
        plan: job.plan.clone(),
        prompts,
        d: score.d(),
        d_c: score.d_c,
        d_null: score.d_null,
        compensation,
        seconds: start.elapsed().as_secs_f64(),
        stats: engine.stats(),
    })
}

/// The compensation's fit and, where held-out prompts exist, its D on them.
#[derive(Debug, serde::Serialize)]
pub struct Compensated {
    pub fit: Fitted,
    pub held_out: Option<HeldOut>,
}

#[derive(Debug, serde::Serialize)]
pub struct HeldOut {
    pub source: String,
    pub prompts: usize,
    #[serde(flatten)]
    pub effect: Effect,
}

fn compensated(
    job: &ScoreJob,
    sessions: Sessions,
    model: &Model,
    analysis: &Analysis,
    actions: &[Action],
    engine: &mut Engine,
) -> Result<Option<Compensated>> {
    let Some((comp, fit)) =
        compensate::compensate(job.compensate, engine, model, analysis, actions)?
    else {
        return Ok(None);
    };
    let user = job.calib.calib.is_some() || job.calib.prompts.is_some();
    // Prompts the map was not fitted on: a --heldout file, or the built-in held-out half. The
    // user's own calibration file alone has none (the main job holds some of it out instead).
    if job.heldout.is_none() && user {
        log::warn!(
            "no held-out prompts (--heldout FILE): the compensation is judged in-sample only"
        );
        return Ok(Some(Compensated {
            fit,
            held_out: None,
        }));
    }
    let (_, held, source) = job
        .calib
        .calib_and_held_out(model, job.heldout.as_deref())?;
    let prompts = held.prompts.len();
    let mut held_engine = Engine::new(model, analysis, held, job.calib.engine_options(sessions))?;
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
