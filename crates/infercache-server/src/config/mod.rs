//! Configuration in two stages: raw ([`ServeArgs`]: flags, `INFERCACHE_*` variables and a
//! TOML file) then validated ([`ServerConfig`]).
//!
//! Precedence: a flag beats its environment variable (clap resolves both), which beats the
//! TOML file given with `--config`, which beats the default. Every setting has all three
//! spellings: `--disk-size`, `INFERCACHE_DISK_SIZE`, `disk_size = "10GiB"`.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `bind` | `127.0.0.1:8080` | address to listen on |
//! | `memory` | `256MiB` | memory tier: bytes (`512MiB`) or a fraction of RAM (`0.3`) |
//! | `policy` | `s3fifo` | memory eviction policy: `s3fifo`, `lru`, `lfu`, `fifo`, `random` |
//! | `disk_dir` | `disk/` in the cache directory | directory of the persistent tier |
//! | `disk_size` | 2GiB | bytes of the disk tier |
//! | `no_disk` | false | memory tier only |
//! | `disk_compression` | `lz4` | `none`, `lz4`, `zstd` |
//! | `ttl` | none | default TTL of entries (`90s`, `12h`, `7d`) |
//! | `write_back_queue` | none | write the disk tier through a queue of this many operations (write-back); none is write-through |
//! | `cache_version` | 0 | folded into every key; bumping it invalidates everything |
//! | `enable_cache` | true | `--disable-cache` bypasses the cache entirely |
//! | `model_dir` | none | directory of the model files; none downloads into the default cache directory |
//! | `max_batch` | 32 | most texts in one model invocation |
//! | `max_wait` | `5ms` | longest a text waits for a batch to fill |
//! | `inference_queue` | 1024 | requests waiting for the model before more get 429 |
//! | `api_keys_file` | none | TOML file of API keys (see [`crate::auth`]); none: no auth |
//! | `max_body_size` | `2MiB` | larger bodies get 413 |
//! | `body_budget` | `64MiB` | bytes of bodies read, parsed and served at once; past it 429 with `Retry-After` |
//! | `max_items` | 2048 | more inputs per request get 400 |
//! | `max_input_chars` | 16384 | longer inputs get 400 |
//! | `max_concurrent_requests` | 256 | more in flight get 429 with `Retry-After` |
//! | `request_timeout` | `30s` | slower requests get 504 |
//! | `shutdown_timeout` | `30s` | how long in-flight requests may drain at shutdown |
//! | `redis` | none | the shared Redis tier: `auto` (start a local `redis-server`), `redis://…` / `rediss://…` (TLS), or several URLs joined by commas (a cluster); none: no Redis tier |
//! | `redis_memory_fraction` | 0.3 | with `auto`: Redis's `maxmemory` as a fraction of RAM, 0.1 to 0.7 |
//! | `redis_cluster` | false | treat a single URL as a cluster node |
//! | `redis_prefix` | `infercache:` | prefix of every Redis key the cache uses |
//! | `redis_write_back_queue` | none | write Redis through a queue of this many values (write-back); none is write-through |
//! | `redis_timeout` | `50ms` | connect and command timeout of the Redis tier |
//! | `redis_local_reads` | `in-sync` | whether this node reads its own memory and disk while its epochs are not known to match Redis's: `in-sync` (only while they are, and for `redis_local_grace` after; otherwise it computes) or `always` (availability: during an outage, entries from before an invalidation made elsewhere may be served) |
//! | `redis_local_grace` | `10s` | with `in-sync`: how long local entries are still served after the epochs were last known to match (the bound on staleness during an outage) |
//! | `redis_ca_file` | none | for `rediss://`: a PEM file of the CAs that sign the Redis servers' certificates, trusted instead of the web roots; a server they do not sign stops the start |
//! | `[[models]]` | none: the built-in embedder | models served, each through its upstream (TOML only; see `config/models.rs`) |

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use infercache_core::Capacity;
use infercache_engine::{
    CacheConfig, Compression, DiskConfig, LocalReads, MemoryConfig, Policy, WritePolicy,
};
use serde::Deserialize;

mod models;

use infercache_backend::ModelConfig;
use models::RawModel;

