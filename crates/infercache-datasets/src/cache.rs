//! The dataset cache: builds, lookups and maintenance.
//!
//! # Layout
//!
//! ```text
//! <root>/store/                 the artifact store (class `datasets`): every shard is a blob
//! <root>/manifests/<fp>.json    each built dataset's manifest
//! <root>/names/<name>.json      each name: its dataset, sources and step specifications
//! <root>/builds/<fp>.journal    the shards a build in progress finished
//! <root>/builds/<fp>.lock       held by the process building that dataset
//! <root>/source-digests.json    content digests of source files by file identity
//! ```
//!
//! A build computes shards in row order; each is written to the store (temporary file,
//! fsync, rename) and then recorded in the journal (fsynced); the manifest is written last
//! and the journal removed. A killed build, run again, keeps every journaled shard and
//! recomputes at most the one in flight.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array};
use arrow_schema::SchemaRef;
use infercache_artifact::{ArtifactError, Blob, ClassConfig, Digest, Policy, Store, StoreConfig};
use infercache_core::SharedClock;
use serde::Serialize;

use crate::error::{DatasetError, io_err};
use crate::fingerprint::{self, Fingerprint, Link, SourceDigest};
use crate::manifest::{
    Journal, MANIFEST_FORMAT, Manifest, NameRecord, Origin, ShardEntry, read_json, write_json,
};
use crate::memory::{MemoryStats, MemoryTier};
use crate::shard;
use crate::source::{self, Chunker, DigestMemo, SourceFile};
use crate::step::{self, Step, StepContext};
use crate::stream::{DatasetStream, StreamOptions};

mod build;
mod manage;

/// The artifact class every shard is stored in.
pub const SHARD_CLASS: &str = "datasets";

/// Rows per shard unless a build says otherwise.
pub const DEFAULT_SHARD_ROWS: usize = 8_192;

/// Rows a source reader hands over at a time.
const READ_BATCH_ROWS: usize = 8_192;

/// How the cache is sized and what its steps can use.
#[derive(Debug, Clone)]
pub struct DatasetConfig {
    /// Bytes of shards on disk (default 10,000 MB, LlamaHome's `disk_size`).
    pub disk_size: u64,
    /// Bytes of decoded shards held in this process's memory in front of the disk
    /// (default 1,000 MB, LlamaHome's `memory_size`; 0 turns the memory tier off). See
    /// [`DatasetCache::memory`].
    pub memory_size: u64,
    /// Which shards go first when a cap is reached, on disk and in memory (default `lru`).
    pub policy: Policy,
    /// Eviction brings usage down to this fraction of the cap, on disk and in memory
    /// (default 0.9).
    pub eviction_threshold: f64,
    /// How often [`DatasetCache::spawn_cleanup`]'s thread prunes the cache (default an
    /// hour, LlamaHome's `cleanup_interval`).
    pub cleanup_interval: std::time::Duration,
    /// Read shard files through memory maps, zero-copy (default `true`, LlamaHome's
    /// `[cache.disk] use_mmap`); `false` reads them with plain reads into buffers of the
    /// process's own (for file systems where mapping is slow or unsupported). The batches
    /// are the same either way.
    pub use_mmap: bool,
    /// What `tokenize` and `embed` need.
    pub steps: StepContext,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self {
            disk_size: 10_000 << 20,
            memory_size: 1_000 << 20,
            policy: Policy::Lru,
            eviction_threshold: infercache_artifact::DEFAULT_EVICTION_THRESHOLD,
            cleanup_interval: infercache_artifact::DEFAULT_CLEANUP_INTERVAL,
            use_mmap: true,
            steps: StepContext::default(),
        }
    }
}

/// Where a dataset's rows come from.
#[derive(Debug, Clone)]
pub enum DatasetSource {
    /// Files, read in order (JSON lines, CSV, Parquet, Arrow).
    Files(Vec<PathBuf>),
    /// Rows in memory. The cache then holds their only copy: their shards are pinned and
    /// never evicted.
    Batches(Vec<RecordBatch>),
}

/// A step of a build: a specification (`tokenize:max_len=128`) or a step written in Rust.
#[derive(Debug, Clone)]
pub enum StepSpec {
    /// Parsed with [`step::parse`].
    Text(String),
    /// A step of the caller's.
    Custom(Arc<dyn Step>),
}

