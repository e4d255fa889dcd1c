//! The persistent disk tier: a log-structured store of cache entries in one directory.
//!
//! # Why hand-written
//!
//! The tier needs three things off-the-shelf hybrid caches (foyer's storage engine among
//! them) do not give us together: a per-record TTL that survives restarts (expiry is an
//! absolute time from the injected clock, stored in every record), corrupt records that are
//! dropped *and counted*, and an on-disk format we own and can version. A cache can lose any
//! entry at any time, so the store needs no compaction, no write-ahead log and no fsync per
//! write: an append-only log with FIFO eviction of whole segments is enough, and small.
//!
//! # Layout
//!
//! ```text
//! <dir>/MANIFEST                      {"magic":"infercache-disk","version":1,"created_at_ms":…}
//! <dir>/LOCK                          exclusive advisory lock held while a DiskTier is open
//! <dir>/segments/<20-digit seq>.seg   append-only records, oldest = lowest seq
//! ```
//!
//! Each record is a 72-byte header (magic, flags with tombstone bit and codec, lengths,
//! created and expiry times, the full 32-byte key, a CRC over key and payload and a CRC over
//! the header) followed by the payload, LZ4- or zstd-compressed when that makes it smaller.
//! See `disk/record.rs` for the byte layout. Removals append a tombstone record. Start-up
//! recovery is in `disk/recover.rs`; appends, segment rolls and eviction in `disk/append.rs`.
//!
//! # How it works
//!
//! - **Index.** In memory, `Digest -> (segment, offset, length, created, expiry)`, rebuilt on
//!   open by reading record *headers only*, segments in order, payloads skipped; later records
//!   override earlier ones, tombstones and expired records delete. Every open starts a new
//!   active segment, so recovered segments are never written again.
//! - **Writes.** One writer at a time (a mutex) appends each record with a single positioned
//!   write of header and payload, then updates the index while still holding the writer lock,
//!   so index order is write order. When a record does not fit the active segment, a new one
//!   is started; before that, oldest segments are deleted until the new one fits the capacity
//!   (entries still indexed into them count as evictions). The sum of segment file sizes never
//!   exceeds the capacity.
//! - **Reads** take the index lock only to copy the location and an `Arc` of the segment's
//!   file, then read without locks. The header CRC, magic, the full key and the payload CRC
//!   are checked on every read; any mismatch drops the entry and counts it as corrupt. A read
//!   returns the exact bytes written for that key, or a miss, never anything else.
//!
//! - **Health** (`disk/health.rs`). A read or write that fails with an I/O error marks the
//!   tier degraded (counted, in [`TierStats`]): lookups miss and writes are skipped
//!   ([`DiskError::Degraded`]) without touching the files, but for one probe per
//!   [`PROBE_EVERY_MS`]; the first probe that succeeds puts the tier back in use.
//!
//! # Crash safety
//!
//! A record reaches the kernel in one `pwrite` before `insert` returns, so a completed insert
//! survives the process being killed (`kill -9`): the page cache outlives the process. It is
//! on stable storage after [`DiskTier::flush`] or once its segment is sealed (a full segment
//! is fsynced when the next one starts). A crash can only leave a torn record at the tail of
//! the newest segment; its header or payload CRC fails, and recovery cuts the file at the
//! bad header so it is never met again. Deletion is oldest-segment first
//! (eviction and [`DiskTier::clear`] alike), and a tombstone is always newer than the records
//! it deletes, so an interrupted deletion never resurrects a removed or overwritten value.
//!
//! Damage anywhere else (bit rot, a stray write: a bad header with valid records after it,
//! or at the end of an older segment) is skipped by searching for the next valid header.
//! The damaged record may have replaced or removed an older value of a key we cannot name,
//! so every entry indexed *before* the damage is dropped: the tier loses entries, never
//! serves a superseded one. A damaged payload is caught by the read's CRC as usual.
//!
//! # Opening a directory
//!
//! A missing or empty directory is initialized. One with a valid `MANIFEST` is recovered.
//! A non-empty directory without a `MANIFEST` is someone else's: [`DiskError::NotOurDirectory`],
//! and nothing in it is touched. Files the store does not know (in the directory or in
//! `segments/`) are left alone, so the engine may keep its own files next to the manifest.

