//! The client's disk tier: chunks kept on local disk between runs, on
//! `infercache-artifact`'s [`Store`].
//!
//! - **Content-addressed**: a chunk is stored and found by its SHA-256 (the manifest's),
//!   so models and servers that share a chunk's bytes share its file, and a re-chunked
//!   model never finds an old copy under a new digest.
//! - **Size-capped, least recently used first out**: one class, `chunks`, with the cap
//!   given and the `lru` policy (recency persisted across runs); eviction on every insert.
//! - **Safe for several processes**: the store's fetch lock per blob makes concurrent
//!   misses of one chunk, in any process, download it once; the others then read it.
//! - **Resumable**: a download lives in the store's partial file while it arrives; one cut
//!   short (a crash, a dropped connection) is resumed by the next run with a `Range`
//!   request from where it stopped. Its bytes are hashed again before resuming, and a
//!   resumed chunk that fails its digest is fetched once more from the start.
//! - **Verified**: a blob whose file changed since it was verified is hashed again before
//!   it is used ([`Store::open_verified`]); a damaged one is dropped and fetched again.
//!
//! The disk is a cache: a write that fails is logged and the chunk, already verified in
//! memory, is used anyway. The store's calls block; they run on the blocking pool, and a
//! download's writes go to one blocking task through a bounded channel.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use infercache_artifact::{ArtifactError, ClassConfig, Digest, Policy, Store, StoreConfig};
use infercache_core::SystemClock;
use tokio::sync::{mpsc, oneshot};

use super::error::ClientError;

/// The store class chunks live in.
const CLASS: &str = "chunks";

/// Pieces queued between a download and its writer.
const WRITE_QUEUE: usize = 8;

/// Where and how much the disk tier keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The store's directory (created if missing; shared by every process that uses it).
    pub dir: PathBuf,
    /// Bytes of chunks kept; past it the least recently used go.
    pub max_bytes: u64,
}

/// The open store.
#[derive(Debug, Clone)]
pub(crate) struct DiskTier {
    store: Arc<Store>,
}

/// What a download finds when it takes a chunk's lock.
pub(crate) enum Begin {
    /// Another fetch (another process) stored it meanwhile.
    Stored(Bytes),
    /// Download it: the bytes a cut-short download left, and where the rest goes.
    Download { so_far: Vec<u8>, writer: Writer },
    /// The disk cannot take it (logged): download to memory only.
    Unavailable,
}

enum Op {
    Piece(Bytes),
    Restart,
    Commit(oneshot::Sender<Result<(), ArtifactError>>),
}

/// The writer of one download: its pieces go to the chunk's partial file, in order, on a
/// blocking task that holds the chunk's lock. Dropped without a commit, the bytes so far
/// stay for the next run to resume from.
pub(crate) struct Writer {
    ops: mpsc::Sender<Op>,
}

fn disk_error(e: ArtifactError) -> ClientError {
    ClientError::Disk {
        source: Arc::new(e),
    }
}

impl DiskTier {
    /// Opens (creating) the store of `config` (blocking, on the blocking pool).
    pub(crate) async fn open(config: &DiskConfig) -> Result<Self, ClientError> {
        let store_config =
            StoreConfig::single(CLASS, ClassConfig::new(config.max_bytes, Policy::Lru));
        let dir = config.dir.clone();
        let store = tokio::task::spawn_blocking(move || {
            Store::open(dir, store_config, SystemClock::shared())
        })
        .await
        .map_err(|e| ClientError::Inference {
            source: Arc::new(e),
        })?
        .map_err(disk_error)?;
        Ok(Self {
            store: Arc::new(store),
        })
    }

