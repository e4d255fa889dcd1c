//! `[[models]]`: the models a server serves, read from the TOML file and validated at
//! start-up.
//!
//! ```toml
//! [[models]]
//! name = "chemprop-solubility"  # what clients call it (routes and bodies)
//! backend = "ersilia"           # builtin | kserve-v2 | openai | tei | ersilia | http-json
//! url = "http://10.0.0.7:3000"  # the upstream: http:// or https://
//! version = "2024-06"           # part of every key: a new version never sees old entries
//! digest = "sha256:9f2c…"       # artifact digest: keyed in place of url and upstream_name
//! timeout = "10s"               # per upstream attempt [default: 30s]
//! ttl = "7d"                    # entries older than this are not served [default: the global ttl]
//! stale_if_error = "1d"         # serve an expired entry for this long when the upstream fails
//! stale_while_revalidate = "1m" # serve an expired entry at once for this long, refreshing it in the background
//! deterministic = true          # false: never cached [default: true]
//! params = ["temperature"]      # request parameters that change the output (keyed)
//! max_batch = 64                # most rows in one upstream request [default: no limit]
//! batched = false               # kserve-v2: dimension 0 is not a batch; cache whole requests [default: true]
//! binary_tensors = false        # kserve-v2: send JSON tensors, not binary [default: asked from GET {url}/v2]
//! retries = 2                   # retries of idempotent calls [default: 2]
//! upstream_name = "solubility"  # the name the upstream knows it by [default: name]
//! ca_file = "/etc/infercache/upstream-ca.pem"  # https://: CAs trusted on top of the system's [default: none]
//! ```
//!
//! A `ca_file` is checked here (it must be set on an `https://` model) and read when the
//! upstream clients are built at start-up, so a missing or unusable file stops the server
//! with an error naming the model and the file.
//!
//! A list of tables has no flag or environment form: models come from the file only. With
//! no `[[models]]`, the built-in embedder is served as before; with a list, only the models
//! it names are (the built-in one as `backend = "builtin"`).

use std::collections::HashSet;
use std::time::Duration;

use infercache_backend::{
    BUILTIN_ALIAS, BUILTIN_MODEL, BackendKind, DEFAULT_TIMEOUT, MAX_RETRIES, ModelConfig,
};
use serde::Deserialize;

use super::{ConfigError, Scalar, parse_duration};

/// One `[[models]]` table as written (the file is its only source); validated into a
/// [`ModelConfig`] by [`super::ServerConfig::from_args`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    name: Option<String>,
    backend: Option<String>,
    url: Option<String>,
    upstream_name: Option<String>,
    version: Option<String>,
    digest: Option<String>,
    timeout: Option<Scalar>,
    ttl: Option<Scalar>,
    stale_if_error: Option<Scalar>,
    stale_while_revalidate: Option<Scalar>,
    deterministic: Option<bool>,
    params: Option<Vec<String>>,
    max_batch: Option<usize>,
    batched: Option<bool>,
    binary_tensors: Option<bool>,
    retries: Option<u32>,
    ca_file: Option<std::path::PathBuf>,
}

/// Validates the `[[models]]` list: every field, unique names, and each model's timeout
/// against the request timeout.
pub(crate) fn validate(
    raw: Vec<RawModel>,
    request_timeout: Duration,
) -> Result<Vec<ModelConfig>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let model = validate_one(i, m, request_timeout)?;
        if !seen.insert(model.name.clone()) {
            return Err(model_error(
                i,
                &model.name,
                "name",
                "another model has this name",
            ));
        }
        out.push(model);
    }
    Ok(out)
}

