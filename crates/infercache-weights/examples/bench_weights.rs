//! The weight server and streaming client on the real all-MiniLM-L6-v2, side by side with
//! their baselines in one process (a benchmark, not a test; see BENCHMARKS.md):
//!
//! 1. **cold stream**: every chunk fetched and verified by a new client (server cache
//!    warm) against a raw loopback TCP transfer of the same bytes from memory, with the
//!    same request pattern (one connection, one request per chunk, in order), bare and
//!    with each chunk's SHA-256 checked after it arrives; and the bytes on the wire
//!    against the chunk bytes;
//! 2. **time to ready**: `connect` + `warmup` of every layer against the built-in model's
//!    local load (`Embedder::load_with`, which checks every file's SHA-256 too);
//! 3. **warm**: `cache_size` 6, every layer cached: fetches during the passes, and the
//!    latency against local inference on the same batch;
//! 4. **cache_size 2, prefetch 1**: a batch of 32 texts of 128 tokens against local
//!    inference;
//! 5. **server cache**: the hit ratio of its LRU on a seeded access trace of two models
//!    (the f32 chunks and an `--fp16` copy, 135 MB) under the default 100 MiB cache,
//!    measured on the server, against LRU and FIFO simulated on the same trace.
//!
//! The parts alternate which side goes first in each round; ratios are taken within a
//! round and the table shows their median (lowest–highest).
//!
//! ```sh
//! cargo run -p infercache-weights --example bench_weights -- MODEL_DIR
//! ```
//!
//! Environment: `ROUNDS` (5), `THREADS` (2, the forward pass's threads on both sides),
//! `PASSES` (passes per latency point, 5), `TRACE` (trace events, 400), `STREAM_ONLY` (`1`:
//! the cold stream alone, for profiling it). Each run first prints the one-thread SHA-256
//! rate over the chunks in memory, the ceiling of the client's digest thread.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use infercache_core::SystemClock;
use infercache_model::bert::Threads;
use infercache_model::{Embedder, ModelFiles};
use infercache_weights::client::{BufferPool, Fetcher, HttpConfig};
use infercache_weights::digest::sha256_hex;
use infercache_weights::server::{ServerConfig, WeightServer};
use infercache_weights::{
    ChunkOptions, ClientConfig, Manifest, NoProgress, StreamingBertModel, chunk_model,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "all-MiniLM-L6-v2";
const NAME_FP16: &str = "all-MiniLM-L6-v2-fp16";

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `median (lowest-highest)`.
fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.3} ({lo:.3}-{hi:.3})", median(v.to_vec()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Wall and CPU time of one measured step.
struct Timed {
    wall: f64,
    cpu: f64,
}

/// CPU seconds this process's threads have run, from `/proc/self/task/*/schedstat`
/// (threads that have exited are not counted; none exit during a measured step).
fn cpu_seconds() -> Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        ns += stat
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse::<u64>()?;
    }
    Ok(ns as f64 / 1e9)
}

/// `f`'s output with its wall and CPU time.
async fn measured<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<(T, Timed)> {
    let (cpu, t) = (cpu_seconds()?, Instant::now());
    let out = f.await?;
    let wall = t.elapsed().as_secs_f64();
    Ok((
        out,
        Timed {
            wall,
            cpu: cpu_seconds()? - cpu,
        },
    ))
}

/// Chunk names in the manifest's order (embeddings, layers, pooler).
fn chunk_names(manifest: &Manifest) -> Vec<String> {
    manifest.chunks.keys().cloned().collect()
}

/// A weight server on a loopback port, serving in the background.
async fn start_server(root: &Path, cache_bytes: u64) -> Result<(WeightServer, String)> {
    let server = WeightServer::open(
        ServerConfig {
            cache_bytes,
            ..ServerConfig::new(root.to_owned())
        },
        SystemClock::shared(),
    )?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let s = server.clone();
    tokio::spawn(async move {
        let _ = infercache_weights::server::serve(listener, s, std::future::pending()).await;
    });
    Ok((server, url))
}

