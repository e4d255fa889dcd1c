//! The store: its directory layout, inserts, reads, eviction, pins and maintenance.
//!
//! # Layout
//!
//! ```text
//! <root>/CACHEDIR.TAG
//! <root>/store.lock              exclusive while a blob is committed or evicted
//! <root>/blobs/<blake3 hex>      the bytes, read-only, never rewritten
//! <root>/records/<hex>.json      size, SHA-256, class, insertion time; its mtime is the last access
//! <root>/stamps/<hex>            (inode, size, mtime, ctime) of the blob when last verified
//! <root>/sha256/<sha256 hex>     the BLAKE3 name of the blob with that SHA-256
//! <root>/pins/<hex>              a pin and its reason
//! <root>/snapshots/<name>.json   named snapshots ([`Snapshot`])
//! <root>/tmp/                    inserts in flight (each locked by its writer)
//! <root>/partial/<digest>.part   resumable downloads, kept across runs
//! <root>/locks/<digest>.lock     one fetch per blob, across threads and processes
//! ```
//!
//! # Crash safety
//!
//! A blob is written to `tmp/`, hashed as it is written, fsynced, checked against the
//! digest the caller expects, and then committed under `store.lock`: its record is written
//! (temporary file, fsync, rename), the blob is renamed into `blobs/` and the directory is
//! fsynced. The rename is the commit point: a blob is visible only once its bytes are
//! durable and verified, so a process killed at any instant leaves either nothing or the
//! whole blob. What a kill can leave behind (a temporary file, a record whose blob never
//! arrived) is removed by the next [`Store::open`], and a temporary file is never removed
//! while its writer holds its lock.
//!
//! # Concurrency
//!
//! Every method takes `&self` and may be called from many threads and many processes on
//! one directory. Commits and evictions serialize on `store.lock` (an advisory `flock`,
//! released by the kernel when a process dies). A reader holds a shared lock on the blob
//! file for as long as its [`Blob`] (or a reader of it) lives, and unlocks it explicitly
//! when the last goes, so a descriptor or memory map that outlives it (a child process
//! between `fork` and `exec`, a mapped view) does not keep the lock. Eviction takes the
//! exclusive lock without waiting and skips a blob it cannot lock, so a blob in use (a
//! shard a stream is reading, a chunk being served) is never evicted; whether a blob is
//! in use is probed only under the store lock, so a probe never looks like a reader to an
//! eviction. The writer of a new blob unlocks it before its rename, so a blob is never in
//! use just because it was inserted. All calls block on file I/O: call them from a
//! blocking context, not on an async worker.
//!
//! # Files
//!
//! This file holds the types, opening and reads; `write.rs` the inserts, downloads and
//! the commit; `evict.rs` eviction, expiry, removal and pruning; `manage.rs` pins, listing,
//! verification and snapshots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infercache_core::SharedClock;
use serde::{Deserialize, Serialize};

use crate::blob::{Blob, ReadLock};
use crate::config::{ClassConfig, StoreConfig};
use crate::digest::{Digest, Hasher, Hashes, HashingWriter, hash_reader};
use crate::error::{ArtifactError, io_err};
use crate::policy::{self, Candidate};
use crate::snapshot::{self, Snapshot};

mod evict;
mod manage;
mod write;

pub use write::Partial;

const RECORD_VERSION: u32 = 1;
const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by infercache (its artifact store).\n\
# For information about cache directory tags, see https://bford.info/cachedir/\n";

/// The immutable facts of one committed blob (`records/<hex>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    version: u32,
    blake3: Digest,
    sha256: Digest,
    size: u64,
    class: String,
    inserted_ms: u64,
}

/// What one insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    /// The blob's name (BLAKE3).
    pub digest: Digest,
    /// Its SHA-256.
    pub sha256: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// `false` when the store already held these bytes (nothing was written; the blob
    /// counts as used now).
    pub new: bool,
    /// The blobs evicted to make room, in the order they went.
    pub evicted: Vec<Evicted>,
}

/// One blob removed by eviction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evicted {
    /// Its name.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its class.
    pub class: String,
    /// `true` if its `time` policy had expired it; `false` if it made room.
    pub expired: bool,
}

/// A blob as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobInfo {
    /// Its name (BLAKE3).
    pub digest: Digest,
    /// Its SHA-256.
    pub sha256: Digest,
    /// Bytes.
    pub size: u64,
    /// Its class.
    pub class: String,
    /// When it was inserted (Unix ms).
    pub inserted_ms: u64,
    /// When it was last used (Unix ms).
    pub accessed_ms: u64,
    /// The reason it is pinned, if it is.
    pub pinned: Option<String>,
    /// `true` if some process holds it open.
    pub in_use: bool,
    /// `true` if its `time` policy has expired it: it is no longer served, and goes at the
    /// next insert, prune or cleanup.
    pub expired: bool,
    /// `snapshot/file` names that refer to it.
    pub snapshots: Vec<String>,
}

