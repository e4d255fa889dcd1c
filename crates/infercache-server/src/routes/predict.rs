//! `POST /v1/models/{name}/predict`: plain JSON, for a model with an `http-json`
//! upstream.
//!
//! Request: `{"inputs": [row, ...], "parameters": {...}}` (`parameters` optional); a row
//! is any JSON value. Response: `{"outputs": [row, ...]}`, one output per input, in
//! order, with the `X-Cache*` headers.
//!
//! Each input row is keyed by its canonical JSON (object key order does not matter) and
//! the model's configured `params` picked out of `parameters`. Only the rows no tier
//! holds go upstream, as `POST {url}` with `{"inputs": [missing rows], "parameters"}`
//! (every parameter is forwarded, keyed or not); the upstream must answer
//! `{"outputs": [...]}` with one output per input. Each output row is stored as its JSON
//! text and written back verbatim.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::body;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::upstream::{
    Backend, CanonicalInput, RemoteModel, RowRequest, UpstreamError, fetch_rows,
};
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
    let model = state
        .models()
        .resolve(&name, &[Backend::HttpJson], &state.model().id)?;
    let mut obj = body::object(body, state.limits())?;
    body::only_fields(&obj, &["inputs", "parameters"], |_| {
        "supported fields are inputs, parameters".to_owned()
    })?;
    let inputs = body::rows(&mut obj, "inputs", state.limits())?;
    let parameters = match obj.remove("parameters") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p),
        Some(other) => {
            return Err(ApiError::invalid(
                "parameters",
                format!("expected an object, got {}", body::type_name(&other)),
            ));
        }
    };
    let params = model.key_params(parameters.as_ref(), Map::new())?;
    let rows = canonical_rows(&inputs)?;
    let _room = state.reserve_items(inputs.len())?;

    let request = RowRequest {
        model: Arc::clone(&model),
        tenant: caller.tenant,
        rows,
        params,
        control: directives.into(),
    };
    let (inputs, parameters) = (Arc::new(inputs), Arc::new(parameters));
    let rows = fetch_rows(&state, request, move |indices: Vec<usize>| {
        let mut body =
            json!({ "inputs": indices.iter().map(|&i| inputs[i].clone()).collect::<Vec<_>>() });
        if let Some(p) = parameters.as_ref() {
            body["parameters"] = Value::Object(p.clone());
        }
        let model = Arc::clone(&model);
        async move { predict_upstream(&model, &body).await }
    })
    .await?;
    let headers = rows.headers();
    let body = routes::json_rows(b"{\"outputs\":", &rows.values, b"null", b"}");
    Ok(routes::json_response(body, headers))
}

/// Each row's canonical JSON.
pub(crate) fn canonical_rows(inputs: &[Value]) -> Result<Vec<CanonicalInput>, ApiError> {
    inputs
        .iter()
        .map(|v| CanonicalInput::json(v).map_err(ApiError::internal))
        .collect()
}

async fn predict_upstream(model: &RemoteModel, body: &Value) -> Result<Vec<Bytes>, UpstreamError> {
    #[derive(serde::Deserialize)]
    struct Reply {
        outputs: Vec<Value>,
    }
    let reply = model.upstream().post_json("", body).await?;
    let reply: Reply = serde_json::from_slice(&reply.body).map_err(|e| {
        UpstreamError::bad_response(
            model.name(),
            format!("expected {{\"outputs\": [...]}}: {e}"),
        )
    })?;
    Ok(routes::row_bytes(reply.outputs))
}
