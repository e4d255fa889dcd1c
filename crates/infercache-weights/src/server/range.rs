//! `Range: bytes=...` (RFC 9110 §14), one range per request.
//!
//! Written here because the header is a few lines of grammar and the crates that parse
//! it come with a file server this crate does not use (its bodies come from the cache).

/// What a `Range` header asks for, against a body of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeRequest {
    /// The whole body (no header, an `If-Range` that does not match, or several ranges,
    /// which a server may answer whole).
    Full,
    /// Bytes `start ..= end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
}

/// A `Range` header that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RangeError {
    /// Not `bytes=first-last`, `bytes=first-` or `bytes=-suffix`.
    #[error("the Range header {0:?} is not bytes=first-last, bytes=first- or bytes=-suffix")]
    Malformed(String),
    /// Starts past the end of the body.
    #[error("the range starts past the end of the {0}-byte body")]
    Unsatisfiable(u64),
}

/// Parses `header` for a body of `len` bytes.
pub(crate) fn parse(header: &str, len: u64) -> Result<RangeRequest, RangeError> {
    let malformed = || RangeError::Malformed(header.chars().take(100).collect());
    let spec = header
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(malformed)?
        .trim();
    if spec.contains(',') {
        return Ok(RangeRequest::Full);
    }
    let (first, last) = spec.split_once('-').ok_or_else(malformed)?;
    let number = |s: &str| -> Result<u64, RangeError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        s.parse().map_err(|_| malformed())
    };
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n = number(suffix)?;
            if n == 0 || len == 0 {
                return Err(RangeError::Unsatisfiable(len));
            }
            (len.saturating_sub(n), len - 1)
        }
        (first, "") => (number(first)?, len.saturating_sub(1)),
        (first, last) => {
            let (s, e) = (number(first)?, number(last)?);
            if e < s {
                return Err(malformed());
            }
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len {
        return Err(RangeError::Unsatisfiable(len));
    }
    Ok(RangeRequest::Partial { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(start: u64, end: u64) -> Result<RangeRequest, RangeError> {
        Ok(RangeRequest::Partial { start, end })
    }

    #[test]
    fn forms() {
        assert_eq!(parse("bytes=0-9", 100), p(0, 9));
        assert_eq!(parse("bytes=90-", 100), p(90, 99));
        assert_eq!(parse("bytes=-10", 100), p(90, 99));
        assert_eq!(parse("bytes=-1000", 100), p(0, 99));
        assert_eq!(parse("bytes=50-1000", 100), p(50, 99));
        assert_eq!(parse(" bytes= 1-2 ", 100), p(1, 2));
        assert_eq!(parse("bytes=0-1,5-6", 100), Ok(RangeRequest::Full));
    }

    #[test]
    fn refusals() {
        for bad in [
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=+1-2",
            "0-1",
        ] {
            assert!(
                matches!(parse(bad, 100), Err(RangeError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse("bytes=100-", 100),
            Err(RangeError::Unsatisfiable(100))
        );
        assert_eq!(parse("bytes=-0", 100), Err(RangeError::Unsatisfiable(100)));
        assert_eq!(parse("bytes=0-0", 0), Err(RangeError::Unsatisfiable(0)));
    }
}
