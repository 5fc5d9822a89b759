//! Tensor sizes, inline storage and typed views.
//!
//! ONNX stores a tensor's elements either as little-endian `raw_data` or in a typed repeated
//! field whose choice depends on the data type (fp16 as `uint16` bits inside `int32_data`,
//! `uint32` inside `uint64_data`, ...). Everything downstream wants one thing: the
//! little-endian bytes, checked against the declared shape. This module provides that.

use std::borrow::Cow;

use anyhow::{bail, Context, Result};
use half::{bf16, f16};

use crate::onnx::tensor_proto::data_type as dt;
use crate::onnx::TensorProto;

// Typed views reinterpret little-endian file bytes in place.
#[cfg(target_endian = "big")]
compile_error!(
    "skrr-onnx reads ONNX little-endian tensor data in place and needs a little-endian target"
);

/// The number of elements a tensor declares: the product of its dims, checked (a negative dim
/// or a product that does not fit in 64 bits is an error naming the tensor).
pub fn element_count(t: &TensorProto) -> Result<u64> {
    t.dims.iter().try_fold(1u64, |acc, &d| {
        let d = u64::try_from(d).with_context(|| {
            format!(
                "tensor '{}': negative dimension {d} in dims {:?}",
                t.name(),
                t.dims
            )
        })?;
        acc.checked_mul(d)
            .with_context(|| format!("tensor '{}': dims {:?} overflow 64 bits", t.name(), t.dims))
    })
}

/// Bytes per element for byte-addressable types; `None` for packed sub-byte types and strings.
pub fn element_size(data_type: i32) -> Option<u64> {
    Some(match data_type {
        dt::UINT8 | dt::INT8 | dt::BOOL => 1,
        // FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ, FLOAT8E8M0
        17..=20 | 24 => 1,
        dt::UINT16 | dt::INT16 | dt::FLOAT16 | dt::BFLOAT16 => 2,
        dt::FLOAT | dt::INT32 | dt::UINT32 => 4,
        dt::INT64 | dt::UINT64 | dt::DOUBLE | dt::COMPLEX64 => 8,
        dt::COMPLEX128 => 16,
        _ => return None,
    })
}

/// The data type's name in the ONNX specification, for messages.
pub fn type_name(data_type: i32) -> String {
    let name = match data_type {
        dt::FLOAT => "FLOAT",
        dt::UINT8 => "UINT8",
        dt::INT8 => "INT8",
        dt::UINT16 => "UINT16",
        dt::INT16 => "INT16",
        dt::INT32 => "INT32",
        dt::INT64 => "INT64",
        dt::STRING => "STRING",
        dt::BOOL => "BOOL",
        dt::FLOAT16 => "FLOAT16",
        dt::DOUBLE => "DOUBLE",
        dt::UINT32 => "UINT32",
        dt::UINT64 => "UINT64",
        dt::COMPLEX64 => "COMPLEX64",
        dt::COMPLEX128 => "COMPLEX128",
        dt::BFLOAT16 => "BFLOAT16",
        17 => "FLOAT8E4M3FN",
        18 => "FLOAT8E4M3FNUZ",
        19 => "FLOAT8E5M2",
        20 => "FLOAT8E5M2FNUZ",
        21 => "UINT4",
        22 => "INT4",
        23 => "FLOAT4E2M1",
        24 => "FLOAT8E8M0",
        25 => "UINT2",
        26 => "INT2",
        other => return format!("data_type {other}"),
    };
    name.to_string()
}

/// Elements packed per byte for sub-byte types (UINT4, INT4, FLOAT4E2M1: 2; UINT2, INT2: 4).
fn packed_per_byte(data_type: i32) -> Option<u64> {
    match data_type {
        21..=23 => Some(2),
        25 | 26 => Some(4),
        _ => None,
    }
}

