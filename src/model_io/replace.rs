//! Replacing an output that has external data, with no instant at which the folder holds a
//! broken model.
//!
//! A model and its data file are two files and no rename switches two files at once, so a new
//! output's data never takes a name that a model may still read: it goes under the requested
//! name (`<model>.data` by default) only when no file has that name, and otherwise under a fresh
//! tagged one (`model.onnx.3fa9c01e.data`). The model is renamed last: that one rename is the
//! switch from the complete old output to the complete new one. Only then is the old data file
//! deleted, and only when [`Replacement::finish`] finds it safe.
//!
//! A crash (SIGKILL, power cut) between the steps can leave one unreferenced data file: the new
//! one (before the switch) or the old one (after it). A journal, `.<model>.replaced`, written
//! before anything becomes visible, names both, and the next write to the same output deletes
//! the ones no model references any more.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use prost::Message;

use super::atomic::{same_file, write_file};
use super::external::map_file;
use super::visit;
use crate::onnx::ModelProto;

/// The name for a new output's data file in `dir`: `requested` when no file has that name,
/// otherwise `requested` with a random tag before its extension.
pub(crate) fn fresh_data_name(dir: &Path, requested: &str) -> String {
    let free = |name: &str| std::fs::symlink_metadata(dir.join(name)).is_err();
    if free(requested) {
        return requested.to_string();
    }
    let state = std::collections::hash_map::RandomState::new();
    for attempt in 0u32.. {
        let seed = (std::process::id(), std::time::SystemTime::now(), attempt);
        let tag = format!("{:08x}", state.hash_one(seed) as u32);
        let name = match requested.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => format!("{stem}.{tag}.{ext}"),
            _ => format!("{requested}.{tag}"),
        };
        if free(&name) {
            return name;
        }
    }
    unreachable!("u32 attempts exhausted")
}

/// The data files a replacement may delete, and the files it must never touch.
pub(crate) struct Replacement {
    dir: PathBuf,
    /// The output model's path.
    model: PathBuf,
    journal: PathBuf,
    /// Data files of the model now at the output path, then those a journal left by an
    /// interrupted run names (plain file names in `dir`).
    candidates: Vec<String>,
    /// The new output's data file name, if it has one.
    new_data: Option<String>,
    /// The input model and its data files.
    protect: Vec<PathBuf>,
}

