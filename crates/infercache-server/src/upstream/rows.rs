//! The per-row path every upstream protocol takes: one key per row, only the missing rows
//! upstream, outputs back in order.
//!
//! [`fetch_rows`] keys each row by tenant, model, version, artifact digest, the row's
//! canonical form and the output-affecting parameters, and hands the keys to
//! [`Cache::get_many_or_compute`]. So repeated rows in one request are looked up and sent
//! once, rows a concurrent request is already fetching are waited for rather than sent
//! again, and the rows left go upstream through the protocol's `fetch` closure: in one
//! request, or in chunks of at most the model's `max_batch` rows, four at a time (so the
//! request's latency is about a quarter of one call per chunk, and one request never
//! opens more than four upstream connections).
//!
//! The request waits for its rows at most its timeout less a margin; then it is answered
//! with stale rows (`stale_if_error`) or `upstream_timeout`, and the computation goes on
//! in its own task and fills the cache.
//!
//! Like the built-in model's path, the lookup and the upstream calls run as their own
//! task: a request that times out or whose client goes away still fills the cache, and
//! the requests waiting on its rows still get them.
//!
//! # What is never cached
//!
//! A model with `deterministic = false`, and every model while the cache is disabled:
//! every row goes upstream, repeated rows included (a generative model's repeated row
//! is a second sample, not a duplicate). A computed row the protocol refuses to keep
//! ([`fetch_rows_keeping`]: Ersilia's row of nulls) is returned but removed once stored.
//!
//! # Freshness and stale-if-error
//!
//! Entries are served while younger than the stricter of the model's `ttl` and the
//! client's `max-age`, and stored for `ttl + stale_if_error`. When the upstream fails
//! and the model has `stale_if_error`, every row is looked up again allowing that much
//! more age; if every row is found, the request is served, rows past their freshness
//! marked stale (`X-Cache: STALE`). A request with `no-cache` (or Ersilia's
//! `fetch_cache=false`) asked for a fresh answer and gets the error instead.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;
use infercache_core::{CanonicalInput, Digest, Epochs, KeyParts};
use infercache_engine::{Cache, CacheKey, ComputeError, Fetched, Lookup, RequestOptions, Source};
use tokio::task::JoinSet;

use super::{RemoteModel, UpstreamError};
use crate::cache_control::Directives;
use crate::error::ApiError;
use crate::metrics::Outcome;
use crate::state::AppState;

/// How a request may use the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age`, `no-cache` (Ersilia: `fetch_cache=false`), `no-store` (Ersilia:
    /// `save_cache=false`).
    pub options: RequestOptions,
    /// `Cache-Control: only-if-cached`: any missing row fails the request with 504.
    pub only_if_cached: bool,
    /// Ersilia's `cache_only`: never call the upstream; a missing row is
    /// [`RowSource::Absent`] and its value `None`.
    pub cache_only: bool,
    /// The call changes state upstream (a KServe sequence request): it is neither looked
    /// up, nor stored, nor merged with an identical concurrent call.
    pub bypass: bool,
}

impl From<Directives> for CacheControl {
    fn from(d: Directives) -> Self {
        Self {
            options: d.options,
            only_if_cached: d.only_if_cached,
            cache_only: false,
            bypass: false,
        }
    }
}

/// One request's rows, as [`fetch_rows`] needs them.
#[derive(Debug)]
pub struct RowRequest {
    /// The model.
    pub model: Arc<RemoteModel>,
    /// The caller's tenant: tenants never share entries.
    pub tenant: Arc<str>,
    /// Each row's canonical form, in request order.
    pub rows: Vec<CanonicalInput>,
    /// The output-affecting parameters ([`RemoteModel::key_params`]).
    pub params: Vec<u8>,
    /// How the cache may be used.
    pub control: CacheControl,
}

/// How one row was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowSource {
    /// From a cache tier, fresh.
    Hit,
    /// From the upstream, by this request.
    Computed,
    /// From the upstream, by a concurrent request this one waited for.
    Coalesced,
    /// From a cache tier, past its freshness, because the upstream failed.
    Stale,
    /// Not cached and not computed (`cache_only`).
    Absent,
}

