//! OpenAI-compatible embedding upstreams: `POST {url}/v1/embeddings` with `{"model":
//! upstream_name, "input": [...], "encoding_format": "float"}` (and `dimensions` when the
//! request gave it), answering OpenAI's embeddings list.

use bytes::Bytes;
use infercache_backend::{
    Backend, BackendError, BackendStats, BoxFuture, Inputs, ModelInfo, UpstreamError, vector,
};

use crate::client::Upstream;
use crate::texts_of;

/// A model behind an OpenAI-compatible embeddings API.
#[derive(Debug)]
pub struct OpenAi {
    upstream: Upstream,
    info: ModelInfo,
}

impl OpenAi {
    /// The model behind `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        let info = crate::info(upstream.config());
        Self { upstream, info }
    }

    async fn embed(
        &self,
        texts: Vec<String>,
        dimensions: Option<u64>,
    ) -> Result<Vec<Bytes>, UpstreamError> {
        #[derive(serde::Deserialize)]
        struct Reply {
            data: Vec<Datum>,
        }
        #[derive(serde::Deserialize)]
        struct Datum {
            index: usize,
            embedding: Vec<f32>,
        }
        let bad = |reason: String| UpstreamError::bad_response(self.upstream.name(), reason);
        let n = texts.len();
        let mut request = serde_json::json!({
            "model": self.upstream.config().upstream_name,
            "input": texts,
            "encoding_format": "float",
        });
        if let Some(d) = dimensions {
            request["dimensions"] = d.into();
        }
        let reply = self.upstream.post_json("/v1/embeddings", &request).await?;
        let reply: Reply = serde_json::from_slice(&reply.body)
            .map_err(|e| bad(format!("expected an OpenAI embeddings list: {e}")))?;
        let mut out: Vec<Option<Bytes>> = vec![None; n];
        for d in reply.data {
            match out.get_mut(d.index) {
                Some(slot @ None) => *slot = Some(vector::encode(&d.embedding)),
                _ => {
                    return Err(bad(format!(
                        "index {} is out of range or repeated",
                        d.index
                    )));
                }
            }
        }
        out.into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(format!("fewer than {n} embeddings")))
    }
}

impl Backend for OpenAi {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn compute<'a>(
        &'a self,
        inputs: &'a Inputs,
        rows: &'a [usize],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, BackendError>> {
        Box::pin(async move {
            let (texts, dimensions) = texts_of(inputs, rows)?;
            Ok(self.embed(texts, dimensions).await?)
        })
    }

    fn fits(&self, value: &[u8], inputs: &Inputs) -> bool {
        vector::fits(value, inputs, self.info.dims)
    }

    fn stats(&self) -> BackendStats {
        BackendStats::Upstream(self.upstream.stats())
    }
}
