//! Crash-safe file writes: a temporary file in the target directory, fsync, rename, fsync
//! of the directory. A reader sees the old file or the new one, never half of one, and a
//! crash leaves at most a hidden `.{name}.*.partial` file, which the next run removes.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::Path;

use crate::digest::sha256_file;

/// Suffix of the temporary files.
const PARTIAL_SUFFIX: &str = ".partial";

/// Whether a write replaced the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The file already held these bytes; nothing was written.
    Unchanged,
    /// The file was (re)written.
    Written,
}

/// Writes `bytes` to `dir/name` atomically.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(PARTIAL_SUFFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Writes `bytes` (whose SHA-256 is `sha256`) to `dir/name` atomically, unless the file
/// already holds exactly them.
pub(crate) fn write_if_changed(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    sha256: &str,
) -> io::Result<Written> {
    let path = dir.join(name);
    if let Ok(meta) = fs::metadata(&path)
        && meta.is_file()
        && meta.len() == bytes.len() as u64
        && sha256_file(&path, |_| {})?.1 == sha256
    {
        return Ok(Written::Unchanged);
    }
    write_atomic(dir, name, bytes)?;
    Ok(Written::Written)
}

/// Removes the temporary files a crashed write left in `dir`; how many.
pub(crate) fn remove_partials(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(PARTIAL_SUFFIX) && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Makes the directory's entries (a rename) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_hex;

    #[test]
    fn writes_once_and_cleans_partials() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let bytes = b"hello";
        let sha = sha256_hex(bytes);
        assert_eq!(
            write_if_changed(d, "a", bytes, &sha).unwrap(),
            Written::Written
        );
        assert_eq!(
            write_if_changed(d, "a", bytes, &sha).unwrap(),
            Written::Unchanged
        );
        assert_eq!(fs::read(d.join("a")).unwrap(), bytes);
        let other = b"world";
        assert_eq!(
            write_if_changed(d, "a", other, &sha256_hex(other)).unwrap(),
            Written::Written
        );
        assert_eq!(fs::read(d.join("a")).unwrap(), other);

        fs::write(d.join(".a.xyz.partial"), b"half").unwrap();
        fs::write(d.join("keep.partial"), b"not ours").unwrap();
        assert_eq!(remove_partials(d).unwrap(), 1);
        assert!(d.join("keep.partial").exists());
        let names: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
