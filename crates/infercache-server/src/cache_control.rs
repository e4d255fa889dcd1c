//! Per-request `Cache-Control` directives.
//!
//! | directive | effect |
//! |---|---|
//! | `no-cache` | skip the lookup, compute, and overwrite the entry |
//! | `no-store` | serve hits as usual, but store nothing this request computes |
//! | `max-age=N` | accept only entries at most `N` seconds old; older ones are recomputed (an `N` past 2^31 is taken as 2^31, RFC 9111 §1.2.2) |
//! | `only-if-cached` | never compute: answer 504 if any input is not cached |
//! | `stale-while-revalidate=N` | RFC 5861: past its freshness, an entry up to `N` seconds older is served at once (`X-Cache: STALE`) and recomputed in the background; overrides the model's `stale_while_revalidate` |
//! | `stale-if-error=N` | RFC 5861: when the model fails, an entry up to `N` seconds past its freshness stands in (`X-Cache: STALE`); overrides the model's `stale_if_error` |
//!
//! Directives are case-insensitive and may come in one header or several. Unknown
//! directives are ignored, as HTTP requires; a malformed `max-age`,
//! `stale-while-revalidate` or `stale-if-error` and the contradictory
//! `no-cache, only-if-cached` are refused with 400. Stale windows never extend how long an
//! entry is kept.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::CACHE_CONTROL;
use axum::http::request::Parts;
use infercache_engine::RequestOptions;
use infercache_infer::CacheControl;

use crate::error::ApiError;

/// The directives of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// What the engine needs.
    pub options: RequestOptions,
    /// `only-if-cached`.
    pub only_if_cached: bool,
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

/// The request's directives, read from its headers where they are (a route that needs no
/// other header takes no copy of them); a malformed one is refused with [`parse`]'s 400.
impl<S: Send + Sync> FromRequestParts<S> for Directives {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse(&parts.headers)
    }
}

/// The directives of `headers`.
///
/// # Errors
/// [`ApiError::InvalidCacheControl`] for an unreadable header, a bad `max-age` or
/// contradictory directives.
pub fn parse(headers: &HeaderMap) -> Result<Directives, ApiError> {
    let mut d = Directives::default();
    for value in headers.get_all(CACHE_CONTROL) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::InvalidCacheControl("not ASCII text".to_owned()))?;
        for directive in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive, None),
            };
            match name.to_ascii_lowercase().as_str() {
                "no-cache" => d.options.no_cache = true,
                "no-store" => d.options.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                "max-age" => {
                    let age = seconds(directive, "max-age", arg)?;
                    // Several max-age: the strictest wins.
                    d.options.max_age = Some(d.options.max_age.map_or(age, |m| m.min(age)));
                }
                "stale-while-revalidate" => {
                    let window = seconds(directive, "stale-while-revalidate", arg)?;
                    let o = &mut d.options.stale_while_revalidate;
                    *o = Some(o.map_or(window, |m| m.min(window)));
                }
                "stale-if-error" => {
                    let window = seconds(directive, "stale-if-error", arg)?;
                    let o = &mut d.options.stale_if_error;
                    *o = Some(o.map_or(window, |m| m.min(window)));
                }
                _ => {}
            }
        }
    }
    if d.only_if_cached && d.options.no_cache {
        return Err(ApiError::InvalidCacheControl(
            "no-cache and only-if-cached contradict each other".to_owned(),
        ));
    }
    Ok(d)
}

/// The `delta-seconds` argument of `name` in `directive`.
fn seconds(directive: &str, name: &str, arg: Option<&str>) -> Result<Duration, ApiError> {
    arg.and_then(delta_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ApiError::InvalidCacheControl(format!(
                "`{directive}`: {name} needs a whole number of seconds, e.g. {name}=60"
            ))
        })
}

/// The largest `delta-seconds` value kept: a larger one (however many digits) is taken
/// as this, as RFC 9111 §1.2.2 says.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// A `delta-seconds` value (one or more digits), capped at [`MAX_DELTA_SECONDS`]; `None`
/// when it is not one.
fn delta_seconds(arg: &str) -> Option<u64> {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only: parsing fails only past u64, which is past the cap too.
    Some(
        arg.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |s| s.min(MAX_DELTA_SECONDS)),
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn parse_all(values: &[&'static str]) -> Result<Directives, ApiError> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CACHE_CONTROL, HeaderValue::from_static(v));
        }
        parse(&h)
    }

    #[test]
    fn directives_combine_across_headers() {
        let d = parse_all(&[
            "No-Cache, max-age=60",
            "no-store",
            "max-age=\"30\", x-ext=1",
        ])
        .unwrap();
        assert!(d.options.no_cache && d.options.no_store && !d.only_if_cached);
        assert_eq!(d.options.max_age, Some(Duration::from_secs(30)));
        assert_eq!(parse_all(&[]).unwrap(), Directives::default());
    }

    #[test]
    fn rfc_5861_windows_are_read_and_the_smaller_of_two_wins() {
        let d = parse_all(&[
            "max-age=10, stale-while-revalidate=60",
            "Stale-If-Error=\"600\", stale-while-revalidate=30",
        ])
        .unwrap();
        assert_eq!(d.options.max_age, Some(Duration::from_secs(10)));
        assert_eq!(
            d.options.stale_while_revalidate,
            Some(Duration::from_secs(30))
        );
        assert_eq!(d.options.stale_if_error, Some(Duration::from_secs(600)));
        let d = parse_all(&["no-cache"]).unwrap();
        assert_eq!(
            (d.options.stale_while_revalidate, d.options.stale_if_error),
            (None, None)
        );
    }

    #[test]
    fn a_max_age_past_2_to_the_31_seconds_is_taken_as_2_to_the_31() {
        let cap = Duration::from_secs(1 << 31);
        for (value, expected) in [
            ("max-age=2147483647", Duration::from_secs(2_147_483_647)),
            ("max-age=2147483648", cap),
            ("max-age=2147483649", cap),
            ("max-age=18446744073709551615", cap),
            ("max-age=99999999999999999999999999999", cap),
            ("max-age=\"99999999999999999999999999999\"", cap),
        ] {
            let d = parse_all(&[value]).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(d.options.max_age, Some(expected), "{value}");
        }
    }

    #[test]
    fn malformed_and_contradictory_directives_are_refused() {
        for bad in [
            &["max-age"][..],
            &["max-age="],
            &["max-age=+5"],
            &["max-age=1.5"],
            &["max-age=-1"],
            &["max-age=soon"],
            &["no-cache, only-if-cached"],
            &["stale-while-revalidate"],
            &["stale-while-revalidate=soon"],
            &["stale-if-error=-1"],
        ] {
            assert!(parse_all(bad).is_err(), "{bad:?}");
        }
    }
}
