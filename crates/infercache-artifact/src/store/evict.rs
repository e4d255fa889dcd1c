//! Eviction to a class's cap, expiry, removal and pruning of what a killed process left.

use super::*;

impl Store {
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

    /// Under the store lock: removes `class`'s expired blobs, then, if the `incoming` blob
    /// (its digest and size) would take it over its cap, evicts in policy order (skipping
    /// pinned blobs and blobs in use) until it is at its threshold. An expired copy of the
    /// incoming blob itself is left for the commit to replace. Returns what went and
    /// whether `incoming` now fits under the cap.
    pub(super) fn make_space(
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
    pub(super) fn remove_expired(&self) -> Result<Vec<Evicted>, ArtifactError> {
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

    pub(super) fn evicted(&self, c: &Candidate, class: &str, expired: bool) -> Evicted {
        Evicted {
            digest: c.digest,
            size: c.size,
            class: class.to_owned(),
            expired,
        }
    }

    pub(super) fn class_used(&self, class: &str) -> Result<u64, ArtifactError> {
        Ok(self.class_candidates(class)?.iter().map(|c| c.size).sum())
    }

    /// Every committed blob of `class` with its sizes and times.
    pub(super) fn class_candidates(&self, class: &str) -> Result<Vec<Candidate>, ArtifactError> {
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
    pub(super) fn try_evict(&self, digest: &Digest, dry_run: bool) -> Result<bool, ArtifactError> {
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
    pub(super) fn unlink_blob(&self, digest: &Digest) -> Result<(), ArtifactError> {
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

    pub(super) fn drop_corrupt(&self, digest: &Digest) -> Result<(), ArtifactError> {
        bump(&self.counters.corrupt);
        tracing::warn!(%digest, "corrupt blob removed");
        let _lock = self.lock_store()?;
        self.unlink_blob(digest)
    }

    /// Removes temporary files no process holds, records without a blob and blobs
    /// without a record. Under the store lock.
    pub(super) fn remove_leftovers(
        &self,
        dry_run: bool,
    ) -> Result<Vec<(PathBuf, u64)>, ArtifactError> {
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
}
