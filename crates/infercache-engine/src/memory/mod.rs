//! The memory tier: a byte-bounded concurrent map with a selectable eviction policy.
//!
//! Values are weighed by the bytes the process holds for them ([`Weigher::EncodedSize`],
//! see [`charge`]) unless unit weights are asked for (trace replay). Every policy keeps
//! `weight <= capacity - reserved` after every operation, where `reserved` is what the
//! tier gives up to memory held outside it ([`MemoryTier::reserve`]: the disk tier's
//! index, which the tiered cache charges to the same budget).
//!
//! # What an entry costs, and what it is charged
//!
//! The tier stores its own exactly sized copy of every value, so a value that is a slice of
//! a larger buffer (a response body, a disk read) never keeps that buffer alive, and what
//! the tier charges is what it holds: the value's heap block as the allocator sizes it
//! ([`heap_block`], jemalloc's size classes), the header `Bytes` allocates when a stored value is first shared
//! ([`SHARED_HEADER`]), and the policy's own per-entry bytes (its slot, its share of the
//! hash table and queues). For the default policy that is 1,661 bytes for a 1,536-byte
//! embedding, and the process grows by about as much (BENCHMARKS.md, "Memory per entry";
//! `examples/memory_per_entry.rs` measures it).
//!
//! | policy | backend | notes |
//! |---|---|---|
//! | `s3fifo` (default) | foyer-memory's S3-FIFO | scan-resistant; promotion after two hits |
//! | `lru` | the `lru` crate, under our sharded byte budget | exact LRU (reproduces the published LRU hit ratios) |
//! | `lfu` | hand-written | least-frequently-used, ties broken by recency |
//! | `fifo` | hashlink's ordered map | first in, first out |
//! | `random` | hand-written | uniform random victim |
//!
//! The default was chosen by measurement (BENCHMARKS.md): on the ARC paper's traces it
//! meets or beats ARC on every row, and it is the fastest under concurrency.
//!
//! Expiry is checked on every read (an expired entry is never returned) and expired entries
//! are reclaimed by [`MemoryTier::purge_expired`], which the tiered cache runs on its
//! cleanup interval.

mod fifo;
mod lfu;
mod locked;
mod lru;
mod random;
mod s3fifo;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use infercache_core::stats::{TierCounters, TierStats};
use infercache_core::{Digest, SharedClock};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Expiry meaning "never".
pub const NEVER: u64 = u64::MAX;

/// Bytes the allocator takes for a block of `len` bytes: the size class jemalloc (the
/// `infercache` binary's global allocator) rounds the request up to, with no header. Its
/// classes are 8 and 16, the multiples of 16 up to 128, then four per power of two (160,
/// 192, 224, 256, 320, ... up to 14 KiB), so a 1,536-byte embedding takes 1,536 bytes and
/// the built-in model's 1,540-byte one (the vector and its token count) 1,792; a larger
/// block is charged the pages it fills. An empty value takes no block.
///
/// Written out because jemalloc tells its classes only at run time (`nallocx`) and the
/// charge is a `const` the policies fold into their per-entry bytes; the memory accounting
/// test (`tests/memory_accounting.rs`) runs under jemalloc and compares the charges with
/// the resident set.
pub const fn heap_block(len: usize) -> u64 {
    let len = len as u64;
    match len {
        0 => 0,
        1..=8 => 8,
        9..=128 => len.next_multiple_of(16),
        // Small classes: four between consecutive powers of two, up to 14 KiB.
        129..=SMALL_MAX => len.next_multiple_of(len.next_power_of_two() / 8),
        // A large block is whole pages of its own, and only the pages the value fills are
        // touched: those are what the process holds.
        _ => len.next_multiple_of(PAGE),
    }
}

/// jemalloc's largest small size class (with 4 KiB pages); larger blocks are page runs.
const SMALL_MAX: u64 = 14 * 1024;
/// The page size of every Linux target this runs on.
const PAGE: u64 = 4096;

