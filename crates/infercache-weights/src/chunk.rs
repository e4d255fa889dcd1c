//! The chunker: a Hugging Face / sentence-transformers model directory in, one safetensors
//! file per component out, with the manifest ([`crate::manifest`]).
//!
//! # What it reads
//!
//! `config.json` (its `model_type` and `num_hidden_layers`), `tokenizer.json`, and the
//! weights: `model.safetensors`, or the shards a `model.safetensors.index.json` names.
//! Only the headers are parsed up front; tensor bytes are read one component at a time, so
//! memory holds one component (twice), never the whole model.
//!
//! # What it writes
//!
//! - `embeddings.safetensors` (`embeddings.*`), `layer_{i}.safetensors`
//!   (`encoder.layer.{i}.*`), `pooler.safetensors` (`pooler.*`), and `other.safetensors`
//!   for any remaining tensor (a masked-LM head, say), each a standalone safetensors file
//!   keeping the original tensor names, dtypes and bytes. A `{model_type}.` prefix
//!   (`bert.embeddings.*`) is kept in the names and ignored when grouping.
//! - `config.json` and `tokenizer.json`, copied.
//! - `chunk_info.json`, last.
//!
//! safetensors writers order tensors by dtype alignment, then by name, and so does
//! [`safetensors::serialize`]: for a source written that way a component's tensors are one
//! contiguous range of the source's data section and the chunk's data section is that
//! range, byte for byte. The manifest records the range and its SHA-256 (or `null` where
//! a component's tensors are interleaved with others', which still chunks correctly).
//!
//! # Crash safety and re-runs
//!
//! Every file is written atomically (`fsio`); the manifest goes last, so a
//! directory with a manifest has every chunk it lists. A file that already holds the
//! bytes it would get is left alone, so a re-run changes nothing and a re-run after a
//! crash writes only what is missing. Files an older manifest in the directory listed
//! and the new one does not are removed after the new manifest is in place.
//!
//! # `--fp16`
//!
//! Opt in: every F32 tensor is cast to F16 (round to nearest), other dtypes are kept, and
//! the manifest says so (`fp16: true`, per chunk `converted: "F32->F16"`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use safetensors::Dtype;
use safetensors::tensor::{Metadata, TensorView};

use crate::digest::{sha256_file, sha256_hex};
use crate::fsio::{self, Written};
use crate::manifest::{
    CONFIG_FILE, ChunkInfo, ChunkKind, ChunkSource, FORMAT, FORMAT_VERSION, FileInfo,
    MANIFEST_FILE, Manifest, SourceInfo, TOKENIZER_FILE, TensorEntry, is_valid_model_name,
    layer_name, size_mb,
};
use crate::progress::Progress;

/// The single-file weights.
const WEIGHTS_FILE: &str = "model.safetensors";

