//! LlamaHome's `[cache]` configuration, in its spellings, resolved into the dataset
//! cache's settings.
//!
//! ```toml
//! [cache]
//! memory_size = "4GB"        # or an integer: megabytes (LlamaHome's `memory_size = 1000`)
//! disk_size = 10000          # megabytes; or "10GB", "500MiB"
//! policy = "lru"             # lru, fifo, size, time (a day), time:SECONDS
//! eviction_threshold = 0.9   # at the cap, evict down to this fraction of it
//! cleanup_interval = 3600    # seconds; or "1h", "30m"
//!
//! [cache.disk]
//! path = "/var/cache/datasets"
//! use_mmap = true
//! ```
//!
//! Every key is also a variable, `INFERCACHE_CACHE_` and the key in capitals, the table's
//! name joined by `_` (`INFERCACHE_CACHE_DISK_SIZE`, `INFERCACHE_CACHE_DISK_PATH`,
//! `INFERCACHE_CACHE_USE_MMAP`). A variable wins over the file; a command's flag wins
//! over both. In every spelling a size is a number with a unit (`4GB` is 4·10⁹ bytes,
//! `4GiB` 4·2³⁰) or a whole number of megabytes (2²⁰ bytes), and a duration a whole
//! number of seconds or one with a unit (`ms`, `s`, `m`, `h`, `d`).
//!
//! A file may hold other tables and keys (the server's settings): only `[cache]` is read
//! here, and a key inside it that is not one of the above is refused, by name.

use std::path::PathBuf;
use std::time::Duration;

use infercache_artifact::Policy;
use serde::Deserialize;

use crate::DatasetError;

/// The `[cache]` keys as given, before validation: each a text (a flag, a variable, or
/// the file's value written out), `None` when not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheKeys {
    /// `memory_size`.
    pub memory_size: Option<String>,
    /// `disk_size`.
    pub disk_size: Option<String>,
    /// `policy`.
    pub policy: Option<String>,
    /// `eviction_threshold`.
    pub eviction_threshold: Option<String>,
    /// `cleanup_interval`.
    pub cleanup_interval: Option<String>,
    /// `[cache.disk] path`.
    pub disk_path: Option<PathBuf>,
    /// `[cache.disk] use_mmap`.
    pub use_mmap: Option<String>,
}

/// The variable of each key, in the order of [`CacheKeys`]' fields.
pub const CACHE_VARIABLES: [&str; 7] = [
    "INFERCACHE_CACHE_MEMORY_SIZE",
    "INFERCACHE_CACHE_DISK_SIZE",
    "INFERCACHE_CACHE_POLICY",
    "INFERCACHE_CACHE_EVICTION_THRESHOLD",
    "INFERCACHE_CACHE_CLEANUP_INTERVAL",
    "INFERCACHE_CACHE_DISK_PATH",
    "INFERCACHE_CACHE_USE_MMAP",
];

/// A TOML value of a key that takes text or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Self::Int(n) => n.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::Text(s) => s,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheTable {
    memory_size: Option<Scalar>,
    disk_size: Option<Scalar>,
    policy: Option<Scalar>,
    eviction_threshold: Option<Scalar>,
    cleanup_interval: Option<Scalar>,
    disk: Option<DiskTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskTable {
    path: Option<PathBuf>,
    use_mmap: Option<Scalar>,
}

