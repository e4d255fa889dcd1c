//! Text to token ids: the model's `tokenizer.json`, truncating, never padding.

use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use super::Tokens;
use crate::{MAX_TOKENS, ModelError};

/// The model's tokenizer, set up for the packed forward pass: each text becomes `[CLS]`,
/// its word pieces, `[SEP]`, truncated at [`MAX_TOKENS`] and never padded (the shipped
/// `tokenizer.json` pads and truncates at 128; both are overridden).
#[derive(Clone)]
pub struct TextTokenizer {
    /// Truncates at [`MAX_TOKENS`].
    truncating: Tokenizer,
    /// Neither pads nor truncates: counts what the caller sent.
    counting: Tokenizer,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("max_tokens", &MAX_TOKENS)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads a `tokenizer.json`.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] if it does not parse.
    pub fn from_bytes(bytes: impl AsRef<[u8]>) -> Result<Self, ModelError> {
        let mut counting = Tokenizer::from_bytes(bytes)?;
        counting.with_padding(None).with_truncation(None)?;
        let mut truncating = counting.clone();
        truncating.with_truncation(Some(TruncationParams {
            max_length: MAX_TOKENS,
            strategy: TruncationStrategy::LongestFirst,
            ..TruncationParams::default()
        }))?;
        Ok(Self {
            truncating,
            counting,
        })
    }

    /// Token ids of every text, in order, each truncated at [`MAX_TOKENS`].
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] if the tokenizer fails on a text.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Tokens, ModelError> {
        let encodings = self.truncating.encode_batch_fast(texts.to_vec(), true)?;
        let lengths: Vec<usize> = encodings.iter().map(tokenizers::Encoding::len).collect();
        let mut ids = Vec::with_capacity(lengths.iter().sum());
        for encoding in &encodings {
            ids.extend_from_slice(encoding.get_ids());
        }
        Tokens::new(ids, lengths)
    }

    /// Tokens `text` has, counting `[CLS]` and `[SEP]`, before truncation.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] if the tokenizer fails on `text`.
    pub fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        Ok(self.counting.encode_fast(text, true)?.len())
    }
}
