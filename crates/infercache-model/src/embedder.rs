//! The model itself: tokenizer, BERT encoder, mean pooling, L2 normalisation.

use crate::bert::weights::Tensors;
use crate::bert::{BertConfig, Embeddings, Layer, MeanPooling, TextTokenizer, Threads, Tokens};
use crate::files::{CONFIG, TOKENIZER};
use crate::{ModelError, ModelFiles};

/// Dimensions of an embedding.
pub const DIMS: usize = 384;

/// Longest input the model sees, in tokens including `[CLS]` and `[SEP]`; longer inputs
/// are truncated (the tail is dropped). 256 is sentence-transformers' `max_seq_length`
/// for this model; the shipped `tokenizer.json` says 128, which we override.
pub const MAX_TOKENS: usize = 256;

/// all-MiniLM-L6-v2 loaded on the CPU in f32: a synchronous, thread-safe embedder.
///
/// Each [`embed`](Self::embed) call is one forward pass over one batch, on the embedder's
/// [`Threads`]. It is CPU-bound and may take tens of milliseconds: async code goes
/// through [`InferencePool`](crate::InferencePool) instead of calling it directly.
///
/// The pass is the [components](crate::bert) run in order; [`tokenize`](Self::tokenize),
/// [`embeddings`](Self::embeddings), [`layers`](Self::layers) and
/// [`threads`](Self::threads) expose them, so the same pass can be run step by step.
pub struct Embedder {
    config: BertConfig,
    tokenizer: TextTokenizer,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    threads: Threads,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dims", &DIMS)
            .field("max_tokens", &MAX_TOKENS)
            .field("layers", &self.layers.len())
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the model, to run on one thread per available core. Every file's SHA-256 is
    /// checked again on the bytes loaded, so a file changed after `files` was made is
    /// refused with [`ModelError::Checksum`]. The weights are read a tensor at a time and
    /// decoded as they stream, so loading holds the model's `f32` values and a 1 MiB read
    /// buffer, never the whole file beside them.
    pub fn load(files: &ModelFiles) -> Result<Self, ModelError> {
        Self::load_with(files, Threads::available()?)
    }

    /// [`load`](Self::load), running every forward pass on `threads`.
    pub fn load_with(files: &ModelFiles, threads: Threads) -> Result<Self, ModelError> {
        let config = BertConfig::from_json(&files.read_verified(CONFIG)?)?;
        if config.hidden_size != DIMS {
            return Err(ModelError::UnsupportedConfig(format!(
                "hidden_size {} (all-MiniLM-L6-v2 has {DIMS})",
                config.hidden_size
            )));
        }
        let tokenizer = TextTokenizer::from_bytes(files.read_verified(TOKENIZER)?)?;
        let weights = files.read_weights_verified()?;
        let tensors = Tensors::decoded(&weights);
        let embeddings = Embeddings::from_tensors(&tensors, &config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::from_tensors(&tensors, i, &config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            config,
            tokenizer,
            embeddings,
            layers,
            threads,
        })
    }

    /// An embedder from components loaded elsewhere (one chunk per component from a
    /// weight server): the same forward pass as [`load`](Self::load) gives on the same
    /// tensors and thread count.
    ///
    /// # Errors
    /// [`ModelError::UnsupportedConfig`] for a hidden size other than [`DIMS`] or a layer
    /// count other than `config`'s.
    pub fn from_parts(
        config: BertConfig,
        tokenizer: TextTokenizer,
        embeddings: Embeddings,
        layers: Vec<Layer>,
        threads: Threads,
    ) -> Result<Self, ModelError> {
        if config.hidden_size != DIMS {
            return Err(ModelError::UnsupportedConfig(format!(
                "hidden_size {} (all-MiniLM-L6-v2 has {DIMS})",
                config.hidden_size
            )));
        }
        if layers.len() != config.num_hidden_layers {
            return Err(ModelError::UnsupportedConfig(format!(
                "{} layers given for num_hidden_layers {}",
                layers.len(),
                config.num_hidden_layers
            )));
        }
        Ok(Self {
            config,
            tokenizer,
            embeddings,
            layers,
            threads,
        })
    }

    /// Dimensions of every embedding: 384.
    pub fn dims(&self) -> usize {
        DIMS
    }

    /// The model's configuration (`config.json`).
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The embeddings component.
    pub fn embeddings(&self) -> &Embeddings {
        &self.embeddings
    }

    /// The encoder layers, in order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The threads every forward pass runs on.
    pub fn threads(&self) -> &Threads {
        &self.threads
    }

    /// Token ids of `texts` as [`embed`](Self::embed) feeds them to the model.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Tokens, ModelError> {
        self.tokenizer.tokenize(texts)
    }

    /// Tokens `text` has, counting `[CLS]` and `[SEP]`, before truncation: a count above
    /// [`MAX_TOKENS`] means the model sees only the first `MAX_TOKENS`.
    pub fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        self.tokenizer.count_tokens(text)
    }

    /// Embeds `texts` in one forward pass: one unit-length vector of [`DIMS`] floats per
    /// text, in order. No padding is computed, so a text's vector does not depend on its
    /// batch-mates beyond float rounding.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.embed_tokens(&self.tokenize(texts)?)
    }

    /// The forward pass from token ids: embeddings, every layer, mean pooling and L2
    /// normalisation (as sentence-transformers' `Pooling(mean)` + `Normalize` modules).
    pub fn embed_tokens(&self, tokens: &Tokens) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut hidden = self.embeddings.forward(tokens, &self.threads)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &self.threads)?;
        }
        Ok(MeanPooling.forward(&hidden))
    }
}
