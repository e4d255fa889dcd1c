//! Distributed single flight: a node computing a key holds `{prefix}l:{key hex}` (`SET NX
//! PX`, renewed while computing, released in the round trip that stores the value); other
//! nodes wait for the value, bounded, and compute themselves if the lease vanishes without
//! one (its holder died, or its value was not to be stored).
//!
//! A lease is never left behind by a request that gave up: a lease dropped unreleased
//! (a cancelled or failed computation) is released at once, and one whose reply was lost
//! or late counts as held and is released with its token (which deletes it only where it
//! was taken). The store-and-release of computed values runs in its own task and is tried
//! again while Redis stalls, so a value computed during a stall is still written.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use infercache_core::Digest;
use infercache_engine::remote::{Accept, BoxFuture};
use infercache_engine::{Lease, RemoteEntry};
use redis::{Cmd, FromRedisValue, Value};
use tokio::sync::oneshot;

use super::conn::{Call, pipeline};
use super::{Shared, bump};
use crate::codec;

/// Deletes a lease if this node still holds it.
const RELEASE: &str = include_str!("lua/release.lua");

/// Extends a lease if this node still holds it.
const RENEW: &str = include_str!("lua/renew.lua");

/// The first pause of a wait for another node's value, and the longest.
const WAIT_PAUSES: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(50));

/// The first pause before writing a lease's values again after a failed attempt, and the
/// longest.
const RETRY_PAUSES: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(250));

