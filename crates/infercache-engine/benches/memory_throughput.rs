//! Throughput of the memory tier against `quick_cache` and `moka`, in nanoseconds per
//! operation per thread (lower is better).
//!
//! Run with `cargo bench -p infercache-engine --bench memory_throughput`; BENCHMARKS.md
//! keeps the results.
//!
//! # Methodology
//!
//! - **Keys and values.** [`N`] keys, `Digest::of_u64(0..N)`, computed once. Each key has its
//!   own 64-byte [`Bytes`] value in a [`MemEntry`]; every contender stores `Digest ->
//!   MemEntry` and a hit clones the entry (a reference-count increment, no copy).
//! - **Access pattern.** Key indices are drawn from Zipf(s) over the `N` keys, rank 1 the
//!   most popular. Each thread gets its own sequence of [`SEQ_LEN`] indices, generated before
//!   anything is timed, and walks it cyclically; its position carries over from one sample
//!   to the next, so consecutive samples do not replay the same prefix.
//! - **Equal capacities.** Every contender weighs an entry as the tier's default weigher
//!   charges it under the default policy ([`memory::charge`]) and gets the same byte
//!   capacity. `quick_cache` runs with its default hasher and options (its item estimate is
//!   the real entry count), `moka` with its defaults.
//! - **Workloads.**
//!   - `get`: a cache sized for all `N` keys (plus a quarter of slack for uneven shards) is
//!     filled with all of them; each operation is a `get` (the hit ratio is printed; it is
//!     1.0 unless a contender lost entries).
//!   - `insert`: a cache sized for `N / 2` entries is filled to capacity; each operation
//!     inserts a Zipf-drawn key, replacing it when resident and evicting when not.
//!   - `read_through`: the same half-size cache; each operation is a `get`, followed by an
//!     `insert` on a miss, as a read-through cache does. The hit ratio over every operation
//!     run is printed (about 0.93 to 0.97 at s = 1.0); a contender that hits more inserts
//!     less, which is part of its throughput.
//! - **Threads.** 1 and 2 (the machines this was written on have 2 cores). Every thread does
//!   `iters` operations on the shared cache; the threads wait at a barrier and the reported
//!   time is wall time, first start to last finish, divided by `iters`: nanoseconds per
//!   operation *per thread*. Criterion's throughput line is the aggregate over all threads
//!   (`threads * iters / wall time`). Thread spawn and join are outside the timed span.
//! - **Contenders.** [`MemoryTier`] with the default policy (its name is printed and
//!   appears in the benchmark id), `quick_cache::sync::Cache` and `moka::sync::Cache`. The
//!   tier's other policies run the `get` workload at s = 1.0, for information.
//!
//! Each benchmark warms up for 1 s and samples for 2 s (20 samples); the whole run takes
//! about two minutes on an idle machine.

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use infercache_core::{Digest, SystemClock};
use infercache_engine::memory::{self, MemEntry};
use infercache_engine::{MemoryConfig, MemoryTier, Policy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;

/// Distinct keys.
const N: usize = 100_000;
/// Bytes per value.
const VALUE_LEN: usize = 64;
/// What every contender charges per entry.
const ENTRY_WEIGHT: u64 = memory::charge(Policy::S3fifo, VALUE_LEN);
/// Entries the `insert` and `read_through` caches hold: half the keys.
const HALF: u64 = N as u64 / 2;
/// Entries the `get` caches are sized for: every key, plus slack for uneven shards.
const ALL_WITH_SLACK: u64 = N as u64 * 5 / 4;
/// Length of each thread's pre-generated key sequence (a power of two).
const SEQ_LEN: usize = 1 << 20;
/// Thread counts measured.
const THREADS: [usize; 2] = [1, 2];

/// The shared keys and values.
struct Dataset {
    keys: Vec<Digest>,
    entries: Vec<MemEntry>,
}

impl Dataset {
    fn new() -> Self {
        let keys = (0..N as u64).map(Digest::of_u64).collect();
        let entries = (0..N)
            .map(|i| MemEntry {
                // One allocation per value, as real values have; the byte is arbitrary.
                value: Bytes::from(vec![i as u8; VALUE_LEN]),
                created_ms: 0,
                expires_ms: memory::NEVER,
            })
            .collect();
        Self { keys, entries }
    }

    /// Inserts every key, in index order.
    fn fill(&self, cache: &impl Contender) {
        for (key, entry) in self.keys.iter().zip(&self.entries) {
            cache.insert(*key, entry.clone());
        }
        cache.settle();
    }
}

/// One Zipf(s)-distributed sequence of key indices per thread.
fn zipf_sequences(s: f64, threads: usize) -> Vec<Vec<u32>> {
    let zipf = Zipf::new(N as f64, s).expect("N >= 1 and s >= 0");
    (0..threads)
        .map(|t| {
            let mut rng = StdRng::seed_from_u64(0x5eed + t as u64);
            (0..SEQ_LEN)
                // Zipf samples ranks 1..=N.
                .map(|_| rng.sample(zipf) as u32 - 1)
                .collect()
        })
        .collect()
}

/// The operations every contender offers, with the tier's signatures.
trait Contender: Sync {
    fn get(&self, key: &Digest) -> Option<MemEntry>;
    fn insert(&self, key: Digest, entry: MemEntry);
    /// Applies buffered writes, so timing starts from a settled cache.
    fn settle(&self) {}
}

impl Contender for MemoryTier {
    #[inline]
    fn get(&self, key: &Digest) -> Option<MemEntry> {
        MemoryTier::get(self, key)
    }
    #[inline]
    fn insert(&self, key: Digest, entry: MemEntry) {
        MemoryTier::insert(self, key, entry);
    }
}

/// Charges what the tier's default weigher charges.
#[derive(Debug, Clone, Copy)]
struct QuickWeighter;

impl quick_cache::Weighter<Digest, MemEntry> for QuickWeighter {
    #[inline]
    fn weight(&self, _key: &Digest, val: &MemEntry) -> u64 {
        memory::charge(Policy::S3fifo, val.value.len())
    }
}

type QuickCache = quick_cache::sync::Cache<Digest, MemEntry, QuickWeighter>;

impl Contender for QuickCache {
    #[inline]
    fn get(&self, key: &Digest) -> Option<MemEntry> {
        QuickCache::get(self, key)
    }
    #[inline]
    fn insert(&self, key: Digest, entry: MemEntry) {
        QuickCache::insert(self, key, entry);
    }
}

type MokaCache = moka::sync::Cache<Digest, MemEntry>;

impl Contender for MokaCache {
    #[inline]
    fn get(&self, key: &Digest) -> Option<MemEntry> {
        MokaCache::get(self, key)
    }
    #[inline]
    fn insert(&self, key: Digest, entry: MemEntry) {
        MokaCache::insert(self, key, entry);
    }
    fn settle(&self) {
        self.run_pending_tasks();
    }
}

/// The tier with `policy`, sized for `entries` entries.
fn tier(policy: Policy, entries: u64) -> MemoryTier {
    let config = MemoryConfig {
        policy,
        ..MemoryConfig::bytes(entries * ENTRY_WEIGHT)
    };
    MemoryTier::new(config, SystemClock::shared())
}

/// A `quick_cache` sized for `entries` entries.
fn quick(entries: u64) -> QuickCache {
    QuickCache::with_weighter(
        usize::try_from(entries).expect("fits usize"),
        entries * ENTRY_WEIGHT,
        QuickWeighter,
    )
}

/// A `moka` cache sized for `entries` entries.
fn moka(entries: u64) -> MokaCache {
    MokaCache::builder()
        .max_capacity(entries * ENTRY_WEIGHT)
        .weigher(|_, v: &MemEntry| {
            u32::try_from(memory::charge(Policy::S3fifo, v.value.len())).expect("fits u32")
        })
        .build()
}

/// Benchmark id of the tier with `policy`, marking the default.
fn tier_id(policy: Policy) -> String {
    if policy == Policy::default() {
        format!("infercache-{policy}-default")
    } else {
        format!("infercache-{policy}")
    }
}

/// One thread's place in its key sequence, and what its operations found.
#[derive(Debug, Default, Clone, Copy)]
struct Walker {
    cursor: usize,
    ops: u64,
    hits: u64,
}

impl Walker {
    /// Does `iters` operations, walking `seq` from the cursor; `op` says whether it hit.
    #[inline]
    fn drive<C, F>(&mut self, cache: &C, seq: &[u32], iters: u64, op: &F)
    where
        F: Fn(&C, usize) -> bool,
    {
        let mut i = self.cursor;
        let mut hits = 0;
        for _ in 0..iters {
            hits += u64::from(op(cache, seq[i] as usize));
            i = (i + 1) & (SEQ_LEN - 1);
        }
        self.cursor = i;
        self.ops += iters;
        self.hits += hits;
    }
}

/// Runs `iters` operations on each of `walkers.len()` threads; the wall time from the first
/// thread's start to the last one's finish.
fn timed<C, F>(cache: &C, seqs: &[Vec<u32>], walkers: &mut [Walker], iters: u64, op: &F) -> Duration
where
    C: Sync,
    F: Fn(&C, usize) -> bool + Sync,
{
    if let [walker] = walkers {
        let start = Instant::now();
        walker.drive(cache, &seqs[0], iters, op);
        return start.elapsed();
    }
    let barrier = Barrier::new(walkers.len());
    let spans: Vec<(Instant, Instant)> = thread::scope(|s| {
        let handles: Vec<_> = seqs
            .iter()
            .zip(walkers.iter_mut())
            .map(|(seq, walker)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    walker.drive(cache, seq, iters, op);
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .collect()
    });
    let (start, end) = spans
        .into_iter()
        .reduce(|(s0, e0), (s1, e1)| (s0.min(s1), e0.max(e1)))
        .expect("at least one thread");
    end - start
}

/// The three workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Get,
    Insert,
    ReadThrough,
}

impl Workload {
    /// Entries the cache is sized for.
    fn capacity(self) -> u64 {
        match self {
            Workload::Get => ALL_WITH_SLACK,
            Workload::Insert | Workload::ReadThrough => HALF,
        }
    }
}

/// One workload at one thread count, ready to run against any contender.
struct Run<'a, 'c> {
    group: BenchmarkGroup<'c, WallTime>,
    workload: Workload,
    data: &'a Dataset,
    /// One key sequence per thread.
    seqs: &'a [Vec<u32>],
}

impl Run<'_, '_> {
    /// Fills `cache` and benchmarks it as `{id}/{threads}t`.
    fn bench<C: Contender>(&mut self, id: &str, cache: &C) {
        let Self {
            workload,
            data,
            seqs,
            ..
        } = *self;
        let threads = seqs.len();
        let id = format!("{id}/{threads}t");
        data.fill(cache);
        self.group.throughput(Throughput::Elements(threads as u64));
        let group = &mut self.group;
        let hit_ratio = match workload {
            Workload::Get => measure(group, &id, cache, seqs, |c, k| {
                black_box(c.get(&data.keys[k])).is_some()
            }),
            Workload::Insert => measure(group, &id, cache, seqs, |c, k| {
                c.insert(data.keys[k], data.entries[k].clone());
                false
            }),
            Workload::ReadThrough => measure(group, &id, cache, seqs, |c, k| {
                let hit = black_box(c.get(&data.keys[k])).is_some();
                if !hit {
                    c.insert(data.keys[k], data.entries[k].clone());
                }
                hit
            }),
        };
        if workload != Workload::Insert {
            eprintln!("{id}: hit ratio {hit_ratio:.4} over every operation run");
        }
    }
}

/// Times `op` on `cache` with one thread per sequence in `seqs`; the share of operations
/// for which `op` returned true (its hits), warm-up included.
fn measure<C, F>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    cache: &C,
    seqs: &[Vec<u32>],
    op: F,
) -> f64
where
    C: Sync,
    F: Fn(&C, usize) -> bool + Sync,
{
    let mut walkers = vec![Walker::default(); seqs.len()];
    group.bench_function(id, |b| {
        b.iter_custom(|iters| timed(cache, seqs, &mut walkers, iters, &op));
    });
    let (ops, hits) = walkers
        .iter()
        .fold((0, 0), |(o, h), w| (o + w.ops, h + w.hits));
    hits as f64 / ops.max(1) as f64
}