mod health;
mod manifest;
mod record;
mod segment;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use infercache_core::stats::{TierCounters, TierStats};
use infercache_core::{Digest, SharedClock};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use health::Health;
pub use health::PROBE_EVERY_MS;
use record::HEADER_LEN_U64;

mod append;
mod recover;

const LOCK_FILE: &str = "LOCK";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// The smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: u64 = 4 * KIB;
/// The largest segment size accepted (record lengths are 32-bit).
pub const MAX_SEGMENT_SIZE: u64 = u32::MAX as u64;
const DEFAULT_MIN_SEGMENT: u64 = 64 * KIB;
const DEFAULT_MAX_SEGMENT: u64 = 256 * MIB;

/// How values are compressed on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as given.
    None,
    /// LZ4 block compression: cheap, modest ratio. The default.
    #[default]
    Lz4,
    /// Zstandard at level 3: better ratio, more CPU.
    Zstd,
}

impl Compression {
    /// The name used in configuration: `none`, `lz4` or `zstd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compression name that is not `none`, `lz4` or `zstd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?}: expected none, lz4 or zstd")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd),
            other => Err(UnknownCompression(other.to_owned())),
        }
    }
}

/// Configuration of a [`DiskTier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The store's directory; created if missing.
    pub dir: PathBuf,
    /// The most bytes all segment files together may take.
    pub capacity: u64,
    /// The size of one segment file, which is also the bound on one record (header and
    /// stored value). Default: `capacity / 8` clamped to 64 KiB ..= 256 MiB, and never more
    /// than `capacity / 2`, so that small capacities still get two segments.
    pub segment_size: Option<u64>,
    /// How values are compressed. Default: [`Compression::Lz4`].
    pub compression: Compression,
}

impl DiskConfig {
    /// A configuration with the default segment size and compression.
    pub fn new(dir: impl Into<PathBuf>, capacity: u64) -> Self {
        Self {
            dir: dir.into(),
            capacity,
            segment_size: None,
            compression: Compression::default(),
        }
    }

    /// The segment size this configuration resolves to, or why it is refused.
    ///
    /// Eviction drops a whole segment, so the capacity must hold at least two: one being
    /// written and one to drop. An explicit `segment_size` that does not fit twice is an
    /// error; the default shrinks to `capacity / 2` instead.
    pub fn resolved_segment_size(&self) -> Result<u64, DiskError> {
        let size = match self.segment_size {
            Some(size) => {
                if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) {
                    return Err(DiskError::InvalidSegmentSize {
                        size,
                        min: MIN_SEGMENT_SIZE,
                        max: MAX_SEGMENT_SIZE,
                    });
                }
                size
            }
            None => (self.capacity / 8)
                .clamp(DEFAULT_MIN_SEGMENT, DEFAULT_MAX_SEGMENT)
                .min(self.capacity / 2),
        };
        let min_capacity = size.max(MIN_SEGMENT_SIZE).saturating_mul(2);
        if self.capacity < min_capacity {
            return Err(DiskError::CapacityTooSmall {
                capacity: self.capacity,
                min: min_capacity,
            });
        }
        Ok(size)
    }
}

/// An entry read back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    /// The value, decompressed.
    pub value: Bytes,
    /// When the entry was created, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it expires, ms since the Unix epoch; `None` for never.
    pub expires_ms: Option<u64>,
}