/// The number of bytes a tensor's declared dims and data type take when stored raw.
pub fn stored_len(t: &TensorProto) -> Result<u64> {
    let n = element_count(t)?;
    let ty = t.data_type();
    if let Some(size) = element_size(ty) {
        return n.checked_mul(size).with_context(|| {
            format!(
                "tensor '{}': dims {:?} × {size} bytes overflow 64 bits",
                t.name(),
                t.dims
            )
        });
    }
    if let Some(per) = packed_per_byte(ty) {
        return Ok(n.div_ceil(per));
    }
    if ty == dt::STRING {
        bail!(
            "tensor '{}': string tensors have no fixed byte size",
            t.name()
        );
    }
    bail!("tensor '{}': unsupported {}", t.name(), type_name(ty))
}

/// Checks that `actual` stored bytes match the declared dims × element size.
pub(crate) fn check_len(t: &TensorProto, actual: u64) -> Result<()> {
    let expected = stored_len(t)?;
    if expected != actual {
        bail!(
            "tensor '{}': dims {:?} of {} need {expected} bytes but {actual} are stored",
            t.name(),
            t.dims,
            type_name(t.data_type())
        );
    }
    Ok(())
}

/// The little-endian bytes of a tensor stored inline (`raw_data` or a typed field).
pub(crate) fn inline_bytes(t: &TensorProto) -> Result<Cow<'_, [u8]>> {
    if let Some(raw) = &t.raw_data {
        check_len(t, raw.len() as u64)?;
        return Ok(Cow::Borrowed(raw));
    }
    let n = element_count(t)?;
    let ty = t.data_type();
    // Complex numbers take two typed values per element.
    let values = match ty {
        dt::COMPLEX64 | dt::COMPLEX128 => n.checked_mul(2),
        _ => Some(n),
    };
    let check = |stored: usize, field: &str| -> Result<()> {
        if values != Some(stored as u64) {
            bail!(
                "tensor '{}': dims {:?} declare {n} elements but {field} holds {stored} values",
                t.name(),
                t.dims
            );
        }
        Ok(())
    };
    let bytes: Vec<u8> = match ty {
        dt::FLOAT | dt::COMPLEX64 => {
            check(t.float_data.len(), "float_data")?;
            t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        dt::DOUBLE | dt::COMPLEX128 => {
            check(t.double_data.len(), "double_data")?;
            t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        dt::INT64 => {
            check(t.int64_data.len(), "int64_data")?;
            t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        dt::UINT64 => {
            check(t.uint64_data.len(), "uint64_data")?;
            t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        dt::UINT32 => {
            check(t.uint64_data.len(), "uint64_data")?;
            t.uint64_data
                .iter()
                .flat_map(|&v| (v as u32).to_le_bytes())
                .collect()
        }
        dt::INT32 => {
            check(t.int32_data.len(), "int32_data")?;
            t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        // 16-bit types (fp16/bf16 as their bit patterns) live in the low half of int32_data.
        dt::INT16 | dt::UINT16 | dt::FLOAT16 | dt::BFLOAT16 => {
            check(t.int32_data.len(), "int32_data")?;
            t.int32_data
                .iter()
                .flat_map(|&v| (v as u16).to_le_bytes())
                .collect()
        }
        dt::INT8 | dt::UINT8 | dt::BOOL | 17..=20 | 24 => {
            check(t.int32_data.len(), "int32_data")?;
            t.int32_data.iter().map(|&v| v as u8).collect()
        }
        dt::STRING => bail!(
            "tensor '{}': string tensors have no byte representation",
            t.name()
        ),
        _ => bail!(
            "tensor '{}': {} stored in typed fields is not supported (only as raw_data)",
            t.name(),
            type_name(ty)
        ),
    };
    Ok(Cow::Owned(bytes))
}

/// A tensor's elements, typed. Borrowed from the file when the bytes are suitably aligned.
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dims: &'a [i64],
    pub data: TypedData<'a>,
}

pub enum TypedData<'a> {
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
    F16(Cow<'a, [f16]>),
    BF16(Cow<'a, [bf16]>),
    I8(Cow<'a, [i8]>),
    U8(Cow<'a, [u8]>),
    I16(Cow<'a, [i16]>),
    U16(Cow<'a, [u16]>),
    I32(Cow<'a, [i32]>),
    U32(Cow<'a, [u32]>),
    I64(Cow<'a, [i64]>),
    U64(Cow<'a, [u64]>),
    Bool(Vec<bool>),
}

/// Reinterprets bytes as `T`, borrowing when aligned and copying otherwise (raw_data inside a
/// protobuf sits at arbitrary offsets).
fn cast<T: bytemuck::Pod>(bytes: Cow<'_, [u8]>) -> Cow<'_, [T]> {
    let copy = |b: &[u8]| -> Vec<T> {
        let mut v = vec![T::zeroed(); b.len() / std::mem::size_of::<T>()];
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
        let n = dst.len();
        dst.copy_from_slice(&b[..n]);
        v
    };
    match bytes {
        Cow::Borrowed(b) => match bytemuck::try_cast_slice(b) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(copy(b)),
        },
        Cow::Owned(v) => Cow::Owned(copy(&v)),
    }
}

impl<'a> TensorView<'a> {
    pub(crate) fn new(t: &'a TensorProto, bytes: Cow<'a, [u8]>) -> Result<Self> {
        check_len(t, bytes.len() as u64)?;
        let data = match t.data_type() {
            dt::FLOAT => TypedData::F32(cast(bytes)),
            dt::DOUBLE => TypedData::F64(cast(bytes)),
            dt::FLOAT16 => TypedData::F16(cast(bytes)),
            dt::BFLOAT16 => TypedData::BF16(cast(bytes)),
            dt::INT8 => TypedData::I8(cast(bytes)),
            dt::UINT8 => TypedData::U8(bytes),
            dt::INT16 => TypedData::I16(cast(bytes)),
            dt::UINT16 => TypedData::U16(cast(bytes)),
            dt::INT32 => TypedData::I32(cast(bytes)),
            dt::UINT32 => TypedData::U32(cast(bytes)),
            dt::INT64 => TypedData::I64(cast(bytes)),
            dt::UINT64 => TypedData::U64(cast(bytes)),
            dt::BOOL => TypedData::Bool(bytes.iter().map(|&b| b != 0).collect()),
            ty => bail!("tensor '{}': no typed view for {}", t.name(), type_name(ty)),
        };
        Ok(TensorView {
            name: t.name(),
            dims: &t.dims,
            data,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            TypedData::F32(v) => v.len(),
            TypedData::F64(v) => v.len(),
            TypedData::F16(v) => v.len(),
            TypedData::BF16(v) => v.len(),
            TypedData::I8(v) => v.len(),
            TypedData::U8(v) => v.len(),
            TypedData::I16(v) => v.len(),
            TypedData::U16(v) => v.len(),
            TypedData::I32(v) => v.len(),
            TypedData::U32(v) => v.len(),
            TypedData::I64(v) => v.len(),
            TypedData::U64(v) => v.len(),
            TypedData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements converted to f32 (integers rounded to the nearest f32, bools as 0/1).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TypedData::F32(v) => v.to_vec(),
            TypedData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            TypedData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TypedData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TypedData::I8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            TypedData::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            TypedData::I16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            TypedData::U16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            TypedData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            TypedData::U32(v) => v.iter().map(|&x| x as f32).collect(),
            TypedData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            TypedData::U64(v) => v.iter().map(|&x| x as f32).collect(),
            TypedData::Bool(v) => v.iter().map(|&x| f32::from(u8::from(x))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn tensor(ty: i32, dims: &[i64]) -> TensorProto {
        TensorProto {
            name: Some("w".into()),
            data_type: Some(ty),
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn element_count_rejects_negative_and_overflow() {
        assert_eq!(element_count(&tensor(dt::FLOAT, &[2, 3, 4])).unwrap(), 24);
        assert_eq!(element_count(&tensor(dt::FLOAT, &[])).unwrap(), 1);
        assert_eq!(element_count(&tensor(dt::FLOAT, &[3, 0])).unwrap(), 0);
        let err = element_count(&tensor(dt::FLOAT, &[2, -1])).unwrap_err();
        assert!(err.to_string().contains("negative dimension -1"), "{err}");
        let err = element_count(&tensor(dt::FLOAT, &[1 << 40, 1 << 40])).unwrap_err();
        assert!(err.to_string().contains("overflow"), "{err}");
        // Fits in elements, overflows in bytes.
        let err = stored_len(&tensor(dt::DOUBLE, &[1 << 31, 1 << 31])).unwrap_err();
        assert!(err.to_string().contains("overflow"), "{err}");
    }

    #[test]
    fn packed_types_round_up() {
        assert_eq!(stored_len(&tensor(22, &[3])).unwrap(), 2);
        assert_eq!(stored_len(&tensor(25, &[5])).unwrap(), 2);
        assert!(stored_len(&tensor(99, &[1])).is_err());
    }

    #[test]
    fn typed_fields_become_little_endian_bytes() {
        let mut t = tensor(dt::FLOAT16, &[2]);
        t.int32_data = vec![0x3c00, 0xc000]; // 1.0, -2.0
        assert_eq!(&*inline_bytes(&t).unwrap(), &[0x00, 0x3c, 0x00, 0xc0]);
        let v = TensorView::new(&t, inline_bytes(&t).unwrap()).unwrap();
        assert_eq!(v.to_f32(), vec![1.0, -2.0]);

        let mut t = tensor(dt::UINT32, &[1]);
        t.uint64_data = vec![0xdead_beef];
        assert_eq!(&*inline_bytes(&t).unwrap(), &0xdead_beef_u32.to_le_bytes());

        let mut t = tensor(dt::COMPLEX64, &[1]);
        t.float_data = vec![1.0, 2.0];
        assert_eq!(inline_bytes(&t).unwrap().len(), 8);
    }

    #[test]
    fn count_mismatch_names_the_tensor() {
        let mut t = tensor(dt::FLOAT, &[3]);
        t.float_data = vec![1.0, 2.0];
        let err = inline_bytes(&t).unwrap_err().to_string();
        assert!(
            err.contains("'w'") && err.contains("3 elements") && err.contains("2 values"),
            "{err}"
        );
        let mut t = tensor(dt::FLOAT, &[3]);
        t.raw_data = Some(Bytes::from_static(&[0; 8]));
        let err = inline_bytes(&t).unwrap_err().to_string();
        assert!(
            err.contains("'w'") && err.contains("need 12 bytes but 8"),
            "{err}"
        );
    }

    #[test]
    fn unaligned_raw_data_is_copied_not_misread() {
        let mut buf = vec![0u8; 9];
        buf[1..5].copy_from_slice(&1.5f32.to_le_bytes());
        buf[5..9].copy_from_slice(&(-3.0f32).to_le_bytes());
        let mut t = tensor(dt::FLOAT, &[2]);
        t.raw_data = Some(Bytes::from(buf).slice(1..));
        let v = TensorView::new(&t, inline_bytes(&t).unwrap()).unwrap();
        assert_eq!(v.to_f32(), vec![1.5, -3.0]);
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn bf16_and_bool_views() {
        let mut t = tensor(dt::BFLOAT16, &[1]);
        t.raw_data = Some(Bytes::from(bf16::from_f32(0.5).to_le_bytes().to_vec()));
        assert_eq!(
            TensorView::new(&t, inline_bytes(&t).unwrap())
                .unwrap()
                .to_f32(),
            vec![0.5]
        );
        let mut t = tensor(dt::BOOL, &[3]);
        t.int32_data = vec![1, 0, 1];
        let v = TensorView::new(&t, inline_bytes(&t).unwrap()).unwrap();
        assert!(matches!(&v.data, TypedData::Bool(b) if b == &[true, false, true]));
    }
}
