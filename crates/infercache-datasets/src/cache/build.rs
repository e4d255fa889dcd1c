//! Building a dataset: its sources read, its steps run, its shards and manifest written.

use super::*;

impl DatasetCache {
    /// Caches a dataset under `name`: the rows of `source` through `steps`, in shards.
    /// Nothing is computed if the cache already holds a dataset with the same
    /// fingerprint; a build killed before is resumed from its journal.
    pub fn cache_dataset(
        &self,
        name: &str,
        source: DatasetSource,
        steps: &[StepSpec],
        options: BuildOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Built, DatasetError> {
        validate_name(name)?;
        if options.shard_rows == 0 {
            return Err(DatasetError::InvalidStep {
                spec: "--shard-rows 0".to_owned(),
                reason: "a shard needs at least one row".to_owned(),
            });
        }
        let inner = &self.inner;
        let resolved = inner.resolve(steps)?;
        let (digests, files) = inner.source_digests(&source)?;
        let decls: Vec<_> = resolved.iter().map(|s| s.decl()).collect();
        let chain = fingerprint::chain(&digests, &decls)?;
        let fp = chain
            .last()
            .expect("a chain has its first link")
            .fingerprint;
        inner.protect_only_copies()?;

        // One build of a dataset at a time, across processes.
        let lock_path = inner.root.join("builds").join(format!("{fp}.lock"));
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;

        let record = NameRecord {
            name: name.to_owned(),
            fingerprint: fp,
            origin: match &files {
                Some(files) => Origin::Files {
                    sources: files.clone(),
                },
                None => Origin::Memory,
            },
            steps: resolved.iter().map(|s| s.spec()).collect(),
            built_ms: inner.clock.now_ms(),
        };
        if let Some(manifest) = inner.manifest(&fp)? {
            write_json(&inner.name_path(name), &record)?;
            progress(manifest.rows);
            return Ok(Built {
                fingerprint: fp,
                rows: manifest.rows,
                rows_computed: 0,
                rows_reused: manifest.rows,
                shards: manifest.shards.len() as u64,
            });
        }

        let journal_path = inner.root.join("builds").join(format!("{fp}.journal"));
        let mut journal = Journal::open(&journal_path, fp, options.shard_rows as u64)?;
        let only_copy = !record.recomputable();
        let (rows_iter, schema) = inner.source_rows(&source, files.as_deref())?;
        let chunks = Chunker::new(rows_iter, schema, options.shard_rows);
        let mut computed = 0u64;
        let mut reused = 0u64;
        let mut first_row = 0u64;
        let mut schema_seen: Option<SchemaRef> = None;
        for (index, chunk) in chunks.enumerate() {
            let chunk = chunk?;
            let n = chunk.num_rows() as u64;
            if let Some(done) = journal.shards.get(index) {
                if done.rows != n || done.first_row != first_row {
                    return Err(DatasetError::BadRecord {
                        path: journal_path,
                        reason: format!("shard {index} does not match the source rows"),
                    });
                }
                reused += n;
            } else {
                let rows = apply(&resolved, chunk)?;
                match &schema_seen {
                    None => schema_seen = Some(rows.schema()),
                    Some(s) if *s != rows.schema() => {
                        return Err(DatasetError::step(
                            resolved.last().and_then(|s| s.spec()).unwrap_or_default(),
                            format!(
                                "shard {index} has the columns ({}), shard 0 had ({})",
                                step::fields(&rows.schema()).join(", "),
                                step::fields(s).join(", ")
                            ),
                        ));
                    }
                    Some(_) => {}
                }
                let bytes = shard::encode(&rows)?;
                let cap = inner.config.disk_size;
                if 2 * bytes.len() as u64 > cap {
                    return Err(DatasetError::CapTooSmall {
                        cap,
                        shard_bytes: bytes.len() as u64,
                    });
                }
                let inserted = inner.store.insert_bytes(SHARD_CLASS, &bytes, None)?;
                if only_copy {
                    inner
                        .store
                        .pin(&inserted.digest, &format!("only copy: dataset `{name}`"))?;
                }
                journal.append(ShardEntry {
                    index: index as u64,
                    first_row,
                    rows: n,
                    digest: inserted.digest,
                    bytes: inserted.size,
                })?;
                computed += n;
            }
            first_row += n;
            progress(first_row);
        }
        let shards = journal.shards.clone();
        // With shards journaled by an earlier run, shard 0's schema is read from it.
        let schema = match (&schema_seen, reused) {
            (Some(s), 0) => step::fields(s),
            _ => inner.shard_schema(&shards)?,
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            fingerprint: fp,
            chain,
            schema,
            shard_rows: options.shard_rows as u64,
            rows: first_row,
            shards,
        };
        write_json(&inner.manifest_path(&fp), &manifest)?;
        write_json(&inner.name_path(name), &record)?;
        drop(journal);
        let _ = fs::remove_file(&journal_path);
        drop(lock);
        Ok(Built {
            fingerprint: fp,
            rows: manifest.rows,
            rows_computed: computed,
            rows_reused: reused,
            shards: manifest.shards.len() as u64,
        })
    }
}
