//! The manifest, `chunk_info.json`: what a chunk directory holds, with every digest.
//!
//! A superset of Surfing Weights' manifest (`model_name`, `model_type`, `num_layers`,
//! `chunks: {name: {file, size_mb}}`, `total_size_mb`), so tools that read that one read
//! this one. It adds, per chunk, its size in bytes, its SHA-256, its dtype, its tensors
//! (names, dtypes, shapes, where each came from in the source file) and the source ranges;
//! and for the model, the format, whether it was cast to fp16, and the digests of the
//! config, the tokenizer and the source files.
//!
//! ```json
//! {
//!   "model_name": "all-MiniLM-L6-v2",
//!   "model_type": "bert",
//!   "num_layers": 6,
//!   "chunks": {
//!     "embeddings": {
//!       "file": "embeddings.safetensors", "size_mb": 45.48, "size_bytes": 47679096,
//!       "sha256": "…", "kind": "embeddings", "dtype": "F32",
//!       "tensors": [{"name": "embeddings.word_embeddings.weight", "dtype": "F32",
//!                    "shape": [30522, 384], "source_file": "model.safetensors",
//!                    "source_offsets": [796672, 47678464]}, …],
//!       "sources": [{"file": "model.safetensors", "data_start": 11416,
//!                    "range": [0, 47678464], "sha256_of_range": "…"}]
//!     },
//!     "layer_0": {"file": "layer_0.safetensors", "kind": "layer", "index": 0, …},
//!     "pooler": {"file": "pooler.safetensors", "kind": "pooler", …}
//!   },
//!   "total_size_mb": 86.68,
//!   "format": "safetensors", "format_version": 1, "total_size_bytes": 90893512,
//!   "fp16": false,
//!   "config_sha256": "…", "tokenizer_sha256": "…",
//!   "files": {"config.json": {"file": "config.json", "size_bytes": 612, "sha256": "…"},
//!             "tokenizer.json": {…}},
//!   "source": {"files": [{"file": "model.safetensors", "size_bytes": 90868376, "sha256": "…"}]}
//! }
//! ```
//!
//! [`Manifest::parse`] checks every field a reader relies on (names, files, digests,
//! layer numbering), so a server or client never acts on a manifest that is only half
//! right.

use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::digest::is_sha256_hex;

/// The manifest's file name in a chunk directory.
pub const MANIFEST_FILE: &str = "chunk_info.json";

/// The chunk file format.
pub const FORMAT: &str = "safetensors";

/// The manifest's format version; a reader refuses others.
pub const FORMAT_VERSION: u32 = 1;

/// The model's configuration file, copied beside the chunks.
pub const CONFIG_FILE: &str = "config.json";

/// The tokenizer, copied beside the chunks.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Bytes per "MB" in `size_mb` and `total_size_mb`, as Surfing writes them (MiB).
const MB: f64 = 1024.0 * 1024.0;

/// Longest model name.
const MAX_NAME: usize = 128;

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// It could not be read.
    #[error("cannot read the manifest {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It is not a manifest's JSON.
    #[error("the manifest is not valid JSON of chunk_info.json's shape: {0}")]
    Parse(#[from] serde_json::Error),
    /// It parses but a field is wrong.
    #[error("the manifest is invalid: {0}")]
    Invalid(String),
}

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkKind {
    /// The embeddings (`embeddings.*`).
    Embeddings,
    /// One encoder layer (`encoder.layer.{i}.*`).
    Layer,
    /// The pooler (`pooler.*`).
    Pooler,
    /// Every tensor of the source that is none of the above (e.g. a masked-LM head).
    Other,
}

/// The chunk name of encoder layer `index`: `layer_{index}`.
pub fn layer_name(index: usize) -> String {
    format!("layer_{index}")
}

/// The kind and layer index a chunk name stands for; `None` for a name no chunk has.
pub fn parse_chunk_name(name: &str) -> Option<(ChunkKind, Option<usize>)> {
    match name {
        "embeddings" => Some((ChunkKind::Embeddings, None)),
        "pooler" => Some((ChunkKind::Pooler, None)),
        "other" => Some((ChunkKind::Other, None)),
        _ => {
            let digits = name.strip_prefix("layer_")?;
            // Canonical decimal only: `layer_01` and `layer_+1` name nothing.
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || (digits.len() > 1 && digits.starts_with('0'))
            {
                return None;
            }
            Some((ChunkKind::Layer, Some(digits.parse().ok()?)))
        }
    }
}

