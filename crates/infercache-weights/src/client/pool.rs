//! Buffers for chunk bodies, reused: a body is received into a buffer that an earlier,
//! dropped body gave back, so its pages are already mapped. A fresh buffer of a chunk's
//! size (megabytes) is a new mapping whose every page faults and is zeroed by the kernel
//! as the body fills it; on loopback that was a tenth of a cold stream's CPU time.
//!
//! Each buffer is an anonymous memory map of its own (`Buffer`). One of 2 MiB or more
//! is sized to a whole number of 2 MiB pages and advised `MADV_HUGEPAGE`, so where the
//! kernel's transparent huge pages are enabled (`always` or `madvise`) a fresh buffer
//! faults once per 2 MiB instead of once per 4 KiB: touching a fresh 48 MB map took
//! 0.1–0.3 ms/MB with the advice and 0.7–0.9 ms/MB without it on the development
//! machine. The allocator's buffers cannot be advised without `unsafe`; `memmap2`'s
//! anonymous maps can.
//!
//! A [`Fetched`](super::Fetched) body is a [`Bytes`] that owns its buffer: when the last
//! handle to it (slices included) is dropped, the buffer returns to its pool, if the idle
//! buffers stay within the pool's byte bound; otherwise it is freed. A buffer is reused
//! only for a body that fills at least half of it, so a small chunk never pins a large
//! buffer.
//!
//! No crate does this for `bytes` buffers handed out as `Bytes` (the pools on crates.io
//! hand out guards that borrow the pool, or `Vec`s); `Bytes::from_owner` makes it a few
//! lines.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapMut, MmapOptions};
use parking_lot::Mutex;

/// The size of a transparent huge page on x86-64 and of the usual arm64 one.
const HUGE_PAGE: usize = 2 << 20;

/// Idle bytes a [`Fetcher`](super::Fetcher)'s own pool keeps by default: room for the
/// embeddings chunk of a small model and a few layers.
pub const DEFAULT_POOL_BYTES: usize = 128 << 20;

/// Buffers for bodies, shared by the clones of one pool (and by every
/// [`Fetcher`](super::Fetcher) given it); idle buffers are bounded in bytes.
#[derive(Clone)]
pub struct BufferPool(Arc<Mutex<Idle>>);

struct Idle {
    /// Most bytes of capacity kept idle.
    max_bytes: usize,
    /// Capacity of the buffers in `buffers`.
    bytes: usize,
    /// Oldest given back first.
    buffers: Vec<Buffer>,
    reused: u64,
    allocated: u64,
}

/// What a pool has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Bodies received into a buffer given back before.
    pub reused: u64,
    /// Bodies that needed a new buffer.
    pub allocated: u64,
    /// Buffers idle now.
    pub idle: usize,
    /// Their capacity in bytes.
    pub idle_bytes: usize,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BufferPool").field(&self.stats()).finish()
    }
}

impl BufferPool {
    /// A pool keeping at most `max_bytes` of idle buffers (0: none, every body gets a new
    /// buffer).
    pub fn new(max_bytes: usize) -> Self {
        Self(Arc::new(Mutex::new(Idle {
            max_bytes,
            bytes: 0,
            buffers: Vec::new(),
            reused: 0,
            allocated: 0,
        })))
    }

    /// Keeps at most `max_bytes` of idle buffers from now on, freeing the oldest idle ones
    /// past it at once.
    pub fn set_max_bytes(&self, max_bytes: usize) {
        let mut idle = self.0.lock();
        idle.max_bytes = max_bytes;
        while idle.bytes > max_bytes {
            let old = idle.buffers.remove(0);
            idle.bytes -= old.capacity();
        }
    }

    /// What the pool has done.
    pub fn stats(&self) -> PoolStats {
        let idle = self.0.lock();
        PoolStats {
            reused: idle.reused,
            allocated: idle.allocated,
            idle: idle.buffers.len(),
            idle_bytes: idle.bytes,
        }
    }

    /// An empty buffer with room for `len` bytes: the smallest idle one that `len` fills
    /// at least half of, or a new one.
    ///
    /// # Errors
    /// The new map's, when the system has no memory for it.
    pub(crate) fn take(&self, len: usize) -> io::Result<Buffer> {
        let mut idle = self.0.lock();
        let best = idle
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let buf = idle.buffers.remove(i);
            idle.bytes -= buf.capacity();
            idle.reused += 1;
            return Ok(buf);
        }
        idle.allocated += 1;
        drop(idle);
        Buffer::with_capacity(len)
    }

    /// `buf` (a whole body) as [`Bytes`] that give the buffer back when dropped.
    pub(crate) fn hand_out(&self, buf: Buffer) -> Bytes {
        if buf.is_empty() {
            return Bytes::new();
        }
        Bytes::from_owner(Lent {
            buf: Some(buf),
            pool: self.clone(),
        })
    }

    fn give_back(&self, mut buf: Buffer) {
        buf.clear();
        let cap = buf.capacity();
        let mut idle = self.0.lock();
        if cap == 0 || cap > idle.max_bytes {
            return;
        }
        // The oldest idle buffers make room.
        while idle.bytes + cap > idle.max_bytes {
            let old = idle.buffers.remove(0);
            idle.bytes -= old.capacity();
        }
        idle.bytes += cap;
        idle.buffers.push(buf);
    }
}

