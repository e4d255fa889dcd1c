//! Per-request `Cache-Control` directives.
//!
//! | directive | effect |
//! |---|---|
//! | `no-cache` | skip the lookup, compute, and overwrite the entry |
//! | `no-store` | serve hits as usual, but store nothing this request computes |
//! | `max-age=N` | accept only entries at most `N` seconds old; older ones are recomputed |
//! | `only-if-cached` | never compute: answer 504 if any input is not cached |
//!
//! Directives are case-insensitive and may come in one header or several. Unknown
//! directives are ignored, as HTTP requires; a malformed `max-age` and the contradictory
//! `no-cache, only-if-cached` are refused with 400.

use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::CACHE_CONTROL;
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
                    let secs: u64 = arg.and_then(|a| a.parse().ok()).ok_or_else(|| {
                        ApiError::InvalidCacheControl(format!(
                            "`{directive}`: max-age needs a whole number of seconds, e.g. max-age=3600"
                        ))
                    })?;
                    let age = Duration::from_secs(secs);
                    // Several max-age: the strictest wins.
                    d.options.max_age = Some(d.options.max_age.map_or(age, |m| m.min(age)));
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
    fn malformed_and_contradictory_directives_are_refused() {
        for bad in [
            &["max-age"][..],
            &["max-age=-1"],
            &["max-age=soon"],
            &["no-cache, only-if-cached"],
        ] {
            assert!(parse_all(bad).is_err(), "{bad:?}");
        }
    }
}
