//! The main job's report: the model, prompts, plan, rewrite, compensation, fidelity and the
//! time of each phase, then the verdict line.

use std::fmt::Write;

use super::Render;
use crate::pipeline::RunReport;

impl Render for RunReport {
    fn text(&self) -> String {
        let r = self;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model   {}: {} layers, {} sub-blocks, {} parameters{}",
            r.input.display(),
            r.layers,
            r.sub_blocks,
            r.params_total,
            r.family
                .as_deref()
                .map_or(String::new(), |f| format!(" ({f})"))
        );
        let p = &r.prompts;
        let held = match (&p.held_out, &p.held_out_source) {
            (Some(n), Some(source)) => format!(", fidelity on {n} held out ({source})"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "calib   {} prompts ({}){held}",
            p.calibration, p.calibration_source
        );
        let order = r.plan.skip_order.clone().unwrap_or_default();
        let reuses: Vec<String> = r
            .plan
            .sub_blocks
            .iter()
            .filter_map(|e| e.source.map(|q| format!("{}←{}", e.index, q)))
            .collect();
        let _ = writeln!(
            s,
            "plan    {} sparsity {:.4} (target {}), skip order {:?}, re-use [{}], D {:.4e} → {:.4e}",
            r.plan.method.as_deref().unwrap_or("?"),
            r.plan.achieved_sparsity.unwrap_or(0.0),
            r.plan.target_sparsity.unwrap_or(0.0),
            order,
            reuses.join(", "),
            r.plan.discrepancy.as_ref().map_or(0.0, |d| d.skip),
            r.plan.discrepancy.as_ref().map_or(0.0, |d| d.final_),
        );
        let copied = match r.rewrite.params_copied {
            0 => String::new(),
            n => format!(
                "; {n} copied back for re-use, {} bytes",
                r.rewrite.bytes_copied
            ),
        };
        let _ = writeln!(
            s,
            "rewrite nodes {} → {}, parameters {} → {} ({} removed{copied})",
            r.rewrite.nodes_before,
            r.rewrite.nodes_after,
            r.rewrite.params_before,
            r.rewrite.params_after,
            r.rewrite.params_removed
        );
        if let Some(c) = &r.compensation {
            let held = c
                .held_out
                .as_ref()
                .map_or(String::new(), |e| format!("; held out: {e}"));
            let _ = writeln!(s, "compens {}{held}", c.fit);
        }
        if let Some(f) = &r.fidelity {
            s.push_str(&f.text());
        }
        let phases: Vec<String> = r
            .phases
            .iter()
            .map(|p| format!("{} {:.2} s", p.name, p.seconds))
            .collect();
        let _ = writeln!(s, "time    {}", phases.join(", "));
        s
    }

    fn verdict(&self) -> Option<String> {
        Some(self.verdict.clone())
    }
}
