//! `https://` upstreams: a real TLS upstream on loopback with certificates made here. The
//! model's `ca_file` makes it trusted; without one, or with another CA's, every call is
//! refused with `upstream_tls_failed` naming the model, and nothing is cached; a `ca_file`
//! that cannot be used stops the server at start with an error naming model and file.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::post;
use infercache_redis::testing::ca;
use infercache_server::{ServeArgs, ServerConfig, ServerError};
use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// A plain JSON upstream over TLS on 127.0.0.1 with a certificate `ca` signed; it counts
/// the rows it is sent. Its base URL (`https://127.0.0.1:PORT`).
async fn tls_upstream(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, Arc<AtomicUsize>) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let rows = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&rows);
    let app = Router::new().route(
        "/score",
        post(move |body: axum::Json<Value>| {
            let counted = Arc::clone(&counted);
            async move {
                let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
                counted.fetch_add(inputs.len(), Ordering::SeqCst);
                let outputs: Vec<Value> = inputs.iter().map(|i| json!({ "in": i })).collect();
                axum::Json(json!({ "outputs": outputs }))
            }
        }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
    )
    .unwrap();
    tokio::spawn(async move { server.serve(app.into_make_service()).await.unwrap() });
    (url, rows)
}

/// The configuration of one `http-json` model at `url`, with `ca_file` when given.
fn config(dir: &Path, url: &str, ca_file: Option<&Path>) -> ServerConfig {
    let ca_line = ca_file.map_or(String::new(), |p| {
        format!("ca_file = {:?}", p.display().to_string())
    });
    let path = dir.join("infercache.toml");
    std::fs::write(
        &path,
        format!(
            "no_disk = true\n\n[[models]]\nname = \"scorer\"\nbackend = \"http-json\"\n\
             url = \"{url}/score\"\ntimeout = \"5s\"\nretries = 0\n{ca_line}\n"
        ),
    )
    .unwrap();
    ServerConfig::from_args(&ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    })
    .unwrap()
}

/// A server for `config` on a loopback port: its base URL and a stopper.
async fn serve(
    config: ServerConfig,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), ServerError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(infercache_server::run(config, listener, async move {
        let _ = stopped.await;
    }));
    (base, stop, task)
}

/// `POST /v1/models/scorer/predict` with `inputs`, retried while the server starts:
/// (status, `X-Cache`, body).
async fn predict(base: &str, inputs: Value) -> (u16, String, Value) {
    let client = infercache_core::tls::client();
    for _ in 0..200 {
        if let Ok(r) = client
            .post(format!("{base}/v1/models/scorer/predict"))
            .json(&json!({ "inputs": inputs }))
            .send()
            .await
        {
            let status = r.status().as_u16();
            let cache = r
                .headers()
                .get("x-cache")
                .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
            return (status, cache, r.json().await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the server never answered");
}

#[tokio::test]
async fn an_https_upstream_is_served_with_its_ca_file_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let authority = ca("infercache upstream test CA");
    let (url, rows) = tls_upstream(&authority).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, authority.pem()).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, ca("another CA").pem()).unwrap();

    // Trusted through the model's ca_file: served, then cached.
    let (base, stop, task) = serve(config(dir.path(), &url, Some(&ca_file))).await;
    let (status, cache, body) = predict(&base, json!(["x"])).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"), "{body}");
    assert_eq!(body["outputs"][0], json!({"in": "x"}));
    let (status, cache, _) = predict(&base, json!(["x"])).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert_eq!(rows.load(Ordering::SeqCst), 1);
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    // Without a ca_file (the CA is in no root store) or with another CA's: refused, with
    // the error naming the model and what to check; the upstream computed nothing.
    for ca_file in [None, Some(other_ca.as_path())] {
        let (base, stop, task) = serve(config(dir.path(), &url, ca_file)).await;
        let (status, _, body) = predict(&base, json!(["y"])).await;
        assert_eq!(status, 502, "{ca_file:?}: {body}");
        assert_eq!(body["error"]["code"], "upstream_tls_failed", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`scorer`") && message.contains("ca_file"),
            "{message}"
        );
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
    assert_eq!(rows.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unusable_ca_file_stops_the_server_at_start_naming_model_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "this is no certificate\n").unwrap();
    let missing = dir.path().join("missing-ca.pem");
    for file in [&not_pem, &missing] {
        let (_, _stop, task) = serve(config(dir.path(), "https://127.0.0.1:9", Some(file))).await;
        let error = task.await.unwrap().unwrap_err().to_string();
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            error.contains("`scorer`") && error.contains("ca_file") && error.contains(name),
            "{error}"
        );
    }
}
