//! What one cached embedding costs the process: fills a memory-only [`Cache`] with `N`
//! entries of 384-dimension `f32` embeddings (1,536 bytes each) and prints the resident set
//! growth per entry against the raw value bytes, and the tier's own byte accounting (what
//! it charges against its budget) against that growth.
//!
//! ```text
//! cargo run -p infercache-engine --example memory_per_entry -- --entries 1000000
//! ```
//!
//! The cache is built as the server builds it: `Cache::open` with a memory tier only
//! (default policy, shards picked from the core count), keys from [`Cache::key`] over a
//! tenant, model, version and text (the server's derivation for the built-in model), and
//! values stored by [`Cache::get_many_or_compute`] in batches, each value a `Vec<u8>` of
//! exactly 1,536 bytes turned into `Bytes` (what the server's encoder produces). Several
//! tasks insert at once on a multi-threaded runtime, as concurrent requests do, then read
//! every entry back once (a hit may allocate: the first clone of a stored value allocates
//! its reference count). The allocator is jemalloc, as in the `infercache` binary (the
//! memory tier charges its size classes). With `--counted` each value is stored as the
//! built-in model stores it: the vector and its input's token count, 1,540 bytes. With
//! `--budget BYTES` below what the entries take, the tier is full and evicts as a server's
//! does; the figures are then per entry held at the end.
//!
//! The resident set is read from `/proc/self/statm` (Linux) before the first insert and
//! after the read pass, once the runtime is idle; everything the loop allocated for its own
//! use (texts, keys, batches) is freed by then, so the growth is what the cache holds.

use std::time::Duration;

/// The `infercache` binary's allocator, whose size classes the memory tier charges.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::{Context, bail};
use bytes::Bytes;
use infercache_core::{CanonicalInput, Epochs, KeyParts, SystemClock};
use infercache_engine::{
    Cache, CacheConfig, CacheKey, Lookup, MemoryConfig, Policy, RequestOptions, Source,
};

/// Dimensions of the embedding (all-MiniLM-L6-v2).
const DIMS: usize = 384;
/// Bytes of one stored embedding.
const VALUE_BYTES: usize = DIMS * 4;
/// Keys per `get_many_or_compute` call (a typical request's batch).
const BATCH: usize = 32;

/// Command-line options.
#[derive(Debug, Clone, Copy)]
struct Options {
    entries: usize,
    tasks: usize,
    /// Capacity of each value's vector when it becomes `Bytes`: more than the value when it
    /// was built by growing, as `serde_json::to_vec` builds an upstream row's JSON.
    capacity: usize,
    /// Values carry a 4-byte token count after the vector, as the built-in model's do.
    counted: bool,
    /// The memory tier's budget in bytes; unset, room for every entry. Set below what the
    /// entries take, the fill evicts (and keeps the policy's ghost keys) as a full tier in
    /// the server does, and the read pass counts hits instead of requiring them.
    budget: Option<u64>,
    /// The memory tier's eviction policy (the default, as the server's, unless given).
    policy: Policy,
}

impl Options {
    /// Bytes of one stored value.
    fn value_bytes(&self) -> usize {
        VALUE_BYTES + if self.counted { 4 } else { 0 }
    }
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            entries: 1_000_000,
            tasks: 4,
            capacity: VALUE_BYTES,
            counted: false,
            budget: None,
            policy: Policy::default(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut number = || -> anyhow::Result<usize> {
                let value = args
                    .next()
                    .with_context(|| format!("{flag} needs a value"))?;
                value
                    .replace('_', "")
                    .parse()
                    .with_context(|| format!("{flag}: {value:?} is not a count"))
            };
            if flag == "--policy" {
                let name = args.next().context("--policy needs a value")?;
                options.policy = name.parse().map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
                continue;
            }
            if flag == "--counted" {
                options.counted = true;
                continue;
            }
            match flag.as_str() {
                "--entries" => options.entries = number()?,
                "--tasks" => options.tasks = number()?.max(1),
                "--vec-capacity" => options.capacity = number()?.max(VALUE_BYTES),
                "--budget" => options.budget = Some(number()? as u64),
                _ => bail!(
                    "unknown flag {flag:?}; usage: memory_per_entry [--entries N (1000000)] \
                     [--tasks T (4)] [--vec-capacity BYTES (1536)] [--counted] \
                     [--budget BYTES] [--policy NAME]"
                ),
            }
        }
        Ok(options)
    }
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("/proc/self/statm has no resident field")?
        .parse()
        .context("/proc/self/statm: resident field")?;
    // Every Linux target this runs on uses 4 KiB pages.
    Ok(pages * 4096)
}

