//! The weight server's Prometheus metrics, read from its counters at scrape time (the
//! request path pays nothing for them):
//!
//! - `infercache_weights_cache_lookups_total{outcome}`: `memory_hit`, `redis_hit`,
//!   `storage_read`, `coalesced`, `bypass`;
//! - `infercache_weights_cache_evictions_total`, `infercache_weights_cache_bytes`,
//!   `infercache_weights_cache_capacity_bytes`, `infercache_weights_cache_entries`;
//! - `infercache_weights_storage_reads_total`, `infercache_weights_storage_read_bytes_total`,
//!   `infercache_weights_corrupt_total{tier}` (`storage`, `redis`);
//! - `infercache_weights_chunk_requests_total{model,chunk}`,
//!   `infercache_weights_chunk_sent_bytes_total{model,chunk}`.
//!
//! [`WeightsCollector`] can be registered in another server's registry, so the weight
//! routes mounted there report in its `/metrics`.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::WeightServer;
use super::stats::Outcome;

type Labels = Vec<(&'static str, String)>;

/// Reads a [`WeightServer`]'s counters at scrape time.
#[derive(Debug)]
pub struct WeightsCollector {
    server: WeightServer,
}

impl WeightsCollector {
    pub(crate) fn new(server: WeightServer) -> Self {
        Self { server }
    }
}

fn series(
    enc: &mut DescriptorEncoder<'_>,
    kind: MetricType,
    name: &str,
    help: &str,
    values: &[(Labels, u64)],
) -> Result<(), fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    let one = |v: u64, m: prometheus_client::encoding::MetricEncoder<'_>| match kind {
        MetricType::Counter => ConstCounter::new(v).encode(m),
        _ => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(m),
    };
    for (labels, v) in values {
        if labels.is_empty() {
            // A metric without labels, written as `name value`.
            return one(*v, m);
        }
        one(*v, m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for WeightsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let s = self.server.stats();
        let c = &s.cache;
        let none = Labels::new;
        let outcomes = [
            c.hits,
            c.redis_hits,
            c.storage_reads,
            c.coalesced,
            c.bypassed,
        ];
        let lookups: Vec<(Labels, u64)> = Outcome::ALL
            .iter()
            .zip(outcomes)
            .map(|(o, v)| (vec![("outcome", o.label().to_owned())], v))
            .collect();
        use MetricType::{Counter, Gauge};
        series(
            &mut enc,
            Counter,
            "weights_cache_lookups",
            "Chunk requests by how the cache answered",
            &lookups,
        )?;
        series(
            &mut enc,
            Counter,
            "weights_cache_evictions",
            "Chunks evicted from memory to make room",
            &[(none(), c.evictions)],
        )?;
        series(
            &mut enc,
            Gauge,
            "weights_cache_bytes",
            "Bytes the memory tier holds",
            &[(none(), c.bytes)],
        )?;
        series(
            &mut enc,
            Gauge,
            "weights_cache_capacity_bytes",
            "The memory tier's capacity",
            &[(none(), c.capacity_bytes)],
        )?;
        series(
            &mut enc,
            Gauge,
            "weights_cache_entries",
            "Chunks the memory tier holds",
            &[(none(), c.entries)],
        )?;
        series(
            &mut enc,
            Counter,
            "weights_storage_reads",
            "Chunk files read whole into the cache",
            &[(none(), s.storage.reads)],
        )?;
        series(
            &mut enc,
            Counter,
            "weights_storage_read_bytes",
            "Bytes of those reads",
            &[(none(), s.storage.bytes_read)],
        )?;
        let redis_corrupt = s.redis.as_ref().map_or(0, |r| r.sha256_mismatches);
        series(
            &mut enc,
            Counter,
            "weights_corrupt",
            "Chunk copies that failed their sha256 and were not served, by where they were",
            &[
                (vec![("tier", "storage".to_owned())], s.storage.corrupt),
                (vec![("tier", "redis".to_owned())], redis_corrupt),
            ],
        )?;
        let per_chunk = |f: fn(&super::ChunkStats) -> u64| -> Vec<(Labels, u64)> {
            s.chunks
                .iter()
                .map(|ch| {
                    (
                        vec![("model", ch.model.clone()), ("chunk", ch.chunk.clone())],
                        f(ch),
                    )
                })
                .collect()
        };
        series(
            &mut enc,
            Counter,
            "weights_chunk_requests",
            "Chunk requests answered with a body",
            &per_chunk(|c| c.requests),
        )?;
        series(
            &mut enc,
            Counter,
            "weights_chunk_sent_bytes",
            "Chunk body bytes sent",
            &per_chunk(|c| c.bytes_sent),
        )?;
        Ok(())
    }
}
