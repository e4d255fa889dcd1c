//! The per-row path every model takes: one key per row, only the missing rows computed,
//! outputs back in order.
//!
//! [`Infer::rows`] keys each row by tenant, model, version, artifact digest, the row's
//! canonical form and the output-affecting parameters ([`Inputs`] says both), and hands
//! the keys to [`Cache::get_many_or_refresh`]. So repeated rows in one request are looked
//! up and computed once, rows a concurrent request is already computing are waited for
//! rather than computed again, and the rows left go to the model's
//! [`Backend::compute`](infercache_backend::Backend::compute): in one call, or in chunks
//! of at most the model's `max_batch` rows, four at a time (so the request's latency is
//! about a quarter of one call per chunk, and one request never opens more than four
//! upstream connections).
//!
//! A request whose rows are all fresh in the memory tier is answered at once
//! ([`Cache::get_many_from_memory`]); any other runs the full path. The lookup and the
//! computation run as their own task: a request that times out or
//! whose client goes away still fills the cache, and the requests waiting on its rows
//! still get them. A request for a model behind an upstream waits for its model's rows at
//! most its timeout less a margin ([`answer_budget`]); then the computation counts as
//! failed for this request (stale-if-error may stand in, else `upstream_timeout`), and the
//! upstream call goes on and stores its rows when they come. A model run in this process
//! has no call timeout of its own: the request's timeout bounds it.
//!
//! # What is never cached
//!
//! A model with `deterministic = false`, a call that changes state upstream
//! ([`CacheControl::bypass`]), and every model while the cache is disabled: every row is
//! computed, repeated rows included (a generative model's repeated row is a second
//! sample, not a duplicate). A computed row the backend refuses to keep
//! ([`Backend::keep`](infercache_backend::Backend::keep): Ersilia's row of nulls) is
//! returned as [`Computed::do_not_store`]: handed to this request and those waiting on
//! it, written to no tier on no node.
//!
//! # Freshness, stale-while-revalidate and stale-if-error
//!
//! Each model's [`FreshnessPolicy`](infercache_engine::FreshnessPolicy) (its `ttl`,
//! `stale_if_error` and `stale_while_revalidate`, [`CachePolicy::freshness`]) is
//! registered with the engine, which judges every value from every tier and node by it and
//! by the request's own directives (`max-age`, `stale-while-revalidate=N`,
//! `stale-if-error=N`). The path calls [`Cache::get_many_or_refresh`]: a row within its
//! stale-while-revalidate window is served at once, marked [`RowSource::Stale`], and
//! recomputed in the background once across requests and nodes; when the model fails, a
//! row within its stale-if-error window stands in, marked stale too. A request with
//! `no-cache` asked for a fresh answer and gets the error instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use infercache_backend::{BackendError, Inputs, JsonText, UpstreamError};
use infercache_core::canonical::InputKind;
use infercache_core::{CanonicalInput, Digest, Epochs, KeyParts};
use infercache_engine::{
    Cache, CacheKey, ComputeError, Computed, Fetched, Lookup, RequestOptions, Source, Stale,
};
use serde_json::value::RawValue;

#[cfg(doc)]
use crate::models::CachePolicy;
use crate::models::Model;
use crate::{CallLimit, Infer, InferError};

/// Backend calls one request runs at once when its rows are split into chunks.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// How a request may use the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age`, `no-cache` (Ersilia: `fetch_cache=false`), `no-store` (Ersilia:
    /// `save_cache=false`).
    pub options: RequestOptions,
    /// `Cache-Control: only-if-cached`: any missing row fails the request
    /// ([`InferError::NotCached`]).
    pub only_if_cached: bool,
    /// Ersilia's `cache_only`: never compute; a missing row is [`RowSource::Absent`] and
    /// its value `None`.
    pub cache_only: bool,
    /// The call changes state upstream (a KServe v2 sequence request): it is neither
    /// looked up, nor stored, nor merged with an identical concurrent call.
    pub bypass: bool,
}

