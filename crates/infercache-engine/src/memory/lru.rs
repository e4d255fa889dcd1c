//! Exact least-recently-used, on the `lru` crate's linked hash map (unbounded; the shard
//! enforces the byte budget by popping the least recently used entry).

use infercache_core::Digest;
use lru::LruCache;

use super::MemEntry;
use super::Policy;
use super::locked::PolicyMap;
use crate::hash::DigestHasher;

/// Bytes per entry besides the value: the `lru` crate's boxed node (key, entry, two links)
/// and its table bucket (a key reference and a node pointer).
pub(super) const ENTRY_BYTES: u64 =
    super::heap_block(size_of::<(Digest, MemEntry)>() + 16) + super::table_bytes(16);

#[derive(Debug)]
pub(super) struct Lru(LruCache<Digest, MemEntry, DigestHasher>);

impl PolicyMap for Lru {
    const POLICY: Policy = Policy::Lru;

    fn new() -> Self {
        Self(LruCache::unbounded_with_hasher(DigestHasher::default()))
    }
    fn get(&mut self, key: &Digest) -> Option<&MemEntry> {
        self.0.get(key)
    }
    fn contains(&self, key: &Digest) -> bool {
        self.0.contains(key)
    }
    fn insert(&mut self, key: Digest, entry: MemEntry) -> Option<MemEntry> {
        self.0.put(key, entry)
    }
    fn remove(&mut self, key: &Digest) -> Option<MemEntry> {
        self.0.pop(key)
    }
    fn pop_victim(&mut self) -> Option<(Digest, MemEntry)> {
        self.0.pop_lru()
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
