//! Building sessions: the execution provider, threads, optimization level and pre-packing a job
//! asked for, carried by a [`Sessions`] value that every session user is handed, so a job never
//! mixes configurations and tests can build sessions of several configurations side by side.
//! A user who asked for CUDA or TensorRT gets that provider or an error, never a silent CPU
//! fallback.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use half::f16;
use ndarray::{ArrayD, ArrayViewD};
use ort::ep::ExecutionProviderDispatch;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::load::Runtime;
use crate::error::SkrrError;

/// Execution provider requested with `--provider`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[default]
    Cpu,
    Cuda,
    Tensorrt,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        })
    }
}

impl Provider {
    /// ONNX Runtime's names of the providers this choice needs, in registration order.
    /// TensorRT is paired with CUDA, as ONNX Runtime recommends, for the nodes TensorRT rejects.
    pub fn ort_names(self) -> &'static [&'static str] {
        match self {
            Provider::Cpu => &["CPUExecutionProvider"],
            Provider::Cuda => &["CUDAExecutionProvider"],
            Provider::Tensorrt => &["TensorrtExecutionProvider", "CUDAExecutionProvider"],
        }
    }
}

/// How sessions are built; comes from the global command-line flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub provider: Provider,
    /// Intra-op threads; `None` lets ONNX Runtime decide (one per core).
    pub threads: Option<usize>,
    /// ONNX Runtime graph optimizations. `All` is ONNX Runtime's default; callers that compare
    /// partial sessions against a whole model bit for bit may want `Disable`.
    pub optimization: GraphOptimizationLevel,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            provider: Provider::Cpu,
            threads: None,
            optimization: GraphOptimizationLevel::All,
        }
    }
}

/// Pre-packing trades memory (a packed copy of every MatMul weight) for speed (no re-packing on
/// each run). `Auto` takes it when the weights take at most a quarter of the available memory,
/// the share the stream cache gets by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Prepack {
    Auto,
    On,
    Off,
}

impl Prepack {
    /// Whether to pre-pack weights of `weight_bytes` in all.
    pub fn decide(self, weight_bytes: u64) -> bool {
        match self {
            Prepack::On => true,
            Prepack::Off => false,
            Prepack::Auto => available_memory().is_some_and(|avail| weight_bytes <= avail / 4),
        }
    }
}

/// MemAvailable of /proc/meminfo, in bytes.
pub fn available_memory() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })
}

/// The loaded runtime with the configuration every session of a job is built with.
#[derive(Clone, Copy)]
pub struct Sessions {
    pub runtime: &'static Runtime,
    pub config: RuntimeConfig,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("onnxruntime", &self.runtime.version)
            .field("config", &self.config)
            .finish()
    }
}

impl Sessions {
    /// Loads ONNX Runtime (once per process) and pairs it with `config`. The provider is checked
    /// when a session is built, so that `doctor` can describe a runtime that lacks it.
    pub fn new(config: RuntimeConfig) -> Result<Sessions> {
        Ok(Sessions {
            runtime: Runtime::get()?,
            config,
        })
    }

    /// A session builder for this configuration: provider registered so that failure is an error,
    /// threads and graph optimization level set.
    pub fn builder(&self) -> Result<SessionBuilder> {
        let (rt, config) = (self.runtime, &self.config);
        let ort_err = |e: ort::Error<SessionBuilder>| {
            SkrrError::Runtime(format!("ONNX Runtime session options: {e}"))
        };
        let mut b = Session::builder(&rt.env)
            .map_err(|e| {
                SkrrError::Runtime(format!(
                    "cannot create an ONNX Runtime session builder: {e}"
                ))
            })?
            .with_optimization_level(config.optimization)
            .map_err(ort_err)?;
        if let Some(n) = config.threads {
            b = b.with_intra_threads(n).map_err(ort_err)?;
        }
        if !rt.supports(config.provider) {
            return Err(SkrrError::Runtime(format!(
                "execution provider {} is not available in ONNX Runtime {} at {} (it has: {}); \
                 install onnxruntime-gpu and point ORT_DYLIB_PATH at its libonnxruntime.so, or use --provider cpu",
                config.provider,
                rt.version,
                rt.library.path.display(),
                rt.available_providers.join(", ")
            ))
            .into());
        }
        b = b.with_execution_providers(provider_dispatch(config.provider)).map_err(|e| {
            SkrrError::Runtime(format!(
                "cannot enable execution provider {} (ONNX Runtime {}): {e}; check the CUDA/cuDNN/TensorRT \
                 libraries and the GPU driver, or use --provider cpu",
                config.provider, rt.version
            ))
        })?;
        Ok(b)
    }

