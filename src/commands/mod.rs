//! One file per command: its clap arguments, converted into the library's job, and the report
//! rendered (`report::emit`). `cli` lists them and dispatches.

use crate::runtime::RuntimeConfig;

pub mod apply;
pub mod args;
pub mod compare;
pub mod convert;
pub mod doctor;
pub mod inspect;
pub mod plan;
pub mod run;
pub mod score;

/// What a command gets besides its own arguments: the global flags.
#[derive(Clone, Debug)]
pub struct Context {
    pub json: bool,
    pub runtime: RuntimeConfig,
}
