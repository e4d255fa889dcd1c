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
//!   for models behind an upstream `infercache_upstream_*_total{model}`, and the Redis
//!   tier's `infercache_redis_*`. The hot path pays nothing for these.
//! - **Recorded by the server**, through handles resolved once per model at start-up:
//!   `infercache_request_duration_seconds{model,outcome}` (outcome `hit`, `miss` or
//!   `partial`), `infercache_inference_duration_seconds{model}` (one backend call made for
//!   a request's misses, heard as the per-row path's [`Observer`]), and
//!   `infercache_rejected_requests_total{reason}`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use infercache_backend::{BackendStats, CallStats};
use infercache_core::stats::Counter as StripedCounter;
use infercache_engine::Cache;
use infercache_infer::{Model, Models, Observer, Outcome};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
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
    rejected: [Counter; Rejection::ALL.len()],
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics for `models`, reading the cache's and the backends' counters at scrape
    /// time. Every handle is resolved here, once per model.
    pub fn new(cache: Option<Cache>, models: Models) -> Self {
        let mut registry = Registry::with_prefix("infercache");

        let requests = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
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

        registry.register_collector(Box::new(EngineCollector { cache, models }));
        Self {
            registry,
            requests: request_handles,
            compute,
            rejected,
        }
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
        if let Some(r) = &stats.remote {
            encode_remote(&mut enc, r)?;
        }
        Ok(())
    }
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
    counter(
        enc,
        "upstream_attempt_microseconds",
        "Time spent in upstream attempts",
        &per(|s| s.micros),
    )
}
