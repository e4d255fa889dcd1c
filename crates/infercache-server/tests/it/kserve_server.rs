//! KServe v2 inference through a real infercache server in front of a real KServe v2
//! upstream ([`crate::kserve_upstream`]), both on loopback: rows cached one by one, only
//! the missing ones sent upstream in one request, JSON and binary clients, errors; and
//! the official `tritonclient` Python client end to end.

use std::path::PathBuf;

use bytes::Bytes;
use infercache_server::kserve::{HEADER_LENGTH, InferResponse, parse_response};
use infercache_server::{ServeArgs, ServerConfig};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::kserve_upstream::{MODEL, Upstream};
use crate::support::{Server, model};

/// infercache serving [`MODEL`] from `upstream_url`, with `extra` TOML lines in the
/// model's table and `top` lines before it.
async fn start(upstream_url: &str, top: &str, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("infercache.toml");
    std::fs::write(
        &path,
        format!(
            "no_disk = true\n{top}\n\n[[models]]\nname = \"{MODEL}\"\nbackend = \"kserve-v2\"\nurl = \"{upstream_url}\"\nretries = 0\n{extra}\n"
        ),
    )
    .unwrap();
    let config = ServerConfig::from_args(&ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    })
    .unwrap();
    Server::start(config, model().await).await
}

/// An answer read whole.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    /// The body as a KServe v2 response.
    fn parsed(&self) -> InferResponse {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        let len = self.headers.get(HEADER_LENGTH);
        parse_response(self.body.clone(), len).unwrap()
    }

    /// The message of an error in KServe v2's shape, `{"error": "<message>"}` and
    /// nothing else.
    fn error(&self) -> String {
        let body: Value = serde_json::from_slice(&self.body).unwrap();
        let obj = body.as_object().expect("a JSON object");
        assert_eq!(obj.len(), 1, "only `error`: {body}");
        obj["error"]
            .as_str()
            .expect("`error` is a string")
            .to_owned()
    }
}

/// POSTs `body` to `url` + `path`, with `Inference-Header-Content-Length` if given.
async fn post(url: &str, path: &str, body: Vec<u8>, header_length: Option<usize>) -> Answer {
    let mut req = infercache_core::tls::client()
        .post(format!("{url}{path}"))
        .body(body);
    if let Some(len) = header_length {
        req = req
            .header(HEADER_LENGTH, len)
            .header("content-type", "application/octet-stream");
    } else {
        req = req.header("content-type", "application/json");
    }
    let response = req.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap(),
    }
}

const INFER: &str = "/v2/models/simple/infer";

/// Row `i` of `INPUT0`: three floats that differ from every other row's.
fn row(i: usize) -> Vec<f32> {
    let i = i as f32;
    vec![i, i + 0.5, -i * 0.25]
}

/// A JSON request for `rows`, with `extra` fields merged into it.
fn json_request(rows: &[usize], extra: Value) -> Vec<u8> {
    let data: Vec<Vec<f32>> = rows.iter().map(|&i| row(i)).collect();
    let mut body = json!({
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [rows.len(), 3], "data": data}],
    });
    if let Value::Object(extra) = extra {
        body.as_object_mut().unwrap().extend(extra);
    }
    serde_json::to_vec(&body).unwrap()
}

/// A binary request for `rows` asking for both outputs as binary; the body and the JSON
/// part's length.
fn binary_request(rows: &[usize]) -> (Vec<u8>, usize) {
    let raw: Vec<u8> = rows
        .iter()
        .flat_map(|&i| row(i))
        .flat_map(f32::to_le_bytes)
        .collect();
    let header = json!({
        "id": "binary",
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [rows.len(), 3],
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": true}},
                    {"name": "OUTPUT1", "parameters": {"binary_data": true}}],
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let len = body.len();
    body.extend(raw);
    (body, len)
}

/// The outputs both requested explicitly (as the binary client does), as JSON.
fn both_outputs() -> Value {
    json!({"outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT1"}]})
}

