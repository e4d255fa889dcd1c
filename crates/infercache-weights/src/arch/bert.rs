//! BERT, one component at a time, on the built-in model's own components.
//!
//! `infercache_model::bert` loads each component from its tensors by their original
//! names ([`Embeddings::load`] reads `embeddings.*`, [`Layer::load`] reads
//! `encoder.layer.{i}.*`) and runs it on packed, unpadded activations; the built-in
//! [`Embedder`](infercache_model::Embedder) runs exactly these steps in this order. A
//! streamed forward pass over the same texts on the same thread count therefore gives
//! the built-in model's bits.

use infercache_model::ModelError;
use infercache_model::bert::{
    BertConfig, Embeddings, Hidden, Layer, MeanPooling, TextTokenizer, Threads, Tokens,
};
use safetensors::SafeTensors;

use super::Architecture;

/// BERT on the CPU in f32 (F16 and BF16 chunks are widened as they are loaded).
#[derive(Debug, Clone)]
pub struct Bert {
    config: BertConfig,
    tokenizer: TextTokenizer,
    threads: Threads,
}

impl Bert {
    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }
}

/// Bytes the f32 values of a chunk's floating-point tensors named `prefix*` take once
/// loaded: what the component holds in memory.
fn loaded_bytes(tensors: &SafeTensors<'_>, prefix: &str) -> u64 {
    tensors
        .tensors()
        .iter()
        .filter(|(name, view)| {
            name.starts_with(prefix)
                && matches!(
                    view.dtype(),
                    safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
                )
        })
        .map(|(_, view)| (view.shape().iter().product::<usize>() * 4) as u64)
        .sum()
}

impl Architecture for Bert {
    type Embeddings = Embeddings;
    type Layer = Layer;
    type Tokens = Tokens;
    type State = Hidden;
    type Error = ModelError;

    fn from_files(config: &[u8], tokenizer: &[u8], threads: usize) -> Result<Self, ModelError> {
        Ok(Self {
            config: BertConfig::from_json(config)?,
            tokenizer: TextTokenizer::from_bytes(tokenizer)?,
            threads: Threads::new(threads)?,
        })
    }

    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    fn threads(&self) -> usize {
        self.threads.count()
    }

    fn tokenize(&self, texts: &[&str]) -> Result<Tokens, ModelError> {
        self.tokenizer.tokenize(texts)
    }

    fn load_embeddings(&self, chunk: &[u8]) -> Result<(Embeddings, u64), ModelError> {
        let tensors = SafeTensors::deserialize(chunk)?;
        let embeddings = Embeddings::load(&tensors, &self.config)?;
        Ok((embeddings, loaded_bytes(&tensors, "embeddings.")))
    }

    fn load_layer(&self, index: usize, chunk: &[u8]) -> Result<(Layer, u64), ModelError> {
        let tensors = SafeTensors::deserialize(chunk)?;
        let layer = Layer::load(&tensors, index, &self.config)?;
        Ok((
            layer,
            loaded_bytes(&tensors, &format!("encoder.layer.{index}.")),
        ))
    }

    fn begin(&self, embeddings: &Embeddings, tokens: &Tokens) -> Result<Hidden, ModelError> {
        embeddings.forward(tokens, &self.threads)
    }

    fn forward_layer(&self, layer: &Layer, state: Hidden) -> Result<Hidden, ModelError> {
        layer.forward(&state, &self.threads)
    }

    fn finish(&self, state: Hidden) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(MeanPooling.forward(&state))
    }
}
