//! Write-back to Redis: values queue (bounded) and a background task sends them in
//! batches, one round trip each; a full queue drops the write (counted), never blocking a
//! request. Lease releases queue behind the values they cover, and removals behind the
//! values queued before them (a value queued before a removal is never written after it).

use std::sync::{Arc, Weak};

use infercache_core::Digest;
use infercache_engine::{RemoteEntry, RemoteRemoval};
use tokio::sync::{mpsc, oneshot};

use super::lease::release;
use super::{Shared, bump};

/// One queued job.
pub(super) enum WriteJob {
    Put(Digest, RemoteEntry),
    /// Leases to release once the puts queued before them are written.
    Release(Vec<String>, String),
    /// A removal, sent once the puts queued before it are written; its outcome.
    Remove(Digest, oneshot::Sender<RemoteRemoval>),
    Flush(oneshot::Sender<()>),
}

impl Shared {
    /// Writes `entries` (write-through) or queues them (write-back).
    pub(super) async fn put_many(&self, entries: Vec<(Digest, RemoteEntry)>) {
        if !self.usable() {
            bump(&self.counters.skipped, 1);
            return;
        }
        match &self.write_tx {
            Some(tx) => {
                for (k, e) in entries {
                    if tx.try_send(WriteJob::Put(k, e)).is_err() {
                        bump(&self.counters.writeback_dropped, 1);
                    }
                }
            }
            None => self.write(&entries).await,
        }
    }

    /// Removes `key` after the values queued before it (write-back), or at once.
    pub(super) async fn remove(&self, key: Digest) -> RemoteRemoval {
        if let Some(tx) = &self.write_tx {
            let (answer, outcome) = oneshot::channel();
            if tx.send(WriteJob::Remove(key, answer)).await.is_ok()
                && let Ok(outcome) = outcome.await
            {
                return outcome;
            }
        }
        self.delete(key).await
    }

    /// Queues the release of `held` behind the queued values (write-back); what to release
    /// now where there is no queue or it is full.
    pub(super) fn queue_release(
        &self,
        held: Vec<String>,
        token: String,
    ) -> Option<(Vec<String>, String)> {
        let Some(tx) = &self.write_tx else {
            return Some((held, token));
        };
        match tx.try_send(WriteJob::Release(held, token)) {
            Ok(()) => None,
            Err(e) => match e.into_inner() {
                WriteJob::Release(held, token) => Some((held, token)),
                _ => unreachable!("the job just sent"),
            },
        }
    }

    /// Waits until the values queued before this call are written.
    pub(super) async fn flush(&self) {
        if let Some(tx) = &self.write_tx {
            let (ack, done) = oneshot::channel();
            if tx.send(WriteJob::Flush(ack)).await.is_ok() {
                let _ = done.await;
            }
        }
    }

    /// Jobs waiting in the queue.
    pub(super) fn queued(&self) -> u64 {
        self.write_tx
            .as_ref()
            .map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as u64)
    }
}

/// Drains the write-back queue in batches, one round trip each.
pub(super) async fn drain(tier: Weak<Shared>, mut rx: mpsc::Receiver<WriteJob>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let Some(s) = tier.upgrade() else { return };
        let mut puts = Vec::with_capacity(batch.len());
        let mut releases = Vec::new();
        let mut acks = Vec::new();
        for job in batch.drain(..) {
            match job {
                WriteJob::Put(k, e) => puts.push((k, e)),
                WriteJob::Release(held, token) => releases.push((held, token)),
                WriteJob::Remove(key, answer) => {
                    s.write(&std::mem::take(&mut puts)).await;
                    let _ = answer.send(s.delete(key).await);
                }
                WriteJob::Flush(ack) => acks.push(ack),
            }
        }
        s.write(&puts).await;
        for (held, token) in releases {
            release(Arc::clone(&s), held, token).await;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}