    /// A session for the model file at `path`.
    pub fn from_file(&self, path: &Path) -> Result<Session> {
        self.builder()?.commit_from_file(path).map_err(|e| {
            SkrrError::Runtime(format!("ONNX Runtime cannot load {}: {e}", path.display())).into()
        })
    }

    /// A session for a serialized model held in memory (e.g. one partition of a model); `what`
    /// names it in errors.
    pub fn from_bytes(&self, bytes: &[u8], what: &str) -> Result<Session> {
        self.builder()?
            .commit_from_memory(bytes)
            .map_err(|e| SkrrError::Runtime(format!("ONNX Runtime cannot load {what}: {e}")).into())
    }
}

/// Providers registered with `error_on_failure`: `ort` otherwise logs and falls back to CPU.
fn provider_dispatch(provider: Provider) -> Vec<ExecutionProviderDispatch> {
    let cuda = || ort::ep::CUDA::default().build().error_on_failure();
    match provider {
        Provider::Cpu => vec![ort::ep::CPU::default().build().error_on_failure()],
        Provider::Cuda => vec![cuda()],
        Provider::Tensorrt => vec![
            ort::ep::TensorRT::default().build().error_on_failure(),
            cuda(),
        ],
    }
}

/// A named input tensor, borrowed from the caller.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    I64(ArrayViewD<'a, i64>),
    I32(ArrayViewD<'a, i32>),
    F32(ArrayViewD<'a, f32>),
    F16(ArrayViewD<'a, f16>),
    Bool(ArrayViewD<'a, bool>),
}

impl<'a> Input<'a> {
    fn to_ort(&self) -> ort::Result<SessionInputValue<'_>> {
        Ok(match self {
            Input::I64(a) => TensorRef::from_array_view(a.view())?.into(),
            Input::I32(a) => TensorRef::from_array_view(a.view())?.into(),
            Input::F32(a) => TensorRef::from_array_view(a.view())?.into(),
            Input::F16(a) => TensorRef::from_array_view(a.view())?.into(),
            Input::Bool(a) => TensorRef::from_array_view(a.view())?.into(),
        })
    }
}

/// Runs `session` on named inputs and returns every output as f32 (fp16 outputs are widened
/// exactly), keyed by output name. Other output types are an error naming the output.
pub fn run_f32(
    session: &mut Session,
    inputs: &[(&str, Input<'_>)],
) -> Result<BTreeMap<String, ArrayD<f32>>> {
    let values = inputs
        .iter()
        .map(|(name, a)| a.to_ort().map(|v| (*name, v)))
        .collect::<ort::Result<Vec<_>>>()
        .map_err(|e| SkrrError::Runtime(format!("cannot pass inputs to ONNX Runtime: {e}")))?;
    let outputs = session
        .run(values)
        .map_err(|e| SkrrError::Runtime(format!("ONNX Runtime run failed: {e}")))?;
    let mut result = BTreeMap::new();
    for (name, value) in outputs.iter() {
        let array = match value.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                ..
            } => value.try_extract_array::<f32>()?.to_owned(),
            ValueType::Tensor {
                ty: TensorElementType::Float16,
                ..
            } => value.try_extract_array::<f16>()?.mapv(f32::from),
            other => {
                return Err(SkrrError::Runtime(format!(
                    "output {name} has type {other}, expected float or float16"
                ))
                .into())
            }
        };
        result.insert(name.to_string(), array);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `error_on_failure` registration must refuse CUDA on a CPU-only ONNX Runtime build, not
    /// log and fall back to CPU.
    #[test]
    fn cuda_registration_failure_is_an_error() {
        let rt = match Runtime::get() {
            Ok(rt) => rt,
            Err(e) => panic!("ONNX Runtime is needed for this test (run scripts/test.sh): {e:#}"),
        };
        if rt.supports(Provider::Cuda) {
            return; // a GPU build: registration may legitimately succeed here
        }
        let builder = Session::builder(&rt.env).unwrap();
        assert!(builder
            .with_execution_providers(provider_dispatch(Provider::Cuda))
            .is_err());
        let err = Sessions {
            runtime: rt,
            config: RuntimeConfig {
                provider: Provider::Cuda,
                ..Default::default()
            },
        }
        .builder()
        .err()
        .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("execution provider cuda is not available")
                && msg.contains("onnxruntime-gpu"),
            "{msg}"
        );
        assert_eq!(
            crate::error::exit_code_of(&err),
            crate::error::exit::RUNTIME
        );
    }
}
