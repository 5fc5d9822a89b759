//! Tensors at the runtime's edges: the model inputs a batch of token ids becomes, the f32 copy of
//! an output or stream value (`Activations`), and the projection applied to outputs before they
//! are compared.

use std::path::Path;

use anyhow::{anyhow, Result};
use half::f16;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::Sessions;
use crate::error::SkrrError;
use crate::onnx::proto::tensor_proto::data_type;
use crate::onnx::ValueInfoProto;

/// A row-major f32 copy of an output or stream value, `[rows, positions, channels]` (rank-2
/// outputs have one position).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activations {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Activations {
    pub fn channels(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Positions per row.
    pub fn positions(&self) -> usize {
        if self.shape.len() >= 3 {
            self.shape[1..self.shape.len() - 1].iter().product()
        } else {
            1
        }
    }

    /// Row `r`'s positions × channels.
    pub fn row(&self, r: usize) -> &[f32] {
        let n = self.positions() * self.channels();
        &self.data[r * n..(r + 1) * n]
    }
}

/// An f32 copy of a float or float16 tensor value (float16 widened exactly).
pub fn activations(v: &DynValue) -> Result<Activations> {
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(anyhow!("expected a tensor, got {}", v.dtype()));
    };
    let (shape, data) = match ty {
        TensorElementType::Float32 => {
            let (shape, data) = v.try_extract_tensor::<f32>()?;
            (shape.clone(), data.to_vec())
        }
        TensorElementType::Float16 => {
            let (shape, data) = v.try_extract_tensor::<f16>()?;
            (shape.clone(), data.iter().map(|x| x.to_f32()).collect())
        }
        other => return Err(anyhow!("expected a float or float16 output, got {other}")),
    };
    Ok(Activations {
        shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
        data,
    })
}

/// Bytes a tensor value holds.
pub fn value_bytes(v: &DynValue) -> u64 {
    match v.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            shape.iter().map(|&d| d.max(0) as u64).product::<u64>()
                * ty.byte_size(1).unwrap_or(1) as u64
        }
        _ => 0,
    }
}

/// The model's graph inputs for a batch of id rows right-padded to `len` with `pad_id`:
/// `input_ids`, `attention_mask` (1 on tokens), `token_type_ids` (0), `position_ids` (0..len),
/// each in the element type the model declares. Any other input is an error naming it.
pub fn feeds(
    inputs: &[ValueInfoProto],
    rows: &[&[i64]],
    len: usize,
    pad_id: i64,
) -> Result<Vec<(String, DynValue)>> {
    let shape = vec![rows.len() as i64, len as i64];
    inputs
        .iter()
        .map(|vi| {
            let name = vi.name();
            let values: Vec<i64> = match name {
                "input_ids" => rows
                    .iter()
                    .flat_map(|r| (0..len).map(move |t| r.get(t).copied().unwrap_or(pad_id)))
                    .collect(),
                "attention_mask" => rows
                    .iter()
                    .flat_map(|r| (0..len).map(move |t| i64::from(t < r.len())))
                    .collect(),
                "token_type_ids" => vec![0; rows.len() * len],
                "position_ids" => rows.iter().flat_map(|_| 0..len as i64).collect(),
                other => {
                    return Err(SkrrError::BadInput(format!(
                        "the model has an input {other:?}; calibration can feed input_ids, \
                         attention_mask, token_type_ids and position_ids"
                    ))
                    .into())
                }
            };
            let shape = shape.clone();
            let value = match crate::graph::elem_type(vi) {
                Some(data_type::INT64) => Tensor::from_array((shape, values))?.into_dyn(),
                Some(data_type::INT32) => {
                    let v: Vec<i32> = values.iter().map(|&x| x as i32).collect();
                    Tensor::from_array((shape, v))?.into_dyn()
                }
                Some(data_type::FLOAT) => {
                    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                    Tensor::from_array((shape, v))?.into_dyn()
                }
                Some(data_type::FLOAT16) => {
                    let v: Vec<f16> = values.iter().map(|&x| f16::from_f32(x as f32)).collect();
                    Tensor::from_array((shape, v))?.into_dyn()
                }
                Some(data_type::BOOL) => {
                    let v: Vec<bool> = values.iter().map(|&x| x != 0).collect();
                    Tensor::from_array((shape, v))?.into_dyn()
                }
                other => {
                    return Err(SkrrError::BadInput(format!(
                    "model input {name} has element type {other:?}, which calibration cannot feed"
                ))
                    .into())
                }
            };
            Ok((name.to_string(), value))
        })
        .collect()
}

/// A model applied to the final output of dense and pruned models alike (`--projection`): one
/// float or float16 input, its first output taken.
pub struct Projection {
    session: Session,
    input: String,
    ty: TensorElementType,
}

impl Projection {
    /// The projection model at `path`, checked to have one float input and an output.
    pub fn load(sessions: &Sessions, path: &Path) -> Result<Projection> {
        let bad = |msg: String| -> anyhow::Error {
            SkrrError::BadInput(format!("{}: {msg}", path.display())).into()
        };
        if !path.is_file() {
            return Err(bad("projection model not found".into()));
        }
        let session = sessions
            .from_file(path)
            .map_err(|e| bad(format!("ONNX Runtime cannot load it as a model: {e:#}")))?;
        if session.inputs().len() != 1 || session.outputs().is_empty() {
            return Err(bad(format!(
                "a projection model needs exactly one input and an output, it has {} and {}",
                session.inputs().len(),
                session.outputs().len()
            )));
        }
        let input = &session.inputs()[0];
        let ty = match input.dtype() {
            ValueType::Tensor { ty, .. }
                if matches!(ty, TensorElementType::Float32 | TensorElementType::Float16) =>
            {
                *ty
            }
            other => {
                return Err(bad(format!(
                    "projection input {} has type {other}, expected float or float16",
                    input.name()
                )))
            }
        };
        let input = input.name().to_string();
        Ok(Projection { session, input, ty })
    }

    /// Runs the projection model on `x`.
    pub fn apply(&mut self, x: &Activations) -> Result<Activations> {
        let shape: Vec<i64> = x.shape.iter().map(|&d| d as i64).collect();
        let value: DynValue = match self.ty {
            TensorElementType::Float16 => {
                let v: Vec<f16> = x.data.iter().map(|&a| f16::from_f32(a)).collect();
                Tensor::from_array((shape, v))?.into_dyn()
            }
            _ => Tensor::from_array((shape, x.data.clone()))?.into_dyn(),
        };
        let out = self
            .session
            .run(vec![(self.input.as_str(), SessionInputValue::from(value))])
            .map_err(|e| {
                SkrrError::Runtime(format!("ONNX Runtime failed in the projection: {e}"))
            })?;
        let (_, first) = out
            .iter()
            .next()
            .ok_or_else(|| anyhow!("the projection produced no output"))?;
        activations(&first)
    }
}
