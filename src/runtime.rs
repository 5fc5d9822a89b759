//! ONNX Runtime: finding the shared library, loading it once per process, and building sessions
//! on the execution provider the user asked for.
//!
//! We link ONNX Runtime dynamically (`ort` with `load-dynamic`) because the `onnxruntime` /
//! `onnxruntime-gpu` Python wheels are the one distribution users reliably have, and they carry
//! the CUDA/TensorRT provider libraries. The library is searched in a fixed, documented order (see
//! [`locate`]); a user who asked for CUDA or TensorRT gets that provider or an error, never a
//! silent CPU fallback.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use anyhow::Result;
use half::f16;
use ndarray::{ArrayD, ArrayViewD};
use ort::ep::ExecutionProviderDispatch;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::error::SkrrError;

/// What to tell a user who has no ONNX Runtime.
pub const INSTALL_HINT: &str = "pip install onnxruntime (or onnxruntime-gpu for CUDA/TensorRT), \
     or set ORT_DYLIB_PATH=/path/to/libonnxruntime.so.X";

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

/// Where the shared library was found and by which rule.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Located {
    pub path: PathBuf,
    /// e.g. "ORT_DYLIB_PATH", "python package (python3)", "system library path".
    pub source: String,
}

/// The loaded runtime; one per process.
pub struct Runtime {
    pub library: Located,
    /// ONNX Runtime's own version string, e.g. "1.32.0".
    pub version: String,
    /// Providers this build of ONNX Runtime was compiled with (not necessarily usable: CUDA may
    /// be listed while no GPU or CUDA library is present).
    pub available_providers: Vec<String>,
    env: ort::environment::Environment,
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
static CONFIG: OnceLock<RuntimeConfig> = OnceLock::new();

/// Loads ONNX Runtime (once per process) and records `config` as the process-wide configuration
/// used by [`session_builder`]. Calling it again with a different configuration is an error,
/// because sessions already built would silently disagree with later ones.
pub fn init(config: &RuntimeConfig) -> Result<&'static Runtime> {
    let current = CONFIG.get_or_init(|| *config);
    if current != config {
        return Err(SkrrError::Usage(format!(
            "ONNX Runtime already initialized with {current:?}, cannot switch to {config:?}"
        ))
        .into());
    }
    runtime()
}

/// The loaded runtime, loading it on first use.
pub fn runtime() -> Result<&'static Runtime> {
    RUNTIME
        .get_or_init(|| load().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|msg| SkrrError::Runtime(msg.clone()).into())
}

fn load() -> Result<Runtime> {
    let library = locate()?;
    ort::init_from(&library.path)
        .map_err(|e| {
            SkrrError::Runtime(format!(
                "cannot load ONNX Runtime from {} (found via {}): {e}; {INSTALL_HINT}",
                library.path.display(),
                library.source
            ))
        })?
        .with_name("skrr-onnx")
        .with_telemetry(false)
        .with_logger(Arc::new(forward_ort_log))
        .build()
        .map_err(|e| SkrrError::Runtime(format!("cannot create the ONNX Runtime environment: {e}")))
        .map(|env| {
            env.set_log_level(ort_level_for(log::max_level()));
            let version = library_version(&library.path).unwrap_or_else(|| "unknown".into());
            log::info!(
                "ONNX Runtime {version} from {} ({})",
                library.path.display(),
                library.source
            );
            Runtime {
                available_providers: available_providers(),
                library,
                version,
                env,
            }
        })
        .map_err(Into::into)
}

/// The ONNX Runtime level whose messages `forward_ort_log` would show at our `max` level: ONNX
/// Runtime formats every message at or above its level, which at Verbose slows session creation.
fn ort_level_for(max: log::LevelFilter) -> ort::logging::LogLevel {
    use ort::logging::LogLevel as L;
    match max {
        log::LevelFilter::Trace => L::Verbose,
        log::LevelFilter::Debug => L::Info,
        log::LevelFilter::Info => L::Warning,
        _ => L::Error,
    }
}

