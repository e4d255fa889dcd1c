//! The `MANIFEST` file: proof that a directory is ours, and the format version in it.
//!
//! It is a small JSON object, `{"magic":"infercache-disk","version":1,"created_at_ms":…}`,
//! written once, atomically: to `MANIFEST.tmp`, fsync, rename, fsync of the directory.

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DiskError, io_err};

/// The manifest's file name.
pub(crate) const MANIFEST: &str = "MANIFEST";
/// The temporary name the manifest is written under before its rename.
pub(crate) const MANIFEST_TMP: &str = "MANIFEST.tmp";
const MAGIC: &str = "infercache-disk";
/// The format version this code writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    magic: String,
    version: u32,
    created_at_ms: u64,
}

/// What opening found in the directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DirState {
    /// A valid manifest of a version we read.
    Ours,
    /// Missing or empty (or holding only an interrupted manifest write): ours to create.
    Fresh,
}

/// Checks `dir` (which exists) and says whether it holds a store or can hold a new one.
pub(crate) fn inspect(dir: &Path) -> Result<DirState, DiskError> {
    let path = dir.join(MANIFEST);
    match fs::read(&path) {
        Ok(bytes) => {
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|e| DiskError::CorruptManifest {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if manifest.magic != MAGIC {
                return Err(DiskError::CorruptManifest {
                    path,
                    reason: format!("magic is {:?}, expected {MAGIC:?}", manifest.magic),
                });
            }
            if manifest.version > FORMAT_VERSION || manifest.version == 0 {
                return Err(DiskError::UnsupportedFormat {
                    path,
                    version: manifest.version,
                });
            }
            Ok(DirState::Ours)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // No manifest: only an empty directory is ours to take. A leftover MANIFEST.tmp
            // is our own interrupted creation, not a user's file.
            let entries = fs::read_dir(dir).map_err(io_err(dir))?;
            for entry in entries {
                let entry = entry.map_err(io_err(dir))?;
                let name = entry.file_name();
                if name != MANIFEST_TMP {
                    return Err(DiskError::NotOurDirectory {
                        path: dir.to_path_buf(),
                        found: name.to_string_lossy().into_owned(),
                    });
                }
            }
            Ok(DirState::Fresh)
        }
        Err(e) => Err(DiskError::CorruptManifest {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Writes a new manifest atomically.
pub(crate) fn create(dir: &Path, now_ms: u64) -> Result<(), DiskError> {
    let tmp: PathBuf = dir.join(MANIFEST_TMP);
    let manifest = Manifest {
        magic: MAGIC.to_owned(),
        version: FORMAT_VERSION,
        created_at_ms: now_ms,
    };
    let mut json = serde_json::to_vec(&manifest).expect("bug: the manifest always serializes");
    json.push(b'\n');
    let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&json).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    let path = dir.join(MANIFEST);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

/// Makes creations, renames and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
