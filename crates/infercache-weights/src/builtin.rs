//! The built-in model from a weight server: every chunk fetched and verified, then built
//! into the same [`Embedder`] that local model files give, with no local copy of the
//! weights (`infercache serve --weights-from URL`).
//!
//! # Identity
//!
//! Cache keys name a model's weights by a digest. Local files are named by the SHA-256
//! of `model.safetensors`; chunks have no such file, so [`fetch_builtin`] hashes the
//! tensors they hold ([`TensorDigest`]: names, dtypes, shapes, bytes). When those, the
//! config and the tokenizer are exactly the pinned all-MiniLM-L6-v2, the digest is the
//! built-in model's own (`sha256:` + [`WEIGHTS_SHA256`]) and a streamed server shares
//! every cache entry with a local one; any other weights get
//! `tensors-sha256:<digest of config, tokenizer and tensors>`, so they never share an
//! entry with the built-in model or with each other.

use std::sync::Arc;

use futures_util::future::try_join_all;
use infercache_model::bert::{BertConfig, Embeddings, Layer, TextTokenizer, Threads};
use infercache_model::{
    CONFIG_SHA256, Embedder, ModelError, TOKENIZER_SHA256, TensorDigest, WEIGHTS_SHA256,
    WEIGHTS_TENSORS_SHA256,
};
use safetensors::SafeTensors;
use sha2::{Digest as _, Sha256};

use crate::client::{ClientError, Connected, Fetched, Fetcher, HttpConfig};
use crate::manifest::{CONFIG_FILE, ChunkKind, TOKENIZER_FILE, chunk_sort_key};

/// Chunks fetched at once.
const CONCURRENT_FETCHES: usize = 4;

/// The built-in model built from a weight server's chunks.
#[derive(Debug)]
pub struct StreamedBuiltin {
    /// The embedder, ready to run.
    pub embedder: Embedder,
    /// The weights' digest for cache keys (see the module docs).
    pub digest: String,
    /// Whether the weights, config and tokenizer are the pinned all-MiniLM-L6-v2.
    pub pinned: bool,
    /// Chunks fetched.
    pub chunks: usize,
    /// Body bytes received (chunks and files, retries included).
    pub bytes_fetched: u64,
}

/// Fetches `model` from the weight server at `url`: its manifest, `config.json`,
/// `tokenizer.json` and every chunk, each checked against the manifest's size and
/// SHA-256, then builds the embedder (on the blocking pool) on `threads`.
///
/// # Errors
/// A [`ClientError`] naming what failed: the URL or name ([`ClientError::Config`]), a
/// manifest for another model ([`ClientError::ForeignManifest`]), a chunk that fails its
/// digest, is truncated or does not arrive, or one that does not build
/// ([`ClientError::Build`], e.g. a model that is not a 384-dimension BERT).
pub async fn fetch_builtin(
    url: &str,
    model: &str,
    http: HttpConfig,
    threads: Threads,
) -> Result<StreamedBuiltin, ClientError> {
    let fetcher = Fetcher::new(url, model, http)?;
    let Connected {
        manifest,
        config: (config_info, config),
        tokenizer: (tokenizer_info, tokenizer),
    } = fetcher.connect().await?;
    // Every chunk, the pooler too: the digest covers every tensor of the model.
    let mut names: Vec<(String, ChunkKind, Option<usize>, u64, String)> = manifest
        .chunks
        .iter()
        .map(|(name, c)| {
            (
                name.clone(),
                c.kind,
                c.index,
                c.size_bytes,
                c.sha256.clone(),
            )
        })
        .collect();
    names.sort_by_key(|n| chunk_sort_key(&n.0));
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_FETCHES));
    let chunks: Vec<(String, ChunkKind, Option<usize>, Fetched)> =
        try_join_all(names.into_iter().map(|(name, kind, index, size, sha256)| {
            let (fetcher, limit) = (&fetcher, Arc::clone(&limit));
            async move {
                let _permit = limit.acquire().await.expect("never closed");
                let fetched = fetcher.chunk(&name, size, &sha256).await?;
                Ok::<_, ClientError>((name, kind, index, fetched))
            }
        }))
        .await?;
    let bytes_fetched = config.wire_bytes
        + tokenizer.wire_bytes
        + chunks.iter().map(|c| c.3.wire_bytes).sum::<u64>();
    let n_chunks = chunks.len();
    let num_layers = manifest.num_layers;
    let files_pinned =
        config_info.sha256 == CONFIG_SHA256 && tokenizer_info.sha256 == TOKENIZER_SHA256;
    let files_digest = (config_info.sha256, tokenizer_info.sha256);
    tokio::task::spawn_blocking(move || {
        let build = |chunk: &str| {
            let chunk = chunk.to_owned();
            move |e: ModelError| ClientError::Build {
                chunk,
                source: Arc::new(e),
            }
        };
        let bert = BertConfig::from_json(&config.bytes).map_err(build(CONFIG_FILE))?;
        if bert.num_hidden_layers != num_layers {
            return Err(ClientError::Manifest(format!(
                "num_layers is {num_layers} but config.json says {}",
                bert.num_hidden_layers
            )));
        }
        let text = TextTokenizer::from_bytes(&tokenizer.bytes).map_err(build(TOKENIZER_FILE))?;
        let mut digest = TensorDigest::default();
        let mut embeddings = None;
        let mut layers: Vec<Option<Layer>> = (0..num_layers).map(|_| None).collect();
        for (name, kind, index, fetched) in &chunks {
            let tensors = SafeTensors::deserialize(&fetched.bytes)
                .map_err(|e| build(name)(ModelError::from(e)))?;
            digest.add(&tensors).map_err(build(name))?;
            match (kind, index) {
                (ChunkKind::Embeddings, _) => {
                    embeddings = Some(Embeddings::load(&tensors, &bert).map_err(build(name))?);
                }
                (ChunkKind::Layer, Some(i)) => {
                    layers[*i] = Some(Layer::load(&tensors, *i, &bert).map_err(build(name))?);
                }
                _ => {}
            }
        }
        let embeddings = embeddings.expect("a valid manifest has embeddings");
        let layers: Vec<Layer> = layers
            .into_iter()
            .map(|l| l.expect("a valid manifest lists every layer"))
            .collect();
        let tensors = digest.finish();
        let pinned = files_pinned && tensors == WEIGHTS_TENSORS_SHA256;
        let digest = if pinned {
            format!("sha256:{WEIGHTS_SHA256}")
        } else {
            let mut h = Sha256::new();
            for part in [&files_digest.0, &files_digest.1, &tensors] {
                h.update(part.as_bytes());
                h.update(b"\n");
            }
            format!("tensors-sha256:{}", hex::encode(h.finalize()))
        };
        let embedder = Embedder::from_parts(bert, text, embeddings, layers, threads)
            .map_err(build(CONFIG_FILE))?;
        Ok(StreamedBuiltin {
            embedder,
            digest,
            pinned,
            chunks: n_chunks,
            bytes_fetched,
        })
    })
    .await
    .unwrap_or_else(|e| {
        Err(ClientError::Inference {
            source: Arc::new(e),
        })
    })
}
