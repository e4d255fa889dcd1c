//! One tensor: its header fields, its data in the one canonical layout, and the
//! conversions between JSON `data` and that layout.
//!
//! The canonical layout is the binary tensor extension's: elements little-endian, row
//! major, no padding; `BOOL` one byte (0 or 1); `BYTES` each element a 4-byte
//! little-endian length and its bytes. A tensor sent as JSON is converted into it on
//! arrival, so JSON and binary requests for the same values hold identical bytes.

use std::ops::Range;

use bytes::Bytes;
use half::{bf16, f16};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use super::datatype::DataType;
use super::error::KserveError;

/// The most dimensions a tensor may have. Triton's own limit is far lower in practice;
/// the bound keeps a hostile shape from multiplying memory per row.
pub const MAX_DIMS: usize = 32;

/// A tensor as it travels in a request or a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub datatype: DataType,
    /// Its shape; every dimension is known (no `-1`).
    pub shape: Vec<u64>,
    /// Its elements in the canonical layout (see the module docs).
    pub data: Bytes,
    /// Its `parameters`, less `binary_data_size` (a detail of the wire, not of the tensor).
    pub parameters: Map<String, Value>,
}

/// The element count of `shape`, refusing shapes too deep or whose product overflows.
pub(crate) fn element_count(shape: &[u64], tensor: &str) -> Result<u64, KserveError> {
    if shape.len() > MAX_DIMS {
        return Err(KserveError::InvalidShape {
            tensor: tensor.to_owned(),
            reason: format!("{} dimensions; at most {MAX_DIMS} are allowed", shape.len()),
        });
    }
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| KserveError::InvalidShape {
            tensor: tensor.to_owned(),
            reason: format!("the element count of {shape:?} overflows 64 bits"),
        })
}

/// The byte length a fixed-size tensor of `count` elements needs, or `None` for `BYTES`.
fn byte_len(
    datatype: DataType,
    count: u64,
    shape: &[u64],
    tensor: &str,
) -> Result<Option<u64>, KserveError> {
    let Some(size) = datatype.element_size() else {
        return Ok(None);
    };
    count
        .checked_mul(size as u64)
        .map(Some)
        .ok_or_else(|| KserveError::InvalidShape {
            tensor: tensor.to_owned(),
            reason: format!("the byte size of {shape:?} {datatype} overflows 64 bits"),
        })
}

/// The byte range of each element of canonical `BYTES` data, or the index of the first
/// element whose length runs past the end. The ranges cover the data exactly.
pub(crate) fn bytes_elements(data: &[u8]) -> Result<Vec<Range<usize>>, usize> {
    let mut ranges = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let index = ranges.len();
        let prefix: [u8; 4] = data
            .get(pos..pos + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or(index)?;
        let len = u32::from_le_bytes(prefix) as usize;
        let start = pos + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or(index)?;
        ranges.push(start..end);
        pos = end;
    }
    Ok(ranges)
}

/// Checks binary data against the datatype and shape: its length for fixed-size types,
/// 0/1 for `BOOL`, whole length-prefixed elements for `BYTES`.
pub(crate) fn check_binary(
    tensor: &str,
    datatype: DataType,
    shape: &[u64],
    data: &[u8],
) -> Result<(), KserveError> {
    let count = element_count(shape, tensor)?;
    if let Some(expected) = byte_len(datatype, count, shape, tensor)? {
        if expected != data.len() as u64 {
            return Err(KserveError::BinarySize {
                tensor: tensor.to_owned(),
                shape: shape.to_vec(),
                datatype: datatype.as_str(),
                expected,
                actual: data.len() as u64,
            });
        }
        if datatype == DataType::Bool
            && let Some(index) = data.iter().position(|&b| b > 1)
        {
            return Err(KserveError::BoolByte {
                tensor: tensor.to_owned(),
                index,
                value: data[index],
            });
        }
        return Ok(());
    }
    let elements = bytes_elements(data).map_err(|index| KserveError::BytesElement {
        tensor: tensor.to_owned(),
        index,
    })?;
    check_count(tensor, shape, count, elements.len() as u64)
}

fn check_count(tensor: &str, shape: &[u64], expected: u64, actual: u64) -> Result<(), KserveError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KserveError::ElementCount {
            tensor: tensor.to_owned(),
            shape: shape.to_vec(),
            expected,
            actual,
        })
    }
}

