//! Streaming a cached dataset: batches from memory-mapped shards, prefetched on a thread
//! of their own, in a deterministic (optionally shuffled) order, resumable mid-epoch.
//!
//! **Order.** Without a shuffle, shards in order and rows in order. With a shuffle seed,
//! the shard order is a permutation drawn from (seed, epoch) and each shard's row order
//! one drawn from (seed, epoch, shard), by Fisher–Yates over ChaCha8, so the sequence is
//! the same on every machine and in every process. A batch never spans two shards (the
//! last batch of a shard may be short), so a batch is a zero-copy slice of the mapping
//! when not shuffled.
//!
//! **Resume.** [`DatasetStream::resume_token`] names the rows yielded so far (the
//! dataset, the seed, the epoch, a position); a stream started with that token yields
//! exactly the rest of the sequence, seeking straight to the shard and row.
//!
//! **Hand-off.** The producer (a thread of its own) opens, verifies and decodes each
//! shard, and hands the reader the whole shard's rows as one record batch (shuffled, a
//! copy of them in the shard's permuted order); the reader cuts its batches from it with
//! zero-copy slices. A batch of 32 short rows is a few kilobytes that a reader consumes in
//! well under a microsecond, about what one wake-up across threads costs, so a hand-off
//! per batch (or per group of batches) would bound the stream below the speed of reading
//! its bytes; slicing on the reader's side also keeps each batch's allocations on the
//! thread that frees them. The producer works `prefetch` batches ahead of the reader,
//! rounded up to whole shards (at least the next shard).
//!
//! **Tiers.** A shard the memory tier (`memory_size`) holds is read from it; any other
//! from the store, through a memory map (with plain reads into a buffer of its own when
//! [`use_mmap`](crate::DatasetConfig::use_mmap) is false), and copied into the memory
//! tier when its policy makes room (see
//! [`DatasetCache::memory`](crate::DatasetCache::memory)).
//!
//! **Integrity.** A shard is verified (its BLAKE3, once per file identity) before its
//! first batch is sent, and decoded with Arrow's full validation the first time this
//! cache decodes it (later decodes of the same verified bytes skip it: they are the
//! bytes that passed); a shard that fails, or that the cap evicted, is recomputed from
//! its source rows and checked against the manifest's digest. A shard read through its
//! mapping is held open until its last batch is yielded, so eviction never takes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use arrow_array::{RecordBatch, UInt32Array};
use infercache_artifact::Blob;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore as _, SeedableRng as _};
use serde::Serialize;

use crate::DatasetError;
use crate::cache::{Dataset, Inner};
use crate::fingerprint::Fingerprint;
use crate::shard;

/// One shard's rows as the stream yields them, from `at` on.
#[derive(Debug)]
struct ShardRows {
    rows: RecordBatch,
    at: usize,
    /// The blob of a shard read through its mapping, held until its last batch is
    /// yielded (it keeps the store from evicting the shard).
    _blob: Option<Blob>,
}

/// One message from the producer: a shard's rows, or the error that ends the stream.
type Message = Result<ShardRows, DatasetError>;

/// Finished shards handed back to the producer to be dropped there: dropping a shard read
/// through its mapping unmaps it (page tables and a TLB shootdown, tens of microseconds
/// for a shard of 2 MB), work the reader would otherwise do between two batches. Bounded:
/// when it is full (or the producer is gone) the reader drops the shard itself.
const RETURNED: usize = 2;

/// Options of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// Rows per batch (default 32, LlamaHome's `batch_buffer`).
    pub batch_size: usize,
    /// Batches decoded ahead of the reader (default 4), rounded up to whole shards: the
    /// next shard is always opened, verified and decoded while the reader reads this
    /// one.
    pub prefetch: usize,
    /// Shuffle with this seed; `None` keeps the dataset's order.
    pub shuffle: Option<u64>,
    /// The epoch (a new permutation per epoch when shuffled).
    pub epoch: u64,
    /// Continue a stream from its [`DatasetStream::resume_token`]; its seed and epoch
    /// then apply.
    pub resume: Option<String>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            prefetch: 4,
            shuffle: None,
            epoch: 0,
            resume: None,
        }
    }
}

