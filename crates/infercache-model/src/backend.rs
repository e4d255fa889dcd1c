//! The built-in model as a [`Backend`]: all-MiniLM-L6-v2 behind its [`InferencePool`].
//!
//! Identity in keys: the model name `all-MiniLM-L6-v2`, a version that names the
//! preprocessing that changes outputs (truncation at [`MAX_TOKENS`]), and the SHA-256 of
//! the weights, which [`ModelFiles`] verified before loading. Its rows are texts; its
//! values are the embeddings as little-endian `f32` bytes, as an OpenAI or TEI upstream's
//! are, followed by the text's token count ([`vector::encode_counted`]), so that a hit
//! answers `usage` without tokenizing again.

use std::path::Path;

use bytes::Bytes;
use infercache_backend::{
    Backend, BackendError, BackendKind, BackendStats, BoxFuture, InferenceStats, Inputs, ModelInfo,
    vector,
};

use crate::{
    DIMS, Embedder, InferencePool, MAX_TOKENS, MODEL_ID, MODEL_NAME, ModelError, ModelFiles,
    PoolConfig, WEIGHTS_SHA256,
};

/// all-MiniLM-L6-v2 behind an [`InferencePool`], as a [`Backend`].
pub struct BuiltinModel {
    pool: InferencePool,
    info: ModelInfo,
}

impl std::fmt::Debug for BuiltinModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinModel")
            .field("info", &self.info)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl BuiltinModel {
    /// Loads the model from `model_dir`, or from (fetching into) `cache_dir`, and starts
    /// its pool. Blocks: hashing and loading ~90 MB.
    ///
    /// # Errors
    /// Missing or corrupt files, a failed fetch, or a model that does not load.
    pub fn load(
        model_dir: Option<&Path>,
        cache_dir: &Path,
        pool: PoolConfig,
    ) -> Result<Self, ModelError> {
        let files = ModelFiles::locate(model_dir, cache_dir, false)?;
        Self::from_files(&files, pool)
    }

    /// Loads the model from verified `files` and starts its pool. Blocks.
    ///
    /// # Errors
    /// A model that does not load.
    pub fn from_files(files: &ModelFiles, pool: PoolConfig) -> Result<Self, ModelError> {
        let embedder = Embedder::load(files)?;
        // `ModelFiles` were verified against the pinned digests: the weights are these.
        Self::from_embedder(embedder, pool, format!("sha256:{WEIGHTS_SHA256}"))
    }

    /// The model on an `embedder` built elsewhere (from streamed chunks), whose weights
    /// `digest` names in cache keys: `sha256:`[`WEIGHTS_SHA256`] only for the pinned
    /// weights (their [`TensorDigest`](crate::TensorDigest) is
    /// [`WEIGHTS_TENSORS_SHA256`](crate::WEIGHTS_TENSORS_SHA256)), so that other weights
    /// never share the built-in model's entries. Starts its pool.
    ///
    /// # Errors
    /// The pool cannot start.
    pub fn from_embedder(
        embedder: Embedder,
        pool: PoolConfig,
        digest: String,
    ) -> Result<Self, ModelError> {
        let pool = InferencePool::new(embedder, pool)?;
        let info = ModelInfo {
            name: MODEL_NAME.to_owned(),
            aliases: vec![MODEL_ID.to_owned()],
            kind: BackendKind::Builtin,
            version: format!("1+max_tokens={MAX_TOKENS}"),
            digest: Some(digest),
            dims: Some(DIMS),
            upstream: None,
        };
        Ok(Self { pool, info })
    }

    /// The pool.
    pub fn pool(&self) -> &InferencePool {
        &self.pool
    }
}

impl Backend for BuiltinModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn compute<'a>(
        &'a self,
        inputs: &'a Inputs,
        rows: &'a [usize],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, BackendError>> {
        Box::pin(async move {
            let Inputs::Texts {
                texts,
                dimensions: None,
            } = inputs
            else {
                return Err(BackendError::failed(
                    "the built-in model takes texts at their native dimensions (a bug otherwise)",
                ));
            };
            let batch: Vec<String> = rows.iter().map(|&i| texts[i].clone()).collect();
            let n = batch.len();
            // Stored with each vector: a hit answers `usage` without the tokenizer.
            let tokens = self.pool.count_tokens_many(&batch).await;
            // A panicked pass (`ModelError::Panicked`) or no thread to run one
            // (`ModelError::NoWorkers`) is an internal failure of this request.
            let vectors = self.pool.embed(batch).await.map_err(|e| match e {
                ModelError::Overloaded => BackendError::Overloaded,
                e => BackendError::failed(e),
            })?;
            if vectors.len() != n || vectors.iter().any(|v| v.len() != DIMS) {
                return Err(BackendError::failed(format!(
                    "the model returned {} vectors for {n} texts, or vectors of other than {DIMS} values",
                    vectors.len()
                )));
            }
            Ok(vectors
                .iter()
                .zip(tokens)
                .map(|(v, tokens)| vector::encode_counted(v, tokens))
                .collect())
        })
    }

    /// Ready while an inference thread runs (a panicked one is replaced first).
    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        let ready = if self.pool.is_ready() {
            Ok(())
        } else {
            Err(BackendError::failed(ModelError::NoWorkers))
        };
        Box::pin(std::future::ready(ready))
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.pool.count_tokens(text).unwrap_or(0)
    }

    fn fits(&self, value: &[u8], inputs: &Inputs) -> bool {
        vector::fits(value, inputs, Some(DIMS))
    }

    fn stats(&self) -> BackendStats {
        let s = self.pool.stats();
        BackendStats::InProcess(InferenceStats {
            invocations: s.invocations,
            texts: s.texts,
        })
    }
}
