//! The raw settings of `infercache serve`: [`ServeArgs`], one definition per setting.
//!
//! Each field is at once a flag (`--disk-size`), an environment variable
//! (`INFERCACHE_DISK_SIZE`; clap reads both, the flag winning) and a key of the `--config`
//! TOML file (`disk_size`; serde reads it, unknown keys refused). Every field is an
//! `Option`, so "not given" is `None` in each layer, and [`ServeArgs::or`], generated from
//! the same definition by the `settings!` macro below, layers flags and environment over the
//! file field by field. Values stay as written (text for sizes and durations) until
//! [`super::ServerConfig`] validates them, so a bad value names its key whichever layer gave it.
//!
//! A new setting is a field here (its doc comment is its `--help`; `#[arg(long, env =
//! "INFERCACHE_…")]`; `#[serde(deserialize_with = "text")]` for a size or a duration, so
//! TOML numbers read as text), its check in `resolve`, its field in `values.rs`, its part of
//! the redacted display and its rows in the tables of the module docs and the README. Tests
//! fail when a field lacks its flag, its variable, a table row or its place in the display.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::models::RawModel;

/// Declares the settings struct and, from the same field list, the layering of one set of
/// settings over another and the list of their names. Written as a macro because the merge
/// is one line per field that must never be forgotten; a crate for it (figment) would bring
/// a second `toml` and value tree, for what is `Option::or` on each field.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: Option<$ty:ty>,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: Option<$ty>,
            )*
        }

        impl $name {
            /// The name of every field, as the TOML file spells it (flags write it with
            /// dashes, variables in capitals after `INFERCACHE_`).
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Each setting from `self` where it gives one, else from `lower`: flags and
            /// environment (`self`) over the file (`lower`).
            #[must_use]
            pub fn or(self, lower: Self) -> Self {
                Self {
                    $($field: self.$field.or(lower.$field),)*
                }
            }
        }
    };
}

