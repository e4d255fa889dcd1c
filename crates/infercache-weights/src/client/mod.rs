//! The streaming client: a model run layer by layer from a weight server, with no local
//! copy of its weights.
//!
//! [`StreamingModel::connect`] reads the model's manifest, its `config.json` and
//! `tokenizer.json`, and its embeddings chunk; [`StreamingModel::embed`] runs the
//! embeddings, then each layer, then pooling, fetching each layer the cache lacks.
//!
//! # The layer cache
//!
//! Built layers are kept by count (`cache_size`, the seed's `cache_size=3`), least
//! recently used first out, optionally also bounded by their tensor bytes. A prefetched
//! layer is kept until its first use: a demanded layer that could only be cached by
//! pushing one out is handed to its forward pass without being cached.
//! [`StreamingModel::set_cache_size`] evicts down to the new size at once. The embeddings
//! stay resident (every forward pass needs them).
//!
//! # Prefetch and single flight
//!
//! While layer `i` runs, layers `i+1 ..= i+prefetch` (default 1, at most `cache_size`)
//! that are neither cached nor in flight are fetched in the background. Every fetch of a
//! layer, demanded, prefetched or warmed up, goes through one in-flight table: a layer is
//! never fetched twice at once, and a forward pass that needs a layer being prefetched
//! waits for that fetch. A fetch runs in its own task, so it completes (and fills the
//! cache) even if the caller that started it goes away.
//!
//! # Integrity
//!
//! Every chunk and file is checked against the manifest's size and SHA-256 before it is
//! used ([`fetch`]). Any failure is a [`ClientError`] naming the chunk, returned to every
//! caller waiting on it and never cached: nothing falls back to a layer that was not
//! fetched and verified.
//!
//! # The disk tier
//!
//! With [`ClientConfig::disk`], chunks are also kept on local disk ([`disk`]) on
//! `infercache-artifact`'s store: by SHA-256, size-capped, least recently used first out,
//! safe for several processes at once; a second start reads every chunk it kept and
//! fetches none, and a download cut short resumes with a `Range` request on the next
//! start. A chunk read from disk is checked as every other one.
//!
//! # Threads
//!
//! Tokenization, chunk building and every forward step run on tokio's blocking pool;
//! the async workers only move bytes.

mod cache;
pub mod disk;
mod error;
pub mod fetch;
pub mod pool;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use serde::Serialize;

use self::cache::LayerCache;
pub use self::disk::DiskConfig;
use self::disk::DiskTier;
pub use self::error::{Cause, ClientError};
pub use self::fetch::{Connected, Fetched, Fetcher, HttpConfig};
pub use self::pool::{BufferPool, PoolStats};
use crate::arch::Architecture;
use crate::arch::bert::Bert;
use crate::manifest::{CONFIG_FILE, Manifest, TOKENIZER_FILE, chunk_sort_key, layer_name, size_mb};

/// A streaming BERT: all-MiniLM-L6-v2 and other BERT encoders, on the built-in model's
/// components.
pub type StreamingBertModel = StreamingModel<Bert>;

/// How a [`StreamingModel`] caches and fetches.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Layers kept (at least 1). Default 3.
    pub cache_size: usize,
    /// Tensor bytes the cached layers may hold; `None` for no byte bound. Default `None`.
    pub max_cache_bytes: Option<u64>,
    /// Layers fetched ahead of the one running (at most `cache_size` are used). Default 1.
    pub prefetch: usize,
    /// Threads each forward pass runs on (at least 1). Default: one per available core,
    /// as the built-in model; the same texts on the same thread count give the same bits.
    pub threads: usize,
    /// Attempts, backoff and timeouts.
    pub http: HttpConfig,
    /// Chunks kept on local disk between runs ([`disk`]). Default: none.
    pub disk: Option<DiskConfig>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            cache_size: 3,
            max_cache_bytes: None,
            prefetch: 1,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            http: HttpConfig::default(),
            disk: None,
        }
    }
}

