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

    /// Inserts the bytes `reader` yields into `class`, checked against `expected` (either
    /// algorithm) when given. Evicts what the class's policy says to make room.
    pub fn insert_reader(
        &self,
        class: &str,
        mut reader: impl Read,
        expected: Option<&Digest>,
    ) -> Result<Inserted, ArtifactError> {
        self.class(class)?;
        let (tmp_path, file) = self.create_tmp()?;
        let result = (|| {
            let mut writer = HashingWriter {
                inner: BufWriter::with_capacity(1 << 20, &file),
                hasher: Hasher::new(),
            };
            io::copy(&mut reader, &mut writer).map_err(io_err(&tmp_path))?;
            writer.flush().map_err(io_err(&tmp_path))?;
            let hashes = writer.hasher.finish();
            drop(writer);
            file.sync_all().map_err(io_err(&tmp_path))?;
            self.commit(class, &tmp_path, Some(&file), hashes, expected)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp_path);
        }
        drop(file);
        result
    }

    /// [`insert_reader`](Self::insert_reader) over a byte slice.
    pub fn insert_bytes(
        &self,
        class: &str,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<Inserted, ArtifactError> {
        self.insert_reader(class, bytes, expected)
    }

    /// [`insert_reader`](Self::insert_reader) over a file's contents (the file is copied,
    /// not moved).
    pub fn insert_file(
        &self,
        class: &str,
        path: &Path,
        expected: Option<&Digest>,
    ) -> Result<Inserted, ArtifactError> {
        let file = File::open(path).map_err(io_err(path))?;
        self.insert_reader(class, io::BufReader::with_capacity(1 << 20, file), expected)
    }

    /// The resumable download of the blob `expected` names, for `class`: its bytes so far
    /// (kept across runs and processes in `partial/`), to be appended to and committed.
    ///
    /// Holds the blob's fetch lock until dropped: a second caller (thread or process) for
    /// the same digest waits here. Returns `Ok(None)` if the store already holds the blob
    /// (also when another caller committed it while this one waited).
    pub fn partial(
        &self,
        class: &str,
        expected: &Digest,
    ) -> Result<Option<Partial<'_>>, ArtifactError> {
        self.class(class)?;
        if self.contains(expected)? {
            return Ok(None);
        }
        let lock = self.lock_fetch(expected)?;
        if self.contains(expected)? {
            return Ok(None);
        }
        let path = self
            .root
            .join("partial")
            .join(format!("{}.part", expected.file_stem()));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        Ok(Some(Partial {
            store: self,
            class: class.to_owned(),
            expected: *expected,
            path,
            file,
            len,
            _lock: lock,
        }))
    }

    /// The blob `expected` names, fetched once if the store lacks it: `fetch` is called
    /// with the blob's [`Partial`] (resume at [`Partial::len`], e.g. with an HTTP `Range`
    /// request) and must append the rest of its bytes; the bytes are then verified and
    /// committed.
    ///
    /// Concurrent misses of one blob, in this process or others, run `fetch` once: the
    /// others wait on the blob's lock file and then find the blob. If the fetch fails, its
    /// error goes to its caller only (the bytes so far are kept for the next try) and a
    /// waiting caller runs its own fetch.
    pub fn get_or_fetch<E>(
        &self,
        class: &str,
        expected: &Digest,
        fetch: impl FnOnce(&mut Partial<'_>) -> Result<(), E>,
    ) -> Result<Fetched, ArtifactError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        if let Some(blob) = self.open_blob(expected)? {
            return Ok(Fetched {
                blob,
                fetched: false,
            });
        }
        let Some(mut partial) = self.partial(class, expected)? else {
            return match self.open_blob(expected)? {
                Some(blob) => Ok(Fetched {
                    blob,
                    fetched: false,
                }),
                None => Err(ArtifactError::NotFound {
                    what: format!("{expected} (evicted as soon as it was committed)"),
                }),
            };
        };
        bump(&self.counters.fetches);
        fetch(&mut partial).map_err(|e| ArtifactError::Fetch(std::sync::Arc::new(e)))?;
        partial.commit()?;
        match self.open_blob(expected)? {
            Some(blob) => Ok(Fetched {
                blob,
                fetched: true,
            }),
            None => Err(ArtifactError::NotFound {
                what: format!("{expected} (evicted as soon as it was committed)"),
            }),
        }
    }

    /// Removes a blob. A pinned blob or one in use is refused unless `force` (unlinking a
    /// blob in use is safe: its readers keep their bytes).
    pub fn remove(&self, digest: &Digest, force: bool) -> Result<BlobInfo, ArtifactError> {
        let blake3 = self
            .locate(digest)?
            .ok_or_else(|| ArtifactError::NotFound {
                what: digest.to_string(),
            })?;
        let _lock = self.lock_store()?;
        let info = self
            .info(&blake3, &self.pins()?, &BTreeMap::new())?
            .ok_or_else(|| ArtifactError::NotFound {
                what: digest.to_string(),
            })?;
        if !force {
            if let Some(reason) = &info.pinned {
                return Err(ArtifactError::Pinned {
                    digest: blake3,
                    reason: reason.clone(),
                });
            }
            if info.in_use {
                return Err(ArtifactError::InUse { digest: blake3 });
            }
        }
        self.unlink_blob(&blake3)?;
        let _ = fs::remove_file(self.pin_path(&blake3));
        Ok(info)
    }

    /// Pins a blob (by either digest): it is never evicted, nor expired, until unpinned
    /// (pinning an expired blob keeps it). The pin is a file, so it holds across restarts
    /// and for every process.
    pub fn pin(&self, digest: &Digest, reason: &str) -> Result<Digest, ArtifactError> {
        let blake3 = self
            .locate(digest)?
            .ok_or_else(|| ArtifactError::NotFound {
                what: digest.to_string(),
            })?;
        write_atomic(
            &self.root.join("pins"),
            &self.pin_path(&blake3),
            reason.as_bytes(),
        )?;
        Ok(blake3)
    }

    /// Removes a blob's pin; `false` if it had none.
    pub fn unpin(&self, digest: &Digest) -> Result<bool, ArtifactError> {
        let Some(blake3) = self.locate(digest)? else {
            return Ok(false);
        };
        let path = self.pin_path(&blake3);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ArtifactError::io(&path, e)),
        }
    }

    /// Every blob on disk (expired ones too, marked), in no particular order.
    pub fn list(&self) -> Result<Vec<BlobInfo>, ArtifactError> {
        // Whether a blob is in use is probed with an exclusive lock: under the store lock,
        // so that no eviction ever takes a probe for a reader.
        let _lock = self.lock_store()?;
        let pins = self.pins()?;
        let mut refs: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for snap in self.snapshots()? {
            for (file, entry) in &snap.files {
                refs.entry(entry.blob)
                    .or_default()
                    .push(format!("{}/{file}", snap.name));
            }
        }
        let mut out = Vec::new();
        for digest in self.record_digests()? {
            if let Some(info) = self.info(&digest, &pins, &refs)? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Usage of every configured class.
    pub fn usage(&self) -> Result<BTreeMap<String, ClassUsage>, ArtifactError> {
        let mut out: BTreeMap<String, ClassUsage> = self
            .config
            .classes
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    ClassUsage {
                        used: 0,
                        blobs: 0,
                        cap: c.cap,
                        policy: c.policy.to_string(),
                    },
                )
            })
            .collect();
        for digest in self.record_digests()? {
            if let Some(record) = self.record(&digest)?
                && self.blob_path(&digest).exists()
                && let Some(u) = out.get_mut(&record.class)
            {
                u.used += record.size;
                u.blobs += 1;
            }
        }
        Ok(out)
    }

    /// Removes expired blobs, brings every class over its cap down to its threshold, and
    /// removes temporary files and partial downloads no process is writing. With `dry_run`
    /// nothing is removed and the report says what would be.
    pub fn prune(&self, dry_run: bool) -> Result<PruneReport, ArtifactError> {
        let _lock = self.lock_store()?;
        let mut report = PruneReport::default();
        for class in self.config.classes.keys() {
            report
                .evicted
                .extend(self.make_space(class, None, dry_run)?.0);
        }
        report.temporaries = self.remove_leftovers(dry_run)?;
        // Partial downloads whose fetch lock is free are abandoned.
        let dir = self.root.join("partial");
        for entry in read_dir(&dir)? {
            let path = entry.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".part"))
            else {
                continue;
            };
            let lock_path = self.root.join("locks").join(format!("{stem}.lock"));
            let lock = open_lock_file(&lock_path)?;
            if matches!(lock.try_lock(), Ok(())) {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                if !dry_run {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
                report.temporaries.push((path, size));
            }
        }
        Ok(report)
    }

    /// Hashes every blob again. Corrupt blobs are removed (never served) unless
    /// `dry_run`. `progress` is called with each blob's size as it is done.
    pub fn verify(
        &self,
        dry_run: bool,
        mut progress: impl FnMut(u64),
    ) -> Result<VerifyReport, ArtifactError> {
        let mut report = VerifyReport::default();
        for digest in self.record_digests()? {
            let path = self.blob_path(&digest);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ArtifactError::io(&path, e)),
            };
            let meta = file.metadata().map_err(io_err(&path))?;
            let hashes = hash_reader(&file).map_err(io_err(&path))?;
            report.bytes += hashes.size;
            progress(hashes.size);
            if hashes.blake3 == digest {
                report.ok += 1;
                write_atomic(
                    &self.root.join("stamps"),
                    &self.stamp_path(&digest),
                    stamp_of(&meta).as_bytes(),
                )?;
            } else {
                report.corrupt.push((digest, hashes.blake3));
                drop(file);
                if !dry_run {
                    self.drop_corrupt(&digest)?;
                }
            }
        }
        Ok(report)
    }

    /// Writes (replacing) a snapshot: a name for a set of files, each a blob.
    pub fn put_snapshot(&self, snapshot: &Snapshot) -> Result<(), ArtifactError> {
        let path = self.snapshot_path(&snapshot.name)?;
        let json = serde_json::to_vec_pretty(snapshot).map_err(|e| ArtifactError::BadRecord {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.root.join("snapshots"), &path, &json)
    }

    /// The snapshot named `name`, if any.
    pub fn snapshot(&self, name: &str) -> Result<Option<Snapshot>, ArtifactError> {
        let path = self.snapshot_path(name)?;
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ArtifactError::BadRecord {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ArtifactError::io(&path, e)),
        }
    }

    /// Every snapshot, by name.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>, ArtifactError> {
        let mut out = Vec::new();
        for entry in read_dir(&self.root.join("snapshots"))? {
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .map(snapshot::name_from_file)
            else {
                continue;
            };
            if let Some(snap) = self.snapshot(&name)? {
                out.push(snap);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a snapshot (not its blobs); `false` if there was none.
    pub fn remove_snapshot(&self, name: &str) -> Result<bool, ArtifactError> {
        let path = self.snapshot_path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ArtifactError::io(&path, e)),
        }
    }

    // ---- internals ----

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

    /// A new temporary file in `tmp/`, locked by this process. Created under the store
    /// lock, so that [`remove_leftovers`](Self::remove_leftovers) never sees it unlocked.
    fn create_tmp(&self) -> Result<(PathBuf, File), ArtifactError> {
        let _lock = self.lock_store()?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = self
            .root
            .join("tmp")
            .join(format!("{}-{seq}-{nanos}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok((path, file))
    }

    /// Commits the verified temporary file `tmp` (see the module docs). `tmp_lock` is the
    /// writer's open, exclusively locked descriptor of it, unlocked before the rename: a
    /// committed blob must not look in use (or being evicted) because of its writer.
    fn commit(
        &self,
        class: &str,
        tmp: &Path,
        tmp_lock: Option<&File>,
        hashes: Hashes,
        expected: Option<&Digest>,
    ) -> Result<Inserted, ArtifactError> {
        if let Some(expected) = expected {
            hashes.check(expected)?;
        }
        let config = self.class(class)?;
        if hashes.size > config.cap {
            return Err(ArtifactError::TooLarge {
                class: class.to_owned(),
                size: hashes.size,
                cap: config.cap,
            });
        }
        let _lock = self.lock_store()?;
        let digest = hashes.blake3;
        // The same bytes, stored and live: nothing to write. An expired copy is replaced
        // (renamed over; readers holding it keep their bytes) and starts a new life.
        let live = match self.locate(&digest)? {
            Some(d) => match self.record(&d)? {
                Some(record) => !self.is_expired(&d, &record)?,
                None => false,
            },
            None => false,
        };
        if live {
            fs::remove_file(tmp).map_err(io_err(tmp))?;
            self.touch(&digest);
            bump(&self.counters.deduplicated);
            return Ok(Inserted {
                digest,
                sha256: hashes.sha256,
                size: hashes.size,
                new: false,
                evicted: Vec::new(),
            });
        }
        let (evicted, fits) = self.make_space(class, Some((&digest, hashes.size)), false)?;
        if !fits {
            let used = self.class_used(class)?;
            return Err(ArtifactError::Full {
                class: class.to_owned(),
                used,
                cap: config.cap,
                size: hashes.size,
            });
        }
        let record = Record {
            version: RECORD_VERSION,
            blake3: digest,
            sha256: hashes.sha256,
            size: hashes.size,
            class: class.to_owned(),
            inserted_ms: self.clock.now_ms(),
        };
        let json = serde_json::to_vec(&record).expect("a record always serializes");
        write_atomic(
            &self.root.join("records"),
            &self.record_path(&digest),
            &json,
        )?;
        write_atomic(
            &self.root.join("sha256"),
            &self.root.join("sha256").join(hashes.sha256.hex()),
            digest.to_string().as_bytes(),
        )?;
        let mut perms = fs::metadata(tmp).map_err(io_err(tmp))?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(tmp, perms).map_err(io_err(tmp))?;
        if let Some(file) = tmp_lock {
            // Under the store lock, so `remove_leftovers` cannot take it for abandoned.
            file.unlock().map_err(io_err(tmp))?;
        }
        let blob_path = self.blob_path(&digest);
        fs::rename(tmp, &blob_path).map_err(io_err(&blob_path))?;
        sync_dir(&self.root.join("blobs"))?;
        let meta = fs::metadata(&blob_path).map_err(io_err(&blob_path))?;
        write_atomic(
            &self.root.join("stamps"),
            &self.stamp_path(&digest),
            stamp_of(&meta).as_bytes(),
        )?;
        self.touch(&digest);
        self.records
            .lock()
            .expect("records lock poisoned")
            .insert(*digest.bytes(), record);
        bump(&self.counters.inserts);
        Ok(Inserted {
            digest,
            sha256: hashes.sha256,
            size: hashes.size,
            new: true,
            evicted,
        })
    }

    /// Under the store lock: removes `class`'s expired blobs, then, if the `incoming` blob
    /// (its digest and size) would take it over its cap, evicts in policy order (skipping
    /// pinned blobs and blobs in use) until it is at its threshold. An expired copy of the
    /// incoming blob itself is left for the commit to replace. Returns what went and
    /// whether `incoming` now fits under the cap.
    fn make_space(
        &self,
        class: &str,
        incoming: Option<(&Digest, u64)>,
        dry_run: bool,
    ) -> Result<(Vec<Evicted>, bool), ArtifactError> {
        let config = *self.class(class)?;
        let now = self.clock.now_ms();
        let pins = self.pins()?;
        let (replacing, incoming) = incoming.map_or((None, 0), |(d, size)| (Some(*d), size));
        let mut evicted = Vec::new();
        let mut used = 0u64;
        let mut candidates = Vec::new();
        let mut all = self.class_candidates(class)?;
        all.retain(|c| Some(c.digest) != replacing);
        // Expired blobs go in policy order too (for `time`: oldest first).
        policy::sort(config.policy, &mut all);
        for c in all {
            if !pins.contains_key(&c.digest)
                && policy::expired(config.policy, &c, now)
                && self.try_evict(&c.digest, dry_run)?
            {
                evicted.push(self.evicted(&c, class, true));
                continue;
            }
            used += c.size;
            if !pins.contains_key(&c.digest) {
                candidates.push(c);
            }
        }
        if used + incoming > config.cap {
            let low = config.low_water();
            for c in candidates {
                if used + incoming <= low {
                    break;
                }
                if self.try_evict(&c.digest, dry_run)? {
                    used -= c.size;
                    evicted.push(self.evicted(&c, class, false));
                }
            }
        }
        Ok((evicted, used + incoming <= config.cap))
    }

    /// Under the store lock: removes every class's expired blobs (not pinned, not in use).
    fn remove_expired(&self) -> Result<Vec<Evicted>, ArtifactError> {
        let now = self.clock.now_ms();
        let mut evicted = Vec::new();
        for (class, config) in &self.config.classes {
            if !matches!(config.policy, crate::Policy::Time { .. }) {
                continue;
            }
            for c in self.class_candidates(class)? {
                if policy::expired(config.policy, &c, now)
                    && !self.pin_path(&c.digest).exists()
                    && self.try_evict(&c.digest, false)?
                {
                    evicted.push(self.evicted(&c, class, true));
                }
            }
        }
        Ok(evicted)
    }

    fn evicted(&self, c: &Candidate, class: &str, expired: bool) -> Evicted {
        Evicted {
            digest: c.digest,
            size: c.size,
            class: class.to_owned(),
            expired,
        }
    }

    fn class_used(&self, class: &str) -> Result<u64, ArtifactError> {
        Ok(self.class_candidates(class)?.iter().map(|c| c.size).sum())
    }

    /// Every committed blob of `class` with its sizes and times.
    fn class_candidates(&self, class: &str) -> Result<Vec<Candidate>, ArtifactError> {
        let mut out = Vec::new();
        for digest in self.record_digests()? {
            let Some(record) = self.record(&digest)? else {
                continue;
            };
            if record.class != class || !self.blob_path(&digest).exists() {
                continue;
            }
            out.push(Candidate {
                digest,
                size: record.size,
                inserted_ms: record.inserted_ms,
                accessed_ms: self.accessed_ms(&digest).unwrap_or(record.inserted_ms),
            });
        }
        Ok(out)
    }

    /// Under the store lock: evicts the blob unless a reader holds it. `true` if it went
    /// (or, in a dry run, would go).
    fn try_evict(&self, digest: &Digest, dry_run: bool) -> Result<bool, ArtifactError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ArtifactError::io(&path, e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Error(e)) => return Err(ArtifactError::io(&path, e)),
        }
        if !dry_run {
            self.unlink_blob(digest)?;
            bump(&self.counters.evictions);
            tracing::debug!(%digest, "evicted");
        }
        Ok(true)
    }

    /// Removes a blob and what belongs to it (not its pin). Blob first: a record without
    /// its blob is a miss, and is cleaned up.
    fn unlink_blob(&self, digest: &Digest) -> Result<(), ArtifactError> {
        // An unreadable record is removed all the same.
        let record = self.record(digest).ok().flatten();
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArtifactError::io(&path, e)),
        }
        if let Some(record) = record {
            let alias = self.root.join("sha256").join(record.sha256.hex());
            if fs::read_to_string(&alias).is_ok_and(|s| s.trim() == digest.to_string()) {
                let _ = fs::remove_file(&alias);
            }
        }
        for path in [self.stamp_path(digest), self.record_path(digest)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ArtifactError::io(&path, e)),
            }
        }
        self.records
            .lock()
            .expect("records lock poisoned")
            .remove(digest.bytes());
        Ok(())
    }

    fn drop_corrupt(&self, digest: &Digest) -> Result<(), ArtifactError> {
        bump(&self.counters.corrupt);
        tracing::warn!(%digest, "corrupt blob removed");
        let _lock = self.lock_store()?;
        self.unlink_blob(digest)
    }

    /// Removes temporary files no process holds, records without a blob and blobs
    /// without a record. Under the store lock.
    fn remove_leftovers(&self, dry_run: bool) -> Result<Vec<(PathBuf, u64)>, ArtifactError> {
        let mut removed = Vec::new();
        for entry in read_dir(&self.root.join("tmp"))? {
            let path = entry.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if matches!(file.try_lock(), Ok(())) {
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                if !dry_run {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
                removed.push((path, size));
            }
        }
        // Crash-safe writes of small files leave `.PID-N.tmp` behind when killed; those of
        // a process that is gone are removed.
        for dir in ["records", "sha256", "stamps", "pins", "snapshots", ""] {
            for entry in read_dir(&self.root.join(dir))? {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix('.'))
                    .filter(|n| n.ends_with(".tmp"))
                    .and_then(|n| n.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
                    let path = entry.path();
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    if !dry_run {
                        fs::remove_file(&path).map_err(io_err(&path))?;
                    }
                    removed.push((path, size));
                }
            }
        }
        if dry_run {
            return Ok(removed);
        }
        let records: BTreeSet<Digest> = self.record_digests()?.into_iter().collect();
        for digest in &records {
            if !self.blob_path(digest).exists() {
                self.unlink_blob(digest)?;
            }
        }
        for entry in read_dir(&self.root.join("blobs"))? {
            let name = entry.file_name();
            let known = name
                .to_str()
                .and_then(parse_hex32)
                .is_some_and(|b| records.contains(&Digest::Blake3(b)));
            if !known {
                let path = entry.path();
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).map_err(io_err(&path))?;
                removed.push((path, size));
            }
        }
        Ok(removed)
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

