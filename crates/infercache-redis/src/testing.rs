//! Real `redis-server` processes for tests (feature `test-support`), for this crate's tests
//! and the server's.
//!
//! - [`RedisServer`]: one server on a free loopback port with a temporary data directory;
//!   it can be killed with SIGKILL ([`RedisServer::kill9`]) and restarted on the same port
//!   over the same files ([`RedisServer::restart`]), the faults the tier must survive.
//! - [`RedisCluster`]: cluster-enabled servers joined with `redis-cli --cluster create`,
//!   handed over once every node reports `cluster_state:ok`.
//!
//! - [`ca`] and [`server_cert`]: a certificate authority and a 127.0.0.1 certificate it
//!   signs, for TLS servers (Redis's, or an upstream's) made by the test.
//!
//! Both kill their processes when dropped. A missing `redis-server` or `redis-cli` panics
//! with how to install it: a Redis test never skips. The API is blocking (each call takes
//! milliseconds), so it serves synchronous and asynchronous tests alike.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::managed::{answers_as, free_loopback_port, is_port_conflict, log_tail, server_args};

/// How long a server may take to answer `PING` (generous: CI has two busy cores).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a cluster may take to form.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one `PING` (connect included) may take while waiting.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the waits poll.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How many free ports are tried when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;

/// The file in each server's directory that holds its output.
const LOG_FILE: &str = "redis-server.log";

const INSTALL_HINT: &str = "the Redis tests need a real Redis: run scripts/test (it installs \
                            it) or `apt-get install redis-server redis-tools`";

/// How a [`RedisServer`] is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisServerOptions {
    /// The append-only file on (`appendfsync everysec`), so data outlives
    /// [`RedisServer::kill9`] and [`RedisServer::restart`]; off by default (RDB is always
    /// off).
    pub appendonly: bool,
}

/// A real `redis-server` on a free 127.0.0.1 port with a temporary data directory; killed
/// on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// The cluster bus port, for a cluster node.
    cluster_bus_port: Option<u16>,
    options: RedisServerOptions,
    /// Arguments added to the command line (TLS), kept for restarts.
    extra_args: Vec<String>,
    /// The TLS port, for a TLS server.
    tls_port: Option<u16>,
    dir: TempDir,
}

impl RedisServer {
    /// A server with the default options (no AOF). Panics when it cannot start.
    pub fn start() -> Self {
        Self::start_with(RedisServerOptions::default())
    }

    /// A server with these options. Panics when it cannot start.
    pub fn start_with(options: RedisServerOptions) -> Self {
        Self::launch(options, None, None)
    }

