//! Local reads gated on the epochs: a node whose epochs are not known to match the shared
//! tier's may have missed an invalidation, so by default it does not read its own memory
//! and disk tiers (it computes; what it stores is keyed under its epochs, which only grow,
//! and becomes unreachable when they catch up).
//!
//! - In sync ([`EpochsInSync::Now`]): local tiers are read.
//! - Out of sync after having been in sync ([`EpochsInSync::Since`], an outage): local
//!   tiers are read for [`LocalReads::InSync`]'s `grace` after the last moment the epochs
//!   were known to match, then no more. That bounds how long an invalidation made
//!   elsewhere during the outage can go unseen here.
//! - Never in sync since this process started ([`EpochsInSync::Never`]: started while the
//!   shared tier was down): local tiers are not read.
//!
//! [`LocalReads::Always`] trades that for availability: local tiers are always read, and
//! entries from before an invalidation this node missed are served until it reconnects.
//! Either way [`LocalSyncStats`] shows the state in the cache's stats.

use std::time::Duration;

use infercache_core::clock::duration_ms;
use serde::Serialize;

use super::Inner;
use crate::remote::EpochsInSync;

/// Whether a node with a shared tier reads its own memory and disk while its epochs are
/// not known to match the shared tier's (see `cache/sync.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReads {
    /// Read them only while in sync, and for `grace` after the last moment the epochs
    /// were known to match (the default, with a grace of 10 s).
    InSync {
        /// How long local entries are still served after the epochs were last known to
        /// match: the bound on staleness during an outage.
        grace: Duration,
    },
    /// Always read them (availability over freshness: during an outage, entries from
    /// before an invalidation made elsewhere are served until the node reconnects).
    Always,
}

impl LocalReads {
    /// The default grace of [`LocalReads::InSync`].
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
}

impl Default for LocalReads {
    fn default() -> Self {
        LocalReads::InSync {
            grace: Self::DEFAULT_GRACE,
        }
    }
}

/// Where a node stands with its epochs (only with a shared tier).
#[derive(Debug, Clone, Serialize)]
pub struct LocalSyncStats {
    /// The epochs are known to match the shared tier's now.
    pub in_sync: bool,
    /// How long since they were last known to match (0 while in sync; `None`: not since
    /// this process started).
    pub unsynced_ms: Option<u64>,
    /// Whether local tiers are read now.
    pub local_reads: bool,
    /// Lookups that skipped the local tiers because the epochs were not known to match.
    pub local_reads_skipped: u64,
}

impl Inner {
    /// Whether memory and disk may be read now (see the module docs).
    pub(super) fn local_reads_allowed(&self) -> bool {
        let Some(remote) = &self.remote else {
            return true;
        };
        let grace = match self.local_reads {
            LocalReads::Always => return true,
            LocalReads::InSync { grace } => grace,
        };
        let allowed = match remote.epochs_in_sync() {
            EpochsInSync::Now => true,
            EpochsInSync::Since(at) => self.clock.now_ms().saturating_sub(at) <= duration_ms(grace),
            EpochsInSync::Never => false,
        };
        if !allowed {
            self.local_skipped.incr();
        }
        allowed
    }

    /// The state for the stats; `None` without a shared tier.
    pub(super) fn sync_stats(&self) -> Option<LocalSyncStats> {
        let remote = self.remote.as_ref()?;
        let now = self.clock.now_ms();
        let (in_sync, unsynced_ms) = match remote.epochs_in_sync() {
            EpochsInSync::Now => (true, Some(0)),
            EpochsInSync::Since(at) => (false, Some(now.saturating_sub(at))),
            EpochsInSync::Never => (false, None),
        };
        let local_reads = match self.local_reads {
            LocalReads::Always => true,
            LocalReads::InSync { grace } => {
                in_sync || unsynced_ms.is_some_and(|ms| ms <= duration_ms(grace))
            }
        };
        Some(LocalSyncStats {
            in_sync,
            unsynced_ms,
            local_reads,
            local_reads_skipped: self.local_skipped.get(),
        })
    }
}
