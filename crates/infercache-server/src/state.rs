//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use infercache_engine::Cache;
use infercache_infer::{Infer, Models, RowRequest, Rows};
use tokio::sync::Semaphore;

use crate::auth::ApiKeys;
use crate::config::Limits;
use crate::dashboard::Dashboard;
use crate::error::ApiError;
use crate::metrics::{Metrics, Rejection, RequestOutcome};
use crate::routes::rendered::{self, RenderedVectors};
use crate::routes::replay::Replays;
use crate::weights::WeightServer;

/// Inputs in flight, in units of `max_items`: eight full requests (16,384 inputs, about
/// 6.3 M floats, with the defaults).
pub const IN_FLIGHT_REQUESTS_OF_MAX_ITEMS: usize = 8;

/// The state behind [`crate::app`]. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    infer: Infer,
    keys: ApiKeys,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Requests in flight on `/v1/*`; a request that finds none free gets 429 at once.
    permits: Arc<Semaphore>,
    /// Inputs in flight on the row routes, which bounds the memory their values and
    /// responses take (a 10 KB request can ask for a 10 MB response).
    items: Arc<Semaphore>,
    /// KiB of request bodies being read, parsed and served at once (`body_budget`).
    body_budget: Arc<Semaphore>,
    ready: AtomicBool,
    dashboard: Dashboard,
    /// The dataset cache served on `/v1/datasets`, if any.
    datasets: Option<Datasets>,
    /// The weight routes' server (`weights_dir`).
    weights: Option<WeightServer>,
    /// Vectors kept rendered for hot entries, when the memory tier is large enough
    /// to give up their budget ([`rendered::budget_for`]).
    rendered: Option<RenderedVectors>,
    /// Responses kept for hot requests, on the same condition, charged the same way
    /// ([`replay::budget_for`](crate::routes::replay::budget_for)).
    replays: Option<Replays>,
}

/// The dataset cache a server serves, and the streams of batches it may run at once.
#[derive(Debug, Clone)]
pub struct Datasets {
    /// The cache.
    pub cache: infercache_datasets::DatasetCache,
    /// One permit per stream of batches being sent; a stream that finds none gets 429.
    pub streams: Arc<Semaphore>,
}

/// Streams of batches a server sends at once: each holds a blocking thread and a
/// prefetch thread while its client reads.
pub const MAX_DATASET_STREAMS: usize = 64;

impl AppState {
    /// State serving `models` through `cache` (`None`: the cache is bypassed).
    pub fn new(cache: Option<Cache>, models: Models, keys: ApiKeys, limits: Limits) -> Self {
        Self::with_weights(cache, models, keys, limits, None)
    }

    /// [`AppState::new`], also serving `weights`' routes at `/v1/weights/...` behind the
    /// same keys, with their metrics in `/metrics`.
    pub fn with_weights(
        cache: Option<Cache>,
        models: Models,
        keys: ApiKeys,
        limits: Limits,
        weights: Option<WeightServer>,
    ) -> Self {
        let mut metrics = Metrics::new(cache.clone(), models.clone());
        if let Some(w) = &weights {
            crate::weights::register_metrics(w, &mut metrics);
        }
        let metrics = Arc::new(metrics);
        // The server's configuration has taken the table's budget out of a tier this
        // large (`rendered::budget_for`).
        let rendered = cache
            .as_ref()
            .and_then(Cache::memory)
            .filter(|m| m.config().capacity >= rendered::MIN_MEMORY)
            .map(|_| RenderedVectors::new());
        let replays = rendered.as_ref().map(|_| Replays::new());
        let infer = Infer::new(
            cache,
            models,
            limits.request_timeout,
            Arc::clone(&metrics) as _,
        );
        Self {
            inner: Arc::new(Shared {
                infer,
                keys,
                permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
                items: Arc::new(Semaphore::new(
                    limits
                        .max_items
                        .saturating_mul(IN_FLIGHT_REQUESTS_OF_MAX_ITEMS),
                )),
                body_budget: Arc::new(Semaphore::new(limits.body_budget_bytes.div_ceil(1024))),
                limits,
                metrics,
                ready: AtomicBool::new(true),
                dashboard: Dashboard::default(),
                datasets: None,
                weights,
                rendered,
                replays,
            }),
        }
    }

