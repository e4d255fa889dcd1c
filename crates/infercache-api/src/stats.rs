//! The body of `GET /v1/cache/stats`: [`CacheStats`].
//!
//! Every struct reads with its missing fields at their defaults (zero, none), so a client
//! reads the answer of an older or newer server; a model's in-process report is present
//! only for a model run in the server's process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /v1/cache/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheStats {
    /// False when the server runs with `--disable-cache` (every tier is then `None`).
    pub cache_enabled: bool,
    /// Each tier, `None` when not configured.
    pub tiers: Tiers,
    /// Per model, by name.
    pub models: BTreeMap<String, ModelReport>,
    /// Callers that waited for another caller's computation.
    pub coalesced: u64,
    /// Lower-tier writes dropped because the write-back queue was full.
    pub writeback_dropped: u64,
    /// Operations waiting in the write-back queue.
    pub writeback_queued: u64,
    /// With a Redis tier: where this node stands with its invalidation epochs, and
    /// whether it reads its own memory and disk. `None` without one.
    pub sync: Option<SyncReport>,
}

/// Where a node with a Redis tier stands with its invalidation epochs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncReport {
    /// The epochs are known to match Redis's now.
    pub in_sync: bool,
    /// Milliseconds since they were last known to match (0 while in sync); `None`: not
    /// since the server started.
    pub unsynced_ms: Option<u64>,
    /// Whether memory and disk are read now (in sync, within the grace, or
    /// `redis_local_reads = "always"`).
    pub local_reads: bool,
    /// Lookups that skipped memory and disk because the epochs were not known to match.
    pub local_reads_skipped: u64,
}

/// The tiers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tiers {
    /// The memory tier.
    pub memory: Option<TierReport>,
    /// The disk tier.
    pub disk: Option<TierReport>,
    /// The shared Redis tier: lookups, writes, failures, leases, and its circuit breaker.
    pub redis: Option<RemoteReport>,
}

/// A memory or disk tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TierReport {
    /// Lookups answered.
    pub hits: u64,
    /// Lookups not answered.
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 when there were no lookups.
    pub hit_rate: f64,
    /// Entries written.
    pub inserts: u64,
    /// Entries removed to make room.
    pub evictions: u64,
    /// Entries found or reclaimed past their expiry.
    pub expirations: u64,
    /// Entries removed on request.
    pub removals: u64,
    /// Records dropped as corrupt.
    pub corrupt: u64,
    /// Failed or refused writes.
    pub write_errors: u64,
    /// Live entries.
    pub entries: u64,
    /// Bytes used.
    pub bytes: u64,
    /// Byte capacity.
    pub capacity: u64,
    /// The disk tier: its storage failed (an I/O error) and has not answered since, so it
    /// is skipped (lookups miss, writes are dropped) until it does.
    pub degraded: bool,
    /// The disk tier: reads and writes that failed with an I/O error.
    pub io_errors: u64,
    /// The disk tier: bytes of the server's memory its index holds (the map from key to
    /// record and the segments' key lists), besides `bytes` on disk. 0 for the memory
    /// tier, whose `bytes` include its index.
    pub index_bytes: u64,
    /// The memory tier: bytes of `capacity` it yields to the disk tier's index (rounded
    /// up to a step), so that `bytes + reserved_bytes <= capacity` bounds both. 0 for the
    /// other tiers.
    pub reserved_bytes: u64,
}

/// The shared (Redis) tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteReport {
    /// What the tier is (`redis`, `redis-cluster`).
    pub kind: String,
    /// Where it is, with any password redacted.
    pub endpoint: String,
    /// The circuit breaker: `closed`, `open` or `half_open`.
    pub breaker: String,
    /// Whether the tier is in use (the remote answered the last call and this node's
    /// epochs are in sync with it).
    pub connected: bool,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Keys found.
    pub hits: u64,
    /// Keys not found.
    pub misses: u64,
    /// Values dropped because their checksum or key did not match.
    pub corrupt: u64,
    /// Values written.
    pub writes: u64,
    /// Operations that failed (errors and timeouts).
    pub errors: u64,
    /// Operations the remote answered with an error reply, by kind (`oom`, `readonly`,
    /// `moved`): that operation failed, the breaker is not affected.
    pub error_replies: BTreeMap<String, u64>,
    /// Operations skipped because the breaker was open or the epochs were not in sync.
    pub skipped: u64,
    /// Writes dropped because the write-back queue was full.
    pub writeback_dropped: u64,
    /// Writes waiting in the write-back queue.
    pub writeback_queued: u64,
    /// Leases granted to this node.
    pub leases_granted: u64,
    /// Keys found leased by another node.
    pub leases_contended: u64,
    /// Waits for another node's value that got it.
    pub lease_waits_filled: u64,
    /// Waits that ended without a value (the caller computed).
    pub lease_waits_empty: u64,
    /// Lease requests whose reply was lost or late.
    pub lease_replies_lost: u64,
    /// Stores of computed values under a lease tried again after Redis did not answer.
    pub lease_release_retries: u64,
    /// Epoch changes received from other nodes.
    pub epoch_updates: u64,
    /// Removals that could not reach the remote and wait to be replayed.
    pub removals_pending: u64,
    /// Removals replayed once the remote was back.
    pub removals_replayed: u64,
    /// Removals made on other nodes, applied to this node's tiers.
    pub removals_received: u64,
}

