//! Models served through an upstream model server: KServe v2 / Triton, OpenAI-compatible,
//! TEI, Ersilia and plain JSON, each cached per row.
//!
//! ```text
//!  route (one per protocol): parse the body into rows, each in canonical form
//!     └► rows::fetch_rows(state, RowRequest { model, tenant, rows, params, control }, fetch)
//!          keys: tenant, model, version, digest, canonical row, output-affecting params
//!          └► Cache::get_many_or_compute ─► hits │ missing rows (deduplicated, single flight)
//!                 └► fetch(row indices), in chunks of max_batch, 4 at a time
//!                        └► the protocol builds one upstream request per chunk, sends it
//!                           with Upstream::send (timeout, retries) and splits the answer
//!                           into one value per row
//!          upstream failed? ─► stale-if-error: serve expired rows, X-Cache: STALE
//!     ─► the route reassembles the rows in order, in the client's protocol
//! ```
//!
//! - [`config`]: the `[[models]]` table and its validation.
//! - [`client`]: upstream calls: timeouts, retries and [`UpstreamError`].
//! - [`rows`]: the protocol-independent per-row path, [`rows::fetch_rows`].
//!
//! The protocols themselves live in [`crate::routes`]: `openai` (OpenAI and TEI upstreams
//! behind `POST /v1/embeddings`), `ersilia` (`POST /v1/models/{name}/run`), `predict`
//! (plain JSON, `POST /v1/models/{name}/predict`), `kserve` (KServe v2 / Triton,
//! `POST /v2/models/{name}[/versions/{v}]/infer`) and `models` (`GET /v1/models`, the
//! KServe v2 metadata and health routes).
//!
//! # Adding a protocol
//!
//! A route resolves the model with [`Models::resolve`] (404 for an unknown name, 400 for
//! a model of another protocol), turns the request into rows ([`CanonicalInput`] per
//! row: canonical JSON, text, or a tensor's dtype, shape and bytes) and the
//! output-affecting parameters into bytes with [`RemoteModel::key_params`], then calls
//! [`rows::fetch_rows`] with a `fetch` closure. `fetch(indices)` receives indices into
//! the request's rows (only rows no tier holds and no concurrent request is computing,
//! each once, at most `max_batch` of them), sends one upstream request for exactly those
//! rows, and returns one opaque value per index, in order: the bytes the route will
//! later turn back into that row's output. The route then writes its response from
//! [`rows::Rows::values`] and the headers from [`rows::Rows::headers`].

pub mod client;
pub mod config;
pub mod rows;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use infercache_core::canonical::canonical_json;
use infercache_engine::RequestOptions;
use serde_json::{Map, Value};

pub use client::{CallStats, Retry, Upstream, UpstreamError, UpstreamReply};
pub use config::{Backend, ModelConfig};
pub use infercache_core::CanonicalInput;
pub use rows::{CacheControl, RowRequest, RowSource, Rows, fetch_rows};

use crate::error::{ApiError, ServerError};

/// Idle connections kept per upstream host.
const POOL_IDLE_PER_HOST: usize = 64;

/// A model served through an upstream: its settings, its upstream and its freshness.
#[derive(Debug)]
pub struct RemoteModel {
    upstream: Upstream,
    /// Entries older than this are not served fresh: the model's `ttl`, else the global one.
    fresh_for: Option<Duration>,
}

impl RemoteModel {
    /// The model's settings.
    pub fn config(&self) -> &ModelConfig {
        self.upstream.config()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.upstream.name()
    }

    /// Its upstream.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// How long an entry is served as fresh; `None`: until evicted.
    pub fn fresh_for(&self) -> Option<Duration> {
        self.fresh_for
    }

    /// The engine options for a request whose own are `client`: entries are accepted up
    /// to the stricter of the client's `max-age` and the model's freshness, and stored
    /// for freshness plus `stale_if_error`, so that an expired entry can still be served
    /// while the upstream fails.
    pub fn options(&self, client: RequestOptions) -> RequestOptions {
        let max_age = match (client.max_age, self.fresh_for) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ttl = self
            .fresh_for
            .map(|t| t.saturating_add(self.config().stale_if_error.unwrap_or_default()));
        RequestOptions {
            max_age,
            ttl,
            ..client
        }
    }

