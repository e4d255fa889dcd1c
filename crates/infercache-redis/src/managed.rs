//! A local `redis-server` that infercache starts, configures and stops itself: what
//! `infercache serve --redis auto` runs instead of asking for a Redis deployment.
//!
//! [`ManagedRedis::start`] runs the `redis-server` found on `PATH` (or at a given path) as a
//! child process, configured as a cache:
//!
//! - `maxmemory` a fraction of the machine's RAM ([`validate_memory_fraction`]: 0.1 to 0.7),
//!   with `maxmemory-policy allkeys-lru`, so Redis evicts instead of refusing writes;
//! - the append-only file on (`appendonly yes`, `appendfsync everysec`: at most a second of
//!   writes lost on a power cut, none when only the process dies) and RDB snapshots off
//!   (`save ""`), so a restart finds the cache warm without fork-heavy snapshots;
//! - its data, its log (`redis-server.log`) and a lock file in one data directory (under
//!   the cache directory); the lock keeps a second infercache from running a second Redis
//!   over the same files;
//! - in the foreground (`daemonize no`), so it is stopped with infercache:
//!   [`ManagedRedis::stop`] sends `SHUTDOWN` (Redis flushes the AOF and exits) and waits,
//!   and dropping a [`ManagedRedis`] that is still running kills the process.
//!
//! It listens on TCP on 127.0.0.1 only, on a free port the OS hands out (or a given one),
//! with no password: it is reachable from this machine alone, by every local user. A unix
//! socket would narrow that to one user, but the tier, the benchmark tools and Redis
//! Cluster all speak TCP, and one URL form (`redis://127.0.0.1:PORT`) serves every mode.
//!
//! If infercache itself is killed with SIGKILL the child outlives it (a parent can only
//! take its child down with it through `prctl`, which needs unsafe code) and keeps its
//! files; the lock does not pass to it, so stop that server (its pid is in
//! `redis-server.log`) before starting infercache again over the same directory.

use std::ffi::OsString;
use std::fs::{File, TryLockError};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// The fraction of RAM given to the managed Redis unless configured.
pub const DEFAULT_MEMORY_FRACTION: f64 = 0.3;

/// The fractions of RAM the managed Redis may be given: below, it is too small to matter;
/// above, it starves the memory tier, the model and the machine.
pub const MEMORY_FRACTION_RANGE: RangeInclusive<f64> = 0.1..=0.7;

/// The binary run unless configured, looked up on `PATH`.
pub const DEFAULT_BINARY: &str = "redis-server";

/// How long [`ManagedRedis::start`] waits for the server to answer `PING` (loading a large
/// AOF counts: Redis answers `LOADING` until it is done).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`ManagedRedis::stop`] waits for the server to take `SHUTDOWN`, and then to
/// exit, before it kills it.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The file in the data directory that holds the server's output (truncated at each start).
pub const LOG_FILE: &str = "redis-server.log";

/// The file in the data directory locked while a [`ManagedRedis`] runs there.
pub const LOCK_FILE: &str = "infercache-redis.lock";

/// How much of the log's end an error quotes.
const LOG_TAIL_BYTES: u64 = 4096;

/// How many free ports are tried when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;

/// How often the start-up wait asks the server for `PING`.
const PING_INTERVAL: Duration = Duration::from_millis(20);

