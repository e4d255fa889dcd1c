//! Canonical input encodings: one byte string per meaning.
//!
//! Two requests that a model cannot tell apart must produce the same bytes, and two it can
//! must not. For JSON that means: object keys sorted by their UTF-8 bytes, no whitespace,
//! strings in serde_json's minimal escaping, and numbers as follows.
//!
//! - JSON text ([`CanonicalInput::json_text`], [`canonical_json_text`], what every JSON row
//!   of a request is keyed by): each number keeps its exact text. `1` and `1.0` differ (a
//!   Python upstream reads an `int` and a `float`), integers past 64 bits and decimals
//!   past a double's precision keep every digit, and the upstream receives that same
//!   text. Spellings of one value (`1.0`, `1.00`, `1e0`) are distinct entries: a miss
//!   more, never a wrong answer.
//! - A parsed [`Value`] ([`canonical_json`], for values with no text of their own:
//!   parameters a codec parsed, fields built in code): an integer is exact (`u64`/`i64`);
//!   any other number is its double's shortest round-trip form (`ryu`: `1.0`, `0.5`,
//!   `1e300`), so an integer and a float never share a spelling.
//!
//! A tensor is its dtype, its shape and its raw (little-endian) bytes.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::CoreError;
use crate::encode::{put_field, put_u64};

/// What kind of input the canonical bytes encode; part of the key, so that the text
/// `abc` and the JSON string `"abc"` never share an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum InputKind {
    /// UTF-8 text, as given.
    Text = 1,
    /// Canonical JSON.
    Json = 2,
    /// A tensor: dtype, shape, raw bytes.
    Tensor = 3,
    /// Opaque bytes, as given.
    Bytes = 4,
}

/// An input in canonical form, ready to be hashed into a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalInput {
    kind: InputKind,
    bytes: Vec<u8>,
}

impl CanonicalInput {
    /// Text, byte for byte (no Unicode normalisation: a tokenizer sees the bytes).
    pub fn text(text: &str) -> Self {
        Self {
            kind: InputKind::Text,
            bytes: text.as_bytes().to_vec(),
        }
    }

    /// Opaque bytes, byte for byte.
    pub fn bytes(bytes: &[u8]) -> Self {
        Self::bytes_owned(bytes.to_vec())
    }

    /// Opaque bytes, byte for byte, taken without a copy.
    pub fn bytes_owned(bytes: Vec<u8>) -> Self {
        Self {
            kind: InputKind::Bytes,
            bytes,
        }
    }

    /// A parsed JSON value in canonical form.
    ///
    /// # Errors
    /// [`CoreError::NonFiniteNumber`] if a number is not finite (serde_json never
    /// produces one from text, but a `Value` built in code can hold one).
    pub fn json(value: &Value) -> Result<Self, CoreError> {
        Ok(Self {
            kind: InputKind::Json,
            bytes: canonical_json(value)?,
        })
    }

    /// JSON text in canonical form, numbers kept as written ([`canonical_json_text`]).
    ///
    /// # Errors
    /// [`CoreError::InvalidJson`] when `text` is not JSON.
    pub fn json_str(text: &str) -> Result<Self, CoreError> {
        Ok(Self {
            kind: InputKind::Json,
            bytes: canonical_json_text(text)?,
        })
    }

    /// A JSON value as its text ([`canonical_json_text`]).
    ///
    /// # Errors
    /// [`CoreError::InvalidJson`] only for text that is not JSON, which a parsed
    /// [`RawValue`] never holds.
    pub fn json_text(raw: &RawValue) -> Result<Self, CoreError> {
        Self::json_str(raw.get())
    }

    /// A dense tensor: `dtype` as KServe v2 names it (`FP32`, `INT64`, `BYTES`, ...),
    /// `shape`, and its raw little-endian bytes.
    ///
    /// # Errors
    /// [`CoreError::TensorSize`] if the byte length disagrees with dtype and shape, and
    /// [`CoreError::UnknownDtype`] for a dtype whose element size is unknown. `BYTES`
    /// tensors (variable-length elements) are accepted with any length.
    pub fn tensor(dtype: &str, shape: &[u64], data: &[u8]) -> Result<Self, CoreError> {
        if let Some(elem) = dtype_size(dtype)? {
            let expected = shape
                .iter()
                .try_fold(elem, |acc, &d| acc.checked_mul(d))
                .unwrap_or(u64::MAX);
            let actual = data.len() as u64;
            if expected != actual {
                return Err(CoreError::TensorSize {
                    dtype: dtype.to_owned(),
                    shape: shape.to_vec(),
                    expected,
                    actual,
                });
            }
        }
        let mut bytes = Vec::with_capacity(dtype.len() + 8 * shape.len() + data.len() + 24);
        put_field(&mut bytes, dtype.as_bytes());
        put_u64(&mut bytes, shape.len() as u64);
        for &d in shape {
            put_u64(&mut bytes, d);
        }
        put_field(&mut bytes, data);
        Ok(Self {
            kind: InputKind::Tensor,
            bytes,
        })
    }