    /// The key bytes of a request's output-affecting parameters: all of `params`, or
    /// only those the model's `params` setting names (the others are declared not to
    /// change the output), beside `protocol`, the protocol's own fields that change the
    /// output (OpenAI's `dimensions`), as canonical JSON. Empty when there are none, so
    /// that leaving every parameter out and sending only ignored ones share an entry.
    ///
    /// # Errors
    /// [`ApiError::Internal`] only for a non-finite number, which parsed JSON never holds.
    pub fn key_params(
        &self,
        params: Option<&Map<String, Value>>,
        protocol: Map<String, Value>,
    ) -> Result<Vec<u8>, ApiError> {
        let picked: Map<String, Value> = match (params, &self.config().params) {
            (None, _) => Map::new(),
            (Some(p), None) => p.clone(),
            (Some(p), Some(names)) => names
                .iter()
                .filter_map(|name| p.get(name).map(|v| (name.clone(), v.clone())))
                .collect(),
        };
        if picked.is_empty() && protocol.is_empty() {
            return Ok(Vec::new());
        }
        let mut key = Map::new();
        if !picked.is_empty() {
            key.insert("params".into(), Value::Object(picked));
        }
        if !protocol.is_empty() {
            key.insert("protocol".into(), Value::Object(protocol));
        }
        canonical_json(&Value::Object(key)).map_err(ApiError::internal)
    }
}

/// The models a server serves: the built-in embedder (unless a `[[models]]` list leaves
/// it out) and the upstream models, by name. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Models {
    inner: Arc<Registry>,
}

#[derive(Debug)]
struct Registry {
    builtin: bool,
    remote: BTreeMap<String, Arc<RemoteModel>>,
    /// Every configured model, in file order (for listing).
    listed: Vec<ModelConfig>,
}

impl Models {
    /// The built-in embedder alone (no `[[models]]`).
    pub fn builtin_only() -> Self {
        Self {
            inner: Arc::new(Registry {
                builtin: true,
                remote: BTreeMap::new(),
                listed: Vec::new(),
            }),
        }
    }

    /// The models of a validated `[[models]]` list; an empty list is
    /// [`Models::builtin_only`]. `default_ttl` is the global `ttl`, for models that set
    /// none.
    ///
    /// # Errors
    /// [`ServerError::Io`] if the HTTP client cannot be built.
    pub fn new(models: &[ModelConfig], default_ttl: Option<Duration>) -> Result<Self, ServerError> {
        if models.is_empty() {
            return Ok(Self::builtin_only());
        }
        // No redirects (a POST would come back as a GET elsewhere) and no proxy from the
        // environment: an upstream is exactly the URL configured.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| ServerError::Io(std::io::Error::other(e)))?;
        let remote = models
            .iter()
            .filter(|m| m.backend != Backend::Builtin)
            .map(|m| {
                let model = RemoteModel {
                    fresh_for: m.ttl.or(default_ttl),
                    upstream: Upstream::new(m.clone(), client.clone()),
                };
                (m.name.clone(), Arc::new(model))
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Registry {
                builtin: models.iter().any(|m| m.backend == Backend::Builtin),
                remote,
                listed: models.to_vec(),
            }),
        })
    }

    /// Whether the built-in embedder is served.
    pub fn serves_builtin(&self) -> bool {
        self.inner.builtin
    }

    /// The upstream model `name`, if there is one.
    pub fn remote(&self, name: &str) -> Option<&Arc<RemoteModel>> {
        self.inner.remote.get(name)
    }

    /// Every upstream model, by name.
    pub fn remotes(&self) -> impl Iterator<Item = &Arc<RemoteModel>> {
        self.inner.remote.values()
    }

    /// Every configured model, in file order; empty without `[[models]]`.
    pub fn listed(&self) -> &[ModelConfig] {
        &self.inner.listed
    }

    /// The upstream model `name`, which must speak one of `backends`.
    ///
    /// # Errors
    /// [`ApiError::UnknownModel`] (404) naming what is served, with `builtin_id` the
    /// built-in model's id; [`ApiError::WrongRoute`] (400) for a model of another
    /// protocol, naming the route that serves it.
    pub fn resolve(
        &self,
        name: &str,
        backends: &[Backend],
        builtin_id: &str,
    ) -> Result<Arc<RemoteModel>, ApiError> {
        match self.remote(name) {
            Some(m) if backends.contains(&m.config().backend) => Ok(Arc::clone(m)),
            Some(m) => Err(ApiError::WrongRoute {
                model: name.to_owned(),
                backend: m.config().backend,
            }),
            None => Err(self.unknown(name, builtin_id)),
        }
    }

    /// The 404 for `name`, listing what is served.
    pub fn unknown(&self, name: &str, builtin_id: &str) -> ApiError {
        let mut served: Vec<&str> = Vec::new();
        if self.serves_builtin() {
            served.push(builtin_id);
        }
        served.extend(self.inner.remote.keys().map(String::as_str));
        ApiError::UnknownModel {
            requested: name.to_owned(),
            served: served.join("`, `"),
        }
    }
}

#[cfg(test)]
mod tests;
