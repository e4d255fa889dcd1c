//! KServe v2 / Triton upstreams: the missing rows of a request batched back into one
//! request to `POST {url}/v2/models/{upstream_name}/infer`, carrying every request
//! parameter; the answer split back into one stored row per input row
//! ([`infercache_kserve::RowOutput::encode`]).
//!
//! # JSON or binary tensors
//!
//! The binary tensor data format is an extension of the protocol: a server that
//! implements only the core protocol takes JSON tensors. Rows go as binary tensors, with
//! binary outputs asked for, only to an upstream that takes them: the model's
//! `binary_tensors` setting when set, else what the upstream's server metadata
//! (`GET {url}/v2`) says, asked before the first inference and remembered: binary when
//! its `extensions` list `binary_tensor_data`, JSON when they do not, or when it answers
//! 4xx (not 429), 501 or a body that is not server metadata (a server without the
//! route). A probe answered 429 or another 5xx sends that request as JSON (which every
//! server takes) and is asked again by the next one; a probe that gets no answer at all
//! (unreachable, timed out) fails the request as its inference would, and is asked again.
//! A non-finite float cannot travel as JSON: such a row fails (500) on a JSON-only
//! upstream.
//!
//! An answer whose outputs are not batched by the rows sent, or that lacks a requested
//! output, is the upstream's error (`UpstreamError::BadResponse`) and nothing of it is
//! stored. A model with `batched = false` (dimension 0 is not a batch) has the leading
//! dimension of 1 its one row carries taken off the request and put on the answer
//! ([`infercache_kserve::leading_dimension`]), so the upstream sees the tensors as sent.
//!
//! The upstream is always called at its unversioned paths: a client's version segment is
//! checked against the model's `version` by the route and never reaches the upstream URL.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use infercache_backend::{
    Backend, BackendError, BackendStats, BoxFuture, Inputs, ModelInfo, UpstreamError,
};
use infercache_kserve::{
    Encoded, HEADER_LENGTH, InferRequest, KserveError, Row, Shift, WireFormat, build_request,
    leading_dimension, parse_response,
};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::client::Upstream;

/// The extension of the protocol that carries tensors as raw bytes after the JSON part.
pub const BINARY_EXTENSION: &str = "binary_tensor_data";

/// A model behind a KServe v2 / Triton server.
#[derive(Debug)]
pub struct Kserve {
    upstream: Upstream,
    info: ModelInfo,
    /// How rows travel to the upstream: set from the config, else probed once.
    wire: OnceCell<WireFormat>,
}

impl Kserve {
    /// The model behind `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        let info = crate::info(upstream.config());
        let wire = match upstream.config().binary_tensors {
            Some(true) => OnceCell::new_with(Some(WireFormat::Binary)),
            Some(false) => OnceCell::new_with(Some(WireFormat::Json)),
            None => OnceCell::new(),
        };
        Self {
            upstream,
            info,
            wire,
        }
    }

    /// How rows travel to this upstream (see the module docs).
    async fn wire_format(&self) -> Result<WireFormat, UpstreamError> {
        if let Some(&known) = self.wire.get() {
            return Ok(known);
        }
        // Concurrent first requests may each probe; they learn the same answer.
        let learned = match self.upstream.get("/v2").await {
            Ok(reply) => wire_format_of(&reply.body),
            // No server metadata route (404, 405, 501), or not metadata: the core protocol.
            Err(UpstreamError::Status { status, .. })
                if ((400..500).contains(&status) && status != 429) || status == 501 =>
            {
                WireFormat::Json
            }
            Err(UpstreamError::BadResponse { .. }) => WireFormat::Json,
            // "Not now" (429, 5xx): JSON, which every server takes, and ask again later.
            Err(UpstreamError::Status { .. }) => return Ok(WireFormat::Json),
            Err(e) => return Err(e),
        };
        let _ = self.wire.set(learned);
        Ok(learned)
    }

    fn path(&self, tail: &str) -> String {
        format!("/v2/models/{}{tail}", self.upstream.config().upstream_name)
    }

    /// Sends the rows at `indices` upstream in one request; returns each row's stored form.
    async fn infer(
        &self,
        request: &InferRequest,
        rows: &[Row],
        indices: &[usize],
    ) -> Result<Vec<Bytes>, BackendError> {
        let bad = |reason: String| UpstreamError::bad_response(self.upstream.name(), reason);
        let batch: Vec<&Row> = indices.iter().map(|&i| &rows[i]).collect();
        let format = self.wire_format().await?;
        let encoded = build_request(&batch, &request.outputs, &request.parameters, format)
            .map_err(|e| match e {
                e @ KserveError::NotJsonRepresentable { .. } => BackendError::failed(format!(
                    "model `{}` takes JSON tensors only: {e}",
                    self.upstream.name()
                )),
                e => {
                    panic!("the rows of one request share their layout and parameters (a bug): {e}")
                }
            })?;
        let whole = !self.upstream.config().batched;
        let encoded = if whole {
            leading_dimension(encoded, "inputs", Shift::Remove)
                .expect("a request this codec wrote, each input led by a dimension of 1")
        } else {
            encoded
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(encoded.content_type()),
        );
        if let Some(len) = encoded.header_length {
            headers.insert(HEADER_LENGTH, HeaderValue::from(len));
        }
        let reply = self
            .upstream
            .send(
                Method::POST,
                &self.path("/infer"),
                Some((Bytes::from(encoded.body), headers)),
                self.upstream.inference_retry(),
            )
            .await?;
        let (body, header_length) = if whole {
            let declared = reply
                .headers
                .get(HEADER_LENGTH)
                .map(|v| v.to_str().ok().and_then(|s| s.parse::<usize>().ok()))
                .map(|n| n.ok_or_else(|| bad("a malformed Inference-Header-Content-Length".into())))
                .transpose()?;
            let encoded = Encoded {
                body: reply.body.to_vec(),
                header_length: declared,
            };
            let wrapped = leading_dimension(encoded, "outputs", Shift::Add)
                .map_err(|e| bad(e.to_string()))?;
            let length = wrapped.header_length.map(HeaderValue::from);
            (Bytes::from(wrapped.body), length)
        } else {
            (reply.body, reply.headers.get(HEADER_LENGTH).cloned())
        };
        let parsed =
            parse_response(body, header_length.as_ref()).map_err(|e| bad(e.to_string()))?;
        if let Some(requested) = &request.outputs.requested
            && let Some(missing) = requested
                .iter()
                .find(|o| !parsed.outputs.iter().any(|t| t.name == o.name))
        {
            return Err(bad(format!(
                "output `{}` was requested but not answered",
                missing.name
            ))
            .into());
        }
        let split = parsed.split(batch.len()).map_err(|e| bad(e.to_string()))?;
        Ok(split.iter().map(|row| Bytes::from(row.encode())).collect())
    }
}

