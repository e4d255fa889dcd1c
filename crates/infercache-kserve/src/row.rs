//! Rows: one slice along the batch dimension (dimension 0) of every tensor of a message.
//!
//! A request's [`Row`] gives the canonical key input of one row; a response's
//! [`RowOutput`] is what the cache stores for it.

use std::ops::Range;

use bytes::Bytes;
use infercache_core::CanonicalInput;
use serde_json::{Map, Value};

use super::datatype::DataType;
use super::error::KserveError;
use super::tensor::{MAX_DIMS, Tensor, bytes_elements, check_binary, element_count};

/// The stored row format's version byte.
pub const ROW_FORMAT_VERSION: u8 = 1;

/// One row of one tensor: the tensor's name and datatype, the row's shape (the tensor's
/// shape without dimension 0) and the row's elements in the canonical layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowTensor {
    /// The tensor's name.
    pub name: String,
    /// Its datatype.
    pub datatype: DataType,
    /// The row's shape (`shape[1..]` of the batched tensor).
    pub shape: Vec<u64>,
    /// The row's elements, canonical layout.
    pub data: Bytes,
}

/// One row of a request: every input's slice, in name order, and each input's
/// `parameters` (shared by all the rows of a request).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The inputs' rows, sorted by name.
    pub inputs: Vec<RowTensor>,
    /// Each input's `parameters` (less `binary_data_size`), aligned with `inputs`.
    pub parameters: Vec<Map<String, Value>>,
}

impl Row {
    /// The row's canonical key bytes: for each input in name order, its name, datatype
    /// code, row shape, canonical JSON of its `parameters`, and its data, each
    /// length-prefixed. The same row sent as JSON or binary gives the same bytes.
    ///
    /// Request-level `parameters` and the output selection are not in it: the caller
    /// folds the output-affecting ones into the key separately.
    pub fn key_bytes(&self) -> Vec<u8> {
        // Exact when no input has parameters: the count, then per input four lengths,
        // the datatype code, the dimensions, the name and the data.
        let size: usize = 8 + self
            .inputs
            .iter()
            .map(|t| 4 * 8 + 1 + 8 * t.shape.len() + t.name.len() + t.data.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend((self.inputs.len() as u64).to_le_bytes());
        for (t, params) in self.inputs.iter().zip(&self.parameters) {
            put(&mut out, t.name.as_bytes());
            out.push(t.datatype as u8);
            out.extend((t.shape.len() as u64).to_le_bytes());
            t.shape.iter().for_each(|d| out.extend(d.to_le_bytes()));
            let params = if params.is_empty() {
                Vec::new()
            } else {
                infercache_core::canonical::canonical_json(&Value::Object(params.clone()))
                    .expect("parsed JSON holds only finite numbers")
            };
            put(&mut out, &params);
            put(&mut out, &t.data);
        }
        out
    }

    /// [`Row::key_bytes`] as the key's canonical input.
    pub fn canonical_input(&self) -> CanonicalInput {
        CanonicalInput::bytes_owned(self.key_bytes())
    }
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    out.extend((field.len() as u64).to_le_bytes());
    out.extend_from_slice(field);
}

/// One row of a response: every output's slice, in the upstream's order. What the cache
/// stores, via [`RowOutput::encode`].
///
/// # Stored format (version 1)
///
/// All integers little-endian. Hand-written rather than a serde format: the layout is
/// persisted and documented byte for byte, the tensor data are raw bytes that must not be
/// re-encoded, and decoding must check invariants no generic format knows (data length
/// against datatype and shape, whole `BYTES` elements).
///
/// ```text
/// u8   version = 1
/// u32  output count
/// per output:
///   u16  name length, then the name (UTF-8)
///   u8   datatype code (DataType's discriminant)
///   u8   dimension count (at most MAX_DIMS), then that many u64 dimensions (the row's shape)
///   u64  data length, then the data in the canonical layout
/// ```
///
/// Nothing may follow the last output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOutput {
    /// The outputs' rows.
    pub outputs: Vec<RowTensor>,
}

