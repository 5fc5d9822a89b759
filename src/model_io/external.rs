//! External data files: parsing a tensor's references, confining them to the model's folder,
//! and mapping each file once, lazily.
//!
//! External data paths are the most attacked part of ONNX loaders (absolute paths, `..`,
//! symlinks out of the folder), so a location is resolved to its real path and must stay inside
//! the model's real folder.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use super::tensor::check_len;
use crate::onnx::TensorProto;

/// A tensor's `external_data` entries.
pub(crate) struct ExternalRef<'a> {
    pub location: &'a str,
    pub offset: u64,
    /// `None` when absent: the data runs to the end of the file.
    pub length: Option<u64>,
}

impl<'a> ExternalRef<'a> {
    pub fn parse(t: &'a TensorProto) -> Result<Self> {
        let mut location = None;
        let mut offset = 0;
        let mut length = None;
        let number = |key: &str, v: &str| -> Result<u64> {
            v.parse().map_err(|_| {
                anyhow!(
                    "tensor '{}': external data {key} '{v}' is not a non-negative integer",
                    t.name()
                )
            })
        };
        for e in &t.external_data {
            match e.key() {
                "location" => location = Some(e.value()),
                "offset" => offset = number("offset", e.value())?,
                "length" => length = Some(number("length", e.value())?),
                _ => {}
            }
        }
        let location = location
            .filter(|l| !l.is_empty())
            .with_context(|| format!("tensor '{}': external data without a location", t.name()))?;
        Ok(ExternalRef {
            location,
            offset,
            length,
        })
    }
}

