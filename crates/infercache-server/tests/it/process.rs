//! Servers in processes of their own: this test binary run again as [`child_server`],
//! serving a configuration file, so that a test can measure a server's memory alone or run
//! several servers as separate processes.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use infercache_server::{ServeArgs, ServerConfig};

/// The variable naming the configuration file a child server serves.
const CHILD_CONFIG: &str = "INFERCACHE_TEST_CHILD_CONFIG";

/// Not a test: the server process [`ChildServer::start`] starts by running this binary
/// again with `CHILD_CONFIG` set. Without it, returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a server process for another test, which starts it"]
async fn child_server() {
    let Some(path) = std::env::var_os(CHILD_CONFIG) else {
        return;
    };
    let config = ServerConfig::from_args(&ServeArgs {
        config: Some(path.into()),
        ..ServeArgs::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening on http://{}", listener.local_addr().unwrap());
    // Served until the parent closes stdin.
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
    };
    infercache_server::run(config, listener, stdin_closed)
        .await
        .unwrap();
}

/// A server in a process of its own, killed on drop.
pub struct ChildServer {
    child: Child,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    _dir: tempfile::TempDir,
}

impl ChildServer {
    /// Starts a server process serving the configuration file `toml`; returns once it
    /// listens.
    pub fn start(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("infercache.toml");
        std::fs::write(&path, toml).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "process::child_server",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_CONFIG, &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut url = None;
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some((_, u)) = line.split_once("listening on ") {
                url = Some(u.trim().to_owned());
                break;
            }
        }
        let url = url.expect("the child server never said where it listens");
        Self {
            child,
            url,
            _dir: dir,
        }
    }

    /// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`).
    pub fn memory(&self, field: &str) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        let kib: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap();
        kib << 10
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
