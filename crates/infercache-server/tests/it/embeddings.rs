//! Embedding routes end to end: hits, misses, batches, single flight, both APIs.

use base64::Engine as _;
use infercache_server::ServerConfig;
use serde_json::json;

use crate::support::{Server, floats, model, norm};

#[tokio::test]
async fn miss_then_hit_returns_the_same_unit_vector() {
    let s = Server::start(ServerConfig::default(), model().await).await;
    let first = s.embed(&[], json!("The cat sat on the mat.")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(first.body["object"], "list");
    assert_eq!(first.body["data"][0]["object"], "embedding");
    assert_eq!(first.body["model"], "all-MiniLM-L6-v2");
    assert!(first.body["usage"]["prompt_tokens"].as_u64().unwrap() > 2);
    let v = floats(&first.body["data"][0]["embedding"]);
    assert_eq!(v.len(), 384);
    assert!((norm(&v) - 1.0).abs() < 1e-4);

    let second = s.embed(&[], json!("The cat sat on the mat.")).await;
    assert_eq!(second.header("x-cache"), "HIT");
    assert_eq!(floats(&second.body["data"][0]["embedding"]), v);
    let m = s.model_stats(&[]).await;
    assert_eq!(
        (m["hits"].clone(), m["misses"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(m["inference"]["texts"], 1);
    s.stop().await;
}

#[tokio::test]
async fn a_partial_batch_computes_only_its_misses() {
    let s = Server::start(ServerConfig::default(), model().await).await;
    let a = s.embed(&[], json!(["alpha", "beta"])).await;
    let b = s
        .embed(&[], json!(["beta", "gamma", "gamma", "alpha"]))
        .await;
    assert_eq!(b.header("x-cache"), "PARTIAL");
    assert_eq!(
        (b.header("x-cache-hits"), b.header("x-cache-misses")),
        ("2", "2")
    );
    assert_eq!(b.body["cache"]["hits"], 2);
    assert_eq!(
        floats(&b.body["data"][0]["embedding"]),
        floats(&a.body["data"][1]["embedding"])
    );
    assert_eq!(
        floats(&b.body["data"][3]["embedding"]),
        floats(&a.body["data"][0]["embedding"])
    );
    assert_eq!(b.body["data"][2]["index"], 2);
    assert_eq!(
        b.body["data"][1]["embedding"],
        b.body["data"][2]["embedding"]
    );
    let m = s.model_stats(&[]).await;
    assert_eq!(
        m["inference"]["texts"], 3,
        "alpha, beta, gamma once each: {m}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_identical_requests_make_one_model_invocation() {
    let s = std::sync::Arc::new(Server::start(ServerConfig::default(), model().await).await);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = std::sync::Arc::clone(&s);
            tokio::spawn(async move { s.embed(&[], json!("everyone asks this at once")).await })
        })
        .collect();
    let mut vectors = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        vectors.push(floats(&r.body["data"][0]["embedding"]));
    }
    assert!(vectors.windows(2).all(|w| w[0] == w[1]));
    let m = s.model_stats(&[]).await;
    assert_eq!(m["inference"]["invocations"], 1, "{m}");
    assert_eq!(m["inference"]["texts"], 1, "{m}");
    assert_eq!(m["misses"], 1, "{m}");
    assert_eq!(
        m["hits"].as_u64().unwrap() + m["coalesced"].as_u64().unwrap(),
        49,
        "the rest waited or hit: {m}"
    );
    std::sync::Arc::into_inner(s).unwrap().stop().await;
}

#[tokio::test]
async fn base64_and_float_encodings_agree() {
    let s = Server::start(ServerConfig::default(), model().await).await;
    let f = s.embed(&[], json!("encode me")).await;
    let b = s
        .post(
            "/v1/embeddings",
            &[],
            &json!({"model": "sentence-transformers/all-MiniLM-L6-v2", "input": ["encode me"], "encoding_format": "base64", "user": "u"}),
        )
        .await;
    assert_eq!(b.header("x-cache"), "HIT");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b.body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(v, floats(&f.body["data"][0]["embedding"]));
    s.stop().await;
}

#[tokio::test]
async fn smally_embed_shares_the_entry_and_normalizes_on_the_way_out() {
    let s = Server::start(ServerConfig::default(), model().await).await;
    let raw = s
        .post(
            "/v1/embed",
            &[],
            &json!({"text": "Hello world", "normalize": false}),
        )
        .await;
    assert_eq!(raw.status, 200, "{}", raw.body);
    assert_eq!(raw.body["cached"], false);
    assert_eq!(raw.body["model"], "all-MiniLM-L6-v2");
    assert_eq!(raw.body["tokens"], 4, "[CLS] hello world [SEP]");
    assert!(raw.body["latency_ms"].as_f64().unwrap() > 0.0);
    let normalized = s
        .post(
            "/v1/embed",
            &[],
            &json!({"text": "Hello world", "normalize": true}),
        )
        .await;
    assert_eq!(normalized.body["cached"], true);
    let (r, n) = (
        floats(&raw.body["embedding"]),
        floats(&normalized.body["embedding"]),
    );
    // The model's output is already unit length, so both settings agree to rounding.
    assert!((norm(&r) - 1.0).abs() < 1e-4);
    assert!(r.iter().zip(&n).all(|(a, b)| (a - b).abs() < 1e-5));
    // And the OpenAI route serves the same entry.
    let o = s.embed(&[], json!("Hello world")).await;
    assert_eq!(o.header("x-cache"), "HIT");
    assert_eq!(floats(&o.body["data"][0]["embedding"]), r);
    s.stop().await;
}