impl From<&str> for StepSpec {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

/// Options of one build.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// Rows per shard (default 8,192). Not part of the fingerprint: a dataset built with
    /// one shard size is found when asked for with another.
    pub shard_rows: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            shard_rows: DEFAULT_SHARD_ROWS,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Built {
    /// The dataset.
    pub fingerprint: Fingerprint,
    /// Its rows.
    pub rows: u64,
    /// Rows this build ran through the steps.
    pub rows_computed: u64,
    /// Rows already cached (a finished dataset, or the journaled shards of a killed
    /// build).
    pub rows_reused: u64,
    /// Its shards.
    pub shards: u64,
}

/// A dataset in the cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dataset {
    /// Its name, when looked up by one.
    pub name: Option<String>,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its name record, when looked up by name.
    pub record: Option<NameRecord>,
}

/// A dataset as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetInfo {
    /// Its name.
    pub name: String,
    /// Its fingerprint.
    pub fingerprint: Fingerprint,
    /// Rows.
    pub rows: u64,
    /// Shards in the manifest.
    pub shards: u64,
    /// Shards on disk now.
    pub shards_cached: u64,
    /// Bytes of all shards.
    pub bytes: u64,
    /// Bytes on disk now.
    pub bytes_cached: u64,
    /// `true` if a shard can be recomputed when evicted.
    pub recomputable: bool,
    /// When it was built, Unix ms.
    pub built_ms: u64,
}

/// What [`DatasetCache::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DatasetVerify {
    /// Shards whose digest matches.
    pub ok: u64,
    /// Shards not on disk (evicted; recomputed when read).
    pub missing: u64,
    /// Shards that failed their digest (removed; recomputed when read).
    pub corrupt: Vec<(String, u64)>,
}

/// What [`DatasetCache::audit`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Rows recomputed and compared.
    pub checked: u64,
    /// Rows whose recomputation differs from the cached row, by index.
    pub mismatched: Vec<u64>,
    /// Sampled rows whose shard is not on disk (nothing to compare with).
    pub not_cached: u64,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) store: Store,
    pub(crate) memory: MemoryTier,
    /// Shard digests decoded with Arrow's full validation (decoded without it after).
    pub(crate) validated: shard::Validated,
    memo: DigestMemo,
    pub(crate) config: DatasetConfig,
    clock: SharedClock,
}

/// The dataset cache in one directory. See the [crate docs](crate). `Send + Sync`;
/// several processes may use one directory at once.
#[derive(Debug, Clone)]
pub struct DatasetCache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn validate_name(name: &str) -> Result<(), DatasetError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(DatasetError::InvalidName {
            name: name.to_owned(),
            reason: "use 1 to 128 of A-Z, a-z, 0-9, `.`, `_`, `-`, not starting with `.`"
                .to_owned(),
        })
    }
}

impl DatasetCache {
    /// Opens (creating) the cache in `root`.
    pub fn open(
        root: impl Into<PathBuf>,
        config: DatasetConfig,
        clock: SharedClock,
    ) -> Result<Self, DatasetError> {
        let root = root.into();
        for dir in ["manifests", "names", "builds"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let mut class = ClassConfig::new(config.disk_size, config.policy);
        class.eviction_threshold = config.eviction_threshold;
        let store = Store::open(
            root.join("store"),
            StoreConfig::single(SHARD_CLASS, class),
            clock.clone(),
        )?;
        let memo = DigestMemo::open(root.join("source-digests.json"));
        let memory = MemoryTier::new(
            config.memory_size,
            config.policy,
            config.eviction_threshold,
            clock.clone(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                store,
                memory,
                validated: shard::Validated::default(),
                memo,
                config,
                clock,
            }),
        })
    }

    /// The artifact store holding the shards.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// What the memory tier (`memory_size`) holds now and has done since the cache was
    /// opened: streams read a shard from it when it holds the shard, and otherwise from
    /// the store, keeping a copy in it when the policy makes room. Its bytes never exceed
    /// its cap. The tier belongs to this [`DatasetCache`] (and its clones), not to the
    /// directory: other processes have their own.
    pub fn memory(&self) -> MemoryStats {
        self.inner.memory.stats()
    }

    /// The fingerprint chain a build of `source` through `steps` would have, without
    /// building (for `explain`). Resolves the steps.
    pub fn plan(
        &self,
        source: &DatasetSource,
        steps: &[StepSpec],
    ) -> Result<Vec<Link>, DatasetError> {
        let steps = self.inner.resolve(steps)?;
        let (digests, _) = self.inner.source_digests(source)?;
        let decls: Vec<_> = steps.iter().map(|s| s.decl()).collect();
        fingerprint::chain(&digests, &decls)
    }

    /// The dataset named `key` (a name, or a fingerprint in hex), if cached.
    pub fn get_dataset(&self, key: &str) -> Result<Option<Dataset>, DatasetError> {
        self.inner.dataset(key)
    }

    /// Streams a cached dataset's rows in batches (see [`StreamOptions`]).
    pub fn stream_dataset(
        &self,
        key: &str,
        options: StreamOptions,
    ) -> Result<DatasetStream, DatasetError> {
        let dataset = self
            .inner
            .dataset(key)?
            .ok_or_else(|| DatasetError::NotFound {
                name: key.to_owned(),
            })?;
        self.inner.protect_only_copies()?;
        DatasetStream::start(self.inner.clone(), dataset, options)
    }
}