    /// The kind of input.
    pub fn kind(&self) -> InputKind {
        self.kind
    }

    /// The canonical bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Element size in bytes of a KServe v2 dtype; `None` for variable-size `BYTES`.
fn dtype_size(dtype: &str) -> Result<Option<u64>, CoreError> {
    Ok(Some(match dtype {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" | "BF16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        "BYTES" => return Ok(None),
        other => return Err(CoreError::UnknownDtype(other.to_owned())),
    }))
}

/// The canonical JSON text of `value` (see the module docs for the rules).
///
/// # Errors
/// [`CoreError::NonFiniteNumber`] for a NaN or infinite number.
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, CoreError> {
    let mut out = Vec::with_capacity(64);
    write_value(&mut out, value)?;
    Ok(out)
}

/// The canonical JSON text of the JSON text `text`: keys sorted, no whitespace, strings
/// minimally escaped, every number's text kept exactly (see the module docs). A key
/// given twice keeps its last value, as serde_json and Python's `json` read it.
///
/// Each container is read as raw text (serde_json's `RawValue`) and its members written
/// in turn, so nothing is parsed into a [`Value`] and no number is converted: serde_json
/// does every bit of the tokenizing, this only orders and copies.
///
/// # Errors
/// [`CoreError::InvalidJson`] when `text` is not JSON.
pub fn canonical_json_text(text: &str) -> Result<Vec<u8>, CoreError> {
    let raw: &RawValue = serde_json::from_str(text)?;
    let mut out = Vec::with_capacity(raw.get().len());
    write_raw(&mut out, raw)?;
    Ok(out)
}

fn write_raw(out: &mut Vec<u8>, raw: &RawValue) -> Result<(), CoreError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let members: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, &k);
                out.push(b':');
                write_raw(out, v)?;
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            out.push(b'[');
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_raw(out, item)?;
            }
            out.push(b']');
        }
        Some(b'"') => {
            let s: std::borrow::Cow<'_, str> = serde_json::from_str(text)?;
            write_string(out, &s);
        }
        // Numbers, `true`, `false`, `null`: a raw value holds no whitespace around its
        // token, and serde_json has checked the token.
        _ => out.extend_from_slice(text.as_bytes()),
    }
    Ok(())
}

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), CoreError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sorted here rather than trusting the map's order: serde_json's map keeps
            // insertion order when any crate in the build enables `preserve_order`.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, k);
                out.push(b':');
                write_value(out, v)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // serde_json writes the minimal escaping, the same for every spelling of a string.
    serde_json::to_writer(&mut *out, s).expect("writing a str into a Vec cannot fail");
}

fn write_number(out: &mut Vec<u8>, n: &serde_json::Number) -> Result<(), CoreError> {
    if let Some(u) = n.as_u64() {
        out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes());
    } else if let Some(i) = n.as_i64() {
        out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
    } else {
        let f = n
            .as_f64()
            .ok_or_else(|| CoreError::NonFiniteNumber(n.to_string()))?;
        if !f.is_finite() {
            return Err(CoreError::NonFiniteNumber(n.to_string()));
        }
        // A float keeps a float's spelling (`1.0`), never an integer's.
        let mut buf = ryu::Buffer::new();
        out.extend_from_slice(buf.format_finite(f).as_bytes());
    }
    Ok(())
}

