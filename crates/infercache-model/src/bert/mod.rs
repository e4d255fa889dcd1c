//! The BERT encoder forward pass, one component at a time.
//!
//! ```text
//!  texts ─▶ TextTokenizer::tokenize ─▶ Tokens ─▶ Embeddings::forward ─▶ Hidden
//!        ─▶ Layer::forward (× num_hidden_layers) ─▶ Hidden ─▶ MeanPooling::forward ─▶ vectors
//! ```
//!
//! Each component is built from its own tensors, looked up by their original names in a
//! safetensors file ([`Embeddings::load`]: `embeddings.*`; [`Layer::load`]:
//! `encoder.layer.{i}.*`), so a whole `model.safetensors` and a file holding one
//! component's tensors load the same way. [`Embedder`](crate::Embedder) runs them in order;
//! a caller that obtains the components another way (one layer at a time, say) runs the
//! same code and, for the same [`Tokens`] and [`Threads`], gets the same bits.
//!
//! # Layout: packed, no padding
//!
//! A batch's activations ([`Hidden`]) are the rows of every sequence's tokens one after
//! the other, with the sequence lengths beside them: the dense steps (projections, feed
//! forward, layer norms) run over real tokens only, and attention runs per sequence, so no
//! padding is computed and none needs masking. A text's vector depends on its batch-mates
//! only through float rounding in the matrix kernels. A layer runs over groups of whole
//! sequences of at most 1,024 tokens, so its buffers are bounded by the group, not the batch.
//!
//! # Kernels and threads
//!
//! Matrix products are faer's (runtime-selected AVX-512 / AVX2 kernels); the element-wise
//! steps are fused into them where the data is hot (bias, residual, GELU) and vectorized
//! the same way (`kernels`). Work is split over a [`Threads`] pool in a fixed way: each
//! product by output columns, attention by sequence (or by query rows for a single
//! sequence), layer norms by rows. Results are deterministic for a given input and thread
//! count.

mod embeddings;
pub(crate) mod kernels;
mod layer;
mod pooling;
mod tokenizer;
pub(crate) mod weights;

use std::sync::Arc;

pub use embeddings::Embeddings;
pub use layer::Layer;
pub use pooling::MeanPooling;
pub use tokenizer::TextTokenizer;
pub(crate) use weights::DecodedTensors;

use crate::ModelError;

/// What the forward pass needs from a BERT `config.json`. Unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[non_exhaustive]
pub struct BertConfig {
    /// Tokens in the vocabulary (rows of `embeddings.word_embeddings.weight`).
    pub vocab_size: usize,
    /// Features per token.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads; `hidden_size` must be a multiple of it.
    pub num_attention_heads: usize,
    /// Width of each layer's feed-forward block.
    pub intermediate_size: usize,
    /// Positions the position embeddings cover: the longest sequence the model takes.
    pub max_position_embeddings: usize,
    /// Token types (rows of `embeddings.token_type_embeddings.weight`); every token is
    /// type 0 here.
    pub type_vocab_size: usize,
    /// The layer norms' epsilon.
    pub layer_norm_eps: f64,
    /// Must be `"gelu"` (the exact, erf-based GELU).
    pub hidden_act: String,
    /// Must be `"absolute"` when present.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".to_owned()
}

impl BertConfig {
    /// Parses and checks a `config.json`.
    ///
    /// # Errors
    /// [`ModelError::Config`] if it is not JSON of this shape, [`ModelError::UnsupportedConfig`]
    /// for an activation, position embedding or head count this forward pass does not run.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let config: Self =
            serde_json::from_slice(bytes).map_err(|e| ModelError::Config(Arc::new(e)))?;
        if config.hidden_act != "gelu" {
            return Err(ModelError::UnsupportedConfig(format!(
                "hidden_act {:?} (only \"gelu\" is implemented)",
                config.hidden_act
            )));
        }
        if config.position_embedding_type != "absolute" {
            return Err(ModelError::UnsupportedConfig(format!(
                "position_embedding_type {:?} (only \"absolute\" is implemented)",
                config.position_embedding_type
            )));
        }
        if config.num_attention_heads == 0
            || config.hidden_size == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(ModelError::UnsupportedConfig(format!(
                "hidden_size {} is not a positive multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        Ok(config)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "an epsilon is a small positive number"
    )]
    fn eps(&self) -> f32 {
        self.layer_norm_eps as f32
    }
}

/// A batch of tokenized sequences: every sequence's token ids one after the other, and
/// each sequence's length. Made by [`TextTokenizer::tokenize`] or [`Tokens::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    ids: Vec<u32>,
    lengths: Vec<usize>,
}

