//! What the cache records about each dataset: its manifest (content), its name record
//! (where it came from) and the journal of a build in progress.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;

use infercache_artifact::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, io_err};
use crate::fingerprint::{Fingerprint, Link};
use crate::source::SourceFile;

/// The manifest format's version.
pub const MANIFEST_FORMAT: u32 = 1;

/// A built dataset: its fingerprint chain, schema and shards. It holds nothing that
/// depends on where or when it was built, so two builds of one dataset write the same
/// manifest byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The dataset's name in the cache: the chain's last link.
    pub fingerprint: Fingerprint,
    /// Sources, then each step.
    pub chain: Vec<Link>,
    /// The rows' fields, `name: type`.
    pub schema: Vec<String>,
    /// Rows per shard (the last may have fewer).
    pub shard_rows: u64,
    /// Rows in all.
    pub rows: u64,
    /// Every shard, in row order.
    pub shards: Vec<ShardEntry>,
}

/// One shard: a blob in the artifact store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Its position.
    pub index: u64,
    /// Its first row's index in the dataset (and in the sources).
    pub first_row: u64,
    /// Its rows.
    pub rows: u64,
    /// BLAKE3 of its Arrow IPC file.
    pub digest: Digest,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Where a dataset's rows came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    /// Source files; a shard can be recomputed while they are unchanged.
    Files {
        /// The files, in order.
        sources: Vec<SourceFile>,
    },
    /// Rows handed over in memory: the cache holds the only copy, so its shards are
    /// pinned.
    Memory,
}

/// A name for a dataset, and how to recompute it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    /// The name.
    pub name: String,
    /// The dataset.
    pub fingerprint: Fingerprint,
    /// Where its rows came from.
    pub origin: Origin,
    /// Each step's specification; `None` for a step given in Rust, which cannot be made
    /// again from text (its shards are then the only copy, and pinned).
    pub steps: Vec<Option<String>>,
    /// When the name was last (re)built, Unix ms.
    pub built_ms: u64,
}

impl NameRecord {
    /// `true` if every shard can be recomputed from this record.
    pub fn recomputable(&self) -> bool {
        matches!(self.origin, Origin::Files { .. }) && self.steps.iter().all(Option::is_some)
    }
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<Option<T>, DatasetError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| DatasetError::BadRecord {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DatasetError::io(path, e)),
    }
}

/// Writes JSON crash-safely: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DatasetError> {
    let bytes = serde_json::to_vec_pretty(value).expect("records serialize");
    let dir = path.parent().expect("records live in a directory");
    let tmp = dir.join(format!(
        ".{}-{}.tmp",
        std::process::id(),
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record")
    ));
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The first line of a journal: what the build is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JournalHeader {
    pub(crate) journal: u32,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) shard_rows: u64,
}

/// The shards a build finished, in order, one fsynced JSON line each.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    path: std::path::PathBuf,
    pub(crate) shards: Vec<ShardEntry>,
}

impl Journal {
    /// Opens the journal of the build of `fingerprint` with `shard_rows`, keeping the
    /// shards it lists (up to a torn last line); a journal of another build is started
    /// over.
    pub(crate) fn open(
        path: &Path,
        fingerprint: Fingerprint,
        shard_rows: u64,
    ) -> Result<Self, DatasetError> {
        let header = JournalHeader {
            journal: 1,
            fingerprint,
            shard_rows,
        };
        let mut shards = Vec::new();
        let mut valid_len = 0u64;
        let mut matches = false;
        if let Ok(file) = File::open(path) {
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            let mut first = true;
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io_err(path))?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                if first {
                    first = false;
                    matches =
                        serde_json::from_str::<JournalHeader>(&line).is_ok_and(|h| h == header);
                    if !matches {
                        break;
                    }
                } else {
                    match serde_json::from_str::<ShardEntry>(&line) {
                        Ok(s) if s.index == shards.len() as u64 => shards.push(s),
                        _ => break,
                    }
                }
                valid_len += n as u64;
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        if matches {
            // Drop a torn tail.
            file.set_len(valid_len).map_err(io_err(path))?;
        } else {
            shards.clear();
            file.set_len(0).map_err(io_err(path))?;
            let mut line = serde_json::to_vec(&header).expect("a header serializes");
            line.push(b'\n');
            file.write_all(&line).map_err(io_err(path))?;
        }
        use std::io::Seek as _;
        file.seek(std::io::SeekFrom::End(0)).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            shards,
        })
    }

    /// Records a finished shard durably.
    pub(crate) fn append(&mut self, shard: ShardEntry) -> Result<(), DatasetError> {
        let mut line = serde_json::to_vec(&shard).expect("a shard entry serializes");
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.shards.push(shard);
        Ok(())
    }
}
