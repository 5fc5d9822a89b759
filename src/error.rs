//! Errors a caller must react to, and the process exit code each maps to.
//!
//! Exit codes are part of the interface (documented in docs/reliability.md): pipelines branch on
//! them, so a class of failure keeps its code.

use std::path::PathBuf;

/// Process exit codes.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A comparison ran but the pruned model is outside tolerance (Polygraphy convention).
    pub const FAILED_CHECK: i32 = 1;
    /// Bad command line or configuration.
    pub const USAGE: i32 = 2;
    /// The input model (or a file it references) is malformed, unsafe or unsupported.
    pub const BAD_MODEL: i32 = 3;
    /// Calibration input, plan or projection file is malformed or does not fit the model.
    pub const BAD_INPUT: i32 = 4;
    /// ONNX Runtime is missing or failed.
    pub const RUNTIME: i32 = 5;
    /// Writing the output failed (nothing was left behind).
    pub const OUTPUT: i32 = 6;
    /// Anything else (a bug: please report it).
    pub const INTERNAL: i32 = 70;
}

/// Typed errors; everything else travels as `anyhow::Error` with context.
#[derive(Debug, thiserror::Error)]
pub enum SkrrError {
    #[error("{path}: {msg}")]
    BadModel { path: PathBuf, msg: String },
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
    #[error("{path}: {msg}")]
    Output { path: PathBuf, msg: String },
    /// A fidelity check ran and failed its tolerances (the report was printed).
    #[error("{0}")]
    CheckFailed(String),
}

impl SkrrError {
    pub fn exit_code(&self) -> i32 {
        match self {
            SkrrError::BadModel { .. } => exit::BAD_MODEL,
            SkrrError::BadInput(_) => exit::BAD_INPUT,
            SkrrError::Usage(_) => exit::USAGE,
            SkrrError::Runtime(_) => exit::RUNTIME,
            SkrrError::Output { .. } => exit::OUTPUT,
            SkrrError::CheckFailed(_) => exit::FAILED_CHECK,
        }
    }
}

/// The exit code for any error chain: the first typed error found decides.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|e| e.downcast_ref::<SkrrError>().map(SkrrError::exit_code))
        .unwrap_or(exit::INTERNAL)
}