impl Shared {
    fn token(&self) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.node)
    }

    /// Takes the leases of `keys` and reads their values, in one round trip. With Redis
    /// unreachable (or not in use) every key is granted: no coordination, never a wait.
    ///
    /// Until the reply comes, every key counts as held: if this call is dropped (its
    /// caller cancelled) or the reply is lost or late (a `SET NX` that Redis applies after
    /// the timeout, e.g. behind an fsync stall), the lease releases them all with its
    /// token, which deletes only those it did take. So no lease is left behind to make
    /// other nodes wait for a value that will not come.
    pub(super) async fn lease(self: &Arc<Self>, keys: &[Digest]) -> Box<dyn Lease> {
        let token = self.token();
        let mut lease = RedisLease {
            tier: Arc::downgrade(self),
            granted: vec![true; keys.len()],
            found: vec![None; keys.len()],
            held: Vec::new(),
            token,
            renew: None,
            started: tokio::time::Instant::now(),
            removal_seq: self.removal_seq.load(Ordering::Acquire),
        };
        if !self.usable() {
            return Box::new(lease);
        }
        lease.held = keys.iter().map(|k| self.lease_key(k)).collect();
        let cmds = self.lease_commands(keys, &lease.token);
        let replies = self.call::<Vec<Value>>(Call::Each(&pipeline(cmds))).await;
        let Some(replies) = replies.filter(|r| r.len() == keys.len() * 2) else {
            // Taken or not, the leases are released with the values (or when dropped).
            bump(&self.counters.lease_replies_lost, 1);
            return Box::new(lease);
        };
        let (granted, found) = self.lease_replies(keys, &replies);
        lease.held = std::mem::take(&mut lease.held)
            .into_iter()
            .zip(&granted)
            .filter_map(|(k, g)| g.then_some(k))
            .collect();
        bump(&self.counters.leases_granted, lease.held.len() as u64);
        bump(
            &self.counters.leases_contended,
            (keys.len() - lease.held.len()) as u64,
        );
        if !lease.held.is_empty() {
            let task = renew(
                Arc::downgrade(self),
                lease.held.clone(),
                lease.token.clone(),
                self.config.lease_ttl,
            );
            lease.renew = Some(tokio::spawn(task).abort_handle());
        }
        lease.granted = granted;
        lease.found = found;
        Box::new(lease)
    }

    /// Per key, the lease and the value: a value stored by another node since this node's
    /// lookup is found here instead of computed again.
    fn lease_commands(&self, keys: &[Digest], token: &str) -> Vec<Cmd> {
        let ttl = u64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut cmds = Vec::with_capacity(keys.len() * 2);
        for k in keys {
            let mut set = redis::cmd("SET");
            set.arg(self.lease_key(k))
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl);
            let mut get = redis::cmd("GET");
            get.arg(self.value_key(k));
            cmds.push(set);
            cmds.push(get);
        }
        cmds
    }

    /// Per key, whether its lease was granted, and the value found with it.
    fn lease_replies(
        &self,
        keys: &[Digest],
        replies: &[Value],
    ) -> (Vec<bool>, Vec<Option<RemoteEntry>>) {
        let now = self.clock.now_ms();
        keys.iter()
            .zip(replies.chunks(2))
            .map(|(k, pair)| {
                let granted = !matches!(pair[0], Value::Nil);
                // Already counted as a miss (or as corrupt) by the lookup before.
                let value = Option::<Vec<u8>>::from_redis_value(pair[1].clone())
                    .ok()
                    .flatten()
                    .and_then(|bytes| codec::decode_owned(k, bytes).ok())
                    .filter(|e| e.expires_ms.is_none_or(|at| at > now));
                (granted, value)
            })
            .unzip()
    }

    /// Waits, bounded by `lease_wait`, for values of keys another node leased that
    /// `accept` takes; `None` for a key whose lease vanished without one, or that the
    /// bound ran out on.
    pub(super) async fn wait_for(
        &self,
        keys: &[Digest],
        accept: &Accept<'_>,
    ) -> Vec<Option<RemoteEntry>> {
        let mut out: Vec<Option<RemoteEntry>> = vec![None; keys.len()];
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let deadline = tokio::time::Instant::now() + self.config.lease_wait;
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(WAIT_PAUSES.0)
            .with_max_delay(WAIT_PAUSES.1)
            .without_max_times()
            .build();
        while !pending.is_empty() && tokio::time::Instant::now() < deadline {
            let pause = pauses.next().unwrap_or(WAIT_PAUSES.1);
            tokio::time::sleep(pause).await;
            let Some(still) = self.poll_leased(keys, &pending, accept, &mut out).await else {
                break; // Redis is gone: compute.
            };
            pending = still;
        }
        let filled = out.iter().filter(|v| v.is_some()).count() as u64;
        bump(&self.counters.lease_waits_filled, filled);
        bump(&self.counters.lease_waits_empty, keys.len() as u64 - filled);
        out
    }

    /// One look at the keys at `pending`: values `accept` takes go to `out`; the keys
    /// still leased without one, or `None` if Redis did not answer.
    async fn poll_leased(
        &self,
        keys: &[Digest],
        pending: &[usize],
        accept: &Accept<'_>,
        out: &mut [Option<RemoteEntry>],
    ) -> Option<Vec<usize>> {
        // The lease before the value: a holder stores, then releases, so a lease seen gone
        // means the value (if any) is already readable.
        let mut cmds = Vec::with_capacity(pending.len() * 2);
        for &i in pending {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(self.lease_key(&keys[i]));
            let mut get = redis::cmd("GET");
            get.arg(self.value_key(&keys[i]));
            cmds.push(exists);
            cmds.push(get);
        }
        let replies = self.call::<Vec<Value>>(Call::Each(&pipeline(cmds))).await?;
        let mut still = Vec::new();
        for (&i, pair) in pending.iter().zip(replies.chunks(2)) {
            let leased = matches!(pair.first(), Some(Value::Int(1)));
            let value = pair
                .get(1)
                .and_then(|v| Option::<Vec<u8>>::from_redis_value(v.clone()).ok())
                .flatten();
            let entry = value.and_then(|bytes| match codec::decode_owned(&keys[i], bytes) {
                Ok(entry) => Some(entry),
                Err(_) => {
                    bump(&self.counters.corrupt, 1);
                    None
                }
            });
            match entry.filter(|e| accept(i, e)) {
                Some(entry) => out[i] = Some(entry),
                // The value stored is too old for the caller (or there is none): the
                // holder is computing a new one.
                None if leased => still.push(i),
                None => {}
            }
        }
        Some(still)
    }
}

/// The leases of one call: renewed while held, released (if still ours) when done.
struct RedisLease {
    tier: Weak<Shared>,
    granted: Vec<bool>,
    found: Vec<Option<RemoteEntry>>,
    /// The lease keys this call holds, or may hold (its reply did not come).
    held: Vec<String>,
    token: String,
    renew: Option<tokio::task::AbortHandle>,
    started: tokio::time::Instant,
    /// [`Shared::removal_seq`] when the lease was taken.
    removal_seq: u64,
}

impl std::fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLease")
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl RedisLease {
    /// Stops renewing; the leases still held, to release.
    fn take(&mut self) -> Option<(Arc<Shared>, Vec<String>, String)> {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return None;
        }
        Some((self.tier.upgrade()?, held, self.token.clone()))
    }
}