/// What can go wrong opening or using a [`DiskTier`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// A file system call failed (including a full disk).
    #[error("disk tier I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The tier is degraded (the disk failed and has not answered since): the write was
    /// skipped without touching the files.
    #[error("disk tier degraded: writes are skipped until the disk answers")]
    Degraded,
    /// The directory holds files but no `MANIFEST`: it is not a store, and is left untouched.
    #[error(
        "{path} is not an infercache disk store (found {found:?} and no MANIFEST); refusing to use it"
    )]
    NotOurDirectory {
        /// The directory.
        path: PathBuf,
        /// One of the entries found in it.
        found: String,
    },
    /// The store was written by a newer (or unknown) format version.
    #[error("{path} declares disk format version {version}, this build reads version 1")]
    UnsupportedFormat {
        /// The manifest.
        path: PathBuf,
        /// The version it declares.
        version: u32,
    },
    /// Another `DiskTier` (in this or another process) holds the directory.
    #[error("disk store {path} is locked by another process or instance")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A value larger than the largest value a segment can hold.
    #[error("value of {size} bytes exceeds the disk tier's limit of {max} bytes")]
    TooLarge {
        /// The value's length.
        size: u64,
        /// The largest value accepted (segment size minus the record header).
        max: u64,
    },
    /// The capacity cannot hold two segments.
    #[error(
        "disk capacity {capacity} bytes is too small: at least {min} bytes are needed (two segments)"
    )]
    CapacityTooSmall {
        /// The configured capacity.
        capacity: u64,
        /// The least capacity that works with the segment size.
        min: u64,
    },
    /// An explicit segment size out of range.
    #[error("disk segment size {size} is outside {min}..={max} bytes")]
    InvalidSegmentSize {
        /// The configured size.
        size: u64,
        /// The smallest accepted.
        min: u64,
        /// The largest accepted.
        max: u64,
    },
    /// The `MANIFEST` exists but cannot be read or parsed.
    #[error("corrupt disk store manifest {path}: {reason}")]
    CorruptManifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A closure turning an [`io::Error`] on `path` into a [`DiskError::Io`].
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where an entry's latest record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    seq: u64,
    offset: u64,
    len: u64,
    created_ms: u64,
    /// 0 = never.
    expires_ms: u64,
}

impl Loc {
    fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now_ms
    }
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Bytes in the file.
    len: u64,
    /// Keys written into this segment (possibly repeated or since overwritten), so that
    /// dropping the segment can drop the index entries still pointing into it.
    keys: Vec<Digest>,
}

/// The index and the segments it points into.
#[derive(Debug, Default)]
struct State {
    index: HashMap<Digest, Loc>,
    segments: BTreeMap<u64, Segment>,
    /// Sum of `segments[..].len`.
    bytes: u64,
}

impl State {
    /// Bytes of memory the index holds: the hash table's allocation and every segment's
    /// key list. The table is hashbrown's (std's `HashMap`): a power of two of buckets, at
    /// most 7/8 of them used (its `capacity()`), each one `(key, Loc)` and a control byte;
    /// its entries land all over it, so all of it is resident. A key list is counted by
    /// its length: the spare capacity past it is never written, so never resident.
    /// Computed here because std exposes no allocation size.
    fn index_bytes(&self) -> u64 {
        let capacity = self.index.capacity();
        let buckets = if capacity == 0 {
            0
        } else if capacity < 8 {
            capacity + 1
        } else {
            (capacity * 8 / 7).next_power_of_two()
        };
        let table = buckets * (size_of::<(Digest, Loc)>() + 1);
        let keys: usize = self
            .segments
            .values()
            .map(|s| s.keys.len() * size_of::<Digest>())
            .sum();
        u64::try_from(table + keys).unwrap_or(u64::MAX)
    }
}

#[derive(Debug)]
struct Active {
    seq: u64,
    file: Arc<File>,
    offset: u64,
}

#[derive(Debug)]
struct Writer {
    /// `None` until the first write after open, and after a failed roll or a clear.
    active: Option<Active>,
    next_seq: u64,
}

