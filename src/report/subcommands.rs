//! The reports of `plan`, `score`, `doctor` and `convert`.

use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::Render;
use crate::action::Action;
use crate::model_io::WriteReport;
use crate::pipeline::plan::PlanReport;
use crate::pipeline::score::ScoreReport;
use crate::runtime::Provider;

impl Render for PlanReport {
    fn text(&self) -> String {
        let r = self;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} on {} ({} sub-blocks, {} parameters)",
            r.method.name(),
            r.model.display(),
            r.sub_blocks,
            r.params_total
        );
        let _ = writeln!(
            s,
            "{:>8} {:>9} {:>12} {:>6} {:>6} {:>12} {:>12}  plan",
            "target", "achieved", "removed", "skips", "reuses", "D skip", "D final"
        );
        for (planned, target) in r.plans.iter().zip(&r.targets) {
            let (l, p) = (&planned.level, &planned.path);
            let reuses = l
                .actions
                .iter()
                .filter(|a| matches!(a, Action::Reuse(_)))
                .count();
            let _ = writeln!(
                s,
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
        if let Some(search) = &r.search {
            let _ = writeln!(
                s,
                "search: {} steps, {} candidates scored, {} abandoned early, {:.2} s ({})",
                search.steps.len(),
                search.candidates_scored,
                search.candidates_abandoned,
                search.seconds,
                search.stop
            );
        }
        for (fit, planned) in r.compensation.iter().zip(&r.plans) {
            let _ = writeln!(s, "compensation of {}: {fit}", planned.path.display());
        }
        if let Some(p) = &r.plot {
            let _ = writeln!(s, "plot: {}", p.display());
        }
        s
    }
}

impl Render for ScoreReport {
    fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "D      = {:.6e}", self.d);
        let _ = writeln!(s, "D_c    = {:.6e}  ({} prompts)", self.d_c, self.prompts);
        let _ = writeln!(s, "D_null = {:.6e}", self.d_null);
        if let Some(c) = &self.compensation {
            let _ = writeln!(s, "compensation: {}", c.fit);
            if let Some(h) = &c.held_out {
                let _ = writeln!(
                    s,
                    "held-out ({} prompts, {}): {}",
                    h.prompts, h.source, h.effect
                );
            }
        }
        s
    }
}

/// Where ONNX Runtime was found and whether the requested provider works (`doctor`).
#[derive(Debug, Serialize)]
pub struct DoctorReport {
    pub found: bool,
    pub library: PathBuf,
    pub source: String,
    pub version: String,
    pub available_providers: Vec<String>,
    pub provider: Provider,
    pub provider_ok: bool,
    pub provider_error: Option<String>,
}

impl Render for DoctorReport {
    fn text(&self) -> String {
        let status = if self.provider_ok {
            "ok"
        } else {
            "UNAVAILABLE"
        };
        format!(
            "ONNX Runtime {}\n  library:   {}\n  found via: {}\n  providers: {}\n  requested: {} \
             ({status})\n",
            self.version,
            self.library.display(),
            self.source,
            self.available_providers.join(", "),
            self.provider
        )
    }
}

/// `doctor` when no ONNX Runtime was found: one line on stdout, where the report of a found one
/// would be, and the error with the way to install it on stderr.
#[derive(Debug, Serialize)]
pub struct DoctorNotFound {
    pub found: bool,
    pub error: String,
}

impl Render for DoctorNotFound {
    fn text(&self) -> String {
        "ONNX Runtime: not found\n".into()
    }
}

/// What `convert` wrote.
#[derive(Debug, Serialize)]
pub struct ConvertReport {
    pub input: PathBuf,
    pub written: WriteReport,
}

impl Render for ConvertReport {
    fn text(&self) -> String {
        let w = &self.written;
        let mut s = format!(
            "wrote {} ({} bytes, {} tensors inline)\n",
            w.model_path.display(),
            w.model_bytes,
            w.inline_tensors
        );
        if let Some(p) = &w.data_path {
            let _ = writeln!(
                s,
                "  data {} ({} bytes, {} tensors)",
                p.display(),
                w.data_bytes,
                w.external_tensors
            );
        }
        s
    }
}
