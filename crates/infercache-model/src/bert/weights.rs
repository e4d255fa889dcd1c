//! Reading a component's tensors by their original names: out of a safetensors file held
//! in memory, or out of one streamed from disk a tensor at a time ([`DecodedTensors`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;

use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::kernels::Matrix;
use crate::ModelError;

/// A component's view of a set of tensors: looks them up by name and checks shapes.
pub(crate) struct Tensors<'a, 'data> {
    source: Source<'a, 'data>,
}

enum Source<'a, 'data> {
    File(&'a SafeTensors<'data>),
    Decoded(&'a DecodedTensors),
}

impl<'a, 'data> Tensors<'a, 'data> {
    pub(crate) fn new(file: &'a SafeTensors<'data>) -> Self {
        Self {
            source: Source::File(file),
        }
    }

    /// Tensors decoded while streaming a file; each can be taken once ([`Self::get`] moves
    /// its values out, so the model's weights are never held twice).
    pub(crate) fn decoded(tensors: &'a DecodedTensors) -> Self {
        Self {
            source: Source::Decoded(tensors),
        }
    }

    /// The tensor `name` as `f32` values (F32, F16 and BF16 are accepted), checked to have
    /// `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let bad = |reason: String| ModelError::Weights {
            tensor: name.to_owned(),
            reason,
        };
        let (dtype, found, values) = match &self.source {
            Source::File(file) => {
                let view = file.tensor(name).map_err(|_| bad("missing".to_owned()))?;
                let mut values = Vec::new();
                let decoded = decode(view.dtype(), view.data(), &mut values);
                (
                    view.dtype(),
                    view.shape().to_vec(),
                    decoded.then_some(values),
                )
            }
            Source::Decoded(tensors) => {
                let tensor = tensors
                    .take(name)
                    .ok_or_else(|| bad("missing".to_owned()))?;
                (tensor.dtype, tensor.shape, tensor.values)
            }
        };
        if found != shape {
            return Err(bad(format!("shape {found:?}, expected {shape:?}")));
        }
        let values =
            values.ok_or_else(|| bad(format!("dtype {dtype:?}, expected F32, F16 or BF16")))?;
        if values.len() != shape.iter().product::<usize>() {
            return Err(bad(format!("{} values for shape {shape:?}", values.len())));
        }
        Ok(values)
    }

    /// A `Linear` layer `prefix.weight` (`[out, in]`) and `prefix.bias` (`[out]`), the weight
    /// transposed for the kernels.
    pub(crate) fn linear(
        &self,
        prefix: &str,
        inputs: usize,
        out: usize,
    ) -> Result<(Matrix, Vec<f32>), ModelError> {
        let weight = self.get(&format!("{prefix}.weight"), &[out, inputs])?;
        let bias = self.get(&format!("{prefix}.bias"), &[out])?;
        Ok((Matrix::from_linear_weight(&weight, out, inputs), bias))
    }

    /// A `LayerNorm`'s `prefix.weight` and `prefix.bias`, both `[width]`.
    pub(crate) fn layer_norm(
        &self,
        prefix: &str,
        width: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        Ok((
            self.get(&format!("{prefix}.weight"), &[width])?,
            self.get(&format!("{prefix}.bias"), &[width])?,
        ))
    }
}

/// Appends `bytes` (little-endian `dtype` values) to `out` as `f32`; `false` for a dtype
/// other than F32, F16 or BF16. `bytes` holds whole values.
fn decode(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) -> bool {
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Dtype::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        _ => return false,
    }
    true
}

/// Every tensor of a safetensors file, decoded to `f32` as the file was read.
///
/// Reading a file this way holds at most one read buffer ([`STREAM_CHUNK`] bytes) beside
/// the decoded values, where deserializing it whole holds the file's bytes and the values
/// at once (twice the model, until the file's buffer is freed).
#[derive(Debug, Default)]
pub(crate) struct DecodedTensors {
    tensors: RefCell<HashMap<String, Decoded>>,
}

#[derive(Debug)]
struct Decoded {
    dtype: Dtype,
    shape: Vec<usize>,
    /// `None` for a dtype that is not a float ([`decode`]).
    values: Option<Vec<f32>>,
}

/// Bytes read from the file per step while streaming; a multiple of every float size.
pub(crate) const STREAM_CHUNK: usize = 1 << 20;

/// Largest header accepted, as safetensors' own limit.
const MAX_HEADER: u64 = 100_000_000;

impl DecodedTensors {
    /// Reads a safetensors file from `reader` to its end: the header, then each tensor in
    /// file order, decoded as it streams. Fails on a malformed header or offsets, or data
    /// past the last tensor, as [`SafeTensors::deserialize`] does; `path` names the file
    /// in an I/O error.
    pub(crate) fn read(reader: &mut impl Read, path: &Path) -> Result<Self, ModelError> {
        let failed = |e: io::Error, eof: SafeTensorError| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                eof.into()
            } else {
                ModelError::io(path, e)
            }
        };
        let mut len = [0u8; 8];
        reader
            .read_exact(&mut len)
            .map_err(|e| failed(e, SafeTensorError::HeaderTooSmall))?;
        let len = u64::from_le_bytes(len);
        if len > MAX_HEADER {
            return Err(SafeTensorError::HeaderTooLarge.into());
        }
        let mut header = vec![0u8; len as usize];
        reader
            .read_exact(&mut header)
            .map_err(|e| failed(e, SafeTensorError::InvalidHeaderLength))?;
        let metadata: Metadata = serde_json::from_slice(&header)
            .map_err(SafeTensorError::InvalidHeaderDeserialization)?;
        let mut chunk = vec![0u8; STREAM_CHUNK];
        let mut tensors = HashMap::new();
        for name in metadata.offset_keys() {
            let info = metadata
                .info(&name)
                .ok_or_else(|| SafeTensorError::TensorNotFound(name.clone()))?;
            let (start, end) = info.data_offsets;
            let mut left = end - start;
            let float = matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16);
            let mut values = float.then(|| Vec::with_capacity(left * 8 / info.dtype.bitsize()));
            while left > 0 {
                let step = left.min(STREAM_CHUNK);
                reader
                    .read_exact(&mut chunk[..step])
                    .map_err(|e| failed(e, SafeTensorError::MetadataIncompleteBuffer))?;
                if let Some(out) = values.as_mut()
                    && !decode(info.dtype, &chunk[..step], out)
                {
                    values = None;
                }
                left -= step;
            }
            let decoded = Decoded {
                dtype: info.dtype,
                shape: info.shape.clone(),
                values,
            };
            tensors.insert(name, decoded);
        }
        if reader
            .read(&mut chunk[..1])
            .map_err(|e| ModelError::io(path, e))?
            != 0
        {
            return Err(SafeTensorError::MetadataIncompleteBuffer.into());
        }
        Ok(Self {
            tensors: RefCell::new(tensors),
        })
    }

    /// Takes the tensor `name` out (a second take finds it missing).
    fn take(&self, name: &str) -> Option<Decoded> {
        self.tensors.borrow_mut().remove(name)
    }
}