impl CacheKeys {
    /// The `[cache]` table of a TOML document (other tables and keys are not read).
    ///
    /// # Errors
    /// [`DatasetError::Config`] when the document does not parse or `[cache]` holds an
    /// unknown key or a value of the wrong type.
    pub fn from_toml(text: &str) -> Result<Self, DatasetError> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| DatasetError::Config {
            key: "cache".to_owned(),
            value: String::new(),
            reason: e.to_string(),
        })?;
        match doc.get("cache") {
            Some(table) => Self::from_table(table.clone()),
            None => Ok(Self::default()),
        }
    }

    /// The keys of a `[cache]` table already parsed (a server's configuration file).
    ///
    /// # Errors
    /// As [`CacheKeys::from_toml`].
    pub fn from_table(table: toml::Value) -> Result<Self, DatasetError> {
        // Every key takes any scalar (validated below, naming the key); what serde can
        // refuse here is an unknown key, which its message names, or a table or array.
        let t: CacheTable =
            table
                .try_into()
                .map_err(|e: toml::de::Error| DatasetError::Config {
                    key: "cache".to_owned(),
                    value: String::new(),
                    reason: e.message().to_owned(),
                })?;
        let (disk_path, use_mmap) = match t.disk {
            Some(d) => (d.path, d.use_mmap.map(Scalar::into_text)),
            None => (None, None),
        };
        Ok(Self {
            memory_size: t.memory_size.map(Scalar::into_text),
            disk_size: t.disk_size.map(Scalar::into_text),
            policy: t.policy.map(Scalar::into_text),
            eviction_threshold: t.eviction_threshold.map(Scalar::into_text),
            cleanup_interval: t.cleanup_interval.map(Scalar::into_text),
            disk_path,
            use_mmap,
        })
    }

    /// The keys given as variables ([`CACHE_VARIABLES`]), read with `var` (an empty
    /// value counts as not given).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |i: usize| var(CACHE_VARIABLES[i]).filter(|v| !v.trim().is_empty());
        Self {
            memory_size: get(0),
            disk_size: get(1),
            policy: get(2),
            eviction_threshold: get(3),
            cleanup_interval: get(4),
            disk_path: get(5).map(PathBuf::from),
            use_mmap: get(6),
        }
    }

    /// Each key from `self`, else from `lower` (flags over variables over the file).
    #[must_use]
    pub fn or(self, lower: Self) -> Self {
        Self {
            memory_size: self.memory_size.or(lower.memory_size),
            disk_size: self.disk_size.or(lower.disk_size),
            policy: self.policy.or(lower.policy),
            eviction_threshold: self.eviction_threshold.or(lower.eviction_threshold),
            cleanup_interval: self.cleanup_interval.or(lower.cleanup_interval),
            disk_path: self.disk_path.or(lower.disk_path),
            use_mmap: self.use_mmap.or(lower.use_mmap),
        }
    }

    /// The validated settings.
    ///
    /// # Errors
    /// [`DatasetError::Config`] naming the first key whose value does not parse or is out
    /// of range.
    pub fn resolve(self) -> Result<CacheSettings, DatasetError> {
        let d = CacheSettings::default();
        let memory_size = self
            .memory_size
            .map(|v| size("memory_size", &v))
            .transpose()?
            .unwrap_or(d.memory_size);
        let disk_size = self
            .disk_size
            .map(|v| size("disk_size", &v))
            .transpose()?
            .unwrap_or(d.disk_size);
        if disk_size == 0 {
            return Err(config("disk_size", "0", "must be more than zero"));
        }
        let policy = match self.policy {
            Some(v) => v
                .parse::<Policy>()
                .map_err(|e| config("policy", &v, e.to_string()))?,
            None => d.policy,
        };
        let eviction_threshold = match self.eviction_threshold {
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| *f > 0.0 && *f <= 1.0)
                .ok_or_else(|| {
                    config(
                        "eviction_threshold",
                        &v,
                        "give a fraction in (0, 1], e.g. 0.9",
                    )
                })?,
            None => d.eviction_threshold,
        };
        let cleanup_interval = match self.cleanup_interval {
            Some(v) => duration(&v).map_err(|reason| config("cleanup_interval", &v, reason))?,
            None => d.cleanup_interval,
        };
        let use_mmap = match self.use_mmap.as_deref().map(str::trim) {
            None => d.use_mmap,
            Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(config("cache.disk.use_mmap", other, "give true or false"));
            }
        };
        Ok(CacheSettings {
            dir: self.disk_path,
            memory_size,
            disk_size,
            policy,
            eviction_threshold,
            cleanup_interval,
            use_mmap,
        })
    }
}

/// The dataset cache's validated `[cache]` settings. Each field documents its default.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// `[cache.disk] path`: the cache's directory. Default: none (the command's or
    /// server's own default).
    pub dir: Option<PathBuf>,
    /// `memory_size`: bytes of decoded shards held in memory (the memory tier; 0 turns it
    /// off). Default: 1,000 MB (LlamaHome's).
    pub memory_size: u64,
    /// `disk_size`: bytes of shards on disk. Default: 10,000 MB (LlamaHome's).
    pub disk_size: u64,
    /// `policy`. Default: `lru`.
    pub policy: Policy,
    /// `eviction_threshold`. Default: 0.9.
    pub eviction_threshold: f64,
    /// `cleanup_interval`. Default: an hour (LlamaHome's 3600).
    pub cleanup_interval: Duration,
    /// `[cache.disk] use_mmap`: shards are read through memory maps (zero-copy) when
    /// true, with plain reads into memory of the process's own when false. Default: true.
    pub use_mmap: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        let d = crate::DatasetConfig::default();
        Self {
            dir: None,
            memory_size: d.memory_size,
            disk_size: d.disk_size,
            policy: d.policy,
            eviction_threshold: d.eviction_threshold,
            cleanup_interval: d.cleanup_interval,
            use_mmap: d.use_mmap,
        }
    }
}

