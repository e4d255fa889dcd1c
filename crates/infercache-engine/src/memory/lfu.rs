//! Least-frequently-used: the victim is the entry with the fewest hits since it was
//! inserted, the least recently used among equals.
//!
//! Written here because no maintained crate offers a plain LFU map we can drive from our
//! own byte budget (foyer's `Lfu` is a W-TinyLFU variant with its own capacity). An
//! ordered set of `(frequency, last tick, key)` gives O(log n) operations.

use std::collections::{BTreeSet, HashMap};

use infercache_core::Digest;

use super::MemEntry;
use super::Policy;
use super::locked::PolicyMap;
use crate::hash::DigestHasher;

#[derive(Debug)]
struct Slot {
    entry: MemEntry,
    freq: u64,
    tick: u64,
}

/// Bytes per entry besides the value: the map's bucket (key and slot) and the order set's
/// element, B-tree nodes being about two thirds full.
pub(super) const ENTRY_BYTES: u64 = super::table_bytes(size_of::<(Digest, Slot)>())
    + size_of::<(u64, u64, Digest)>() as u64 * 3 / 2;

#[derive(Debug)]
pub(super) struct Lfu {
    map: HashMap<Digest, Slot, DigestHasher>,
    order: BTreeSet<(u64, u64, Digest)>,
    tick: u64,
}

impl Lfu {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

impl PolicyMap for Lfu {
    const POLICY: Policy = Policy::Lfu;

    fn new() -> Self {
        Self {
            map: HashMap::with_hasher(DigestHasher::default()),
            order: BTreeSet::new(),
            tick: 0,
        }
    }

    fn get(&mut self, key: &Digest) -> Option<&MemEntry> {
        let tick = self.next_tick();
        let slot = self.map.get_mut(key)?;
        self.order.remove(&(slot.freq, slot.tick, *key));
        slot.freq += 1;
        slot.tick = tick;
        self.order.insert((slot.freq, slot.tick, *key));
        Some(&slot.entry)
    }

    fn contains(&self, key: &Digest) -> bool {
        self.map.contains_key(key)
    }
    fn insert(&mut self, key: Digest, entry: MemEntry) -> Option<MemEntry> {
        let tick = self.next_tick();
        if let Some(slot) = self.map.get_mut(&key) {
            return Some(std::mem::replace(&mut slot.entry, entry));
        }
        self.order.insert((1, tick, key));
        self.map.insert(
            key,
            Slot {
                entry,
                freq: 1,
                tick,
            },
        );
        None
    }

    fn remove(&mut self, key: &Digest) -> Option<MemEntry> {
        let slot = self.map.remove(key)?;
        self.order.remove(&(slot.freq, slot.tick, *key));
        Some(slot.entry)
    }

    fn pop_victim(&mut self) -> Option<(Digest, MemEntry)> {
        let (_, _, key) = self.order.pop_first()?;
        let slot = self
            .map
            .remove(&key)
            .expect("order and map agree (a bug otherwise)");
        Some((key, slot.entry))
    }

    fn keys_where(&self, pred: &dyn Fn(&Digest, &MemEntry) -> bool) -> Vec<Digest> {
        self.map
            .iter()
            .filter(|(k, s)| pred(k, &s.entry))
            .map(|(k, _)| *k)
            .collect()
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}
