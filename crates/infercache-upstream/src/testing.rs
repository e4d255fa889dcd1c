//! Real upstream model servers on loopback (axum on port 0) that count their calls and
//! rows, for tests (feature `test-support`).
//!
//! One server answers every protocol this crate speaks: `POST /predict` (plain JSON),
//! `POST /run` (ersilia-pack), `POST /v1/embeddings` (OpenAI), `POST /embed` (TEI) and
//! `GET /v2/models/{name}` (KServe v2 metadata). Its [`TestUpstream`] records each call's
//! rows and can be told to fail, to stall, to answer short, or to refuse any call that
//! holds a poisoned row.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing;
use serde_json::{Value, json};

/// What an upstream saw, and how it misbehaves.
#[derive(Debug, Default)]
pub struct TestUpstream {
    /// Inference calls answered (any route).
    pub calls: AtomicUsize,
    /// Rows in those calls.
    pub rows: AtomicUsize,
    /// Each call's rows, in order.
    pub batches: Mutex<Vec<Vec<Value>>>,
    /// Metadata calls.
    pub metadata_calls: AtomicUsize,
    /// Answer this many next calls (any route) with `fail_status`.
    pub fail_next: AtomicUsize,
    /// The status of an injected failure.
    pub fail_status: AtomicU64,
    /// Sleep this long (milliseconds) before answering.
    pub delay_ms: AtomicU64,
    /// Answer one output fewer than asked.
    pub short: AtomicBool,
    /// A call holding a row whose text (a string row, or a JSON row's compact text)
    /// contains one of these is answered 500, and not counted: a model that fails on
    /// some inputs and so fails the whole batch they are in.
    pub poison: Mutex<Vec<String>>,
    /// The rows of each call answered 500 for a poisoned row, in order.
    pub refused: Mutex<Vec<Vec<Value>>>,
    /// Inference calls being answered now (counted through their delay).
    pub in_flight: AtomicUsize,
    /// The most inference calls that were ever being answered at once.
    pub peak_in_flight: AtomicUsize,
}

impl TestUpstream {
    /// Inference calls answered.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Rows in the calls answered.
    pub fn rows(&self) -> usize {
        self.rows.load(Ordering::SeqCst)
    }

    /// The most inference calls that were ever being answered at once (each counted
    /// through its delay).
    pub fn peak_in_flight(&self) -> usize {
        self.peak_in_flight.load(Ordering::SeqCst)
    }

    /// The rows of each call refused for a poisoned row.
    pub fn refused(&self) -> Vec<Vec<Value>> {
        self.refused.lock().expect("poisoned lock").clone()
    }

    /// Answers the next `times` calls with `status`.
    pub fn fail(&self, times: usize, status: u16) {
        self.fail_status.store(u64::from(status), Ordering::SeqCst);
        self.fail_next.store(times, Ordering::SeqCst);
    }

