//! A real server on a loopback port, the real model, and a small client.

use std::path::PathBuf;
use std::sync::Arc;

use infercache_model::{BuiltinModel, ModelFiles};
use infercache_server::config::BatchSettings;
use infercache_server::model::pool_config;
use infercache_server::{ServerConfig, ServerError, run_with};
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The real model behind its pool. Fails the test if the model cannot be had.
pub async fn model() -> Arc<BuiltinModel> {
    tokio::task::spawn_blocking(|| {
        let files = match std::env::var_os("INFERCACHE_MODEL_DIR") {
            Some(dir) => ModelFiles::from_dir(PathBuf::from(dir)),
            None => ModelFiles::ensure(
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/model-cache"),
                false,
            ),
        }
        .expect("these tests need the real model: set INFERCACHE_MODEL_DIR or let it be fetched");
        let pool = pool_config(&BatchSettings::default());
        Arc::new(BuiltinModel::from_files(&files, pool).expect("the model loads"))
    })
    .await
    .unwrap()
}

/// A running server.
pub struct Server {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
    client: reqwest::Client,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Server {
    /// Serves `config`'s models on a fresh loopback port, `model` as the built-in one.
    pub async fn start(config: ServerConfig, model: Arc<BuiltinModel>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run_with(
            config,
            Some(model as Arc<dyn infercache_backend::Backend>),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        let server = Self {
            url,
            stop: Some(stop),
            task,
            client: infercache_core::tls::client(),
        };
        assert_eq!(server.get("/readyz", &[]).await.status, 200);
        server
    }

    /// Stops it and waits until it has drained and flushed.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap().unwrap();
    }

    pub async fn send(&self, req: reqwest::RequestBuilder, headers: &[(&str, &str)]) -> Reply {
        let mut req = req;
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = req.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        let req = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(req, headers).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let req = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body);
        self.send(req, &[]).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(self.client.get(format!("{}{path}", self.url)), headers)
            .await
    }

    /// `POST /v1/embeddings` for the served model.
    pub async fn embed(&self, headers: &[(&str, &str)], input: Value) -> Reply {
        self.post(
            "/v1/embeddings",
            headers,
            &serde_json::json!({"model": "all-MiniLM-L6-v2", "input": input}),
        )
        .await
    }

    /// The served model's entry of `GET /v1/cache/stats`.
    pub async fn model_stats(&self, headers: &[(&str, &str)]) -> Value {
        let r = self.get("/v1/cache/stats", headers).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["models"]["all-MiniLM-L6-v2"].clone()
    }

    /// Model `name`'s entry of `GET /v1/cache/stats`.
    pub async fn model_stats_of(&self, name: &str) -> Value {
        let r = self.get("/v1/cache/stats", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["models"][name].clone()
    }
}

/// Texts the model has embedded so far.
pub fn texts(m: &BuiltinModel) -> u64 {
    m.pool().stats().texts
}

/// The floats of a JSON embedding.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an embedding array")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}
