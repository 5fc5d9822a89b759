//! `skrr-onnx inspect MODEL`: what block detection found, before anything is pruned. Reads only
//! the graph and tensor dims, never weight bytes, so it is quick on a multi-GB model.

use std::path::PathBuf;

use anyhow::Result;

use crate::blocks;
use crate::commands::Context;
use crate::model_io::read_model;
use crate::report::{self, inspect::InspectReport};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The ONNX text encoder (`.onnx`; external data is found beside it), or a diffusers
    /// pipeline folder (lists its text encoders).
    pub model: PathBuf,
}

pub fn run(args: &InspectArgs, ctx: &Context) -> Result<()> {
    if args.model.is_dir() {
        let pipeline = crate::diffusers::Pipeline::read(&args.model)?;
        return report::emit(&crate::diffusers::Listing::from(&pipeline), ctx.json);
    }
    let model = read_model(&args.model)?;
    let analysis = blocks::analyze_at(&model.proto, &args.model)?;
    crate::loadable::check_input(&model, &args.model)?;
    let norm = blocks::norm_position(&analysis)?;
    report::emit(
        &InspectReport {
            model: &args.model,
            analysis: &analysis,
            norm,
        },
        ctx.json,
    )
}
