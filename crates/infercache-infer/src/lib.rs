//! The model registry and the one per-row path through the cache that every model takes.
//!
//! ```text
//!  caller (an HTTP route, warming, a bulk job): a model name, a tenant, Inputs
//!     └► Models::resolve(name, kinds)          one registry: the built-in embedder and
//!                                              every upstream model, by name
//!     └► Infer::rows(RowRequest { model, tenant, inputs, control })
//!          keys: tenant, model, version, digest, canonical row, output-affecting params
//!          └► Cache::get_many_or_refresh ─► hits │ stale (refreshed in the background) │
//!                 missing rows (deduplicated, single flight)
//!                 └► Backend::compute(inputs, row indices), in chunks of max_batch, 4 at a time
//!          model failed? ─► stale-if-error (the engine): rows within the window, marked Stale
//!     ◄─ Rows: one stored value per row, in order, with how each was served
//! ```
//!
//! - [`Models`], [`Model`], [`CachePolicy`]: the registry and how each model's rows are
//!   cached.
//! - [`Infer`]: the cache and the registry together; [`Infer::rows`] is the per-row path
//!   ([`rows`] explains it).
//! - [`InferError`]: why rows could not be served.
//!
//! There is no HTTP here: the server turns requests into [`RowRequest`]s and [`Rows`]
//! into responses, and chooses every status; anything else that computes rows (warming,
//! bulk jobs, a dashboard) calls the same path.

mod error;
mod models;
pub mod rows;

use std::sync::Arc;
use std::time::Duration;

use infercache_engine::Cache;

pub use error::InferError;
pub use infercache_engine::Stale;
pub use models::{CachePolicy, Model, Models, NoBuiltinModel, ResolveError, serves_builtin};
pub use rows::{
    CacheControl, CanonicalRows, NoObserver, Observer, Outcome, RowRequest, RowSource, Rows,
    answer_budget,
};

/// The cache (`None` when disabled) and the models served through it. Cheap to clone;
/// clones share everything.
#[derive(Debug, Clone)]
pub struct Infer {
    inner: Arc<Shared>,
}

#[derive(Debug, Clone)]
struct Shared {
    cache: Option<Cache>,
    models: Models,
    /// How long a request waits for an upstream model's rows ([`answer_budget`]).
    budget: Duration,
    /// How long such a request waits for its answer at most: the budget plus half its
    /// margin, so that stale rows standing in for a call past the budget, or the
    /// upstream's own timeout error, still come before the request's timeout.
    answer_limit: Duration,
    observer: Arc<dyn Observer>,
    /// Backend calls in flight at once, across every request ([`Infer::with_call_limit`]);
    /// `None`: no bound beyond each request's own.
    calls: Option<CallLimit>,
}

impl Infer {
    /// `models` served through `cache`; a request for an upstream model waits at most
    /// [`answer_budget`]`(request_timeout)` for its rows. `observer` hears of every
    /// backend call.
    pub fn new(
        cache: Option<Cache>,
        models: Models,
        request_timeout: Duration,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            inner: Arc::new(Shared {
                cache,
                models,
                budget: answer_budget(request_timeout),
                answer_limit: answer_budget(request_timeout)
                    + request_timeout.saturating_sub(answer_budget(request_timeout)) / 2,
                observer,
                calls: None,
            }),
        }
    }

    /// This `Infer` with at most `limit` backend calls in flight at once, across every
    /// request (at least one). The bound holds around each backend call only: a request's
    /// keys, lookups and stores run outside it, so a caller that keeps more requests in
    /// flight than `limit` (a bulk job) keeps `limit` calls busy while earlier requests
    /// store their rows. A request waiting for a slot waits within its answer budget.
    #[must_use]
    pub fn with_call_limit(self, limit: usize) -> Self {
        let mut shared = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| (*shared).clone());
        shared.calls = Some(CallLimit::new(limit));
        Self {
            inner: Arc::new(shared),
        }
    }

    /// The bound [`Infer::with_call_limit`] set, if any.
    pub fn call_limit(&self) -> Option<usize> {
        self.inner.calls.as_ref().map(|c| c.limit)
    }

    /// The cache; `None` when disabled.
    pub fn cache(&self) -> Option<&Cache> {
        self.inner.cache.as_ref()
    }

    /// The models served.
    pub fn models(&self) -> &Models {
        &self.inner.models
    }
}

/// At most `limit` backend calls at once ([`Infer::with_call_limit`]). Cheap to clone;
/// clones share the slots.
#[derive(Debug, Clone)]
struct CallLimit {
    limit: usize,
    slots: Arc<tokio::sync::Semaphore>,
}

impl CallLimit {
    fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            slots: Arc::new(tokio::sync::Semaphore::new(limit)),
        }
    }

    /// A slot for one backend call, held until the permit drops.
    async fn slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.slots
            .acquire()
            .await
            .expect("the call limit's semaphore is never closed")
    }
}
