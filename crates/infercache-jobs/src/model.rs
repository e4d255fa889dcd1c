//! [`JobModel`]: what a job computes rows with, and [`InferModel`], the in-process one:
//! a model of the registry on the per-row path ([`Infer::rows`]), so the cache, single
//! flight, chunking and every backend apply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use infercache_backend::{BackendKind, BoxFuture, JsonText, vector};
use infercache_infer::{
    CacheControl, CanonicalRows, Infer, InferError, Model, Observer, RowSource,
};
use serde_json::{Map, Value};

use crate::JobError;
use crate::format::InputKind;
use crate::input::Input;

/// A model's identity, as a job's spec records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its name.
    pub name: String,
    /// Its protocol.
    pub backend: String,
    /// Its version.
    pub version: String,
    /// Its artifact digest.
    pub digest: Option<String>,
}

/// How one input was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From the cache, or computed by another caller this one waited for.
    Hit,
    /// Computed for this call.
    Computed,
}

/// One input's output and how it was served, or why that input failed on its own (the
/// call as a whole succeeded).
pub type RowResult = Result<(Output, Served), String>;

/// The model's row for one input, as canonical JSON text (an object's keys sorted, no
/// whitespace, every number as the model wrote it): written into the output as it is,
/// never built into a tree of values and written again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output(String);

impl Output {
    /// The row of the JSON text `text`.
    ///
    /// # Errors
    /// A message when `text` is not JSON.
    pub fn from_json(text: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(text).map_err(|e| format!("a row is not UTF-8: {e}"))?;
        let canonical = infercache_core::canonical::canonical_json_text(text)
            .map_err(|e| format!("a row is not JSON: {e}"))?;
        Ok(Self(
            String::from_utf8(canonical).expect("canonical JSON is UTF-8"),
        ))
    }

    /// The row `value`.
    pub fn from_value(value: &Value) -> Self {
        let canonical =
            infercache_core::canonical::canonical_json(value).unwrap_or_else(|_| b"null".to_vec());
        Self(String::from_utf8(canonical).expect("canonical JSON is UTF-8"))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The row as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).expect("canonical JSON is JSON")
    }
}

impl serde::Serialize for Output {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// What a job computes its rows with: in-process ([`InferModel`]) or a running server.
pub trait JobModel: Send + Sync + std::fmt::Debug {
    /// The model's identity.
    fn identity(&self) -> Identity;

    /// What it takes as a row.
    fn input_kind(&self) -> InputKind;

    /// The rows of `inputs`, in order. An `Err` fails the whole call (the runner then
    /// splits the batch to find the inputs that fail).
    fn rows<'a>(&'a self, inputs: &'a [Input]) -> BoxFuture<'a, Result<Vec<RowResult>, String>>;

    /// The cached rows of `inputs`, computing none: `None` for an input not cached (or
    /// whose stored row cannot be read, which `rows` then computes afresh). One call looks
    /// up many inputs at once, so a re-run of a job costs a few large lookups rather than
    /// one per-row-path call per batch. By default nothing is looked up: every input goes
    /// to `rows`.
    fn lookup<'a>(&'a self, inputs: &'a [Input]) -> BoxFuture<'a, Vec<Option<Output>>> {
        Box::pin(async move { vec![None; inputs.len()] })
    }

    /// Successful model calls so far, in this process.
    fn model_calls(&self) -> u64;

    /// How many [`rows`](JobModel::rows) calls a job keeps in flight for `concurrency`
    /// model calls at once. By default the same: each `rows` call is one model call for
    /// as long as it runs. A model that bounds its own backend calls
    /// ([`Infer::with_call_limit`]) takes twice as many, so that while `concurrency` calls
    /// are with the model, as many others look their rows up or store them.
    fn rows_in_flight(&self, concurrency: usize) -> usize {
        concurrency
    }
}

/// Counts a process's successful backend calls: the [`Observer`] an [`Infer`] for jobs
/// is built with.
#[derive(Debug, Default)]
pub struct CallCounter {
    calls: AtomicU64,
    rows: AtomicU64,
}

impl CallCounter {
    /// Successful calls.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Rows in them.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
}

impl Observer for CallCounter {
    fn computed(&self, _model: &Model, rows: usize, _took: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
    }
}

/// A model of the registry, run on the per-row path in this process.
#[derive(Debug)]
pub struct InferModel {
    infer: Infer,
    model: Arc<Model>,
    tenant: Arc<str>,
    /// The parameters sent with every row, as JSON text.
    parameters: Option<JsonText>,
    counter: Arc<CallCounter>,
}

impl InferModel {
    /// `model` of `infer`'s registry for `tenant`, with `parameters` sent with every row
    /// (plain JSON models); `counter` is the observer `infer` was built with.
    ///
    /// # Errors
    /// [`JobError::Model`]: the cache is disabled (a job needs it to compute each input
    /// once and to resume), the model takes tensors (KServe v2), parameters were given for
    /// a model that takes none, or the model is not deterministic.
    pub fn new(
        infer: Infer,
        model: Arc<Model>,
        tenant: &str,
        parameters: Option<Map<String, Value>>,
        counter: Arc<CallCounter>,
    ) -> Result<Self, JobError> {
        if infer.cache().is_none() {
            return Err(JobError::Model(
                "the cache is disabled: a bulk job needs it to compute each input once and to resume".into(),
            ));
        }
        if !model.policy().deterministic {
            return Err(JobError::Model(format!(
                "model `{}` is not deterministic: its outputs are never cached, so a job could not resume",
                model.name()
            )));
        }
        match model.kind() {
            BackendKind::KServeV2 => {
                return Err(JobError::Model(format!(
                    "model `{}` is a kserve-v2 model: bulk jobs take texts or JSON rows, not tensors",
                    model.name()
                )));
            }
            BackendKind::HttpJson => {}
            _ if parameters.is_some() => {
                return Err(JobError::Model(format!(
                    "model `{}` takes no parameters (only http-json models do)",
                    model.name()
                )));
            }
            _ => {}
        }
        Ok(Self {
            infer,
            model,
            tenant: Arc::from(tenant),
            parameters: parameters.map(|p| json_text(&Value::Object(p))),
            counter,
        })
    }

