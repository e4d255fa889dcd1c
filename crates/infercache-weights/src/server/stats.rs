//! The weight server's counters and the JSON of `GET /v1/weights/stats`.

use std::sync::atomic::{AtomicU64, Ordering};

use infercache_engine::RemoteStats;
use serde::Serialize;

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Counters of one chunk.
#[derive(Debug, Default)]
pub(crate) struct ChunkCounters {
    /// GET requests answered with a body.
    pub requests: AtomicU64,
    /// Of those, served from the memory tier.
    pub hits: AtomicU64,
    /// Of those, not in the memory tier.
    pub misses: AtomicU64,
    /// Body bytes sent.
    pub bytes_sent: AtomicU64,
}

/// How the cache answered one chunk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// From memory.
    MemoryHit,
    /// From the shared Redis tier (then kept in memory).
    RedisHit,
    /// Read from disk by this request.
    StorageRead,
    /// Read from disk (or Redis) by a concurrent request this one waited for.
    Coalesced,
    /// Larger than the cache: streamed from disk, not cached.
    Bypass,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 5] = [
        Self::MemoryHit,
        Self::RedisHit,
        Self::StorageRead,
        Self::Coalesced,
        Self::Bypass,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::MemoryHit => "memory_hit",
            Self::RedisHit => "redis_hit",
            Self::StorageRead => "storage_read",
            Self::Coalesced => "coalesced",
            Self::Bypass => "bypass",
        }
    }
}

/// The server's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// By [`Outcome`], in [`Outcome::ALL`]'s order.
    pub outcomes: [AtomicU64; 5],
    /// Chunk files read from disk (whole, into the cache).
    pub storage_reads: AtomicU64,
    /// Bytes of those reads.
    pub storage_read_bytes: AtomicU64,
    /// Reads whose bytes failed their size or digest check.
    pub storage_corrupt: AtomicU64,
    /// Values from Redis that failed their SHA-256 check (dropped, read from disk).
    pub redis_corrupt: AtomicU64,
    /// Answers `304 Not Modified`.
    pub not_modified: AtomicU64,
    /// Answers `206 Partial Content`.
    pub ranges: AtomicU64,
    /// Body bytes sent for chunks and files.
    pub bytes_sent: AtomicU64,
}

impl Counters {
    pub(crate) fn outcome(&self, o: Outcome) {
        bump(&self.outcomes[o as usize], 1);
    }
}

/// The cache's part of the stats.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    /// Byte capacity of the memory tier.
    pub capacity_bytes: u64,
    /// Bytes held (chunk bytes plus a fixed per-entry overhead).
    pub bytes: u64,
    /// Chunks held.
    pub entries: u64,
    /// Requests served from memory.
    pub hits: u64,
    /// Requests not served from memory (read from Redis or disk, or waiting for a
    /// concurrent request's read).
    pub misses: u64,
    /// `hits / (hits + misses)`.
    pub hit_rate: f64,
    /// Chunks evicted to make room.
    pub evictions: u64,
    /// Of the misses, served from the shared Redis tier.
    pub redis_hits: u64,
    /// Of the misses, read from disk by the request itself.
    pub storage_reads: u64,
    /// Of the misses, waiting for a concurrent request's read (single flight).
    pub coalesced: u64,
    /// Requests for chunks larger than the cache, streamed from disk uncached.
    pub bypassed: u64,
}

/// Disk reads.
#[derive(Debug, Clone, Serialize)]
pub struct StorageStats {
    /// Chunk files read whole (each cache fill, one per single flight).
    pub reads: u64,
    /// Their bytes.
    pub bytes_read: u64,
    /// Reads that failed their size or digest check (answered 500, never served).
    pub corrupt: u64,
}

/// One chunk's counters.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkStats {
    /// The model.
    pub model: String,
    /// The chunk.
    pub chunk: String,
    /// GET requests answered with a body.
    pub requests: u64,
    /// Of those, served from memory.
    pub hits: u64,
    /// Of those, not in memory.
    pub misses: u64,
    /// Body bytes sent.
    pub bytes_sent: u64,
}

/// `GET /v1/weights/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStats {
    /// The server cache.
    pub cache: CacheStats,
    /// Disk reads.
    pub storage: StorageStats,
    /// The shared Redis tier, when configured.
    pub redis: Option<RedisStats>,
    /// Answers `304 Not Modified`.
    pub not_modified: u64,
    /// Answers `206 Partial Content`.
    pub ranges: u64,
    /// Body bytes sent for chunks and files.
    pub bytes_sent: u64,
    /// Per chunk.
    pub chunks: Vec<ChunkStats>,
}

/// The Redis tier's counters, and the values this server dropped.
#[derive(Debug, Clone, Serialize)]
pub struct RedisStats {
    /// The tier's own counters and state.
    #[serde(flatten)]
    pub tier: RemoteStats,
    /// Values that passed the tier's checks but not their SHA-256 (dropped).
    pub sha256_mismatches: u64,
}

impl Counters {
    pub(crate) fn snapshot_outcomes(&self) -> [u64; 5] {
        std::array::from_fn(|i| get(&self.outcomes[i]))
    }

    pub(crate) fn storage(&self) -> StorageStats {
        StorageStats {
            reads: get(&self.storage_reads),
            bytes_read: get(&self.storage_read_bytes),
            corrupt: get(&self.storage_corrupt),
        }
    }
}

impl ChunkCounters {
    pub(crate) fn stats(&self, model: &str, chunk: &str) -> ChunkStats {
        ChunkStats {
            model: model.to_owned(),
            chunk: chunk.to_owned(),
            requests: get(&self.requests),
            hits: get(&self.hits),
            misses: get(&self.misses),
            bytes_sent: get(&self.bytes_sent),
        }
    }
}

pub(crate) fn load(c: &AtomicU64) -> u64 {
    get(c)
}
