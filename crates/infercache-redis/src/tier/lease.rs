//! Distributed single flight: a node computing a key holds `{prefix}l:{key hex}` (`SET NX
//! PX`, renewed while computing, released once the value is stored); other nodes wait for
//! the value, bounded, and compute themselves if the lease vanishes without one (its
//! holder died).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use infercache_core::Digest;
use infercache_engine::remote::BoxFuture;
use infercache_engine::{Lease, RemoteEntry};
use redis::{Cmd, FromRedisValue, Value};

use super::conn::{Call, pipeline};
use super::{Shared, bump};
use crate::codec;

/// Deletes a lease if this node still holds it.
const RELEASE: &str = include_str!("lua/release.lua");

/// Extends a lease if this node still holds it.
const RENEW: &str = include_str!("lua/renew.lua");

/// The first pause of a wait for another node's value, and the longest.
const WAIT_PAUSES: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(50));

impl Shared {
    fn token(&self) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.node)
    }

    /// Takes the leases of `keys` and reads their values, in one round trip. With Redis
    /// unreachable (or not in use) every key is granted: no coordination, never a wait.
    pub(super) async fn lease(self: &Arc<Self>, keys: &[Digest]) -> Box<dyn Lease> {
        let token = self.token();
        let replies = if self.usable() {
            let cmds = self.lease_commands(keys, &token);
            self.call::<Vec<Value>>(Call::Each(&pipeline(cmds))).await
        } else {
            None
        };
        let (granted, found) = match replies {
            Some(r) if r.len() == keys.len() * 2 => self.lease_replies(keys, &r),
            _ => {
                return Box::new(RedisLease {
                    tier: Arc::downgrade(self),
                    granted: vec![true; keys.len()],
                    found: vec![None; keys.len()],
                    held: Vec::new(),
                    token,
                    renew: None,
                });
            }
        };
        let held: Vec<String> = keys
            .iter()
            .zip(&granted)
            .filter(|(_, g)| **g)
            .map(|(k, _)| self.lease_key(k))
            .collect();
        bump(&self.counters.leases_granted, held.len() as u64);
        bump(
            &self.counters.leases_contended,
            (keys.len() - held.len()) as u64,
        );
        let renew = (!held.is_empty()).then(|| {
            let task = renew(
                Arc::downgrade(self),
                held.clone(),
                token.clone(),
                self.config.lease_ttl,
            );
            tokio::spawn(task).abort_handle()
        });
        Box::new(RedisLease {
            tier: Arc::downgrade(self),
            granted,
            found,
            held,
            token,
            renew,
        })
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

    /// Waits, bounded by `lease_wait`, for the values of keys another node leased; `None`
    /// for a key whose lease vanished without a value, or that the bound ran out on.
    pub(super) async fn wait_for(&self, keys: &[Digest]) -> Vec<Option<RemoteEntry>> {
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
            let Some(still) = self.poll_leased(keys, &pending, &mut out).await else {
                break; // Redis is gone: compute.
            };
            pending = still;
        }
        let filled = out.iter().filter(|v| v.is_some()).count() as u64;
        bump(&self.counters.lease_waits_filled, filled);
        bump(&self.counters.lease_waits_empty, keys.len() as u64 - filled);
        out
    }

    /// One look at the keys at `pending`: values found go to `out`; the keys still leased
    /// without a value, or `None` if Redis did not answer.
    async fn poll_leased(
        &self,
        keys: &[Digest],
        pending: &[usize],
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
            match (value, leased) {
                (Some(bytes), _) => match codec::decode_owned(&keys[i], bytes) {
                    Ok(entry) => out[i] = Some(entry),
                    Err(_) => bump(&self.counters.corrupt, 1),
                },
                (None, true) => still.push(i),
                (None, false) => {}
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
    held: Vec<String>,
    token: String,
    renew: Option<tokio::task::AbortHandle>,
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

/// Deletes the leases `held` that still carry `token`, in one round trip.
pub(super) async fn release(tier: Arc<Shared>, held: Vec<String>, token: String) {
    let cmds: Vec<Cmd> = held
        .iter()
        .map(|key| {
            let mut eval = redis::cmd("EVAL");
            eval.arg(RELEASE).arg(1).arg(key).arg(&token);
            eval
        })
        .collect();
    tier.call::<Value>(Call::Each(&pipeline(cmds))).await;
}

impl Lease for RedisLease {
    fn granted(&self) -> &[bool] {
        &self.granted
    }

    fn take_found(&mut self) -> Vec<Option<RemoteEntry>> {
        std::mem::take(&mut self.found)
    }

    fn release(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        let job = self.take();
        Box::pin(async move {
            let Some((tier, held, token)) = job else {
                return;
            };
            // With write-back the values are still queued: release behind them, so a
            // node that sees the lease gone finds the value.
            if let Some((held, token)) = tier.queue_release(held, token) {
                release(tier, held, token).await;
            }
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