/// One model: its lookups, and for a model run in the server's process its latencies and
/// inference work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// Lookups across the tiers.
    #[serde(flatten)]
    pub lookups: ModelLookups,
    /// A model run in this process (the built-in model); `None` for models behind an
    /// upstream, which report their lookups only.
    #[serde(flatten)]
    pub in_process: Option<InProcessReport>,
}

/// One model's lookups across the tiers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelLookups {
    /// Hits from any tier.
    pub hits: u64,
    /// Hits from memory.
    pub memory_hits: u64,
    /// Hits from disk.
    pub disk_hits: u64,
    /// Hits from a remote tier.
    pub remote_hits: u64,
    /// Lookups no tier answered.
    pub misses: u64,
    /// `hits / (hits + misses)`.
    pub hit_rate: f64,
    /// Values computed and stored.
    pub inserts: u64,
    /// Callers that shared another caller's computation.
    pub coalesced: u64,
    /// Failed computations.
    pub compute_errors: u64,
    /// Values served past their freshness (stale-while-revalidate or stale-if-error).
    pub stale_served: u64,
    /// Background recomputations of values served stale-while-revalidate.
    pub refreshes: u64,
    /// Computed values marked not to be stored.
    pub not_stored: u64,
    /// Stored values refused when read for not fitting the model (an embedding of
    /// another length), recomputed instead of served.
    #[serde(default)]
    pub corrupt: u64,
}

/// The request latencies and inference work of a model run in the server's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InProcessReport {
    /// Mean latency of requests every row of which was a hit.
    #[serde(default)]
    pub mean_hit_latency_ms: Option<f64>,
    /// Mean latency of requests no row of which was a hit.
    #[serde(default)]
    pub mean_miss_latency_ms: Option<f64>,
    /// Mean latency of the others.
    #[serde(default)]
    pub mean_partial_latency_ms: Option<f64>,
    /// The model's work.
    pub inference: InferenceReport,
    /// Hits times the mean model time per text: an estimate of the model time the cache
    /// saved.
    pub inference_time_saved_ms: f64,
}

/// A model's inference work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InferenceReport {
    /// Model invocations (forward passes over one batch).
    pub invocations: u64,
    /// Texts embedded.
    pub texts: u64,
    /// Model calls made for requests' misses (each may be batched with others).
    pub calls: u64,
    /// Mean model time per text, as requests saw it.
    pub mean_ms_per_text: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_model_with_inference_work_reads_as_in_process_and_both_round_trip() {
        let upstream: ModelReport =
            serde_json::from_str(r#"{"hits": 2, "misses": 1, "hit_rate": 0.5}"#).unwrap();
        assert_eq!(upstream.lookups.hits, 2);
        assert_eq!(upstream.in_process, None);
        let builtin: ModelReport = serde_json::from_str(
            r#"{"hits": 2, "inference": {"invocations": 1, "texts": 3, "calls": 1},
                "inference_time_saved_ms": 4.5, "mean_hit_latency_ms": 0.25}"#,
        )
        .unwrap();
        let p = builtin.in_process.as_ref().unwrap();
        assert_eq!((p.inference.texts, p.mean_hit_latency_ms), (3, Some(0.25)));
        for report in [upstream, builtin] {
            let text = serde_json::to_string(&report).unwrap();
            assert_eq!(serde_json::from_str::<ModelReport>(&text).unwrap(), report);
        }
    }
}
