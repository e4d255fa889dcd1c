//! Removals that reach every node: a `DEL` of the value, an entry in the removal log
//! (`{prefix}removals`, a sorted set of key digests scored by removal time, the newest
//! [`REMOVAL_LOG`] kept) and a message on the epoch channel (`del\n{node}\n{hex}`), in one
//! round trip. Other nodes drop the key from their own tiers when the message comes
//! ([`EpochSync::remove_local`]); a node that was away reads the log since it last did at
//! its next synchronisation, before it uses Redis again. A removal Redis could not take is
//! kept here and replayed at the next synchronisation, before the tier is used again.
//!
//! [`EpochSync::remove_local`]: infercache_engine::EpochSync::remove_local

use std::sync::atomic::Ordering;

use infercache_core::Digest;
use infercache_engine::RemoteRemoval;
use redis::Value;

use super::conn::{Call, pipeline};
use super::{Shared, bump};

/// Removals kept in the log.
pub(super) const REMOVAL_LOG: u64 = 10_000;

/// How far before the last read a node reads the log again: removal times come from each
/// node's clock, which may be this much behind another's.
const CLOCK_SLACK_MS: u64 = 60_000;

/// The prefix of a removal message on the epoch channel.
const MESSAGE: &str = "del\n";

impl Shared {
    fn removal_log_key(&self) -> String {
        format!("{}removals", self.config.prefix)
    }

    /// Removes `key` in Redis and tells every node; [`RemoteRemoval::Deferred`] (kept and
    /// replayed at the next synchronisation) when Redis did not take it.
    pub(super) async fn delete(&self, key: Digest) -> RemoteRemoval {
        self.removal_seq.fetch_add(1, Ordering::AcqRel);
        if self.usable()
            && let Some(found) = self.delete_now(&key).await
        {
            return RemoteRemoval::Removed { found };
        }
        self.pending_removals.lock().push(key);
        // Nothing is read or written until the removal is replayed.
        self.synced.store(false, Ordering::Release);
        RemoteRemoval::Deferred
    }

    /// The round trip of a removal; whether Redis held the value, `None` if it failed.
    async fn delete_now(&self, key: &Digest) -> Option<bool> {
        let hex = key.to_hex();
        let log = self.removal_log_key();
        let mut del = redis::cmd("DEL");
        del.arg(self.value_key(key));
        let mut add = redis::cmd("ZADD");
        add.arg(&log).arg(self.clock.now_ms()).arg(&hex);
        let mut trim = redis::cmd("ZREMRANGEBYRANK");
        trim.arg(&log).arg(0).arg(-(REMOVAL_LOG as i64) - 1);
        let mut publish = redis::cmd("PUBLISH");
        publish
            .arg(self.channel())
            .arg(format!("{MESSAGE}{}\n{hex}", self.node));
        let replies = self
            .call::<Vec<Value>>(Call::Each(&pipeline(vec![del, add, trim, publish])))
            .await?;
        Some(matches!(replies.first(), Some(Value::Int(n)) if *n > 0))
    }

    /// Replays the removals Redis could not take; whether all went through.
    pub(super) async fn replay_removals(&self) -> bool {
        let pending: Vec<Digest> = std::mem::take(&mut *self.pending_removals.lock());
        for (i, key) in pending.iter().enumerate() {
            if self.delete_now(key).await.is_none() {
                self.pending_removals
                    .lock()
                    .extend_from_slice(&pending[i..]);
                return false;
            }
            bump(&self.counters.removals_replayed, 1);
        }
        true
    }

    /// Applies to this node's tiers the removals logged since it last read the log (all of
    /// the log at the first synchronisation); whether the log could be read.
    pub(super) async fn catch_up_removals(&self) -> bool {
        let Some(epochs) = self.epochs.get() else {
            return true;
        };
        let seen = self.removals_seen_ms.load(Ordering::Acquire);
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(self.removal_log_key())
            .arg(seen.saturating_sub(CLOCK_SLACK_MS))
            .arg("+inf")
            .arg("WITHSCORES");
        let Some(logged) = self.call::<Vec<(String, u64)>>(Call::Cmd(&cmd)).await else {
            return false;
        };
        let mut newest = seen;
        for (hex, at) in logged {
            newest = newest.max(at);
            if at > seen {
                self.removal_seq.fetch_add(1, Ordering::AcqRel);
            }
            // Not held: nothing to remove (no value is read from Redis while the tier is
            // out of sync, so none can be on its way in).
            if let Ok(key) = hex.parse::<Digest>()
                && epochs.holds(&key)
            {
                epochs.remove_local(key).await;
            }
        }
        self.removals_seen_ms.store(newest, Ordering::Release);
        true
    }

    /// Applies a removal message from another node; `false` if `payload` is not one.
    pub(super) async fn apply_removal(&self, payload: &str) -> bool {
        let Some(rest) = payload.strip_prefix(MESSAGE) else {
            return false;
        };
        let Some((node, hex)) = rest.split_once('\n') else {
            return true;
        };
        if node == self.node {
            return true;
        }
        match (hex.parse::<Digest>(), self.epochs.get()) {
            (Ok(key), Some(epochs)) => {
                self.removal_seq.fetch_add(1, Ordering::AcqRel);
                epochs.remove_local(key).await;
                bump(&self.counters.removals_received, 1);
            }
            _ => tracing::warn!("ignoring a malformed removal message"),
        }
        true
    }
}
