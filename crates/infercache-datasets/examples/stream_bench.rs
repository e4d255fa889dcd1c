//! The Rust half of `scripts/bench-datasets` (a benchmark, not a test; see BENCHMARKS.md).
//!
//! ```text
//! stream_bench --source ROWS.jsonl --cache DIR [--rounds N] [--batch 32] [--prefetch 4]
//!              [--shard-rows 8192] [--memory-size BYTES] [--use-mmap true|false] [--rss]
//! ```
//!
//! Builds (or finds) the dataset `bench` from the source, warms the page cache and the
//! shards' verification stamps with one pass of each side, then in every round times,
//! back to back (the first side alternates):
//!
//! - `plain`: a sequential `read` of every shard file in 1 MiB chunks, each byte folded
//!   into a checksum;
//! - `stream`: `stream_dataset` with the batch size and prefetch given, each byte of each
//!   batch's values folded the same way (a consumer that reads its data: zero-copy
//!   batches are otherwise never touched).
//!
//! The rounds' cache has a memory tier of `--memory-size` bytes (default: the dataset
//! cache's default, 1,000 MB) and reads shard files through memory maps, or with plain
//! reads with `--use-mmap false`. Each side also reports the bytes it folded, so the two can
//! be seen to read the same data.
//!
//! With `--rss`, the rounds' cache is dropped and the dataset streamed once more through a
//! cache whose memory tier is a tenth of the dataset (a dataset 10x `memory_size`), after
//! the peak RSS is reset (`/proc/self/clear_refs`); the peak of the whole process during
//! it is reported against the bound `memory_size` + prefetch × batch bytes + 50 MB. One
//! JSON object per line on stdout.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Instant;

