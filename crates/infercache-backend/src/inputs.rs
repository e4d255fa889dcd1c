//! [`Inputs`]: a request's rows in the form its protocol gives them.

use std::collections::BTreeMap;
use std::io::Write as _;

use bytes::Bytes;
use infercache_core::canonical::{canonical_json, canonical_json_text};
use infercache_core::{CanonicalInput, CoreError};
use infercache_kserve::{InferRequest, ROW_FORMAT_VERSION, Row};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One JSON value as the text a client (or an upstream) wrote it: a slice of the body it
/// came in, not a copy, checked once to hold exactly one JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(Bytes);

impl JsonText {
    /// `bytes` if they hold one JSON value (surrounding whitespace trimmed).
    ///
    /// # Errors
    /// serde_json's error when they do not.
    pub fn new(bytes: Bytes) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_slice(&bytes)?;
        let value = bytes.slice_ref(raw.get().as_bytes());
        Ok(Self(value))
    }

    /// The slice of `body` that `raw` (parsed from `body`) spans.
    ///
    /// # Panics
    /// If `raw` does not lie within `body` (a bug).
    pub fn within(body: &Bytes, raw: &RawValue) -> Self {
        Self(body.slice_ref(raw.get().as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked to be JSON, which is UTF-8")
    }

    /// The text's bytes, shared.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

/// The rows of one request, each of which is cached on its own.
///
/// Each kind says how its rows are keyed ([`Inputs::canonical`]) and which of the
/// request's fields change every row's output ([`Inputs::key_params`]); a backend reads
/// the rows it is asked to compute from it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Inputs {
    /// Texts: the built-in embedder, OpenAI-compatible and TEI embedders, Ersilia models.
    Texts {
        /// One row per text.
        texts: Vec<String>,
        /// OpenAI's `dimensions`: the size of the embeddings asked for.
        dimensions: Option<u64>,
    },
    /// JSON rows of any shape, with the request's parameters (plain JSON upstreams),
    /// each as the client wrote it: keyed by [`canonical_json_text`] and forwarded as
    /// this very text, so every number reaches the upstream as the client sent it and
    /// a row costs its own bytes, not a tree of values.
    Json {
        /// One row per value.
        rows: Vec<JsonText>,
        /// The request's `parameters` (a JSON object), forwarded with every row.
        parameters: Option<JsonText>,
    },
    /// The rows of a KServe v2 inference request, split along dimension 0.
    Tensors {
        /// The request (its parameters and output selection apply to every row).
        request: InferRequest,
        /// One row per batch entry.
        rows: Vec<Row>,
    },
}

impl Inputs {
    /// Texts, with no other parameter.
    pub fn texts(texts: Vec<String>) -> Self {
        Self::Texts {
            texts,
            dimensions: None,
        }
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        match self {
            Self::Texts { texts, .. } => texts.len(),
            Self::Json { rows, .. } => rows.len(),
            Self::Tensors { rows, .. } => rows.len(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each row's canonical form, the input part of its key: a text as its bytes, a JSON
    /// row as canonical JSON (object key order never matters), a tensor row as every
    /// input's name, datatype, row shape, parameters and bytes (the same whether it came
    /// as JSON or binary).
    ///
    /// # Errors
    /// [`CoreError`] only for a non-finite number, which parsed JSON never holds.
    pub fn canonical(&self) -> Result<Vec<CanonicalInput>, CoreError> {
        match self {
            Self::Texts { texts, .. } => {
                Ok(texts.iter().map(|t| CanonicalInput::text(t)).collect())
            }
            Self::Json { rows, .. } => rows
                .iter()
                .map(|r| CanonicalInput::json_str(r.as_str()))
                .collect(),
            Self::Tensors { rows, .. } => Ok(rows.iter().map(Row::canonical_input).collect()),
        }
    }

    /// The key bytes of the request's fields that change every row's output, as
    /// canonical JSON: the request's parameters (all of them, or only those named in
    /// `keyed`, the model's `params` setting: the others are declared not to change the
    /// output) beside the protocol's own fields (OpenAI's `dimensions`; KServe v2's output
    /// selection and stored row format). Empty when there are none, so that leaving
    /// every parameter out and sending only ignored ones share an entry.
    ///
    /// # Errors
    /// [`CoreError`] only for a non-finite number, which parsed JSON never holds.
    pub fn key_params(&self, keyed: Option<&[String]>) -> Result<Vec<u8>, CoreError> {
        let mut protocol = Map::new();
        let params = match self {
            Self::Texts { dimensions, .. } => {
                if let Some(d) = dimensions {
                    protocol.insert("dimensions".to_owned(), Value::from(*d));
                }
                None
            }
            Self::Json { parameters, .. } => {
                return json_key_params(parameters.as_ref(), keyed);
            }
            Self::Tensors { request, .. } => {
                let picked_any = match keyed {
                    None => !request.parameters.is_empty(),
                    Some(names) => names.iter().any(|n| request.parameters.contains_key(n)),
                };
                if !picked_any {
                    return Ok(tensor_protocol_key(&request.outputs.key_bytes()));
                }
                protocol.insert(
                    "outputs".to_owned(),
                    Value::String(
                        String::from_utf8(request.outputs.key_bytes())
                            .expect("the output selection's key is canonical JSON or `*`"),
                    ),
                );
                protocol.insert("row_format".to_owned(), Value::from(ROW_FORMAT_VERSION));
                Some(&request.parameters)
            }
        };
        let picked: Map<String, Value> = match (params, keyed) {
            (None, _) => Map::new(),
            (Some(p), None) => p.clone(),
            (Some(p), Some(names)) => names
                .iter()
                .filter_map(|name| p.get(name).map(|v| (name.clone(), v.clone())))
                .collect(),
        };
        if picked.is_empty() && protocol.is_empty() {
            return Ok(Vec::new());
        }
        let mut key = Map::new();
        if !picked.is_empty() {
            key.insert("params".into(), Value::Object(picked));
        }
        if !protocol.is_empty() {
            key.insert("protocol".into(), Value::Object(protocol));
        }
        canonical_json(&Value::Object(key))
    }
}

/// [`Inputs::key_params`] of a tensor request none of whose keyed parameters is present,
/// written directly rather than through a JSON map: the canonical JSON
/// `{"protocol":{"outputs":"<outputs>","row_format":N}}`, byte for byte what the general
/// path builds (a test compares them).
fn tensor_protocol_key(outputs: &[u8]) -> Vec<u8> {
    let outputs =
        std::str::from_utf8(outputs).expect("the output selection's key is canonical JSON or `*`");
    let mut key = Vec::with_capacity(outputs.len() + 56);
    key.extend_from_slice(br#"{"protocol":{"outputs":"#);
    serde_json::to_writer(&mut key, outputs).expect("writing a str into a Vec cannot fail");
    key.extend_from_slice(br#","row_format":"#);
    write!(key, "{ROW_FORMAT_VERSION}").expect("writing into a Vec cannot fail");
    key.extend_from_slice(b"}}");
    key
}

/// [`Inputs::key_params`] of JSON rows: `{"params": {...}}` of the picked parameters,
/// each in its canonical text (numbers as the client wrote them), or empty.
fn json_key_params(
    parameters: Option<&JsonText>,
    keyed: Option<&[String]>,
) -> Result<Vec<u8>, CoreError> {
    let Some(parameters) = parameters else {
        return Ok(Vec::new());
    };
    let all: BTreeMap<String, &RawValue> = serde_json::from_str(parameters.as_str())?;
    let picked: Vec<(&String, &RawValue)> = match keyed {
        None => all.iter().map(|(k, v)| (k, *v)).collect(),
        Some(names) => names
            .iter()
            .filter_map(|name| all.get_key_value(name).map(|(k, v)| (k, *v)))
            .collect(),
    };
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let mut text = String::from("{\"params\":{");
    for (i, (k, v)) in picked.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&serde_json::to_string(k).expect("a string serializes"));
        text.push(':');
        text.push_str(v.get());
    }
    text.push_str("}}");
    canonical_json_text(&text)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn raw(text: &str) -> JsonText {
        JsonText::new(Bytes::copy_from_slice(text.as_bytes())).unwrap()
    }

    fn json_rows(parameters: Value) -> Inputs {
        Inputs::Json {
            rows: vec![raw(r#"{"b": 1, "a": 2}"#)],
            parameters: parameters.is_object().then(|| raw(&parameters.to_string())),
        }
    }

    #[test]
    fn parameters_are_keyed_all_or_as_named() {
        let all = json_rows(json!({"t": 1, "seed": 2}));
        let named = ["t".to_owned()];
        assert_ne!(
            all.key_params(None).unwrap(),
            all.key_params(Some(&named)).unwrap()
        );
        let only_t = json_rows(json!({"t": 1}));
        assert_eq!(
            all.key_params(Some(&named)).unwrap(),
            only_t.key_params(None).unwrap()
        );
        let ignored = json_rows(json!({"seed": 2}));
        assert!(ignored.key_params(Some(&named)).unwrap().is_empty());
        assert!(json_rows(Value::Null).key_params(None).unwrap().is_empty());
    }

    fn tensor_request(extra: Value) -> Inputs {
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut header = json!({
            "inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32",
                        "parameters": {"binary_data_size": 8}}],
            "outputs": [{"name": "OUTPUT1", "parameters": {"binary_data": true}},
                        {"name": "OUTPUT0", "parameters": {"binary_data": true}}],
        });
        header
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let mut body = serde_json::to_vec(&header).unwrap();
        let len = http::HeaderValue::from(body.len());
        body.extend_from_slice(&data);
        let request = infercache_kserve::parse_request(Bytes::from(body), Some(&len)).unwrap();
        let rows = request.split(8).unwrap();
        Inputs::Tensors { request, rows }
    }

    /// A tensor request's parameter key, written directly when no keyed parameter is
    /// present, is byte for byte the canonical JSON of the map the general path builds,
    /// so every stored entry keeps its key.
    #[test]
    fn tensor_keys_are_unchanged_by_the_direct_writer() {
        let plain = tensor_request(json!({}));
        let key = plain.key_params(None).unwrap();
        assert_eq!(
            key,
            br#"{"protocol":{"outputs":"[[\"OUTPUT0\",{}],[\"OUTPUT1\",{}]]","row_format":1}}"#
        );
        let Inputs::Tensors { request, .. } = &plain else {
            unreachable!()
        };
        let by_map = canonical_json(&json!({"protocol": {
            "outputs": String::from_utf8(request.outputs.key_bytes()).unwrap(),
            "row_format": ROW_FORMAT_VERSION,
        }}))
        .unwrap();
        assert_eq!(key, by_map);
        // Parameters the model does not key leave the key as it is; keyed ones join it.
        let seeded = tensor_request(json!({"parameters": {"seed": 5}}));
        let named = ["t".to_owned()];
        assert_eq!(seeded.key_params(Some(&named)).unwrap(), key);
        assert_ne!(seeded.key_params(None).unwrap(), key);
        let keyed = tensor_request(json!({"parameters": {"t": 1, "seed": 5}}));
        assert_eq!(
            keyed.key_params(Some(&named)).unwrap(),
            canonical_json(&json!({
                "params": {"t": 1},
                "protocol": {
                    "outputs": String::from_utf8(request.outputs.key_bytes()).unwrap(),
                    "row_format": ROW_FORMAT_VERSION,
                },
            }))
            .unwrap()
        );
        let every = tensor_request(json!({"outputs": null}));
        assert_eq!(
            every.key_params(None).unwrap(),
            br#"{"protocol":{"outputs":"*","row_format":1}}"#
        );
    }

    #[test]
    fn texts_key_by_their_bytes_and_dimensions() {
        let plain = Inputs::texts(vec!["a".into()]);
        assert!(plain.key_params(None).unwrap().is_empty());
        let sized = Inputs::Texts {
            texts: vec!["a".into()],
            dimensions: Some(64),
        };
        assert_ne!(sized.key_params(None).unwrap(), Vec::<u8>::new());
        assert_eq!(plain.canonical().unwrap(), sized.canonical().unwrap());
    }

    #[test]
    fn json_rows_key_in_canonical_form() {
        let a = json_rows(Value::Null).canonical().unwrap();
        let b = Inputs::Json {
            rows: vec![raw(r#"{ "a":2, "b":1 }"#)],
            parameters: None,
        }
        .canonical()
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn json_rows_and_parameters_key_numbers_as_written() {
        let rows = |texts: &[&str], params: Option<&str>| Inputs::Json {
            rows: texts.iter().map(|t| raw(t)).collect(),
            parameters: params.map(raw),
        };
        let c = rows(&["1", "1.0", "12345678901234567890123"], None)
            .canonical()
            .unwrap();
        assert_ne!(c[0], c[1]);
        assert_eq!(c[2].as_bytes(), b"12345678901234567890123");
        let one = rows(&["1"], Some(r#"{"t": 1}"#)).key_params(None).unwrap();
        let one_float = rows(&["1"], Some(r#"{"t": 1.0}"#))
            .key_params(None)
            .unwrap();
        assert_ne!(one, one_float);
        assert_eq!(one, br#"{"params":{"t":1}}"#);
        let named = ["t".to_owned()];
        let picked = rows(&["1"], Some(r#"{"seed": 5, "t": 1}"#))
            .key_params(Some(&named))
            .unwrap();
        assert_eq!(picked, one);
    }
}
