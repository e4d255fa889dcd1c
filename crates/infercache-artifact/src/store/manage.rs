//! Pins, listing, usage per class, verification and snapshots.

use super::*;

impl Store {
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
}
