//! The HTTP body of a KServe v2 message: a JSON object, optionally followed by the binary
//! tensor data that `Inference-Header-Content-Length` separates from it.
//!
//! Reading and writing tensors is the same for requests and responses, so both live here:
//! [`read_message`] and [`read_tensor`] parse, [`write_message`] writes.

use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;
use serde_json::{Map, Value};

use super::datatype::DataType;
use super::error::{KserveError, tensor_label};
use super::tensor::{JsonData, Tensor, check_binary, json_to_canonical};

/// The header that gives the length of the JSON part when binary tensor data follows.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// The parameter giving a binary tensor's byte length.
pub(crate) const BINARY_DATA_SIZE: &str = "binary_data_size";

/// An encoded message: its body and, when binary tensor data follows the JSON part, the
/// value of the [`HEADER_LENGTH`] header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The HTTP body.
    pub body: Vec<u8>,
    /// The JSON part's length in bytes; `Some` exactly when some tensor is binary.
    pub header_length: Option<usize>,
}

impl Encoded {
    /// The `Content-Type` to send with it, as Triton does: `application/octet-stream`
    /// when binary data follows the JSON, else `application/json`.
    pub fn content_type(&self) -> &'static str {
        if self.header_length.is_some() {
            "application/octet-stream"
        } else {
            "application/json"
        }
    }
}

/// A body split into its JSON object and the binary data after it.
#[derive(Debug)]
pub(crate) struct Message {
    pub json: Map<String, Value>,
    pub binary: Binary,
}

/// Reads `body`, whose JSON part is `header_length` bytes long when that header is sent
/// (the whole body otherwise).
pub(crate) fn read_message(
    body: Bytes,
    header_length: Option<&HeaderValue>,
) -> Result<Message, KserveError> {
    let (json, binary) = split_message(&body, header_length)?;
    let json: Value =
        serde_json::from_slice(json).map_err(|e| KserveError::MalformedJson(e.to_string()))?;
    let Value::Object(json) = json else {
        return Err(KserveError::MalformedJson(
            "expected a JSON object".to_owned(),
        ));
    };
    Ok(Message { json, binary })
}

/// `body` split into its JSON part (`header_length` bytes when that header is sent, the
/// whole body otherwise) and the binary data after it.
pub(crate) fn split_message<'a>(
    body: &'a Bytes,
    header_length: Option<&HeaderValue>,
) -> Result<(&'a [u8], Binary), KserveError> {
    let json_len = match header_length {
        None => body.len(),
        Some(value) => parse_header_length(value, body.len())?,
    };
    Ok((
        &body[..json_len],
        Binary {
            rest: body.slice(json_len..),
        },
    ))
}

fn parse_header_length(value: &HeaderValue, body: usize) -> Result<usize, KserveError> {
    let text = value.to_str().unwrap_or("");
    let header = text.trim().parse::<usize>().map_err(|_| {
        KserveError::HeaderLengthInvalid(String::from_utf8_lossy(value.as_bytes()).into_owned())
    })?;
    if header > body {
        return Err(KserveError::HeaderLengthTooLarge { header, body });
    }
    Ok(header)
}

/// The binary data not yet claimed by a tensor.
#[derive(Debug)]
pub(crate) struct Binary {
    rest: Bytes,
}

impl Binary {
    /// The next `size` bytes, for `tensor`.
    pub(crate) fn take(&mut self, tensor: &str, size: u64) -> Result<Bytes, KserveError> {
        let available = self.rest.len();
        match usize::try_from(size) {
            Ok(n) if n <= available => Ok(self.rest.split_to(n)),
            _ => Err(KserveError::BinaryOverrun {
                tensor: tensor.to_owned(),
                declared: size,
                available,
            }),
        }
    }

    /// Refuses bytes no tensor claimed.
    pub(crate) fn finish(self) -> Result<(), KserveError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(KserveError::TrailingBinary(n)),
        }
    }
}

// The fields below are taken out of the parsed message (`remove`), not copied: each is
// read once.

/// The array field `key` of `json`, taken out of it (absent: `None`).
pub(crate) fn array_field(
    json: &mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<Vec<Value>>, KserveError> {
    match json.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(invalid(format!("{path}{key}"), "expected an array")),
    }
}

/// The object field `key` of `json`, taken out of it (absent: empty).
pub(crate) fn object_field(
    json: &mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Map<String, Value>, KserveError> {
    match json.remove(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(invalid(format!("{path}{key}"), "expected an object")),
    }
}

/// The string field `key` of `json`, taken out of it (absent: `None`).
pub(crate) fn string_field(
    json: &mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, KserveError> {
    match json.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{path}{key}"), "expected a string")),
    }
}

/// A required string field.
fn required_string(
    json: &mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<String, KserveError> {
    string_field(json, key, path)?.ok_or_else(|| KserveError::MissingField(format!("{path}{key}")))
}

/// The boolean parameter `key` (absent: `None`).
pub(crate) fn bool_param(
    params: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<bool>, KserveError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(
            format!("{path}parameters.{key}"),
            "expected true or false",
        )),
    }
}