/// One class's usage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassUsage {
    /// Bytes of committed blobs.
    pub used: u64,
    /// Number of blobs.
    pub blobs: u64,
    /// The class's cap.
    pub cap: u64,
    /// Its policy, as configured.
    pub policy: String,
}

/// What [`Store::prune`] removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Blobs evicted: expired, or over their class's cap.
    pub evicted: Vec<Evicted>,
    /// Temporary and partial files removed, with their sizes.
    pub temporaries: Vec<(PathBuf, u64)>,
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Blobs whose bytes match their name.
    pub ok: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Blobs whose bytes do not match (removed unless it was a dry run), with what they
    /// hash to.
    pub corrupt: Vec<(Digest, Digest)>,
}

/// Counters of one [`Store`] handle (this process only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Lookups that found the blob.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Blobs committed by this handle.
    pub inserts: u64,
    /// Inserts of bytes the store already held.
    pub deduplicated: u64,
    /// Blobs this handle evicted.
    pub evictions: u64,
    /// Blobs found corrupt (and removed).
    pub corrupt: u64,
    /// Fetches run by [`Store::get_or_fetch`] (misses that were not coalesced).
    pub fetches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    deduplicated: AtomicU64,
    evictions: AtomicU64,
    corrupt: AtomicU64,
    fetches: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A content-addressed store of blobs in one directory. See the [module docs](self).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    config: StoreConfig,
    clock: SharedClock,
    /// Records are immutable once written: read each from disk once.
    records: Mutex<HashMap<[u8; 32], Record>>,
    counters: Counters,
    tmp_seq: AtomicU64,
}

/// The result of [`Store::get_or_fetch`].
#[derive(Debug)]
pub struct Fetched {
    /// The blob, open.
    pub blob: Blob,
    /// `true` if this call ran the fetch; `false` if the blob was there (or another
    /// caller fetched it while this one waited).
    pub fetched: bool,
}