/// A hash table's bytes per entry for buckets of `bucket` bytes: hashbrown (behind std's
/// `HashMap` and every map here) adds a control byte per bucket and keeps between 7/16 and
/// 7/8 of its buckets full; charged at two thirds full, the middle of that range.
pub(crate) const fn table_bytes(bucket: usize) -> u64 {
    (bucket as u64 + 1) * 3 / 2
}

/// The block `Bytes` allocates for its reference count (a 24-byte header) when a stored
/// value is first cloned, which every hit does.
pub const SHARED_HEADER: u64 = heap_block(24);

/// Bytes the tier charges, with the default weigher, for one entry of `value_len` bytes
/// under `policy`: the value's heap block, its shared header and the policy's per-entry
/// bytes.
pub const fn charge(policy: Policy, value_len: usize) -> u64 {
    let value = if value_len == 0 {
        0
    } else {
        heap_block(value_len) + SHARED_HEADER
    };
    value + policy.entry_bytes()
}

/// One cached value and its timestamps (ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemEntry {
    /// The value.
    pub value: Bytes,
    /// When the value was computed.
    pub created_ms: u64,
    /// When it expires; [`NEVER`] for no expiry.
    pub expires_ms: u64,
}

impl MemEntry {
    /// Whether the entry has expired at `now_ms`.
    #[inline]
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }
}

/// An eviction policy, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Scan-resistant S3-FIFO (the default).
    #[default]
    S3fifo,
    /// Exact least-recently-used.
    Lru,
    /// Least-frequently-used.
    Lfu,
    /// First in, first out.
    Fifo,
    /// Uniformly random victim.
    Random,
}

impl Policy {
    /// Every policy, default first.
    pub const ALL: [Policy; 5] = [
        Policy::S3fifo,
        Policy::Lru,
        Policy::Lfu,
        Policy::Fifo,
        Policy::Random,
    ];

    /// Bytes the policy keeps per entry besides the value: its slot (key, value handle,
    /// timestamps, bookkeeping) and its share of the hash table and queues.
    const fn entry_bytes(self) -> u64 {
        match self {
            Policy::S3fifo => s3fifo::ENTRY_BYTES,
            Policy::Lru => lru::ENTRY_BYTES,
            Policy::Lfu => lfu::ENTRY_BYTES,
            Policy::Fifo => fifo::ENTRY_BYTES,
            Policy::Random => random::ENTRY_BYTES,
        }
    }

    /// The policy's name as written in config.
    pub fn name(self) -> &'static str {
        match self {
            Policy::S3fifo => "s3fifo",
            Policy::Lru => "lru",
            Policy::Lfu => "lfu",
            Policy::Fifo => "fifo",
            Policy::Random => "random",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown policy name.
#[derive(Debug, thiserror::Error)]
#[error("unknown eviction policy {0:?}; expected one of s3fifo, lru, lfu, fifo, random")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| {
                p.name().eq_ignore_ascii_case(s)
                    || (s.eq_ignore_ascii_case("default") && *p == Policy::default())
            })
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// How entries are weighed against the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weigher {
    /// The bytes the process holds for the entry, see [`charge`] (the default).
    #[default]
    EncodedSize,
    /// Every entry weighs 1; the capacity is an entry count (trace replay).
    Unit,
}

impl Weigher {
    /// The weight of an entry of `value_len` bytes under `policy`.
    #[inline]
    pub fn weigh(self, policy: Policy, value_len: usize) -> u64 {
        match self {
            Weigher::EncodedSize => charge(policy, value_len),
            Weigher::Unit => 1,
        }
    }
}

/// Configuration of a memory tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryConfig {
    /// Capacity in weight units (bytes with [`Weigher::EncodedSize`]).
    pub capacity: u64,
    /// Eviction policy. Default: [`Policy::S3fifo`].
    pub policy: Policy,
    /// Weigher. Default: [`Weigher::EncodedSize`].
    pub weigher: Weigher,
    /// Lock shards; `None` picks from the core count. Exact LRU hit ratios need 1.
    pub shards: Option<usize>,
}

impl MemoryConfig {
    /// A byte-bounded tier with the default policy.
    pub fn bytes(capacity: u64) -> Self {
        Self {
            capacity,
            policy: Policy::default(),
            weigher: Weigher::EncodedSize,
            shards: None,
        }
    }
}

