//! A job's model through a running server (`--url`): each window is one request to the
//! model's route, so the server's cache, single flight and batching apply, and its
//! tiers hold the results.
//!
//! | model | route |
//! |---|---|
//! | built-in, `openai`, `tei` | `POST /v1/embeddings` |
//! | `ersilia` | `POST /v1/models/{name}/run` |
//! | `http-json` | `POST /v1/models/{name}/predict` |
//!
//! The server says how many rows of a request it served from its cache
//! (`X-Cache-Hits`), not which: the job counts that many of the request's rows as hits
//! and the others as computed, and every request with a miss as one model call.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use infercache_backend::BoxFuture;
use infercache_jobs::{Identity, Input, InputKind, JobModel, Output, RowResult, Served};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::Client;

/// A model of a running server.
#[derive(Debug)]
pub struct ServerModel {
    client: Client,
    identity: Identity,
    kind: String,
    parameters: Option<Map<String, Value>>,
    calls: AtomicU64,
}

impl ServerModel {
    /// The model `name` of the server `client` talks to, as its `GET /v1/models` lists it.
    pub async fn connect(
        client: Client,
        name: &str,
        parameters: Option<Map<String, Value>>,
    ) -> anyhow::Result<Self> {
        let listed = client.get("v1/models").await?;
        let entries = listed["data"].as_array().cloned().unwrap_or_default();
        let entry = entries.iter().find(|m| m["id"] == name).with_context(|| {
            let served: Vec<&str> = entries.iter().filter_map(|m| m["id"].as_str()).collect();
            format!(
                "the server does not serve `{name}`; it serves {}",
                served.join(", ")
            )
        })?;
        let kind = entry["backend"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "kserve-v2" => anyhow::bail!(
                "model `{name}` is a kserve-v2 model: bulk jobs take texts or JSON rows, not tensors"
            ),
            "http-json" => {}
            _ if parameters.is_some() => {
                anyhow::bail!("model `{name}` takes no parameters (only http-json models do)")
            }
            _ => {}
        }
        if entry["deterministic"] == false {
            anyhow::bail!(
                "model `{name}` is not deterministic: its outputs are never cached, so a job could not resume"
            );
        }
        Ok(Self {
            client,
            identity: Identity {
                name: name.to_owned(),
                backend: kind.clone(),
                version: entry["version"].as_str().unwrap_or_default().to_owned(),
                digest: entry["digest"].as_str().map(str::to_owned),
            },
            kind,
            parameters,
            calls: AtomicU64::new(0),
        })
    }

    async fn request(&self, inputs: &[Input]) -> anyhow::Result<(Vec<Value>, usize)> {
        let name = &self.identity.name;
        let (path, body) = match self.kind.as_str() {
            "http-json" => {
                let mut body = json!({ "inputs": inputs });
                if let Some(p) = &self.parameters {
                    body["parameters"] = Value::Object(p.clone());
                }
                (format!("v1/models/{name}/predict"), body)
            }
            "ersilia" => (format!("v1/models/{name}/run"), json!(inputs)),
            _ => (
                "v1/embeddings".to_owned(),
                json!({ "model": name, "input": inputs }),
            ),
        };
        let reply = self
            .client
            .send_while_busy(Method::POST, &path, Some(&body), |_, _| {})
            .await?;
        let hits = reply.cache_hits.unwrap_or(0);
        let answer = reply.into_ok()?;
        let rows = match self.kind.as_str() {
            "http-json" => answer["outputs"].as_array().cloned(),
            "ersilia" => answer.as_array().cloned(),
            _ => answer["data"].as_array().map(|data| {
                let mut by_index: Vec<(u64, Value)> = data
                    .iter()
                    .map(|d| (d["index"].as_u64().unwrap_or(0), d["embedding"].clone()))
                    .collect();
                by_index.sort_by_key(|(i, _)| *i);
                by_index.into_iter().map(|(_, e)| e).collect()
            }),
        }
        .context("the server's answer is not in the model's shape")?;
        if rows.len() != inputs.len() {
            anyhow::bail!(
                "the server answered {} rows for {} inputs",
                rows.len(),
                inputs.len()
            );
        }
        Ok((rows, usize::try_from(hits).unwrap_or(usize::MAX)))
    }
}

impl JobModel for ServerModel {
    fn identity(&self) -> Identity {
        self.identity.clone()
    }

    fn input_kind(&self) -> InputKind {
        if self.kind == "http-json" {
            InputKind::Json
        } else {
            InputKind::Text
        }
    }

    fn rows<'a>(&'a self, inputs: &'a [Input]) -> BoxFuture<'a, Result<Vec<RowResult>, String>> {
        Box::pin(async move {
            let (rows, hits) = self.request(inputs).await.map_err(|e| format!("{e:#}"))?;
            if hits < rows.len() {
                self.calls.fetch_add(1, Ordering::Relaxed);
            }
            Ok(rows
                .into_iter()
                .enumerate()
                .map(|(i, row)| {
                    if self.kind == "ersilia" && all_null(&row) {
                        return Err(
                            "the model returned no result for this input (a row of nulls)"
                                .to_owned(),
                        );
                    }
                    Ok((
                        Output::from_value(&row),
                        if i < hits {
                            Served::Hit
                        } else {
                            Served::Computed
                        },
                    ))
                })
                .collect())
        })
    }

    fn model_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// ersilia-pack's failure row: `null`, or an object or array of nulls.
fn all_null(row: &Value) -> bool {
    match row {
        Value::Null => true,
        Value::Object(obj) => !obj.is_empty() && obj.values().all(Value::is_null),
        Value::Array(a) => !a.is_empty() && a.iter().all(Value::is_null),
        _ => false,
    }
}