impl Replacement {
    /// Notes what the output at `model` (if any) reads, before it is replaced.
    pub fn new(model: &Path, new_data: Option<&str>, protect: &[&Path]) -> Self {
        let dir = model.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = model.file_name().unwrap_or_default().to_string_lossy();
        let journal = dir.join(format!(".{name}.replaced"));
        // A symlink at the output path is replaced, not followed: what its target reads lives
        // beside the target, not here.
        let regular = std::fs::symlink_metadata(model).is_ok_and(|m| m.is_file());
        let mut candidates = if regular {
            locations(model)
        } else {
            Vec::new()
        };
        if let Ok(text) = std::fs::read_to_string(&journal) {
            candidates.extend(text.lines().map(str::to_string));
        }
        candidates.retain(|c| is_plain_name(c));
        candidates.sort();
        candidates.dedup();
        Replacement {
            dir,
            model: model.to_path_buf(),
            journal,
            candidates,
            new_data: new_data.map(str::to_string),
            protect: protect.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    /// Writes the journal: called before the new data file becomes visible.
    pub fn record(&self) -> Result<()> {
        if self.candidates.is_empty() && self.new_data.is_none() {
            return Ok(());
        }
        let mut text = String::new();
        for name in self.candidates.iter().chain(&self.new_data) {
            text.push_str(name);
            text.push('\n');
        }
        write_file(&self.journal, text.as_bytes())
    }

    /// After the switch (or a failed attempt): deletes every candidate that nothing reads any
    /// more, then the journal. (The new data file is not a candidate here: if the switch
    /// failed, `atomic::commit` already removed it, and a file of that name now is not ours.)
    ///
    /// A file is deleted only when it is a plain file name in the output's folder, a regular
    /// file (not a symlink), not the input model or one of its data files, and no model in the
    /// folder (every `*.onnx` file and the output itself) reads external data from it. Models
    /// in other folders are not searched: the reader's confinement rules only let a model reach
    /// data in its own folder or below it.
    pub fn finish(self) {
        let referenced = referenced_files(&self.dir, &self.model);
        let mut kept_any = false;
        for name in &self.candidates {
            let path = self.dir.join(name);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ours = meta.is_file()
                && !referenced.contains(&(meta.dev(), meta.ino()))
                && !self
                    .protect
                    .iter()
                    .any(|p| same_file(&path, p).unwrap_or(true));
            if !ours {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => log::info!("removed {}, the replaced output's data", path.display()),
                Err(e) => {
                    kept_any = true;
                    log::warn!("cannot remove {}: {e}", path.display());
                }
            }
        }
        if !kept_any {
            let _ = std::fs::remove_file(&self.journal);
        }
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// The external data locations a model file names (none if it does not decode).
fn locations(model: &Path) -> Vec<String> {
    let Some(mut proto) = std::fs::File::open(model)
        .ok()
        .and_then(|f| map_file(&f, model).ok())
        .and_then(|bytes| ModelProto::decode(bytes).ok())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let _ = visit::tensors_mut(&mut proto, &mut |t, _| {
        if t.is_external() {
            let loc = t.external_data.iter().find(|e| e.key() == "location");
            if let Some(loc) = loc {
                if !out.iter().any(|o| o == loc.value()) {
                    out.push(loc.value().to_string());
                }
            }
        }
        Ok(())
    });
    out
}

/// (device, inode) of every file a model in `dir` (a `*.onnx` file, or `model`) reads
/// external data from, as the model's loader would resolve it.
fn referenced_files(dir: &Path, model: &Path) -> HashSet<(u64, u64)> {
    let mut models = vec![model.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        models.extend(entries.flatten().map(|e| e.path()).filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
        }));
    }
    let mut out = HashSet::new();
    for m in models {
        for loc in locations(&m) {
            if let Ok(meta) = std::fs::metadata(dir.join(&loc)) {
                out.insert((meta.dev(), meta.ino()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_keep_the_requested_one_when_free() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(fresh_data_name(d, "m.onnx.data"), "m.onnx.data");
        std::fs::write(d.join("m.onnx.data"), b"old").unwrap();
        let tagged = fresh_data_name(d, "m.onnx.data");
        assert!(
            tagged.starts_with("m.onnx.") && tagged.ends_with(".data") && tagged.len() == 20,
            "{tagged}"
        );
        std::fs::write(d.join("weights"), b"old").unwrap();
        assert!(fresh_data_name(d, "weights").starts_with("weights."));
        assert!(!is_plain_name("../x") && !is_plain_name("a/b") && is_plain_name("a.data"));
    }

    /// A model file whose one tensor reads external data from `location` (or none).
    fn model_reading(path: &Path, location: Option<&str>) {
        use crate::onnx::tensor_proto::data_location::EXTERNAL;
        use crate::onnx::{GraphProto, StringStringEntryProto, TensorProto};
        let t = TensorProto {
            name: Some("w".into()),
            data_location: location.map(|_| EXTERNAL),
            external_data: location
                .map(|l| vec![StringStringEntryProto::new("location", l)])
                .unwrap_or_default(),
            ..Default::default()
        };
        let m = ModelProto {
            graph: Some(GraphProto {
                initializer: vec![t],
                ..Default::default()
            }),
            ..Default::default()
        };
        std::fs::write(path, m.encode_to_vec()).unwrap();
    }

    /// The old output read the input's data file (the input is not a `*.onnx` file, so no
    /// folder scan sees it): after the switch, that file is kept only because it is protected;
    /// an unprotected one is deleted, as is the journal.
    #[test]
    fn input_files_are_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (input, data, out) = (d.join("in.pb"), d.join("in.data"), d.join("out.onnx"));
        model_reading(&input, Some("in.data"));
        for protect in [true, false] {
            std::fs::write(&data, b"weights").unwrap();
            model_reading(&out, Some("in.data"));
            let protected: Vec<&Path> = if protect { vec![&input, &data] } else { vec![] };
            let r = Replacement::new(&out, None, &protected);
            r.record().unwrap();
            assert!(d.join(".out.onnx.replaced").is_file());
            model_reading(&out, None);
            r.finish();
            assert_eq!(data.exists(), protect);
            assert!(!d.join(".out.onnx.replaced").exists());
        }
    }
}
