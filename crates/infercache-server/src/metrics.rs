//! Prometheus metrics (`GET /metrics`, OpenMetrics text) and the latency figures of
//! `GET /v1/cache/stats`.
//!
//! Two sources, few families:
//!
//! - **Read at scrape time** from the engine's striped counters and each backend's stats,
//!   by a collector: `infercache_cache_lookups_total{tier,outcome}`,
//!   `infercache_cache_evictions_total{tier}`, `infercache_cache_expirations_total{tier}`,
//!   `infercache_cache_entries{tier}`, `infercache_cache_bytes{tier}`,
//!   `infercache_model_lookups_total{model,tier,outcome}`, for models run in this process
//!   `infercache_model_invocations_total{model}` and `infercache_model_texts_total{model}`,
//!   for models behind an upstream `infercache_upstream_*_total{model}`,
//!   `infercache_refreshes_total{model}` (stale-while-revalidate refreshes) and
//!   `infercache_not_stored_total{model}` (values the backend refused to keep, an Ersilia
//!   row of nulls), the Redis tier's `infercache_redis_*` (among them
//!   `infercache_redis_error_replies_total{kind}`, `infercache_redis_removals_pending`,
//!   `infercache_redis_removals_replayed_total`, `infercache_redis_removals_received_total`),
//!   and with a Redis tier where this node stands with its epochs:
//!   `infercache_epochs_in_sync` (0/1), `infercache_epochs_unsynced_seconds` (0 while in
//!   sync, `+Inf` before the first sync since start), `infercache_local_reads_enabled`
//!   (0/1) and `infercache_local_reads_skipped_total`. The hot path pays nothing for these.
//! - **Recorded by the server**, through handles resolved once per model at start-up:
//!   `infercache_request_duration_seconds{model,outcome}` (outcome `hit`, `miss` or
//!   `partial`), `infercache_inference_duration_seconds{model}` (one backend call made for
//!   a request's misses, heard as the per-row path's [`Observer`]),
//!   `infercache_stale_served_total{model,kind}` (rows answered stale, `kind`
//!   `while_revalidate` or `if_error`), and `infercache_rejected_requests_total{reason}`.
//! - **For the dashboard** (its own section at the end of this file, [`Traffic`]):
//!   `infercache_requests_total{model,outcome}` on every row route (outcome `hit`,
//!   `partial`, `miss`, `stale`, `error`), `infercache_rows_in_flight{model}`,
//!   `infercache_batch_rows{model}` (rows per model call),
//!   `infercache_upstream_errors_total{model,status}`,
//!   `infercache_invalidations_total{scope}`, and the Redis tier's
//!   `infercache_redis_round_trips_total` and `infercache_redis_round_trip_seconds_total`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use infercache_backend::{BackendError, BackendStats, CallStats, UpstreamError};
use infercache_core::stats::Counter as StripedCounter;
use infercache_engine::Cache;
use infercache_infer::{InferError, Model, Models, Observer, Outcome, Rows, Stale};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod traffic;
use traffic::Buckets;
pub use traffic::{
    INVALIDATION_SCOPES, InFlight, LATENCY_BOUNDS, LATENCY_BUCKETS, RequestOutcome, Traffic,
    classic_text, quantile_ms,
};

mod collector;
use collector::EngineCollector;

/// The three outcomes, in the order of [`outcome_index`].
const OUTCOMES: [Outcome; 3] = [Outcome::Hit, Outcome::Miss, Outcome::Partial];

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Hit => 0,
        Outcome::Miss => 1,
        Outcome::Partial => 2,
    }
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Hit => "hit",
        Outcome::Miss => "miss",
        Outcome::Partial => "partial",
    }
}

/// The two reasons a row is served stale, in the order of the handles.
const STALE_KINDS: [Stale; 2] = [Stale::WhileRevalidate, Stale::IfError];

fn stale_label(why: Stale) -> &'static str {
    match why {
        Stale::WhileRevalidate => "while_revalidate",
        Stale::IfError => "if_error",
    }
}

