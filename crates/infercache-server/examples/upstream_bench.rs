//! infercache in front of an upstream model server, against calling the upstream directly.
//!
//! `cargo run --release -p infercache-server --example upstream_bench`
//!
//! Starts, in this process, a plain JSON upstream on loopback (`POST /predict`,
//! `{"inputs": [...]}` → `{"outputs": [...]}`) that sleeps a fixed time per call, and
//! infercache serving it as an `http-json` model (`POST /v1/models/m/predict`). One
//! client with keep-alive connections to both sends one-row requests, one at a time, so
//! latencies are not queueing effects.
//!
//! 1. **Hit ratios.** Against a 20 ms upstream: the same request stream sent directly and
//!    through infercache, with 0, 50, 90 and 100% of requests for rows already cached.
//! 2. **Miss overhead.** Every request a new row (always a miss), direct and through
//!    infercache alternately, against the 20 ms upstream and against one that answers at
//!    once; the overhead is the median of the paired differences and the difference of
//!    the medians. Once with the memory tier alone and once with the disk tier too (each
//!    miss then waits for a write-through `pwrite`).
//!
//! Results are printed as Markdown tables; BENCHMARKS.md records them.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::routing::post;
use infercache_backend::{BackendKind, ModelConfig};
use infercache_core::SystemClock;
use infercache_engine::{Cache, CacheConfig, DiskConfig};
use infercache_infer::Models;
use infercache_server::config::Limits;
use infercache_server::{ApiKeys, AppState};
use serde_json::{Value, json};

/// Requests per hit-ratio run.
const HIT_RATIO_REQUESTS: usize = 200;
/// Paired requests per miss-overhead run.
const MISS_PAIRS: usize = 300;
/// Requests before measuring, to warm connections.
const WARMUP: usize = 20;

