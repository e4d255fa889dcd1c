//! Hits served from the Redis tier, against `redis-benchmark` on the same server in the
//! same run, and batch `MGET` against per-key `GET`s.
//!
//! Run with `cargo bench -p infercache-redis --bench redis_tier`; BENCHMARKS.md keeps the
//! results. Without `--bench` (as `cargo test --benches` runs it) every measurement runs
//! once, briefly, as a smoke check.
//!
//! # Methodology
//!
//! - **One server.** A fresh `redis-server` (the crate's test support: loopback, free
//!   port, no persistence) serves every measurement of the run.
//! - **Our side.** A [`Cache`] with the memory and disk tiers off and a [`RedisTier`]
//!   with the default configuration (write-through, 50 ms timeouts) below it, on a
//!   2-worker tokio runtime, as `infercache serve` runs it. [`KEYSPACE`] keys per value
//!   size are stored first; every operation picks its keys uniformly from them, so every
//!   lookup is a Redis hit. `C` tasks run closed loops (each starts its next operation when
//!   the last one returns) for a warm-up, then for the measured window; throughput is
//!   successful operations in the window over its length, latency is each operation's
//!   wall time (p50, p99 over every operation). A failed operation (a miss, a timeout) is
//!   counted and printed, never timed.
//! - **Client only.** The same operations as plain `GET`/`MGET` commands on a
//!   `redis::aio::ConnectionManager` (the connection the tier uses), without the engine,
//!   the codec or the breaker: what the Rust client costs by itself.
//! - **redis-benchmark.** `redis-benchmark -P 1 -c C -r KEYSPACE --csv` against the same
//!   server, `GET key:__rand_int__` (its `-t get`) over [`KEYSPACE`] keys it reads back
//!   that hold values of the size the tier stores (the payload plus the codec's
//!   [`codec::HEADER`]), and for batches a custom `MGET` of `B` random keys. Its p50 and
//!   p99 come from its own CSV. It opens `C` connections; the tier multiplexes `C`
//!   requests over one.
//! - **Rounds.** Each group (one size and concurrency, or one batch size) runs its paths
//!   twice, redis-benchmark last in the first round and first in the second, 200 ms of
//!   warm-up and a 1 s window each; every path shows its round with the higher throughput,
//!   which damps the other load of a shared machine without favouring either side.
//! - **Ratios** are ours over redis-benchmark's, measured back to back in the same run.
//! - **redis-server CPU** per key read: its `used_cpu_user + used_cpu_sys` over the
//!   commands it processed (`INFO`), around each measurement.
//! - **CPU costs.** The codec's decode (CRC32 and the copy into `Bytes`), the Redis key's
//!   formatting and [`Cache::key`] (what a server hashes per request), timed in a loop on
//!   one thread.

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use infercache_core::{CanonicalInput, Epochs, KeyParts, SystemClock};
use infercache_engine::{
    Cache, CacheConfig, CacheKey, Lookup, RemoteEntry, RemoteTier, RequestOptions,
};
use infercache_redis::codec;
use infercache_redis::testing::RedisServer;
use infercache_redis::{RedisConfig, RedisTier, Target};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::ConnectionManager;

/// Keys stored per value size; every lookup draws from them uniformly.
const KEYSPACE: usize = 10_000;
/// Payload sizes: 1 KiB, and about a 384-float embedding as JSON.
const SIZES: [usize; 2] = [1024, 4096];
/// Concurrent callers.
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Batch sizes, at [`BATCH_VALUE`] bytes per value.
const BATCHES: [usize; 2] = [32, 128];
const BATCH_VALUE: usize = 4096;

/// How long each measurement runs.
#[derive(Debug, Clone, Copy)]
struct Plan {
    warmup: Duration,
    window: Duration,
    /// redis-benchmark's request count aims at this long a run.
    rb_target: Duration,
    sizes: &'static [usize],
    concurrency: &'static [usize],
    batches: &'static [usize],
    /// Times each group of paths runs; each path's best round is kept.
    rounds: u32,
    cpu_iters: u32,
}

const FULL: Plan = Plan {
    warmup: Duration::from_millis(200),
    window: Duration::from_millis(1000),
    rb_target: Duration::from_millis(1000),
    sizes: &SIZES,
    concurrency: &CONCURRENCY,
    batches: &BATCHES,
    rounds: 2,
    cpu_iters: 200_000,
};