/// An unfinished blob: the bytes of a download so far, in `partial/`, under the blob's
/// fetch lock. Append with [`Write`]; [`commit`](Self::commit) verifies and stores it.
/// Dropped without a commit, the bytes stay for the next try.
#[derive(Debug)]
pub struct Partial<'a> {
    store: &'a Store,
    class: String,
    expected: Digest,
    path: PathBuf,
    file: File,
    len: u64,
    _lock: File,
}

impl Partial<'_> {
    /// Bytes already there: where a resumed download starts (`Range: bytes=LEN-`).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// `true` if no byte is there yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest the bytes must have.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// The bytes so far, read from the file (a caller that verifies as it receives hashes
    /// them before resuming).
    pub fn read_so_far(&self) -> Result<Vec<u8>, ArtifactError> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        File::open(&self.path)
            .and_then(|mut f| f.read_to_end(&mut out))
            .map_err(io_err(&self.path))?;
        Ok(out)
    }

    /// Drops the bytes so far (a source that cannot resume starts over).
    pub fn restart(&mut self) -> Result<(), ArtifactError> {
        self.file.set_len(0).map_err(io_err(&self.path))?;
        self.len = 0;
        Ok(())
    }

    /// Hashes the whole file, checks it against the expected digest and commits it. On a
    /// mismatch the bytes are dropped, so the next try starts from zero.
    pub fn commit(mut self) -> Result<Inserted, ArtifactError> {
        self.file.flush().map_err(io_err(&self.path))?;
        self.file.sync_all().map_err(io_err(&self.path))?;
        let hashes = hash_reader(File::open(&self.path).map_err(io_err(&self.path))?)
            .map_err(io_err(&self.path))?;
        let result = self
            .store
            .commit(&self.class, &self.path, None, hashes, Some(&self.expected));
        if let Err(ArtifactError::DigestMismatch { .. }) = &result {
            let _ = fs::remove_file(&self.path);
        }
        result
    }
}

impl Write for Partial<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
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