settings! {
    /// Flags of `infercache serve`; the binary flattens this into its subcommand. Every
    /// flag is also an `INFERCACHE_*` environment variable and a key of the `--config` file
    /// (except `--config` and `--disable-cache`, which are flags and variables only, and
    /// `[[models]]`, which is a file key only).
    #[derive(Debug, Clone, Default, clap::Args, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct ServeArgs {
        /// TOML file with any of the settings below (flags and environment win over it).
        #[arg(long, env = "INFERCACHE_CONFIG", value_name = "FILE")]
        #[serde(skip)]
        pub config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, env = "INFERCACHE_BIND", value_name = "ADDR")]
        pub bind: Option<String>,
        /// Memory tier size: bytes (`512MiB`) or a fraction of RAM (`0.3`) [default: 256MiB];
        /// the disk tier's index in memory is charged to it.
        #[arg(long, env = "INFERCACHE_MEMORY", value_name = "SIZE")]
        #[serde(deserialize_with = "text")]
        pub memory: Option<String>,
        /// Memory eviction policy: s3fifo, lru, lfu, fifo, random [default: s3fifo].
        #[arg(long, env = "INFERCACHE_POLICY", value_name = "POLICY")]
        pub policy: Option<String>,
        /// Directory of the persistent disk tier [default: `disk/` in the cache directory].
        #[arg(long, env = "INFERCACHE_DISK_DIR", value_name = "DIR")]
        pub disk_dir: Option<PathBuf>,
        /// Disk tier size in bytes (`10GiB`) [default: 2GiB].
        #[arg(long, env = "INFERCACHE_DISK_SIZE", value_name = "SIZE")]
        #[serde(deserialize_with = "text")]
        pub disk_size: Option<String>,
        /// Run without the disk tier (memory only); `--no-disk=false` keeps it.
        #[arg(
            long,
            env = "INFERCACHE_NO_DISK",
            value_name = "BOOL",
            num_args = 0..=1,
            default_missing_value = "true",
        )]
        pub no_disk: Option<bool>,
        /// Disk compression: none, lz4, zstd [default: lz4].
        #[arg(long, env = "INFERCACHE_DISK_COMPRESSION", value_name = "CODEC")]
        pub disk_compression: Option<String>,
        /// Default TTL of entries (`90s`, `12h`, `7d`) [default: none].
        #[arg(long, env = "INFERCACHE_TTL", value_name = "DURATION")]
        #[serde(deserialize_with = "text")]
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
        #[arg(long, num_args = 0, default_missing_value = "true")]
        #[serde(skip)]
        pub disable_cache: Option<bool>,
        /// Directory holding the model files [default: download into the user cache directory].
        #[arg(long, env = "INFERCACHE_MODEL_DIR", value_name = "DIR")]
        pub model_dir: Option<PathBuf>,
        /// Build the built-in model from the chunks of this weight server (http://host:port),
        /// each verified, instead of local files [default: none].
        #[arg(long, env = "INFERCACHE_WEIGHTS_FROM", value_name = "URL")]
        pub weights_from: Option<String>,
        /// With --weights-from: the model's name on the weight server [default: all-MiniLM-L6-v2].
        #[arg(long, env = "INFERCACHE_WEIGHTS_MODEL", value_name = "NAME")]
        pub weights_model: Option<String>,
        /// Serve the chunked models under DIR at /v1/weights/... [default: none].
        #[arg(long, env = "INFERCACHE_WEIGHTS_DIR", value_name = "DIR")]
        pub weights_dir: Option<PathBuf>,
        /// Most texts in one model invocation [default: 32].
        #[arg(long, env = "INFERCACHE_MAX_BATCH", value_name = "N")]
        pub max_batch: Option<usize>,
        /// Longest a text waits for its batch to fill (`5ms`) [default: 5ms].
        #[arg(long, env = "INFERCACHE_MAX_WAIT", value_name = "DURATION")]
        #[serde(deserialize_with = "text")]
        pub max_wait: Option<String>,
        /// Requests waiting for the model before more are refused with 429 [default: 1024].
        #[arg(long, env = "INFERCACHE_INFERENCE_QUEUE", value_name = "N")]
        pub inference_queue: Option<usize>,
        /// TOML file of API keys, each mapped to a tenant [default: none, no auth].
        #[arg(long, env = "INFERCACHE_API_KEYS_FILE", value_name = "FILE")]
        pub api_keys_file: Option<PathBuf>,
        /// Largest request body; larger get 413 [default: 2MiB].
        #[arg(long, env = "INFERCACHE_MAX_BODY_SIZE", value_name = "SIZE")]
        #[serde(deserialize_with = "text")]
        pub max_body_size: Option<String>,
        /// Bytes of request bodies read, parsed and served at once; past it 429 [default: 64MiB].
        #[arg(long, env = "INFERCACHE_BODY_BUDGET", value_name = "SIZE")]
        #[serde(deserialize_with = "text")]
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
        #[serde(deserialize_with = "text")]
        pub request_timeout: Option<String>,
        /// How long in-flight requests may drain at shutdown [default: 30s].
        #[arg(long, env = "INFERCACHE_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
        #[serde(deserialize_with = "text")]
        pub shutdown_timeout: Option<String>,
        /// Shared Redis tier: `auto` (start a local redis-server), a `redis://` or `rediss://`
        /// URL, or cluster node URLs joined by commas [default: none].
        #[arg(long, env = "INFERCACHE_REDIS", value_name = "auto|URL")]
        pub redis: Option<String>,
        /// With `--redis auto`: Redis's maxmemory as a fraction of RAM, 0.1-0.7 [default: 0.3].
        #[arg(long, env = "INFERCACHE_REDIS_MEMORY_FRACTION", value_name = "F")]
        pub redis_memory_fraction: Option<f64>,
        /// Treat a single `--redis` URL as a node of a cluster.
        #[arg(
            long,
            env = "INFERCACHE_REDIS_CLUSTER",
            value_name = "BOOL",
            num_args = 0..=1,
            default_missing_value = "true",
        )]
        pub redis_cluster: Option<bool>,
        /// Prefix of every Redis key [default: infercache:].
        #[arg(long, env = "INFERCACHE_REDIS_PREFIX", value_name = "PREFIX")]
        pub redis_prefix: Option<String>,
        /// Write Redis behind a queue of N values (write-back) [default: write-through].
        #[arg(long, env = "INFERCACHE_REDIS_WRITE_BACK_QUEUE", value_name = "N")]
        pub redis_write_back_queue: Option<usize>,
        /// Connect and command timeout of the Redis tier [default: 50ms].
        #[arg(long, env = "INFERCACHE_REDIS_TIMEOUT", value_name = "DURATION")]
        #[serde(deserialize_with = "text")]
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
        #[serde(deserialize_with = "text")]
        pub redis_local_grace: Option<String>,
        /// For `rediss://`: PEM file of the CAs that sign the Redis servers' certificates
        /// [default: the web roots].
        #[arg(long, env = "INFERCACHE_REDIS_CA_FILE", value_name = "PATH")]
        pub redis_ca_file: Option<PathBuf>,
        /// Serve the dataset cache in DIR on `/v1/datasets` [default: `[cache.disk] path`,
        /// else none: not served].
        #[arg(long, env = "INFERCACHE_DATASETS_DIR", value_name = "DIR")]
        pub datasets_dir: Option<PathBuf>,
        /// The served dataset cache's `[cache]` table, LlamaHome's keys: a table, so the
        /// file's alone (its keys are also `INFERCACHE_CACHE_*` variables, read by
        /// `infercache_datasets::settings`).
        #[arg(skip)]
        pub cache: Option<toml::Value>,
        /// The `[[models]]` list: a list of tables, so the file's alone (see `config/models.rs`).
        #[arg(skip)]
        pub models: Option<Vec<RawModel>>,
    }
}

/// A size or duration in TOML: `"512MiB"`, `0.3` or `4096` all read as their text.
#[derive(Debug, Clone, Deserialize)]
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

/// A file value that is a [`Scalar`], kept as its text like the flag's.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_text))
}
