//! Source files: JSON lines, CSV, Parquet and Arrow IPC, read into Arrow batches, and
//! their content digests.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Seek as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, io_err};
use crate::fingerprint::SourceDigest;

/// How a source file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line (`.jsonl`, `.ndjson`, `.json`).
    Jsonl,
    /// CSV with a header row (`.csv`).
    Csv,
    /// Apache Parquet (`.parquet`).
    Parquet,
    /// Arrow IPC, file or stream format (`.arrow`, `.ipc`, `.feather`).
    Arrow,
}

impl Format {
    /// The format's name in fingerprints and manifests.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
            Self::Parquet => "parquet",
            Self::Arrow => "arrow",
        }
    }

    /// The format a file's extension names.
    pub fn from_path(path: &Path) -> Result<Self, DatasetError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl" | "ndjson" | "json") => Ok(Self::Jsonl),
            Some("csv") => Ok(Self::Csv),
            Some("parquet") => Ok(Self::Parquet),
            Some("arrow" | "ipc" | "feather") => Ok(Self::Arrow),
            _ => Err(DatasetError::Source {
                path: path.to_owned(),
                reason: "unknown format: name it .jsonl, .csv, .parquet or .arrow".to_owned(),
            }),
        }
    }
}

/// A source file and its format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Where it is (absolute once resolved by the cache).
    pub path: PathBuf,
    /// How it is read.
    pub format: Format,
}

impl SourceFile {
    /// A source at `path`, its format from the extension. Fails if the file is missing.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, DatasetError> {
        let path = path.into();
        let format = Format::from_path(&path)?;
        let meta = fs::metadata(&path).map_err(|e| DatasetError::Source {
            path: path.clone(),
            reason: format!("cannot be read: {e}"),
        })?;
        if !meta.is_file() {
            return Err(DatasetError::Source {
                path,
                reason: "not a file".to_owned(),
            });
        }
        let path = fs::canonicalize(&path).map_err(io_err(&path))?;
        Ok(Self { path, format })
    }
}

/// Content digests of source files, remembered by file identity (device, inode, size,
/// mtime) so an unchanged file is not hashed again. A file modified less than two seconds
/// before it was hashed is not remembered: its mtime may not yet tell a later write in
/// the same clock tick apart (the "racy git" problem).
#[derive(Debug)]
pub(crate) struct DigestMemo {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, String>>,
}

impl DigestMemo {
    pub(crate) fn open(path: PathBuf) -> Self {
        let entries = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            path,
            entries: Mutex::new(entries),
        }
    }

    /// BLAKE3 (hex) of the file's content.
    pub(crate) fn digest(&self, path: &Path) -> Result<String, DatasetError> {
        let meta = fs::metadata(path).map_err(|e| DatasetError::Source {
            path: path.to_owned(),
            reason: format!("cannot be read: {e}"),
        })?;
        let key = format!(
            "{}:{}:{}:{}.{}",
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        if let Some(d) = self.entries.lock().expect("memo lock poisoned").get(&key) {
            return Ok(d.clone());
        }
        let mut hasher = blake3::Hasher::new();
        let file = File::open(path).map_err(io_err(path))?;
        io::copy(&mut BufReader::with_capacity(1 << 20, file), &mut hasher)
            .map_err(io_err(path))?;
        let digest = hasher.finalize().to_hex().to_string();
        let settled = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > Duration::from_secs(2));
        if settled {
            let mut entries = self.entries.lock().expect("memo lock poisoned");
            entries.insert(key, digest.clone());
            let bytes = serde_json::to_vec(&*entries).expect("a map of strings serializes");
            drop(entries);
            // Best effort: a memo that cannot be saved only costs a re-hash.
            let tmp = self
                .path
                .with_extension(format!("{}.tmp", std::process::id()));
            if fs::write(&tmp, bytes).is_ok() {
                let _ = fs::rename(&tmp, &self.path);
            }
        }
        Ok(digest)
    }

    pub(crate) fn source_digest(&self, source: &SourceFile) -> Result<SourceDigest, DatasetError> {
        Ok(SourceDigest {
            format: source.format.name().to_owned(),
            blake3: self.digest(&source.path)?,
        })
    }
}

