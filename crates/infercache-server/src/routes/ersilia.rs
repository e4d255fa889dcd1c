//! `POST /v1/models/{name}/run`: Ersilia-style, for a model with an `ersilia` upstream.
//!
//! Request body, as ersilia-pack's `Union[List[str], List[InputItem]]`: a non-empty JSON
//! array either of strings (`["CCO", "CCCO"]`) or of objects `{"key": "...", "input":
//! "..."}` with both fields strings. A list that mixes the two, an object without `key`
//! or `input`, or one whose `key` or `input` is not a string is refused (400) before
//! anything is looked up, as ersilia-pack refuses it (422); so are empty inputs and
//! object fields other than `key` and `input` (which ersilia-pack would silently drop).
//! Response: a JSON array with one output row per input, in order, with the `X-Cache*`
//! headers.
//!
//! Each row is keyed by its input string alone, as ersilia-pack's own cache is: `"CCO"`
//! and `{"key": "k1", "input": "CCO"}` share an entry, whatever the key. ersilia-pack
//! replaces objects by their `input` before running the model and indexes its output by
//! those inputs, so the `key` never changes an output; for the same reason the missing
//! inputs go upstream as `POST {url}/run` with a JSON array of strings whatever form the
//! client used (a form ersilia-pack accepts for every request). The upstream must answer
//! a JSON array with one row per input.
//!
//! Query flags, with ersilia-pack's meaning (each `true`/`false`, also `1`/`0`,
//! `yes`/`no`, `on`/`off`):
//!
//! | flag | default | effect |
//! |---|---|---|
//! | `fetch_cache` | true | `false`: do not read the cache and store nothing; every row is computed, and `save_cache` and `cache_only` are ignored |
//! | `save_cache` | true | `false`: store nothing computed (as `Cache-Control: no-store`) |
//! | `cache_only` | false | never call the upstream: a row that is not cached comes back as a row of nulls |
//!
//! This is what ersilia-pack's `get_cached_or_compute` does with them, with one
//! difference: its defaults are `false` (no cache unless asked for), ours `true`, since
//! a client sends its requests here to have them cached. As in ersilia-pack, the flags
//! have no effect on a model whose rows are never cached (`deterministic = false`, or
//! the cache disabled): every row is computed. `cache_only=true` with `Cache-Control:
//! no-cache` is refused (400): it could return nothing.
//!
//! A row of nulls has the shape of the first cached row of the response: an object with
//! the same keys, every value `null`; an array of as many `null`s; else `null` (also
//! when no row of the response is cached). Any other query parameter is refused (400),
//! so that one that changes the output (ersilia-pack's `orient`) never shares entries
//! with the default: the upstream is always called with its defaults.
//!
//! A computed row that is entirely null (`null`, or an object or array whose every value
//! is `null`) is ersilia-pack's result for an input the model failed on: it is returned
//! but not kept in the cache, so the next request for that input computes it again and
//! `cache_only` reports it as not cached.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use infercache_backend::{BackendKind, Inputs};
use infercache_infer::{CacheControl, RowRequest};
use serde_json::Value;

use super::body;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{cache_control, routes};

const FLAGS: &str = "fetch_cache, save_cache, cache_only";

/// `POST /v1/models/{name}/run`.
pub async fn run(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = routes::path_name(name)?;
    let mut control = CacheControl::from(cache_control::parse(&headers)?);
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    flags(&query, &mut control)?;
    let model = state.models().resolve(&name, &[BackendKind::Ersilia])?;
    let inputs = body::row_array(body::value(body, state.limits())?, "body", state.limits())?;
    let texts = input_strings(&inputs)?;
    if !model.policy().deterministic || state.cache().is_none() {
        // Nothing is cached for this model: ersilia-pack computes every row whatever
        // the flags say.
        control.cache_only = false;
    }
    let _room = state.reserve_items(inputs.len())?;
    let rows = state
        .rows(RowRequest {
            model,
            tenant: caller.tenant,
            inputs: Arc::new(Inputs::texts(texts)),
            control,
        })
        .await?;
    let headers = routes::cache_headers(&rows);
    let absent = null_row(&rows.values)?;
    let body = routes::json_rows(b"", &rows.values, &absent, b"");
    Ok(routes::json_response(body, headers))
}

