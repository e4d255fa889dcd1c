//! What `datasets show --json` prints and `GET /v1/datasets/{name}` answers: a dataset's
//! manifest (its fingerprint chain, schema and shards), its name record and the files of
//! its shards.

use std::path::PathBuf;

use serde::Serialize;

use crate::{DatasetCache, DatasetError, Manifest, NameRecord};

/// A dataset in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetDetails {
    /// Its name, when looked up by one (or when a name records its fingerprint).
    pub name: Option<String>,
    /// The manifest: fingerprint, chain, schema, shards with their digests.
    pub manifest: Manifest,
    /// The name record: sources and step specifications.
    pub record: Option<NameRecord>,
    /// Each shard's file in the store, and whether it is on disk now.
    pub files: Vec<ShardFile>,
}

/// A shard's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardFile {
    /// The shard's index.
    pub index: u64,
    /// Its Arrow IPC file (`pyarrow.ipc.open_file` reads it as it is).
    pub path: PathBuf,
    /// Whether it is on disk (an evicted shard is recomputed when read).
    pub cached: bool,
}

/// Refuses a key that can name no dataset: neither a valid name nor a fingerprint.
///
/// # Errors
/// [`DatasetError::InvalidName`], saying what a name may hold.
pub fn check_key(key: &str) -> Result<(), DatasetError> {
    if key.parse::<crate::Fingerprint>().is_ok() {
        return Ok(());
    }
    crate::cache::validate_name(key)
}

impl DatasetCache {
    /// The dataset named `key` (a name, or a fingerprint in hex) in full, if cached.
    ///
    /// # Errors
    /// Its manifest or name record is unreadable.
    pub fn details(&self, key: &str) -> Result<Option<DatasetDetails>, DatasetError> {
        let Some(d) = self.get_dataset(key)? else {
            return Ok(None);
        };
        let files = d
            .manifest
            .shards
            .iter()
            .map(|s| {
                let path = self.store().root().join("blobs").join(s.digest.hex());
                ShardFile {
                    index: s.index,
                    cached: path.exists(),
                    path,
                }
            })
            .collect();
        Ok(Some(DatasetDetails {
            name: d.name,
            manifest: d.manifest,
            record: d.record,
            files,
        }))
    }
}
