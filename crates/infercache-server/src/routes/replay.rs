//! Responses kept for hot requests, answered again without parsing, keying or rendering.
//!
//! A client that embeds the same sentence again sends the same bytes again. For such a
//! request, after its rows were all served fresh from the memory tier, [`Replays`] keeps
//! what the route made of it: the rows' keys, the stored bytes the response was written
//! from, and the response itself. The next request with the same bytes (route, model
//! and version in the path, tenant, the headers the route reads, body) is answered from
//! there, on these conditions, each checked on every request:
//!
//! - **Same key.** The request's every byte is compared, not only its hash, so its rows
//!   are the kept keys' rows. An invalidation makes new keys: the keys are used only while
//!   the cache's epochs are unchanged since before they were made
//!   ([`Cache::epoch_changes`]), else the request takes the full path.
//! - **Same freshness.** The keys are looked up through the one engine call the full path
//!   makes for a request all in memory ([`Infer::rows_from_memory`]), which judges
//!   freshness by the model's policy, pauses with the epochs out of sync, and counts the
//!   hits as that path counts them.
//! - **Same bytes.** Each value the engine returns must be equal, byte for byte, to the
//!   value the response was written from: a row replaced, refreshed or evicted and
//!   computed again with other bytes is written anew. A response is a function of the
//!   request, the model and the stored bytes, so a replay is byte for byte what the full
//!   path would write, less what changes per request: `/v1/embed`'s `latency_ms`, written
//!   afresh ([`Written::latency_at`]).
//!
//! Anything else (another request in the slot, a changed value, a request with
//! `Cache-Control` directives, a row not fresh in memory) takes the full path, which
//! keeps the response again. Only requests whose every row was a fresh hit are kept,
//! and only on their second sighting in a row in their slot, so that requests that
//! never repeat do not pay for copies that are never used.
//!
//! Bounded and charged: [`BUDGET`] bytes at most, [`SLOTS`] slots of an equal share; a
//! response whose request, body and values do not fit a share is never kept. The
//! server's configuration takes the budget out of the memory tier's own, with the
//! rendered vectors' ([`rendered::budget_for`](super::rendered::budget_for)). A slot pins
//! the stored values it compares (shared `Bytes`, no copy), so its share counts them.
//!
//! Written by hand, rather than with a cache crate, for the reasons of
//! [`RenderedVectors`](super::rendered::RenderedVectors): a fixed table of `try_lock`ed
//! slots never blocks a request and needs no eviction policy.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use infercache_engine::{Cache, CacheKey};
use infercache_infer::{CacheControl, Model, Outcome, Rows};

use super::write;
use crate::cache_control::Directives;
use crate::state::AppState;

/// The bytes the table may hold at most.
pub(crate) const BUDGET: u64 = 512 << 10;

/// The table's slots: each may hold a response, its request and its values up to
/// `BUDGET / SLOTS`.
pub(crate) const SLOTS: usize = 64;

/// Bytes a slot charges beyond the bytes it holds: the keys, the header map and each
/// block's allocator rounding.
const SLOT_OVERHEAD: usize = 512;

/// The table's budget for a memory tier of `memory_bytes`: [`BUDGET`], taken out of the
/// tier's, when the tier keeps rendered vectors too
/// ([`rendered::budget_for`](super::rendered::budget_for)); else none. A server keeps
/// both tables or neither.
pub(crate) fn budget_for(memory_bytes: u64) -> u64 {
    if super::rendered::budget_for(memory_bytes) > 0 {
        BUDGET
    } else {
        0
    }
}

fn slot_bytes() -> usize {
    usize::try_from(BUDGET).expect("the budget fits in memory") / SLOTS
}

/// What a response depends on besides the stored rows: the request, every byte of it
/// the route reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    /// The route (its path pattern).
    pub route: &'static str,
    /// The model and version named in the path, where the route has them.
    pub path: (&'a str, Option<&'a str>),
    /// The caller's tenant.
    pub tenant: &'a str,
    /// The one request header the route reads besides `Cache-Control`, if any.
    pub header: Option<&'a HeaderValue>,
    /// The body.
    pub body: &'a [u8],
}