/// The order chunks are listed in: embeddings, layers by index, pooler, other.
pub fn chunk_sort_key(name: &str) -> (u8, usize) {
    match parse_chunk_name(name) {
        Some((ChunkKind::Embeddings, _)) => (0, 0),
        Some((ChunkKind::Layer, Some(i))) => (1, i),
        Some((ChunkKind::Pooler, _)) => (2, 0),
        _ => (3, 0),
    }
}

/// Whether `name` may name a model: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with
/// `.`. Model names appear in URLs and directory names.
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `file` is a plain file name inside the chunk directory (no separator, no `..`,
/// not hidden).
fn is_plain_file_name(file: &str) -> bool {
    !file.is_empty()
        && file.len() <= 255
        && !file.starts_with('.')
        && !file.contains(['/', '\\', '\0'])
}

/// Megabytes as Surfing reports them (MiB, two decimals).
pub fn size_mb(bytes: u64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "a size for display")]
    let mb = bytes as f64 / MB;
    (mb * 100.0).round() / 100.0
}

/// One tensor of a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Its name, as in the source file (e.g. `encoder.layer.3.attention.self.query.weight`).
    pub name: String,
    /// Its dtype in the chunk (safetensors' names: `F32`, `F16`, `I64`, ...).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The source file it came from.
    pub source_file: String,
    /// Its byte range in that file's data section.
    pub source_offsets: [u64; 2],
}

/// Where a chunk's tensors came from in one source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSource {
    /// The source file.
    pub file: String,
    /// Where its data section starts (8 + its header's length).
    pub data_start: u64,
    /// The byte range of the data section that holds exactly this chunk's tensors from
    /// this file, when they are contiguous; `None` when they are interleaved with others.
    pub range: Option<[u64; 2]>,
    /// The SHA-256 of that range.
    pub sha256_of_range: Option<String>,
}

/// One chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Its file in the chunk directory.
    pub file: String,
    /// Its size in MiB (Surfing's field).
    pub size_mb: f64,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// The SHA-256 of the whole file.
    pub sha256: String,
    /// What it holds.
    pub kind: ChunkKind,
    /// The layer index, for a layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The dtype of its floating-point tensors (`F32`, `F16`, ...), or `mixed`.
    pub dtype: String,
    /// `"F32->F16"` when its F32 tensors were cast to F16 (`--fp16`); its bytes then
    /// differ from the source ranges'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted: Option<String>,
    /// Its tensors, in file order.
    pub tensors: Vec<TensorEntry>,
    /// The source files its tensors came from.
    pub sources: Vec<ChunkSource>,
}

/// A file copied beside the chunks (config, tokenizer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Its name in the chunk directory.
    pub file: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its SHA-256.
    pub sha256: String,
}

/// The source the chunks were made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Every weight file read (one, or the shards of an index).
    pub files: Vec<FileInfo>,
    /// The shard index (`model.safetensors.index.json`), when the weights were sharded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<FileInfo>,
}

/// The manifest of one chunked model (`chunk_info.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The model's name (also its name in a weight server's URLs).
    pub model_name: String,
    /// `model_type` from its `config.json` (e.g. `bert`).
    pub model_type: String,
    /// Encoder layers: chunks `layer_0` .. `layer_{num_layers - 1}`.
    pub num_layers: usize,
    /// Every chunk, by name, in model order.
    pub chunks: IndexMap<String, ChunkInfo>,
    /// The chunks' total size in MiB (Surfing's field).
    pub total_size_mb: f64,
    /// The chunk format: `safetensors`.
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The chunks' total size in bytes.
    pub total_size_bytes: u64,
    /// Whether F32 tensors were cast to F16.
    pub fp16: bool,
    /// The SHA-256 of `config.json`.
    pub config_sha256: String,
    /// The SHA-256 of `tokenizer.json`.
    pub tokenizer_sha256: String,
    /// The files copied beside the chunks, by name: `config.json`, `tokenizer.json`.
    pub files: IndexMap<String, FileInfo>,
    /// The source weight files.
    pub source: SourceInfo,
}

