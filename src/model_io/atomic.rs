//! Whole-or-nothing output: files are written as temporaries beside their destination, synced,
//! and renamed into place, so a reader (or a crash) never sees a partial model.

use std::fs::{File, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

use crate::error::SkrrError;
use crate::interrupt::{self, Writing};

/// A file being written, not yet visible under its destination name. Dropping it (on any
/// error path) deletes the temporary.
pub(crate) struct Staged {
    tmp: NamedTempFile,
    dest: PathBuf,
    /// Declared after `tmp`, so dropped after the temporary is deleted: a Ctrl-C that arrived
    /// meanwhile ends the process only once nothing partial is left (see `crate::interrupt`).
    _writing: Writing,
}

impl Staged {
    /// Starts a temporary file in `dest`'s folder (same filesystem, so the rename is atomic),
    /// named `.<dest's name>.XXXXXX.tmp`.
    pub fn new(dest: &Path) -> Result<Self> {
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        Self::named(dest, &name)
    }

    /// Like [`new`](Self::new), with the temporary named `.<base>.XXXXXX.tmp`: a model's data
    /// file, whatever its final name, is staged as `.<model>.data.XXXXXX.tmp`, so the stale
    /// cleanup of the next write to that model finds it.
    pub fn named(dest: &Path, base: &str) -> Result<Self> {
        let dir = dest.parent().context("output path has no folder")?;
        let prefix = format!(".{base}.");
        remove_stale(dir, &prefix, TempKind::File);
        let writing = Writing::begin();
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(TMP_SUFFIX)
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        // Held until the process ends: tells a later run that this temporary is still in use.
        // SAFETY: flock on a file descriptor we own.
        unsafe { libc::flock(tmp.as_file().as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok(Staged {
            tmp,
            dest: dest.to_path_buf(),
            _writing: writing,
        })
    }

    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// Syncs the data and gives the file the destination's permissions (or the usual 0644;
    /// temporaries are created 0600).
    fn finish(&self) -> Result<()> {
        let mode = std::fs::metadata(&self.dest)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        self.file().set_permissions(Permissions::from_mode(mode))?;
        self.file()
            .sync_all()
            .with_context(|| format!("cannot sync {}", self.tmp.path().display()))
    }
}

const TMP_SUFFIX: &str = ".tmp";

/// What a temporary is: a file being written, or a folder being built (a pipeline folder).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TempKind {
    File,
    Folder,
}

/// Deletes temporaries of `kind` named `<prefix>*.tmp` in `dir` that no live process holds
/// locked: what a run killed by SIGKILL (or a power cut) left behind while writing the same
/// destination.
pub(crate) fn remove_stale(dir: &Path, prefix: &str, kind: TempKind) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir != (kind == TempKind::Folder)
            || !(name.starts_with(prefix) && name.ends_with(TMP_SUFFIX))
        {
            continue;
        }
        let path = e.path();
        let Ok(f) = File::open(&path) else { continue };
        let remove = || match kind {
            TempKind::File => std::fs::remove_file(&path),
            TempKind::Folder => std::fs::remove_dir_all(&path),
        };
        // SAFETY: flock on a file descriptor we own; the lock goes with `f`.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0
            && remove().is_ok()
        {
            log::warn!(
                "removed {}, left by an interrupted earlier run",
                path.display()
            );
        }
    }
}

/// Places the data file (if any) and then the model: a model never points at data that is not
/// there yet. The data file goes to a name nothing has (`persist_noclobber`: the caller chose a
/// free name, and a file that appeared there since is never overwritten), so the model's
/// rename is the one switch from the previous output to the new one. If the model cannot be
/// placed, the data file placed a moment before is removed again.
pub(crate) fn commit(data: Option<Staged>, model: Staged) -> Result<()> {
    if let Some(d) = &data {
        d.finish()?;
    }
    model.finish()?;
    interrupt::check()?;
    let dir = model.dest.parent().map(Path::to_path_buf);
    let sync_dir = || {
        if let Some(dir) = &dir {
            File::open(dir).and_then(|d| d.sync_all()).ok();
        }
    };
    let placed = match data {
        Some(d) => {
            let dest = d.dest.clone();
            d.tmp
                .persist_noclobber(&dest)
                .map_err(|e| e.error)
                .with_context(|| format!("cannot rename the data file into {}", dest.display()))?;
            // The data's name is durable before the model that reads it can be.
            sync_dir();
            crash_point("before-model-rename");
            Some(dest)
        }
        None => None,
    };
    let dest = model.dest.clone();
    if let Err(e) = model.tmp.persist(&dest) {
        if let Some(p) = &placed {
            let _ = std::fs::remove_file(p);
        }
        return Err(e.error)
            .with_context(|| format!("cannot rename the model into {}", dest.display()));
    }
    sync_dir();
    Ok(())
}

/// The variable naming a test-only crash point (docs/reliability.md).
const CRASH_VAR: &str = "SKRR_ONNX_TEST_CRASH";

