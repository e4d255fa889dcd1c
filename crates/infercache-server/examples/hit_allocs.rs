//! Heap allocations per cache hit: the server's router ([`infercache_server::app`]) on the
//! configuration `infercache serve` builds from the same flags, driven in this process
//! without a socket (`tower::ServiceExt::oneshot`), under a counting global allocator
//! (`stats_alloc`). What it counts is the hit path from the routed request to the
//! response body: the middleware, parsing, keys, the lookup, rendering and metrics, not
//! the HTTP/1 connection's own work. `scripts/bench-serve hit` runs it beside the load
//! test; see BENCHMARKS.md.
//!
//! `cargo run --release --example hit_allocs -p infercache-server -- [serve flags]
//! --request NAME,PATH,BODY_FILE[,HEADER_LENGTH] ...` sends each request twice (the first
//! may be the miss that fills the cache; the second must be `X-Cache: HIT`), then `--count`
//! more times, and prints one line per request kind:
//! `ALLOCS kind=NAME allocs=A reallocs=R bytes=B bare_allocs=C` (per request; bytes of new
//! blocks; `bare_allocs`: the same hits on a router that answers them with the hit's bytes
//! and headers, as `examples/bare.rs` does, the ceiling's own count). `HEADER_LENGTH` is the
//! `Inference-Header-Content-Length` of a KServe v2 binary-tensor body.

use std::alloc::System;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Request, header};
use axum::response::IntoResponse as _;
use axum::routing::post;
use clap::Parser;
use infercache_backend::Backend;
use infercache_core::SystemClock;
use infercache_engine::Cache;
use infercache_server::{ApiKeys, AppState, ServeArgs, ServerConfig};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::ServiceExt as _;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Count the allocations of cache hits on the server's router.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    /// A request kind: `NAME,PATH,BODY_FILE[,HEADER_LENGTH]`.
    #[arg(long = "request", required = true, value_name = "SPEC")]
    requests: Vec<String>,
    /// Hits measured per request kind.
    #[arg(long, default_value_t = 2000)]
    count: usize,
}

/// One request kind.
struct Kind {
    name: String,
    path: String,
    body: Bytes,
    header_length: Option<String>,
}

impl Kind {
    fn parse(spec: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = spec.split(',').collect();
        let (name, path, file, header_length) = match parts[..] {
            [name, path, file] => (name, path, file, None),
            [name, path, file, length] => (name, path, file, Some(length.to_owned())),
            _ => bail!("--request {spec}: expected NAME,PATH,BODY_FILE[,HEADER_LENGTH]"),
        };
        let body = std::fs::read(file).with_context(|| format!("reading {file}"))?;
        Ok(Self {
            name: name.to_owned(),
            path: path.to_owned(),
            body: body.into(),
            header_length,
        })
    }

    fn request(&self) -> Request<Body> {
        let mut r = Request::post(&self.path);
        match &self.header_length {
            Some(length) => {
                r = r
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header("inference-header-content-length", length);
            }
            None => r = r.header(header::CONTENT_TYPE, "application/json"),
        }
        r.body(Body::from(self.body.clone()))
            .expect("a valid request")
    }
}

/// Allocations, reallocations and bytes allocated per hit of `kind` on `service`, over
/// `n` hits. Requests are built before counting: a client's work, not the server's.
async fn count<S>(service: &S, kind: &Kind, n: usize) -> anyhow::Result<(f64, f64, f64)>
where
    S: tower::Service<Request<Body>, Response = axum::response::Response> + Clone,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let requests: Vec<Request<Body>> = (0..n).map(|_| kind.request()).collect();
    let region = Region::new(GLOBAL);
    for request in requests {
        let response = service.clone().oneshot(request).await?;
        if response.headers().get("x-cache").map(HeaderValue::as_bytes) != Some(b"HIT") {
            bail!("{}: not a hit", kind.name);
        }
        axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    }
    let change = region.change();
    let per = |c: usize| c as f64 / n as f64;
    Ok((
        per(change.allocations),
        per(change.reallocations),
        per(change.bytes_allocated),
    ))
}

/// A router answering `POST path` with `body` and `headers`, as examples/bare.rs does.
fn bare_router(path: &str, mut headers: HeaderMap, body: Bytes) -> Router {
    headers.remove(header::CONTENT_LENGTH);
    let answer = move |_request: Bytes| {
        let (headers, body) = (headers.clone(), body.clone());
        async move { (headers, body).into_response() }
    };
    Router::new().route(path, post(answer))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let kinds = cli
        .requests
        .iter()
        .map(|s| Kind::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = ServerConfig::from_args(&cli.serve)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let builtin = if infercache_infer::serves_builtin(&config.models) {
                let model = infercache_model::BuiltinModel::load(
                    config.model_dir.as_deref(),
                    &infercache_backend::default_cache_dir(),
                    infercache_model::PoolConfig::default(),
                )?;
                Some(Arc::new(model) as Arc<dyn Backend>)
            } else {
                None
            };
            let models = infercache_server::registry(&config, builtin)?;
            let cache = config
                .cache_config()
                .map(|c| Cache::open(c, SystemClock::shared()))
                .transpose()?;
            let state = AppState::new(cache, models, ApiKeys::none(), config.limits);
            let app = infercache_server::app(state);
            for kind in &kinds {
                let mut hit = None;
                for _ in 0..2 {
                    let response = app.clone().oneshot(kind.request()).await?;
                    let status = response.status();
                    let headers = response.headers().clone();
                    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
                    if !status.is_success() {
                        bail!("{}: {status}", kind.name);
                    }
                    if headers.get("x-cache") == Some(&HeaderValue::from_static("HIT")) {
                        hit = Some((headers, body));
                        break;
                    }
                }
                let Some((headers, body)) = hit else {
                    bail!("{}: the second request is not a hit", kind.name);
                };
                let served = count(&app, kind, cli.count).await?;
                // The ceiling, as examples/bare.rs serves it: a router answering the same
                // path with the hit's bytes and headers.
                let bare = bare_router(&kind.path, headers, body);
                let ceiling = count(&bare, kind, cli.count).await?;
                println!(
                    "ALLOCS kind={} allocs={:.1} reallocs={:.1} bytes={:.0} bare_allocs={:.1}",
                    kind.name, served.0, served.1, served.2, ceiling.0,
                );
            }
            Ok(())
        })
}
