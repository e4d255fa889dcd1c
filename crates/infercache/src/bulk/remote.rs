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
//!
//! `infercache warm` is such a job with no output ([`ServerModel::warming`]): each window
//! goes to `POST /v1/cache/warm` instead (which stores the rows without sending them
//! back, and may fill another tenant's entries), and counts hits the same way.

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
    /// Warming: the rows go to `POST /v1/cache/warm` for this namespace (`None`: the API
    /// key's tenant), and come back as `null`.
    warm: Option<Option<String>>,
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
            warm: None,
            calls: AtomicU64::new(0),
        })
    }

    /// The model `name` of the server `client` talks to, for a job that only warms its
    /// cache through `POST /v1/cache/warm`, for `namespace` (`None`: the API key's
    /// tenant). Its rows are `null`: a warming job writes no output.
    pub async fn warming(
        client: Client,
        name: &str,
        namespace: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut model = Self::connect(client, name, None).await?;
        if matches!(model.kind.as_str(), "http-json" | "kserve-v2") {
            anyhow::bail!(
                "model `{name}` is a {} model: `warm` takes texts; run its inputs with `bulk` instead",
                model.kind
            );
        }
        model.warm = Some(namespace);
        Ok(model)
    }

    /// `POST /v1/cache/warm` of `inputs`: as many `null` rows, and how many were hits
    /// (computed by a concurrent request included).
    async fn warm(
        &self,
        inputs: &[Input],
        namespace: Option<&String>,
    ) -> anyhow::Result<(Vec<Value>, usize)> {
        let texts: Vec<&str> = inputs.iter().filter_map(Input::as_text).collect();
        let request = json!({
            "inputs": texts,
            "namespace": namespace,
            "model": self.identity.name,
        });
        let answer = self
            .client
            .send_while_busy(Method::POST, "v1/cache/warm", Some(&request), |wait, n| {
                tracing::info!(
                    "server busy (429); retrying in {wait:?} ({n}/{})",
                    crate::client::BUSY_RETRIES
                );
            })
            .await?
            .into_ok()?;
        let answer: infercache_api::WarmResponse = serde_json::from_value(answer)
            .context("the server's warm answer is not in the expected shape")?;
        if answer.inputs != inputs.len() {
            anyhow::bail!(
                "the server warmed {} inputs of {}",
                answer.inputs,
                inputs.len()
            );
        }
        Ok((
            vec![Value::Null; inputs.len()],
            answer.hits + answer.coalesced.min(answer.misses),
        ))
    }

    async fn request(&self, inputs: &[Input]) -> anyhow::Result<(Vec<Value>, usize)> {
        if let Some(namespace) = &self.warm {
            return self.warm(inputs, namespace.as_ref()).await;
        }
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
                    if self.kind == "ersilia" && self.warm.is_none() && all_null(&row) {
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
