//! `skrr-onnx doctor`: is ONNX Runtime usable here, and with which execution providers?
//! The first thing to run when a pipeline fails on a new machine.

use anyhow::Result;
use serde_json::json;

use crate::cli::Context;
use crate::runtime;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

pub fn run(_args: &DoctorArgs, ctx: &Context) -> Result<()> {
    let rt = match runtime::init(&ctx.runtime) {
        Ok(rt) => rt,
        Err(e) => {
            if ctx.json {
                println!("{}", json!({ "found": false, "error": format!("{e:#}") }));
            }
            return Err(e);
        }
    };
    // Building a session builder registers the requested provider: the real test of usability.
    let provider_check = rt.session_builder(&ctx.runtime).map(drop);
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "found": true,
                "library": rt.library.path,
                "source": rt.library.source,
                "version": rt.version,
                "available_providers": rt.available_providers,
                "provider": ctx.runtime.provider,
                "provider_ok": provider_check.is_ok(),
                "provider_error": provider_check.as_ref().err().map(|e| format!("{e:#}")),
            }))?
        );
    } else {
        println!("ONNX Runtime {}", rt.version);
        println!("  library:   {}", rt.library.path.display());
        println!("  found via: {}", rt.library.source);
        println!("  providers: {}", rt.available_providers.join(", "));
        let status = if provider_check.is_ok() {
            "ok"
        } else {
            "UNAVAILABLE"
        };
        println!("  requested: {} ({status})", ctx.runtime.provider);
    }
    provider_check
}
