//! API keys, tenants and admin rights.
//!
//! Keys come from a TOML file (`--api-keys-file`):
//!
//! ```toml
//! [[key]]
//! key = "sk-acme-0f3c…"      # the bearer token clients send
//! tenant = "acme"            # its namespace: tenants never share cache entries
//!
//! [[key]]
//! key = "sk-ops-9a1b…"
//! tenant = "ops"
//! admin = true               # may use /v1/cache/* admin routes and /metrics
//! ```
//!
//! With no file, every request is the tenant `default` with admin rights; the default bind
//! address is then loopback-only.
//!
//! Keys are held only as BLAKE3 hashes and compared in constant time (`subtle`) against
//! every configured key, so neither the position of a mismatch nor which key matched
//! shows in the timing. Keys are never logged; the `Debug` output shows only tenants.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::ConfigError;
use crate::error::ApiError;
use crate::state::AppState;

/// The tenant of requests when no keys are configured.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyLine {
    key: String,
    tenant: String,
    #[serde(default)]
    admin: bool,
}

struct Entry {
    hash: [u8; 32],
    caller: Caller,
}

/// The configured API keys.
pub struct ApiKeys {
    entries: Vec<Entry>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.caller))
            .finish()
    }
}

/// Who is calling: the tenant (the key namespace) and whether it may administer the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant.
    pub tenant: Arc<str>,
    /// Whether admin routes are allowed.
    pub admin: bool,
}

impl ApiKeys {
    /// No keys: no auth.
    pub fn none() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Keys from `(key, tenant, admin)` triples.
    ///
    /// # Errors
    /// An empty key or tenant, or a key given twice.
    pub fn new<'a>(
        keys: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
    ) -> Result<Self, ConfigError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, (key, tenant, admin)) in keys.into_iter().enumerate() {
            let reject = |reason: &str| ConfigError::Invalid {
                key: "api_keys_file",
                value: format!("key #{}", i + 1),
                reason: reason.to_owned(),
            };
            if key.trim().is_empty() || key.chars().any(char::is_whitespace) {
                return Err(reject("a key must be non-empty and contain no whitespace"));
            }
            if tenant.trim().is_empty() {
                return Err(reject("a tenant must be non-empty"));
            }
            let hash = *blake3::hash(key.as_bytes()).as_bytes();
            if entries.iter().any(|e| e.hash == hash) {
                return Err(reject("the same key is listed twice"));
            }
            entries.push(Entry {
                hash,
                caller: Caller {
                    tenant: tenant.into(),
                    admin,
                },
            });
        }
        Ok(Self { entries })
    }

    /// Parses a keys file's text (see the module docs).
    ///
    /// # Errors
    /// A TOML error (without the file's text) or an invalid entry.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: KeysFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // The message only: the parser's Display quotes the offending line, a key.
            reason: e.message().to_owned(),
        })?;
        Self::new(
            file.key
                .iter()
                .map(|k| (k.key.as_str(), k.tenant.as_str(), k.admin)),
        )
    }

    /// Reads a keys file.
    ///
    /// # Errors
    /// The file cannot be read or is invalid.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Whether auth is off.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The caller a bearer token identifies. Compares against every key, in constant time.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] for a missing or unknown token.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, ApiError> {
        if self.entries.is_empty() {
            return Ok(Caller {
                tenant: Arc::clone(&OPEN_TENANT),
                admin: true,
            });
        }
        let token = authorization
            .and_then(bearer_token)
            .ok_or(ApiError::Unauthorized)?;
        let presented = blake3::hash(token);
        let mut found: Option<&Entry> = None;
        for e in &self.entries {
            // No early exit: every key is compared whatever matched.
            if bool::from(e.hash.ct_eq(presented.as_bytes())) {
                found = Some(e);
            }
        }
        found
            .map(|e| e.caller.clone())
            .ok_or(ApiError::Unauthorized)
    }
}

/// [`DEFAULT_TENANT`], shared by every request of a server without keys.
static OPEN_TENANT: LazyLock<Arc<str>> = LazyLock::new(|| DEFAULT_TENANT.into());

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .keys()
            .authenticate(parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()))
    }
}

/// A caller with admin rights; extracting it answers 401 or 403 otherwise.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.admin {
            Ok(Self(caller))
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::from_toml(
            r#"
            [[key]]
            key = "sk-a"
            tenant = "a"
            [[key]]
            key = "sk-root"
            tenant = "ops"
            admin = true
            "#,
            Path::new("keys.toml"),
        )
        .unwrap()
    }

    #[test]
    fn bearer_tokens_map_to_tenants() {
        let k = keys();
        let a = k.authenticate(Some(b"Bearer sk-a")).unwrap();
        assert_eq!((&*a.tenant, a.admin), ("a", false));
        let root = k.authenticate(Some(b"bearer  sk-root ")).unwrap();
        assert_eq!((&*root.tenant, root.admin), ("ops", true));
        for bad in [
            None,
            Some(&b"Bearer"[..]),
            Some(b"Bearer "),
            Some(b"Basic sk-a"),
            Some(b"Bearer sk-b"),
            Some(b"sk-a"),
        ] {
            assert!(k.authenticate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_keys_means_one_admin_tenant() {
        let c = ApiKeys::none().authenticate(None).unwrap();
        assert_eq!((&*c.tenant, c.admin), (DEFAULT_TENANT, true));
    }

    #[test]
    fn bad_files_are_refused_without_echoing_keys() {
        for text in [
            "[[key]]\nkey = \"\"\ntenant = \"a\"",
            "[[key]]\nkey = \"sk-x\"\ntenant = \"\"",
            "[[key]]\nkey = \"sk-x\"\ntenant = \"a\"\n[[key]]\nkey = \"sk-x\"\ntenant = \"b\"",
            "[[key]]\nkey = \"sk-secret\"\ntenant = \"a\"\nadmn = true",
        ] {
            let e = ApiKeys::from_toml(text, Path::new("k.toml")).unwrap_err();
            assert!(!e.to_string().contains("sk-"), "{e}");
        }
    }

    #[test]
    fn debug_shows_no_key() {
        let shown = format!("{:?}", keys());
        assert!(!shown.contains("sk-"), "{shown}");
    }
}