impl Tokens {
    /// Token ids of several sequences, concatenated, with each sequence's length.
    ///
    /// # Errors
    /// [`ModelError::Shape`] if the lengths do not add up to the ids, or one is zero.
    pub fn new(ids: Vec<u32>, lengths: Vec<usize>) -> Result<Self, ModelError> {
        if lengths.contains(&0) || lengths.iter().sum::<usize>() != ids.len() {
            return Err(ModelError::Shape(format!(
                "{} token ids for sequence lengths {lengths:?}",
                ids.len()
            )));
        }
        Ok(Self { ids, lengths })
    }

    /// Every token id, sequence after sequence.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Each sequence's length in tokens.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Sequences in the batch.
    pub fn sequences(&self) -> usize {
        self.lengths.len()
    }
}

/// The hidden states of a batch: one row of `width` floats per token, the tokens of every
/// sequence one after the other (no padding), with each sequence's length.
#[derive(Debug, Clone, PartialEq)]
pub struct Hidden {
    states: Vec<f32>,
    lengths: Vec<usize>,
    width: usize,
}

impl Hidden {
    /// Hidden states of `width` features per token for sequences of `lengths` tokens.
    ///
    /// # Errors
    /// [`ModelError::Shape`] if `states` is not `sum(lengths) × width` floats, or a length
    /// is zero.
    pub fn new(states: Vec<f32>, lengths: Vec<usize>, width: usize) -> Result<Self, ModelError> {
        let tokens: usize = lengths.iter().sum();
        if width == 0 || lengths.contains(&0) || states.len() != tokens * width {
            return Err(ModelError::Shape(format!(
                "{} values for sequence lengths {lengths:?} of width {width}",
                states.len()
            )));
        }
        Ok(Self {
            states,
            lengths,
            width,
        })
    }

    /// Every token's features, token after token.
    pub fn states(&self) -> &[f32] {
        &self.states
    }

    /// Each sequence's length in tokens.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Features per token.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Tokens in the batch, all sequences together.
    pub fn tokens(&self) -> usize {
        self.states.len() / self.width
    }

    /// Gives the states back.
    pub fn into_states(self) -> Vec<f32> {
        self.states
    }
}

/// The threads a forward pass runs on: a dedicated pool of `count` threads (or the
/// caller's own thread when `count` is 1). Cheap to clone; clones share the pool.
///
/// The way work is split depends only on `count`, so two runs with the same count give
/// the same bits.
#[derive(Clone)]
pub struct Threads {
    pool: Option<Arc<rayon::ThreadPool>>,
    count: usize,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads")
            .field("count", &self.count)
            .finish()
    }
}

impl Threads {
    /// A pool of `count` threads (none for 1: the caller's thread does the work).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for 0, [`ModelError::Io`] if a thread cannot start.
    pub fn new(count: usize) -> Result<Self, ModelError> {
        if count == 0 {
            return Err(ModelError::InvalidConfig(
                "forward threads must be at least 1",
            ));
        }
        let pool = if count == 1 {
            None
        } else {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(count)
                .thread_name(|i| format!("infercache-forward-{i}"))
                .build()
                .map_err(|e| ModelError::io("<thread>", std::io::Error::other(e)))?;
            Some(Arc::new(pool))
        };
        Ok(Self { pool, count })
    }

    /// One thread per core this process may use (`std::thread::available_parallelism`).
    ///
    /// # Errors
    /// [`ModelError::Io`] if a thread cannot start.
    pub fn available() -> Result<Self, ModelError> {
        Self::new(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Threads in the pool.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Runs `f` inside the pool, where rayon's parallel iterators use its threads.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

/// Runs `f` over `items`, in parallel when `parts > 1` (inside a [`Threads`] pool).
fn for_each<T: Send>(items: Vec<T>, parts: usize, f: impl Fn(T) + Sync + Send) {
    if parts > 1 && items.len() > 1 {
        use rayon::prelude::*;
        items.into_par_iter().for_each(f);
    } else {
        items.into_iter().for_each(f);
    }
}

/// Splits `rows` (each `width` long) into at most `parts` runs of whole rows, with the
/// index of each run's first row.
fn row_blocks(rows: &mut [f32], width: usize, parts: usize) -> Vec<(usize, &mut [f32])> {
    let count = rows.len() / width;
    let per = count.div_ceil(parts.max(1)).max(1);
    rows.chunks_mut(per * width)
        .enumerate()
        .map(|(i, block)| (i * per, block))
        .collect()
}