/// The server's key for `text` under the built-in model.
fn key(cache: &Cache, text: &str) -> CacheKey {
    let input = CanonicalInput::text(text);
    cache.key(KeyParts {
        namespace: "default",
        model: "all-MiniLM-L6-v2",
        version: "1",
        artifact: Some("sha256:53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
        epochs: Epochs::default(),
        input: &input,
        params: b"",
    })
}

/// A deterministic embedding for entry `i`, encoded as the server stores it.
fn embedding(i: usize, options: Options) -> Bytes {
    let mut out = Vec::with_capacity(options.capacity.max(options.value_bytes()));
    let mut x = (i as u32).wrapping_mul(2_654_435_761) | 1;
    for _ in 0..DIMS {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        #[expect(clippy::cast_precision_loss, reason = "a pseudo-random float")]
        let v = x as f32 / u32::MAX as f32 - 0.5;
        out.extend_from_slice(&v.to_le_bytes());
    }
    if options.counted {
        // A text of 8 to 27 tokens.
        let tokens = u32::try_from(i % 20 + 8).expect("below 28");
        out.extend_from_slice(&tokens.to_le_bytes());
    }
    Bytes::from(out)
}

/// Inserts entries `start, start + step, ...` below `end`, `BATCH` per call.
async fn fill(
    cache: Cache,
    start: usize,
    step: usize,
    end: usize,
    shape: Options,
) -> anyhow::Result<()> {
    let options = RequestOptions::default();
    let ids: Vec<usize> = (start..end).step_by(step).collect();
    for chunk in ids.chunks(BATCH) {
        let keys: Vec<CacheKey> = chunk
            .iter()
            .map(|i| key(&cache, &format!("passage {i}: a sentence about caching")))
            .collect();
        let values = cache
            .get_many_or_compute(&keys, &options, |missing| {
                let values: Vec<Bytes> = missing
                    .iter()
                    .map(|k| {
                        let i = keys
                            .iter()
                            .position(|x| x.digest() == k.digest())
                            .expect("the engine computes only keys it was given");
                        embedding(chunk[i], shape)
                    })
                    .collect();
                async move { Ok::<_, std::convert::Infallible>(values) }
            })
            .await?;
        assert_eq!(values.len(), chunk.len());
    }
    Ok(())
}

/// Reads entries `start, start + step, ...` below `end`; every one must hit memory.
async fn read(
    cache: Cache,
    start: usize,
    step: usize,
    end: usize,
    value_bytes: usize,
    evicting: bool,
) -> anyhow::Result<()> {
    let options = RequestOptions::default();
    for i in (start..end).step_by(step) {
        let key = key(&cache, &format!("passage {i}: a sentence about caching"));
        match cache.get(&key, &options).await {
            Lookup::Hit(hit) if hit.source == Source::Memory && hit.value.len() == value_bytes => {}
            Lookup::Miss if evicting => {}
            other => bail!("entry {i} did not hit memory: {other:?}"),
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    let n = options.entries;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Room for every entry however unevenly the shards fill: nothing is evicted.
    let capacity = options
        .budget
        .unwrap_or_else(|| (n as u64 * (VALUE_BYTES as u64 + 1024)).max(64 << 20) * 2);
    let (rss_before, rss_after, stats) = runtime.block_on(async {
        let config = CacheConfig {
            memory: Some(MemoryConfig {
                policy: options.policy,
                ..MemoryConfig::bytes(capacity)
            }),
            ..CacheConfig::default()
        };
        let cache = Cache::open(config, SystemClock::shared())?;
        // Warm the runtime's threads and the key path before the baseline.
        fill(cache.clone(), n, 1, n + BATCH, options).await?;
        cache.clear().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = rss_bytes()?;
        let tasks: Vec<_> = (0..options.tasks)
            .map(|t| tokio::spawn(fill(cache.clone(), t, options.tasks, n, options)))
            .collect();
        for task in tasks {
            task.await??;
        }
        let tasks: Vec<_> = (0..options.tasks)
            .map(|t| {
                tokio::spawn(read(
                    cache.clone(),
                    t,
                    options.tasks,
                    n,
                    options.value_bytes(),
                    options.budget.is_some(),
                ))
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_bytes()?;
        let stats = cache
            .stats()
            .memory
            .context("the cache has a memory tier")?;
        Ok::<_, anyhow::Error>((before, after, (stats, cache)))
    })?;
    let (stats, _cache) = stats;
    if options.budget.is_none() && (stats.entries != n as u64 || stats.evictions != 0) {
        bail!(
            "expected {n} entries and no eviction, found {} entries and {} evictions",
            stats.entries,
            stats.evictions
        );
    }
    #[expect(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
    {
        let growth = rss_after.saturating_sub(rss_before) as f64;
        // Per entry held at the end (all `n` unless the budget evicted some).
        let held = stats.entries as f64;
        let per_entry = growth / held;
        let raw = options.value_bytes() as f64;
        let accounted = stats.bytes as f64;
        println!("entries                 {n}");
        println!("entries held            {}", stats.entries);
        println!("evictions               {}", stats.evictions);
        println!("value bytes per entry   {}", options.value_bytes());
        println!("vector capacity         {}", options.capacity);
        println!(
            "rss growth              {:.1} MiB",
            growth / f64::from(1 << 20)
        );
        println!("rss growth per entry    {per_entry:.1} bytes");
        println!("ratio to value bytes    {:.3}x", per_entry / raw);
        println!("accounted per entry     {:.1} bytes", accounted / held);
        println!(
            "accounted / rss growth  {:.3} ({:+.1} %)",
            accounted / growth,
            (accounted / growth - 1.0) * 100.0
        );
    }
    Ok(())
}
