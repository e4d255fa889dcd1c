//! The weight server: every chunked model under a directory, over HTTP, through a
//! byte-bounded LRU cache with single flight and an optional shared Redis tier.
//!
//! # Routes ([`WeightServer::router`])
//!
//! | route | what | statuses |
//! |---|---|---|
//! | `GET /v1/weights` | the models: name, type, layers, chunks, bytes, manifest digest | 200 |
//! | `GET /v1/weights/{model}/manifest` | `chunk_info.json` as written (`ETag`, `Cache-Control: no-cache`) | 200, 304, 404 |
//! | `GET\|HEAD /v1/weights/{model}/chunks/{name}` | a chunk's bytes | 200, 206, 304, 400, 404, 412, 416, 500 |
//! | `GET\|HEAD /v1/weights/{model}/files/{name}` | `config.json`, `tokenizer.json` | 200, 206, 304, 400, 404, 412, 416 |
//! | `GET /v1/weights/stats` | cache, storage, Redis and per-chunk counters ([`ServerStats`]) | 200 |
//! | `POST /v1/weights/invalidate` | `{"scope": "all"}` or `{"scope": "model", "model"}` | 200, 400, 404, 500 |
//!
//! [`WeightServer::app`] adds `GET /metrics` (OpenMetrics, [`WeightsCollector`]) and
//! `GET /healthz`, for the standalone `infercache weights serve`.
//!
//! Chunks and files are answered with their SHA-256 as a strong `ETag`,
//! `Accept-Ranges: bytes`, `Cache-Control: public, max-age=31536000, immutable`; a single
//! `Range` (`bytes=a-b`, `a-`, `-n`) answers 206 (several ranges answer the whole body),
//! `If-Range`, `If-Match` (412) and `If-None-Match` (304) are honoured. Bodies come from
//! the cache as shared buffers, or stream from the file for chunks larger than the cache,
//! so a 64 MiB layer needs no copy per request.
//!
//! # The cache (`cache`)
//!
//! Byte-bounded exact LRU with single flight on the engine's cache, an optional Redis tier
//! whose values are checked against their SHA-256, chunk files checked against theirs on
//! every read: a damaged copy answers 500 `chunk_corrupt` and is never served.
//!
//! # Invalidation
//!
//! [`WeightServer::invalidate`] re-reads the chunk directories (all, or one model's),
//! swaps the manifests in, and drops the scope's chunks from memory. Redis is left alone:
//! its keys are content addresses, so a changed chunk has a new key and an old value can
//! never be served for it.

mod cache;
pub mod error;
mod metrics;
mod range;
mod routes;
mod stats;
mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use infercache_core::SharedClock;
use infercache_engine::{EngineError, RemoteTier};
use infercache_redis::{RedisConfig, RedisTier, RedisTierError, Target};
use parking_lot::RwLock;
use serde::Serialize;

use crate::manifest::chunk_sort_key;

use self::cache::ChunkCache;
pub use self::error::WeightsApiError;
pub use self::metrics::WeightsCollector;
pub use self::stats::{CacheStats, ChunkStats, RedisStats, ServerStats, StorageStats};
use self::stats::{Counters, load};
pub use self::store::StoreError;
use self::store::{CounterTable, Models};

/// The address `infercache weights serve` binds by default (the seed's port).
pub const DEFAULT_BIND: &str = "127.0.0.1:8765";

/// The server cache's default size in MiB (the seed's default).
pub const DEFAULT_CACHE_MB: u64 = 100;

/// Largest chunk written to Redis by default: a bert-large layer is 50 MB, and Redis's
/// own cap is 512 MB.
pub const DEFAULT_REDIS_MAX_VALUE: usize = 64 << 20;

/// A weight server that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The chunk directory.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Redis tier's configuration.
    #[error(transparent)]
    Redis(#[from] RedisTierError),
    /// The cache.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// How a weight server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A chunk directory, or a directory of chunk directories.
    pub chunks_dir: PathBuf,
    /// The memory tier's capacity in bytes (0: no memory tier). Default 100 MiB.
    pub cache_bytes: u64,
    /// A Redis tier shared with other weight servers. Default: none.
    pub redis: Option<RedisConfig>,
}

impl ServerConfig {
    /// The defaults for `chunks_dir`.
    pub fn new(chunks_dir: PathBuf) -> Self {
        Self {
            chunks_dir,
            cache_bytes: DEFAULT_CACHE_MB << 20,
            redis: None,
        }
    }
}

