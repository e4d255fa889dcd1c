//! A model's identity and the protocol it speaks.

use std::fmt;

/// The built-in embedder's name: what clients call it and the model name in its keys.
/// Known here so that a server built without the model can still name it (a 404 for
/// `/v1/embed` says which model is not served).
pub const BUILTIN_MODEL: &str = "all-MiniLM-L6-v2";

/// The built-in embedder's other name (its Hugging Face hub id).
pub const BUILTIN_ALIAS: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// What the cache knows about a model: what clients call it and what goes into its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name clients use and responses report; the model name of every key.
    pub name: String,
    /// Other names accepted for it (`sentence-transformers/all-MiniLM-L6-v2`). A name
    /// another model is configured under always means that model.
    pub aliases: Vec<String>,
    /// The protocol it speaks, and so the routes that serve it.
    pub kind: BackendKind,
    /// The model version; part of every key.
    pub version: String,
    /// The artifact's digest (`sha256:…`), as configured or known.
    pub digest: Option<String>,
    /// An upstream model's identity ([`ModelConfig::artifact_key`](crate::ModelConfig::artifact_key):
    /// its protocol with its `digest`, else with its server and upstream name), keyed in
    /// place of `digest`; `None` for a model run in this process.
    pub upstream: Option<String>,
    /// Values of one embedding, when the model is known to produce embeddings of one
    /// size (a stored value of another length is refused); `None`: not known.
    pub dims: Option<usize>,
}

impl ModelInfo {
    /// The artifact part of every key of the model: its upstream's identity, else its
    /// digest.
    pub fn key_artifact(&self) -> Option<&str> {
        self.upstream.as_deref().or(self.digest.as_deref())
    }

    /// Whether `name` is this model's name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }
}

/// Which protocol a model speaks: the built-in embedder or an upstream's, and so which
/// client routes serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The built-in embedder, run in this process.
    Builtin,
    /// KServe v2 / Triton HTTP: `POST {url}/v2/models/{name}/infer`.
    KServeV2,
    /// OpenAI-compatible embeddings: `POST {url}/v1/embeddings`.
    OpenAi,
    /// Text Embeddings Inference: `POST {url}/embed` with `{"inputs": [...]}`.
    Tei,
    /// Ersilia model server: `POST {url}/run` with a JSON array of inputs.
    Ersilia,
    /// Plain JSON: `POST {url}` with `{"inputs": [...]}`, answering `{"outputs": [...]}`.
    HttpJson,
}

impl BackendKind {
    /// Every kind.
    pub const ALL: [BackendKind; 6] = [
        Self::Builtin,
        Self::KServeV2,
        Self::OpenAi,
        Self::Tei,
        Self::Ersilia,
        Self::HttpJson,
    ];

    /// The name used in the config file (`backend = "tei"`) and in `GET /v1/models`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::KServeV2 => "kserve-v2",
            Self::OpenAi => "openai",
            Self::Tei => "tei",
            Self::Ersilia => "ersilia",
            Self::HttpJson => "http-json",
        }
    }

    /// The client route that serves models of this kind.
    pub fn route(self) -> &'static str {
        match self {
            Self::Builtin | Self::OpenAi | Self::Tei => "POST /v1/embeddings",
            Self::KServeV2 => "POST /v2/models/{name}/infer",
            Self::Ersilia => "POST /v1/models/{name}/run",
            Self::HttpJson => "POST /v1/models/{name}/predict",
        }
    }

    /// Whether clients address the model in the URL path (so its name cannot hold `/`).
    pub fn named_in_path(self) -> bool {
        matches!(self, Self::KServeV2 | Self::Ersilia | Self::HttpJson)
    }

    /// Whether the model runs in this process (no upstream, no call timeout of its own).
    pub fn in_process(self) -> bool {
        self == Self::Builtin
    }
}

impl serde::Serialize for BackendKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "builtin" => Self::Builtin,
            "kserve-v2" => Self::KServeV2,
            "openai" => Self::OpenAi,
            "tei" => Self::Tei,
            "ersilia" => Self::Ersilia,
            "http-json" => Self::HttpJson,
            other => {
                return Err(format!(
                    "unknown backend {other:?}; use builtin, kserve-v2, openai, tei, ersilia or http-json"
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in BackendKind::ALL {
            assert_eq!(kind.as_str().parse::<BackendKind>(), Ok(kind));
        }
        let e = "grpc".parse::<BackendKind>().unwrap_err();
        assert!(e.contains("kserve-v2"), "{e}");
    }
}