/// How long one `PING` (connect included) may take during the start-up wait.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// What went wrong starting or stopping the managed Redis.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// The memory fraction is outside [`MEMORY_FRACTION_RANGE`].
    #[error(
        "the managed Redis memory fraction must be between {min} and {max} of system RAM, got {fraction}",
        min = MEMORY_FRACTION_RANGE.start(),
        max = MEMORY_FRACTION_RANGE.end()
    )]
    MemoryFraction {
        /// The refused value.
        fraction: f64,
    },
    /// This platform does not report its RAM, so no `maxmemory` can be derived.
    #[error("the system's RAM size is unknown, so the managed Redis has no memory limit to use")]
    UnknownRam,
    /// The `redis-server` binary does not exist.
    #[error(
        "`{}` was not found (the managed Redis needs it): install it (Debian/Ubuntu: \
         `apt-get install redis-server`) or give the path of a redis-server binary",
        binary.display()
    )]
    BinaryNotFound {
        /// The binary as configured.
        binary: PathBuf,
    },
    /// The data directory, its log or its lock file could not be created.
    #[error("the managed Redis data directory {}: {source}", dir.display())]
    DataDir {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process runs a managed Redis over this data directory.
    #[error(
        "another infercache runs a managed Redis in {} (its lock file {LOCK_FILE} is held)",
        dir.display()
    )]
    DirInUse {
        /// The data directory.
        dir: PathBuf,
    },
    /// No free loopback port could be found.
    #[error("no free port on 127.0.0.1 for the managed Redis: {0}")]
    NoPort(#[source] io::Error),
    /// The binary exists but could not be run.
    #[error("could not run `{}`: {source}", binary.display())]
    Spawn {
        /// The binary as configured.
        binary: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The server exited before it answered `PING`.
    #[error("redis-server exited at start ({status}); the end of {}:\n{log_tail}", log.display())]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// The server did not answer `PING` in time; it has been killed.
    #[error(
        "redis-server did not answer PING within {timeout:?} and was killed; the end of {}:\n{log_tail}",
        log.display()
    )]
    StartTimeout {
        /// The wait.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// Waiting for the process failed.
    #[error("waiting for redis-server to exit: {0}")]
    Wait(#[source] io::Error),
    /// The server did not exit within [`SHUTDOWN_TIMEOUT`] after `SHUTDOWN`; it has been
    /// killed.
    #[error(
        "redis-server did not exit within {timeout:?} of SHUTDOWN and was killed; the end of {}:\n{log_tail}",
        log.display()
    )]
    ShutdownTimeout {
        /// The wait.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
}

/// Refuses a memory fraction outside [`MEMORY_FRACTION_RANGE`] (NaN included).
///
/// # Errors
/// [`ManagedError::MemoryFraction`].
pub fn validate_memory_fraction(fraction: f64) -> Result<(), ManagedError> {
    if MEMORY_FRACTION_RANGE.contains(&fraction) {
        Ok(())
    } else {
        Err(ManagedError::MemoryFraction { fraction })
    }
}

/// How to run the managed Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedConfig {
    /// The data directory (AOF, log, lock file); created if missing.
    pub dir: PathBuf,
    /// The fraction of RAM given to Redis as `maxmemory`; [`DEFAULT_MEMORY_FRACTION`] by
    /// default.
    pub memory_fraction: f64,
    /// The `redis-server` binary: a path, or a name looked up on `PATH`;
    /// [`DEFAULT_BINARY`] by default.
    pub binary: PathBuf,
    /// The port on 127.0.0.1; a free one the OS picks by default.
    pub port: Option<u16>,
}

impl ManagedConfig {
    /// The defaults, with data in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            memory_fraction: DEFAULT_MEMORY_FRACTION,
            binary: PathBuf::from(DEFAULT_BINARY),
            port: None,
        }
    }
}

/// A running local `redis-server`, stopped by [`ManagedRedis::stop`] and killed on drop.
#[derive(Debug)]
pub struct ManagedRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
    maxmemory: u64,
    /// Held (locked) while the server runs; the lock goes with the handle.
    _lock: File,
}

