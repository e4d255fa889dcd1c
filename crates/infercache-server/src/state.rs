//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use infercache_engine::Cache;
use tokio::sync::Semaphore;

use crate::auth::ApiKeys;
use crate::config::Limits;
use crate::embed::{Embed, ModelInfo};
use crate::error::ApiError;
use crate::metrics::{Metrics, Rejection};
use crate::upstream::Models;

/// The state behind [`crate::app`]. Cheap to clone; clones share everything.
/// Inputs in flight, in units of `max_items`: eight full requests (16,384 inputs, about
/// 6.3 M floats, with the defaults).
pub const IN_FLIGHT_REQUESTS_OF_MAX_ITEMS: usize = 8;

#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cache: Option<Cache>,
    embedder: Arc<dyn Embed>,
    models: Models,
    keys: ApiKeys,
    limits: Limits,
    metrics: Metrics,
    /// Requests in flight on `/v1/*`; a request that finds none free gets 429 at once.
    permits: Arc<Semaphore>,
    /// Inputs in flight on the embedding routes, which bounds the memory their vectors and
    /// responses take (a 10 KB request can ask for a 10 MB response).
    items: Arc<Semaphore>,
    ready: AtomicBool,
}

impl AppState {
    /// State serving `embedder` alone through `cache` (`None`: the cache is bypassed).
    pub fn new(
        cache: Option<Cache>,
        embedder: Arc<dyn Embed>,
        keys: ApiKeys,
        limits: Limits,
    ) -> Self {
        Self::with_models(cache, embedder, Models::builtin_only(), keys, limits)
    }

    /// State serving `models` (and `embedder`, if `models` lists it) through `cache`.
    pub fn with_models(
        cache: Option<Cache>,
        embedder: Arc<dyn Embed>,
        models: Models,
        keys: ApiKeys,
        limits: Limits,
    ) -> Self {
        let metrics = Metrics::new(cache.clone(), Arc::clone(&embedder), models.clone());
        Self {
            inner: Arc::new(Shared {
                cache,
                embedder,
                models,
                keys,
                permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
                items: Arc::new(Semaphore::new(
                    limits
                        .max_items
                        .saturating_mul(IN_FLIGHT_REQUESTS_OF_MAX_ITEMS),
                )),
                limits,
                metrics,
                ready: AtomicBool::new(true),
            }),
        }
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

    /// The cache; `None` when disabled.
    pub fn cache(&self) -> Option<&Cache> {
        self.inner.cache.as_ref()
    }

    /// The model.
    pub fn embedder(&self) -> &dyn Embed {
        &*self.inner.embedder
    }

    /// The model's identity.
    pub fn model(&self) -> &ModelInfo {
        self.inner.embedder.info()
    }

    /// The models served.
    pub fn models(&self) -> &Models {
        &self.inner.models
    }

    /// The API keys.
    pub fn keys(&self) -> &ApiKeys {
        &self.inner.keys
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
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
