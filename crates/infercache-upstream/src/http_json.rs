//! Plain JSON upstreams: `POST {url}` with `{"inputs": [row, ...], "parameters"?: {...}}`
//! (every parameter forwarded, keyed or not), answering `{"outputs": [...]}` with one
//! output per input.
//!
//! Rows and parameters go out as the very text the client sent (a number such as
//! `12345678901234567890123` or `1.0` arrives as written), and each output row is stored
//! as the very text the upstream answered: neither side is parsed into a tree of values.

use bytes::Bytes;
use infercache_backend::{
    Backend, BackendError, BackendStats, BoxFuture, Inputs, ModelInfo, UpstreamError,
};
use serde_json::value::RawValue;

use crate::client::Upstream;
use crate::raw_rows;

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

    async fn predict(&self, body: Vec<u8>) -> Result<Vec<Bytes>, UpstreamError> {
        #[derive(serde::Deserialize)]
        struct Reply<'a> {
            #[serde(borrow)]
            outputs: Vec<&'a RawValue>,
        }
        let reply = self.upstream.post_json_text("", Bytes::from(body)).await?;
        let reply: Reply<'_> = serde_json::from_slice(&reply.body).map_err(|e| {
            UpstreamError::bad_response(
                self.upstream.name(),
                format!("expected {{\"outputs\": [...]}}: {e}"),
            )
        })?;
        Ok(raw_rows(&reply.outputs))
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
            let size: usize = rows.iter().map(|&i| values[i].bytes().len() + 1).sum();
            let mut body = Vec::with_capacity(size + 32);
            body.extend_from_slice(b"{\"inputs\":[");
            for (n, &i) in rows.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(values[i].bytes());
            }
            body.push(b']');
            if let Some(p) = parameters {
                body.extend_from_slice(b",\"parameters\":");
                body.extend_from_slice(p.bytes());
            }
            body.push(b'}');
            Ok(self.predict(body).await?)
        })
    }

    fn stats(&self) -> BackendStats {
        BackendStats::Upstream(self.upstream.stats())
    }
}