/// Counters of a [`StreamingModel`] (`inference_stats()`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct InferenceStats {
    /// Forward passes run (`embed` calls with at least one text).
    pub total_inferences: u64,
    /// Mean time of a forward pass, in seconds.
    pub avg_inference_time: f64,
    /// Layer accesses served by the cache or by a prefetch, over all layer accesses.
    pub cache_hit_rate: f64,
    /// Layer accesses.
    pub accesses: u64,
    /// Accesses served by the cache (a layer used before).
    pub demand_hits: u64,
    /// Accesses served by a prefetch or warm-up: the layer was cached or arriving.
    pub prefetch_hits: u64,
    /// Accesses that had to fetch.
    pub misses: u64,
    /// Accesses that waited for a fetch another forward pass had started.
    pub coalesced: u64,
    /// Prefetches and warm-up fetches started.
    pub prefetches: u64,
    /// Of those, the ones that failed (the layer is fetched again when needed).
    pub prefetch_failures: u64,
    /// Prefetched layers evicted before their first use.
    pub prefetch_wasted: u64,
    /// Layers evicted from the cache.
    pub evictions: u64,
    /// Chunks fetched from the server (embeddings and layers).
    pub fetches: u64,
    /// Chunks read from the disk tier instead.
    pub disk_hits: u64,
    /// Body bytes received for chunks, retries included.
    pub bytes_fetched: u64,
    /// Time spent fetching chunks, in milliseconds (fetches overlap, so this may exceed
    /// the wall time).
    pub fetch_time_ms: f64,
    /// Per chunk.
    pub chunks: Vec<ChunkFetchStats>,
}

/// Fetches of one chunk.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChunkFetchStats {
    /// The chunk.
    pub name: String,
    /// Times fetched from the server.
    pub fetches: u64,
    /// Times read from the disk tier.
    pub disk_hits: u64,
    /// Body bytes received.
    pub bytes_fetched: u64,
    /// Total fetch time, in milliseconds.
    pub fetch_time_ms: f64,
    /// The last fetch's time, in milliseconds.
    pub last_fetch_ms: f64,
}

/// What a [`StreamingModel`] holds (`cache_info()`).
#[derive(Debug, Clone, Serialize)]
pub struct CacheInfo {
    /// Cached layers, by index.
    pub cached_components: Vec<String>,
    /// Layers cached now.
    pub cache_size: usize,
    /// Layers the cache may hold.
    pub max_cache_size: usize,
    /// Cached layers from least to most recently used.
    pub access_order: Vec<String>,
    /// Tensor bytes held (cached layers and the resident embeddings), in MiB.
    pub memory_usage_mb: f64,
    /// The same in bytes.
    pub memory_usage_bytes: u64,
    /// The byte bound of the layer cache, if any.
    pub max_cache_bytes: Option<u64>,
    /// Components held outside the layer cache.
    pub resident_components: Vec<String>,
    /// Layers being fetched.
    pub in_flight: Vec<String>,
    /// Prefetch depth.
    pub prefetch: usize,
}

type LayerFuture<L> = Shared<BoxFuture<'static, Result<Arc<L>, ClientError>>>;