impl CacheSettings {
    /// The dataset cache's configuration with these settings and `steps`.
    pub fn dataset_config(&self, steps: crate::StepContext) -> crate::DatasetConfig {
        crate::DatasetConfig {
            memory_size: self.memory_size,
            disk_size: self.disk_size,
            policy: self.policy,
            eviction_threshold: self.eviction_threshold,
            cleanup_interval: self.cleanup_interval,
            use_mmap: self.use_mmap,
            steps,
        }
    }
}

fn config(key: &str, value: &str, reason: impl Into<String>) -> DatasetError {
    DatasetError::Config {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A size: a whole number of megabytes, or a number with a unit.
fn size(key: &str, v: &str) -> Result<u64, DatasetError> {
    let t = v.trim();
    if let Ok(mb) = t.parse::<u64>() {
        return mb
            .checked_mul(1 << 20)
            .ok_or_else(|| config(key, v, "too large"));
    }
    match t.parse::<infercache_core::Capacity>() {
        Ok(infercache_core::Capacity::Bytes(b)) => Ok(b),
        Ok(infercache_core::Capacity::FractionOfRam(_)) | Err(_) => Err(config(
            key,
            v,
            "give a size with a unit (\"4GB\", \"500MiB\") or a whole number of megabytes",
        )),
    }
}

/// A duration: a whole number of seconds, or one with a unit.
fn duration(v: &str) -> Result<Duration, String> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "give whole seconds (3600) or a number with a unit: 30m, 1h".to_owned())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3_600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        other => return Err(format!("unknown unit `{other}`; use ms, s, m, h or d")),
    };
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml: &str) -> Result<CacheSettings, DatasetError> {
        CacheKeys::from_toml(toml)?.resolve()
    }

    fn refused(toml: &str, key: &str) -> String {
        let e = resolve(toml).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, DatasetError::Config { .. }) && text.contains(key),
            "{toml}: `{text}` does not name `{key}`"
        );
        text
    }

    #[test]
    fn llamahome_s_table_reads_in_every_spelling() {
        let s = resolve(
            r#"
            [cache]
            memory_size = "4GB"
            disk_size = 10000
            policy = "fifo"
            eviction_threshold = 0.8
            cleanup_interval = 3600
            [cache.disk]
            path = "/var/cache/ds"
            use_mmap = true
            "#,
        )
        .unwrap();
        assert_eq!(
            s,
            CacheSettings {
                dir: Some("/var/cache/ds".into()),
                memory_size: 4_000_000_000,
                disk_size: 10_000 << 20,
                policy: Policy::Fifo,
                eviction_threshold: 0.8,
                cleanup_interval: Duration::from_secs(3600),
                use_mmap: true,
            }
        );
        let config = s.dataset_config(crate::StepContext::default());
        assert_eq!(
            (config.memory_size, config.disk_size, config.policy),
            (4_000_000_000, 10_000 << 20, Policy::Fifo)
        );
        // Sizes as text with units or bare megabytes, durations with units.
        let s = resolve(
            "[cache]\nmemory_size = \"512\"\ndisk_size = \"2GiB\"\ncleanup_interval = \"30m\"\npolicy = \"time:60\"",
        )
        .unwrap();
        assert_eq!(s.memory_size, 512 << 20);
        assert_eq!(s.disk_size, 2 << 30);
        assert_eq!(s.cleanup_interval, Duration::from_secs(1800));
        assert_eq!(
            s.policy,
            Policy::Time {
                max_age: Duration::from_secs(60)
            }
        );
        for policy in ["lru", "size", "time"] {
            resolve(&format!("[cache]\npolicy = \"{policy}\"")).unwrap();
        }
    }

    #[test]
    fn use_mmap_false_reads_shards_with_plain_reads() {
        for (toml, want) in [
            ("[cache.disk]\nuse_mmap = false", false),
            ("[cache.disk]\nuse_mmap = \"false\"", false),
            ("[cache.disk]\nuse_mmap = true", true),
            ("", true),
        ] {
            let s = resolve(toml).unwrap();
            assert_eq!(s.use_mmap, want, "{toml}");
            assert_eq!(
                s.dataset_config(crate::StepContext::default()).use_mmap,
                want
            );
        }
        let env = CacheKeys::from_env(|name| {
            (name == "INFERCACHE_CACHE_USE_MMAP").then(|| "false".to_owned())
        });
        assert!(!env.resolve().unwrap().use_mmap);
    }

    #[test]
    fn nothing_given_is_llamahome_s_defaults_and_other_tables_are_not_read() {
        let s = resolve("bind = \"0.0.0.0:1\"\n[server]\nx = 1\n").unwrap();
        assert_eq!(s, CacheSettings::default());
        assert_eq!(s.memory_size, 1_000 << 20);
        assert_eq!(s.disk_size, 10_000 << 20);
        assert_eq!(s.policy, Policy::Lru);
        assert!((s.eviction_threshold - 0.9).abs() < f64::EPSILON);
        assert_eq!(s.cleanup_interval, Duration::from_secs(3600));
    }

    #[test]
    fn variables_win_over_the_file_and_flags_over_both() {
        let file = CacheKeys::from_toml(
            "[cache]\ndisk_size = 100\npolicy = \"fifo\"\nmemory_size = 10\n[cache.disk]\npath = \"/file\"",
        )
        .unwrap();
        let env = CacheKeys::from_env(|name| match name {
            "INFERCACHE_CACHE_DISK_SIZE" => Some("200".to_owned()),
            "INFERCACHE_CACHE_POLICY" => Some("size".to_owned()),
            "INFERCACHE_CACHE_DISK_PATH" => Some("/env".to_owned()),
            "INFERCACHE_CACHE_EVICTION_THRESHOLD" => Some("0.5".to_owned()),
            "INFERCACHE_CACHE_CLEANUP_INTERVAL" => Some("2h".to_owned()),
            "INFERCACHE_CACHE_USE_MMAP" => Some("true".to_owned()),
            "INFERCACHE_CACHE_MEMORY_SIZE" => Some(String::new()),
            _ => None,
        });
        let flags = CacheKeys {
            disk_size: Some("300MB".to_owned()),
            ..CacheKeys::default()
        };
        let s = flags.or(env).or(file).resolve().unwrap();
        assert_eq!(s.disk_size, 300_000_000);
        assert_eq!(s.policy, Policy::Size);
        assert_eq!(s.dir, Some("/env".into()));
        assert!((s.eviction_threshold - 0.5).abs() < f64::EPSILON);
        assert_eq!(s.cleanup_interval, Duration::from_secs(7200));
        // An empty variable is not given: the file's value stands.
        assert_eq!(s.memory_size, 10 << 20);
        assert_eq!(CACHE_VARIABLES.len(), 7);
    }

    #[test]
    fn bad_values_name_their_key() {
        refused("[cache]\nmemory_size = \"lots\"", "memory_size");
        refused("[cache]\nmemory_size = \"0.5\"", "memory_size");
        refused("[cache]\ndisk_size = \"12 parsecs\"", "disk_size");
        refused("[cache]\ndisk_size = 0", "disk_size");
        refused("[cache]\ndisk_size = -5", "disk_size");
        refused("[cache]\npolicy = \"random\"", "policy");
        refused("[cache]\neviction_threshold = 1.5", "eviction_threshold");
        refused(
            "[cache]\neviction_threshold = \"most\"",
            "eviction_threshold",
        );
        refused("[cache]\ncleanup_interval = \"soon\"", "cleanup_interval");
        refused("[cache]\ncleanup_interval = 0", "cleanup_interval");
        refused("[cache.disk]\nuse_mmap = \"yes\"", "use_mmap");
        refused("[cache.disk]\nuse_mmap = 0", "use_mmap");
        refused("[cache]\nmax_items = 3", "max_items");
        refused("[cache.disk]\ncompression = true", "compression");
        refused("[cache]\npolicy = 3", "policy");
        refused("[cache\n", "cache");
    }
}
