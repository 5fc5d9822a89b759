//! `skrr-onnx convert IN OUT`: re-save a model, moving weights into or out of external data.
//! Useful on its own (split a model that is too big to edit, or bundle one into a single file)
//! and the simplest end-to-end exercise of the model reader and writer.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use crate::cli::Context;
use crate::commands::ExternalDataArgs;
use crate::model_io::{read_model, write_model};

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The model to read (.onnx; its external data files are found beside it).
    pub input: PathBuf,
    /// Where to write the model (written whole or not at all; never over the input).
    pub output: PathBuf,
    #[command(flatten)]
    pub data: ExternalDataArgs,
}

pub fn run(args: &ConvertArgs, ctx: &Context) -> Result<()> {
    let model = read_model(&args.input)?;
    let opts = args.data.write_options();
    let report = write_model(&model.proto, &model.weights, &args.output, &opts)?;
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "input": model.path, "written": report }))?
        );
    } else {
        println!(
            "wrote {} ({} bytes, {} tensors inline)",
            report.model_path.display(),
            report.model_bytes,
            report.inline_tensors
        );
        if let Some(p) = &report.data_path {
            println!(
                "  data {} ({} bytes, {} tensors)",
                p.display(),
                report.data_bytes,
                report.external_tensors
            );
        }
    }
    Ok(())
}
