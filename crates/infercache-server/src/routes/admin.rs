//! Admin routes; each needs an admin key when keys are configured.
//!
//! - `GET /v1/cache/stats`: per tier and per model: hits, misses, hit rate, entries,
//!   bytes, evictions; the Redis tier's lookups, failures, leases and circuit breaker;
//!   for the built-in model, mean latency of hit, miss and partial requests, inference
//!   work and the inference time the hits saved.
//! - `POST /v1/cache/invalidate`: `{"scope": "all"}`, `{"scope": "namespace", "namespace"}`,
//!   `{"scope": "model", "model"}` or `{"scope": "version", "model", "version"}`. Every
//!   older entry in that scope becomes unreachable at once (an epoch bump; no scan).
//! - `DELETE /v1/cache/entries/{key}`: removes one entry by its hex key (as reported in a
//!   response's `cache.keys` or `X-Cache-Key`); 404 if no tier held it.
//! - `POST /v1/cache/warm`: `{"inputs": [...], "namespace"?, "model"?}` computes and
//!   stores what is missing, for the caller's tenant unless `namespace` names another,
//!   through the per-row path every route takes. `model` (default: the built-in model)
//!   may name any model whose rows are texts (`builtin`, `openai`, `tei`, `ersilia`); one
//!   not served is a 404 naming it.
//! - `GET /metrics`: Prometheus text: OpenMetrics, or the classic format (0.0.4) when
//!   `Accept` asks for `text/plain` and not OpenMetrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use infercache_api::stats::{
    CacheStats, InProcessReport, InferenceReport, ModelLookups, ModelReport, RemoteReport,
    SyncReport, TierReport, Tiers,
};
use infercache_api::{self as api, Invalidated, RemovedEntry, WarmResponse};
use infercache_backend::{BUILTIN_MODEL, BackendKind, BackendStats, InferenceStats, Inputs};
use infercache_core::Digest;
use infercache_core::stats::{ModelStats, TierStats};
use infercache_engine::{RemoteStats, Scope};
use infercache_infer::{Model, Outcome, RowRequest};

use super::body;
use crate::auth::Admin;
use crate::cache_control;
use crate::error::ApiError;
use crate::state::AppState;

/// The kinds of model `POST /v1/cache/warm` fills: those whose rows are texts.
const WARM_KINDS: &[BackendKind] = &[
    BackendKind::Builtin,
    BackendKind::OpenAi,
    BackendKind::Tei,
    BackendKind::Ersilia,
];

/// `GET /v1/cache/stats`.
pub async fn stats(State(state): State<AppState>, _admin: Admin) -> Json<CacheStats> {
    let engine = state.cache().map(infercache_engine::Cache::stats);
    let mut models: BTreeMap<String, ModelReport> = engine
        .as_ref()
        .map(|s| {
            s.models
                .iter()
                .map(|(name, lookups)| {
                    let report = ModelReport {
                        lookups: model_lookups(lookups),
                        in_process: None,
                    };
                    (name.clone(), report)
                })
                .collect()
        })
        .unwrap_or_default();
    for model in state.models().iter() {
        if let BackendStats::InProcess(inference) = model.backend().stats() {
            let lookups = models
                .get(model.name())
                .map(|r| r.lookups.clone())
                .unwrap_or_default();
            let in_process = in_process_report(&state, model, &lookups, inference);
            models.insert(
                model.name().to_owned(),
                ModelReport {
                    lookups,
                    in_process: Some(in_process),
                },
            );
        }
    }
    Json(CacheStats {
        cache_enabled: engine.is_some(),
        tiers: Tiers {
            memory: engine.as_ref().and_then(|s| s.memory.as_ref().map(tier)),
            disk: engine.as_ref().and_then(|s| s.disk.as_ref().map(tier)),
            redis: engine.as_ref().and_then(|s| s.remote.as_ref().map(remote)),
        },
        models,
        coalesced: engine.as_ref().map_or(0, |s| s.coalesced),
        writeback_dropped: engine.as_ref().map_or(0, |s| s.writeback_dropped),
        writeback_queued: engine.as_ref().map_or(0, |s| s.writeback_queued),
        sync: engine
            .as_ref()
            .and_then(|s| s.sync.as_ref())
            .map(|s| SyncReport {
                in_sync: s.in_sync,
                unsynced_ms: s.unsynced_ms,
                local_reads: s.local_reads,
                local_reads_skipped: s.local_reads_skipped,
            }),
    })
}