/// Runs the steps over one shard's rows, checking each keeps the row count.
fn apply(steps: &[Arc<dyn Step>], mut rows: RecordBatch) -> Result<RecordBatch, DatasetError> {
    for s in steps {
        let n = rows.num_rows();
        rows = s.apply(&rows)?;
        if rows.num_rows() != n {
            return Err(DatasetError::step(
                s.spec().unwrap_or_else(|| s.decl().id),
                format!("returned {} rows for {n}", rows.num_rows()),
            ));
        }
    }
    Ok(rows)
}

impl Inner {
    fn name_path(&self, name: &str) -> PathBuf {
        self.root.join("names").join(format!("{name}.json"))
    }

    fn manifest_path(&self, fp: &Fingerprint) -> PathBuf {
        self.root.join("manifests").join(format!("{fp}.json"))
    }

    pub(crate) fn manifest(&self, fp: &Fingerprint) -> Result<Option<Manifest>, DatasetError> {
        let path = self.manifest_path(fp);
        let m: Option<Manifest> = read_json(&path)?;
        if let Some(m) = &m
            && (m.format != MANIFEST_FORMAT || m.fingerprint != *fp)
        {
            return Err(DatasetError::BadRecord {
                path,
                reason: format!(
                    "format {} for {} (expected format {MANIFEST_FORMAT} for {fp})",
                    m.format, m.fingerprint
                ),
            });
        }
        Ok(m)
    }

