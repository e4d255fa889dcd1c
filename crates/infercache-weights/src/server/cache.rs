//! The server cache: chunk bytes in a byte-bounded, exact-LRU memory tier with single
//! flight, over an optional Redis tier shared by several weight servers, over the chunk
//! files.
//!
//! Both tiers are `infercache-engine` caches:
//!
//! - **memory**: a [`Cache`] whose memory tier is [`Policy::Lru`] with one shard (exact
//!   LRU: a hit refreshes recency), bounded in bytes (chunk bytes plus the tier's fixed
//!   per-entry overhead; `weight <= capacity` after every operation). Its
//!   `get_or_compute` is the single flight: concurrent requests for a chunk that is not in
//!   memory wait for one fill.
//! - **shared**: a second [`Cache`] with only a remote tier (the Redis tier, with its
//!   circuit breaker and short timeouts). It is consulted *inside* the memory tier's fill,
//!   so every value read from Redis has its SHA-256 checked before it reaches memory or
//!   any waiting request; a value that fails is dropped and removed, and the chunk is read
//!   from disk. A chunk read from disk is written to Redis in the background. With Redis
//!   down, the breaker answers misses at once and every fill reads from disk.
//!
//! Keys are content-addressed: a chunk's key is derived from its SHA-256 alone, so the
//! same bytes have the same key in every model, every chunk directory and every server
//! sharing the Redis tier.
//!
//! A chunk larger than the memory tier's capacity is not cached at all (see
//! [`ChunkCache::admits`]): the route streams it from its file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use infercache_core::canonical::CanonicalInput;
use infercache_core::{KeyParts, SharedClock};
use infercache_engine::memory::charge;
use infercache_engine::{
    Cache, CacheConfig, CacheKey, ComputeError, EngineError, Lookup, MemoryConfig, Policy,
    RemoteTier, RequestOptions, Source, Weigher,
};

use super::stats::{Counters, Outcome, bump};
use super::store::{StoreError, read_chunk};
use crate::digest::sha256_hex;
use crate::manifest::ChunkInfo;

/// The key namespace of chunk bytes (part of every key, so nothing else collides).
const NAMESPACE: &str = "infercache-weights";

/// The tiers.
#[derive(Debug, Clone)]
pub(crate) struct ChunkCache {
    memory: Option<Cache>,
    shared: Option<Cache>,
    capacity: u64,
    /// Largest value the Redis tier stores.
    shared_max: u64,
    counters: Arc<Counters>,
}

/// A chunk to read, and where from.
#[derive(Debug, Clone)]
pub(crate) struct ChunkRef {
    pub info: ChunkInfo,
    pub path: PathBuf,
}

impl ChunkCache {
    /// A cache of `capacity` bytes (0: no memory tier) over `remote`, if any.
    pub(crate) fn open(
        capacity: u64,
        remote: Option<(Arc<dyn RemoteTier>, u64)>,
        clock: &SharedClock,
        counters: Arc<Counters>,
    ) -> Result<Self, EngineError> {
        let memory = if capacity > 0 {
            let config = CacheConfig {
                memory: Some(MemoryConfig {
                    capacity,
                    policy: Policy::Lru,
                    weigher: Weigher::EncodedSize,
                    shards: Some(1),
                }),
                ..CacheConfig::default()
            };
            Some(Cache::open(config, Arc::clone(clock))?)
        } else {
            None
        };
        let shared_max = remote.as_ref().map_or(0, |(_, max)| *max);
        let shared = match remote {
            Some((remote, _)) => Some(Cache::open(
                CacheConfig {
                    memory: None,
                    remote: Some(remote),
                    ..CacheConfig::default()
                },
                Arc::clone(clock),
            )?),
            None => None,
        };
        Ok(Self {
            memory,
            shared,
            capacity,
            shared_max,
            counters,
        })
    }

    /// Whether a chunk of `size` bytes goes through the cache: the memory tier when
    /// there is one, else the Redis tier (else the route streams it from its file,
    /// uncached).
    pub(crate) fn admits(&self, size: u64) -> bool {
        match (&self.memory, &self.shared) {
            (Some(_), _) => {
                usize::try_from(size).is_ok_and(|len| charge(Policy::Lru, len) <= self.capacity)
            }
            (None, Some(_)) => size <= self.shared_max,
            (None, None) => false,
        }
    }

    /// The memory tier's stats.
    pub(crate) fn memory(&self) -> Option<&Cache> {
        self.memory.as_ref()
    }

    /// The Redis tier's cache.
    pub(crate) fn shared(&self) -> Option<&Cache> {
        self.shared.as_ref()
    }