/// Counters of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    /// Shards opened.
    pub shards_read: u64,
    /// Shards of those read from the memory tier.
    pub memory_hits: u64,
    /// Shards recomputed from their sources (evicted or corrupt).
    pub shards_rebuilt: u64,
    /// Shards that failed their digest (and were recomputed, never served).
    pub corrupt: u64,
    /// Shards decoded with Arrow's full validation: the first decode of each shard in
    /// this cache; later decodes of the same bytes (verified by their digest) skip it.
    pub validated: u64,
}

#[derive(Debug, Default)]
struct Counters {
    shards_read: AtomicU64,
    memory_hits: AtomicU64,
    shards_rebuilt: AtomicU64,
    corrupt: AtomicU64,
    validated: AtomicU64,
}

/// Deterministic randomness: ChaCha8 keyed by BLAKE3 of (seed, epoch, salt).
#[derive(Debug)]
pub(crate) struct Rng(ChaCha8Rng);

impl Rng {
    pub(crate) fn new(seed: u64, epoch: u64, salt: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"infercache-dataset-shuffle-v1");
        h.update(&seed.to_le_bytes());
        h.update(&epoch.to_le_bytes());
        h.update(&salt.to_le_bytes());
        Self(ChaCha8Rng::from_seed(*h.finalize().as_bytes()))
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2⁻³²).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.0.next_u64()) * u128::from(n);
        u64::try_from(wide >> 64).expect("the high half of a product by n is below n")
    }

    /// Fisher–Yates.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = usize::try_from(self.below(i as u64 + 1)).expect("an index fits");
            v.swap(i, j);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token {
    fingerprint: Fingerprint,
    seed: Option<u64>,
    epoch: u64,
    position: u64,
}

impl Token {
    fn encode(&self) -> String {
        format!(
            "v1.{}.{}.{}.{}",
            self.fingerprint,
            self.seed.map_or("-".to_owned(), |s| s.to_string()),
            self.epoch,
            self.position
        )
    }

