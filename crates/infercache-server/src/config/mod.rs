//! Configuration in two stages: raw ([`ServeArgs`]: flags, `INFERCACHE_*` variables and a
//! TOML file, one definition per setting in [`raw`]) then validated ([`ServerConfig`], in
//! [`values`]; its display for the log in `redact.rs`, the `[[models]]` list in
//! `models.rs`).
//!
//! Precedence: a flag beats its environment variable (clap resolves both), which beats the
//! TOML file given with `--config`, which beats the default. Every setting has all three
//! spellings: `--disk-size`, `INFERCACHE_DISK_SIZE`, `disk_size = "10GiB"`; the layers are
//! merged field by field ([`ServeArgs::or`]) before anything is validated, so a bad value
//! names its key whichever layer gave it.
//!
//! Durations are read by [`humantime`] (`50ms`, `90s`, `15m`, `12h`, `7d`, `2w`, `1.5h`,
//! `1h 30m`); a bare number (or a TOML integer) is seconds ([`parse_duration`]). Sizes are
//! [`Capacity`] (`infercache-core`): bytes as `bytesize` reads them (`512MiB`, `10GB`, a bare
//! number), and for `memory` a fraction of RAM (`0.3`), the one part written by hand there
//! because no size crate reads it.
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
//! | `weights_from` | none | a weight server (`http://host:port`): the built-in model is built from its chunks, each verified, instead of local files (no local copy of the weights) |
//! | `weights_model` | `all-MiniLM-L6-v2` | with `weights_from`: the model's name on the weight server |
//! | `weights_dir` | none | a chunk directory, or a directory of them: serves `/v1/weights/...` beside the API, behind its keys |
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
//! | `datasets_dir` | none (`[cache.disk] path`) | serve the dataset cache in this directory on `/v1/datasets` (the `datasets` commands' `--dir`); none: the routes answer 404 |
//! | `[cache]` | LlamaHome's defaults | the served dataset cache's `memory_size`, `disk_size`, `policy`, `eviction_threshold`, `cleanup_interval`, `[cache.disk] path` (the directory when `datasets_dir` is not given) and `use_mmap`, also as `INFERCACHE_CACHE_*` variables ([`infercache_datasets::settings`]; TOML only, no flags) |
//! | `[[models]]` | none: the built-in embedder | models served, each through its upstream (TOML only; see `config/models.rs`) |

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use infercache_core::Capacity;
use infercache_engine::{Compression, LocalReads};

mod models;
pub mod raw;
mod redact;
pub mod values;

pub use models::RawModel;
pub(crate) use raw::Scalar;
pub use raw::ServeArgs;
pub use values::{
    BatchSettings, DiskSettings, Limits, RedisSettings, RedisTarget, ServerConfig, WeightsFrom,
};