impl Manifest {
    /// Parses and checks a manifest.
    ///
    /// # Errors
    /// [`ManifestError::Parse`] for JSON of the wrong shape, [`ManifestError::Invalid`]
    /// naming the first wrong field.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Reads, parses and checks the manifest in `dir`.
    ///
    /// # Errors
    /// As [`Manifest::parse`], or [`ManifestError::Read`].
    pub fn load(dir: &Path) -> Result<(Self, Vec<u8>), ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok((Self::parse(&bytes)?, bytes))
    }

    /// The manifest as its file holds it: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// The chunk of layer `index`.
    pub fn layer(&self, index: usize) -> Option<&ChunkInfo> {
        self.chunks.get(&layer_name(index))
    }

    /// Checks every field a reader relies on.
    ///
    /// # Errors
    /// [`ManifestError::Invalid`] naming the first wrong field.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |what: String| Err(ManifestError::Invalid(what));
        if self.format != FORMAT {
            return bad(format!(
                "format is {:?}; only {FORMAT:?} is known",
                self.format
            ));
        }
        if self.format_version != FORMAT_VERSION {
            return bad(format!(
                "format_version is {}; this build reads {FORMAT_VERSION}",
                self.format_version
            ));
        }
        if !is_valid_model_name(&self.model_name) {
            return bad(format!(
                "model_name {:?} must be 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -",
                self.model_name
            ));
        }
        let mut files = std::collections::HashSet::new();
        let mut total = 0u64;
        for (name, chunk) in &self.chunks {
            let Some((kind, index)) = parse_chunk_name(name) else {
                return bad(format!(
                    "chunk name {name:?} is none of embeddings, layer_N, pooler, other"
                ));
            };
            if chunk.kind != kind || chunk.index != index {
                return bad(format!(
                    "chunk {name:?} has kind {:?} and index {:?}",
                    chunk.kind, chunk.index
                ));
            }
            if !is_plain_file_name(&chunk.file) || !files.insert(chunk.file.as_str()) {
                return bad(format!(
                    "chunk {name:?} has a bad or repeated file name {:?}",
                    chunk.file
                ));
            }
            if !is_sha256_hex(&chunk.sha256) {
                return bad(format!("chunk {name:?} has a malformed sha256"));
            }
            if chunk.tensors.is_empty() {
                return bad(format!("chunk {name:?} lists no tensors"));
            }
            total = total.saturating_add(chunk.size_bytes);
        }
        if !self.chunks.contains_key("embeddings") {
            return bad("there is no embeddings chunk".into());
        }
        if let Some(i) = (0..self.num_layers).find(|&i| self.layer(i).is_none()) {
            return bad(format!(
                "num_layers is {} but layer_{i} is missing",
                self.num_layers
            ));
        }
        let layers = self
            .chunks
            .values()
            .filter(|c| c.kind == ChunkKind::Layer)
            .count();
        if layers != self.num_layers {
            return bad(format!(
                "num_layers is {} but there are {layers} layer chunks",
                self.num_layers
            ));
        }
        if total != self.total_size_bytes {
            return bad(format!(
                "total_size_bytes is {} but the chunks add up to {total}",
                self.total_size_bytes
            ));
        }
        for (name, digest) in [
            (CONFIG_FILE, &self.config_sha256),
            (TOKENIZER_FILE, &self.tokenizer_sha256),
        ] {
            match self.files.get(name) {
                Some(f) if &f.sha256 == digest => {}
                _ => return bad(format!("{name} is not listed with the digest given for it")),
            }
        }
        for (name, f) in &self.files {
            if name != &f.file || !is_plain_file_name(&f.file) || !files.insert(f.file.as_str()) {
                return bad(format!(
                    "file {name:?} has a bad or repeated file name {:?}",
                    f.file
                ));
            }
            if !is_sha256_hex(&f.sha256) {
                return bad(format!("file {name:?} has a malformed sha256"));
            }
        }
        if files.contains(MANIFEST_FILE) {
            return bad(format!("a chunk or file is named {MANIFEST_FILE}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names() {
        assert_eq!(
            parse_chunk_name("embeddings"),
            Some((ChunkKind::Embeddings, None))
        );
        assert_eq!(
            parse_chunk_name("layer_0"),
            Some((ChunkKind::Layer, Some(0)))
        );
        assert_eq!(
            parse_chunk_name("layer_11"),
            Some((ChunkKind::Layer, Some(11)))
        );
        for bad in [
            "layer_", "layer_01", "layer_+1", "layer_-1", "layer_1a", "Layer_1", "", "x",
        ] {
            assert_eq!(parse_chunk_name(bad), None, "{bad}");
        }
        assert_eq!(
            parse_chunk_name(&layer_name(7)),
            Some((ChunkKind::Layer, Some(7)))
        );
    }

    #[test]
    fn model_names() {
        assert!(is_valid_model_name("all-MiniLM-L6-v2"));
        assert!(is_valid_model_name("bert_base.v1"));
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(!is_valid_model_name(bad), "{bad}");
        }
    }

    #[test]
    fn sizes_in_mb_as_surfing_writes_them() {
        assert!((size_mb(7_097_856) - 6.77).abs() < 1e-9);
        assert!((size_mb(0)).abs() < 1e-12);
    }
}
