//! An open blob.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::ArtifactError;
use crate::digest::Digest;
use crate::error::io_err;

/// A blob opened from the store. While it lives, its file is share-locked and the store
/// never evicts it (an explicit forced removal unlinks the name; these bytes stay
/// readable).
#[derive(Debug)]
pub struct Blob {
    digest: Digest,
    sha256: Digest,
    size: u64,
    class: String,
    path: PathBuf,
    file: File,
}

impl Blob {
    pub(crate) fn new(
        digest: Digest,
        sha256: Digest,
        size: u64,
        class: String,
        path: PathBuf,
        file: File,
    ) -> Self {
        Self {
            digest,
            sha256,
            size,
            class,
            path,
            file,
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

    /// Its file in the store (read-only; never write to it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (positioned wherever the last read left it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A reader over the whole blob from its first byte, independent of other readers.
    pub fn reader(&self) -> Result<impl Read + use<>, ArtifactError> {
        let file = self.file.try_clone().map_err(io_err(&self.path))?;
        Ok(io::BufReader::with_capacity(
            1 << 20,
            PositionedReader { file, pos: 0 },
        ))
    }

    /// The whole blob in memory.
    pub fn read_all(&self) -> Result<Vec<u8>, ArtifactError> {
        let mut out = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
        self.reader()?
            .read_to_end(&mut out)
            .map_err(io_err(&self.path))?;
        Ok(out)
    }

    /// The blob mapped into memory, read-only. The mapping stays valid after the blob is
    /// dropped, evicted or removed.
    pub fn map(&self) -> Result<Mmap, ArtifactError> {
        // SAFETY: a mapping is undefined behaviour only if the file is truncated or
        // written while mapped. The store never does either to a blob: blobs are written
        // in `tmp/`, made read-only, renamed into place once complete and then only ever
        // unlinked, which leaves an existing mapping intact. (A process outside the store
        // writing into `blobs/` breaks this, as it would for any memory-mapped cache.)
        #[expect(unsafe_code, reason = "zero-copy reads of immutable blobs")]
        let map = unsafe { Mmap::map(&self.file) };
        map.map_err(io_err(&self.path))
    }
}

/// Reads a file from its own offset with `pread`, so clones of one file do not share a
/// position.
#[derive(Debug)]
struct PositionedReader {
    file: File,
    pos: u64,
}

impl Read for PositionedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
