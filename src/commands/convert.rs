//! `skrr-onnx convert IN OUT`: re-save a model, moving weights into or out of external data.
//! Useful on its own (split a model that is too big to edit, or bundle one into a single file)
//! and the simplest end-to-end exercise of the model reader and writer.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use crate::cli::Context;
use crate::model_io::{read_model, write_model, ExternalData, WriteOptions};

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The model to read (.onnx; its external data files are found beside it).
    pub input: PathBuf,
    /// Where to write the model (written whole or not at all; never over the input).
    pub output: PathBuf,
    /// Store every tensor of 1 KiB or more in one external data file beside OUTPUT, named NAME
    /// (default: OUTPUT's file name + ".data"). Without this flag or --inline, external data is
    /// kept when the input had it or the model exceeds the 2 GB protobuf limit.
    #[arg(long, value_name = "NAME", num_args = 0..=1, require_equals = true, default_missing_value = "", conflicts_with = "inline")]
    pub external_data: Option<String>,
    /// Store every tensor inside the model file (fails above the 2 GB protobuf limit).
    #[arg(long)]
    pub inline: bool,
}

pub fn run(args: &ConvertArgs, ctx: &Context) -> Result<()> {
    let model = read_model(&args.input)?;
    let external = match (&args.external_data, args.inline) {
        (Some(name), _) => ExternalData::Always {
            file: Some(name.clone()).filter(|n| !n.is_empty()),
        },
        (None, true) => ExternalData::Never,
        (None, false) => ExternalData::Auto,
    };
    let opts = WriteOptions {
        external,
        ..WriteOptions::default()
    };
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
