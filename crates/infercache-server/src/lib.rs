//! The infercache HTTP server: every model's protocol in front of the tiered cache.
//!
//! ```text
//!  request ─► App (draining 503, concurrency and body budget 429, timeout 504)
//!          ─► auth (bearer key → tenant)
//!          ─► route: resolve the model in the registry (404/400), parse the body into
//!             Inputs (400/413 with the field named)
//!          ─► infercache_infer::Infer::rows: keys, lookup, single flight, misses computed
//!                 by the model's Backend (the built-in embedder's pool, an upstream)
//!          ─► response: the protocol's shape from the stored rows, X-Cache headers, metrics
//! ```
//!
//! # Routes
//!
//! | route | what | statuses |
//! |---|---|---|
//! | `POST /v1/embeddings` | OpenAI-compatible ([`routes::openai`]) | 200, 400, 401, 404, 413, 429, 504 |
//! | `POST /v1/embed` | Smally-compatible ([`routes::smally`]) | 200, 400, 401, 404, 413, 429, 504 |
//! | `GET /v1/cache/stats` | per-tier and per-model stats ([`routes::admin`]) | 200, 401, 403 |
//! | `POST /v1/cache/invalidate` | by scope | 200, 400, 401, 403, 409 |
//! | `DELETE /v1/cache/entries/{key}` | one entry | 200, 400, 401, 403, 404, 409 |
//! | `POST /v1/cache/warm` | precompute inputs | 200, 400, 401, 403, 404, 409, 429 |
//! | `GET /metrics` | Prometheus ([`metrics`]) | 200, 401, 403 |
//! | `GET /dashboard` | the live dashboard page and its assets ([`dashboard`]) | 200, 404 |
//! | `GET /dashboard/data` | the dashboard's samples (the last hour) and marks | 200, 400, 401, 403 |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness ([`routes::health`]) | 200, 503 |
//! | `GET /v1/models` | the configured models ([`routes::models`]) | 200, 401 |
//! | `POST /v1/models/{name}/predict` | plain JSON upstream ([`routes::predict`]) | 200, 400, 401, 404, 413, 429, 502, 503, 504 |
//! | `POST /v1/models/{name}/run` | Ersilia upstream ([`routes::ersilia`]) | 200, 400, 401, 404, 413, 429, 502, 503, 504 |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | KServe v2 / Triton inference, JSON or binary tensors, cached per row ([`routes::kserve`]) | 200, 400, 401, 404, 413, 429, 500, 502, 503, 504 |
//! | `GET /v2` | KServe v2 server metadata: name, version, extensions ([`routes::models`]) | 200, 401 |
//! | `GET /v2/models/{name}[/versions/{v}][/ready]` | KServe v2 metadata and readiness ([`routes::models`]) | 200, 401, 404, 502, 503, 504 |
//! | `GET /v2/models/{name}[/versions/{v}]/config` | a Triton upstream's model configuration ([`routes::models`]) | 200, 400, 401, 404, 502, 503, 504 |
//! | `GET /v2/health/live`, `GET /v2/health/ready` | KServe v2 health | 200, 503 |
//! | `GET /v1/datasets` | the cached datasets (`--datasets-dir`; [`routes::datasets`]) | 200, 401, 404 |
//! | `GET /v1/datasets/{name}` | a dataset in full: fingerprint chain, schema, shards | 200, 400, 401, 404 |
//! | `GET /v1/datasets/{name}/batches` | its rows streamed as JSON lines or an Arrow IPC stream, shuffled and resumable | 200, 400, 401, 404, 429 |
//! | `GET /v1/weights`, `GET /v1/weights/{model}/manifest`, `GET\|HEAD /v1/weights/{model}/chunks/{name}`, `GET\|HEAD /v1/weights/{model}/files/{name}` | with `weights_dir`: chunked models ([`weights`]) | 200, 206, 304, 400, 401, 404, 412, 416, 429, 500 |
//! | `GET /v1/weights/stats`, `POST /v1/weights/invalidate` | with `weights_dir`: the weight cache's counters, invalidation (admin) | 200, 400, 401, 403, 404, 500 |
//!
//! Every model, the built-in embedder included, is an entry of one registry
//! ([`infercache_infer::Models`]) and every route takes the same per-row path
//! ([`infercache_infer::rows`]): a request is split into rows, each row keyed and looked
//! up, and only the missing rows are computed, in one backend call (or chunks of the
//! model's `max_batch`).
//!
//! Every `/v1/*` route may also answer 429 (too many requests in flight, or the model's
//! queue is full; with `Retry-After`), 503 (draining for shutdown) and 504 (timeout).
//! Admin routes and `/metrics` need an admin key when keys are configured.
//!
//! Every error comes from one mapping ([`error::ApiError`]) and has OpenAI's body shape,
//! except on `/v2/*`, where it has KServe v2's, `{"error": "<message>"}`.
//! Per-request `Cache-Control` ([`cache_control`]): `no-cache`, `no-store`, `max-age=N`,
//! `only-if-cached`.
//!
//! # Parts
//!
//! - [`config`]: flags, environment and TOML resolved into a validated [`ServerConfig`].
//! - [`App`] (`gate.rs`): the router behind admission, the body limit and the KServe v2
//!   error body, as one service.
//! - [`auth`]: API keys from a TOML file, each mapped to a tenant, compared in constant time.
//! - [`routes`]: the handlers, one file per protocol: inbound parsing into
//!   [`Inputs`](infercache_backend::Inputs) and rendering of stored rows; the one place
//!   that sets cache headers and builds the per-request summary.
//! - [`error`]: the one mapping from every domain error (per-row path, backend, upstream,
//!   KServe codec, registry) to a status and an error body.
//! - [`state`]: what handlers share. [`metrics`]: Prometheus.
//! - [`dashboard`]: the live dashboard page and the ring of samples it draws.
//! - [`weights`]: the weight routes mounted behind the API's keys (`weights_dir`), and
//!   the built-in model built from a weight server (`weights_from`).
//! - [`model`], `server`: loading the built-in model, building the registry and the
//!   cache from the configuration, serving and draining.
//!
//! # Features
//!
//! - `builtin` (default): the built-in embedding model, run in this process
//!   (`infercache-model`). Without it the server serves upstream models only and refuses
//!   a configuration that serves the built-in one.
//! - `redis` (default): the shared Redis tier (`infercache-redis`). Without it a
//!   configuration that sets `redis` is refused.
//! - `weights` (default): `weights_dir` and `weights_from` (`infercache-weights`).
//!   Without it a configuration that sets either is refused.
//!
//! # Concurrency
//!
//! Handlers never block: inference runs on the model pool's threads, disk I/O on the
//! engine's blocking tasks, and large responses are serialized on the blocking pool.
//! Concurrent requests for the same uncached text compute it once (the engine's single
//! flight), and the pool batches the misses of concurrent requests into one model call.
//! Everything is bounded: requests in flight, body size, inputs per request, input length,
//! the model's queue (full: 429), and each request's time.