/// Where a forward pass finds a layer.
enum Access<L> {
    Cached(Arc<L>),
    Fetching(LayerFuture<L>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Demand,
    Prefetch,
}

struct InFlight<L> {
    future: LayerFuture<L>,
    origin: Origin,
    /// A forward pass is waiting for it.
    demanded: bool,
}

/// The cache and the in-flight table, under one lock so that a layer is either cached,
/// in flight, or neither, never both or in between.
struct Layers<L> {
    cache: LayerCache<L>,
    in_flight: HashMap<usize, InFlight<L>>,
}

#[derive(Debug, Default)]
struct Counters {
    inferences: u64,
    inference_time: Duration,
    demand_hits: u64,
    prefetch_hits: u64,
    misses: u64,
    coalesced: u64,
    prefetches: u64,
    prefetch_failures: u64,
    chunks: HashMap<String, ChunkFetchStats>,
}

impl Counters {
    fn fetched(&mut self, name: &str, f: &Fetched) {
        let ms = f.elapsed.as_secs_f64() * 1000.0;
        let c = self
            .chunks
            .entry(name.to_owned())
            .or_insert_with(|| ChunkFetchStats {
                name: name.to_owned(),
                ..ChunkFetchStats::default()
            });
        if f.from_disk {
            c.disk_hits += 1;
        } else {
            c.fetches += 1;
        }
        c.bytes_fetched += f.wire_bytes;
        c.fetch_time_ms += ms;
        c.last_fetch_ms = ms;
    }
}

struct Inner<A: Architecture> {
    fetcher: Fetcher,
    manifest: Manifest,
    arch: Arc<A>,
    embeddings: Arc<A::Embeddings>,
    embeddings_bytes: u64,
    layers: Mutex<Layers<A::Layer>>,
    prefetch: AtomicUsize,
    counters: Mutex<Counters>,
}

/// A model run layer by layer from a weight server. Cheap to clone; clones share the
/// cache. Forward passes may run concurrently and share layers.
pub struct StreamingModel<A: Architecture> {
    inner: Arc<Inner<A>>,
}

impl<A: Architecture> Clone for StreamingModel<A> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A: Architecture> std::fmt::Debug for StreamingModel<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingModel")
            .field("model", &self.inner.manifest.model_name)
            .field("num_layers", &self.inner.manifest.num_layers)
            .finish_non_exhaustive()
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ClientError::Inference {
            source: Arc::new(e),
        })
    })
}

fn inference_error(e: impl std::error::Error + Send + Sync + 'static) -> ClientError {
    ClientError::Inference {
        source: Arc::new(e),
    }
}

impl<A: Architecture> StreamingModel<A> {
    /// Connects to the weight server at `url` for `model`, with `cache_size` layers and
    /// the other defaults of [`ClientConfig`].
    ///
    /// # Errors
    /// As [`StreamingModel::connect_with`].
    pub async fn connect(url: &str, model: &str, cache_size: usize) -> Result<Self, ClientError> {
        Self::connect_with(
            url,
            model,
            ClientConfig {
                cache_size,
                ..ClientConfig::default()
            },
        )
        .await
    }

    /// Connects: [`Fetcher::connect`] (the manifest, `config.json` and `tokenizer.json`),
    /// then the embeddings chunk, each verified.
    ///
    /// # Errors
    /// [`ClientError::Config`] for a bad URL, name or setting; a fetch's error; the
    /// manifest's ([`ClientError::ForeignManifest`] when it names another model); or the
    /// architecture's, as [`ClientError::Build`].
    pub async fn connect_with(
        url: &str,
        model: &str,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        if config.cache_size == 0 {
            return Err(ClientError::Config("cache_size must be at least 1".into()));
        }
        if config.threads == 0 {
            return Err(ClientError::Config("threads must be at least 1".into()));
        }
        let mut fetcher = Fetcher::new(url, model, config.http.clone())?;
        if let Some(disk) = &config.disk {
            fetcher = fetcher.with_disk(DiskTier::open(disk).await?);
        }
        let Connected {
            manifest,
            config: (_, config_bytes),
            tokenizer: (_, tokenizer_bytes),
        } = fetcher.connect().await?;
        let embeddings_chunk = manifest
            .chunks
            .get("embeddings")
            .expect("a valid manifest has embeddings");
        let embeddings = fetcher
            .chunk(
                "embeddings",
                embeddings_chunk.size_bytes,
                &embeddings_chunk.sha256,
            )
            .await?;
        let mut counters = Counters::default();
        counters.fetched("embeddings", &embeddings);

        let build = |chunk: &str| {
            let chunk = chunk.to_owned();
            move |e: A::Error| ClientError::Build {
                chunk,
                source: Arc::new(e),
            }
        };
        let threads = config.threads;
        let (arch, (emb, embeddings_bytes)) = blocking(move || {
            let arch = A::from_files(&config_bytes.bytes, &tokenizer_bytes.bytes, threads)
                .map_err(build(&format!("{CONFIG_FILE}, {TOKENIZER_FILE}")))?;
            let emb = arch
                .load_embeddings(&embeddings.bytes)
                .map_err(build("embeddings"))?;
            Ok((arch, emb))
        })
        .await?;
        // Idle body buffers kept for the layers to come: two of the largest layer (the
        // one arriving and the next), not the embeddings' (fetched once).
        let largest_layer = manifest
            .chunks
            .values()
            .filter(|c| matches!(c.kind, crate::manifest::ChunkKind::Layer))
            .map(|c| c.size_bytes)
            .max()
            .unwrap_or(0);
        fetcher
            .buffer_pool()
            .set_max_bytes(usize::try_from(largest_layer.saturating_mul(2)).unwrap_or(usize::MAX));
        if arch.num_layers() != manifest.num_layers {
            return Err(ClientError::Manifest(format!(
                "num_layers is {} but config.json says {}",
                manifest.num_layers,
                arch.num_layers()
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                fetcher,
                manifest,
                arch: Arc::new(arch),
                embeddings: Arc::new(emb),
                embeddings_bytes,
                layers: Mutex::new(Layers {
                    cache: LayerCache::new(config.cache_size, config.max_cache_bytes),
                    in_flight: HashMap::new(),
                }),
                prefetch: AtomicUsize::new(config.prefetch),
                counters: Mutex::new(counters),
            }),
        })
    }

