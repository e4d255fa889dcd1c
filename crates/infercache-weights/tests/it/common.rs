//! What the tests share: tiny models chunked into temporary directories, real weight
//! servers on loopback port 0, the real all-MiniLM-L6-v2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infercache_core::SystemClock;
use infercache_weights::server::{ServerConfig, WeightServer};
use infercache_weights::testing::TinyBert;
use infercache_weights::{ChunkOptions, Manifest, NoProgress, chunk_model};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A tiny model and its chunks in a temporary directory.
pub struct Tiny {
    pub dir: TempDir,
    pub model: PathBuf,
    pub chunks: PathBuf,
    pub manifest: Manifest,
}

/// Threads of every forward pass in the tests, streamed and reference alike (more than
/// one, so the split of work over threads is exercised).
pub const THREADS: usize = 2;

/// The model name tiny models are chunked under.
pub const TINY: &str = "tiny-bert";

impl Tiny {
    pub fn new(spec: TinyBert) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        spec.write(&model).unwrap();
        let chunks = dir.path().join("chunks").join(TINY);
        let options = ChunkOptions {
            model_name: Some(TINY.into()),
            ..ChunkOptions::default()
        };
        let report = chunk_model(&model, &chunks, &options, &mut NoProgress).unwrap();
        Self {
            dir,
            model,
            chunks,
            manifest: report.manifest,
        }
    }

    /// The directory holding the chunk directory (what a server is pointed at).
    pub fn root(&self) -> PathBuf {
        self.chunks.parent().unwrap().to_owned()
    }

    pub fn chunk_path(&self, name: &str) -> PathBuf {
        self.chunks.join(&self.manifest.chunks[name].file)
    }

    pub fn size(&self, name: &str) -> u64 {
        self.manifest.chunks[name].size_bytes
    }
}

/// The directory of the real all-MiniLM-L6-v2 (`INFERCACHE_MODEL_DIR`, as `scripts/test`
/// sets it). A test that needs it fails without it.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("INFERCACHE_MODEL_DIR").expect(
        "INFERCACHE_MODEL_DIR must name the all-MiniLM-L6-v2 directory (scripts/test sets it)",
    );
    PathBuf::from(dir)
}

/// A weight server on a loopback port, stoppable and restartable on the same port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: WeightServer,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Opens a server with `config` and serves it on a free port.
    pub async fn start(config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(config, listener).await
    }

    async fn serve(config: ServerConfig, listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let server = WeightServer::open(config, SystemClock::shared()).unwrap();
        let (tx, rx) = oneshot::channel();
        let s = server.clone();
        let task = tokio::spawn(async move {
            infercache_weights::server::serve(listener, s, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            server,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits until the port is closed.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            // A graceful stop closes idle keep-alive connections too; bounded.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// A new server process on the same port with `config` (a fresh, empty cache).
    pub async fn restart(&mut self, config: ServerConfig) {
        self.stop().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        *self = Self::serve(config, listener).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A server config over `root` with a cache of `cache_bytes`.
pub fn config(root: &Path, cache_bytes: u64) -> ServerConfig {
    ServerConfig {
        cache_bytes,
        ..ServerConfig::new(root.to_owned())
    }
}

/// Polls `f` every 10 ms until it holds, for at most 10 s.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