/// One request's rows, as [`Infer::rows`] needs them.
#[derive(Debug)]
pub struct RowRequest {
    /// The model.
    pub model: Arc<Model>,
    /// The caller's tenant: tenants never share entries.
    pub tenant: Arc<str>,
    /// The rows, in request order (shared with the caller, which may need them to render
    /// its answer).
    pub inputs: Arc<Inputs>,
    /// How the cache may be used.
    pub control: CacheControl,
}

/// A request's rows built from their canonical forms ([`CanonicalInput`]): texts, or JSON
/// rows in canonical JSON. A caller that has canonicalized its rows already (a bulk job
/// does, once per input, to find its file's repeats) hands them to
/// [`Infer::canonical_rows`], which keys them by these forms instead of canonicalizing
/// them again. The backend reads the rows made from the same forms ([`Inputs::texts`], or
/// [`Inputs::Json`] of the canonical text), and canonical JSON is its own canonical form,
/// so each key is bit for bit the key [`Infer::rows`] gives the same row as a client
/// sends it, in any key order and spacing.
#[derive(Debug, Clone)]
pub struct CanonicalRows {
    inputs: Arc<Inputs>,
    canonical: Vec<CanonicalInput>,
}

impl CanonicalRows {
    /// Texts, each a [`CanonicalInput::text`].
    ///
    /// # Errors
    /// A message when a row is not a text.
    pub fn texts(rows: Vec<CanonicalInput>) -> Result<Self, String> {
        let texts = rows
            .iter()
            .map(|row| match row.kind() {
                InputKind::Text => std::str::from_utf8(row.as_bytes())
                    .map(str::to_owned)
                    .map_err(|e| e.to_string()),
                other => Err(format!("a text row is {other:?}")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            inputs: Arc::new(Inputs::texts(texts)),
            canonical: rows,
        })
    }

    /// JSON rows, each a [`CanonicalInput::json_str`] (or [`CanonicalInput::json`]), sent
    /// with `parameters`.
    ///
    /// # Errors
    /// A message when a row is not canonical JSON.
    pub fn json(rows: Vec<CanonicalInput>, parameters: Option<JsonText>) -> Result<Self, String> {
        let texts = rows
            .iter()
            .map(|row| match row.kind() {
                // Checked here rather than by `JsonText::new`, so that the parser is
                // built at this crate's optimization level (dev builds optimize the
                // per-row path, not the backend crate).
                InputKind::Json => {
                    let text = Bytes::copy_from_slice(row.as_bytes());
                    let raw: &RawValue =
                        serde_json::from_slice(&text).map_err(|e| e.to_string())?;
                    Ok(JsonText::within(&text, raw))
                }
                other => Err(format!("a JSON row is {other:?}")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            inputs: Arc::new(Inputs::Json {
                rows: texts,
                parameters,
            }),
            canonical: rows,
        })
    }

    /// The rows as a backend reads them.
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }
}

/// How one row was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowSource {
    /// From a cache tier, fresh.
    Hit,
    /// Computed by this request.
    Computed,
    /// Computed by a concurrent request this one waited for.
    Coalesced,
    /// From a cache tier, past its freshness: within its stale-while-revalidate window
    /// (refreshed in the background), or standing in for a model that failed.
    Stale(Stale),
    /// Not cached and not computed (`cache_only`).
    Absent,
}

/// How a request's rows were served, as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every row came from a cache tier.
    Hit,
    /// No row came from a cache tier.
    Miss,
    /// Some did, some did not.
    Partial,
}

impl Outcome {
    /// The outcome of a request with `hits` of `total` rows served from a tier.
    pub fn of(hits: usize, total: usize) -> Self {
        match hits {
            0 => Self::Miss,
            h if h == total => Self::Hit,
            _ => Self::Partial,
        }
    }
}

/// The rows of one request, in request order.
#[derive(Debug)]
pub struct Rows {
    /// One value per row, as the backend computed and the cache stored it, never decoded
    /// here (`None` only for [`RowSource::Absent`]).
    pub values: Vec<Option<Bytes>>,
    /// How each row was served.
    pub sources: Vec<RowSource>,
    /// Each row's key; empty when nothing was keyed (no cache, a model that is not
    /// deterministic, a bypassing call).
    pub keys: Vec<Digest>,
}

impl Rows {
    fn count(&self, which: &[RowSource]) -> usize {
        self.sources.iter().filter(|s| which.contains(s)).count()
    }