/// A tier's stats as the API reports them.
fn tier(t: &TierStats) -> TierReport {
    TierReport {
        hits: t.hits,
        misses: t.misses,
        hit_rate: t.hit_rate,
        inserts: t.inserts,
        evictions: t.evictions,
        expirations: t.expirations,
        removals: t.removals,
        corrupt: t.corrupt,
        write_errors: t.write_errors,
        entries: t.entries,
        bytes: t.bytes,
        capacity: t.capacity,
        degraded: t.degraded,
        io_errors: t.io_errors,
        index_bytes: t.index_bytes,
        reserved_bytes: t.reserved_bytes,
    }
}

/// The remote tier's stats as the API reports them.
fn remote(r: &RemoteStats) -> RemoteReport {
    RemoteReport {
        kind: r.kind.clone(),
        endpoint: r.endpoint.clone(),
        breaker: r.breaker.as_str().to_owned(),
        connected: r.connected,
        breaker_opened: r.breaker_opened,
        hits: r.hits,
        misses: r.misses,
        corrupt: r.corrupt,
        writes: r.writes,
        errors: r.errors,
        error_replies: r.error_replies.clone(),
        skipped: r.skipped,
        writeback_dropped: r.writeback_dropped,
        writeback_queued: r.writeback_queued,
        leases_granted: r.leases_granted,
        leases_contended: r.leases_contended,
        lease_waits_filled: r.lease_waits_filled,
        lease_waits_empty: r.lease_waits_empty,
        lease_replies_lost: r.lease_replies_lost,
        lease_release_retries: r.lease_release_retries,
        epoch_updates: r.epoch_updates,
        removals_pending: r.removals_pending,
        removals_replayed: r.removals_replayed,
        removals_received: r.removals_received,
    }
}

/// A model's lookups as the API reports them.
fn model_lookups(m: &ModelStats) -> ModelLookups {
    ModelLookups {
        hits: m.hits,
        memory_hits: m.memory_hits,
        disk_hits: m.disk_hits,
        remote_hits: m.remote_hits,
        misses: m.misses,
        hit_rate: m.hit_rate,
        inserts: m.inserts,
        coalesced: m.coalesced,
        compute_errors: m.compute_errors,
        stale_served: m.stale_served,
        refreshes: m.refreshes,
        not_stored: m.not_stored,
        corrupt: m.corrupt,
    }
}

/// The request latencies and inference work of a model run in this process.
fn in_process_report(
    state: &AppState,
    model: &Model,
    lookups: &ModelLookups,
    inference: InferenceStats,
) -> InProcessReport {
    let metrics = state.metrics();
    let (secs, calls, texts) = metrics.compute_totals(model);
    #[expect(clippy::cast_precision_loss, reason = "a mean for display")]
    let per_text_ms = (texts > 0).then(|| secs * 1000.0 / texts as f64);
    #[expect(clippy::cast_precision_loss, reason = "an estimate for display")]
    let saved = per_text_ms.unwrap_or(0.0) * lookups.hits as f64;
    InProcessReport {
        mean_hit_latency_ms: metrics.mean_request_ms(model, Outcome::Hit),
        mean_miss_latency_ms: metrics.mean_request_ms(model, Outcome::Miss),
        mean_partial_latency_ms: metrics.mean_request_ms(model, Outcome::Partial),
        inference: InferenceReport {
            invocations: inference.invocations,
            texts: inference.texts,
            calls,
            mean_ms_per_text: per_text_ms,
        },
        inference_time_saved_ms: saved,
    }
}