/// The `EVAL`s that delete the leases `held` still carrying `token`.
fn release_commands(held: &[String], token: &str) -> Vec<Cmd> {
    held.iter()
        .map(|key| {
            let mut eval = redis::cmd("EVAL");
            eval.arg(RELEASE).arg(1).arg(key).arg(token);
            eval
        })
        .collect()
}

/// Deletes the leases `held` that still carry `token`, in one round trip.
pub(super) async fn release(tier: Arc<Shared>, held: Vec<String>, token: String) {
    let cmds = release_commands(&held, &token);
    tier.call::<Value>(Call::Each(&pipeline(cmds))).await;
}

/// Writes `values`, then deletes the leases `held` that still carry `token`, in one round
/// trip (the values before the releases, so a node that sees a lease gone finds its
/// value). A failed attempt (Redis stalled, the reply late) is tried again, with pauses,
/// until the leases would have expired and the waiting nodes given up anyway
/// (`lease_ttl + lease_wait` after the lease was taken); `first` hears when the first
/// attempt ended. The values are left out once a removal was made or heard of since the
/// lease was taken (`removal_seq`, then): it may have been of one of them, and a removal
/// sticks.
async fn store_and_release(
    tier: Arc<Shared>,
    mut values: Vec<(Digest, RemoteEntry)>,
    held: Vec<String>,
    token: String,
    (deadline, removal_seq): (tokio::time::Instant, u64),
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut pauses = ExponentialBuilder::default()
        .with_min_delay(RETRY_PAUSES.0)
        .with_max_delay(RETRY_PAUSES.1)
        .without_max_times()
        .build();
    loop {
        if tier.removal_seq.load(Ordering::Acquire) != removal_seq {
            values.clear();
        }
        let sets = tier.set_commands(&values);
        let n = sets.len() as u64;
        let mut cmds = sets;
        cmds.extend(release_commands(&held, &token));
        if cmds.is_empty() {
            break;
        }
        let done = tier
            .call::<Value>(Call::Each(&pipeline(cmds)))
            .await
            .is_some();
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        if done {
            bump(&tier.counters.writes, n);
            break;
        }
        let pause = pauses.next().unwrap_or(RETRY_PAUSES.1);
        if tokio::time::Instant::now() + pause >= deadline {
            tracing::warn!("redis did not answer; a computed value was not stored there");
            break;
        }
        bump(&tier.counters.lease_release_retries, 1);
        tokio::time::sleep(pause).await;
    }
}

impl Lease for RedisLease {
    fn granted(&self) -> &[bool] {
        &self.granted
    }

    fn take_found(&mut self) -> Vec<Option<RemoteEntry>> {
        std::mem::take(&mut self.found)
    }

    fn release(mut self: Box<Self>, values: Vec<(Digest, RemoteEntry)>) -> BoxFuture<'static, ()> {
        let tier = self.tier.upgrade();
        let job = self.take();
        let (started, removal_seq) = (self.started, self.removal_seq);
        Box::pin(async move {
            let Some(tier) = tier else { return };
            let Some((_, held, token)) = job else {
                // No lease held (Redis was not in use when it was taken): a plain write.
                tier.put_many(values).await;
                return;
            };
            if tier.write_tx.is_some() {
                // Write-back: the values queue, and the release queues behind them.
                tier.put_many(values).await;
                if let Some((held, token)) = tier.queue_release(held, token) {
                    release(tier, held, token).await;
                }
                return;
            }
            // Its own task: a caller that stops waiting (cancelled) cancels neither the
            // write nor the release.
            let deadline = started + tier.config.lease_ttl + tier.config.lease_wait;
            let (tx, first) = oneshot::channel();
            let bounds = (deadline, removal_seq);
            tokio::spawn(store_and_release(tier, values, held, token, bounds, tx));
            let _ = first.await;
        })
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        // A cancelled or failed computation: let the other nodes compute now rather than
        // wait for the leases to expire.
        if let Some((tier, held, token)) = self.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(release(tier, held, token));
        }
    }
}

/// Extends held leases every third of their TTL until aborted.
async fn renew(tier: Weak<Shared>, held: Vec<String>, token: String, ttl: Duration) {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(ttl / 3).await;
        let Some(tier) = tier.upgrade() else { return };
        let cmds: Vec<Cmd> = held
            .iter()
            .map(|key| {
                let mut eval = redis::cmd("EVAL");
                eval.arg(RENEW).arg(1).arg(key).arg(&token).arg(ttl_ms);
                eval
            })
            .collect();
        tier.call::<Value>(Call::Each(&pipeline(cmds))).await;
    }
}
