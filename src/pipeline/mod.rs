//! The end-to-end job, `skrr-onnx IN OUT --sparsity S`: one short orchestrator running named
//! phases in the order of the data flow (read → analyze → search → rewrite+write → compare),
//! timing each, and a report that records everything (`--report report.json`).
//!
//! Everything that can be refused is refused before the search, which is the long phase: an
//! output over the input or over another file the run reads or writes, an output folder that is
//! missing or not writable, an unreachable sparsity, limits no result can meet, prompts that
//! cannot be read.

pub mod compare;
pub mod plan;
pub mod score;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::apply::apply_to_file;
use crate::blocks::{analyze_at, Analysis};
use crate::calibrate::{CalibConfig, CalibSet, Engine, EngineOptions, PromptHalf};
use crate::compensate::{self, Compensate, Compensation, Effect, Fitted};
use crate::fidelity::{self, Fidelity, RunOptions, Tolerances};
use crate::model_io::{
    check_output_not_input, check_outputs_apart, read_model, write_file, Model, WriteOptions,
    WriteReport,
};
use crate::plan::{file_sha256, ActionName, PlanFile};
use crate::rewrite::{ReuseWeights, RewriteOptions, RewriteReport};
use crate::runtime::{RuntimeConfig, Sessions};
use crate::search::methods::{run_method, SearchConfig};
use crate::search::{check_targets, Level};

/// The main job, as the library takes it: every option resolved, each value checked on its own
/// (the command line's `RunArgs` converts into it).
#[derive(Debug, Clone)]
pub struct Job {
    /// The dense text encoder.
    pub input: PathBuf,
    /// Where the pruned model goes (never over the input).
    pub output: PathBuf,
    /// Parameters removed / all parameters, in (0, 1).
    pub sparsity: f64,
    pub search: SearchConfig,
    pub compensate: Compensate,
    /// Also write the plan file here.
    pub plan_out: Option<PathBuf>,
    pub reuse_weights: ReuseWeights,
    /// Also write the JSON report here.
    pub report: Option<PathBuf>,
    /// Run the held-out fidelity comparison.
    pub compare: bool,
    /// The fidelity check's prompts (else held out of the calibration prompts).
    pub heldout: Option<PathBuf>,
    pub write: WriteOptions,
    pub calib: CalibConfig,
    pub tolerances: Tolerances,
    pub runtime: RuntimeConfig,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub seconds: f64,
}

/// The prompts each phase ran on, so that a report says how to reproduce it.
#[derive(Debug, Serialize)]
pub struct PromptsReport {
    /// `--prompts` / `--calib` file, or the built-in set.
    pub calibration_source: String,
    pub calibration: usize,
    pub held_out_source: Option<String>,
    pub held_out: Option<usize>,
    pub max_length: usize,
    pub null: bool,
    pub include_padding: bool,
    pub chunk: usize,
}

/// Everything the run did, as `--report` writes it and `--json` prints it.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// The skrr-onnx version that ran.
    pub version: &'static str,
    pub input: PathBuf,
    pub output: PathBuf,
    pub family: Option<String>,
    pub layers: usize,
    pub sub_blocks: usize,
    pub params_total: u64,
    pub prompts: PromptsReport,
    pub plan: PlanFile,
    pub search: serde_json::Value,
    pub rewrite: RewriteReport,
    pub written: WriteReport,
    pub fidelity: Option<Fidelity>,
    /// The linear map written after the plan (`--compensate linear`).
    pub compensation: Option<CompensationReport>,
    pub phases: Vec<Phase>,
    pub seconds: f64,
    pub verdict: String,
}

/// The compensation's fit. The fidelity check reports the written file with and without an
/// output map (`fidelity.uncompensated`); folds leave no value without them in the file, so the
/// engine measures the held-out prompts without and with them.
#[derive(Debug, Serialize)]
pub struct CompensationReport {
    pub fit: Fitted,
    pub held_out: Option<Effect>,
}

/// Times phases as they run.
struct Clock {
    start: Instant,
    phases: Vec<Phase>,
}

impl Clock {
    fn phase<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        log::info!("phase {name}");
        let t = Instant::now();
        let out = f()?;
        self.phases.push(Phase {
            name,
            seconds: t.elapsed().as_secs_f64(),
        });
        Ok(out)
    }
}

