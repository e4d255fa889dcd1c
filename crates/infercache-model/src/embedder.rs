//! The model itself: tokenizer, BERT encoder, mean pooling, L2 normalisation.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams, TruncationStrategy};

use crate::files::{CONFIG, TOKENIZER, WEIGHTS};
use crate::{ModelError, ModelFiles};

/// Dimensions of an embedding.
pub const DIMS: usize = 384;

/// Longest input the model sees, in tokens including `[CLS]` and `[SEP]`; longer inputs
/// are truncated (the tail is dropped). 256 is sentence-transformers' `max_seq_length`
/// for this model; the shipped `tokenizer.json` says 128, which we override.
pub const MAX_TOKENS: usize = 256;

/// all-MiniLM-L6-v2 loaded on the CPU in f32: a synchronous, thread-safe embedder.
///
/// Each [`embed`](Self::embed) call is one forward pass over one batch padded to its
/// longest input. It is CPU-bound and may take tens of milliseconds: async code goes
/// through [`InferencePool`](crate::InferencePool) instead of calling it directly.
pub struct Embedder {
    model: BertModel,
    /// Pads each batch to its longest input and truncates at [`MAX_TOKENS`].
    tokenizer: Tokenizer,
    /// Neither pads nor truncates: counts what the caller sent.
    counter: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dims", &DIMS)
            .field("max_tokens", &MAX_TOKENS)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the model. Every file's SHA-256 is checked again on the bytes loaded, so a
    /// file changed after `files` was made is refused with [`ModelError::Checksum`].
    pub fn load(files: &ModelFiles) -> Result<Self, ModelError> {
        let device = Device::Cpu;
        let config: Config = serde_json::from_slice(&files.read_verified(CONFIG)?)
            .map_err(|e| ModelError::Config(e.into()))?;
        let counter = Tokenizer::from_bytes(files.read_verified(TOKENIZER)?)?;
        let mut tokenizer = counter.clone();
        tokenizer
            .with_padding(Some(PaddingParams {
                strategy: PaddingStrategy::BatchLongest,
                ..PaddingParams::default()
            }))
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                strategy: TruncationStrategy::LongestFirst,
                ..TruncationParams::default()
            }))?;
        let counter = {
            let mut counter = counter;
            counter.with_padding(None).with_truncation(None)?;
            counter
        };
        let weights = VarBuilder::from_buffered_safetensors(
            files.read_verified(WEIGHTS)?,
            DType::F32,
            &device,
        )?;
        let model = BertModel::load(weights, &config)?;
        Ok(Self {
            model,
            tokenizer,
            counter,
            device,
        })
    }

    /// Dimensions of every embedding: 384.
    pub fn dims(&self) -> usize {
        DIMS
    }

    /// Tokens `text` has, counting `[CLS]` and `[SEP]`, before truncation: a count above
    /// [`MAX_TOKENS`] means the model sees only the first `MAX_TOKENS`.
    pub fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        Ok(self.counter.encode_fast(text, true)?.len())
    }

    /// Embeds `texts` in one forward pass: one unit-length vector of [`DIMS`] floats per
    /// text, in order. The batch is padded to its longest input (padding is masked out, so
    /// a text's vector does not depend on its batch-mates beyond float rounding).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self.tokenizer.encode_batch_fast(texts.to_vec(), true)?;
        let batch = encodings.len();
        let len = encodings.first().map_or(0, |e| e.len());
        let mut ids = Vec::with_capacity(batch * len);
        let mut mask = Vec::with_capacity(batch * len);
        for encoding in &encodings {
            ids.extend_from_slice(encoding.get_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (batch, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch, len), &self.device)?;
        let token_types = ids.zeros_like()?;

        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?; // (batch, len, DIMS)

        // Mean over the real tokens only, then L2 normalisation (as sentence-transformers'
        // Pooling(mean) + Normalize modules do).
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (batch, len, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (batch, DIMS)
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (batch, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}
