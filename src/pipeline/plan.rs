//! `plan`: search plans for one or several target sparsities and write the plan files of the
//! method doc; a sweep writes one plan per level from a single search, plus a plot of D
//! against sparsity.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::blocks::analyze_at;
use crate::calibrate::{CalibConfig, EngineStats, PromptHalf};
use crate::compensate::{self, Compensate, Fitted};
use crate::model_io::{check_output_not_input, check_outputs_apart, read_model};
use crate::plan::{file_sha256, PlanFile};
use crate::runtime::{RuntimeConfig, Sessions};
use crate::search::methods::{run_method, Method, SearchConfig};
use crate::search::{check_targets, plot, Level, Report};

#[derive(Debug, Clone)]
pub struct PlanJob {
    /// The dense model.
    pub model: PathBuf,
    /// The plan file; with `sweep`, plans go to STEM-LEVEL.json beside it and the plot to
    /// STEM-sweep.png.
    pub output: PathBuf,
    /// Target sparsities, distinct.
    pub targets: Vec<f64>,
    pub sweep: bool,
    pub search: SearchConfig,
    pub compensate: Compensate,
    pub calib: CalibConfig,
    pub runtime: RuntimeConfig,
}

/// One plan written.
#[derive(Debug, Serialize)]
pub struct PlannedLevel {
    pub path: PathBuf,
    pub level: Level,
}

/// What `plan` found and wrote.
#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub model: PathBuf,
    pub sha256: String,
    pub method: Method,
    pub beam: Option<usize>,
    pub plans: Vec<PlannedLevel>,
    pub plot: Option<PathBuf>,
    pub criterion: Vec<Option<f64>>,
    pub search: Option<Report>,
    pub block_influence: Option<Vec<f64>>,
    pub engine: EngineStats,
    pub compensation: Vec<Fitted>,
    /// The targets, in the order given (the text's first column).
    #[serde(skip)]
    pub targets: Vec<f64>,
    #[serde(skip)]
    pub sub_blocks: usize,
    #[serde(skip)]
    pub params_total: u64,
}

pub fn plan(job: &PlanJob) -> Result<PlanReport> {
    let outputs: Vec<PathBuf> = if job.sweep {
        job.targets
            .iter()
            .map(|t| sibling(&job.output, &t.to_string(), "json"))
            .collect()
    } else {
        vec![job.output.clone()]
    };
    for o in &outputs {
        check_output_not_input(o, &job.model, "plan")?;
    }
    let sidecars: Vec<PathBuf> = match job.compensate {
        Compensate::None => Vec::new(),
        Compensate::Linear | Compensate::Merged => outputs
            .iter()
            .map(|o| o.with_file_name(PlanFile::sidecar_name(o)))
            .collect(),
    };

    let model = read_model(&job.model)?;
    let plot = job.sweep.then(|| sibling(&job.output, "sweep", "png"));
    if let Some(p) = &plot {
        check_output_not_input(p, &job.model, "plot")?;
    }
    let reads: Vec<PathBuf> = model
        .files()
        .into_iter()
        .chain(job.calib.files(&model)?)
        .collect();
    let named: Vec<(&Path, &str)> = outputs
        .iter()
        .map(|o| (o.as_path(), "plan"))
        .chain(
            sidecars
                .iter()
                .map(|s| (s.as_path(), "plan's compensation map")),
        )
        .chain(plot.as_deref().map(|p| (p, "plot")))
        .collect();
    check_outputs_apart(
        &named,
        &reads.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )?;
    let sessions = Sessions::new(job.runtime)?;
    let analysis = analyze_at(&model.proto, &job.model)?;
    crate::loadable::check_input(&model, &job.model)?;
    let opts = job.calib.engine_options(sessions);
    let added = compensate::planned_params(job.compensate, &analysis.graph, &opts)?;
    let search_targets = compensate::raised_targets(&job.targets, added, analysis.total_params);
    check_targets(&analysis, &search_targets)?;
    let sha256 = file_sha256(&job.model)?;
    let calib = job.calib.calib_set(&model, PromptHalf::Calibration)?;
    let cfg = job.search.config(search_targets, job.compensate)?;
    let method = job.search.method;
    let (run, mut engine) = run_method(&model, &analysis, calib, opts, method, &cfg)?;

    let mut fits = Vec::new();
    for ((level, path), target) in run.levels.iter().zip(&outputs).zip(&job.targets) {
        let mut plan = level.plan_file(&analysis, method.name(), run.beam, &sha256);
        plan.target_sparsity = Some(*target);
        let fitted = compensate::compensate(
            job.compensate,
            &mut engine,
            &model,
            &analysis,
            &level.actions,
        )?;
        if let Some((comp, fit)) = &fitted {
            let file = PlanFile::sidecar_name(path);
            plan.compensate(comp, &analysis, fit.ridge(), fit.d_after(), Some(file));
        }
        plan.write(path, fitted.as_ref().map(|(c, _)| c))?;
        fits.extend(fitted.map(|(_, fit)| fit));
    }
    if let Some(p) = &plot {
        plot::write_png(&run.levels, method.name(), p)?;
    }

    Ok(PlanReport {
        model: job.model.clone(),
        sha256,
        method: run.method,
        beam: run.beam,
        plans: run
            .levels
            .into_iter()
            .zip(outputs)
            .map(|(level, path)| PlannedLevel { path, level })
            .collect(),
        plot,
        criterion: run.criterion,
        search: run.search,
        block_influence: run.block_influence,
        engine: run.engine,
        compensation: fits,
        targets: job.targets.clone(),
        sub_blocks: analysis.sub_blocks.len(),
        params_total: analysis.total_params,
    })
}

/// `plan.json` + 0.25 → `plan-0.25.json`.
fn sibling(output: &Path, suffix: &str, ext: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plan".into());
    output.with_file_name(format!("{stem}-{suffix}.{ext}"))
}