    /// The manifest the server sent.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// Embeds `texts` in one forward pass: one unit-length vector per text, in order,
    /// computed as the built-in model computes it (mean pooling, L2 normalisation).
    ///
    /// # Errors
    /// A layer's fetch or build error (naming it), the tokenizer's, or the forward pass's.
    pub async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ClientError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let inner = &self.inner;
        let texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        let (arch, emb) = (Arc::clone(&inner.arch), Arc::clone(&inner.embeddings));
        let mut state = blocking(move || {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tokens = arch.tokenize(&texts).map_err(inference_error)?;
            arch.begin(&emb, &tokens).map_err(inference_error)
        })
        .await?;
        for i in 0..inner.manifest.num_layers {
            let access = inner.access(i);
            inner.prefetch_after(i);
            let layer = match access {
                Access::Cached(layer) => layer,
                Access::Fetching(pending) => pending.await?,
            };
            let arch = Arc::clone(&inner.arch);
            state = blocking(move || arch.forward_layer(&layer, state).map_err(inference_error))
                .await?;
        }
        let arch = Arc::clone(&inner.arch);
        let out = blocking(move || arch.finish(state).map_err(inference_error)).await?;
        let mut c = inner.counters.lock();
        c.inferences += 1;
        c.inference_time += started.elapsed();
        Ok(out)
    }

    /// Fetches and builds `layers` (default: the first `min(cache_size, num_layers)`)
    /// into the cache, concurrently.
    ///
    /// # Errors
    /// [`ClientError::Config`] for an index past the last layer; the first fetch or build
    /// error.
    pub async fn warmup(&self, layers: Option<&[usize]>) -> Result<(), ClientError> {
        let inner = &self.inner;
        let n = inner.manifest.num_layers;
        let indices: Vec<usize> = match layers {
            Some(l) => l.to_vec(),
            None => (0..inner.layers.lock().cache.max_layers().min(n)).collect(),
        };
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(ClientError::Config(format!(
                "layer {bad} does not exist: the model has {n} layers"
            )));
        }
        let pending: Vec<_> = {
            let mut layers = inner.layers.lock();
            indices
                .iter()
                .filter_map(|&i| inner.prefetch_locked(&mut layers, i))
                .collect()
        };
        for result in futures_util::future::join_all(pending).await {
            result?;
        }
        Ok(())
    }

    /// Keeps at most `n` layers (at least 1), evicting down to it at once.
    ///
    /// # Errors
    /// [`ClientError::Config`] for 0.
    pub fn set_cache_size(&self, n: usize) -> Result<(), ClientError> {
        if n == 0 {
            return Err(ClientError::Config("cache_size must be at least 1".into()));
        }
        let mut layers = self.inner.layers.lock();
        let bytes = layers.cache.max_bytes();
        layers.cache.set_limits(n, bytes);
        Ok(())
    }

    /// Bounds the cached layers' tensor bytes (`None`: no bound), evicting at once.
    pub fn set_max_cache_bytes(&self, max: Option<u64>) {
        let mut layers = self.inner.layers.lock();
        let n = layers.cache.max_layers();
        layers.cache.set_limits(n, max);
    }

    /// Layers fetched ahead of the one running.
    pub fn set_prefetch(&self, depth: usize) {
        self.inner.prefetch.store(depth, Ordering::Relaxed);
    }

    /// Drops every cached layer (fetches in flight still complete and are cached).
    pub fn clear_cache(&self) {
        self.inner.layers.lock().cache.clear();
    }

    /// The counters, with the seed's `total_inferences`, `avg_inference_time` and
    /// `cache_hit_rate`.
    pub fn inference_stats(&self) -> InferenceStats {
        let (evictions, wasted) = {
            let l = self.inner.layers.lock();
            (l.cache.evictions, l.cache.wasted_prefetches)
        };
        let c = self.inner.counters.lock();
        let accesses = c.demand_hits + c.prefetch_hits + c.misses + c.coalesced;
        #[expect(clippy::cast_precision_loss, reason = "ratios for display")]
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let mut chunks: Vec<ChunkFetchStats> = c.chunks.values().cloned().collect();
        chunks.sort_by_key(|s| chunk_sort_key(&s.name));
        InferenceStats {
            total_inferences: c.inferences,
            avg_inference_time: if c.inferences == 0 {
                0.0
            } else {
                c.inference_time.as_secs_f64() / c.inferences as f64
            },
            cache_hit_rate: ratio(c.demand_hits + c.prefetch_hits, accesses),
            accesses,
            demand_hits: c.demand_hits,
            prefetch_hits: c.prefetch_hits,
            misses: c.misses,
            coalesced: c.coalesced,
            prefetches: c.prefetches,
            prefetch_failures: c.prefetch_failures,
            prefetch_wasted: wasted,
            evictions,
            fetches: chunks.iter().map(|s| s.fetches).sum(),
            disk_hits: chunks.iter().map(|s| s.disk_hits).sum(),
            bytes_fetched: chunks.iter().map(|s| s.bytes_fetched).sum(),
            fetch_time_ms: chunks.iter().map(|s| s.fetch_time_ms).sum(),
            chunks,
        }
    }

    /// What the cache holds, with the seed's fields.
    pub fn cache_info(&self) -> CacheInfo {
        let l = self.inner.layers.lock();
        let order = l.cache.order();
        let mut cached = order.clone();
        cached.sort_unstable();
        let mut in_flight: Vec<usize> = l.in_flight.keys().copied().collect();
        in_flight.sort_unstable();
        let names = |v: Vec<usize>| v.into_iter().map(layer_name).collect::<Vec<_>>();
        let bytes = l.cache.bytes() + self.inner.embeddings_bytes;
        CacheInfo {
            cached_components: names(cached),
            cache_size: l.cache.len(),
            max_cache_size: l.cache.max_layers(),
            access_order: names(order),
            memory_usage_mb: size_mb(bytes),
            memory_usage_bytes: bytes,
            max_cache_bytes: l.cache.max_bytes(),
            resident_components: vec!["embeddings".into()],
            in_flight: names(in_flight),
            prefetch: self.inner.prefetch.load(Ordering::Relaxed),
        }
    }
}