impl RowOutput {
    /// The stored form (see the type's docs).
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .outputs
            .iter()
            .map(|t| t.name.len() + t.data.len() + 8 * t.shape.len() + 12)
            .sum();
        let mut out = Vec::with_capacity(5 + size);
        out.push(ROW_FORMAT_VERSION);
        out.extend((self.outputs.len() as u32).to_le_bytes());
        for t in &self.outputs {
            let name = &t.name.as_bytes()[..t.name.len().min(u16::MAX as usize)];
            out.extend((name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out.push(t.datatype as u8);
            out.push(t.shape.len() as u8);
            t.shape.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend((t.data.len() as u64).to_le_bytes());
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// Decodes a stored row; the outputs' data are slices of `bytes`, not copies.
    ///
    /// # Errors
    /// [`KserveError::CorruptRow`] for an unknown version or datatype, a truncated field,
    /// a name that is not UTF-8, data that disagrees with its datatype and shape, or
    /// trailing bytes.
    pub fn decode(bytes: &Bytes) -> Result<Self, KserveError> {
        let row = StoredRow::new(bytes)?;
        let outputs = row
            .tensors()
            .map(|t| RowTensor {
                name: t.name.to_owned(),
                datatype: t.datatype,
                shape: t.shape().collect(),
                data: bytes.slice_ref(t.data),
            })
            .collect();
        Ok(Self { outputs })
    }
}

/// A stored row ([`RowOutput`]'s format) read in place: checked once, its tensors then
/// read from the stored bytes without copying or allocating.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredRow<'a> {
    bytes: &'a [u8],
    count: u32,
}

/// One tensor of a [`StoredRow`], borrowed from its bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredTensor<'a> {
    pub name: &'a str,
    pub datatype: DataType,
    /// The row shape's dimensions, each 8 little-endian bytes.
    dims: &'a [u8],
    pub data: &'a [u8],
}

impl StoredTensor<'_> {
    /// The row's shape.
    pub fn shape(&self) -> impl ExactSizeIterator<Item = u64> + Clone + '_ {
        self.dims
            .chunks_exact(8)
            .map(|d| u64::from_le_bytes(d.try_into().expect("chunks_exact yields 8 bytes")))
    }

    /// Whether `self` and `other` have one name, datatype and row shape.
    pub fn same_layout(&self, other: &StoredTensor<'_>) -> bool {
        self.name == other.name && self.datatype == other.datatype && self.dims == other.dims
    }
}

impl<'a> StoredRow<'a> {
    /// Checks the whole row (see [`RowOutput::decode`] for what is refused).
    pub fn new(bytes: &'a [u8]) -> Result<Self, KserveError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(1)?[0] != ROW_FORMAT_VERSION {
            return Err(KserveError::CorruptRow("unknown format version"));
        }
        let count = u32::from_le_bytes(r.array()?);
        for _ in 0..count {
            r.tensor(true)?;
        }
        if r.pos != bytes.len() {
            return Err(KserveError::CorruptRow("trailing bytes"));
        }
        Ok(Self { bytes, count })
    }

    /// How many tensors it holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Its tensors, in stored order.
    pub fn tensors(&self) -> impl Iterator<Item = StoredTensor<'a>> + 'a {
        let mut r = Reader {
            bytes: self.bytes,
            pos: 5,
        };
        (0..self.count).map(move |_| r.tensor(false).expect("checked by StoredRow::new"))
    }

    /// Tensor `index` (below [`StoredRow::len`]).
    pub fn tensor(&self, index: usize) -> StoredTensor<'a> {
        self.tensors()
            .nth(index)
            .expect("index below the row's length")
    }
}