    fn records(&self) -> Result<Vec<NameRecord>, DatasetError> {
        let dir = self.root.join("names");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
                && let Some(r) = read_json::<NameRecord>(&path)?
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn dataset(&self, key: &str) -> Result<Option<Dataset>, DatasetError> {
        if validate_name(key).is_ok()
            && let Some(record) = read_json::<NameRecord>(&self.name_path(key))?
        {
            let manifest = self.manifest(&record.fingerprint)?;
            return Ok(manifest.map(|manifest| Dataset {
                name: Some(key.to_owned()),
                manifest,
                record: Some(record),
            }));
        }
        let Ok(fp) = key.parse::<Fingerprint>() else {
            return Ok(None);
        };
        let record = self.records()?.into_iter().find(|r| r.fingerprint == fp);
        Ok(self.manifest(&fp)?.map(|manifest| Dataset {
            name: record.as_ref().map(|r| r.name.clone()),
            manifest,
            record,
        }))
    }

    fn drop_dataset(&self, fp: &Fingerprint) -> Result<u64, DatasetError> {
        let Some(m) = self.manifest(fp)? else {
            return Ok(0);
        };
        let mut freed = 0;
        for s in &m.shards {
            self.memory.remove(&s.digest);
            match self.store.remove(&s.digest, true) {
                Ok(info) => freed += info.size,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let path = self.manifest_path(fp);
        fs::remove_file(&path).map_err(io_err(&path))?;
        Ok(freed)
    }

    fn resolve(&self, steps: &[StepSpec]) -> Result<Vec<Arc<dyn Step>>, DatasetError> {
        steps
            .iter()
            .map(|s| match s {
                StepSpec::Text(t) => step::parse(t, &self.config.steps),
                StepSpec::Custom(c) => Ok(c.clone()),
            })
            .collect()
    }

    fn resolve_record(&self, record: &NameRecord) -> Result<Vec<Arc<dyn Step>>, DatasetError> {
        record
            .steps
            .iter()
            .map(|s| match s {
                Some(t) => step::parse(t, &self.config.steps),
                None => Err(DatasetError::Unrecoverable {
                    dataset: record.name.clone(),
                    shard: 0,
                    reason: "it has a step written in Rust, which cannot be made again".to_owned(),
                }),
            })
            .collect()
    }

    /// Each source's digest; the files too when the source is files.
    fn source_digests(
        &self,
        source: &DatasetSource,
    ) -> Result<(Vec<SourceDigest>, Option<Vec<SourceFile>>), DatasetError> {
        match source {
            DatasetSource::Files(paths) => {
                let files = paths
                    .iter()
                    .map(SourceFile::new)
                    .collect::<Result<Vec<_>, _>>()?;
                if files.is_empty() {
                    return Err(DatasetError::Source {
                        path: PathBuf::new(),
                        reason: "no source given".to_owned(),
                    });
                }
                let digests = files
                    .iter()
                    .map(|f| self.memo.source_digest(f))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((digests, Some(files)))
            }
            DatasetSource::Batches(batches) => {
                let first = batches.first().ok_or_else(|| DatasetError::Source {
                    path: PathBuf::new(),
                    reason: "no rows given".to_owned(),
                })?;
                let mut bytes = Vec::new();
                let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &first.schema())
                    .map_err(|e| DatasetError::arrow("hashing the rows", e))?;
                for b in batches {
                    w.write(b)
                        .map_err(|e| DatasetError::arrow("hashing the rows", e))?;
                }
                w.finish()
                    .map_err(|e| DatasetError::arrow("hashing the rows", e))?;
                drop(w);
                Ok((
                    vec![SourceDigest {
                        format: "memory".to_owned(),
                        blake3: blake3::hash(&bytes).to_hex().to_string(),
                    }],
                    None,
                ))
            }
        }
    }

    fn source_rows(
        &self,
        source: &DatasetSource,
        files: Option<&[SourceFile]>,
    ) -> Result<(source::Batches, SchemaRef), DatasetError> {
        match (source, files) {
            (_, Some(files)) => {
                let schema = source::schema(files)?;
                Ok((source::rows(files, &schema, READ_BATCH_ROWS)?, schema))
            }
            (DatasetSource::Batches(batches), None) => {
                let schema = batches[0].schema();
                for b in batches {
                    if b.schema() != schema {
                        return Err(DatasetError::Source {
                            path: PathBuf::new(),
                            reason: "the batches do not share one schema".to_owned(),
                        });
                    }
                }
                Ok((Box::new(batches.clone().into_iter().map(Ok)), schema))
            }
            (DatasetSource::Files(_), None) => unreachable!("files always resolve"),
        }
    }

    /// The source rows of shard `index`, cut exactly as the build cut them.
    pub(crate) fn source_chunk(
        &self,
        record: &NameRecord,
        m: &Manifest,
        index: u64,
    ) -> Result<RecordBatch, DatasetError> {
        let unrecoverable = |reason: String| DatasetError::Unrecoverable {
            dataset: record.name.clone(),
            shard: index,
            reason,
        };
        let Origin::Files { sources } = &record.origin else {
            return Err(unrecoverable("it was built from rows in memory".to_owned()));
        };
        let digests: Vec<SourceDigest> =
            serde_json::from_value(m.chain[0].params.clone()).unwrap_or_default();
        for (file, want) in sources.iter().zip(&digests) {
            let got = self
                .memo
                .source_digest(file)
                .map_err(|e| unrecoverable(e.to_string()))?;
            if got != *want {
                return Err(unrecoverable(format!(
                    "source {} changed since the build",
                    file.path.display()
                )));
            }
        }
        let schema = source::schema(sources)?;
        let rows = source::rows(sources, &schema, READ_BATCH_ROWS)?;
        let shard_rows = usize::try_from(m.shard_rows).expect("shard rows fit in usize");
        let chunk = Chunker::new(rows, schema, shard_rows)
            .nth(usize::try_from(index).expect("shard index fits"))
            .ok_or_else(|| {
                unrecoverable("the sources have fewer rows than the manifest".to_owned())
            })??;
        Ok(chunk)
    }

    /// The shard `index` of a dataset, open and verified; recomputed from its source rows
    /// if it is not cached or fails its digest. `rebuilt` is told which.
    pub(crate) fn shard_blob(
        &self,
        d: &Dataset,
        index: u64,
        corrupt: &mut dyn FnMut(),
        rebuilt: &mut dyn FnMut(),
    ) -> Result<Blob, DatasetError> {
        let entry = d.manifest.shards[usize::try_from(index).expect("index fits")];
        match self.store.open_verified(&entry.digest) {
            Ok(Some(blob)) => return Ok(blob),
            Ok(None) => {}
            Err(ArtifactError::Corrupt { .. }) => corrupt(),
            Err(e) => return Err(e.into()),
        }
        let label = d
            .name
            .clone()
            .unwrap_or_else(|| d.manifest.fingerprint.hex());
        let record = d
            .record
            .clone()
            .ok_or_else(|| DatasetError::Unrecoverable {
                dataset: label.clone(),
                shard: index,
                reason: "no name records its sources".to_owned(),
            })?;
        let steps = self.resolve_record(&record)?;
        let rows = apply(&steps, self.source_chunk(&record, &d.manifest, index)?)?;
        let bytes = shard::encode(&rows)?;
        let actual = Digest::blake3_of(&bytes);
        if actual != entry.digest {
            return Err(DatasetError::ShardDiffers {
                dataset: label,
                shard: index,
                expected: entry.digest,
                actual,
            });
        }
        self.store
            .insert_bytes(SHARD_CLASS, &bytes, Some(&entry.digest))?;
        rebuilt();
        self.store
            .open_verified(&entry.digest)?
            .ok_or_else(|| DatasetError::Unrecoverable {
                dataset: label,
                shard: index,
                reason: "evicted as soon as it was recomputed: the cap is too small for the streams reading it".to_owned(),
            })
    }

    /// The schema of a dataset's first shard (for a build resumed from its journal).
    fn shard_schema(&self, shards: &[ShardEntry]) -> Result<Vec<String>, DatasetError> {
        let Some(first) = shards.first() else {
            return Ok(Vec::new());
        };
        let blob = self.store.open_verified(&first.digest)?.ok_or_else(|| {
            DatasetError::Unrecoverable {
                dataset: String::new(),
                shard: 0,
                reason: "shard 0 was evicted before the build finished; build again".to_owned(),
            }
        })?;
        let batches = shard::decode_blob(&blob, self.config.use_mmap)?;
        Ok(batches
            .first()
            .map(|b| step::fields(&b.schema()))
            .unwrap_or_default())
    }

    /// The manifest of a name, if readable: one corrupt manifest must not stop the cache
    /// from serving the others (it is reported when its own dataset is asked for).
    fn readable_manifest(&self, record: &NameRecord) -> Option<Manifest> {
        match self.manifest(&record.fingerprint) {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, dataset = %record.name, "skipping an unreadable manifest");
                None
            }
        }
    }

