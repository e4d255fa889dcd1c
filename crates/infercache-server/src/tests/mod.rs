//! Socketless router tests: every error path and every cache-control directive, against a
//! fake model (no weights) and a cache on a manual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::App;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine as _;
use infercache_core::ManualClock;
use infercache_engine::{Cache, CacheConfig};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt as _;

use bytes::Bytes;
use infercache_backend::{
    Backend, BackendError, BackendKind, BackendStats, BoxFuture, InferenceStats, Inputs, ModelInfo,
    vector,
};
use infercache_infer::{CachePolicy, Models};

use crate::{ApiKeys, AppState, Limits, app};

mod datasets;
mod replay;
mod upstream;
mod weights;

const DIMS: usize = 8;

/// A deterministic model: each text's vector comes from its hash, unnormalized.
#[derive(Debug)]
pub(crate) struct Fake {
    info: ModelInfo,
    invocations: AtomicU64,
    texts: AtomicU64,
    overloaded: AtomicBool,
    fail: AtomicBool,
    /// When set, every call waits for a notification (or for a very long sleep).
    hold: Option<Arc<Notify>>,
}

impl Fake {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            info: ModelInfo {
                name: "all-MiniLM-L6-v2".into(),
                aliases: vec!["sentence-transformers/all-MiniLM-L6-v2".into()],
                kind: BackendKind::Builtin,
                version: "1".into(),
                digest: Some("sha256:fake".into()),
                dims: Some(DIMS),
                upstream: None,
            },
            invocations: AtomicU64::new(0),
            texts: AtomicU64::new(0),
            overloaded: AtomicBool::new(false),
            fail: AtomicBool::new(false),
            hold: None,
        })
    }

    fn holding(hold: Arc<Notify>) -> Arc<Self> {
        let mut f = Arc::into_inner(Self::new()).unwrap();
        f.hold = Some(hold);
        Arc::new(f)
    }

    fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::SeqCst)
    }
}

fn vector(text: &str) -> Vec<f32> {
    blake3::hash(text.as_bytes()).as_bytes()[..DIMS]
        .iter()
        .map(|b| f32::from(*b) + 1.0)
        .collect()
}

impl Fake {
    fn embed(&self, texts: &[String]) -> Result<Vec<Bytes>, BackendError> {
        if self.overloaded.load(Ordering::SeqCst) {
            return Err(BackendError::Overloaded);
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(BackendError::failed("CUDA secret-detail exploded"));
        }
        self.invocations.fetch_add(1, Ordering::SeqCst);
        self.texts.fetch_add(texts.len() as u64, Ordering::SeqCst);
        Ok(texts.iter().map(|t| vector::encode(&vector(t))).collect())
    }

    fn inference(&self) -> InferenceStats {
        InferenceStats {
            invocations: self.invocations(),
            texts: self.texts.load(Ordering::SeqCst),
        }
    }
}

impl Backend for Fake {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_tokens(&self, text: &str) -> usize {
        text.split_whitespace().count() + 2
    }

    fn compute<'a>(
        &'a self,
        inputs: &'a Inputs,
        rows: &'a [usize],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, BackendError>> {
        Box::pin(async move {
            if let Some(hold) = &self.hold {
                hold.notified().await;
            }
            let Inputs::Texts { texts, .. } = inputs else {
                return Err(BackendError::failed("the fake takes texts"));
            };
            let batch: Vec<String> = rows.iter().map(|&i| texts[i].clone()).collect();
            self.embed(&batch)
        })
    }

    fn stats(&self) -> BackendStats {
        BackendStats::InProcess(self.inference())
    }
}

struct Harness {
    app: App,
    state: AppState,
    fake: Arc<Fake>,
    clock: Arc<ManualClock>,
}

fn limits() -> Limits {
    Limits {
        max_body_bytes: 4096,
        max_items: 4,
        max_input_chars: 50,
        ..Limits::default()
    }
}

