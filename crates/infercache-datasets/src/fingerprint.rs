//! Fingerprints: a BLAKE3 chain over a dataset's sources and each step's declaration.
//!
//! `link₀ = B3("sources" ‖ reader version ‖ each source's format and content BLAKE3)`,
//! `linkᵢ = B3(linkᵢ₋₁ ‖ step id ‖ declared version ‖ canonical parameters ‖ output
//! schema)`, every field length-prefixed so that no two declarations share an encoding.
//! Parameters are canonical JSON ([`infercache_core::canonical::canonical_json`], with
//! integral numbers written as integers): key
//! order never matters, `1` and `1.0` are one number, `1` and `"1"` are two. Only what a
//! step declares enters the chain: paths, modification times, shard size, thread count,
//! cache directory and prefetch depth never do.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::DatasetError;

/// The version of the source readers (JSON lines, CSV, Parquet, Arrow into Arrow
/// batches): bumped whenever they would read the same bytes into other rows.
pub const READER_VERSION: &str = "1";

/// A dataset's name in the cache: the last link of its chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Lower-case hex.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.hex())
    }
}

impl FromStr for Fingerprint {
    type Err = DatasetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0; 32];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|_| DatasetError::NotFound { name: s.to_owned() })?;
        Ok(Self(out))
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a step declares about itself: everything that can change its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDecl {
    /// The step's kind (`tokenize`, `embed`, `cmd`, or a custom id).
    pub id: String,
    /// Its declared version; bump it whenever its code would produce other bytes.
    pub version: String,
    /// Its parameters (canonicalized before hashing).
    pub params: Value,
    /// The fields it outputs (`name: type`), when they are known before it runs; `None`
    /// for a step whose schema follows from its output (an external command).
    pub output: Option<Vec<String>>,
}

/// One link of a fingerprint chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// `sources` for the first link, else the step's id.
    pub id: String,
    /// The reader version for the first link, else the step's declared version.
    pub version: String,
    /// Canonical parameters: for the first link, each source's format and digest.
    pub params: Value,
    /// The declared output fields, if any.
    pub output: Option<Vec<String>>,
    /// This link's fingerprint.
    pub fingerprint: Fingerprint,
}

/// One source's contribution to the first link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDigest {
    /// `jsonl`, `csv`, `parquet`, `arrow` or `memory`.
    pub format: String,
    /// BLAKE3 of its content, hex.
    pub blake3: String,
}

fn put(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// `value` with every integral number written as an integer: a step reads its parameters
/// as numbers, so `128` and `128.0` declare the same step (unlike a row sent upstream,
/// whose text the upstream sees).
fn integral(value: &Value) -> Value {
    /// Integers an f64 holds exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "integral and within ±2^53, so exact"
            )]
            Some(f) if f.fract() == 0.0 && f.abs() <= EXACT => Value::from(f as i64),
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(integral).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), integral(v))).collect())
        }
        _ => value.clone(),
    }
}