/// Converts JSON `data`, flat or nested (row-major), into the canonical layout,
/// checking every element's type and range and the element count against `shape`.
pub(crate) fn json_to_canonical(
    tensor: &str,
    datatype: DataType,
    shape: &[u64],
    data: &Value,
) -> Result<Vec<u8>, KserveError> {
    let count = element_count(shape, tensor)?;
    let Value::Array(_) = data else {
        return Err(KserveError::InvalidField {
            field: format!("{tensor}.data"),
            message: "expected an array".to_owned(),
        });
    };
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    check_count(tensor, shape, count, flat.len() as u64)?;
    let mut out = Vec::with_capacity(flat.len() * datatype.element_size().unwrap_or(8));
    for (index, value) in flat.into_iter().enumerate() {
        push_element(&mut out, datatype, value).map_err(|reason| KserveError::InvalidElement {
            tensor: tensor.to_owned(),
            index,
            datatype: datatype.as_str(),
            reason,
        })?;
    }
    Ok(out)
}

/// The leaves of nested arrays, in row-major order. Depth is bounded by serde_json's
/// recursion limit on the parse that produced `value`.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        leaf => out.push(leaf),
    }
}

/// Appends one JSON element in the canonical layout, or says why it is not one.
fn push_element(out: &mut Vec<u8>, datatype: DataType, value: &Value) -> Result<(), String> {
    match datatype {
        DataType::Bool => out.push(u8::from(value.as_bool().ok_or("expected true or false")?)),
        DataType::Uint8 => out.push(unsigned(value, u8::MAX.into())? as u8),
        DataType::Uint16 => out.extend((unsigned(value, u16::MAX.into())? as u16).to_le_bytes()),
        DataType::Uint32 => out.extend((unsigned(value, u32::MAX.into())? as u32).to_le_bytes()),
        DataType::Uint64 => out.extend(unsigned(value, u64::MAX)?.to_le_bytes()),
        DataType::Int8 => {
            out.extend((signed(value, i8::MIN.into(), i8::MAX.into())? as i8).to_le_bytes())
        }
        DataType::Int16 => {
            out.extend((signed(value, i16::MIN.into(), i16::MAX.into())? as i16).to_le_bytes())
        }
        DataType::Int32 => {
            out.extend((signed(value, i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes())
        }
        DataType::Int64 => out.extend(signed(value, i64::MIN, i64::MAX)?.to_le_bytes()),
        DataType::Fp16 => {
            out.extend(half_float(float(value)?, f16::from_f64, f16::is_finite)?.to_le_bytes())
        }
        DataType::Bf16 => {
            out.extend(half_float(float(value)?, bf16::from_f64, bf16::is_finite)?.to_le_bytes())
        }
        DataType::Fp32 => out.extend((finite(float(value)? as f32 as f64)? as f32).to_le_bytes()),
        DataType::Fp64 => out.extend(float(value)?.to_le_bytes()),
        DataType::Bytes => {
            let s = value.as_str().ok_or("expected a string")?;
            let len = u32::try_from(s.len()).map_err(|_| "longer than 4 GiB")?;
            out.extend(len.to_le_bytes());
            out.extend(s.as_bytes());
        }
    }
    Ok(())
}

/// `x` rounded to a 16-bit float type, refusing values beyond its range.
fn half_float<T: Copy>(x: f64, from: fn(f64) -> T, is_finite: fn(T) -> bool) -> Result<T, String> {
    let v = from(x);
    if is_finite(v) {
        Ok(v)
    } else {
        Err(format!("{x} is out of range"))
    }
}

fn finite(x: f64) -> Result<f64, String> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err("out of range".to_owned())
    }
}

fn float(value: &Value) -> Result<f64, String> {
    value.as_f64().ok_or_else(|| "expected a number".to_owned())
}

fn unsigned(value: &Value, max: u64) -> Result<u64, String> {
    let v = value
        .as_u64()
        .ok_or_else(|| "expected a non-negative integer".to_owned())?;
    if v <= max {
        Ok(v)
    } else {
        Err(format!("{v} is larger than {max}"))
    }
}