/// The baseline: a TCP server on loopback that answers each 4-byte chunk index with an
/// 8-byte length and the chunk's bytes from memory.
async fn start_raw(chunks: Vec<Bytes>) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let chunks = chunks.clone();
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let mut index = [0u8; 4];
                while sock.read_exact(&mut index).await.is_ok() {
                    let chunk = &chunks[u32::from_le_bytes(index) as usize];
                    let len = (chunk.len() as u64).to_le_bytes();
                    if sock.write_all(&len).await.is_err() || sock.write_all(chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Every chunk over a new raw connection, into fresh buffers (or, with `reuse`, into one
/// buffer kept across the chunks and the calls), each checked against its SHA-256 when
/// `digests` are given; the bytes received.
async fn raw_transfer(
    addr: &str,
    count: usize,
    digests: Option<&[String]>,
    mut reuse: Option<&mut Vec<u8>>,
) -> Result<u64> {
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let mut total = 0;
    for i in 0..count {
        sock.write_all(&u32::try_from(i)?.to_le_bytes()).await?;
        let mut len = [0u8; 8];
        sock.read_exact(&mut len).await?;
        let len = usize::try_from(u64::from_le_bytes(len))?;
        let mut fresh;
        let body: &mut [u8] = match reuse.as_deref_mut() {
            Some(kept) => {
                if kept.len() < len {
                    // Zeroes only the bytes past the old length: a kept buffer is not
                    // touched again before the read.
                    kept.resize(len, 0);
                }
                &mut kept[..len]
            }
            None => {
                fresh = vec![0u8; len];
                &mut fresh
            }
        };
        sock.read_exact(body).await?;
        if let Some(d) = digests {
            ensure!(sha256_hex(body) == d[i], "raw chunk {i} failed its digest");
        }
        total += body.len() as u64;
        std::hint::black_box(&body);
    }
    Ok(total)
}

/// SHA-256 throughput on one thread over the chunks' bytes in memory (`sha2` with its
/// SHA-NI backend where the CPU has it, as the client verifies): the rate that bounds a
/// verified stream's digest thread, `rounds` times.
fn digest_speed(bodies: &[Bytes], rounds: usize) {
    let mb = bodies.iter().map(Bytes::len).sum::<usize>() as f64 / 1e6;
    let mut rates = Vec::new();
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        for b in bodies {
            std::hint::black_box(sha256_hex(b));
        }
        rates.push(mb / t.elapsed().as_secs_f64());
    }
    println!("\n## SHA-256 of the chunks in memory, one thread");
    println!("sha256_hex  MB/s  {}", spread(&rates));
}

/// Every chunk through a new client's verified, pipelined fetches ([`Fetcher::chunks`]),
/// its bodies in buffers of its own or, with `pool`, in that pool's (kept across
/// clients); the body bytes received.
async fn stream_transfer(url: &str, manifest: &Manifest, pool: Option<&BufferPool>) -> Result<u64> {
    let mut fetcher = Fetcher::new(url, NAME, HttpConfig::default())?;
    if let Some(pool) = pool {
        fetcher = fetcher.with_buffer_pool(pool.clone());
    }
    let mut wire = 0;
    let mut chunks =
        std::pin::pin!(fetcher.chunks(manifest.chunks.iter().map(|(n, c)| (n.as_str(), c))));
    while let Some(next) = futures_util::StreamExt::next(&mut chunks).await {
        let (_, f) = next?;
        wire += f.wire_bytes;
        std::hint::black_box(&f.bytes);
    }
    Ok(wire)
}

fn client_config(cache_size: usize, prefetch: usize, threads: usize) -> ClientConfig {
    ClientConfig {
        cache_size,
        prefetch,
        threads,
        ..ClientConfig::default()
    }
}

/// Mean seconds per pass of `f` over `passes` passes.
async fn timed<F, Fut>(passes: usize, mut f: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Vec<f32>>>>,
{
    let started = Instant::now();
    for _ in 0..passes {
        std::hint::black_box(f().await?);
    }
    Ok(started.elapsed().as_secs_f64() / passes as f64)
}

/// Local inference on the blocking pool, as the client runs its steps.
async fn local_embed(
    embedder: &std::sync::Arc<Embedder>,
    texts: &[String],
) -> Result<Vec<Vec<f32>>> {
    let (e, t) = (std::sync::Arc::clone(embedder), texts.to_vec());
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = t.iter().map(String::as_str).collect();
        e.embed(&refs)
    })
    .await?
    .map_err(Into::into)
}

/// `n` texts of exactly `tokens` tokens each (special tokens included), all different.
fn texts_of(embedder: &Embedder, n: usize, tokens: usize) -> Result<Vec<String>> {
    const WORDS: [&str; 8] = [
        "the", "cache", "model", "layer", "server", "stream", "weights", "fast",
    ];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let words: Vec<&str> = (0..tokens - 2)
            .map(|j| WORDS[(i * 7 + j * (i % 5 + 1)) % 8])
            .collect();
        let text = words.join(" ");
        let got = embedder.count_tokens(&text)?;
        ensure!(got == tokens, "text {i} has {got} tokens, not {tokens}");
        out.push(text);
    }
    Ok(out)
}

