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

        let traffic = Traffic::new(&mut registry, &models);
        registry.register_collector(Box::new(EngineCollector { cache, models }));
        Self {
            registry,
            requests: request_handles,
            compute,
            stale,
            rejected,
            traffic,
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

/// Reads the engine's and the backends' counters at scrape time.
#[derive(Debug)]
struct EngineCollector {
    cache: Option<Cache>,
    models: Models,
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        encode_in_process(&mut enc, &self.models)?;
        encode_upstreams(&mut enc, &self.models)?;
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        let stats = cache.stats();
        let tiers: Vec<(&str, &infercache_core::stats::TierStats)> = [
            ("memory", stats.memory.as_ref()),
            ("disk", stats.disk.as_ref()),
        ]
        .into_iter()
        .filter_map(|(n, t)| t.map(|t| (n, t)))
        .collect();
        let tier = |n: &str| vec![("tier", n.to_owned())];
        let lookups: Vec<(Labels, u64)> = tiers
            .iter()
            .flat_map(|(n, t)| {
                [
                    (
                        [tier(n), vec![("outcome", "hit".to_owned())]].concat(),
                        t.hits,
                    ),
                    (
                        [tier(n), vec![("outcome", "miss".to_owned())]].concat(),
                        t.misses,
                    ),
                ]
            })
            .collect();
        counter(
            &mut enc,
            "cache_lookups",
            "Lookups per tier and outcome",
            &lookups,
        )?;
        let per_tier = |f: fn(&infercache_core::stats::TierStats) -> u64| -> Vec<(Labels, u64)> {
            tiers.iter().map(|(n, t)| (tier(n), f(t))).collect()
        };
        counter(
            &mut enc,
            "cache_evictions",
            "Entries evicted to make room",
            &per_tier(|t| t.evictions),
        )?;
        counter(
            &mut enc,
            "cache_expirations",
            "Entries dropped past their TTL",
            &per_tier(|t| t.expirations),
        )?;
        counter(
            &mut enc,
            "cache_corrupt_records",
            "Records dropped as corrupt",
            &per_tier(|t| t.corrupt),
        )?;
        gauge(
            &mut enc,
            "cache_entries",
            "Live entries",
            &per_tier(|t| t.entries),
        )?;
        gauge(
            &mut enc,
            "cache_bytes",
            "Bytes used",
            &per_tier(|t| t.bytes),
        )?;
        gauge(
            &mut enc,
            "cache_capacity_bytes",
            "Byte capacity",
            &per_tier(|t| t.capacity),
        )?;
        gauge(
            &mut enc,
            "cache_index_bytes",
            "Memory the tier's index of its entries holds (the disk tier; 0 elsewhere)",
            &per_tier(|t| t.index_bytes),
        )?;
        gauge(
            &mut enc,
            "cache_degraded",
            "1 while the tier's storage fails and is skipped (the disk tier)",
            &per_tier(|t| u64::from(t.degraded)),
        )?;
        counter(
            &mut enc,
            "cache_io_errors",
            "Reads and writes that failed with an I/O error (the disk tier)",
            &per_tier(|t| t.io_errors),
        )?;
        let mut by_model = Vec::new();
        for (name, s) in &stats.models {
            let l = |tier: &str, outcome: &str| {
                vec![
                    ("model", name.clone()),
                    ("tier", tier.to_owned()),
                    ("outcome", outcome.to_owned()),
                ]
            };
            by_model.push((l("memory", "hit"), s.memory_hits));
            by_model.push((l("disk", "hit"), s.disk_hits));
            by_model.push((l("redis", "hit"), s.remote_hits));
            by_model.push((l("any", "miss"), s.misses));
            by_model.push((l("any", "coalesced"), s.coalesced));
            by_model.push((l("any", "compute_error"), s.compute_errors));
            by_model.push((l("any", "corrupt"), s.corrupt));
        }
        counter(
            &mut enc,
            "model_lookups",
            "Lookups per model, by the tier that answered and the outcome",
            &by_model,
        )?;
        let per_model = |f: fn(&infercache_core::stats::ModelStats) -> u64| -> Vec<(Labels, u64)> {
            stats
                .models
                .iter()
                .map(|(name, s)| (vec![("model", name.clone())], f(s)))
                .collect()
        };
        counter(
            &mut enc,
            "refreshes",
            "Stale-while-revalidate refreshes computed by this node",
            &per_model(|s| s.refreshes),
        )?;
        counter(
            &mut enc,
            "not_stored",
            "Computed values the backend refused to keep (stored in no tier)",
            &per_model(|s| s.not_stored),
        )?;
        if let Some(r) = &stats.remote {
            encode_remote(&mut enc, r)?;
        }
        if let Some(sync) = &stats.sync {
            encode_sync(&mut enc, sync)?;
        }
        Ok(())
    }
}

