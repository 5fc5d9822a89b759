//! `skrr-onnx compare DENSE PRUNED`: how faithful a pruned encoder is, measured by running both
//! files with ONNX Runtime on held-out prompts (by default the half of the built-in prompt set
//! that calibration never sees). Polygraphy conventions: every check printed with its limit, a
//! final PASSED/FAILED line, exit status 1 on FAILED.

use std::path::PathBuf;

use anyhow::Result;

use crate::calibrate::{CalibArgs, CalibSet, Engine, PromptHalf};
use crate::cli::Context;
use crate::error::SkrrError;
use crate::fidelity::{self, Fidelity, RunOptions, Tolerances, Uncompensated};
use crate::model_io::{read_model, Model};
use crate::plan::PlanFile;

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

/// Pass/fail limits of a fidelity check (shared with the end-to-end command).
#[derive(Debug, Clone, clap::Args)]
pub struct ToleranceArgs {
    /// Lowest acceptable mean per-token cosine similarity between pruned and dense outputs.
    #[arg(
        long,
        default_value_t = 0.9,
        value_name = "COS",
        allow_negative_numbers = true
    )]
    pub min_cos: f64,
    /// Largest acceptable factor between the null embedding's norms (either way).
    #[arg(long, default_value_t = 2.0, value_name = "FACTOR")]
    pub max_null_ratio: f64,
    /// Largest acceptable D = D_c + D_null.
    #[arg(long, value_name = "D")]
    pub max_d: Option<f64>,
    /// Element-wise absolute tolerance (an element fails if above both atol and rtol·|dense|).
    #[arg(long, value_name = "TOL")]
    pub atol: Option<f64>,
    /// Element-wise relative tolerance.
    #[arg(long, value_name = "TOL")]
    pub rtol: Option<f64>,
}

impl ToleranceArgs {
    /// The limits, refused when no result could pass or fail them as meant (a cosine above 1,
    /// a NaN): a gate that cannot work is a usage error, not a FAILED after the whole run.
    pub fn tolerances(&self) -> Result<Tolerances> {
        let refuse = |flag: &str, v: f64, range: &str| -> anyhow::Error {
            SkrrError::Usage(format!("--{flag} {v}: expected {range}")).into()
        };
        if !(-1.0..=1.0).contains(&self.min_cos) {
            return Err(refuse("min-cos", self.min_cos, "a cosine in [-1, 1]"));
        }
        if !(self.max_null_ratio >= 1.0 && self.max_null_ratio.is_finite()) {
            return Err(refuse(
                "max-null-ratio",
                self.max_null_ratio,
                "a finite factor ≥ 1",
            ));
        }
        for (flag, v) in [
            ("max-d", self.max_d),
            ("atol", self.atol),
            ("rtol", self.rtol),
        ] {
            if let Some(v) = v.filter(|v| !(*v >= 0.0 && v.is_finite())) {
                return Err(refuse(flag, v, "a finite number ≥ 0"));
            }
        }
        Ok(Tolerances {
            min_cos: self.min_cos,
            max_null_ratio: self.max_null_ratio,
            max_d: self.max_d,
            atol: self.atol,
            rtol: self.rtol,
        })
    }
}

/// Measures `dense` vs `pruned` on the prompts of `set`, run as `calib` says.
pub fn fidelity_on(
    dense: &std::path::Path,
    pruned: &std::path::Path,
    set: &CalibSet,
    calib: &CalibArgs,
    tol: &Tolerances,
) -> Result<Fidelity> {
    let opts = calib.engine_options()?;
    let run = RunOptions {
        include_padding: opts.include_padding,
        chunk: opts.chunk,
        projection: opts.projection,
        measure: opts.measure,
    };
    fidelity::measure(dense, pruned, set, &run, tol)
}

pub fn run(args: &CompareArgs, ctx: &Context) -> Result<()> {
    let tol = args.tolerances.tolerances()?;
    crate::runtime::init(&ctx.runtime)?;
    let dense = read_model(&args.dense)?;
    let set = args.calib.calib_set(&dense, PromptHalf::HeldOut)?;
    let mut f = fidelity_on(&args.dense, &args.pruned, &set, &args.calib, &tol)?;
    if f.uncompensated.is_none() {
        f.uncompensated = without_folds(args, &dense, &set)?;
    }
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        print!("{}", render(&f));
        println!("{}", if f.passed { "PASSED" } else { "FAILED" });
    }
    verdict(&f)
}

/// A pruned file whose merged compensation's folds leave no uncompensated value in it: its plan
/// without them, run by the calibration engine on the dense model and the same prompts (the
/// engine computes what `apply` writes: tests/engine_vs_rewrite.rs).
fn without_folds(
    args: &CompareArgs,
    dense: &Model,
    set: &CalibSet,
) -> Result<Option<Uncompensated>> {
    let pruned = read_model(&args.pruned)?;
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
    let analysis = crate::blocks::analyze_at(&dense.proto, &args.dense)?;
    let actions = plan.to_actions(&analysis)?;
    let mut engine = Engine::new(dense, &analysis, set.clone(), args.calib.engine_options()?)?;
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

/// `Ok` when every check passed, else the typed error (exit status 1) naming the failed checks.
pub fn verdict(f: &Fidelity) -> Result<()> {
    if f.passed {
        return Ok(());
    }
    let failed: Vec<String> = f
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} {:.6} (limit {})", c.name, c.value, c.limit))
        .collect();
    Err(SkrrError::CheckFailed(format!("fidelity check FAILED: {}", failed.join(", "))).into())
}

/// The human-readable report (the caller prints the verdict line).
pub fn render(f: &Fidelity) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mb = |b: u64| b as f64 / 1e6;
    let _ = writeln!(
        s,
        "dense   {}: {} parameters, {:.2} MB",
        f.dense.path.display(),
        f.dense.params,
        mb(f.dense.bytes)
    );
    let _ = writeln!(
        s,
        "pruned  {}: {} parameters ({:.1}% fewer), {:.2} MB ({:.1}% smaller)",
        f.pruned.path.display(),
        f.pruned.params,
        100.0 * f.params_reduction,
        mb(f.pruned.bytes),
        100.0 * f.bytes_reduction
    );
    let _ = writeln!(
        s,
        "prompts {} ({} tokens), output {}",
        f.prompts, f.tokens, f.output
    );
    let _ = writeln!(
        s,
        "D       {:.6e} (D_c {:.6e}, D_null {})",
        f.d,
        f.d_c,
        f.d_null.map_or("off".into(), |d| format!("{d:.6e}"))
    );
    let _ = writeln!(
        s,
        "error   mse {:.6e}, max abs {:.6e}, relative norm {:.6e}",
        f.mse, f.max_abs_err, f.rel_err_norm
    );
    let _ = writeln!(s, "cosine  mean {:.6}, min {:.6}", f.cos_mean, f.cos_min);
    if let Some(u) = &f.uncompensated {
        let min = u.cos_min.map_or(String::new(), |m| format!(", min {m:.6}"));
        let _ = writeln!(
            s,
            "without {}: D {:.6e} (D_c {:.6e}), cosine mean {:.6}{min}",
            u.value, u.d, u.d_c, u.cos_mean
        );
    }
    if let Some(r) = f.null_norm_ratio {
        let _ = writeln!(s, "null    norm ratio pruned/dense {r:.4}");
    }
    for c in &f.checks {
        let _ = writeln!(
            s,
            "check   {:<18} {:<12.6} limit {:<10} {}",
            c.name,
            c.value,
            c.limit,
            if c.passed { "ok" } else { "FAILED" }
        );
    }
    s
}
