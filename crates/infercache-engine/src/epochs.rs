//! Invalidation epochs: invalidate by namespace, model, model version or everything,
//! without scanning.
//!
//! Every key folds in the current epochs of its scopes (see
//! [`infercache_core::Epochs`]). Bumping a scope's epoch changes every key built after
//! it, so every older entry, in every tier, becomes unreachable at once; the tiers reclaim
//! the orphans through ordinary eviction and expiry.
//!
//! With a disk tier the table is persisted (`epochs.json` beside the segments, written to
//! a temporary file, fsynced and renamed) *before* a bump returns, so an acknowledged
//! invalidation survives a crash and a restart can never make old entries reachable again.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use infercache_core::Epochs;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

/// What to invalidate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum Scope {
    /// Everything.
    All,
    /// One namespace (tenant).
    Namespace {
        /// The namespace.
        namespace: String,
    },
    /// Every version of one model.
    Model {
        /// The model id.
        model: String,
    },
    /// One version of one model.
    Version {
        /// The model id.
        model: String,
        /// The version.
        version: String,
    },
}

/// The persisted form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Table {
    global: u64,
    namespaces: HashMap<String, u64>,
    models: HashMap<String, u64>,
    /// model -> version -> epoch
    versions: HashMap<String, HashMap<String, u64>>,
}

/// Errors persisting the epoch table.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// Reading or writing the file failed.
    #[error("epoch table {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but is not an epoch table.
    #[error("epoch table {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The epoch table of one cache.
#[derive(Debug)]
pub struct EpochTable {
    table: RwLock<Table>,
    /// Added to the global epoch: `--cache-version`. Bumping it invalidates everything.
    cache_version: u64,
    file: Option<PathBuf>,
    /// Serialises persisting so files are written in bump order.
    persist: Mutex<()>,
    /// How many times any epoch has changed: a reader that saw the same count before and
    /// after holds keys no change has made unreachable ([`EpochTable::changes`]).
    changes: AtomicU64,
}

/// The file name of the persisted table inside a disk tier's directory.
pub const EPOCH_FILE: &str = "epochs.json";

impl EpochTable {
    /// A table kept in memory only.
    pub fn in_memory(cache_version: u64) -> Self {
        Self {
            table: RwLock::new(Table::default()),
            cache_version,
            file: None,
            persist: Mutex::new(()),
            changes: AtomicU64::new(0),
        }
    }