fn source_err(path: &Path, e: impl std::fmt::Display) -> DatasetError {
    DatasetError::Source {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// The schema every source must share (metadata dropped).
pub(crate) fn schema(sources: &[SourceFile]) -> Result<SchemaRef, DatasetError> {
    let mut first: Option<(Schema, &Path)> = None;
    for source in sources {
        let s = file_schema(source)?;
        let s = Schema::new(s.fields().clone());
        match &first {
            None => first = Some((s, &source.path)),
            Some((f, p)) if *f != s => {
                return Err(source_err(
                    &source.path,
                    format!(
                        "its columns ({}) differ from those of {} ({})",
                        describe(&s),
                        p.display(),
                        describe(f)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let (s, _) = first.ok_or_else(|| DatasetError::Source {
        path: PathBuf::new(),
        reason: "no source given".to_owned(),
    })?;
    if s.fields().is_empty() {
        return Err(source_err(&sources[0].path, "no columns"));
    }
    Ok(Arc::new(s))
}

/// `name: type, ...`.
pub(crate) fn describe(schema: &Schema) -> String {
    crate::fields(schema).join(", ")
}

fn file_schema(source: &SourceFile) -> Result<Schema, DatasetError> {
    let path = &source.path;
    let file = File::open(path).map_err(|e| source_err(path, format!("cannot be read: {e}")))?;
    match source.format {
        Format::Jsonl => {
            let (schema, _) =
                arrow_json::reader::infer_json_schema_from_seekable(BufReader::new(file), None)
                    .map_err(|e| source_err(path, format!("malformed JSON lines: {e}")))?;
            Ok(schema)
        }
        Format::Csv => {
            let (schema, _) = arrow_csv::reader::Format::default()
                .with_header(true)
                .infer_schema(BufReader::new(file), None)
                .map_err(|e| source_err(path, format!("malformed CSV: {e}")))?;
            Ok(schema)
        }
        Format::Parquet => {
            let builder =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| source_err(path, format!("not a Parquet file: {e}")))?;
            Ok(builder.schema().as_ref().clone())
        }
        Format::Arrow => match arrow_ipc::reader::FileReader::try_new(BufReader::new(file), None) {
            Ok(r) => Ok(r.schema().as_ref().clone()),
            Err(_) => {
                let mut file = File::open(path).map_err(io_err(path))?;
                file.rewind().map_err(io_err(path))?;
                let r = arrow_ipc::reader::StreamReader::try_new(BufReader::new(file), None)
                    .map_err(|e| source_err(path, format!("not an Arrow IPC file: {e}")))?;
                Ok(r.schema().as_ref().clone())
            }
        },
    }
}

pub(crate) type Batches = Box<dyn Iterator<Item = Result<RecordBatch, DatasetError>> + Send>;

/// Every row of `sources`, in order, as batches of at most `batch_rows` rows with
/// `schema`.
pub(crate) fn rows(
    sources: &[SourceFile],
    schema: &SchemaRef,
    batch_rows: usize,
) -> Result<Batches, DatasetError> {
    let mut all: Vec<Batches> = Vec::new();
    for source in sources {
        all.push(file_rows(source, schema, batch_rows)?);
    }
    Ok(Box::new(all.into_iter().flatten()))
}

fn file_rows(
    source: &SourceFile,
    schema: &SchemaRef,
    batch_rows: usize,
) -> Result<Batches, DatasetError> {
    let path = source.path.clone();
    let file = File::open(&path).map_err(|e| source_err(&path, format!("cannot be read: {e}")))?;
    let schema = schema.clone();
    let wrap = move |path: PathBuf| {
        move |r: Result<RecordBatch, arrow_schema::ArrowError>| {
            r.map_err(|e| source_err(&path, format!("malformed row: {e}")))
                .and_then(|b| {
                    // Sources share one schema; drop per-file metadata.
                    RecordBatch::try_new(schema_of(&b), b.columns().to_vec())
                        .map_err(|e| source_err(&path, e))
                })
        }
    };
    Ok(match source.format {
        Format::Jsonl => Box::new(
            arrow_json::ReaderBuilder::new(schema)
                .with_batch_size(batch_rows)
                .build(BufReader::with_capacity(1 << 20, file))
                .map_err(|e| source_err(&path, e))?
                .map(wrap(path.clone())),
        ),
        Format::Csv => Box::new(
            arrow_csv::ReaderBuilder::new(schema)
                .with_header(true)
                .with_batch_size(batch_rows)
                .build(BufReader::with_capacity(1 << 20, file))
                .map_err(|e| source_err(&path, e))?
                .map(wrap(path.clone())),
        ),
        Format::Parquet => Box::new(
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| source_err(&path, e))?
                .with_batch_size(batch_rows)
                .build()
                .map_err(|e| source_err(&path, e))?
                .map(wrap(path.clone())),
        ),
        Format::Arrow => match arrow_ipc::reader::FileReader::try_new(BufReader::new(file), None) {
            Ok(r) => Box::new(r.map(wrap(path.clone()))),
            Err(_) => {
                let file = File::open(&path).map_err(io_err(&path))?;
                Box::new(
                    arrow_ipc::reader::StreamReader::try_new(BufReader::new(file), None)
                        .map_err(|e| source_err(&path, e))?
                        .map(wrap(path.clone())),
                )
            }
        },
    })
}

fn schema_of(batch: &RecordBatch) -> SchemaRef {
    Arc::new(Schema::new(batch.schema().fields().clone()))
}

/// Cuts a stream of batches into runs of exactly `rows` rows (the last may be shorter).
pub(crate) struct Chunker {
    inner: Batches,
    rows: usize,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    schema: SchemaRef,
}

impl Chunker {
    pub(crate) fn new(inner: Batches, schema: SchemaRef, rows: usize) -> Self {
        Self {
            inner,
            rows,
            pending: Vec::new(),
            pending_rows: 0,
            schema,
        }
    }
}

impl Iterator for Chunker {
    type Item = Result<RecordBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending_rows < self.rows {
            match self.inner.next() {
                Some(Ok(b)) => {
                    self.pending_rows += b.num_rows();
                    self.pending.push(b);
                }
                Some(Err(e)) => return Some(Err(e)),
                None => break,
            }
        }
        if self.pending_rows == 0 {
            return None;
        }
        let all = match arrow_select::concat::concat_batches(&self.schema, &self.pending) {
            Ok(b) => b,
            Err(e) => return Some(Err(DatasetError::arrow("joining source rows", e))),
        };
        let take = self.rows.min(all.num_rows());
        let out = all.slice(0, take);
        let rest = all.slice(take, all.num_rows() - take);
        self.pending_rows = rest.num_rows();
        self.pending = if rest.num_rows() > 0 {
            vec![rest]
        } else {
            Vec::new()
        };
        Some(Ok(out))
    }
}