/// Every contender under `workload` at Zipf(s), at each thread count; the tier's
/// non-default policies too when `all_policies`.
fn bench_workload(
    c: &mut Criterion,
    data: &Dataset,
    workload: Workload,
    s: f64,
    all_policies: bool,
) {
    let name = match workload {
        Workload::Get => "get",
        Workload::Insert => "insert",
        Workload::ReadThrough => "read_through",
    };
    let all_seqs = zipf_sequences(s, THREADS[THREADS.len() - 1]);
    let entries = workload.capacity();
    let default = Policy::default();
    let mut run = Run {
        group: c.benchmark_group(format!("{name}_zipf{s:.1}")),
        workload,
        data,
        seqs: &[],
    };
    for threads in THREADS {
        run.seqs = &all_seqs[..threads];
        run.bench(&tier_id(default), &tier(default, entries));
        run.bench("quick_cache", &quick(entries));
        run.bench("moka", &moka(entries));
        if all_policies {
            for policy in Policy::ALL.into_iter().filter(|&p| p != default) {
                run.bench(&tier_id(policy), &tier(policy, entries));
            }
        }
    }
    run.group.finish();
}

fn memory_throughput(c: &mut Criterion) {
    eprintln!(
        "default policy: {}; {N} keys, {VALUE_LEN}-byte values, {ENTRY_WEIGHT} bytes charged per entry",
        Policy::default()
    );
    let data = Dataset::new();
    bench_workload(c, &data, Workload::Get, 1.0, true);
    bench_workload(c, &data, Workload::Get, 0.8, false);
    bench_workload(c, &data, Workload::Insert, 1.0, false);
    bench_workload(c, &data, Workload::ReadThrough, 1.0, false);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = memory_throughput
}
criterion_main!(benches);
