//! A small KServe v2 model server on a loopback port, for tests and the `kserve_upstream`
//! example: the upstream that infercache sits in front of.
//!
//! It serves one deterministic model, [`MODEL`]: input `INPUT0`, FP32 `[N, K]`; outputs
//! `OUTPUT0`, FP32 `[N, K]` = `INPUT0 * 2 + 1`, and `OUTPUT1`, INT64 `[N]` = each row's
//! sum truncated toward zero. It reads JSON (flat or nested) and binary-extension
//! requests and answers each output as JSON or binary as asked, like Triton. It counts
//! calls and rows, and can wait a fixed time per call to stand in for a slow model.
//!
//! It parses the protocol itself, on purpose without infercache's codec, so that tests
//! of the codec against it check two independent implementations.
//!
//! Routes: `POST /v2/models/{name}[/versions/{v}]/infer`, `GET /v2` (server metadata),
//! `GET /v2/models/{name}[/ready|/config]`, `GET /v2/health/{live,ready}`. Errors are 400
//! (or 404 for another model) with `{"error": "..."}`, Triton's shape.
//!
//! [`Upstream::start_json_only`] starts one that implements only the core (JSON)
//! protocol: its server metadata lists no extension, a request with binary tensor data
//! is refused (400), and every output is answered as JSON.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The one model served.
pub const MODEL: &str = "simple";

const HEADER_LENGTH: &str = "inference-header-content-length";

/// What the server counts, and how it behaves.
#[derive(Debug, Default)]
struct Shared {
    calls: AtomicUsize,
    rows: AtomicUsize,
    binary_requests: AtomicUsize,
    server_metadata_calls: AtomicUsize,
    delay: Duration,
    json_only: bool,
}

/// A running upstream.
#[derive(Debug)]
pub struct Upstream {
    /// `http://127.0.0.1:port`.
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts one on a fresh loopback port that answers at once.
    pub async fn start() -> Self {
        Self::start_with_delay(Duration::ZERO).await
    }

    /// Starts one that waits `delay` before answering each inference.
    pub async fn start_with_delay(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, delay)
    }

    /// Starts one that speaks only the core protocol: JSON tensors.
    pub async fn start_json_only() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_shared(
            listener,
            Shared {
                json_only: true,
                ..Shared::default()
            },
        )
    }

    /// Serves on `listener`.
    pub fn serve(listener: TcpListener, delay: Duration) -> Self {
        Self::serve_shared(
            listener,
            Shared {
                delay,
                ..Shared::default()
            },
        )
    }

    fn serve_shared(listener: TcpListener, shared: Shared) -> Self {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(shared);
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            url,
            shared,
            stop: Some(stop),
            task,
        }
    }

    /// Inference calls answered with 200.
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Rows (batch entries) inferred, over all calls.
    pub fn rows(&self) -> usize {
        self.shared.rows.load(Ordering::SeqCst)
    }

    /// Inference calls whose input came as binary data.
    pub fn binary_requests(&self) -> usize {
        self.shared.binary_requests.load(Ordering::SeqCst)
    }

    /// `GET /v2` calls answered.
    pub fn server_metadata_calls(&self) -> usize {
        self.shared.server_metadata_calls.load(Ordering::SeqCst)
    }

    /// Stops it and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/config", get(config))
        .route("/v2/models/{name}/infer", post(infer_latest))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn server_metadata(State(s): State<Arc<Shared>>) -> Response {
    s.server_metadata_calls.fetch_add(1, Ordering::SeqCst);
    let extensions: &[&str] = if s.json_only {
        &[]
    } else {
        &["binary_tensor_data"]
    };
    axum::Json(json!({"name": "test-upstream", "version": "1", "extensions": extensions}))
        .into_response()
}

async fn model_ready(Path(name): Path<String>) -> Response {
    if name != MODEL {
        return error(StatusCode::NOT_FOUND, format!("unknown model '{name}'"));
    }
    StatusCode::OK.into_response()
}

