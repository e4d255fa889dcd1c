//! Plain JSON upstreams: `POST {url}` with `{"inputs": [row, ...], "parameters"?: {...}}`
//! (every parameter forwarded, keyed or not), answering `{"outputs": [...]}` with one
//! output per input. Each output row is stored as its compact JSON text.

use bytes::Bytes;
use infercache_backend::{
    Backend, BackendError, BackendStats, BoxFuture, Inputs, ModelInfo, UpstreamError,
};
use serde_json::{Value, json};

use crate::client::Upstream;
use crate::json_rows;

/// A model behind a plain JSON endpoint.
#[derive(Debug)]
pub struct HttpJson {
    upstream: Upstream,
    info: ModelInfo,
}

impl HttpJson {
    /// The model behind `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        let info = crate::info(upstream.config());
        Self { upstream, info }
    }

    async fn predict(&self, body: &Value) -> Result<Vec<Bytes>, UpstreamError> {
        #[derive(serde::Deserialize)]
        struct Reply {
            outputs: Vec<Value>,
        }
        let reply = self.upstream.post_json("", body).await?;
        let reply: Reply = serde_json::from_slice(&reply.body).map_err(|e| {
            UpstreamError::bad_response(
                self.upstream.name(),
                format!("expected {{\"outputs\": [...]}}: {e}"),
            )
        })?;
        Ok(json_rows(&reply.outputs))
    }
}

impl Backend for HttpJson {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn compute<'a>(
        &'a self,
        inputs: &'a Inputs,
        rows: &'a [usize],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, BackendError>> {
        Box::pin(async move {
            let Inputs::Json {
                rows: values,
                parameters,
            } = inputs
            else {
                return Err(BackendError::failed(
                    "a plain JSON model takes JSON rows (a bug otherwise)",
                ));
            };
            let mut body =
                json!({ "inputs": rows.iter().map(|&i| values[i].clone()).collect::<Vec<_>>() });
            if let Some(p) = parameters {
                body["parameters"] = Value::Object(p.clone());
            }
            Ok(self.predict(&body).await?)
        })
    }

    fn stats(&self) -> BackendStats {
        BackendStats::Upstream(self.upstream.stats())
    }
}
