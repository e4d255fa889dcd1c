//! `/metrics` of a real server (the real model and a failing upstream model, memory, disk,
//! a real Redis) after hits, misses, an upstream error and an invalidation: it passes
//! `promtool check metrics` (Debian's `prometheus` package; `scripts/test` installs it),
//! and every metric the Grafana dashboard in `grafana/infercache.json` queries is in it.
//! Both fail, never skip, without their tools.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use infercache_redis::testing::RedisServer;
use infercache_server::{ServeArgs, ServerConfig};
use serde_json::{Value, json};

use crate::support::{Server, model};

/// An upstream that answers every call 503.
async fn failing_upstream() -> String {
    let app = axum::Router::new().route(
        "/score",
        axum::routing::post(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/score", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// `/metrics` of a server with every tier, the built-in model and a failing upstream
/// model, after hits, misses, an upstream error and an invalidation, asked for with
/// `accept`.
async fn metrics_after_traffic(accept: &str) -> String {
    let redis = RedisServer::start();
    let upstream = failing_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("infercache.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            disk_dir = "{}"
            redis = "{}"
            redis_timeout = "1s"

            [[models]]
            name = "all-MiniLM-L6-v2"
            backend = "builtin"

            [[models]]
            name = "scorer"
            backend = "http-json"
            url = "{upstream}"
            "#,
            dir.path().join("cache").display(),
            redis.url(),
        ),
    )
    .unwrap();
    let config = ServerConfig::from_args(&ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    })
    .unwrap();
    let s = Server::start(config, model().await).await;
    assert_eq!(
        s.embed(&[], json!(["a", "b"])).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        s.embed(&[], json!(["a", "b"])).await.header("x-cache"),
        "HIT"
    );
    let r = s
        .post("/v1/models/scorer/predict", &[], &json!({"inputs": [1]}))
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    let r = s
        .post("/v1/cache/invalidate", &[], &json!({"scope": "all"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.get("/metrics", &[("accept", accept)]).await;
    assert_eq!(r.status, 200);
    s.stop().await;
    r.body.as_str().expect("metrics are text").to_owned()
}

/// What `promtool check metrics` says of `text`.
fn promtool(text: &str) -> String {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("this test needs promtool: install Debian's `prometheus` (scripts/test does)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.code().is_some_and(|c| c <= 3),
        "promtool failed: {said}"
    );
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check_metrics() {
    // The classic text format, which promtool reads: not one warning.
    let classic = metrics_after_traffic("text/plain; version=0.0.4").await;
    assert!(!classic.contains("# EOF"), "{classic}");
    let said = promtool(&classic);
    assert!(said.trim().is_empty(), "promtool: {said}\n{classic}");
    // The disk tier's index is reported beside its bytes (the memory tier has none).
    for tier in ["memory", "disk"] {
        let series = format!("infercache_cache_index_bytes{{tier=\"{tier}\"}} ");
        assert!(
            classic.lines().any(|l| l.starts_with(&series)),
            "{series}in {classic}"
        );
    }

    // OpenMetrics, what Prometheus asks for: promtool reads it as the classic format, in
    // which a counter's HELP names its `_total` series, so it finds every counter without
    // help ("no help text") and nothing else; a family with no series yet (a labelled
    // counter nothing has counted) has no sample for it to complain about.
    let open = metrics_after_traffic("application/openmetrics-text; version=1.0.0").await;
    assert!(open.ends_with("# EOF\n"), "{open}");
    let has_samples = |name: &str| {
        let total = format!("{name}_total");
        open.lines().any(|l| {
            l.strip_prefix(total.as_str())
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
    };
    let counters: BTreeSet<String> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .filter(|n| has_samples(n))
        .map(|n| format!("{n}_total no help text"))
        .collect();
    let said: BTreeSet<String> = promtool(&open).lines().map(str::to_owned).collect();
    assert_eq!(said, counters, "{open}");
}

/// Every `infercache_*` name in `expr`.
fn names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("infercache_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// Every query of a Grafana dashboard: panels' targets and annotations.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for a in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(e) = a["expr"].as_str() {
            out.push(e.to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_queries_is_exposed() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../grafana/infercache.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let text = metrics_after_traffic("application/openmetrics-text").await;
    // The series names in the text (a family with no series yet, such as upstream errors
    // of a server without upstream failures, counts by its TYPE line and suffixes).
    let mut exposed = BTreeSet::new();
    for line in text.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let (name, kind) = family.split_once(' ').unwrap();
            exposed.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[],
            };
            for s in suffixes {
                exposed.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            exposed.insert(line[..end].to_owned());
        }
    }
    let queries = queries(&dashboard);
    assert!(queries.len() >= 14, "{queries:?}");
    let mut checked = 0;
    for q in &queries {
        let names = names(q);
        assert!(
            !names.is_empty(),
            "a query without an infercache metric: {q}"
        );
        for n in names {
            assert!(
                exposed.contains(&n),
                "{n} (in `{q}`) is not in /metrics:\n{text}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
}

#[test]
fn names_are_found_in_queries() {
    assert_eq!(
        names("sum by (le) (rate(infercache_a_bucket{x=\"y\"}[5m])) / infercache_b"),
        ["infercache_a_bucket", "infercache_b"]
    );
}