/// Flags of `infercache serve`; the binary flattens this into its subcommand. Every flag
/// is also an `INFERCACHE_*` environment variable and a key of the `--config` file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "INFERCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "INFERCACHE_BIND", value_name = "ADDR")]
    pub bind: Option<String>,
    /// Memory tier size: bytes (`512MiB`) or a fraction of RAM (`0.3`) [default: 256MiB].
    #[arg(long, env = "INFERCACHE_MEMORY", value_name = "SIZE")]
    pub memory: Option<String>,
    /// Memory eviction policy: s3fifo, lru, lfu, fifo, random [default: s3fifo].
    #[arg(long, env = "INFERCACHE_POLICY", value_name = "POLICY")]
    pub policy: Option<String>,
    /// Directory of the persistent disk tier [default: `disk/` in the cache directory].
    #[arg(long, env = "INFERCACHE_DISK_DIR", value_name = "DIR")]
    pub disk_dir: Option<PathBuf>,
    /// Disk tier size in bytes (`10GiB`) [default: 2GiB].
    #[arg(long, env = "INFERCACHE_DISK_SIZE", value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// Run without the disk tier (memory only).
    #[arg(long, env = "INFERCACHE_NO_DISK")]
    pub no_disk: bool,
    /// Disk compression: none, lz4, zstd [default: lz4].
    #[arg(long, env = "INFERCACHE_DISK_COMPRESSION", value_name = "CODEC")]
    pub disk_compression: Option<String>,
    /// Default TTL of entries (`90s`, `12h`, `7d`) [default: none].
    #[arg(long, env = "INFERCACHE_TTL", value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Write the disk tier behind a queue of N operations (write-back) [default: write-through].
    #[arg(long, env = "INFERCACHE_WRITE_BACK_QUEUE", value_name = "N")]
    pub write_back_queue: Option<usize>,
    /// Folded into every key; bumping it invalidates everything [default: 0].
    #[arg(long, env = "INFERCACHE_CACHE_VERSION", value_name = "N")]
    pub cache_version: Option<u64>,
    /// Use the cache (the default); `--enable-cache=false` is `--disable-cache`.
    #[arg(
        long,
        env = "INFERCACHE_ENABLE_CACHE",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true",
    )]
    pub enable_cache: Option<bool>,
    /// Bypass the cache entirely: every input goes to the model. Wins over --enable-cache.
    #[arg(long)]
    pub disable_cache: bool,
    /// Directory holding the model files [default: download into the user cache directory].
    #[arg(long, env = "INFERCACHE_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Most texts in one model invocation [default: 32].
    #[arg(long, env = "INFERCACHE_MAX_BATCH", value_name = "N")]
    pub max_batch: Option<usize>,
    /// Longest a text waits for its batch to fill (`5ms`) [default: 5ms].
    #[arg(long, env = "INFERCACHE_MAX_WAIT", value_name = "DURATION")]
    pub max_wait: Option<String>,
    /// Requests waiting for the model before more are refused with 429 [default: 1024].
    #[arg(long, env = "INFERCACHE_INFERENCE_QUEUE", value_name = "N")]
    pub inference_queue: Option<usize>,
    /// TOML file of API keys, each mapped to a tenant [default: none, no auth].
    #[arg(long, env = "INFERCACHE_API_KEYS_FILE", value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Largest request body; larger get 413 [default: 2MiB].
    #[arg(long, env = "INFERCACHE_MAX_BODY_SIZE", value_name = "SIZE")]
    pub max_body_size: Option<String>,
    /// Bytes of request bodies read, parsed and served at once; past it 429 [default: 64MiB].
    #[arg(long, env = "INFERCACHE_BODY_BUDGET", value_name = "SIZE")]
    pub body_budget: Option<String>,
    /// Most inputs in one request [default: 2048].
    #[arg(long, env = "INFERCACHE_MAX_ITEMS", value_name = "N")]
    pub max_items: Option<usize>,
    /// Most characters in one input [default: 16384].
    #[arg(long, env = "INFERCACHE_MAX_INPUT_CHARS", value_name = "N")]
    pub max_input_chars: Option<usize>,
    /// Most requests in flight; more get 429 [default: 256].
    #[arg(long, env = "INFERCACHE_MAX_CONCURRENT_REQUESTS", value_name = "N")]
    pub max_concurrent_requests: Option<usize>,
    /// Longest a request may take; slower get 504 [default: 30s].
    #[arg(long, env = "INFERCACHE_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// How long in-flight requests may drain at shutdown [default: 30s].
    #[arg(long, env = "INFERCACHE_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// Shared Redis tier: `auto` (start a local redis-server), a `redis://` or `rediss://`
    /// URL, or cluster node URLs joined by commas [default: none].
    #[arg(long, env = "INFERCACHE_REDIS", value_name = "auto|URL")]
    pub redis: Option<String>,
    /// With `--redis auto`: Redis's maxmemory as a fraction of RAM, 0.1-0.7 [default: 0.3].
    #[arg(long, env = "INFERCACHE_REDIS_MEMORY_FRACTION", value_name = "F")]
    pub redis_memory_fraction: Option<f64>,
    /// Treat a single `--redis` URL as a node of a cluster.
    #[arg(long, env = "INFERCACHE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Prefix of every Redis key [default: infercache:].
    #[arg(long, env = "INFERCACHE_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,
    /// Write Redis behind a queue of N values (write-back) [default: write-through].
    #[arg(long, env = "INFERCACHE_REDIS_WRITE_BACK_QUEUE", value_name = "N")]
    pub redis_write_back_queue: Option<usize>,
    /// Connect and command timeout of the Redis tier [default: 50ms].
    #[arg(long, env = "INFERCACHE_REDIS_TIMEOUT", value_name = "DURATION")]
    pub redis_timeout: Option<String>,
    /// Whether memory and disk are read while this node's epochs are not known to match
    /// Redis's: `in-sync` (only then, plus the grace) or `always` [default: in-sync].
    #[arg(
        long,
        env = "INFERCACHE_REDIS_LOCAL_READS",
        value_name = "in-sync|always"
    )]
    pub redis_local_reads: Option<String>,
    /// With `in-sync`: how long local entries are still served after the epochs were last
    /// known to match [default: 10s].
    #[arg(long, env = "INFERCACHE_REDIS_LOCAL_GRACE", value_name = "DURATION")]
    pub redis_local_grace: Option<String>,
    /// For `rediss://`: PEM file of the CAs that sign the Redis servers' certificates
    /// [default: the web roots].
    #[arg(long, env = "INFERCACHE_REDIS_CA_FILE", value_name = "PATH")]
    pub redis_ca_file: Option<PathBuf>,
}