/// Runs the main job: read, analyze, search, compensate, rewrite and write, compare. Prints
/// nothing; a FAILED fidelity check is in the report (`RunReport::fidelity`), not an error.
pub fn run(job: &Job) -> Result<RunReport> {
    let (input, output) = (job.input.as_path(), job.output.as_path());
    // Everything that can be refused without the search is refused before it.
    refuse_outputs_over_input(job)?;
    let mut clock = Clock {
        start: Instant::now(),
        phases: Vec::new(),
    };
    let model = clock.phase("read", || read_model(input))?;
    check_outputs_apart_from_reads(job, &model)?;
    let sessions = Sessions::new(job.runtime)?;
    let analysis = clock.phase("analyze", || analyze_at(&model.proto, input))?;
    crate::loadable::check_input(&model, input)?;
    let engine_opts = job.calib.engine_options(sessions);
    let added = compensate::planned_params(job.compensate, &analysis.graph, &engine_opts)?;
    let target = compensate::raised_targets(&[job.sparsity], added, analysis.total_params)[0];
    check_targets(&analysis, &[target])?;
    warn_if_short_of_space(&model, output, job.sparsity);
    let (calib, held_out) = prompt_sets(job, &model)?;
    let prompts = PromptsReport::of(&job.calib, &calib, held_out.as_ref());

    let mut found = clock.phase("search", || {
        search(job, &model, &analysis, calib, &engine_opts, target)
    })?;
    let compensation = match job.compensate {
        Compensate::None => None,
        choice => clock.phase("compensate", || {
            fit_compensation(job, choice, &mut found, &model, &analysis)
        })?,
    };
    let Found {
        level,
        plan,
        search,
        engine,
    } = found;
    // The search's sessions hold memory the writer and the comparison need.
    drop(engine);
    if let Some(p) = &job.plan_out {
        plan.write(p, compensation.as_ref().map(|(c, _)| c))?;
    }
    let applied = clock.phase("rewrite+write", || {
        let opts = RewriteOptions {
            reuse_weights: job.reuse_weights,
            plan_record: Some(plan.clone()),
            compensation: compensation.as_ref().map(|(c, _)| c.clone()),
        };
        apply_to_file(&model, &analysis, &level.actions, &opts, output, &job.write)
    })?;

    let held_out = held_out.map(|(set, _)| set);
    let fidelity = match &held_out {
        None => None,
        Some(set) => Some(clock.phase("compare", || {
            let opts = run_options(&job.calib, sessions);
            fidelity::measure(input, output, set, &opts, &job.tolerances)
        })?),
    };
    let compensation = match compensation {
        None => None,
        Some((comp, fit)) => {
            // A fold leaves no uncompensated value in the file: the engine measures the plan
            // without and with them on the held-out prompts.
            let held_out = match (&comp, &held_out) {
                (Compensation::Merged(folds), Some(set)) => {
                    Some(clock.phase("compare without compensation", || {
                        let mut engine =
                            Engine::new(&model, &analysis, set.clone(), engine_opts.clone())?;
                        compensate::merged::effect(&mut engine, &level.actions, folds)
                    })?)
                }
                _ => None,
            };
            Some(CompensationReport { fit, held_out })
        }
    };

    let seconds = clock.start.elapsed().as_secs_f64();
    let verdict = one_line(
        fidelity.as_ref().is_none_or(|f| f.passed),
        fidelity.is_some(),
        &level_summary(&plan, &applied.rewrite),
        fidelity.as_ref(),
        output,
        applied.output_bytes,
        seconds,
    );
    let report = RunReport {
        version: env!("CARGO_PKG_VERSION"),
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        family: analysis.family.clone(),
        layers: analysis.layers,
        sub_blocks: analysis.sub_blocks.len(),
        params_total: analysis.total_params,
        prompts,
        plan,
        search,
        rewrite: applied.rewrite,
        written: applied.write,
        fidelity,
        compensation,
        phases: clock.phases,
        seconds,
        verdict,
    };
    if let Some(p) = &job.report {
        write_file(
            p,
            format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes(),
        )?;
    }
    Ok(report)
}