    /// A server that also serves TLS on a second port ([`RedisServer::tls_url`]), with the
    /// certificate chain `cert_pem` and its key `key_pem` (PEM), not asking clients for
    /// certificates. The plain port stays open for the harness's own checks.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::launch(
            RedisServerOptions::default(),
            None,
            Some((cert_pem, key_pem)),
        )
    }

    /// `cluster`: the `cluster-node-timeout` (ms) of a cluster node.
    fn launch(
        options: RedisServerOptions,
        cluster: Option<&str>,
        tls: Option<(&str, &str)>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("infercache-redis-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory for Redis: {e}"));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let cluster_bus_port = cluster.map(|_| free_port());
            let tls_port = tls.map(|_| free_port());
            let mut extra_args = match (tls, tls_port) {
                (Some((cert, key)), Some(tls_port)) => tls_args(dir.path(), tls_port, cert, key),
                _ => Vec::new(),
            };
            if let Some(timeout) = cluster {
                extra_args.extend(["--cluster-node-timeout".to_owned(), timeout.to_owned()]);
            }
            match run(dir.path(), port, cluster_bus_port, options, &extra_args) {
                Ok(child) => {
                    return Self {
                        child: Some(child),
                        port,
                        cluster_bus_port,
                        options,
                        extra_args,
                        tls_port,
                        dir,
                    };
                }
                // Another process took the free port before redis-server bound it.
                Err(failure) if attempt < PORT_ATTEMPTS && is_port_conflict(&failure) => {}
                Err(failure) => panic!("redis-server did not start on port {port}: {failure}"),
            }
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://127.0.0.1:TLS_PORT`, for a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("a server started with start_tls");
        format!("rediss://127.0.0.1:{port}")
    }

    /// The port, which stays the same across [`RedisServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The options it runs with.
    pub fn options(&self) -> RedisServerOptions {
        self.options
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (false after [`RedisServer::kill9`]).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().expect("polling redis-server").is_none(),
            None => false,
        }
    }

    /// A client for it (connections are made on use).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a loopback Redis URL parses")
    }

    /// The value of one configuration parameter (`CONFIG GET name`). Panics when the
    /// server does not answer or has no such parameter.
    pub fn config_get(&self, name: &str) -> String {
        let mut conn = self
            .client()
            .get_connection_with_timeout(READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting to redis-server at {}: {e}", self.url()));
        let mut values: HashMap<String, String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("CONFIG GET {name}: {e}"));
        values
            .remove(name)
            .unwrap_or_else(|| panic!("redis-server has no configuration parameter {name:?}"))
    }

    /// Kills the server with SIGKILL (no AOF flush, no goodbye to clients) and waits until
    /// it is gone, so its port is free. Does nothing when it is not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // std's `Child::kill` sends SIGKILL on Unix.
            if let Err(e) = child.kill()
                && e.kind() != io::ErrorKind::InvalidInput
            {
                panic!("SIGKILL to redis-server: {e}");
            }
            child.wait().expect("waiting for the killed redis-server");
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open and nothing answers, as
    /// with a server stalled or cut off by the network. [`RedisServer::resume`] undoes it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.pid().expect("the redis-server runs");
        let status = std::process::Command::new("kill")
            .arg(which)
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {which} {pid} failed");
    }

    /// Starts the server again on the same port over the same directory (with the AOF on,
    /// it reloads its data), killing it first if it still runs. Panics when it cannot
    /// start, for instance because another process took the port meanwhile.
    pub fn restart(&mut self) {
        self.kill9();
        match run(
            self.dir.path(),
            self.port,
            self.cluster_bus_port,
            self.options,
            &self.extra_args,
        ) {
            Ok(child) => self.child = Some(child),
            Err(failure) => panic!(
                "redis-server did not restart on port {}: {failure}",
                self.port
            ),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort: a drop must not panic, and the process may already be gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of real cluster-enabled servers on loopback (masters, and optionally
/// replicas of each), formed with `redis-cli --cluster create`; killed on drop.
///
/// Each node's cluster bus gets its own free port (`cluster-port`, Redis 7.0 and later),
/// since the default bus port (port + 10000) may be taken or out of range.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    replicas: usize,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3, as Redis Cluster requires), joins them, and
    /// returns once every node reports `cluster_state:ok`. Panics when that fails.
    pub fn start(masters: usize) -> Self {
        Self::start_with_replicas(masters, 0)
    }

    /// Starts `masters` masters with `replicas` replicas each (`--cluster-replicas`); the
    /// first `masters` of [`RedisCluster::nodes`] are the masters. With replicas, a node
    /// is held failed after 1 s without an answer (`cluster-node-timeout`), so a killed
    /// master's replica takes over within seconds.
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Self {
        assert!(
            masters >= 3,
            "a Redis Cluster needs at least 3 masters, not {masters}"
        );
        let timeout = if replicas > 0 { "1000" } else { "5000" };
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| RedisServer::launch(RedisServerOptions::default(), Some(timeout), None))
            .collect();
        let cluster = Self { nodes, replicas };
        cluster.create();
        cluster.wait_until_ok();
        if replicas > 0 {
            // A replica that never synced with its master may not take over from it.
            cluster.wait_until_replicas_synced();
        }
        cluster
    }

    /// Waits until every replica's link to its master is up, bounded by
    /// [`CLUSTER_TIMEOUT`].
    fn wait_until_replicas_synced(&self) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        for node in &self.nodes {
            loop {
                let info: Option<String> = node
                    .client()
                    .get_connection_with_timeout(PING_TIMEOUT)
                    .and_then(|mut conn| redis::cmd("INFO").arg("replication").query(&mut conn))
                    .ok();
                let synced = info.as_deref().is_some_and(|info| {
                    info.lines().any(|l| l.trim() == "role:master")
                        || info.lines().any(|l| l.trim() == "master_link_status:up")
                });
                if synced {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the replica on port {} did not sync within {CLUSTER_TIMEOUT:?}",
                    node.port()
                );
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }

    /// `redis-cli --cluster create`, bounded by [`CLUSTER_TIMEOUT`].
    fn create(&self) {
        let output_path = self.nodes[0].dir().join("cluster-create.log");
        let output = File::create(&output_path).expect("creating the redis-cli log");
        let mut child = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
            .args([
                "--cluster-replicas",
                &self.replicas.to_string(),
                "--cluster-yes",
            ])
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("cloning a file handle"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => {
                    panic!("redis-cli was not found on PATH: {INSTALL_HINT}")
                }
                _ => panic!("running redis-cli: {e}"),
            });
        let status = wait_with_deadline(&mut child, CLUSTER_TIMEOUT);
        match status {
            Some(status) if status.success() => {}
            Some(status) => panic!(
                "redis-cli --cluster create failed ({status}):\n{}",
                log_tail(&output_path)
            ),
            None => panic!(
                "redis-cli --cluster create did not finish within {CLUSTER_TIMEOUT:?}:\n{}",
                log_tail(&output_path)
            ),
        }
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        for node in &self.nodes {
            loop {
                let info: Option<String> = node
                    .client()
                    .get_connection_with_timeout(PING_TIMEOUT)
                    .and_then(|mut conn| redis::cmd("CLUSTER").arg("INFO").query(&mut conn))
                    .ok();
                if info
                    .as_deref()
                    .is_some_and(|info| info.lines().any(|l| l.trim() == "cluster_state:ok"))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster node on port {} is not ok after {CLUSTER_TIMEOUT:?}; CLUSTER INFO:\n{}",
                    node.port(),
                    info.as_deref().unwrap_or("(no answer)")
                );
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }

    /// Every node's `redis://127.0.0.1:PORT`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, to kill or restart one.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// A cluster client seeded with every node.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.urls()).expect("loopback Redis URLs parse")
    }
}

fn free_port() -> u16 {
    free_loopback_port().unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// Starts a server and waits until it answers `PING`; on failure, a description with the
/// end of its log.
fn run(
    dir: &Path,
    port: u16,
    cluster_bus_port: Option<u16>,
    options: RedisServerOptions,
    extra_args: &[String],
) -> Result<Child, String> {
    let log_path = dir.join(LOG_FILE);
    // Appended: a restart's log follows the previous run's.
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("opening the redis-server log");
    let mut command = Command::new("redis-server");
    command.args(server_args(port, dir));
    if options.appendonly {
        command.args(["--appendonly", "yes", "--appendfsync", "everysec"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    if let Some(bus_port) = cluster_bus_port {
        command
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(cluster_config_file(dir))
            .args(["--cluster-port", &bus_port.to_string()]);
    }
    command.args(extra_args);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("cloning a file handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                panic!("redis-server was not found on PATH: {INSTALL_HINT}")
            }
            _ => panic!("running redis-server: {e}"),
        });
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("a loopback Redis URL parses");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("polling redis-server") {
            return Err(format!(
                "it exited ({status}); the end of its log:\n{}",
                log_tail(&log_path)
            ));
        }
        let answer = client
            .get_connection_with_timeout(PING_TIMEOUT)
            .and_then(|mut conn| {
                redis::cmd("PING").query::<String>(&mut conn)?;
                redis::cmd("INFO").arg("server").query::<String>(&mut conn)
            });
        // Only this process counts: another server may hold the port.
        if answer.is_ok_and(|info| answers_as(&info, child.id())) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "it did not answer PING within {READY_TIMEOUT:?}; the end of its log:\n{}",
                log_tail(&log_path)
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Writes the certificate and key into `dir`; the arguments that serve TLS on `port`.
fn tls_args(dir: &Path, port: u16, cert_pem: &str, key_pem: &str) -> Vec<String> {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, cert_pem).expect("writing the test server's certificate");
    std::fs::write(&key, key_pem).expect("writing the test server's key");
    let path = |p: &Path| p.to_str().expect("a UTF-8 temporary path").to_owned();
    vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        path(&cert),
        "--tls-key-file".into(),
        path(&key),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}

fn cluster_config_file(dir: &Path) -> PathBuf {
    dir.join("nodes.conf")
}

/// Waits for a child up to `timeout`; kills it and returns `None` when it runs longer.
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("polling a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A certificate authority named `name`: its certificate (`.pem()`) and the issuer that
/// signs with it.
///
/// # Panics
/// If rcgen cannot make a key or certificate (a bug).
pub fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("a key"))
        .expect("a self-signed CA")
}

/// A server certificate for 127.0.0.1 signed by `ca`: (certificate PEM, key PEM).
///
/// # Panics
/// If rcgen cannot make a key or certificate (a bug).
pub fn server_cert(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("one IP name");
    let cert = params.signed_by(&key, ca).expect("a signed certificate");
    (cert.pem(), key.serialize_pem())
}
