//! What the streaming client needs of a model: build each component from its chunk, run
//! it. The client fetches, verifies, caches and prefetches chunks; an [`Architecture`]
//! turns a verified chunk into a component and runs the forward pass one component at a
//! time: embeddings, then each layer, then pooling.
//!
//! [`bert::Bert`] implements it for BERT with the built-in model's own components
//! (`infercache_model::bert`), so a streamed forward pass runs the built-in model's code.

pub mod bert;

/// A model run one component at a time.
///
/// Every method is synchronous and may take milliseconds (the loads convert tensors, the
/// forward steps are inference): the client calls them on blocking threads, never on an
/// async worker.
pub trait Architecture: Send + Sync + Sized + 'static {
    /// The embeddings, built from the `embeddings` chunk.
    type Embeddings: Send + Sync + 'static;
    /// One encoder layer, built from its `layer_{i}` chunk.
    type Layer: Send + Sync + 'static;
    /// A tokenized batch of texts.
    type Tokens: Send + 'static;
    /// The activations between two steps of a forward pass.
    type State: Send + 'static;
    /// What can go wrong.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The architecture a model's `config.json` and `tokenizer.json` describe, running
    /// each forward pass on `threads` threads (the results depend on the input and the
    /// thread count only).
    ///
    /// # Errors
    /// A config this architecture cannot run, a tokenizer that does not load, or threads
    /// that cannot start.
    fn from_files(config: &[u8], tokenizer: &[u8], threads: usize) -> Result<Self, Self::Error>;

    /// Encoder layers.
    fn num_layers(&self) -> usize;

    /// Threads a forward pass runs on.
    fn threads(&self) -> usize;

    /// Tokenizes a batch of texts.
    ///
    /// # Errors
    /// The tokenizer's.
    fn tokenize(&self, texts: &[&str]) -> Result<Self::Tokens, Self::Error>;

    /// Builds the embeddings from the bytes of their (verified) chunk; with the bytes of
    /// tensor data they hold.
    ///
    /// # Errors
    /// A chunk that does not hold the embeddings' tensors.
    fn load_embeddings(&self, chunk: &[u8]) -> Result<(Self::Embeddings, u64), Self::Error>;

    /// Builds layer `index` from the bytes of its (verified) chunk; with the bytes of
    /// tensor data it holds.
    ///
    /// # Errors
    /// A chunk that does not hold that layer's tensors.
    fn load_layer(&self, index: usize, chunk: &[u8]) -> Result<(Self::Layer, u64), Self::Error>;

    /// The first step of a forward pass: the embeddings of `tokens`.
    ///
    /// # Errors
    /// The runtime's error (a token id or length the embeddings cannot take).
    fn begin(
        &self,
        embeddings: &Self::Embeddings,
        tokens: &Self::Tokens,
    ) -> Result<Self::State, Self::Error>;

    /// One layer of the forward pass.
    ///
    /// # Errors
    /// The runtime's error.
    fn forward_layer(
        &self,
        layer: &Self::Layer,
        state: Self::State,
    ) -> Result<Self::State, Self::Error>;

    /// The last step: one embedding per text of the batch.
    ///
    /// # Errors
    /// The runtime's error.
    fn finish(&self, state: Self::State) -> Result<Vec<Vec<f32>>, Self::Error>;
}