/// Size of the disk tier when none is given.
const DEFAULT_DISK_SIZE: &str = "2GiB";

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
    /// A `[cache]` setting of the dataset cache that cannot work, naming the key.
    #[error("[cache]: {0}")]
    Cache(#[source] infercache_datasets::DatasetError),
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

impl ServerConfig {
    /// Validates `args`, reading the `--config` file if one is named.
    ///
    /// # Errors
    /// The first setting that does not parse or does not fit with the others.
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let cache_env = infercache_datasets::CacheKeys::from_env(|name| std::env::var(name).ok());
        Self::resolve_with(args.clone(), file, cache_env)
    }

    /// Validates `flags` (flags and environment) layered over `file`, with no
    /// `INFERCACHE_CACHE_*` variables.
    #[cfg(test)]
    fn resolve(flags: ServeArgs, file: ServeArgs) -> Result<Self, ConfigError> {
        Self::resolve_with(flags, file, infercache_datasets::CacheKeys::default())
    }

    /// As [`Self::resolve`], with the `INFERCACHE_CACHE_*` variables over the file's
    /// `[cache]` table.
    fn resolve_with(
        flags: ServeArgs,
        file: ServeArgs,
        cache_env: infercache_datasets::CacheKeys,
    ) -> Result<Self, ConfigError> {
        let mut a = flags.or(file);
        let d = Self::default();
        let bind = match a.bind.take() {
            Some(s) => s.parse().map_err(|e| invalid("bind", &s, e))?,
            None => d.bind,
        };
        let memory = match a.memory.take() {
            Some(s) => s
                .parse::<Capacity>()
                .map_err(|e| invalid("memory", &s, e))?,
            None => d.memory,
        };
        let memory_bytes = infercache_engine::resolve_capacity(memory)
            .map_err(|e| invalid("memory", &memory.to_string(), e))?;
        let policy = match a.policy.take() {
            Some(s) => s.parse().map_err(|e| invalid("policy", &s, e))?,
            None => d.policy,
        };
        let disk = resolve_disk(&mut a)?;
        let ttl = duration("ttl", a.ttl.take())?;
        let write_back_queue = a.write_back_queue;
        if write_back_queue == Some(0) {
            return Err(invalid("write_back_queue", "0", "must be at least 1"));
        }
        if write_back_queue.is_some() && disk.is_none() {
            return Err(ConfigError::Inconsistent(
                "write_back_queue needs the disk tier (drop no_disk)",
            ));
        }
        let enable_cache = if a.disable_cache == Some(true) {
            false
        } else {
            a.enable_cache.unwrap_or(d.enable_cache)
        };
        let batch = resolve_batch(&mut a, d.batch)?;
        let limits = resolve_limits(&mut a, d.limits)?;
        let shutdown_timeout =
            duration("shutdown_timeout", a.shutdown_timeout.take())?.unwrap_or(d.shutdown_timeout);
        let redis = resolve_redis(&mut a)?;
        let models = models::validate(a.models.take().unwrap_or_default(), limits.request_timeout)?;
        let datasets_cache = match a.cache.take() {
            Some(table) => infercache_datasets::CacheKeys::from_table(table),
            None => Ok(infercache_datasets::CacheKeys::default()),
        }
        .and_then(|file| cache_env.or(file).resolve())
        .map_err(ConfigError::Cache)?;
        let datasets_dir = a.datasets_dir.take().or_else(|| datasets_cache.dir.clone());
        let model_dir = a.model_dir.take();
        let weights_from = resolve_weights_from(
            a.weights_from.take(),
            a.weights_model.take(),
            model_dir.is_some(),
        )?;
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
            cache_version: a.cache_version.unwrap_or(d.cache_version),
            model_dir,
            weights_from,
            weights_dir: a.weights_dir.take(),
            batch,
            api_keys_file: a.api_keys_file.take(),
            limits,
            shutdown_timeout,
            models,
            datasets_dir,
            datasets_cache,
        })
    }
}

/// `weights_from` and `weights_model`, checked: an http(s) URL with a host, a model name
/// of 1 to 128 of `A-Z a-z 0-9 . _ -`, and not beside `model_dir`.
fn resolve_weights_from(
    url: Option<String>,
    model: Option<String>,
    model_dir: bool,
) -> Result<Option<WeightsFrom>, ConfigError> {
    let Some(url) = url else {
        if model.is_some() {
            return Err(ConfigError::Inconsistent(
                "weights_model needs weights_from",
            ));
        }
        return Ok(None);
    };
    if model_dir {
        return Err(ConfigError::Inconsistent(
            "weights_from and model_dir both say where the built-in model comes from: give one",
        ));
    }
    let shown = infercache_core::redact_url(&url);
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(_) => {
            return Err(invalid(
                "weights_from",
                &shown,
                "give an http:// or https:// URL with a host",
            ));
        }
        Err(e) => return Err(invalid("weights_from", &shown, e)),
    }
    let model = model.unwrap_or_else(|| infercache_backend::BUILTIN_MODEL.to_owned());
    let valid = !model.is_empty()
        && model.len() <= 128
        && !model.starts_with('.')
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(invalid(
            "weights_model",
            &model,
            "give 1 to 128 of A-Z a-z 0-9 . _ - (not starting with .)",
        ));
    }
    Ok(Some(WeightsFrom { url, model }))
}

