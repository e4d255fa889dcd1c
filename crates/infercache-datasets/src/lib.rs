//! infercache's dataset cache: preprocess a dataset once, keep it as Arrow IPC shards
//! named by a fingerprint that misses no change, and stream it back in batches at disk
//! speed, within a byte cap.
//!
//! # Parts
//!
//! - [`fingerprint`]: a BLAKE3 chain over the sources' content and each step's id,
//!   declared version, canonical parameters and output schema; [`fingerprint::explain`]
//!   says in words why two chains differ.
//! - [`step`]: `tokenize` (the built-in model's tokenizer), `embed` (any
//!   [`TextEmbedder`], found through [`Embedders`]), `cmd:VERSION:COMMAND` (an external
//!   command over JSON lines), and the [`Step`] trait for steps written in Rust.
//! - [`DatasetCache`], with [`cache_dataset`](DatasetCache::cache_dataset),
//!   [`get_dataset`](DatasetCache::get_dataset) and
//!   [`stream_dataset`](DatasetCache::stream_dataset) (LlamaHome's names), and `ls`,
//!   `rm`, `prune`, `clear`, `verify`, `audit`, `explain`. Builds are crash-safe with a
//!   journal (a killed build recomputes at most the shard in flight).
//! - [`DatasetStream`]: batches (default 32 rows) prefetched (default 4) from
//!   memory-mapped shards, zero-copy (or shards read with plain reads:
//!   [`DatasetConfig::use_mmap`]), each validated by Arrow once per cache; deterministic shuffle from a seed and an epoch; a
//!   resume token that continues mid-epoch with exactly the remaining sequence.
//! - [`BatchWriter`]: batches as an Arrow IPC stream or JSON lines ([`OutputFormat`]),
//!   as `datasets stream` and the server's batches route send them;
//!   [`DatasetCache::details`]: a dataset in full, as `show --json` and the server's
//!   dataset route give it.
//! - [`settings`]: LlamaHome's `[cache]` keys (`memory_size`, `disk_size`, `policy`,
//!   `eviction_threshold`, `cleanup_interval`, `[cache.disk] path`, `use_mmap`), from a
//!   TOML file, `INFERCACHE_CACHE_*` variables and flags, into [`CacheSettings`].
//!
//! # Storage and size
//!
//! Shards are blobs of an [`infercache_artifact::Store`] in the class `datasets`, capped
//! at `disk_size` bytes with a policy (`lru` by default). A shard the cap evicted, or one
//! that fails its digest, is recomputed from its source rows when next read, and checked
//! against the manifest: it is never served otherwise. Shards a live stream reads are
//! never evicted, nor are those of a dataset whose only copy is the cache (built from rows
//! in memory or by a Rust step, or whose source files changed or are gone): they are
//! pinned. A cap below two shards is refused.
//!
//! In front of the store, a memory tier of `memory_size` bytes (default 1,000 MB;
//! [`DatasetCache::memory`]) holds decoded shards in this process's memory, charged by
//! their bytes, evicted by the same policy: a stream reads a shard from it when it holds
//! the shard, and otherwise from its memory map, copying it into the tier when the policy
//! makes room. Its bytes never exceed its cap, so a stream over a dataset larger than it
//! holds at most `memory_size` plus the shards in flight in memory.
//!
//! Shards are Arrow IPC *files*, uncompressed: `pyarrow.ipc.open_file(path)` reads them as
//! they are (`infercache datasets show NAME --json` lists their paths).

mod cache;
mod details;
mod error;
pub mod fingerprint;
mod manifest;
mod memory;
mod output;
pub mod settings;
mod shard;
mod source;
pub mod step;
mod stream;

pub use cache::{
    Audit, BuildOptions, Built, DEFAULT_SHARD_ROWS, Dataset, DatasetCache, DatasetConfig,
    DatasetInfo, DatasetSource, DatasetVerify, SHARD_CLASS, StepSpec,
};
pub use details::{DatasetDetails, ShardFile, check_key};
pub use error::DatasetError;
pub use fingerprint::{Fingerprint, Link, StepDecl};
pub use manifest::{MANIFEST_FORMAT, Manifest, NameRecord, Origin, ShardEntry};
pub use memory::MemoryStats;
pub use output::{BatchWriter, OutputFormat};
pub use settings::{CACHE_VARIABLES, CacheKeys, CacheSettings};
pub use source::{Format, SourceFile};
pub use step::{Embedders, Step, StepContext, TextEmbedder, fields};
pub use stream::{DatasetStream, StreamOptions, StreamStats};
