//! Embedding texts through the cache: the one path every route takes.
//!
//! A request's texts become keys (tenant, model, version, weights digest, canonical text,
//! no parameters yet), and [`Cache::get_many_or_compute`] does the rest: per-item hits,
//! duplicates computed once, concurrent identical misses computed once, and one call of the
//! model for everything that is left, which the model's pool batches with other requests'
//! misses. Values are the model's output as little-endian `f32` bytes, verbatim.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use infercache_core::{CanonicalInput, Digest, Epochs, KeyParts};
use infercache_engine::{Cache, CacheKey, ComputeError, Lookup, Source};

use crate::cache_control::Directives;
use crate::embed::{Embed, EmbedError, ModelInfo};
use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome, Rejection};
use crate::state::AppState;

/// Canonical JSON of the output-affecting request parameters. None exist yet (the model
/// has one output); a future `dimensions` or `truncate` would be encoded here so that
/// different settings never share an entry.
const PARAMS: &[u8] = b"";

/// The embeddings of one request's texts and how each was served.
#[derive(Debug)]
pub struct Embedded {
    /// One value per input, in order: the model's output as little-endian `f32` bytes.
    pub vectors: Vec<Bytes>,
    /// Per input: whether a cache tier served it.
    pub hits: Vec<bool>,
    /// Inputs another request was computing, which this one waited for.
    pub coalesced: usize,
    /// Per input, its key; empty when the cache is disabled.
    pub keys: Vec<Digest>,
}

impl Embedded {
    /// Inputs a tier served.
    pub fn hit_count(&self) -> usize {
        self.hits.iter().filter(|h| **h).count()
    }

    /// Inputs no tier served (computed here or by a concurrent request).
    pub fn miss_count(&self) -> usize {
        self.hits.len() - self.hit_count()
    }

    /// Hit, miss or partial.
    pub fn outcome(&self) -> Outcome {
        Outcome::of(self.hit_count(), self.hits.len())
    }
}

/// The key of `text` for `tenant`.
pub fn key(cache: &Cache, model: &ModelInfo, tenant: &str, text: &str) -> CacheKey {
    let input = CanonicalInput::text(text);
    cache.key(KeyParts {
        namespace: tenant,
        model: &model.id,
        version: &model.version,
        artifact: model.artifact.as_deref(),
        epochs: Epochs::default(),
        input: &input,
        params: PARAMS,
    })
}

/// Embeds `texts` for `tenant`, through the cache unless it is disabled.
///
/// # Errors
/// [`ApiError::NotCached`] under `only-if-cached`, [`ApiError::Overloaded`] when the
/// model's queue is full, [`ApiError::Internal`] when the model fails.
pub async fn embed_texts(
    state: &AppState,
    tenant: &str,
    texts: &[String],
    directives: &Directives,
) -> Result<Embedded, ApiError> {
    let Some(cache) = state.cache() else {
        if directives.only_if_cached {
            return Err(ApiError::NotCached {
                misses: texts.len(),
                total: texts.len(),
            });
        }
        let vectors = infer(state.embedder(), state.metrics(), texts.to_vec())
            .await
            .map_err(|e| embed_error(state.metrics(), e))?;
        return Ok(Embedded {
            hits: vec![false; vectors.len()],
            vectors,
            coalesced: 0,
            keys: Vec::new(),
        });
    };
    let model = state.model();
    let keys: Vec<CacheKey> = texts.iter().map(|t| key(cache, model, tenant, t)).collect();
    let digests: Vec<Digest> = keys.iter().map(|k| *k.digest()).collect();

    if directives.only_if_cached {
        return only_if_cached(cache, &keys, directives, digests).await;
    }

    let text_of: HashMap<Digest, String> =
        digests.iter().copied().zip(texts.iter().cloned()).collect();
    // The lookup and the computation run as their own task: if this request times out or
    // its client goes away, the model's work still reaches the cache (and the requests
    // waiting on it), so a retry hits instead of starting over. The task is bounded by the
    // model's queue, which refuses work when full.
    let task_state = state.clone();
    let options = directives.options;
    let computation = tokio::spawn(async move {
        let cache = task_state
            .cache()
            .expect("checked above: the cache is enabled");
        let (embedder, metrics) = (task_state.embedder(), task_state.metrics());
        cache
            .get_many_or_compute(&keys, &options, |missing| {
                let batch: Vec<String> = missing
                    .iter()
                    .map(|k| {
                        text_of
                            .get(k.digest())
                            .expect("the engine computes only keys it was given (a bug otherwise)")
                            .clone()
                    })
                    .collect();
                infer(embedder, metrics, batch)
            })
            .await
    });
    let metrics = state.metrics();
    let fetched = computation
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| compute_error(metrics, &e))?;
    let coalesced = fetched
        .iter()
        .filter(|f| f.source == Source::Coalesced)
        .count();
    Ok(Embedded {
        hits: fetched.iter().map(|f| f.source.is_hit()).collect(),
        vectors: fetched.into_iter().map(|f| f.value).collect(),
        coalesced,
        keys: digests,
    })
}

