//! A pipeline folder written whole or not at all: built beside its destination under a
//! temporary name (`.<name>.XXXXXX.tmp`, as model_io names its temporary files), then renamed in
//! one step that never replaces anything. The folder exists for the whole run, searches
//! included, so it holds an interrupt guard the whole time: SIGINT/SIGTERM are then recorded,
//! the long phases (calibration engine, fidelity, copies) poll `interrupt::check` and unwind,
//! and dropping the stage deletes the folder before the signal ends the process.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::error::SkrrError;
use crate::interrupt::{self, Writing};
use crate::model_io::{remove_stale, TempKind};

const TMP_SUFFIX: &str = ".tmp";

/// What carrying the unchanged files cost.
#[derive(Debug, Default, Serialize)]
pub struct Carried {
    pub files: usize,
    pub bytes: u64,
    /// Hard links to the input's files: no bytes written.
    pub linked: usize,
    /// Copies: the file system refused a link, or the file is a text encoder's external data
    /// (skrr-onnx reads a data file only when it has one link).
    pub copied: usize,
}

/// How one file gets into the new folder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Carry {
    /// A hard link, or a copy where the file system cannot link.
    Link,
    Copy,
}

pub(crate) struct Stage {
    /// The temporary folder (absolute, its parent canonical).
    dir: PathBuf,
    dest: PathBuf,
    placed: bool,
    /// Held while the folder exists, so a later run knows it is not stale.
    _lock: File,
    /// Dropped last, after the folder is gone (see `crate::interrupt`).
    _writing: Writing,
}

/// Refuses a destination that cannot be written as a new folder: one that exists (the new
/// pipeline never replaces anything), or whose parent folder is missing or read-only.
pub(crate) fn check_destination(dest: &Path) -> Result<PathBuf> {
    let refuse = |msg: String| output_error(dest, msg);
    if dest.symlink_metadata().is_ok() {
        return Err(refuse(
            "already exists; the pipeline folder is written whole to a new path: remove it or \
             choose another"
                .into(),
        ));
    }
    let name = dest
        .file_name()
        .ok_or_else(|| refuse("not a folder path".into()))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent
        .canonicalize()
        .map_err(|e| refuse(format!("the folder {} is missing: {e}", parent.display())))?;
    tempfile::Builder::new()
        .prefix(".skrr-write-check.")
        .tempfile_in(&parent)
        .map_err(|e| refuse(format!("cannot create files in {}: {e}", parent.display())))?;
    Ok(parent.join(name))
}

/// Failures to write the new folder are output errors (exit 6), named by the path the file or
/// folder would have had.
fn output_error(path: &Path, msg: String) -> anyhow::Error {
    SkrrError::Output {
        path: path.to_path_buf(),
        msg,
    }
    .into()
}

