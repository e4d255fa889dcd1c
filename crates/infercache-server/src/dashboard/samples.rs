//! The samples the dashboard draws: a snapshot of every counter every
//! [`SAMPLE_EVERY`], kept in a bounded ring (the last hour).
//!
//! Counters are cumulative, as the engine and the metrics keep them; the page takes the
//! differences between samples (rates, hit rates per interval). Latency quantiles are
//! the one exception: they cover the interval before the sample, from the difference of
//! the latency buckets.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infercache_backend::BackendStats;
use infercache_core::stats::TierStats;
use infercache_infer::Outcome;
use serde::Serialize;

use crate::metrics::{LATENCY_BUCKETS, RequestOutcome, quantile_ms};
use crate::state::AppState;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Samples kept: one hour's.
pub const SAMPLES_KEPT: usize = 1800;

/// Marks kept (invalidations); older ones drop off with the samples they fall among.
pub const MARKS_KEPT: usize = 1000;

/// Every counter at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix milliseconds.
    pub t: u64,
    /// The server is draining for shutdown: new requests get 503.
    pub draining: bool,
    /// The memory tier.
    pub memory: Option<TierSample>,
    /// The disk tier.
    pub disk: Option<TierSample>,
    /// The Redis tier.
    pub redis: Option<RedisSample>,
    /// Latency of every model's requests over the interval before this sample.
    pub latency: LatencySample,
    /// Per model, in the order of [`Data::models`].
    pub models: Vec<ModelSample>,
}

/// A memory or disk tier.
#[derive(Debug, Clone, Serialize)]
pub struct TierSample {
    /// Lookups answered.
    pub hits: u64,
    /// Lookups not answered.
    pub misses: u64,
    /// Live entries.
    pub entries: u64,
    /// Bytes used.
    pub bytes: u64,
    /// Byte capacity.
    pub capacity: u64,
    /// Memory the tier's index of its entries holds (the disk tier; 0 for memory).
    pub index_bytes: u64,
    /// Capacity given to the disk tier's index (the memory tier; 0 for disk).
    pub reserved_bytes: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Entries dropped past their expiry.
    pub expirations: u64,
    /// Records dropped as corrupt.
    pub corrupt: u64,
    /// Failed or refused writes.
    pub write_errors: u64,
    /// The tier's storage fails and is skipped until it answers (the disk tier).
    pub degraded: bool,
    /// Reads and writes that failed with an I/O error.
    pub io_errors: u64,
}

impl From<&TierStats> for TierSample {
    fn from(t: &TierStats) -> Self {
        Self {
            hits: t.hits,
            misses: t.misses,
            entries: t.entries,
            bytes: t.bytes,
            capacity: t.capacity,
            index_bytes: t.index_bytes,
            reserved_bytes: t.reserved_bytes,
            evictions: t.evictions,
            expirations: t.expirations,
            corrupt: t.corrupt,
            write_errors: t.write_errors,
            degraded: t.degraded,
            io_errors: t.io_errors,
        }
    }
}

/// The Redis tier.
#[derive(Debug, Clone, Serialize)]
pub struct RedisSample {
    /// The circuit breaker: `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// Whether the tier is in use.
    pub connected: bool,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Keys found.
    pub hits: u64,
    /// Keys not found.
    pub misses: u64,
    /// Operations that failed or timed out.
    pub errors: u64,
    /// Round trips Redis answered.
    pub round_trips: u64,
    /// Their total time, in microseconds.
    pub round_trip_micros: u64,
}

/// p50 and p99 in milliseconds of hits and misses; `None` where there were none.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySample {
    /// Median of requests answered wholly from the cache.
    pub hit_p50: Option<f64>,
    /// 99th percentile of those.
    pub hit_p99: Option<f64>,
    /// Median of requests computed wholly.
    pub miss_p50: Option<f64>,
    /// 99th percentile of those.
    pub miss_p99: Option<f64>,
}

/// One model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSample {
    /// Hits from memory.
    pub memory_hits: u64,
    /// Hits from disk.
    pub disk_hits: u64,
    /// Hits from Redis.
    pub remote_hits: u64,
    /// Lookups no tier answered.
    pub misses: u64,
    /// The share of lookups a tier answered, since start (as `GET /v1/cache/stats`).
    pub hit_rate: f64,
    /// Requests by outcome.
    pub requests: BTreeMap<&'static str, u64>,
    /// Model calls made for requests' misses.
    pub calls: u64,
    /// Rows those calls computed.
    pub rows: u64,
    /// Their total time, in milliseconds.
    pub compute_ms: f64,
    /// For a model run in this process: its forward passes, and the texts they embedded
    /// (batches formed across requests).
    pub invocations: Option<u64>,
    /// See `invocations`.
    pub texts: Option<u64>,
    /// Rows of requests waiting for the cache or the model now.
    pub in_flight: u64,
    /// Failures of the model's upstream, by HTTP status or failure.
    pub upstream_errors: BTreeMap<String, u64>,
    /// Inference time the hits saved, in milliseconds: hits times the mean time per row
    /// computed.
    pub saved_ms: f64,
}

/// A moment to mark on the time axis: an invalidation.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    /// Unix milliseconds.
    pub t: u64,
    /// What happened.
    pub what: String,
}

/// `GET /dashboard/data`.
#[derive(Debug, Serialize)]
pub struct Data {
    /// Milliseconds between samples.
    pub interval_ms: u64,
    /// The models, by name.
    pub models: Vec<String>,
    /// The samples after the `since` asked for, oldest first.
    pub samples: Vec<Sample>,
    /// The counters now (not kept).
    pub now: Sample,
    /// The marks after `since`.
    pub marks: Vec<Mark>,
}

