//! `POST /v1/embed`, compatible with Smally's API.
//!
//! Request: `{"text": "…", "normalize": false}`; an empty text, or one of only whitespace,
//! is 400 `empty_string`, as Smally answers. Response: `{"embedding", "model",
//! "tokens", "cached", "latency_ms"}`, with the `X-Cache*` headers as on every embedding
//! route.
//!
//! # Normalization and the cache
//!
//! The cache stores the model's output verbatim, and `normalize` is applied after the
//! lookup, on the way out. So one entry serves both settings, `normalize` is not part of
//! the key, and the answer is right whatever the model returns: `normalize: true` always
//! gives a unit vector, `normalize: false` always gives exactly what the model produced.
//! Storing normalized vectors instead would make `normalize: false` wrong for any model
//! whose raw output is not unit length.
//!
//! For all-MiniLM-L6-v2 the two settings give the same vector (to rounding): the model's
//! pipeline ends in a `Normalize` layer, so its output is already unit length.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use infercache_backend::{BUILTIN_MODEL, BackendKind, Inputs, vector};
use infercache_infer::{Model, RowRequest};
use serde::Serialize;

use super::body;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{cache_control, routes};

#[derive(Serialize)]
struct EmbedResponse {
    embedding: Vec<f32>,
    model: String,
    tokens: usize,
    cached: bool,
    latency_ms: f64,
}

/// `POST /v1/embed`.
pub async fn embed(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let directives = cache_control::parse(&headers)?;
    let mut obj = body::object(body, state.limits())?;
    body::only_fields(&obj, &["text", "normalize"], |_| {
        "supported fields are text, normalize".to_owned()
    })?;
    match obj.get("text") {
        None | Some(serde_json::Value::String(_)) => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "text",
                format!("expected a string, got {}", body::type_name(other)),
            ));
        }
    }
    let text = body::texts(&mut obj, "text", state.limits())?.remove(0);
    // As Smally answers: a text of only whitespace has nothing to embed.
    if text.trim().is_empty() {
        return Err(ApiError::BlankString {
            param: "text".to_owned(),
        });
    }
    let normalize = body::opt_bool(&mut obj, "normalize")?.unwrap_or(false);
    // Smally's API names no model: it is the built-in one.
    let model = state
        .models()
        .resolve(BUILTIN_MODEL, &[BackendKind::Builtin])?;

    let inputs = Arc::new(Inputs::texts(vec![text.clone()]));
    let rows = state
        .rows(RowRequest {
            model: Arc::clone(&model),
            tenant: caller.tenant,
            inputs: Arc::clone(&inputs),
            control: directives.into(),
        })
        .await?;
    let mut headers = routes::cache_headers(&rows);
    if let Some(key) = rows.keys.first() {
        headers.push((
            HeaderName::from_static("x-cache-key"),
            HeaderValue::from_str(&key.to_hex()).map_err(ApiError::internal)?,
        ));
    }
    let outcome = rows.outcome();
    let stored = rows.values[0]
        .as_ref()
        .ok_or_else(|| ApiError::internal("an embedding row is absent (a bug)"))?;
    let vector = vector::decode(stored, model.info().dims).map_err(ApiError::internal)?;
    let embedding = if normalize {
        vector::l2_normalize(vector)
    } else {
        vector
    };
    let response = EmbedResponse {
        embedding,
        model: model.name().to_owned(),
        tokens: count_tokens(&model, &text).await?,
        cached: rows.hits() == 1,
        latency_ms: start.elapsed().as_secs_f64() * 1000.0,
    };
    let body = serde_json::to_vec(&response).map_err(ApiError::internal)?;
    state.metrics().request(&model, outcome, start.elapsed());
    Ok(routes::json_response(body, headers))
}

/// Tokens in `text`, counted on the blocking pool when the text is long enough for the
/// tokenizer to stall an async worker.
async fn count_tokens(model: &Arc<Model>, text: &str) -> Result<usize, ApiError> {
    if text.len() < routes::BLOCKING_RENDER_WORK {
        return Ok(model.backend().count_tokens(text));
    }
    let (model, text) = (Arc::clone(model), text.to_owned());
    tokio::task::spawn_blocking(move || model.backend().count_tokens(&text))
        .await
        .map_err(ApiError::internal)
}