pub mod auth;
pub mod cache_control;
pub mod config;
pub mod dashboard;
pub mod embedders;
pub mod error;
mod gate;
pub mod metrics;
pub mod model;
mod remote;
pub mod routes;
mod server;
pub mod state;
pub mod weights;

use axum::Router;
use axum::routing::{delete, get, post};

/// The KServe v2 codec the `/v2` routes use.
pub use infercache_kserve as kserve;

pub use auth::{ApiKeys, Caller};
pub use config::{ConfigError, Limits, ServeArgs, ServerConfig};
pub use embedders::RegistryEmbedders;
pub use error::{ApiError, ServerError};
pub use gate::App;
pub use model::{Opened, open, run};
pub use server::{registry, run_with, serve};
pub use state::{AppState, Datasets};

/// The server: every route behind admission, the body limit and the KServe v2 error body
/// ([`App`]). Tests drive it without a socket (`tower::ServiceExt::oneshot`).
pub fn app(state: AppState) -> App {
    let router = Router::new()
        .route("/v1/embeddings", post(routes::openai::embeddings))
        .route("/v1/embed", post(routes::smally::embed))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{name}/predict", post(routes::predict::predict))
        .route("/v1/models/{name}/run", post(routes::ersilia::run))
        .route("/v2", get(routes::models::server_metadata))
        .route("/v2/models/{name}", get(routes::models::metadata))
        .route("/v2/models/{name}/config", get(routes::models::config))
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(routes::models::version_config),
        )
        .route("/v2/models/{name}/infer", post(routes::kserve::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(routes::kserve::infer_version),
        )
        .route(
            "/v2/models/{name}/versions/{version}",
            get(routes::models::version_metadata),
        )
        .route("/v2/models/{name}/ready", get(routes::models::ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(routes::models::version_ready),
        )
        .route("/v1/cache/stats", get(routes::admin::stats))
        .route("/v1/cache/invalidate", post(routes::admin::invalidate))
        .route(
            "/v1/cache/entries/{key}",
            delete(routes::admin::delete_entry),
        )
        .route("/v1/cache/warm", post(routes::admin::warm))
        .route("/v1/datasets", get(routes::datasets::list))
        .route("/v1/datasets/{name}", get(routes::datasets::show))
        .route(
            "/v1/datasets/{name}/batches",
            get(routes::datasets::batches),
        )
        .route("/metrics", get(routes::admin::metrics))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/data", get(dashboard::data))
        .route("/dashboard/{asset}", get(dashboard::asset))
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/v2/health/live", get(routes::models::health))
        .route("/v2/health/ready", get(routes::models::health))
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(state.clone());
    // The weight routes come with their own state; the API's keys go in front, and the
    // gate (admission, body limit) in front of everything.
    let router = match state.weights() {
        Some(w) => router.merge(w.router().route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            weights::auth,
        ))),
        None => router,
    };
    App::new(router, state)
}

#[cfg(test)]
mod tests;
