//! `skrr-onnx doctor`: is ONNX Runtime usable here, and with which execution providers?
//! The first thing to run when a pipeline fails on a new machine.

use anyhow::Result;

use crate::commands::Context;
use crate::report;
use crate::report::subcommands::{DoctorNotFound, DoctorReport};
use crate::runtime::Sessions;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

pub fn run(_args: &DoctorArgs, ctx: &Context) -> Result<()> {
    let sessions = match Sessions::new(ctx.runtime) {
        Ok(sessions) => sessions,
        Err(e) => {
            let error = format!("{e:#}");
            report::emit(
                &DoctorNotFound {
                    found: false,
                    error,
                },
                ctx.json,
            )?;
            return Err(e);
        }
    };
    // Building a session builder registers the requested provider: the real test of usability.
    let provider_check = sessions.builder().map(drop);
    let rt = sessions.runtime;
    report::emit(
        &DoctorReport {
            found: true,
            library: rt.library.path.clone(),
            source: rt.library.source.clone(),
            version: rt.version.clone(),
            available_providers: rt.available_providers.clone(),
            provider: ctx.runtime.provider,
            provider_ok: provider_check.is_ok(),
            provider_error: provider_check.as_ref().err().map(|e| format!("{e:#}")),
        },
        ctx.json,
    )?;
    provider_check
}