/// The JSON type of a raw value, for error messages (its first byte says it).
pub fn raw_type_name(v: &RawValue) -> &'static str {
    match v.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn canon(text: &str) -> String {
        String::from_utf8(CanonicalInput::json_str(text).unwrap().bytes).unwrap()
    }

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        assert_eq!(
            canon(r#"{ "b": [1, {"z":1,"a":2}], "a": null }"#),
            r#"{"a":null,"b":[1,{"a":2,"z":1}]}"#
        );
    }

    #[test]
    fn numbers_keep_their_text() {
        assert_ne!(canon("1"), canon("1.0"));
        assert_eq!(canon("1.0"), "1.0");
        assert_eq!(canon(" 1.50 "), "1.50");
        assert_eq!(canon("[1, 1.0, -0, 1e3]"), "[1,1.0,-0,1e3]");
        // Integers past 64 bits and decimals past a double keep every digit.
        assert_eq!(canon("12345678901234567890123"), "12345678901234567890123");
        assert_ne!(
            canon("12345678901234567890123"),
            canon("12345678901234567890124")
        );
        assert_ne!(
            canon("0.10000000000000000000001"),
            canon("0.10000000000000000000002")
        );
        assert_eq!(
            canon(r#"{"b": 12345678901234567890123, "a": 1.0}"#),
            r#"{"a":1.0,"b":12345678901234567890123}"#
        );
    }

    #[test]
    fn parsed_values_keep_integers_and_floats_apart() {
        let c = |v: Value| String::from_utf8(canonical_json(&v).unwrap()).unwrap();
        assert_eq!(c(json!(1)), "1");
        assert_eq!(c(json!(1.0)), "1.0");
        assert_eq!(c(json!(0.5)), "0.5");
        assert_eq!(c(json!(u64::MAX)), "18446744073709551615");
        assert_eq!(c(json!({"b": 1, "a": [2.5]})), r#"{"a":[2.5],"b":1}"#);
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        assert_eq!(canon(r#"{"a": 1, "a": 2}"#), r#"{"a":2}"#);
    }

    #[test]
    fn string_escapes_have_one_spelling() {
        assert_eq!(canon(r#""\u0041\/""#), canon(r#""A/""#));
    }

    #[test]
    fn kinds_are_distinct() {
        assert_ne!(
            CanonicalInput::text("1"),
            CanonicalInput::json_str("1").unwrap()
        );
        assert_ne!(CanonicalInput::text("ab"), CanonicalInput::bytes(b"ab"));
    }

    #[test]
    fn tensors_check_their_size() {
        assert!(CanonicalInput::tensor("FP32", &[2, 2], &[0; 16]).is_ok());
        assert!(matches!(
            CanonicalInput::tensor("FP32", &[2, 2], &[0; 15]),
            Err(CoreError::TensorSize {
                expected: 16,
                actual: 15,
                ..
            })
        ));
        assert!(matches!(
            CanonicalInput::tensor("FP33", &[1], &[0; 4]),
            Err(CoreError::UnknownDtype(_))
        ));
        // Same bytes, different shape: different inputs.
        assert_ne!(
            CanonicalInput::tensor("FP32", &[1, 4], &[0; 16]).unwrap(),
            CanonicalInput::tensor("FP32", &[4, 1], &[0; 16]).unwrap()
        );
        assert_ne!(
            CanonicalInput::tensor("INT32", &[4], &[0; 16]).unwrap(),
            CanonicalInput::tensor("FP32", &[4], &[0; 16]).unwrap()
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "[a-z\\u{e9}\\u{1F600}\"\\\\]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{0,4}", inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Writes `value` as JSON text with object keys in reverse order and whitespace.
    fn reordered_text(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                keys.reverse();
                let parts: Vec<String> = keys
                    .into_iter()
                    .map(|k| {
                        format!(
                            "{} :  {}",
                            serde_json::to_string(k).unwrap(),
                            reordered_text(&map[k])
                        )
                    })
                    .collect();
                format!("{{ {} }}", parts.join(" , "))
            }
            Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(reordered_text).collect();
                format!("[ {} ]", parts.join(", "))
            }
            other => other.to_string(),
        }
    }

    proptest! {
        #[test]
        fn reordering_keys_never_changes_the_canonical_form(value in arb_json()) {
            let plain = canonical_json_text(&value.to_string()).unwrap();
            let reordered = CanonicalInput::json_str(&reordered_text(&value)).unwrap();
            prop_assert_eq!(plain, reordered.bytes);
        }

        #[test]
        fn canonical_form_is_a_fixed_point(value in arb_json()) {
            let once = canonical_json_text(&reordered_text(&value)).unwrap();
            let twice = CanonicalInput::json_str(std::str::from_utf8(&once).unwrap()).unwrap();
            prop_assert_eq!(&once, &twice.bytes);
            // A parsed value's canonical form is canonical text too.
            let parsed = canonical_json(&value).unwrap();
            let again = CanonicalInput::json_str(std::str::from_utf8(&parsed).unwrap()).unwrap();
            prop_assert_eq!(parsed, again.bytes);
        }
    }
}