/// Where this node stands with its epochs, with a shared tier.
fn encode_sync(
    enc: &mut DescriptorEncoder<'_>,
    sync: &infercache_engine::LocalSyncStats,
) -> Result<(), fmt::Error> {
    gauge(
        enc,
        "epochs_in_sync",
        "Whether this node's invalidation epochs are known to match Redis's",
        &[(vec![], u64::from(sync.in_sync))],
    )?;
    #[expect(clippy::cast_precision_loss, reason = "seconds for display")]
    let unsynced = sync
        .unsynced_ms
        .map_or(f64::INFINITY, |ms| ms as f64 / 1000.0);
    let mut m = enc.encode_descriptor(
        "epochs_unsynced_seconds",
        "Seconds since the epochs were last known to match Redis's (0 while in sync; \
         +Inf: not since this process started)",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(unsynced).encode(m.encode_family(&Labels::new())?)?;
    gauge(
        enc,
        "local_reads_enabled",
        "Whether this node reads its own memory and disk now",
        &[(vec![], u64::from(sync.local_reads))],
    )?;
    counter(
        enc,
        "local_reads_skipped",
        "Lookups that skipped memory and disk because the epochs were not known to match",
        &[(vec![], sync.local_reads_skipped)],
    )
}

/// The Redis tier: lookups, writes, failures, leases and the circuit breaker.
fn encode_remote(
    enc: &mut DescriptorEncoder<'_>,
    r: &infercache_engine::RemoteStats,
) -> Result<(), fmt::Error> {
    let outcome = |o: &str| vec![("outcome", o.to_owned())];
    counter(
        enc,
        "redis_lookups",
        "Redis tier lookups by outcome (corrupt: refused by its checksum or key)",
        &[
            (outcome("hit"), r.hits),
            (outcome("miss"), r.misses),
            (outcome("corrupt"), r.corrupt),
        ],
    )?;
    counter(
        enc,
        "redis_writes",
        "Values written to Redis",
        &[(vec![], r.writes)],
    )?;
    counter(
        enc,
        "redis_errors",
        "Redis operations that failed or timed out",
        &[(vec![], r.errors)],
    )?;
    let kinds: Vec<(Labels, u64)> = r
        .error_replies
        .iter()
        .map(|(kind, n)| (vec![("kind", kind.clone())], *n))
        .collect();
    counter(
        enc,
        "redis_error_replies",
        "Redis commands answered with an error reply (OOM, READONLY, MOVED...), by kind: \
         that command failed, the breaker is not affected",
        &kinds,
    )?;
    gauge(
        enc,
        "redis_removals_pending",
        "Removals made while Redis was unreachable, to replay before it is used again",
        &[(vec![], r.removals_pending)],
    )?;
    counter(
        enc,
        "redis_removals_replayed",
        "Pending removals replayed to Redis",
        &[(vec![], r.removals_replayed)],
    )?;
    counter(
        enc,
        "redis_removals_received",
        "Removals made on other nodes applied to this node's memory and disk",
        &[(vec![], r.removals_received)],
    )?;
    counter(
        enc,
        "redis_skipped",
        "Redis operations skipped while the circuit breaker was open",
        &[(vec![], r.skipped)],
    )?;
    counter(
        enc,
        "redis_writeback_dropped",
        "Redis writes dropped because the write-back queue was full",
        &[(vec![], r.writeback_dropped)],
    )?;
    gauge(
        enc,
        "redis_writeback_queued",
        "Redis writes waiting in the write-back queue",
        &[(vec![], r.writeback_queued)],
    )?;
    counter(
        enc,
        "redis_leases",
        "Computation leases: granted to this node, or found held by another",
        &[
            (outcome("granted"), r.leases_granted),
            (outcome("contended"), r.leases_contended),
        ],
    )?;
    counter(
        enc,
        "redis_lease_waits",
        "Waits for another node's value: filled, or empty (computed here)",
        &[
            (outcome("filled"), r.lease_waits_filled),
            (outcome("empty"), r.lease_waits_empty),
        ],
    )?;
    counter(
        enc,
        "redis_epoch_updates",
        "Invalidation epochs adopted from other nodes",
        &[(vec![], r.epoch_updates)],
    )?;
    counter(
        enc,
        "redis_breaker_opened",
        "Times the Redis circuit breaker opened",
        &[(vec![], r.breaker_opened)],
    )?;
    counter(
        enc,
        "redis_round_trips",
        "Round trips Redis answered",
        &[(vec![], r.round_trips)],
    )?;
    {
        #[expect(clippy::cast_precision_loss, reason = "seconds for display")]
        let secs = r.round_trip_micros as f64 / 1e6;
        let mut m = enc.encode_descriptor(
            "redis_round_trip_seconds",
            "Time of the round trips Redis answered",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(secs).encode(m.encode_family(&Labels::new())?)?;
    }
    let state = |s: &str| vec![("state", s.to_owned())];
    gauge(
        enc,
        "redis_breaker_state",
        "The Redis circuit breaker: 1 for its current state",
        &["closed", "open", "half_open"].map(|s| (state(s), u64::from(r.breaker.as_str() == s))),
    )?;
    gauge(
        enc,
        "redis_connected",
        "Whether Redis answered the last call",
        &[(vec![], u64::from(r.connected))],
    )
}

/// Each model run in this process: its invocations and the texts it embedded.
fn encode_in_process(enc: &mut DescriptorEncoder<'_>, models: &Models) -> Result<(), fmt::Error> {
    let stats: Vec<(Labels, infercache_backend::InferenceStats)> = models
        .iter()
        .filter_map(|m| match m.backend().stats() {
            BackendStats::InProcess(s) => Some((vec![("model", m.name().to_owned())], s)),
            BackendStats::Upstream(_) => None,
        })
        .collect();
    if stats.is_empty() {
        return Ok(());
    }
    let per = |f: fn(&infercache_backend::InferenceStats) -> u64| -> Vec<(Labels, u64)> {
        stats.iter().map(|(l, s)| (l.clone(), f(s))).collect()
    };
    counter(
        enc,
        "model_invocations",
        "Model invocations (one forward pass over a batch)",
        &per(|s| s.invocations),
    )?;
    counter(
        enc,
        "model_texts",
        "Texts the model embedded",
        &per(|s| s.texts),
    )
}

/// Each upstream model's calls: attempts, failures, retries and time.
fn encode_upstreams(enc: &mut DescriptorEncoder<'_>, models: &Models) -> Result<(), fmt::Error> {
    let stats: Vec<(String, CallStats)> = models
        .iter()
        .filter_map(|m| match m.backend().stats() {
            BackendStats::Upstream(s) => Some((m.name().to_owned(), s)),
            BackendStats::InProcess(_) => None,
        })
        .collect();
    if stats.is_empty() {
        return Ok(());
    }
    let per = |f: fn(&CallStats) -> u64| -> Vec<(Labels, u64)> {
        stats
            .iter()
            .map(|(name, s)| (vec![("model", name.clone())], f(s)))
            .collect()
    };
    counter(
        enc,
        "upstream_attempts",
        "HTTP attempts made to a model's upstream (each retry counts)",
        &per(|s| s.attempts),
    )?;
    counter(
        enc,
        "upstream_failures",
        "Upstream attempts that failed (transport error, timeout, error status, unusable body)",
        &per(|s| s.failures),
    )?;
    counter(
        enc,
        "upstream_retries",
        "Upstream attempts that were retries",
        &per(|s| s.retries),
    )?;
    // In seconds, Prometheus's base unit (promtool's lint asks for it).
    let mut m = enc.encode_descriptor(
        "upstream_attempt_seconds",
        "Time spent in upstream attempts",
        None,
        MetricType::Counter,
    )?;
    for (name, s) in &stats {
        #[expect(clippy::cast_precision_loss, reason = "seconds for display")]
        let secs = s.micros as f64 / 1e6;
        ConstCounter::new(secs).encode(m.encode_family(&vec![("model", name.clone())])?)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The dashboard's metrics: what a request became (every row route), the rows in flight,
// upstream errors by status, the batches sent to models, invalidations, and readable
// latency buckets. Handles are resolved once per model in `Traffic::new`; only upstream
// errors, off the hot path, are found by their status when they happen.
// ---------------------------------------------------------------------------------------

/// Upper bounds, in seconds, of the request-latency buckets: 0.1 ms doubling up to 13 s.
/// Shared by `infercache_request_duration_seconds` and the dashboard's quantiles.
pub const LATENCY_BOUNDS: [f64; 18] = {
    let mut b = [0.000_1; 18];
    let mut i = 1;
    while i < b.len() {
        b[i] = b[i - 1] * 2.0;
        i += 1;
    }
    b
};

/// Buckets of [`LATENCY_BOUNDS`] and one past the last bound.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// Latency counts by bucket that can be read back: prometheus-client's histogram keeps
/// its buckets to itself, and the dashboard's p50/p99 over each sample interval need them.
#[derive(Debug, Default)]
struct Buckets([AtomicU64; LATENCY_BUCKETS]);

impl Buckets {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// The `q` quantile (0 to 1), in milliseconds, of the observations counted in `counts`
/// (by bucket of [`LATENCY_BOUNDS`]): interpolated within its bucket; the last, unbounded
/// bucket reads as its lower bound. `None` without observations.
pub fn quantile_ms(counts: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    #[expect(clippy::cast_precision_loss, reason = "a quantile for display")]
    let rank = (q * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        #[expect(clippy::cast_precision_loss, reason = "a quantile for display")]
        let (before, here) = (seen as f64, n as f64);
        seen += n;
        #[expect(clippy::cast_precision_loss, reason = "a quantile for display")]
        if seen as f64 >= rank {
            let low = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
            let Some(&high) = LATENCY_BOUNDS.get(i) else {
                return Some(low * 1000.0);
            };
            let within = ((rank - before) / here).clamp(0.0, 1.0);
            return Some((low + (high - low) * within) * 1000.0);
        }
    }
    Some(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1] * 1000.0)
}

/// What became of a request on a row route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Every row from the cache.
    Hit,
    /// Some rows from the cache, some computed.
    Partial,
    /// Every row computed.
    Miss,
    /// Some row served stale (the model failed).
    Stale,
    /// The request failed after its model was resolved.
    Error,
}

impl RequestOutcome {
    /// Every outcome, in the order of their labels.
    pub const ALL: [RequestOutcome; 5] = [
        Self::Hit,
        Self::Partial,
        Self::Miss,
        Self::Stale,
        Self::Error,
    ];

    /// `hit`, `partial`, `miss`, `stale` or `error`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Partial => "partial",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Error => "error",
        }
    }

    /// A served request's outcome.
    pub fn of(rows: &infercache_infer::Rows) -> Self {
        if rows.stale() > 0 {
            return Self::Stale;
        }
        match rows.outcome() {
            Outcome::Hit => Self::Hit,
            Outcome::Miss => Self::Miss,
            Outcome::Partial => Self::Partial,
        }
    }
}

/// The label of an upstream failure: its HTTP status, else what went wrong.
fn upstream_label(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Status { status, .. } => status.to_string(),
        UpstreamError::Timeout { .. } => "timeout".to_owned(),
        UpstreamError::Unreachable { .. } => "unreachable".to_owned(),
        UpstreamError::Broken { .. } => "broken".to_owned(),
        UpstreamError::Tls { .. } => "tls".to_owned(),
        UpstreamError::BadResponse { .. } => "bad_response".to_owned(),
    }
}

