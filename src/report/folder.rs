//! A pipeline folder's reports: the main job on it (a line for the pipeline, one block per
//! pruned encoder, what was carried over, the folder's verdict) and `inspect` of it (a table of
//! its text encoders).

use std::fmt::Write;
use std::path::Path;

use super::Render;
use crate::diffusers::{FolderReport, Listing, TokenizerFolder, MODEL_FILE};

impl Render for FolderReport {
    fn text(&self) -> String {
        let mut s = String::new();
        let pruned: Vec<&str> = self.encoders.iter().map(|e| e.name.as_str()).collect();
        let _ = writeln!(
            s,
            "pipeline {} ({}): text encoders {}; pruning {}{}",
            self.input.display(),
            self.pipeline,
            self.text_encoders.join(", "),
            pruned.join(", "),
            if self.largest { " (the largest)" } else { "" }
        );
        for e in &self.encoders {
            let _ = writeln!(
                s,
                "\nencoder {}{}: tokenizer {}, measured {} ({})",
                e.name,
                e.class
                    .as_deref()
                    .map_or(String::new(), |c| format!(" ({c})")),
                e.tokenizer
                    .as_deref()
                    .map_or("none".into(), |t| t.display().to_string()),
                e.measured.output,
                e.measured.reason
            );
            if let Some(w) = &e.measured.warning {
                let _ = writeln!(s, "warning {w}");
            }
            s.push_str(&e.relocated(&e.report.text()));
            let _ = writeln!(s, "{}", e.relocated(&e.report.verdict));
        }
        let c = &self.carried;
        let _ = writeln!(
            s,
            "\ncarried {} other files ({:.2} MB): {} hard-linked, {} copied",
            c.files,
            c.bytes as f64 / 1e6,
            c.linked,
            c.copied
        );
        s
    }

    fn verdict(&self) -> Option<String> {
        Some(self.verdict.clone())
    }
}

/// `inspect` of a pipeline folder (its JSON is the listing's own).
impl Render for Listing<'_> {
    fn text(&self) -> String {
        let p = self;
        let default = p.default_encoder;
        let rel = |path: &Path| -> String {
            path.strip_prefix(p.folder)
                .unwrap_or(path)
                .display()
                .to_string()
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} ({}): {} text encoder{}\n",
            p.folder.display(),
            p.pipeline,
            p.encoders.len(),
            if p.encoders.len() == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            s,
            "  {:<16} {:<30} {:>14} {:>14}  {:<28} measured",
            "encoder", "class", "parameters", "bytes", "tokenizer"
        );
        for e in p.encoders {
            let tokenizer = match &e.tokenizer {
                TokenizerFolder::Found { file } => rel(file.as_path()),
                TokenizerFolder::SlowOnly { folder } => {
                    format!("{}/ (no tokenizer.json)", rel(folder.as_path()))
                }
                TokenizerFolder::Missing { folder } => {
                    format!("{}/ missing", rel(folder.as_path()))
                }
            };
            let _ = writeln!(
                s,
                "{} {:<16} {:<30} {:>14} {:>14}  {:<28} {}",
                if e.name == default { "*" } else { " " },
                e.name,
                e.class.as_deref().unwrap_or("?"),
                e.params,
                e.file_bytes,
                tokenizer,
                e.measured.output
            );
        }
        let _ = writeln!(
            s,
            "\n* pruned by default (the largest by weight bytes); choose with --encoder NAME \
             (repeatable)"
        );
        for e in p.encoders {
            let data = e.files.len().saturating_sub(1);
            let _ = write!(s, "  {}: {}", e.name, rel(&e.model));
            if data > 0 {
                let _ = write!(
                    s,
                    " + {} data file{}",
                    data,
                    if data == 1 { "" } else { "s" }
                );
            }
            let _ = writeln!(s, "; measured {}: {}", e.measured.output, e.measured.reason);
            if let Some(w) = &e.measured.warning {
                let _ = writeln!(s, "    warning: {w}");
            }
        }
        for u in p.unreadable {
            let _ = writeln!(s, "  {}: cannot be read: {}", u.name, u.error);
        }
        if !p.without_model.is_empty() {
            let _ = writeln!(
                s,
                "  listed without a {MODEL_FILE}: {}",
                p.without_model.join(", ")
            );
        }
        s
    }
}
