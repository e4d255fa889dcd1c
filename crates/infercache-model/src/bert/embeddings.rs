//! The embeddings component: word + position + token type, then a layer norm.

use safetensors::SafeTensors;

use super::kernels::{Kernel, layer_norm, vectorized};
use super::weights::Tensors;
use super::{BertConfig, Hidden, Threads, Tokens, for_each, row_blocks};
use crate::ModelError;

/// BERT's embeddings: for the token at position `p` of its sequence, the sum of its word
/// embedding, position `p`'s embedding and token type 0's, layer-normalised.
///
/// Built from the tensors `embeddings.word_embeddings.weight`,
/// `embeddings.position_embeddings.weight`, `embeddings.token_type_embeddings.weight` and
/// `embeddings.LayerNorm.{weight,bias}`.
#[derive(Clone, PartialEq)]
pub struct Embeddings {
    words: Vec<f32>,
    positions: Vec<f32>,
    token_type: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    width: usize,
    vocab: usize,
    max_positions: usize,
    eps: f32,
}

impl std::fmt::Debug for Embeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embeddings")
            .field("vocab", &self.vocab)
            .field("width", &self.width)
            .field("max_positions", &self.max_positions)
            .finish_non_exhaustive()
    }
}

impl Embeddings {
    /// Loads the component from `tensors` (F32, F16 or BF16; kept as `f32`).
    ///
    /// # Errors
    /// [`ModelError::Weights`] naming a tensor that is missing or has the wrong shape or
    /// dtype.
    pub fn load(tensors: &SafeTensors<'_>, config: &BertConfig) -> Result<Self, ModelError> {
        Self::from_tensors(&Tensors::new(tensors), config)
    }

    /// [`load`](Self::load) from tensors however they were read.
    pub(crate) fn from_tensors(
        t: &Tensors<'_, '_>,
        config: &BertConfig,
    ) -> Result<Self, ModelError> {
        let width = config.hidden_size;
        let words = t.get(
            "embeddings.word_embeddings.weight",
            &[config.vocab_size, width],
        )?;
        let positions = t.get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, width],
        )?;
        let types = t.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, width],
        )?;
        let (gamma, beta) = t.layer_norm("embeddings.LayerNorm", width)?;
        Ok(Self {
            words,
            positions,
            token_type: types[..width].to_vec(),
            gamma,
            beta,
            width,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            eps: config.eps(),
        })
    }

    /// The first hidden states of `tokens`.
    ///
    /// # Errors
    /// [`ModelError::Shape`] for a token id outside the vocabulary or a sequence longer
    /// than the position embeddings.
    pub fn forward(&self, tokens: &Tokens, threads: &Threads) -> Result<Hidden, ModelError> {
        if let Some(&id) = tokens.ids().iter().find(|&&id| id as usize >= self.vocab) {
            return Err(ModelError::Shape(format!(
                "token id {id} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        if let Some(&len) = tokens.lengths().iter().find(|&&l| l > self.max_positions) {
            return Err(ModelError::Shape(format!(
                "a sequence of {len} tokens is longer than the {} positions",
                self.max_positions
            )));
        }
        let w = self.width;
        let positions: Vec<usize> = tokens.lengths().iter().flat_map(|&len| 0..len).collect();
        let mut states = vec![0.0; tokens.ids().len() * w];
        threads.run(|| {
            let blocks = row_blocks(&mut states, w, threads.count());
            for_each(blocks, threads.count(), |(first, block)| {
                vectorized(EmbedRows {
                    embeddings: self,
                    ids: &tokens.ids()[first..],
                    positions: &positions[first..],
                    block,
                });
            });
        });
        Hidden::new(states, tokens.lengths().to_vec(), w)
    }
}

/// Embeddings of a run of tokens into `block`.
struct EmbedRows<'a> {
    embeddings: &'a Embeddings,
    ids: &'a [u32],
    positions: &'a [usize],
    block: &'a mut [f32],
}

impl Kernel for EmbedRows<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let e = self.embeddings;
        let w = e.width;
        for (t, row) in self.block.chunks_exact_mut(w).enumerate() {
            let word = &e.words[self.ids[t] as usize * w..][..w];
            let pos = &e.positions[self.positions[t] * w..][..w];
            for (((x, a), b), c) in row.iter_mut().zip(word).zip(pos).zip(&e.token_type) {
                *x = a + c + b;
            }
            layer_norm(row, &e.gamma, &e.beta, e.eps);
        }
    }
}