/// ONNX Runtime's log lines go through our logger, so `-v` shows them and default runs stay quiet.
fn forward_ort_log(
    level: ort::logging::LogLevel,
    category: &str,
    _id: &str,
    location: &str,
    msg: &str,
) {
    use ort::logging::LogLevel as L;
    let level = match level {
        L::Verbose => log::Level::Trace,
        L::Info => log::Level::Debug,
        L::Warning => log::Level::Info,
        L::Error | L::Fatal => log::Level::Warn,
    };
    log::log!(target: "onnxruntime", level, "[{category}] {msg} ({location})");
}

/// Version string reported by the library itself (`OrtGetApiBase()->GetVersionString()`), read
/// from the already loaded library so that it is the version actually in use.
fn library_version(path: &Path) -> Option<String> {
    let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: RTLD_NOLOAD only returns a handle to a library this process already loaded (ort
    // loaded it); the symbol has the documented C signature of the ONNX Runtime API.
    unsafe {
        let handle = libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let sym = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        let version = if sym.is_null() {
            None
        } else {
            let get_base: unsafe extern "C" fn() -> *const ort::sys::OrtApiBase =
                std::mem::transmute(sym);
            let base = get_base();
            if base.is_null() {
                None
            } else {
                let v = ((*base).GetVersionString)();
                (!v.is_null()).then(|| CStr::from_ptr(v).to_string_lossy().into_owned())
            }
        };
        libc::dlclose(handle);
        version
    }
}

fn available_providers() -> Vec<String> {
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // SAFETY: documented C API; the list is released with the matching call below.
    unsafe {
        if ort::Error::result_from_status((api.GetAvailableProviders)(&mut list, &mut n)).is_err()
            || list.is_null()
        {
            return Vec::new();
        }
        let names = (0..n as isize)
            .map(|i| {
                CStr::from_ptr(*list.offset(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let _ = ort::Error::result_from_status((api.ReleaseAvailableProviders)(list, n));
        names
    }
}

/// Finds `libonnxruntime`, in this order:
/// 1. `ORT_DYLIB_PATH` (if set, it must exist: an explicit choice is never second-guessed);
/// 2. the `onnxruntime` / `onnxruntime-gpu` Python package (`onnxruntime/capi/libonnxruntime.so.*`)
///    in the Python environment this executable is installed in (pip's wheel), then in the
///    site-packages of `SKRR_PYTHON`, `python3`, `python`, of an active or nearby `.venv`, of
///    `~/.local/lib/python3*`, and of the system Python;
/// 3. system library paths (`LD_LIBRARY_PATH`, `ldconfig -p`, /usr/local/lib, /usr/lib).
pub fn locate() -> Result<Located, SkrrError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        return if path.is_file() {
            Ok(Located {
                path,
                source: "ORT_DYLIB_PATH".into(),
            })
        } else {
            Err(SkrrError::Runtime(format!(
                "ORT_DYLIB_PATH={} is not a file; {INSTALL_HINT}",
                path.display()
            )))
        };
    }
    let mut searched: Vec<String> = vec!["ORT_DYLIB_PATH (unset)".into()];
    for (dir, source) in python_site_dirs() {
        let capi = dir.join("onnxruntime").join("capi");
        if let Some(path) = newest_lib(&capi) {
            warn_if_mixed_runtimes(&dir);
            return Ok(Located { path, source });
        }
        searched.push(capi.display().to_string());
    }
    for dir in system_lib_dirs() {
        if let Some(path) = newest_lib(&dir) {
            return Ok(Located {
                path,
                source: "system library path".into(),
            });
        }
        searched.push(dir.display().to_string());
    }
    searched.dedup();
    Err(SkrrError::Runtime(format!(
        "ONNX Runtime library (libonnxruntime.so) not found; {INSTALL_HINT} (searched: {})",
        searched.join(", ")
    )))
}

/// Site-packages directories to look into, best first, each with a description of the rule.
fn python_site_dirs() -> Vec<(PathBuf, String)> {
    let mut dirs: Vec<(PathBuf, String)> = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map(|exe| installed_site_dirs(&exe))
        .unwrap_or_default();
    let mut interpreters: Vec<String> = Vec::new();
    if let Some(p) = std::env::var_os("SKRR_PYTHON").filter(|p| !p.is_empty()) {
        interpreters.push(p.to_string_lossy().into_owned());
    }
    interpreters.extend(["python3".to_string(), "python".to_string()]);
    // Asking the interpreter for its site directories (without importing onnxruntime) costs a
    // few tens of milliseconds and finds pyenv, conda and venv installs alike.
    const ASK: &str = "import site, sys\nfor d in site.getsitepackages() + [site.getusersitepackages()]: print(d)";
    for py in &interpreters {
        if let Ok(out) = Command::new(py)
            .args(["-c", ASK])
            .stderr(std::process::Stdio::null())
            .output()
        {
            if out.status.success() {
                for line in String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                {
                    dirs.push((PathBuf::from(line), format!("python package ({py})")));
                }
            }
        }
    }
    let mut venvs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        venvs.push(PathBuf::from(v));
    }
    // A `.venv` in the working directory or above, or above the executable (target/release/..).
    let mut starts: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
    starts.extend(
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf)),
    );
    for start in starts {
        venvs.extend(
            start
                .ancestors()
                .map(|a| a.join(".venv"))
                .filter(|v| v.is_dir()),
        );
    }
    for venv in venvs {
        for d in glob_dirs(&venv.join("lib"), "python3", "site-packages") {
            dirs.push((d, format!("python package (venv {})", venv.display())));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        for d in glob_dirs(
            &PathBuf::from(home).join(".local/lib"),
            "python3",
            "site-packages",
        ) {
            dirs.push((d, "python package (user site-packages)".into()));
        }
    }
    dirs.push((
        PathBuf::from("/usr/lib/python3/dist-packages"),
        "python package (system)".into(),
    ));
    for d in glob_dirs(Path::new("/usr/local/lib"), "python3", "dist-packages")
        .into_iter()
        .chain(glob_dirs(
            Path::new("/usr/local/lib"),
            "python3",
            "site-packages",
        ))
    {
        dirs.push((d, "python package (system)".into()));
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|(d, _)| seen.insert(d.clone()));
    dirs
}

/// Site-packages of the Python environment whose scripts folder holds `exe`, each with its rule.
///
/// pip installs the wheel's binary into `PREFIX/bin` (a venv, conda, `--prefix`, or `~/.local/bin`
/// with `--user`) and its `onnxruntime` dependency into `PREFIX/lib*/python3.X/site-packages`
/// (`dist-packages` for Debian's system pip), or, with `--target DIR`, into `DIR` itself beside
/// `DIR/bin`. Looking there first makes an installed `skrr-onnx` run by its path, with no
/// environment activated and nothing set, use the runtime its own install brought rather than
/// whichever `python3` is first on PATH. `exe` is canonical, so a pipx or `uv tool` link on PATH
/// leads to the environment it points into.
fn installed_site_dirs(exe: &Path) -> Vec<(PathBuf, String)> {
    let Some(prefix) = exe.parent().and_then(Path::parent) else {
        return Vec::new();
    };
    let source = format!(
        "python environment of this executable ({})",
        prefix.display()
    );
    let mut dirs = Vec::new();
    for lib in ["lib", "lib64"] {
        for leaf in ["site-packages", "dist-packages"] {
            dirs.extend(glob_dirs(&prefix.join(lib), "python3", leaf));
        }
    }
    dirs.push(prefix.to_path_buf());
    dirs.into_iter().map(|d| (d, source.clone())).collect()
}

/// Warns when several ONNX Runtime distributions (`onnxruntime`, `onnxruntime-gpu`, ...) are
/// installed in `site`: they all unpack into the one `onnxruntime/` folder, so its library is
/// whichever was installed last, and uninstalling either leaves the folder broken.
fn warn_if_mixed_runtimes(site: &Path) {
    let found = runtime_distributions(site);
    if found.len() > 1 {
        log::warn!(
            "{}: several ONNX Runtime packages ({}) are installed there and share its \
             onnxruntime/ folder, whose library is the last one installed; keep one \
             (for CUDA: pip uninstall -y {} && pip install onnxruntime-gpu)",
            site.display(),
            found.join(", "),
            found.join(" ")
        );
    }
}

/// The distributions installed in `site` that own files in `onnxruntime/capi/` (by their
/// `RECORD`), by their normalized names (`onnxruntime`, `onnxruntime_gpu`), sorted. Packages that
/// only extend ONNX Runtime (`onnxruntime_extensions`) own none there.
fn runtime_distributions(site: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(site) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (dist, _version) = name.strip_suffix(".dist-info")?.split_once('-')?;
            let record = std::fs::read_to_string(e.path().join("RECORD")).ok()?;
            (dist.starts_with("onnxruntime")
                && record.lines().any(|l| l.starts_with("onnxruntime/capi/")))
            .then(|| dist.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `<root>/<prefix>*/<leaf>` directories.
fn glob_dirs(root: &Path, prefix: &str, leaf: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path().join(leaf))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

fn system_lib_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Ok(out) = Command::new("ldconfig")
        .arg("-p")
        .stderr(std::process::Stdio::null())
        .output()
    {
        // Lines look like: "\tlibonnxruntime.so.1 (libc6,x86-64) => /usr/lib/libonnxruntime.so.1"
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.trim_start().starts_with("libonnxruntime.so") {
                if let Some(dir) = line
                    .rsplit("=> ")
                    .next()
                    .and_then(|p| Path::new(p.trim()).parent())
                {
                    dirs.push(dir.to_path_buf());
                }
            }
        }
    }
    dirs.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
        ]
        .map(PathBuf::from),
    );
    dirs
}