    /// Rows a tier served fresh. A repeated row counts as its first copy does.
    pub fn hits(&self) -> usize {
        self.count(&[RowSource::Hit])
    }

    /// Rows served stale, for either reason.
    pub fn stale(&self) -> usize {
        self.sources
            .iter()
            .filter(|s| matches!(s, RowSource::Stale(_)))
            .count()
    }

    /// Rows served stale for `why`.
    pub fn stale_for(&self, why: Stale) -> usize {
        self.count(&[RowSource::Stale(why)])
    }

    /// Rows no tier served (computed, coalesced or absent).
    pub fn misses(&self) -> usize {
        self.count(&[RowSource::Computed, RowSource::Coalesced, RowSource::Absent])
    }

    /// Rows a concurrent request computed.
    pub fn coalesced(&self) -> usize {
        self.count(&[RowSource::Coalesced])
    }

    /// Hit, miss or partial, by the rows a tier served fresh.
    pub fn outcome(&self) -> Outcome {
        Outcome::of(self.hits(), self.sources.len())
    }

    fn computed(values: Vec<Bytes>) -> Self {
        Self {
            sources: vec![RowSource::Computed; values.len()],
            values: values.into_iter().map(Some).collect(),
            keys: Vec::new(),
        }
    }
}

/// What the per-row path reports as it works; the server turns it into metrics.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// One successful backend call of `model` for `rows` rows took `took`.
    fn computed(&self, model: &Model, rows: usize, took: Duration);
}

/// An [`Observer`] that records nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn computed(&self, _model: &Model, _rows: usize, _took: Duration) {}
}

/// How long a request for a model behind an upstream waits for its rows: its timeout
/// less a margin (a tenth, at most a second) for the stale lookup and the response.
pub fn answer_budget(request_timeout: Duration) -> Duration {
    request_timeout.saturating_sub((request_timeout / 10).min(Duration::from_secs(1)))
}

impl Infer {
    /// Serves `request`'s rows from the cache, computing the missing ones with the
    /// model's backend.
    ///
    /// # Errors
    /// [`InferError::NotCached`] under `only-if-cached`; [`InferError::Backend`] when the
    /// model failed and no stale entries could stand in.
    pub async fn rows(&self, request: RowRequest) -> Result<Rows, InferError> {
        self.rows_keyed(request, None).await
    }

    /// [`Infer::rows`] of rows given in their canonical forms ([`CanonicalRows`]): keyed
    /// by those forms, not canonicalized again.
    ///
    /// # Errors
    /// As [`Infer::rows`].
    pub async fn canonical_rows(
        &self,
        model: Arc<Model>,
        tenant: Arc<str>,
        rows: CanonicalRows,
        control: CacheControl,
    ) -> Result<Rows, InferError> {
        let CanonicalRows { inputs, canonical } = rows;
        let request = RowRequest {
            model,
            tenant,
            inputs,
            control,
        };
        self.rows_keyed(request, Some(canonical)).await
    }

    /// [`Infer::rows`], with the rows' canonical forms when the caller has them.
    async fn rows_keyed(
        &self,
        request: RowRequest,
        canonical: Option<Vec<CanonicalInput>>,
    ) -> Result<Rows, InferError> {
        let RowRequest {
            model,
            tenant,
            inputs,
            control,
        } = request;
        let cache = match self.cache() {
            Some(cache) if model.policy().deterministic && !control.bypass => cache.clone(),
            _ => return self.uncached(&model, &inputs, control).await,
        };
        let canonical = match canonical {
            Some(canonical) => canonical,
            None => inputs.canonical().map_err(InferError::internal)?,
        };
        let keys = keys(&cache, &model, &tenant, &inputs, &canonical)?;
        let options = control.options;
        // Every row fresh in memory (and fit for the model, as `refuse_unfit` checks on
        // the full path): answered here, without the computation's task.
        let fits = |_: usize, v: &[u8]| model.backend().fits(v, &inputs);
        if let Some(rows) = memory_rows(&cache, &keys, &options, fits) {
            return Ok(rows);
        }
        let digests: Vec<Digest> = keys.iter().map(|k| *k.digest()).collect();
        if control.cache_only || control.only_if_cached {
            return lookup_only(&cache, &keys, &options, control, digests).await;
        }
        let mut fetched = self
            .compute(&cache, &model, &inputs, keys.clone(), options)
            .await
            .map_err(InferError::Backend)?;
        if refuse_unfit(&model, &inputs, &keys, &fetched) {
            // A tier held a value that does not fit the model: the request is computed
            // afresh, which also overwrites it in every tier.
            let fresh = RequestOptions {
                no_cache: true,
                ..options
            };
            fetched = self
                .compute(&cache, &model, &inputs, keys, fresh)
                .await
                .map_err(InferError::Backend)?;
        }
        if fetched.iter().any(|f| f.stale == Some(Stale::IfError)) {
            tracing::warn!(model = model.name(), "the model failed; serving stale rows");
        }
        Ok(Rows {
            sources: fetched.iter().map(source).collect(),
            values: fetched.into_iter().map(|f| Some(f.value)).collect(),
            keys: digests,
        })
    }

