//! Whether the disk answers, and the seam tests use to make it fail.
//!
//! A read or write of a segment file that fails with an I/O error (`EIO` from a failing
//! device, `ENOSPC` that evicting the oldest segment did not cure, any other) marks the
//! tier **degraded**: counted, and reported in [`TierStats`](infercache_core::stats::TierStats)
//! (`degraded`, `io_errors`). While degraded, lookups miss and writes are skipped without
//! touching the files, so a request is served from memory or the model instead of waiting
//! on a dying disk; a skipped write drops the key's older value from the index, as a failed
//! one does, so that value is never served in the newer one's place. One operation per
//! [`PROBE_EVERY_MS`] goes through as a probe; the first that succeeds marks the tier
//! healthy and it is used again.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use infercache_core::stats::Counter;

/// While degraded, one file operation per this many milliseconds is tried.
pub const PROBE_EVERY_MS: u64 = 1000;

#[derive(Debug, Default)]
pub(super) struct Health {
    degraded: AtomicBool,
    /// When the last probe was let through (or the tier became degraded).
    last_probe_ms: AtomicU64,
    /// Reads and writes that failed with an I/O error.
    pub(super) io_errors: Counter,
}

impl Health {
    /// Whether a file operation may run now: always when healthy; when degraded, one
    /// operation per [`PROBE_EVERY_MS`] (the probe).
    pub(super) fn admit(&self, now_ms: u64) -> bool {
        if !self.degraded.load(Ordering::Acquire) {
            return true;
        }
        let last = self.last_probe_ms.load(Ordering::Acquire);
        now_ms.saturating_sub(last) >= PROBE_EVERY_MS
            && self
                .last_probe_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// A file operation failed with an I/O error.
    pub(super) fn failed(&self, now_ms: u64, error: &io::Error) {
        self.io_errors.incr();
        if !self.degraded.swap(true, Ordering::AcqRel) {
            self.last_probe_ms.store(now_ms, Ordering::Release);
            tracing::warn!(%error, "disk tier degraded: reads miss and writes are skipped until the disk answers");
        }
    }

    /// A file operation succeeded.
    pub(super) fn answered(&self) {
        if self.degraded.load(Ordering::Acquire) && self.degraded.swap(false, Ordering::AcqRel) {
            tracing::info!("disk tier answers again");
        }
    }

    pub(super) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }
}

/// Fails with `EIO` when a test made the files under `path` fail
/// (`testing::DiskFault`); without the `test-support` feature, never.
pub(super) fn seam(path: &Path) -> io::Result<()> {
    #[cfg(feature = "test-support")]
    if crate::testing::disk_fault(path) {
        /// `EIO` on Linux.
        const EIO: i32 = 5;
        return Err(io::Error::from_raw_os_error(EIO));
    }
    let _ = path;
    Ok(())
}