use arrow_array::cast::AsArray as _;
use arrow_array::types::{Int64Type, UInt32Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use infercache_core::SystemClock;
use infercache_datasets::{
    BuildOptions, DatasetCache, DatasetConfig, DatasetSource, StreamOptions,
};

struct Args {
    source: PathBuf,
    cache: PathBuf,
    rounds: usize,
    batch: usize,
    prefetch: usize,
    shard_rows: usize,
    memory_size: Option<u64>,
    use_mmap: bool,
    rss: bool,
}

fn args() -> Args {
    let mut a = Args {
        source: PathBuf::new(),
        cache: PathBuf::new(),
        rounds: 3,
        batch: 32,
        prefetch: 4,
        shard_rows: infercache_datasets::DEFAULT_SHARD_ROWS,
        memory_size: None,
        use_mmap: true,
        rss: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--source" => a.source = value().into(),
            "--cache" => a.cache = value().into(),
            "--rounds" => a.rounds = value().parse().expect("--rounds N"),
            "--batch" => a.batch = value().parse().expect("--batch N"),
            "--prefetch" => a.prefetch = value().parse().expect("--prefetch N"),
            "--shard-rows" => a.shard_rows = value().parse().expect("--shard-rows N"),
            "--memory-size" => {
                a.memory_size = Some(value().parse().expect("--memory-size BYTES"));
            }
            "--use-mmap" => a.use_mmap = value().parse().expect("--use-mmap true|false"),
            "--rss" => a.rss = true,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        !a.source.as_os_str().is_empty() && !a.cache.as_os_str().is_empty(),
        "--source and --cache are required"
    );
    a
}

/// Bytes folded by this thread's side of the benchmark (counted per call, not per byte).
static FOLDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Folds bytes into a checksum, eight at a time, so that every byte is read.
fn fold(sum: u64, bytes: &[u8]) -> u64 {
    FOLDED.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let mut chunks = bytes.chunks_exact(8);
    let mut s = sum;
    for c in chunks.by_ref() {
        s = s.wrapping_add(u64::from_le_bytes(c.try_into().expect("eight bytes")));
    }
    for &b in chunks.remainder() {
        s = s.wrapping_add(u64::from(b));
    }
    s
}

/// Folds the bytes of one (possibly sliced) array's values.
fn touch(sum: u64, array: &dyn Array) -> u64 {
    match array.data_type() {
        DataType::Int64 => fold(
            sum,
            bytemuck_slice(array.as_primitive::<Int64Type>().values()),
        ),
        DataType::UInt32 => fold(
            sum,
            bytemuck_slice(array.as_primitive::<UInt32Type>().values()),
        ),
        DataType::Utf8 => {
            let s = array.as_string::<i32>();
            let offsets = s.value_offsets();
            let (first, last) = (offsets[0], offsets[offsets.len() - 1]);
            let bytes = &s.values()
                [usize::try_from(first).expect("offset")..usize::try_from(last).expect("offset")];
            fold(fold(sum, bytemuck_slice(offsets)), bytes)
        }
        DataType::List(_) => {
            let l = array.as_list::<i32>();
            let offsets = l.value_offsets();
            let (first, last) = (offsets[0], offsets[offsets.len() - 1]);
            let child = l.values().slice(
                usize::try_from(first).expect("offset"),
                usize::try_from(last - first).expect("offset"),
            );
            touch(fold(sum, bytemuck_slice(offsets)), child.as_ref())
        }
        other => panic!("stream_bench reads Int64, UInt32, Utf8 and List columns, not {other}"),
    }
}

fn bytemuck_slice<T: arrow_buffer::ArrowNativeType>(v: &[T]) -> &[u8] {
    arrow_buffer::ToByteSlice::to_byte_slice(v)
}

fn touch_batch(sum: u64, batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .fold(sum, |s, c| touch(s, c.as_ref()))
}

/// The bytes folded since the last call.
fn folded() -> u64 {
    FOLDED.swap(0, std::sync::atomic::Ordering::Relaxed)
}

fn plain(files: &[PathBuf]) -> (f64, u64) {
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut sum = 0u64;
    for path in files {
        let mut f = std::fs::File::open(path).expect("a shard file");
        loop {
            let n = f.read(&mut buf).expect("reading a shard");
            if n == 0 {
                break;
            }
            sum = fold(sum, &buf[..n]);
        }
    }
    (start.elapsed().as_secs_f64(), sum)
}

fn stream(cache: &DatasetCache, batch: usize, prefetch: usize) -> (f64, u64, u64) {
    let start = Instant::now();
    let mut sum = 0u64;
    let mut rows = 0u64;
    let options = StreamOptions {
        batch_size: batch,
        prefetch,
        ..StreamOptions::default()
    };
    for b in cache.stream_dataset("bench", options).expect("the dataset") {
        let b = b.expect("a batch");
        rows += b.num_rows() as u64;
        sum = touch_batch(sum, &b);
    }
    (start.elapsed().as_secs_f64(), sum, rows)
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn open(a: &Args, memory_size: Option<u64>) -> DatasetCache {
    let defaults = DatasetConfig::default();
    let config = DatasetConfig {
        memory_size: memory_size.unwrap_or(defaults.memory_size),
        use_mmap: a.use_mmap,
        ..defaults
    };
    DatasetCache::open(&a.cache, config, SystemClock::shared()).expect("opening the cache")
}

fn main() {
    let a = args();
    let cache = open(&a, a.memory_size);
    let built = cache
        .cache_dataset(
            "bench",
            DatasetSource::Files(vec![a.source.clone()]),
            &[],
            BuildOptions {
                shard_rows: a.shard_rows,
            },
            &mut |_| {},
        )
        .expect("building the dataset");
    let d = cache.get_dataset("bench").expect("reading").expect("built");
    let files: Vec<PathBuf> = d
        .manifest
        .shards
        .iter()
        .map(|s| cache.store().root().join("blobs").join(s.digest.hex()))
        .collect();
    let bytes: u64 = d.manifest.shards.iter().map(|s| s.bytes).sum();
    println!(
        "{}",
        serde_json::json!({
            "dataset": {"rows": built.rows, "shards": built.shards, "bytes": bytes,
                        "computed": built.rows_computed}
        })
    );
    // Warm the page cache and the verification stamps.
    plain(&files);
    stream(&cache, a.batch, a.prefetch);
    let mut folds = [0u64; 2];
    for round in 0..a.rounds {
        folded();
        let (p, s) = if round % 2 == 0 {
            let p = plain(&files);
            folds[0] = folded();
            let s = stream(&cache, a.batch, a.prefetch);
            folds[1] = folded();
            (p, s)
        } else {
            let s = stream(&cache, a.batch, a.prefetch);
            folds[1] = folded();
            let p = plain(&files);
            folds[0] = folded();
            (p, s)
        };
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        let mb = |secs: f64| bytes as f64 / secs / 1e6;
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        let rows_per_s = s.2 as f64 / s.0;
        println!(
            "{}",
            serde_json::json!({
                "round": round,
                "plain_s": p.0, "plain_mb_s": mb(p.0),
                "stream_s": s.0, "stream_mb_s": mb(s.0),
                "stream_rows_s": rows_per_s,
                "ratio": p.0 / s.0,
                "checksums": [p.1, s.1],
                "folded_bytes": folds,
                "memory": cache.memory(),
            })
        );
    }
    if a.rss {
        drop(cache);
        let memory_size = bytes / 10;
        let cache = open(&a, Some(memory_size));
        // Peak RSS from here on: writing 5 to clear_refs resets VmHWM to the current RSS.
        std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
        let (before, _) = rss();
        let (_, _, rows) = stream(&cache, a.batch, a.prefetch);
        let (after, peak) = rss();
        #[expect(clippy::cast_precision_loss, reason = "bytes per row, for a bound")]
        let row_bytes = bytes as f64 / rows as f64;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a bound in bytes"
        )]
        let bound =
            memory_size + (a.prefetch as f64 * a.batch as f64 * row_bytes) as u64 + 50_000_000;
        println!(
            "{}",
            serde_json::json!({
                "rss": {"before": before, "peak": peak, "after": after,
                        "growth": peak.saturating_sub(before),
                        "memory_size": memory_size, "bound": bound,
                        "dataset_bytes": bytes, "memory": cache.memory()}
            })
        );
    }
}