/// Test-only fault injection: when `SKRR_ONNX_TEST_CRASH` is `sigkill-<point>`, the process
/// kills itself with SIGKILL at `point`, as `kill -9` or a power cut would, so that tests can
/// check the folder between the steps of a commit. Any other value does nothing.
pub(crate) fn crash_point(point: &str) {
    let Some(v) = std::env::var_os(CRASH_VAR) else {
        return;
    };
    if v.to_str().and_then(|v| v.strip_prefix("sigkill-")) == Some(point) {
        // SAFETY: plain syscalls on our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Writes a small file (a plan, a report) whole or not at all, with the same staging as models.
pub fn write_file(dest: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    check_output(dest)?;
    // A bare file name has an empty parent, which is no folder to stage in.
    let dest = match dest.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new(".").join(dest),
        _ => dest.to_path_buf(),
    };
    let refuse = |e: anyhow::Error| -> anyhow::Error {
        SkrrError::Output {
            path: dest.clone(),
            msg: format!("{e:#}"),
        }
        .into()
    };
    let staged = Staged::new(&dest).map_err(refuse)?;
    staged
        .file()
        .write_all(bytes)
        .map_err(|e| refuse(e.into()))?;
    commit(None, staged).map_err(refuse)
}

/// Refuses an output path whose folder does not exist or that names a folder, so that a
/// command can check its outputs before long work instead of failing at the end.
pub fn check_output(dest: &Path) -> Result<()> {
    let refuse = |msg: String| -> anyhow::Error {
        SkrrError::Output {
            path: dest.to_path_buf(),
            msg,
        }
        .into()
    };
    let dir = match dest.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(refuse("not a file path".into())),
    };
    if !dir.is_dir() {
        return Err(refuse(format!(
            "the folder {} does not exist",
            dir.display()
        )));
    }
    if dest.is_dir() {
        return Err(refuse("is a folder".into()));
    }
    // A read-only folder (or mount, or a full quota) would otherwise be found only when the
    // output is written, after a search that can take hours.
    tempfile::Builder::new()
        .prefix(".skrr-write-check.")
        .tempfile_in(dir)
        .map_err(|e| refuse(format!("cannot create files in {}: {e}", dir.display())))?;
    Ok(())
}

/// [`check_output`] for an output derived from `input` (a plan, a report, a pruned model):
/// also refuses `dest` when it names the input model itself (`what` names the output in the
/// message).
pub fn check_output_not_input(dest: &Path, input: &Path, what: &str) -> Result<()> {
    check_output(dest)?;
    if same_file(dest, input).unwrap_or(false) {
        return Err(SkrrError::Output {
            path: dest.to_path_buf(),
            msg: format!("refusing to write the {what} over the input model"),
        }
        .into());
    }
    Ok(())
}

/// Bytes an unprivileged writer can still use in the folder of `dest` (statvfs), if the system
/// says.
pub fn free_space(dest: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    (st.f_bavail as u64).checked_mul(st.f_frsize as u64)
}

/// Refuses the outputs of one run when two of them name the same file, or one names a file the
/// run reads (a report over the tokenizer, a plan over the pruned model): each would destroy
/// the other. `outputs` are (path, what it is); outputs must already pass [`check_output`].
pub fn check_outputs_apart(outputs: &[(&Path, &str)], reads: &[&Path]) -> Result<()> {
    // The file a path will name once written: its real folder and its name.
    let place = |p: &Path| -> Option<PathBuf> {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(dir.canonicalize().ok()?.join(p.file_name()?))
    };
    let clash = |a: &Path, b: &Path| {
        same_file(a, b).unwrap_or(false) || place(a).is_some_and(|pa| place(b) == Some(pa))
    };
    for (i, &(path, what)) in outputs.iter().enumerate() {
        let refuse = |msg: String| -> anyhow::Error {
            SkrrError::Output {
                path: path.to_path_buf(),
                msg,
            }
            .into()
        };
        if let Some((_, other)) = outputs[..i].iter().find(|(o, _)| clash(path, o)) {
            return Err(refuse(format!(
                "the {what} and the {other} would be the same file"
            )));
        }
        if let Some(read) = reads.iter().find(|r| clash(path, r)) {
            return Err(refuse(format!(
                "refusing to write the {what} over {}, which this run reads",
                read.display()
            )));
        }
    }
    Ok(())
}

/// Whether two paths name the same file (same device and inode, so hard links and symlinks
/// count). A path that does not exist is the same as nothing.
pub(crate) fn same_file(a: &Path, b: &Path) -> io::Result<bool> {
    let (ma, mb) = match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) => (ma, mb),
        (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn write_file_replaces_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plan.json");
        write_file(&p, b"first version, longer").unwrap();
        write_file(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_file(&dir.path().join("missing/plan.json"), b"x").is_err());
    }

    #[test]
    fn dropped_stage_leaves_nothing_and_commit_places_both() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        let data = dir.path().join("m.onnx.data");
        {
            let s = Staged::new(&model).unwrap();
            s.file().write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let m = Staged::new(&model).unwrap();
        let d = Staged::new(&data).unwrap();
        m.file().write_all(b"model").unwrap();
        d.file().write_all(b"data").unwrap();
        commit(Some(d), m).unwrap();
        assert_eq!(std::fs::read(&model).unwrap(), b"model");
        assert_eq!(std::fs::read(&data).unwrap(), b"data");
        assert_eq!(
            std::fs::metadata(&model).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

        let link = dir.path().join("hard");
        std::fs::hard_link(&model, &link).unwrap();
        assert!(same_file(&model, &link).unwrap());
        assert!(!same_file(&model, &data).unwrap());
        assert!(!same_file(&model, &dir.path().join("nothing")).unwrap());
    }
}