impl Ask<'_> {
    fn hash(&self, state: &foldhash::fast::RandomState) -> u64 {
        let mut h = state.build_hasher();
        self.route.hash(&mut h);
        self.path.hash(&mut h);
        self.tenant.hash(&mut h);
        self.header.map(HeaderValue::as_bytes).hash(&mut h);
        self.body.hash(&mut h);
        h.finish()
    }
}

/// A response as a route wrote it, to be kept.
#[derive(Debug)]
pub(crate) struct Written<'a> {
    /// The model the rows were served for.
    pub model: &'a Arc<Model>,
    /// [`Cache::epoch_changes`] read before the rows' keys were made.
    pub epoch_changes: Option<u64>,
    /// The rows, each a fresh hit.
    pub rows: &'a Rows,
    /// The response's headers.
    pub headers: &'a HeaderMap,
    /// The response's body.
    pub body: &'a Bytes,
    /// Where the body's `latency_ms` value starts, for a body that ends with it and `}`
    /// (`/v1/embed`): a replay writes the body up to there and its own latency.
    pub latency_at: Option<usize>,
}

/// The table; see the module's documentation.
#[derive(Debug)]
pub(crate) struct Replays {
    slots: Box<[Mutex<Slot>]>,
    /// Seeded per process, so that which requests share a slot cannot be chosen from
    /// outside.
    hasher: foldhash::fast::RandomState,
}

#[derive(Debug, Default)]
struct Slot {
    /// The hash of the last request that was written in full here.
    seen: u64,
    kept: Option<Arc<Kept>>,
}

#[derive(Debug)]
struct Kept {
    hash: u64,
    route: &'static str,
    name: Box<str>,
    version: Option<Box<str>>,
    tenant: Arc<str>,
    header: Option<HeaderValue>,
    request: Bytes,
    epoch_changes: u64,
    model: Arc<Model>,
    keys: Vec<CacheKey>,
    values: Vec<Bytes>,
    headers: HeaderMap,
    body: Bytes,
    latency_at: Option<usize>,
}

impl Kept {
    fn answers(&self, hash: u64, ask: &Ask<'_>) -> bool {
        self.hash == hash
            && self.route == ask.route
            && *self.name == *ask.path.0
            && self.version.as_deref() == ask.path.1
            && *self.tenant == *ask.tenant
            && self.header.as_ref().map(HeaderValue::as_bytes)
                == ask.header.map(HeaderValue::as_bytes)
            && self.request[..] == *ask.body
    }

    fn charge(&self) -> usize {
        self.request.len()
            + self.body.len()
            + self.values.iter().map(Bytes::len).sum::<usize>()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>()
            + self.keys.len() * std::mem::size_of::<CacheKey>()
            + SLOT_OVERHEAD
    }
}

impl Replays {
    /// An empty table.
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Mutex::new(Slot::default())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The response kept for `ask`, answered again when its rows are still the ones it
    /// was written from (see the module's documentation); `None` sends the request down
    /// the full path. Counts the hits and the request as the full path counts them.
    pub(crate) fn replay(
        &self,
        state: &AppState,
        ask: &Ask<'_>,
        directives: Directives,
        start: Instant,
    ) -> Option<Response> {
        if directives != Directives::default() {
            return None;
        }
        let hash = ask.hash(&self.hasher);
        let kept = {
            let held = self.slots[slot_of(hash)].try_lock().ok()?;
            let kept = held.kept.as_ref()?;
            if !kept.answers(hash, ask) {
                return None;
            }
            Arc::clone(kept)
        };
        if state.cache().map(Cache::epoch_changes) != Some(kept.epoch_changes) {
            return None;
        }
        let control = CacheControl::from(directives);
        let rows = state
            .infer()
            .rows_from_memory(&kept.model, &kept.keys, &control, |i, v| {
                kept.values.get(i).is_some_and(|k| k[..] == *v)
            })?;
        state.served_from_memory(&kept.model, &rows);
        let body = match kept.latency_at {
            None => kept.body.clone(),
            Some(at) => {
                let mut out = Vec::with_capacity(at + 24);
                out.extend_from_slice(&kept.body[..at]);
                write::f64(&mut out, start.elapsed().as_secs_f64() * 1000.0);
                out.push(b'}');
                Bytes::from(out)
            }
        };
        let metrics = state.metrics();
        metrics.replayed(&kept.model);
        metrics.request(&kept.model, Outcome::Hit, start.elapsed());
        let mut response = Response::new(Body::from(body));
        *response.headers_mut() = kept.headers.clone();
        Some(response)
    }