/// The disk tier: on by default (`disk/` under the cache directory), off with `no_disk`.
fn resolve_disk(a: &mut ServeArgs) -> Result<Option<DiskSettings>, ConfigError> {
    let compression = match a.disk_compression.take() {
        Some(s) => s.parse().map_err(|e| invalid("disk_compression", &s, e))?,
        None => Compression::default(),
    };
    let (dir, size) = (a.disk_dir.take(), a.disk_size.take());
    if a.no_disk == Some(true) {
        if dir.is_some() || size.is_some() {
            return Err(ConfigError::Inconsistent(
                "no_disk contradicts disk_dir / disk_size",
            ));
        }
        return Ok(None);
    }
    let dir = dir.unwrap_or_else(|| infercache_backend::default_cache_dir().join("disk"));
    let size = size.unwrap_or_else(|| DEFAULT_DISK_SIZE.to_owned());
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
    Ok(Some(DiskSettings {
        dir,
        capacity,
        compression,
    }))
}

/// How the model pool batches.
fn resolve_batch(a: &mut ServeArgs, d: BatchSettings) -> Result<BatchSettings, ConfigError> {
    let max_wait = match duration("max_wait", a.max_wait.take())? {
        Some(w) if w > Duration::from_secs(10) => {
            return Err(invalid(
                "max_wait",
                &format!("{w:?}"),
                "must be at most 10s",
            ));
        }
        w => w.unwrap_or(d.max_wait),
    };
    Ok(BatchSettings {
        max_batch: positive("max_batch", a.max_batch)?.unwrap_or(d.max_batch),
        max_wait,
        queue: positive("inference_queue", a.inference_queue)?.unwrap_or(d.queue),
    })
}

/// The request limits; the body budget is at least the body limit.
fn resolve_limits(a: &mut ServeArgs, d: Limits) -> Result<Limits, ConfigError> {
    let max_body_bytes = match a.max_body_size.take() {
        Some(s) => match s.parse::<Capacity>() {
            Ok(Capacity::Bytes(b)) if b > 0 => usize::try_from(b)
                .map_err(|_| invalid("max_body_size", &s, "too large for this platform"))?,
            Ok(_) => return Err(invalid("max_body_size", &s, "give a positive byte size")),
            Err(e) => return Err(invalid("max_body_size", &s, e)),
        },
        None => d.max_body_bytes,
    };
    let body_budget_bytes = match a.body_budget.take() {
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
        None => d.body_budget_bytes.max(max_body_bytes),
    };
    Ok(Limits {
        max_body_bytes,
        body_budget_bytes,
        max_items: positive("max_items", a.max_items)?.unwrap_or(d.max_items),
        max_input_chars: positive("max_input_chars", a.max_input_chars)?
            .unwrap_or(d.max_input_chars),
        max_concurrent_requests: positive("max_concurrent_requests", a.max_concurrent_requests)?
            .unwrap_or(d.max_concurrent_requests),
        request_timeout: duration("request_timeout", a.request_timeout.take())?
            .unwrap_or(d.request_timeout),
    })
}

