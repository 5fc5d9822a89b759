//! Writing a model: relocate tensors (inline or into one external data file), stream their
//! bytes file-to-file, encode the protobuf straight to disk, and rename into place.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bytes::buf::UninitSlice;
use bytes::BufMut;
use prost::Message;

use super::atomic::{self, same_file, Staged};
use super::replace::{fresh_data_name, Replacement};
use super::tensor::stored_len;
use super::visit::{self, Role};
use super::{FileId, Source, WeightStore};
use crate::error::SkrrError;
use crate::onnx::tensor_proto::{data_location, data_type as dt};
use crate::onnx::{ModelProto, StringStringEntryProto, TensorProto};

/// Protobuf messages cannot exceed 2 GB.
pub const PROTOBUF_LIMIT: u64 = i32::MAX as u64;

/// Where tensor data goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExternalData {
    /// External when the model given already has external tensors, or when the model would
    /// not fit in one protobuf ([`WriteOptions::auto_limit`]); inline otherwise.
    Auto,
    /// Always external, in the data file `file` beside the model (default: `<model>.data`).
    Always { file: Option<String> },
    /// Everything inline (fails when the model would exceed the protobuf limit).
    Never,
}

#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub external: ExternalData,
    /// Alignment of each tensor's offset in the data file (page size, so tensors can be
    /// memory-mapped in place).
    pub align: u64,
    /// Tensors smaller than this many bytes stay inline even when writing external data.
    pub inline_below: u64,
    /// Inline size above which `Auto` switches to external data (the protobuf limit; lowered
    /// in tests).
    pub auto_limit: u64,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            external: ExternalData::Auto,
            align: 4096,
            inline_below: 1024,
            auto_limit: PROTOBUF_LIMIT,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WriteReport {
    pub model_path: PathBuf,
    /// The external data file, when one was written.
    pub data_path: Option<PathBuf>,
    pub model_bytes: u64,
    pub data_bytes: u64,
    pub external_tensors: usize,
    pub inline_tensors: usize,
}

impl WriteOptions {
    /// The name of the data file an output at `out` asks for, before any tag `replace` adds:
    /// a plain file name beside the model, other than the model's own. Commands call it before
    /// long work, and to keep their other outputs off it.
    pub fn data_file_name(&self, out: &Path) -> Result<String> {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = match &self.external {
            ExternalData::Always { file: Some(f) } => f.clone(),
            _ => format!("{name}.data"),
        };
        if file.is_empty() || file == "." || file == ".." || file.contains(['/', '\\']) {
            return Err(refused(
                out,
                format!("data file name '{file}' must be a plain file name"),
            ));
        }
        if file == name {
            return Err(refused(
                out,
                "the data file cannot be the model file".into(),
            ));
        }
        Ok(file)
    }
}

/// Writes `proto` (whose tensors' bytes come from `weights`) to `out`, atomically.
///
/// Refuses ([`SkrrError::Output`]) an output in a missing folder, and an output model or data
/// file that is the input model or one of its data files. On any error no output is left.
///
/// The data file gets the name asked for (default `<model>.data`) when no file has it, and a
/// tagged variant otherwise, so that the previous output stays whole until the model's rename
/// replaces it; the previous output's data file is then deleted if nothing else reads it (see
/// `replace`). The report names the data file actually written.
pub fn write_model(
    proto: &ModelProto,
    weights: &WeightStore,
    out: &Path,
    opts: &WriteOptions,
) -> Result<WriteReport> {
    let out = std::path::absolute(out).map_err(|e| refused(out, e.to_string()))?;
    let (dir, name) = output_folder(&out)?;
    let inputs: Vec<&Path> = weights
        .model_path()
        .into_iter()
        .chain(weights.external_files().iter().map(|f| f.path.as_path()))
        .collect();
    refuse_over_input(&out, "model", &inputs)?;
    let mut model = proto.clone();
    let data = match stores_external(&mut model, weights, opts, &out)? {
        true => Some(data_file(&out, &dir, opts, &inputs)?),
        false => None,
    };
    let replacement = Replacement::new(&out, data.as_ref().map(|(file, _)| file.as_str()), &inputs);
    let mut report = WriteReport {
        model_path: out.clone(),
        data_path: data.as_ref().map(|(_, p)| p.clone()),
        model_bytes: 0,
        data_bytes: 0,
        external_tensors: 0,
        inline_tensors: 0,
    };
    let data_stage = match &data {
        Some((_, path)) => Some(
            Staged::named(path, &format!("{name}.data"))
                .map_err(|e| refused(path, format!("{e:#}")))?,
        ),
        None => None,
    };
    let sink = data_stage
        .as_ref()
        .zip(data.as_ref())
        .map(|(s, (file, path))| DataSink::new(s.file(), file, path, opts.align));
    place_tensors(&mut model, weights, opts, sink, &mut report)
        .map_err(|e| refused(&out, format!("{e:#}")))?;
    report.model_bytes = commit(&model, weights, &out, data_stage, replacement)?;
    log::info!(
        "wrote {} ({} bytes, {} inline tensors){}",
        out.display(),
        report.model_bytes,
        report.inline_tensors,
        report.data_path.as_ref().map_or(String::new(), |p| format!(
            " and {} ({} bytes, {} tensors)",
            p.display(),
            report.data_bytes,
            report.external_tensors
        ))
    );
    Ok(report)
}

