//! S3-FIFO, on quick_cache.
//!
//! quick_cache's defaults (hot 97 %, ghost 50 %) are tuned for web workloads; on the ARC
//! traces a 90 % hot queue and ghosts as many as the resident entries do better on every
//! row (BENCHMARKS.md has the sweep).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use infercache_core::Digest;
use infercache_core::stats::TierCounters;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};

use super::{MemEntry, Store, Weigher};
use crate::hash::DigestHasher;

/// Share of the capacity for the hot (main) queue.
const HOT_ALLOCATION: f64 = 0.9;
/// Ghost entries remembered, relative to resident ones.
const GHOST_ALLOCATION: f64 = 1.0;

#[derive(Debug, Clone, Copy)]
struct EntryWeigher(Weigher);

impl Weighter<Digest, MemEntry> for EntryWeigher {
    #[inline]
    fn weight(&self, _key: &Digest, val: &MemEntry) -> u64 {
        self.0.weigh(val)
    }
}

/// Counts evictions (including values too large to be admitted).
#[derive(Debug, Clone)]
struct CountEvictions(Arc<TierCounters>);

impl Lifecycle<Digest, MemEntry> for CountEvictions {
    type RequestState = ();

    #[inline]
    fn on_evict(&self, (): &mut Self::RequestState, _key: Digest, _val: MemEntry) {
        self.0.evictions.incr();
    }
}

type QuickCache = Cache<Digest, MemEntry, EntryWeigher, DigestHasher, CountEvictions>;

#[derive(Debug)]
pub(super) struct QuickStore {
    cache: QuickCache,
}

impl QuickStore {
    pub(super) fn new(
        capacity: u64,
        shards: usize,
        weigher: Weigher,
        counters: Arc<TierCounters>,
    ) -> Self {
        let estimated_items = match weigher {
            Weigher::Unit => capacity,
            // A guess at 1 KiB per entry; quick_cache only uses it to size shards and ghosts.
            Weigher::EncodedSize => (capacity / 1024).max(64),
        };
        let options = OptionsBuilder::new()
            .weight_capacity(capacity)
            .estimated_items_capacity(usize::try_from(estimated_items).unwrap_or(usize::MAX))
            .shards(shards.max(1))
            .hot_allocation(HOT_ALLOCATION)
            .ghost_allocation(GHOST_ALLOCATION)
            .build()
            .expect("quick_cache options are valid by construction (a bug otherwise)");
        Self {
            cache: Cache::with_options(
                options,
                EntryWeigher(weigher),
                DigestHasher::default(),
                CountEvictions(counters),
            ),
        }
    }
}

impl Store for QuickStore {
    #[inline]
    fn get(&self, key: &Digest) -> Option<MemEntry> {
        self.cache.get(key)
    }

    #[inline]
    fn insert(&self, key: Digest, entry: MemEntry) {
        self.cache.insert(key, entry);
    }

    fn remove(&self, key: &Digest) -> Option<MemEntry> {
        self.cache.remove(key).map(|(_, v)| v)
    }

    fn clear(&self) {
        self.cache.clear();
    }

    fn purge_expired(&self, now_ms: u64) -> u64 {
        let dropped = AtomicU64::new(0);
        self.cache.retain(|_, v| {
            let expired = v.is_expired(now_ms);
            if expired {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            !expired
        });
        dropped.into_inner()
    }

    fn len(&self) -> u64 {
        self.cache.len() as u64
    }

    fn weight(&self) -> u64 {
        self.cache.weight()
    }
}
