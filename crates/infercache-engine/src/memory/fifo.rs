//! First in, first out, on hashlink's insertion-ordered map. Reads do not reorder; a
//! replaced value keeps its original position.

use hashlink::LinkedHashMap;
use infercache_core::Digest;

use super::MemEntry;
use super::Policy;
use super::locked::PolicyMap;
use crate::hash::DigestHasher;

/// Bytes per entry besides the value: hashlink's boxed node (key, entry, two links) and its
/// table bucket (a node pointer).
pub(super) const ENTRY_BYTES: u64 =
    super::heap_block(size_of::<(Digest, MemEntry)>() + 16) + super::table_bytes(8);

#[derive(Debug)]
pub(super) struct Fifo(LinkedHashMap<Digest, MemEntry, DigestHasher>);

impl PolicyMap for Fifo {
    const POLICY: Policy = Policy::Fifo;

    fn new() -> Self {
        Self(LinkedHashMap::with_hasher(DigestHasher::default()))
    }
    fn get(&mut self, key: &Digest) -> Option<&MemEntry> {
        self.0.get(key)
    }
    fn contains(&self, key: &Digest) -> bool {
        self.0.contains_key(key)
    }
    fn insert(&mut self, key: Digest, entry: MemEntry) -> Option<MemEntry> {
        if let Some(slot) = self.0.get_mut(&key) {
            return Some(std::mem::replace(slot, entry));
        }
        self.0.insert(key, entry)
    }
    fn remove(&mut self, key: &Digest) -> Option<MemEntry> {
        self.0.remove(key)
    }
    fn pop_victim(&mut self) -> Option<(Digest, MemEntry)> {
        self.0.pop_front()
    }
    fn keys_where(&self, pred: &dyn Fn(&Digest, &MemEntry) -> bool) -> Vec<Digest> {
        self.0
            .iter()
            .filter(|(k, v)| pred(k, v))
            .map(|(k, _)| *k)
            .collect()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}
