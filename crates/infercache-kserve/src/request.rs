//! Inference requests: parsing a client's, splitting it into rows, and building the one
//! request that carries the missing rows upstream.

use std::collections::HashSet;

use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{KserveError, tensor_label};
use super::row::{Row, RowTensor, single_row, split_tensor};
use super::tensor::{Tensor, first_non_json};
use super::wire::{
    self, Encoded, TensorOut, array_field, bool_param, object_field, read_message, read_tensor,
    string_field, tensors_json, write_message,
};

/// The request parameter asking for every output as binary data.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// The output parameter asking for one output as binary data.
pub const BINARY_DATA: &str = "binary_data";

/// A parsed inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The client's `id`, echoed in the response.
    pub id: Option<String>,
    /// The request's `parameters`, less `binary_data_output` (presentation, kept in
    /// [`OutputSelection`]). Which of them change the output is the caller's decision.
    pub parameters: Map<String, Value>,
    /// The inputs, in request order.
    pub inputs: Vec<Tensor>,
    /// Which outputs to return, and in which form.
    pub outputs: OutputSelection,
}

/// The outputs a request asks for and how each is to be sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputSelection {
    /// The requested outputs, in request order; `None`: every output of the model.
    pub requested: Option<Vec<RequestedOutput>>,
    /// The request's `binary_data_output` parameter (default false): every output as
    /// binary unless an output's own `binary_data` says otherwise.
    pub binary_data_output: bool,
}

/// One entry of a request's `outputs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// Its `parameters.binary_data`, if given.
    pub binary_data: Option<bool>,
    /// Its other `parameters` (such as Triton's `classification`), which may change the
    /// output and so belong in the key.
    pub parameters: Map<String, Value>,
}

impl OutputSelection {
    /// Whether output `name` is to be sent as binary data.
    pub fn is_binary(&self, name: &str) -> bool {
        self.requested
            .iter()
            .flatten()
            .find(|o| o.name == name)
            .and_then(|o| o.binary_data)
            .unwrap_or(self.binary_data_output)
    }

    /// The output-affecting part of the selection as canonical bytes, for the key: the
    /// requested outputs' names, sorted, each with its parameters other than
    /// `binary_data`; `*` when every output is requested. Binary or JSON is presentation
    /// and not part of it.
    pub fn key_bytes(&self) -> Vec<u8> {
        let Some(requested) = &self.requested else {
            return b"*".to_vec();
        };
        if requested.iter().all(|o| o.parameters.is_empty()) {
            return names_key(requested);
        }
        let mut entries: Vec<(&str, &Map<String, Value>)> = requested
            .iter()
            .map(|o| (o.name.as_str(), &o.parameters))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let list = Value::Array(
            entries
                .into_iter()
                .map(|(name, params)| {
                    Value::Array(vec![Value::from(name), Value::Object(params.clone())])
                })
                .collect(),
        );
        infercache_core::canonical::canonical_json(&list)
            .expect("parsed JSON holds only finite numbers")
    }
}

/// [`OutputSelection::key_bytes`] of outputs without parameters, written directly: the
/// canonical JSON `[["A",{}],["B",{}]]` of the names, sorted, with no `Value` built.
fn names_key(requested: &[RequestedOutput]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + requested.iter().map(|o| o.name.len() + 8).sum::<usize>());
    // Outputs are most often asked for in name order: then no sorted copy is made.
    if requested.is_sorted_by(|a, b| a.name <= b.name) {
        write_names(&mut out, requested.iter().map(|o| o.name.as_str()));
    } else {
        let mut names: Vec<&str> = requested.iter().map(|o| o.name.as_str()).collect();
        names.sort_unstable();
        write_names(&mut out, names.into_iter());
    }
    out
}

fn write_names<'a>(out: &mut Vec<u8>, names: impl Iterator<Item = &'a str>) {
    out.push(b'[');
    for (i, name) in names.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        // serde_json's minimal escaping, as the canonical form writes strings.
        serde_json::to_writer(&mut *out, name).expect("writing a str into a Vec cannot fail");
        out.extend_from_slice(b",{}]");
    }
    out.push(b']');
}

/// Parses a request body; `header_length` is the `Inference-Header-Content-Length` header
/// if sent.
///
/// # Errors
/// A [`KserveError`] naming the field at fault for anything malformed: bad JSON, a header
/// length past the body, missing or mistyped fields, unknown datatypes, bad shapes,
/// element counts or types that disagree with the shape and datatype, binary sizes that
/// disagree with the shape or the body, duplicate names. Never panics on any input.
pub fn parse_request(
    body: Bytes,
    header_length: Option<&HeaderValue>,
) -> Result<InferRequest, KserveError> {
    if let Some(request) = super::typed::parse(&body, header_length) {
        return Ok(request);
    }
    parse_fields(body, header_length)
}

