//! Reading request bodies with specific errors.
//!
//! Bodies are parsed as a JSON object first and their fields checked one by one, so that
//! every mistake gets a message naming its field: malformed JSON, a field of the wrong
//! type, a field this server does not support (`dimensions`), an empty input, an empty
//! string, too many inputs or one too long.
//!
//! Bodies whose rows may be large arrays (`/predict`'s JSON rows) are read with
//! [`raw_object`] and [`raw_rows`] instead: the top level is split into fields of raw
//! text and each row stays a slice of the body, so parsing costs little beyond the body
//! itself and no number is converted. How many body bytes are in flight at once is
//! bounded before any of this, by the body budget (`crate::App`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use infercache_backend::JsonText;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::config::Limits;
use crate::error::ApiError;

/// The body as a JSON object.
pub fn object(
    body: Result<Bytes, BytesRejection>,
    limits: &Limits,
) -> Result<Map<String, Value>, ApiError> {
    let body = read(body, limits)?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::invalid(
            "body",
            format!("expected a JSON object, got {}", type_name(&other)),
        )),
        Err(e) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

/// The body's bytes, for bodies that are not JSON alone (KServe v2's binary tensors):
/// 413 past the limit, 400 when unreadable or empty.
pub fn bytes(body: Result<Bytes, BytesRejection>, limits: &Limits) -> Result<Bytes, ApiError> {
    read(body, limits)
}

/// The body's bytes: 413 past the limit, 400 when unreadable or empty.
fn read(body: Result<Bytes, BytesRejection>, limits: &Limits) -> Result<Bytes, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: limits.max_body_bytes,
            }
        } else {
            ApiError::UnreadableBody
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson(
            "the body is empty; send JSON".to_owned(),
        ));
    }
    Ok(body)
}

/// Refuses any field not in `allowed`, with `hint` saying why.
pub fn only_fields(
    obj: &Map<String, Value>,
    allowed: &[&str],
    hint: impl Fn(&str) -> String,
) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(field) => Err(ApiError::UnsupportedField {
            hint: hint(field),
            field: field.clone(),
        }),
        None => Ok(()),
    }
}

/// An optional string field (`null` counts as absent).
pub fn opt_str(obj: &mut Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::invalid(
            field,
            format!("expected a string, got {}", type_name(&other)),
        )),
    }
}

/// An optional boolean field (`null` counts as absent).
pub fn opt_bool(obj: &mut Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(ApiError::invalid(
            field,
            format!("expected true or false, got {}", type_name(&other)),
        )),
    }
}

/// The texts of an `input`-like field: a string or a non-empty array of strings, within
/// the item and length limits.
pub fn texts(
    obj: &mut Map<String, Value>,
    field: &'static str,
    limits: &Limits,
) -> Result<Vec<String>, ApiError> {
    let texts = match obj.remove(field) {
        None => return Err(ApiError::MissingField(field)),
        Some(Value::String(s)) => {
            check_text(&s, field.to_owned(), limits)?;
            return Ok(vec![s]);
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::invalid(
                field,
                format!(
                    "expected a string or an array of strings, got {}",
                    type_name(&other)
                ),
            ));
        }
    };
    if texts.is_empty() {
        return Err(ApiError::EmptyInput(field));
    }
    if texts.len() > limits.max_items {
        return Err(ApiError::TooManyItems {
            param: field,
            got: texts.len(),
            limit: limits.max_items,
        });
    }
    texts
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => {
                check_text(&s, format!("{field}[{i}]"), limits)?;
                Ok(s)
            }
            Value::Number(_) | Value::Array(_) => Err(ApiError::invalid(
                format!("{field}[{i}]"),
                "token arrays are not supported; send the text as a string",
            )),
            other => Err(ApiError::invalid(
                format!("{field}[{i}]"),
                format!("expected a string, got {}", type_name(&other)),
            )),
        })
        .collect()
}

fn check_text(s: &str, param: String, limits: &Limits) -> Result<(), ApiError> {
    if s.is_empty() {
        return Err(ApiError::EmptyString { param });
    }
    // Bounded work: the body limit bounds the string.
    let chars = s.chars().count();
    if chars > limits.max_input_chars {
        return Err(ApiError::InputTooLong {
            param,
            chars,
            limit: limits.max_input_chars,
        });
    }
    Ok(())
}

/// The JSON type of `v`, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `value` as rows: a non-empty JSON array of at most `max_items` values.
pub fn row_array(
    value: Value,
    field: &'static str,
    limits: &Limits,
) -> Result<Vec<Value>, ApiError> {
    let Value::Array(items) = value else {
        return Err(ApiError::invalid(
            field,
            format!("expected an array, got {}", type_name(&value)),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid(field, "must hold at least one row"));
    }
    if items.len() > limits.max_items {
        return Err(ApiError::TooManyItems {
            param: field,
            got: items.len(),
            limit: limits.max_items,
        });
    }
    Ok(items)
}

/// The body as any JSON value (for APIs whose body is an array).
pub fn value(body: Result<Bytes, BytesRejection>, limits: &Limits) -> Result<Value, ApiError> {
    let body = read(body, limits)?;
    serde_json::from_slice::<Value>(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// The top-level fields of a JSON object `body`, each kept as its text (nothing below the
/// top level is parsed; a key given twice keeps its last value).
pub fn raw_object(body: &[u8]) -> Result<BTreeMap<&str, &RawValue>, ApiError> {
    let raw: &RawValue =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    if !raw.get().starts_with('{') {
        return Err(ApiError::invalid(
            "body",
            format!("expected a JSON object, got {}", raw_type_name(raw)),
        ));
    }
    serde_json::from_str(raw.get()).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// The rows of the array field `field` of a [`raw_object`] of `body`, each kept as its
/// text (a slice of `body`, no copy): a non-empty JSON array of at most `max_items`
/// values of any type.
pub fn raw_rows(
    body: &Bytes,
    obj: &BTreeMap<&str, &RawValue>,
    field: &'static str,
    limits: &Limits,
) -> Result<Vec<JsonText>, ApiError> {
    let value = match obj.get(field) {
        None => return Err(ApiError::MissingField(field)),
        Some(v) if v.get() == "null" => return Err(ApiError::MissingField(field)),
        Some(v) => *v,
    };
    if !value.get().starts_with('[') {
        return Err(ApiError::invalid(
            field,
            format!("expected an array, got {}", raw_type_name(value)),
        ));
    }
    let items: Vec<&RawValue> =
        serde_json::from_str(value.get()).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    if items.is_empty() {
        return Err(ApiError::invalid(field, "must hold at least one row"));
    }
    if items.len() > limits.max_items {
        return Err(ApiError::TooManyItems {
            param: field,
            got: items.len(),
            limit: limits.max_items,
        });
    }
    Ok(items
        .into_iter()
        .map(|raw| JsonText::within(body, raw))
        .collect())
}

pub use infercache_core::canonical::raw_type_name;
