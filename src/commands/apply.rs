//! `skrr-onnx apply IN PLAN OUT`: apply a plan file to a model and write the smaller model
//! (`crate::apply`), atomically, weights streamed.

use std::path::PathBuf;

use anyhow::Result;

use crate::apply::{apply_file, ApplyJob};
use crate::commands::args::ExternalDataArgs;
use crate::commands::Context;
use crate::report;
use crate::rewrite::ReuseWeights;

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The model to prune (.onnx; external data is found beside it).
    pub input: PathBuf,
    /// The plan (JSON, from `skrr-onnx plan` or written by hand).
    pub plan: PathBuf,
    /// Where to write the pruned model (written atomically; never over the input).
    pub output: PathBuf,
    /// How re-used sub-blocks get their weights: shared with the source (stored once) or
    /// copied, for engines that cannot bind one weight to two layers.
    #[arg(long, value_enum, default_value_t = ReuseWeights::Share)]
    pub reuse_weights: ReuseWeights,
    #[command(flatten)]
    pub data: ExternalDataArgs,
}

pub fn run(args: &ApplyArgs, ctx: &Context) -> Result<()> {
    let report = apply_file(&ApplyJob {
        input: args.input.clone(),
        plan: args.plan.clone(),
        output: args.output.clone(),
        reuse_weights: args.reuse_weights,
        write: args.data.write_options(),
    })?;
    report::emit(&report, ctx.json)
}