    /// The rows of `keys` (keys this path made for `model`, kept by the caller) when the
    /// memory tier holds every one fresh for `control` and `accept` takes the value of
    /// each `keys[i]`: what [`Infer::rows`] answers at once for a request whose rows are
    /// all fresh in memory, judged by the same engine call and counted the same way.
    /// `None`, having counted nothing, otherwise, and always when the cache is off, the
    /// model is not deterministic or the call bypasses the cache: the caller then takes
    /// the full path.
    ///
    /// A caller keeping keys reads [`Cache::epoch_changes`] before making them and calls
    /// this only while it is unchanged: an invalidation makes new keys, not these.
    pub fn rows_from_memory(
        &self,
        model: &Model,
        keys: &[CacheKey],
        control: &CacheControl,
        accept: impl Fn(usize, &[u8]) -> bool,
    ) -> Option<Rows> {
        let cache = self.cache()?;
        if !model.policy().deterministic || control.bypass {
            return None;
        }
        memory_rows(cache, keys, &control.options, accept)
    }

    /// Every row computed, nothing keyed: no cache, a model that is not deterministic,
    /// or a bypassing call.
    async fn uncached(
        &self,
        model: &Model,
        inputs: &Inputs,
        control: CacheControl,
    ) -> Result<Rows, InferError> {
        let n = inputs.len();
        if control.cache_only {
            return Ok(Rows {
                values: vec![None; n],
                sources: vec![RowSource::Absent; n],
                keys: Vec::new(),
            });
        }
        if control.only_if_cached {
            return Err(InferError::NotCached {
                misses: n,
                total: n,
            });
        }
        let values = in_chunks(
            model,
            inputs,
            (0..n).collect(),
            &*self.inner.observer,
            self.inner.calls.as_ref(),
        )
        .await
        .map_err(|f| InferError::Backend(f.error))?;
        Ok(Rows::computed(values))
    }

    /// Looks the rows up and computes the missing ones in a task of their own
    /// ([`Cache::get_many_or_refresh`]). For a model behind an upstream, each backend call
    /// made for this request counts as failed once the answer budget is spent (so
    /// stale-if-error may stand in) but goes on and stores its rows; the answer itself
    /// waits a little longer at most (lookups, another node's lease), then fails with
    /// `upstream_timeout`.
    async fn compute(
        &self,
        cache: &Cache,
        model: &Arc<Model>,
        inputs: &Arc<Inputs>,
        keys: Vec<CacheKey>,
        options: RequestOptions,
    ) -> Result<Vec<Fetched>, BackendError> {
        let started = tokio::time::Instant::now();
        // The first row of each key: what the backend is asked for.
        let mut first: HashMap<Digest, usize> = HashMap::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            first.entry(*k.digest()).or_insert(i);
        }
        let rows = RowComputation {
            cache: cache.clone(),
            model: Arc::clone(model),
            inputs: Arc::clone(inputs),
            observer: Arc::clone(&self.inner.observer),
            calls: self.inner.calls.clone(),
            first: Arc::new(first),
            by_index: Arc::new(keys.clone()),
            options,
            deadline: (!model.kind().in_process())
                .then(|| (started + self.inner.budget, self.inner.budget)),
        };
        let cache = cache.clone();
        let computation = tokio::spawn(async move {
            cache
                .get_many_or_refresh(&keys, &options, move |missing| {
                    let rows = rows.clone();
                    async move { rows.compute(missing).await }
                })
                .await
        });
        let joined = if model.kind().in_process() {
            computation.await
        } else {
            // The answer must come before the request's own timeout, so that a hung
            // upstream still gets its stale rows or its upstream error (naming the model)
            // rather than a bare 504. The computation goes on in its task and fills the
            // cache.
            let (budget, limit) = (self.inner.budget, self.inner.answer_limit);
            match tokio::time::timeout_at(started + limit, computation).await {
                Ok(joined) => joined,
                Err(_) => {
                    return Err(BackendError::Upstream(UpstreamError::Timeout {
                        model: model.name().to_owned(),
                        timeout: budget,
                    }));
                }
            }
        };
        match joined {
            Ok(result) => result.map_err(|e| backend_error(&e)),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(BackendError::failed(e)),
        }
    }
}