/// The persistent disk tier. Blocking: call it from threads that may block.
///
/// Share it in an `Arc`. Reads run concurrently with each other and with the writer; writes
/// (`insert`, `remove`, `clear`) are serialized.
pub struct DiskTier {
    dir: PathBuf,
    segments_dir: PathBuf,
    capacity: u64,
    segment_size: u64,
    compression: Compression,
    clock: SharedClock,
    counters: TierCounters,
    /// Whether the disk answers (`health.rs`).
    health: Health,
    /// Lock order: `writer` before `state`.
    writer: Mutex<Writer>,
    state: RwLock<State>,
    /// Holds the directory's advisory lock until dropped.
    _lock: File,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .field("segment_size", &self.segment_size)
            .field("compression", &self.compression)
            .field("entries", &self.entries())
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl DiskTier {
    /// Opens (creating or recovering) the store in `config.dir` and locks it.
    pub fn open(config: DiskConfig, clock: SharedClock) -> Result<Self, DiskError> {
        let segment_size = config.resolved_segment_size()?;
        let dir = config.dir;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        if manifest::inspect(&dir)? == manifest::DirState::Fresh {
            manifest::create(&dir, clock.now_ms())?;
        }
        let lock = lock_dir(&dir)?;
        let segments_dir = dir.join(segment::SEGMENTS_DIR);
        fs::create_dir_all(&segments_dir).map_err(io_err(&segments_dir))?;

        let tier = Self {
            dir,
            segments_dir,
            capacity: config.capacity,
            segment_size,
            compression: config.compression,
            clock,
            counters: TierCounters::default(),
            health: Health::default(),
            writer: Mutex::new(Writer {
                active: None,
                next_seq: 1,
            }),
            state: RwLock::new(State::default()),
            _lock: lock,
        };
        tier.recover()?;
        Ok(tier)
    }

    /// The largest value accepted by [`DiskTier::insert`].
    pub fn max_value_len(&self) -> u64 {
        self.segment_size - HEADER_LEN_U64
    }

    /// Looks up `key`. Expired, damaged and missing entries are all `Ok(None)`; damaged and
    /// expired ones are dropped from the index and counted. `Err` only for a failed read.
    pub fn get(&self, key: &Digest) -> Result<Option<DiskEntry>, DiskError> {
        let found = {
            let state = self.state.read();
            state.index.get(key).map(|loc| {
                let segment = state
                    .segments
                    .get(&loc.seq)
                    .expect("bug: index entry points to a segment that is not registered");
                (*loc, Arc::clone(&segment.file))
            })
        };
        let Some((loc, file)) = found else {
            self.counters.misses.incr();
            return Ok(None);
        };
        let now = self.clock.now_ms();
        if loc.expired(now) {
            self.drop_if_unchanged(key, loc);
            self.counters.expirations.incr();
            self.counters.misses.incr();
            return Ok(None);
        }
        if !self.health.admit(now) {
            // Degraded: a miss, without waiting on the disk.
            self.counters.misses.incr();
            return Ok(None);
        }
        let len =
            usize::try_from(loc.len).expect("bug: record length is bounded by the segment size");
        let mut buf = vec![0u8; len];
        let read = health::seam(&self.dir).and_then(|()| file.read_exact_at(&mut buf, loc.offset));
        let outcome = match read {
            Ok(()) => {
                self.health.answered();
                record::decode(&buf, key).map_err(|e| format!("{e:?}"))
            }
            // The file is shorter than the index says: truncated behind our back.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err("truncated record".to_owned()),
            Err(e) => {
                self.health.failed(now, &e);
                self.counters.misses.incr();
                return Err(io_err(&self.segment_path(loc.seq))(e));
            }
        };
        match outcome {
            Ok((header, value)) => {
                self.counters.hits.incr();
                Ok(Some(DiskEntry {
                    value: Bytes::from(value),
                    created_ms: header.created_ms,
                    expires_ms: (header.expires_ms != 0).then_some(header.expires_ms),
                }))
            }
            Err(reason) => {
                tracing::warn!(
                    segment = loc.seq,
                    offset = loc.offset,
                    reason,
                    "disk tier: dropping a damaged record"
                );
                self.drop_if_unchanged(key, loc);
                self.counters.corrupt.incr();
                self.counters.misses.incr();
                Ok(None)
            }
        }
    }

    /// Removes `key` from the index unless a newer write replaced it meanwhile.
    fn drop_if_unchanged(&self, key: &Digest, loc: Loc) {
        let mut state = self.state.write();
        if state.index.get(key) == Some(&loc) {
            state.index.remove(key);
        }
    }

    /// Stores `value` under `key`, replacing any previous value.
    ///
    /// `expires_ms` is an absolute time on the tier's clock; `Some(0)` is stored as 1 ms
    /// (0 means "never" on disk). A value longer than [`DiskTier::max_value_len`] is refused
    /// with [`DiskError::TooLarge`]; refusals and I/O failures count as write errors and
    /// leave the tier usable.
    pub fn insert(
        &self,
        key: Digest,
        value: &[u8],
        created_ms: u64,
        expires_ms: Option<u64>,
    ) -> Result<(), DiskError> {
        let size = u64::try_from(value.len()).unwrap_or(u64::MAX);
        if size > self.max_value_len() {
            self.counters.write_errors.incr();
            // The refused value replaces whatever was stored: the old one must not be
            // served in its place.
            self.forget(&mut self.writer.lock(), &key);
            return Err(DiskError::TooLarge {
                size,
                max: self.max_value_len(),
            });
        }
        let expires = expires_ms.map_or(0, |e| e.max(1));
        let rec = record::encode(&key, value, false, created_ms, expires, self.compression);
        let mut writer = self.writer.lock();
        if let Err(e) = self.append_with_room(&mut writer, key, &rec, false, created_ms, expires) {
            self.forget(&mut writer, &key);
            return Err(e);
        }
        self.counters.inserts.incr();
        Ok(())
    }

    /// [`DiskTier::insert`] of many entries (`(key, value, created_ms, expires_ms)`), in
    /// order: a later entry of a key replaces an earlier one. When their records fit in
    /// the active segment they are written with one `pwrite` and indexed under one lock
    /// (the rows of one model call cost one system call, not one each); otherwise, or
    /// when that write fails, each record is written as [`DiskTier::insert`] writes it
    /// (rolling segments, evicting on a full file system, counting and degrading per
    /// record). The error of the last entry that failed.
    ///
    /// # Errors
    /// As [`DiskTier::insert`], for the last entry that failed.
    pub fn insert_many(
        &self,
        entries: &[(Digest, &[u8], u64, Option<u64>)],
    ) -> Result<(), DiskError> {
        let max = self.max_value_len();
        if entries
            .iter()
            .any(|(_, value, ..)| u64::try_from(value.len()).unwrap_or(u64::MAX) > max)
        {
            // One is refused (and its older value forgotten): each in turn, in order.
            return entries
                .iter()
                .map(|&(key, value, created_ms, expires_ms)| {
                    self.insert(key, value, created_ms, expires_ms)
                })
                .filter(Result::is_err)
                .last()
                .unwrap_or(Ok(()));
        }
        let mut last = Ok(());
        let mut records: Vec<(Digest, std::ops::Range<usize>, u64, u64)> =
            Vec::with_capacity(entries.len());
        let mut buf = Vec::new();
        for &(key, value, created_ms, expires_ms) in entries {
            let expires = expires_ms.map_or(0, |e| e.max(1));
            let start = buf.len();
            buf.extend(record::encode(
                &key,
                value,
                false,
                created_ms,
                expires,
                self.compression,
            ));
            records.push((key, start..buf.len(), created_ms, expires));
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.lock();
        if self.append_all(&mut writer, &buf, &records) {
            self.counters.inserts.add(records.len() as u64);
            return Ok(());
        }
        for (key, range, created_ms, expires) in &records {
            let rec = &buf[range.clone()];
            match self.append_with_room(&mut writer, *key, rec, false, *created_ms, *expires) {
                Ok(()) => self.counters.inserts.incr(),
                Err(e) => {
                    self.forget(&mut writer, key);
                    last = Err(e);
                }
            }
        }
        last
    }

    /// Writes the encoded `records` (ranges of `buf`) to the active segment with one
    /// write and indexes them, when they fit in it and the tier is healthy; whether it
    /// did. A failed write is cut off again and left to the caller to retry per record.
    fn append_all(
        &self,
        writer: &mut Writer,
        buf: &[u8],
        records: &[(Digest, std::ops::Range<usize>, u64, u64)],
    ) -> bool {
        let len = u64::try_from(buf.len()).expect("bug: a batch's length fits u64");
        let Some(active) = writer
            .active
            .as_ref()
            .filter(|a| a.offset + len <= self.segment_size)
        else {
            return false;
        };
        if self.health.is_degraded() {
            return false;
        }
        let (seq, offset) = (active.seq, active.offset);
        if health::seam(&self.dir)
            .and_then(|()| active.file.write_all_at(buf, offset))
            .is_err()
        {
            self.after_failed_write(writer, offset + len);
            return false;
        }
        self.health.answered();
        if let Some(active) = writer.active.as_mut() {
            active.offset = offset + len;
        }
        let mut state = self.state.write();
        let state = &mut *state;
        let segment = state
            .segments
            .get_mut(&seq)
            .expect("bug: the active segment is registered");
        segment.len = offset + len;
        state.bytes += len;
        for (key, range, created_ms, expires_ms) in records {
            segment.keys.push(*key);
            let loc = Loc {
                seq,
                offset: offset + range.start as u64,
                len: range.len() as u64,
                created_ms: *created_ms,
                expires_ms: *expires_ms,
            };
            state.index.insert(*key, loc);
        }
        true
    }

    /// Whether `key` is in the index, counting a miss when it is not: what
    /// [`DiskTier::get`] finds for a key it does not hold, without I/O (safe to call from
    /// async code), so that a lookup of keys none of which is on disk needs no blocking
    /// task.
    pub fn indexed_or_miss(&self, key: &Digest) -> bool {
        let indexed = self.contains(key);
        if !indexed {
            self.counters.misses.incr();
        }
        indexed
    }

    /// After a failed or refused write of `key`: the previous value is stale, so drop it
    /// from the index and try to make that durable with a tombstone. If even the tombstone
    /// cannot be written, the stale record is unreachable until the next restart.
    fn forget(&self, writer: &mut Writer, key: &Digest) {
        if self.state.write().index.remove(key).is_none() {
            return;
        }
        let now = self.clock.now_ms();
        let rec = record::encode(key, &[], true, now, 0, Compression::None);
        match self.append_with_room(writer, *key, &rec, true, now, 0) {
            Ok(()) | Err(DiskError::Degraded) => {}
            Err(e) => {
                tracing::warn!(error = %e, "disk tier: tombstone for a failed write not written")
            }
        }
    }

    /// Whether the index holds `key` (no I/O; the record is verified only when read).
    pub fn contains(&self, key: &Digest) -> bool {
        self.state.read().index.contains_key(key)
    }

    /// Stops serving `key` from this process, without I/O (safe to call from async code).
    /// Unlike [`DiskTier::remove`] this is not durable: a restart may serve the record
    /// again. The write-back queue uses it when it must drop a newer value.
    pub fn unindex(&self, key: &Digest) -> bool {
        self.state.write().index.remove(key).is_some()
    }

    /// Removes `key`; `true` if it was indexed. The removal is written as a tombstone, so the
    /// entry does not come back after a restart, even when the index no longer held it: a
    /// record unindexed without a tombstone ([`DiskTier::unindex`], a failed tombstone)
    /// would otherwise be indexed again by the next open.
    pub fn remove(&self, key: &Digest) -> Result<bool, DiskError> {
        let mut writer = self.writer.lock();
        let indexed = self.state.read().index.contains_key(key);
        let now = self.clock.now_ms();
        let rec = record::encode(key, &[], true, now, 0, Compression::None);
        if let Err(e) = self.append_with_room(&mut writer, *key, &rec, true, now, 0) {
            // Not served again by this process; a restart may bring it back.
            self.state.write().index.remove(key);
            return Err(e);
        }
        if indexed {
            self.counters.removals.incr();
        }
        Ok(indexed)
    }

    /// Drops every entry and deletes every segment file, oldest first.
    pub fn clear(&self) -> Result<(), DiskError> {
        let mut writer = self.writer.lock();
        writer.active = None;
        // A new table, not a cleared one: the old table's memory is given back (the
        // index is charged to the memory tier's budget).
        self.state.write().index = HashMap::new();
        while self.evict_oldest(&mut writer)? {}
        manifest::sync_dir(&self.segments_dir)
    }

    /// Drops expired entries from the index (their bytes go with their segment); returns
    /// how many, and counts them as expirations.
    pub fn purge_expired(&self) -> u64 {
        let now = self.clock.now_ms();
        let mut state = self.state.write();
        let before = state.index.len();
        state.index.retain(|_, loc| !loc.expired(now));
        let purged = u64::try_from(before - state.index.len()).unwrap_or(u64::MAX);
        drop(state);
        self.counters.expirations.add(purged);
        purged
    }

    /// Makes every completed insert durable (fsyncs the active segment).
    pub fn flush(&self) -> Result<(), DiskError> {
        let writer = self.writer.lock();
        if let Some(active) = &writer.active {
            active
                .file
                .sync_data()
                .map_err(io_err(&self.segment_path(active.seq)))?;
        }
        Ok(())
    }

    /// Bytes of process memory the index holds (its hash table and the segments' key
    /// lists): the [`TierStats::index_bytes`] gauge, which the tiered cache charges against
    /// the memory tier's budget.
    pub fn index_bytes(&self) -> u64 {
        self.state.read().index_bytes()
    }

    /// The tier's counters and gauges.
    pub fn stats(&self) -> TierStats {
        let (entries, bytes, index_bytes) = {
            let state = self.state.read();
            (state.index.len(), state.bytes, state.index_bytes())
        };
        TierStats {
            degraded: self.health.is_degraded(),
            io_errors: self.health.io_errors.get(),
            index_bytes,
            ..self.counters.snapshot(
                u64::try_from(entries).unwrap_or(u64::MAX),
                bytes,
                self.capacity,
            )
        }
    }

    /// Whether the tier is degraded: a read or write failed with an I/O error and none
    /// has succeeded since (see [`PROBE_EVERY_MS`]).
    pub fn is_degraded(&self) -> bool {
        self.health.is_degraded()
    }

    /// Live (indexed) entries; expired ones count until read or purged.
    pub fn entries(&self) -> u64 {
        u64::try_from(self.state.read().index.len()).unwrap_or(u64::MAX)
    }

    /// Bytes in segment files.
    pub fn bytes(&self) -> u64 {
        self.state.read().bytes
    }

    /// The byte capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The size of one segment file.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.segments_dir.join(segment::file_name(seq))
    }
}

/// Takes the directory's exclusive advisory lock (released when the file is closed, so a
/// killed process never leaves it held).
fn lock_dir(dir: &Path) -> Result<File, DiskError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(DiskError::Locked { path }),
        Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

#[cfg(test)]
mod tests;
