//! The weight server: routes driven without a socket, and real servers on loopback for
//! the cache's single flight and restarts.

use std::fs;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use infercache_core::SystemClock;
use infercache_weights::server::{Invalidate, WeightServer};
use infercache_weights::testing::TinyBert;
use infercache_weights::{ChunkOptions, NoProgress, chunk_model};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tower::ServiceExt as _;

use crate::common::{TINY, TestServer, Tiny, config};

/// Bytes the memory tier charges for a chunk of `len` bytes.
fn charged(len: u64) -> u64 {
    infercache_engine::memory::charge(infercache_engine::Policy::Lru, len as usize)
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap().to_owned()
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str) -> Answer {
    call(app, Method::GET, uri, &[], "").await
}

fn open(t: &Tiny, cache_bytes: u64) -> WeightServer {
    WeightServer::open(config(&t.root(), cache_bytes), SystemClock::shared()).unwrap()
}

/// A tiny BERT whose embeddings (a long position table) outweigh three layers.
fn big_embeddings() -> TinyBert {
    TinyBert {
        max_positions: 1024,
        ..TinyBert::default()
    }
}

fn chunk_uri(name: &str) -> String {
    format!("/v1/weights/{TINY}/chunks/{name}")
}

#[tokio::test]
async fn chunks_files_and_manifests_are_served_with_etags_ranges_and_heads() {
    let t = Tiny::new(TinyBert::default());
    let server = open(&t, 100 << 20);
    let app = server.app();

    let list = get(&app, "/v1/weights").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json()["models"][0]["name"], TINY);
    assert_eq!(list.json()["models"][0]["num_layers"], 4);

    let manifest = get(&app, &format!("/v1/weights/{TINY}/manifest")).await;
    assert_eq!(manifest.status, StatusCode::OK);
    assert_eq!(
        manifest.body,
        fs::read(t.chunks.join("chunk_info.json")).unwrap()
    );
    assert_eq!(manifest.header(header::CACHE_CONTROL), "no-cache");

    let info = &t.manifest.chunks["layer_1"];
    let file = fs::read(t.chunk_path("layer_1")).unwrap();
    let whole = get(&app, &chunk_uri("layer_1")).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, file);
    let etag = format!("\"{}\"", info.sha256);
    assert_eq!(whole.header(header::ETAG), etag);
    assert_eq!(whole.header(header::ACCEPT_RANGES), "bytes");
    assert!(whole.header(header::CACHE_CONTROL).contains("immutable"));
    assert_eq!(whole.header(header::CONTENT_LENGTH), file.len().to_string());

    let head = call(&app, Method::HEAD, &chunk_uri("layer_1"), &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header(header::CONTENT_LENGTH), file.len().to_string());
    assert_eq!(head.header(header::ETAG), etag);

    let n = file.len();
    for (range, start, end) in [
        ("bytes=0-99".to_owned(), 0, 99),
        ("bytes=100-".to_owned(), 100, n - 1),
        ("bytes=-7".to_owned(), n - 7, n - 1),
        (format!("bytes=5-{}", n + 1000), 5, n - 1),
    ] {
        let part = call(
            &app,
            Method::GET,
            &chunk_uri("layer_1"),
            &[("range", &range)],
            "",
        )
        .await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(part.body, &file[start..=end], "{range}");
        assert_eq!(
            part.header(header::CONTENT_RANGE),
            format!("bytes {start}-{end}/{n}"),
            "{range}"
        );
    }
    // A stale If-Range gets the whole, current body.
    let stale = call(
        &app,
        Method::GET,
        &chunk_uri("layer_1"),
        &[("range", "bytes=0-9"), ("if-range", "\"0000\"")],
        "",
    )
    .await;
    assert_eq!((stale.status, stale.body.len()), (StatusCode::OK, n));
    // Several ranges are answered whole.
    let several = call(
        &app,
        Method::GET,
        &chunk_uri("layer_1"),
        &[("range", "bytes=0-1,4-5")],
        "",
    )
    .await;
    assert_eq!((several.status, several.body.len()), (StatusCode::OK, n));

    let unchanged = call(
        &app,
        Method::GET,
        &chunk_uri("layer_1"),
        &[("if-none-match", &etag)],
        "",
    )
    .await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert!(unchanged.body.is_empty());
    let matching = call(
        &app,
        Method::GET,
        &chunk_uri("layer_1"),
        &[("if-match", &etag)],
        "",
    )
    .await;
    assert_eq!(matching.status, StatusCode::OK);

    let config = get(&app, &format!("/v1/weights/{TINY}/files/config.json")).await;
    assert_eq!(config.status, StatusCode::OK);
    assert_eq!(config.body, fs::read(t.model.join("config.json")).unwrap());
    assert_eq!(
        config.header(header::ETAG),
        format!("\"{}\"", t.manifest.config_sha256)
    );
}