impl Backend for Kserve {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn compute<'a>(
        &'a self,
        inputs: &'a Inputs,
        rows: &'a [usize],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, BackendError>> {
        Box::pin(async move {
            let Inputs::Tensors {
                request,
                rows: tensors,
            } = inputs
            else {
                return Err(BackendError::failed(
                    "a KServe v2 model takes tensor rows (a bug otherwise)",
                ));
            };
            self.infer(request, tensors, rows).await
        })
    }

    /// The upstream's model metadata (retried: a `GET` is idempotent), with `name`
    /// rewritten to the name clients use.
    fn metadata(&self) -> BoxFuture<'_, Result<Option<Value>, BackendError>> {
        Box::pin(async move {
            let name = self.upstream.name();
            let reply = self.upstream.get(&self.path("")).await?;
            let mut meta: Value = serde_json::from_slice(&reply.body).map_err(|e| {
                UpstreamError::bad_response(name, format!("model metadata is not JSON: {e}"))
            })?;
            if let Some(obj) = meta.as_object_mut() {
                obj.insert("name".to_owned(), Value::String(name.to_owned()));
            }
            Ok(Some(meta))
        })
    }

    /// The upstream's model configuration (Triton's `GET /v2/models/{name}/config`;
    /// retried), with `name` rewritten to the name clients use.
    fn model_config(&self) -> BoxFuture<'_, Result<Option<Value>, BackendError>> {
        Box::pin(async move {
            let name = self.upstream.name();
            let reply = self.upstream.get(&self.path("/config")).await?;
            let mut config: Value = serde_json::from_slice(&reply.body).map_err(|e| {
                UpstreamError::bad_response(name, format!("model configuration is not JSON: {e}"))
            })?;
            if let Some(obj) = config.as_object_mut() {
                obj.insert("name".to_owned(), Value::String(name.to_owned()));
            }
            Ok(Some(config))
        })
    }

    /// The upstream's readiness route.
    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.upstream.get(&self.path("/ready")).await?;
            Ok(())
        })
    }

    fn stats(&self) -> BackendStats {
        BackendStats::Upstream(self.upstream.stats())
    }
}

/// The wire format a server metadata document allows: binary when its `extensions` list
/// [`BINARY_EXTENSION`], else JSON (the core protocol).
fn wire_format_of(metadata: &[u8]) -> WireFormat {
    let binary = serde_json::from_slice::<Value>(metadata)
        .ok()
        .and_then(|m| {
            m.get("extensions")?
                .as_array()
                .map(|e| e.iter().any(|x| x.as_str() == Some(BINARY_EXTENSION)))
        })
        .unwrap_or(false);
    if binary {
        WireFormat::Binary
    } else {
        WireFormat::Json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_metadata_listing_the_binary_extension_allows_binary_tensors() {
        let cases: [(&[u8], WireFormat); 5] = [
            (
                br#"{"name":"triton","version":"2.50","extensions":["classification","binary_tensor_data"]}"#,
                WireFormat::Binary,
            ),
            (br#"{"name":"kserve","version":"1","extensions":[]}"#, WireFormat::Json),
            (br#"{"name":"kserve","version":"1"}"#, WireFormat::Json),
            (br#"{"extensions":"binary_tensor_data"}"#, WireFormat::Json),
            (b"<html>not found</html>", WireFormat::Json),
        ];
        for (metadata, expected) in cases {
            assert_eq!(
                wire_format_of(metadata),
                expected,
                "{}",
                String::from_utf8_lossy(metadata)
            );
        }
    }
}