/// Why a request was refused before any work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Too many requests in flight.
    Concurrency,
    /// The inference queue was full.
    Overloaded,
    /// The request timed out.
    Timeout,
    /// The body budget was full.
    BodyBudget,
}

impl Rejection {
    const ALL: [Rejection; 4] = [
        Self::Concurrency,
        Self::Overloaded,
        Self::Timeout,
        Self::BodyBudget,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Concurrency => "concurrency",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::BodyBudget => "body_budget",
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// A histogram handle with its own total and count: the histogram is what Prometheus
/// scrapes, the totals give `GET /v1/cache/stats` its means (the crate exposes neither).
#[derive(Debug, Clone, Default)]
struct Timed {
    histogram: Option<Histogram>,
    count: Arc<StripedCounter>,
    micros: Arc<StripedCounter>,
    /// The same observations in [`LATENCY_BOUNDS`]' buckets, readable (for the
    /// dashboard's quantiles).
    buckets: Arc<Buckets>,
}

impl Timed {
    fn new(histogram: Histogram) -> Self {
        Self {
            histogram: Some(histogram),
            ..Self::default()
        }
    }

    fn observe(&self, took: Duration) {
        if let Some(h) = &self.histogram {
            h.observe(took.as_secs_f64());
        }
        self.count.incr();
        self.micros
            .add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        self.buckets.observe(took);
    }

    fn totals(&self) -> (f64, u64) {
        #[expect(clippy::cast_precision_loss, reason = "a total for display")]
        let secs = self.micros.get() as f64 / 1e6;
        (secs, self.count.get())
    }

    #[expect(clippy::cast_precision_loss, reason = "a mean for display")]
    fn mean_ms(&self) -> Option<f64> {
        let (secs, n) = self.totals();
        (n > 0).then(|| secs * 1000.0 / n as f64)
    }
}

/// The server's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Per model (by [`Model::index`]), per outcome.
    requests: Vec<[Timed; 3]>,
    /// Per model: its backend calls and the rows they computed.
    compute: Vec<(Timed, StripedCounter)>,
    /// Per model, per [`STALE_KINDS`]: rows answered stale.
    stale: Vec<[Counter; 2]>,
    rejected: [Counter; Rejection::ALL.len()],
    /// Per model: requests answered from a response kept for the same request.
    replayed: Vec<Counter>,
    /// The dashboard's metrics: requests by outcome, rows in flight, upstream errors,
    /// batch sizes, invalidations.
    traffic: Traffic,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Also reports `collector`'s metrics (the weight routes').
    #[cfg(feature = "weights")]
    pub(crate) fn register_collector(
        &mut self,
        collector: Box<dyn prometheus_client::collector::Collector>,
    ) {
        self.registry.register_collector(collector);
    }

