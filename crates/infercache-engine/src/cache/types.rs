//! The cache's configuration, keys, request options and results.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use infercache_core::Digest;
use infercache_core::clock::duration_ms;
use infercache_core::stats::{ModelCounters, ModelStats, TierStats};
use serde::Serialize;

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
    /// TTL of entries whose model and request set none. Default: none.
    pub default_ttl: Option<Duration>,
    /// TTL per model, overriding `default_ttl`.
    pub model_ttls: HashMap<String, Duration>,
    /// Write policy. Default: write-through.
    pub write_policy: WritePolicy,
    /// Folded into every key; bumping it invalidates everything. Default: 0.
    pub cache_version: u64,
    /// How often expired entries are reclaimed. Default: 60 s.
    pub cleanup_interval: Duration,
    /// Disk operations in flight at once. Default: 4.
    pub disk_io_concurrency: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory: Some(MemoryConfig::bytes(256 << 20)),
            disk: None,
            remote: None,
            default_ttl: None,
            model_ttls: HashMap::new(),
            write_policy: WritePolicy::WriteThrough,
            cache_version: 0,
            cleanup_interval: Duration::from_secs(60),
            disk_io_concurrency: 4,
        }
    }
}

/// A model's handle: its name, TTL and counters, resolved once per key.
#[derive(Debug)]
pub struct Model {
    pub(super) name: Arc<str>,
    pub(super) ttl: Option<Duration>,
    pub(super) counters: ModelCounters,
}

impl Model {
    /// The model id.
    pub fn name(&self) -> &str {
        &self.name
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

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The value.
    pub value: Bytes,
    /// Where it came from.
    pub source: Source,
    /// When it was computed (ms since the Unix epoch).
    pub created_ms: u64,
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
    /// Accept only entries younger than this (`max-age`).
    pub max_age: Option<Duration>,
    /// Skip the lookup, compute and overwrite (`no-cache`).
    pub no_cache: bool,
    /// Do not store what is computed (`no-store`).
    pub no_store: bool,
    /// TTL of what is stored, overriding the model's and the cache's.
    pub ttl: Option<Duration>,
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
}

/// A value on its way through one call: read from a tier or computed, not yet tagged with
/// the [`Source`] this caller reports.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub(super) value: Bytes,
    pub(super) created_ms: u64,
    /// Computed by the leader (not read from a tier): what a `no-cache` waiter needs.
    pub(super) computed: bool,
}

impl Found {
    /// A value read from a tier.
    pub(super) fn hit(hit: &Fetched) -> Self {
        Self {
            value: hit.value.clone(),
            created_ms: hit.created_ms,
            computed: false,
        }
    }

    /// What this caller reports for the value.
    pub(super) fn fetched(&self, source: Source) -> Fetched {
        Fetched {
            value: self.value.clone(),
            source,
            created_ms: self.created_ms,
        }
    }
}

/// Whether an entry created at `created_ms` satisfies the request's `max_age`.
pub(super) fn fresh_enough(created_ms: u64, now: u64, opts: &RequestOptions) -> bool {
    opts.max_age
        .is_none_or(|max| now.saturating_sub(created_ms) <= duration_ms(max))
}