/// What one request's computation needs, owned, so the engine may also run it in the
/// background (a stale-while-revalidate refresh). Cheap to clone.
#[derive(Clone)]
struct RowComputation {
    cache: Cache,
    model: Arc<Model>,
    inputs: Arc<Inputs>,
    observer: Arc<dyn Observer>,
    /// The process's bound on backend calls in flight, if any.
    calls: Option<CallLimit>,
    /// The first row of each key: what the backend is asked for.
    first: Arc<HashMap<Digest, usize>>,
    /// Each row's key, for rows stored outside the engine's computation (the chunks that
    /// succeeded when another failed, the rows of a call past its deadline).
    by_index: Arc<Vec<CacheKey>>,
    options: RequestOptions,
    /// For a model behind an upstream: when a backend call stops counting for this
    /// request, and the answer budget that is.
    deadline: Option<(tokio::time::Instant, Duration)>,
}

impl RowComputation {
    /// The values of the `missing` keys, each marked [`Computed::do_not_store`] when the
    /// backend refuses to keep it.
    async fn compute(self, missing: Vec<CacheKey>) -> Result<Vec<Computed>, BackendError> {
        let indices: Vec<usize> = missing
            .iter()
            .map(|k| {
                *self
                    .first
                    .get(k.digest())
                    .expect("the engine computes only keys it was given (a bug otherwise)")
            })
            .collect();
        let values = match self.deadline {
            None => self.chunks(indices).await?,
            Some((deadline, budget)) => self.chunks_until(deadline, budget, indices).await?,
        };
        let backend = self.model.backend();
        Ok(values
            .into_iter()
            .map(|v| {
                if backend.keep(&v) {
                    Computed::store(v)
                } else {
                    Computed::do_not_store(v)
                }
            })
            .collect())
    }

    /// The rows at `indices` ([`in_chunks`]); when a chunk fails, the rows of those that
    /// succeeded are stored.
    async fn chunks(&self, indices: Vec<usize>) -> Result<Vec<Bytes>, BackendError> {
        let calls = self.calls.as_ref();
        match in_chunks(&self.model, &self.inputs, indices, &*self.observer, calls).await {
            Ok(values) => Ok(values),
            Err(ChunksFailed { error, done }) => {
                self.keep(done).await;
                Err(error)
            }
        }
    }

    /// [`Self::chunks`] in a task of its own, waited for until `deadline`; past it the
    /// rows count as failed (`upstream_timeout` after `budget`) and are stored when they
    /// come.
    async fn chunks_until(
        &self,
        deadline: tokio::time::Instant,
        budget: Duration,
        indices: Vec<usize>,
    ) -> Result<Vec<Bytes>, BackendError> {
        let (rows, asked) = (self.clone(), indices.clone());
        let mut call = tokio::spawn(async move { rows.chunks(asked).await });
        match tokio::time::timeout_at(deadline, &mut call).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => Err(BackendError::failed(e)),
            Err(_) => {
                let rows = self.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(values)) = call.await {
                        rows.keep(indices.into_iter().zip(values).collect()).await;
                    }
                });
                Err(UpstreamError::Timeout {
                    model: self.model.name().to_owned(),
                    timeout: budget,
                }
                .into())
            }
        }
    }

    /// Stores rows computed outside the engine's own computation, as the engine stores
    /// computed values (`no-store` stores nothing), except those the backend refuses to
    /// keep.
    async fn keep(&self, done: Vec<(usize, Bytes)>) {
        for (i, value) in done {
            if self.model.backend().keep(&value) {
                self.cache
                    .insert(&self.by_index[i], value, &self.options)
                    .await;
            }
        }
    }
}

