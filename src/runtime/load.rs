//! Loading ONNX Runtime: once per process, because `ort` binds the library process-wide. This is
//! the one global of the runtime; how sessions are built is not global (see `session`).

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::Result;

use super::locate::{locate, Located, INSTALL_HINT};
use super::session::Provider;
use crate::error::SkrrError;

/// The loaded runtime; one per process.
pub struct Runtime {
    pub library: Located,
    /// ONNX Runtime's own version string, e.g. "1.32.0".
    pub version: String,
    /// Providers this build of ONNX Runtime was compiled with (not necessarily usable: CUDA may
    /// be listed while no GPU or CUDA library is present).
    pub available_providers: Vec<String>,
    pub(super) env: ort::environment::Environment,
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

impl Runtime {
    /// The loaded runtime, loading it on first use; a failure is remembered, so every caller
    /// gets the same message.
    pub fn get() -> Result<&'static Runtime> {
        RUNTIME
            .get_or_init(|| load().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|msg| SkrrError::Runtime(msg.clone()).into())
    }

    /// Whether this ONNX Runtime build lists every provider `provider` needs.
    pub fn supports(&self, provider: Provider) -> bool {
        provider
            .ort_names()
            .iter()
            .all(|n| self.available_providers.iter().any(|a| a == n))
    }
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