/// Short texts of a few words (the warm part's batch).
fn short_texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("sentence {i} about layers streamed from a weight server"))
        .collect()
}

/// Byte-bounded cache simulations on a trace of `(key, bytes)`, each entry charged as the
/// server's memory tier charges it: hits of LRU and FIFO.
fn simulate(trace: &[(String, u64)], capacity: u64) -> (u64, u64) {
    let mut lru: VecDeque<(String, u64)> = VecDeque::new();
    let mut fifo: VecDeque<(String, u64)> = VecDeque::new();
    let (mut lru_bytes, mut fifo_bytes, mut lru_hits, mut fifo_hits) = (0, 0, 0, 0);
    for (key, bytes) in trace {
        let w = infercache_engine::memory::charge(
            infercache_engine::Policy::Lru,
            usize::try_from(*bytes).expect("a chunk fits in memory"),
        );
        if let Some(pos) = lru.iter().position(|(k, _)| k == key) {
            let e = lru.remove(pos).expect("present");
            lru.push_back(e);
            lru_hits += 1;
        } else if w <= capacity {
            while lru_bytes + w > capacity {
                lru_bytes -= lru.pop_front().expect("non-empty").1;
            }
            lru.push_back((key.clone(), w));
            lru_bytes += w;
        }
        if fifo.iter().any(|(k, _)| k == key) {
            fifo_hits += 1;
        } else if w <= capacity {
            while fifo_bytes + w > capacity {
                fifo_bytes -= fifo.pop_front().expect("non-empty").1;
            }
            fifo.push_back((key.clone(), w));
            fifo_bytes += w;
        }
    }
    (lru_hits, fifo_hits)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let model_dir: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: bench_weights MODEL_DIR")?
        .into();
    let rounds = env_usize("ROUNDS", 5)?;
    let threads = env_usize("THREADS", 2)?;
    let passes = env_usize("PASSES", 5)?;
    let trace_len = env_usize("TRACE", 400)?;
    let stream_only = env_usize("STREAM_ONLY", 0)? == 1;

    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("chunks");
    let manifest = chunk_model(
        &model_dir,
        &root.join(NAME),
        &ChunkOptions {
            model_name: Some(NAME.into()),
            ..ChunkOptions::default()
        },
        &mut NoProgress,
    )?
    .manifest;
    let manifest_fp16 = chunk_model(
        &model_dir,
        &root.join(NAME_FP16),
        &ChunkOptions {
            model_name: Some(NAME_FP16.into()),
            fp16: true,
        },
        &mut NoProgress,
    )?
    .manifest;
    let names = chunk_names(&manifest);
    let chunk_bytes: u64 = manifest.chunks.values().map(|c| c.size_bytes).sum();
    let mut bodies = Vec::new();
    for info in manifest.chunks.values() {
        bodies.push(Bytes::from(std::fs::read(
            root.join(NAME).join(&info.file),
        )?));
    }
    println!(
        "model {NAME}: {} chunks, {chunk_bytes} bytes; rounds {rounds}, threads {threads}, passes {passes}",
        names.len()
    );

    digest_speed(&bodies, rounds);

    // The server with a cache holding every chunk, warmed by one stream.
    let (server, url) = start_server(&root, 512 << 20).await?;
    let raw = start_raw(bodies).await?;
    let digests: Vec<String> = manifest.chunks.values().map(|c| c.sha256.clone()).collect();
    let pool = BufferPool::new(256 << 20);
    let mut kept = Vec::new();
    stream_transfer(&url, &manifest, Some(&pool)).await?;
    raw_transfer(&raw, names.len(), None, Some(&mut kept)).await?;

    // 1. Cold stream against raw loopback TCP: the sides of a round, run forwards in
    // even rounds and backwards in odd ones.
    const SIDES: [&str; 5] = [
        "raw loopback TCP",
        "raw + SHA-256 each",
        "streamed, verified (new client)",
        "streamed, verified (pool kept)",
        "raw, one buffer kept",
    ];
    let mut mbs: Vec<Vec<f64>> = vec![Vec::new(); SIDES.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); SIDES.len()];
    let mut ratio: Vec<Vec<f64>> = vec![Vec::new(); SIDES.len()];
    let (mut ratio_sha, mut wire_ratio) = (Vec::new(), Vec::new());
    let mb = chunk_bytes as f64 / 1e6;
    for round in 0..rounds {
        let sent_before = server.stats().bytes_sent;
        let mut order: Vec<usize> = (0..SIDES.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut timed: Vec<Option<Timed>> = (0..SIDES.len()).map(|_| None).collect();
        for side in order {
            let (got, t) = match side {
                0 => measured(raw_transfer(&raw, names.len(), None, None)).await?,
                1 => measured(raw_transfer(&raw, names.len(), Some(&digests), None)).await?,
                2 => {
                    let (wire, t) = measured(stream_transfer(&url, &manifest, None)).await?;
                    wire_ratio.push(wire as f64 / chunk_bytes as f64);
                    (wire, t)
                }
                3 => measured(stream_transfer(&url, &manifest, Some(&pool))).await?,
                _ => measured(raw_transfer(&raw, names.len(), None, Some(&mut kept))).await?,
            };
            ensure!(got == chunk_bytes, "{} got {got} bytes", SIDES[side]);
            timed[side] = Some(t);
        }
        let timed: Vec<Timed> = timed
            .into_iter()
            .map(|t| t.expect("every side ran"))
            .collect();
        for (side, t) in timed.iter().enumerate() {
            mbs[side].push(mb / t.wall);
            cpu[side].push(t.cpu * 1000.0 / mb);
            ratio[side].push(timed[0].wall / t.wall);
        }
        ratio_sha.push(timed[1].wall / timed[2].wall);
        let sent = server.stats().bytes_sent - sent_before;
        ensure!(
            sent == 2 * chunk_bytes,
            "server sent {sent} body bytes for two streams of {chunk_bytes}"
        );
    }
    println!("\n## cold stream of every chunk (server cache warm, client empty)");
    println!(
        "{:<34} {:<22} {:<22} CPU ms/MB (both ends)",
        "", "MB/s", "throughput / raw"
    );
    for (side, name) in SIDES.iter().enumerate() {
        println!(
            "{name:<34} {:<22} {:<22} {}",
            spread(&mbs[side]),
            spread(&ratio[side]),
            spread(&cpu[side])
        );
    }
    // The ratios above are raw's wall time over the side's: for the streams, streamed / raw.
    println!(
        "streamed (new client) / raw + SHA-256 {}",
        spread(&ratio_sha)
    );
    println!("client body bytes / chunk bytes {}", spread(&wire_ratio));
    println!("server body bytes sent per stream = chunk bytes: yes (checked each round)");
    println!("buffer pool kept across clients: {:?}", pool.stats());
    if stream_only {
        return Ok(());
    }

    // 2. Time to ready against the local load.
    let files = ModelFiles::from_dir(&model_dir)?;
    let (mut local_ms, mut ready_ms, mut ready_ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut embedder = None;
    for round in 0..rounds {
        let load = || -> Result<(Embedder, f64)> {
            let t = Instant::now();
            let e = Embedder::load_with(&files, Threads::new(threads)?)?;
            Ok((e, ms(t.elapsed())))
        };
        let ready = async || -> Result<(StreamingBertModel, f64)> {
            let t = Instant::now();
            let m =
                StreamingBertModel::connect_with(&url, NAME, client_config(6, 1, threads)).await?;
            m.warmup(None).await?;
            Ok((m, ms(t.elapsed())))
        };
        let ((e, l), (_, r)) = if round % 2 == 0 {
            let a = load()?;
            (a, ready().await?)
        } else {
            let b = ready().await?;
            (load()?, b)
        };
        local_ms.push(l);
        ready_ms.push(r);
        ready_ratio.push(r / l);
        embedder = Some(e);
    }
    let embedder = std::sync::Arc::new(embedder.context("no round")?);
    println!("\n## time to ready (manifest, every chunk fetched, verified, built)");
    println!(
        "local load (Embedder::load_with)  ms  {}",
        spread(&local_ms)
    );
    println!(
        "connect + warmup(all)             ms  {}",
        spread(&ready_ms)
    );
    println!(
        "streamed / local                      {}",
        spread(&ready_ratio)
    );

    // 3. Warm: every layer cached.
    let warm_texts = short_texts(32);
    let warm = StreamingBertModel::connect_with(&url, NAME, client_config(6, 1, threads)).await?;
    warm.warmup(None).await?;
    let fetches_before = warm.inference_stats().fetches;
    let refs: Vec<&str> = warm_texts.iter().map(String::as_str).collect();
    let want = local_embed(&embedder, &warm_texts).await?;
    ensure!(
        warm.embed(&refs).await? == want,
        "warm streamed embeddings differ"
    );
    let (mut warm_ratio, mut warm_local, mut warm_stream) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (e, t, w, r) = (&embedder, &warm_texts, &warm, &refs);
        let l = async || timed(passes, move || local_embed(e, t)).await;
        let s = async || timed(passes, move || async move { Ok(w.embed(r).await?) }).await;
        let (l, s) = if round % 2 == 0 {
            (l().await?, s().await?)
        } else {
            let s = s().await?;
            (l().await?, s)
        };
        warm_local.push(l * 1000.0);
        warm_stream.push(s * 1000.0);
        warm_ratio.push(s / l);
    }
    let warm_fetches = warm.inference_stats().fetches - fetches_before;
    println!("\n## warm (cache_size 6, every layer cached), batch of 32 short texts");
    println!("fetches during the warm passes: {warm_fetches}");
    println!("local inference   ms/pass  {}", spread(&warm_local));
    println!("streamed, warm    ms/pass  {}", spread(&warm_stream));
    println!("streamed / local           {}", spread(&warm_ratio));
    if warm_fetches != 0 {
        bail!("a warm model fetched {warm_fetches} chunks");
    }

    // 4. cache_size 2, prefetch 1, 32 texts of 128 tokens.
    let long = texts_of(&embedder, 32, 128)?;
    let long_refs: Vec<&str> = long.iter().map(String::as_str).collect();
    let small = StreamingBertModel::connect_with(&url, NAME, client_config(2, 1, threads)).await?;
    let want = local_embed(&embedder, &long).await?;
    ensure!(
        small.embed(&long_refs).await? == want,
        "cache_size 2 embeddings differ"
    );
    let (mut small_ratio, mut small_local, mut small_stream) = (Vec::new(), Vec::new(), Vec::new());
    let before = small.inference_stats();
    for round in 0..rounds {
        let (e, t, m, r) = (&embedder, &long, &small, &long_refs);
        let l = async || timed(passes, move || local_embed(e, t)).await;
        let s = async || timed(passes, move || async move { Ok(m.embed(r).await?) }).await;
        let (l, s) = if round % 2 == 0 {
            (l().await?, s().await?)
        } else {
            let s = s().await?;
            (l().await?, s)
        };
        small_local.push(l * 1000.0);
        small_stream.push(s * 1000.0);
        small_ratio.push(s / l);
    }
    let after = small.inference_stats();
    let small_passes = (rounds * passes) as u64;
    println!("\n## cache_size 2, prefetch 1, batch of 32 texts x 128 tokens");
    println!(
        "layer fetches per pass: {:.2}, prefetch hits per pass: {:.2}",
        (after.fetches - before.fetches) as f64 / small_passes as f64,
        (after.prefetch_hits - before.prefetch_hits) as f64 / small_passes as f64
    );
    println!("local inference         ms/pass  {}", spread(&small_local));
    println!("streamed, cache_size 2  ms/pass  {}", spread(&small_stream));
    println!("streamed / local                 {}", spread(&small_ratio));

    // 5. Server cache: LRU measured, LRU and FIFO simulated, on one trace.
    let capacity = infercache_weights::server::DEFAULT_CACHE_MB << 20;
    let (trace_server, trace_url) = start_server(&root, capacity).await?;
    let mut rng = StdRng::seed_from_u64(12);
    let models = [(NAME, &manifest), (NAME_FP16, &manifest_fp16)];
    let mut trace: Vec<(String, String, String, u64)> = Vec::new();
    for _ in 0..trace_len {
        let (model, m) = models[usize::from(rng.random_bool(0.4))];
        // A client connecting fetches the embeddings; a pass of a client with a small
        // cache fetches every layer.
        let chunks: Vec<&String> = if rng.random_bool(0.3) {
            vec![
                m.chunks
                    .keys()
                    .find(|k| *k == "embeddings")
                    .context("embeddings")?,
            ]
        } else {
            m.chunks
                .keys()
                .filter(|k| k.starts_with("layer_"))
                .collect()
        };
        for c in chunks {
            let info = &m.chunks[c];
            trace.push((
                model.into(),
                c.clone(),
                info.sha256.clone(),
                info.size_bytes,
            ));
        }
    }
    let fetchers: HashMap<&str, Fetcher> = models
        .iter()
        .map(|(n, _)| Ok((*n, Fetcher::new(&trace_url, n, HttpConfig::default())?)))
        .collect::<Result<_>>()?;
    for (model, chunk, sha, size) in &trace {
        fetchers[model.as_str()].chunk(chunk, *size, sha).await?;
    }
    let stats = trace_server.stats().cache;
    // Keys are content addresses: the simulation keys by digest as the server does.
    let keyed: Vec<(String, u64)> = trace
        .iter()
        .map(|(_, _, sha, size)| (sha.clone(), *size))
        .collect();
    let (lru_hits, fifo_hits) = simulate(&keyed, capacity);
    let n = trace.len() as f64;
    println!(
        "\n## server cache, {} requests of two models ({} MB) through {} MiB",
        trace.len(),
        (chunk_bytes
            + manifest_fp16
                .chunks
                .values()
                .map(|c| c.size_bytes)
                .sum::<u64>())
            / 1_000_000,
        capacity >> 20
    );
    println!(
        "server (exact LRU) measured  hit ratio {:.3} ({} hits, {} misses, {} evictions)",
        stats.hits as f64 / n,
        stats.hits,
        stats.misses,
        stats.evictions
    );
    println!(
        "LRU simulated                hit ratio {:.3}",
        lru_hits as f64 / n
    );
    println!(
        "FIFO simulated               hit ratio {:.3}",
        fifo_hits as f64 / n
    );
    Ok(())
}