/// A request (method, URI, headers, body) and what it must get (status, error code).
type Case<'a> = (
    Method,
    String,
    Vec<(&'a str, String)>,
    &'a str,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let t = Tiny::new(TinyBert::default());
    let server = open(&t, 100 << 20);
    let app = server.app();
    let size = t.size("layer_0");
    let cases: Vec<Case<'_>> = vec![
        (
            Method::GET,
            "/v1/weights/nope/manifest".into(),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            Method::GET,
            "/v1/weights/nope/chunks/layer_0".into(),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            Method::GET,
            chunk_uri("layer_9"),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "chunk_not_found",
        ),
        (
            Method::GET,
            chunk_uri("layer_01"),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "chunk_not_found",
        ),
        (
            Method::GET,
            chunk_uri("..%2Fchunk_info.json"),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "chunk_not_found",
        ),
        (
            Method::GET,
            chunk_uri("chunk_info.json"),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "chunk_not_found",
        ),
        (
            Method::HEAD,
            chunk_uri("nope"),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            Method::GET,
            format!("/v1/weights/{TINY}/files/model.safetensors"),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "file_not_found",
        ),
        (
            Method::GET,
            format!("/v1/weights/{TINY}/files/..%2Fconfig.json"),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "file_not_found",
        ),
        (
            Method::GET,
            chunk_uri("layer_0"),
            vec![("range", "bytes=9-3".into())],
            "",
            StatusCode::BAD_REQUEST,
            "invalid_range",
        ),
        (
            Method::GET,
            chunk_uri("layer_0"),
            vec![("range", "pages=1-2".into())],
            "",
            StatusCode::BAD_REQUEST,
            "invalid_range",
        ),
        (
            Method::GET,
            chunk_uri("layer_0"),
            vec![("range", format!("bytes={size}-"))],
            "",
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
        ),
        (
            Method::GET,
            chunk_uri("layer_0"),
            vec![("if-match", "\"abc\"".into())],
            "",
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
        ),
        (
            Method::POST,
            "/v1/weights/invalidate".into(),
            vec![],
            "",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/weights/invalidate".into(),
            vec![],
            "{\"scope\": \"everything\"}",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/weights/invalidate".into(),
            vec![],
            "{\"scope\": \"model\"}",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/weights/invalidate".into(),
            vec![],
            "{\"scope\": \"all\", \"x\": 1}",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/weights/invalidate".into(),
            vec![],
            "{\"scope\": \"model\", \"model\": \"nope\"}",
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            Method::GET,
            "/v1/nothing".into(),
            vec![],
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            chunk_uri("layer_0"),
            vec![],
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "",
        ),
    ];
    for (method, uri, headers, body, status, code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = call(&app, method.clone(), &uri, &headers, body).await;
        assert_eq!(a.status, status, "{method} {uri} {headers:?} {body}");
        if !code.is_empty() {
            assert_eq!(a.code(), code, "{method} {uri}");
            let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
            assert!(
                !message.contains(t.dir.path().to_str().unwrap()),
                "no server paths: {message}"
            );
        }
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            assert_eq!(a.header(header::CONTENT_RANGE), format!("bytes */{size}"));
        }
    }
    // Still serving.
    let ok = get(&app, &chunk_uri("layer_0")).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body.len() as u64, size);
}

/// Requests `names` in order; the cache outcome counters after each.
async fn replay(app: &Router, server: &WeightServer, names: &[&str]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for name in names {
        assert_eq!(get(app, &chunk_uri(name)).await.status, StatusCode::OK);
        let s = server.stats();
        out.push((s.cache.hits, s.storage.reads));
    }
    out
}