/// The scopes of an invalidation, as `infercache_invalidations_total{scope}` labels them.
pub const INVALIDATION_SCOPES: [&str; 4] = ["all", "namespace", "model", "version"];

/// Per model: requests by outcome, rows in flight, batch sizes; upstream errors by status;
/// invalidations by scope.
pub struct Traffic {
    /// Per model (by [`Model::index`]), per [`RequestOutcome`].
    requests: Vec<[Counter; 5]>,
    /// Per model: rows of requests waiting for the cache or the model.
    in_flight: Vec<Gauge>,
    /// Per model: rows per backend call.
    batches: Vec<Histogram>,
    /// Per model name and failure label, found when an upstream fails.
    upstream_errors: Family<Labels, Counter>,
    /// The same series, readable by model and label.
    upstream_seen: Mutex<BTreeMap<(String, String), Counter>>,
    invalidations: [Counter; 4],
}

impl fmt::Debug for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Traffic").finish_non_exhaustive()
    }
}

impl Traffic {
    fn new(registry: &mut Registry, models: &Models) -> Self {
        let model_label = |m: &Model| ("model", m.name().to_owned());
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Requests on the row routes by model and outcome (hit, partial, miss, stale, error)",
            requests.clone(),
        );
        let in_flight = Family::<Labels, Gauge>::default();
        registry.register(
            "rows_in_flight",
            "Rows of requests waiting for the cache or the model",
            in_flight.clone(),
        );
        let batches = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 12))
        });
        registry.register(
            "batch_rows",
            "Rows per model call made for requests' cache misses",
            batches.clone(),
        );
        let upstream_errors = Family::<Labels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests whose model's upstream failed, by its HTTP status or the failure",
            upstream_errors.clone(),
        );
        let invalidations = Family::<Labels, Counter>::default();
        registry.register(
            "invalidations",
            "Invalidations by scope",
            invalidations.clone(),
        );
        Self {
            requests: models
                .iter()
                .map(|m| {
                    RequestOutcome::ALL.map(|o| {
                        requests
                            .get_or_create(&vec![model_label(m), ("outcome", o.label().to_owned())])
                            .clone()
                    })
                })
                .collect(),
            in_flight: models
                .iter()
                .map(|m| in_flight.get_or_create(&vec![model_label(m)]).clone())
                .collect(),
            batches: models
                .iter()
                .map(|m| batches.get_or_create(&vec![model_label(m)]).clone())
                .collect(),
            upstream_errors,
            upstream_seen: Mutex::default(),
            invalidations: INVALIDATION_SCOPES.map(|s| {
                invalidations
                    .get_or_create(&vec![("scope", s.to_owned())])
                    .clone()
            }),
        }
    }

    /// Counts a request for `model` that ended as `outcome`.
    pub fn request(&self, model: &Model, outcome: RequestOutcome) {
        if let Some(c) = self.requests.get(model.index()) {
            c[outcome as usize].inc();
        }
    }

    /// Counts a failed request, and its upstream's failure if that is why.
    pub fn failed(&self, model: &Model, error: &InferError) {
        self.request(model, RequestOutcome::Error);
        if let InferError::Backend(BackendError::Upstream(e)) = error {
            let key = (model.name().to_owned(), upstream_label(e));
            let mut seen = self
                .upstream_seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.entry(key)
                .or_insert_with_key(|(model, status)| {
                    self.upstream_errors
                        .get_or_create(&vec![("model", model.clone()), ("status", status.clone())])
                        .clone()
                })
                .inc();
        }
    }

    /// `model`'s requests so far, by [`RequestOutcome::ALL`].
    pub fn requests(&self, model: &Model) -> [u64; 5] {
        self.requests
            .get(model.index())
            .map_or([0; 5], |c| c.each_ref().map(Counter::get))
    }

    /// Marks `rows` of `model` in flight until the guard drops.
    pub fn in_flight(&self, model: &Model, rows: usize) -> InFlight {
        let gauge = self.in_flight.get(model.index()).cloned();
        let rows = i64::try_from(rows).unwrap_or(i64::MAX);
        if let Some(g) = &gauge {
            g.inc_by(rows);
        }
        InFlight { gauge, rows }
    }

    /// Rows of `model`'s requests in flight now.
    pub fn rows_in_flight(&self, model: &Model) -> u64 {
        self.in_flight
            .get(model.index())
            .map_or(0, |g| u64::try_from(g.get()).unwrap_or(0))
    }

    fn batch(&self, model: &Model, rows: usize) {
        if let Some(h) = self.batches.get(model.index()) {
            #[expect(clippy::cast_precision_loss, reason = "a row count, far below 2^52")]
            h.observe(rows as f64);
        }
    }

    /// Upstream failures so far: model name, label (status or failure), count.
    pub fn upstream_errors(&self) -> Vec<(String, String, u64)> {
        self.upstream_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|((m, s), c)| (m.clone(), s.clone(), c.get()))
            .collect()
    }

    /// Counts an invalidation of `scope` (one of [`INVALIDATION_SCOPES`]).
    pub fn invalidated(&self, scope: &str) {
        if let Some(i) = INVALIDATION_SCOPES.iter().position(|s| *s == scope) {
            self.invalidations[i].inc();
        }
    }
}