/// The rows of one request, in request order.
#[derive(Debug)]
pub struct Rows {
    /// One value per row: what the protocol's `fetch` returned for it (`None` only for
    /// [`RowSource::Absent`]).
    pub values: Vec<Option<Bytes>>,
    /// How each row was served.
    pub sources: Vec<RowSource>,
    /// Each row's key; empty when nothing was keyed (no cache, or a model that is not
    /// deterministic).
    pub keys: Vec<Digest>,
}

impl Rows {
    fn count(&self, which: &[RowSource]) -> usize {
        self.sources.iter().filter(|s| which.contains(s)).count()
    }

    /// Rows a tier served fresh.
    pub fn hits(&self) -> usize {
        self.count(&[RowSource::Hit])
    }

    /// Rows served stale.
    pub fn stale(&self) -> usize {
        self.count(&[RowSource::Stale])
    }

    /// Rows no tier served (computed, coalesced or absent).
    pub fn misses(&self) -> usize {
        self.count(&[RowSource::Computed, RowSource::Coalesced, RowSource::Absent])
    }

    /// Rows a concurrent request fetched.
    pub fn coalesced(&self) -> usize {
        self.count(&[RowSource::Coalesced])
    }

    /// The `X-Cache` value: `STALE` when any row was served stale, else `HIT`, `MISS`
    /// or `PARTIAL`.
    pub fn header(&self) -> &'static str {
        if self.stale() > 0 {
            "STALE"
        } else {
            Outcome::of(self.hits(), self.sources.len()).header()
        }
    }

    /// `X-Cache`, `X-Cache-Hits`, `X-Cache-Misses`, `X-Cache-Coalesced`, and
    /// `X-Cache-Stale` when any row was stale. Counts are per row; a repeated row counts
    /// as its first copy does.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![
            (
                HeaderName::from_static("x-cache"),
                HeaderValue::from_static(self.header()),
            ),
            (
                HeaderName::from_static("x-cache-hits"),
                HeaderValue::from(self.hits()),
            ),
            (
                HeaderName::from_static("x-cache-misses"),
                HeaderValue::from(self.misses()),
            ),
            (
                HeaderName::from_static("x-cache-coalesced"),
                HeaderValue::from(self.coalesced()),
            ),
        ];
        if self.stale() > 0 {
            h.push((
                HeaderName::from_static("x-cache-stale"),
                HeaderValue::from(self.stale()),
            ));
        }
        h
    }
}

