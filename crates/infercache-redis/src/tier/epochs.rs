//! Epochs shared by every node: the hash `{prefix}epochs`, bumps as a script that raises a
//! scope to `max(redis, local) + 1` and publishes it on the channel of the same name, the
//! listener that applies other nodes' bumps, and the synchronisation (on every
//! (re)subscription, every `epoch_resync`, and as the prober) that replays this node's
//! bumps made while Redis was away and merges the epochs both ways.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use infercache_engine::Scope;

use super::conn::Call;
use super::{Shared, bump};

/// Raises a scope's epoch to `max(remote, local) + 1`, stores and publishes it.
const BUMP: &str = include_str!("lua/bump.lua");

/// Raises each given field to at least its value (publishing those raised) and returns the
/// whole hash.
const MERGE: &str = include_str!("lua/merge.lua");

impl Shared {
    fn epoch_key(&self) -> String {
        format!("{}epochs", self.config.prefix)
    }

    pub(super) fn channel(&self) -> String {
        self.epoch_key()
    }

    /// Pushes this node's epochs (raising Redis's where lower) and adopts Redis's; when
    /// the tier was not in sync, first replays the removals Redis could not take and
    /// applies those logged by other nodes since this one last read the log.
    pub(super) async fn sync_epochs(&self) -> bool {
        let catch_up = !self.synced.load(Ordering::Acquire);
        let Some(epochs) = self.epochs.get() else {
            self.synced.store(true, Ordering::Release);
            return true;
        };
        let pending: Vec<Scope> = std::mem::take(&mut *self.pending_bumps.lock());
        for (i, scope) in pending.iter().enumerate() {
            match self.bump(scope, epochs.get(scope)).await {
                Some(value) => {
                    epochs.raise(scope.clone(), value).await;
                }
                None => {
                    self.pending_bumps.lock().extend_from_slice(&pending[i..]);
                    return false;
                }
            }
        }
        if catch_up && !(self.replay_removals().await && self.catch_up_removals().await) {
            return false;
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(MERGE)
            .arg(1)
            .arg(self.epoch_key())
            .arg(self.channel());
        for (scope, value) in epochs.entries() {
            cmd.arg(scope_field(&scope)).arg(value);
        }
        let Some(all) = self.call::<Vec<(String, u64)>>(Call::Cmd(&cmd)).await else {
            return false;
        };
        for (field, value) in all {
            if let Some(scope) = field_scope(&field)
                && epochs.raise(scope, value).await
            {
                bump(&self.counters.epoch_updates, 1);
            }
        }
        self.synced.store(true, Ordering::Release);
        self.note_in_sync();
        true
    }

    /// The BUMP script: `max(redis, local) + 1` for `scope`, published.
    async fn bump(&self, scope: &Scope, local: u64) -> Option<u64> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(BUMP)
            .arg(1)
            .arg(self.epoch_key())
            .arg(scope_field(scope))
            .arg(local)
            .arg(self.channel());
        self.call::<u64>(Call::Cmd(&cmd)).await
    }

    async fn apply_message(&self, payload: &[u8]) {
        let Ok(payload) = std::str::from_utf8(payload) else {
            return;
        };
        if self.apply_removal(payload).await {
            return;
        }
        let Some((field, value)) = payload.rsplit_once('\n') else {
            return;
        };
        let (Some(scope), Ok(value), Some(epochs)) =
            (field_scope(field), value.parse::<u64>(), self.epochs.get())
        else {
            tracing::warn!("ignoring a malformed epoch message");
            return;
        };
        if epochs.raise(scope, value).await {
            bump(&self.counters.epoch_updates, 1);
        }
    }

    /// Agrees on a new epoch for `scope` with Redis; when Redis is unreachable, `None`,
    /// and the bump is replayed at the next synchronisation (values are not used until
    /// then).
    pub(super) async fn bump_epoch(&self, scope: &Scope, local: u64) -> Option<u64> {
        let agreed = self.bump(scope, local).await;
        if agreed.is_none() {
            self.pending_bumps.lock().push(scope.clone());
            self.synced.store(false, Ordering::Release);
        }
        agreed
    }
}

/// The hash field of a scope: its JSON (serde's field order is fixed, so it is canonical).
fn scope_field(scope: &Scope) -> String {
    serde_json::to_string(scope).expect("a scope serializes")
}

fn field_scope(field: &str) -> Option<Scope> {
    serde_json::from_str(field).ok()
}

/// Listens for epoch changes; on every (re)subscription and every `epoch_resync`, pushes
/// this node's epochs and adopts Redis's, so a node that missed messages while
/// disconnected catches up.
pub(super) async fn listen(tier: Weak<Shared>) {
    loop {
        let Some(s) = tier.upgrade() else { return };
        let every = s.config.probe_interval;
        let Some(pubsub) = subscribe(&s).await else {
            drop(s);
            tokio::time::sleep(every).await;
            continue;
        };
        // Messages published before the subscription are covered by this sync.
        s.subscribed.store(true, Ordering::Release);
        s.synced.store(false, Ordering::Release);
        s.sync_epochs().await;
        let resync = s.config.epoch_resync;
        drop(s);
        if !follow(&tier, pubsub, resync).await {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// A pub/sub connection subscribed to the epoch channel, on the node that last took it or
/// else the next configured one that answers (on a cluster, any node hears every
/// publication); `None` if none answered.
async fn subscribe(s: &Shared) -> Option<redis::aio::PubSub> {
    let n = s.pubsub_clients.len();
    let first = s.pubsub_node.load(Ordering::Relaxed);
    for i in (0..n).map(|k| (first + k) % n) {
        if let Some(pubsub) = subscribe_on(s, &s.pubsub_clients[i]).await {
            s.pubsub_node.store(i, Ordering::Relaxed);
            return Some(pubsub);
        }
    }
    None
}

async fn subscribe_on(s: &Shared, client: &redis::Client) -> Option<redis::aio::PubSub> {
    let mut pubsub = tokio::time::timeout(s.config.connect_timeout * 4, client.get_async_pubsub())
        .await
        .ok()?
        .ok()?;
    tokio::time::timeout(s.config.command_timeout * 4, pubsub.subscribe(&s.channel()))
        .await
        .ok()?
        .ok()?;
    Some(pubsub)
}

/// Applies epoch messages, and synchronises every `resync`, until the subscription drops
/// (then `true`: resubscribe) or the tier is gone (`false`).
async fn follow(
    tier: &Weak<Shared>,
    mut pubsub: redis::aio::PubSub,
    resync: std::time::Duration,
) -> bool {
    let mut messages = pubsub.on_message();
    let mut ticker = tokio::time::interval(resync);
    ticker.tick().await;
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else {
                    // Disconnected: changes may be missed until resubscribed and synced.
                    let Some(s) = tier.upgrade() else { return false };
                    s.subscribed.store(false, Ordering::Release);
                    s.synced.store(false, Ordering::Release);
                    return true;
                };
                let Some(s) = tier.upgrade() else { return false };
                s.apply_message(msg.get_payload_bytes()).await;
            }
            _ = ticker.tick() => {
                let Some(s) = tier.upgrade() else { return false };
                s.sync_epochs().await;
            }
        }
    }
}