fn harness_with(fake: Arc<Fake>, keys: ApiKeys, limits: Limits, cache: bool) -> Harness {
    let clock = ManualClock::new(1_000_000);
    let cache = cache.then(|| Cache::open(CacheConfig::default(), clock.clone()).unwrap());
    let models = Models::new([(fake.clone() as Arc<dyn Backend>, CachePolicy::builtin())]);
    let state = AppState::new(cache, models, keys, limits);
    Harness {
        app: app(state.clone()),
        state,
        fake,
        clock,
    }
}

fn harness() -> Harness {
    harness_with(Fake::new(), ApiKeys::none(), limits(), true)
}

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    /// Asserts an error reply: its status, code, and the OpenAI body shape.
    pub(crate) fn error(&self, status: StatusCode, code: &str) -> &str {
        assert_eq!(self.status, status, "{}", self.body);
        let e = &self.body["error"];
        assert_eq!(e["code"], code, "{}", self.body);
        assert!(e["type"].is_string(), "{}", self.body);
        e["message"].as_str().unwrap()
    }

    /// Asserts an error reply on a `/v2` route: its status and KServe v2's body shape,
    /// `{"error": "<message>"}` and nothing else; returns the message.
    pub(crate) fn kserve_error(&self, status: StatusCode) -> &str {
        assert_eq!(self.status, status, "{}", self.body);
        let obj = self.body.as_object().expect("a JSON object");
        assert_eq!(obj.len(), 1, "only `error`: {}", self.body);
        obj["error"].as_str().expect("`error` is a string")
    }
}

pub(crate) async fn send(app: &App, req: Request<Body>) -> Reply {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        headers,
        body,
    }
}

