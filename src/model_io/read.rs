//! Reading a model: map, decode, validate every tensor's storage.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use prost::Message;

use super::external::{map_file, ExternalFile, ExternalRef, FileId};
use super::tensor::{check_len, element_count, inline_bytes};
use super::{visit, Model, WeightStore};
use crate::error::SkrrError;
use crate::onnx::tensor_proto::data_type as dt;
use crate::onnx::{ModelProto, TensorProto};

/// Reads an ONNX model without loading its weights.
///
/// Fails with [`SkrrError::BadModel`] naming the file (and tensor) when the file is not a valid
/// ONNX protobuf, an external data location escapes the model's folder or is missing, an
/// external range runs past its file, or any tensor's stored bytes do not match its dims.
pub fn read_model(path: &Path) -> Result<Model> {
    let bad = |e: anyhow::Error| -> anyhow::Error {
        SkrrError::BadModel {
            path: path.to_path_buf(),
            msg: format!("{e:#}"),
        }
        .into()
    };
    let path = std::path::absolute(path).map_err(|e| bad(e.into()))?;
    let meta = std::fs::metadata(&path)
        .with_context(|| "cannot read the model file".to_string())
        .map_err(bad)?;
    if !meta.is_file() {
        return Err(bad(anyhow::anyhow!("not a regular file")));
    }
    let id = FileId::new(path.clone(), &meta);
    let whole = id.open().and_then(|f| map_file(&f, &path)).map_err(bad)?;
    let mut proto = ModelProto::decode(whole.clone()).map_err(|e| {
        bad(anyhow::anyhow!(
            "not a valid ONNX model (protobuf decoding failed: {e})"
        ))
    })?;
    if proto.graph.is_none() {
        return Err(bad(anyhow::anyhow!(
            "not a valid ONNX model (no graph; {} bytes)",
            whole.len()
        )));
    }
    let dir = path
        .parent()
        .context("the model path has no folder")
        .and_then(|d| Ok(d.canonicalize()?))
        .map_err(bad)?;

    let mut files: Vec<ExternalFile> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    visit::tensors_mut(&mut proto, &mut |t, _| {
        validate(t, &dir, &mut files, &mut index)
    })
    .map_err(bad)?;

    Ok(Model {
        proto,
        weights: WeightStore {
            model: Some((id, whole)),
            files,
            index,
        },
        path,
    })
}

/// Checks one tensor's storage against its declared shape, resolving external files once each.
fn validate(
    t: &TensorProto,
    dir: &Path,
    files: &mut Vec<ExternalFile>,
    index: &mut HashMap<String, usize>,
) -> Result<()> {
    if t.is_external() {
        let r = ExternalRef::parse(t)?;
        let i = match index.get(r.location) {
            Some(&i) => i,
            None => {
                let file = ExternalFile::resolve(dir, r.location)
                    .with_context(|| format!("tensor '{}'", t.name()))?;
                files.push(file);
                index.insert(r.location.to_string(), files.len() - 1);
                files.len() - 1
            }
        };
        files[i].check_range(t, &r)?;
        return Ok(());
    }
    if t.data_type() == dt::STRING {
        let n = element_count(t)?;
        if n != t.string_data.len() as u64 {
            bail!(
                "tensor '{}': dims {:?} declare {n} strings but {} are stored",
                t.name(),
                t.dims,
                t.string_data.len()
            );
        }
        return Ok(());
    }
    match &t.raw_data {
        Some(raw) => check_len(t, raw.len() as u64),
        None => inline_bytes(t).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit_code_of;

    #[test]
    fn garbage_and_truncation_are_bad_model_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        for (bytes, why) in [
            (&b""[..], "no graph"),
            (&[0xff, 0xff, 0xff, 0xff][..], "protobuf decoding failed"),
            // field 7 (graph), length 100, but only 2 bytes follow.
            (&[0x3a, 100, 0x0a, 0x00][..], "protobuf decoding failed"),
        ] {
            std::fs::write(&p, bytes).unwrap();
            let err = read_model(&p).err().unwrap();
            let msg = format!("{err:#}");
            assert!(msg.contains("m.onnx") && msg.contains(why), "{msg}");
            assert_eq!(exit_code_of(&err), crate::error::exit::BAD_MODEL);
        }
        let err = read_model(&dir.path().join("none.onnx")).err().unwrap();
        assert!(format!("{err:#}").contains("none.onnx"));
    }
}