impl ManagedRedis {
    /// Starts `redis-server` as configured and waits (up to [`STARTUP_TIMEOUT`]) until it
    /// answers `PING`.
    ///
    /// # Errors
    /// A refused memory fraction, a missing binary ([`ManagedError::BinaryNotFound`]), a
    /// data directory that cannot be made or is in use, or a server that exits or stays
    /// silent at start (the error quotes the end of its log).
    pub async fn start(config: ManagedConfig) -> Result<Self, ManagedError> {
        validate_memory_fraction(config.memory_fraction)?;
        let ram = infercache_engine::total_ram().ok_or(ManagedError::UnknownRam)?;
        // Truncation is the intent: a fraction of RAM in whole bytes.
        let maxmemory = (ram as f64 * config.memory_fraction) as u64;

        let dir_error = |source| ManagedError::DataDir {
            dir: config.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(dir_error)?;
        // Redis resolves its own paths against its working directory; give it an absolute one.
        let dir = std::path::absolute(&config.dir).map_err(dir_error)?;
        let lock = File::create(dir.join(LOCK_FILE)).map_err(dir_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(ManagedError::DirInUse { dir }),
            Err(TryLockError::Error(source)) => return Err(dir_error(source)),
        }

        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = match config.port {
                Some(port) => port,
                None => free_loopback_port().map_err(ManagedError::NoPort)?,
            };
            let mut child = spawn(&config.binary, &dir, port, maxmemory)?;
            match wait_ready(&mut child, port, &dir).await {
                Ok(()) => {
                    tracing::info!(
                        port,
                        dir = %dir.display(),
                        maxmemory,
                        pid = child.id(),
                        "managed redis-server started"
                    );
                    return Ok(Self {
                        child,
                        port,
                        dir,
                        maxmemory,
                        _lock: lock,
                    });
                }
                // Another process took the free port between our probe and Redis's bind.
                Err(ManagedError::Exited { ref log_tail, .. })
                    if config.port.is_none()
                        && attempt < PORT_ATTEMPTS
                        && is_port_conflict(log_tail) =>
                {
                    tracing::debug!(port, "port taken before redis-server bound it; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory, absolute.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds its output.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Its `maxmemory` in bytes.
    pub fn maxmemory(&self) -> u64 {
        self.maxmemory
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Shuts the server down gracefully and waits for the process to exit: `SHUTDOWN`
    /// (Redis writes and syncs the AOF, then exits), after checking that the port still
    /// answers as this process. A server that does not take `SHUTDOWN` within
    /// [`SHUTDOWN_TIMEOUT`] (or whose port answers as another process) is killed instead,
    /// which the returned exit status shows.
    ///
    /// # Errors
    /// [`ManagedError::ShutdownTimeout`] when it did not exit within [`SHUTDOWN_TIMEOUT`]
    /// after that (it is then killed), [`ManagedError::Wait`] when the process cannot be
    /// waited for.
    pub async fn stop(mut self) -> Result<ExitStatus, ManagedError> {
        if let Some(status) = self.child.try_wait().map_err(ManagedError::Wait)? {
            return Ok(status);
        }
        let pid = self.child.id();
        // The reply to SHUTDOWN comes when the server exits, after its last AOF write.
        let reply = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
            let client = redis::Client::open(self.url())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await?;
            // Never shut down a server that is not ours (ours may have died and its port
            // been taken since).
            if !pid.is_some_and(|pid| answers_as(&info, pid)) {
                return Ok(false);
            }
            // On success the server closes the connection instead of replying, so an
            // error is expected; whether it worked shows in whether the process exits.
            if let Err(e) = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await
                && !e.is_io_error()
                && !e.is_connection_dropped()
            {
                return Err(e);
            }
            Ok(true)
        })
        .await;
        match reply {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!(
                    "the managed redis-server's port answers as another process; killing it"
                );
                let _ = self.child.start_kill();
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "SHUTDOWN to the managed redis-server failed; killing it");
                let _ = self.child.start_kill();
            }
            Err(_) => {
                tracing::warn!(
                    "the managed redis-server did not take SHUTDOWN in time; killing it"
                );
                let _ = self.child.start_kill();
            }
        }
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(%status, "managed redis-server stopped");
                Ok(status)
            }
            Ok(Err(e)) => Err(ManagedError::Wait(e)),
            Err(_) => {
                // Already exited in the meantime or not, it must be gone before we return.
                let _ = self.child.start_kill();
                self.child.wait().await.map_err(ManagedError::Wait)?;
                let log = self.log_path();
                Err(ManagedError::ShutdownTimeout {
                    timeout: SHUTDOWN_TIMEOUT,
                    log_tail: log_tail(&log),
                    log,
                })
            }
        }
    }
}

/// Runs the server in the foreground with its output going to the log file; the process
/// is killed when its handle is dropped.
fn spawn(binary: &Path, dir: &Path, port: u16, maxmemory: u64) -> Result<Child, ManagedError> {
    let dir_error = |source| ManagedError::DataDir {
        dir: dir.to_path_buf(),
        source,
    };
    let log = File::create(dir.join(LOG_FILE)).map_err(dir_error)?;
    let log_err = log.try_clone().map_err(dir_error)?;
    let mut command = Command::new(binary);
    command
        .args(server_args(port, dir))
        .args(["--maxmemory", &maxmemory.to_string()])
        .args(["--maxmemory-policy", "allkeys-lru"])
        .args(["--appendonly", "yes"])
        .args(["--appendfsync", "everysec"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    command.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ManagedError::BinaryNotFound {
            binary: binary.to_path_buf(),
        },
        _ => ManagedError::Spawn {
            binary: binary.to_path_buf(),
            source,
        },
    })
}