impl<A: Architecture> Inner<A> {
    /// Layer `i` for a forward pass: cached, or the fetch to wait for, joined or started.
    fn access(self: &Arc<Self>, i: usize) -> Access<A::Layer> {
        let mut layers = self.layers.lock();
        if let Some(hit) = layers.cache.get(i) {
            let mut c = self.counters.lock();
            if hit.prefetched {
                c.prefetch_hits += 1;
            } else {
                c.demand_hits += 1;
            }
            return Access::Cached(hit.layer);
        }
        if let Some(f) = layers.in_flight.get_mut(&i) {
            let mut c = self.counters.lock();
            if f.origin == Origin::Prefetch && !f.demanded {
                c.prefetch_hits += 1;
            } else {
                c.coalesced += 1;
            }
            f.demanded = true;
            return Access::Fetching(f.future.clone());
        }
        self.counters.lock().misses += 1;
        Access::Fetching(self.start(&mut layers, i, Origin::Demand))
    }

    /// Starts prefetching the layers after `i`, as deep as the prefetch depth and the
    /// cache allow.
    fn prefetch_after(self: &Arc<Self>, i: usize) {
        let mut layers = self.layers.lock();
        let depth = self
            .prefetch
            .load(Ordering::Relaxed)
            .min(layers.cache.max_layers());
        let last = (i + depth).min(self.manifest.num_layers.saturating_sub(1));
        for j in i + 1..=last {
            // The future runs in its own task; nothing needs to wait for it here.
            drop(self.prefetch_locked(&mut layers, j));
        }
    }