    /// `inputs` on the per-row path under `control`, keyed by the canonical forms the
    /// job read them in.
    async fn call(
        &self,
        inputs: &[Input],
        control: CacheControl,
    ) -> Result<infercache_infer::Rows, InferError> {
        let canonical = inputs.iter().map(|i| i.canonical().clone()).collect();
        // A JSON row goes upstream as its canonical text: the value the file holds, every
        // number as the file wrote it.
        let rows = match self.input_kind() {
            InputKind::Json => CanonicalRows::json(canonical, self.parameters.clone()),
            InputKind::Text => CanonicalRows::texts(canonical),
        }
        .map_err(InferError::internal)?;
        self.infer
            .canonical_rows(
                Arc::clone(&self.model),
                Arc::clone(&self.tenant),
                rows,
                control,
            )
            .await
    }

    fn decode(&self, value: &Bytes) -> Result<Output, String> {
        match self.model.kind() {
            BackendKind::HttpJson | BackendKind::Ersilia => Output::from_json(value),
            _ => {
                let dims = self.model.info().dims;
                let floats = vector::decode(value, dims)?;
                Ok(Output::from_value(&Value::Array(
                    floats.into_iter().map(float).collect(),
                )))
            }
        }
    }
}

/// `value` as JSON text.
fn json_text(value: &Value) -> JsonText {
    JsonText::new(Bytes::from(value.to_string())).expect("serde_json writes one JSON value")
}

/// `x` as a JSON number written with the fewest digits that read back as `x`.
pub fn float(x: f32) -> Value {
    // Through the f32's own shortest text: an f32 widened to f64 prints with f64's
    // digits (0.1 as 0.10000000149011612).
    format!("{x:?}")
        .parse::<serde_json::Number>()
        .map_or(Value::Null, Value::Number)
}

impl JobModel for InferModel {
    fn identity(&self) -> Identity {
        let info = self.model.info();
        Identity {
            name: info.name.clone(),
            backend: info.kind.to_string(),
            version: info.version.clone(),
            digest: info.digest.clone(),
        }
    }

    fn input_kind(&self) -> InputKind {
        match self.model.kind() {
            BackendKind::HttpJson => InputKind::Json,
            _ => InputKind::Text,
        }
    }

    fn rows<'a>(&'a self, inputs: &'a [Input]) -> BoxFuture<'a, Result<Vec<RowResult>, String>> {
        Box::pin(async move {
            let rows = self
                .call(inputs, CacheControl::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(rows
                .values
                .iter()
                .zip(&rows.sources)
                .map(|(value, source)| {
                    let value = value
                        .as_ref()
                        .ok_or_else(|| "the row was not computed".to_owned())?;
                    if !self.model.backend().keep(value) {
                        return Err(
                            "the model returned no result for this input (a row of nulls)"
                                .to_owned(),
                        );
                    }
                    let served = match source {
                        RowSource::Computed => Served::Computed,
                        _ => Served::Hit,
                    };
                    Ok((self.decode(value)?, served))
                })
                .collect())
        })
    }

    fn lookup<'a>(&'a self, inputs: &'a [Input]) -> BoxFuture<'a, Vec<Option<Output>>> {
        Box::pin(async move {
            let control = CacheControl {
                cache_only: true,
                ..CacheControl::default()
            };
            match self.call(inputs, control).await {
                Ok(rows) => rows
                    .values
                    .iter()
                    .map(|value| {
                        let value = value.as_ref()?;
                        self.model.backend().keep(value).then_some(())?;
                        self.decode(value).ok()
                    })
                    .collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "a lookup failed: computing its inputs");
                    vec![None; inputs.len()]
                }
            }
        })
    }

    fn model_calls(&self) -> u64 {
        self.counter.calls()
    }

    fn rows_in_flight(&self, concurrency: usize) -> usize {
        match self.infer.call_limit() {
            Some(_) => concurrency.saturating_mul(2),
            None => concurrency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_with_their_own_shortest_digits() {
        assert_eq!(float(0.1).to_string(), "0.1");
        assert_eq!(float(-1.5e-7).to_string(), "-1.5e-7");
        assert_eq!(float(3.0).to_string(), "3.0");
    }
}
