//! One file per subcommand; `dispatch` maps a parsed [`Command`] to its `run`.

use anyhow::Result;

use crate::cli::{Command, Context};
use crate::model_io::{ExternalData, WriteOptions};

pub mod apply;
pub mod compare;
pub mod convert;
pub mod doctor;
pub mod folder;
pub mod inspect;
pub mod plan;
pub mod score;

pub fn dispatch(command: &Command, ctx: &Context) -> Result<()> {
    match command {
        Command::Apply(args) => apply::run(args, ctx),
        Command::Compare(args) => compare::run(args, ctx),
        Command::Convert(args) => convert::run(args, ctx),
        Command::Doctor(args) => doctor::run(args, ctx),
        Command::Inspect(args) => inspect::run(args, ctx),
        Command::Score(args) => score::run(args, ctx),
        Command::Plan(args) => plan::run(args, ctx),
    }
}

/// Where a written model's tensor data goes; the same flags on every command that writes one.
#[derive(Debug, Clone, clap::Args)]
pub struct ExternalDataArgs {
    /// Store every tensor of 1 KiB or more in one external data file beside OUTPUT, named NAME
    /// (default: OUTPUT's file name + ".data"), or NAME with a random tag before its extension
    /// when a file of that name exists (the data of the output being replaced stays whole until
    /// the new model is in place, and is then deleted if no other model in the folder reads it).
    /// Without this flag or --inline, external data is kept when the input had it or the model
    /// exceeds the 2 GB protobuf limit.
    #[arg(long, value_name = "NAME", num_args = 0..=1, require_equals = true, default_missing_value = "", conflicts_with = "inline")]
    pub external_data: Option<String>,
    /// Store every tensor inside the model file (fails above the 2 GB protobuf limit).
    #[arg(long)]
    pub inline: bool,
}

impl ExternalDataArgs {
    pub fn write_options(&self) -> WriteOptions {
        let external = match (&self.external_data, self.inline) {
            (Some(name), _) => ExternalData::Always {
                file: Some(name.clone()).filter(|n| !n.is_empty()),
            },
            (None, true) => ExternalData::Never,
            (None, false) => ExternalData::Auto,
        };
        WriteOptions {
            external,
            ..WriteOptions::default()
        }
    }
}