/// Each row's key from its canonical form (`canonical`: [`Inputs::canonical`], or the
/// forms [`CanonicalRows`] were built from, the same bytes): tenant, model name, version, digest (an upstream's identity,
/// [`ModelInfo::key_artifact`](infercache_backend::ModelInfo::key_artifact)), the canonical row and the
/// output-affecting parameters, with the cache's epochs folded in. The one place a
/// row's key is built.
/// [`Rows`] of `keys`, every one a hit, when the memory tier holds every one fresh
/// ([`Cache::get_many_from_memory`]).
fn memory_rows(
    cache: &Cache,
    keys: &[CacheKey],
    options: &RequestOptions,
    accept: impl Fn(usize, &[u8]) -> bool,
) -> Option<Rows> {
    let fetched = cache.get_many_from_memory(keys, options, accept)?;
    Some(Rows {
        sources: vec![RowSource::Hit; fetched.len()],
        values: fetched.into_iter().map(|f| Some(f.value)).collect(),
        keys: keys.iter().map(|k| *k.digest()).collect(),
    })
}

fn keys(
    cache: &Cache,
    model: &Model,
    tenant: &str,
    inputs: &Inputs,
    canonical: &[CanonicalInput],
) -> Result<Vec<CacheKey>, InferError> {
    let info = model.info();
    let params = inputs
        .key_params(model.policy().params.as_deref())
        .map_err(InferError::internal)?;
    Ok(canonical
        .iter()
        .map(|row| {
            cache.key(KeyParts {
                namespace: tenant,
                model: &info.name,
                version: &info.version,
                artifact: info.key_artifact(),
                epochs: Epochs::default(),
                input: row,
                params: &params,
            })
        })
        .collect())
}

/// Whether any value a tier served does not fit the model ([`Backend::fits`]: an
/// embedding of another length), counting each such value as corrupt; it is never served.
///
/// [`Backend::fits`]: infercache_backend::Backend::fits
fn refuse_unfit(model: &Model, inputs: &Inputs, keys: &[CacheKey], fetched: &[Fetched]) -> bool {
    let mut unfit = false;
    for (f, k) in fetched.iter().zip(keys) {
        if f.source.is_hit() && !model.backend().fits(&f.value, inputs) {
            tracing::warn!(
                model = model.name(),
                key = %k.digest(),
                bytes = f.value.len(),
                "a stored value does not fit the model; recomputing it"
            );
            k.model().count_corrupt();
            unfit = true;
        }
    }
    unfit
}

fn source(f: &Fetched) -> RowSource {
    if let Some(why) = f.stale {
        return RowSource::Stale(why);
    }
    match f.source {
        Source::Memory | Source::Disk | Source::Remote => RowSource::Hit,
        Source::Computed => RowSource::Computed,
        Source::Coalesced => RowSource::Coalesced,
    }
}

/// The backend's error a computation failed with (shared with every waiter).
fn backend_error(e: &ComputeError) -> BackendError {
    e.downcast_ref::<BackendError>()
        .cloned()
        .unwrap_or_else(|| BackendError::failed(e.to_string()))
}

/// `cache_only` and `only-if-cached`: the rows the cache holds, nothing computed.
async fn lookup_only(
    cache: &Cache,
    keys: &[CacheKey],
    options: &RequestOptions,
    control: CacheControl,
    digests: Vec<Digest>,
) -> Result<Rows, InferError> {
    let found = lookup(cache, keys, options).await;
    let misses = found.iter().filter(|f| f.is_none()).count();
    if control.only_if_cached && misses > 0 {
        return Err(InferError::NotCached {
            misses,
            total: keys.len(),
        });
    }
    Ok(Rows {
        sources: found
            .iter()
            .map(|f| match f {
                Some(_) => RowSource::Hit,
                None => RowSource::Absent,
            })
            .collect(),
        values: found,
        keys: digests,
    })
}

