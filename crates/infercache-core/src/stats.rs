//! Counters and their snapshots.
//!
//! Cache hits happen on every core at once, and a single shared atomic counter would make
//! every hit bounce one cache line between cores. [`Counter`] stripes its value over
//! cache-padded slots chosen per thread and sums them on read. The `metrics` and
//! `prometheus` crates' counters are single atomics, so they are not used on this path;
//! the server exports these counters to Prometheus at scrape time.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use serde::Serialize;

const STRIPES: usize = 16;

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

fn stripe() -> usize {
    STRIPE.with(|s| {
        let mut v = s.get();
        if v == usize::MAX {
            v = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(v);
        }
        v
    })
}

/// A monotonic counter striped across cores.
#[derive(Debug, Default)]
pub struct Counter {
    slots: [CachePadded<AtomicU64>; STRIPES],
}

impl Counter {
    /// Adds one.
    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.slots[stripe()].fetch_add(n, Ordering::Relaxed);
    }

    /// The current total.
    pub fn get(&self) -> u64 {
        self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// Counters of one tier.
#[derive(Debug, Default)]
pub struct TierCounters {
    /// Lookups answered by this tier.
    pub hits: Counter,
    /// Lookups this tier could not answer.
    pub misses: Counter,
    /// Entries written.
    pub inserts: Counter,
    /// Entries removed to make room.
    pub evictions: Counter,
    /// Entries found or reclaimed past their expiry.
    pub expirations: Counter,
    /// Entries removed on request.
    pub removals: Counter,
    /// Records dropped because their checksum or key did not match.
    pub corrupt: Counter,
    /// Writes that failed or were refused (I/O error, value larger than the tier).
    pub write_errors: Counter,
}

impl TierCounters {
    /// A snapshot, with the gauges the tier reports.
    pub fn snapshot(&self, entries: u64, bytes: u64, capacity: u64) -> TierStats {
        let hits = self.hits.get();
        let misses = self.misses.get();
        TierStats {
            hits,
            misses,
            hit_rate: hit_rate(hits, misses),
            inserts: self.inserts.get(),
            evictions: self.evictions.get(),
            expirations: self.expirations.get(),
            removals: self.removals.get(),
            corrupt: self.corrupt.get(),
            write_errors: self.write_errors.get(),
            entries,
            bytes,
            capacity,
            degraded: false,
            io_errors: 0,
            index_bytes: 0,
            reserved_bytes: 0,
        }
    }
}

/// A point-in-time view of a tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TierStats {
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
    /// The tier's storage failed (an I/O error) and has not answered since: it is skipped
    /// until it does. The disk tier only.
    pub degraded: bool,
    /// Reads and writes that failed with an I/O error. The disk tier only.
    pub io_errors: u64,
    /// Bytes of process memory the tier's index holds, besides `bytes`. The disk tier
    /// only: its map from key to record and its segments' key lists, which grow with its
    /// entries up to `disk_size`'s worth (the memory tier counts its index in `bytes`).
    pub index_bytes: u64,
    /// Bytes of `capacity` the tier yields to memory held outside it. The memory tier
    /// only: with a disk tier it gives up what the disk tier's index holds (rounded up to
    /// a step), so that `bytes + reserved_bytes <= capacity` bounds both.
    pub reserved_bytes: u64,
}

/// Counters of one model across the tiers.
#[derive(Debug, Default)]
pub struct ModelCounters {
    /// Hits served from memory.
    pub memory_hits: Counter,
    /// Hits served from disk.
    pub disk_hits: Counter,
    /// Hits served from a remote tier.
    pub remote_hits: Counter,
    /// Lookups no tier answered.
    pub misses: Counter,
    /// Values computed and stored.
    pub inserts: Counter,
    /// Callers that waited for another caller's computation of the same key.
    pub coalesced: Counter,
    /// Computations that failed.
    pub compute_errors: Counter,
    /// Values served past their freshness (stale-while-revalidate or stale-if-error).
    pub stale_served: Counter,
    /// Background recomputations of values served stale-while-revalidate.
    pub refreshes: Counter,
    /// Computed values marked not to be stored (handed back, cached nowhere).
    pub not_stored: Counter,
    /// Stored values refused when read because they do not fit the model (an embedding
    /// of another length): served as misses and recomputed, never served.
    pub corrupt: Counter,
}

impl ModelCounters {
    /// A snapshot.
    pub fn snapshot(&self) -> ModelStats {
        let memory_hits = self.memory_hits.get();
        let disk_hits = self.disk_hits.get();
        let remote_hits = self.remote_hits.get();
        let misses = self.misses.get();
        let hits = memory_hits + disk_hits + remote_hits;
        ModelStats {
            hits,
            memory_hits,
            disk_hits,
            remote_hits,
            misses,
            hit_rate: hit_rate(hits, misses),
            inserts: self.inserts.get(),
            coalesced: self.coalesced.get(),
            compute_errors: self.compute_errors.get(),
            stale_served: self.stale_served.get(),
            refreshes: self.refreshes.get(),
            not_stored: self.not_stored.get(),
            corrupt: self.corrupt.get(),
        }
    }
}

/// A point-in-time view of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelStats {
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
    /// Stored values refused when read for not fitting the model, recomputed instead.
    pub corrupt: u64,
}

/// `hits / (hits + misses)`, or 0 with no lookups.
#[expect(clippy::cast_precision_loss, reason = "a ratio for display")]
pub fn hit_rate(hits: u64, misses: u64) -> f64 {
    let total = hits + misses;
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn striped_counter_sums_across_threads() {
        let c = Arc::new(Counter::default());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || (0..10_000).for_each(|_| c.incr()))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.get(), 80_000);
    }

    #[test]
    fn hit_rate_handles_zero() {
        assert!(hit_rate(0, 0).abs() < f64::EPSILON);
        assert!((hit_rate(1, 3) - 0.25).abs() < f64::EPSILON);
    }
}
