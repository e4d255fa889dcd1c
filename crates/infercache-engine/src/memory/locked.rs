//! Lock-sharded storage for the policies that keep an ordering under a lock (LRU, LFU,
//! FIFO, random). Each shard holds a [`PolicyMap`] and its own byte budget; a key always
//! lands in the same shard, so per-shard budgets add up to the capacity.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use infercache_core::Digest;
use infercache_core::stats::TierCounters;
use parking_lot::Mutex;

use super::{MemEntry, Policy, Store, Weigher};

/// A map that knows its policy's victim order.
pub(super) trait PolicyMap: Send + fmt::Debug {
    /// The policy this map implements (which fixes what an entry is charged).
    const POLICY: Policy;
    fn new() -> Self;
    /// The entry, recording the access as the policy wants.
    fn get(&mut self, key: &Digest) -> Option<&MemEntry>;
    /// Whether `key` is present, without recording an access.
    fn contains(&self, key: &Digest) -> bool;
    /// Inserts or replaces; returns the old entry.
    fn insert(&mut self, key: Digest, entry: MemEntry) -> Option<MemEntry>;
    fn remove(&mut self, key: &Digest) -> Option<MemEntry>;
    /// Removes and returns the policy's victim.
    fn pop_victim(&mut self) -> Option<(Digest, MemEntry)>;
    /// Keys of the entries for which `pred` holds.
    fn keys_where(&self, pred: &dyn Fn(&Digest, &MemEntry) -> bool) -> Vec<Digest>;
    fn clear(&mut self);
    fn len(&self) -> usize;
}

#[derive(Debug)]
struct Shard<P> {
    map: P,
    weight: u64,
}

/// Shards of a [`PolicyMap`].
#[derive(Debug)]
pub(super) struct Locked<P> {
    shards: Box<[Mutex<Shard<P>>]>,
    /// Each shard's share of the capacity.
    shard_capacity: u64,
    /// Each shard's share of the reservation ([`Store::set_reserved`]).
    reserved_share: AtomicU64,
    mask: u64,
    weigher: Weigher,
    counters: Arc<TierCounters>,
}

impl<P: PolicyMap> Locked<P> {
    pub(super) fn new(
        capacity: u64,
        shards: usize,
        weigher: Weigher,
        counters: Arc<TierCounters>,
    ) -> Self {
        let n = super::shard_count(capacity, shards, weigher);
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    map: P::new(),
                    weight: 0,
                })
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            shards,
            shard_capacity: capacity / n,
            reserved_share: AtomicU64::new(0),
            mask: n - 1,
            weigher,
            counters,
        }
    }

    /// What a shard may hold: its share of the capacity less its share of the
    /// reservation.
    fn limit(&self) -> u64 {
        self.shard_capacity
            .saturating_sub(self.reserved_share.load(Ordering::Relaxed))
    }

    /// What `entry` is charged.
    fn weigh(&self, entry: &MemEntry) -> u64 {
        self.weigher.weigh(P::POLICY, entry.value.len())
    }

    /// Evicts the policy's victims until the shard weighs at most `limit`.
    fn evict_to(&self, shard: &mut Shard<P>, limit: u64) {
        while shard.weight > limit {
            let (_, victim) = shard
                .map
                .pop_victim()
                .expect("a shard over its budget holds entries (a bug otherwise)");
            shard.weight -= self.weigh(&victim);
            self.counters.evictions.incr();
        }
    }

    #[inline]
    fn shard(&self, key: &Digest) -> &Mutex<Shard<P>> {
        // The low bits pick the shard; hash maps inside use the same bits for buckets, which
        // is harmless: a digest's bytes are independent.
        let idx = usize::try_from((key.prefix_u64() >> 48) & self.mask).expect("mask fits usize");
        &self.shards[idx]
    }
}

impl<P: PolicyMap> Store for Locked<P> {
    fn get(&self, key: &Digest) -> Option<MemEntry> {
        self.shard(key).lock().map.get(key).cloned()
    }

    fn insert(&self, key: Digest, entry: MemEntry) {
        let w = self.weigh(&entry);
        let mut shard = self.shard(&key).lock();
        // Read under the lock: a reservation is stored before its pass over the shards.
        let limit = self.limit();
        if w > limit {
            // Too large for any shard: not admitted, and an older value must not survive.
            if let Some(old) = shard.map.remove(&key) {
                shard.weight -= self.weigh(&old);
            }
            self.counters.evictions.incr();
            return;
        }
        if !shard.map.contains(&key) {
            // Make room before admitting a new key, so the newcomer is never its own
            // victim (it would be under LFU, with the lowest count).
            self.evict_to(&mut shard, limit - w);
        }
        if let Some(old) = shard.map.insert(key, entry) {
            shard.weight -= self.weigh(&old);
        }
        shard.weight += w;
        // A replacement may have grown the entry.
        self.evict_to(&mut shard, limit);
    }

    fn remove(&self, key: &Digest) -> Option<MemEntry> {
        let mut shard = self.shard(key).lock();
        let old = shard.map.remove(key)?;
        shard.weight -= self.weigh(&old);
        Some(old)
    }

    fn clear(&self) {
        for s in &*self.shards {
            let mut s = s.lock();
            s.map.clear();
            s.weight = 0;
        }
    }

    fn purge_expired(&self, now_ms: u64) -> u64 {
        let mut dropped = 0;
        for s in &*self.shards {
            let mut s = s.lock();
            for key in s.map.keys_where(&|_, e| e.is_expired(now_ms)) {
                if let Some(old) = s.map.remove(&key) {
                    s.weight -= self.weigh(&old);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().map.len() as u64).sum()
    }

    fn weight(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().weight).sum()
    }

    fn set_reserved(&self, bytes: u64) {
        let share = bytes.div_ceil(self.shards.len() as u64);
        self.reserved_share.store(share, Ordering::Relaxed);
        let limit = self.limit();
        for shard in &*self.shards {
            self.evict_to(&mut shard.lock(), limit);
        }
    }
}
