//! The registry: every model a server serves, the built-in embedder included, by name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use infercache_backend::{Backend, BackendKind, ModelConfig, ModelInfo};
use infercache_engine::FreshnessPolicy;

/// How the cache treats one model's rows. Each field documents its default, which is
/// also the built-in model's setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    /// Entries older than this are not served fresh: the model's `ttl`, else the global
    /// one. Default: none (the cache's own default TTL applies when storing).
    pub ttl: Option<Duration>,
    /// How long past its freshness an entry is still served when the model fails.
    /// Default: none.
    pub stale_if_error: Option<Duration>,
    /// How long past its freshness an entry is still served at once, while it is
    /// recomputed in the background. Default: none.
    pub stale_while_revalidate: Option<Duration>,
    /// Whether outputs are cached at all; `false` sends every row, repeats included, to
    /// the model. Default: true.
    pub deterministic: bool,
    /// The request parameters that change the output (only these are keyed); `None`:
    /// every one is. Default: none.
    pub params: Option<Vec<String>>,
    /// Most rows in one backend call. Default: no limit.
    pub max_batch: Option<usize>,
    /// Whether a request's rows are entries of their own; false (a `kserve-v2` model
    /// with `batched = false`, whose dimension 0 is not a batch): a whole request is one
    /// entry. Default: true.
    pub batched: bool,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            ttl: None,
            stale_if_error: None,
            stale_while_revalidate: None,
            deterministic: true,
            params: None,
            max_batch: None,
            batched: true,
        }
    }
}

impl CachePolicy {
    /// The built-in model's policy, every field at its default: cached, no parameters,
    /// no limit of its own.
    pub fn builtin() -> Self {
        Self::default()
    }

    /// The policy of a configured model; `default_ttl` is the global `ttl`, for models
    /// that set none.
    pub fn of(config: &ModelConfig, default_ttl: Option<Duration>) -> Self {
        Self {
            ttl: config.ttl.or(default_ttl),
            stale_if_error: config.stale_if_error,
            stale_while_revalidate: config.stale_while_revalidate,
            deterministic: config.deterministic,
            params: config.params.clone(),
            max_batch: config.max_batch,
            batched: config.batched,
        }
    }

    /// The freshness rule the cache applies to the model's entries (registered per model
    /// name in the engine's `CacheConfig::policies`): fresh for `ttl`, then served stale
    /// within the two windows, each judged by the engine on every read from every tier.
    pub fn freshness(&self) -> FreshnessPolicy {
        FreshnessPolicy {
            ttl: self.ttl,
            stale_if_error: self.stale_if_error.unwrap_or_default(),
            stale_while_revalidate: self.stale_while_revalidate.unwrap_or_default(),
        }
    }
}

/// One entry of the registry: a backend and how its rows are cached.
#[derive(Debug)]
pub struct Model {
    backend: Arc<dyn Backend>,
    policy: CachePolicy,
    index: usize,
}

impl Model {
    /// The model's name (what clients call it, and the model of its keys).
    pub fn name(&self) -> &str {
        &self.backend.info().name
    }

    /// Its identity.
    pub fn info(&self) -> &ModelInfo {
        self.backend.info()
    }

    /// The protocol it speaks.
    pub fn kind(&self) -> BackendKind {
        self.backend.info().kind
    }

    /// Its backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// How its rows are cached.
    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// Its position in the registry (listing order), from 0: a stable index for handles
    /// resolved once per model, such as metrics.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// Why a name does not resolve on a route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No model has this name or alias.
    #[error("model `{requested}` does not exist; this server serves `{served}`")]
    Unknown {
        /// What was asked for.
        requested: String,
        /// What is served, joined by "`, `".
        served: String,
    },
    /// The model speaks another protocol.
    #[error("model `{model}` is a {kind} model; use {}", kind.route())]
    WrongRoute {
        /// The model.
        model: String,
        /// Its kind.
        kind: BackendKind,
    },
}

/// A configuration serves the built-in model, and none was given (or the build has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the configuration serves the built-in model, which this build or caller does not provide")]
pub struct NoBuiltinModel;

/// Whether a validated `[[models]]` list serves the built-in model (an empty list does).
pub fn serves_builtin(configs: &[ModelConfig]) -> bool {
    configs.is_empty() || configs.iter().any(|c| c.backend == BackendKind::Builtin)
}

/// Every model a server serves, by name. Cheap to clone.
///
/// A name resolves to the model configured under it; only a name no model has is tried
/// as an alias (the built-in model's hub id): a configured model's name always means
/// that model.
#[derive(Debug, Clone)]
pub struct Models {
    inner: Arc<Registry>,
}