    /// Starts fetching layer `i` unless it is cached or in flight; the fetch, if started.
    fn prefetch_locked(
        self: &Arc<Self>,
        layers: &mut Layers<A::Layer>,
        i: usize,
    ) -> Option<LayerFuture<A::Layer>> {
        if layers.cache.contains(i) {
            return None;
        }
        if let Some(f) = layers.in_flight.get(&i) {
            return Some(f.future.clone());
        }
        self.counters.lock().prefetches += 1;
        Some(self.start(layers, i, Origin::Prefetch))
    }

    /// Starts the fetch of layer `i` in its own task and records it in flight.
    fn start(
        self: &Arc<Self>,
        layers: &mut Layers<A::Layer>,
        i: usize,
        origin: Origin,
    ) -> LayerFuture<A::Layer> {
        let inner = Arc::clone(self);
        let task = tokio::spawn(async move { inner.fetch_layer(i).await });
        let future = async move {
            task.await.unwrap_or_else(|e| {
                Err(ClientError::Inference {
                    source: Arc::new(e),
                })
            })
        }
        .boxed()
        .shared();
        layers.in_flight.insert(
            i,
            InFlight {
                future: future.clone(),
                origin,
                demanded: origin == Origin::Demand,
            },
        );
        future
    }

    /// Fetches, verifies and builds layer `i`, then caches it and leaves the in-flight
    /// table, in one step.
    async fn fetch_layer(self: Arc<Self>, i: usize) -> Result<Arc<A::Layer>, ClientError> {
        let name = layer_name(i);
        let result = self.fetch_and_build(i, &name).await;
        let mut layers = self.layers.lock();
        let flight = layers.in_flight.remove(&i);
        match &result {
            Ok((layer, bytes)) => {
                let prefetched =
                    flight.is_some_and(|f| f.origin == Origin::Prefetch && !f.demanded);
                layers
                    .cache
                    .insert(i, Arc::clone(layer), *bytes, prefetched);
            }
            Err(e) => {
                if flight.is_some_and(|f| f.origin == Origin::Prefetch) {
                    self.counters.lock().prefetch_failures += 1;
                }
                tracing::warn!(chunk = %name, error = %e, "fetching a layer failed");
            }
        }
        result.map(|(layer, _)| layer)
    }

    /// Layer `i`, verified and built, with the bytes of tensor data it holds.
    async fn fetch_and_build(
        &self,
        i: usize,
        name: &str,
    ) -> Result<(Arc<A::Layer>, u64), ClientError> {
        let info = self
            .manifest
            .chunks
            .get(name)
            .expect("a valid manifest lists every layer");
        let fetched = self
            .fetcher
            .chunk(name, info.size_bytes, &info.sha256)
            .await?;
        self.counters.lock().fetched(name, &fetched);
        let arch = Arc::clone(&self.arch);
        let chunk = name.to_owned();
        blocking(move || {
            arch.load_layer(i, &fetched.bytes)
                .map(|(layer, bytes)| (Arc::new(layer), bytes))
                .map_err(|e| ClientError::Build {
                    chunk,
                    source: Arc::new(e),
                })
        })
        .await
    }
}
