//! The validated configuration: [`ServerConfig`] and its parts, each field documenting its
//! default, and the engine's [`CacheConfig`] made from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use infercache_backend::ModelConfig;
use infercache_core::Capacity;
use infercache_engine::{
    CacheConfig, Compression, DiskConfig, LocalReads, MemoryConfig, Policy, WritePolicy,
};

/// Request limits. Each builder-free field documents its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body in bytes; larger get 413. Default: 2 MiB.
    pub max_body_bytes: usize,
    /// Bytes of request bodies being read, parsed and served at once (each request
    /// charged its `Content-Length`, or `max_body_bytes` when it gives none); a request
    /// that finds the budget full gets 429 with `Retry-After`. At least `max_body_bytes`.
    /// Default: 64 MiB.
    pub body_budget_bytes: usize,
    /// Most inputs per request; more get 400. Default: 2048.
    pub max_items: usize,
    /// Most characters per input; more get 400. Default: 16384.
    pub max_input_chars: usize,
    /// Most requests in flight on `/v1/*`; more get 429. Default: 256.
    pub max_concurrent_requests: usize,
    /// Longest a request may take; slower get 504. Default: 30 s.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 << 20,
            body_budget_bytes: 64 << 20,
            max_items: 2048,
            max_input_chars: 16_384,
            max_concurrent_requests: 256,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// How the model pool batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most texts in one invocation. Default: 32.
    pub max_batch: usize,
    /// Longest a text waits for its batch to fill. Default: 5 ms.
    pub max_wait: Duration,
    /// Requests waiting for the model before more are refused. Default: 1024.
    pub queue: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_wait: Duration::from_millis(5),
            queue: 1024,
        }
    }
}

/// The disk tier's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSettings {
    /// Its directory.
    pub dir: PathBuf,
    /// Bytes of segment files.
    pub capacity: u64,
    /// Compression.
    pub compression: Compression,
}

/// Which Redis the shared tier uses.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    /// A local `redis-server` started and stopped with the server, its data under the
    /// cache directory.
    Auto {
        /// `maxmemory` as a fraction of RAM.
        memory_fraction: f64,
        /// Its data directory.
        dir: PathBuf,
    },
    /// An existing server.
    Url(String),
    /// An existing cluster, by some of its nodes.
    Cluster(Vec<String>),
}

/// The Redis tier's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    /// Which Redis.
    pub target: RedisTarget,
    /// Prefix of every key. Default: `infercache:`.
    pub prefix: String,
    /// Write-back queue; `None` is write-through (the default).
    pub write_back_queue: Option<usize>,
    /// Connect and command timeout. Default: 50 ms.
    pub timeout: Duration,
    /// Whether this node reads its memory and disk while its epochs are not known to
    /// match Redis's. Default: only in sync, with a grace of 10 s.
    pub local_reads: LocalReads,
    /// For `rediss://`: the CA certificates (PEM) trusted instead of the web roots.
    /// Default: none.
    pub ca_file: Option<PathBuf>,
}

/// The validated configuration of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Listen address. Default: 127.0.0.1:8080.
    pub bind: SocketAddr,
    /// Whether requests go through the cache. Default: true.
    pub enable_cache: bool,
    /// Memory tier size as given. Default: 256 MiB.
    pub memory: Capacity,
    /// Memory tier size in bytes, resolved against this machine's RAM.
    pub memory_bytes: u64,
    /// Memory eviction policy. Default: s3fifo.
    pub policy: Policy,
    /// The disk tier. Default: none.
    pub disk: Option<DiskSettings>,
    /// Default TTL. Default: none.
    pub ttl: Option<Duration>,
    /// Write-back queue; `None` is write-through (the default).
    pub write_back_queue: Option<usize>,
    /// Cache version folded into keys. Default: 0.
    pub cache_version: u64,
    /// Model directory; `None` downloads into the default cache directory.
    pub model_dir: Option<PathBuf>,
    /// Where the built-in model's weights come from instead of local files. Default: none.
    pub weights_from: Option<WeightsFrom>,
    /// Chunked models served at `/v1/weights/...`. Default: none.
    pub weights_dir: Option<PathBuf>,
    /// Batching of the model pool.
    pub batch: BatchSettings,
    /// API keys file; `None` serves without auth.
    pub api_keys_file: Option<PathBuf>,
    /// Request limits.
    pub limits: Limits,
    /// How long in-flight requests may drain at shutdown. Default: 30 s.
    pub shutdown_timeout: Duration,
    /// The shared Redis tier. Default: none.
    pub redis: Option<RedisSettings>,
    /// The `[[models]]` list. Default: empty, which serves the built-in embedder alone.
    pub models: Vec<ModelConfig>,
    /// The dataset cache served on `/v1/datasets`: `datasets_dir`, else `[cache.disk]
    /// path`. Default: none (not served).
    pub datasets_dir: Option<PathBuf>,
    /// The served dataset cache's `[cache]` settings. Default: LlamaHome's.
    pub datasets_cache: infercache_datasets::CacheSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            enable_cache: true,
            memory: Capacity::Bytes(256 << 20),
            memory_bytes: 256 << 20,
            policy: Policy::default(),
            disk: None,
            ttl: None,
            write_back_queue: None,
            cache_version: 0,
            model_dir: None,
            weights_from: None,
            weights_dir: None,
            batch: BatchSettings::default(),
            api_keys_file: None,
            limits: Limits::default(),
            shutdown_timeout: Duration::from_secs(30),
            redis: None,
            models: Vec::new(),
            datasets_dir: None,
            datasets_cache: infercache_datasets::CacheSettings::default(),
        }
    }
}

impl ServerConfig {
    /// The engine's configuration; `None` when the cache is disabled.
    pub fn cache_config(&self) -> Option<CacheConfig> {
        if !self.enable_cache {
            return None;
        }
        // The vectors the routes keep rendered and the responses they keep for hot
        // requests take their budgets out of the tier's.
        let rendered = crate::routes::rendered::budget_for(self.memory_bytes)
            + crate::routes::replay::budget_for(self.memory_bytes);
        Some(CacheConfig {
            memory: Some(MemoryConfig {
                policy: self.policy,
                ..MemoryConfig::bytes(self.memory_bytes - rendered)
            }),
            disk: self.disk.as_ref().map(|d| DiskConfig {
                compression: d.compression,
                ..DiskConfig::new(&d.dir, d.capacity)
            }),
            default_ttl: self.ttl,
            write_policy: match self.write_back_queue {
                Some(queue) => WritePolicy::WriteBack { queue },
                None => WritePolicy::WriteThrough,
            },
            cache_version: self.cache_version,
            local_reads: self
                .redis
                .as_ref()
                .map_or_else(LocalReads::default, |r| r.local_reads),
            ..CacheConfig::default()
        })
    }
}

/// A weight server the built-in model is built from (`weights_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsFrom {
    /// The server, `http://host:port` or `https://...`.
    pub url: String,
    /// The model's name there. Default: the built-in model's, `all-MiniLM-L6-v2`.
    pub model: String,
}