pub(crate) fn request(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Request<Body> {
    let mut r = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(body.into()).unwrap()
}

pub(crate) async fn post(app: &App, uri: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    send(app, request(Method::POST, uri, headers, body.to_string())).await
}

async fn embeddings(h: &Harness, headers: &[(&str, &str)], input: Value) -> Reply {
    post(
        &h.app,
        "/v1/embeddings",
        headers,
        &json!({"model": "all-MiniLM-L6-v2", "input": input}),
    )
    .await
}

pub(crate) async fn get(app: &App, uri: &str, headers: &[(&str, &str)]) -> Reply {
    send(app, request(Method::GET, uri, headers, Body::empty())).await
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test]
async fn openai_miss_then_hit_in_openai_shape() {
    let h = harness();
    let r = embeddings(&h, &[], json!("hello world")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!(
        (r.header("x-cache-hits"), r.header("x-cache-misses")),
        ("0", "1")
    );
    let b = &r.body;
    assert_eq!(b["object"], "list");
    assert_eq!(b["model"], "all-MiniLM-L6-v2");
    assert_eq!(b["data"][0]["object"], "embedding");
    assert_eq!(b["data"][0]["index"], 0);
    assert_eq!(floats(&b["data"][0]["embedding"]), vector("hello world"));
    assert_eq!(b["usage"]["prompt_tokens"], 4);
    assert_eq!(b["usage"]["total_tokens"], 4);
    assert_eq!(b["cache"]["misses"], 1);

    let r = embeddings(&h, &[], json!(["hello world"])).await;
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(r.body["cache"]["hits"], 1);
    assert_eq!(
        floats(&r.body["data"][0]["embedding"]),
        vector("hello world")
    );
    assert_eq!(h.fake.invocations(), 1);
}

#[tokio::test]
async fn base64_is_little_endian_f32() {
    let h = harness();
    let r = post(
        &h.app,
        "/v1/embeddings",
        &[],
        &json!({"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "x", "encoding_format": "base64", "user": "u1"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r.body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(v, vector("x"));
}

#[tokio::test]
async fn partial_batches_and_duplicates_compute_only_what_is_missing() {
    let h = harness();
    embeddings(&h, &[], json!(["a", "b"])).await;
    let r = embeddings(&h, &[], json!(["a", "c", "c", "b"])).await;
    assert_eq!(r.header("x-cache"), "PARTIAL");
    assert_eq!(
        (r.header("x-cache-hits"), r.header("x-cache-misses")),
        ("2", "2")
    );
    for (i, t) in ["a", "c", "c", "b"].iter().enumerate() {
        assert_eq!(r.body["data"][i]["index"], i);
        assert_eq!(floats(&r.body["data"][i]["embedding"]), vector(t));
    }
    let s = h.fake.inference();
    assert_eq!((s.invocations, s.texts), (2, 3), "c computed once");
}

#[tokio::test]
async fn every_bad_input_gets_its_own_400() {
    let h = harness();
    let m = "all-MiniLM-L6-v2";
    let cases: Vec<(&str, &str, &str)> = vec![
        ("{\"model\": ", "invalid_json", "not valid JSON"),
        ("", "invalid_json", "empty"),
        ("[1, 2]", "invalid_value", "JSON object"),
        (r#"{"input": "x"}"#, "missing_required_parameter", "model"),
        (r#"{"model": 7, "input": "x"}"#, "invalid_value", "model"),
    ];
    for (body, code, needle) in cases {
        let r = send(&h.app, request(Method::POST, "/v1/embeddings", &[], body)).await;
        let msg = r.error(StatusCode::BAD_REQUEST, code);
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let cases = vec![
        (json!({"model": m}), "missing_required_parameter", "input"),
        (
            json!({"model": m, "input": 5}),
            "invalid_value",
            "string or an array",
        ),
        (
            json!({"model": m, "input": [1, 2]}),
            "invalid_value",
            "token arrays",
        ),
        (
            json!({"model": m, "input": ["a", null]}),
            "invalid_value",
            "input[1]",
        ),
        (
            json!({"model": m, "input": []}),
            "empty_input",
            "at least one",
        ),
        (json!({"model": m, "input": ""}), "empty_string", "`input`"),
        (
            json!({"model": m, "input": ["a", ""]}),
            "empty_string",
            "input[1]",
        ),
        (
            json!({"model": m, "input": ["a", "b", "c", "d", "e"]}),
            "too_many_inputs",
            "at most 4",
        ),
        (
            json!({"model": m, "input": "x".repeat(51)}),
            "input_too_long",
            "at most 50",
        ),
        (
            json!({"model": m, "input": "x", "dimensions": 128}),
            "unsupported_parameter",
            "dimensions",
        ),
        (
            json!({"model": m, "input": "x", "temperature": 1}),
            "unsupported_parameter",
            "temperature",
        ),
        (
            json!({"model": m, "input": "x", "encoding_format": "int8"}),
            "invalid_value",
            "base64",
        ),
        (
            json!({"model": m, "input": "x", "user": 3}),
            "invalid_value",
            "user",
        ),
    ];
    for (body, code, needle) in cases {
        let r = post(&h.app, "/v1/embeddings", &[], &body).await;
        let msg = r.error(StatusCode::BAD_REQUEST, code);
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let r = post(
        &h.app,
        "/v1/embeddings",
        &[],
        &json!({"model": "text-embedding-3-small", "input": "x"}),
    )
    .await;
    assert_eq!(
        r.error(StatusCode::NOT_FOUND, "model_not_found"),
        "model `text-embedding-3-small` does not exist; this server serves `all-MiniLM-L6-v2`"
    );
    assert_eq!(r.body["error"]["param"], "model");
    let big = json!({"model": m, "input": "x".repeat(5000)});
    post(&h.app, "/v1/embeddings", &[], &big)
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(h.fake.invocations(), 0, "no bad request reached the model");
    // And the server still serves.
    assert_eq!(
        embeddings(&h, &[], json!("fine")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let h = harness();
    let r = get(&h.app, "/v2/nothing", &[]).await;
    assert_eq!(
        r.kserve_error(StatusCode::NOT_FOUND),
        "no route for /v2/nothing"
    );
    get(&h.app, "/v1/nothing", &[])
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    get(&h.app, "/v1/embeddings", &[])
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn no_cache_recomputes_and_overwrites() {
    let h = harness();
    embeddings(&h, &[], json!("a")).await;
    let r = embeddings(&h, &[("cache-control", "no-cache")], json!("a")).await;
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!(h.fake.invocations(), 2);
    assert_eq!(
        embeddings(&h, &[], json!("a")).await.header("x-cache"),
        "HIT"
    );
}

#[tokio::test]
async fn no_store_serves_hits_but_stores_nothing() {
    let h = harness();
    let r = embeddings(&h, &[("cache-control", "no-store")], json!("a")).await;
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!(
        embeddings(&h, &[], json!("a")).await.header("x-cache"),
        "MISS"
    );
    let r = embeddings(&h, &[("cache-control", "no-store")], json!("a")).await;
    assert_eq!(r.header("x-cache"), "HIT", "no-store still reads");
}

#[tokio::test]
async fn max_age_refuses_older_entries() {
    let h = harness();
    embeddings(&h, &[], json!("a")).await;
    h.clock.advance(Duration::from_secs(10));
    let r = embeddings(&h, &[("cache-control", "max-age=60")], json!("a")).await;
    assert_eq!(r.header("x-cache"), "HIT");
    let r = embeddings(&h, &[("cache-control", "max-age=5")], json!("a")).await;
    assert_eq!(r.header("x-cache"), "MISS");
    assert_eq!(h.fake.invocations(), 2);
    let r = embeddings(&h, &[("cache-control", "max-age=5")], json!("a")).await;
    assert_eq!(r.header("x-cache"), "HIT", "the recomputed entry is fresh");
}

#[tokio::test]
async fn only_if_cached_never_computes() {
    let h = harness();
    embeddings(&h, &[], json!("a")).await;
    let r = embeddings(
        &h,
        &[("cache-control", "only-if-cached")],
        json!(["a", "b"]),
    )
    .await;
    let msg = r.error(StatusCode::GATEWAY_TIMEOUT, "not_cached");
    assert!(msg.contains("1 of 2"), "{msg}");
    let r = embeddings(
        &h,
        &[("cache-control", "only-if-cached")],
        json!(["a", "a"]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(h.fake.invocations(), 1);
}

#[tokio::test]
async fn bad_cache_control_is_a_400() {
    let h = harness();
    for v in ["max-age=soon", "no-cache, only-if-cached"] {
        embeddings(&h, &[("cache-control", v)], json!("a"))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_cache_control");
    }
}

#[tokio::test]
async fn disabled_cache_bypasses_everything() {
    let h = harness_with(Fake::new(), ApiKeys::none(), limits(), false);
    for _ in 0..2 {
        let r = embeddings(&h, &[], json!("a")).await;
        assert_eq!(r.header("x-cache"), "MISS");
    }
    assert_eq!(h.fake.invocations(), 2);
    embeddings(&h, &[("cache-control", "only-if-cached")], json!("a"))
        .await
        .error(StatusCode::GATEWAY_TIMEOUT, "not_cached");
    post(
        &h.app,
        "/v1/cache/invalidate",
        &[],
        &json!({"scope": "all"}),
    )
    .await
    .error(StatusCode::CONFLICT, "cache_disabled");
    let s = get(&h.app, "/v1/cache/stats", &[]).await;
    assert_eq!(s.body["cache_enabled"], false);
}

#[tokio::test]
async fn overload_is_a_429_and_model_failures_leak_nothing() {
    let h = harness();
    h.fake.overloaded.store(true, Ordering::SeqCst);
    let r = embeddings(&h, &[], json!("a")).await;
    r.error(StatusCode::TOO_MANY_REQUESTS, "model_overloaded");
    assert_eq!(r.header("retry-after"), "1");
    h.fake.overloaded.store(false, Ordering::SeqCst);
    h.fake.fail.store(true, Ordering::SeqCst);
    let r = embeddings(&h, &[], json!("a")).await;
    assert_eq!(
        r.error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        "internal server error"
    );
    assert!(!r.body.to_string().contains("secret"));
    h.fake.fail.store(false, Ordering::SeqCst);
    assert_eq!(
        embeddings(&h, &[], json!("a")).await.header("x-cache"),
        "MISS",
        "errors are not cached"
    );
}

#[tokio::test]
async fn concurrency_limit_answers_429_with_retry_after() {
    let hold = Arc::new(Notify::new());
    let h = harness_with(
        Fake::holding(hold.clone()),
        ApiKeys::none(),
        Limits {
            max_concurrent_requests: 1,
            ..limits()
        },
        true,
    );
    let app = h.app.clone();
    let first = tokio::spawn(async move {
        post(
            &app,
            "/v1/embeddings",
            &[],
            &json!({"model": "all-MiniLM-L6-v2", "input": "a"}),
        )
        .await
    });
    while h.state.permits().available_permits() > 0 {
        tokio::task::yield_now().await;
    }
    let r = embeddings(&h, &[], json!("b")).await;
    r.error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
    assert_eq!(r.header("retry-after"), "1");
    // Health stays outside the limit.
    assert_eq!(get(&h.app, "/healthz", &[]).await.status, StatusCode::OK);
    hold.notify_one();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn body_budget_answers_429_in_each_routes_error_shape() {
    let hold = Arc::new(Notify::new());
    let h = harness_with(
        Fake::holding(hold.clone()),
        ApiKeys::none(),
        Limits {
            body_budget_bytes: 4096,
            ..limits()
        },
        true,
    );
    let app = h.app.clone();
    // No `Content-Length`: charged the body limit, which is the whole budget.
    let first = tokio::spawn(async move {
        post(
            &app,
            "/v1/embeddings",
            &[],
            &json!({"model": "all-MiniLM-L6-v2", "input": "a"}),
        )
        .await
    });
    while h.state.body_budget().available_permits() > 0 {
        tokio::task::yield_now().await;
    }
    let r = embeddings(&h, &[], json!("b")).await;
    let message = r.error(StatusCode::TOO_MANY_REQUESTS, "body_budget_exhausted");
    assert!(message.contains("4096"), "{message}");
    assert_eq!(r.header("retry-after"), "1");
    let k = post(
        &h.app,
        "/v2/models/all-MiniLM-L6-v2/infer",
        &[],
        &json!({"inputs": []}),
    )
    .await;
    assert_eq!(k.kserve_error(StatusCode::TOO_MANY_REQUESTS), message);
    assert_eq!(k.header("retry-after"), "1");
    // Requests without a body are not charged.
    assert_eq!(get(&h.app, "/v1/models", &[]).await.status, StatusCode::OK);
    hold.notify_one();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    // Its share is back once it has been answered.
    assert_eq!(h.state.body_budget().available_permits(), 4);
}

#[tokio::test(start_paused = true)]
async fn slow_requests_time_out_with_504() {
    let h = harness_with(
        Fake::holding(Arc::new(Notify::new())),
        ApiKeys::none(),
        Limits {
            request_timeout: Duration::from_millis(50),
            ..limits()
        },
        true,
    );
    embeddings(&h, &[], json!("a"))
        .await
        .error(StatusCode::GATEWAY_TIMEOUT, "timeout");
    let m = get(&h.app, "/metrics", &[]).await;
    assert!(
        m.body
            .as_str()
            .unwrap()
            .contains("infercache_rejected_requests_total{reason=\"timeout\"} 1")
    );
}

fn keyed() -> Harness {
    let keys = ApiKeys::new([
        ("sk-a", "a", false),
        ("sk-b", "b", false),
        ("sk-root", "ops", true),
    ])
    .unwrap();
    harness_with(Fake::new(), keys, limits(), true)
}

#[tokio::test]
async fn auth_needs_a_known_key_and_admin_routes_an_admin_key() {
    let h = keyed();
    let r = embeddings(&h, &[], json!("a")).await;
    r.error(StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(r.header("www-authenticate"), "Bearer");
    embeddings(&h, &[("authorization", "Bearer sk-nope")], json!("a"))
        .await
        .error(StatusCode::UNAUTHORIZED, "invalid_api_key");
    let a = [("authorization", "Bearer sk-a")];
    assert_eq!(embeddings(&h, &a, json!("a")).await.status, StatusCode::OK);
    for uri in ["/v1/cache/stats", "/metrics"] {
        get(&h.app, uri, &a)
            .await
            .error(StatusCode::FORBIDDEN, "admin_required");
    }
    post(&h.app, "/v1/cache/invalidate", &a, &json!({"scope": "all"}))
        .await
        .error(StatusCode::FORBIDDEN, "admin_required");
    let root = [("authorization", "Bearer sk-root")];
    assert_eq!(
        get(&h.app, "/v1/cache/stats", &root).await.status,
        StatusCode::OK
    );
    assert_eq!(get(&h.app, "/healthz", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn tenants_never_share_entries() {
    let h = keyed();
    let a = [("authorization", "Bearer sk-a")];
    let b = [("authorization", "Bearer sk-b")];
    assert_eq!(
        embeddings(&h, &a, json!("same")).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        embeddings(&h, &b, json!("same")).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        embeddings(&h, &a, json!("same")).await.header("x-cache"),
        "HIT"
    );
}

#[tokio::test]
async fn smally_embed_normalizes_after_the_lookup() {
    let h = harness();
    let r = post(&h.app, "/v1/embed", &[], &json!({"text": "hello there"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["cached"], false);
    assert_eq!(r.body["model"], "all-MiniLM-L6-v2");
    assert_eq!(r.body["tokens"], 4);
    assert!(r.body["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(floats(&r.body["embedding"]), vector("hello there"));
    assert_eq!(r.header("x-cache-key").len(), 64);
    let r = post(
        &h.app,
        "/v1/embed",
        &[],
        &json!({"text": "hello there", "normalize": true}),
    )
    .await;
    assert_eq!(r.body["cached"], true);
    assert_eq!(r.header("x-cache"), "HIT");
    let v = floats(&r.body["embedding"]);
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    assert_eq!(h.fake.invocations(), 1, "one entry serves both");

    for (body, code, needle) in [
        (json!({}), "missing_required_parameter", "text"),
        (json!({"text": ["a"]}), "invalid_value", "expected a string"),
        (json!({"text": ""}), "empty_string", "text"),
        (
            json!({"text": " "}),
            "empty_string",
            "`text` contains only whitespace",
        ),
        (
            json!({"text": " \t\r\n\u{3000}"}),
            "empty_string",
            "`text` contains only whitespace",
        ),
        (
            json!({"text": "a", "normalize": "yes"}),
            "invalid_value",
            "normalize",
        ),
        (
            json!({"text": "a", "model": "x"}),
            "unsupported_parameter",
            "model",
        ),
    ] {
        let msg = post(&h.app, "/v1/embed", &[], &body)
            .await
            .error(StatusCode::BAD_REQUEST, code)
            .to_owned();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
}

#[tokio::test]
async fn invalidation_by_scope() {
    let h = harness();
    embeddings(&h, &[], json!("a")).await;
    for scope in [
        json!({"scope": "namespace", "namespace": "default"}),
        json!({"scope": "model", "model": "sentence-transformers/all-MiniLM-L6-v2"}),
        json!({"scope": "version", "model": "all-MiniLM-L6-v2", "version": "1"}),
        json!({"scope": "all"}),
    ] {
        let r = post(&h.app, "/v1/cache/invalidate", &[], &scope).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(
            embeddings(&h, &[], json!("a")).await.header("x-cache"),
            "MISS",
            "{scope}"
        );
    }
    // Another namespace leaves this one alone.
    post(
        &h.app,
        "/v1/cache/invalidate",
        &[],
        &json!({"scope": "namespace", "namespace": "other"}),
    )
    .await;
    assert_eq!(
        embeddings(&h, &[], json!("a")).await.header("x-cache"),
        "HIT"
    );
    for bad in [
        json!({"scope": "everything"}),
        json!({"scope": "model"}),
        json!({}),
    ] {
        post(&h.app, "/v1/cache/invalidate", &[], &bad)
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_value");
    }
}

#[tokio::test]
async fn entries_are_deleted_by_key() {
    let h = harness();
    let r = embeddings(&h, &[], json!("a")).await;
    let key = r.body["cache"]["keys"][0].as_str().unwrap().to_owned();
    let del = |k: String| {
        request(
            Method::DELETE,
            &format!("/v1/cache/entries/{k}"),
            &[],
            Body::empty(),
        )
    };
    let r = send(&h.app, del(key.clone())).await;
    assert_eq!(
        (r.status, r.body["removed"].clone()),
        (StatusCode::OK, json!(true))
    );
    assert_eq!(
        embeddings(&h, &[], json!("a")).await.header("x-cache"),
        "MISS"
    );
    send(&h.app, del("00".repeat(32)))
        .await
        .error(StatusCode::NOT_FOUND, "entry_not_found");
    send(&h.app, del("xyz".into()))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_cache_key");
}

#[tokio::test]
async fn warm_precomputes_for_a_namespace() {
    let h = keyed();
    let root = [("authorization", "Bearer sk-root")];
    let r = post(
        &h.app,
        "/v1/cache/warm",
        &root,
        &json!({"inputs": ["p", "q"], "namespace": "a"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["misses"].clone(), r.body["namespace"].clone()),
        (json!(2), json!("a"))
    );
    let a = [("authorization", "Bearer sk-a")];
    assert_eq!(
        embeddings(&h, &a, json!(["p", "q"]))
            .await
            .header("x-cache"),
        "HIT"
    );
    post(&h.app, "/v1/cache/warm", &root, &json!({"inputs": []}))
        .await
        .error(StatusCode::BAD_REQUEST, "empty_input");
    post(&h.app, "/v1/cache/warm", &a, &json!({"inputs": ["p"]}))
        .await
        .error(StatusCode::FORBIDDEN, "admin_required");
}

#[tokio::test]
async fn stats_and_metrics_report_per_tier_and_model() {
    let h = harness();
    embeddings(&h, &[], json!(["a", "b"])).await;
    embeddings(&h, &[], json!(["a"])).await;
    let s = get(&h.app, "/v1/cache/stats", &[]).await;
    assert_eq!(s.status, StatusCode::OK);
    let m = &s.body["models"]["all-MiniLM-L6-v2"];
    assert_eq!(
        (m["hits"].clone(), m["misses"].clone()),
        (json!(1), json!(2)),
        "{}",
        s.body
    );
    assert!(m["hit_rate"].as_f64().unwrap() > 0.3);
    assert!(m["mean_hit_latency_ms"].is_number());
    assert!(m["mean_miss_latency_ms"].is_number());
    assert!(m["inference_time_saved_ms"].is_number());
    assert_eq!(m["inference"]["invocations"], 1);
    let mem = &s.body["tiers"]["memory"];
    for f in [
        "hits",
        "misses",
        "hit_rate",
        "entries",
        "bytes",
        "evictions",
    ] {
        assert!(mem[f].is_number(), "{f}: {}", s.body);
    }
    assert_eq!(mem["entries"], 2);

    let text = get(&h.app, "/metrics", &[]).await.body;
    let text = text.as_str().unwrap();
    for needle in [
        "infercache_request_duration_seconds_count{model=\"all-MiniLM-L6-v2\",outcome=\"hit\"} 1",
        "infercache_request_duration_seconds_count{model=\"all-MiniLM-L6-v2\",outcome=\"miss\"} 1",
        "infercache_cache_lookups_total{tier=\"memory\",outcome=\"hit\"} 1",
        "infercache_model_lookups_total{model=\"all-MiniLM-L6-v2\",tier=\"any\",outcome=\"miss\"} 2",
        "infercache_model_invocations_total{model=\"all-MiniLM-L6-v2\"} 1",
        "infercache_cache_entries{tier=\"memory\"} 2",
        "# TYPE infercache_inference_duration_seconds histogram",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

#[tokio::test]
async fn readiness_turns_off_for_shutdown() {
    let h = harness();
    assert_eq!(get(&h.app, "/readyz", &[]).await.status, StatusCode::OK);
    h.state.set_ready(false);
    assert_eq!(
        get(&h.app, "/readyz", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&h.app, "/healthz", &[]).await.status, StatusCode::OK);
}

/// Regression: a 10 KB request could ask for a 10 MB response, and nothing bounded how many
/// were in flight. Inputs in flight are now bounded; past the bound, 429 at once.
#[tokio::test]
async fn inputs_in_flight_are_bounded_and_past_the_bound_answer_429() {
    let h = harness();
    let budget = limits().max_items * crate::state::IN_FLIGHT_REQUESTS_OF_MAX_ITEMS;
    let held = h
        .state
        .reserve_items(budget)
        .expect("the whole budget is free");
    let r = embeddings(&h, &[], json!(["one"])).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    drop(held);
    let r = embeddings(&h, &[], json!(["one"])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