impl Store {
    /// Opens (creating) the store in `root` with `config`; removes what a killed process
    /// left (unlocked temporary files, records without a blob, blobs without a record) and
    /// the blobs a `time` policy has expired.
    pub fn open(
        root: impl Into<PathBuf>,
        config: StoreConfig,
        clock: SharedClock,
    ) -> Result<Self, ArtifactError> {
        config.validate()?;
        let root = root.into();
        for dir in [
            "blobs",
            "records",
            "stamps",
            "sha256",
            "pins",
            "snapshots",
            "tmp",
            "partial",
            "locks",
        ] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            write_atomic(&root, &tag, CACHEDIR_TAG.as_bytes())?;
        }
        let store = Self {
            root,
            config,
            clock,
            records: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            tmp_seq: AtomicU64::new(0),
        };
        let lock = store.lock_store()?;
        store.remove_leftovers(false)?;
        store.remove_expired()?;
        drop(lock);
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The classes and their caps.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// This handle's counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            inserts: get(&c.inserts),
            deduplicated: get(&c.deduplicated),
            evictions: get(&c.evictions),
            corrupt: get(&c.corrupt),
            fetches: get(&c.fetches),
        }
    }

    /// The BLAKE3 name of the blob `digest` names (itself for a BLAKE3 digest; looked up
    /// for a SHA-256), if the store holds it and its `time` policy has not expired it.
    pub fn resolve(&self, digest: &Digest) -> Result<Option<Digest>, ArtifactError> {
        let Some(blake3) = self.locate(digest)? else {
            return Ok(None);
        };
        match self.record(&blake3)? {
            Some(record) if !self.is_expired(&blake3, &record)? => Ok(Some(blake3)),
            _ => Ok(None),
        }
    }

    /// The BLAKE3 name of the blob `digest` names if its file and record are there,
    /// expired or not.
    fn locate(&self, digest: &Digest) -> Result<Option<Digest>, ArtifactError> {
        let blake3 = match digest {
            Digest::Blake3(_) => *digest,
            Digest::Sha256(_) => {
                let path = self.root.join("sha256").join(digest.hex());
                match fs::read_to_string(&path) {
                    Ok(text) => match text.trim().parse() {
                        Ok(d @ Digest::Blake3(_)) => d,
                        _ => return Ok(None),
                    },
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(ArtifactError::io(&path, e)),
                }
            }
        };
        let present = self.blob_path(&blake3).exists() && self.record_path(&blake3).exists();
        Ok(present.then_some(blake3))
    }

    /// `true` if the store holds the blob (by either digest) and it has not expired. Does
    /// not count as a use.
    pub fn contains(&self, digest: &Digest) -> Result<bool, ArtifactError> {
        Ok(self.resolve(digest)?.is_some())
    }

    /// Opens the blob `digest` names and marks it used; `None` if the store does not hold
    /// it or its `time` policy has expired it (an expired blob is never served). The
    /// bytes are not re-hashed (see [`open_verified`](Self::open_verified)). While the
    /// [`Blob`] lives the blob is never evicted.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<Blob>, ArtifactError> {
        let miss = || {
            bump(&self.counters.misses);
            Ok(None)
        };
        let Some(blake3) = self.locate(digest)? else {
            return miss();
        };
        let Some(record) = self.record(&blake3)? else {
            return miss();
        };
        if self.is_expired(&blake3, &record)? {
            return miss();
        }
        let path = self.blob_path(&blake3);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return miss(),
            Err(e) => return Err(ArtifactError::io(&path, e)),
        };
        // An exclusive lock is only ever held for an instant, under the store lock: by an
        // eviction about to unlink the blob, or by a probe of whether it is in use. Wait
        // it out rather than miss.
        file.lock_shared().map_err(io_err(&path))?;
        let lock = ReadLock::new(file, path.clone());
        // Evicted between the open and the lock: the name now points elsewhere (or nowhere).
        let file = lock.file();
        let same = match fs::metadata(&path) {
            Ok(m) => {
                let held = file.metadata().map_err(io_err(&path))?;
                m.ino() == held.ino() && m.dev() == held.dev()
            }
            Err(_) => false,
        };
        if !same {
            return miss();
        }
        self.touch(&blake3);
        bump(&self.counters.hits);
        Ok(Some(Blob::new(
            blake3,
            record.sha256,
            record.size,
            record.class,
            record.inserted_ms,
            lock,
        )))
    }

    /// [`open_blob`](Self::open_blob), then checks the bytes: a blob whose file is as it
    /// was when last verified (same inode, size, mtime and ctime) is trusted; otherwise it
    /// is hashed again. A blob that fails is removed and reported as
    /// [`ArtifactError::Corrupt`]; it is never returned.
    pub fn open_verified(&self, digest: &Digest) -> Result<Option<Blob>, ArtifactError> {
        let Some(blob) = self.open_blob(digest)? else {
            return Ok(None);
        };
        let stamp_path = self.stamp_path(&blob.digest());
        let meta = blob.file().metadata().map_err(io_err(blob.path()))?;
        let stamp = stamp_of(&meta);
        if fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
            return Ok(Some(blob));
        }
        let hashes = hash_reader(blob.file()).map_err(io_err(blob.path()))?;
        if hashes.blake3 == blob.digest() && hashes.size == blob.len() {
            write_atomic(&self.root.join("stamps"), &stamp_path, stamp.as_bytes())?;
            return Ok(Some(blob));
        }
        let digest = blob.digest();
        drop(blob);
        self.drop_corrupt(&digest)?;
        Err(ArtifactError::Corrupt {
            digest,
            actual: hashes.blake3,
        })
    }

    fn class(&self, class: &str) -> Result<&ClassConfig, ArtifactError> {
        self.config
            .classes
            .get(class)
            .ok_or_else(|| ArtifactError::UnknownClass {
                class: class.to_owned(),
                known: self
                    .config
                    .classes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.hex())
    }

    fn record_path(&self, d: &Digest) -> PathBuf {
        self.root.join("records").join(format!("{}.json", d.hex()))
    }

    fn stamp_path(&self, d: &Digest) -> PathBuf {
        self.root.join("stamps").join(d.hex())
    }

    fn pin_path(&self, d: &Digest) -> PathBuf {
        self.root.join("pins").join(d.hex())
    }

    fn snapshot_path(&self, name: &str) -> Result<PathBuf, ArtifactError> {
        snapshot::validate_name(name)?;
        Ok(self
            .root
            .join("snapshots")
            .join(format!("{}.json", snapshot::file_from_name(name))))
    }

    fn lock_store(&self) -> Result<File, ArtifactError> {
        let path = self.root.join("store.lock");
        let file = open_lock_file(&path)?;
        file.lock().map_err(io_err(&path))?;
        Ok(file)
    }

    fn lock_fetch(&self, digest: &Digest) -> Result<File, ArtifactError> {
        let path = self
            .root
            .join("locks")
            .join(format!("{}.lock", digest.file_stem()));
        let file = open_lock_file(&path)?;
        file.lock().map_err(io_err(&path))?;
        Ok(file)
    }

    fn record_digests(&self) -> Result<Vec<Digest>, ArtifactError> {
        let mut out = Vec::new();
        for entry in read_dir(&self.root.join("records"))? {
            if let Some(bytes) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(parse_hex32)
            {
                out.push(Digest::Blake3(bytes));
            }
        }
        Ok(out)
    }

    fn record(&self, digest: &Digest) -> Result<Option<Record>, ArtifactError> {
        if let Some(r) = self
            .records
            .lock()
            .expect("records lock poisoned")
            .get(digest.bytes())
        {
            return Ok(Some(r.clone()));
        }
        let path = self.record_path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ArtifactError::io(&path, e)),
        };
        let record: Record =
            serde_json::from_slice(&bytes).map_err(|e| ArtifactError::BadRecord {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if record.version != RECORD_VERSION || record.blake3 != *digest {
            return Err(ArtifactError::BadRecord {
                path,
                reason: format!(
                    "version {} for {} (expected version {RECORD_VERSION} for {digest})",
                    record.version, record.blake3
                ),
            });
        }
        self.records
            .lock()
            .expect("records lock poisoned")
            .insert(*digest.bytes(), record.clone());
        Ok(Some(record))
    }

    fn pins(&self) -> Result<BTreeMap<Digest, String>, ArtifactError> {
        let mut out = BTreeMap::new();
        for entry in read_dir(&self.root.join("pins"))? {
            if let Some(bytes) = entry.file_name().to_str().and_then(parse_hex32) {
                let reason = fs::read_to_string(entry.path()).unwrap_or_default();
                out.insert(Digest::Blake3(bytes), reason);
            }
        }
        Ok(out)
    }

    fn info(
        &self,
        digest: &Digest,
        pins: &BTreeMap<Digest, String>,
        refs: &BTreeMap<Digest, Vec<String>>,
    ) -> Result<Option<BlobInfo>, ArtifactError> {
        let Some(record) = self.record(digest)? else {
            return Ok(None);
        };
        let path = self.blob_path(digest);
        let in_use = match File::open(&path) {
            Ok(f) => matches!(f.try_lock(), Err(TryLockError::WouldBlock)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ArtifactError::io(&path, e)),
        };
        let expired = self.is_expired(digest, &record)?;
        Ok(Some(BlobInfo {
            digest: *digest,
            sha256: record.sha256,
            size: record.size,
            class: record.class,
            inserted_ms: record.inserted_ms,
            accessed_ms: self.accessed_ms(digest).unwrap_or(record.inserted_ms),
            pinned: pins.get(digest).cloned(),
            in_use,
            expired,
            snapshots: refs.get(digest).cloned().unwrap_or_default(),
        }))
    }

    /// `true` if the blob's class has a `time` policy whose `max_age` has passed since the
    /// blob was inserted, and it is not pinned. A record read earlier may be stale (another
    /// process may have inserted the bytes again since): an expired one is read again.
    fn is_expired(&self, digest: &Digest, record: &Record) -> Result<bool, ArtifactError> {
        let Some(config) = self.config.classes.get(&record.class) else {
            return Ok(false);
        };
        let expired = |r: &Record| {
            policy::expired(
                config.policy,
                &Candidate {
                    digest: *digest,
                    size: r.size,
                    inserted_ms: r.inserted_ms,
                    accessed_ms: r.inserted_ms,
                },
                self.clock.now_ms(),
            )
        };
        if !expired(record) || self.pin_path(digest).exists() {
            return Ok(false);
        }
        self.records
            .lock()
            .expect("records lock poisoned")
            .remove(digest.bytes());
        Ok(self.record(digest)?.is_none_or(|r| expired(&r)))
    }

    /// The blob's last use: its record file's mtime.
    fn accessed_ms(&self, digest: &Digest) -> Option<u64> {
        let modified = fs::metadata(self.record_path(digest))
            .ok()?
            .modified()
            .ok()?;
        let ms = modified.duration_since(UNIX_EPOCH).ok()?.as_millis();
        u64::try_from(ms).ok()
    }

    /// Marks the blob used now (its record's mtime). Best effort: a blob evicted in
    /// between simply has no record to touch.
    fn touch(&self, digest: &Digest) {
        let path = self.record_path(digest);
        let time = UNIX_EPOCH + Duration::from_millis(self.clock.now_ms());
        if let Ok(file) = File::open(&path)
            && let Err(error) = file.set_modified(time)
        {
            tracing::debug!(%error, path = %path.display(), "could not mark a blob used");
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, ArtifactError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, ArtifactError> {
    fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map_err(io_err(dir)))
        .collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0; 32];
    (s.len() == 64)
        .then(|| hex::decode_to_slice(s, &mut out).ok())
        .flatten()
        .map(|()| out)
}

/// The identity a verified blob had: any write to the file changes its mtime or ctime.
fn stamp_of(meta: &fs::Metadata) -> String {
    format!(
        "{} {} {} {}.{} {}.{}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), ArtifactError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `bytes` to `path` crash-safely: a temporary file in `dir` (the same directory),
/// fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}-{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
