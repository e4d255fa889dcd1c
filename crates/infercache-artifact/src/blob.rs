//! An open blob, and the read lock that keeps it from eviction.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use crate::ArtifactError;
use crate::digest::Digest;
use crate::error::io_err;

/// A blob's file, share-locked (`flock`) for as long as this value lives.
///
/// The lock belongs to the open file description, which more than this value can hold: a
/// memory map of the file (the kernel keeps the description for as long as the mapping
/// exists, after the descriptor is closed), or a copy of the descriptor that a child
/// process inherits between `fork` and `exec`. Dropping this value therefore *unlocks* the
/// file explicitly before closing it, so the blob stops counting as in use exactly when
/// its last reader ([`Blob`] and its readers) is gone, whatever else still refers to the
/// description.
#[derive(Debug)]
pub(crate) struct ReadLock {
    file: File,
    path: PathBuf,
}

impl ReadLock {
    /// `file` must already hold its shared lock.
    pub(crate) fn new(file: File, path: PathBuf) -> Self {
        Self { file, path }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for ReadLock {
    fn drop(&mut self) {
        if let Err(error) = self.file.unlock() {
            tracing::warn!(%error, path = %self.path.display(), "could not unlock a blob");
        }
    }
}

/// A blob opened from the store. While it lives (or any reader made from it), its file is
/// share-locked and the store never evicts it (an explicit forced removal unlinks the
/// name; these bytes stay readable). A [`Mapped`] view does not hold the lock: it stays
/// valid after the blob is evicted, but no longer keeps the blob in the store.
#[derive(Debug)]
pub struct Blob {
    digest: Digest,
    sha256: Digest,
    size: u64,
    class: String,
    inserted_ms: u64,
    lock: Arc<ReadLock>,
}

impl Blob {
    pub(crate) fn new(
        digest: Digest,
        sha256: Digest,
        size: u64,
        class: String,
        inserted_ms: u64,
        lock: ReadLock,
    ) -> Self {
        Self {
            digest,
            sha256,
            size,
            class,
            inserted_ms,
            lock: Arc::new(lock),
        }
    }

    /// Its name (BLAKE3).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Its SHA-256.
    pub fn sha256(&self) -> Digest {
        self.sha256
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// `true` for an empty blob.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Its class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// When it was inserted into the store (Unix ms): a `time` policy expires it
    /// `max_age` after this.
    pub fn inserted_ms(&self) -> u64 {
        self.inserted_ms
    }

    /// Its file in the store (read-only; never write to it).
    pub fn path(&self) -> &Path {
        &self.lock.path
    }

    /// The open file (positioned wherever the last read left it). A copy of it
    /// (`try_clone`) does not keep the blob from eviction once the `Blob` is dropped: use
    /// [`reader`](Self::reader) or [`map`](Self::map) for reads that outlive it.
    pub fn file(&self) -> &File {
        &self.lock.file
    }

    /// A reader over the whole blob from its first byte, independent of other readers.
    /// It keeps the blob from eviction while it lives.
    pub fn reader(&self) -> impl Read + Send + use<> {
        io::BufReader::with_capacity(
            1 << 20,
            PositionedReader {
                lock: self.lock.clone(),
                pos: 0,
            },
        )
    }

    /// The whole blob in memory.
    pub fn read_all(&self) -> Result<Vec<u8>, ArtifactError> {
        let mut out = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
        self.reader()
            .read_to_end(&mut out)
            .map_err(io_err(self.path()))?;
        Ok(out)
    }

    /// The blob mapped into memory, read-only, zero-copy. The view stays valid for as long
    /// as it lives, whatever happens to the blob; it keeps the blob from eviction only
    /// while this `Blob` (or a reader) lives too: data decoded in place from a blob may be
    /// kept indefinitely (a training loop collecting batches), and must not make its
    /// class's cap unenforceable. An evicted blob's mapped pages are freed, on disk and in
    /// memory, when its last view goes.
    pub fn map(&self) -> Result<Mapped, ArtifactError> {
        self.map_with(false)
    }

    /// As [`map`](Self::map), with every page of the blob mapped now (`MAP_POPULATE`):
    /// the thread that maps pays the page faults, so a reader on another thread takes
    /// none (a stream's producer maps the next shard while its reader reads this one).
    pub fn map_populated(&self) -> Result<Mapped, ArtifactError> {
        self.map_with(true)
    }

    fn map_with(&self, populate: bool) -> Result<Mapped, ArtifactError> {
        let mut options = MmapOptions::new();
        if populate {
            options.populate();
        }
        // SAFETY: a mapping is undefined behaviour only if the file is truncated or
        // written while mapped. The store never does either to a blob: blobs are written
        // in `tmp/`, made read-only, renamed into place once complete and then only ever
        // unlinked, which leaves an existing mapping intact. (A process outside the store
        // writing into `blobs/` breaks this, as it would for any memory-mapped cache.)
        #[expect(unsafe_code, reason = "zero-copy reads of immutable blobs")]
        let map = unsafe { options.map(&self.lock.file) };
        Ok(Mapped {
            map: map.map_err(io_err(self.path()))?,
        })
    }
}

/// A read-only memory map of a blob ([`Blob::map`]); derefs to its bytes. It does not keep
/// the blob from eviction (see [`Blob::map`]).
#[derive(Debug)]
pub struct Mapped {
    map: Mmap,
}

impl Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// Reads the blob's file from its own offset with `pread`, so readers of one blob do not
/// share a position.
#[derive(Debug)]
struct PositionedReader {
    lock: Arc<ReadLock>,
    pos: u64,
}

impl Read for PositionedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        let n = self.lock.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