/// [`parse_request`] field by field, through a [`Value`] tree: slower than the typed
/// reading, but it takes every body and names whatever is wrong.
pub(crate) fn parse_fields(
    body: Bytes,
    header_length: Option<&HeaderValue>,
) -> Result<InferRequest, KserveError> {
    let wire::Message {
        mut json,
        mut binary,
    } = read_message(body, header_length)?;
    let id = string_field(&mut json, "id", "")?;
    let mut parameters = object_field(&mut json, "parameters", "")?;
    let binary_data_output = bool_param(&parameters, BINARY_DATA_OUTPUT, "")?.unwrap_or(false);
    parameters.remove(BINARY_DATA_OUTPUT);
    let items = array_field(&mut json, "inputs", "")?
        .ok_or_else(|| KserveError::MissingField("inputs".to_owned()))?;
    if items.is_empty() {
        return Err(KserveError::NoInputs);
    }
    let inputs = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| read_tensor(v, "inputs", i, &mut binary))
        .collect::<Result<Vec<_>, _>>()?;
    binary.finish()?;
    unique("input", inputs.iter().map(|t| t.name.as_str()))?;
    let requested = match array_field(&mut json, "outputs", "")? {
        // An empty list asks for nothing in particular: every output, as Triton answers.
        None => None,
        Some(items) if items.is_empty() => None,
        Some(items) => Some(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| read_requested_output(v, i))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    unique(
        "output",
        requested.iter().flatten().map(|o| o.name.as_str()),
    )?;
    Ok(InferRequest {
        id,
        parameters,
        inputs,
        outputs: OutputSelection {
            requested,
            binary_data_output,
        },
    })
}

fn read_requested_output(value: Value, index: usize) -> Result<RequestedOutput, KserveError> {
    let path = format!("outputs[{index}].");
    let Value::Object(mut obj) = value else {
        return Err(wire::invalid(
            format!("outputs[{index}]"),
            "expected an object",
        ));
    };
    let name = string_field(&mut obj, "name", &path)?
        .ok_or_else(|| KserveError::MissingField(format!("{path}name")))?;
    let mut parameters = object_field(&mut obj, "parameters", &path)?;
    let binary_data = bool_param(&parameters, BINARY_DATA, &path)?;
    parameters.remove(BINARY_DATA);
    Ok(RequestedOutput {
        name,
        binary_data,
        parameters,
    })
}

pub(crate) fn unique<'a>(
    what: &'static str,
    names: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), KserveError> {
    let duplicate = |name: &str| KserveError::DuplicateName {
        what,
        name: name.to_owned(),
    };
    // A scan for the few tensors of most requests, which allocates nothing; a set past it.
    if names.clone().count() <= 16 {
        for (i, name) in names.clone().enumerate() {
            if names.clone().take(i).any(|n| n == name) {
                return Err(duplicate(name));
            }
        }
        return Ok(());
    }
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(duplicate(name));
        }
    }
    Ok(())
}

impl InferRequest {
    /// The batch size: dimension 0, which every input must share.
    ///
    /// # Errors
    /// [`KserveError::NoInputs`] without inputs, [`KserveError::NoBatchDimension`] for a
    /// scalar input,
    /// [`KserveError::BatchMismatch`] when inputs disagree.
    pub fn batch_size(&self) -> Result<u64, KserveError> {
        let first = self.inputs.first().ok_or(KserveError::NoInputs)?;
        // Labels are made only for an error: a request that is fine allocates none.
        let size = |i: usize, t: &Tensor| {
            t.shape
                .first()
                .copied()
                .ok_or_else(|| KserveError::NoBatchDimension {
                    tensor: tensor_label("inputs", i, &t.name),
                })
        };
        let expected = size(0, first)?;
        for (i, t) in self.inputs.iter().enumerate().skip(1) {
            let actual = size(i, t)?;
            if actual != expected {
                return Err(KserveError::BatchMismatch {
                    tensor: tensor_label("inputs", i, &t.name),
                    actual,
                    first: first.name.clone(),
                    expected,
                });
            }
        }
        Ok(expected)
    }

    /// Splits the request along dimension 0 into its rows, in order; each row holds every
    /// input's slice in name order. The rows share the request's bytes (no copies).
    ///
    /// # Errors
    /// Those of [`InferRequest::batch_size`], [`KserveError::EmptyBatch`] for 0 rows and
    /// [`KserveError::TooManyRows`] past `max_rows`.
    pub fn split(&self, max_rows: usize) -> Result<Vec<Row>, KserveError> {
        let rows = self.batch_size()?;
        if rows == 0 {
            return Err(KserveError::EmptyBatch);
        }
        if rows > max_rows as u64 {
            return Err(KserveError::TooManyRows {
                rows,
                limit: max_rows,
            });
        }
        let mut order: Vec<&Tensor> = self.inputs.iter().collect();
        order.sort_by(|a, b| a.name.cmp(&b.name));
        let parameters: Vec<Map<String, Value>> =
            order.iter().map(|t| t.parameters.clone()).collect();
        if rows == 1 {
            // One row is each whole tensor without its batch dimension: no per-row
            // ranges or columns to build (a cache hit of one row is the common request).
            let inputs = order
                .iter()
                .map(|t| single_row(t))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(vec![Row { inputs, parameters }]);
        }
        let mut columns = order
            .iter()
            .map(|t| split_tensor(t, &t.name).map(Vec::into_iter))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows as usize);
        for _ in 1..rows {
            out.push(Row {
                inputs: columns
                    .iter_mut()
                    .map(|c| c.next().expect("every input has `rows` rows"))
                    .collect(),
                parameters: parameters.clone(),
            });
        }
        // The last row takes the parameters themselves.
        out.push(Row {
            inputs: columns
                .iter_mut()
                .map(|c| c.next().expect("every input has `rows` rows"))
                .collect(),
            parameters,
        });
        Ok(out)
    }
}