    /// The memory tier's capacity in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    fn key(cache: &Cache, sha256: &str) -> CacheKey {
        let input = CanonicalInput::text(sha256);
        cache.key(KeyParts {
            namespace: NAMESPACE,
            model: "chunk",
            version: "1",
            artifact: None,
            epochs: Default::default(),
            input: &input,
            params: &[],
        })
    }

    /// The chunk's bytes, through the tiers. Only for chunks the cache
    /// [admits](Self::admits).
    ///
    /// # Errors
    /// The file's: unreadable, or damaged (its size or SHA-256 is not the manifest's).
    pub(crate) async fn get(&self, chunk: &ChunkRef) -> Result<(Bytes, Outcome), StoreError> {
        let from_redis = Arc::new(AtomicBool::new(false));
        let Some(memory) = &self.memory else {
            // No memory tier: every request fills on its own, from Redis or the file.
            let bytes = self.fill(chunk, &from_redis).await?;
            let outcome = if from_redis.load(Ordering::Relaxed) {
                Outcome::RedisHit
            } else {
                Outcome::StorageRead
            };
            return Ok((bytes, outcome));
        };
        let key = Self::key(memory, &chunk.info.sha256);
        let fill = || {
            let this = self.clone();
            let chunk = chunk.clone();
            let from_redis = Arc::clone(&from_redis);
            async move { this.fill(&chunk, &from_redis).await }
        };
        let got = memory
            .get_or_compute(&key, &RequestOptions::default(), fill)
            .await
            .map_err(|e| shared_error(&e, &chunk.path))?;
        let outcome = match got.source {
            Source::Computed if from_redis.load(Ordering::Relaxed) => Outcome::RedisHit,
            Source::Computed => Outcome::StorageRead,
            Source::Coalesced => Outcome::Coalesced,
            Source::Memory | Source::Disk | Source::Remote => Outcome::MemoryHit,
        };
        Ok((got.value, outcome))
    }

    /// Fills the memory tier: Redis (verified), else the file (verified), which then goes
    /// to Redis in the background.
    async fn fill(&self, chunk: &ChunkRef, from_redis: &AtomicBool) -> Result<Bytes, StoreError> {
        if let Some(shared) = &self.shared {
            let key = Self::key(shared, &chunk.info.sha256);
            if let Lookup::Hit(hit) = shared.get(&key, &RequestOptions::default()).await {
                let expected = chunk.info.sha256.clone();
                let value = hit.value;
                let checked = value.clone();
                let ok = tokio::task::spawn_blocking(move || sha256_hex(&checked) == expected)
                    .await
                    .unwrap_or(false);
                if ok {
                    from_redis.store(true, Ordering::Relaxed);
                    return Ok(value);
                }
                bump(&self.counters.redis_corrupt, 1);
                tracing::warn!(
                    chunk = %chunk.info.file,
                    "a chunk from Redis failed its sha256; dropped, reading the file"
                );
                shared.remove(&key).await;
            }
        }
        let bytes = self.read(chunk).await?;
        if let Some(shared) = &self.shared {
            let shared = shared.clone();
            let key = Self::key(&shared, &chunk.info.sha256);
            let value = bytes.clone();
            tokio::spawn(async move {
                shared.insert(&key, value, &RequestOptions::default()).await;
            });
        }
        Ok(bytes)
    }

    /// Drops the chunks with these digests from memory; how many were there.
    pub(crate) async fn drop_chunks(&self, sha256s: &[String]) -> u64 {
        let Some(memory) = &self.memory else {
            return 0;
        };
        let mut dropped = 0;
        for sha in sha256s {
            if memory.remove(&Self::key(memory, sha)).await.found {
                dropped += 1;
            }
        }
        dropped
    }

    /// Reads a chunk file on the blocking pool, checking its size and digest.
    async fn read(&self, chunk: &ChunkRef) -> Result<Bytes, StoreError> {
        let c = chunk.clone();
        let result = tokio::task::spawn_blocking(move || read_chunk(&c.path, &c.info))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Io {
                    path: chunk.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        match &result {
            Ok(b) => {
                bump(&self.counters.storage_reads, 1);
                bump(&self.counters.storage_read_bytes, b.len() as u64);
            }
            Err(StoreError::Corrupt { .. }) => bump(&self.counters.storage_corrupt, 1),
            Err(_) => {}
        }
        result
    }
}

/// The store error a fill shared with every waiter, rebuilt for this request.
fn shared_error(e: &ComputeError, path: &Path) -> StoreError {
    match e.downcast_ref::<StoreError>() {
        Some(StoreError::Corrupt { path, reason }) => StoreError::Corrupt {
            path: path.clone(),
            reason: reason.clone(),
        },
        Some(StoreError::Io { path, source }) => StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        _ => StoreError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        },
    }
}