/// A body's memory: an anonymous map with its filled length. The bytes past `len` (a
/// reused buffer's earlier body) are never handed out.
pub(crate) struct Buffer {
    map: MmapMut,
    len: usize,
}

impl Buffer {
    /// An empty buffer with room for at least `capacity` bytes.
    fn with_capacity(capacity: usize) -> io::Result<Self> {
        let huge = capacity >= HUGE_PAGE;
        let len = if huge {
            // A length of whole huge pages is also what makes the kernel align the map
            // to one.
            capacity.next_multiple_of(HUGE_PAGE)
        } else {
            capacity
        };
        let map = MmapOptions::new().len(len).map_anon()?;
        #[cfg(target_os = "linux")]
        if huge {
            // Advice only: where transparent huge pages are off, the map keeps 4 KiB
            // pages and works the same.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        Ok(Self { map, len: 0 })
    }

    /// Bytes it holds without growing.
    pub(crate) fn capacity(&self) -> usize {
        self.map.len()
    }

    /// Nothing filled.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `bytes`, moving to a map twice as large when they do not fit (a body larger
    /// than its room was allocated for).
    ///
    /// # Errors
    /// The larger map's, when the system has no memory for it.
    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.len + bytes.len();
        if end > self.capacity() {
            let mut larger = Self::with_capacity(end.max(2 * self.capacity()))?;
            larger.map[..self.len].copy_from_slice(&self.map[..self.len]);
            larger.len = self.len;
            *self = larger;
        }
        self.map[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Empty again, its pages kept.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}

/// A body's buffer while [`Bytes`] refer to it.
struct Lent {
    buf: Option<Buffer>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| &b.map[..b.len])
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &BufferPool, bytes: &[u8]) -> Bytes {
        let mut buf = pool.take(bytes.len()).unwrap();
        buf.extend_from_slice(bytes).unwrap();
        pool.hand_out(buf)
    }

    #[test]
    fn a_dropped_body_gives_its_buffer_to_the_next() {
        let pool = BufferPool::new(1 << 20);
        let first = filled(&pool, &[1; 1000]);
        let slice = first.slice(10..20);
        drop(first);
        assert_eq!(pool.stats().idle, 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], &[1; 10]);
        drop(slice);
        assert_eq!(pool.stats().idle, 1);
        let second = filled(&pool, &[2; 900]);
        assert_eq!(&second[..], &[2; 900][..], "no byte of the first body left");
        let s = pool.stats();
        assert_eq!((s.reused, s.allocated, s.idle), (1, 1, 0));
    }

    #[test]
    fn a_body_larger_than_its_room_moves_to_a_larger_buffer() {
        let pool = BufferPool::new(1 << 20);
        let mut buf = pool.take(1000).unwrap();
        let room = buf.capacity();
        assert!(room >= 1000);
        for piece in [[1u8; 700], [2; 700]] {
            buf.extend_from_slice(&piece).unwrap();
        }
        assert!(buf.capacity() >= 2 * room);
        let body = pool.hand_out(buf);
        assert_eq!(body.len(), 1400);
        assert_eq!((&body[..700], &body[700..]), (&[1; 700][..], &[2; 700][..]));
        let cap = {
            drop(body);
            pool.stats().idle_bytes
        };
        assert!(cap >= 2000, "counted at its full capacity: {cap}");
        let again = filled(&pool, &[3; 1400]);
        assert_eq!(pool.stats().reused, 1);
        assert_eq!(&again[..], &[3; 1400][..]);
    }

    #[test]
    fn a_large_buffer_is_whole_huge_pages() {
        let pool = BufferPool::new(0);
        let buf = pool.take(HUGE_PAGE + 1).unwrap();
        assert_eq!(buf.capacity(), 2 * HUGE_PAGE);
        assert!(buf.is_empty());
        assert_eq!(
            pool.take(1000).unwrap().capacity(),
            1000,
            "a small one is not"
        );
        assert_eq!(pool.hand_out(pool.take(10).unwrap()), Bytes::new());
    }

    #[test]
    fn a_small_body_does_not_take_a_large_buffer() {
        let pool = BufferPool::new(1 << 20);
        drop(filled(&pool, &[0; 10_000]));
        drop(filled(&pool, &[0; 4_000]));
        let s = pool.stats();
        assert_eq!((s.reused, s.allocated, s.idle), (0, 2, 2));
        // The smallest that fits is picked.
        let _b = filled(&pool, &[0; 3_000]);
        assert_eq!(pool.stats().idle_bytes, 10_000);
    }

    #[test]
    fn idle_buffers_stay_within_the_bound() {
        let pool = BufferPool::new(25_000);
        let bodies: Vec<Bytes> = (0..4).map(|_| filled(&pool, &[7; 10_000])).collect();
        drop(bodies);
        let s = pool.stats();
        assert_eq!((s.idle, s.idle_bytes), (2, 20_000));
        drop(filled(&pool, &[7; 30_000]));
        assert_eq!(
            pool.stats().idle_bytes,
            20_000,
            "larger than the bound: freed"
        );
        pool.set_max_bytes(15_000);
        assert_eq!(pool.stats().idle_bytes, 10_000, "the oldest freed at once");
        let none = BufferPool::new(0);
        drop(filled(&none, &[1; 100]));
        assert_eq!(none.stats().idle, 0);
    }
}