/// Size of the disk tier when none is given.
const DEFAULT_DISK_SIZE: &str = "2GiB";

/// The `--config` file: the same keys as the flags, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    memory: Option<Scalar>,
    policy: Option<String>,
    disk_dir: Option<PathBuf>,
    disk_size: Option<Scalar>,
    no_disk: Option<bool>,
    disk_compression: Option<String>,
    ttl: Option<Scalar>,
    write_back_queue: Option<usize>,
    cache_version: Option<u64>,
    enable_cache: Option<bool>,
    model_dir: Option<PathBuf>,
    max_batch: Option<usize>,
    max_wait: Option<Scalar>,
    inference_queue: Option<usize>,
    api_keys_file: Option<PathBuf>,
    max_body_size: Option<Scalar>,
    body_budget: Option<Scalar>,
    max_items: Option<usize>,
    max_input_chars: Option<usize>,
    max_concurrent_requests: Option<usize>,
    request_timeout: Option<Scalar>,
    shutdown_timeout: Option<Scalar>,
    redis: Option<String>,
    redis_memory_fraction: Option<f64>,
    redis_cluster: Option<bool>,
    redis_prefix: Option<String>,
    redis_write_back_queue: Option<usize>,
    redis_timeout: Option<Scalar>,
    redis_local_reads: Option<String>,
    redis_local_grace: Option<Scalar>,
    redis_ca_file: Option<PathBuf>,
    models: Option<Vec<RawModel>>,
}

/// A size or duration in TOML: `"512MiB"`, `0.3` or `4096` all read as their text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Scalar {
    Text(String),
    Int(u64),
    Float(f64),
}

impl Scalar {
    pub(crate) fn into_text(self) -> String {
        match self {
            Self::Text(s) => s,
            Self::Int(n) => n.to_string(),
            Self::Float(f) => {
                let s = f.to_string();
                // `1.0` must stay a fraction of RAM, not become the byte count `1`.
                if s.contains('.') { s } else { format!("{s}.0") }
            }
        }
    }
}