/// Serves `request`'s rows from the cache, fetching the missing ones with `fetch`.
///
/// `fetch(indices)` gets indices into `request.rows` (each missing row once, at most
/// `max_batch` of them, in request order) and must return one value per index, in the
/// same order, from one upstream request. Chunks of one request may be fetched
/// concurrently. A wrong number of values is the upstream's error
/// ([`UpstreamError::BadResponse`]).
///
/// # Errors
/// [`ApiError::NotCached`] under `only-if-cached`; [`ApiError::Upstream`] when the
/// upstream failed and no stale entries could stand in.
pub async fn fetch_rows<F, Fut>(
    state: &AppState,
    request: RowRequest,
    fetch: F,
) -> Result<Rows, ApiError>
where
    F: Fn(Vec<usize>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Bytes>, UpstreamError>> + Send + 'static,
{
    fetch_rows_keeping(state, request, fetch, None).await
}

/// [`fetch_rows`], except that a row computed by this request whose value `keep` refuses
/// is returned but not left in the cache (Ersilia's row of nulls, a failure for that
/// input, must not make the failure stick).
///
/// The engine stores every computed value, so a refused value is removed from every tier
/// once stored; a request in that short window, and the requests that waited for this
/// one's rows, get it too. The removal runs in the same task as the computation, so it
/// happens even when the client has gone.
///
/// # Errors
/// As [`fetch_rows`].
pub async fn fetch_rows_keeping<F, Fut>(
    state: &AppState,
    request: RowRequest,
    fetch: F,
    keep: Option<fn(&[u8]) -> bool>,
) -> Result<Rows, ApiError>
where
    F: Fn(Vec<usize>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Bytes>, UpstreamError>> + Send + 'static,
{
    let RowRequest {
        model,
        tenant,
        rows,
        params,
        control,
    } = request;
    let n = rows.len();
    let fetch = Arc::new(fetch);
    let cache = match state.cache() {
        Some(cache) if model.config().deterministic && !control.bypass => cache.clone(),
        _ => {
            // Nothing is keyed: every row goes upstream, repeats included.
            if control.cache_only {
                return Ok(Rows {
                    values: vec![None; n],
                    sources: vec![RowSource::Absent; n],
                    keys: Vec::new(),
                });
            }
            if control.only_if_cached {
                return Err(ApiError::NotCached {
                    misses: n,
                    total: n,
                });
            }
            let values = in_chunks(&model, &fetch, (0..n).collect()).await?;
            return Ok(Rows {
                values: values.into_iter().map(Some).collect(),
                sources: vec![RowSource::Computed; n],
                keys: Vec::new(),
            });
        }
    };

    let config = model.config();
    let keys: Vec<CacheKey> = rows
        .iter()
        .map(|row| {
            cache.key(KeyParts {
                namespace: &tenant,
                model: &config.name,
                version: &config.version,
                artifact: config.digest.as_deref(),
                epochs: Epochs::default(),
                input: row,
                params: &params,
            })
        })
        .collect();
    let digests: Vec<Digest> = keys.iter().map(|k| *k.digest()).collect();
    let options = model.options(control.options);

    if control.cache_only || control.only_if_cached {
        let found = lookup(&cache, &keys, &options).await;
        let misses = found.iter().filter(|f| f.is_none()).count();
        if control.only_if_cached && misses > 0 {
            return Err(ApiError::NotCached { misses, total: n });
        }
        return Ok(Rows {
            sources: found
                .iter()
                .map(|f| match f {
                    Some(_) => RowSource::Hit,
                    None => RowSource::Absent,
                })
                .collect(),
            values: found,
            keys: digests,
        });
    }

    // The first row of each key: what `fetch` is asked for.
    let mut first: HashMap<Digest, usize> = HashMap::with_capacity(n);
    for (i, d) in digests.iter().enumerate() {
        first.entry(*d).or_insert(i);
    }
    let task_cache = cache.clone();
    let task_keys = keys.clone();
    let task_model = Arc::clone(&model);
    let computation = tokio::spawn(async move {
        let fetched = task_cache
            .get_many_or_compute(&task_keys, &options, |missing| {
                let indices: Vec<usize> = missing
                    .iter()
                    .map(|k| {
                        *first
                            .get(k.digest())
                            .expect("the engine computes only keys it was given (a bug otherwise)")
                    })
                    .collect();
                let (model, fetch) = (Arc::clone(&task_model), Arc::clone(&fetch));
                async move { in_chunks(&model, &fetch, indices).await }
            })
            .await;
        if let (Some(keep), Ok(fetched)) = (keep, &fetched)
            && !options.no_store
        {
            forget_refused(&task_cache, &task_keys, fetched, keep).await;
        }
        fetched
    });
    // The answer must come before the request's own timeout, so that a hung upstream
    // still gets its stale rows or its upstream error (naming the model) rather than a
    // bare 504. The computation goes on in its task and fills the cache.
    let budget = answer_budget(state.limits().request_timeout);
    let outcome = match tokio::time::timeout(budget, computation).await {
        Ok(joined) => joined.map_err(ApiError::internal)?,
        Err(_) => Err(ComputeError::new(UpstreamError::Timeout {
            model: model.name().to_owned(),
            timeout: budget,
        })),
    };
    match outcome {
        Ok(fetched) => Ok(Rows {
            sources: fetched
                .iter()
                .map(|f| match f.source {
                    Source::Memory | Source::Disk | Source::Remote => RowSource::Hit,
                    Source::Computed => RowSource::Computed,
                    Source::Coalesced => RowSource::Coalesced,
                })
                .collect(),
            values: fetched.into_iter().map(|f| Some(f.value)).collect(),
            keys: digests,
        }),
        Err(e) => {
            let Some(upstream) = e.downcast_ref::<UpstreamError>() else {
                return Err(ApiError::internal(e));
            };
            match stale(&model, &cache, &keys, &options).await {
                Some((values, sources)) => {
                    tracing::warn!(model = model.name(), error = %upstream, "serving stale rows");
                    Ok(Rows {
                        values,
                        sources,
                        keys: digests,
                    })
                }
                None => Err(ApiError::Upstream(upstream.clone())),
            }
        }
    }
}

/// How long a request waits for its rows: its timeout less a margin (a tenth, at most a
/// second) for the stale lookup and the response.
fn answer_budget(request_timeout: Duration) -> Duration {
    request_timeout.saturating_sub((request_timeout / 10).min(Duration::from_secs(1)))
}

/// Removes from the cache each row this request computed whose value `keep` refuses.
async fn forget_refused(
    cache: &Cache,
    keys: &[CacheKey],
    fetched: &[Fetched],
    keep: fn(&[u8]) -> bool,
) {
    let mut done: HashSet<Digest> = HashSet::new();
    for (k, f) in keys.iter().zip(fetched) {
        if f.source == Source::Computed && !keep(&f.value) && done.insert(*k.digest()) {
            cache.remove(k).await;
        }
    }
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

/// Every row from the cache, allowing `stale_if_error` past its freshness; `None` when a
/// row is missing, the model has no stale window, or the request asked for `no-cache`.
async fn stale(
    model: &RemoteModel,
    cache: &Cache,
    keys: &[CacheKey],
    options: &RequestOptions,
) -> Option<(Vec<Option<Bytes>>, Vec<RowSource>)> {
    let window = model.config().stale_if_error?;
    if options.no_cache {
        return None;
    }
    let fresh = lookup(cache, keys, options).await;
    let lenient = RequestOptions {
        max_age: options.max_age.map(|age| age.saturating_add(window)),
        ..*options
    };
    let mut values = Vec::with_capacity(keys.len());
    let mut sources = Vec::with_capacity(keys.len());
    let mut older: HashMap<Digest, Bytes> = HashMap::new();
    for (k, v) in keys.iter().zip(fresh) {
        if v.is_some() {
            values.push(v);
            sources.push(RowSource::Hit);
            continue;
        }
        let stale = match older.get(k.digest()) {
            Some(v) => v.clone(),
            None => match cache.get(k, &lenient).await {
                Lookup::Hit(f) => {
                    older.insert(*k.digest(), f.value.clone());
                    f.value
                }
                Lookup::Miss => return None,
            },
        };
        values.push(Some(stale));
        sources.push(RowSource::Stale);
    }
    Some((values, sources))
}

/// Upstream calls one request runs at once when its rows are split into chunks.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Fetches the rows at `indices`: in one call, or in chunks of the model's `max_batch`,
/// at most [`CHUNKS_IN_FLIGHT`] at once; checks that each call returned one value per row.
async fn in_chunks<F, Fut>(
    model: &RemoteModel,
    fetch: &Arc<F>,
    indices: Vec<usize>,
) -> Result<Vec<Bytes>, UpstreamError>
where
    F: Fn(Vec<usize>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Bytes>, UpstreamError>> + Send + 'static,
{
    let check = |values: Vec<Bytes>, asked: usize| {
        if values.len() == asked {
            Ok(values)
        } else {
            Err(UpstreamError::bad_response(
                model.name(),
                format!("{} outputs for {asked} inputs", values.len()),
            ))
        }
    };
    let max = model.config().max_batch.unwrap_or(usize::MAX);
    if indices.len() <= max {
        let asked = indices.len();
        return check(fetch(indices).await?, asked);
    }
    let chunks: Vec<Vec<usize>> = indices.chunks(max).map(<[usize]>::to_vec).collect();
    let mut parts: Vec<Option<Vec<Bytes>>> = vec![None; chunks.len()];
    let mut calls = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(CHUNKS_IN_FLIGHT));
    for (i, chunk) in chunks.into_iter().enumerate() {
        let asked = chunk.len();
        let call = fetch(chunk);
        let slots = Arc::clone(&slots);
        calls.spawn(async move {
            let _slot = slots.acquire().await.expect("never closed");
            (i, asked, call.await)
        });
    }
    // Dropping the set (on the first error) aborts the other chunks' calls.
    while let Some(joined) = calls.join_next().await {
        let (i, asked, result) = match joined {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                return Err(UpstreamError::Broken {
                    model: model.name().to_owned(),
                    detail: "the upstream call was cancelled".to_owned(),
                });
            }
        };
        parts[i] = Some(check(result?, asked)?);
    }
    Ok(parts
        .into_iter()
        .flat_map(|p| p.expect("every chunk joined (a bug otherwise)"))
        .collect())
}
