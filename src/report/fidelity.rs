//! `compare`'s report (also part of the main job's): every check with its value and limit, then
//! PASSED or FAILED.

use std::fmt::Write;

use super::Render;
use crate::fidelity::Fidelity;

impl Render for Fidelity {
    fn text(&self) -> String {
        let mut s = String::new();
        let mb = |b: u64| b as f64 / 1e6;
        let _ = writeln!(
            s,
            "dense   {}: {} parameters, {:.2} MB",
            self.dense.path.display(),
            self.dense.params,
            mb(self.dense.bytes)
        );
        let _ = writeln!(
            s,
            "pruned  {}: {} parameters ({:.1}% fewer), {:.2} MB ({:.1}% smaller)",
            self.pruned.path.display(),
            self.pruned.params,
            100.0 * self.params_reduction,
            mb(self.pruned.bytes),
            100.0 * self.bytes_reduction
        );
        let _ = writeln!(
            s,
            "prompts {} ({} tokens), output {}",
            self.prompts, self.tokens, self.output
        );
        let _ = writeln!(
            s,
            "D       {:.6e} (D_c {:.6e}, D_null {})",
            self.d,
            self.d_c,
            self.d_null.map_or("off".into(), |d| format!("{d:.6e}"))
        );
        let _ = writeln!(
            s,
            "error   mse {:.6e}, max abs {:.6e}, relative norm {:.6e}",
            self.mse, self.max_abs_err, self.rel_err_norm
        );
        let _ = writeln!(
            s,
            "cosine  mean {:.6}, min {:.6}",
            self.cos_mean, self.cos_min
        );
        if let Some(u) = &self.uncompensated {
            let min = u.cos_min.map_or(String::new(), |m| format!(", min {m:.6}"));
            let _ = writeln!(
                s,
                "without {}: D {:.6e} (D_c {:.6e}), cosine mean {:.6}{min}",
                u.value, u.d, u.d_c, u.cos_mean
            );
        }
        if let Some(r) = self.null_norm_ratio {
            let _ = writeln!(s, "null    norm ratio pruned/dense {r:.4}");
        }
        for c in &self.checks {
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

    fn verdict(&self) -> Option<String> {
        Some(if self.passed { "PASSED" } else { "FAILED" }.into())
    }
}