/// A configuration that cannot work, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        /// The setting (`disk_size`).
        key: &'static str,
        /// What was given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A setting that needs another.
    #[error("{0}")]
    Inconsistent(&'static str),
    /// A `[[models]]` entry that cannot work.
    #[error("invalid models[{index}].{field} (model `{name}`): {reason}")]
    Model {
        /// Its position in the list, from 0.
        index: usize,
        /// Its name (`?` when it has none).
        name: String,
        /// The field at fault.
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A TOML file does not parse.
    #[error("parsing {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
}

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
            batch: BatchSettings::default(),
            api_keys_file: None,
            limits: Limits::default(),
            shutdown_timeout: Duration::from_secs(30),
            redis: None,
            models: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// Validates `args`, reading the `--config` file if one is named.
    ///
    /// # Errors
    /// The first setting that does not parse or does not fit with the others.
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(args.clone(), file)
    }

    fn resolve(a: ServeArgs, f: FileConfig) -> Result<Self, ConfigError> {
        let d = Self::default();
        let text =
            |flag: Option<String>, file: Option<Scalar>| flag.or(file.map(Scalar::into_text));

        let bind = match a.bind.or(f.bind) {
            Some(s) => s.parse().map_err(|e| invalid("bind", &s, e))?,
            None => d.bind,
        };
        let memory = match text(a.memory, f.memory) {
            Some(s) => s
                .parse::<Capacity>()
                .map_err(|e| invalid("memory", &s, e))?,
            None => d.memory,
        };
        let memory_bytes = infercache_engine::resolve_capacity(memory)
            .map_err(|e| invalid("memory", &memory.to_string(), e))?;
        let policy = match a.policy.or(f.policy) {
            Some(s) => s.parse().map_err(|e| invalid("policy", &s, e))?,
            None => d.policy,
        };
        let compression = match a.disk_compression.or(f.disk_compression) {
            Some(s) => s.parse().map_err(|e| invalid("disk_compression", &s, e))?,
            None => Compression::default(),
        };
        let disk_size = text(a.disk_size, f.disk_size);
        let disk_dir = a.disk_dir.or(f.disk_dir);
        let disk = if a.no_disk || f.no_disk == Some(true) {
            if disk_dir.is_some() || disk_size.is_some() {
                return Err(ConfigError::Inconsistent(
                    "no_disk contradicts disk_dir / disk_size",
                ));
            }
            None
        } else {
            // `serve` runs both tiers by default: disk under the cache directory.
            let dir =
                disk_dir.unwrap_or_else(|| infercache_backend::default_cache_dir().join("disk"));
            let size = disk_size.unwrap_or_else(|| DEFAULT_DISK_SIZE.to_owned());
            let capacity = match size.parse::<Capacity>() {
                Ok(Capacity::Bytes(b)) if b > 0 => b,
                Ok(_) => {
                    return Err(invalid(
                        "disk_size",
                        &size,
                        "give a positive byte size such as 10GiB",
                    ));
                }
                Err(e) => return Err(invalid("disk_size", &size, e)),
            };
            Some(DiskSettings {
                dir,
                capacity,
                compression,
            })
        };
        let ttl = text(a.ttl, f.ttl)
            .map(|s| parse_duration(&s).map_err(|e| invalid("ttl", &s, e)))
            .transpose()?;
        let write_back_queue = a.write_back_queue.or(f.write_back_queue);
        if write_back_queue == Some(0) {
            return Err(invalid("write_back_queue", "0", "must be at least 1"));
        }
        if write_back_queue.is_some() && disk.is_none() {
            return Err(ConfigError::Inconsistent(
                "write_back_queue needs the disk tier (drop no_disk)",
            ));
        }
        let enable_cache = if a.disable_cache {
            false
        } else {
            a.enable_cache.or(f.enable_cache).unwrap_or(d.enable_cache)
        };
        let batch = BatchSettings {
            max_batch: positive("max_batch", a.max_batch.or(f.max_batch))?
                .unwrap_or(d.batch.max_batch),
            max_wait: match duration("max_wait", text(a.max_wait, f.max_wait))? {
                Some(w) if w > Duration::from_secs(10) => {
                    return Err(invalid(
                        "max_wait",
                        &format!("{w:?}"),
                        "must be at most 10s",
                    ));
                }
                w => w.unwrap_or(d.batch.max_wait),
            },
            queue: positive("inference_queue", a.inference_queue.or(f.inference_queue))?
                .unwrap_or(d.batch.queue),
        };
        let max_body_bytes = match text(a.max_body_size, f.max_body_size) {
            Some(s) => match s.parse::<Capacity>() {
                Ok(Capacity::Bytes(b)) if b > 0 => usize::try_from(b)
                    .map_err(|_| invalid("max_body_size", &s, "too large for this platform"))?,
                Ok(_) => return Err(invalid("max_body_size", &s, "give a positive byte size")),
                Err(e) => return Err(invalid("max_body_size", &s, e)),
            },
            None => d.limits.max_body_bytes,
        };
        let body_budget_bytes = match text(a.body_budget, f.body_budget) {
            Some(s) => match s.parse::<Capacity>() {
                Ok(Capacity::Bytes(b)) if b >= max_body_bytes as u64 => usize::try_from(b)
                    .map_err(|_| invalid("body_budget", &s, "too large for this platform"))?,
                Ok(_) => {
                    return Err(invalid(
                        "body_budget",
                        &s,
                        "give a byte size of at least max_body_size",
                    ));
                }
                Err(e) => return Err(invalid("body_budget", &s, e)),
            },
            None => d.limits.body_budget_bytes.max(max_body_bytes),
        };
        let limits = Limits {
            max_body_bytes,
            body_budget_bytes,
            max_items: positive("max_items", a.max_items.or(f.max_items))?
                .unwrap_or(d.limits.max_items),
            max_input_chars: positive("max_input_chars", a.max_input_chars.or(f.max_input_chars))?
                .unwrap_or(d.limits.max_input_chars),
            max_concurrent_requests: positive(
                "max_concurrent_requests",
                a.max_concurrent_requests.or(f.max_concurrent_requests),
            )?
            .unwrap_or(d.limits.max_concurrent_requests),
            request_timeout: duration(
                "request_timeout",
                text(a.request_timeout, f.request_timeout),
            )?
            .unwrap_or(d.limits.request_timeout),
        };
        let redis = resolve_redis(RawRedis {
            target: a.redis.or(f.redis),
            memory_fraction: a.redis_memory_fraction.or(f.redis_memory_fraction),
            cluster: a.redis_cluster || f.redis_cluster == Some(true),
            prefix: a.redis_prefix.or(f.redis_prefix),
            write_back_queue: a.redis_write_back_queue.or(f.redis_write_back_queue),
            timeout: duration("redis_timeout", text(a.redis_timeout, f.redis_timeout))?,
            local_reads: a.redis_local_reads.or(f.redis_local_reads),
            local_grace: duration(
                "redis_local_grace",
                text(a.redis_local_grace, f.redis_local_grace),
            )?,
            ca_file: a.redis_ca_file.or(f.redis_ca_file),
        })?;
        let models = models::validate(f.models.unwrap_or_default(), limits.request_timeout)?;
        Ok(Self {
            redis,
            bind,
            enable_cache,
            memory,
            memory_bytes,
            policy,
            disk,
            ttl,
            write_back_queue,
            cache_version: a.cache_version.or(f.cache_version).unwrap_or(0),
            model_dir: a.model_dir.or(f.model_dir),
            batch,
            api_keys_file: a.api_keys_file.or(f.api_keys_file),
            limits,
            shutdown_timeout: duration(
                "shutdown_timeout",
                text(a.shutdown_timeout, f.shutdown_timeout),
            )?
            .unwrap_or(d.shutdown_timeout),
            models,
        })
    }

    /// The engine's configuration; `None` when the cache is disabled.
    pub fn cache_config(&self) -> Option<CacheConfig> {
        if !self.enable_cache {
            return None;
        }
        Some(CacheConfig {
            memory: Some(MemoryConfig {
                policy: self.policy,
                ..MemoryConfig::bytes(self.memory_bytes)
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

    /// A display of the effective configuration for the start-up log. It holds no secret:
    /// API keys live only in their file, whose path is shown, never its contents.
    pub fn redacted(&self) -> impl fmt::Display + '_ {
        Redacted(self)
    }
}

struct Redacted<'a>(&'a ServerConfig);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let opt = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("none".to_owned(), |p| p.display().to_string())
        };
        write!(f, "bind={} enable_cache={}", c.bind, c.enable_cache)?;
        write!(
            f,
            " memory={} ({} bytes) policy={}",
            c.memory, c.memory_bytes, c.policy
        )?;
        match &c.disk {
            Some(d) => write!(
                f,
                " disk_dir={} disk_size={} disk_compression={}",
                d.dir.display(),
                d.capacity,
                d.compression
            )?,
            None => write!(f, " disk_dir=none")?,
        }
        write!(
            f,
            " ttl={:?} write_back_queue={:?} cache_version={} model_dir={}",
            c.ttl,
            c.write_back_queue,
            c.cache_version,
            opt(&c.model_dir)
        )?;
        write!(
            f,
            " max_batch={} max_wait={:?} inference_queue={}",
            c.batch.max_batch, c.batch.max_wait, c.batch.queue
        )?;
        write!(
            f,
            " api_keys_file={} (keys redacted)",
            opt(&c.api_keys_file)
        )?;
        match c.redis.as_ref().map(|r| &r.target) {
            None => write!(f, " redis=none")?,
            Some(RedisTarget::Auto {
                memory_fraction,
                dir,
            }) => write!(
                f,
                " redis=auto redis_memory_fraction={memory_fraction} redis_dir={}",
                dir.display()
            )?,
            Some(RedisTarget::Url(u)) => {
                write!(f, " redis={}", infercache_core::redact_url(u))?;
            }
            Some(RedisTarget::Cluster(us)) => {
                let shown: Vec<String> =
                    us.iter().map(|u| infercache_core::redact_url(u)).collect();
                write!(f, " redis_cluster={}", shown.join(","))?;
            }
        }
        if let Some(r) = &c.redis {
            match r.local_reads {
                LocalReads::InSync { grace } => {
                    write!(f, " redis_local_reads=in-sync redis_local_grace={grace:?}")?;
                }
                LocalReads::Always => write!(f, " redis_local_reads=always")?,
            }
            if let Some(ca) = &r.ca_file {
                write!(f, " redis_ca_file={}", ca.display())?;
            }
        }
        let l = &c.limits;
        write!(
            f,
            " max_body_size={} body_budget={} max_items={} max_input_chars={} max_concurrent_requests={} request_timeout={:?} shutdown_timeout={:?}",
            l.max_body_bytes,
            l.body_budget_bytes,
            l.max_items,
            l.max_input_chars,
            l.max_concurrent_requests,
            l.request_timeout,
            c.shutdown_timeout
        )?;
        for m in &c.models {
            write!(f, " model={}:{}@{}", m.name, m.backend, redacted_url(m))?;
        }
        Ok(())
    }
}