/// What the model computes for `rows`: OUTPUT0's bytes and OUTPUT1's bytes.
fn expected(rows: &[usize]) -> (Vec<u8>, Vec<u8>) {
    let out0 = rows
        .iter()
        .flat_map(|&i| row(i))
        .map(|v| v * 2.0 + 1.0)
        .flat_map(f32::to_le_bytes)
        .collect();
    let out1 = rows
        .iter()
        .map(|&i| row(i).iter().sum::<f32>() as i64)
        .flat_map(i64::to_le_bytes)
        .collect();
    (out0, out1)
}

/// Checks that `r` holds both outputs for `rows`, batched, in order.
fn assert_outputs(r: &InferResponse, rows: &[usize]) {
    let (out0, out1) = expected(rows);
    assert_eq!(r.outputs.len(), 2);
    assert_eq!(r.outputs[0].name, "OUTPUT0");
    assert_eq!(r.outputs[0].shape, vec![rows.len() as u64, 3]);
    assert_eq!(&r.outputs[0].data[..], &out0[..]);
    assert_eq!(r.outputs[1].name, "OUTPUT1");
    assert_eq!(r.outputs[1].shape, vec![rows.len() as u64]);
    assert_eq!(&r.outputs[1].data[..], &out1[..]);
}

#[tokio::test]
async fn json_and_binary_clients_miss_then_hit_the_same_rows_with_identical_outputs() {
    let upstream = Upstream::start().await;
    let s = start(&upstream.url, "", "").await;

    let body = json_request(&[0, 1], both_outputs());
    let first = post(&s.url, INFER, body.clone(), None).await;
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(first.header("x-cache-misses"), "2");
    assert_eq!(first.header("content-type"), "application/json");
    assert!(
        first.headers.get(HEADER_LENGTH).is_none(),
        "JSON was asked for"
    );
    let json: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(json["model_name"], MODEL);
    assert_eq!(
        json["outputs"][1]["data"],
        json!([0, 2]),
        "row sums 0 and 2.25"
    );
    assert_outputs(&first.parsed(), &[0, 1]);

    let second = post(&s.url, INFER, body, None).await;
    assert_eq!(second.header("x-cache"), "HIT");
    assert_eq!(second.header("x-cache-hits"), "2");
    assert_eq!(second.body, first.body, "a hit answers the same bytes");

    // The same rows, sent as binary tensors, hit the entries the JSON call stored, and
    // come back as binary.
    let (body, len) = binary_request(&[0, 1]);
    let binary = post(&s.url, INFER, body, Some(len)).await;
    assert_eq!(binary.header("x-cache"), "HIT");
    assert_eq!(binary.header("content-type"), "application/octet-stream");
    assert!(binary.headers.get(HEADER_LENGTH).is_some());
    let parsed = binary.parsed();
    assert_eq!(parsed.id.as_deref(), Some("binary"));
    assert_eq!(parsed.outputs, first.parsed().outputs);

    // A binary client first, then a JSON one, on rows not seen yet.
    let (body, len) = binary_request(&[5]);
    let miss = post(&s.url, INFER, body, Some(len)).await;
    assert_eq!(miss.header("x-cache"), "MISS");
    let hit = post(&s.url, INFER, json_request(&[5], both_outputs()), None).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(hit.parsed().outputs, miss.parsed().outputs);
    assert_outputs(&hit.parsed(), &[5]);

    assert_eq!(
        (
            upstream.calls(),
            upstream.rows(),
            upstream.binary_requests()
        ),
        (2, 3, 2),
        "two misses, sent upstream as binary tensors"
    );
    s.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_repeated_binary_request_is_replayed_byte_for_byte_and_each_path_is_its_own() {
    let upstream = Upstream::start().await;
    let s = start(&upstream.url, "", "").await;
    let replayed = "infercache_replayed_responses_total{model=\"simple\"}";
    let (body, len) = binary_request(&[2, 3]);
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(post(&s.url, INFER, body.clone(), Some(len)).await);
    }
    assert_eq!(answers[0].header("x-cache"), "MISS");
    for a in &answers[1..] {
        assert_eq!(a.header("x-cache"), "HIT");
        assert_eq!(a.body, answers[1].body, "the same bytes");
        assert_eq!(a.header(HEADER_LENGTH), answers[1].header(HEADER_LENGTH));
        assert_eq!(a.header("content-type"), "application/octet-stream");
        assert_outputs(&a.parsed(), &[2, 3]);
    }
    // The first two hits take the full path, the next two are replayed.
    assert_eq!(crate::metrics::metric(&s, replayed).await, 2.0);

    // The versioned path and another JSON part's length are other requests.
    let versioned = "/v2/models/simple/versions/1/infer";
    let v = post(&s.url, versioned, body.clone(), Some(len)).await;
    assert_eq!(v.header("x-cache"), "HIT");
    assert_outputs(&v.parsed(), &[2, 3]);
    let wrong = post(&s.url, INFER, body.clone(), Some(len - 1)).await;
    assert_eq!(
        wrong.status,
        400,
        "{}",
        String::from_utf8_lossy(&wrong.body)
    );
    let other = post(&s.url, "/v2/models/other/infer", body, Some(len)).await;
    assert_eq!(other.status, 404);
    assert_eq!(crate::metrics::metric(&s, replayed).await, 2.0);
    assert_eq!(upstream.calls(), 1, "one miss, sent upstream once");
    s.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_batch_of_8_with_3_cached_sends_the_5_missing_rows_in_one_request_and_answers_in_order() {
    let upstream = Upstream::start().await;
    let s = start(&upstream.url, "", "").await;
    let cached = [13, 11, 16];
    let first = post(&s.url, INFER, json_request(&cached, both_outputs()), None).await;
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!((upstream.calls(), upstream.rows()), (1, 3));

    let batch = [10, 11, 12, 13, 14, 15, 16, 17];
    let (body, len) = binary_request(&batch);
    let answer = post(&s.url, INFER, body, Some(len)).await;
    assert_eq!(answer.header("x-cache"), "PARTIAL");
    assert_eq!(answer.header("x-cache-hits"), "3");
    assert_eq!(answer.header("x-cache-misses"), "5");
    assert_eq!(
        (upstream.calls(), upstream.rows()),
        (2, 8),
        "exactly the 5 missing rows, in one request"
    );
    assert_outputs(&answer.parsed(), &batch);

    // Repeated rows inside one batch go upstream once, and come back in place.
    let repeats = [20, 21, 20, 20, 11, 21];
    let answer = post(&s.url, INFER, json_request(&repeats, both_outputs()), None).await;
    assert_eq!(answer.header("x-cache"), "PARTIAL");
    assert_eq!(
        (upstream.calls(), upstream.rows()),
        (3, 10),
        "rows 20 and 21 once each"
    );
    assert_outputs(&answer.parsed(), &repeats);
    s.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn output_affecting_parameters_outputs_and_versions_are_keyed() {
    let upstream = Upstream::start().await;
    let s = start(&upstream.url, "", "params = [\"scale\"]\nversion = \"3\"").await;
    let with = |params: Value| json_request(&[1, 2], json!({"parameters": params}));

    let cases = [
        (json!({"scale": 1}), "MISS", 1),
        (json!({"scale": 2}), "MISS", 2),
        (json!({"scale": 1}), "HIT", 2),
        (json!({"scale": 1, "trace": true}), "HIT", 2),
    ];
    for (params, x_cache, calls) in cases {
        let answer = post(&s.url, INFER, with(params.clone()), None).await;
        assert_eq!(answer.header("x-cache"), x_cache, "{params}");
        assert_eq!(upstream.calls(), calls, "{params}");
        assert_outputs(&answer.parsed(), &[1, 2]);
    }

    // Another output selection is another entry, and gets only what it asked for.
    let only = json_request(
        &[1, 2],
        json!({"parameters": {"scale": 1}, "outputs": [{"name": "OUTPUT1"}]}),
    );
    let answer = post(&s.url, INFER, only.clone(), None).await;
    assert_eq!(answer.header("x-cache"), "MISS");
    let parsed = answer.parsed();
    assert_eq!(parsed.outputs.len(), 1);
    assert_eq!(parsed.outputs[0].name, "OUTPUT1");
    assert_eq!(parsed.model_version.as_deref(), Some("3"));

    // The versioned path shares the model's entries; another version is 404.
    let versioned = post(&s.url, "/v2/models/simple/versions/3/infer", only, None).await;
    assert_eq!(versioned.header("x-cache"), "HIT");
    let other = post(
        &s.url,
        "/v2/models/simple/versions/4/infer",
        with(json!({})),
        None,
    )
    .await;
    assert_eq!(other.status, 404);
    assert!(
        other.error().contains("has no version `4`"),
        "{}",
        other.error()
    );
    let unknown = post(&s.url, "/v2/models/nope/infer", with(json!({})), None).await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.error().contains("model `nope` does not exist"),
        "{}",
        unknown.error()
    );
    assert_eq!(upstream.calls(), 3);
    s.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn malformed_and_hostile_bodies_get_400_and_the_server_keeps_serving() {
    let upstream = Upstream::start().await;
    let s = start(
        &upstream.url,
        "max_items = 16\nmax_body_size = \"64KiB\"",
        "",
    )
    .await;
    let input = |shape: Value, data: Value| {
        json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": shape, "data": data}]})
            .to_string()
            .into_bytes()
    };
    let (binary, len) = binary_request(&[1, 2]);
    let cases: Vec<(&str, Vec<u8>, Option<usize>, &str)> = vec![
        (
            "not JSON",
            b"{\"inputs\": [".to_vec(),
            None,
            "not valid JSON",
        ),
        ("no inputs", b"{}".to_vec(), None, "`inputs`"),
        (
            "empty inputs",
            b"{\"inputs\": []}".to_vec(),
            None,
            "at least one",
        ),
        (
            "element count",
            input(json!([2, 3]), json!([1, 2, 3])),
            None,
            "elements",
        ),
        (
            "overflowing shape",
            input(
                json!([4294967296u64, 4294967296u64, 4294967296u64]),
                json!([1]),
            ),
            None,
            "shape",
        ),
        (
            "scalar",
            input(json!([]), json!([1])),
            None,
            "no batch dimension",
        ),
        ("zero rows", input(json!([0, 3]), json!([])), None, "0"),
        (
            "too many rows",
            input(json!([17, 1]), json!(vec![1.0; 17])),
            None,
            "at most 16",
        ),
        (
            "unknown datatype",
            br#"{"inputs":[{"name":"INPUT0","datatype":"FP128","shape":[1],"data":[1]}]}"#.to_vec(),
            None,
            "FP128",
        ),
        (
            "header length past the body",
            binary.clone(),
            Some(binary.len() + 1),
            "Inference-Header-Content-Length",
        ),
        (
            "binary data cut short",
            binary[..binary.len() - 4].to_vec(),
            Some(len),
            "binary_data_size",
        ),
        (
            "trailing binary bytes",
            [&binary[..], &[0, 0, 0, 0]].concat(),
            Some(len),
            "follow the last binary tensor",
        ),
    ];
    for (what, body, header_length, message) in cases {
        let answer = post(&s.url, INFER, body, header_length).await;
        assert_eq!(answer.status, 400, "{what}");
        let error = answer.error();
        assert!(error.contains(message), "{what}: {error}");
    }
    let invalid = post(&s.url, INFER, b"[1]".to_vec(), None).await;
    assert!(
        invalid.error().starts_with("invalid inference request"),
        "{}",
        invalid.error()
    );
    let bad_length = infercache_core::tls::client()
        .post(format!("{}{INFER}", s.url))
        .header(HEADER_LENGTH, "twelve")
        .body(binary.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(bad_length.status(), 400);

    let huge = input(json!([1, 20000]), json!(vec![0.125; 20000]));
    assert!(huge.len() > 64 << 10);
    let too_large = post(&s.url, INFER, huge, None).await;
    assert_eq!(too_large.status, 413);

    assert_eq!(upstream.calls(), 0, "nothing refused reached the upstream");
    let fine = post(&s.url, INFER, binary, Some(len)).await;
    assert_eq!(fine.header("x-cache"), "MISS");
    assert_outputs(&fine.parsed(), &[1, 2]);
    s.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn an_upstream_that_is_down_is_503_and_one_that_refuses_is_502_naming_the_model() {
    let upstream = Upstream::start().await;
    let url = upstream.url.clone();
    upstream.stop().await;
    let s = start(&url, "", "").await;
    let down = post(&s.url, INFER, json_request(&[1], json!({})), None).await;
    assert_eq!(down.status, 503);
    assert_eq!(down.header("retry-after"), "1");
    let error = down.error();
    assert!(error.contains("model `simple`"), "{error}");
    s.stop().await;

    // An upstream that does not know the model answers 404: the upstream's error, 502.
    let upstream = Upstream::start().await;
    let s = start(&upstream.url, "", "upstream_name = \"missing\"").await;
    let refused = post(&s.url, INFER, json_request(&[1], json!({})), None).await;
    assert_eq!(refused.status, 502);
    let error = refused.error();
    assert_eq!(error, "the upstream of model `simple` answered 404");
    s.stop().await;
    upstream.stop().await;
}

/// The Python with `tritonclient[http]` and numpy: `INFERCACHE_TEST_PYTHON`, which
/// `scripts/test` sets up (`scripts/test-python`). Fails the test when it is missing.
fn test_python() -> PathBuf {
    let python = std::env::var_os("INFERCACHE_TEST_PYTHON")
        .map(PathBuf::from)
        .expect(
            "this test runs the official tritonclient: set INFERCACHE_TEST_PYTHON to a python \
         with tritonclient[http] and numpy (scripts/test-python creates one; scripts/test does \
         it for you)",
        );
    assert!(
        python.is_file(),
        "INFERCACHE_TEST_PYTHON={} is not a file; run scripts/test-python",
        python.display()
    );
    python
}

#[tokio::test]
async fn tritonclient_gets_a_miss_then_a_hit_with_identical_outputs() {
    let python = test_python();
    let upstream = Upstream::start().await;
    let s = start(&upstream.url, "", "").await;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/tritonclient_check.py");
    let url = s.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(url)
            .args(["--expect-cache", "--check-simple"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tritonclient_check.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["x_cache"], json!(["MISS", "HIT"]), "{report}");
    assert_eq!(report["identical"], true);
    assert_eq!(report["tritonclient"], "2.73.0");
    assert_eq!(
        (upstream.calls(), upstream.rows()),
        (1, 4),
        "the second call never reached the upstream"
    );
    s.stop().await;
    upstream.stop().await;
}

/// An upstream that answers every inference with `answer` (a fault the real test
/// upstream never makes), counting its calls.
async fn broken_upstream(
    answer: Value,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/v2/models/{name}/infer",
        axum::routing::post(move || {
            let (counted, answer) = (Arc::clone(&counted), answer.clone());
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                axum::Json(answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

#[tokio::test]
async fn an_upstream_answer_that_does_not_fit_the_rows_is_502_and_is_not_cached() {
    use std::sync::atomic::Ordering;
    let answers = [
        (
            json!({"outputs": [
                {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
                {"name": "OUTPUT1", "datatype": "INT64", "shape": [2], "data": [1, 2]}
            ]}),
            "batch dimension",
        ),
        (
            json!({"outputs": [{"name": "OUTPUT1", "datatype": "INT64", "shape": [2], "data": [1, 2]}]}),
            "`OUTPUT0` was requested but not answered",
        ),
        (json!({"model_name": "simple"}), "`outputs`"),
    ];
    for (answer, reason) in answers {
        let (url, calls) = broken_upstream(answer).await;
        let s = start(&url, "", "").await;
        let body = json_request(&[1, 2], both_outputs());
        for call in 1..=2 {
            let r = post(&s.url, INFER, body.clone(), None).await;
            assert_eq!(r.status, 502, "{reason}");
            let error = r.error();
            assert!(
                error.starts_with("the upstream of model `simple` sent an unusable response")
                    && error.contains(reason),
                "{reason}: {error}"
            );
            assert_eq!(calls.load(Ordering::SeqCst), call, "nothing was cached");
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn a_model_without_a_batch_dimension_is_cached_per_whole_request() {
    let upstream = Upstream::start().await;
    let s = start(&upstream.url, "", "batched = false").await;

    let four = json_request(&[0, 1, 2, 3], both_outputs());
    let first = post(&s.url, INFER, four.clone(), None).await;
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(
        first.header("x-cache-misses"),
        "1",
        "one entry: the whole request"
    );
    // The upstream got the tensors as sent, [4, 3], not one row of them.
    assert_eq!((upstream.calls(), upstream.rows()), (1, 4));
    assert_outputs(&first.parsed(), &[0, 1, 2, 3]);
    let direct = post(&upstream.url, INFER, four.clone(), None).await;
    assert_eq!(first.parsed().outputs, direct.parsed().outputs);

    let again = post(&s.url, INFER, four, None).await;
    assert_eq!(again.header("x-cache"), "HIT");
    assert_eq!(again.parsed().outputs, first.parsed().outputs);

    // Part of a cached request is another request: no row of it is served from the
    // cache (dimension 0 is not a batch of independent rows).
    let two = post(&s.url, INFER, json_request(&[0, 1], both_outputs()), None).await;
    assert_eq!(two.header("x-cache"), "MISS");
    assert_outputs(&two.parsed(), &[0, 1]);
    let (body, len) = binary_request(&[0, 1, 2, 3]);
    let binary = post(&s.url, INFER, body, Some(len)).await;
    assert_eq!(
        binary.header("x-cache"),
        "HIT",
        "the same tensors sent as binary"
    );
    assert_outputs(&binary.parsed(), &[0, 1, 2, 3]);
    assert_eq!(upstream.calls(), 3, "two through infercache, one direct");
}

#[tokio::test]
async fn sequence_requests_are_never_cached() {
    let upstream = Upstream::start().await;
    let s = start(&upstream.url, "", "").await;
    let step = json_request(
        &[7],
        json!({"parameters": {"sequence_id": 42, "sequence_start": true}}),
    );
    for _ in 0..2 {
        let r = post(&s.url, INFER, step.clone(), None).await;
        assert_eq!(r.header("x-cache"), "MISS");
        assert_outputs(&r.parsed(), &[7]);
    }
    assert_eq!(
        upstream.calls(),
        2,
        "each step of a sequence reaches the model"
    );
    // The same row outside a sequence is cached as usual, and was not stored by the steps.
    let plain = json_request(&[7], json!({}));
    assert_eq!(
        post(&s.url, INFER, plain.clone(), None)
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(
        post(&s.url, INFER, plain, None).await.header("x-cache"),
        "HIT"
    );
    assert_eq!(upstream.calls(), 3);
}

/// What `scripts/tritonclient_protocol.py` saw against the server at `url`.
async fn tritonclient_protocol(url: &str) -> Value {
    let python = test_python();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/tritonclient_protocol.py");
    let url = url.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(url)
            .args(["--model", MODEL, "--unknown", "nope"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tritonclient_protocol.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

/// Both inferences of the script answered right, and each refusal of the unknown model
/// raised an exception whose text names it.
fn assert_inferences_and_refusals(report: &Value) {
    assert_eq!(report["json_correct"], true, "{report}");
    assert_eq!(report["binary_correct"], true, "{report}");
    for refusal in ["unknown_metadata", "unknown_infer"] {
        let r = &report[refusal];
        assert_eq!(r["message_is_text"], true, "{refusal}: {report}");
        assert!(
            r["str"]
                .as_str()
                .is_some_and(|s| s.contains("model `nope` does not exist")),
            "{refusal}: {report}"
        );
    }
}

#[tokio::test]
async fn tritonclient_reads_server_metadata_health_model_metadata_and_config_and_is_told_of_an_unknown_model()
 {
    let upstream = Upstream::start().await;
    let s = start(&upstream.url, "", "").await;
    let report = tritonclient_protocol(&s.url).await;

    let server = &report["server"];
    assert_eq!(server["name"], "infercache", "{report}");
    assert!(server["version"].is_string(), "{report}");
    assert!(
        server["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data")),
        "{report}"
    );
    assert_eq!(
        (&report["live"], &report["ready"], &report["model_ready"]),
        (&json!(true), &json!(true), &json!(true)),
        "{report}"
    );
    assert_eq!(report["metadata"]["name"], MODEL, "{report}");
    assert_eq!(
        report["metadata"]["inputs"][0]["name"], "INPUT0",
        "{report}"
    );
    assert_eq!(report["config"]["name"], MODEL, "{report}");
    assert_eq!(report["config"]["max_batch_size"], 64, "{report}");
    assert_inferences_and_refusals(&report);

    // The upstream lists the binary extension: both misses went to it as binary tensors,
    // and its server metadata was asked once.
    assert_eq!(
        (
            upstream.calls(),
            upstream.binary_requests(),
            upstream.server_metadata_calls()
        ),
        (2, 2, 1)
    );
    s.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_json_only_upstream_gets_json_tensors_from_json_and_binary_clients() {
    let upstream = Upstream::start_json_only().await;
    let s = start(&upstream.url, "", "").await;
    let report = tritonclient_protocol(&s.url).await;
    assert_inferences_and_refusals(&report);
    assert_eq!(report["config"]["name"], MODEL, "{report}");

    // A binary client on new rows: still JSON upstream, binary back to the client.
    let (body, len) = binary_request(&[30, 31]);
    let answer = post(&s.url, INFER, body, Some(len)).await;
    assert_eq!(answer.header("x-cache"), "MISS");
    assert_eq!(answer.header("content-type"), "application/octet-stream");
    assert_outputs(&answer.parsed(), &[30, 31]);
    assert_eq!(
        (
            upstream.calls(),
            upstream.binary_requests(),
            upstream.server_metadata_calls()
        ),
        (3, 0, 1),
        "every miss as JSON tensors; the server metadata asked once and remembered"
    );
    s.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn binary_tensors_in_the_config_decides_without_asking_the_upstream() {
    for (setting, binary) in [("false", 0), ("true", 1)] {
        let upstream = Upstream::start().await;
        let s = start(&upstream.url, "", &format!("binary_tensors = {setting}")).await;
        let (body, len) = binary_request(&[1, 2]);
        let answer = post(&s.url, INFER, body, Some(len)).await;
        assert_eq!(answer.header("x-cache"), "MISS", "{setting}");
        assert_outputs(&answer.parsed(), &[1, 2]);
        assert_eq!(
            (
                upstream.calls(),
                upstream.binary_requests(),
                upstream.server_metadata_calls()
            ),
            (1, binary, 0),
            "binary_tensors = {setting}"
        );
        s.stop().await;
        upstream.stop().await;
    }
}

#[tokio::test]
async fn a_server_metadata_probe_answered_503_is_asked_again_and_its_request_goes_as_json() {
    use std::sync::{Arc, Mutex};

    use axum::response::IntoResponse as _;
    // An upstream whose `GET /v2` answers 503 once, then lists the binary extension; it
    // records, per inference, whether the body came with binary tensor data.
    #[derive(Default)]
    struct Seen {
        probes: usize,
        binary: Vec<bool>,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (probe, infer) = (Arc::clone(&seen), Arc::clone(&seen));
    let app = axum::Router::new()
        .route(
            "/v2",
            axum::routing::get(move || {
                let seen = Arc::clone(&probe);
                async move {
                    let mut s = seen.lock().unwrap();
                    s.probes += 1;
                    if s.probes == 1 {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    axum::Json(
                        json!({"name": "t", "version": "1", "extensions": ["binary_tensor_data"]}),
                    )
                    .into_response()
                }
            }),
        )
        .route(
            "/v2/models/{name}/infer",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let seen = Arc::clone(&infer);
                async move {
                    let binary = headers.contains_key(HEADER_LENGTH);
                    seen.lock().unwrap().binary.push(binary);
                    axum::Json(json!({"outputs": [
                        {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
                        {"name": "OUTPUT1", "datatype": "INT64", "shape": [1], "data": [6]}
                    ]}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let s = start(&url, "", "").await;
    for i in 1..=3 {
        let answer = post(&s.url, INFER, json_request(&[i], both_outputs()), None).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.header("x-cache"), "MISS");
    }
    s.stop().await;
    let seen = seen.lock().unwrap();
    assert_eq!(
        (seen.probes, &seen.binary[..]),
        (2, &[false, true, true][..]),
        "503: JSON and asked again; then binary, remembered"
    );
}