/// A file checked when the model was read. It is reopened later (to map or copy it) only if
/// the path still names that same file, so swapping it for a link after the checks does not work.
#[derive(Clone, Debug)]
pub struct FileId {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(crate) fn new(path: PathBuf, meta: &std::fs::Metadata) -> Self {
        FileId {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    pub(crate) fn open(&self) -> Result<File> {
        let file = File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        let meta = file.metadata()?;
        if (meta.dev(), meta.ino()) != (self.dev, self.ino) {
            bail!(
                "{} was replaced by another file after the model was read",
                self.path.display()
            );
        }
        Ok(file)
    }
}

/// Whether `path` is a blob of the Hugging Face hub cache repository that `dir` is a snapshot
/// folder of. The hub cache stores `<repo>/snapshots/<revision>/<file>` as a symlink to
/// `<repo>/blobs/<hash>`, so a model downloaded with `huggingface_hub` reaches its data only
/// through such links; following them stays inside that one repository's cache, which is where
/// the download put the model itself. Only direct children of that `blobs` folder qualify.
fn hub_blob(dir: &Path, path: &Path) -> bool {
    dir.ancestors()
        .filter_map(|revision| revision.parent())
        .filter(|snapshots| snapshots.file_name() == Some("snapshots".as_ref()))
        .filter_map(Path::parent)
        .any(|repo| path.parent() == Some(repo.join("blobs").as_path()))
}

/// One external data file, resolved and confined; memory-mapped on first use.
pub struct ExternalFile {
    /// The location as written in the model.
    pub location: String,
    /// The real (canonical) path.
    pub path: PathBuf,
    /// Size when the model was read.
    pub len: u64,
    pub(crate) id: FileId,
    map: OnceLock<std::result::Result<Bytes, String>>,
}

impl std::fmt::Debug for ExternalFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalFile")
            .field("location", &self.location)
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl ExternalFile {
    /// Resolves `location` against the model's canonical folder `dir`, refusing anything that
    /// is absolute, climbs with `..`, or resolves (through symlinks) outside `dir` other than
    /// into the blobs of the Hugging Face cache repository `dir` is a snapshot of, anything
    /// that is not a regular file, and files with several hard links (a hard link is another
    /// way to reach a file outside the folder, and cannot be told apart from the original).
    pub fn resolve(dir: &Path, location: &str) -> Result<Self> {
        let rel = Path::new(location);
        // A Windows drive or UNC prefix is absolute in intent even when read on Unix.
        let windows_absolute =
            location.starts_with('\\') || location.as_bytes().get(1) == Some(&b':');
        if rel.is_absolute() || rel.has_root() || windows_absolute {
            bail!("external data location '{location}' is absolute; it must be relative to the model's folder");
        }
        if rel.components().any(|c| c == Component::ParentDir)
            || location.split(['/', '\\']).any(|c| c == "..")
        {
            bail!("external data location '{location}' contains '..'; it must stay inside the model's folder");
        }
        let joined = dir.join(rel);
        let path = joined.canonicalize().map_err(|e| {
            anyhow!(
                "external data file '{location}' ({}) cannot be opened: {e}",
                joined.display()
            )
        })?;
        if !path.starts_with(dir) && !hub_blob(dir, &path) {
            bail!(
                "external data location '{location}' resolves to {} (through a symlink), outside the \
                 model's folder {}; copy the file into the folder",
                path.display(),
                dir.display()
            );
        }
        let meta = path
            .metadata()
            .with_context(|| format!("external data file {}", path.display()))?;
        if !meta.is_file() {
            bail!(
                "external data location '{location}' ({}) is not a regular file",
                path.display()
            );
        }
        if meta.nlink() > 1 {
            bail!(
                "external data location '{location}' ({}) has {} hard links; refusing it as it may \
                 reach a file outside the model's folder (copy the file to give it a single link)",
                path.display(),
                meta.nlink()
            );
        }
        let id = FileId::new(path.clone(), &meta);
        // Opening checks the identity against what was just inspected.
        id.open()?;
        Ok(ExternalFile {
            location: location.to_string(),
            path,
            len: meta.len(),
            id,
            map: OnceLock::new(),
        })
    }

    /// Checks a tensor's range against this file and its declared shape; returns its length.
    pub(crate) fn check_range(&self, t: &TensorProto, r: &ExternalRef) -> Result<u64> {
        let len = match r.length {
            Some(l) => l,
            None => self.len.checked_sub(r.offset).unwrap_or(u64::MAX),
        };
        let end = r.offset.checked_add(len);
        if end.is_none_or(|end| end > self.len) {
            bail!(
                "tensor '{}': external data offset {} + length {} runs past the end of {} ({} bytes)",
                t.name(),
                r.offset,
                r.length.map_or("(to end)".to_string(), |l| l.to_string()),
                self.path.display(),
                self.len
            );
        }
        check_len(t, len)
            .with_context(|| format!("in external data file {}", self.path.display()))?;
        Ok(len)
    }

    /// The map, if the file has been mapped already.
    pub(crate) fn mapped(&self) -> Option<&Bytes> {
        self.map.get().and_then(|m| m.as_ref().ok())
    }

    /// The whole file, mapped once.
    pub(crate) fn map(&self) -> Result<&Bytes> {
        self.map
            .get_or_init(|| {
                self.id
                    .open()
                    .and_then(|f| map_file(&f, &self.path))
                    .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }
}

/// Memory-maps a whole file as `Bytes` (which keeps the map alive as long as any slice of it).
pub(crate) fn map_file(file: &File, path: &Path) -> Result<Bytes> {
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only. Like every memory-mapping reader, we rely on the file not
    // being truncated or rewritten in place while the model is open; our own writer never
    // does that (it renames a new file into place).
    let map = unsafe { memmap2::Mmap::map(file) }
        .with_context(|| format!("cannot memory-map {}", path.display()))?;
    Ok(Bytes::from_owner(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        std::fs::write(dir.join("w.bin"), [0u8; 8]).unwrap();
        std::fs::write(root.path().join("secret"), [1u8; 8]).unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), dir.join("link")).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(root.path().join("other"), [2u8; 8]).unwrap();
        std::fs::hard_link(root.path().join("other"), dir.join("hard")).unwrap();

        assert_eq!(ExternalFile::resolve(&dir, "w.bin").unwrap().len, 8);
        for (loc, why) in [
            ("/etc/passwd", "absolute"),
            ("C:\\w.bin", "absolute"),
            ("../secret", "'..'"),
            ("sub/../w.bin", "'..'"),
            ("link", "outside the model's folder"),
            ("sub", "not a regular file"),
            ("missing.bin", "cannot be opened"),
            ("hard", "2 hard links"),
        ] {
            let err = ExternalFile::resolve(&dir, loc).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains(loc.trim_start_matches('/')),
                "{loc}: {err}"
            );
        }
    }

    /// The layout `huggingface_hub` downloads into: snapshot files are links to the repository's
    /// blobs. Those are followed; links to another repository's blobs or deeper are not.
    #[test]
    fn hub_cache_snapshots_reach_their_blobs() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let repo = root.join("models--org--name");
        let dir = repo.join("snapshots").join("0123abc").join("onnx");
        let other = root.join("models--org--other").join("blobs");
        for d in [&dir, &repo.join("blobs").join("nested"), &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        for (blob, link) in [
            (repo.join("blobs").join("f00d"), "model.onnx_data"),
            (repo.join("blobs").join("nested").join("beef"), "deeper"),
            (other.join("cafe"), "elsewhere"),
        ] {
            std::fs::write(&blob, [0u8; 8]).unwrap();
            std::os::unix::fs::symlink(&blob, dir.join(link)).unwrap();
        }
        let data = ExternalFile::resolve(&dir, "model.onnx_data").unwrap();
        assert_eq!(data.path, repo.join("blobs").join("f00d"));
        for loc in ["deeper", "elsewhere"] {
            let err = ExternalFile::resolve(&dir, loc).unwrap_err().to_string();
            assert!(err.contains("outside the model's folder"), "{loc}: {err}");
        }
    }
}
