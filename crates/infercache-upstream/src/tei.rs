//! Text Embeddings Inference upstreams: `POST {url}/embed` with `{"inputs": [...]}`,
//! answering an array of vectors. TEI returns its model's native dimensions, so a request
//! with `dimensions` never reaches it (the route refuses it).

use bytes::Bytes;
use infercache_backend::{
    Backend, BackendError, BackendStats, BoxFuture, Inputs, ModelInfo, UpstreamError, vector,
};

use crate::client::Upstream;
use crate::texts_of;

/// A model behind Text Embeddings Inference.
#[derive(Debug)]
pub struct Tei {
    upstream: Upstream,
    info: ModelInfo,
}

impl Tei {
    /// The model behind `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        let info = crate::info(upstream.config());
        Self { upstream, info }
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Bytes>, UpstreamError> {
        let reply = self
            .upstream
            .post_json("/embed", &serde_json::json!({ "inputs": texts }))
            .await?;
        let vectors: Vec<Vec<f32>> = serde_json::from_slice(&reply.body).map_err(|e| {
            UpstreamError::bad_response(
                self.upstream.name(),
                format!("expected an array of vectors: {e}"),
            )
        })?;
        Ok(vectors.iter().map(|v| vector::encode(v)).collect())
    }
}

impl Backend for Tei {
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
            if dimensions.is_some() {
                return Err(BackendError::failed(
                    "TEI returns its native dimensions (the route refuses `dimensions`; a bug otherwise)",
                ));
            }
            Ok(self.embed(texts).await?)
        })
    }

    fn fits(&self, value: &[u8], inputs: &Inputs) -> bool {
        vector::fits(value, inputs, self.info.dims)
    }

    fn stats(&self) -> BackendStats {
        BackendStats::Upstream(self.upstream.stats())
    }
}