    /// A table persisted in `dir/epochs.json`, loaded if present.
    ///
    /// # Errors
    /// [`EpochError::Corrupt`] if the file exists but cannot be parsed: refusing to start is
    /// the only answer that cannot serve invalidated entries.
    pub fn open(dir: &Path, cache_version: u64) -> Result<Self, EpochError> {
        let path = dir.join(EPOCH_FILE);
        let table = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| EpochError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table::default(),
            Err(source) => return Err(EpochError::Io { path, source }),
        };
        Ok(Self {
            table: RwLock::new(table),
            cache_version,
            file: Some(path),
            persist: Mutex::new(()),
            changes: AtomicU64::new(0),
        })
    }

    /// How many times any epoch of this table has changed so far. Keys made while it
    /// reads the same number fold in the epochs of now: a caller that keeps keys (a
    /// rendered response) reads it before making them and uses them only while it is
    /// unchanged.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// The epochs a key for `(namespace, model, version)` folds in now.
    pub fn current(&self, namespace: &str, model: &str, version: &str) -> Epochs {
        let t = self.table.read();
        Epochs {
            cache_version: self.cache_version,
            global: t.global,
            namespace: t.namespaces.get(namespace).copied().unwrap_or(0),
            model: t.models.get(model).copied().unwrap_or(0),
            version: t
                .versions
                .get(model)
                .and_then(|v| v.get(version))
                .copied()
                .unwrap_or(0),
        }
    }

    /// Invalidates `scope`: bumps its epoch and, with a file, persists before returning.
    /// Returns the new epoch.
    ///
    /// # Errors
    /// [`EpochError::Io`] if the table could not be persisted. The bump still applies in
    /// memory (entries are unreachable on this node), but would not survive a restart.
    pub fn bump(&self, scope: &Scope) -> Result<u64, EpochError> {
        let mut value = 0;
        self.update(scope, |slot| {
            *slot += 1;
            value = *slot;
            true
        })?;
        Ok(value)
    }

    /// Raises `scope`'s epoch to `value` if it is lower (epochs only grow), persisting
    /// before returning; whether it changed. This is how an epoch agreed with other nodes
    /// (through a shared tier) is adopted.
    ///
    /// # Errors
    /// As [`EpochTable::bump`].
    pub fn raise(&self, scope: &Scope, value: u64) -> Result<bool, EpochError> {
        self.update(scope, |slot| {
            let raised = *slot < value;
            *slot = (*slot).max(value);
            raised
        })
    }

    /// The epoch of `scope` now.
    pub fn get(&self, scope: &Scope) -> u64 {
        let t = self.table.read();
        match scope {
            Scope::All => t.global,
            Scope::Namespace { namespace } => t.namespaces.get(namespace).copied().unwrap_or(0),
            Scope::Model { model } => t.models.get(model).copied().unwrap_or(0),
            Scope::Version { model, version } => t
                .versions
                .get(model)
                .and_then(|v| v.get(version))
                .copied()
                .unwrap_or(0),
        }
    }

    /// Every scope with a non-zero epoch.
    pub fn entries(&self) -> Vec<(Scope, u64)> {
        let t = self.table.read();
        let mut out = Vec::new();
        if t.global > 0 {
            out.push((Scope::All, t.global));
        }
        out.extend(t.namespaces.iter().map(|(n, &e)| {
            let scope = Scope::Namespace {
                namespace: n.clone(),
            };
            (scope, e)
        }));
        out.extend(
            t.models
                .iter()
                .map(|(m, &e)| (Scope::Model { model: m.clone() }, e)),
        );
        for (model, versions) in &t.versions {
            out.extend(versions.iter().map(|(v, &e)| {
                let scope = Scope::Version {
                    model: model.clone(),
                    version: v.clone(),
                };
                (scope, e)
            }));
        }
        out
    }

    /// Applies `change` to `scope`'s slot and persists if it says it changed it.
    fn update(
        &self,
        scope: &Scope,
        change: impl FnOnce(&mut u64) -> bool,
    ) -> Result<bool, EpochError> {
        let _order = self.persist.lock();
        let snapshot = {
            let mut t = self.table.write();
            let slot = match scope {
                Scope::All => &mut t.global,
                Scope::Namespace { namespace } => {
                    t.namespaces.entry(namespace.clone()).or_default()
                }
                Scope::Model { model } => t.models.entry(model.clone()).or_default(),
                Scope::Version { model, version } => t
                    .versions
                    .entry(model.clone())
                    .or_default()
                    .entry(version.clone())
                    .or_default(),
            };
            if !change(slot) {
                return Ok(false);
            }
            // Counted while the table is still locked: a reader that sees the old count
            // made its keys before this change or raced it, as any request may.
            self.changes.fetch_add(1, Ordering::AcqRel);
            t.clone()
        };
        match &self.file {
            Some(path) => write_atomically(
                path,
                &serde_json::to_vec_pretty(&snapshot)
                    .expect("a map of strings and integers serializes"),
            )
            .map(|()| true),
            None => Ok(true),
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EpochError> {
    let io = |source| EpochError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_change_only_their_scope() {
        let t = EpochTable::in_memory(0);
        let before = t.current("t", "m", "1");
        t.bump(&Scope::Version {
            model: "m".into(),
            version: "1".into(),
        })
        .unwrap();
        assert_ne!(t.current("t", "m", "1"), before);
        assert_eq!(t.current("t", "m", "2"), before);
        assert_eq!(t.current("t", "other", "1"), before);
        t.bump(&Scope::Namespace {
            namespace: "u".into(),
        })
        .unwrap();
        assert_eq!(t.current("t", "m", "2"), before);
        t.bump(&Scope::All).unwrap();
        assert_ne!(t.current("t", "m", "2"), before);
    }

    #[test]
    fn raise_only_grows_and_entries_list_every_scope() {
        let t = EpochTable::in_memory(0);
        let m = Scope::Model { model: "m".into() };
        assert_eq!(t.bump(&m).unwrap(), 1);
        assert!(t.raise(&m, 5).unwrap());
        assert!(!t.raise(&m, 3).unwrap());
        assert_eq!(t.get(&m), 5);
        let v = Scope::Version {
            model: "m".into(),
            version: "1".into(),
        };
        t.raise(&v, 2).unwrap();
        let mut entries = t.entries();
        entries.sort_by_key(|(_, e)| *e);
        assert_eq!(entries, vec![(v, 2), (m, 5)]);
    }

    #[test]
    fn every_change_and_only_a_change_is_counted() {
        let t = EpochTable::in_memory(0);
        assert_eq!(t.changes(), 0);
        let m = Scope::Model { model: "m".into() };
        t.bump(&m).unwrap();
        assert_eq!(t.changes(), 1);
        assert!(t.raise(&m, 4).unwrap());
        assert_eq!(t.changes(), 2);
        // A raise to an epoch not above the current one changes nothing.
        assert!(!t.raise(&m, 4).unwrap());
        assert_eq!(t.changes(), 2);
        t.bump(&Scope::All).unwrap();
        t.bump(&Scope::Namespace {
            namespace: "u".into(),
        })
        .unwrap();
        assert_eq!(t.changes(), 4);
    }

    #[test]
    fn cache_versions_never_alias() {
        let a = EpochTable::in_memory(0);
        let b = EpochTable::in_memory(1 << 32);
        assert_ne!(a.current("", "", ""), b.current("", "", ""));
    }

    #[test]
    fn cache_version_and_bumps_do_not_alias() {
        let a = EpochTable::in_memory(1);
        let b = EpochTable::in_memory(0);
        b.bump(&Scope::All).unwrap();
        assert_ne!(a.current("", "", ""), b.current("", "", ""));
    }

    #[test]
    fn persisted_bumps_survive_reopen_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = EpochTable::open(dir.path(), 3).unwrap();
        t.bump(&Scope::Model { model: "m".into() }).unwrap();
        let e = t.current("t", "m", "1");
        drop(t);
        assert_eq!(
            EpochTable::open(dir.path(), 3)
                .unwrap()
                .current("t", "m", "1"),
            e
        );
        fs::write(dir.path().join(EPOCH_FILE), b"{not json").unwrap();
        assert!(matches!(
            EpochTable::open(dir.path(), 3),
            Err(EpochError::Corrupt { .. })
        ));
    }
}
