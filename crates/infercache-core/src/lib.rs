//! The light core of infercache: everything every other crate needs and nothing heavy.
//!
//! - [`key`]: cache keys. A [`Digest`] is BLAKE3-256 over an unambiguous, length-prefixed
//!   encoding of [`KeyParts`] (schema version, namespace, model, version, artifact digest,
//!   epochs, canonical input, output-affecting parameters).
//! - [`canonical`]: one byte string per meaning for JSON inputs and tensors, so that
//!   `{"a":1,"b":2}` and `{ "b": 2.0, "a": 1 }` share an entry.
//! - [`encode`]: length-prefixed fields, the one writer of every canonical byte form.
//! - [`clock`]: the injected time source; cache logic never reads the wall clock itself.
//! - [`stats`]: contention-free counters and the serializable snapshots built from them.
//! - [`size`]: byte sizes as operators write them (`512MiB`, or `0.3` of RAM).
//! - [`redact`]: URLs with their passwords replaced, for logs, errors and stats.
//! - [`error`]: the crate's typed error.
//! - `tls` (feature `tls`): the one builder of the workspace's HTTP clients (rustls).
//!
//! The engine (`infercache-engine`) builds the tiers on top of this crate; servers and
//! clients depend on it for the key schema without pulling in the engine.

pub mod canonical;
pub mod clock;
pub mod encode;
pub mod error;
pub mod key;
pub mod redact;
pub mod size;
pub mod stats;
#[cfg(feature = "tls")]
pub mod tls;

pub use canonical::CanonicalInput;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use error::CoreError;
pub use key::{Digest, Epochs, KEY_SCHEMA_VERSION, KeyParts};
pub use redact::{redact_url, server_identity};
pub use size::Capacity;
