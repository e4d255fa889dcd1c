//! Model weights by layer: a chunker, a weight server and a streaming client.
//!
//! ```text
//!  model dir ──chunk──► chunk dir: embeddings / layer_{i} / pooler .safetensors,
//!                                  config.json, tokenizer.json, chunk_info.json (sha256s)
//!  chunk dir ──serve──► GET /v1/weights/{model}/chunks/{name}   (ETag = sha256, Range)
//!                          └ memory: byte-bounded LRU, single flight
//!                             └ Redis (shared by servers, sha256-checked) └ files (checked)
//!  client  ◄──HTTP───  StreamingModel: manifest, embeddings, then layer by layer
//!                          └ layer cache (count, bytes), prefetch, every chunk verified
//!                             └ disk tier (optional): content-addressed, LRU, resumable
//! ```
//!
//! # Parts
//!
//! - [`manifest`]: `chunk_info.json`, a superset of Surfing Weights' manifest with every
//!   chunk's size, SHA-256, tensors and source range.
//! - [`chunk`]: [`chunk_model`], a Hugging Face model directory (single file or shards)
//!   into one safetensors file per component, written atomically and idempotently;
//!   [`verify`]: [`verify_dir`], every digest checked.
//! - [`server`]: [`WeightServer`], the routes as an axum `Router` (to serve alone or mount
//!   in another server), the cache on `infercache-engine` with `infercache-redis` as the
//!   shared tier, stats and metrics.
//! - [`client`]: [`StreamingModel`] / [`StreamingBertModel`]: `connect`, `embed`,
//!   `warmup`, prefetch with in-flight de-duplication, `set_cache_size`,
//!   `inference_stats`, `cache_info`, `clear_cache`; an optional disk tier for chunks
//!   ([`client::disk`], on `infercache-artifact`'s store).
//! - [`builtin`]: [`fetch_builtin`], the built-in model's
//!   [`Embedder`](infercache_model::Embedder) built from a weight server's chunks (no
//!   local copy), named in cache keys by the digest of its tensors.
//! - [`arch`]: the [`Architecture`] trait the client runs (build a component from its
//!   chunk, run it), and BERT on the built-in model's components
//!   (`infercache_model::bert`), so a streamed pass gives the built-in model's bits.
//!
//! # The client, in use
//!
//! ```no_run
//! # async fn run() -> Result<(), infercache_weights::ClientError> {
//! use infercache_weights::StreamingBertModel;
//!
//! let model = StreamingBertModel::connect("http://127.0.0.1:8765", "all-MiniLM-L6-v2", 3).await?;
//! model.warmup(None).await?; // the first min(cache_size, num_layers) layers
//! let vectors = model.embed(&["hello", "world"]).await?; // mean pooling, L2-normalised
//! assert_eq!(vectors.len(), 2);
//! model.set_cache_size(1)?; // evicts down to 1 at once
//! println!("{:?}", model.inference_stats());
//! println!("{:?}", model.cache_info());
//! model.clear_cache();
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Typed per part: [`ChunkError`], [`manifest::ManifestError`], [`ServerError`] (start-up)
//! and [`WeightsApiError`] (requests, with their one HTTP mapping), [`ClientError`] (every
//! variant about a chunk names it). Problems found by `verify` are values
//! ([`verify::Problem`]).

pub mod arch;
pub mod builtin;
pub mod chunk;
pub mod client;
pub mod digest;
mod fsio;
pub mod manifest;
pub mod progress;
pub mod server;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod verify;

pub use arch::Architecture;
pub use builtin::{StreamedBuiltin, fetch_builtin};
pub use chunk::{ChunkError, ChunkOptions, ChunkReport, chunk_model};
pub use client::{
    CacheInfo, ClientConfig, ClientError, InferenceStats, StreamingBertModel, StreamingModel,
};
pub use manifest::Manifest;
pub use progress::{NoProgress, Progress};
pub use server::{ServerConfig, ServerError, WeightServer, WeightsApiError};
pub use verify::{VerifyReport, verify_dir};