/// The index of sharded weights.
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Largest safetensors header read (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Metadata of every chunk file: what transformers expects of a PyTorch export.
const CHUNK_METADATA: (&str, &str) = ("format", "pt");

/// A model directory that cannot be chunked, or a write that failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file the model directory must hold is not there.
    #[error("{} is missing: a model directory holds config.json, tokenizer.json and model.safetensors (or model.safetensors.index.json and its shards)", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// `config.json` lacks what the chunker needs.
    #[error("config.json: {0}")]
    Config(String),
    /// `tokenizer.json` is not a tokenizer.
    #[error("tokenizer.json is not a tokenizer: {0}")]
    Tokenizer(#[source] infercache_model::ModelError),
    /// A weight file is not valid safetensors.
    #[error("{file} is not a valid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The tensors do not form the model the config describes.
    #[error("the weights do not match config.json: {0}")]
    Layout(String),
    /// The model's name cannot be used in URLs.
    #[error("model name {0:?} is not 1 to 128 of A-Z a-z 0-9 . _ - (choose one with --name)")]
    ModelName(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ChunkError + '_ {
    move |source| ChunkError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How to chunk.
#[derive(Debug, Clone, Default)]
pub struct ChunkOptions {
    /// Cast F32 tensors to F16. Default: off.
    pub fp16: bool,
    /// The model's name in the manifest. Default: the model directory's name.
    pub model_name: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct ChunkReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Files (re)written.
    pub written: Vec<String>,
    /// Files that already held their bytes.
    pub unchanged: Vec<String>,
    /// Files of an older manifest that the new one no longer lists, removed.
    pub removed: Vec<String>,
}

/// One tensor of a source file.
#[derive(Debug, Clone)]
struct SourceTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    begin: u64,
    end: u64,
}

/// One source weight file, its header parsed.
#[derive(Debug)]
struct Source {
    file: String,
    path: PathBuf,
    data_start: u64,
    /// By offset.
    tensors: Vec<SourceTensor>,
}

/// Chunks the model in `model_dir` into `out_dir` (created if missing).
///
/// # Errors
/// [`ChunkError`] naming the file or field at fault; nothing already in `out_dir` is
/// damaged by a failed run.
pub fn chunk_model(
    model_dir: &Path,
    out_dir: &Path,
    options: &ChunkOptions,
    progress: &mut dyn Progress,
) -> Result<ChunkReport, ChunkError> {
    let model_name = match &options.model_name {
        Some(n) => n.clone(),
        None => default_name(model_dir)?,
    };
    if !is_valid_model_name(&model_name) {
        return Err(ChunkError::ModelName(model_name));
    }
    let config = read_required(&model_dir.join(CONFIG_FILE))?;
    let (model_type, num_layers) = parse_config(&config)?;
    let tokenizer = read_required(&model_dir.join(TOKENIZER_FILE))?;
    infercache_model::bert::TextTokenizer::from_bytes(&tokenizer).map_err(ChunkError::Tokenizer)?;
    let (sources, index) = open_sources(model_dir)?;

    let components = group(&sources, &model_type, num_layers)?;

    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    fsio::remove_partials(out_dir).map_err(io_err(out_dir))?;
    let previous = Manifest::load(out_dir).ok().map(|(m, _)| m);

    let source_total: u64 = sources
        .iter()
        .map(|s| fs::metadata(&s.path).map_or(0, |m| m.len()))
        .sum();
    progress.phase("hashing the source", source_total);
    let mut source_files = Vec::new();
    for s in &sources {
        let (size_bytes, sha256) =
            sha256_file(&s.path, |n| progress.advance(n)).map_err(io_err(&s.path))?;
        source_files.push(FileInfo {
            file: s.file.clone(),
            size_bytes,
            sha256,
        });
    }

    let mut written = Vec::new();
    let mut unchanged = Vec::new();
    let mut record = |file: &str, w: Written| match w {
        Written::Written => written.push(file.to_owned()),
        Written::Unchanged => unchanged.push(file.to_owned()),
    };

    let chunk_total: u64 = components
        .values()
        .flatten()
        .map(|(_, t)| t.end - t.begin)
        .sum();
    progress.phase("writing chunks", chunk_total);
    let mut chunks = IndexMap::new();
    for (name, members) in &components {
        let (bytes, info) = build_chunk(name, members, &sources, options.fp16)?;
        let w = fsio::write_if_changed(out_dir, &info.file, &bytes, &info.sha256)
            .map_err(io_err(&out_dir.join(&info.file)))?;
        record(&info.file, w);
        progress.advance(members.iter().map(|(_, t)| t.end - t.begin).sum());
        chunks.insert(name.clone(), info);
    }

    let mut files = IndexMap::new();
    for (name, bytes) in [(CONFIG_FILE, &config), (TOKENIZER_FILE, &tokenizer)] {
        let sha256 = sha256_hex(bytes);
        let w = fsio::write_if_changed(out_dir, name, bytes, &sha256)
            .map_err(io_err(&out_dir.join(name)))?;
        record(name, w);
        files.insert(
            name.to_owned(),
            FileInfo {
                file: name.to_owned(),
                size_bytes: bytes.len() as u64,
                sha256,
            },
        );
    }

    let total_size_bytes = chunks.values().map(|c: &ChunkInfo| c.size_bytes).sum();
    let manifest = Manifest {
        model_name,
        model_type,
        num_layers,
        chunks,
        total_size_mb: size_mb(total_size_bytes),
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        total_size_bytes,
        fp16: options.fp16,
        config_sha256: files[CONFIG_FILE].sha256.clone(),
        tokenizer_sha256: files[TOKENIZER_FILE].sha256.clone(),
        files,
        source: SourceInfo {
            files: source_files,
            index,
        },
    };
    manifest
        .validate()
        .expect("the chunker writes valid manifests (a bug otherwise)");
    let bytes = manifest.to_bytes();
    let w = fsio::write_if_changed(out_dir, MANIFEST_FILE, &bytes, &sha256_hex(&bytes))
        .map_err(io_err(&out_dir.join(MANIFEST_FILE)))?;
    record(MANIFEST_FILE, w);

    let removed = remove_stale(out_dir, previous.as_ref(), &manifest)?;
    progress.finish();
    Ok(ChunkReport {
        manifest,
        written,
        unchanged,
        removed,
    })
}

/// The model directory's own name, as the default model name.
fn default_name(model_dir: &Path) -> Result<String, ChunkError> {
    let dir = fs::canonicalize(model_dir).map_err(io_err(model_dir))?;
    Ok(dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default())
}

fn read_required(path: &Path) -> Result<Vec<u8>, ChunkError> {
    fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ChunkError::Missing {
            path: path.to_owned(),
        },
        _ => ChunkError::Io {
            path: path.to_owned(),
            source,
        },
    })
}

