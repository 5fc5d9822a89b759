//! What each command tells its user, and the one way it reaches stdout.
//!
//! The library's jobs return typed reports and print nothing; a command hands its report to
//! [`emit`], which writes either the text rendering (this module's submodules, one per report)
//! or the report's own JSON (`--json`), then the one-line verdict where the report has one (on
//! stdout after the text; on stderr beside JSON, so that stdout stays one JSON document).
//! A write to a closed stdout (`skrr-onnx inspect m.onnx | head`) is an I/O error like any
//! other here; `main` alone decides that it means success ([`is_broken_pipe`]).

pub mod apply;
pub mod fidelity;
pub mod folder;
pub mod inspect;
pub mod run;
pub mod subcommands;

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

/// A report that has a human-readable form besides its JSON.
pub trait Render: Serialize {
    /// The text, one or more lines each ending with a newline.
    fn text(&self) -> String;
    /// The final one-line verdict (PASSED / FAILED / DONE ...), if the report has one.
    fn verdict(&self) -> Option<String> {
        None
    }
}

/// Writes `report` to stdout as text or as pretty JSON.
pub fn emit<R: Render>(report: &R, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
        out.flush()?;
        if let Some(v) = report.verdict() {
            eprintln!("{v}");
        }
    } else {
        out.write_all(report.text().as_bytes())?;
        if let Some(v) = report.verdict() {
            writeln!(out, "{v}")?;
        }
        out.flush()?;
    }
    Ok(())
}

/// Whether `err` is a write to a closed pipe: the reader stopped early, which is not a failure
/// of the command (ripgrep's rule).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_told_apart_through_context() {
        let pipe: anyhow::Error =
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "closed").into();
        assert!(is_broken_pipe(&pipe.context("writing the report")));
        let other: anyhow::Error =
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no").into();
        assert!(!is_broken_pipe(&other));
        assert!(!is_broken_pipe(&anyhow::anyhow!("broken pipe")));
    }
}
