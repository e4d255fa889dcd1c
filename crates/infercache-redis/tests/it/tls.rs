//! `rediss://` against a real `redis-server` serving TLS with certificates made here: the
//! CA file from the configuration is trusted, and a server signed by another CA is refused
//! at start with a clear error.

use std::sync::atomic::AtomicUsize;

use infercache_engine::Source;
use infercache_redis::testing::RedisServer;
use infercache_redis::testing::{ca, server_cert};
use infercache_redis::{RedisTierError, Target};

use crate::tier::{get, key, node, tier};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_with_a_ca_file_serves_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let authority = ca("infercache test CA");
    let (cert, private) = server_cert(&authority);
    let redis = RedisServer::start_tls(&cert, &private);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, authority.pem()).unwrap();
    let with_ca = || {
        tier(Target::Single(redis.tls_url()), |c| {
            c.tls_ca_file = Some(ca_file.clone());
        })
    };
    let (ta, tb) = (with_ca(), with_ca());
    ta.verify()
        .await
        .expect("the CA signs the server's certificate");
    let (a, b) = (node(&ta, false).await, node(&tb, false).await);
    let calls = AtomicUsize::new(0);
    assert_eq!(
        get(&a, &key(&a, "m", "x"), &calls).await.1,
        Source::Computed
    );
    assert_eq!(get(&b, &key(&b, "m", "x"), &calls).await.1, Source::Remote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_ca_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, private) = server_cert(&ca("the server's CA"));
    let redis = RedisServer::start_tls(&cert, &private);
    let ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, ca("another CA").pem()).unwrap();
    let t = tier(Target::Single(redis.tls_url()), |c| {
        c.tls_ca_file = Some(ca_file.clone());
    });
    let err = t.verify().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RedisTierError::Tls(_)), "{err:?}");
    assert!(
        text.contains("not trusted") && text.contains(&redis.tls_url()),
        "names the server and the cause: {text}"
    );
}

#[tokio::test]
async fn a_ca_file_that_is_missing_or_not_pem_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    for (file, says) in [(&missing, "cannot be read"), (&junk, "no PEM certificate")] {
        let mut config =
            infercache_redis::RedisConfig::new(Target::Single("rediss://127.0.0.1:1".into()));
        config.tls_ca_file = Some(file.clone());
        let err =
            infercache_redis::RedisTier::connect(config, infercache_core::SystemClock::shared())
                .unwrap_err();
        assert!(
            matches!(&err, RedisTierError::Tls(m) if m.contains(says)),
            "{err}"
        );
    }
    let mut plain =
        infercache_redis::RedisConfig::new(Target::Single("redis://127.0.0.1:1".into()));
    plain.tls_ca_file = Some(junk);
    assert!(matches!(plain.validate(), Err(RedisTierError::Config(_))));
}