/// The `libonnxruntime.so*` with the highest version in `dir`, if any.
fn newest_lib(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("libonnxruntime.so")?;
            // "" or ".1" or ".1.32.0"; skip e.g. libonnxruntime_providers_*.so.
            let version: Option<Vec<u64>> =
                rest.split('.').skip(1).map(|c| c.parse().ok()).collect();
            let path = e.path();
            (path.is_file() && (rest.is_empty() || rest.starts_with('.')))
                .then_some((version?, path))
        })
        .max()
        .map(|(_, p)| p)
}

impl Runtime {
    /// Whether this ONNX Runtime build lists every provider `provider` needs.
    pub fn supports(&self, provider: Provider) -> bool {
        provider
            .ort_names()
            .iter()
            .all(|n| self.available_providers.iter().any(|a| a == n))
    }

    /// A session builder for `config`: provider registered so that failure is an error,
    /// threads and graph optimization level set.
    pub fn session_builder(&self, config: &RuntimeConfig) -> Result<SessionBuilder> {
        let ort_err = |e: ort::Error<SessionBuilder>| {
            SkrrError::Runtime(format!("ONNX Runtime session options: {e}"))
        };
        let mut b = Session::builder(&self.env)
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
        if !self.supports(config.provider) {
            return Err(SkrrError::Runtime(format!(
                "execution provider {} is not available in ONNX Runtime {} at {} (it has: {}); \
                 install onnxruntime-gpu and point ORT_DYLIB_PATH at its libonnxruntime.so, or use --provider cpu",
                config.provider,
                self.version,
                self.library.path.display(),
                self.available_providers.join(", ")
            ))
            .into());
        }
        b = b.with_execution_providers(provider_dispatch(config.provider)).map_err(|e| {
            SkrrError::Runtime(format!(
                "cannot enable execution provider {} (ONNX Runtime {}): {e}; check the CUDA/cuDNN/TensorRT \
                 libraries and the GPU driver, or use --provider cpu",
                config.provider, self.version
            ))
        })?;
        Ok(b)
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

/// The process-wide configuration set by [`init`] (CPU defaults when `init` was never called).
pub fn config() -> RuntimeConfig {
    *CONFIG.get_or_init(RuntimeConfig::default)
}

/// A session builder with the process-wide configuration.
pub fn session_builder() -> Result<SessionBuilder> {
    runtime()?.session_builder(&config())
}

/// A session for the model file at `path`, with the process-wide configuration.
pub fn session_from_file(path: &Path) -> Result<Session> {
    session_builder()?.commit_from_file(path).map_err(|e| {
        SkrrError::Runtime(format!("ONNX Runtime cannot load {}: {e}", path.display())).into()
    })
}

/// A session for a serialized model held in memory (e.g. one partition of a model); `what` names
/// it in errors.
pub fn session_from_bytes(bytes: &[u8], what: &str) -> Result<Session> {
    session_builder()?
        .commit_from_memory(bytes)
        .map_err(|e| SkrrError::Runtime(format!("ONNX Runtime cannot load {what}: {e}")).into())
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

    #[test]
    fn newest_lib_prefers_highest_version_and_ignores_providers() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.32.0",
            "libonnxruntime_providers_shared.so",
            "libonnxruntime.so.1.24.1",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        assert_eq!(
            newest_lib(dir.path()).unwrap(),
            dir.path().join("libonnxruntime.so.1.32.0")
        );
        assert_eq!(newest_lib(&dir.path().join("missing")), None);
    }

    /// `error_on_failure` registration must refuse CUDA on a CPU-only ONNX Runtime build, not
    /// log and fall back to CPU.
    #[test]
    fn cuda_registration_failure_is_an_error() {
        let rt = match runtime() {
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
        let err = rt
            .session_builder(&RuntimeConfig {
                provider: Provider::Cuda,
                ..Default::default()
            })
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

    /// A binary in a venv's, a `--user` install's or a `--target` folder's `bin/` looks in the
    /// site-packages its install wrote, first: where the wheel's onnxruntime went.
    #[test]
    fn installed_site_dirs_follow_the_scripts_folder() {
        let root = tempfile::tempdir().unwrap();
        let venv = root.path().join("venv");
        let site = venv.join("lib/python3.11/site-packages");
        std::fs::create_dir_all(site.join("onnxruntime/capi")).unwrap();
        std::fs::create_dir_all(venv.join("lib/python3.12")).unwrap(); // no site-packages
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        let found = installed_site_dirs(&venv.join("bin/skrr-onnx"));
        let dirs: Vec<&PathBuf> = found.iter().map(|(d, _)| d).collect();
        assert_eq!(dirs, [&site, &venv]);
        assert!(found
            .iter()
            .all(|(_, s)| s
                == &format!("python environment of this executable ({})", venv.display())));

        // Debian's system pip: /usr/local/bin and /usr/local/lib/python3.X/dist-packages.
        let usr = root.path().join("usr/local");
        let dist = usr.join("lib/python3.11/dist-packages");
        std::fs::create_dir_all(&dist).unwrap();
        assert_eq!(installed_site_dirs(&usr.join("bin/skrr-onnx"))[0].0, dist);

        assert!(installed_site_dirs(Path::new("skrr-onnx")).is_empty());
    }

    #[test]
    fn runtime_distributions_names_each_package_once() {
        let site = tempfile::tempdir().unwrap();
        let lib = "onnxruntime/capi/libonnxruntime.so.1.32.0,sha256=x,1\n";
        for (dist, record) in [
            ("onnxruntime-1.32.0.dist-info", lib),
            ("onnxruntime_gpu-1.32.0.dist-info", lib),
            (
                "onnxruntime_extensions-0.14.0.dist-info",
                "onnxruntime_extensions/_ortcustomops.so,,\n",
            ),
            ("onnx-1.23.2.dist-info", "onnx/__init__.py,,\n"),
        ] {
            std::fs::create_dir_all(site.path().join(dist)).unwrap();
            std::fs::write(site.path().join(dist).join("RECORD"), record).unwrap();
        }
        std::fs::create_dir_all(site.path().join("onnxruntime/capi")).unwrap();
        assert_eq!(
            runtime_distributions(site.path()),
            ["onnxruntime", "onnxruntime_gpu"]
        );
        assert!(runtime_distributions(&site.path().join("missing")).is_empty());
    }

    #[test]
    fn glob_dirs_finds_versioned_site_packages() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("python3.11/site-packages")).unwrap();
        std::fs::create_dir_all(dir.path().join("python3.12")).unwrap();
        std::fs::create_dir_all(dir.path().join("perl5/site-packages")).unwrap();
        assert_eq!(
            glob_dirs(dir.path(), "python3", "site-packages"),
            vec![dir.path().join("python3.11/site-packages")]
        );
    }
}