    /// Keeps `written`, the response to `ask`, when every row was a fresh hit, the
    /// request had no directives, it was seen last in its slot too, and it fits a slot.
    pub(crate) fn keep(
        &self,
        state: &AppState,
        ask: &Ask<'_>,
        directives: Directives,
        written: &Written<'_>,
    ) {
        let Some(epoch_changes) = written.epoch_changes else {
            return;
        };
        let rows = written.rows;
        if directives != Directives::default()
            || rows.outcome() != Outcome::Hit
            || rows.stale() > 0
            || rows.keys.len() != rows.values.len()
        {
            return;
        }
        let Some(cache) = state.cache() else {
            return;
        };
        let hash = ask.hash(&self.hasher);
        let slot = &self.slots[slot_of(hash)];
        {
            let Ok(mut held) = slot.try_lock() else {
                return;
            };
            if held.seen != hash {
                held.seen = hash;
                return;
            }
        }
        let Some(values) = rows.values.iter().cloned().collect::<Option<Vec<Bytes>>>() else {
            return;
        };
        let name = &written.model.info().name;
        let kept = Kept {
            hash,
            route: ask.route,
            name: ask.path.0.into(),
            version: ask.path.1.map(Into::into),
            tenant: Arc::from(ask.tenant),
            header: ask.header.cloned(),
            // A copy: the body may be a slice of the connection's read buffer.
            request: Bytes::copy_from_slice(ask.body),
            epoch_changes,
            model: Arc::clone(written.model),
            keys: rows
                .keys
                .iter()
                .map(|d| cache.key_from_digest(*d, name))
                .collect(),
            values,
            headers: written.headers.clone(),
            body: written.body.clone(),
            latency_at: written.latency_at,
        };
        if kept.charge() > slot_bytes() {
            return;
        }
        if let Ok(mut held) = slot.try_lock() {
            let old = held.kept.replace(Arc::new(kept));
            drop(held);
            drop(old);
        }
    }
}

/// The response kept for `ask` when `state` keeps responses and one answers it again
/// ([`Replays::replay`]).
pub(crate) fn answer(
    state: &AppState,
    ask: &Ask<'_>,
    directives: Directives,
    start: Instant,
) -> Option<Response> {
    state.replays()?.replay(state, ask, directives, start)
}

/// What a route reads before it makes its rows' keys, for [`Written::epoch_changes`]: a
/// response kept for them is replayed only while the epochs are unchanged.
pub(crate) fn epoch_changes(state: &AppState) -> Option<u64> {
    state.cache().map(Cache::epoch_changes)
}

/// Keeps `written` when `state` keeps responses ([`Replays::keep`]).
pub(crate) fn keep(state: &AppState, ask: &Ask<'_>, directives: Directives, written: &Written<'_>) {
    if let Some(replays) = state.replays() {
        replays.keep(state, ask, directives, written);
    }
}

/// The slot of a request's hash.
fn slot_of(hash: u64) -> usize {
    // The high bits: foldhash mixes them best.
    usize::try_from(hash >> 32).unwrap_or(0) % SLOTS
}