const SMOKE: Plan = Plan {
    warmup: Duration::from_millis(20),
    window: Duration::from_millis(50),
    rb_target: Duration::from_millis(50),
    sizes: &[1024],
    concurrency: &[1, 16],
    batches: &[32],
    rounds: 1,
    cpu_iters: 1_000,
};

/// One closed-loop measurement.
#[derive(Debug, Default)]
struct Sample {
    ok: u64,
    failed: u64,
    window: Duration,
    /// Sorted, nanoseconds.
    latencies: Vec<u64>,
}

impl Sample {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    /// Percentile `p` (0 to 1) in microseconds.
    fn pct_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        self.latencies[rank.min(self.latencies.len() - 1)] as f64 / 1e3
    }
}

/// What redis-benchmark printed.
#[derive(Debug, Clone, Copy)]
struct RbResult {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `conc` tasks each run `op` in a closed loop: `plan.warmup`, then `plan.window` timed.
/// `op` draws its keys from the task's generator and returns whether it succeeded.
async fn closed_loop<F, Fut>(plan: &Plan, conc: usize, op: F) -> Sample
where
    F: Fn(&mut StdRng) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let (measure_from, end) = (start + plan.warmup, start + plan.warmup + plan.window);
    let tasks: Vec<_> = (0..conc)
        .map(|t| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(0x5eed + t as u64);
                let mut s = Sample::default();
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let good = op(&mut rng).await;
                    let took = t0.elapsed();
                    if t0 >= measure_from {
                        if good {
                            s.ok += 1;
                            s.latencies.push(took.as_nanos() as u64);
                        } else {
                            s.failed += 1;
                        }
                    }
                }
                s
            })
        })
        .collect();
    let mut all = Sample {
        window: plan.window,
        ..Sample::default()
    };
    for task in tasks {
        let s = task.await.expect("a benchmark task panicked");
        all.ok += s.ok;
        all.failed += s.failed;
        all.latencies.extend(s.latencies);
    }
    all.latencies.sort_unstable();
    all
}

/// Runs redis-benchmark against `port` with `conc` connections and enough requests for
/// about `plan.rb_target` at `expected_per_sec`; `what` is `-t get` or a command.
async fn redis_benchmark(
    plan: &Plan,
    port: u16,
    conc: usize,
    expected_per_sec: f64,
    what: &[String],
) -> RbResult {
    let n = ((expected_per_sec * plan.rb_target.as_secs_f64()) as u64).clamp(200, 2_000_000);
    let out = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &conc.to_string(), "-n", &n.to_string()])
        .args(["-r", &KEYSPACE.to_string(), "-P", "1", "--csv"])
        .args(what)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running redis-benchmark (apt-get install redis-tools): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "redis-benchmark failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    // "p99_latency_ms","max_latency_ms"; the test's name may hold commas, the numbers not.
    let row = stdout
        .lines()
        .rfind(|l| !l.starts_with("\"test\""))
        .unwrap_or_else(|| panic!("no result in redis-benchmark's output: {stdout}"));
    let fields: Vec<f64> = row
        .rsplitn(8, ',')
        .take(7)
        .map(|f| {
            f.trim_matches('"')
                .parse()
                .unwrap_or_else(|_| panic!("redis-benchmark printed {row:?}"))
        })
        .collect();
    // Reversed: max, p99, p95, p50, min, avg, rps.
    RbResult {
        per_sec: fields[6],
        p50_us: fields[3] * 1e3,
        p99_us: fields[1] * 1e3,
    }
}

fn value(i: usize, len: usize) -> Vec<u8> {
    const DIGITS: &[u8] = b"0123456789.,-";
    (0..len)
        .map(|j| DIGITS[(i * 31 + j) % DIGITS.len()])
        .collect()
}

fn key(cache: &Cache, model: &str, i: usize) -> CacheKey {
    let input = CanonicalInput::text(&format!("benchmark input text number {i}"));
    cache.key(KeyParts {
        namespace: "bench",
        model,
        version: "1",
        artifact: None,
        epochs: Epochs::default(),
        input: &input,
        params: b"",
    })
}

fn opts() -> RequestOptions {
    RequestOptions::default()
}

