//! infercache's artifact store: one content-addressed local store for model files,
//! weight chunks and dataset shards.
//!
//! - **Blobs by digest.** A blob is named by the BLAKE3 of its bytes ([`Digest`]); its
//!   SHA-256 is computed on insert too, so a file published with a SHA-256 (a model on the
//!   Hugging Face hub, a weight chunk) is found and checked by that digest.
//! - **Integrity on insert.** Bytes are hashed as they are written; an insert that names
//!   the digest it expects stores nothing unless the bytes match
//!   ([`ArtifactError::DigestMismatch`]). [`Store::open_verified`] re-hashes a blob whose
//!   file changed since it was last verified and never returns a corrupt one.
//! - **Crash-safe writes**: temporary file, fsync, rename, fsync of the directory; what a
//!   killed process leaves is removed by the next [`Store::open`] (see [`store`]).
//! - **One fetch per blob.** [`Store::get_or_fetch`] runs its fetch once for concurrent
//!   misses of one blob, across threads and processes (a lock file per blob); the
//!   download lives in a [`Partial`] that survives a crash and resumes where it stopped.
//! - **Classes with caps and policies** ([`StoreConfig`], [`ClassConfig`], [`Policy`]):
//!   `lru` (recency persisted across restarts), `fifo`, `time` (`max_age`) and `size`
//!   (largest first), with an eviction threshold. The defaults are `models` 1 GiB `lru`,
//!   `training` 512 MiB `fifo`, `system` 256 MiB `time` with 86,400 s. Eviction runs on
//!   every insert and on [`Store::prune`]; a class's usage never exceeds its cap. A blob
//!   its `time` policy has expired is never served (a read is a miss); it is removed at
//!   the next insert, [`Store::open`], prune, or pass of the background [`Cleaner`]
//!   ([`Store::spawn_cleanup`], every [`DEFAULT_CLEANUP_INTERVAL`] unless told otherwise).
//! - **Pins**: [`Store::pin`] (persisted), and every open [`Blob`] or reader (a shared
//!   lock on its file, released exactly when the last of them goes): neither is ever
//!   evicted. A [`Mapped`] view stays valid after eviction but does not prevent it.
//! - **Snapshots**: a name for a set of files ([`Snapshot`]).
//!
//! Every call blocks on file I/O; async callers run it on a blocking thread.

mod blob;
mod cleanup;
mod config;
mod digest;
mod error;
mod policy;
mod snapshot;
pub mod store;

pub use blob::{Blob, Mapped};
pub use cleanup::{Cleaner, DEFAULT_CLEANUP_INTERVAL};
pub use config::{ClassConfig, DEFAULT_EVICTION_THRESHOLD, DEFAULT_MAX_AGE, Policy, StoreConfig};
pub use digest::Digest;
pub use error::ArtifactError;
pub use snapshot::{Snapshot, SnapshotFile};
pub use store::{
    BlobInfo, ClassUsage, Evicted, Fetched, Inserted, Partial, PruneReport, Store, StoreStats,
    VerifyReport,
};