pub(crate) fn invalid(field: String, message: &str) -> KserveError {
    KserveError::InvalidField {
        field,
        message: message.to_owned(),
    }
}

/// Reads entry `index` of the tensor list `list` (`inputs` or `outputs`), taking its
/// data from JSON `data` or, with `parameters.binary_data_size`, from `binary`.
pub(crate) fn read_tensor(
    value: Value,
    list: &str,
    index: usize,
    binary: &mut Binary,
) -> Result<Tensor, KserveError> {
    let path = format!("{list}[{index}].");
    let Value::Object(mut obj) = value else {
        return Err(invalid(format!("{list}[{index}]"), "expected an object"));
    };
    let name = required_string(&mut obj, "name", &path)?;
    let label = tensor_label(list, index, &name);
    let datatype_name = required_string(&mut obj, "datatype", &path)?;
    let datatype = DataType::parse(&datatype_name).ok_or_else(|| KserveError::UnknownDatatype {
        tensor: label.clone(),
        datatype: datatype_name,
    })?;
    let shape = read_shape(&mut obj, &path, &label)?;
    let mut parameters = object_field(&mut obj, "parameters", &path)?;
    let binary_size = parameters.remove(BINARY_DATA_SIZE);
    let data = match (obj.remove("data"), binary_size) {
        (Some(_), Some(_)) => {
            return Err(KserveError::DataSource {
                tensor: label,
                reason: "has both `data` and parameters.binary_data_size; send one",
            });
        }
        (None, None) => {
            return Err(KserveError::DataSource {
                tensor: label,
                reason: "has neither `data` nor parameters.binary_data_size",
            });
        }
        (Some(data), None) => Bytes::from(json_to_canonical(&label, datatype, &shape, &data)?),
        (None, Some(size)) => {
            let size = size.as_u64().ok_or_else(|| {
                invalid(
                    format!("{path}parameters.{BINARY_DATA_SIZE}"),
                    "expected a non-negative integer",
                )
            })?;
            let data = binary.take(&label, size)?;
            check_binary(&label, datatype, &shape, &data)?;
            data
        }
    };
    Ok(Tensor {
        name,
        datatype,
        shape,
        data,
        parameters,
    })
}

/// A tensor's `shape`: an array of non-negative integers.
fn read_shape(
    obj: &mut Map<String, Value>,
    path: &str,
    label: &str,
) -> Result<Vec<u64>, KserveError> {
    let dims = array_field(obj, "shape", path)?
        .ok_or_else(|| KserveError::MissingField(format!("{path}shape")))?;
    let shape = dims
        .iter()
        .map(|d| {
            d.as_u64().ok_or_else(|| KserveError::InvalidShape {
                tensor: label.to_owned(),
                reason: format!("dimension {d} is not a non-negative integer"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    super::tensor::element_count(&shape, label)?;
    Ok(shape)
}

/// A tensor to write: header fields and its data as element-aligned pieces, sent as JSON
/// `data` or as binary.
#[derive(Debug)]
pub(crate) struct TensorOut<'a> {
    pub name: &'a str,
    pub datatype: DataType,
    pub shape: Vec<u64>,
    pub parameters: Map<String, Value>,
    pub pieces: Vec<&'a [u8]>,
    pub binary: bool,
}

impl TensorOut<'_> {
    fn byte_len(&self) -> usize {
        self.pieces.iter().map(|p| p.len()).sum()
    }
}

/// How a [`TensorOut`] looks in the JSON part.
#[derive(Serialize)]
struct TensorJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u64],
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

/// The JSON form of `tensors`: binary ones carry `binary_data_size`, the others `data`.
pub(crate) fn tensors_json<'a>(tensors: &'a [TensorOut<'a>]) -> Vec<impl Serialize + 'a> {
    tensors
        .iter()
        .map(|t| {
            let mut parameters = t.parameters.clone();
            if t.binary {
                parameters.insert(BINARY_DATA_SIZE.to_owned(), Value::from(t.byte_len()));
            }
            TensorJson {
                name: t.name,
                datatype: t.datatype.as_str(),
                shape: &t.shape,
                parameters,
                data: (!t.binary).then_some(JsonData {
                    datatype: t.datatype,
                    pieces: &t.pieces,
                }),
            }
        })
        .collect()
}

/// Writes `header` (which holds `tensors_json(tensors)`) followed by the binary tensors'
/// bytes in list order.
pub(crate) fn write_message(header: &impl Serialize, tensors: &[TensorOut<'_>]) -> Encoded {
    let mut body = serde_json::to_vec(header)
        .expect("a message header serializes: string keys, finite numbers");
    let any_binary = tensors.iter().any(|t| t.binary);
    let header_length = any_binary.then_some(body.len());
    let binary_len: usize = tensors
        .iter()
        .filter(|t| t.binary)
        .map(TensorOut::byte_len)
        .sum();
    body.reserve(binary_len);
    for t in tensors.iter().filter(|t| t.binary) {
        t.pieces.iter().for_each(|p| body.extend_from_slice(p));
    }
    Encoded {
        body,
        header_length,
    }
}