/// The Redis tier: none unless `redis` is given, and then every `redis_*` setting checked
/// against it.
fn resolve_redis(a: &mut ServeArgs) -> Result<Option<RedisSettings>, ConfigError> {
    let timeout = duration("redis_timeout", a.redis_timeout.take())?;
    let local_grace = duration("redis_local_grace", a.redis_local_grace.take())?;
    let memory_fraction = a.redis_memory_fraction;
    let cluster = a.redis_cluster == Some(true);
    let (prefix, write_back_queue) = (a.redis_prefix.take(), a.redis_write_back_queue);
    let (local_reads, ca_file) = (a.redis_local_reads.take(), a.redis_ca_file.take());
    let Some(target) = a
        .redis
        .take()
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

/// The `--config` file: the keys of [`ServeArgs`], unknown ones refused.
fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
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

/// Reads a duration: what [`humantime::parse_duration`] reads (`250ms`, `90s`, `15m`,
/// `12h`, `7d`, `2w`, `1.5h`, `1h 30m`), or a bare number of seconds (`30`, which is also
/// what a TOML integer reads as). humantime wants a unit, so the bare number is the one
/// spelling read here. Zero is refused: every duration setting is a bound or a lifetime.
///
/// # Errors
/// humantime's message, which says what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(t.parse().map_err(|_| "too large".to_owned())?)
    } else {
        humantime::parse_duration(t).map_err(|e| e.to_string())?
    };
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use infercache_engine::Policy;

    use super::*;

    fn file(text: &str) -> ServeArgs {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_cache_table_sizes_the_served_datasets_and_names_bad_keys() {
        let c = ServerConfig::resolve(
            ServeArgs::default(),
            file(
                "disk_size = \"1GiB\"\n[cache]\ndisk_size = 64\npolicy = \"fifo\"\n[cache.disk]\npath = \"/srv/ds\"\n",
            ),
        )
        .unwrap();
        assert_eq!(c.datasets_dir, Some(PathBuf::from("/srv/ds")));
        assert_eq!(c.datasets_cache.disk_size, 64 << 20);
        assert_eq!(c.datasets_cache.policy.to_string(), "fifo");
        // The inference cache's own `disk_size` is another setting.
        assert_eq!(c.disk.unwrap().capacity, 1 << 30);
        // `datasets_dir` wins over `[cache.disk] path`; variables over the table.
        let env = infercache_datasets::CacheKeys {
            disk_size: Some("2GB".to_owned()),
            ..infercache_datasets::CacheKeys::default()
        };
        let flags = ServeArgs {
            datasets_dir: Some("/flag".into()),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve_with(
            flags,
            file("[cache]\ndisk_size = 64\n[cache.disk]\npath = \"/srv/ds\"\n"),
            env,
        )
        .unwrap();
        assert_eq!(c.datasets_dir, Some(PathBuf::from("/flag")));
        assert_eq!(c.datasets_cache.disk_size, 2_000_000_000);
        assert_eq!(ServerConfig::default().datasets_dir, None);
        for (text, key) in [
            ("[cache]\npolicy = \"random\"", "policy"),
            ("[cache]\nmemory_size = \"lots\"", "memory_size"),
            ("[cache]\ncolour = 1", "colour"),
        ] {
            let e = ServerConfig::resolve(ServeArgs::default(), file(text)).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
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
        let c = ServerConfig::resolve(ServeArgs::default(), ServeArgs::default()).unwrap();
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
            no_disk: Some(true),
            ..ServeArgs::default()
        };
        assert!(
            ServerConfig::resolve(memory_only, ServeArgs::default())
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
            disable_cache: Some(true),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(a, ServeArgs::default()).unwrap();
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
            let e = ServerConfig::resolve(a, ServeArgs::default()).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = ServerConfig::resolve(
            ServeArgs {
                disk_dir: Some("/tmp/x".into()),
                no_disk: Some(true),
                ..ServeArgs::default()
            },
            ServeArgs::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no_disk"), "{e}");
    }

    #[test]
    fn the_body_budget_is_a_size_of_at_least_the_body_limit() {
        let c = ServerConfig::resolve(ServeArgs::default(), ServeArgs::default()).unwrap();
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
                ServeArgs::default(),
            )
            .unwrap_err();
            assert!(e.to_string().contains("body_budget"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<ServeArgs>("memroy = \"1GiB\"").is_err());
    }

    #[test]
    fn durations_parse_in_every_spelling() {
        for (text, expected) in [
            ("50ms", Duration::from_millis(50)),
            ("250ms", Duration::from_millis(250)),
            ("90s", Duration::from_secs(90)),
            ("30", Duration::from_secs(30)),
            (" 30s ", Duration::from_secs(30)),
            ("15m", Duration::from_secs(900)),
            ("12h", Duration::from_secs(43_200)),
            ("7d", Duration::from_secs(604_800)),
            ("2w", Duration::from_secs(1_209_600)),
            ("1.5h", Duration::from_secs(5_400)),
            ("1h 30m", Duration::from_secs(5_400)),
            ("10 s", Duration::from_secs(10)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
        for bad in ["", "0s", "0", "10 parsecs", "-1s", "s", "5 fortnights"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        // The same spellings as TOML strings and integers, and as flags.
        let c = ServerConfig::resolve(
            ServeArgs {
                max_wait: Some("50ms".into()),
                ..ServeArgs::default()
            },
            file("ttl = \"7d\"\nrequest_timeout = 45\nshutdown_timeout = \"1m 30s\""),
        )
        .unwrap();
        assert_eq!(c.batch.max_wait, Duration::from_millis(50));
        assert_eq!(c.ttl, Some(Duration::from_secs(604_800)));
        assert_eq!(c.limits.request_timeout, Duration::from_secs(45));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(90));
    }

    /// The `clap::Command` of [`ServeArgs`], as the binary flattens it.
    fn command() -> clap::Command {
        use clap::Args as _;
        ServeArgs::augment_args(clap::Command::new("serve"))
    }

    #[test]
    fn every_setting_is_a_flag_a_variable_and_a_file_key() {
        let cmd = command();
        let flag_only = ["disable_cache"];
        let file_only = ["models", "cache"];
        for key in ServeArgs::KEYS {
            let arg = cmd.get_arguments().find(|a| a.get_id() == *key);
            if file_only.contains(key) {
                assert!(arg.is_none(), "{key} is a file key only");
            } else {
                let arg = arg.unwrap_or_else(|| panic!("{key} has no flag"));
                assert_eq!(arg.get_long(), Some(key.replace('_', "-").as_str()));
                let env = arg.get_env().and_then(|e| e.to_str());
                if flag_only.contains(key) {
                    assert_eq!(env, None, "{key}");
                } else {
                    let expected = format!("INFERCACHE_{}", key.to_uppercase());
                    assert_eq!(env, Some(expected.as_str()), "{key}");
                }
            }
            // A file key takes one of these values; `config` and the flag-only ones none.
            let in_file = ["\"1s\"", "1", "true", "[]"]
                .iter()
                .any(|v| toml::from_str::<ServeArgs>(&format!("{key} = {v}")).is_ok());
            let expected = !(flag_only.contains(key) || *key == "config");
            assert_eq!(in_file, expected, "{key} as a file key");
        }
        assert_eq!(
            cmd.get_arguments().count(),
            ServeArgs::KEYS.len() - file_only.len(),
            "every flag is a setting of ServeArgs::KEYS"
        );
    }

    #[test]
    fn the_docs_tables_name_every_setting() {
        let keys_in = |table: &str| -> Vec<String> {
            table
                .lines()
                .filter_map(|l| l.trim_start_matches("//! ").strip_prefix("| `"))
                .map(|l| l.split('`').next().unwrap_or_default().to_owned())
                .collect()
        };
        let module = keys_in(include_str!("mod.rs"));
        let readme = include_str!("../../../../README.md");
        let section = readme
            .split("### Configuration of `infercache serve`")
            .nth(1)
            .expect("README has the configuration section");
        let section = section.split("\n### ").next().unwrap_or_default();
        for key in ServeArgs::KEYS {
            if ["config", "disable_cache"].contains(key) {
                continue;
            }
            let shown = match *key {
                "models" => "[[models]]",
                "cache" => "[cache]",
                key => key,
            };
            assert!(
                module.iter().any(|k| k == shown),
                "{key} in the config/ docs"
            );
            if !["models", "cache"].contains(key) {
                let row = format!(
                    "| `{}` | `INFERCACHE_{}` | `{key}` |",
                    key.replace('_', "-"),
                    key.to_uppercase()
                );
                let flag = format!("`--{}", key.replace('_', "-"));
                assert!(
                    section
                        .lines()
                        .any(|l| l.contains(&flag) && l.contains(&format!("| `{key}` |"))),
                    "README's configuration table has no row for {key} ({row})"
                );
            }
        }
    }

    #[test]
    fn settings_given_only_by_the_file_apply() {
        let c = ServerConfig::resolve(
            ServeArgs::default(),
            file(
                r#"
                no_disk = true
                ttl = 90
                max_wait = "2ms"
                request_timeout = "1m"
                max_body_size = 1048576
                redis = "redis://h"
                redis_cluster = true
                redis_timeout = "250ms"
                "#,
            ),
        )
        .unwrap();
        assert!(c.disk.is_none());
        assert_eq!(c.ttl, Some(Duration::from_secs(90)));
        assert_eq!(c.batch.max_wait, Duration::from_millis(2));
        assert_eq!(c.limits.request_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.max_body_bytes, 1 << 20);
        let redis = c.redis.unwrap();
        assert_eq!(redis.target, RedisTarget::Cluster(vec!["redis://h".into()]));
        assert_eq!(redis.timeout, Duration::from_millis(250));
    }

    #[test]
    fn a_flag_set_to_false_beats_the_file() {
        let flags = ServeArgs {
            no_disk: Some(false),
            enable_cache: Some(false),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(flags, file("no_disk = true\nenable_cache = true")).unwrap();
        assert!(c.disk.is_some());
        assert!(!c.enable_cache);
    }

    #[test]
    fn boolean_flags_take_no_value_or_a_value() {
        use clap::FromArgMatches as _;
        let parse = |args: &[&str]| {
            let m = command()
                .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
                .unwrap();
            ServeArgs::from_arg_matches(&m).unwrap()
        };
        let a = parse(&["--no-disk", "--redis-cluster", "--disable-cache"]);
        assert_eq!(
            (a.no_disk, a.redis_cluster, a.disable_cache),
            (Some(true), Some(true), Some(true))
        );
        let a = parse(&["--no-disk=false", "--enable-cache=false"]);
        assert_eq!((a.no_disk, a.enable_cache), (Some(false), Some(false)));
        let a = parse(&[]);
        assert_eq!((a.no_disk, a.disable_cache), (None, None));
    }

    #[test]
    fn redacted_display_names_every_key() {
        let c = ServerConfig::resolve(
            ServeArgs {
                redis: Some("rediss://:secret@h".into()),
                redis_ca_file: Some("/etc/ca.pem".into()),
                ttl: Some("1h".into()),
                api_keys_file: Some("/etc/keys.toml".into()),
                ..ServeArgs::default()
            },
            file("[[models]]\nname = \"m\"\nbackend = \"http-json\"\nurl = \"http://u:pw@up:1\""),
        )
        .unwrap();
        let shown = c.redacted().to_string();
        assert!(
            !shown.contains("secret") && !shown.contains("pw@"),
            "{shown}"
        );
        // Shown by another name: the file is where settings came from; `disable_cache` is
        // `enable_cache=false`; `no_disk` is `disk_dir=none`; each model is `model=`.
        // `[cache]` is `datasets_cache=`.
        let implied = ["config", "disable_cache", "no_disk", "models", "cache"];
        // Shown only for their kind of Redis target.
        let auto = ["redis_memory_fraction"];
        let cluster = ["redis_cluster"];
        for key in ServeArgs::KEYS {
            if implied.contains(key) || auto.contains(key) || cluster.contains(key) {
                continue;
            }
            assert!(
                shown.contains(&format!(" {key}=")) || shown.starts_with(&format!("{key}=")),
                "{key}: {shown}"
            );
        }
        assert!(
            shown.contains(" model=m:http-json@http://u:***@up:1"),
            "{shown}"
        );
        let auto_shown = ServerConfig::resolve(
            ServeArgs {
                redis: Some("auto".into()),
                ..ServeArgs::default()
            },
            ServeArgs::default(),
        )
        .unwrap()
        .redacted()
        .to_string();
        assert!(
            auto_shown.contains(" redis_memory_fraction=0.3"),
            "{auto_shown}"
        );
        let cluster_shown = ServerConfig::resolve(
            ServeArgs {
                redis: Some("redis://a,redis://:pw@b".into()),
                ..ServeArgs::default()
            },
            ServeArgs::default(),
        )
        .unwrap()
        .redacted()
        .to_string();
        assert!(
            cluster_shown.contains(" redis_cluster=redis://a,redis://:***@b"),
            "{cluster_shown}"
        );
        let off = ServerConfig::resolve(
            ServeArgs {
                no_disk: Some(true),
                disable_cache: Some(true),
                ..ServeArgs::default()
            },
            ServeArgs::default(),
        )
        .unwrap()
        .redacted()
        .to_string();
        assert!(
            off.contains("disk_dir=none") && off.contains("enable_cache=false"),
            "{off}"
        );
    }
}
