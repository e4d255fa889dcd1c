//! The cache's configuration, keys, request options and results.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use infercache_core::Digest;
use infercache_core::stats::{ModelCounters, ModelStats, TierStats};
use serde::Serialize;

use super::freshness::{FreshnessPolicy, Stale, Times};
use crate::disk::DiskConfig;
use crate::memory::MemoryConfig;
use crate::remote::{RemoteStats, RemoteTier};

/// How writes reach the tiers below memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// Every tier is written before a store returns (the default).
    #[default]
    WriteThrough,
    /// Lower tiers are written from a bounded queue of `queue` operations.
    WriteBack {
        /// Queue capacity.
        queue: usize,
    },
}

/// Configuration of a [`crate::Cache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The memory tier; `None` for none.
    pub memory: Option<MemoryConfig>,
    /// The disk tier; `None` for none.
    pub disk: Option<DiskConfig>,
    /// A remote tier shared with other nodes, below disk; `None` for none.
    pub remote: Option<Arc<dyn RemoteTier>>,
    /// How long entries are kept when neither their model's policy nor the request says
    /// (entries of a model without a policy are fresh until then). Default: none.
    pub default_ttl: Option<Duration>,
    /// Freshness per model name: `ttl`, `stale_if_error`, `stale_while_revalidate` (see
    /// [`crate::cache::freshness`]). A model without one is fresh until its entries expire.
    pub policies: HashMap<String, FreshnessPolicy>,
    /// Write policy. Default: write-through.
    pub write_policy: WritePolicy,
    /// Folded into every key; bumping it invalidates everything. Default: 0.
    pub cache_version: u64,
    /// How often expired entries are reclaimed. Default: 60 s.
    pub cleanup_interval: Duration,
    /// Disk operations in flight at once. Default: 4.
    pub disk_io_concurrency: usize,
    /// With a remote tier: whether memory and disk are read while this node's epochs are
    /// not known to match the remote's. Default: only in sync, with a 10 s grace.
    pub local_reads: super::sync::LocalReads,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory: Some(MemoryConfig::bytes(256 << 20)),
            disk: None,
            remote: None,
            default_ttl: None,
            policies: HashMap::new(),
            write_policy: WritePolicy::WriteThrough,
            cache_version: 0,
            cleanup_interval: Duration::from_secs(60),
            disk_io_concurrency: 4,
            local_reads: super::sync::LocalReads::default(),
        }
    }
}

/// A model's handle: its name, freshness policy and counters, resolved once per key.
#[derive(Debug)]
pub struct Model {
    pub(super) name: Arc<str>,
    pub(super) policy: FreshnessPolicy,
    pub(super) counters: ModelCounters,
}

impl Model {
    /// The model id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its freshness policy.
    pub fn policy(&self) -> &FreshnessPolicy {
        &self.policy
    }

    /// Counts a stored value of this model that its reader refused (it does not fit the
    /// model: a bug or a foreign writer); the reader recomputes it.
    pub fn count_corrupt(&self) {
        self.counters.corrupt.incr();
    }
}

/// A key with the handle of the model it belongs to.
#[derive(Debug, Clone)]
pub struct CacheKey {
    pub(super) digest: Digest,
    pub(super) model: Arc<Model>,
}

impl CacheKey {
    /// The digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The memory tier.
    Memory,
    /// The disk tier.
    Disk,
    /// The remote tier shared with other nodes.
    Remote,
    /// Computed by this caller.
    Computed,
    /// Computed by a concurrent caller this one waited for.
    Coalesced,
}

impl Source {
    /// Whether the value was served from a cache tier.
    pub fn is_hit(self) -> bool {
        matches!(self, Source::Memory | Source::Disk | Source::Remote)
    }
}

/// A value, where it came from, and whether it was served past its freshness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The value.
    pub value: Bytes,
    /// Where it came from.
    pub source: Source,
    /// When it was computed (ms since the Unix epoch).
    pub created_ms: u64,
    /// `None`: fresh. Otherwise why it was served stale.
    pub stale: Option<Stale>,
}

impl Fetched {
    /// Whether it was served past its freshness.
    pub fn is_stale(&self) -> bool {
        self.stale.is_some()
    }
}