fn miss() -> std::io::Error {
    std::io::Error::other("a benchmark key was not in Redis")
}

/// Stores [`KEYSPACE`] values of `len` bytes through the cache (one batch per 500 keys)
/// and the same number, of the size the tier stores, under redis-benchmark's key names.
async fn populate(
    cache: &Cache,
    model: &str,
    len: usize,
    raw: &mut ConnectionManager,
) -> Vec<CacheKey> {
    let keys: Vec<CacheKey> = (0..KEYSPACE).map(|i| key(cache, model, i)).collect();
    for (c, chunk) in keys.chunks(500).enumerate() {
        cache
            .get_many_or_compute(chunk, &opts(), |ks| async move {
                Ok::<_, std::io::Error>(
                    (0..ks.len())
                        .map(|j| Bytes::from(value(c * 500 + j, len)))
                        .collect(),
                )
            })
            .await
            .expect("storing the benchmark keys");
    }
    for chunk in (0..KEYSPACE).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.cmd("SET")
                .arg(format!("key:{i:012}"))
                .arg(value(i, len + codec::HEADER))
                .ignore();
        }
        pipe.query_async::<()>(raw)
            .await
            .expect("storing redis-benchmark's keys");
    }
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("key:{:012}", KEYSPACE - 1))
        .query_async(raw)
        .await
        .unwrap();
    assert_eq!(stored.map(|v| v.len()), Some(len + codec::HEADER));
    keys
}

/// One row of the per-key table.
struct Row {
    label: String,
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    failed: u64,
    /// redis-server's CPU time per key read, in microseconds.
    server_us_per_key: f64,
}

impl Row {
    fn ours(label: &str, (s, usage): &(Sample, Usage), keys_per_cmd: usize) -> Self {
        Self {
            label: label.into(),
            per_sec: s.per_sec(),
            p50_us: s.pct_us(0.50),
            p99_us: s.pct_us(0.99),
            failed: s.failed,
            server_us_per_key: usage.us_per_key(keys_per_cmd),
        }
    }

    fn rb(label: &str, (r, usage): &(RbResult, Usage), keys_per_cmd: usize) -> Self {
        Self {
            label: label.into(),
            per_sec: r.per_sec,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            failed: 0,
            server_us_per_key: usage.us_per_key(keys_per_cmd),
        }
    }
}

/// What redis-server did during a measurement (its warm-up included).
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// CPU seconds, user and system.
    cpu_s: f64,
    /// Commands processed, not counting the `INFO` that measured them.
    cmds: u64,
}

impl Usage {
    fn us_per_key(self, keys_per_cmd: usize) -> f64 {
        self.cpu_s * 1e6 / (self.cmds as f64 * keys_per_cmd as f64)
    }
}

/// redis-server's CPU seconds and commands processed so far.
async fn server_counters(raw: &ConnectionManager) -> (f64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("stats")
        .query_async(&mut raw.clone())
        .await
        .expect("INFO from redis-server");
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in INFO: {info}"))
    };
    (
        field("used_cpu_user") + field("used_cpu_sys"),
        field("total_commands_processed") as u64,
    )
}