fn canonical(params: &Value) -> Result<Value, DatasetError> {
    let bytes = infercache_core::canonical::canonical_json(&integral(params)).map_err(|e| {
        DatasetError::InvalidStep {
            spec: params.to_string(),
            reason: e.to_string(),
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| DatasetError::InvalidStep {
        spec: params.to_string(),
        reason: e.to_string(),
    })
}

fn hash_link(prev: Option<&Fingerprint>, link: &Link) -> Result<Fingerprint, DatasetError> {
    let mut h = blake3::Hasher::new();
    put(&mut h, b"infercache-dataset-link-v1");
    match prev {
        Some(p) => put(&mut h, &p.0),
        None => put(&mut h, b""),
    }
    put(&mut h, link.id.as_bytes());
    put(&mut h, link.version.as_bytes());
    let params =
        infercache_core::canonical::canonical_json(&integral(&link.params)).map_err(|e| {
            DatasetError::InvalidStep {
                spec: link.id.clone(),
                reason: e.to_string(),
            }
        })?;
    put(&mut h, &params);
    match &link.output {
        None => put(&mut h, b"undeclared"),
        Some(fields) => {
            put(&mut h, b"declared");
            h.update(&(fields.len() as u64).to_le_bytes());
            for f in fields {
                put(&mut h, f.as_bytes());
            }
        }
    }
    Ok(Fingerprint(*h.finalize().as_bytes()))
}

/// The chain of a dataset: its sources, then each step in order. Fails for a step
/// without a version.
pub fn chain(sources: &[SourceDigest], steps: &[StepDecl]) -> Result<Vec<Link>, DatasetError> {
    let mut first = Link {
        id: "sources".to_owned(),
        version: READER_VERSION.to_owned(),
        params: serde_json::to_value(sources).expect("source digests serialize"),
        output: None,
        fingerprint: Fingerprint([0; 32]),
    };
    first.fingerprint = hash_link(None, &first)?;
    let mut links = vec![first];
    for step in steps {
        if step.version.trim().is_empty() {
            return Err(DatasetError::Unversioned {
                step: step.id.clone(),
            });
        }
        let prev = links
            .last()
            .expect("the chain has its first link")
            .fingerprint;
        let mut link = Link {
            id: step.id.clone(),
            version: step.version.clone(),
            params: canonical(&step.params)?,
            output: step.output.clone(),
            fingerprint: Fingerprint([0; 32]),
        };
        link.fingerprint = hash_link(Some(&prev), &link)?;
        links.push(link);
    }
    Ok(links)
}

/// Says in words why two chains differ: the first link that does, and how. Empty when
/// they are the same chain.
pub fn explain(a: &[Link], b: &[Link]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.fingerprint == y.fingerprint {
            continue;
        }
        let what = if i == 0 {
            "the sources".to_owned()
        } else {
            format!("step {i} (`{}`)", x.id)
        };
        if i == 0 {
            let xs = x.params.as_array().cloned().unwrap_or_default();
            let ys = y.params.as_array().cloned().unwrap_or_default();
            if xs.len() != ys.len() {
                out.push(format!(
                    "the sources differ: {} files vs {}",
                    xs.len(),
                    ys.len()
                ));
            }
            for (j, (s, t)) in xs.iter().zip(&ys).enumerate() {
                if s != t {
                    out.push(format!("source {} differs: {s} vs {t}", j + 1));
                }
            }
            if x.version != y.version {
                out.push(format!(
                    "the source reader version differs: {} vs {}",
                    x.version, y.version
                ));
            }
        } else {
            if x.id != y.id {
                out.push(format!("step {i} differs: `{}` vs `{}`", x.id, y.id));
            }
            if x.version != y.version {
                out.push(format!("{what}: version {} vs {}", x.version, y.version));
            }
            if x.params != y.params {
                out.extend(param_diffs(&what, &x.params, &y.params));
            }
            if x.output != y.output {
                out.push(format!(
                    "{what}: output schema {:?} vs {:?}",
                    x.output, y.output
                ));
            }
        }
        if out.is_empty() {
            out.push(format!("{what} differs"));
        }
        // Every later link differs because this one does.
        return out;
    }
    if a.len() != b.len() {
        out.push(format!(
            "one has {} steps, the other {}",
            a.len().saturating_sub(1),
            b.len().saturating_sub(1)
        ));
    }
    out
}

fn param_diffs(what: &str, x: &Value, y: &Value) -> Vec<String> {
    let (Some(xo), Some(yo)) = (x.as_object(), y.as_object()) else {
        return vec![format!("{what}: parameters {x} vs {y}")];
    };
    let mut keys: Vec<&String> = xo.keys().chain(yo.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| xo.get(*k) != yo.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| v.map_or("(absent)".to_owned(), Value::to_string);
            format!(
                "{what}: parameter `{k}` is {} vs {}",
                show(xo.get(k)),
                show(yo.get(k))
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn src() -> Vec<SourceDigest> {
        vec![SourceDigest {
            format: "jsonl".into(),
            blake3: "ab".repeat(32),
        }]
    }

    fn step(params: Value) -> StepDecl {
        StepDecl {
            id: "tokenize".into(),
            version: "1".into(),
            params,
            output: Some(vec!["input_ids: List(UInt32)".into()]),
        }
    }

    #[test]
    fn key_order_and_number_spelling_do_not_matter() {
        let a = chain(&src(), &[step(json!({"a": 1, "b": 2.0}))]).unwrap();
        let b = chain(&src(), &[step(json!({"b": 2, "a": 1.0}))]).unwrap();
        assert_eq!(a.last().unwrap().fingerprint, b.last().unwrap().fingerprint);
        assert!(explain(&a, &b).is_empty());
    }

    #[test]
    fn explain_names_the_parameter() {
        let a = chain(&src(), &[step(json!({"max_len": 128}))]).unwrap();
        let b = chain(&src(), &[step(json!({"max_len": "128"}))]).unwrap();
        assert_ne!(a[1].fingerprint, b[1].fingerprint);
        let why = explain(&a, &b);
        assert_eq!(
            why,
            ["step 1 (`tokenize`): parameter `max_len` is 128 vs \"128\""]
        );
    }

    #[test]
    fn a_step_without_a_version_is_refused() {
        let mut s = step(json!({}));
        s.version = " ".into();
        assert!(matches!(
            chain(&src(), &[s]),
            Err(DatasetError::Unversioned { .. })
        ));
    }
}