/// The Redis tier's configuration for chunks at `url`: its own key prefix
/// (`infercache:weights:`), values up to [`DEFAULT_REDIS_MAX_VALUE`], and a 1 s command
/// timeout (a 64 MiB value takes tens of milliseconds on a LAN; a Redis that is down
/// still costs only the breaker's fast failures).
pub fn redis_config(url: &str) -> RedisConfig {
    let mut c = RedisConfig::new(Target::Single(url.to_owned()));
    c.prefix = "infercache:weights:".into();
    c.max_value_bytes = DEFAULT_REDIS_MAX_VALUE;
    c.command_timeout = Duration::from_secs(1);
    c.connect_timeout = Duration::from_millis(200);
    c
}

/// What to invalidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidate {
    /// Every model (the directory is scanned again; new models appear, removed ones go).
    All,
    /// One model.
    Model(String),
}

/// What an invalidation did.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidateReport {
    /// Models reloaded from disk.
    pub reloaded: Vec<String>,
    /// Models no longer served (their directory or manifest is gone).
    pub removed: Vec<String>,
    /// Chunks dropped from memory.
    pub evicted: u64,
}

struct Inner {
    root: PathBuf,
    models: RwLock<Arc<Models>>,
    table: CounterTable,
    cache: ChunkCache,
    counters: Arc<Counters>,
    /// One reload at a time.
    reload: tokio::sync::Mutex<()>,
}