    /// Pins the shards of every dataset whose cache is its only copy: built from rows in
    /// memory or with a step given in Rust, or whose source files are gone or changed.
    pub(crate) fn protect_only_copies(&self) -> Result<(), DatasetError> {
        for record in self.records()? {
            let reason = match &record.origin {
                Origin::Memory => Some("only copy: built from rows in memory".to_owned()),
                Origin::Files { .. } if !record.recomputable() => {
                    Some("only copy: built with a step written in Rust".to_owned())
                }
                Origin::Files { sources } => {
                    let Some(m) = self.readable_manifest(&record) else {
                        continue;
                    };
                    let want: Vec<SourceDigest> =
                        serde_json::from_value(m.chain[0].params.clone()).unwrap_or_default();
                    let mut gone = None;
                    for (file, want) in sources.iter().zip(&want) {
                        match self.memo.source_digest(file) {
                            Ok(got) if got == *want => {}
                            _ => {
                                gone = Some(file.path.clone());
                                break;
                            }
                        }
                    }
                    gone.map(|p| format!("only copy: source {} is gone or changed", p.display()))
                }
            };
            let Some(reason) = reason else { continue };
            let Some(m) = self.readable_manifest(&record) else {
                continue;
            };
            for s in &m.shards {
                match self.store.pin(&s.digest, &reason) {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}