impl Stage {
    /// Creates the temporary folder beside `dest` (which [`check_destination`] accepted),
    /// after removing those an earlier run killed by SIGKILL left for the same destination.
    pub fn new(dest: &Path) -> Result<Stage> {
        let full = check_destination(dest)?;
        let parent = full.parent().context("no parent folder")?;
        let prefix = format!(
            ".{}.",
            full.file_name().unwrap_or_default().to_string_lossy()
        );
        remove_stale(parent, &prefix, TempKind::Folder);
        let writing = Writing::begin();
        // Created as `mkdir` creates any folder (0777 less the umask), not 0700: it becomes the
        // pipeline folder.
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(TMP_SUFFIX)
            .permissions(std::fs::Permissions::from_mode(0o777))
            .tempdir_in(parent)
            .map_err(|e| {
                output_error(
                    dest,
                    format!("cannot create a folder in {}: {e}", parent.display()),
                )
            })?;
        let lock = File::open(dir.path())
            .with_context(|| format!("cannot open {}", dir.path().display()))?;
        // SAFETY: flock on a file descriptor we own.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok(Stage {
            dir: dir.keep(),
            dest: dest.to_path_buf(),
            placed: false,
            _lock: lock,
            _writing: writing,
        })
    }

    /// The temporary folder: what the finished one's paths read before the rename.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Puts the file at `from` into the folder at `rel`, linked or copied, and counts it. A
    /// symbolic link is followed: the new folder holds the file (a Hugging Face
    /// cache snapshot's links point into its `blobs/`, which the new folder does not have).
    pub fn carry(&self, from: &Path, rel: &Path, how: Carry, carried: &mut Carried) -> Result<()> {
        let (linked, bytes) = self.place(from, &self.dir.join(rel), how).map_err(|e| {
            output_error(
                &self.dest.join(rel),
                format!("cannot carry over {}: {e:#}", from.display()),
            )
        })?;
        carried.files += 1;
        carried.bytes += bytes;
        match linked {
            true => carried.linked += 1,
            false => carried.copied += 1,
        }
        Ok(())
    }

    /// [`carry`](Self::carry)'s work: whether the file was linked, and its size.
    fn place(&self, from: &Path, to: &Path, how: Carry) -> Result<(bool, u64)> {
        interrupt::check()?;
        let source = from.canonicalize()?;
        let bytes = std::fs::metadata(&source)?.len();
        let linked = how == Carry::Link
            && match std::fs::hard_link(&source, to) {
                Ok(()) => true,
                // Another file system, or one without hard links (or out of links for this file).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV | libc::EPERM | libc::EMLINK | libc::EOPNOTSUPP)
                    ) =>
                {
                    false
                }
                Err(e) => return Err(e.into()),
            };
        if !linked {
            copy_interruptibly(&source, to)?;
        }
        Ok((linked, bytes))
    }

    /// Makes every entry durable, then renames the folder to its destination, which must
    /// still not exist.
    pub fn commit(mut self) -> Result<()> {
        sync_tree(&self.dir)
            .map_err(|e| output_error(&self.dest, format!("cannot sync the new folder: {e}")))?;
        interrupt::check()?;
        rename_new(&self.dir, &self.dest).map_err(|e| {
            let msg = match e.kind() {
                io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty => {
                    "appeared while the pipeline was being written; the new one was removed".into()
                }
                _ => format!("cannot rename {} into place: {e}", self.dir.display()),
            };
            output_error(&self.dest, msg)
        })?;
        self.placed = true;
        if let Some(parent) = self.dir.parent() {
            File::open(parent).and_then(|d| d.sync_all()).ok();
        }
        Ok(())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.placed {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                log::warn!("cannot remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// A copy in 64 MiB steps (each `copy_file_range`, a reflink where the file system shares
/// blocks), checking for SIGINT/SIGTERM between them: a copy of a multi-GB transformer stops
/// within a step. The copy keeps the source's permission bits and is synced.
fn copy_interruptibly(from: &Path, to: &Path) -> Result<()> {
    use std::io::Read;
    const STEP: u64 = 64 << 20;
    let src = File::open(from)?;
    let mode = src.metadata()?.mode() & 0o7777;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    loop {
        interrupt::check()?;
        if io::copy(&mut (&src).take(STEP), &mut dst)? == 0 {
            break;
        }
    }
    dst.set_permissions(std::fs::Permissions::from_mode(mode))?;
    dst.sync_all()?;
    Ok(())
}

/// fsync of every folder below and including `dir`: links and names inside the new folder
/// reach the disk before the rename makes them visible.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    File::open(dir)?.sync_all()
}

/// `rename(from, to)` that fails if `to` exists, even as an empty folder (which a plain rename
/// would replace).
fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: two valid NUL-terminated paths.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // File systems without RENAME_NOREPLACE fall through to the check below.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
            return Err(e);
        }
    }
    if to.symlink_metadata().is_ok() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    std::fs::rename(from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_dropped_stage_leaves_nothing_and_a_committed_one_is_the_destination() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("src.bin");
        std::fs::write(&src, b"weights").unwrap();
        let dest = root.path().join("out");
        {
            let stage = Stage::new(&dest).unwrap();
            std::fs::create_dir(stage.path().join("sub")).unwrap();
            let mut c = Carried::default();
            stage
                .carry(&src, Path::new("sub/a.bin"), Carry::Link, &mut c)
                .unwrap();
            assert_eq!(names(root.path()).len(), 2);
        }
        assert_eq!(names(root.path()), ["src.bin"]);

        let stage = Stage::new(&dest).unwrap();
        let mut c = Carried::default();
        stage
            .carry(&src, Path::new("a.bin"), Carry::Link, &mut c)
            .unwrap();
        stage
            .carry(&src, Path::new("b.bin"), Carry::Copy, &mut c)
            .unwrap();
        assert_eq!((c.files, c.linked, c.copied, c.bytes), (2, 1, 1, 14));
        stage.commit().unwrap();
        assert_eq!(names(root.path()), ["out", "src.bin"]);
        assert_eq!(names(&dest), ["a.bin", "b.bin"]);
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&dest.join("a.bin")), ino(&src));
        assert_ne!(ino(&dest.join("b.bin")), ino(&src));
        assert_eq!(std::fs::read(dest.join("b.bin")).unwrap(), b"weights");
    }

    #[test]
    fn an_existing_destination_is_never_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let err = Stage::new(&dest).err().unwrap();
        assert_eq!(crate::error::exit_code_of(&err), crate::error::exit::OUTPUT);
        assert!(err.to_string().contains("already exists"), "{err}");
        // One that appears during the run: the empty folder a plain rename would replace.
        std::fs::remove_dir(&dest).unwrap();
        let stage = Stage::new(&dest).unwrap();
        std::fs::create_dir(&dest).unwrap();
        let err = stage.commit().unwrap_err();
        assert!(err.to_string().contains("appeared"), "{err}");
        assert_eq!(names(root.path()), ["out"]);
        assert!(names(&dest).is_empty());
    }

    #[test]
    fn a_stale_stage_is_removed_by_the_next_run_a_live_one_is_not() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        let stale = root.path().join(".out.abc123.tmp");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("model.onnx"), b"partial").unwrap();
        let live = Stage::new(&dest).unwrap();
        assert!(!stale.exists());
        let other = Stage::new(&dest).unwrap();
        assert!(live.path().is_dir() && other.path().is_dir());
    }
}
