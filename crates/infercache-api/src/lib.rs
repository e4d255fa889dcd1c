//! The JSON bodies of infercache's HTTP API that both sides need: the server writes them
//! (`infercache-server`), the `infercache` command and other clients read them. One
//! definition each, so the two cannot drift apart.
//!
//! - [`ErrorBody`]: every error response, `{"error": {"message", "type", "param",
//!   "code"}}` (OpenAI's shape), with `model` and `upstream_status` when a model's
//!   upstream failed. Which status and code each failure gets is the server's one error
//!   mapping.
//! - [`WarmRequest`], [`WarmResponse`]: `POST /v1/cache/warm`.
//! - [`Scope`], [`Invalidated`]: `POST /v1/cache/invalidate`.
//! - [`RemovedEntry`]: `DELETE /v1/cache/entries/{key}`.
//! - [`stats::CacheStats`]: `GET /v1/cache/stats`.
//!
//! Light on purpose (serde only): a client depends on it without the server.

pub mod stats;

use serde::{Deserialize, Serialize};

pub use stats::CacheStats;

/// Every error response's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, in OpenAI's error shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A message for people; never internal details.
    pub message: String,
    /// OpenAI's error type: `invalid_request_error`, `authentication_error`,
    /// `permission_error`, `not_found_error`, `rate_limit_error`, `timeout_error`,
    /// `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is (`input[3]`, `model`).
    pub param: Option<String>,
    /// The stable machine-readable code (`model_not_found`, `upstream_timeout`, ...).
    pub code: String,
    /// The model whose upstream failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The upstream's HTTP status, when it answered with an error status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
}

/// The body of `POST /v1/cache/warm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmRequest {
    /// The texts to compute and store when missing.
    pub inputs: Vec<String>,
    /// The tenant whose entries they become. Default: the caller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The model, one whose inputs are texts. Default: the built-in model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// The answer of `POST /v1/cache/warm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmResponse {
    /// The tenant warmed.
    pub namespace: String,
    /// Inputs sent.
    pub inputs: usize,
    /// Inputs already cached.
    pub hits: usize,
    /// Inputs not cached: computed and stored, here or by a concurrent request.
    pub misses: usize,
    /// Of the misses, those a concurrent request computed.
    pub coalesced: usize,
}

/// What `POST /v1/cache/invalidate` invalidates: its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum Scope {
    /// Everything: `{"scope": "all"}`.
    All,
    /// One namespace (tenant): `{"scope": "namespace", "namespace"}`.
    Namespace {
        /// The namespace.
        namespace: String,
    },
    /// Every version of one model: `{"scope": "model", "model"}` (a name or an alias).
    Model {
        /// The model.
        model: String,
    },
    /// One version of one model: `{"scope": "version", "model", "version"}`.
    Version {
        /// The model.
        model: String,
        /// The version.
        version: String,
    },
}

/// The answer of `POST /v1/cache/invalidate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidated {
    /// What was invalidated, a model named by its name (not an alias).
    pub invalidated: Scope,
}

/// The answer of `DELETE /v1/cache/entries/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedEntry {
    /// Whether a tier held the entry (a key no tier holds is a 404, unless the removal is
    /// `pending`: then this node's tiers are what was checked).
    pub removed: bool,
    /// The entry's key, in hex.
    pub key: String,
    /// True (with status 202) when the shared tier was unreachable: the removal is
    /// replayed there before it is used again, and another node may serve the entry
    /// until then.
    #[serde(default)]
    pub pending: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_error_round_trips_and_other_errors_leave_its_fields_out() {
        let text = r#"{"error":{"message":"the upstream of model `sol` answered 500","type":"server_error","param":null,"code":"upstream_error","model":"sol","upstream_status":500}}"#;
        let body: ErrorBody = serde_json::from_str(text).unwrap();
        assert_eq!(body.error.upstream_status, Some(500));
        assert_eq!(serde_json::to_string(&body).unwrap(), text);
        let plain = ErrorBody {
            error: ErrorDetail {
                message: "m".into(),
                kind: "invalid_request_error".into(),
                param: Some("input".into()),
                code: "empty_input".into(),
                model: None,
                upstream_status: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"error":{"message":"m","type":"invalid_request_error","param":"input","code":"empty_input"}}"#
        );
    }

    #[test]
    fn scopes_read_and_write_as_tagged_objects() {
        let v: Scope =
            serde_json::from_str(r#"{"scope":"version","model":"m","version":"2"}"#).unwrap();
        assert_eq!(
            v,
            Scope::Version {
                model: "m".into(),
                version: "2".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Scope::All).unwrap(),
            r#"{"scope":"all"}"#
        );
        assert!(serde_json::from_str::<Scope>(r#"{"scope":"model"}"#).is_err());
    }

    #[test]
    fn a_warm_request_names_only_what_it_sets() {
        let r = WarmRequest {
            inputs: vec!["a".into()],
            namespace: None,
            model: None,
        };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"inputs":["a"]}"#);
    }
}
