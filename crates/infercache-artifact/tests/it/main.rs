//! Integration tests of the artifact store, on real files in temporary directories.

mod policies;
mod store;

use std::sync::Arc;

use infercache_artifact::{ClassConfig, Policy, Store, StoreConfig};
use infercache_core::ManualClock;

/// A store with one class `c` of `cap` bytes under `policy`.
pub fn store_with(
    dir: &std::path::Path,
    cap: u64,
    policy: Policy,
    threshold: f64,
    clock: &Arc<ManualClock>,
) -> Store {
    let mut class = ClassConfig::new(cap, policy);
    class.eviction_threshold = threshold;
    Store::open(dir, StoreConfig::single("c", class), clock.clone()).unwrap()
}

/// Distinct bytes for blob `id`, `size` long (at least 8).
pub fn content(id: u64, size: usize) -> Vec<u8> {
    let mut v = id.to_le_bytes().to_vec();
    v.resize(size.max(8), (id % 251) as u8);
    v
}
