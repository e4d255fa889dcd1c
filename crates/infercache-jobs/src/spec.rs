//! [`JobSpec`] and [`JobId`]: what makes two runs the same job.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::format::Format;

/// The version of how a job's identity, journal and row identities are derived. A change
/// here makes every earlier job a different one rather than a misread one.
pub const KEY_SCHEME: u32 = 1;

/// Everything that decides a job's outputs: the input's digest, how it is read, the model
/// and its version and artifact digest, the tenant whose entries are used, and the
/// output-affecting parameters. Two runs with equal specs are the same job; anything else
/// (batch size, concurrency, paths) may change between attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// BLAKE3 of the input file's bytes, hex.
    pub input_digest: String,
    /// How the input is read and the output written.
    pub format: Format,
    /// The CSV input column, when one was named.
    pub column: Option<String>,
    /// The model's name.
    pub model: String,
    /// Its protocol (`builtin`, `openai`, ...).
    pub backend: String,
    /// Its version.
    pub version: String,
    /// Its artifact digest, when it has one.
    pub digest: Option<String>,
    /// The tenant (namespace) whose cache entries the job reads and writes.
    pub tenant: String,
    /// The parameters sent with every row (plain JSON models).
    pub parameters: Option<Map<String, Value>>,
    /// [`KEY_SCHEME`] when the job was made.
    pub key_scheme: u32,
}

/// A job's id: the first 128 bits of BLAKE3 over its spec, hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    /// The id as text (32 hex digits), also the name of the job's directory.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JobSpec {
    /// The job's id.
    pub fn id(&self) -> JobId {
        let text = serde_json::to_vec(self).expect("a spec always serializes");
        let hash = blake3::hash(&text);
        JobId(hash.to_hex()[..32].to_owned())
    }

    /// Each field that differs from `other`, as `field: OLD -> NEW` (`self` is the old).
    pub fn diff(&self, new: &Self) -> Vec<String> {
        let (old, new) = (
            serde_json::to_value(self).expect("a spec always serializes"),
            serde_json::to_value(new).expect("a spec always serializes"),
        );
        let (Value::Object(old), Value::Object(new)) = (old, new) else {
            unreachable!("a spec serializes as an object")
        };
        old.iter()
            .filter_map(|(field, was)| {
                let now = new.get(field).unwrap_or(&Value::Null);
                (was != now).then(|| format!("{field}: {was} -> {now}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            input_digest: "ab".into(),
            format: Format::Jsonl,
            column: None,
            model: "m".into(),
            backend: "http-json".into(),
            version: "1".into(),
            digest: None,
            tenant: "default".into(),
            parameters: None,
            key_scheme: KEY_SCHEME,
        }
    }

    #[test]
    fn every_field_changes_the_id_and_shows_in_the_diff() {
        let base = spec();
        let mut changed = base.clone();
        changed.version = "2".into();
        assert_ne!(base.id(), changed.id());
        assert_eq!(base.diff(&changed), [r#"version: "1" -> "2""#]);
        let mut params = base.clone();
        params.parameters = Some(Map::from_iter([("t".to_owned(), Value::from(1))]));
        assert_ne!(base.id(), params.id());
        assert_eq!(base.diff(&params), [r#"parameters: null -> {"t":1}"#]);
        assert_eq!(base.id(), spec().id());
        assert_eq!(base.id().as_str().len(), 32);
        assert!(base.diff(&spec()).is_empty());
    }
}