#[tokio::test]
async fn the_server_cache_is_lru_where_fifo_would_evict_the_hot_chunk() {
    let t = Tiny::new(TinyBert::default());
    let layer = t.size("layer_0");
    // Room for exactly two layers.
    let server = open(&t, 2 * charged(layer) + charged(layer) / 2);
    let app = server.app();
    // A B A C A: LRU keeps A (hit at the end); FIFO evicts A when C arrives (miss).
    let trace = ["layer_0", "layer_1", "layer_0", "layer_2", "layer_0"];
    let got = replay(&app, &server, &trace).await;
    assert_eq!(got, vec![(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]);
    let s = server.stats();
    assert_eq!(s.cache.evictions, 1);
    assert_eq!((s.cache.hits, s.cache.misses), (2, 3));
    // layer_1 was the victim.
    assert_eq!(replay(&app, &server, &["layer_1"]).await, vec![(2, 4)]);
}

#[tokio::test]
async fn the_cache_stays_within_its_bytes_after_every_request_and_big_chunks_bypass_it() {
    let t = Tiny::new(big_embeddings());
    let embeddings = t.size("embeddings");
    let layer = t.size("layer_0");
    assert!(embeddings > 3 * layer, "the embeddings must not fit");
    let capacity = 3 * charged(layer) + t.size("pooler");
    assert!(charged(embeddings) > capacity);
    let server = open(&t, capacity);
    let app = server.app();
    let names: Vec<String> = t.manifest.chunks.keys().cloned().collect();
    let mut rng = StdRng::seed_from_u64(3);
    let mut bypassed = 0;
    for _ in 0..200 {
        let name = &names[rng.random_range(0..names.len())];
        let a = get(&app, &chunk_uri(name)).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, fs::read(t.chunk_path(name)).unwrap(), "{name}");
        if name == "embeddings" {
            bypassed += 1;
        }
        let s = server.stats();
        assert!(s.cache.bytes <= capacity, "{} > {capacity}", s.cache.bytes);
        assert_eq!(s.cache.capacity_bytes, capacity);
        assert_eq!(s.cache.bypassed, bypassed);
    }
    let s = server.stats();
    assert!(s.cache.evictions > 0);
    assert!(s.cache.hits > 0);
    let per_chunk: u64 = s.chunks.iter().map(|c| c.requests).sum();
    assert_eq!(per_chunk, 200);
}

#[tokio::test]
async fn thirty_two_clients_missing_one_chunk_cause_one_storage_read() {
    let t = Tiny::new(TinyBert::default());
    let server = TestServer::start(config(&t.root(), 100 << 20)).await;
    let url = format!("{}{}", server.url(), chunk_uri("layer_2"));
    let expected = fs::read(t.chunk_path("layer_2")).unwrap();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let client = infercache_core::tls::client();
                barrier.wait().await;
                client
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), expected);
    }
    let s = server.server.stats();
    assert_eq!(s.storage.reads, 1, "{:?}", s.cache);
    assert_eq!(s.cache.hits + s.cache.coalesced + s.cache.storage_reads, 32);
    let c = s.chunks.iter().find(|c| c.chunk == "layer_2").unwrap();
    assert_eq!((c.requests, c.bytes_sent), (32, 32 * expected.len() as u64));
}

#[tokio::test]
async fn a_damaged_chunk_file_is_never_served() {
    let t = Tiny::new(big_embeddings());
    // Cached chunks (layers) and a streamed one (the embeddings do not fit).
    let server = TestServer::start(config(&t.root(), 4 * charged(t.size("layer_0")))).await;
    for name in ["layer_3", "embeddings"] {
        let mut bytes = fs::read(t.chunk_path(name)).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        fs::write(t.chunk_path(name), &bytes).unwrap();
    }
    let client = infercache_core::tls::client();
    let cached = client
        .get(format!("{}{}", server.url(), chunk_uri("layer_3")))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value = cached.json().await.unwrap();
    assert_eq!(body["error"]["code"], "chunk_corrupt");

    // The streamed chunk never completes: its last piece (here its only one) is held
    // back until the digest matches, so the answer breaks off with an error.
    let streamed = client
        .get(format!("{}{}", server.url(), chunk_uri("embeddings")))
        .send()
        .await;
    let completed = match streamed {
        Ok(resp) => resp.bytes().await.is_ok(),
        Err(_) => false,
    };
    assert!(!completed, "a damaged stream must not complete");

    assert_eq!(server.server.stats().storage.corrupt, 2);
    let good = client
        .get(format!("{}{}", server.url(), chunk_uri("layer_0")))
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), StatusCode::OK);
}

