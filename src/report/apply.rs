//! `apply`'s report: what the rewrite removed and what was written.

use std::fmt::Write;

use super::Render;
use crate::apply::ApplyReport;

impl Render for ApplyReport {
    fn text(&self) -> String {
        let r = self;
        let mut s = String::new();
        let rw = &r.rewrite;
        let _ = writeln!(s, "wrote {}", r.output.display());
        let reused: Vec<String> = rw
            .reused
            .iter()
            .map(|u| format!("{}<-{}", u.at, u.source))
            .collect();
        let _ = writeln!(
            s,
            "  sub-blocks   {} : skipped {} {:?}, re-used {} [{}]",
            r.sub_blocks,
            rw.skipped.len(),
            rw.skipped,
            rw.reused.len(),
            reused.join(", ")
        );
        let _ = writeln!(
            s,
            "  parameters   {} -> {}  (removed {}, sparsity {:.4})",
            rw.params_before, rw.params_after, rw.params_removed, r.sparsity
        );
        if rw.params_added > 0 || rw.params_replaced > 0 {
            let _ = writeln!(
                s,
                "  compensation {} parameters added, {} replaced by folds: net sparsity {:.4}",
                rw.params_added,
                rw.params_replaced,
                (rw.params_removed as f64 - rw.params_added as f64)
                    / rw.params_before.max(1) as f64
            );
        }
        if rw.params_copied > 0 {
            let net = rw.params_before.saturating_sub(rw.params_after);
            let _ = writeln!(
                s,
                "  copied       {} parameters, {} bytes (--reuse-weights copy): the file has {} \
                 fewer parameters than the input ({:.1}%)",
                rw.params_copied,
                rw.bytes_copied,
                net,
                100.0 * net as f64 / rw.params_before.max(1) as f64
            );
        }
        let _ = writeln!(
            s,
            "  nodes        {} -> {}",
            rw.nodes_before, rw.nodes_after
        );
        let _ = writeln!(
            s,
            "  initializers {} -> {}",
            rw.initializers_before, rw.initializers_after
        );
        let data = match &r.write.data_path {
            Some(d) => format!(
                " (model {} + data {} in {})",
                r.write.model_bytes,
                r.write.data_bytes,
                d.display()
            ),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "  file bytes   {} -> {}{data}",
            r.input_bytes, r.output_bytes
        );
        let _ = writeln!(s, "  time         {:.3} s", r.seconds);
        s
    }
}