/// What the search phase found: the level reaching the target, its plan file, the search's
/// report, and the engine that scored it (a compensation is fitted on it).
struct Found {
    level: Level,
    plan: PlanFile,
    search: serde_json::Value,
    engine: Engine,
}

/// The search for `target` (the sparsity raised by what a compensation will add).
fn search(
    job: &Job,
    model: &Model,
    analysis: &Analysis,
    calib: CalibSet,
    engine_opts: &EngineOptions,
    target: f64,
) -> Result<Found> {
    let sha256 = file_sha256(&job.input)?;
    let method = job.search.method;
    let cfg = job.search.config(vec![target], job.compensate)?;
    let (run, engine) = run_method(model, analysis, calib, engine_opts.clone(), method, &cfg)?;
    let level = run.levels.into_iter().next().ok_or_else(|| {
        anyhow::anyhow!("the search returned no plan (a bug in skrr-onnx: please report it)")
    })?;
    let mut plan = level.plan_file(analysis, method.name(), run.beam, &sha256);
    plan.target_sparsity = Some(job.sparsity);
    let search = serde_json::json!({
        "method": run.method, "beam": run.beam, "criterion": run.criterion,
        "report": run.search, "block_influence": run.block_influence, "engine": run.engine,
    });
    Ok(Found {
        level,
        plan,
        search,
        engine,
    })
}

/// The compensation `choice` fitted on the search's engine for the plan found, recorded in
/// the plan file (with the sidecar's name when the plan is written).
fn fit_compensation(
    job: &Job,
    choice: Compensate,
    found: &mut Found,
    model: &Model,
    analysis: &Analysis,
) -> Result<Option<(Compensation, Fitted)>> {
    let fitted = compensate::compensate(
        choice,
        &mut found.engine,
        model,
        analysis,
        &found.level.actions,
    )?;
    if let Some((comp, fit)) = &fitted {
        let file = job.plan_out.as_deref().map(PlanFile::sidecar_name);
        found
            .plan
            .compensate(comp, analysis, fit.ridge(), fit.d_after(), file);
    }
    Ok(fitted)
}

/// No output (pruned model, plan, report) may be the input itself.
fn refuse_outputs_over_input(job: &Job) -> Result<()> {
    let input = job.input.as_path();
    check_output_not_input(&job.output, input, "pruned model")?;
    if let Some(p) = &job.plan_out {
        check_output_not_input(p, input, "plan")?;
    }
    if let Some(p) = &job.report {
        check_output_not_input(p, input, "report")?;
    }
    Ok(())
}

impl PromptsReport {
    fn of(c: &CalibConfig, calib: &CalibSet, held_out: Option<&(CalibSet, String)>) -> Self {
        PromptsReport {
            calibration_source: c
                .calib
                .as_ref()
                .or(c.prompts.as_ref())
                .map_or("built-in".into(), |p| p.display().to_string()),
            calibration: calib.prompts.len(),
            held_out_source: held_out.map(|(_, source)| source.clone()),
            held_out: held_out.map(|(set, _)| set.prompts.len()),
            max_length: c.max_length,
            null: calib.null.is_some(),
            include_padding: c.include_padding,
            chunk: c.chunk,
        }
    }
}

/// How the whole files run when compared: as the calibration options say, with `sessions`.
pub(crate) fn run_options(calib: &CalibConfig, sessions: Sessions) -> RunOptions {
    RunOptions {
        sessions,
        include_padding: calib.include_padding,
        chunk: calib.chunk,
        projection: calib.projection.clone(),
        measure: calib.measure.clone(),
    }
}

/// The run's outputs (pruned model, its data file, plan, report) may not name one another or
/// any file the run reads (the model's, tokenizer, prompts, projection).
fn check_outputs_apart_from_reads(job: &Job, model: &crate::model_io::Model) -> Result<()> {
    let output = job.output.as_path();
    let data = output.with_file_name(job.write.data_file_name(output)?);
    let mut reads = model.files();
    reads.extend(job.calib.files(model)?);
    reads.extend(job.heldout.clone());
    let sidecar = match job.compensate {
        Compensate::None => None,
        Compensate::Linear | Compensate::Merged => job
            .plan_out
            .as_deref()
            .map(|p| p.with_file_name(PlanFile::sidecar_name(p))),
    };
    let outputs = [
        (output, "pruned model"),
        (data.as_path(), "pruned model's external data"),
    ]
    .into_iter()
    .chain(job.plan_out.as_deref().map(|p| (p, "plan")))
    .chain(sidecar.as_deref().map(|p| (p, "plan's compensation map")))
    .chain(job.report.as_deref().map(|p| (p, "report")))
    .collect::<Vec<_>>();
    check_outputs_apart(
        &outputs,
        &reads.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )
}

