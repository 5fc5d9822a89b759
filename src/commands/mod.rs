//! One file per subcommand; `dispatch` maps a parsed [`Command`] to its `run`.

use anyhow::Result;

use crate::cli::{Command, Context};

pub mod apply;
pub mod args;
pub mod compare;
pub mod convert;
pub mod doctor;
pub mod inspect;
pub mod plan;
pub mod run;
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