    /// This state serving `cache` on `/v1/datasets`.
    ///
    /// # Panics
    /// When called on a state already cloned (a bug: set it up first).
    #[must_use]
    pub fn with_datasets(mut self, cache: infercache_datasets::DatasetCache) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_datasets is called before the state is shared: a bug if not")
            .datasets = Some(Datasets {
            cache,
            streams: Arc::new(Semaphore::new(MAX_DATASET_STREAMS)),
        });
        self
    }

    /// The dataset cache served, if any.
    pub fn datasets(&self) -> Option<&Datasets> {
        self.inner.datasets.as_ref()
    }

    /// Reserves room for `n` inputs until the permit drops.
    ///
    /// # Errors
    /// [`ApiError::Overloaded`] (a 429, counted) when as many inputs as
    /// [`IN_FLIGHT_REQUESTS_OF_MAX_ITEMS`] full requests hold are already in flight.
    pub fn reserve_items(&self, n: usize) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        u32::try_from(n)
            .ok()
            .and_then(|n| Arc::clone(&self.inner.items).try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                self.inner.metrics.rejected(Rejection::Overloaded);
                ApiError::Overloaded
            })
    }

    /// The rows of `request` through the per-row path, its failure mapped to a response
    /// (an overloaded model counted as a rejection), its stale rows counted.
    ///
    /// # Errors
    /// As [`Infer::rows`], mapped by [`ApiError`].
    pub async fn rows(&self, request: RowRequest) -> Result<Rows, ApiError> {
        let traffic = self.inner.metrics.traffic();
        let model = Arc::clone(&request.model);
        let _in_flight = traffic.in_flight(&model, request.inputs.len());
        match self.inner.infer.rows(request).await {
            Ok(rows) => {
                traffic.request(&model, RequestOutcome::of(&rows));
                self.inner.metrics.rows(&model, &rows);
                Ok(rows)
            }
            Err(e) => {
                traffic.failed(&model, &e);
                let e = ApiError::from(e);
                if matches!(e, ApiError::Overloaded) {
                    self.inner.metrics.rejected(Rejection::Overloaded);
                }
                Err(e)
            }
        }
    }

    /// The dashboard's samples and marks.
    /// Counts `rows`, served for `model` without [`AppState::rows`] (a replayed response,
    /// `routes/replay.rs`), as [`AppState::rows`] counts a request it served; it is in
    /// flight for no time the dashboard's gauge could see, so that is left alone.
    pub(crate) fn served_from_memory(&self, model: &Arc<infercache_infer::Model>, rows: &Rows) {
        let traffic = self.inner.metrics.traffic();
        traffic.request(model, RequestOutcome::of(rows));
        self.inner.metrics.rows(model, rows);
    }

    /// The table of responses kept for hot requests, when the memory tier is large
    /// enough to give up its budget.
    pub(crate) fn replays(&self) -> Option<&Replays> {
        self.inner.replays.as_ref()
    }

    pub fn dashboard(&self) -> &Dashboard {
        &self.inner.dashboard
    }

    /// The registry and the per-row path.
    pub fn infer(&self) -> &Infer {
        &self.inner.infer
    }

    /// The cache; `None` when disabled.
    pub fn cache(&self) -> Option<&Cache> {
        self.inner.infer.cache()
    }

    /// The models served.
    pub fn models(&self) -> &Models {
        self.inner.infer.models()
    }

    /// The weight routes' server, when `weights_dir` is set.
    pub fn weights(&self) -> Option<&WeightServer> {
        self.inner.weights.as_ref()
    }

    /// The API keys.
    pub fn keys(&self) -> &ApiKeys {
        &self.inner.keys
    }

    /// The body budget, in KiB ([`Limits::body_budget_bytes`]).
    pub fn body_budget(&self) -> &Arc<Semaphore> {
        &self.inner.body_budget
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The vectors kept rendered for hot entries, if this server keeps any.
    pub(crate) fn rendered(&self) -> Option<&RenderedVectors> {
        self.inner.rendered.as_ref()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn permits(&self) -> &Arc<Semaphore> {
        &self.inner.permits
    }

    /// Whether `/readyz` answers 200; false once shutdown has begun.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Marks the server (not) ready.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }
}
