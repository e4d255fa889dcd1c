//! Write-back: memory is written at once, the disk tier from a bounded queue that a
//! background task drains in order (see "Writes" in [`crate::cache`]).

use std::future::Future;
use std::sync::Weak;

use dashmap::mapref::entry::Entry;
use infercache_core::Digest;
use infercache_core::stats::Counter;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::Inner;
use crate::memory::{MemEntry, NEVER};

/// One queued operation on the disk tier.
#[derive(Debug)]
pub(super) enum WriteOp {
    Put { key: Digest, entry: MemEntry },
    Remove { key: Digest },
    Clear,
    Flush(oneshot::Sender<()>),
}

/// The queue and its drainer.
#[derive(Debug)]
pub(super) struct WriteBack {
    pub(super) tx: mpsc::Sender<WriteOp>,
    /// Writes dropped because the queue was full.
    pub(super) dropped: Counter,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl WriteBack {
    /// A queue of `queue` operations (at least one), and its receiving end for [`drain`].
    pub(super) fn new(queue: usize) -> (Self, mpsc::Receiver<WriteOp>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let wb = Self {
            tx,
            dropped: Counter::default(),
            task: Mutex::new(None),
        };
        (wb, rx)
    }

    /// Starts the drainer on `rt`.
    pub(super) fn start(
        &self,
        rt: &tokio::runtime::Handle,
        drain: impl Future<Output = ()> + Send + 'static,
    ) {
        *self.task.lock() = Some(rt.spawn(drain));
    }

    /// Waits until every operation queued before this call has been applied.
    pub(super) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(WriteOp::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Operations waiting in the queue.
    pub(super) fn queued(&self) -> u64 {
        (self.tx.max_capacity() - self.tx.capacity()) as u64
    }
}

impl Inner {
    /// Counts one applied queued removal of `key` (see `pending_removals`).
    pub(super) fn finish_pending_removal(&self, key: &Digest) {
        if let Entry::Occupied(mut e) = self.pending_removals.entry(*key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Applies queued write-back operations in order, in batches, off the async workers.
pub(super) async fn drain(inner: Weak<Inner>, mut rx: mpsc::Receiver<WriteOp>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(disk) = &inner.disk else {
            return;
        };
        let ops = std::mem::take(&mut batch);
        let (removed, acks) = disk.run(move |d| apply(d, ops)).await;
        for key in &removed {
            inner.finish_pending_removal(key);
        }
        inner.charge_disk_index();
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Applies `ops` to the disk tier in order; the keys removed and the flushes to answer.
fn apply(d: &crate::disk::DiskTier, ops: Vec<WriteOp>) -> (Vec<Digest>, Vec<oneshot::Sender<()>>) {
    let mut acks = Vec::new();
    let mut removed = Vec::new();
    for op in ops {
        let result = match op {
            WriteOp::Put { key, entry } => d
                .insert(
                    key,
                    &entry.value,
                    entry.created_ms,
                    (entry.expires_ms != NEVER).then_some(entry.expires_ms),
                )
                .map(drop),
            WriteOp::Remove { key } => {
                removed.push(key);
                d.remove(&key).map(drop)
            }
            WriteOp::Clear => d.clear(),
            WriteOp::Flush(ack) => {
                acks.push(ack);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "write-back to disk failed");
        }
    }
    (removed, acks)
}
