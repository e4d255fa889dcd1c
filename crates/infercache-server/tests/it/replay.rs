//! Responses kept for hot requests (`routes/replay.rs`) through a real server and the
//! real model: a repeated request is answered again byte for byte and counted as the
//! full path counts a hit, and nothing that changes a row's key, freshness or bytes is
//! ever answered from a kept response.

use std::time::Duration;

use bytes::Bytes;
use infercache_server::ServerConfig;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::metrics::metric;
use crate::support::{Server, model, texts};

const REPLAYED: &str = "infercache_replayed_responses_total{model=\"all-MiniLM-L6-v2\"}";

/// The base64 request the `openai` client sends for one text.
fn openai_body(text: &str) -> String {
    json!({"model": "all-MiniLM-L6-v2", "input": text, "encoding_format": "base64"}).to_string()
}

/// POSTs `body` to `path`, with `headers`; the status, headers and body bytes.
async fn post(
    s: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HeaderMap, Bytes) {
    let mut req = infercache_core::tls::client()
        .post(format!("{}{path}", s.url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap())
}

fn x_cache(headers: &HeaderMap) -> &str {
    headers.get("x-cache").map_or("", |v| v.to_str().unwrap())
}

/// Requests answered from kept responses so far, read from `/metrics` with `auth`.
async fn replayed(s: &Server, auth: &[(&str, &str)]) -> f64 {
    let r = s.get("/metrics", auth).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.body.as_str().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(REPLAYED)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{REPLAYED}` in:\n{text}"))
}

/// Sends `body` with `headers` until a response is replayed (the third hit is the first
/// replayed: the first hit marks its slot, the second keeps it), reading `/metrics`
/// with `admin`; each answer a `HIT` after the first.
async fn until_replayed(
    s: &Server,
    headers: &[(&str, &str)],
    admin: &[(&str, &str)],
    body: &str,
) -> Bytes {
    let before = replayed(s, admin).await;
    for _ in 0..4 {
        let (status, h, bytes) = post(s, "/v1/embeddings", headers, body).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        if x_cache(&h) == "HIT" && replayed(s, admin).await > before {
            return bytes;
        }
    }
    panic!("no response was replayed");
}

#[tokio::test]
async fn a_repeated_request_is_answered_again_byte_for_byte_and_counted_as_a_hit() {
    let m = model().await;
    let s = Server::start(ServerConfig::default(), m.clone()).await;
    let body = openai_body("a sentence embedded again and again");
    let mut answers = Vec::new();
    for _ in 0..6 {
        let (status, headers, bytes) = post(&s, "/v1/embeddings", &[], &body).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        answers.push((headers, bytes));
    }
    assert_eq!(x_cache(&answers[0].0), "MISS");
    // Hits 1 and 2 take the full path (the second keeps the response), 3 to 5 replay it.
    assert_eq!(replayed(&s, &[]).await, 3.0);
    for (headers, bytes) in &answers[1..] {
        assert_eq!(bytes, &answers[1].1, "every hit is the same bytes");
        for name in ["x-cache", "x-cache-hits", "x-cache-misses", "content-type"] {
            assert_eq!(headers.get(name), answers[1].0.get(name), "{name}");
        }
    }
    assert_eq!(texts(&m), 1);
    let stats = s.model_stats(&[]).await;
    assert_eq!(
        (stats["hits"].clone(), stats["misses"].clone()),
        (json!(5), json!(1))
    );
    let hits = metric(
        &s,
        "infercache_request_duration_seconds_count{model=\"all-MiniLM-L6-v2\",outcome=\"hit\"}",
    )
    .await;
    assert_eq!(hits, 5.0, "replayed requests are timed as hits");

    // Another text, or the same text in floats, is another request.
    let (_, h, _) = post(&s, "/v1/embeddings", &[], &openai_body("another sentence")).await;
    assert_eq!(x_cache(&h), "MISS");
    let floats =
        json!({"model": "all-MiniLM-L6-v2", "input": "a sentence embedded again and again"});
    let (_, h, bytes) = post(&s, "/v1/embeddings", &[], &floats.to_string()).await;
    assert_eq!(x_cache(&h), "HIT");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(v["data"][0]["embedding"].is_array());
    s.stop().await;
}

#[tokio::test]
async fn a_removal_or_an_invalidation_is_never_answered_from_a_kept_response() {
    let m = model().await;
    let s = Server::start(ServerConfig::default(), m.clone()).await;
    let body = openai_body("kept, then removed");
    let kept = until_replayed(&s, &[], &[], &body).await;
    let key = serde_json::from_slice::<Value>(&kept).unwrap()["cache"]["keys"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(texts(&m), 1);

    let d = s
        .send(
            infercache_core::tls::client().delete(format!("{}/v1/cache/entries/{key}", s.url)),
            &[],
        )
        .await;
    assert_eq!(d.status, 200, "{}", d.body);
    let (_, h, _) = post(&s, "/v1/embeddings", &[], &body).await;
    assert_eq!(x_cache(&h), "MISS", "a removed entry is computed again");
    assert_eq!(texts(&m), 2);

    until_replayed(&s, &[], &[], &body).await;
    let i = s
        .post(
            "/v1/cache/invalidate",
            &[],
            &json!({"scope": "model", "model": "all-MiniLM-L6-v2"}),
        )
        .await;
    assert_eq!(i.status, 200, "{}", i.body);
    let (_, h, bytes) = post(&s, "/v1/embeddings", &[], &body).await;
    assert_eq!(
        x_cache(&h),
        "MISS",
        "an invalidated entry is computed again"
    );
    assert_eq!(texts(&m), 3);
    let new_key = serde_json::from_slice::<Value>(&bytes).unwrap()["cache"]["keys"][0].clone();
    assert_ne!(new_key, json!(key), "the invalidation made a new key");
    s.stop().await;
}

#[tokio::test]
async fn an_expired_row_is_never_answered_from_a_kept_response() {
    let m = model().await;
    let config = ServerConfig {
        ttl: Some(Duration::from_secs(1)),
        ..ServerConfig::default()
    };
    let s = Server::start(config, m.clone()).await;
    let body = openai_body("kept, then expired");
    until_replayed(&s, &[], &[], &body).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, h, _) = post(&s, "/v1/embeddings", &[], &body).await;
    assert_eq!(x_cache(&h), "MISS", "an expired entry is computed again");
    assert_eq!(texts(&m), 2);
    s.stop().await;
}

#[tokio::test]
async fn tenants_and_request_directives_never_share_a_kept_response() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[[key]]\nkey = \"sk-a\"\ntenant = \"a\"\n\n[[key]]\nkey = \"sk-b\"\ntenant = \"b\"\n\n[[key]]\nkey = \"sk-admin\"\ntenant = \"ops\"\nadmin = true\n",
    )
    .unwrap();
    let m = model().await;
    let config = ServerConfig {
        api_keys_file: Some(keys),
        ..ServerConfig::default()
    };
    let s = Server::start(config, m.clone()).await;
    let a = [("authorization", "Bearer sk-a")];
    let b = [("authorization", "Bearer sk-b")];
    let admin = [("authorization", "Bearer sk-admin")];
    let body = openai_body("one text, two tenants");
    let kept_a = until_replayed(&s, &a, &admin, &body).await;
    let (_, h, bytes) = post(&s, "/v1/embeddings", &b, &body).await;
    assert_eq!(x_cache(&h), "MISS", "another tenant's rows are its own");
    let key_of =
        |b: &Bytes| serde_json::from_slice::<Value>(b).unwrap()["cache"]["keys"][0].clone();
    assert_ne!(key_of(&bytes), key_of(&kept_a));
    let (status, _, _) = post(&s, "/v1/embeddings", &[], &body).await;
    assert_eq!(status, 401, "no key, no answer, kept or not");

    let (_, h, _) = post(
        &s,
        "/v1/embeddings",
        &[a[0], ("cache-control", "no-cache")],
        &body,
    )
    .await;
    assert_eq!(x_cache(&h), "MISS", "no-cache asks for a fresh answer");
    assert_eq!(texts(&m), 3);
    s.stop().await;
}

#[tokio::test]
async fn a_replayed_smally_answer_measures_its_own_latency() {
    let s = Server::start(ServerConfig::default(), model().await).await;
    let body = json!({"text": "smally again"}).to_string();
    let mut answers = Vec::new();
    for _ in 0..8 {
        let (status, headers, bytes) = post(&s, "/v1/embed", &[], &body).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        let latency = v["latency_ms"].take();
        answers.push((x_cache(&headers).to_owned(), v, latency.as_f64().unwrap()));
    }
    assert!(replayed(&s, &[]).await >= 5.0);
    for (x, v, latency) in &answers[1..] {
        assert_eq!(x, "HIT");
        assert_eq!(v, &answers[1].1, "the same answer but its latency");
        assert!(*latency >= 0.0);
    }
    let latencies: Vec<u64> = answers[3..].iter().map(|a| a.2.to_bits()).collect();
    assert!(
        latencies.iter().any(|l| *l != latencies[0]),
        "each replay writes its own latency: {latencies:?}"
    );
    s.stop().await;
}
