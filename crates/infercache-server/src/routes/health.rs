//! `GET /healthz` (the process answers) and `GET /readyz` (it accepts work: 503 once
//! shutdown has begun, so a load balancer stops sending before the drain ends, and while
//! the built-in model has no inference thread to run). Neither needs a key.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use infercache_backend::BackendKind;

use crate::state::AppState;

/// `GET /healthz`.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`. With a Redis tier the body carries its circuit breaker's state; an open
/// breaker does not make the node unready, since it serves from its own tiers and computes.
/// Upstream models are not asked: one upstream down does not make the node unready for
/// the others.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if !state.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting_down" })),
        );
    }
    for model in state.models().iter() {
        if model.kind() == BackendKind::Builtin
            && let Err(error) = model.backend().ready().await
        {
            tracing::warn!(model = model.name(), %error, "model not ready");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "model_unavailable", "model": model.name() })),
            );
        }
    }
    let mut body = json!({ "status": "ready" });
    if let Some(r) = state.cache().and_then(|c| c.stats().remote) {
        body["redis"] = json!({ "breaker": r.breaker, "connected": r.connected });
    }
    (StatusCode::OK, Json(body))
}
