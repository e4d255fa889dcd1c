//! Trace replay: hit ratios of the memory tier's policies on block-I/O traces.
//!
//! The trace format is the ARC paper's (`START COUNT IGNORED REQNO` per line, zstd
//! compressed, COUNT consecutive keys from START). Every key has weight 1, the capacity is
//! an entry count, and cold misses count as misses, which is how the paper's tables were
//! made, so an exact LRU reproduces its LRU column.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use bytes::Bytes;
use infercache_core::{Digest, ManualClock};

use crate::EngineError;
use crate::memory::{MemEntry, MemoryConfig, MemoryTier, NEVER, Policy, Weigher};

/// The outcome of one replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    /// The policy replayed.
    pub policy: Policy,
    /// Capacity in entries.
    pub capacity: u64,
    /// Requests replayed.
    pub requests: u64,
    /// Requests that hit.
    pub hits: u64,
}

impl Replay {
    /// Hits as a percentage of requests.
    #[expect(clippy::cast_precision_loss, reason = "a percentage for display")]
    pub fn hit_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / self.requests as f64
        }
    }
}

/// Reads a trace (zstd-compressed when the file starts with the zstd magic) into the
/// sequence of requested keys.
///
/// # Errors
/// [`EngineError::Trace`] for unreadable files and malformed lines (with the line number).
pub fn load_trace(path: &Path) -> Result<Vec<u64>, EngineError> {
    let err = |reason: String| EngineError::Trace {
        path: path.display().to_string(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(|e| err(e.to_string()))?;
    let file = File::open(path).map_err(|e| err(e.to_string()))?;
    let reader: Box<dyn BufRead> = if n == 4 && magic == [0x28, 0xB5, 0x2F, 0xFD] {
        Box::new(BufReader::new(
            zstd::stream::read::Decoder::new(file).map_err(|e| err(e.to_string()))?,
        ))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut keys = Vec::new();
    for (lineno, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| err(e.to_string()))?;
        let mut fields = line.split_ascii_whitespace();
        let Some(start) = fields.next() else { continue };
        let parse = |s: Option<&str>, what: &str| -> Result<u64, EngineError> {
            s.and_then(|s| s.parse().ok())
                .ok_or_else(|| err(format!("line {}: bad {what} in {line:?}", lineno + 1)))
        };
        let start = parse(Some(start), "START")?;
        let count = parse(fields.next(), "COUNT")?;
        if count > 1 << 24 {
            return Err(err(format!(
                "line {}: COUNT {count} is implausibly large",
                lineno + 1
            )));
        }
        keys.extend(start..start.saturating_add(count));
    }
    if keys.is_empty() {
        return Err(err("the trace holds no requests".into()));
    }
    Ok(keys)
}

/// Replays `keys` through a memory tier with `policy`, unit weights and `capacity`
/// entries: each request is a get, and a miss inserts.
pub fn replay(keys: &[u64], policy: Policy, capacity: u64) -> Replay {
    let tier = MemoryTier::new(
        MemoryConfig {
            capacity,
            policy,
            weigher: Weigher::Unit,
            // One shard: a sharded cache splits the capacity, which is not what the
            // published tables measured.
            shards: Some(1),
        },
        ManualClock::new(0),
    );
    let mut hits = 0;
    for &k in keys {
        let d = Digest::of_u64(k);
        if tier.get(&d).is_some() {
            hits += 1;
        } else {
            tier.insert(
                d,
                MemEntry {
                    value: Bytes::new(),
                    created_ms: 0,
                    expires_ms: NEVER,
                },
            );
        }
    }
    Replay {
        policy,
        capacity,
        requests: keys.len() as u64,
        hits,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn plain_and_zstd_traces_expand_ranges() {
        let text = b"10 3 0 0\n\n5 1 0 1\n";
        assert_eq!(load_trace(file(text).path()).unwrap(), vec![10, 11, 12, 5]);
        let z = zstd::encode_all(&text[..], 3).unwrap();
        assert_eq!(load_trace(file(&z).path()).unwrap(), vec![10, 11, 12, 5]);
    }

    #[test]
    fn bad_traces_are_typed_errors_naming_the_line() {
        for (bytes, needle) in [
            (&b"10 x 0 0\n"[..], "line 1: bad COUNT"),
            (&b"1 1 0 0\nnope\n"[..], "line 2: bad START"),
            (&b""[..], "no requests"),
            (&b"1 99999999999 0 0\n"[..], "implausibly large"),
            (&[0x28, 0xB5, 0x2F, 0xFD, 0, 1, 2][..], "trace"),
        ] {
            let err = load_trace(file(bytes).path()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        assert!(load_trace(Path::new("/nonexistent/trace")).is_err());
    }

    #[test]
    fn replay_counts_cold_misses() {
        let r = replay(&[1, 2, 1, 2, 3, 1], Policy::Lru, 2);
        assert_eq!((r.requests, r.hits), (6, 2));
        assert!((r.hit_ratio() - 100.0 / 3.0).abs() < 1e-9);
    }
}
