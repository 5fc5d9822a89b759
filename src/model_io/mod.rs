//! Reading and writing ONNX models of any size.
//!
//! A model is read by memory-mapping the `.onnx` file and decoding it with prost from a
//! `bytes::Bytes` that owns the map, so embedded `raw_data` stays a view into the file. External
//! data files are mapped lazily, once each, when a tensor's bytes are first asked for. Nothing
//! ever loads all weights at once: the writer streams each tensor's bytes from its source file
//! to the destination, so memory stays flat whatever the model size.
//!
//! Everything read from disk is validated before it is used (see [`read`]): path confinement
//! of external data, offsets within files, and declared shape × element size = stored bytes.

mod atomic;

pub(crate) use atomic::{remove_stale, TempKind};
mod external;
pub mod read;
mod replace;
mod tensor;
mod visit;
pub mod write;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use crate::onnx::{ModelProto, TensorProto};

pub(crate) use atomic::same_file;
pub use atomic::{
    check_output, check_output_not_input, check_outputs_apart, free_space, write_file,
};
pub use external::ExternalFile;
use external::FileId;
pub use read::read_model;
pub use tensor::{element_count, element_size, stored_len, type_name, TensorView, TypedData};
pub use write::{write_model, ExternalData, WriteOptions, WriteReport};

/// A model read from disk: the decoded protobuf, where it came from, and access to its weights.
pub struct Model {
    pub proto: ModelProto,
    /// The model file as given to [`read_model`] (made absolute).
    pub path: PathBuf,
    pub weights: WeightStore,
}

impl Model {
    /// The files the model is read from: the model file and its external data files.
    pub fn files(&self) -> Vec<PathBuf> {
        std::iter::once(self.path.clone())
            .chain(self.weights.external_files().iter().map(|f| f.path.clone()))
            .collect()
    }

    /// Bytes on disk: the model file and the external data files it reads.
    pub fn file_bytes(&self) -> Result<u64> {
        let own = std::fs::metadata(&self.path)
            .with_context(|| format!("cannot stat {}", self.path.display()))?
            .len();
        Ok(own
            + self
                .weights
                .external_files()
                .iter()
                .map(|f| f.len)
                .sum::<u64>())
    }
}

/// Access to the bytes of a model's tensors, wherever they are stored.
///
/// Inline `raw_data` is borrowed from the model file's memory map; external data comes from
/// memory maps of the referenced files, created on first use. A store built with
/// [`WeightStore::default`] serves models built in memory (inline tensors only).
#[derive(Default)]
pub struct WeightStore {
    /// The model file and its whole memory map, so that writers can tell which `raw_data`
    /// slices live in the file and copy them file-to-file instead of through memory.
    model: Option<(FileId, Bytes)>,
    files: Vec<ExternalFile>,
    /// `files` by location, for models that keep one file per tensor.
    index: HashMap<String, usize>,
}

/// Where a tensor's bytes can be streamed from.
pub(crate) enum Source<'a> {
    /// `len` bytes at `offset` of a file on disk.
    File {
        file: &'a FileId,
        offset: u64,
        len: u64,
    },
    /// Bytes in memory (typed fields converted to little-endian, or raw data built in memory).
    Mem(Cow<'a, [u8]>),
}

impl WeightStore {
    /// The model file this store reads inline data from, if any.
    pub fn model_path(&self) -> Option<&Path> {
        self.model.as_ref().map(|(id, _)| id.path.as_path())
    }

    /// The external data files the model references (resolved, validated, in first-use order).
    pub fn external_files(&self) -> &[ExternalFile] {
        &self.files
    }

    /// The little-endian bytes of a tensor, whether stored as `raw_data`, in the typed fields
    /// (`float_data`, `int32_data`, ...), or externally. Borrowed when the bytes already exist
    /// in memory or in a memory map; converted only for the typed fields.
    pub fn bytes<'a>(&'a self, t: &'a TensorProto) -> Result<Cow<'a, [u8]>> {
        if t.is_external() {
            let (file, offset, len) = self.external_range(t)?;
            let map = file.map()?;
            // The range was checked against the file size when it was resolved.
            let start = usize::try_from(offset)?;
            let end = start + usize::try_from(len)?;
            return Ok(Cow::Borrowed(&map[start..end]));
        }
        tensor::inline_bytes(t)
    }

    /// Like [`bytes`](Self::bytes) but as a reference-counted `Bytes`, which can be put into a
    /// new `TensorProto.raw_data` without copying (zero-copy for raw and external data).
    pub fn shared(&self, t: &TensorProto) -> Result<Bytes> {
        if t.is_external() {
            let (file, offset, len) = self.external_range(t)?;
            let map = file.map()?;
            let start = usize::try_from(offset)?;
            return Ok(map.slice(start..start + usize::try_from(len)?));
        }
        match &t.raw_data {
            Some(raw) => {
                tensor::check_len(t, raw.len() as u64)?;
                Ok(raw.clone())
            }
            None => Ok(Bytes::from(tensor::inline_bytes(t)?.into_owned())),
        }
    }

    /// A typed view of a tensor's elements.
    pub fn view<'a>(&'a self, t: &'a TensorProto) -> Result<TensorView<'a>> {
        TensorView::new(t, self.bytes(t)?)
    }

    /// Where the writer can stream a tensor's bytes from without pulling them into memory.
    pub(crate) fn source<'a>(&'a self, t: &'a TensorProto) -> Result<Source<'a>> {
        if t.is_external() {
            let (file, offset, len) = self.external_range(t)?;
            return Ok(Source::File {
                file: &file.id,
                offset,
                len,
            });
        }
        if let Some(raw) = &t.raw_data {
            if let Some((file, offset)) = self.locate(raw) {
                tensor::check_len(t, raw.len() as u64)?;
                return Ok(Source::File {
                    file,
                    offset,
                    len: raw.len() as u64,
                });
            }
        }
        Ok(Source::Mem(self.bytes(t)?))
    }

    /// The file and offset a non-empty slice of one of this store's memory maps comes from, so
    /// that writers can copy it file to file without faulting the mapped pages into memory.
    pub(crate) fn locate(&self, bytes: &[u8]) -> Option<(&FileId, u64)> {
        if bytes.is_empty() {
            return None;
        }
        let maps = self
            .model
            .iter()
            .map(|(id, map)| (id, map))
            .chain(self.files.iter().filter_map(|f| Some((&f.id, f.mapped()?))));
        let at = bytes.as_ptr() as usize;
        for (id, map) in maps {
            let base = map.as_ptr() as usize;
            if at >= base && at + bytes.len() <= base + map.len() {
                return Some((id, (at - base) as u64));
            }
        }
        None
    }

    /// The validated file, offset and length of an external tensor.
    fn external_range(&self, t: &TensorProto) -> Result<(&ExternalFile, u64, u64)> {
        let refs = external::ExternalRef::parse(t)?;
        let Some(file) = self.index.get(refs.location).map(|&i| &self.files[i]) else {
            bail!(
                "tensor '{}': external data location '{}' is not one of the files of the model \
                 this weight store was read from",
                t.name(),
                refs.location
            );
        };
        let len = file.check_range(t, &refs)?;
        Ok((file, refs.offset, len))
    }
}