#[derive(Debug)]
struct Registry {
    /// In listing order (the configuration's).
    models: Vec<Arc<Model>>,
    by_name: HashMap<String, usize>,
    by_alias: HashMap<String, usize>,
}

impl Models {
    /// A registry of `entries`, in listing order.
    ///
    /// # Panics
    /// When two entries share a name: the configuration refuses that first (a bug
    /// otherwise).
    pub fn new(entries: impl IntoIterator<Item = (Arc<dyn Backend>, CachePolicy)>) -> Self {
        let models: Vec<Arc<Model>> = entries
            .into_iter()
            .enumerate()
            .map(|(index, (backend, policy))| {
                Arc::new(Model {
                    backend,
                    policy,
                    index,
                })
            })
            .collect();
        let mut by_name = HashMap::with_capacity(models.len());
        let mut by_alias = HashMap::new();
        for m in &models {
            let previous = by_name.insert(m.name().to_owned(), m.index);
            assert!(
                previous.is_none(),
                "two models are named `{}` (the configuration refuses this; a bug otherwise)",
                m.name()
            );
            for alias in &m.info().aliases {
                by_alias.entry(alias.clone()).or_insert(m.index);
            }
        }
        Self {
            inner: Arc::new(Registry {
                models,
                by_name,
                by_alias,
            }),
        }
    }

    /// The registry of a validated `[[models]]` list, in its order: `builtin` for the
    /// built-in model, `upstream(config)` for every other one, each with its
    /// [`CachePolicy::of`]. An empty list serves the built-in model alone. `default_ttl`
    /// is the global `ttl`, for models that set none.
    ///
    /// # Errors
    /// [`NoBuiltinModel`] when the list serves the built-in model and `builtin` is `None`.
    pub fn configured(
        configs: &[ModelConfig],
        default_ttl: Option<Duration>,
        builtin: Option<Arc<dyn Backend>>,
        mut upstream: impl FnMut(&ModelConfig) -> Arc<dyn Backend>,
    ) -> Result<Self, NoBuiltinModel> {
        let builtin_entry = || {
            builtin
                .clone()
                .map(|b| (b, CachePolicy::builtin()))
                .ok_or(NoBuiltinModel)
        };
        if configs.is_empty() {
            return Ok(Self::new([builtin_entry()?]));
        }
        let entries = configs
            .iter()
            .map(|c| match c.backend {
                BackendKind::Builtin => builtin_entry(),
                _ => Ok((upstream(c), CachePolicy::of(c, default_ttl))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(entries))
    }

    /// Each model's freshness rule, by name: what the engine's `CacheConfig::policies`
    /// needs to judge every entry of every model.
    pub fn freshness(&self) -> HashMap<String, FreshnessPolicy> {
        self.iter()
            .map(|m| (m.name().to_owned(), m.policy().freshness()))
            .collect()
    }

    /// The model `name` names: by name, else by alias.
    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        let r = &self.inner;
        r.by_name
            .get(name)
            .or_else(|| r.by_alias.get(name))
            .map(|&i| &r.models[i])
    }

    /// The model `name` names, which must be of one of `kinds` (the protocols of the
    /// route asking).
    ///
    /// # Errors
    /// [`ResolveError::Unknown`] naming what is served; [`ResolveError::WrongRoute`] for
    /// a model of another protocol.
    pub fn resolve(&self, name: &str, kinds: &[BackendKind]) -> Result<Arc<Model>, ResolveError> {
        match self.get(name) {
            Some(m) if kinds.contains(&m.kind()) => Ok(Arc::clone(m)),
            Some(m) => Err(ResolveError::WrongRoute {
                model: name.to_owned(),
                kind: m.kind(),
            }),
            None => Err(ResolveError::Unknown {
                requested: name.to_owned(),
                served: self.served(),
            }),
        }
    }

    /// Every model, in listing order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.inner.models.iter()
    }

    /// How many models.
    pub fn len(&self) -> usize {
        self.inner.models.len()
    }

    /// Whether none is served.
    pub fn is_empty(&self) -> bool {
        self.inner.models.is_empty()
    }

