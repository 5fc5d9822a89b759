//! ONNX Runtime, in three steps a caller can take apart: `locate` finds the shared library,
//! `load` loads it once per process, and `session` builds sessions with the configuration a job
//! carries in a [`Sessions`] value passed to everything that runs a model. `tensors` holds what
//! crosses a session's edges: inputs made from token ids and f32 copies of outputs.
//!
//! We link ONNX Runtime dynamically (`ort` with `load-dynamic`) because the `onnxruntime` /
//! `onnxruntime-gpu` Python wheels are the one distribution users reliably have, and they carry
//! the CUDA/TensorRT provider libraries.

mod load;
mod locate;
mod session;
mod tensors;

pub use load::Runtime;
pub use locate::{locate, Located, INSTALL_HINT};
pub use session::{available_memory, run_f32, Input, Prepack, Provider, RuntimeConfig, Sessions};
pub use tensors::{activations, feeds, value_bytes, Activations, Projection};