fn signed(value: &Value, min: i64, max: i64) -> Result<i64, String> {
    let v = value
        .as_i64()
        .ok_or_else(|| "expected an integer in the 64-bit signed range".to_owned())?;
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside {min}..={max}"))
    }
}

/// The index of the first element JSON cannot carry (a non-finite float, a `BYTES`
/// element that is not UTF-8) in canonical data made of `pieces`, or `None`.
pub(crate) fn first_non_json<'a>(
    datatype: DataType,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Option<usize> {
    let mut before = 0;
    for piece in pieces {
        let (bad, count) = non_json_in_piece(datatype, piece);
        if let Some(b) = bad {
            return Some(before + b);
        }
        before += count;
    }
    None
}

/// The first element of one piece JSON cannot carry, and the piece's element count.
fn non_json_in_piece(datatype: DataType, piece: &[u8]) -> (Option<usize>, usize) {
    fn scan<const N: usize>(
        piece: &[u8],
        finite: impl Fn([u8; N]) -> bool,
    ) -> (Option<usize>, usize) {
        let chunks = piece.chunks_exact(N);
        let count = chunks.len();
        let bad = chunks
            .map(|c| c.try_into().expect("chunks_exact yields whole elements"))
            .position(|a| !finite(a));
        (bad, count)
    }
    match datatype {
        DataType::Fp16 => scan(piece, |a| f16::from_le_bytes(a).is_finite()),
        DataType::Bf16 => scan(piece, |a| bf16::from_le_bytes(a).is_finite()),
        DataType::Fp32 => scan(piece, |a| f32::from_le_bytes(a).is_finite()),
        DataType::Fp64 => scan(piece, |a| f64::from_le_bytes(a).is_finite()),
        DataType::Bytes => {
            let elements = bytes_elements(piece).unwrap_or_default();
            let bad = elements
                .iter()
                .position(|r| std::str::from_utf8(&piece[r.clone()]).is_err());
            (bad, elements.len())
        }
        other => (None, piece.len() / other.element_size().unwrap_or(1)),
    }
}

/// Canonical data, possibly in several element-aligned pieces, serialized as a flat JSON
/// array. Callers check [`first_non_json`] first: a non-finite float would become `null`.
#[derive(Debug)]
pub(crate) struct JsonData<'a> {
    pub datatype: DataType,
    pub pieces: &'a [&'a [u8]],
}

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for piece in self.pieces {
            serialize_piece(&mut seq, self.datatype, piece)?;
        }
        seq.end()
    }
}

/// Serializes the elements of one piece of canonical data. Floats are written in their
/// own width's shortest form (`0.1` for an FP32 0.1, not `0.10000000149011612`).
pub(crate) fn serialize_piece<S: SerializeSeq>(
    seq: &mut S,
    datatype: DataType,
    piece: &[u8],
) -> Result<(), S::Error> {
    macro_rules! each {
        ($n:literal, $f:expr) => {
            for c in piece.chunks_exact($n) {
                let a: [u8; $n] = c.try_into().expect("chunks_exact yields whole elements");
                seq.serialize_element(&$f(a))?;
            }
        };
    }
    match datatype {
        DataType::Bool => each!(1, |a: [u8; 1]| a[0] != 0),
        DataType::Uint8 => each!(1, u8::from_le_bytes),
        DataType::Uint16 => each!(2, u16::from_le_bytes),
        DataType::Uint32 => each!(4, u32::from_le_bytes),
        DataType::Uint64 => each!(8, u64::from_le_bytes),
        DataType::Int8 => each!(1, i8::from_le_bytes),
        DataType::Int16 => each!(2, i16::from_le_bytes),
        DataType::Int32 => each!(4, i32::from_le_bytes),
        DataType::Int64 => each!(8, i64::from_le_bytes),
        DataType::Fp16 => each!(2, |a| f16::from_le_bytes(a).to_f32()),
        DataType::Bf16 => each!(2, |a| bf16::from_le_bytes(a).to_f32()),
        DataType::Fp32 => each!(4, f32::from_le_bytes),
        DataType::Fp64 => each!(8, f64::from_le_bytes),
        DataType::Bytes => {
            for r in bytes_elements(piece).unwrap_or_default() {
                seq.serialize_element(&String::from_utf8_lossy(&piece[r]))?;
            }
        }
    }
    Ok(())
}