/// `model_type` and `num_hidden_layers` from `config.json`.
fn parse_config(bytes: &[u8]) -> Result<(String, usize), ChunkError> {
    let config: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ChunkError::Config(format!("not JSON: {e}")))?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ChunkError::Config("no model_type string".into()))?
        .to_owned();
    let layers = config
        .get("num_hidden_layers")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| ChunkError::Config("no num_hidden_layers integer".into()))?;
    let layers = usize::try_from(layers)
        .ok()
        .filter(|&n| n <= 100_000)
        .ok_or_else(|| ChunkError::Config(format!("num_hidden_layers {layers} is too large")))?;
    Ok((model_type, layers))
}

/// The weight files: `model.safetensors`, else the shards of the index.
fn open_sources(model_dir: &Path) -> Result<(Vec<Source>, Option<FileInfo>), ChunkError> {
    let single = model_dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok((vec![open_source(&single, WEIGHTS_FILE)?], None));
    }
    let index_path = model_dir.join(INDEX_FILE);
    if !index_path.is_file() {
        return Err(ChunkError::Missing { path: single });
    }
    let bytes = fs::read(&index_path).map_err(io_err(&index_path))?;
    let bad = |reason: String| ChunkError::Safetensors {
        file: INDEX_FILE.into(),
        reason,
    };
    let index: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let mut by_file: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.is_empty() && !f.contains(['/', '\\']) && !f.starts_with('.'))
            .ok_or_else(|| bad(format!("tensor {tensor} maps to a bad file name")))?;
        by_file
            .entry(file.to_owned())
            .or_default()
            .insert(tensor.clone());
    }
    let mut sources = Vec::new();
    for (file, names) in by_file {
        let path = model_dir.join(&file);
        if !path.is_file() {
            return Err(ChunkError::Missing { path });
        }
        let source = open_source(&path, &file)?;
        let present: HashSet<&str> = source.tensors.iter().map(|t| t.name.as_str()).collect();
        if let Some(t) = names.iter().find(|n| !present.contains(n.as_str())) {
            return Err(bad(format!(
                "{t} is mapped to {file}, which does not hold it"
            )));
        }
        if let Some(t) = source.tensors.iter().find(|t| !names.contains(&t.name)) {
            return Err(bad(format!(
                "{file} holds {}, which the index maps elsewhere",
                t.name
            )));
        }
        sources.push(source);
    }
    let index = FileInfo {
        file: INDEX_FILE.into(),
        size_bytes: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
    };
    Ok((sources, Some(index)))
}