/// Each key's value under `options`, looking each distinct key up once.
async fn lookup(cache: &Cache, keys: &[CacheKey], options: &RequestOptions) -> Vec<Option<Bytes>> {
    let mut seen: HashMap<Digest, Option<Bytes>> = HashMap::with_capacity(keys.len());
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if let Some(v) = seen.get(k.digest()) {
            out.push(v.clone());
            continue;
        }
        let v = match cache.get(k, options).await {
            Lookup::Hit(f) => Some(f.value),
            Lookup::Miss => None,
        };
        seen.insert(*k.digest(), v.clone());
        out.push(v);
    }
    out
}

/// Why [`in_chunks`] failed, with the rows of the chunks that succeeded.
struct ChunksFailed {
    /// The first failing chunk's error.
    error: BackendError,
    /// Each row of a chunk that succeeded, by index into the inputs, with its value.
    done: Vec<(usize, Bytes)>,
}

/// Computes the rows at `indices`: in one call, or in chunks of the model's `max_batch`,
/// at most [`CHUNKS_IN_FLIGHT`] at once, each call holding one of `calls`' slots (when
/// the process bounds its calls); checks that each call returned one value per
/// row. The first failing chunk fails the whole: chunks not yet started are not sent,
/// chunks in flight finish, and the rows of every chunk that succeeded come back with the
/// error, so the caller can keep them.
async fn in_chunks(
    model: &Model,
    inputs: &Inputs,
    indices: Vec<usize>,
    observer: &dyn Observer,
    calls: Option<&CallLimit>,
) -> Result<Vec<Bytes>, ChunksFailed> {
    let failed = AtomicBool::new(false);
    let call = |chunk: &[usize]| {
        let chunk = chunk.to_vec();
        let failed = &failed;
        async move {
            let _slot = match calls {
                Some(calls) => Some(calls.slot().await),
                None => None,
            };
            if failed.load(Ordering::Relaxed) {
                return (chunk, None);
            }
            let started = Instant::now();
            let result = match model.backend().compute(inputs, &chunk).await {
                Ok(values) if values.len() != chunk.len() => {
                    let reason = format!("{} outputs for {} inputs", values.len(), chunk.len());
                    Err(if model.kind().in_process() {
                        BackendError::failed(reason)
                    } else {
                        UpstreamError::bad_response(model.name(), reason).into()
                    })
                }
                Ok(values) => {
                    observer.computed(model, chunk.len(), started.elapsed());
                    Ok(values)
                }
                Err(e) => Err(e),
            };
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            (chunk, Some(result))
        }
    };
    let max = model.policy().max_batch.unwrap_or(usize::MAX);
    if indices.len() <= max {
        let (_, result) = call(&indices).await;
        return result
            .expect("a lone chunk always runs")
            .map_err(|error| ChunksFailed {
                error,
                done: Vec::new(),
            });
    }
    let mut parts = futures_util::stream::iter(indices.chunks(max))
        .map(call)
        .buffered(CHUNKS_IN_FLIGHT);
    let mut values = Vec::with_capacity(indices.len());
    let mut done = Vec::new();
    let mut error = None;
    while let Some((chunk, result)) = parts.next().await {
        match result {
            Some(Ok(part)) if error.is_none() => values.extend(part),
            Some(Ok(part)) => done.extend(chunk.into_iter().zip(part)),
            Some(Err(e)) => {
                if error.is_none() {
                    // What succeeded so far is kept, not returned.
                    done.extend(indices_of(&indices, values.len()).zip(values.drain(..)));
                }
                error.get_or_insert(e);
            }
            None => {}
        }
    }
    match error {
        None => Ok(values),
        Some(error) => Err(ChunksFailed { error, done }),
    }
}

/// The first `n` of `indices`, in order: the rows of the chunks collected so far.
fn indices_of(indices: &[usize], n: usize) -> impl Iterator<Item = usize> + '_ {
    indices[..n].iter().copied()
}

#[cfg(test)]
mod tests;
