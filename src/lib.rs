//! skrr-onnx: Skip and Re-use (Skrr, ICML 2025) for ONNX text encoders.
//!
//! The modules follow the data flow of the compiler (docs/architecture.md; a module imports
//! only modules before it, checked by tests/dependency_rule.rs):
//! format (`onnx`) → `runtime` → read (`model_io`) → `graph` → `ops` → `loadable` → `blocks` →
//! `action` → `calibrate` → `compensate` → `plan` → `search` → `rewrite` → `apply` →
//! `fidelity` → jobs (`pipeline`; `diffusers`, a pipeline folder: one job per text encoder it
//! prunes) → `report` → the command line (`commands`, `cli`).

pub mod action;
pub mod apply;
pub mod blocks;
pub mod calibrate;
pub mod cli;
pub mod commands;
pub mod compensate;
pub mod diffusers;
pub mod error;
pub mod fidelity;
pub mod graph;
pub mod interrupt;
pub mod loadable;
pub mod model_io;
pub mod onnx;
pub mod ops;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod report;
pub mod rewrite;
pub mod runtime;
pub mod search;