/// How to encode tensors sent upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WireFormat {
    /// The binary tensor extension (default): raw little-endian bytes after the JSON
    /// header. No float formatting or parsing on either side (the dominant cost of JSON
    /// tensors), exact bits (NaN payloads, -0.0, which JSON cannot carry) and a smaller
    /// body (an FP32 takes 4 bytes instead of typically 10 or more characters). Triton
    /// supports it; use [`WireFormat::Json`] for a server that does not.
    #[default]
    Binary,
    /// JSON `data` arrays, for upstreams without the extension. Cannot carry non-finite
    /// floats or non-UTF-8 `BYTES`.
    Json,
}

/// How an upstream request looks in JSON.
#[derive(Serialize)]
struct RequestJson<'a, T: Serialize> {
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
    inputs: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<Vec<OutputJson<'a>>>,
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
}

/// Builds one request carrying `rows` batched along dimension 0, in the given order,
/// asking for `outputs` (their output-affecting parameters forwarded) with request
/// `parameters`. With [`WireFormat::Binary`] inputs and outputs both travel as binary.
///
/// # Errors
/// [`KserveError::EmptyBatch`] for no rows, [`KserveError::RowMismatch`] when rows differ
/// in input names, datatypes, row shapes or parameters, and
/// [`KserveError::NotJsonRepresentable`] for a value JSON cannot carry under
/// [`WireFormat::Json`].
pub fn build_request(
    rows: &[&Row],
    outputs: &OutputSelection,
    parameters: &Map<String, Value>,
    format: WireFormat,
) -> Result<Encoded, KserveError> {
    let first = rows.first().ok_or(KserveError::EmptyBatch)?;
    for (r, row) in rows.iter().enumerate().skip(1) {
        same_layout(&first.inputs, &row.inputs, r)?;
        if row.parameters != first.parameters {
            return Err(KserveError::RowMismatch {
                row: r,
                reason: "input parameters differ".to_owned(),
            });
        }
    }
    let binary = format == WireFormat::Binary;
    let tensors = first
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let pieces: Vec<&[u8]> = rows.iter().map(|r| &r.inputs[i].data[..]).collect();
            if !binary && let Some(index) = first_non_json(t.datatype, pieces.iter().copied()) {
                return Err(KserveError::NotJsonRepresentable {
                    tensor: tensor_label("inputs", i, &t.name),
                    index,
                });
            }
            Ok(TensorOut {
                name: &t.name,
                datatype: t.datatype,
                shape: batched_shape(rows.len(), &t.shape),
                parameters: first.parameters[i].clone(),
                pieces,
                binary,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut parameters = parameters.clone();
    let outputs_json = outputs.requested.as_ref().map(|list| {
        list.iter()
            .map(|o| {
                let mut parameters = o.parameters.clone();
                if binary {
                    parameters.insert(BINARY_DATA.to_owned(), Value::Bool(true));
                }
                OutputJson {
                    name: &o.name,
                    parameters,
                }
            })
            .collect()
    });
    if binary && outputs_json.is_none() {
        parameters.insert(BINARY_DATA_OUTPUT.to_owned(), Value::Bool(true));
    }
    let header = RequestJson {
        parameters,
        inputs: tensors_json(&tensors),
        outputs: outputs_json,
    };
    Ok(write_message(&header, &tensors))
}

/// `[rows] ++ row_shape`.
pub(crate) fn batched_shape(rows: usize, row_shape: &[u64]) -> Vec<u64> {
    std::iter::once(rows as u64)
        .chain(row_shape.iter().copied())
        .collect()
}

/// Checks that `row` has the same tensors (names, datatypes, row shapes, in order) as
/// `first`.
pub(crate) fn same_layout(
    first: &[RowTensor],
    row: &[RowTensor],
    index: usize,
) -> Result<(), KserveError> {
    let mismatch = |reason: String| KserveError::RowMismatch { row: index, reason };
    if first.len() != row.len() {
        return Err(mismatch(format!(
            "{} tensors, not {}",
            row.len(),
            first.len()
        )));
    }
    for (a, b) in first.iter().zip(row) {
        if a.name != b.name || a.datatype != b.datatype || a.shape != b.shape {
            return Err(mismatch(format!(
                "tensor `{}` {} {:?} where row 0 has `{}` {} {:?}",
                b.name, b.datatype, b.shape, a.name, a.datatype, a.shape
            )));
        }
    }
    Ok(())
}