#[tokio::test]
async fn invalidating_a_model_reloads_its_manifest_and_drops_its_chunks() {
    let t = Tiny::new(TinyBert::default());
    let server = open(&t, 100 << 20);
    let app = server.app();
    let old = get(&app, &chunk_uri("layer_0")).await;
    assert_eq!(server.stats().cache.entries, 1);

    // Re-chunked with other weights.
    let other = t.dir.path().join("other");
    TinyBert {
        seed: 99,
        ..TinyBert::default()
    }
    .write(&other)
    .unwrap();
    let options = ChunkOptions {
        model_name: Some(TINY.into()),
        ..ChunkOptions::default()
    };
    let m = chunk_model(&other, &t.chunks, &options, &mut NoProgress)
        .unwrap()
        .manifest;
    // Until invalidated, the server answers from the manifest it loaded.
    let stale = get(&app, &chunk_uri("layer_0")).await;
    assert_eq!(stale.body, old.body);

    let r = call(
        &app,
        Method::POST,
        "/v1/weights/invalidate",
        &[],
        &format!("{{\"scope\": \"model\", \"model\": \"{TINY}\"}}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["reloaded"][0], TINY);
    assert_eq!(r.json()["evicted"], 1);
    assert_eq!(server.stats().cache.entries, 0);
    let fresh = get(&app, &chunk_uri("layer_0")).await;
    assert_eq!(
        fresh.header(header::ETAG),
        format!("\"{}\"", m.chunks["layer_0"].sha256)
    );
    assert_eq!(fresh.body, fs::read(t.chunk_path("layer_0")).unwrap());

    // A model whose directory is gone stops being served.
    fs::remove_dir_all(&t.chunks).unwrap();
    let all = server.invalidate(Invalidate::All).await.unwrap();
    assert_eq!(all.removed, [TINY]);
    assert_eq!(
        get(&app, &chunk_uri("layer_0")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_directory_that_cannot_be_served_is_refused_at_start() {
    let t = Tiny::new(TinyBert::default());
    let empty = t.dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let open =
        |dir: &std::path::Path| WeightServer::open(config(dir, 1 << 20), SystemClock::shared());
    assert!(matches!(
        open(&empty),
        Err(infercache_weights::ServerError::Store(_))
    ));
    let missing = t.dir.path().join("missing");
    assert!(open(&missing).is_err());

    fs::write(t.chunk_path("layer_0"), b"short").unwrap();
    let err = open(&t.root()).unwrap_err().to_string();
    assert!(
        err.contains("layer_0.safetensors") && err.contains("verify"),
        "{err}"
    );

    // Two directories holding one model.
    let t2 = Tiny::new(TinyBert::default());
    let twice = t2.dir.path().join("twice");
    fs::create_dir_all(&twice).unwrap();
    for d in ["a", "b"] {
        let options = ChunkOptions {
            model_name: Some("same".into()),
            ..ChunkOptions::default()
        };
        chunk_model(&t2.model, &twice.join(d), &options, &mut NoProgress).unwrap();
    }
    assert!(open(&twice).unwrap_err().to_string().contains("same"));
}

#[tokio::test]
async fn stats_and_metrics_report_the_cache() {
    let t = Tiny::new(TinyBert::default());
    let server = open(&t, 100 << 20);
    let app = server.app();
    for _ in 0..3 {
        get(&app, &chunk_uri("layer_0")).await;
    }
    let stats = get(&app, "/v1/weights/stats").await.json();
    assert_eq!(stats["cache"]["hits"], 2);
    assert_eq!(stats["cache"]["storage_reads"], 1);
    assert_eq!(stats["storage"]["reads"], 1);
    let metrics = String::from_utf8(get(&app, "/metrics").await.body).unwrap();
    for line in [
        "infercache_weights_cache_lookups_total{outcome=\"memory_hit\"} 2",
        "infercache_weights_cache_lookups_total{outcome=\"storage_read\"} 1",
        "infercache_weights_storage_reads_total 1\n",
        &format!("infercache_weights_chunk_requests_total{{model=\"{TINY}\",chunk=\"layer_0\"}} 3"),
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
}