/// Latency buckets of every model's hits and misses, summed.
type Latencies = [[u64; LATENCY_BUCKETS]; 2];

/// The ring of samples and marks.
#[derive(Debug, Default)]
pub(super) struct Ring {
    samples: VecDeque<Sample>,
    marks: VecDeque<Mark>,
    /// The latency buckets at the last kept sample.
    latencies: Latencies,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Ring {
    /// Takes a sample and keeps it.
    pub(super) fn record(&mut self, state: &AppState) {
        let (sample, latencies) = take(state, &self.latencies);
        self.latencies = latencies;
        if self.samples.len() == SAMPLES_KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        let oldest = self.samples.front().map_or(0, |s| s.t);
        while self.marks.front().is_some_and(|m| m.t < oldest) {
            self.marks.pop_front();
        }
    }

    pub(super) fn mark(&mut self, what: String) {
        if self.marks.len() == MARKS_KEPT {
            self.marks.pop_front();
        }
        self.marks.push_back(Mark { t: now_ms(), what });
    }

    /// What the page asks for: samples and marks after `since`, and a sample of now.
    pub(super) fn data(&self, state: &AppState, since: u64) -> Data {
        let (now, _) = take(state, &self.latencies);
        Data {
            interval_ms: u64::try_from(SAMPLE_EVERY.as_millis()).unwrap_or(u64::MAX),
            models: state.models().iter().map(|m| m.name().to_owned()).collect(),
            samples: self
                .samples
                .iter()
                .filter(|s| s.t > since)
                .cloned()
                .collect(),
            now,
            marks: self.marks.iter().filter(|m| m.t > since).cloned().collect(),
        }
    }
}

fn diff(now: &[u64; LATENCY_BUCKETS], before: &[u64; LATENCY_BUCKETS]) -> [u64; LATENCY_BUCKETS] {
    std::array::from_fn(|i| now[i].saturating_sub(before[i]))
}

/// Every counter now, with latency quantiles since `before`.
fn take(state: &AppState, before: &Latencies) -> (Sample, Latencies) {
    let metrics = state.metrics();
    let traffic = metrics.traffic();
    let engine = state.cache().map(infercache_engine::Cache::stats);
    let mut latencies: Latencies = [[0; LATENCY_BUCKETS]; 2];
    let upstream = traffic.upstream_errors();
    let models = state
        .models()
        .iter()
        .map(|m| {
            for (i, outcome) in [Outcome::Hit, Outcome::Miss].into_iter().enumerate() {
                let b = metrics.latency_buckets(m, outcome);
                for (sum, n) in latencies[i].iter_mut().zip(b) {
                    *sum += n;
                }
            }
            let lookups = engine.as_ref().and_then(|s| s.models.get(m.name()));
            let (secs, calls, rows) = metrics.compute_totals(m);
            let (invocations, texts) = match m.backend().stats() {
                BackendStats::InProcess(s) => (Some(s.invocations), Some(s.texts)),
                BackendStats::Upstream(_) => (None, None),
            };
            let hits = lookups.map_or(0, |l| l.hits);
            #[expect(clippy::cast_precision_loss, reason = "an estimate for display")]
            let saved_ms = if rows > 0 {
                secs * 1000.0 / rows as f64 * hits as f64
            } else {
                0.0
            };
            let requests = traffic.requests(m);
            ModelSample {
                memory_hits: lookups.map_or(0, |l| l.memory_hits),
                disk_hits: lookups.map_or(0, |l| l.disk_hits),
                remote_hits: lookups.map_or(0, |l| l.remote_hits),
                misses: lookups.map_or(0, |l| l.misses),
                hit_rate: lookups.map_or(0.0, |l| l.hit_rate),
                requests: RequestOutcome::ALL
                    .iter()
                    .zip(requests)
                    .map(|(o, n)| (o.label(), n))
                    .collect(),
                calls,
                rows,
                compute_ms: secs * 1000.0,
                invocations,
                texts,
                in_flight: traffic.rows_in_flight(m),
                upstream_errors: upstream
                    .iter()
                    .filter(|(model, _, _)| model == m.name())
                    .map(|(_, status, n)| (status.clone(), *n))
                    .collect(),
                saved_ms,
            }
        })
        .collect();
    let hits = diff(&latencies[0], &before[0]);
    let misses = diff(&latencies[1], &before[1]);
    let sample = Sample {
        t: now_ms(),
        draining: !state.is_ready(),
        memory: engine
            .as_ref()
            .and_then(|s| s.memory.as_ref().map(TierSample::from)),
        disk: engine
            .as_ref()
            .and_then(|s| s.disk.as_ref().map(TierSample::from)),
        redis: engine.as_ref().and_then(|s| {
            s.remote.as_ref().map(|r| RedisSample {
                breaker: r.breaker.as_str(),
                connected: r.connected,
                breaker_opened: r.breaker_opened,
                hits: r.hits,
                misses: r.misses,
                errors: r.errors,
                round_trips: r.round_trips,
                round_trip_micros: r.round_trip_micros,
            })
        }),
        latency: LatencySample {
            hit_p50: quantile_ms(&hits, 0.5),
            hit_p99: quantile_ms(&hits, 0.99),
            miss_p50: quantile_ms(&misses, 0.5),
            miss_p99: quantile_ms(&misses, 0.99),
        },
        models,
    };
    (sample, latencies)
}
