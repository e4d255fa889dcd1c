//! Classes of artifacts, their byte caps and eviction policies.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::ArtifactError;

/// Which blobs go first when a class is over its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Least recently used first. A blob is used when it is inserted, found by an insert or
    /// fetch, or opened; the time is persisted (the mtime of the blob's record), so the
    /// order survives a restart and is shared by every process on the store.
    Lru,
    /// Oldest insertion first; reads change nothing.
    Fifo,
    /// A blob expires `max_age` after its insertion and is removed at the next insert,
    /// prune or cleanup, whatever the usage; under the cap's pressure the oldest insertion
    /// goes first, as with `Fifo`.
    Time {
        /// How long a blob lives after its insertion.
        max_age: Duration,
    },
    /// Largest first (ties: oldest insertion first).
    Size,
}

impl Policy {
    /// The policy's name as written in configuration (`lru`, `fifo`, `time`, `size`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::Fifo => "fifo",
            Self::Time { .. } => "time",
            Self::Size => "size",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Time { max_age } if max_age.subsec_millis() != 0 => {
                write!(f, "time(max_age={}ms)", max_age.as_millis())
            }
            Self::Time { max_age } => write!(f, "time(max_age={}s)", max_age.as_secs()),
            other => f.write_str(other.name()),
        }
    }
}

impl FromStr for Policy {
    type Err = ArtifactError;

    /// `lru`, `fifo`, `size`, or `time` (a day) / `time:SECONDS`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let invalid = || ArtifactError::InvalidConfig {
            reason: format!("unknown policy `{s}`: expected lru, fifo, size, time or time:SECONDS"),
        };
        match t.as_str() {
            "lru" => Ok(Self::Lru),
            "fifo" => Ok(Self::Fifo),
            "size" => Ok(Self::Size),
            "time" => Ok(Self::Time {
                max_age: DEFAULT_MAX_AGE,
            }),
            _ => {
                let secs = t.strip_prefix("time:").ok_or_else(invalid)?;
                let secs: u64 = secs.parse().map_err(|_| invalid())?;
                Ok(Self::Time {
                    max_age: Duration::from_secs(secs),
                })
            }
        }
    }
}

/// The default `max_age` of the `time` policy: one day (LlamaHome's system cache).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(86_400);

/// The default eviction threshold: a class over its cap is brought down to 90 % of it.
pub const DEFAULT_EVICTION_THRESHOLD: f64 = 0.9;

/// One class of blobs: its cap, its policy, and how far below the cap eviction goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassConfig {
    /// Bytes of committed blobs this class may hold.
    pub cap: u64,
    /// Which blobs go first.
    pub policy: Policy,
    /// When an insert would take the class over `cap`, blobs are evicted until the class,
    /// the new blob included, is at most `eviction_threshold × cap` (default 0.9): the gap
    /// keeps the next inserts from evicting one blob each. In (0, 1].
    pub eviction_threshold: f64,
}

impl ClassConfig {
    /// A class with `cap` bytes, `policy` and the default threshold (0.9).
    pub fn new(cap: u64, policy: Policy) -> Self {
        Self {
            cap,
            policy,
            eviction_threshold: DEFAULT_EVICTION_THRESHOLD,
        }
    }

    /// The usage eviction brings the class down to.
    pub(crate) fn low_water(&self) -> u64 {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a fraction in (0, 1] of a byte count"
        )]
        let low = (self.cap as f64 * self.eviction_threshold) as u64;
        low.min(self.cap)
    }
}

/// The classes of a store, by name.
///
/// [`StoreConfig::default`] has LlamaHome's three: `models` 1 GiB `lru`, `training`
/// 512 MiB `fifo`, `system` 256 MiB `time` with a `max_age` of 86,400 s.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Every class a blob may be inserted into.
    pub classes: BTreeMap<String, ClassConfig>,
}

impl StoreConfig {
    /// A store with one class.
    pub fn single(class: &str, config: ClassConfig) -> Self {
        Self {
            classes: BTreeMap::from([(class.to_owned(), config)]),
        }
    }

    /// Checks every class: a non-empty name of `[a-z0-9_-]`, a threshold in (0, 1].
    pub fn validate(&self) -> Result<(), ArtifactError> {
        if self.classes.is_empty() {
            return Err(ArtifactError::InvalidConfig {
                reason: "a store needs at least one class".to_owned(),
            });
        }
        for (name, class) in &self.classes {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return Err(ArtifactError::InvalidConfig {
                    reason: format!("class name `{name}`: use a-z, 0-9, `_` and `-`"),
                });
            }
            if !(class.eviction_threshold > 0.0 && class.eviction_threshold <= 1.0) {
                return Err(ArtifactError::InvalidConfig {
                    reason: format!(
                        "class `{name}`: eviction_threshold {} is not in (0, 1]",
                        class.eviction_threshold
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            classes: BTreeMap::from([
                ("models".to_owned(), ClassConfig::new(1 << 30, Policy::Lru)),
                (
                    "training".to_owned(),
                    ClassConfig::new(512 << 20, Policy::Fifo),
                ),
                (
                    "system".to_owned(),
                    ClassConfig::new(
                        256 << 20,
                        Policy::Time {
                            max_age: DEFAULT_MAX_AGE,
                        },
                    ),
                ),
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        assert_eq!("LRU".parse::<Policy>().unwrap(), Policy::Lru);
        assert_eq!(
            "time:60".parse::<Policy>().unwrap(),
            Policy::Time {
                max_age: Duration::from_secs(60)
            }
        );
        assert_eq!(
            "time".parse::<Policy>().unwrap(),
            Policy::Time {
                max_age: DEFAULT_MAX_AGE
            }
        );
        let err = "lfu".parse::<Policy>().unwrap_err().to_string();
        assert!(err.contains("lfu"), "{err}");
    }

    #[test]
    fn defaults_are_llamahomes() {
        let config = StoreConfig::default();
        config.validate().unwrap();
        assert_eq!(config.classes["models"].cap, 1 << 30);
        assert_eq!(config.classes["training"].policy, Policy::Fifo);
        assert_eq!(config.classes["system"].cap, 256 << 20);
    }

    #[test]
    fn bad_thresholds_are_refused() {
        let mut config = StoreConfig::single("a", ClassConfig::new(10, Policy::Lru));
        config.classes.get_mut("a").unwrap().eviction_threshold = 0.0;
        assert!(config.validate().is_err());
    }
}
