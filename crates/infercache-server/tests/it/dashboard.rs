//! The dashboard as a person sees it: a real server (the real model, memory, disk and a
//! real Redis, API keys) takes hits, misses, a partial request and an invalidation; then
//! Debian's Chromium, headless, driven by `playwright-core` (`tests/browser/`), opens
//! `/dashboard` and reports what it drew. No console errors, every chart drawn with data
//! points and ink on its canvas, the hit-rate figure equal to `GET /v1/cache/stats`, the
//! invalidation marked. A screenshot is written to `target/dashboard.png`.
//!
//! Needs `node`, `npm ci --prefix crates/infercache-server/tests/browser` and
//! `/usr/bin/chromium` (`scripts/test` installs all three); fails, never skips, without.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use infercache_redis::testing::RedisServer;
use infercache_server::ServerConfig;
use infercache_server::config::{DiskSettings, RedisSettings, RedisTarget};
use serde_json::{Value, json};

use crate::support::{Server, model};

const MODEL: &str = "all-MiniLM-L6-v2";

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    )
}

/// Runs the browser script on `url`; its report.
fn open_in_chromium(url: &str, screenshot: &std::path::Path) -> Value {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "this test drives Chromium with playwright-core: run `npm ci --prefix {}` (scripts/test does)",
        dir.display()
    );
    let chromium = std::env::var("INFERCACHE_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "this test needs Chromium at {chromium}: install Debian's `chromium` (scripts/test does), \
         or set INFERCACHE_TEST_CHROMIUM"
    );
    let out = Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .arg(url)
        .arg(screenshot)
        .arg(&chromium)
        .current_dir(&dir)
        .output()
        .expect("this test needs `node` (Debian's nodejs; scripts/test installs it)");
    assert!(
        out.status.success(),
        "the browser script failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the browser script's report: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_every_chart_and_matches_the_stats() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[[key]]\nkey = \"sk-user\"\ntenant = \"a\"\n\n[[key]]\nkey = \"sk-admin\"\ntenant = \"ops\"\nadmin = true\n",
    )
    .unwrap();
    let config = ServerConfig {
        api_keys_file: Some(keys),
        disk: Some(DiskSettings {
            dir: dir.path().join("cache"),
            capacity: 64 << 20,
            compression: infercache_engine::Compression::Lz4,
        }),
        redis: Some(RedisSettings {
            target: RedisTarget::Url(redis.url()),
            prefix: "infercache:".into(),
            write_back_queue: None,
            timeout: Duration::from_secs(1),
            local_reads: infercache_engine::LocalReads::default(),
            ca_file: None,
        }),
        ..ServerConfig::default()
    };
    let s = Server::start(config, model().await).await;
    let user = [("authorization", "Bearer sk-user")];
    let admin = [("authorization", "Bearer sk-admin")];

    // The page is a shell anyone may load; its data needs an admin key.
    let page = s.get("/dashboard", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.body.as_str().unwrap().contains("uPlot.iife.min.js"));
    assert_eq!(s.get("/dashboard/data", &[]).await.status, 401);
    assert_eq!(s.get("/dashboard/data", &user).await.status, 403);
    assert_eq!(s.get("/dashboard/nothing.js", &[]).await.status, 404);

    // Misses, then (a sample later) hits, a partial request and an invalidation, then
    // misses again.
    let texts: Vec<String> = (0..10).map(|i| format!("dashboard text {i}")).collect();
    let r = s.embed(&user, json!(texts)).await;
    assert_eq!(r.header("x-cache"), "MISS", "{}", r.body);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(s.embed(&user, json!(texts)).await.header("x-cache"), "HIT");
    let partial = json!([texts[0], "a new text", texts[1], "another new text"]);
    assert_eq!(s.embed(&user, partial).await.header("x-cache"), "PARTIAL");
    let r = s
        .post(
            "/v1/cache/invalidate",
            &admin,
            &json!({"scope": "model", "model": MODEL}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.embed(&user, json!(texts[..3])).await.header("x-cache"),
        "MISS"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let data = s.get("/dashboard/data", &admin).await;
    assert_eq!(data.status, 200, "{}", data.body);
    assert!(
        data.body["samples"].as_array().unwrap().len() >= 2,
        "{}",
        data.body
    );

    let screenshot = target_dir().join("dashboard.png");
    let url = format!("{}/dashboard#key=sk-admin", s.url);
    let report = tokio::task::spawn_blocking(move || open_in_chromium(&url, &screenshot))
        .await
        .unwrap();

    assert_eq!(report["errors"], json!([]), "{report:#}");
    assert!(
        !report["address"].as_str().unwrap().contains("sk-admin"),
        "the page drops the key from its address: {report:#}"
    );
    let charts = report["charts"].as_object().unwrap();
    for id in [
        "hit-rate-models",
        "hit-rate-tiers",
        "requests",
        "latency",
        "bytes",
        "index",
        "entries",
        "churn",
        "redis",
        "batches",
        "queue",
        "upstream-errors",
        "saved",
    ] {
        let c = &charts[id];
        assert!(c["empty"].is_null(), "chart {id} is drawn: {c}");
        assert!(
            c["series"].as_u64().unwrap() > 0,
            "chart {id} has series: {c}"
        );
        assert!(
            c["points"].as_u64().unwrap() > 0,
            "chart {id} has data points: {c}"
        );
        assert!(
            c["inked"].as_u64().unwrap() > 0,
            "chart {id} drew on its canvas: {c}"
        );
    }
    assert_eq!(charts.len(), 13, "{report:#}");

    // The figure on the page is the stats' hit rate.
    let stats = s.model_stats(&admin).await;
    let rate = stats["hit_rate"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 1.0, "{stats}");
    let shown = &report["hitRates"][MODEL];
    assert_eq!(shown["value"].as_f64(), Some(rate), "{report:#}");
    assert_eq!(
        shown["text"].as_str().unwrap(),
        format!("{:.1} %", rate * 100.0),
        "{report:#}"
    );
    assert_eq!(report["status"], "", "no tier is degraded: {report:#}");
    let marks: Vec<&str> = report["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        marks
            .iter()
            .any(|m| m.contains(&format!("invalidated model {MODEL}"))),
        "{marks:?}"
    );
    s.stop().await;
}

/// The first of `what` to hold within `limit`, polled.
async fn eventually(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A disk whose reads and writes fail with EIO, through the seam on the disk tier's file
/// layer (`infercache_engine::testing::DiskFault`; this machine has no device-mapper for
/// an `error` target): every request still succeeds, from memory or the model; the tier
/// is degraded in `/v1/cache/stats`, `/metrics` and the dashboard's data, and is written
/// again once the disk answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_is_degraded_everywhere_and_used_again_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let disk_dir = dir.path().join("cache");
    let config = ServerConfig {
        disk: Some(DiskSettings {
            dir: disk_dir.clone(),
            capacity: 64 << 20,
            compression: infercache_engine::Compression::Lz4,
        }),
        ..ServerConfig::default()
    };
    let s = Server::start(config, model().await).await;
    let disk = async || s.get("/v1/cache/stats", &[]).await.body["tiers"]["disk"].clone();
    assert_eq!(
        s.embed(&[], json!(["x", "y"])).await.header("x-cache"),
        "MISS"
    );
    eventually("both written to disk", Duration::from_secs(5), async || {
        disk().await["inserts"] == 2
    })
    .await;

    let fault = infercache_engine::testing::DiskFault::eio(&disk_dir);
    let r = s.embed(&[], json!(["z"])).await;
    assert_eq!((r.status, r.header("x-cache")), (200, "MISS"), "{}", r.body);
    eventually(
        "the disk tier degraded",
        Duration::from_secs(5),
        async || disk().await["degraded"] == true,
    )
    .await;
    let stats = disk().await;
    assert!(stats["io_errors"].as_u64().unwrap() >= 1, "{stats}");
    let metrics = s
        .get("/metrics", &[])
        .await
        .body
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        metrics.contains("infercache_cache_degraded{tier=\"disk\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("infercache_cache_degraded{tier=\"memory\"} 0"),
        "{metrics}"
    );
    let data = s.get("/dashboard/data", &[]).await;
    assert_eq!(data.body["now"]["disk"]["degraded"], true, "{}", data.body);
    // Meanwhile: hits from memory, misses from the model.
    let r = s.embed(&[], json!(["x", "w"])).await;
    assert_eq!(
        (r.status, r.header("x-cache")),
        (200, "PARTIAL"),
        "{}",
        r.body
    );

    drop(fault);
    let inserts = disk().await["inserts"].as_u64().unwrap();
    let mut n = 0;
    eventually(
        "the disk tier used again",
        Duration::from_secs(10),
        async || {
            // Each miss is written to disk; one per probe interval goes through.
            n += 1;
            let r = s.embed(&[], json!(format!("after the fault {n}"))).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let d = disk().await;
            d["degraded"] == false && d["inserts"].as_u64().unwrap() > inserts
        },
    )
    .await;
    let data = s.get("/dashboard/data", &[]).await;
    assert_eq!(data.body["now"]["disk"]["degraded"], false, "{}", data.body);
    s.stop().await;
}
