//! The default policy: S3-FIFO (Yang et al., "FIFO queues are all you need for cache
//! eviction", SOSP 2023), written for this tier's read path.
//!
//! A small FIFO takes newcomers, a main FIFO keeps entries that proved themselves, and a
//! ghost FIFO remembers the keys recently evicted from the small queue. One-hit wonders
//! leave from the small queue without disturbing the main one, which makes the policy
//! scan-resistant. The parameters are foyer's S3-FIFO with promotion after **two** hits
//! (the setting foyer's own benchmarks use): small queue 10 % of the capacity, ghost
//! queue 100 %, frequencies capped at 3. With them the policy meets or beats ARC on every
//! row of the ARC paper's traces (BENCHMARKS.md).
//!
//! # Why hand-written
//!
//! The two crates we measured each miss one of our targets: foyer-memory's S3-FIFO has the
//! hit ratios but runs at about twice quick_cache's cost per operation, and quick_cache's
//! S3-FIFO-like policy is fast but falls short of ARC on OLTP at 5,000 entries under every
//! setting it offers (BENCHMARKS.md has both measurements). This is the same algorithm as
//! foyer's, laid out like quick_cache's: per shard, a `RwLock` over a hash table of slot
//! indices (hashbrown's `HashTable`, so a lookup touches the table and the slot, nothing
//! else), an arena of slots and two `VecDeque`s of slot indices. A hit takes the read lock, bumps the
//! slot's frequency with a relaxed atomic and clones the value; every other operation takes
//! the write lock.
//!
//! A slot is in exactly one queue position while it holds an entry. A replaced value is
//! written into its slot in place. An evicted slot is free at once (its queue item was just
//! popped); a removed or purged one is marked free and reclaimed when its queue item comes
//! up, or when such items exceed an eighth of the live ones and the queues are compacted.
//! Reclaimed slots are reused by later inserts.
//!
//! # Memory per entry
//!
//! A slot is 80 bytes: the full 32-byte key (every lookup compares it, so a hash collision
//! can never serve another key's value), the value's `Bytes` handle (32), the two
//! timestamps in 48 bits each (milliseconds until the year 10889), the frequency and the
//! queue. Add a 4-byte queue item and a 4-byte table bucket with its control byte, at the
//! tables' load: [`ENTRY_BYTES`] charges 93 bytes per entry on top of the value's block and
//! its reference count ([`super::charge`]). The ghost's memory is charged too, as allocated:
//! a key takes an 8-byte ring item and a 4-byte fingerprint with its control byte in a
//! table, about 20 bytes with both at their average load.
//! A removed entry's slot is reused, not returned to the allocator, and not charged.

use std::collections::VecDeque;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use infercache_core::Digest;
use infercache_core::stats::TierCounters;
use parking_lot::RwLock;

use super::{MemEntry, NEVER, Policy, Store, Weigher};

/// Entries move from the small to the main queue after this many hits.
const PROMOTE_AFTER_HITS: u8 = 2;
/// Frequencies saturate here.
const MAX_FREQUENCY: u8 = 3;
/// Share of the capacity for the small queue (the paper's 10 %).
const SMALL_QUEUE: f64 = 0.1;
/// Weight of ghost keys remembered, relative to the capacity (the paper's 100 %).
const GHOST_QUEUE: f64 = 1.0;

/// Bytes per entry besides the value: the slot, its queue item (a `u32`, with the ring's
/// growth slack) and its bucket in the shard's table.
pub(super) const ENTRY_BYTES: u64 =
    size_of::<Slot>() as u64 + size_of::<u32>() as u64 * 3 / 2 + super::table_bytes(4);

const _: () = assert!(
    size_of::<Slot>() == 80,
    "a slot grew: recheck ENTRY_BYTES and the docs"
);

/// Where a slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Small,
    Main,
    /// Holds nothing; its queue item, if any, is stale.
    Free,
}

/// A timestamp in milliseconds since the Unix epoch, in 48 bits; [`NEVER`] and anything
/// from the year 10889 on are stored as the all-ones value, which reads back as [`NEVER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Millis48([u8; 6]);

impl Millis48 {
    const MAX: u64 = (1 << 48) - 1;