/// What a computation returns for one key: its value, and whether it may be cached.
///
/// A value marked [`Computed::do_not_store`] (a row the model failed on, say) is handed
/// to this call and to the callers waiting on the same key, and written to no tier on no
/// node; the key stays uncached, and the next request computes it again. A plain
/// [`Bytes`] converts into a value to store, so computations that return `Vec<Bytes>`
/// work unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    /// The value.
    pub value: Bytes,
    /// Whether the cache may store it.
    pub store: bool,
}

impl Computed {
    /// A value to cache.
    pub fn store(value: Bytes) -> Self {
        Self { value, store: true }
    }

    /// A value to hand back but cache nowhere.
    pub fn do_not_store(value: Bytes) -> Self {
        Self {
            value,
            store: false,
        }
    }
}

impl From<Bytes> for Computed {
    fn from(value: Bytes) -> Self {
        Self::store(value)
    }
}

/// The result of a plain lookup. A miss is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Found in a tier.
    Hit(Fetched),
    /// In no tier.
    Miss,
}

/// Per-request cache control (what `Cache-Control` carries over HTTP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// Accept as fresh only entries at most this old (`max-age`), on top of the model's
    /// `ttl`.
    pub max_age: Option<Duration>,
    /// Skip the lookup, compute and overwrite (`no-cache`). No stale entry is served.
    pub no_cache: bool,
    /// Do not store what is computed (`no-store`).
    pub no_store: bool,
    /// How long what this request stores is kept, overriding what the model's policy
    /// (or the cache's `default_ttl`) says; entries of a model without a `ttl` are fresh
    /// for all of it.
    pub ttl: Option<Duration>,
    /// RFC 5861's `stale-while-revalidate=N`: past this request's freshness (the model's
    /// `ttl` or `max_age`, the stricter), entries up to `N` more are served at once,
    /// marked stale, and recomputed in the background. Overrides the model's window;
    /// like every stale window, it cannot outlast the entry's storage life (the model's
    /// `ttl` plus its windows, or the cache's `default_ttl`).
    pub stale_while_revalidate: Option<Duration>,
    /// RFC 5861's `stale-if-error=N`: when the computation fails, entries up to `N` past
    /// this request's freshness stand in for it, marked stale. Overrides the model's
    /// window.
    pub stale_if_error: Option<Duration>,
}

/// A snapshot of the cache's stats.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    /// The memory tier.
    pub memory: Option<TierStats>,
    /// The disk tier.
    pub disk: Option<TierStats>,
    /// The remote tier.
    pub remote: Option<RemoteStats>,
    /// Per model.
    pub models: BTreeMap<String, ModelStats>,
    /// Callers that waited for another caller's computation.
    pub coalesced: u64,
    /// Lower-tier writes dropped because the write-back queue was full.
    pub writeback_dropped: u64,
    /// Operations waiting in the write-back queue.
    pub writeback_queued: u64,
    /// With a remote tier: whether this node's epochs are in sync, and the local reads
    /// skipped while they were not.
    pub sync: Option<super::sync::LocalSyncStats>,
}

/// A value on its way through one call: read from a tier or computed, not yet tagged with
/// the [`Source`] this caller reports.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub(super) value: Bytes,
    pub(super) created_ms: u64,
    /// [`crate::memory::NEVER`] for no expiry.
    pub(super) expires_ms: u64,
    /// Computed by the leader (not read from a tier): what a `no-cache` waiter needs.
    pub(super) computed: bool,
    /// Whether it may be stored (see [`Computed`]).
    pub(super) store: bool,
}

impl Found {
    /// A value read from a tier.
    pub(super) fn hit(value: Bytes, times: Times) -> Self {
        Self {
            value,
            created_ms: times.created_ms,
            expires_ms: times.expires_ms,
            computed: false,
            store: true,
        }
    }

    /// Its times, for [`super::freshness::judge`].
    pub(super) fn times(&self) -> Times {
        Times {
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
        }
    }

    /// What this caller reports for the value.
    pub(super) fn fetched(&self, source: Source, stale: Option<Stale>) -> Fetched {
        Fetched {
            value: self.value.clone(),
            source,
            created_ms: self.created_ms,
            stale,
        }
    }
}