    /// Waits `delay` before each answer.
    pub fn delay(&self, delay: Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Fails every call holding a row that contains `marker`.
    pub fn poison(&self, marker: &str) {
        self.poison
            .lock()
            .expect("poisoned lock")
            .push(marker.to_owned());
    }

    /// The injected failure, if one is due; otherwise records the call.
    async fn enter(&self, rows: &[Value]) -> Option<Response> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let due = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if due {
            let status = u16::try_from(self.fail_status.load(Ordering::SeqCst)).unwrap_or(500);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Some(status.into_response());
        }
        if self.poisoned(rows) {
            self.refused
                .lock()
                .expect("poisoned lock")
                .push(rows.to_vec());
            return Some(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.rows.fetch_add(rows.len(), Ordering::SeqCst);
        self.batches
            .lock()
            .expect("poisoned lock")
            .push(rows.to_vec());
        None
    }

    fn poisoned(&self, rows: &[Value]) -> bool {
        let markers = self.poison.lock().expect("poisoned lock");
        if markers.is_empty() {
            return false;
        }
        rows.iter().any(|r| {
            let text = match r {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            markers.iter().any(|m| text.contains(m.as_str()))
        })
    }

    fn take(&self, n: usize) -> usize {
        if self.short.load(Ordering::SeqCst) {
            n.saturating_sub(1)
        } else {
            n
        }
    }
}

/// A plain JSON row's output: depends on the row and the parameters, so order and keys
/// show.
pub fn output(row: &Value, params: &Value) -> Value {
    json!({ "echo": row, "params": params })
}

/// The embedding the OpenAI and TEI routes answer for `text`.
#[expect(
    clippy::cast_precision_loss,
    reason = "test vectors: a text's length as a float"
)]
pub fn vector(text: &str) -> Vec<f32> {
    vec![
        text.len() as f32,
        f32::from(text.as_bytes().first().copied().unwrap_or(0)),
        0.5,
    ]
}

async fn predict(State(up): State<Arc<TestUpstream>>, body: axum::Json<Value>) -> Response {
    let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
    if let Some(r) = up.enter(&inputs).await {
        return r;
    }
    let params = body.get("parameters").cloned().unwrap_or(Value::Null);
    let n = up.take(inputs.len());
    let outputs: Vec<Value> = inputs[..n].iter().map(|r| output(r, &params)).collect();
    axum::Json(json!({ "outputs": outputs })).into_response()
}

/// An ersilia-pack `/run`: the body must be a non-empty `Union[List[str], List[InputItem]]`
/// (`InputItem`: `key` and `input`, both strings, other fields ignored), else 422 as
/// FastAPI answers. An input starting with `!` fails: its row is all nulls, as
/// ersilia-pack returns for an input the model failed on.
async fn run(State(up): State<Arc<TestUpstream>>, body: axum::body::Bytes) -> Response {
    let Some(texts) = ersilia_inputs(&body) else {
        let detail = json!({ "detail": "body is not a list of strings or of {key, input}" });
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(detail)).into_response();
    };
    let inputs: Vec<Value> = serde_json::from_slice::<Vec<Value>>(&body).unwrap_or_default();
    if let Some(r) = up.enter(&inputs).await {
        return r;
    }
    let rows: Vec<Value> = texts
        .iter()
        .map(|text| match text.strip_prefix('!') {
            Some(_) => json!({ "input": null, "mw": null }),
            None => json!({ "input": text, "mw": text.len() }),
        })
        .collect();
    axum::Json(Value::Array(rows)).into_response()
}

/// The input strings of a body ersilia-pack accepts; `None` for one it refuses.
fn ersilia_inputs(body: &[u8]) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct InputItem {
        #[serde(rename = "key")]
        _key: String,
        input: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum InputSchema {
        Strings(Vec<String>),
        Items(Vec<InputItem>),
    }
    let texts = match serde_json::from_slice::<InputSchema>(body).ok()? {
        InputSchema::Strings(s) => s,
        InputSchema::Items(items) => items.into_iter().map(|i| i.input).collect(),
    };
    (!texts.is_empty()).then_some(texts)
}

async fn openai(State(up): State<Arc<TestUpstream>>, body: axum::Json<Value>) -> Response {
    let inputs = body["input"].as_array().cloned().unwrap_or_default();
    if let Some(r) = up.enter(&inputs).await {
        return r;
    }
    let dims = body["dimensions"]
        .as_u64()
        .and_then(|d| usize::try_from(d).ok());
    // Reversed, so the caller must order by `index`.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| {
            let mut v = vector(t.as_str().unwrap_or_default());
            if let Some(d) = dims {
                v.truncate(d);
            }
            json!({ "object": "embedding", "index": i, "embedding": v })
        })
        .collect();
    axum::Json(json!({ "object": "list", "data": data, "model": body["model"] })).into_response()
}

async fn tei(State(up): State<Arc<TestUpstream>>, body: axum::Json<Value>) -> Response {
    let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
    if let Some(r) = up.enter(&inputs).await {
        return r;
    }
    let vectors: Vec<Vec<f32>> = inputs
        .iter()
        .map(|t| vector(t.as_str().unwrap_or_default()))
        .collect();
    axum::Json(json!(vectors)).into_response()
}

async fn metadata(State(up): State<Arc<TestUpstream>>, Path(name): Path<String>) -> Response {
    up.metadata_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = up.enter(&[]).await {
        return r;
    }
    axum::Json(
        json!({ "name": name, "versions": ["7"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}], "outputs": [] }),
    )
    .into_response()
}

/// Starts an upstream on a loopback port, served by a task on the current runtime; its
/// base URL (`http://127.0.0.1:PORT`) and its record.
///
/// # Panics
/// When no loopback port can be bound.
pub async fn start() -> (String, Arc<TestUpstream>) {
    let up = Arc::new(TestUpstream::default());
    let router = Router::new()
        .route("/predict", routing::post(predict))
        .route("/run", routing::post(run))
        .route("/v1/embeddings", routing::post(openai))
        .route("/embed", routing::post(tei))
        .route("/v2/models/{name}", routing::get(metadata))
        .with_state(Arc::clone(&up));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .expect("a bound listener has an address")
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the test upstream stopped");
        }
    });
    (url, up)
}
