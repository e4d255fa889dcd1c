//! The memory tier (`memory_size`): decoded shards held in this process's memory, in
//! front of the memory-mapped shard files, charged by their bytes and evicted by the
//! dataset policy.
//!
//! A shard enters when a stream reads it from the store (verified, as every read is): its
//! bytes are copied into an anonymous mapping of exactly their length and decoded in place,
//! so the tier's charge is the memory it holds, and an evicted shard's memory returns to
//! the system as soon as its last batch is dropped (an anonymous mapping is unmapped on
//! drop, where freed heap could stay in the process's RSS). A shard larger than the cap
//! never enters. Entries are named by the shard's content digest, so an entry can never
//! be stale: it is the verified bytes of that digest.
//!
//! Eviction follows the dataset's [`Policy`]: `lru` (least recently read first), `fifo`,
//! `size` (largest first), and `time`, which expires an entry `max_age` after its blob
//! was inserted into the store, exactly when the store stops serving it. An insert that
//! would take the tier over its cap first evicts down to `eviction_threshold × cap`, the
//! new shard included. Reads from the tier do not refresh the blob's recency on disk.
//!
//! Written here rather than taken from a cache crate: the tier needs the dataset's four
//! policies over byte-charged entries, which the maintained crates (`moka`,
//! `quick_cache`) do not offer (they evict by TinyLFU or CLOCK variants only).
//!
//! One std mutex guards the tier: it is taken once per shard a stream opens (not per
//! batch) and never held across I/O.

use std::collections::HashMap;
use std::sync::Mutex;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use infercache_artifact::{Blob, Digest, Policy};
use infercache_core::SharedClock;
use serde::Serialize;

use crate::DatasetError;
use crate::error::io_err;
use crate::shard;

/// What the memory tier holds and has done, as [`DatasetCache::memory`](crate::DatasetCache::memory)
/// reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    /// Its cap in bytes (`memory_size`; 0 turns the tier off).
    pub cap: u64,
    /// Bytes of shards it holds now (never above `cap`).
    pub bytes: u64,
    /// Shards it holds now.
    pub shards: u64,
    /// Shard reads it served.
    pub hits: u64,
    /// Shard reads it did not hold (read from the store).
    pub misses: u64,
    /// Shards it took in.
    pub inserted: u64,
    /// Shards it evicted (to make room, or expired).
    pub evicted: u64,
}

#[derive(Debug)]
struct Entry {
    rows: RecordBatch,
    bytes: u64,
    /// Logical times (a counter), so the order is exact however fast the reads come.
    inserted: u64,
    used: u64,
    /// When the blob was inserted into the store (for `time`).
    stored_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Digest, Entry>,
    tick: u64,
    stats: MemoryStats,
}

/// The tier. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct MemoryTier {
    cap: u64,
    low_water: u64,
    policy: Policy,
    clock: SharedClock,
    state: Mutex<State>,
}