/// The refusal of an output at `path`.
fn refused(path: &Path, msg: String) -> anyhow::Error {
    SkrrError::Output {
        path: path.to_path_buf(),
        msg,
    }
    .into()
}

/// The folder `out` (absolute) goes in, which must exist, and its file name.
fn output_folder(out: &Path) -> Result<(PathBuf, String)> {
    let (dir, name) = match (out.parent(), out.file_name()) {
        (Some(d), Some(n)) => (d.to_path_buf(), n.to_string_lossy().into_owned()),
        _ => return Err(refused(out, "not a file path".into())),
    };
    if !dir.is_dir() {
        return Err(refused(
            out,
            format!("the folder {} does not exist", dir.display()),
        ));
    }
    if out.is_dir() {
        return Err(refused(out, "is a folder".into()));
    }
    Ok((dir, name))
}

/// Refuses to write the `what` file at `path` when it is one of the `inputs`.
fn refuse_over_input(path: &Path, what: &str, inputs: &[&Path]) -> Result<()> {
    for input in inputs {
        if same_file(path, input).map_err(|e| refused(path, e.to_string()))? {
            return Err(refused(
                path,
                format!(
                    "refusing to write the {what} over the input file {}",
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the tensors go to an external data file (`opts.external`), refusing an inline model
/// above the protobuf limit.
fn stores_external(
    model: &mut ModelProto,
    weights: &WeightStore,
    opts: &WriteOptions,
    out: &Path,
) -> Result<bool> {
    let external = match &opts.external {
        ExternalData::Always { .. } => true,
        ExternalData::Never => false,
        ExternalData::Auto => {
            has_external(model)? || inline_size(model, weights)? > opts.auto_limit
        }
    };
    if !external {
        let size = inline_size(model, weights)?;
        if size > PROTOBUF_LIMIT {
            return Err(refused(
                out,
                format!("the model would take {size} bytes inline, above the 2 GB protobuf limit; write it with external data"),
            ));
        }
    }
    Ok(external)
}

/// The external data file's name and path: the one asked for, never over an input, and never
/// the name of a file a model may still read (the previous output's data, say; see
/// `replace`).
fn data_file(
    out: &Path,
    dir: &Path,
    opts: &WriteOptions,
    inputs: &[&Path],
) -> Result<(String, PathBuf)> {
    let file = opts.data_file_name(out)?;
    refuse_over_input(&dir.join(&file), "external data", inputs)?;
    let file = fresh_data_name(dir, &file);
    let path = dir.join(&file);
    Ok((file, path))
}

/// Moves each tensor's bytes where they go: initializers (and tensors already external) of
/// `opts.inline_below` bytes or more appended to the data file when there is one (`sink`),
/// everything else inline.
fn place_tensors(
    model: &mut ModelProto,
    weights: &WeightStore,
    opts: &WriteOptions,
    mut sink: Option<DataSink>,
    report: &mut WriteReport,
) -> Result<()> {
    visit::tensors_mut(model, &mut |t, role| {
        let goes_external = sink.is_some()
            && t.data_type() != dt::STRING
            && (role == Role::Initializer || t.is_external())
            && stored_len(t)? >= opts.inline_below;
        match sink.as_mut() {
            Some(sink) if goes_external => {
                let (offset, len) = sink.append(t, weights)?;
                set_external(t, &sink.location, offset, len);
                report.external_tensors += 1;
            }
            _ => {
                if t.is_external() {
                    set_inline(t, weights)?;
                }
                report.inline_tensors += 1;
            }
        }
        Ok(())
    })?;
    if let Some(s) = sink {
        report.data_bytes = s.pos;
        s.progress.finish_and_clear();
    }
    Ok(())
}

/// Encodes the model beside `out` and renames it (and the staged data file) into place,
/// recording the replacement of a previous output; returns the model's bytes.
fn commit(
    model: &ModelProto,
    weights: &WeightStore,
    out: &Path,
    data_stage: Option<Staged>,
    replacement: Replacement,
) -> Result<u64> {
    let model_stage = Staged::new(out).map_err(|e| refused(out, format!("{e:#}")))?;
    let model_bytes = encode_to(model, weights, model_stage.file())
        .map_err(|e| refused(out, format!("{e:#}")))?;
    replacement
        .record()
        .map_err(|e| refused(out, format!("{e:#}")))?;
    let committed = atomic::commit(data_stage, model_stage);
    if committed.is_ok() {
        atomic::crash_point("after-model-rename");
    }
    replacement.finish();
    committed.map_err(|e| refused(out, format!("{e:#}")))?;
    Ok(model_bytes)
}

fn has_external(model: &mut ModelProto) -> Result<bool> {
    let mut any = false;
    visit::tensors_mut(model, &mut |t, _| {
        any |= t.is_external();
        Ok(())
    })?;
    Ok(any)
}

/// The size of the protobuf if every tensor were inline.
fn inline_size(model: &mut ModelProto, weights: &WeightStore) -> Result<u64> {
    let mut extra = 0u64;
    visit::tensors_mut(model, &mut |t, _| {
        if t.is_external() {
            // raw_data: tag, length varint (≤ 10 bytes), bytes.
            extra += 11 + weights.source(t).map(|s| s.len())?;
        }
        Ok(())
    })?;
    Ok(model.encoded_len() as u64 + extra)
}

fn set_external(t: &mut TensorProto, location: &str, offset: u64, len: u64) {
    t.raw_data = None;
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.data_location = Some(data_location::EXTERNAL);
    t.external_data = vec![
        StringStringEntryProto::new("location", location),
        StringStringEntryProto::new("offset", offset.to_string()),
        StringStringEntryProto::new("length", len.to_string()),
    ];
}

fn set_inline(t: &mut TensorProto, weights: &WeightStore) -> Result<()> {
    t.raw_data = Some(weights.shared(t)?);
    t.data_location = None;
    t.external_data.clear();
    Ok(())
}

impl Source<'_> {
    fn len(&self) -> u64 {
        match self {
            Source::File { len, .. } => *len,
            Source::Mem(b) => b.len() as u64,
        }
    }
}

/// The external data file being written: tensors appended at aligned offsets.
struct DataSink<'a> {
    file: &'a File,
    location: String,
    path: &'a Path,
    align: u64,
    pos: u64,
    sources: Sources,
    progress: indicatif::ProgressBar,
}

impl<'a> DataSink<'a> {
    fn new(file: &'a File, location: &str, path: &'a Path, align: u64) -> Self {
        let progress = crate::progress::bytes("writing");
        DataSink {
            file,
            location: location.to_string(),
            path,
            align: align.max(1),
            pos: 0,
            sources: Sources::default(),
            progress,
        }
    }

    /// Appends a tensor's bytes; returns its offset and length.
    fn append(&mut self, t: &TensorProto, weights: &WeightStore) -> Result<(u64, u64)> {
        crate::interrupt::check()?;
        let source = weights.source(t)?;
        let len = source.len();
        let offset = self.pos.div_ceil(self.align) * self.align;
        let mut out = self.file;
        let pad = offset - self.pos;
        if pad > 0 {
            io::copy(&mut io::repeat(0).take(pad), &mut out)?;
        }
        self.progress.inc_length(len);
        let copied = match source {
            Source::Mem(bytes) => {
                out.write_all(&bytes)?;
                len
            }
            Source::File {
                file,
                offset: at,
                len,
            } => self.sources.copy(file, at, len, out).with_context(|| {
                format!(
                    "copying tensor '{}' from {} to {}",
                    t.name(),
                    file.path.display(),
                    self.path.display()
                )
            })?,
        };
        if copied != len {
            bail!(
                "tensor '{}': expected {len} bytes from its source but got {copied} (was the file truncated?)",
                t.name()
            );
        }
        self.progress.inc(len);
        self.pos = offset + len;
        Ok((offset, len))
    }
}

/// The source file last copied from, kept open for the next tensor (tensors usually come
/// from one data file in order; a model with one file per tensor opens each once, without
/// holding thousands of descriptors).
#[derive(Default)]
struct Sources(Option<(PathBuf, File)>);

impl Sources {
    /// Copies `len` bytes at `offset` of `from` to the end of `out`; returns the bytes copied.
    /// Files are reopened only if still the files the model was read from.
    fn copy(&mut self, from: &FileId, offset: u64, len: u64, mut out: &File) -> Result<u64> {
        let mut src = match &self.0 {
            Some((path, file)) if *path == from.path => file,
            _ => &self.0.insert((from.path.clone(), from.open()?)).1,
        };
        src.seek(SeekFrom::Start(offset))?;
        // File to file: the standard library uses copy_file_range, so the bytes never pass
        // through this process's memory.
        Ok(io::copy(&mut src.take(len), &mut out)?)
    }
}

/// Encodes a message straight into a file through a small buffer, so an inline model of up to
/// 2 GB never exists twice in memory; tensor bytes that are slices of `weights`' memory maps
/// are copied file to file instead of through the map, so memory stays flat even then.
/// Returns the number of bytes written.
fn encode_to(model: &ModelProto, weights: &WeightStore, file: &File) -> Result<u64> {
    let mut w = FileBuf {
        file,
        weights,
        sources: Sources::default(),
        buf: Vec::with_capacity(FileBuf::CAP),
        written: 0,
        error: None,
    };
    model
        .encode(&mut w)
        .map_err(|e| anyhow!("encoding the model: {e}"))?;
    w.flush();
    match w.error {
        Some(e) => Err(e.context("writing the model")),
        None => Ok(w.written),
    }
}

/// A `BufMut` that flushes to a file whenever its buffer fills. `BufMut` cannot fail, so the
/// first error is kept and reported after encoding.
struct FileBuf<'a> {
    file: &'a File,
    weights: &'a WeightStore,
    sources: Sources,
    buf: Vec<u8>,
    written: u64,
    error: Option<anyhow::Error>,
}

impl FileBuf<'_> {
    const CAP: usize = 1 << 20;
    /// Slices at least this big skip the buffer (and, when mapped, are copied file to file).
    const DIRECT: usize = 64 << 10;

    fn write(&mut self, bytes: &[u8]) {
        if let (None, Err(e)) = (&self.error, crate::interrupt::check()) {
            self.error = Some(e);
        }
        if self.error.is_some() {
            return;
        }
        let len = bytes.len() as u64;
        let done = match self.weights.locate(bytes) {
            Some((from, offset)) => self
                .sources
                .copy(from, offset, len, self.file)
                .and_then(|n| {
                    if n == len {
                        Ok(())
                    } else {
                        Err(anyhow!(
                            "{} is shorter than when the model was read",
                            from.path.display()
                        ))
                    }
                }),
            None => (&mut self.file).write_all(bytes).map_err(Into::into),
        };
        match done {
            Ok(()) => self.written += len,
            Err(e) => self.error = Some(e),
        }
    }

    fn flush(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.write(&buf);
        self.buf = buf;
        self.buf.clear();
    }
}

// SAFETY: `chunk_mut` hands out only the vector's spare capacity, and `advance_mut` is called
// by the `BufMut` contract with at most that many bytes initialised.
unsafe impl BufMut for FileBuf<'_> {
    fn remaining_mut(&self) -> usize {
        usize::MAX - self.buf.len()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(len <= self.buf.capacity(), "advance_mut past the buffer");
        // SAFETY: the caller initialised `cnt` bytes of the spare capacity (BufMut contract).
        unsafe { self.buf.set_len(len) };
        if self.buf.len() == self.buf.capacity() {
            self.flush();
        }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush();
        }
        UninitSlice::uninit(self.buf.spare_capacity_mut())
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= Self::DIRECT {
            // Large tensors go straight to the file.
            self.flush();
            self.write(src);
        } else {
            if self.buf.len() + src.len() > self.buf.capacity() {
                self.flush();
            }
            self.buf.extend_from_slice(src);
        }
    }

    fn put<T: bytes::Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        while src.has_remaining() {
            let chunk = src.chunk();
            let n = chunk.len();
            self.put_slice(chunk);
            src.advance(n);
        }
    }
}
