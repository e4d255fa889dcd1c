//! Text to token ids: the model's `tokenizer.json`, truncating, never padding.

use tokenizers::Tokenizer;

use super::Tokens;
use crate::{MAX_TOKENS, ModelError};

/// The model's tokenizer, set up for the packed forward pass: each text becomes `[CLS]`,
/// its word pieces, `[SEP]`, truncated at [`MAX_TOKENS`] and never padded (the shipped
/// `tokenizer.json` pads and truncates at 128; both are overridden).
///
/// One tokenizer, which neither pads nor truncates, serves both [`tokenize`](Self::tokenize)
/// and [`count_tokens`](Self::count_tokens): truncation is done here, on the ids, as the
/// library's own right-side truncation does it for this tokenizer (`[CLS]`, the first
/// `MAX_TOKENS - 2` word pieces, `[SEP]`; the library also tokenizes a text whole before
/// truncating it). A second, truncating copy would hold the vocabulary twice (about 3 MiB).
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
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
        let mut tokenizer = Tokenizer::from_bytes(bytes)?;
        tokenizer.with_padding(None).with_truncation(None)?;
        Ok(Self { tokenizer })
    }

    /// Token ids of every text, in order, each truncated at [`MAX_TOKENS`].
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] if the tokenizer fails on a text.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Tokens, ModelError> {
        let encodings = self.tokenizer.encode_batch_fast(texts.to_vec(), true)?;
        let lengths: Vec<usize> = encodings.iter().map(|e| e.len().min(MAX_TOKENS)).collect();
        let mut ids = Vec::with_capacity(lengths.iter().sum());
        for encoding in &encodings {
            ids.extend_from_slice(&truncated(encoding.get_ids()));
        }
        Tokens::new(ids, lengths)
    }

    /// Tokens `text` has, counting `[CLS]` and `[SEP]`, before truncation.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] if the tokenizer fails on `text`.
    pub fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        Ok(self.tokenizer.encode_fast(text, true)?.len())
    }
}

/// `ids` (`[CLS]`, word pieces, `[SEP]`) cut to [`MAX_TOKENS`]: the first `MAX_TOKENS - 1`
/// and the closing `[SEP]`.
fn truncated(ids: &[u32]) -> std::borrow::Cow<'_, [u32]> {
    match ids.split_last() {
        Some((&sep, _)) if ids.len() > MAX_TOKENS => {
            let mut kept = ids[..MAX_TOKENS - 1].to_vec();
            kept.push(sep);
            kept.into()
        }
        _ => ids.into(),
    }
}
