//! The managed local Redis (`infercache serve --redis auto`): started, configured as
//! stated, holding its AOF in its data directory, stopped; and its refusals.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infercache_redis::managed::{ManagedConfig, ManagedError, ManagedRedis};
use infercache_redis::testing::RedisServer;

fn config(dir: &Path) -> ManagedConfig {
    ManagedConfig::new(dir.join("redis"))
}

async fn connection(redis: &ManagedRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn config_get(conn: &mut redis::aio::MultiplexedConnection, name: &str) -> String {
    let mut values: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await
        .unwrap();
    values.remove(name).unwrap_or_else(|| panic!("no {name}"))
}

/// MemTotal from /proc/meminfo, read independently of the code under test.
fn mem_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn port_refuses_connections(port: u16) -> bool {
    matches!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Files under `dir`, recursively (Redis 7 keeps the AOF in `appendonlydir/`).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn managed_redis_is_configured_as_stated() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(tmp.path());
    config.memory_fraction = 0.2;
    let redis = ManagedRedis::start(config).await.unwrap();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    let mut conn = connection(&redis).await;

    let maxmemory: u64 = config_get(&mut conn, "maxmemory").await.parse().unwrap();
    assert_eq!(maxmemory, redis.maxmemory());
    let expected = mem_total_bytes() as f64 * 0.2;
    assert!(
        (maxmemory as f64 - expected).abs() < expected * 0.01,
        "maxmemory {maxmemory} is not 0.2 of RAM ({expected})"
    );
    assert_eq!(
        config_get(&mut conn, "maxmemory-policy").await,
        "allkeys-lru"
    );
    assert_eq!(config_get(&mut conn, "appendonly").await, "yes");
    assert_eq!(config_get(&mut conn, "appendfsync").await, "everysec");
    assert_eq!(config_get(&mut conn, "save").await, "");
    assert_eq!(config_get(&mut conn, "daemonize").await, "no");
    assert_eq!(config_get(&mut conn, "bind").await, "127.0.0.1");
    assert_eq!(
        config_get(&mut conn, "port").await,
        redis.port().to_string()
    );
    let dir = tmp.path().join("redis").canonicalize().unwrap();
    assert_eq!(PathBuf::from(config_get(&mut conn, "dir").await), dir);
    assert_eq!(redis.dir().canonicalize().unwrap(), dir);

    assert!(redis.stop().await.unwrap().success());
}

#[tokio::test]
async fn managed_redis_keeps_its_aof_in_its_data_dir_and_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = ManagedRedis::start(config(tmp.path())).await.unwrap();
    let (port, pid, dir) = (redis.port(), redis.pid().unwrap(), redis.dir().to_owned());
    let mut conn = connection(&redis).await;
    let () = redis::cmd("SET")
        .arg("kept")
        .arg("across restarts")
        .query_async(&mut conn)
        .await
        .unwrap();

    let status = redis.stop().await.unwrap();
    assert!(status.success(), "redis-server exited with {status}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "redis-server (pid {pid}) is still there after stop"
    );
    assert!(port_refuses_connections(port));
    let files = files_under(&dir);
    let aof: Vec<_> = files
        .iter()
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("appendonly")
        })
        .collect();
    assert!(!aof.is_empty(), "no AOF in {}: {files:?}", dir.display());
    assert!(
        !files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "rdb")
                && !f.to_string_lossy().contains("appendonly")),
        "an RDB snapshot was written: {files:?}"
    );
    let log = std::fs::read_to_string(dir.join(infercache_redis::managed::LOG_FILE)).unwrap();
    assert!(log.contains("Ready to accept connections"), "{log}");

    // The next start over the same directory finds the data.
    let redis = ManagedRedis::start(config(tmp.path())).await.unwrap();
    let mut conn = connection(&redis).await;
    let value: Option<String> = redis::cmd("GET")
        .arg("kept")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("across restarts"));
    redis.stop().await.unwrap();
}

#[tokio::test]
async fn dropping_a_running_managed_redis_kills_it() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = ManagedRedis::start(config(tmp.path())).await.unwrap();
    let port = redis.port();
    drop(redis);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !port_refuses_connections(port) {
        assert!(
            Instant::now() < deadline,
            "port {port} still open after drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn managed_redis_uses_the_given_port() {
    let tmp = tempfile::tempdir().unwrap();
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = config(tmp.path());
    config.port = Some(port);
    let redis = ManagedRedis::start(config).await.unwrap();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    redis.stop().await.unwrap();
}

#[tokio::test]
async fn an_out_of_range_memory_fraction_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    for fraction in [0.05, 0.75, f64::NAN] {
        let mut config = config(tmp.path());
        config.memory_fraction = fraction;
        let err = ManagedRedis::start(config).await.unwrap_err();
        assert!(
            matches!(err, ManagedError::MemoryFraction { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("between 0.1 and 0.7"), "{err}");
    }
    assert!(!tmp.path().join("redis").exists());
}

#[tokio::test]
async fn a_missing_binary_is_a_typed_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    for binary in [
        PathBuf::from("infercache-test-no-such-redis-server"),
        tmp.path().join("bin/redis-server"),
    ] {
        let mut config = config(tmp.path());
        config.binary = binary.clone();
        let err = ManagedRedis::start(config).await.unwrap_err();
        match &err {
            ManagedError::BinaryNotFound { binary: named } => assert_eq!(named, &binary),
            other => panic!("{other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&binary.display().to_string())
                && message.contains("apt-get install redis-server"),
            "{message}"
        );
    }
}

/// The port is held by another Redis, which answers PING: that must not pass for ours.
#[tokio::test]
async fn a_server_that_exits_at_start_is_reported_with_its_log() {
    let tmp = tempfile::tempdir().unwrap();
    let other = RedisServer::start();
    let mut config = config(tmp.path());
    config.port = Some(other.port());
    let err = ManagedRedis::start(config).await.unwrap_err();
    match &err {
        ManagedError::Exited {
            status, log_tail, ..
        } => {
            assert!(!status.success());
            assert!(log_tail.contains("Address already in use"), "{log_tail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("Address already in use"), "{err}");
}

#[tokio::test]
async fn a_second_managed_redis_over_one_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let first = ManagedRedis::start(config(tmp.path())).await.unwrap();
    let err = ManagedRedis::start(config(tmp.path())).await.unwrap_err();
    assert!(matches!(err, ManagedError::DirInUse { .. }), "{err:?}");
    first.stop().await.unwrap();
    // The lock goes with the server.
    ManagedRedis::start(config(tmp.path()))
        .await
        .unwrap()
        .stop()
        .await
        .unwrap();
}