/// The built-in model slot is unused here: every request names the upstream model.
async fn start_upstream(delay: Duration) -> anyhow::Result<String> {
    let app = Router::new().route(
        "/predict",
        post(move |body: axum::Json<Value>| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let outputs: Vec<Value> = body["inputs"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| json!({ "score": r, "label": "ok" }))
                        .collect()
                })
                .unwrap_or_default();
            axum::Json(json!({ "outputs": outputs }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/predict", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// infercache serving `upstream` as model `m`; its base URL.
async fn start_infercache(
    upstream: &str,
    disk: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let cache = Cache::open(
        CacheConfig {
            disk: disk.map(|d| DiskConfig::new(d, 256 << 20)),
            ..CacheConfig::default()
        },
        SystemClock::shared(),
    )?;
    let client = infercache_upstream::Pool::new(Limits::default().body_budget_bytes)?;
    let configs = [ModelConfig::new("m", BackendKind::HttpJson, Some(upstream))];
    let models = Models::configured(&configs, None, None, |m| {
        infercache_upstream::backend(m, &client).expect("an upstream model")
    })?;
    let state = AppState::new(Some(cache), models, ApiKeys::none(), Limits::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/models/m/predict", listener.local_addr()?);
    tokio::spawn(infercache_server::serve(
        state,
        listener,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    Ok(url)
}

/// One request of one row; its latency.
async fn call(client: &reqwest::Client, url: &str, row: &str) -> anyhow::Result<Duration> {
    let body = json!({ "inputs": [row] }).to_string();
    let start = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    let took = start.elapsed();
    anyhow::ensure!(
        status.is_success(),
        "{url}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(took)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Summary {
    p50: Duration,
    p99: Duration,
    mean: Duration,
    total: Duration,
}

fn summarize(mut lat: Vec<Duration>) -> Summary {
    let total: Duration = lat.iter().sum();
    lat.sort_unstable();
    Summary {
        p50: quantile(&lat, 0.5),
        p99: quantile(&lat, 0.99),
        mean: total / lat.len() as u32,
        total,
    }
}

/// Rows for a run at `hit_ratio`: the first `hit_ratio` of requests (shuffled in
/// deterministically) ask for warmed rows, the rest for new ones.
fn rows_for(run: &str, hit_ratio: f64) -> (Vec<String>, Vec<String>) {
    let hits = (HIT_RATIO_REQUESTS as f64 * hit_ratio).round() as usize;
    let warm: Vec<String> = (0..hits).map(|i| format!("{run}-warm-{i}")).collect();
    let mut rows: Vec<String> = warm.clone();
    rows.extend((hits..HIT_RATIO_REQUESTS).map(|i| format!("{run}-new-{i}")));
    // Interleave hits and misses: a fixed stride permutation (coprime with the length).
    let n = rows.len();
    let order: Vec<String> = (0..n).map(|i| rows[(i * 37) % n].clone()).collect();
    (warm, order)
}

async fn hit_ratios(client: &reqwest::Client) -> anyhow::Result<()> {
    let upstream = start_upstream(Duration::from_millis(20)).await?;
    let cached = start_infercache(&upstream, None).await?;
    for i in 0..WARMUP {
        call(client, &upstream, &format!("w{i}")).await?;
        call(client, &cached, &format!("w{i}")).await?;
    }
    println!(
        "### Hit ratios against a 20 ms upstream ({HIT_RATIO_REQUESTS} one-row requests each, sequential)\n"
    );
    println!(
        "| hit ratio | direct p50 ms | infercache p50 ms | direct mean ms | infercache mean ms | infercache p99 ms | speed-up (total time) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for ratio in [0.0, 0.5, 0.9, 1.0] {
        let run = format!("r{}", (ratio * 100.0) as u32);
        let (warm, order) = rows_for(&run, ratio);
        for row in &warm {
            call(client, &cached, row).await?;
        }
        let mut direct = Vec::with_capacity(order.len());
        let mut through = Vec::with_capacity(order.len());
        for row in &order {
            direct.push(call(client, &upstream, row).await?);
            through.push(call(client, &cached, row).await?);
        }
        let (d, c) = (summarize(direct), summarize(through));
        println!(
            "| {:.0}% | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}x |",
            ratio * 100.0,
            ms(d.p50),
            ms(c.p50),
            ms(d.mean),
            ms(c.mean),
            ms(c.p99),
            d.total.as_secs_f64() / c.total.as_secs_f64()
        );
    }
    println!();
    Ok(())
}

async fn miss_overhead(client: &reqwest::Client) -> anyhow::Result<()> {
    println!("### Added latency on a miss ({MISS_PAIRS} paired one-row requests, each row new)\n");
    println!(
        "| upstream | tiers | direct p50 ms | infercache p50 ms | overhead: difference of p50s ms | overhead: median paired difference ms |"
    );
    println!("|---|---|---|---|---|---|");
    let dir = tempfile::tempdir()?;
    for (label, delay) in [
        ("answers at once", Duration::ZERO),
        ("20 ms", Duration::from_millis(20)),
    ] {
        for disk in [false, true] {
            let upstream = start_upstream(delay).await?;
            let disk_dir = dir.path().join(format!("{}-{disk}", delay.as_millis()));
            let cached = start_infercache(&upstream, disk.then_some(disk_dir.as_path())).await?;
            for i in 0..WARMUP {
                call(client, &upstream, &format!("w{i}")).await?;
                call(client, &cached, &format!("w{i}")).await?;
            }
            let pairs = if delay.is_zero() {
                MISS_PAIRS * 3
            } else {
                MISS_PAIRS
            };
            let mut direct = Vec::with_capacity(pairs);
            let mut through = Vec::with_capacity(pairs);
            for i in 0..pairs {
                let row = format!("miss-{i}");
                // Alternate which goes first, so neither always runs on a warmer path.
                if i % 2 == 0 {
                    direct.push(call(client, &upstream, &row).await?);
                    through.push(call(client, &cached, &row).await?);
                } else {
                    through.push(call(client, &cached, &row).await?);
                    direct.push(call(client, &upstream, &row).await?);
                }
            }
            let mut diffs: Vec<f64> = direct
                .iter()
                .zip(&through)
                .map(|(d, c)| ms(*c) - ms(*d))
                .collect();
            diffs.sort_by(f64::total_cmp);
            let paired = diffs[diffs.len() / 2];
            let (d, c) = (summarize(direct), summarize(through));
            println!(
                "| {label} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
                if disk { "memory + disk" } else { "memory" },
                ms(d.p50),
                ms(c.p50),
                ms(c.p50) - ms(d.p50),
                paired
            );
        }
    }
    println!();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(async {
            let client = infercache_core::tls::client_builder(&[])?
                .pool_max_idle_per_host(8)
                .tcp_nodelay(true)
                .build()?;
            println!(
                "upstream_bench: {} CPUs\n",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            );
            hit_ratios(&client).await?;
            miss_overhead(&client).await?;
            Ok(())
        })
}
