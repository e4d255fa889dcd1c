//! The tiered cache engine of infercache.
//!
//! ```text
//!   Cache::get_many_or_compute(keys, f)
//!        │  de-duplicate
//!        ├─► memory tier  (memory::MemoryTier: byte-bounded, s3fifo/lru/lfu/fifo/random)
//!        │      hit ─► value
//!        ├─► in-flight table: lead the key, or wait for its leader
//!        ├─► disk tier    (disk::DiskTier: log-structured segments, checksummed records)
//!        │      hit ─► promote to memory ─► value
//!        ├─► remote tier  (remote::RemoteTier, e.g. Redis shared by many nodes)
//!        │      hit ─► promote to memory and disk ─► value
//!        ├─► lease the missing keys on the remote tier (another node computing: wait)
//!        └─► f(missing keys) once ─► memory ─► waiters ─► disk ─► remote
//!
//!   every value found, on every path above, passes one freshness rule
//!   (cache::freshness: expiry, the model's ttl, the request's max-age) before it is used
//! ```
//!
//! - [`cache`]: the [`Cache`] API, its concurrency contract and write policies.
//! - [`memory`]: the memory tier and its eviction policies.
//! - [`disk`]: the persistent disk tier and its crash-safety argument.
//! - [`remote`]: the trait of a remote tier shared by many nodes.
//! - [`epochs`]: invalidation by namespace, model, version or everything, without scans.
//! - [`replay`]: trace replay for hit-ratio measurement.
//! - `testing` (feature `test-support`): an in-process remote tier, so the lease and epoch
//!   logic can be tested without a Redis server.
//!
//! Keys come from `infercache-core` ([`infercache_core::KeyParts`]); the cache folds its
//! current epochs into them ([`Cache::key`]). Time comes from an injected
//! [`infercache_core::Clock`].

pub mod cache;
pub mod disk;
pub mod epochs;
pub mod error;
pub(crate) mod hash;
pub mod memory;
pub mod remote;
pub mod replay;
#[cfg(feature = "test-support")]
pub mod testing;

pub use cache::{
    Cache, CacheConfig, CacheKey, CacheStats, Computed, Fetched, FreshnessPolicy, LocalReads,
    LocalSyncStats, Lookup, Model, Removal, RequestOptions, Source, Stale, WritePolicy,
};
pub use disk::{Compression, DiskConfig, DiskTier};
pub use epochs::Scope;
pub use error::{ComputeError, EngineError};
pub use memory::{MemoryConfig, MemoryTier, Policy, Weigher};
pub use remote::{
    Accept, BreakerState, EpochSync, EpochsInSync, Lease, LocalTiers, RemoteEntry, RemoteRemoval,
    RemoteStats, RemoteTier,
};

/// The README's examples, compiled as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Bytes of a capacity, resolving a fraction of RAM against this machine's memory.
///
/// # Errors
/// [`EngineError::UnknownRam`] for a fraction where the platform does not report its RAM.
pub fn resolve_capacity(capacity: infercache_core::Capacity) -> Result<u64, EngineError> {
    match capacity {
        infercache_core::Capacity::Bytes(b) => Ok(b),
        fraction => total_ram()
            .map(|ram| fraction.resolve(ram))
            .ok_or(EngineError::UnknownRam),
    }
}

/// Total RAM of this machine in bytes, for capacities given as a fraction of RAM; `None`
/// where the platform does not tell.
pub fn total_ram() -> Option<u64> {
    let mut sys = sysinfo::System::new().ok()?;
    sys.refresh_memory();
    Some(sys.total_memory()).filter(|&n| n > 0)
}