/// A model's URL for logs: any password it holds is replaced by `***`.
fn redacted_url(m: &ModelConfig) -> String {
    let Some(url) = &m.url else {
        return "in-process".to_owned();
    };
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.clone(),
    }
}

/// The Redis settings as given (flags over the file), before validation.
struct RawRedis {
    target: Option<String>,
    memory_fraction: Option<f64>,
    cluster: bool,
    prefix: Option<String>,
    write_back_queue: Option<usize>,
    timeout: Option<Duration>,
    local_reads: Option<String>,
    local_grace: Option<Duration>,
    ca_file: Option<PathBuf>,
}

fn resolve_redis(raw: RawRedis) -> Result<Option<RedisSettings>, ConfigError> {
    let RawRedis {
        target,
        memory_fraction,
        cluster,
        prefix,
        write_back_queue,
        timeout,
        local_reads,
        local_grace,
        ca_file,
    } = raw;
    let Some(target) = target
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
    else {
        if memory_fraction.is_some()
            || prefix.is_some()
            || write_back_queue.is_some()
            || cluster
            || timeout.is_some()
            || local_reads.is_some()
            || local_grace.is_some()
            || ca_file.is_some()
        {
            return Err(ConfigError::Inconsistent(
                "redis_* settings need redis (auto or a URL)",
            ));
        }
        return Ok(None);
    };
    if !cfg!(feature = "redis") {
        return Err(invalid(
            "redis",
            &target,
            "this build has no Redis tier (built without the `redis` feature)",
        ));
    }
    if memory_fraction.is_some() && target != "auto" {
        return Err(ConfigError::Inconsistent(
            "redis_memory_fraction applies only to redis = auto",
        ));
    }
    let target = if target == "auto" {
        let memory_fraction = memory_fraction.unwrap_or(0.3);
        #[cfg(feature = "redis")]
        infercache_redis::managed::validate_memory_fraction(memory_fraction)
            .map_err(|e| invalid("redis_memory_fraction", &memory_fraction.to_string(), e))?;
        RedisTarget::Auto {
            memory_fraction,
            dir: infercache_backend::default_cache_dir().join("redis"),
        }
    } else {
        let urls: Vec<String> = target.split(',').map(|u| u.trim().to_owned()).collect();
        for u in &urls {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(invalid(
                    "redis",
                    &infercache_core::redact_url(u),
                    "give auto, or URLs starting with redis:// or rediss://",
                ));
            }
        }
        if urls.len() > 1 || cluster {
            RedisTarget::Cluster(urls)
        } else {
            RedisTarget::Url(urls.into_iter().next().expect("one URL"))
        }
    };
    let prefix = prefix.unwrap_or_else(|| "infercache:".to_owned());
    if prefix.is_empty() {
        return Err(invalid("redis_prefix", "", "must not be empty"));
    }
    if write_back_queue == Some(0) {
        return Err(invalid("redis_write_back_queue", "0", "must be at least 1"));
    }
    let timeout = timeout.unwrap_or(Duration::from_millis(50));
    if timeout.is_zero() {
        return Err(invalid("redis_timeout", "0", "must be positive"));
    }
    let local_reads = match (local_reads.as_deref().map(str::trim), local_grace) {
        (None | Some("in-sync"), grace) => {
            let grace = grace.unwrap_or(LocalReads::DEFAULT_GRACE);
            LocalReads::InSync { grace }
        }
        (Some("always"), None) => LocalReads::Always,
        (Some("always"), Some(_)) => {
            return Err(ConfigError::Inconsistent(
                "redis_local_grace applies only to redis_local_reads = in-sync",
            ));
        }
        (Some(other), _) => {
            return Err(invalid(
                "redis_local_reads",
                other,
                "give in-sync or always",
            ));
        }
    };
    let tls = match &target {
        RedisTarget::Auto { .. } => false,
        RedisTarget::Url(u) => u.starts_with("rediss://"),
        RedisTarget::Cluster(us) => us.iter().any(|u| u.starts_with("rediss://")),
    };
    if ca_file.is_some() && !tls {
        return Err(ConfigError::Inconsistent(
            "redis_ca_file applies only to rediss:// URLs",
        ));
    }
    Ok(Some(RedisSettings {
        target,
        prefix,
        write_back_queue,
        timeout,
        local_reads,
        ca_file,
    }))
}