/// `POST /v1/cache/invalidate`.
pub async fn invalidate(
    State(state): State<AppState>,
    _admin: Admin,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Invalidated>, ApiError> {
    let obj = body::object(body, state.limits())?;
    let cache = state.cache().ok_or(ApiError::CacheDisabled)?;
    let scope: api::Scope = serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| {
        ApiError::invalid(
            "scope",
            format!(
                "{e}; expected {{\"scope\":\"all\"}}, {{\"scope\":\"namespace\",\"namespace\":…}}, \
                 {{\"scope\":\"model\",\"model\":…}} or {{\"scope\":\"version\",\"model\":…,\"version\":…}}"
            ),
        )
    })?;
    // Clients may name a model by an alias; keys use its name. A configured model's
    // name always means that model.
    let name_of = |model: String| {
        state
            .models()
            .get(&model)
            .map_or(model, |m| m.name().to_owned())
    };
    let scope = match scope {
        api::Scope::All => Scope::All,
        api::Scope::Namespace { namespace } => Scope::Namespace { namespace },
        api::Scope::Model { model } => Scope::Model {
            model: name_of(model),
        },
        api::Scope::Version { model, version } => Scope::Version {
            model: name_of(model),
            version,
        },
    };
    cache
        .invalidate(scope.clone())
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(?scope, "cache invalidated");
    let (label, what) = match &scope {
        Scope::All => ("all", "all".to_owned()),
        Scope::Namespace { namespace } => ("namespace", format!("namespace {namespace}")),
        Scope::Model { model } => ("model", format!("model {model}")),
        Scope::Version { model, version } => {
            ("version", format!("model {model} version {version}"))
        }
    };
    state.metrics().traffic().invalidated(label);
    state.dashboard().mark(format!("invalidated {what}"));
    let invalidated = match scope {
        Scope::All => api::Scope::All,
        Scope::Namespace { namespace } => api::Scope::Namespace { namespace },
        Scope::Model { model } => api::Scope::Model { model },
        Scope::Version { model, version } => api::Scope::Version { model, version },
    };
    Ok(Json(Invalidated { invalidated }))
}

/// `DELETE /v1/cache/entries/{key}`.
pub async fn delete_entry(
    State(state): State<AppState>,
    _admin: Admin,
    key: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<RemovedEntry>), ApiError> {
    let Path(key) = key.map_err(|_| ApiError::InvalidKey(String::new()))?;
    let digest: Digest = key.parse().map_err(|_| ApiError::InvalidKey(key.clone()))?;
    let cache = state.cache().ok_or(ApiError::CacheDisabled)?;
    // The model named only picks the handle the key carries; removal is by digest.
    let removal = cache
        .remove(&cache.key_from_digest(digest, BUILTIN_MODEL))
        .await;
    if !removal.confirmed {
        // The shared tier did not answer: the entry is gone from this node and its
        // removal is replayed there before the tier is used again; until then another
        // node may still read it from Redis. Not a 200, so a client can tell.
        return Ok((
            StatusCode::ACCEPTED,
            Json(RemovedEntry {
                removed: removal.found,
                key: digest.to_hex(),
                pending: true,
            }),
        ));
    }
    if !removal.found {
        return Err(ApiError::EntryNotFound(digest.to_hex()));
    }
    Ok((
        StatusCode::OK,
        Json(RemovedEntry {
            removed: true,
            key: digest.to_hex(),
            pending: false,
        }),
    ))
}

/// `POST /v1/cache/warm`.
pub async fn warm(
    State(state): State<AppState>,
    Admin(caller): Admin,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WarmResponse>, ApiError> {
    let directives = cache_control::parse(&headers)?;
    let mut obj = body::object(body, state.limits())?;
    body::only_fields(&obj, &["inputs", "namespace", "model"], |_| {
        "supported fields are inputs, namespace, model".to_owned()
    })?;
    let texts = body::texts(&mut obj, "inputs", state.limits())?;
    let name = body::opt_str(&mut obj, "model")?;
    let model = state
        .models()
        .resolve(name.as_deref().unwrap_or(BUILTIN_MODEL), WARM_KINDS)?;
    let namespace = match body::opt_str(&mut obj, "namespace")? {
        Some(ns) if ns.is_empty() => {
            return Err(ApiError::EmptyString {
                param: "namespace".to_owned(),
            });
        }
        Some(ns) => ns,
        None => caller.tenant.to_string(),
    };
    if state.cache().is_none() {
        return Err(ApiError::CacheDisabled);
    }
    let n = texts.len();
    let rows = state
        .rows(RowRequest {
            model,
            tenant: Arc::from(namespace.as_str()),
            inputs: Arc::new(Inputs::texts(texts)),
            control: directives.into(),
        })
        .await?;
    Ok(Json(WarmResponse {
        namespace,
        inputs: n,
        hits: rows.hits(),
        misses: rows.misses(),
        coalesced: rows.coalesced(),
    }))
}

/// `GET /metrics`: OpenMetrics, or the classic Prometheus text format (0.0.4) for a
/// client whose `Accept` asks for `text/plain` and not OpenMetrics.
pub async fn metrics(
    State(state): State<AppState>,
    _admin: Admin,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let text = state.metrics().encode().map_err(ApiError::internal)?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (content_type, text) =
        if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
            (
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::classic_text(&text),
            )
        } else {
            (
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        };
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        text,
    )
        .into_response())
}
