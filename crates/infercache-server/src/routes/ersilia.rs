//! `POST /v1/models/{name}/run`: Ersilia-style, for a model with an `ersilia` upstream.
//!
//! Request body: a JSON array of inputs, each a string (`"CCO"`) or an object
//! `{"key": "...", "input": "..."}` (`key` optional). Response: a JSON array with one
//! output row per input, in order, with the `X-Cache*` headers.
//!
//! Query flags, with ersilia-pack's meaning (each `true`/`false`, also `1`/`0`,
//! `yes`/`no`, `on`/`off`):
//!
//! | flag | default | effect |
//! |---|---|---|
//! | `fetch_cache` | true | `false`: do not read the cache; compute every row (as `Cache-Control: no-cache`) |
//! | `save_cache` | true | `false`: store nothing computed (as `Cache-Control: no-store`) |
//! | `cache_only` | false | never call the upstream: a row that is not cached comes back as a row of nulls |
//!
//! `cache_only=true` with `fetch_cache=false` is refused (400): it could return nothing.
//! A row of nulls has the shape of the first cached row of the response: an object with
//! the same keys, every value `null`; an array of as many `null`s; else `null` (also
//! when no row of the response is cached). Any other query parameter is refused (400),
//! so that one that changes the output (ersilia-pack's `orient`) never shares entries
//! with the default: the upstream is always called with its defaults.
//!
//! Each input is keyed by its canonical JSON (so `{"key", "input"}` objects whose keys
//! differ only in order share an entry, and a bare string is its own row). The missing
//! inputs go upstream as `POST {url}/run` with the JSON array of those inputs as sent;
//! the upstream must answer a JSON array with one row per input.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use super::body;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::upstream::{Backend, CacheControl, RemoteModel, RowRequest, UpstreamError, fetch_rows};
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
    let model = state
        .models()
        .resolve(&name, &[Backend::Ersilia], &state.model().id)?;
    let inputs = body::row_array(body::value(body, state.limits())?, "body", state.limits())?;
    for (i, input) in inputs.iter().enumerate() {
        check_input(input, i)?;
    }
    let params = model.key_params(None, serde_json::Map::new())?;
    let rows = super::predict::canonical_rows(&inputs)?;
    let _room = state.reserve_items(inputs.len())?;

    let request = RowRequest {
        model: Arc::clone(&model),
        tenant: caller.tenant,
        rows,
        params,
        control,
    };
    let inputs = Arc::new(inputs);
    let rows = fetch_rows(&state, request, move |indices: Vec<usize>| {
        let body = Value::Array(indices.iter().map(|&i| inputs[i].clone()).collect());
        let model = Arc::clone(&model);
        async move { run_upstream(&model, &body).await }
    })
    .await?;
    let headers = rows.headers();
    let absent = null_row(&rows.values)?;
    let body = routes::json_rows(b"", &rows.values, &absent, b"");
    Ok(routes::json_response(body, headers))
}

/// Applies the query flags to `control`.
fn flags(query: &[(String, String)], control: &mut CacheControl) -> Result<(), ApiError> {
    for (name, value) in query {
        if !["fetch_cache", "save_cache", "cache_only"].contains(&name.as_str()) {
            return Err(ApiError::UnsupportedField {
                field: name.clone(),
                hint: format!("supported query parameters are {FLAGS}"),
            });
        }
        let on = match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(ApiError::invalid(
                    name.clone(),
                    format!("expected true or false, got {value:?}"),
                ));
            }
        };
        match name.as_str() {
            "fetch_cache" => control.options.no_cache |= !on,
            "save_cache" => control.options.no_store |= !on,
            _ => control.cache_only = on,
        }
    }
    if control.cache_only && control.options.no_cache {
        return Err(ApiError::invalid(
            "cache_only",
            "cache_only=true cannot be combined with fetch_cache=false (or Cache-Control: no-cache)",
        ));
    }
    Ok(())
}

/// An input is a non-empty string or `{"input": string, "key"?: string}`.
fn check_input(input: &Value, i: usize) -> Result<(), ApiError> {
    let param = || format!("body[{i}]");
    match input {
        Value::String(s) if !s.is_empty() => Ok(()),
        Value::String(_) => Err(ApiError::EmptyString { param: param() }),
        Value::Object(obj) => {
            if let Some(field) = obj.keys().find(|k| *k != "key" && *k != "input") {
                return Err(ApiError::invalid(
                    param(),
                    format!(
                        "unsupported field `{field}`; an input object holds `input` and optionally `key`"
                    ),
                ));
            }
            match (obj.get("input"), obj.get("key")) {
                (Some(Value::String(s)), None | Some(Value::String(_))) if !s.is_empty() => Ok(()),
                (None, _) => Err(ApiError::invalid(param(), "missing `input`")),
                _ => Err(ApiError::invalid(
                    param(),
                    "`input` must be a non-empty string and `key` a string",
                )),
            }
        }
        other => Err(ApiError::invalid(
            param(),
            format!(
                "expected a string or an object with `input`, got {}",
                body::type_name(other)
            ),
        )),
    }
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

async fn run_upstream(model: &RemoteModel, body: &Value) -> Result<Vec<Bytes>, UpstreamError> {
    let reply = model.upstream().post_json("/run", body).await?;
    let rows: Vec<Value> = serde_json::from_slice(&reply.body).map_err(|e| {
        UpstreamError::bad_response(model.name(), format!("expected a JSON array of rows: {e}"))
    })?;
    Ok(routes::row_bytes(rows))
}