/// Parses and checks a safetensors header, reading nothing past it.
fn open_source(path: &Path, file: &str) -> Result<Source, ChunkError> {
    let bad = |reason: String| ChunkError::Safetensors {
        file: file.to_owned(),
        reason,
    };
    let mut f = File::open(path).map_err(io_err(path))?;
    let size = f.metadata().map_err(io_err(path))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n.saturating_add(8) > size {
        return Err(bad(format!(
            "header length {n} does not fit the file's {size} bytes"
        )));
    }
    let mut header = vec![0u8; usize::try_from(n).expect("bounded by MAX_HEADER")];
    f.read_exact(&mut header).map_err(io_err(path))?;
    let meta: Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_start = 8 + n;
    let data_len = size - data_start;
    let infos = meta.tensors();
    let mut tensors = Vec::with_capacity(infos.len());
    for name in meta.offset_keys() {
        let info = infos[&name];
        let (begin, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        let expected = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize(), |acc, &d| acc.checked_mul(d))
            .map(|bits| bits.div_ceil(8) as u64);
        if begin > end || end > data_len || expected != Some(end - begin) {
            return Err(bad(format!(
                "tensor {name}: offsets [{begin}, {end}) do not hold its {:?} {:?} in a data section of {data_len} bytes",
                info.dtype, info.shape
            )));
        }
        tensors.push(SourceTensor {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            begin,
            end,
        });
    }
    Ok(Source {
        file: file.to_owned(),
        path: path.to_owned(),
        data_start,
        tensors,
    })
}

/// The chunk a tensor belongs to, by its name (a `{model_type}.` prefix ignored).
fn component_of(name: &str, model_type: &str) -> (ChunkKind, Option<usize>) {
    let prefix = format!("{model_type}.");
    let n = name.strip_prefix(&prefix).unwrap_or(name);
    if n.starts_with("embeddings.") {
        return (ChunkKind::Embeddings, None);
    }
    if n.starts_with("pooler.") {
        return (ChunkKind::Pooler, None);
    }
    if let Some(rest) = n.strip_prefix("encoder.layer.")
        && let Some((digits, _)) = rest.split_once('.')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = digits.parse()
    {
        return (ChunkKind::Layer, Some(i));
    }
    (ChunkKind::Other, None)
}

/// Every tensor of every source, grouped into chunks in model order: embeddings, layers,
/// pooler, other. Members are `(source index, tensor)`.
type Components = IndexMap<String, Vec<(usize, SourceTensor)>>;

fn group(
    sources: &[Source],
    model_type: &str,
    num_layers: usize,
) -> Result<Components, ChunkError> {
    let mut embeddings = Vec::new();
    let mut pooler = Vec::new();
    let mut other = Vec::new();
    let mut layers: BTreeMap<usize, Vec<(usize, SourceTensor)>> = BTreeMap::new();
    for (si, s) in sources.iter().enumerate() {
        for t in &s.tensors {
            let member = (si, t.clone());
            match component_of(&t.name, model_type) {
                (ChunkKind::Embeddings, _) => embeddings.push(member),
                (ChunkKind::Pooler, _) => pooler.push(member),
                (ChunkKind::Layer, Some(i)) => layers.entry(i).or_default().push(member),
                _ => other.push(member),
            }
        }
    }
    if embeddings.is_empty() {
        return Err(ChunkError::Layout(
            "no embeddings.* tensors (is this a BERT-family encoder?)".into(),
        ));
    }
    let found: Vec<usize> = layers.keys().copied().collect();
    if found != (0..num_layers).collect::<Vec<_>>() {
        return Err(ChunkError::Layout(format!(
            "num_hidden_layers is {num_layers} but the weights hold encoder layers {found:?}"
        )));
    }
    let mut out = IndexMap::new();
    out.insert("embeddings".to_owned(), embeddings);
    for (i, members) in layers {
        out.insert(layer_name(i), members);
    }
    for (name, members) in [("pooler", pooler), ("other", other)] {
        if !members.is_empty() {
            out.insert(name.to_owned(), members);
        }
    }
    Ok(out)
}

