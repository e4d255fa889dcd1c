//! Inference responses: parsing the upstream's, splitting it into per-row outputs, and
//! reassembling a client's response from rows.

use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{KserveError, tensor_label};
use super::request::{OutputSelection, batched_shape, same_layout};
use super::row::{RowOutput, RowTensor, batch_size, split_tensor};
use super::tensor::{Tensor, first_non_json};
use super::wire::{
    self, Encoded, TensorOut, array_field, object_field, read_message, read_tensor, string_field,
    tensors_json, write_message,
};

/// A parsed inference response.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    /// `model_name`, if the upstream sent one.
    pub model_name: Option<String>,
    /// `model_version`, if sent.
    pub model_version: Option<String>,
    /// `id`, if sent.
    pub id: Option<String>,
    /// `parameters`.
    pub parameters: Map<String, Value>,
    /// The outputs, in the upstream's order.
    pub outputs: Vec<Tensor>,
}

/// Parses a response body; `header_length` is its `Inference-Header-Content-Length`.
///
/// # Errors
/// The same checks as a request's ([`super::parse_request`]): any malformed field, size
/// or element is a [`KserveError`], never a panic.
pub fn parse_response(
    body: Bytes,
    header_length: Option<&HeaderValue>,
) -> Result<InferResponse, KserveError> {
    let wire::Message {
        mut json,
        mut binary,
    } = read_message(body, header_length)?;
    let items = array_field(&mut json, "outputs", "")?
        .ok_or_else(|| KserveError::MissingField("outputs".to_owned()))?;
    let outputs = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| read_tensor(v, "outputs", i, &mut binary))
        .collect::<Result<Vec<_>, _>>()?;
    binary.finish()?;
    if let Some(t) = outputs.iter().find(|t| t.name.len() > u16::MAX as usize) {
        let start: String = t.name.chars().take(16).collect();
        return Err(wire::invalid(
            format!("outputs[\"{start}…\"].name"),
            "longer than 65535 bytes",
        ));
    }
    Ok(InferResponse {
        model_name: string_field(&mut json, "model_name", "")?,
        model_version: string_field(&mut json, "model_version", "")?,
        id: string_field(&mut json, "id", "")?,
        parameters: object_field(&mut json, "parameters", "")?,
        outputs,
    })
}

impl InferResponse {
    /// Splits the outputs into `rows` per-row outputs, in order. Every output's first
    /// dimension must be `rows` (the rows sent).
    ///
    /// # Errors
    /// [`KserveError::EmptyBatch`] when `rows` is 0, [`KserveError::NoBatchDimension`]
    /// for a scalar output and
    /// [`KserveError::BatchMismatch`] for an output whose first dimension is not `rows`;
    /// both mean the upstream broke the protocol.
    pub fn split(&self, rows: usize) -> Result<Vec<RowOutput>, KserveError> {
        if rows == 0 {
            return Err(KserveError::EmptyBatch);
        }
        for (i, t) in self.outputs.iter().enumerate() {
            let label = tensor_label("outputs", i, &t.name);
            let actual = batch_size(t, &label)?;
            if actual != rows as u64 {
                return Err(KserveError::BatchMismatch {
                    tensor: label,
                    actual,
                    first: "rows sent".to_owned(),
                    expected: rows as u64,
                });
            }
        }
        let mut columns = self
            .outputs
            .iter()
            .enumerate()
            .map(|(i, t)| split_tensor(t, &tensor_label("outputs", i, &t.name)).map(Vec::into_iter))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((0..rows)
            .map(|_| RowOutput {
                outputs: columns
                    .iter_mut()
                    .map(|c| c.next().expect("every output has `rows` rows"))
                    .collect(),
            })
            .collect())
    }
}

/// What a reassembled response says about itself.
#[derive(Debug, Clone, Copy)]
pub struct ResponseMeta<'a> {
    /// `model_name`.
    pub model_name: &'a str,
    /// `model_version`, if any.
    pub model_version: Option<&'a str>,
    /// The request's `id`, echoed.
    pub id: Option<&'a str>,
}

#[derive(Serialize)]
struct ResponseJson<'a, T: Serialize> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<T>,
}

/// Reassembles a response from per-row outputs in the client's row order: each selected
/// output batched to shape `[rows.len(), ...]`, as binary or JSON as `selection` asks.
///
/// An output asked for as JSON that JSON cannot carry (a non-finite float, non-UTF-8
/// `BYTES`) is sent as binary instead: every binary-extension client reads it, and no
/// JSON spelling would be faithful.
///
/// # Errors
/// [`KserveError::EmptyBatch`] for no rows, [`KserveError::RowMismatch`] when rows differ
/// in outputs (names, datatypes, row shapes), [`KserveError::MissingOutput`] for a
/// requested output the rows lack.
pub fn assemble_response(
    meta: ResponseMeta<'_>,
    rows: &[RowOutput],
    selection: &OutputSelection,
) -> Result<Encoded, KserveError> {
    let first = rows.first().ok_or(KserveError::EmptyBatch)?;
    for (r, row) in rows.iter().enumerate().skip(1) {
        same_layout(&first.outputs, &row.outputs, r)?;
    }
    let chosen: Vec<usize> = match &selection.requested {
        None => (0..first.outputs.len()).collect(),
        Some(list) => list
            .iter()
            .map(|o| {
                first
                    .outputs
                    .iter()
                    .position(|t| t.name == o.name)
                    .ok_or_else(|| KserveError::MissingOutput(o.name.clone()))
            })
            .collect::<Result<_, _>>()?,
    };
    let tensors: Vec<TensorOut<'_>> = chosen
        .into_iter()
        .map(|i| output_tensor(rows, i, selection))
        .collect();
    let header = ResponseJson {
        model_name: meta.model_name,
        model_version: meta.model_version,
        id: meta.id,
        outputs: tensors_json(&tensors),
    };
    Ok(write_message(&header, &tensors))
}

/// Output `index` of every row, batched, binary if asked for or if JSON cannot carry it.
fn output_tensor<'a>(
    rows: &'a [RowOutput],
    index: usize,
    selection: &OutputSelection,
) -> TensorOut<'a> {
    let t: &RowTensor = &rows[0].outputs[index];
    let pieces: Vec<&[u8]> = rows.iter().map(|r| &r.outputs[index].data[..]).collect();
    let binary = selection.is_binary(&t.name)
        || first_non_json(t.datatype, pieces.iter().copied()).is_some();
    TensorOut {
        name: &t.name,
        datatype: t.datatype,
        shape: batched_shape(rows.len(), &t.shape),
        parameters: Map::new(),
        pieces,
        binary,
    }
}
