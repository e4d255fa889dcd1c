//! The test harness itself: a server that survives SIGKILL and restarts on its port, and a
//! three-node cluster that serves keys through a cluster client.

use std::net::{Ipv4Addr, TcpStream};

use infercache_redis::testing::{RedisCluster, RedisServer, RedisServerOptions};
use redis::AsyncCommands;

#[test]
fn a_test_server_is_configured_as_asked() {
    let plain = RedisServer::start();
    assert_eq!(plain.config_get("appendonly"), "no");
    assert_eq!(plain.config_get("save"), "");
    assert_eq!(plain.config_get("bind"), "127.0.0.1");
    assert_eq!(plain.config_get("port"), plain.port().to_string());
    assert_eq!(plain.url(), format!("redis://127.0.0.1:{}", plain.port()));

    let aof = RedisServer::start_with(RedisServerOptions { appendonly: true });
    assert_eq!(aof.config_get("appendonly"), "yes");
    assert_eq!(aof.config_get("appendfsync"), "everysec");
    assert_ne!(plain.port(), aof.port());
}

#[tokio::test]
async fn a_test_server_restarts_on_its_port_after_sigkill_with_its_aof() {
    let mut server = RedisServer::start_with(RedisServerOptions { appendonly: true });
    let port = server.port();
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = conn.set("survivor", "yes").await.unwrap();

    server.kill9();
    assert!(!server.is_running());
    assert!(server.pid().is_none());
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let value: Option<String> = conn.get("survivor").await.unwrap();
    assert_eq!(value.as_deref(), Some("yes"));
}

#[tokio::test]
async fn a_three_node_cluster_serves_keys_through_a_cluster_client() {
    let cluster = RedisCluster::start(3);
    assert_eq!(cluster.urls().len(), 3);
    let mut conn = cluster.client().get_async_connection().await.unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        let () = conn.set(key, format!("value of {key}")).await.unwrap();
    }
    for key in &keys {
        let value: String = conn.get(key).await.unwrap();
        assert_eq!(value, format!("value of {key}"));
    }
    // The keys are spread over the nodes: a real cluster, not one server.
    for node in cluster.nodes() {
        assert_eq!(node.config_get("cluster-enabled"), "yes");
        let mut direct = node.client().get_connection().unwrap();
        let held: u64 = redis::cmd("DBSIZE").query(&mut direct).unwrap();
        assert!(held > 0, "node {} holds no key", node.port());
    }
}
