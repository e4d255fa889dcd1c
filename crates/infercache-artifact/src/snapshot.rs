//! Named snapshots: a name (`org/model@rev`, `dataset/NAME`) for a set of files, each a
//! blob.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ArtifactError, Digest};

/// A named set of files, each a blob of the store. Written whole and atomically by
/// [`Store::put_snapshot`](crate::Store::put_snapshot). A snapshot does not keep its blobs
/// from eviction (pin them for that); [`Store::list`](crate::Store::list) shows which
/// snapshots refer to each blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `[A-Za-z0-9._@+-]` and `/`, at most 200 bytes, no empty or dot-only segment.
    pub name: String,
    /// File name (relative path) → blob.
    pub files: BTreeMap<String, SnapshotFile>,
}

/// One file of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// The blob (BLAKE3).
    pub blob: Digest,
    /// Its SHA-256.
    pub sha256: Digest,
    /// Its size.
    pub size: u64,
}

pub(crate) fn validate_name(name: &str) -> Result<(), ArtifactError> {
    let invalid = |reason: &str| ArtifactError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() || name.len() > 200 {
        return Err(invalid("must be 1 to 200 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._@+-/".contains(&b))
    {
        return Err(invalid(
            "use A-Z, a-z, 0-9, `.`, `_`, `@`, `+`, `-` and `/`",
        ));
    }
    if name
        .split('/')
        .any(|seg| seg.is_empty() || seg.bytes().all(|b| b == b'.'))
    {
        return Err(invalid("no empty, `.` or `..` segment"));
    }
    Ok(())
}

/// `%` never occurs in a valid name, so `/` ↔ `%2F` is a bijection.
pub(crate) fn file_from_name(name: &str) -> String {
    name.replace('/', "%2F")
}

pub(crate) fn name_from_file(file: &str) -> String {
    file.replace("%2F", "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "org/model@main", "dataset/x.y_z+1"] {
            validate_name(ok).unwrap();
            assert_eq!(name_from_file(&file_from_name(ok)), ok);
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "..",
            "a/../b",
            "a b",
            "a%2Fb",
            &"x".repeat(201),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
