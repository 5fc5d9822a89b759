//! Tensors at the engine's edges: the model inputs a batch of token ids becomes, the f32 copy of
//! an output or stream value (`Activations`), and the per-row measures D and Block Influence are
//! made of.

use anyhow::{anyhow, Result};
use half::f16;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

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

    fn row(&self, r: usize) -> &[f32] {
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

fn check_same(a: &Activations, b: &Activations, counted: &[usize]) -> Result<()> {
    if a.shape != b.shape || a.shape.first() != Some(&counted.len()) {
        return Err(anyhow!(
            "output shape {:?} differs from the dense output {:?} ({} rows)",
            a.shape,
            b.shape,
            counted.len()
        ));
    }
    Ok(())
}

/// Squared error per row over its first `counted[r]` positions and all channels, in f64.
pub fn row_sse(out: &Activations, target: &Activations, counted: &[usize]) -> Result<Vec<f64>> {
    check_same(out, target, counted)?;
    let ch = out.channels();
    Ok(counted
        .iter()
        .enumerate()
        .map(|(r, &n)| {
            let n = n.min(out.positions()) * ch;
            out.row(r)[..n]
                .iter()
                .zip(&target.row(r)[..n])
                .map(|(&a, &b)| {
                    let d = f64::from(a) - f64::from(b);
                    d * d
                })
                .sum()
        })
        .collect())
}

/// Sum over rows and counted positions of cos(a, b) across channels.
pub fn row_cos_sum(a: &Activations, b: &Activations, counted: &[usize]) -> Result<f64> {
    check_same(a, b, counted)?;
    let ch = a.channels();
    let mut sum = 0.0;
    for (r, &n) in counted.iter().enumerate() {
        for t in 0..n.min(a.positions()) {
            let x = &a.row(r)[t * ch..(t + 1) * ch];
            let y = &b.row(r)[t * ch..(t + 1) * ch];
            let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
            for (&u, &v) in x.iter().zip(y) {
                let (u, v) = (f64::from(u), f64::from(v));
                xy += u * v;
                xx += u * u;
                yy += v * v;
            }
            let norm = (xx * yy).sqrt();
            sum += if norm > 0.0 { xy / norm } else { 1.0 };
        }
    }
    Ok(sum)
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

/// Runs the projection model on `x`.
pub fn project(
    session: &mut Session,
    input: &str,
    ty: TensorElementType,
    x: &Activations,
) -> Result<Activations> {
    let shape: Vec<i64> = x.shape.iter().map(|&d| d as i64).collect();
    let value: DynValue = match ty {
        TensorElementType::Float16 => {
            let v: Vec<f16> = x.data.iter().map(|&a| f16::from_f32(a)).collect();
            Tensor::from_array((shape, v))?.into_dyn()
        }
        _ => Tensor::from_array((shape, x.data.clone()))?.into_dyn(),
    };
    let out = session
        .run(vec![(input, SessionInputValue::from(value))])
        .map_err(|e| SkrrError::Runtime(format!("ONNX Runtime failed in the projection: {e}")))?;
    let (_, first) = out
        .iter()
        .next()
        .ok_or_else(|| anyhow!("the projection produced no output"))?;
    activations(&first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(shape: &[usize], data: &[f32]) -> Activations {
        Activations {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn sse_counts_only_the_counted_positions() {
        let a = d(&[2, 2, 2], &[1., 1., 9., 9., 0., 0., 0., 0.]);
        let b = d(&[2, 2, 2], &[0., 0., 0., 0., 1., 2., 5., 5.]);
        assert_eq!(row_sse(&a, &b, &[1, 2]).unwrap(), vec![2.0, 55.0]);
        assert!(row_sse(&a, &d(&[2, 2, 1], &[0.; 4]), &[1, 2]).is_err());
    }

    #[test]
    fn cos_of_parallel_and_orthogonal_tokens() {
        let a = d(&[1, 2, 2], &[1., 0., 0., 1.]);
        let b = d(&[1, 2, 2], &[2., 0., 1., 0.]);
        assert!((row_cos_sum(&a, &b, &[2]).unwrap() - 1.0).abs() < 1e-12);
        assert!((row_cos_sum(&a, &b, &[1]).unwrap() - 1.0).abs() < 1e-12);
    }
}