/// The storage behind a policy. Implementations keep `weight() <= capacity` after every
/// call and report each entry they drop to make room through `evicted`.
pub(crate) trait Store: Send + Sync + fmt::Debug {
    fn get(&self, key: &Digest) -> Option<MemEntry>;
    fn insert(&self, key: Digest, entry: MemEntry);
    fn remove(&self, key: &Digest) -> Option<MemEntry>;
    fn clear(&self);
    /// Drops the entries expired at `now_ms`; returns how many.
    fn purge_expired(&self, now_ms: u64) -> u64;
    fn len(&self) -> u64;
    fn weight(&self) -> u64;
    /// Gives `bytes` of the capacity to memory held outside the tier and evicts down to
    /// what is left at once; later calls replace the reservation (0 gives it all back).
    fn set_reserved(&self, bytes: u64);
}

/// The store behind the tier: the default policy is called directly (so its hit path
/// inlines into [`MemoryTier::get`]), the others through the trait.
#[derive(Debug)]
enum Backend {
    S3fifo(s3fifo::S3FifoStore),
    Other(Box<dyn Store>),
}

impl std::ops::Deref for Backend {
    type Target = dyn Store;

    #[inline]
    fn deref(&self) -> &Self::Target {
        match self {
            Backend::S3fifo(s) => s,
            Backend::Other(s) => &**s,
        }
    }
}

/// The memory tier.
#[derive(Debug)]
pub struct MemoryTier {
    store: Backend,
    counters: Arc<TierCounters>,
    clock: SharedClock,
    config: MemoryConfig,
    /// Bytes of the capacity given to memory held outside the tier ([`MemoryTier::reserve`]).
    reserved: Mutex<u64>,
}

/// A reservation moves in steps of this share of the capacity (rounded up), so that the
/// shards are walked only when it changes by a step: 256 KiB for the default 256 MiB.
const RESERVE_STEPS: u64 = 1024;
/// The smallest step.
const MIN_RESERVE_STEP: u64 = 4096;

impl MemoryTier {
    /// A tier with `config`, reading time from `clock`.
    pub fn new(config: MemoryConfig, clock: SharedClock) -> Self {
        let counters = Arc::new(TierCounters::default());
        let shards = config.shards.unwrap_or_else(default_shards);
        let store = match config.policy {
            Policy::S3fifo => Backend::S3fifo(s3fifo::S3FifoStore::new(
                config.capacity,
                shards,
                config.weigher,
                Arc::clone(&counters),
            )),
            Policy::Lru => Backend::Other(Box::new(locked::Locked::<lru::Lru>::new(
                config.capacity,
                shards,
                config.weigher,
                Arc::clone(&counters),
            ))),
            Policy::Lfu => Backend::Other(Box::new(locked::Locked::<lfu::Lfu>::new(
                config.capacity,
                shards,
                config.weigher,
                Arc::clone(&counters),
            ))),
            Policy::Fifo => Backend::Other(Box::new(locked::Locked::<fifo::Fifo>::new(
                config.capacity,
                shards,
                config.weigher,
                Arc::clone(&counters),
            ))),
            Policy::Random => Backend::Other(Box::new(locked::Locked::<random::Random>::new(
                config.capacity,
                shards,
                config.weigher,
                Arc::clone(&counters),
            ))),
        };
        Self {
            store,
            counters,
            clock,
            config,
            reserved: Mutex::new(0),
        }
    }

    /// Gives up `bytes` of the tier's capacity to memory the process holds outside it, so
    /// that the tier and that memory together stay within the capacity: the tiered cache
    /// reserves what the disk tier's index holds. Rounded up to a step of the capacity
    /// (1/1024 of it, at least 4 KiB) and capped at the whole capacity; a larger reservation evicts
    /// at once. Under unit weights (a capacity in entries) it does nothing.
    pub fn reserve(&self, bytes: u64) {
        if self.config.weigher == Weigher::Unit {
            return;
        }
        let step = (self.config.capacity / RESERVE_STEPS).max(MIN_RESERVE_STEP);
        let rounded = bytes
            .div_ceil(step)
            .saturating_mul(step)
            .min(self.config.capacity);
        let mut reserved = self.reserved.lock();
        if *reserved != rounded {
            *reserved = rounded;
            self.store.set_reserved(rounded);
        }
    }