    /// The chunk `sha256` names, if it is on disk and intact.
    pub(crate) async fn get(&self, sha256: &str) -> Option<Bytes> {
        let digest = Digest::sha256_hex(sha256).ok()?;
        let store = Arc::clone(&self.store);
        let read = tokio::task::spawn_blocking(move || read(&store, &digest)).await;
        match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => {
                tracing::warn!(%error, sha256, "the disk tier could not read a chunk; fetching it");
                None
            }
            Err(_) => None,
        }
    }

    /// Takes the lock of the chunk `sha256` names for a download (waiting while another
    /// process downloads it).
    pub(crate) async fn begin(&self, sha256: &str) -> Begin {
        let Ok(digest) = Digest::sha256_hex(sha256) else {
            return Begin::Unavailable;
        };
        let store = Arc::clone(&self.store);
        let (started_tx, started_rx) = oneshot::channel();
        let (ops_tx, ops_rx) = mpsc::channel(WRITE_QUEUE);
        tokio::task::spawn_blocking(move || write(&store, &digest, started_tx, ops_rx));
        match started_rx.await {
            Ok(Ok(Some(so_far))) => Begin::Download {
                so_far,
                writer: Writer { ops: ops_tx },
            },
            Ok(Ok(None)) => match self.get(sha256).await {
                Some(bytes) => Begin::Stored(bytes),
                None => Begin::Unavailable,
            },
            Ok(Err(error)) => {
                tracing::warn!(%error, sha256, "the disk tier cannot take a chunk; fetching to memory only");
                Begin::Unavailable
            }
            Err(_) => Begin::Unavailable,
        }
    }
}

impl Writer {
    /// Appends `piece`.
    pub(crate) async fn push(&self, piece: Bytes) {
        // A writer that stopped (a disk error, logged) takes nothing more.
        let _ = self.ops.send(Op::Piece(piece)).await;
    }

    /// Drops the bytes so far.
    pub(crate) async fn restart(&self) {
        let _ = self.ops.send(Op::Restart).await;
    }

    /// Verifies and stores the chunk (the store hashes the file once more).
    pub(crate) async fn commit(self) {
        let (tx, rx) = oneshot::channel();
        if self.ops.send(Op::Commit(tx)).await.is_err() {
            return;
        }
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the disk tier could not store a chunk"),
            Err(_) => {}
        }
    }
}

fn read(store: &Store, digest: &Digest) -> Result<Option<Bytes>, ArtifactError> {
    match store.open_verified(digest) {
        Ok(Some(blob)) => Ok(Some(Bytes::from(blob.read_all()?))),
        Ok(None) => Ok(None),
        // Dropped by the store; fetched again.
        Err(ArtifactError::Corrupt { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The writer's task: takes the chunk's partial (and its lock), reports the bytes so far
/// (`None` when the chunk is stored already), then applies every op until a commit or the
/// channel's end.
fn write(
    store: &Store,
    digest: &Digest,
    started: oneshot::Sender<Result<Option<Vec<u8>>, ArtifactError>>,
    mut ops: mpsc::Receiver<Op>,
) {
    let mut partial = match store.partial(CLASS, digest) {
        Ok(Some(p)) => p,
        Ok(None) => {
            let _ = started.send(Ok(None));
            return;
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    match partial.read_so_far() {
        Ok(so_far) => {
            if started.send(Ok(Some(so_far))).is_err() {
                return;
            }
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    }
    let mut failed = false;
    while let Some(op) = ops.blocking_recv() {
        match op {
            Op::Piece(piece) if !failed => {
                if let Err(error) = std::io::Write::write_all(&mut partial, &piece) {
                    tracing::warn!(%error, "the disk tier could not write a chunk");
                    failed = true;
                }
            }
            Op::Piece(_) => {}
            Op::Restart => {
                failed = partial.restart().is_err();
            }
            Op::Commit(reply) => {
                let result = if failed {
                    // Start over next time rather than resume from bytes that may be
                    // missing a piece.
                    partial.restart()
                } else {
                    partial.commit().map(|_| ())
                };
                let _ = reply.send(result);
                return;
            }
        }
    }
}
