//! The default policy: S3-FIFO, on foyer's in-memory cache.
//!
//! S3-FIFO (Yang et al., SOSP 2023) keeps a small FIFO for newcomers, a main FIFO for
//! entries that proved themselves, and a ghost FIFO of recently evicted keys; one-hit
//! wonders leave from the small queue without disturbing the main one, which makes it
//! scan-resistant. We use foyer's implementation with an entry promoted after **two** hits in
//! the small queue (foyer's own benchmark setting; its default is one). With that, it meets
//! or beats ARC on every row of the ARC paper's traces (BENCHMARKS.md).
//!
//! Three things foyer does not do for us, done here:
//! - a value heavier than a shard's budget is refused before it reaches foyer, which would
//!   admit it over capacity;
//! - `clear` uses `evict_all`, because `clear` does not reset foyer's usage counter in
//!   0.22 (foyer-rs/foyer#1309);
//! - foyer cannot iterate, so expired entries are found through a small expiry heap per
//!   stripe, holding only entries that have a TTL.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use foyer_common::event::{Event, EventListener};
use foyer_memory::{Cache, CacheBuilder, S3FifoConfig};
use infercache_core::Digest;
use infercache_core::stats::TierCounters;
use parking_lot::Mutex;

use super::{MemEntry, NEVER, Store, Weigher};
use crate::hash::DigestHasher;

/// Entries promoted from the small to the main queue after this many hits.
const PROMOTE_AFTER_HITS: u8 = 2;
/// Share of the capacity for the small queue (the paper's 10 %).
const SMALL_QUEUE: f64 = 0.1;
/// Ghost keys remembered, relative to the capacity (the paper's 100 %).
const GHOST_QUEUE: f64 = 1.0;
const EXPIRY_STRIPES: usize = 16;

/// Counts evictions; ignores removals and the evictions of a `clear`.
#[derive(Debug)]
struct Listener {
    counters: Arc<TierCounters>,
    clearing: AtomicBool,
}

impl EventListener for Listener {
    type Key = Digest;
    type Value = MemEntry;

    fn on_leave(&self, reason: Event, _key: &Digest, _value: &MemEntry) {
        if matches!(reason, Event::Evict) && !self.clearing.load(Ordering::Relaxed) {
            self.counters.evictions.incr();
        }
    }
}

type ExpiryHeap = BinaryHeap<Reverse<(u64, Digest)>>;

pub(super) struct S3FifoStore {
    cache: Cache<Digest, MemEntry, DigestHasher>,
    listener: Arc<Listener>,
    shard_capacity: u64,
    weigher: Weigher,
    expiries: Box<[Mutex<ExpiryHeap>]>,
}

impl std::fmt::Debug for S3FifoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3FifoStore")
            .field("usage", &self.cache.usage())
            .field("capacity", &self.cache.capacity())
            .field("shards", &self.cache.shards())
            .finish_non_exhaustive()
    }
}

impl S3FifoStore {
    pub(super) fn new(
        capacity: u64,
        shards: usize,
        weigher: Weigher,
        counters: Arc<TierCounters>,
    ) -> Self {
        // foyer splits the capacity evenly over its shards; keep shards useful-sized.
        let mut shards = shards.max(1);
        let unit = match weigher {
            Weigher::Unit => 1,
            Weigher::EncodedSize => 1024,
        };
        while shards > 1 && capacity / (shards as u64) < 64 * unit {
            shards /= 2;
        }
        let listener = Arc::new(Listener {
            counters,
            clearing: AtomicBool::new(false),
        });
        let cache = CacheBuilder::new(usize::try_from(capacity).unwrap_or(usize::MAX))
            .with_shards(shards)
            .with_eviction_config(S3FifoConfig {
                small_queue_capacity_ratio: SMALL_QUEUE,
                ghost_queue_capacity_ratio: GHOST_QUEUE,
                small_to_main_freq_threshold: PROMOTE_AFTER_HITS,
            })
            .with_weighter(move |_k: &Digest, v: &MemEntry| {
                usize::try_from(weigher.weigh(v)).unwrap_or(usize::MAX)
            })
            .with_event_listener(
                Arc::clone(&listener) as Arc<dyn EventListener<Key = Digest, Value = MemEntry>>
            )
            .with_hash_builder(DigestHasher::default())
            .build();
        Self {
            cache,
            listener,
            shard_capacity: capacity / shards as u64,
            weigher,
            expiries: (0..EXPIRY_STRIPES)
                .map(|_| Mutex::new(BinaryHeap::new()))
                .collect(),
        }
    }

    fn expiry_stripe(&self, key: &Digest) -> &Mutex<ExpiryHeap> {
        &self.expiries[usize::from(key.0[31]) % EXPIRY_STRIPES]
    }
}

impl Store for S3FifoStore {
    #[inline]
    fn get(&self, key: &Digest) -> Option<MemEntry> {
        self.cache.get(key).map(|e| e.value().clone())
    }

    #[inline]
    fn insert(&self, key: Digest, entry: MemEntry) {
        if self.weigher.weigh(&entry) > self.shard_capacity {
            // Not admitted, and an older value must not survive it.
            self.cache.remove(&key);
            self.listener.counters.evictions.incr();
            return;
        }
        if entry.expires_ms != NEVER {
            let mut heap = self.expiry_stripe(&key).lock();
            heap.push(Reverse((entry.expires_ms, key)));
            // Keys evicted before they expire leave stale heap items; bound them.
            if heap.len() > 1024 && heap.len() > 4 * self.cache.entries() / EXPIRY_STRIPES {
                heap.retain(|Reverse((_, k))| self.cache.contains(k));
            }
        }
        drop(self.cache.insert(key, entry));
    }

    fn remove(&self, key: &Digest) -> Option<MemEntry> {
        self.cache.remove(key).map(|e| e.value().clone())
    }

    fn clear(&self) {
        self.listener.clearing.store(true, Ordering::Relaxed);
        self.cache.evict_all();
        self.listener.clearing.store(false, Ordering::Relaxed);
        for heap in &*self.expiries {
            heap.lock().clear();
        }
    }

    fn purge_expired(&self, now_ms: u64) -> u64 {
        let mut dropped = 0;
        for heap in &*self.expiries {
            let mut heap = heap.lock();
            while let Some(&Reverse((expires_ms, key))) = heap.peek() {
                if expires_ms > now_ms {
                    break;
                }
                heap.pop();
                // The item is stale if the key was since removed or replaced.
                let current = self
                    .cache
                    .get(&key)
                    .is_some_and(|e| e.value().expires_ms == expires_ms);
                if current && self.cache.remove(&key).is_some() {
                    dropped += 1;
                }
            }
        }
        dropped
    }

    fn len(&self) -> u64 {
        self.cache.entries() as u64
    }

    fn weight(&self) -> u64 {
        self.cache.usage() as u64
    }
}