    /// Metrics for `models`, reading the cache's and the backends' counters at scrape
    /// time. Every handle is resolved here, once per model.
    pub fn new(cache: Option<Cache>, models: Models) -> Self {
        let mut registry = Registry::with_prefix("infercache");

        let requests = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BOUNDS.iter().copied())
        });
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, by model and how its rows were served",
            requests.clone(),
        );
        let inference = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
        });
        registry.register(
            "inference_duration_seconds",
            "Time of one model call made for a request's cache misses",
            inference.clone(),
        );
        let model_label = |m: &Model| ("model", m.name().to_owned());
        let request_handles = models
            .iter()
            .map(|m| {
                OUTCOMES.map(|o| {
                    let labels = vec![model_label(m), ("outcome", outcome_label(o).to_owned())];
                    Timed::new(requests.get_or_create(&labels).clone())
                })
            })
            .collect();
        let compute = models
            .iter()
            .map(|m| {
                let timed = Timed::new(inference.get_or_create(&vec![model_label(m)]).clone());
                (timed, StripedCounter::default())
            })
            .collect();

        let stale = Family::<Labels, Counter>::default();
        registry.register(
            "stale_served",
            "Rows answered past their freshness, by model and why: within the \
             stale-while-revalidate window (refreshed in the background) or standing in \
             for a failed model (stale-if-error)",
            stale.clone(),
        );
        let stale = models
            .iter()
            .map(|m| {
                STALE_KINDS.map(|k| {
                    let labels = vec![model_label(m), ("kind", stale_label(k).to_owned())];
                    stale.get_or_create(&labels).clone()
                })
            })
            .collect();

        let rejected = Family::<Labels, Counter>::default();
        registry.register(
            "rejected_requests",
            "Requests refused (429 or 504) before or while they ran",
            rejected.clone(),
        );
        let rejected = Rejection::ALL.map(|r| {
            rejected
                .get_or_create(&vec![("reason", r.label().to_owned())])
                .clone()
        });

        let replayed = Family::<Labels, Counter>::default();
        registry.register(
            "replayed_responses",
            "Requests answered again from the response kept for the same request bytes \
             (its rows all fresh in memory, their stored bytes unchanged), by model",
            replayed.clone(),
        );
        let replayed = models
            .iter()
            .map(|m| replayed.get_or_create(&vec![model_label(m)]).clone())
            .collect();

        let traffic = Traffic::new(&mut registry, &models);
        registry.register_collector(Box::new(EngineCollector { cache, models }));
        Self {
            registry,
            requests: request_handles,
            compute,
            stale,
            rejected,
            replayed,
            traffic,
        }
    }

    /// Records a request of `model` answered from a kept response.
    pub(crate) fn replayed(&self, model: &Model) {
        if let Some(c) = self.replayed.get(model.index()) {
            c.inc();
        }
    }

    /// Records the rows of `model` a request was answered with stale, by why.
    pub fn rows(&self, model: &Model, rows: &Rows) {
        if rows.stale() == 0 {
            return;
        }
        if let Some(counters) = self.stale.get(model.index()) {
            for (counter, why) in counters.iter().zip(STALE_KINDS) {
                counter.inc_by(rows.stale_for(why) as u64);
            }
        }
    }

    /// The dashboard's metrics.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// The latency buckets of `model`'s requests with `outcome` so far (cumulative
    /// counts; bounds [`LATENCY_BOUNDS`], then one past the last).
    pub fn latency_buckets(&self, model: &Model, outcome: Outcome) -> [u64; LATENCY_BUCKETS] {
        self.requests
            .get(model.index())
            .map_or([0; LATENCY_BUCKETS], |t| {
                t[outcome_index(outcome)].buckets.snapshot()
            })
    }

    /// Records an answered request for `model`.
    pub fn request(&self, model: &Model, outcome: Outcome, took: Duration) {
        if let Some(timed) = self.requests.get(model.index()) {
            timed[outcome_index(outcome)].observe(took);
        }
    }

    /// Records a refused request.
    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].inc();
    }

    /// Mean latency in milliseconds of `model`'s requests with `outcome`; `None` before
    /// the first.
    pub fn mean_request_ms(&self, model: &Model, outcome: Outcome) -> Option<f64> {
        self.requests
            .get(model.index())
            .and_then(|t| t[outcome_index(outcome)].mean_ms())
    }

    /// Total seconds, calls and rows of the backend calls made for `model`'s requests.
    pub fn compute_totals(&self, model: &Model) -> (f64, u64, u64) {
        self.compute
            .get(model.index())
            .map_or((0.0, 0, 0), |(t, rows)| {
                let (secs, calls) = t.totals();
                (secs, calls, rows.get())
            })
    }

    /// The OpenMetrics text of every metric.
    ///
    /// # Errors
    /// Only if formatting fails (a bug).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Observer for Metrics {
    fn computed(&self, model: &Model, rows: usize, took: Duration) {
        if let Some((timed, counted)) = self.compute.get(model.index()) {
            timed.observe(took);
            counted.add(rows as u64);
        }
        self.traffic.batch(model, rows);
    }
}
