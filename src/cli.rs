//! The command line: global flags, the main job (`skrr-onnx IN OUT --sparsity S`, run when no
//! subcommand is given) and the list of subcommands.
//!
//! Adding a subcommand `foo`: write `src/commands/foo.rs` with `pub struct FooArgs` (clap
//! `Args`) and `pub fn run(args: &FooArgs, ctx: &Context) -> anyhow::Result<()>`, then add one
//! variant to [`Command`] below and one line to `Command::run`.

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::commands::{self, Context};
use crate::runtime::{Provider, RuntimeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "skrr-onnx",
    version,
    about = "Skip and Re-use (Skrr) compiler for ONNX text encoders",
    long_about = "Skip and Re-use (Skrr) compiler for ONNX text encoders.\n\n\
                  skrr-onnx IN OUT --sparsity S calibrates IN on prompts, searches which \
                  sub-blocks to skip or re-use, writes the pruned model to OUT and compares it \
                  with IN on held-out prompts. The subcommands run each step alone.",
    // Clap's generated line shows IN and OUT before a subcommand too, where they are refused.
    override_usage = "skrr-onnx [OPTIONS] --sparsity <SPARSITY> <INPUT> <OUTPUT>\n       \
                      skrr-onnx [GLOBAL OPTIONS] <COMMAND> [ARGS]",
    subcommand_negates_reqs = true,
    subcommand_precedence_over_arg = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The main job, when no subcommand is given.
    #[command(flatten)]
    pub run: Box<commands::run::RunArgs>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// `Cli::parse`, refusing main-job arguments given together with a subcommand. Clap accepts
    /// them before the subcommand's name and they would be silently ignored: `skrr-onnx
    /// --min-cos 0.99 compare A B` would gate on the default 0.9.
    pub fn parse_checked() -> Self {
        let mut cmd = Self::command();
        let matches = cmd.get_matches_mut();
        if let Some((name, _)) = matches.subcommand() {
            let stray: Vec<String> = cmd
                .get_arguments()
                .filter(|a| !a.is_global_set())
                .filter(|a| {
                    matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
                })
                .map(|a| match a.get_long() {
                    Some(long) => format!("--{long}"),
                    None => format!("<{}>", a.get_id().as_str().to_uppercase()),
                })
                .collect();
            if !stray.is_empty() {
                cmd.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "{} {} to the main job (skrr-onnx IN OUT --sparsity S) and cannot be \
                         given with the subcommand '{name}'; options of '{name}' go after its name",
                        stray.join(", "),
                        if stray.len() == 1 {
                            "belongs"
                        } else {
                            "belong"
                        }
                    ),
                )
                .exit();
            }
        }
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Flags every subcommand accepts (before or after the subcommand name).
#[derive(Clone, Debug, Args)]
pub struct GlobalArgs {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// ONNX Runtime execution provider; an unavailable one is an error, never a CPU fallback.
    #[arg(long, value_enum, default_value_t = Provider::Cpu, global = true)]
    pub provider: Provider,
    /// ONNX Runtime intra-op threads (default: one per core).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fidelity of a pruned model vs its dense original on held-out prompts (PASSED/FAILED).
    Compare(Box<commands::compare::CompareArgs>),
    /// Re-save a model: move weights into external data (--external-data) or inline (--inline).
    Convert(commands::convert::ConvertArgs),
    /// Apply a plan file to a model: write the pruned model (atomic, weights streamed).
    Apply(commands::apply::ApplyArgs),
    /// Show where ONNX Runtime was found, its version and execution providers.
    Doctor(commands::doctor::DoctorArgs),
    /// Show the encoder's layers and attention / feed-forward sub-blocks with their parameter
    /// counts, as block detection finds them.
    Inspect(commands::inspect::InspectArgs),
    /// Discrepancy D (D_c + D_null) of a plan on calibration prompts.
    Score(commands::score::ScoreArgs),
    /// Search a Skrr plan (or a baseline's) for a target sparsity and write the plan file.
    Plan(Box<commands::plan::PlanArgs>),
}

impl GlobalArgs {
    pub fn context(&self) -> Context {
        Context {
            json: self.json,
            runtime: RuntimeConfig {
                provider: self.provider,
                threads: self.threads.map(usize::from),
                ..RuntimeConfig::default()
            },
        }
    }

    /// The log filter for `-v` counts (warnings only by default).
    pub fn log_level(&self) -> log::LevelFilter {
        match self.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    }
}

impl Command {
    pub fn run(&self, ctx: &Context) -> anyhow::Result<()> {
        match self {
            Command::Apply(args) => commands::apply::run(args, ctx),
            Command::Compare(args) => commands::compare::run(args, ctx),
            Command::Convert(args) => commands::convert::run(args, ctx),
            Command::Doctor(args) => commands::doctor::run(args, ctx),
            Command::Inspect(args) => commands::inspect::run(args, ctx),
            Command::Score(args) => commands::score::run(args, ctx),
            Command::Plan(args) => commands::plan::run(args, ctx),
        }
    }
}
