//! Uniformly random eviction: a dense vector of keys beside the map, so a victim is one
//! random index (swap-remove keeps it dense). Written here because no maintained crate
//! offers random replacement under an external byte budget; it is a dozen lines.

use std::collections::HashMap;

use infercache_core::Digest;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::MemEntry;
use super::Policy;
use super::locked::PolicyMap;
use crate::hash::DigestHasher;

/// Bytes per entry besides the value: the map's bucket (key, entry, position) and the key
/// vector's element, with its growth slack.
pub(super) const ENTRY_BYTES: u64 = super::table_bytes(size_of::<(Digest, (MemEntry, usize))>())
    + size_of::<Digest>() as u64 * 3 / 2;

#[derive(Debug)]
pub(super) struct Random {
    map: HashMap<Digest, (MemEntry, usize), DigestHasher>,
    keys: Vec<Digest>,
    rng: SmallRng,
}

impl Random {
    fn take(&mut self, key: &Digest) -> Option<MemEntry> {
        let (entry, idx) = self.map.remove(key)?;
        self.keys.swap_remove(idx);
        if let Some(moved) = self.keys.get(idx) {
            self.map
                .get_mut(moved)
                .expect("keys and map agree (a bug otherwise)")
                .1 = idx;
        }
        Some(entry)
    }
}

impl PolicyMap for Random {
    const POLICY: Policy = Policy::Random;

    fn new() -> Self {
        Self {
            map: HashMap::with_hasher(DigestHasher::default()),
            keys: Vec::new(),
            rng: SmallRng::seed_from_u64(0x001C_AC4E),
        }
    }

    fn get(&mut self, key: &Digest) -> Option<&MemEntry> {
        self.map.get(key).map(|(e, _)| e)
    }

    fn contains(&self, key: &Digest) -> bool {
        self.map.contains_key(key)
    }
    fn insert(&mut self, key: Digest, entry: MemEntry) -> Option<MemEntry> {
        if let Some((slot, _)) = self.map.get_mut(&key) {
            return Some(std::mem::replace(slot, entry));
        }
        self.map.insert(key, (entry, self.keys.len()));
        self.keys.push(key);
        None
    }

    fn remove(&mut self, key: &Digest) -> Option<MemEntry> {
        self.take(key)
    }

    fn pop_victim(&mut self) -> Option<(Digest, MemEntry)> {
        if self.keys.is_empty() {
            return None;
        }
        let key = self.keys[self.rng.random_range(0..self.keys.len())];
        self.take(&key).map(|e| (key, e))
    }

    fn keys_where(&self, pred: &dyn Fn(&Digest, &MemEntry) -> bool) -> Vec<Digest> {
        self.map
            .iter()
            .filter(|(k, (e, _))| pred(k, e))
            .map(|(k, _)| *k)
            .collect()
    }

    fn clear(&mut self) {
        self.map.clear();
        self.keys.clear();
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}
