//! `infercache weights verify DIR`: every file a manifest lists, checked against it.
//!
//! Each chunk must exist, have its size and SHA-256, parse as safetensors and hold
//! exactly the tensors (names, dtypes, shapes) the manifest lists; `config.json` and
//! `tokenizer.json` must have their size and SHA-256. Problems are values collected in a
//! [`VerifyReport`], one per file, so one run names every bad file.

use std::fs;
use std::path::Path;

use crate::chunk::dtype_name;
use crate::digest::sha256_file;
use crate::manifest::{Manifest, ManifestError, TensorEntry};
use crate::progress::Progress;

/// What is wrong with one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// It is not there.
    #[error("missing")]
    Missing,
    /// It has the wrong size.
    #[error("{actual} bytes, the manifest says {expected}")]
    Size {
        /// What the manifest says.
        expected: u64,
        /// What the file has.
        actual: u64,
    },
    /// Its bytes are not the ones the manifest names.
    #[error("sha256 {actual}, the manifest says {expected}")]
    Digest {
        /// What the manifest says.
        expected: String,
        /// What the file hashes to.
        actual: String,
    },
    /// It could not be read.
    #[error("unreadable: {0}")]
    Unreadable(String),
    /// It is not the safetensors file the manifest describes.
    #[error("{0}")]
    Tensors(String),
}

/// The result of verifying a chunk directory.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The manifest.
    pub manifest: Manifest,
    /// Files checked and their sizes.
    pub checked: Vec<(String, u64)>,
    /// Files that failed, with why.
    pub problems: Vec<(String, Problem)>,
}

impl VerifyReport {
    /// Whether every file passed.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A file the manifest lists, and what it should hold.
struct Listed<'a> {
    name: &'a String,
    file: &'a str,
    size: u64,
    sha256: &'a str,
    /// The tensors of a chunk; `None` for `config.json` and `tokenizer.json`.
    tensors: Option<&'a [TensorEntry]>,
}

/// Verifies the chunk directory `dir`.
///
/// # Errors
/// The manifest's error when it cannot be read or is invalid; problems with the files it
/// lists are in the report.
pub fn verify_dir(dir: &Path, progress: &mut dyn Progress) -> Result<VerifyReport, ManifestError> {
    let (manifest, _) = Manifest::load(dir)?;
    let files: Vec<Listed<'_>> = manifest
        .chunks
        .iter()
        .map(|(name, c)| Listed {
            name,
            file: &c.file,
            size: c.size_bytes,
            sha256: &c.sha256,
            tensors: Some(c.tensors.as_slice()),
        })
        .chain(manifest.files.iter().map(|(name, f)| Listed {
            name,
            file: &f.file,
            size: f.size_bytes,
            sha256: &f.sha256,
            tensors: None,
        }))
        .collect();
    progress.phase("verifying", files.iter().map(|f| f.size).sum());
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    for f in &files {
        match check_file(&dir.join(f.file), f.size, f.sha256, f.tensors, progress) {
            Ok(()) => checked.push((f.name.clone(), f.size)),
            Err(p) => problems.push((f.name.clone(), p)),
        }
    }
    drop(files);
    progress.finish();
    Ok(VerifyReport {
        manifest,
        checked,
        problems,
    })
}

fn check_file(
    path: &Path,
    size: u64,
    sha256: &str,
    tensors: Option<&[TensorEntry]>,
    progress: &mut dyn Progress,
) -> Result<(), Problem> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Problem::Missing),
        Err(e) => return Err(Problem::Unreadable(e.to_string())),
    };
    if meta.len() != size {
        progress.advance(size);
        return Err(Problem::Size {
            expected: size,
            actual: meta.len(),
        });
    }
    let (_, actual) = sha256_file(path, |n| progress.advance(n))
        .map_err(|e| Problem::Unreadable(e.to_string()))?;
    if actual != sha256 {
        return Err(Problem::Digest {
            expected: sha256.to_owned(),
            actual,
        });
    }
    if let Some(expected) = tensors {
        let bytes = fs::read(path).map_err(|e| Problem::Unreadable(e.to_string()))?;
        check_tensors(&bytes, expected).map_err(Problem::Tensors)?;
    }
    Ok(())
}

/// Checks that a chunk's bytes are safetensors holding exactly `expected`, in order.
pub(crate) fn check_tensors(bytes: &[u8], expected: &[TensorEntry]) -> Result<(), String> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let infos = meta.tensors();
    let names = meta.offset_keys();
    if names.len() != expected.len() {
        return Err(format!(
            "holds {} tensors, the manifest lists {}",
            names.len(),
            expected.len()
        ));
    }
    for (name, want) in names.iter().zip(expected) {
        let info = infos[name];
        if *name != want.name || dtype_name(info.dtype) != want.dtype || info.shape != want.shape {
            return Err(format!(
                "holds {name} {} {:?} where the manifest lists {} {} {:?}",
                dtype_name(info.dtype),
                info.shape,
                want.name,
                want.dtype,
                want.shape
            ));
        }
    }
    Ok(())
}