    /// The names served, for messages: models run in this process first, then the
    /// others by name.
    fn served(&self) -> String {
        let mut names: Vec<(bool, &str)> = self
            .iter()
            .map(|m| (!m.kind().in_process(), m.name()))
            .collect();
        names.sort_unstable();
        names
            .into_iter()
            .map(|(_, n)| n)
            .collect::<Vec<_>>()
            .join("`, `")
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use infercache_backend::{BackendError, BackendStats, BoxFuture, CallStats, Inputs};

    use super::*;

    #[derive(Debug)]
    struct Named(ModelInfo);

    impl Backend for Named {
        fn info(&self) -> &ModelInfo {
            &self.0
        }

        fn compute<'a>(
            &'a self,
            _inputs: &'a Inputs,
            _rows: &'a [usize],
        ) -> BoxFuture<'a, Result<Vec<Bytes>, BackendError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn stats(&self) -> BackendStats {
            BackendStats::Upstream(CallStats::default())
        }
    }

    fn entry(name: &str, kind: BackendKind, aliases: &[&str]) -> (Arc<dyn Backend>, CachePolicy) {
        let info = ModelInfo {
            name: name.into(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
            kind,
            version: "1".into(),
            digest: None,
            dims: None,
            upstream: None,
        };
        (Arc::new(Named(info)), CachePolicy::default())
    }

    #[test]
    fn a_configured_name_beats_another_models_alias() {
        let models = Models::new([
            entry(
                "all-MiniLM-L6-v2",
                BackendKind::Builtin,
                &["hub/all-MiniLM-L6-v2"],
            ),
            entry("hub/all-MiniLM-L6-v2", BackendKind::Tei, &[]),
        ]);
        assert_eq!(
            models.get("hub/all-MiniLM-L6-v2").unwrap().kind(),
            BackendKind::Tei
        );
        assert_eq!(models.get("all-MiniLM-L6-v2").unwrap().index(), 0);
    }

    #[test]
    fn names_resolve_by_route_and_unknown_ones_list_what_is_served() {
        let models = Models::new([
            entry("zeta", BackendKind::HttpJson, &[]),
            entry("builtin", BackendKind::Builtin, &["alias"]),
            entry("alpha", BackendKind::KServeV2, &[]),
        ]);
        let m = models.resolve("alias", &[BackendKind::Builtin]).unwrap();
        assert_eq!(m.name(), "builtin");
        assert_eq!(
            models.resolve("zeta", &[BackendKind::Builtin]).unwrap_err(),
            ResolveError::WrongRoute {
                model: "zeta".into(),
                kind: BackendKind::HttpJson
            }
        );
        let e = models.resolve("nope", &BackendKind::ALL).unwrap_err();
        assert_eq!(
            e.to_string(),
            "model `nope` does not exist; this server serves `builtin`, `alpha`, `zeta`"
        );
        let listed: Vec<&str> = models.iter().map(|m| m.name()).collect();
        assert_eq!(listed, ["zeta", "builtin", "alpha"]);
    }

    #[test]
    fn a_configured_list_keeps_its_order_and_needs_a_builtin_to_serve_one() {
        let configs = [
            ModelConfig::new("up", BackendKind::HttpJson, Some("http://x")),
            ModelConfig::new("all-MiniLM-L6-v2", BackendKind::Builtin, None),
        ];
        let upstream = |c: &ModelConfig| entry(&c.name, c.backend, &[]).0;
        assert_eq!(
            Models::configured(&configs, None, None, upstream).unwrap_err(),
            NoBuiltinModel
        );
        let (builtin, _) = entry("all-MiniLM-L6-v2", BackendKind::Builtin, &[]);
        let ttl = Some(Duration::from_secs(5));
        let models = Models::configured(&configs, ttl, Some(builtin), upstream).unwrap();
        let listed: Vec<(&str, Option<Duration>)> =
            models.iter().map(|m| (m.name(), m.policy().ttl)).collect();
        assert_eq!(listed, [("up", ttl), ("all-MiniLM-L6-v2", None)]);
        assert!(serves_builtin(&configs) && serves_builtin(&[]));
        assert!(!serves_builtin(&configs[..1]));
    }

    #[test]
    fn each_models_freshness_is_its_ttl_and_windows() {
        let mut config = ModelConfig::new("up", BackendKind::HttpJson, Some("http://x"));
        config.stale_if_error = Some(Duration::from_secs(30));
        config.stale_while_revalidate = Some(Duration::from_secs(5));
        let upstream = |c: &ModelConfig| entry(&c.name, c.backend, &[]).0;
        let (builtin, _) = entry("all-MiniLM-L6-v2", BackendKind::Builtin, &[]);
        let configs = [
            config,
            ModelConfig::new("all-MiniLM-L6-v2", BackendKind::Builtin, None),
        ];
        let ttl = Some(Duration::from_secs(60));
        let models = Models::configured(&configs, ttl, Some(builtin), upstream).unwrap();
        let policies = models.freshness();
        assert_eq!(
            policies["up"],
            FreshnessPolicy {
                ttl,
                stale_if_error: Duration::from_secs(30),
                stale_while_revalidate: Duration::from_secs(5),
            }
        );
        assert_eq!(policies["up"].keep_for(), Some(Duration::from_secs(90)));
        assert_eq!(policies["all-MiniLM-L6-v2"], FreshnessPolicy::default());
    }
}