/// Applies the query flags to `control` as ersilia-pack's `get_cached_or_compute` does:
/// `fetch_cache=false` turns `save_cache` and `cache_only` off.
fn flags(query: &[(String, String)], control: &mut CacheControl) -> Result<(), ApiError> {
    let (mut fetch_cache, mut save_cache, mut cache_only) = (true, true, false);
    for (name, value) in query {
        let flag = match name.as_str() {
            "fetch_cache" => &mut fetch_cache,
            "save_cache" => &mut save_cache,
            "cache_only" => &mut cache_only,
            _ => {
                return Err(ApiError::UnsupportedField {
                    field: name.clone(),
                    hint: format!("supported query parameters are {FLAGS}"),
                });
            }
        };
        *flag = match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(ApiError::invalid(
                    name.clone(),
                    format!("expected true or false, got {value:?}"),
                ));
            }
        };
    }
    if !fetch_cache {
        control.options.no_cache = true;
        control.options.no_store = true;
    } else {
        control.options.no_store |= !save_cache;
        control.cache_only = cache_only;
    }
    if control.cache_only && control.options.no_cache {
        return Err(ApiError::invalid(
            "cache_only",
            "cache_only=true cannot be combined with Cache-Control: no-cache",
        ));
    }
    Ok(())
}

/// Each input's string: the body is all strings or all `{"key": string, "input":
/// string}` objects (ersilia-pack's `Union[List[str], List[InputItem]]`), inputs non-empty.
fn input_strings(inputs: &[Value]) -> Result<Vec<String>, ApiError> {
    let objects = inputs.first().is_some_and(Value::is_object);
    inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let param = || format!("body[{i}]");
            let text = match input {
                Value::String(s) if !objects => s,
                Value::Object(obj) if objects => object_input(obj, &param)?,
                Value::String(_) | Value::Object(_) => {
                    return Err(ApiError::invalid(
                        param(),
                        format!(
                            "the body mixes strings and objects; it must be all strings or all \
                             {{\"key\", \"input\"}} objects (body[0] is {})",
                            if objects { "an object" } else { "a string" }
                        ),
                    ));
                }
                other => {
                    return Err(ApiError::invalid(
                        param(),
                        format!(
                            "expected a string or a {{\"key\", \"input\"}} object, got {}",
                            body::type_name(other)
                        ),
                    ));
                }
            };
            if text.is_empty() {
                return Err(ApiError::EmptyString { param: param() });
            }
            Ok(text.clone())
        })
        .collect()
}

/// The `input` of a `{"key": string, "input": string}` object.
fn object_input<'a>(
    obj: &'a serde_json::Map<String, Value>,
    param: &dyn Fn() -> String,
) -> Result<&'a String, ApiError> {
    if let Some(field) = obj.keys().find(|k| *k != "key" && *k != "input") {
        return Err(ApiError::invalid(
            param(),
            format!("unsupported field `{field}`; an input object holds `key` and `input`"),
        ));
    }
    let string = |field: &str| match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        None => Err(ApiError::invalid(param(), format!("missing `{field}`"))),
        Some(other) => Err(ApiError::invalid(
            param(),
            format!("`{field}` must be a string, got {}", body::type_name(other)),
        )),
    };
    string("key")?;
    string("input")
}

/// The row that stands for an input under `cache_only` that is not cached.
fn null_row(values: &[Option<Bytes>]) -> Result<Vec<u8>, ApiError> {
    let Some(first) = values.iter().flatten().next() else {
        return Ok(b"null".to_vec());
    };
    if values.iter().all(Option::is_some) {
        return Ok(Vec::new());
    }
    let shape: Value = serde_json::from_slice(first).map_err(ApiError::internal)?;
    let nulls = match shape {
        Value::Object(obj) => {
            Value::Object(obj.into_iter().map(|(k, _)| (k, Value::Null)).collect())
        }
        Value::Array(a) => Value::Array(vec![Value::Null; a.len()]),
        _ => Value::Null,
    };
    serde_json::to_vec(&nulls).map_err(ApiError::internal)
}