    fn decode(text: &str) -> Result<Self, DatasetError> {
        let bad = |reason: &str| DatasetError::BadToken {
            token: text.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [v, fp, seed, epoch, position] = parts[..] else {
            return Err(bad("expected v1.FINGERPRINT.SEED.EPOCH.POSITION"));
        };
        if v != "v1" {
            return Err(bad("unknown token version"));
        }
        Ok(Self {
            fingerprint: fp.parse().map_err(|_| bad("the fingerprint is not hex"))?,
            seed: match seed {
                "-" => None,
                s => Some(s.parse().map_err(|_| bad("the seed is not a number"))?),
            },
            epoch: epoch
                .parse()
                .map_err(|_| bad("the epoch is not a number"))?,
            position: position
                .parse()
                .map_err(|_| bad("the position is not a number"))?,
        })
    }
}

/// A stream of a dataset's batches. An iterator of `Result<RecordBatch, DatasetError>`;
/// after an error it ends. Dropping it stops the producer.
#[derive(Debug)]
pub struct DatasetStream {
    rx: Receiver<Message>,
    /// Finished shards, back to the producer (see [`RETURNED`]).
    done: SyncSender<ShardRows>,
    current: Option<ShardRows>,
    batch_size: usize,
    token: Token,
    rows: u64,
    counters: Arc<Counters>,
    failed: bool,
}

impl DatasetStream {
    pub(crate) fn start(
        inner: Arc<Inner>,
        dataset: Dataset,
        options: StreamOptions,
    ) -> Result<Self, DatasetError> {
        let m = &dataset.manifest;
        let mut token = Token {
            fingerprint: m.fingerprint,
            seed: options.shuffle,
            epoch: options.epoch,
            position: 0,
        };
        if let Some(text) = &options.resume {
            let t = Token::decode(text)?;
            if t.fingerprint != m.fingerprint {
                return Err(DatasetError::BadToken {
                    token: text.clone(),
                    reason: format!(
                        "it belongs to dataset {}, not {}",
                        t.fingerprint, m.fingerprint
                    ),
                });
            }
            if t.position > m.rows {
                return Err(DatasetError::BadToken {
                    token: text.clone(),
                    reason: format!("position {} is past the {} rows", t.position, m.rows),
                });
            }
            token = t;
        }
        if options.batch_size == 0 {
            return Err(DatasetError::BadToken {
                token: String::new(),
                reason: "the batch size must be at least 1".to_owned(),
            });
        }
        let cap = inner.config.disk_size;
        if let Some(largest) = m.shards.iter().map(|s| s.bytes).max()
            && 2 * largest > cap
        {
            return Err(DatasetError::CapTooSmall {
                cap,
                shard_bytes: largest,
            });
        }
        let mut order: Vec<u64> = (0..m.shards.len() as u64).collect();
        if let Some(seed) = token.seed {
            Rng::new(seed, token.epoch, u64::MAX).shuffle(&mut order);
        }
        // Shards ready ahead: one blocked in `send`, the rest in the channel.
        let batches_per_shard = usize::try_from(m.shard_rows)
            .unwrap_or(usize::MAX)
            .div_ceil(options.batch_size)
            .max(1);
        let ahead = options.prefetch.max(1).div_ceil(batches_per_shard);
        let (tx, rx) = sync_channel(ahead - 1);
        let (done, returned) = sync_channel(RETURNED);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let rows = m.rows;
        std::thread::Builder::new()
            .name("dataset-stream".to_owned())
            .spawn(move || {
                if let Err(e) = produce(&inner, &dataset, &order, token, &c, &tx, &returned) {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| DatasetError::io(std::path::Path::new("dataset-stream thread"), e))?;
        Ok(Self {
            rx,
            done,
            current: None,
            batch_size: options.batch_size,
            token,
            rows,
            counters,
            failed: false,
        })
    }

    /// A token that resumes this stream after the batches yielded so far.
    pub fn resume_token(&self) -> String {
        self.token.encode()
    }

    /// Rows yielded so far in this epoch (resumed streams count from their token).
    pub fn position(&self) -> u64 {
        self.token.position
    }

    /// Rows in the dataset.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// This stream's counters.
    pub fn stats(&self) -> StreamStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StreamStats {
            shards_read: get(&self.counters.shards_read),
            memory_hits: get(&self.counters.memory_hits),
            shards_rebuilt: get(&self.counters.shards_rebuilt),
            corrupt: get(&self.counters.corrupt),
            validated: get(&self.counters.validated),
        }
    }
}

impl Iterator for DatasetStream {
    type Item = Result<RecordBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(c) = &mut self.current {
                let n = c.rows.num_rows();
                if c.at < n {
                    let len = self.batch_size.min(n - c.at);
                    let batch = c.rows.slice(c.at, len);
                    c.at += len;
                    self.token.position += len as u64;
                    return Some(Ok(batch));
                }
            }
            // Release the finished shard before waiting for the next, on the producer's
            // thread when it takes it (`try_send` hands a refused one back, dropped here).
            if let Some(finished) = self.current.take() {
                let _ = self.done.try_send(finished);
            }
            match self.rx.recv().ok()? {
                Ok(rows) => self.current = Some(rows),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Shard `index` of `dataset`, as one record batch: from the memory tier if it holds it,
/// else from the store (verified, recomputed if it must be), copied into the memory tier
/// when it takes it in, read through its mapping otherwise (with the blob that keeps the
/// mapping's file from eviction).
fn open_shard(
    inner: &Inner,
    dataset: &Dataset,
    index: u64,
    counters: &Counters,
) -> Result<(RecordBatch, Option<Blob>), DatasetError> {
    let digest = dataset.manifest.shards[usize::try_from(index).expect("index fits")].digest;
    counters.shards_read.fetch_add(1, Ordering::Relaxed);
    if let Some(rows) = inner.memory.get(&digest) {
        counters.memory_hits.fetch_add(1, Ordering::Relaxed);
        return Ok((rows, None));
    }
    let blob = inner.shard_blob(
        dataset,
        index,
        &mut || {
            counters.corrupt.fetch_add(1, Ordering::Relaxed);
        },
        &mut || {
            counters.shards_rebuilt.fetch_add(1, Ordering::Relaxed);
        },
    )?;
    let count = |decoded| {
        if decoded == shard::Decoded::Validated {
            counters.validated.fetch_add(1, Ordering::Relaxed);
        }
    };
    if let Some((rows, decoded)) = inner.memory.load(&blob, &inner.validated)? {
        count(decoded);
        return Ok((rows, None));
    }
    let use_mmap = inner.config.use_mmap;
    let (batches, decoded) = shard::decode_shard(
        blob.digest(),
        &shard::read(&blob, use_mmap)?,
        &inner.validated,
    )?;
    count(decoded);
    let rows = shard::one_batch(batches, &digest)?;
    // Rows read into memory of their own need the blob no longer.
    Ok((rows, use_mmap.then_some(blob)))
}

/// The producer: sends every shard's rows from `token.position` on, in order, and drops
/// the shards the reader has finished with (`returned`). Returns early (`Ok`) when the
/// reader is gone.
fn produce(
    inner: &Inner,
    dataset: &Dataset,
    order: &[u64],
    token: Token,
    counters: &Counters,
    tx: &SyncSender<Message>,
    returned: &Receiver<ShardRows>,
) -> Result<(), DatasetError> {
    let shards = &dataset.manifest.shards;
    let mut skip = token.position;
    for &index in order {
        let entry = shards[usize::try_from(index).expect("index fits")];
        if skip >= entry.rows {
            skip -= entry.rows;
            continue;
        }
        let start = usize::try_from(skip).expect("a shard's rows fit");
        skip = 0;
        let (rows, blob) = open_shard(inner, dataset, index, counters)?;
        if rows.num_rows() as u64 != entry.rows {
            return Err(DatasetError::Unrecoverable {
                dataset: dataset.manifest.fingerprint.hex(),
                shard: index,
                reason: format!(
                    "it holds {} rows where the manifest says {}",
                    rows.num_rows(),
                    entry.rows
                ),
            });
        }
        let message = match token.seed {
            None => ShardRows {
                rows,
                at: start,
                _blob: blob,
            },
            Some(seed) => {
                let n = u32::try_from(rows.num_rows()).expect("a shard has under 2^32 rows");
                let mut p: Vec<u32> = (0..n).collect();
                Rng::new(seed, token.epoch, index).shuffle(&mut p);
                let taken = arrow_select::take::take_record_batch(
                    &rows,
                    &UInt32Array::from(p.split_off(start)),
                )
                .map_err(|e| DatasetError::arrow("shuffling a shard", e))?;
                // A copy: the blob can go.
                ShardRows {
                    rows: taken,
                    at: 0,
                    _blob: None,
                }
            }
        };
        if tx.send(Ok(message)).is_err() {
            return Ok(());
        }
        while let Ok(finished) = returned.try_recv() {
            drop(finished);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let t = Token {
            fingerprint: Fingerprint([7; 32]),
            seed: Some(42),
            epoch: 3,
            position: 1_000,
        };
        assert_eq!(Token::decode(&t.encode()).unwrap(), t);
        let t = Token { seed: None, ..t };
        assert_eq!(Token::decode(&t.encode()).unwrap(), t);
        for bad in ["", "v2.x.1.2.3", "v1.zz.1.2.3", "v1.00.1.2"] {
            assert!(Token::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shuffles_are_permutations_and_depend_on_seed_and_epoch() {
        let perm = |seed, epoch| {
            let mut v: Vec<u32> = (0..100).collect();
            Rng::new(seed, epoch, 0).shuffle(&mut v);
            v
        };
        let a = perm(1, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, perm(1, 0));
        assert_ne!(a, perm(2, 0));
        assert_ne!(a, perm(1, 1));
    }
}
