//! Inserts, resumable downloads and the commit of a blob (see the crash-safety notes in
//! the [module docs](super)).

use super::*;

impl Store {
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

    /// A new temporary file in `tmp/`, locked by this process. Created under the store
    /// lock, so that [`remove_leftovers`](Self::remove_leftovers) never sees it unlocked.
    pub(super) fn create_tmp(&self) -> Result<(PathBuf, File), ArtifactError> {
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
    pub(super) fn commit(
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
