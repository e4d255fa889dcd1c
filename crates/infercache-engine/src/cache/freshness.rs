//! The one freshness rule: every value, whatever tier or node it comes from, is judged by
//! `judge` before it is served or handed to a waiter.
//!
//! An entry carries when it was computed (`created_ms`) and when it expires
//! (`expires_ms`, the end of its storage life in every tier). Its model's
//! [`FreshnessPolicy`] and the request's [`RequestOptions`] say the rest:
//!
//! ```text
//!  created            fresh until                          expires
//!     │── fresh ──────────│── stale-while-revalidate ──│        │
//!     │                   │── stale-if-error ────────────────── │
//!     lifetime = min(policy ttl, request max-age)   (capped by expiry)
//! ```
//!
//! - **Fresh** while its age is at most the lifetime: served as a hit.
//! - **Revalidate** past that, within the stale-while-revalidate window (the request's
//!   `stale_while_revalidate`, else the model's, which counts from the model's `ttl` and
//!   never past the request's `max_age`): served at once, marked stale, and recomputed in
//!   the background (by [`crate::Cache::get_many_or_refresh`]; the other entry points
//!   recompute it before answering).
//! - **Fallback** past that, within the stale-if-error window (the request's
//!   `stale_if_error`, else the model's): only stands in for a computation that failed.
//! - **Unusable** otherwise, and always once expired.
//!
//! Freshness is judged when a value is read, from its creation time and the model's policy
//! of the reading node, not stored with the value: lowering a model's `ttl` takes effect at
//! once for entries already in every tier, on disk and in Redis included, and the tiers'
//! formats stay as they are. What is stored is the expiry, `created + ttl + max(stale
//! windows)` (or the request's `ttl`), so each tier keeps an entry exactly as long as some
//! request may still use it.

use std::time::Duration;

use infercache_core::clock::duration_ms;

use super::types::RequestOptions;
use crate::memory::NEVER;

/// How long a model's entries are fresh, and how long past that they may still be served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FreshnessPolicy {
    /// Entries are fresh this long after they were computed. `None` (the default): until
    /// they expire (the cache's `default_ttl`, or the request's `ttl`) or are evicted.
    pub ttl: Option<Duration>,
    /// Past `ttl`, how long an entry may stand in for a computation that failed (served
    /// marked [`Stale::IfError`]). Default: zero.
    pub stale_if_error: Duration,
    /// Past `ttl`, how long an entry is served at once (marked
    /// [`Stale::WhileRevalidate`]) while it is recomputed in the background. Default: zero.
    pub stale_while_revalidate: Duration,
}

impl FreshnessPolicy {
    /// How long an entry of this policy is kept: its `ttl` plus the longer stale window;
    /// `None` without a `ttl`.
    pub fn keep_for(&self) -> Option<Duration> {
        self.ttl
            .map(|ttl| ttl.saturating_add(self.stale_if_error.max(self.stale_while_revalidate)))
    }
}

/// Why a value was served past its freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stale {
    /// Within the stale-while-revalidate window: served at once, recomputed in the
    /// background.
    WhileRevalidate,
    /// The computation failed, and the entry was within its stale-if-error window.
    IfError,
}

/// What a value may be used for, by one request, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Served as it is.
    Fresh,
    /// Served marked stale, and recomputed in the background.
    Revalidate,
    /// Served marked stale only if the computation fails.
    Fallback,
    /// Not served.
    Unusable,
}

/// The times of an entry that [`judge`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Times {
    pub(super) created_ms: u64,
    /// [`NEVER`] for no expiry.
    pub(super) expires_ms: u64,
}

