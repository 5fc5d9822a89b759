//! Finding the ONNX Runtime shared library: `ORT_DYLIB_PATH`, then the Python environments that
//! may hold the `onnxruntime` wheel, then the system's library paths. Nothing here loads it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::SkrrError;

/// What to tell a user who has no ONNX Runtime.
pub const INSTALL_HINT: &str = "pip install onnxruntime (or onnxruntime-gpu for CUDA/TensorRT), \
     or set ORT_DYLIB_PATH=/path/to/libonnxruntime.so.X";

/// Where the shared library was found and by which rule.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Located {
    pub path: PathBuf,
    /// e.g. "ORT_DYLIB_PATH", "python package (python3)", "system library path".
    pub source: String,
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
