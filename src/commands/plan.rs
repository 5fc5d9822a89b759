//! `skrr-onnx plan MODEL -o plan.json --sparsity S`: search a plan and write the plan file of
//! the method doc; `--sweep 0.1,0.2,...` writes one plan per level from a single search, plus a
//! table and a plot of D against sparsity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::blocks::analyze_at;
use crate::calibrate::{CalibArgs, PromptHalf};
use crate::cli::Context;
use crate::compensate::{self, Compensate};
use crate::error::SkrrError;
use crate::model_io::{check_output_not_input, check_outputs_apart, read_model};
use crate::plan::{file_sha256, Action, PlanFile};
use crate::search::methods::{run_method, Method};
use crate::search::{check_targets, plot, Config, Limits, Rank};

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

/// How to search (shared by `plan` and the end-to-end command).
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// Beam width of the skip phase (1 = greedy).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub beam: u32,
    /// Search method; the baselines' plans are re-scored with the full Skrr D for comparison.
    #[arg(long, value_enum, default_value_t = Method::Skrr)]
    pub method: Method,
    /// Skip phase only (no re-use pass).
    #[arg(long)]
    pub no_reuse: bool,
    /// Stop the skip phase after this many seconds (an error if no target was reached).
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Compensate what the plan removes, in closed form on the calibration prompts: `merged`
    /// folds maps into the kept sub-block before each skipped run (no parameter added);
    /// `linear` writes a map on the measured output (its d² + d parameters count against the
    /// sparsity, so the search removes that much more).
    #[arg(long, value_enum, default_value_t = Compensate::None)]
    pub compensate: Compensate,
    /// What the Skrr search ranks candidates by: their D, or (with --compensate linear) their
    /// D after a map fitted for each, which costs a fit per candidate.
    #[arg(long, value_enum, default_value_t = Rank::Plain)]
    pub rank: Rank,
}

impl SearchArgs {
    /// The search configuration for `targets`; warns about options the method ignores.
    pub fn config(&self, targets: Vec<f64>) -> Result<Config> {
        let beam = self.beam as usize;
        if self.method != Method::Skrr && (beam != 3 || self.no_reuse || self.rank != Rank::Plain) {
            log::warn!(
                "--beam, --no-reuse and --rank apply to --method skrr only ({} has its own \
                 definition)",
                self.method.name()
            );
        }
        if self.rank == Rank::Compensated && self.compensate != Compensate::Linear {
            return Err(SkrrError::Usage(
                "--rank compensated ranks plans by D after their linear map: give --compensate \
                 linear too"
                    .into(),
            )
            .into());
        }
        Ok(Config {
            beam,
            targets,
            reuse: !self.no_reuse,
            limits: Limits {
                time: self.time_limit.map(Duration::from_secs_f64),
                steps: None,
            },
            rank: self.rank,
        })
    }
}

/// `plan.json` + 0.25 → `plan-0.25.json`.
fn sibling(output: &Path, suffix: &str, ext: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plan".into());
    output.with_file_name(format!("{stem}-{suffix}.{ext}"))
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
    let outputs: Vec<PathBuf> = if args.sweep.is_some() {
        targets
            .iter()
            .map(|t| sibling(&args.output, &t.to_string(), "json"))
            .collect()
    } else {
        vec![args.output.clone()]
    };
    for o in &outputs {
        check_output_not_input(o, &args.model, "plan")?;
    }
    let sidecars: Vec<PathBuf> = match args.search.compensate {
        Compensate::None => Vec::new(),
        Compensate::Linear | Compensate::Merged => outputs
            .iter()
            .map(|o| o.with_file_name(PlanFile::sidecar_name(o)))
            .collect(),
    };

    let model = read_model(&args.model)?;
    let plot = args
        .sweep
        .is_some()
        .then(|| sibling(&args.output, "sweep", "png"));
    if let Some(p) = &plot {
        check_output_not_input(p, &args.model, "plot")?;
    }
    let reads: Vec<PathBuf> = model
        .files()
        .into_iter()
        .chain(args.calib.files(&model)?)
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
    crate::runtime::init(&ctx.runtime)?;
    let analysis = analyze_at(&model.proto, &args.model)?;
    crate::loadable::check_input(&model, &args.model)?;
    let opts = args.calib.engine_options()?;
    let added = compensate::planned_params(args.search.compensate, &analysis.graph, &opts)?;
    let search_targets = compensate::raised_targets(&targets, added, analysis.total_params);
    check_targets(&analysis, &search_targets)?;
    let sha256 = file_sha256(&args.model)?;
    let calib = args.calib.calib_set(&model, PromptHalf::Calibration)?;
    let cfg = args.search.config(search_targets)?;
    let method = args.search.method;
    let (run, mut engine) = run_method(&model, &analysis, calib, opts, method, &cfg)?;

    let mut fits = Vec::new();
    for ((level, path), target) in run.levels.iter().zip(&outputs).zip(&targets) {
        let mut plan = level.plan_file(&analysis, method.name(), run.beam, &sha256);
        plan.target_sparsity = Some(*target);
        let fitted = compensate::compensate(
            args.search.compensate,
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

    if ctx.json {
        let plans: Vec<_> = run
            .levels
            .iter()
            .zip(&outputs)
            .map(|(l, p)| json!({ "path": p, "level": l }))
            .collect();
        let out = json!({
            "model": args.model, "sha256": sha256, "method": run.method, "beam": run.beam,
            "plans": plans, "plot": plot, "criterion": run.criterion, "search": run.search,
            "block_influence": run.block_influence, "engine": run.engine,
            "compensation": fits,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} on {} ({} sub-blocks, {} parameters)",
        method.name(),
        args.model.display(),
        analysis.sub_blocks.len(),
        analysis.total_params
    );
    println!(
        "{:>8} {:>9} {:>12} {:>6} {:>6} {:>12} {:>12}  plan",
        "target", "achieved", "removed", "skips", "reuses", "D skip", "D final"
    );
    for ((l, p), target) in run.levels.iter().zip(&outputs).zip(&targets) {
        let reuses = l
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Reuse(_)))
            .count();
        println!(
            "{:>8} {:>9.4} {:>12} {:>6} {:>6} {:>12.5e} {:>12.5e}  {}",
            target,
            l.sparsity,
            l.params_removed,
            l.skip_order.len() - reuses,
            reuses,
            l.d_skip,
            l.d_final,
            p.display()
        );
    }
    if let Some(r) = &run.search {
        println!(
            "search: {} steps, {} candidates scored, {} abandoned early, {:.2} s ({})",
            r.steps.len(),
            r.candidates_scored,
            r.candidates_abandoned,
            r.seconds,
            r.stop
        );
    }
    for (fit, p) in fits.iter().zip(&outputs) {
        println!("compensation of {}: {fit}", p.display());
    }
    if let Some(p) = plot {
        println!("plot: {}", p.display());
    }
    Ok(())
}
