//! Progress reports of long operations (chunking, verifying), for a progress bar.

/// Told what a long operation is doing. The command line draws it with `indicatif`;
/// libraries and tests pass [`NoProgress`].
pub trait Progress {
    /// A new phase begins, `total` bytes long.
    fn phase(&mut self, what: &str, total: u64);
    /// `bytes` more of the current phase are done.
    fn advance(&mut self, bytes: u64);
    /// The operation is over.
    fn finish(&mut self) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&mut self, _what: &str, _total: u64) {}
    fn advance(&mut self, _bytes: u64) {}
}