/// Serves every input from the cache, or none: a single miss answers 504.
async fn only_if_cached(
    cache: &Cache,
    keys: &[CacheKey],
    directives: &Directives,
    digests: Vec<Digest>,
) -> Result<Embedded, ApiError> {
    let mut found: HashMap<Digest, Bytes> = HashMap::with_capacity(keys.len());
    let mut misses = 0;
    for k in keys {
        if found.contains_key(k.digest()) {
            continue;
        }
        match cache.get(k, &directives.options).await {
            Lookup::Hit(f) => {
                found.insert(*k.digest(), f.value);
            }
            Lookup::Miss => misses += 1,
        }
    }
    if misses > 0 {
        return Err(ApiError::NotCached {
            misses,
            total: keys.len(),
        });
    }
    Ok(Embedded {
        vectors: digests.iter().map(|d| found[d].clone()).collect(),
        hits: vec![true; keys.len()],
        coalesced: 0,
        keys: digests,
    })
}

/// One model call, timed, its output checked and encoded.
async fn infer(
    embedder: &dyn Embed,
    metrics: &Metrics,
    texts: Vec<String>,
) -> Result<Vec<Bytes>, EmbedError> {
    let n = texts.len();
    let dims = embedder.info().dims;
    let start = Instant::now();
    let vectors = embedder.embed(texts).await?;
    metrics.inference(start.elapsed(), n);
    if vectors.len() != n || vectors.iter().any(|v| v.len() != dims) {
        return Err(EmbedError::Failed(
            format!(
                "the model returned {} vectors for {n} texts, or vectors of other than {dims} values",
                vectors.len()
            )
            .into(),
        ));
    }
    Ok(vectors.iter().map(|v| encode(v)).collect())
}

fn embed_error(metrics: &Metrics, e: EmbedError) -> ApiError {
    match e {
        EmbedError::Overloaded => {
            metrics.rejected(Rejection::Overloaded);
            ApiError::Overloaded
        }
        e @ EmbedError::Failed(_) => ApiError::internal(e),
    }
}

fn compute_error(metrics: &Metrics, e: &ComputeError) -> ApiError {
    if let Some(EmbedError::Overloaded) = e.downcast_ref::<EmbedError>() {
        metrics.rejected(Rejection::Overloaded);
        return ApiError::Overloaded;
    }
    ApiError::internal(e.clone())
}

/// Little-endian `f32` bytes: the stored form, and what `encoding_format: base64` sends.
pub fn encode(v: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(out)
}

/// The inverse of [`encode`], checked against the model's dimensions.
///
/// # Errors
/// [`ApiError::Internal`] for a value of the wrong length (the key covers the model and
/// its weights, so this is a bug).
pub fn decode(bytes: &[u8], dims: usize) -> Result<Vec<f32>, ApiError> {
    check_len(bytes, dims)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Checks that `bytes` hold `dims` values.
///
/// # Errors
/// [`ApiError::Internal`] otherwise (a bug: keys cover the model and its weights).
pub fn check_len(bytes: &[u8], dims: usize) -> Result<(), ApiError> {
    if bytes.len() == dims * 4 {
        return Ok(());
    }
    Err(ApiError::internal(format!(
        "a cached value has {} bytes, expected {} (a bug)",
        bytes.len(),
        dims * 4
    )))
}

/// `v` scaled to unit length (a zero vector stays zero).
pub fn l2_normalize(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_and_checks_length() {
        let v = vec![0.5, -1.25, f32::MIN_POSITIVE, 3.0e7];
        let b = encode(&v);
        assert_eq!(&b[..4], &0.5f32.to_le_bytes());
        assert_eq!(decode(&b, 4).unwrap(), v);
        assert!(decode(&b, 3).is_err());
    }

    #[test]
    fn normalizing_gives_unit_length() {
        let v = l2_normalize(vec![3.0, 4.0]);
        assert_eq!(v, vec![0.6, 0.8]);
        assert_eq!(l2_normalize(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }
}
