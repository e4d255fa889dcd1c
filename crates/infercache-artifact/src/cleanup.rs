//! Cleanup on an interval: a thread that runs a maintenance pass (expiry, the caps,
//! abandoned temporaries) every `cleanup_interval`, for processes that live long enough to
//! need one (a server). Short-lived processes get expiry at [`Store::open`] and eviction on
//! every insert.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{ArtifactError, Store};

/// The default time between two cleanups: an hour (LlamaHome's `cleanup_interval`).
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3_600);

/// A background cleanup thread. It runs its pass every interval, the first one interval
/// after it starts, until this value is dropped (which stops it and waits for a pass in
/// progress) or what it cleans is gone.
#[derive(Debug)]
pub struct Cleaner {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Cleaner {
    /// Runs `pass` every `interval` on a thread named `name` until dropped, or until
    /// `pass` returns `false` (what it cleans is gone). `pass` reports its own failures;
    /// the next interval tries again.
    pub fn spawn(
        name: &str,
        interval: Duration,
        mut pass: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let (lock, cvar) = &*flag;
                let mut stopped = lock.lock().expect("cleanup lock poisoned");
                loop {
                    let (guard, _) = cvar
                        .wait_timeout_while(stopped, interval, |s| !*s)
                        .expect("cleanup lock poisoned");
                    stopped = guard;
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    if !pass() {
                        return;
                    }
                    stopped = lock.lock().expect("cleanup lock poisoned");
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.stop;
        *lock.lock().expect("cleanup lock poisoned") = true;
        cvar.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// Starts a [`Cleaner`] that runs [`prune`](Store::prune) on this store every
    /// `interval` (see [`DEFAULT_CLEANUP_INTERVAL`]): expired blobs, classes over their
    /// cap, abandoned temporary files. It holds the store weakly and stops when the store
    /// is dropped.
    pub fn spawn_cleanup(self: &Arc<Self>, interval: Duration) -> Result<Cleaner, ArtifactError> {
        let store: Weak<Self> = Arc::downgrade(self);
        Cleaner::spawn("artifact-cleanup", interval, move || {
            let Some(store) = store.upgrade() else {
                return false;
            };
            match store.prune(false) {
                Ok(report) => tracing::debug!(
                    evicted = report.evicted.len(),
                    temporaries = report.temporaries.len(),
                    "artifact store cleaned up"
                ),
                Err(error) => tracing::warn!(%error, "artifact store cleanup failed"),
            }
            true
        })
        .map_err(|e| ArtifactError::io(std::path::Path::new("artifact-cleanup thread"), e))
    }
}