/// The bytes of a chunk and its manifest entry.
fn build_chunk(
    name: &str,
    members: &[(usize, SourceTensor)],
    sources: &[Source],
    fp16: bool,
) -> Result<(Vec<u8>, ChunkInfo), ChunkError> {
    // Per source file: the members' bytes, read as one range where they are contiguous.
    let mut by_source: BTreeMap<usize, Vec<&SourceTensor>> = BTreeMap::new();
    for (si, t) in members {
        by_source.entry(*si).or_default().push(t);
    }
    let mut data: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut chunk_sources = Vec::new();
    let mut origin: HashMap<&str, (&str, [u64; 2])> = HashMap::new();
    for (si, mut tensors) in by_source {
        let s = &sources[si];
        tensors.sort_by_key(|t| t.begin);
        let contiguous = tensors.windows(2).all(|w| w[0].end == w[1].begin);
        let mut file = File::open(&s.path).map_err(io_err(&s.path))?;
        let (range, sha256_of_range) = if contiguous {
            let (b, e) = (tensors[0].begin, tensors[tensors.len() - 1].end);
            let bytes = read_at(&mut file, &s.path, s.data_start + b, e - b)?;
            let digest = sha256_hex(&bytes);
            for t in &tensors {
                let at = usize::try_from(t.begin - b).expect("a range read fits in memory");
                let len = usize::try_from(t.end - t.begin).expect("a range read fits in memory");
                data.insert(&t.name, bytes[at..at + len].to_vec());
            }
            (Some([b, e]), Some(digest))
        } else {
            for t in &tensors {
                let bytes = read_at(&mut file, &s.path, s.data_start + t.begin, t.end - t.begin)?;
                data.insert(&t.name, bytes);
            }
            (None, None)
        };
        for t in &tensors {
            origin.insert(&t.name, (&s.file, [t.begin, t.end]));
        }
        chunk_sources.push(ChunkSource {
            file: s.file.clone(),
            data_start: s.data_start,
            range,
            sha256_of_range,
        });
    }

    let mut converted = None;
    let mut dtypes: HashMap<&str, Dtype> = HashMap::new();
    for (_, t) in members {
        let mut dtype = t.dtype;
        if fp16 && dtype == Dtype::F32 {
            let bytes = data.get_mut(t.name.as_str()).expect("read above");
            *bytes = f32_to_f16(bytes);
            dtype = Dtype::F16;
            converted = Some("F32->F16".to_owned());
        }
        dtypes.insert(&t.name, dtype);
    }
    let views = members
        .iter()
        .map(|(_, t)| {
            TensorView::new(
                dtypes[t.name.as_str()],
                t.shape.clone(),
                &data[t.name.as_str()],
            )
            .map(|v| (t.name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ChunkError::Layout(format!("chunk {name}: {e}")))?;
    let metadata = HashMap::from([(CHUNK_METADATA.0.to_owned(), CHUNK_METADATA.1.to_owned())]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| ChunkError::Layout(format!("chunk {name}: {e}")))?;

    // The manifest lists the tensors in the chunk file's order.
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .expect("safetensors reads back what it wrote");
    let infos = meta.tensors();
    let tensors = meta
        .offset_keys()
        .into_iter()
        .map(|n| {
            let info = infos[&n];
            let (file, offsets) = origin[n.as_str()];
            TensorEntry {
                dtype: dtype_name(info.dtype),
                shape: info.shape.clone(),
                source_file: file.to_owned(),
                source_offsets: offsets,
                name: n,
            }
        })
        .collect::<Vec<_>>();
    let floats: HashSet<String> = tensors
        .iter()
        .filter(|t| is_float(&t.dtype))
        .map(|t| t.dtype.clone())
        .collect();
    let dtype = match floats.len() {
        1 => floats.into_iter().next().expect("one element"),
        0 if tensors.iter().all(|t| t.dtype == tensors[0].dtype) => tensors[0].dtype.clone(),
        _ => "mixed".to_owned(),
    };
    let (kind, index) = crate::manifest::parse_chunk_name(name).expect("grouping names chunks");
    let size_bytes = bytes.len() as u64;
    let info = ChunkInfo {
        file: format!("{name}.safetensors"),
        size_mb: size_mb(size_bytes),
        size_bytes,
        sha256: sha256_hex(&bytes),
        kind,
        index,
        dtype,
        converted,
        tensors,
        sources: chunk_sources,
    };
    Ok((bytes, info))
}

fn read_at(file: &mut File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, ChunkError> {
    let mut buf = vec![0u8; usize::try_from(len).expect("a tensor fits in memory")];
    file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    file.read_exact(&mut buf).map_err(io_err(path))?;
    Ok(buf)
}

/// Little-endian F32 bytes as little-endian F16 bytes (round to nearest even).
fn f32_to_f16(bytes: &[u8]) -> Vec<u8> {
    bytes
        .chunks_exact(4)
        .flat_map(|b| {
            let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            half::f16::from_f32(v).to_le_bytes()
        })
        .collect()
}

/// safetensors' name of a dtype (`F32`, `I64`, ...).
pub(crate) fn dtype_name(dtype: Dtype) -> String {
    // Dtype's serde form is its name; no other public spelling exists.
    serde_json::to_value(dtype)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{dtype:?}"))
}

fn is_float(dtype: &str) -> bool {
    dtype.starts_with('F') || dtype.starts_with("BF")
}

/// Removes the files `previous` listed that `current` does not.
fn remove_stale(
    out_dir: &Path,
    previous: Option<&Manifest>,
    current: &Manifest,
) -> Result<Vec<String>, ChunkError> {
    let Some(previous) = previous else {
        return Ok(Vec::new());
    };
    let keep: HashSet<&str> = current
        .chunks
        .values()
        .map(|c| c.file.as_str())
        .chain(current.files.values().map(|f| f.file.as_str()))
        .collect();
    let mut removed = Vec::new();
    for file in previous
        .chunks
        .values()
        .map(|c| c.file.as_str())
        .chain(previous.files.values().map(|f| f.file.as_str()))
    {
        if keep.contains(file) {
            continue;
        }
        let path = out_dir.join(file);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(file.to_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ChunkError::Io { path, source }),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_grouped_by_name() {
        assert_eq!(
            component_of("embeddings.word_embeddings.weight", "bert"),
            (ChunkKind::Embeddings, None)
        );
        assert_eq!(
            component_of("bert.encoder.layer.11.output.dense.bias", "bert"),
            (ChunkKind::Layer, Some(11))
        );
        assert_eq!(
            component_of("pooler.dense.weight", "bert"),
            (ChunkKind::Pooler, None)
        );
        assert_eq!(
            component_of("cls.predictions.bias", "bert"),
            (ChunkKind::Other, None)
        );
        assert_eq!(
            component_of("encoder.layer.x.weight", "bert"),
            (ChunkKind::Other, None)
        );
    }

    #[test]
    fn dtype_names_are_safetensors_names() {
        assert_eq!(dtype_name(Dtype::F32), "F32");
        assert_eq!(dtype_name(Dtype::I64), "I64");
        assert_eq!(dtype_name(Dtype::BF16), "BF16");
    }

    #[test]
    fn fp16_cast_rounds_to_nearest() {
        let src: Vec<u8> = [1.0f32, -2.5, 65504.0, 1e-8]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let out = f32_to_f16(&src);
        let back: Vec<f32> = out
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(back[..3], [1.0, -2.5, 65504.0]);
        assert!(back[3].abs() < 1e-7);
    }
}