fn validate_one(
    i: usize,
    m: RawModel,
    request_timeout: Duration,
) -> Result<ModelConfig, ConfigError> {
    let name = m
        .name
        .ok_or_else(|| model_error(i, "?", "name", "is required"))?;
    let err = |field: &str, reason: &str| model_error(i, &name, field, reason);
    if name.is_empty() || name.len() > 128 {
        return Err(err("name", "must have 1 to 128 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c))
    {
        return Err(err(
            "name",
            "may hold only ASCII letters, digits and . _ - : /",
        ));
    }
    let backend: BackendKind = m
        .backend
        .ok_or_else(|| err("backend", "is required"))?
        .parse()
        .map_err(|e: String| err("backend", &e))?;
    if backend.named_in_path() && name.contains('/') {
        return Err(err(
            "name",
            &format!(
                "a {backend} model is named in the URL path ({}), so its name cannot hold `/`",
                backend.route()
            ),
        ));
    }
    let duration = |field: &str, v: Option<Scalar>| -> Result<Option<Duration>, ConfigError> {
        v.map(|s| {
            let text = s.into_text();
            parse_duration(&text).map_err(|e| err(field, &format!("{text:?}: {e}")))
        })
        .transpose()
    };
    let mut model = ModelConfig::new(&name, backend, None);

    if backend == BackendKind::Builtin {
        if name != BUILTIN_MODEL && name != BUILTIN_ALIAS {
            return Err(err(
                "name",
                &format!("the built-in model is `{BUILTIN_MODEL}` (or `{BUILTIN_ALIAS}`)"),
            ));
        }
        let upstream_only = [
            ("url", m.url.is_some()),
            ("upstream_name", m.upstream_name.is_some()),
            ("version", m.version.is_some()),
            ("digest", m.digest.is_some()),
            ("timeout", m.timeout.is_some()),
            ("ttl", m.ttl.is_some()),
            ("stale_if_error", m.stale_if_error.is_some()),
            ("stale_while_revalidate", m.stale_while_revalidate.is_some()),
            ("deterministic", m.deterministic.is_some()),
            ("params", m.params.is_some()),
            ("max_batch", m.max_batch.is_some()),
            ("batched", m.batched.is_some()),
            ("binary_tensors", m.binary_tensors.is_some()),
            ("retries", m.retries.is_some()),
            ("ca_file", m.ca_file.is_some()),
        ];
        if let Some((field, _)) = upstream_only.iter().find(|(_, set)| *set) {
            return Err(err(
                field,
                "applies to upstream models only; the built-in model is configured by the \
                 top-level settings",
            ));
        }
        return Ok(model);
    }

    let url = m.url.ok_or_else(|| err("url", "is required"))?;
    let parsed = url::Url::parse(&url).map_err(|e| err("url", &format!("{url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err(
            "url",
            &format!("{url:?}: an upstream is http:// or https://"),
        ));
    }
    if let Some(ca_file) = m.ca_file {
        if parsed.scheme() != "https" {
            return Err(err(
                "ca_file",
                &format!("applies to https:// upstreams only, and {url:?} is not one"),
            ));
        }
        if ca_file.as_os_str().is_empty() {
            return Err(err("ca_file", "must not be empty (leave it out instead)"));
        }
        model.ca_file = Some(ca_file);
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(err(
            "url",
            &format!("{url:?}: give a base URL without ? or #"),
        ));
    }
    model.url = Some(url.trim_end_matches('/').to_owned());
    if let Some(upstream) = m.upstream_name {
        if upstream.is_empty() || upstream.contains(['/', '?', '#']) {
            return Err(err(
                "upstream_name",
                "must be non-empty and hold no / ? or #",
            ));
        }
        model.upstream_name = upstream;
    }
    if let Some(v) = m.version {
        if v.is_empty() {
            return Err(err("version", "must not be empty"));
        }
        model.version = v;
    }
    if let Some(d) = m.digest {
        if d.is_empty() {
            return Err(err("digest", "must not be empty (leave it out instead)"));
        }
        model.digest = Some(d);
    }
    if let Some(t) = duration("timeout", m.timeout)? {
        if t > request_timeout {
            return Err(err(
                "timeout",
                &format!(
                    "{t:?} exceeds request_timeout ({request_timeout:?}), which would cut the \
                     request off first"
                ),
            ));
        }
        model.timeout = t;
    } else {
        model.timeout = DEFAULT_TIMEOUT.min(request_timeout);
    }
    model.ttl = duration("ttl", m.ttl)?;
    model.stale_if_error = duration("stale_if_error", m.stale_if_error)?;
    model.stale_while_revalidate = duration("stale_while_revalidate", m.stale_while_revalidate)?;
    model.deterministic = m.deterministic.unwrap_or(true);
    if !model.deterministic
        && (model.ttl.is_some()
            || model.stale_if_error.is_some()
            || model.stale_while_revalidate.is_some())
    {
        return Err(err(
            "deterministic",
            "a model with deterministic = false is never cached, so ttl, stale_if_error \
             and stale_while_revalidate cannot apply; remove them",
        ));
    }
    if let Some(params) = m.params {
        let mut params: Vec<String> = params;
        if params.iter().any(String::is_empty) {
            return Err(err("params", "parameter names must not be empty"));
        }
        params.sort();
        if params.windows(2).any(|w| w[0] == w[1]) {
            return Err(err("params", "a parameter is named twice"));
        }
        model.params = Some(params);
    }
    if let Some(batched) = m.batched {
        if backend != BackendKind::KServeV2 {
            return Err(err(
                "batched",
                "applies to kserve-v2 models only (other protocols have rows of their own)",
            ));
        }
        if !batched && m.max_batch.is_some() {
            return Err(err(
                "max_batch",
                "a model with batched = false has no rows to batch",
            ));
        }
        model.batched = batched;
    }
    if let Some(binary) = m.binary_tensors {
        if backend != BackendKind::KServeV2 {
            return Err(err(
                "binary_tensors",
                "applies to kserve-v2 models only (Triton's binary tensor data extension)",
            ));
        }
        model.binary_tensors = Some(binary);
    }
    if let Some(b) = m.max_batch {
        if b == 0 {
            return Err(err("max_batch", "must be at least 1"));
        }
        model.max_batch = Some(b);
    }
    if let Some(r) = m.retries {
        if r > MAX_RETRIES {
            return Err(err("retries", &format!("must be at most {MAX_RETRIES}")));
        }
        model.retries = r;
    }
    Ok(model)
}

fn model_error(i: usize, name: &str, field: &str, reason: &str) -> ConfigError {
    ConfigError::Model {
        index: i,
        name: name.to_owned(),
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<ModelConfig>, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            models: Vec<RawModel>,
        }
        let f: File = toml::from_str(text).unwrap();
        validate(f.models, Duration::from_secs(30))
    }

    #[test]
    fn a_full_model_validates_with_defaults_filled_in() {
        let models = parse(
            r#"
            [[models]]
            name = "sol"
            backend = "http-json"
            url = "http://127.0.0.1:9000/predict/"
            version = "2"
            digest = "sha256:ab"
            ttl = "1h"
            stale_if_error = 600
            stale_while_revalidate = "30s"
            params = ["temperature", "seed"]
            max_batch = 16

            [[models]]
            name = "all-MiniLM-L6-v2"
            backend = "builtin"
            "#,
        )
        .unwrap();
        let m = &models[0];
        assert_eq!(m.url.as_deref(), Some("http://127.0.0.1:9000/predict"));
        assert_eq!(m.upstream_name, "sol");
        assert_eq!(m.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(m.stale_if_error, Some(Duration::from_secs(600)));
        assert_eq!(m.stale_while_revalidate, Some(Duration::from_secs(30)));
        assert_eq!(m.params.as_deref().unwrap(), ["seed", "temperature"]);
        assert_eq!(m.timeout, DEFAULT_TIMEOUT);
        assert_eq!(m.retries, infercache_backend::DEFAULT_RETRIES);
        assert!(m.deterministic);
        assert_eq!(models[1].backend, BackendKind::Builtin);
    }

    #[test]
    fn every_mistake_names_the_model_and_field() {
        let cases = [
            ("backend = \"http-json\"\nurl = \"http://x\"", "name"),
            (
                "name = \"a\"\nbackend = \"grpc\"\nurl = \"http://x\"",
                "backend",
            ),
            ("name = \"a\"\nbackend = \"tei\"", "url"),
            ("name = \"a\"\nbackend = \"tei\"\nurl = \"ftp://x\"", "url"),
            (
                "name = \"a\"\nbackend = \"tei\"\nurl = \"http://x\"\nca_file = \"/ca.pem\"",
                "ca_file",
            ),
            (
                "name = \"a\"\nbackend = \"tei\"\nurl = \"not a url\"",
                "url",
            ),
            (
                "name = \"a/b\"\nbackend = \"ersilia\"\nurl = \"http://x\"",
                "name",
            ),
            (
                "name = \"a b\"\nbackend = \"tei\"\nurl = \"http://x\"",
                "name",
            ),
            (
                "name = \"a\"\nbackend = \"tei\"\nurl = \"http://x\"\ntimeout = \"5m\"",
                "timeout",
            ),
            (
                "name = \"a\"\nbackend = \"tei\"\nurl = \"http://x\"\nttl = \"0s\"",
                "ttl",
            ),
            (
                "name = \"a\"\nbackend = \"tei\"\nurl = \"http://x\"\nmax_batch = 0",
                "max_batch",
            ),
            (
                "name = \"a\"\nbackend = \"tei\"\nurl = \"http://x\"\nbatched = false",
                "batched",
            ),
            (
                "name = \"a\"\nbackend = \"tei\"\nurl = \"http://x\"\nbinary_tensors = true",
                "binary_tensors",
            ),
            (
                "name = \"a\"\nbackend = \"kserve-v2\"\nurl = \"http://x\"\nbatched = false\nmax_batch = 4",
                "max_batch",
            ),
            (
                "name = \"a\"\nbackend = \"tei\"\nurl = \"http://x\"\nretries = 99",
                "retries",
            ),
            (
                "name = \"a\"\nbackend = \"tei\"\nurl = \"http://x\"\nparams = [\"t\", \"t\"]",
                "params",
            ),
            (
                "name = \"a\"\nbackend = \"tei\"\nurl = \"http://x\"\ndeterministic = false\nttl = \"1h\"",
                "deterministic",
            ),
            ("name = \"x\"\nbackend = \"builtin\"", "name"),
            (
                "name = \"all-MiniLM-L6-v2\"\nbackend = \"builtin\"\nurl = \"http://x\"",
                "url",
            ),
        ];
        for (body, field) in cases {
            let e = parse(&format!("[[models]]\n{body}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("models[0]"), "{e}");
            assert!(e.contains(&format!(".{field}")), "{body}: {e}");
        }
        let e = parse(
            "[[models]]\nname = \"a\"\nbackend = \"tei\"\nurl = \"http://x\"\n\
             [[models]]\nname = \"a\"\nbackend = \"openai\"\nurl = \"http://y\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("models[1]") && e.contains("another model"),
            "{e}"
        );
    }

    #[test]
    fn an_https_model_takes_a_ca_file() {
        let models = parse(
            "[[models]]\nname = \"a\"\nbackend = \"openai\"\nurl = \"https://x:8443\"\n\
             ca_file = \"/etc/ca.pem\"\n\
             [[models]]\nname = \"b\"\nbackend = \"tei\"\nurl = \"https://y\"",
        )
        .unwrap();
        assert_eq!(models[0].url.as_deref(), Some("https://x:8443"));
        assert_eq!(
            models[0].ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(models[1].ca_file, None);
    }

    #[test]
    fn unknown_model_keys_are_refused() {
        #[derive(Debug, Deserialize)]
        struct File {
            #[expect(dead_code, reason = "parsed only to be refused")]
            models: Vec<RawModel>,
        }
        assert!(
            toml::from_str::<File>("[[models]]\nname = \"a\"\nbackend = \"tei\"\nurll = \"x\"")
                .is_err()
        );
    }
}