/// The output's size is known only after the search, which can take hours on a large model;
/// a folder that clearly cannot hold it is worth knowing before.
fn warn_if_short_of_space(model: &crate::model_io::Model, output: &Path, sparsity: f64) {
    let input_bytes = model.file_bytes().unwrap_or(0);
    let expected = (input_bytes as f64 * (1.0 - sparsity)) as u64;
    if let Some(free) = crate::model_io::free_space(output).filter(|&free| free < expected) {
        use indicatif::HumanBytes;
        log::warn!(
            "the pruned model will take about {} ({:.0}% of the input's {}) and its folder has \
             {} free: writing it after the search may fail",
            HumanBytes(expected),
            100.0 * (1.0 - sparsity),
            HumanBytes(input_bytes),
            HumanBytes(free)
        );
    }
}

/// The search's prompts, and the fidelity check's with where they come from (none with
/// `--no-compare`: then the search gets every prompt).
fn prompt_sets(
    job: &Job,
    model: &crate::model_io::Model,
) -> Result<(CalibSet, Option<(CalibSet, String)>)> {
    if !job.compare {
        return Ok((job.calib.calib_set(model, PromptHalf::Calibration)?, None));
    }
    let (calib, held, source) = job
        .calib
        .calib_and_held_out(model, job.heldout.as_deref())?;
    log::info!(
        "calibrating on {} prompts, checking fidelity on {} ({source})",
        calib.prompts.len(),
        held.prompts.len()
    );
    Ok((calib, Some((held, source))))
}

/// "removed 50.3% of parameters (12 skips, 2 re-uses)", and what `--reuse-weights copy` put
/// back.
fn level_summary(plan: &PlanFile, rewrite: &RewriteReport) -> String {
    let count = |a: ActionName, one: &str, many: &str| {
        let n = plan.sub_blocks.iter().filter(|e| e.action == a).count();
        format!("{n} {}", if n == 1 { one } else { many })
    };
    let copied = match rewrite.params_copied {
        0 => String::new(),
        n => format!(", {n} re-used parameters copied back"),
    };
    let net = match (plan.net_sparsity, &plan.compensation) {
        (Some(_), Some(c)) if c.placement == "merged" => {
            let folds = c.folds.as_ref().map_or(0, Vec::len);
            let copied = match rewrite.params_added {
                0 => String::new(),
                n => format!(", {n} shared parameters copied"),
            };
            format!(" (compensated by {folds} fold(s){copied})")
        }
        (Some(net), _) => format!(
            " ({:.1}% net of a {}-parameter linear map)",
            100.0 * net,
            rewrite.params_added
        ),
        _ => String::new(),
    };
    format!(
        "removed {:.1}% of parameters{net} ({}, {}{copied})",
        100.0 * plan.achieved_sparsity.unwrap_or(0.0),
        count(ActionName::Skip, "skip", "skips"),
        count(ActionName::Reuse, "re-use", "re-uses")
    )
}

fn one_line(
    passed: bool,
    compared: bool,
    summary: &str,
    f: Option<&Fidelity>,
    output: &Path,
    bytes: u64,
    seconds: f64,
) -> String {
    let head = match (compared, passed) {
        (false, _) => "DONE",
        (true, true) => "PASSED",
        (true, false) => "FAILED",
    };
    let fid = f.map_or(String::new(), |f| {
        format!(
            ", held-out cosine {:.4} (min {:.4}), D {:.3e}",
            f.cos_mean, f.cos_min, f.d
        )
    });
    format!(
        "{head}: {summary}{fid}; wrote {} ({:.2} MB) in {seconds:.1} s",
        output.display(),
        bytes as f64 / 1e6
    )
}
