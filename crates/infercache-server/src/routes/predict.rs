//! `POST /v1/models/{name}/predict`: plain JSON, for a model with an `http-json`
//! upstream.
//!
//! Request: `{"inputs": [row, ...], "parameters": {...}}` (`parameters` optional); a row
//! is any JSON value. Response: `{"outputs": [row, ...]}`, one output per input, in
//! order, with the `X-Cache*` headers.
//!
//! Each input row is keyed by its canonical JSON (object key order does not matter,
//! numbers keep their exact text: `1` and `1.0` are different rows) and the model's
//! configured `params` picked out of `parameters`. Only the rows no tier holds go
//! upstream, as `POST {url}` with `{"inputs": [missing rows], "parameters"}` (every
//! parameter is forwarded, keyed or not), each row and the parameters exactly as the
//! client wrote them; the upstream must answer `{"outputs": [...]}` with one output per
//! input. Each output row is stored as the upstream's text and written back verbatim.
//!
//! The body is never parsed into a tree of values: rows are kept as slices of text, so
//! parsing costs about the body's own size once more.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use infercache_backend::{BackendKind, Inputs, JsonText};
use infercache_infer::RowRequest;

use super::body;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{cache_control, routes};

/// `POST /v1/models/{name}/predict`.
pub async fn predict(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = routes::path_name(name)?;
    let directives = cache_control::parse(&headers)?;
    let model = state.models().resolve(&name, &[BackendKind::HttpJson])?;
    let bytes = body::bytes(body, state.limits())?;
    let obj = body::raw_object(&bytes)?;
    if let Some(field) = obj.keys().find(|k| !["inputs", "parameters"].contains(*k)) {
        return Err(ApiError::UnsupportedField {
            hint: "supported fields are inputs, parameters".to_owned(),
            field: (*field).to_owned(),
        });
    }
    let rows = body::raw_rows(&bytes, &obj, "inputs", state.limits())?;
    let parameters = match obj.get("parameters") {
        None => None,
        Some(p) if p.get() == "null" => None,
        Some(p) if p.get().starts_with('{') => Some(JsonText::within(&bytes, p)),
        Some(other) => {
            return Err(ApiError::invalid(
                "parameters",
                format!("expected an object, got {}", body::raw_type_name(other)),
            ));
        }
    };
    let _room = state.reserve_items(rows.len())?;
    let rows = state
        .rows(RowRequest {
            model,
            tenant: caller.tenant,
            inputs: Arc::new(Inputs::Json { rows, parameters }),
            control: directives.into(),
        })
        .await?;
    let headers = routes::cache_headers(&rows);
    let body = routes::json_rows(b"{\"outputs\":", &rows.values, b"null", b"}");
    Ok(routes::json_response(body, headers))
}
