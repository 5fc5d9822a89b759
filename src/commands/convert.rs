//! `skrr-onnx convert IN OUT`: re-save a model, moving weights into or out of external data.
//! Useful on its own (split a model that is too big to edit, or bundle one into a single file)
//! and the simplest end-to-end exercise of the model reader and writer.

use std::path::PathBuf;

use anyhow::Result;

use crate::commands::args::ExternalDataArgs;
use crate::commands::Context;
use crate::model_io::{read_model, write_model};
use crate::report::{self, subcommands::ConvertReport};

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
    let written = write_model(
        &model.proto,
        &model.weights,
        &args.output,
        &args.data.write_options(),
    )?;
    let input = model.path.clone();
    report::emit(&ConvertReport { input, written }, ctx.json)
}