/// Runs `f`, measuring what redis-server did meanwhile.
async fn metered<T>(raw: &ConnectionManager, f: impl Future<Output = T>) -> (T, Usage) {
    let (cpu0, cmds0) = server_counters(raw).await;
    let out = f.await;
    let (cpu1, cmds1) = server_counters(raw).await;
    // The first INFO counts once it has run.
    let usage = Usage {
        cpu_s: cpu1 - cpu0,
        cmds: (cmds1 - cmds0).saturating_sub(1).max(1),
    };
    (out, usage)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn kib(n: usize) -> String {
    format!("{} KiB", n / 1024)
}

/// Keeps, of several rounds' rows for one path, the one with the highest throughput.
fn keep_best(slot: &mut Option<Row>, row: Row) {
    if slot.as_ref().is_none_or(|best| row.per_sec > best.per_sec) {
        *slot = Some(row);
    }
}

/// Single-key hits at every size and concurrency: one table, each group's last row
/// redis-benchmark and every row's ratio against it. Each group runs `plan.rounds` times,
/// redis-benchmark last in even rounds and first in odd ones; each path's best round is
/// shown.
async fn single_keys(
    plan: &Plan,
    cache: &Cache,
    tier: &RedisTier,
    raw: &ConnectionManager,
    port: u16,
    all_keys: &[(usize, Arc<Vec<CacheKey>>)],
) -> String {
    let mut out = String::from(
        "| value | C | path | ops/s | p50 µs | p99 µs | failed | ops/s ÷ redis-benchmark | p50 ÷ redis-benchmark | redis-server CPU µs/op |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (len, keys) in all_keys {
        let raw_keys: Arc<Vec<String>> =
            Arc::new(keys.iter().map(|k| tier.value_key(k.digest())).collect());
        for &conc in plan.concurrency {
            let via_compute = || {
                let (c, k) = (cache.clone(), Arc::clone(keys));
                metered(
                    raw,
                    closed_loop(plan, conc, move |rng| {
                        let (c, k) = (c.clone(), Arc::clone(&k));
                        let i = rng.random_range(0..k.len());
                        async move {
                            c.get_or_compute(&k[i], &opts(), || async { Err::<Bytes, _>(miss()) })
                                .await
                                .is_ok()
                        }
                    }),
                )
            };
            let via_get = || {
                let (c, k) = (cache.clone(), Arc::clone(keys));
                metered(
                    raw,
                    closed_loop(plan, conc, move |rng| {
                        let (c, k) = (c.clone(), Arc::clone(&k));
                        let i = rng.random_range(0..k.len());
                        async move { matches!(c.get(&k[i], &opts()).await, Lookup::Hit(_)) }
                    }),
                )
            };
            let client = || {
                let (r, k) = (raw.clone(), Arc::clone(&raw_keys));
                metered(
                    raw,
                    closed_loop(plan, conc, move |rng| {
                        let (mut r, k) = (r.clone(), Arc::clone(&k));
                        let i = rng.random_range(0..k.len());
                        async move {
                            let v: redis::RedisResult<Option<Vec<u8>>> =
                                redis::cmd("GET").arg(&k[i]).query_async(&mut r).await;
                            matches!(v, Ok(Some(_)))
                        }
                    }),
                )
            };
            let get = ["-t".to_owned(), "get".to_owned()];
            let bench =
                |estimate: f64| metered(raw, redis_benchmark(plan, port, conc, estimate, &get));
            let mut rows: [Option<Row>; 4] = Default::default();
            let mut estimate = 20_000.0;
            for round in 0..plan.rounds {
                let rb_first = round % 2 == 1;
                if rb_first {
                    keep_best(
                        &mut rows[3],
                        Row::rb("redis-benchmark `GET`", &bench(estimate).await, 1),
                    );
                }
                keep_best(
                    &mut rows[0],
                    Row::ours("`Cache::get_or_compute`", &via_compute().await, 1),
                );
                keep_best(&mut rows[1], Row::ours("`Cache::get`", &via_get().await, 1));
                let c = client().await;
                estimate = c.0.per_sec();
                keep_best(
                    &mut rows[2],
                    Row::ours("redis-rs `GET` (client only)", &c, 1),
                );
                if !rb_first {
                    keep_best(
                        &mut rows[3],
                        Row::rb("redis-benchmark `GET`", &bench(estimate).await, 1),
                    );
                }
            }
            let rows = rows.map(|r| r.expect("every path ran"));
            let (rb_per_sec, rb_p50) = (rows[3].per_sec, rows[3].p50_us);
            for row in rows {
                out.push_str(&format!(
                    "| {} | {conc} | {} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.2} |\n",
                    kib(*len),
                    row.label,
                    row.per_sec,
                    row.p50_us,
                    row.p99_us,
                    row.failed,
                    row.per_sec / rb_per_sec,
                    row.p50_us / rb_p50,
                    row.server_us_per_key,
                ));
            }
        }
    }
    out
}

/// Batches of `B` distinct keys, one caller at a time: one `get_many_or_compute` (one
/// MGET) against `B` sequential and `B` concurrent `Cache::get`s, the client's MGET, and
/// redis-benchmark's; rounds as in [`single_keys`].
async fn batches(
    plan: &Plan,
    cache: &Cache,
    tier: &RedisTier,
    raw: &ConnectionManager,
    port: u16,
    keys: &Arc<Vec<CacheKey>>,
) -> String {
    let mut out = String::from(
        "| B | path | µs per batch p50 | p99 | batches/s | µs per key (p50) | failed | p50 ÷ `get_many_or_compute` | redis-server CPU µs/key |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let raw_keys: Arc<Vec<String>> =
        Arc::new(keys.iter().map(|k| tier.value_key(k.digest())).collect());
    let pick = |rng: &mut StdRng, n: usize| rand::seq::index::sample(rng, KEYSPACE, n).into_vec();
    for &n in plan.batches {
        let many = || {
            let (c, k) = (cache.clone(), Arc::clone(keys));
            metered(
                raw,
                closed_loop(plan, 1, move |rng| {
                    let batch: Vec<CacheKey> =
                        pick(rng, n).into_iter().map(|i| k[i].clone()).collect();
                    let c = c.clone();
                    async move {
                        c.get_many_or_compute(&batch, &opts(), |_| async {
                            Err::<Vec<Bytes>, _>(miss())
                        })
                        .await
                        .is_ok_and(|v| v.len() == n)
                    }
                }),
            )
        };
        let sequential = || {
            let (c, k) = (cache.clone(), Arc::clone(keys));
            metered(
                raw,
                closed_loop(plan, 1, move |rng| {
                    let idx = pick(rng, n);
                    let (c, k) = (c.clone(), Arc::clone(&k));
                    async move {
                        let mut all = true;
                        for i in idx {
                            all &= matches!(c.get(&k[i], &opts()).await, Lookup::Hit(_));
                        }
                        all
                    }
                }),
            )
        };
        let concurrent = || {
            let (c, k) = (cache.clone(), Arc::clone(keys));
            metered(
                raw,
                closed_loop(plan, 1, move |rng| {
                    let idx = pick(rng, n);
                    let (c, k) = (c.clone(), Arc::clone(&k));
                    async move {
                        let o = opts();
                        let gets = idx.iter().map(|&i| c.get(&k[i], &o));
                        futures_util::future::join_all(gets)
                            .await
                            .iter()
                            .all(|l| matches!(l, Lookup::Hit(_)))
                    }
                }),
            )
        };
        let client = || {
            let (r, k) = (raw.clone(), Arc::clone(&raw_keys));
            metered(
                raw,
                closed_loop(plan, 1, move |rng| {
                    let mut cmd = redis::cmd("MGET");
                    for i in pick(rng, n) {
                        cmd.arg(&k[i]);
                    }
                    let mut r = r.clone();
                    async move {
                        let v: redis::RedisResult<Vec<Option<Vec<u8>>>> =
                            cmd.query_async(&mut r).await;
                        v.is_ok_and(|v| v.iter().all(Option::is_some))
                    }
                }),
            )
        };
        let mut mget = vec!["MGET".to_owned()];
        mget.extend(std::iter::repeat_n("key:__rand_int__".to_owned(), n));
        let bench = |estimate: f64| metered(raw, redis_benchmark(plan, port, 1, estimate, &mget));
        let mut rows: [Option<Row>; 5] = Default::default();
        let mut estimate = 2_000.0;
        for round in 0..plan.rounds {
            let rb_first = round % 2 == 1;
            if rb_first {
                keep_best(
                    &mut rows[4],
                    Row::rb("redis-benchmark `MGET`", &bench(estimate).await, n),
                );
            }
            keep_best(
                &mut rows[0],
                Row::ours("`get_many_or_compute` (one MGET)", &many().await, n),
            );
            keep_best(
                &mut rows[1],
                Row::ours("`Cache::get` × B, sequential", &sequential().await, 1),
            );
            keep_best(
                &mut rows[2],
                Row::ours(
                    "`Cache::get` × B, concurrent (`join_all`)",
                    &concurrent().await,
                    1,
                ),
            );
            let c = client().await;
            estimate = c.0.per_sec();
            keep_best(
                &mut rows[3],
                Row::ours("redis-rs `MGET` (client only)", &c, n),
            );
            if !rb_first {
                keep_best(
                    &mut rows[4],
                    Row::rb("redis-benchmark `MGET`", &bench(estimate).await, n),
                );
            }
        }
        let rows = rows.map(|r| r.expect("every path ran"));
        let base = rows[0].p50_us;
        for row in rows {
            out.push_str(&format!(
                "| {n} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {:.2} | {:.2} |\n",
                row.label,
                row.p50_us,
                row.p99_us,
                row.per_sec,
                row.p50_us / n as f64,
                row.failed,
                row.p50_us / base,
                row.server_us_per_key,
            ));
        }
    }
    out
}

/// Nanoseconds per call of `f`, on this thread.
fn ns_per<T>(iters: u32, mut f: impl FnMut() -> T) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    start.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn cpu_costs(plan: &Plan, cache: &Cache, tier: &RedisTier) -> String {
    let mut out = String::from("| step | ns per call |\n|---|---|\n");
    let k = key(cache, "cpu", 7);
    let d = *k.digest();
    for &len in plan.sizes {
        let entry = RemoteEntry {
            value: value(7, len).into(),
            created_ms: 1,
            expires_ms: None,
        };
        let stored = codec::encode(&d, &entry);
        let ns = ns_per(plan.cpu_iters, || codec::decode(&d, black_box(&stored)));
        out.push_str(&format!(
            "| codec decode (CRC32 + copy), {} | {ns:.0} |\n",
            kib(len)
        ));
    }
    let ns = ns_per(plan.cpu_iters, || tier.value_key(black_box(&d)));
    out.push_str(&format!(
        "| Redis key (`{{prefix}}v:{{hex}}`) | {ns:.0} |\n"
    ));
    let ns = ns_per(plan.cpu_iters, || key(cache, "cpu", black_box(7)));
    out.push_str(&format!(
        "| `Cache::key` (35-byte text input) | {ns:.0} |\n"
    ));
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // A test runner listing tests (nextest): a benchmark has none.
        return;
    }
    let plan = if std::env::args().any(|a| a == "--bench") {
        FULL
    } else {
        SMOKE
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let load_before = loadavg();
    let started = Instant::now();
    let report = runtime.block_on(async {
        let server = RedisServer::start();
        let tier = RedisTier::connect(
            RedisConfig::new(Target::Single(server.url())),
            SystemClock::shared(),
        )
        .expect("a Redis tier");
        let config = CacheConfig {
            memory: None,
            disk: None,
            remote: Some(Arc::new(tier.clone()) as Arc<dyn RemoteTier>),
            ..CacheConfig::default()
        };
        let cache = Cache::open(config, SystemClock::shared()).expect("a cache");
        let mut raw = ConnectionManager::new(server.client())
            .await
            .expect("a Redis connection");

        let mut all_keys = Vec::new();
        for &len in plan.sizes {
            let keys = populate(&cache, &format!("bench-{len}"), len, &mut raw).await;
            all_keys.push((len, Arc::new(keys)));
        }
        let before = tier.stats();
        let single = single_keys(&plan, &cache, &tier, &raw, server.port(), &all_keys).await;

        let batch_keys = if plan.sizes.contains(&BATCH_VALUE) {
            all_keys
                .iter()
                .find(|(len, _)| *len == BATCH_VALUE)
                .map(|(_, k)| Arc::clone(k))
                .expect("the batch size's keys")
        } else {
            Arc::clone(&all_keys[0].1)
        };
        let batch_len = if plan.sizes.contains(&BATCH_VALUE) {
            BATCH_VALUE
        } else {
            plan.sizes[0]
        };
        let batch = batches(&plan, &cache, &tier, &raw, server.port(), &batch_keys).await;
        let after = tier.stats();
        let cpu = cpu_costs(&plan, &cache, &tier);
        // Timeouts under load are reported, not fatal: their operations show in the
        // tables' `failed` column and are never timed.
        format!(
            "## Hits from the Redis tier (memory and disk tiers off), {KEYSPACE} keys, uniform\n\n\
             {single}\n\
             ## Batches of B distinct keys, {} values, one caller\n\n{batch}\n\
             ## CPU per step, one thread\n\n{cpu}\n\
             tier counters during the measurements: {} hits, {} misses, {} errors, {} calls \
             skipped by the open breaker, breaker opened {} times, {} corrupt\n",
            kib(batch_len),
            after.hits - before.hits,
            after.misses - before.misses,
            after.errors - before.errors,
            after.skipped - before.skipped,
            after.breaker_opened - before.breaker_opened,
            after.corrupt - before.corrupt,
        )
    });
    println!("{report}");
    println!(
        "load average before: {load_before}; after: {}; run time {:.0} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
}
