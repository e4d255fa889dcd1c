//! Ersilia model servers (ersilia-pack): `POST {url}/run` with a JSON array of input
//! strings, answering a JSON array with one output row per input. Each row is stored as
//! its compact JSON text.
//!
//! A row that is entirely null (`null`, or an object or array whose every value is
//! `null`) is ersilia-pack's answer for an input the model failed on: it is returned but
//! not kept ([`Backend::keep`]), so the next request for that input computes it again.

use bytes::Bytes;
use infercache_backend::{
    Backend, BackendError, BackendStats, BoxFuture, Inputs, ModelInfo, UpstreamError,
};
use serde_json::Value;

use crate::client::Upstream;
use crate::{raw_rows, texts_of};

/// A model behind an Ersilia model server.
#[derive(Debug)]
pub struct Ersilia {
    upstream: Upstream,
    info: ModelInfo,
}

impl Ersilia {
    /// The model behind `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        let info = crate::info(upstream.config());
        Self { upstream, info }
    }

    async fn run(&self, texts: Vec<String>) -> Result<Vec<Bytes>, UpstreamError> {
        let body = Value::Array(texts.into_iter().map(Value::String).collect());
        let reply = self.upstream.post_json("/run", &body).await?;
        let rows: Vec<&serde_json::value::RawValue> =
            serde_json::from_slice(&reply.body).map_err(|e| {
                UpstreamError::bad_response(
                    self.upstream.name(),
                    format!("expected a JSON array of rows: {e}"),
                )
            })?;
        Ok(raw_rows(&rows))
    }
}

impl Backend for Ersilia {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn compute<'a>(
        &'a self,
        inputs: &'a Inputs,
        rows: &'a [usize],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, BackendError>> {
        Box::pin(async move {
            let (texts, _) = texts_of(inputs, rows)?;
            Ok(self.run(texts).await?)
        })
    }

    fn keep(&self, value: &[u8]) -> bool {
        not_all_null(value)
    }

    fn stats(&self) -> BackendStats {
        BackendStats::Upstream(self.upstream.stats())
    }
}

/// Whether a computed row may be kept: not ersilia-pack's failure row (`null`, or a
/// non-empty object or array of `null`s).
fn not_all_null(row: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(row) {
        Ok(Value::Null) => false,
        Ok(Value::Object(obj)) => obj.is_empty() || obj.values().any(|v| !v.is_null()),
        Ok(Value::Array(a)) => a.is_empty() || a.iter().any(|v| !v.is_null()),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::not_all_null;

    #[test]
    fn ersilia_rows_of_nulls_are_not_kept() {
        for row in ["null", r#"{"a": null, "b": null}"#, "[null, null]"] {
            assert!(!not_all_null(row.as_bytes()), "{row}");
        }
        for row in [
            r#"{"a": null, "b": 0}"#,
            "[null, 1]",
            "{}",
            "[]",
            "0",
            r#""""#,
            r#"{"a": [null]}"#,
        ] {
            assert!(not_all_null(row.as_bytes()), "{row}");
        }
    }
}