    /// Bytes of the capacity reserved for memory outside the tier.
    pub fn reserved(&self) -> u64 {
        *self.reserved.lock()
    }

    /// The live entry for `key`; an expired entry is removed, counted and not returned.
    #[inline]
    pub fn get(&self, key: &Digest) -> Option<MemEntry> {
        let found = match &self.store {
            Backend::S3fifo(s) => s.get(key),
            Backend::Other(s) => s.get(key),
        };
        match found {
            // Entries without a TTL skip the clock read: the common hit pays no syscall.
            Some(e) if e.expires_ms == NEVER || !e.is_expired(self.clock.now_ms()) => {
                self.counters.hits.incr();
                Some(e)
            }
            Some(_) => {
                self.store.remove(key);
                self.counters.expirations.incr();
                self.counters.misses.incr();
                None
            }
            None => {
                self.counters.misses.incr();
                None
            }
        }
    }

    /// Counts a hit of an entry read with [`MemoryTier::get_quiet`] and then served.
    pub(crate) fn count_hit(&self) {
        self.counters.hits.incr();
    }

    /// Like [`MemoryTier::get`] but leaves the hit and miss counters alone (a re-check).
    pub(crate) fn get_quiet(&self, key: &Digest) -> Option<MemEntry> {
        self.store
            .get(key)
            .filter(|e| !e.is_expired(self.clock.now_ms()))
    }

    /// Stores a copy of `entry` under `key`, replacing any previous value. The value is
    /// copied into a block of its own exact size (see the module docs).
    #[inline]
    pub fn insert(&self, key: Digest, entry: MemEntry) {
        self.counters.inserts.incr();
        let entry = MemEntry {
            value: Bytes::copy_from_slice(&entry.value),
            ..entry
        };
        match &self.store {
            Backend::S3fifo(s) => s.insert(key, entry),
            Backend::Other(s) => s.insert(key, entry),
        }
    }

    /// Removes `key`; whether it was present.
    pub fn remove(&self, key: &Digest) -> bool {
        let removed = self.store.remove(key).is_some();
        if removed {
            self.counters.removals.incr();
        }
        removed
    }

    /// Removes everything.
    pub fn clear(&self) {
        self.store.clear();
    }

    /// Drops every expired entry; returns how many.
    pub fn purge_expired(&self) -> u64 {
        let now = self.clock.now_ms();
        let dropped = self.store.purge_expired(now);
        self.counters.expirations.add(dropped);
        dropped
    }

    /// Live entries (expired ones not yet reclaimed included).
    pub fn entries(&self) -> u64 {
        self.store.len()
    }

    /// Weight in use (bytes with the default weigher).
    pub fn weight(&self) -> u64 {
        self.store.weight()
    }

    /// The configuration.
    pub fn config(&self) -> &MemoryConfig {
        &self.config
    }

    /// Counters and gauges.
    pub fn stats(&self) -> TierStats {
        TierStats {
            reserved_bytes: self.reserved(),
            ..self
                .counters
                .snapshot(self.entries(), self.weight(), self.config.capacity)
        }
    }
}

/// How many shards to split `capacity` into: `requested` rounded up to a power of two (so
/// a shard is a mask of the hash), then halved until each shard holds at least 64 typical
/// entries.
pub(crate) fn shard_count(capacity: u64, requested: usize, weigher: Weigher) -> u64 {
    let typical_entry = match weigher {
        Weigher::Unit => 1,
        Weigher::EncodedSize => 1024,
    };
    let mut n = requested.max(1).next_power_of_two() as u64;
    while n > 1 && capacity / n < 64 * typical_entry {
        n /= 2;
    }
    n
}

/// Four shards per core.
fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get() * 4)
}

#[cfg(test)]
mod tests;
