//! Listing and describing models.
//!
//! - `GET /v1/models`: OpenAI's list shape, `{"object": "list", "data": [{"id",
//!   "object": "model", "created", "owned_by"}]}`, each entry with infercache's fields
//!   added: `backend`, `version`, `digest`, `dims` (an embedder's dimensions, `null`
//!   when undeclared), `deterministic`, `ttl_secs`, `stale_if_error_secs`,
//!   `stale_while_revalidate_secs`, `max_batch`, `params`.
//!   Upstream URLs are not shown.
//! - `GET /v2` (KServe v2 server metadata): `{"name": "infercache", "version",
//!   "extensions": ["binary_tensor_data", "model_configuration"]}`: clients may send
//!   binary tensors whatever each upstream takes, and ask for a Triton model's config.
//! - `GET /v2/health/live`, `GET /v2/health/ready` (KServe v2): 200 while the server
//!   accepts work, 503 once shutdown has begun. Readiness does not probe the upstreams.
//! - `GET /v2/models/{name}[/versions/{version}]` (KServe v2 metadata): for a `kserve-v2`
//!   model, the upstream's own metadata, fetched with retries (a `GET` is idempotent) and
//!   with `name` rewritten to the name clients use; for any other model, metadata from
//!   the config (`name`, `versions`, `platform`, empty `inputs` and `outputs`).
//! - `GET /v2/models/{name}[/versions/{version}]/config` (Triton's model configuration):
//!   the upstream's `GET /v2/models/{upstream_name}/config`, retried, with `name`
//!   rewritten; 404 `model_config_not_found` for a model that is not `kserve-v2`.
//! - `GET /v2/models/{name}[/versions/{version}]/ready`: the upstream's answer for a
//!   `kserve-v2` model, 200 for any other configured model.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infercache_backend::BackendKind;
use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Serialize)]
struct ModelEntry {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    backend: BackendKind,
    version: String,
    digest: Option<String>,
    /// An embedder's dimensions, when declared (`datasets build --url` needs them).
    dims: Option<usize>,
    deterministic: bool,
    ttl_secs: Option<u64>,
    stale_if_error_secs: Option<u64>,
    stale_while_revalidate_secs: Option<u64>,
    max_batch: Option<usize>,
    /// The keyed parameters; `null`: every parameter is keyed.
    params: Option<Vec<String>>,
}

/// `GET /v1/models`.
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let data: Vec<ModelEntry> = state
        .models()
        .iter()
        .map(|m| {
            let (info, policy) = (m.info(), m.policy());
            ModelEntry {
                id: info.name.clone(),
                object: "model",
                created: 0,
                owned_by: "infercache",
                backend: info.kind,
                version: info.version.clone(),
                digest: info.digest.clone(),
                dims: info.dims,
                deterministic: policy.deterministic,
                ttl_secs: policy.ttl.map(|d| d.as_secs()),
                stale_if_error_secs: policy.stale_if_error.map(|d| d.as_secs()),
                stale_while_revalidate_secs: policy.stale_while_revalidate.map(|d| d.as_secs()),
                max_batch: policy.max_batch,
                params: policy.params.clone(),
            }
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// `GET /v2`: the server's metadata.
pub async fn server_metadata(_caller: Caller) -> Json<Value> {
    Json(json!({
        "name": "infercache",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_configuration"],
    }))
}

/// `GET /v2/models/{name}/config`.
pub async fn config(
    State(state): State<AppState>,
    _caller: Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let name = super::path_name(name)?;
    model_config(&state, &name, None).await
}

/// `GET /v2/models/{name}/versions/{version}/config`.
pub async fn version_config(
    State(state): State<AppState>,
    _caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((name, version)) = path.map_err(|e| ApiError::invalid("name", e.body_text()))?;
    model_config(&state, &name, Some(&version)).await
}

/// A `kserve-v2` model's configuration, from its upstream.
async fn model_config(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    let model = state.models().resolve(name, &BackendKind::ALL)?;
    let info = model.info();
    if info.kind != BackendKind::KServeV2 {
        return Err(ApiError::NoModelConfig {
            model: info.name.clone(),
            backend: info.kind,
        });
    }
    check_version(name, version, &info.version)?;
    let config = model
        .backend()
        .model_config()
        .await?
        .ok_or_else(|| ApiError::internal("a kserve-v2 backend has no model configuration"))?;
    Ok(Json(config))
}

/// `GET /v2/health/live` and `GET /v2/health/ready`.
pub async fn health(State(state): State<AppState>) -> StatusCode {
    if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `GET /v2/models/{name}`.
pub async fn metadata(
    State(state): State<AppState>,
    _caller: Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = super::path_name(name)?;
    describe(&state, &name, None).await
}

/// `GET /v2/models/{name}/versions/{version}`.
pub async fn version_metadata(
    State(state): State<AppState>,
    _caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((name, version)) = path.map_err(|e| ApiError::invalid("name", e.body_text()))?;
    describe(&state, &name, Some(&version)).await
}

/// `GET /v2/models/{name}/ready`.
pub async fn ready(
    State(state): State<AppState>,
    _caller: Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = super::path_name(name)?;
    model_ready(&state, &name, None).await
}

/// `GET /v2/models/{name}/versions/{version}/ready`.
pub async fn version_ready(
    State(state): State<AppState>,
    _caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path((name, version)) = path.map_err(|e| ApiError::invalid("name", e.body_text()))?;
    model_ready(&state, &name, Some(&version)).await
}

/// 404 unless `version` (from the path) is the one `name` is served at. The upstream is
/// then asked at its unversioned path, as the infer route does: a client's path segment
/// never reaches the upstream's URL.
pub(crate) fn check_version(
    name: &str,
    version: Option<&str>,
    served: &str,
) -> Result<(), ApiError> {
    match version {
        Some(v) if v != served => Err(ApiError::UnknownVersion {
            model: name.to_owned(),
            requested: v.to_owned(),
            served: served.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The model's own metadata when its protocol has one (a `kserve-v2` upstream's), else
/// metadata from its configuration.
async fn describe(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Response, ApiError> {
    let model = state.models().resolve(name, &BackendKind::ALL)?;
    let info = model.info();
    check_version(name, version, &info.version)?;
    if let Some(meta) = model.backend().metadata().await? {
        return Ok(Json(meta).into_response());
    }
    Ok(Json(json!({
        "name": name,
        "versions": [info.version],
        "platform": format!("infercache-{}", info.kind),
        "inputs": [],
        "outputs": [],
    }))
    .into_response())
}

async fn model_ready(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<StatusCode, ApiError> {
    let model = state.models().resolve(name, &BackendKind::ALL)?;
    check_version(name, version, &model.info().version)?;
    model.backend().ready().await?;
    Ok(StatusCode::OK)
}
