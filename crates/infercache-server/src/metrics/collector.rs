//! What `GET /metrics` reads at scrape time: the engine's counters and each backend's stats.

use super::*;

/// Reads the engine's and the backends' counters at scrape time.
#[derive(Debug)]
pub(super) struct EngineCollector {
    pub(super) cache: Option<Cache>,
    pub(super) models: Models,
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
            "cache_reserved_bytes",
            "Capacity the tier yields to the disk tier's index (the memory tier; 0 elsewhere)",
            &per_tier(|t| t.reserved_bytes),
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
