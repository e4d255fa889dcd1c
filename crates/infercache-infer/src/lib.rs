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

#[derive(Debug)]
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
            }),
        }
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