/// Waits until the server answers `PING`, exits, or [`STARTUP_TIMEOUT`] passes (then it is
/// killed).
async fn wait_ready(child: &mut Child, port: u16, dir: &Path) -> Result<(), ManagedError> {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let log = dir.join(LOG_FILE);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap_or_else(|e| panic!("bug: a loopback URL does not parse: {e}"));
    loop {
        if let Some(status) = child.try_wait().map_err(ManagedError::Wait)? {
            return Err(ManagedError::Exited {
                status,
                log_tail: log_tail(&log),
                log,
            });
        }
        let answer = tokio::time::timeout(PING_TIMEOUT, async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut conn)
                .await
        })
        .await;
        // Only our own process counts: when another server holds the port, ours is about
        // to exit with "Address already in use".
        if let Ok(Ok(info)) = answer
            && child.id().is_some_and(|pid| answers_as(&info, pid))
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.start_kill();
            child.wait().await.map_err(ManagedError::Wait)?;
            return Err(ManagedError::StartTimeout {
                timeout: STARTUP_TIMEOUT,
                log_tail: log_tail(&log),
                log,
            });
        }
        tokio::time::sleep(PING_INTERVAL).await;
    }
}

/// The arguments every server started here shares: loopback only, the port, the data
/// directory, in the foreground, no RDB snapshots.
pub(crate) fn server_args(port: u16, dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--daemonize",
        "no",
        "--save",
        "",
        "--dir",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(dir.as_os_str().to_owned());
    args
}

/// A port on 127.0.0.1 that was free a moment ago. Another process may take it before the
/// server binds it; callers retry on [`is_port_conflict`].
pub(crate) fn free_loopback_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Whether an `INFO server` answer comes from the process `pid`.
pub(crate) fn answers_as(info: &str, pid: u32) -> bool {
    info.lines()
        .filter_map(|line| line.trim().strip_prefix("process_id:"))
        .any(|id| id.parse() == Ok(pid))
}

/// Whether a server's log says its port was taken.
pub(crate) fn is_port_conflict(log: &str) -> bool {
    log.contains("Address already in use")
}

/// The last few KiB of a log file, for error messages; a note instead when it cannot be
/// read.
pub(crate) fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) if text.trim().is_empty() => "(the log is empty)".to_owned(),
        Ok(text) => text,
        Err(e) => format!("(the log {} cannot be read: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_fractions_in_range_are_accepted() {
        for fraction in [0.1, 0.3, 0.5, 0.7] {
            validate_memory_fraction(fraction).unwrap();
        }
    }

    #[test]
    fn memory_fractions_out_of_range_are_refused_with_the_range_named() {
        for fraction in [
            0.0,
            0.099,
            0.701,
            1.0,
            -0.3,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let err = validate_memory_fraction(fraction).unwrap_err();
            assert!(
                matches!(err, ManagedError::MemoryFraction { fraction: f } if f.to_bits() == fraction.to_bits()),
                "{fraction}: {err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains("between 0.1 and 0.7") && message.contains(&fraction.to_string()),
                "{message}"
            );
        }
    }

    #[test]
    fn info_server_names_its_process() {
        let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\ntcp_port:6379\r\n";
        assert!(answers_as(info, 4242));
        assert!(!answers_as(info, 424));
        assert!(!answers_as("# Server\r\nredis_version:7.0.15\r\n", 4242));
    }

    #[test]
    fn log_tail_keeps_the_end_of_a_long_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text = "x".repeat(3 * LOG_TAIL_BYTES as usize);
        text.push_str("the last line\n");
        std::fs::write(&path, &text).unwrap();
        let tail = log_tail(&path);
        assert_eq!(tail.len(), LOG_TAIL_BYTES as usize);
        assert!(tail.ends_with("the last line\n"));
        assert!(log_tail(&dir.path().join("missing")).contains("cannot be read"));
    }
}
