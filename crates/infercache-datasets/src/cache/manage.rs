//! Listing, removal, pruning, cleanup, verification, audits and explanations of cached datasets.

use super::*;

impl DatasetCache {
    /// Every named dataset.
    pub fn list(&self) -> Result<Vec<DatasetInfo>, DatasetError> {
        let mut out = Vec::new();
        for record in self.inner.records()? {
            let Some(m) = self.inner.readable_manifest(&record) else {
                continue;
            };
            let mut cached = 0;
            let mut bytes_cached = 0;
            for s in &m.shards {
                if self.inner.store.contains(&s.digest)? {
                    cached += 1;
                    bytes_cached += s.bytes;
                }
            }
            out.push(DatasetInfo {
                name: record.name.clone(),
                fingerprint: record.fingerprint,
                rows: m.rows,
                shards: m.shards.len() as u64,
                shards_cached: cached,
                bytes: m.shards.iter().map(|s| s.bytes).sum(),
                bytes_cached,
                recomputable: record.recomputable(),
                built_ms: record.built_ms,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a name; its dataset's manifest and shards go too unless another name uses
    /// them. Returns the shards' bytes freed.
    pub fn remove(&self, name: &str) -> Result<u64, DatasetError> {
        validate_name(name)?;
        let inner = &self.inner;
        let record: NameRecord =
            read_json(&inner.name_path(name))?.ok_or_else(|| DatasetError::NotFound {
                name: name.to_owned(),
            })?;
        fs::remove_file(inner.name_path(name)).map_err(io_err(&inner.name_path(name)))?;
        let shared = inner
            .records()?
            .iter()
            .any(|r| r.fingerprint == record.fingerprint);
        if shared {
            return Ok(0);
        }
        inner.drop_dataset(&record.fingerprint)
    }

    /// Removes every dataset, shard and journal. Returns the bytes freed.
    pub fn clear(&self) -> Result<u64, DatasetError> {
        let inner = &self.inner;
        let mut freed = 0;
        for record in inner.records()? {
            let _ = fs::remove_file(inner.name_path(&record.name));
        }
        for entry in fs::read_dir(inner.root.join("manifests")).map_err(io_err(&inner.root))? {
            let entry = entry.map_err(io_err(&inner.root))?;
            if let Some(fp) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<Fingerprint>().ok())
            {
                freed += inner.drop_dataset(&fp)?;
            }
        }
        inner.memory.clear();
        for blob in inner.store.list()? {
            freed += blob.size;
            inner.store.remove(&blob.digest, true)?;
        }
        for entry in fs::read_dir(inner.root.join("builds")).map_err(io_err(&inner.root))? {
            let path = entry.map_err(io_err(&inner.root))?.path();
            if path.extension().is_some_and(|e| e == "journal") {
                let _ = fs::remove_file(path);
            }
        }
        Ok(freed)
    }

    /// Protects datasets whose cache is now their only copy, then removes what the cap
    /// and policy say to, manifests no name refers to, and leftovers of killed writes.
    pub fn prune(&self, dry_run: bool) -> Result<infercache_artifact::PruneReport, DatasetError> {
        self.inner.protect_only_copies()?;
        if !dry_run {
            let named: Vec<Fingerprint> = self
                .inner
                .records()?
                .iter()
                .map(|r| r.fingerprint)
                .collect();
            for entry in
                fs::read_dir(self.inner.root.join("manifests")).map_err(io_err(&self.inner.root))?
            {
                let entry = entry.map_err(io_err(&self.inner.root))?;
                if let Some(fp) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|n| n.parse::<Fingerprint>().ok())
                    && !named.contains(&fp)
                {
                    self.inner.drop_dataset(&fp)?;
                }
            }
        }
        Ok(self.inner.store.prune(dry_run)?)
    }

    /// Starts a thread that runs [`prune`](Self::prune) every `cleanup_interval` (expired
    /// shards, the cap, unnamed datasets, leftovers of killed writes) until the returned
    /// [`Cleaner`](infercache_artifact::Cleaner) is dropped or the cache is. Eviction also
    /// runs on every shard written; this is for a process that lives long (a server).
    pub fn spawn_cleanup(&self) -> Result<infercache_artifact::Cleaner, DatasetError> {
        let inner = Arc::downgrade(&self.inner);
        infercache_artifact::Cleaner::spawn(
            "dataset-cleanup",
            self.inner.config.cleanup_interval,
            move || {
                let Some(inner) = inner.upgrade() else {
                    return false;
                };
                if let Err(error) = (DatasetCache { inner }).prune(false) {
                    tracing::warn!(%error, "dataset cache cleanup failed");
                }
                true
            },
        )
        .map_err(|e| DatasetError::io(Path::new("dataset-cleanup thread"), e))
    }

    /// Checks every cached shard of `key` (or of every dataset) against its digest;
    /// corrupt shards are removed (they are recomputed when next read).
    pub fn verify(&self, key: Option<&str>) -> Result<DatasetVerify, DatasetError> {
        let mut report = DatasetVerify::default();
        let datasets = match key {
            Some(k) => vec![
                self.inner
                    .dataset(k)?
                    .ok_or_else(|| DatasetError::NotFound { name: k.to_owned() })?,
            ],
            None => self
                .inner
                .records()?
                .iter()
                .filter_map(|r| self.inner.dataset(&r.name).transpose())
                .collect::<Result<Vec<_>, _>>()?,
        };
        for d in datasets {
            let label = d
                .name
                .clone()
                .unwrap_or_else(|| d.manifest.fingerprint.hex());
            for s in &d.manifest.shards {
                // Hash it whatever its stamp says.
                match self.inner.store.open_blob(&s.digest)? {
                    None => report.missing += 1,
                    Some(blob) => {
                        let bytes = blob.read_all()?;
                        drop(blob);
                        if Digest::blake3_of(&bytes) == s.digest {
                            report.ok += 1;
                        } else {
                            self.inner.store.remove(&s.digest, true)?;
                            report.corrupt.push((label.clone(), s.index));
                        }
                    }
                }
            }
        }
        Ok(report)
    }

    /// Recomputes `sample` rows of `key`, chosen at random from `seed`, from the sources
    /// and compares them with the cached rows: a mismatch means a source or a step changed
    /// without its version changing.
    pub fn audit(&self, key: &str, sample: u64, seed: u64) -> Result<Audit, DatasetError> {
        let inner = &self.inner;
        let d = inner.dataset(key)?.ok_or_else(|| DatasetError::NotFound {
            name: key.to_owned(),
        })?;
        let record = d.record.clone().ok_or_else(|| DatasetError::NotFound {
            name: format!("{key} (audit needs a name, to find its sources)"),
        })?;
        let m = &d.manifest;
        let mut rng = crate::stream::Rng::new(seed, 0, u64::MAX);
        let mut rows: Vec<u64> = (0..sample.min(m.rows)).map(|_| rng.below(m.rows)).collect();
        rows.sort_unstable();
        rows.dedup();
        let mut audit = Audit::default();
        let steps = inner.resolve_record(&record)?;
        for s in &m.shards {
            let offsets: Vec<u32> = rows
                .iter()
                .filter(|r| **r >= s.first_row && **r < s.first_row + s.rows)
                .map(|r| u32::try_from(r - s.first_row).expect("a shard has under 2^32 rows"))
                .collect();
            if offsets.is_empty() {
                continue;
            }
            let Some(blob) = inner.store.open_verified(&s.digest).or_else(|e| match e {
                ArtifactError::Corrupt { .. } => Ok(None),
                e => Err(e),
            })?
            else {
                audit.not_cached += offsets.len() as u64;
                continue;
            };
            let stored =
                shard::one_batch(shard::decode_blob(&blob, inner.config.use_mmap)?, &s.digest)?;
            let source_rows = inner.source_chunk(&record, m, s.index)?;
            let idx = UInt32Array::from(offsets.clone());
            let picked = arrow_select::take::take_record_batch(&source_rows, &idx)
                .map_err(|e| DatasetError::arrow("sampling rows", e))?;
            let again = apply(&steps, picked)?;
            let cached = arrow_select::take::take_record_batch(&stored, &idx)
                .map_err(|e| DatasetError::arrow("sampling rows", e))?;
            for (i, off) in offsets.iter().enumerate() {
                audit.checked += 1;
                let same =
                    again.schema() == cached.schema() && again.slice(i, 1) == cached.slice(i, 1);
                if !same {
                    audit.mismatched.push(s.first_row + u64::from(*off));
                }
            }
        }
        Ok(audit)
    }

    /// Why two cached datasets (names or fingerprints) have different fingerprints, in
    /// words; empty if they are the same dataset.
    pub fn explain(&self, a: &str, b: &str) -> Result<Vec<String>, DatasetError> {
        let get = |k: &str| {
            self.inner
                .dataset(k)?
                .ok_or_else(|| DatasetError::NotFound { name: k.to_owned() })
        };
        Ok(fingerprint::explain(
            &get(a)?.manifest.chain,
            &get(b)?.manifest.chain,
        ))
    }
}