/// A weight server. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct WeightServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WeightServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightServer")
            .field("root", &self.inner.root)
            .field("models", &self.models().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl WeightServer {
    /// Loads every model under `config.chunks_dir` (blocking: call it before serving, in
    /// a tokio runtime) and opens the cache. A Redis that is down does not stop it.
    ///
    /// # Errors
    /// [`ServerError::Store`] for a directory that holds no model, an invalid manifest, a
    /// missing or damaged file; the Redis configuration's error.
    pub fn open(config: ServerConfig, clock: SharedClock) -> Result<Self, ServerError> {
        let table = CounterTable::default();
        let models = store::scan(&config.chunks_dir, &table)?;
        let remote: Option<(Arc<dyn RemoteTier>, u64)> = match config.redis {
            Some(redis) => {
                let max = redis.max_value_bytes as u64;
                let tier: Arc<dyn RemoteTier> =
                    Arc::new(RedisTier::connect(redis, Arc::clone(&clock))?);
                Some((tier, max))
            }
            None => None,
        };
        let counters = Arc::new(Counters::default());
        let cache = ChunkCache::open(config.cache_bytes, remote, &clock, Arc::clone(&counters))?;
        Ok(Self {
            inner: Arc::new(Inner {
                root: config.chunks_dir,
                models: RwLock::new(Arc::new(models)),
                table,
                cache,
                counters,
                reload: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The weight routes (`/v1/weights...`), to serve alone or mount in another server.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/weights", get(routes::list))
            .route("/v1/weights/stats", get(routes::stats))
            .route("/v1/weights/invalidate", post(routes::invalidate))
            .route("/v1/weights/{model}/manifest", get(routes::manifest))
            .route(
                "/v1/weights/{model}/chunks/{name}",
                get(routes::chunk).head(routes::chunk),
            )
            .route(
                "/v1/weights/{model}/files/{name}",
                get(routes::file).head(routes::file),
            )
            .with_state(self.clone())
    }

    /// The standalone server: [`WeightServer::router`], `GET /metrics`, `GET /healthz`,
    /// and a JSON 404 for anything else.
    pub fn app(&self) -> Router {
        self.router()
            .route("/metrics", get(routes::metrics).with_state(self.clone()))
            .route("/healthz", get(routes::healthz))
            .fallback(routes::not_found)
    }

    /// The models served, by name.
    pub(crate) fn models(&self) -> Arc<Models> {
        Arc::clone(&self.inner.models.read())
    }

    /// The names of the models served.
    pub fn model_names(&self) -> Vec<String> {
        self.models().keys().cloned().collect()
    }

    pub(crate) fn cache(&self) -> &ChunkCache {
        &self.inner.cache
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub(crate) fn counters_arc(&self) -> &Arc<Counters> {
        &self.inner.counters
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.inner.counters;
        let [memory_hit, redis_hit, storage_read, coalesced, bypass] = c.snapshot_outcomes();
        let memory = self.inner.cache.memory().and_then(|m| m.stats().memory);
        let misses = redis_hit + storage_read + coalesced;
        #[expect(clippy::cast_precision_loss, reason = "a ratio for display")]
        let hit_rate = if memory_hit + misses == 0 {
            0.0
        } else {
            memory_hit as f64 / (memory_hit + misses) as f64
        };
        let redis = self.inner.cache.shared().and_then(|s| {
            s.stats().remote.map(|tier| RedisStats {
                tier,
                sha256_mismatches: load(&c.redis_corrupt),
            })
        });
        let mut chunks: Vec<ChunkStats> = self
            .inner
            .table
            .all()
            .into_iter()
            .map(|((model, chunk), counters)| counters.stats(&model, &chunk))
            .collect();
        chunks.sort_by(|a, b| {
            (&a.model, chunk_sort_key(&a.chunk)).cmp(&(&b.model, chunk_sort_key(&b.chunk)))
        });
        ServerStats {
            cache: CacheStats {
                capacity_bytes: self.inner.cache.capacity(),
                bytes: memory.as_ref().map_or(0, |m| m.bytes),
                entries: memory.as_ref().map_or(0, |m| m.entries),
                hits: memory_hit,
                misses,
                hit_rate,
                evictions: memory.as_ref().map_or(0, |m| m.evictions),
                redis_hits: redis_hit,
                storage_reads: storage_read,
                coalesced,
                bypassed: bypass,
            },
            storage: c.storage(),
            redis,
            not_modified: load(&c.not_modified),
            ranges: load(&c.ranges),
            bytes_sent: load(&c.bytes_sent),
            chunks,
        }
    }

    /// A collector of the server's metrics for a Prometheus registry.
    pub fn collector(&self) -> WeightsCollector {
        WeightsCollector::new(self.clone())
    }

    /// The OpenMetrics text of the server's metrics alone.
    pub(crate) fn metrics_text(&self) -> Result<String, std::fmt::Error> {
        let mut registry = prometheus_client::registry::Registry::with_prefix("infercache");
        registry.register_collector(Box::new(self.collector()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }

    /// Re-reads the chunk directories of `scope` and drops their chunks from memory.
    ///
    /// # Errors
    /// [`WeightsApiError::ModelNotFound`] for a model neither served nor on disk;
    /// [`WeightsApiError::Reload`] when a directory is now invalid (nothing changes then).
    pub async fn invalidate(&self, scope: Invalidate) -> Result<InvalidateReport, WeightsApiError> {
        let _one = self.inner.reload.lock().await;
        let this = self.clone();
        let scanned =
            tokio::task::spawn_blocking(move || store::scan(&this.inner.root, &this.inner.table))
                .await
                .map_err(|e| WeightsApiError::Reload(e.to_string()))?;
        let old = self.models();
        let scanned = match scanned {
            Ok(m) => m,
            // A root that holds no model any more: every model is gone.
            Err(StoreError::Empty(_)) => Models::new(),
            Err(e) => {
                tracing::error!(error = %e, "reloading the chunk directories failed");
                return Err(WeightsApiError::Reload(
                    "a chunk directory is missing, invalid or damaged; see the server log".into(),
                ));
            }
        };
        let mut next: Models = (*old).clone();
        let mut report = InvalidateReport {
            reloaded: Vec::new(),
            removed: Vec::new(),
            evicted: 0,
        };
        let names: std::collections::BTreeSet<String> = match &scope {
            Invalidate::All => old.keys().chain(scanned.keys()).cloned().collect(),
            Invalidate::Model(m) => {
                if !old.contains_key(m) && !scanned.contains_key(m) {
                    return Err(WeightsApiError::ModelNotFound(
                        m.chars().take(200).collect(),
                    ));
                }
                [m.clone()].into()
            }
        };
        let mut dropped = Vec::new();
        for name in names {
            if let Some(entry) = old.get(&name) {
                dropped.extend(entry.manifest.chunks.values().map(|c| c.sha256.clone()));
            }
            match scanned.get(&name) {
                Some(entry) => {
                    next.insert(name.clone(), Arc::clone(entry));
                    report.reloaded.push(name);
                }
                None => {
                    if next.remove(&name).is_some() {
                        report.removed.push(name);
                    }
                }
            }
        }
        *self.inner.models.write() = Arc::new(next);
        dropped.sort();
        dropped.dedup();
        report.evicted = self.inner.cache.drop_chunks(&dropped).await;
        Ok(report)
    }
}

/// Serves `server.app()` on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: WeightServer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, server.app())
        .with_graceful_shutdown(shutdown)
        .await
}