/// The freshness rule (see the module docs).
pub(super) fn judge(
    policy: &FreshnessPolicy,
    opts: &RequestOptions,
    times: Times,
    now: u64,
) -> Verdict {
    if times.expires_ms != NEVER && times.expires_ms <= now {
        return Verdict::Unusable;
    }
    let max_age = opts.max_age.map(duration_ms);
    let ttl = policy.ttl.map(duration_ms);
    let lifetime = match (ttl, max_age) {
        (None, None) => return Verdict::Fresh,
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
    };
    let age = now.saturating_sub(times.created_ms);
    if age <= lifetime {
        return Verdict::Fresh;
    }
    let revalidate_until = match opts.stale_while_revalidate {
        Some(window) => lifetime.saturating_add(duration_ms(window)),
        None => ttl.map_or(lifetime, |ttl| {
            let until = ttl.saturating_add(duration_ms(policy.stale_while_revalidate));
            max_age.map_or(until, |max| until.min(max))
        }),
    };
    if age <= revalidate_until {
        return Verdict::Revalidate;
    }
    let if_error = opts.stale_if_error.unwrap_or(policy.stale_if_error);
    if age <= lifetime.saturating_add(duration_ms(if_error)) {
        return Verdict::Fallback;
    }
    Verdict::Unusable
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;

    fn policy(ttl: u64, sie: u64, swr: u64) -> FreshnessPolicy {
        FreshnessPolicy {
            ttl: Some(Duration::from_secs(ttl)),
            stale_if_error: Duration::from_secs(sie),
            stale_while_revalidate: Duration::from_secs(swr),
        }
    }

    fn at(age_s: u64, expires_s: Option<u64>) -> (Times, u64) {
        let now = 1_000_000 * S;
        let created_ms = now - age_s * S;
        let expires_ms = expires_s.map_or(NEVER, |e| created_ms + e * S);
        (
            Times {
                created_ms,
                expires_ms,
            },
            now,
        )
    }

    fn verdict(p: &FreshnessPolicy, opts: &RequestOptions, age_s: u64) -> Verdict {
        let (times, now) = at(age_s, p.keep_for().map(|d| d.as_secs()));
        judge(p, opts, times, now)
    }

    #[test]
    fn the_model_ttl_then_its_windows() {
        let p = policy(10, 100, 20);
        let none = RequestOptions::default();
        assert_eq!(verdict(&p, &none, 10), Verdict::Fresh);
        assert_eq!(verdict(&p, &none, 11), Verdict::Revalidate);
        assert_eq!(verdict(&p, &none, 30), Verdict::Revalidate);
        assert_eq!(verdict(&p, &none, 31), Verdict::Fallback);
        assert_eq!(verdict(&p, &none, 109), Verdict::Fallback);
        // Kept for ttl + the longer window: expired then.
        assert_eq!(verdict(&p, &none, 110), Verdict::Unusable);
    }

    #[test]
    fn a_request_max_age_tightens_and_bounds_the_model_window() {
        let p = policy(10, 100, 20);
        let strict = RequestOptions {
            max_age: Some(Duration::from_secs(1)),
            ..RequestOptions::default()
        };
        assert_eq!(verdict(&p, &strict, 1), Verdict::Fresh);
        // Too old for the client, and the model's window counts from its ttl: no stale.
        assert_eq!(verdict(&p, &strict, 3), Verdict::Fallback);
        let loose = RequestOptions {
            max_age: Some(Duration::from_secs(15)),
            ..RequestOptions::default()
        };
        assert_eq!(verdict(&p, &loose, 12), Verdict::Revalidate);
        assert_eq!(verdict(&p, &loose, 16), Verdict::Fallback);
    }

    #[test]
    fn request_windows_count_from_the_request_lifetime() {
        let p = policy(10, 0, 0);
        let opts = RequestOptions {
            max_age: Some(Duration::from_secs(2)),
            stale_while_revalidate: Some(Duration::from_secs(3)),
            stale_if_error: Some(Duration::from_secs(6)),
            ..RequestOptions::default()
        };
        assert_eq!(verdict(&p, &opts, 2), Verdict::Fresh);
        assert_eq!(verdict(&p, &opts, 5), Verdict::Revalidate);
        assert_eq!(verdict(&p, &opts, 8), Verdict::Fallback);
        assert_eq!(verdict(&p, &opts, 9), Verdict::Unusable);
    }

    #[test]
    fn without_a_ttl_entries_are_fresh_until_they_expire() {
        let p = FreshnessPolicy::default();
        let none = RequestOptions::default();
        let (times, now) = at(1_000, None);
        assert_eq!(judge(&p, &none, times, now), Verdict::Fresh);
        let (times, now) = at(10, Some(10));
        assert_eq!(judge(&p, &none, times, now), Verdict::Unusable);
        let (times, now) = at(9, Some(10));
        assert_eq!(judge(&p, &none, times, now), Verdict::Fresh);
    }
}