    fn new(ms: u64) -> Self {
        let b = ms.min(Self::MAX).to_le_bytes();
        Self([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    #[inline]
    fn get(self) -> u64 {
        let [a, b, c, d, e, f] = self.0;
        match u64::from_le_bytes([a, b, c, d, e, f, 0, 0]) {
            Self::MAX => NEVER,
            ms => ms,
        }
    }
}

#[derive(Debug)]
struct Slot {
    key: Digest,
    value: Bytes,
    created: Millis48,
    expires: Millis48,
    frequency: AtomicU8,
    state: State,
}

impl Slot {
    #[inline]
    fn entry(&self) -> MemEntry {
        MemEntry {
            value: self.value.clone(),
            created_ms: self.created.get(),
            expires_ms: self.expires.get(),
        }
    }

    fn set(&mut self, entry: MemEntry) {
        self.value = entry.value;
        self.created = Millis48::new(entry.created_ms);
        self.expires = Millis48::new(entry.expires_ms);
        self.frequency.store(0, Ordering::Relaxed);
    }
}

/// Keys recently evicted from the small queue, bounded by weight.
///
/// A key is remembered by a 32-bit fingerprint of its digest: a ring of items (the
/// fingerprint and the evicted entry's weight in one `u64`) keeps the order, and a hash
/// table of fingerprints answers membership. Two keys that share a fingerprint (about one
/// pair in 2^32) only make one of them skip the small queue, or leave the ghost early;
/// the ghost never serves a value. What it holds is both allocations, charged whole
/// ([`Ghost::bytes`]): the ring wraps as it turns over, and a table's buckets are written
/// all over, so all of each is resident once the ghost has filled.
#[derive(Debug, Default)]
struct Ghost {
    members: HashTable<u32>,
    order: VecDeque<u64>,
    weight: u64,
    capacity: u64,
}

impl Ghost {
    /// The fingerprint a key is remembered by: the low half of its digest's prefix (the
    /// shard is picked by bits above it, so within a shard all 32 bits vary).
    fn fingerprint(hash: u64) -> u32 {
        u32::try_from(hash & u64::from(u32::MAX)).expect("masked to 32 bits")
    }

    /// The ghost table's hash of a fingerprint, spread over all 64 bits (hashbrown takes
    /// its bucket from the low bits and its tag from the top seven).
    fn spread(fingerprint: u32) -> u64 {
        u64::from(fingerprint).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn contains(&self, hash: u64) -> bool {
        let fp = Self::fingerprint(hash);
        self.members.find(Self::spread(fp), |&m| m == fp).is_some()
    }

    /// Bytes the ghost holds: its ring's and its table's allocations.
    fn bytes(&self) -> u64 {
        let ring = self.order.capacity() * size_of::<u64>();
        super::heap_block(ring) + super::heap_block(self.members.allocation_size())
    }

    fn push(&mut self, hash: u64, weight: u64) {
        if self.capacity == 0 {
            return;
        }
        // Weights past 4 GiB are remembered as 4 GiB, on the way in and out alike.
        let weight = weight.min(u64::from(u32::MAX));
        while self.weight + weight > self.capacity && self.weight > 0 {
            self.pop();
        }
        let fp = Self::fingerprint(hash);
        self.order.push_back(u64::from(fp) << 32 | weight);
        if let Entry::Vacant(slot) =
            self.members
                .entry(Self::spread(fp), |&m| m == fp, |&m| Self::spread(m))
        {
            slot.insert(fp);
        }
        self.weight += weight;
    }

    /// Forgets the oldest key; `false` if there is none.
    fn pop(&mut self) -> bool {
        let Some(item) = self.order.pop_front() else {
            return false;
        };
        let fp = u32::try_from(item >> 32).expect("the high 32 bits fit");
        self.weight -= item & u64::from(u32::MAX);
        if let Ok(found) = self.members.find_entry(Self::spread(fp), |&m| m == fp) {
            found.remove();
        }
        true
    }

    /// Forgets the oldest key, or once none is left gives back the allocations; `false`
    /// if there is nothing to give back either.
    fn shrink(&mut self) -> bool {
        if self.pop() {
            return true;
        }
        if self.bytes() == 0 {
            return false;
        }
        *self = Self {
            capacity: self.capacity,
            ..Self::default()
        };
        true
    }
}

#[derive(Debug)]
struct Shard {
    /// Slot indices, hashed by their key's digest prefix.
    map: HashTable<u32>,
    slots: Vec<Slot>,
    /// Free slots with no queue item.
    free: Vec<u32>,
    /// Free slots whose queue item is still queued.
    stale: usize,
    small: VecDeque<u32>,
    main: VecDeque<u32>,
    ghost: Ghost,
    small_weight: u64,
    main_weight: u64,
    small_capacity: u64,
    /// What the shard may hold: its share of the tier's capacity less its share of the
    /// reservation ([`Store::set_reserved`]).
    capacity: u64,
    /// Its share of the tier's capacity.
    base: u64,
    weigher: Weigher,
}

/// `ratio` of `capacity`.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "a share of a capacity"
)]
fn share(capacity: u64, ratio: f64) -> u64 {
    (capacity as f64 * ratio) as u64
}

impl Shard {
    fn new(capacity: u64, weigher: Weigher) -> Self {
        let share = |ratio: f64| share(capacity, ratio);
        Self {
            map: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            stale: 0,
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: Ghost {
                capacity: share(GHOST_QUEUE),
                ..Ghost::default()
            },
            small_weight: 0,
            main_weight: 0,
            small_capacity: share(SMALL_QUEUE),
            capacity,
            base: capacity,
            weigher,
        }
    }

    /// Gives up `reserved` bytes of the shard's share and evicts down to what is left at
    /// once; the small queue stays at its share of what is left.
    fn reserve(&mut self, reserved: u64, counters: &TierCounters) {
        self.capacity = self.base.saturating_sub(reserved);
        self.small_capacity = share(self.capacity, SMALL_QUEUE);
        // Only an empty ghost's allocations can be left over the capacity, and only when
        // the reservation takes the whole share; the next insert is refused then anyway.
        let _ = self.make_room(0, counters);
    }

    /// Weight in use: the entries, and in bytes mode the ghost's own memory.
    fn usage(&self) -> u64 {
        let ghost = match self.weigher {
            Weigher::EncodedSize => self.ghost.bytes(),
            Weigher::Unit => 0,
        };
        self.small_weight + self.main_weight + ghost
    }

    fn weight_of(&self, idx: u32) -> u64 {
        let len = self.slots[idx as usize].value.len();
        self.weigher.weigh(Policy::S3fifo, len)
    }

    /// Takes a slot's entry out: out of the map, its weight out of its queue, its state
    /// free. Its queue item, if still queued, is the caller's to account for.
    fn vacate(&mut self, idx: u32) -> MemEntry {
        let weight = self.weight_of(idx);
        let slot = &mut self.slots[idx as usize];
        let entry = MemEntry {
            value: std::mem::take(&mut slot.value),
            created_ms: slot.created.get(),
            expires_ms: slot.expires.get(),
        };
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Small => self.small_weight -= weight,
            State::Main => self.main_weight -= weight,
            State::Free => unreachable!("a free slot is not in the map (a bug)"),
        }
        let hash = slot.key.prefix_u64();
        if let Ok(found) = self.map.find_entry(hash, |&i| i == idx) {
            found.remove();
        }
        entry
    }

    /// Frees a slot whose queue item was just popped.
    fn evict_slot(&mut self, idx: u32) {
        self.vacate(idx);
        self.free.push(idx);
    }

    /// Frees a slot whose queue item stays queued (a removal or a purge).
    fn release(&mut self, idx: u32) -> MemEntry {
        let entry = self.vacate(idx);
        self.stale += 1;
        entry
    }

    fn find(&self, key: &Digest) -> Option<u32> {
        let slots = &self.slots;
        self.map
            .find(key.prefix_u64(), |&i| slots[i as usize].key == *key)
            .copied()
    }

    fn remove(&mut self, key: &Digest) -> Option<MemEntry> {
        let idx = self.find(key)?;
        let entry = self.release(idx);
        self.compact();
        Some(entry)
    }

    /// Whether a popped queue item is live; a stale one's slot is reclaimed.
    fn live(&mut self, idx: u32) -> bool {
        if self.slots[idx as usize].state == State::Free {
            self.stale -= 1;
            self.free.push(idx);
            false
        } else {
            true
        }
    }

    /// Evicts one entry; `false` if the shard is empty.
    fn evict_one(&mut self, counters: &TierCounters) -> bool {
        if self.small_weight > self.small_capacity && self.evict_small(counters) {
            return true;
        }
        if self.evict_main(counters) {
            return true;
        }
        // Everything left is in the small queue: evict its head regardless.
        while let Some(idx) = self.small.pop_front() {
            if self.live(idx) {
                self.evict_slot(idx);
                counters.evictions.incr();
                return true;
            }
        }
        false
    }

    fn evict_small(&mut self, counters: &TierCounters) -> bool {
        while let Some(idx) = self.small.pop_front() {
            if !self.live(idx) {
                continue;
            }
            let weight = self.weight_of(idx);
            let slot = &mut self.slots[idx as usize];
            if slot.frequency.load(Ordering::Relaxed) >= PROMOTE_AFTER_HITS {
                slot.state = State::Main;
                self.small_weight -= weight;
                self.main_weight += weight;
                self.main.push_back(idx);
            } else {
                let hash = slot.key.prefix_u64();
                self.evict_slot(idx);
                self.ghost.push(hash, weight);
                counters.evictions.incr();
                return true;
            }
        }
        false
    }

    fn evict_main(&mut self, counters: &TierCounters) -> bool {
        while let Some(idx) = self.main.pop_front() {
            if !self.live(idx) {
                continue;
            }
            let slot = &self.slots[idx as usize];
            let frequency = slot.frequency.load(Ordering::Relaxed);
            if frequency > 0 {
                slot.frequency.store(frequency - 1, Ordering::Relaxed);
                self.main.push_back(idx);
            } else {
                self.evict_slot(idx);
                counters.evictions.incr();
                return true;
            }
        }
        false
    }

    /// Evicts entries, then forgets ghost keys, until `weight` more fits; `false` if it
    /// cannot.
    fn make_room(&mut self, weight: u64, counters: &TierCounters) -> bool {
        while self.usage() + weight > self.capacity {
            if !self.evict_one(counters) && !self.ghost.shrink() {
                return false;
            }
        }
        true
    }

    fn insert(&mut self, key: Digest, entry: MemEntry, weight: u64, counters: &TierCounters) {
        if let Some(idx) = self.find(&key) {
            // A replacement that fits is written in place, keeping the queue position.
            let old = self.weight_of(idx);
            if self.usage() - old + weight <= self.capacity {
                let slot = &mut self.slots[idx as usize];
                match slot.state {
                    State::Small => self.small_weight = self.small_weight - old + weight,
                    State::Main => self.main_weight = self.main_weight - old + weight,
                    State::Free => unreachable!("a free slot is not in the map (a bug)"),
                }
                slot.set(entry);
                return;
            }
        }
        if weight > self.capacity {
            // Not admitted, and an older value must not survive it.
            if self.remove(&key).is_some() {
                counters.evictions.incr();
            }
            counters.evictions.incr();
            return;
        }
        // Make room first, as foyer does (the old value of this key may go too).
        let room = self.make_room(weight, counters);
        assert!(
            room,
            "an empty shard has room for an entry within its capacity (a bug)"
        );
        if let Some(idx) = self.find(&key) {
            self.release(idx);
        }
        let hash = key.prefix_u64();
        let state = if self.ghost.contains(hash) {
            State::Main
        } else {
            State::Small
        };
        let idx = match self.free.pop() {
            Some(idx) => {
                let slot = &mut self.slots[idx as usize];
                slot.key = key;
                slot.state = state;
                slot.set(entry);
                idx
            }
            None => {
                self.slots.push(Slot {
                    key,
                    value: entry.value,
                    created: Millis48::new(entry.created_ms),
                    expires: Millis48::new(entry.expires_ms),
                    frequency: AtomicU8::new(0),
                    state,
                });
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 entries per shard")
            }
        };
        match state {
            State::Small => {
                self.small_weight += weight;
                self.small.push_back(idx);
            }
            State::Main => {
                self.main_weight += weight;
                self.main.push_back(idx);
            }
            State::Free => unreachable!("a new entry goes to a queue"),
        }
        let slots = &self.slots;
        self.map
            .insert_unique(hash, idx, |&i| slots[i as usize].key.prefix_u64());
        self.compact();
    }

    /// Drops stale queue items, reclaiming their slots, once they number more than an
    /// eighth of the live ones: a removed entry's slot is not charged, so few may wait.
    fn compact(&mut self) {
        if self.stale > self.map.len() / 8 + 64 {
            let Self {
                slots,
                free,
                small,
                main,
                ..
            } = self;
            for queue in [small, main] {
                queue.retain(|&i| {
                    let live = slots[i as usize].state != State::Free;
                    if !live {
                        free.push(i);
                    }
                    live
                });
            }
            self.stale = 0;
        }
    }
}

/// The sharded S3-FIFO store.
#[derive(Debug)]
pub(super) struct S3FifoStore {
    shards: Box<[RwLock<Shard>]>,
    mask: u64,
    weigher: Weigher,
    counters: Arc<TierCounters>,
}

impl S3FifoStore {
    pub(super) fn new(
        capacity: u64,
        shards: usize,
        weigher: Weigher,
        counters: Arc<TierCounters>,
    ) -> Self {
        let n = super::shard_count(capacity, shards, weigher);
        Self {
            shards: (0..n)
                .map(|_| RwLock::new(Shard::new(capacity / n, weigher)))
                .collect(),
            mask: n - 1,
            weigher,
            counters,
        }
    }