fn read_file_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        reason: e.message().to_owned(),
    })
}

fn invalid(key: &'static str, value: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

fn positive(key: &'static str, v: Option<usize>) -> Result<Option<usize>, ConfigError> {
    match v {
        Some(0) => Err(invalid(key, "0", "must be at least 1")),
        v => Ok(v),
    }
}

fn duration(key: &'static str, v: Option<String>) -> Result<Option<Duration>, ConfigError> {
    v.map(|s| parse_duration(&s).map_err(|e| invalid(key, &s, e)))
        .transpose()
}

/// Parses `250ms`, `30s`, `5m`, `12h`, `7d`, or a bare number of seconds.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a whole number with a unit: 250ms, 30s, 5m, 12h, 7d".to_owned())?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| "too large".to_owned())
    };
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => secs(60)?,
        "h" => secs(3600)?,
        "d" => secs(86_400)?,
        other => return Err(format!("unknown unit {other:?}; use ms, s, m, h or d")),
    };
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn redis_settings_resolve_and_bad_ones_name_the_key() {
        let redis = |r: &str, f: &str| {
            let args = ServeArgs {
                redis: Some(r.to_owned()),
                ..ServeArgs::default()
            };
            ServerConfig::resolve(args, file(f)).map(|c| c.redis.unwrap())
        };
        let auto = redis("auto", "").unwrap();
        assert_eq!(
            auto.target,
            RedisTarget::Auto {
                memory_fraction: 0.3,
                dir: infercache_backend::default_cache_dir().join("redis"),
            }
        );
        assert_eq!(
            (auto.prefix.as_str(), auto.timeout, auto.write_back_queue),
            ("infercache:", Duration::from_millis(50), None)
        );
        let from_file = redis(
            "auto",
            "redis_memory_fraction = 0.5\nredis_write_back_queue = 64",
        )
        .unwrap();
        assert!(matches!(
            from_file.target,
            RedisTarget::Auto { memory_fraction, .. } if memory_fraction == 0.5
        ));
        assert_eq!(from_file.write_back_queue, Some(64));
        let err = redis("auto", "redis_memory_fraction = 0.8")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redis_memory_fraction") && err.contains("0.1") && err.contains("0.7"),
            "{err}"
        );
        assert_eq!(
            redis("redis://a:1,redis://b:2", "").unwrap().target,
            RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            redis("rediss://:pw@h:6380/2", "").unwrap().target,
            RedisTarget::Url("rediss://:pw@h:6380/2".into())
        );
        let err = redis("http://:secret@h", "").unwrap_err().to_string();
        assert!(err.contains("redis://") && !err.contains("secret"), "{err}");
        let err = redis("redis://h", "redis_memory_fraction = 0.3").unwrap_err();
        assert!(err.to_string().contains("only to redis = auto"), "{err}");
        let none = ServerConfig::resolve(ServeArgs::default(), file("redis_prefix = \"x:\""));
        assert!(none.unwrap_err().to_string().contains("need redis"));
    }

    #[test]
    fn local_reads_grace_and_ca_file_resolve_and_bad_ones_name_the_key() {
        let redis = |r: &str, f: &str| {
            let args = ServeArgs {
                redis: Some(r.to_owned()),
                ..ServeArgs::default()
            };
            ServerConfig::resolve(args, file(f))
        };
        let c = redis("redis://h", "").unwrap();
        let settings = c.redis.as_ref().unwrap();
        assert_eq!(settings.local_reads, LocalReads::default());
        assert_eq!(settings.ca_file, None);
        let c = redis(
            "rediss://h",
            "redis_local_grace = \"3s\"\nredis_ca_file = \"/etc/ca.pem\"",
        )
        .unwrap();
        assert_eq!(
            c.cache_config().unwrap().local_reads,
            LocalReads::InSync {
                grace: Duration::from_secs(3)
            }
        );
        assert_eq!(c.redis.unwrap().ca_file, Some(PathBuf::from("/etc/ca.pem")));
        let args = ServeArgs {
            redis: Some("redis://h".into()),
            redis_local_reads: Some("always".into()),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(args, file("")).unwrap();
        assert_eq!(c.cache_config().unwrap().local_reads, LocalReads::Always);
        for (toml, named) in [
            ("redis_local_reads = \"sometimes\"", "redis_local_reads"),
            (
                "redis_local_reads = \"always\"\nredis_local_grace = \"1s\"",
                "redis_local_grace",
            ),
            ("redis_local_grace = \"soon\"", "redis_local_grace"),
            ("redis_ca_file = \"/etc/ca.pem\"", "rediss://"),
        ] {
            let err = redis("redis://h", toml).unwrap_err().to_string();
            assert!(err.contains(named), "{toml}: {err}");
        }
        let none = ServerConfig::resolve(ServeArgs::default(), file("redis_ca_file = \"x\""));
        assert!(none.unwrap_err().to_string().contains("need redis"));
    }

    #[test]
    fn defaults_apply_with_nothing_given() {
        let c = ServerConfig::resolve(ServeArgs::default(), FileConfig::default()).unwrap();
        let disk = c.disk.clone().expect("serve runs the disk tier by default");
        assert_eq!(disk.capacity, 2 << 30);
        assert_eq!(
            disk.dir,
            infercache_backend::default_cache_dir().join("disk")
        );
        assert_eq!(
            ServerConfig {
                disk: None,
                ..c.clone()
            },
            ServerConfig::default()
        );
        assert!(c.bind.ip().is_loopback());
        let memory_only = ServeArgs {
            no_disk: true,
            ..ServeArgs::default()
        };
        assert!(
            ServerConfig::resolve(memory_only, FileConfig::default())
                .unwrap()
                .disk
                .is_none()
        );
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let f = file(
            r#"
            bind = "0.0.0.0:9000"
            memory = "64MiB"
            policy = "lru"
            ttl = "2h"
            max_items = 10
            disk_dir = "/tmp/x"
            disk_size = "1GiB"
            "#,
        );
        let a = ServeArgs {
            memory: Some("128MiB".into()),
            max_items: Some(20),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(a, f).unwrap();
        assert_eq!(c.bind, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.memory_bytes, 128 << 20);
        assert_eq!(c.policy, Policy::Lru);
        assert_eq!(c.ttl, Some(Duration::from_secs(7200)));
        assert_eq!(c.limits.max_items, 20);
        assert_eq!(c.disk.unwrap().capacity, 1 << 30);
    }

    #[test]
    fn toml_numbers_read_as_sizes_and_fractions() {
        let c = ServerConfig::resolve(ServeArgs::default(), file("memory = 4096")).unwrap();
        assert_eq!(c.memory, Capacity::Bytes(4096));
        let c = ServerConfig::resolve(ServeArgs::default(), file("memory = 0.25")).unwrap();
        assert_eq!(c.memory, Capacity::FractionOfRam(0.25));
    }

    #[test]
    fn disable_cache_wins() {
        let a = ServeArgs {
            enable_cache: Some(true),
            disable_cache: true,
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(a, FileConfig::default()).unwrap();
        assert!(!c.enable_cache);
        assert!(c.cache_config().is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ServeArgs {
                memory: Some("lots".into()),
                ..ServeArgs::default()
            },
            ServeArgs {
                ttl: Some("5 fortnights".into()),
                ..ServeArgs::default()
            },
            ServeArgs {
                max_items: Some(0),
                ..ServeArgs::default()
            },
            ServeArgs {
                bind: Some("nowhere".into()),
                ..ServeArgs::default()
            },
        ];
        for (a, key) in cases
            .into_iter()
            .zip(["memory", "ttl", "max_items", "bind"])
        {
            let e = ServerConfig::resolve(a, FileConfig::default()).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = ServerConfig::resolve(
            ServeArgs {
                disk_dir: Some("/tmp/x".into()),
                no_disk: true,
                ..ServeArgs::default()
            },
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no_disk"), "{e}");
    }

    #[test]
    fn the_body_budget_is_a_size_of_at_least_the_body_limit() {
        let c = ServerConfig::resolve(ServeArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(c.limits.body_budget_bytes, 64 << 20);
        let c = ServerConfig::resolve(
            ServeArgs {
                body_budget: Some("8MiB".into()),
                ..ServeArgs::default()
            },
            file("body_budget = \"1GiB\""),
        )
        .unwrap();
        assert_eq!(c.limits.body_budget_bytes, 8 << 20);
        // A body limit above the default budget raises the default with it.
        let c = ServerConfig::resolve(ServeArgs::default(), file("max_body_size = \"100MiB\""))
            .unwrap();
        assert_eq!(c.limits.body_budget_bytes, 100 << 20);
        for bad in ["1MiB", "0.5", "lots"] {
            let e = ServerConfig::resolve(
                ServeArgs {
                    body_budget: Some(bad.into()),
                    ..ServeArgs::default()
                },
                FileConfig::default(),
            )
            .unwrap_err();
            assert!(e.to_string().contains("body_budget"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("memroy = \"1GiB\"").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "0s", "1.5h", "10 parsecs", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redacted_display_names_every_key() {
        let shown = ServerConfig::default().redacted().to_string();
        for key in [
            "bind",
            "memory",
            "policy",
            "ttl",
            "max_items",
            "api_keys_file",
        ] {
            assert!(shown.contains(key), "{shown}");
        }
    }
}
