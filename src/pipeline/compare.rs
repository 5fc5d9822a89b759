//! `compare`: how faithful a pruned encoder is, measured by running both files with ONNX
//! Runtime on held-out prompts (by default the half of the built-in prompt set that calibration
//! never sees).

use std::path::PathBuf;

use anyhow::Result;

use crate::calibrate::{CalibConfig, CalibSet, Engine, PromptHalf};
use crate::fidelity::{self, Fidelity, Tolerances, Uncompensated};
use crate::model_io::{read_model, Model};
use crate::plan::PlanFile;
use crate::runtime::{RuntimeConfig, Sessions};

#[derive(Debug, Clone)]
pub struct CompareJob {
    /// The original (dense) model.
    pub dense: PathBuf,
    /// The pruned model to judge.
    pub pruned: PathBuf,
    pub calib: CalibConfig,
    pub tolerances: Tolerances,
    pub runtime: RuntimeConfig,
}

/// Measures `job.pruned` against `job.dense`; a FAILED check is in the result, not an error.
pub fn compare(job: &CompareJob) -> Result<Fidelity> {
    let sessions = Sessions::new(job.runtime)?;
    let dense = read_model(&job.dense)?;
    let set = job.calib.calib_set(&dense, PromptHalf::HeldOut)?;
    let mut f = fidelity::measure(
        &job.dense,
        &job.pruned,
        &set,
        &super::run_options(&job.calib, sessions),
        &job.tolerances,
    )?;
    if f.uncompensated.is_none() {
        f.uncompensated = without_folds(job, sessions, &dense, &set)?;
    }
    Ok(f)
}

/// A pruned file whose merged compensation's folds leave no uncompensated value in it: its plan
/// without them, run by the calibration engine on the dense model and the same prompts (the
/// engine computes what `apply` writes: tests/engine_vs_rewrite.rs).
fn without_folds(
    job: &CompareJob,
    sessions: Sessions,
    dense: &Model,
    set: &CalibSet,
) -> Result<Option<Uncompensated>> {
    let pruned = read_model(&job.pruned)?;
    let Some(plan) = PlanFile::recorded_in(&pruned.proto) else {
        return Ok(None);
    };
    if plan
        .compensation
        .as_ref()
        .is_none_or(|c| c.placement != "merged")
    {
        return Ok(None);
    }
    let analysis = crate::blocks::analyze_at(&dense.proto, &job.dense)?;
    let actions = plan.to_actions(&analysis)?;
    let mut engine = Engine::new(
        dense,
        &analysis,
        set.clone(),
        job.calib.engine_options(sessions),
    )?;
    let e = crate::compensate::merged::effect(&mut engine, &actions, &[])?;
    Ok(Some(Uncompensated {
        value: "the plan without its folds (engine on the dense model)".into(),
        d_c: e.d_c_without,
        d_null: set.null.is_some().then_some(e.d_without - e.d_c_without),
        d: e.d_without,
        cos_mean: e.cos_without,
        cos_min: None,
    }))
}