/// Rows in flight, counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    gauge: Option<Gauge>,
    rows: i64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec_by(self.rows);
        }
    }
}

/// `open_metrics` (this server's OpenMetrics text) in the classic Prometheus text format
/// (0.0.4), for scrapers and tools that read only that one (`promtool check metrics`
/// among them). The two differ, for what this server writes, in three places only: a
/// counter's `HELP` and `TYPE` lines name its `_total` series, there is no `# UNIT`, and
/// no `# EOF`. prometheus-client writes OpenMetrics alone, hence this small rewrite.
pub fn classic_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 32 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod dashboard_tests {
    #[test]
    fn the_classic_text_names_counters_by_their_total_series() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
                    a_requests_total{x=\"1\"} 3\n# HELP a_bytes Bytes.\n# TYPE a_bytes gauge\n\
                    # UNIT a_bytes bytes\na_bytes 7\n# EOF\n";
        assert_eq!(
            super::classic_text(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
             a_requests_total{x=\"1\"} 3\n# HELP a_bytes Bytes.\n# TYPE a_bytes gauge\na_bytes 7\n"
        );
    }

    use super::*;

    #[test]
    fn quantiles_come_from_the_bucket_holding_the_rank() {
        let mut counts = [0u64; LATENCY_BUCKETS];
        assert_eq!(quantile_ms(&counts, 0.5), None);
        // 99 observations at or under 0.1 ms, one in (0.4 ms, 0.8 ms].
        counts[0] = 99;
        counts[3] = 1;
        let p50 = quantile_ms(&counts, 0.5).unwrap();
        assert!(p50 > 0.0 && p50 <= 0.1, "{p50}");
        let p99 = quantile_ms(&counts, 0.99).unwrap();
        assert!(p99 <= 0.1, "{p99}");
        let max = quantile_ms(&counts, 1.0).unwrap();
        assert!(max > 0.4 && max <= 0.8, "{max}");
        // Past the last bound: its lower bound.
        let mut slow = [0u64; LATENCY_BUCKETS];
        slow[LATENCY_BUCKETS - 1] = 3;
        assert!((quantile_ms(&slow, 0.5).unwrap() - LATENCY_BOUNDS[17] * 1000.0).abs() < 1e-9);
    }

    #[test]
    fn a_duration_lands_in_the_first_bucket_that_bounds_it() {
        let b = Buckets::default();
        b.observe(Duration::from_micros(50));
        b.observe(Duration::from_micros(150));
        b.observe(Duration::from_secs(60));
        let s = b.snapshot();
        assert_eq!((s[0], s[1], s[LATENCY_BUCKETS - 1]), (1, 1, 1));
        assert_eq!(s.iter().sum::<u64>(), 3);
    }
}
