//! Values: their Redis keys, their TTLs, batched reads (`MGET`) and writes (one pipeline),
//! and the checks every value read passes ([`crate::codec`]).

use infercache_core::Digest;
use infercache_engine::RemoteEntry;
use redis::{Cmd, Value};

use super::conn::{Call, pipeline};
use super::{Shared, bump};
use crate::codec;

impl Shared {
    pub(super) fn value_key(&self, key: &Digest) -> String {
        self.redis_key("v:", key)
    }

    pub(super) fn lease_key(&self, key: &Digest) -> String {
        self.redis_key("l:", key)
    }

    /// `{prefix}{kind}{hex of key}` in one allocation: this runs for every key of every
    /// batch.
    fn redis_key(&self, kind: &str, key: &Digest) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(self.config.prefix.len() + kind.len() + 64);
        out.push_str(&self.config.prefix);
        out.push_str(kind);
        for b in key.0 {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }

    /// Looks `keys` up in one `MGET`; `None` for a miss, a refused value, or Redis not in
    /// use.
    pub(super) async fn get_many(&self, keys: &[Digest]) -> Vec<Option<RemoteEntry>> {
        if keys.is_empty() {
            return Vec::new();
        }
        if !self.usable() {
            bump(&self.counters.skipped, 1);
            return vec![None; keys.len()];
        }
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(self.value_key(k));
        }
        match self.call::<Vec<Option<Vec<u8>>>>(Call::Cmd(&cmd)).await {
            Some(values) if values.len() == keys.len() => keys
                .iter()
                .zip(values)
                .map(|(k, v)| self.decode(k, v))
                .collect(),
            _ => vec![None; keys.len()],
        }
    }

    /// PX for an entry: its remaining life, capped by the default TTL; `None` if expired.
    fn px(&self, entry: &RemoteEntry) -> Option<u64> {
        let cap = u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX);
        match entry.expires_ms {
            Some(at) => {
                let left = at.checked_sub(self.clock.now_ms())?;
                (left > 0).then_some(left.min(cap))
            }
            None => Some(cap),
        }
    }

    /// Writes entries in one round trip.
    pub(super) async fn write(&self, entries: &[(Digest, RemoteEntry)]) {
        let cmds = self.set_commands(entries);
        if cmds.is_empty() {
            return;
        }
        let n = cmds.len() as u64;
        if self
            .call::<Value>(Call::Each(&pipeline(cmds)))
            .await
            .is_some()
        {
            bump(&self.counters.writes, n);
        }
    }

    /// One `SET … PX` per entry that fits and has not expired.
    pub(super) fn set_commands(&self, entries: &[(Digest, RemoteEntry)]) -> Vec<Cmd> {
        let mut cmds = Vec::with_capacity(entries.len());
        for (key, entry) in entries {
            if entry.value.len() > self.config.max_value_bytes {
                continue;
            }
            let Some(px) = self.px(entry) else { continue };
            let mut set = redis::cmd("SET");
            set.arg(self.value_key(key))
                .arg(codec::encode(key, entry))
                .arg("PX")
                .arg(px);
            cmds.push(set);
        }
        cmds
    }

    /// Decodes a value read under `key`, counting what it was.
    fn decode(&self, key: &Digest, bytes: Option<Vec<u8>>) -> Option<RemoteEntry> {
        let Some(bytes) = bytes else {
            bump(&self.counters.misses, 1);
            return None;
        };
        match codec::decode_owned(key, bytes) {
            Ok(entry) if entry.expires_ms.is_none_or(|at| at > self.clock.now_ms()) => {
                bump(&self.counters.hits, 1);
                Some(entry)
            }
            Ok(_) => {
                bump(&self.counters.misses, 1);
                None
            }
            Err(e) => {
                tracing::warn!(key = %key.to_hex(), error = %e, "redis value refused");
                bump(&self.counters.corrupt, 1);
                None
            }
        }
    }
}