/// Triton's model configuration of [`MODEL`].
async fn config(Path(name): Path<String>) -> Response {
    if name != MODEL {
        return error(StatusCode::NOT_FOUND, format!("unknown model '{name}'"));
    }
    axum::Json(json!({
        "name": MODEL,
        "platform": "test",
        "max_batch_size": 64,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [
            {"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]},
            {"name": "OUTPUT1", "data_type": "TYPE_INT64", "dims": [1]}
        ]
    }))
    .into_response()
}

async fn metadata(Path(name): Path<String>) -> Response {
    if name != MODEL {
        return error(StatusCode::NOT_FOUND, format!("unknown model '{name}'"));
    }
    axum::Json(json!({
        "name": MODEL,
        "versions": ["1"],
        "platform": "test",
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [
            {"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "OUTPUT1", "datatype": "INT64", "shape": [-1]}
        ]
    }))
    .into_response()
}

async fn infer_latest(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(&s, &name, &headers, &body).await
}

async fn infer_version(
    State(s): State<Arc<Shared>>,
    Path((name, _version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(&s, &name, &headers, &body).await
}

async fn infer(s: &Shared, name: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if name != MODEL {
        return error(StatusCode::NOT_FOUND, format!("unknown model '{name}'"));
    }
    if s.json_only && headers.contains_key(HEADER_LENGTH) {
        return error(
            StatusCode::BAD_REQUEST,
            "binary tensor data is not supported; send JSON tensors",
        );
    }
    let (rows, k, x, binary_in, request) = match read_input(headers, body) {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
    s.calls.fetch_add(1, Ordering::SeqCst);
    s.rows.fetch_add(rows, Ordering::SeqCst);
    s.binary_requests
        .fetch_add(usize::from(binary_in), Ordering::SeqCst);
    let output0: Vec<f32> = x.iter().map(|v| v * 2.0 + 1.0).collect();
    let output1: Vec<i64> = if k == 0 {
        vec![0; rows]
    } else {
        x.chunks(k).map(|r| r.iter().sum::<f32>() as i64).collect()
    };
    let out0 = Output {
        name: "OUTPUT0",
        datatype: "FP32",
        shape: json!([rows, k]),
        json: output0.iter().map(|v| json!(v)).collect(),
        raw: output0.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let out1 = Output {
        name: "OUTPUT1",
        datatype: "INT64",
        shape: json!([rows]),
        json: output1.iter().map(|v| json!(v)).collect(),
        raw: output1.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    respond(&request, [out0, out1], !s.json_only)
}

/// One computed output, in both forms.
struct Output {
    name: &'static str,
    datatype: &'static str,
    shape: Value,
    json: Vec<Value>,
    raw: Vec<u8>,
}

type Input = (usize, usize, Vec<f32>, bool, Value);

/// `INPUT0`'s rows, row length and values, whether it came binary, and the JSON header.
fn read_input(headers: &HeaderMap, body: &[u8]) -> Result<Input, String> {
    let json_len = match headers.get(HEADER_LENGTH) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or("bad Inference-Header-Content-Length")?,
        None => body.len(),
    };
    let request: Value =
        serde_json::from_slice(&body[..json_len]).map_err(|e| format!("bad JSON: {e}"))?;
    let mut offset = json_len;
    let inputs = request["inputs"].as_array().ok_or("no inputs")?;
    let mut found = None;
    for input in inputs {
        let size = input["parameters"]["binary_data_size"]
            .as_u64()
            .map(|n| n as usize);
        let raw = match size {
            Some(n) if offset + n <= body.len() => {
                offset += n;
                Some(&body[offset - n..offset])
            }
            Some(_) => return Err("binary data past the end of the body".into()),
            None => None,
        };
        if input["name"] == "INPUT0" {
            found = Some((input.clone(), raw));
        }
    }
    if offset != body.len() {
        return Err("unclaimed binary data".into());
    }
    let (input, raw) = found.ok_or("INPUT0 is missing")?;
    if input["datatype"] != "FP32" {
        return Err("INPUT0 must be FP32".into());
    }
    let shape: Vec<usize> = input["shape"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_u64().map(|d| d as usize))
        .collect();
    let [rows, k] = shape[..] else {
        return Err("INPUT0 must have shape [N, K]".into());
    };
    let x: Vec<f32> = match raw {
        Some(raw) => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        None => {
            let mut flat = Vec::new();
            flatten(&input["data"], &mut flat);
            flat.iter()
                .map(|v| {
                    v.as_f64()
                        .map(|f| f as f32)
                        .ok_or("INPUT0 data must be numbers")
                })
                .collect::<Result<_, _>>()?
        }
    };
    if x.len() != rows.saturating_mul(k) {
        return Err(format!(
            "INPUT0 has {} values for shape [{rows}, {k}]",
            x.len()
        ));
    }
    Ok((rows, k, x, raw.is_some(), request))
}

fn flatten(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other.clone()),
    }
}

/// The response for `request`: its requested outputs (all when it names none), each
/// binary when its `binary_data` (or the request's `binary_data_output`) says so and
/// `binary` allows it.
fn respond(request: &Value, outputs: [Output; 2], binary_allowed: bool) -> Response {
    let all_binary = request["parameters"]["binary_data_output"]
        .as_bool()
        .unwrap_or(false);
    let wanted: Option<Vec<(String, Option<bool>)>> = request["outputs"].as_array().map(|list| {
        list.iter()
            .map(|o| {
                (
                    o["name"].as_str().unwrap_or("").to_owned(),
                    o["parameters"]["binary_data"].as_bool(),
                )
            })
            .collect()
    });
    let mut json_outputs = Vec::new();
    let mut binary = Vec::new();
    let mut any_binary = false;
    for Output {
        name,
        datatype,
        shape,
        json: data,
        raw,
    } in outputs
    {
        let as_binary = match &wanted {
            None => all_binary,
            Some(list) => match list.iter().find(|(n, _)| n == name) {
                None => continue,
                Some((_, b)) => b.unwrap_or(all_binary),
            },
        };
        if as_binary && binary_allowed {
            any_binary = true;
            json_outputs.push(json!({"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": raw.len()}}));
            binary.extend(raw);
        } else {
            json_outputs
                .push(json!({"name": name, "datatype": datatype, "shape": shape, "data": data}));
        }
    }
    let mut header = json!({"model_name": MODEL, "model_version": "1", "outputs": json_outputs});
    if let Some(id) = request["id"].as_str() {
        header["id"] = json!(id);
    }
    let mut body = serde_json::to_vec(&header).unwrap();
    let header_len = body.len();
    body.extend(binary);
    let mut response = body.into_response();
    if any_binary {
        response
            .headers_mut()
            .insert(HEADER_LENGTH, header_len.into());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/octet-stream".parse().unwrap(),
        );
    } else {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    }
    response
}
