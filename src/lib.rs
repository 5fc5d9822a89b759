//! skrr-onnx: Skip and Re-use (Skrr, ICML 2025) for ONNX text encoders.
//!
//! The modules follow the data flow of the compiler:
//! read (`model_io`) → graph (`graph`) → blocks (`blocks`) → calibrate (`calibrate`) →
//! compensate (`compensate`) → search (`search`) → plan (`plan`) → rewrite (`rewrite`) →
//! write (`model_io`) → report (`fidelity`). A diffusers pipeline folder goes through the same
//! flow once per text encoder it prunes (`diffusers`).

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
