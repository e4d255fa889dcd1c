//! Reading a component's tensors out of a safetensors file, by their original names.

use safetensors::{Dtype, SafeTensors};

use super::kernels::Matrix;
use crate::ModelError;

/// A component's view of a safetensors file: looks tensors up by name and checks shapes.
pub(crate) struct Tensors<'a, 'data> {
    file: &'a SafeTensors<'data>,
}

impl<'a, 'data> Tensors<'a, 'data> {
    pub(crate) fn new(file: &'a SafeTensors<'data>) -> Self {
        Self { file }
    }

    /// The tensor `name` as `f32` values (F32, F16 and BF16 are accepted), checked to have
    /// `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let bad = |reason: String| ModelError::Weights {
            tensor: name.to_owned(),
            reason,
        };
        let view = self
            .file
            .tensor(name)
            .map_err(|_| bad("missing".to_owned()))?;
        if view.shape() != shape {
            return Err(bad(format!("shape {:?}, expected {shape:?}", view.shape())));
        }
        let bytes = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => return Err(bad(format!("dtype {other:?}, expected F32, F16 or BF16"))),
        };
        if values.len() != shape.iter().product::<usize>() {
            return Err(bad(format!("{} bytes for shape {shape:?}", bytes.len())));
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