impl MemoryTier {
    pub(crate) fn new(
        cap: u64,
        policy: Policy,
        eviction_threshold: f64,
        clock: SharedClock,
    ) -> Self {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a fraction in (0, 1] of a byte count"
        )]
        let low_water = ((cap as f64 * eviction_threshold) as u64).min(cap);
        Self {
            cap,
            low_water,
            policy,
            clock,
            state: Mutex::new(State {
                stats: MemoryStats {
                    cap,
                    ..MemoryStats::default()
                },
                ..State::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory tier lock poisoned")
    }

    fn expired(&self, stored_ms: u64, now_ms: u64) -> bool {
        match self.policy {
            Policy::Time { max_age } => {
                let max_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
                now_ms.saturating_sub(stored_ms) >= max_ms
            }
            _ => false,
        }
    }

    /// The decoded shard `digest`, if the tier holds it (and `time` has not expired it).
    pub(crate) fn get(&self, digest: &Digest) -> Option<RecordBatch> {
        if self.cap == 0 {
            return None;
        }
        let now_ms = self.clock.now_ms();
        let mut guard = self.state();
        let state = &mut *guard;
        state.tick += 1;
        let tick = state.tick;
        let expired = match state.entries.get_mut(digest) {
            None => {
                state.stats.misses += 1;
                return None;
            }
            Some(e) if self.expired(e.stored_ms, now_ms) => true,
            Some(e) => {
                e.used = tick;
                state.stats.hits += 1;
                return Some(e.rows.clone());
            }
        };
        debug_assert!(expired);
        Self::take(state, digest);
        state.stats.evicted += 1;
        state.stats.misses += 1;
        None
    }

    /// Copies the verified `blob` into memory and decodes it: the shard's rows, and, if
    /// the tier has room for them (by its policy), the tier keeps them too. `None` if the
    /// tier is off or the shard is larger than its cap: read it from the mapping instead.
    pub(crate) fn load(
        &self,
        blob: &Blob,
        validated: &shard::Validated,
    ) -> Result<Option<(RecordBatch, shard::Decoded)>, DatasetError> {
        let bytes = blob.len();
        if self.cap == 0 || bytes > self.cap || bytes == 0 {
            return Ok(None);
        }
        let len = usize::try_from(bytes).expect("a blob that fits in the cap fits in memory");
        let mut map = memmap2::MmapMut::map_anon(len).map_err(io_err(blob.path()))?;
        std::os::unix::fs::FileExt::read_exact_at(blob.file(), &mut map, 0)
            .map_err(io_err(blob.path()))?;
        let map = map.make_read_only().map_err(io_err(blob.path()))?;
        let buffer = Buffer::from(bytes::Bytes::from_owner(map));
        let (batches, decoded) = shard::decode_shard(blob.digest(), &buffer, validated)?;
        let rows = shard::one_batch(batches, &blob.digest())?;
        Ok(Some((
            self.insert(blob.digest(), rows, bytes, blob.inserted_ms()),
            decoded,
        )))
    }

    /// Takes `rows` in if the policy makes room; returns the rows to serve: the tier's
    /// own if another stream put the same shard in first (so one copy is held, not two).
    fn insert(&self, digest: Digest, rows: RecordBatch, bytes: u64, stored_ms: u64) -> RecordBatch {
        let now_ms = self.clock.now_ms();
        if bytes > self.cap || self.expired(stored_ms, now_ms) {
            return rows;
        }
        let mut guard = self.state();
        let state = &mut *guard;
        if let Some(e) = state.entries.get(&digest) {
            return e.rows.clone();
        }
        let stale: Vec<Digest> = state
            .entries
            .iter()
            .filter(|(_, e)| self.expired(e.stored_ms, now_ms))
            .map(|(d, _)| *d)
            .collect();
        for d in &stale {
            Self::take(state, d);
            state.stats.evicted += 1;
        }
        if state.stats.bytes + bytes > self.cap {
            while state.stats.bytes + bytes > self.low_water {
                let Some(victim) = self.victim(state) else {
                    break;
                };
                Self::take(state, &victim);
                state.stats.evicted += 1;
            }
        }
        if state.stats.bytes + bytes > self.cap {
            return rows;
        }
        state.tick += 1;
        state.entries.insert(
            digest,
            Entry {
                rows: rows.clone(),
                bytes,
                inserted: state.tick,
                used: state.tick,
                stored_ms,
            },
        );
        state.stats.bytes += bytes;
        state.stats.shards += 1;
        state.stats.inserted += 1;
        rows
    }

    /// The entry the policy evicts first.
    fn victim(&self, state: &State) -> Option<Digest> {
        let entries = state.entries.iter();
        let first = match self.policy {
            Policy::Lru => entries.min_by_key(|(_, e)| e.used),
            Policy::Fifo | Policy::Time { .. } => entries.min_by_key(|(_, e)| e.inserted),
            Policy::Size => entries.min_by_key(|(_, e)| (std::cmp::Reverse(e.bytes), e.inserted)),
        };
        first.map(|(d, _)| *d)
    }

    fn take(state: &mut State, digest: &Digest) {
        if let Some(e) = state.entries.remove(digest) {
            state.stats.bytes -= e.bytes;
            state.stats.shards -= 1;
        }
    }

    /// Drops the shard `digest` (its dataset was removed).
    pub(crate) fn remove(&self, digest: &Digest) {
        Self::take(&mut self.state(), digest);
    }

    /// Drops every shard.
    pub(crate) fn clear(&self) {
        let mut state = self.state();
        state.entries.clear();
        state.stats.bytes = 0;
        state.stats.shards = 0;
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        self.state().stats
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow_array::Int64Array;
    use infercache_core::ManualClock;

    use super::*;

    fn rows(n: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(vec![n])) as _)]).unwrap()
    }

    fn d(n: u8) -> Digest {
        Digest::Blake3([n; 32])
    }

    fn held(t: &MemoryTier) -> Vec<u8> {
        let mut v: Vec<u8> = t.state().entries.keys().map(|d| d.bytes()[0]).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn each_policy_evicts_in_its_order_and_the_charge_stays_under_the_cap() {
        let clock = ManualClock::new(0);
        let tier = |policy| MemoryTier::new(100, policy, 1.0, clock.clone());
        // lru: 1 was read after 2 was inserted, so 2 goes.
        let t = tier(Policy::Lru);
        t.insert(d(1), rows(1), 40, 0);
        t.insert(d(2), rows(2), 40, 0);
        assert!(t.get(&d(1)).is_some());
        t.insert(d(3), rows(3), 40, 0);
        assert_eq!(held(&t), [1, 3]);
        // fifo: reads change nothing.
        let t = tier(Policy::Fifo);
        t.insert(d(1), rows(1), 40, 0);
        t.insert(d(2), rows(2), 40, 0);
        assert!(t.get(&d(1)).is_some());
        t.insert(d(3), rows(3), 40, 0);
        assert_eq!(held(&t), [2, 3]);
        // size: the largest goes.
        let t = tier(Policy::Size);
        t.insert(d(1), rows(1), 30, 0);
        t.insert(d(2), rows(2), 60, 0);
        t.insert(d(3), rows(3), 20, 0);
        assert_eq!(held(&t), [1, 3]);
        assert_eq!(t.stats().bytes, 50);
        // Larger than the cap: never taken in.
        t.insert(d(4), rows(4), 101, 0);
        assert_eq!(held(&t), [1, 3]);
        assert!(t.stats().bytes <= 100);
    }

    #[test]
    fn a_shard_put_in_twice_is_held_and_charged_once() {
        let t = MemoryTier::new(100, Policy::Lru, 0.9, ManualClock::new(0));
        assert_eq!(t.insert(d(1), rows(1), 40, 0), rows(1));
        // A second stream's copy of the same digest: the tier's own is served.
        assert_eq!(t.insert(d(1), rows(7), 40, 0), rows(1));
        assert_eq!((t.stats().shards, t.stats().bytes), (1, 40));
    }

    #[test]
    fn time_expires_an_entry_when_the_store_expires_its_blob() {
        let clock = ManualClock::new(1_000);
        let policy = Policy::Time {
            max_age: Duration::from_secs(10),
        };
        let t = MemoryTier::new(100, policy, 0.9, clock.clone());
        // Stored at 500 ms: it expires at 10,500 ms, whenever it entered the tier.
        t.insert(d(1), rows(1), 10, 500);
        clock.advance(Duration::from_millis(9_499));
        assert!(t.get(&d(1)).is_some());
        clock.advance(Duration::from_millis(1));
        assert!(t.get(&d(1)).is_none());
        assert_eq!(t.stats().bytes, 0);
        // An already expired blob never enters.
        t.insert(d(2), rows(2), 10, 0);
        assert_eq!(t.stats().shards, 0);
    }

    #[test]
    fn eviction_goes_down_to_the_threshold_and_a_cap_of_zero_holds_nothing() {
        let clock = ManualClock::new(0);
        let t = MemoryTier::new(100, Policy::Fifo, 0.5, clock.clone());
        for n in 1..=4 {
            t.insert(d(n), rows(n.into()), 25, 0);
        }
        assert_eq!(held(&t), [1, 2, 3, 4]);
        // 125 > 100: evict until the new one fits within 50.
        t.insert(d(5), rows(5), 25, 0);
        assert_eq!(held(&t), [4, 5]);
        let off = MemoryTier::new(0, Policy::Lru, 0.9, clock);
        off.insert(d(1), rows(1), 1, 0);
        assert!(off.get(&d(1)).is_none());
        assert_eq!(off.stats(), MemoryStats::default());
    }
}