    #[inline]
    fn shard(&self, key: &Digest) -> &RwLock<Shard> {
        // Bits the shard's own map does not use for its buckets.
        let idx = usize::try_from((key.prefix_u64() >> 40) & self.mask).expect("mask fits usize");
        &self.shards[idx]
    }
}

impl Store for S3FifoStore {
    #[inline]
    fn get(&self, key: &Digest) -> Option<MemEntry> {
        let shard = self.shard(key).read();
        let idx = shard.find(key)?;
        let slot = &shard.slots[idx as usize];
        // Relaxed and racy on purpose: a lost increment only delays a promotion.
        let frequency = slot.frequency.load(Ordering::Relaxed);
        if frequency < MAX_FREQUENCY {
            slot.frequency.store(frequency + 1, Ordering::Relaxed);
        }
        Some(slot.entry())
    }

    #[inline]
    fn insert(&self, key: Digest, entry: MemEntry) {
        let weight = self.weigher.weigh(Policy::S3fifo, entry.value.len());
        self.shard(&key)
            .write()
            .insert(key, entry, weight, &self.counters);
    }

    fn remove(&self, key: &Digest) -> Option<MemEntry> {
        self.shard(key).write().remove(key)
    }

    fn clear(&self) {
        for shard in &*self.shards {
            let mut s = shard.write();
            let reserved = s.base - s.capacity;
            *s = Shard::new(s.base, self.weigher);
            s.reserve(reserved, &self.counters);
        }
    }

