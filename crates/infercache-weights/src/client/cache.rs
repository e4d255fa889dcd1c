//! The client's layer cache: built layers, least recently used first out, bounded by a
//! count of layers and optionally by their tensor bytes.
//!
//! A prefetched layer not used yet is kept over used ones: eviction takes the least
//! recently used layer that has been used, and a demanded layer that could only be
//! cached by pushing out an unused prefetch is not cached (the forward pass that waited
//! for it holds it already). Otherwise, with `cache_size` 1, a demanded layer arriving
//! after the prefetch of the next one would evict that prefetch, and the next layer
//! would be fetched twice in one pass.

use std::sync::Arc;

use hashlink::LinkedHashMap;

/// A cached layer.
#[derive(Debug)]
struct Entry<L> {
    layer: Arc<L>,
    bytes: u64,
    /// Brought by a prefetch or warm-up and not used since.
    unused_prefetch: bool,
}

/// What a lookup found.
#[derive(Debug)]
pub(crate) struct Hit<L> {
    pub layer: Arc<L>,
    /// The first use of a prefetched layer.
    pub prefetched: bool,
}

/// Layers by index in recency order (front: least recently used).
#[derive(Debug)]
pub(crate) struct LayerCache<L> {
    map: LinkedHashMap<usize, Entry<L>>,
    max_layers: usize,
    max_bytes: Option<u64>,
    bytes: u64,
    pub evictions: u64,
    /// Prefetched layers evicted before their first use.
    pub wasted_prefetches: u64,
}

impl<L> LayerCache<L> {
    pub(crate) fn new(max_layers: usize, max_bytes: Option<u64>) -> Self {
        Self {
            map: LinkedHashMap::new(),
            max_layers,
            max_bytes,
            bytes: 0,
            evictions: 0,
            wasted_prefetches: 0,
        }
    }

    /// The layer, now the most recently used.
    pub(crate) fn get(&mut self, index: usize) -> Option<Hit<L>> {
        let e = self.map.to_back(&index)?;
        let prefetched = std::mem::replace(&mut e.unused_prefetch, false);
        Some(Hit {
            layer: Arc::clone(&e.layer),
            prefetched,
        })
    }

    pub(crate) fn contains(&self, index: usize) -> bool {
        self.map.contains_key(&index)
    }

    /// Caches a layer as the most recently used, evicting down to the limits; a layer
    /// larger than the whole byte budget is not kept, nor a demanded layer that only
    /// fits by pushing out a prefetched layer not used yet.
    pub(crate) fn insert(&mut self, index: usize, layer: Arc<L>, bytes: u64, prefetched: bool) {
        if self.max_bytes.is_some_and(|max| bytes > max) {
            return;
        }
        if let Some(old) = self.map.remove(&index) {
            self.bytes -= old.bytes;
        }
        if !prefetched {
            let (count, held) = self
                .map
                .values()
                .filter(|e| e.unused_prefetch)
                .fold((0, 0), |(n, b), e| (n + 1, b + e.bytes));
            if count + 1 > self.max_layers || self.max_bytes.is_some_and(|max| held + bytes > max) {
                return;
            }
        }
        self.bytes += bytes;
        self.map.insert(
            index,
            Entry {
                layer,
                bytes,
                unused_prefetch: prefetched,
            },
        );
        self.evict();
    }

    /// New limits, applied at once.
    pub(crate) fn set_limits(&mut self, max_layers: usize, max_bytes: Option<u64>) {
        self.max_layers = max_layers;
        self.max_bytes = max_bytes;
        self.evict();
    }

    pub(crate) fn max_layers(&self) -> usize {
        self.max_layers
    }

    pub(crate) fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    fn evict(&mut self) {
        while self.map.len() > self.max_layers || self.max_bytes.is_some_and(|max| self.bytes > max)
        {
            // The least recently used layer that has been used, else the least recently
            // used.
            let Some(victim) = self
                .map
                .iter()
                .find(|(_, e)| !e.unused_prefetch)
                .or_else(|| self.map.iter().next())
                .map(|(&k, _)| k)
            else {
                break;
            };
            let e = self.map.remove(&victim).expect("just found");
            self.bytes -= e.bytes;
            self.evictions += 1;
            if e.unused_prefetch {
                self.wasted_prefetches += 1;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// Indices from least to most recently used.
    pub(crate) fn order(&self) -> Vec<usize> {
        self.map.keys().copied().collect()
    }

    /// Tensor bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_by_count_and_bytes() {
        let mut c = LayerCache::new(2, None);
        c.insert(0, Arc::new(()), 10, false);
        c.insert(1, Arc::new(()), 10, false);
        assert!(c.get(0).is_some()); // 1 is now the least recent
        c.insert(2, Arc::new(()), 10, false);
        assert_eq!(c.order(), vec![0, 2]);
        assert_eq!(c.evictions, 1);

        c.set_limits(1, None);
        assert_eq!(c.order(), vec![2]);
        assert_eq!(c.bytes(), 10);

        c.set_limits(3, Some(25));
        c.insert(3, Arc::new(()), 10, true);
        c.insert(4, Arc::new(()), 10, false);
        assert_eq!(c.order(), vec![3, 4], "bytes bound");
        c.insert(5, Arc::new(()), 10, false);
        assert_eq!(c.order(), vec![3, 5], "the unused prefetch stays");
        assert_eq!(c.wasted_prefetches, 0);
        c.insert(6, Arc::new(()), 30, false);
        assert!(!c.contains(6), "larger than the budget: not kept");
        assert!(c.bytes() <= 25);
    }

    #[test]
    fn a_demanded_layer_never_pushes_out_an_unused_prefetch() {
        let mut c = LayerCache::new(1, None);
        c.insert(1, Arc::new(()), 10, true);
        c.insert(0, Arc::new(()), 10, false);
        assert_eq!(
            c.order(),
            vec![1],
            "layer 1 was fetched for the pass about to need it"
        );
        assert!(c.get(1).unwrap().prefetched);
        c.insert(2, Arc::new(()), 10, true);
        assert_eq!(c.order(), vec![2]);
        assert_eq!((c.evictions, c.wasted_prefetches), (1, 0));
        // Shrinking evicts used layers first, then unused prefetches (wasted).
        let mut c = LayerCache::new(3, None);
        c.insert(0, Arc::new(()), 10, true);
        c.insert(1, Arc::new(()), 10, false);
        c.insert(2, Arc::new(()), 10, false);
        c.set_limits(1, None);
        assert_eq!(c.order(), vec![0]);
        c.insert(3, Arc::new(()), 10, true);
        assert_eq!((c.order(), c.wasted_prefetches), (vec![3], 1));
    }

    #[test]
    fn a_prefetched_layer_counts_once() {
        let mut c = LayerCache::new(2, None);
        c.insert(0, Arc::new(()), 1, true);
        assert!(c.get(0).unwrap().prefetched);
        assert!(!c.get(0).unwrap().prefetched);
    }
}