/// A cursor over stored bytes whose every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KserveError> {
        // `let … else` rather than `ok_or`: this runs for every field of every stored
        // row a hit reads, and `ok_or` builds (and drops) the error on every call.
        let Some(end) = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()) else {
            return Err(KserveError::CorruptRow("truncated"));
        };
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], KserveError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    /// The next tensor; `check`: also its data against its datatype and shape.
    fn tensor(&mut self, check: bool) -> Result<StoredTensor<'a>, KserveError> {
        let name_len = u16::from_le_bytes(self.array()?) as usize;
        let name = std::str::from_utf8(self.take(name_len)?)
            .map_err(|_| KserveError::CorruptRow("output name is not UTF-8"))?;
        let [code] = self.array()?;
        let Some(datatype) = DataType::from_code(code) else {
            return Err(KserveError::CorruptRow("unknown datatype code"));
        };
        let [dims] = self.array()?;
        if dims as usize > MAX_DIMS {
            return Err(KserveError::CorruptRow("too many dimensions"));
        }
        let dims = self.take(8 * dims as usize)?;
        let len = usize::try_from(u64::from_le_bytes(self.array()?))
            .map_err(|_| KserveError::CorruptRow("truncated"))?;
        let data = self.take(len)?;
        let tensor = StoredTensor {
            name,
            datatype,
            dims,
            data,
        };
        if check {
            let mut shape = [0u64; MAX_DIMS];
            let rank = dims.len() / 8;
            shape
                .iter_mut()
                .zip(tensor.shape())
                .for_each(|(s, d)| *s = d);
            check_binary("", datatype, &shape[..rank], data)
                .map_err(|_| KserveError::CorruptRow("data disagrees with datatype and shape"))?;
        }
        Ok(tensor)
    }
}

/// The batch dimension of `tensor` (labelled `label`), refusing scalars.
pub(crate) fn batch_size(tensor: &Tensor, label: &str) -> Result<u64, KserveError> {
    tensor
        .shape
        .first()
        .copied()
        .ok_or_else(|| KserveError::NoBatchDimension {
            tensor: label.to_owned(),
        })
}

/// Splits `tensor`, whose batch dimension the caller has checked (at least 1, and
/// bounded), into its rows.
///
/// # Errors
/// [`KserveError::InvalidShape`] if the row shape's element count overflows (possible
/// only when dimension 0 is 0, which callers refuse first).
pub(crate) fn split_tensor(tensor: &Tensor, label: &str) -> Result<Vec<RowTensor>, KserveError> {
    let rows = batch_size(tensor, label)? as usize;
    let row_shape = tensor.shape[1..].to_vec();
    let row_elems = element_count(&row_shape, label)? as usize;
    let ranges = row_ranges(tensor, rows, row_elems);
    Ok(ranges
        .into_iter()
        .map(|range| RowTensor {
            name: tensor.name.clone(),
            datatype: tensor.datatype,
            shape: row_shape.clone(),
            data: tensor.data.slice(range),
        })
        .collect())
}

/// `tensor`, whose batch dimension the caller has checked to be 1, as its one row: the
/// same as [`split_tensor`]'s only row, built without per-row ranges.
///
/// # Errors
/// As [`split_tensor`].
pub(crate) fn single_row(tensor: &Tensor) -> Result<RowTensor, KserveError> {
    debug_assert_eq!(tensor.shape.first(), Some(&1));
    let row_shape = tensor.shape[1..].to_vec();
    element_count(&row_shape, &tensor.name)?;
    Ok(RowTensor {
        name: tensor.name.clone(),
        datatype: tensor.datatype,
        shape: row_shape,
        data: tensor.data.clone(),
    })
}

/// The byte range of each row of a validated tensor.
fn row_ranges(tensor: &Tensor, rows: usize, row_elems: usize) -> Vec<Range<usize>> {
    match tensor.datatype.element_size() {
        Some(size) => {
            let row_bytes = row_elems * size;
            (0..rows)
                .map(|r| r * row_bytes..(r + 1) * row_bytes)
                .collect()
        }
        None => {
            let elements =
                bytes_elements(&tensor.data).expect("BYTES data was validated on arrival");
            let start = |e: usize| elements.get(e).map_or(tensor.data.len(), |r| r.start - 4);
            (0..rows)
                .map(|r| start(r * row_elems)..start((r + 1) * row_elems))
                .collect()
        }
    }
}
