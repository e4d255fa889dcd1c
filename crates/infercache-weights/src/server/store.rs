//! The models on disk: every chunk directory under the root, its manifest checked, its
//! small files loaded and verified, its chunks read and verified on demand.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::stats::ChunkCounters;
use crate::digest::{Hasher, sha256_hex};
use crate::manifest::{ChunkInfo, MANIFEST_FILE, Manifest};

/// A chunk directory that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A directory or file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A manifest is invalid.
    #[error("{}: {reason}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Two directories hold the same model.
    #[error("model {name} is in both {} and {}", first.display(), second.display())]
    Duplicate {
        /// The model.
        name: String,
        /// One directory.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// The root holds no model.
    #[error("{} holds no chunk directory (a chunk_info.json in it or in a subdirectory): run `infercache weights chunk`", .0.display())]
    Empty(PathBuf),
    /// A file does not match its manifest entry.
    #[error("{}: {reason} (run `infercache weights verify`)", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One model, as loaded.
#[derive(Debug)]
pub(crate) struct ModelEntry {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The manifest's bytes, served as they are.
    pub manifest_bytes: Bytes,
    pub manifest_sha256: String,
    /// `config.json` and `tokenizer.json`, verified.
    pub files: BTreeMap<String, Bytes>,
    /// Per chunk, resolved once.
    pub counters: BTreeMap<String, Arc<ChunkCounters>>,
}

impl ModelEntry {
    /// The chunk's manifest entry and counters.
    pub(crate) fn chunk(&self, name: &str) -> Option<(&ChunkInfo, &Arc<ChunkCounters>)> {
        Some((self.manifest.chunks.get(name)?, self.counters.get(name)?))
    }

    pub(crate) fn path(&self, chunk: &ChunkInfo) -> PathBuf {
        self.dir.join(&chunk.file)
    }
}

/// Every model under a root, by name.
pub(crate) type Models = BTreeMap<String, Arc<ModelEntry>>;

/// Counters that outlive a reload, by `(model, chunk)`.
#[derive(Debug, Default)]
pub(crate) struct CounterTable(Mutex<BTreeMap<(String, String), Arc<ChunkCounters>>>);

impl CounterTable {
    fn get(&self, model: &str, chunk: &str) -> Arc<ChunkCounters> {
        Arc::clone(
            self.0
                .lock()
                .entry((model.to_owned(), chunk.to_owned()))
                .or_default(),
        )
    }

    /// Every chunk's counters.
    pub(crate) fn all(&self) -> Vec<((String, String), Arc<ChunkCounters>)> {
        self.0
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }
}

/// Loads every model under `root`: `root` itself if it holds a manifest, else each
/// subdirectory that does. Blocking.
pub(crate) fn scan(root: &Path, counters: &CounterTable) -> Result<Models, StoreError> {
    let mut dirs = Vec::new();
    if root.join(MANIFEST_FILE).is_file() {
        dirs.push(root.to_owned());
    } else {
        let mut entries: Vec<PathBuf> = fs::read_dir(root)
            .map_err(io_err(root))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_err(root))?;
        entries.sort();
        dirs.extend(
            entries
                .into_iter()
                .filter(|p| p.is_dir() && p.join(MANIFEST_FILE).is_file()),
        );
    }
    if dirs.is_empty() {
        return Err(StoreError::Empty(root.to_owned()));
    }
    let mut models: Models = BTreeMap::new();
    for dir in dirs {
        let entry = load_model(&dir, counters)?;
        let name = entry.manifest.model_name.clone();
        if let Some(first) = models.get(&name) {
            return Err(StoreError::Duplicate {
                name,
                first: first.dir.clone(),
                second: dir,
            });
        }
        models.insert(name, Arc::new(entry));
    }
    Ok(models)
}

/// Loads one chunk directory: the manifest, the small files (verified), and a size check
/// of every chunk (their digests are checked when they are read).
fn load_model(dir: &Path, counters: &CounterTable) -> Result<ModelEntry, StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let (manifest, bytes) = Manifest::load(dir).map_err(|e| StoreError::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut files = BTreeMap::new();
    for (name, f) in &manifest.files {
        let p = dir.join(&f.file);
        let data = fs::read(&p).map_err(io_err(&p))?;
        let actual = sha256_hex(&data);
        if actual != f.sha256 {
            return Err(StoreError::Corrupt {
                path: p,
                reason: format!("sha256 {actual}, the manifest says {}", f.sha256),
            });
        }
        files.insert(name.clone(), Bytes::from(data));
    }
    for chunk in manifest.chunks.values() {
        let p = dir.join(&chunk.file);
        let len = fs::metadata(&p).map_err(io_err(&p))?.len();
        if len != chunk.size_bytes {
            return Err(StoreError::Corrupt {
                path: p,
                reason: format!("{len} bytes, the manifest says {}", chunk.size_bytes),
            });
        }
    }
    let counters = manifest
        .chunks
        .keys()
        .map(|c| (c.clone(), counters.get(&manifest.model_name, c)))
        .collect();
    Ok(ModelEntry {
        dir: dir.to_owned(),
        manifest_sha256: sha256_hex(&bytes),
        manifest_bytes: Bytes::from(bytes),
        manifest,
        files,
        counters,
    })
}

/// Reads a whole chunk and checks its size and digest. Blocking.
pub(crate) fn read_chunk(path: &Path, chunk: &ChunkInfo) -> Result<Bytes, StoreError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len != chunk.size_bytes {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("{len} bytes, the manifest says {}", chunk.size_bytes),
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(len).expect("a chunk fits in memory"));
    file.read_to_end(&mut data).map_err(io_err(path))?;
    let mut hasher = Hasher::default();
    hasher.update(&data);
    let actual = hasher.finish_hex();
    if data.len() as u64 != chunk.size_bytes || actual != chunk.sha256 {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("sha256 {actual}, the manifest says {}", chunk.sha256),
        });
    }
    Ok(Bytes::from(data))
}