    fn purge_expired(&self, now_ms: u64) -> u64 {
        let mut dropped = 0;
        for shard in &*self.shards {
            let mut s = shard.write();
            let expired: Vec<u32> = s
                .map
                .iter()
                .copied()
                .filter(|&i| now_ms >= s.slots[i as usize].expires.get())
                .collect();
            for idx in expired {
                s.release(idx);
                dropped += 1;
            }
            s.compact();
        }
        dropped
    }

    fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.read().map.len() as u64).sum()
    }

    fn weight(&self) -> u64 {
        self.shards.iter().map(|s| s.read().usage()).sum()
    }

    fn set_reserved(&self, bytes: u64) {
        let share = bytes.div_ceil(self.shards.len() as u64);
        for shard in &*self.shards {
            shard.write().reserve(share, &self.counters);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry() -> MemEntry {
        MemEntry {
            value: Bytes::from_static(b"v"),
            created_ms: 0,
            expires_ms: super::super::NEVER,
        }
    }

    #[test]
    fn timestamps_keep_48_bits_and_never() {
        for ms in [0, 1, 1_764_590_000_000, Millis48::MAX - 1] {
            assert_eq!(Millis48::new(ms).get(), ms);
        }
        assert_eq!(Millis48::new(NEVER).get(), NEVER);
        assert_eq!(
            Millis48::new(Millis48::MAX).get(),
            NEVER,
            "saturates to never"
        );
    }

    /// The weight is exactly the charge of the live entries plus the ghost's keys, through
    /// in-place replacements, removals (stale queue items, compaction), purges and
    /// evictions.
    #[test]
    fn weight_is_the_charge_of_what_is_held() {
        use rand::{Rng, SeedableRng};

        let capacity = 200 * super::super::charge(Policy::S3fifo, 1536);
        let store = S3FifoStore::new(capacity, 1, Weigher::EncodedSize, Arc::default());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for step in 0..20_000u32 {
            let key = Digest::of_u64(rng.random_range(0..400));
            match rng.random_range(0..10) {
                0..6 => {
                    let len = [0, 2, 24, 1536, 3000][rng.random_range(0..5)];
                    let entry = MemEntry {
                        value: Bytes::from(vec![7; len]),
                        created_ms: u64::from(step),
                        expires_ms: if step % 3 == 0 {
                            u64::from(step) + 50
                        } else {
                            NEVER
                        },
                    };
                    store.insert(key, entry);
                }
                6..8 => {
                    store.remove(&key);
                }
                8 => {
                    store.get(&key);
                }
                _ => {
                    store.purge_expired(u64::from(step));
                }
            }
            let shard = store.shards[0].read();
            let held: u64 = shard
                .map
                .iter()
                .map(|&i| super::super::charge(Policy::S3fifo, shard.slots[i as usize].value.len()))
                .sum();
            let ghost = shard.ghost.bytes();
            assert_eq!(store.weight(), held + ghost, "step {step}");
            assert!(store.weight() <= capacity, "step {step}");
            let queued = shard.small.len() + shard.main.len();
            assert_eq!(
                queued,
                shard.map.len() + shard.stale,
                "one queue item per slot in use"
            );
            assert!(
                shard.stale <= shard.map.len() / 8 + 65,
                "stale items are compacted"
            );
        }
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_set() {
        let store = S3FifoStore::new(100, 1, Weigher::Unit, Arc::default());
        let hot: Vec<Digest> = (0..50).map(Digest::of_u64).collect();
        for k in &hot {
            store.insert(*k, entry());
        }
        for _ in 0..3 {
            for k in &hot {
                assert!(store.get(k).is_some());
            }
        }
        for i in 1_000..10_000 {
            store.insert(Digest::of_u64(i), entry());
        }
        let kept = hot.iter().filter(|k| store.get(k).is_some()).count();
        assert!(
            kept >= 45,
            "a one-pass scan evicted {} of 50 hot keys",
            50 - kept
        );
        assert!(store.weight() <= 100);
    }

    #[test]
    fn churn_on_one_key_keeps_the_queues_bounded() {
        let store = S3FifoStore::new(1 << 20, 1, Weigher::Unit, Arc::default());
        let k = Digest::of(b"hot");
        for _ in 0..100_000 {
            store.insert(k, entry());
        }
        let s = store.shards[0].read();
        assert_eq!(s.map.len(), 1);
        assert!(s.small.len() + s.main.len() <= 2 * s.map.len() + 65);
        assert_eq!(s.slots.len(), 1, "freed slots are reused");
    }

    #[test]
    fn ghost_hits_go_to_the_main_queue() {
        let store = S3FifoStore::new(10, 1, Weigher::Unit, Arc::default());
        let k = Digest::of(b"k");
        store.insert(k, entry());
        // Ten more fill the cache; two beyond that evict `k` (the oldest) and one other.
        for i in 0..12 {
            store.insert(Digest::of_u64(i), entry());
        }
        assert!(
            store.get(&k).is_none(),
            "evicted from the small queue into the ghost"
        );
        store.insert(k, entry());
        let shard = store.shards[0].read();
        assert_eq!(
            shard.slots[shard.find(&k).unwrap() as usize].state,
            State::Main
        );
    }
}
