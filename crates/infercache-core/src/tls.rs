//! The one builder of the workspace's HTTP clients, so that every client (upstream
//! models, the weights client, the command line) trusts the same roots the same way.
//!
//! TLS is rustls with the ring provider (the one the Redis tier uses; no C toolchain
//! beyond ring's). A server certificate is verified against, together:
//!
//! - Mozilla's root programme, compiled in (`webpki-roots`);
//! - the system's roots (`rustls-native-certs`: `/etc/ssl/certs` on Debian, or
//!   `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), where there are any;
//! - extra roots of one client, such as a model's `ca_file`.
//!
//! Why both, rather than `rustls-platform-verifier` (reqwest's own choice): on Linux that
//! verifier also reads the system's roots offline, but where none are installed (a fresh
//! `debian:12-slim` container has no `ca-certificates`) it refuses to build any client,
//! even one that only speaks `http://`, so nothing would start. The compiled-in bundle
//! works offline on any machine; the system's roots add what an operator installed with
//! `update-ca-certificates`. Neither looks anything up on the network.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
pub use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Why TLS for a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A CA file could not be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the settings (a bug otherwise) or a root certificate.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificates of the PEM file at `path` (one or more `CERTIFICATE` blocks).
///
/// # Errors
/// [`TlsError::CaFile`] when it cannot be read, a block does not parse, or it holds none.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(error("holds no PEM CERTIFICATE block".to_owned()));
    }
    let mut check = RootCertStore::empty();
    for cert in &certs {
        check
            .add(cert.clone())
            .map_err(|e| error(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(certs)
}

/// rustls client settings trusting Mozilla's roots, the system's and `extra_roots`.
///
/// # Errors
/// [`TlsError::Rustls`] when an extra root is not a usable CA certificate.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Absent or unreadable system roots are not an error: the bundle above remains.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    for cert in extra_roots {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A `reqwest` client builder with [`client_config`]'s TLS; the caller adds its own
/// timeouts and policies.
///
/// # Errors
/// As [`client_config`].
pub fn client_builder(
    extra_roots: &[CertificateDer<'static>],
) -> Result<reqwest::ClientBuilder, TlsError> {
    Ok(reqwest::Client::builder().tls_backend_preconfigured(client_config(extra_roots)?))
}

/// Whether `error` (or one of its causes) is a failure of TLS itself: an untrusted or
/// invalid certificate, a failed handshake.
pub fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps (the connector wraps rustls's error
        // in one `io::Error` inside another): look inside instead.
        cause = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// A `reqwest` client with [`client_config`]'s TLS and reqwest's defaults otherwise: the
/// stand-in for `infercache_core::tls::client()`, which panics in this workspace (its reqwest
/// has no crypto provider of its own).
///
/// # Panics
/// Never with no extra roots, unless rustls refuses its own defaults (a bug).
pub fn client() -> reqwest::Client {
    client_builder(&[])
        .expect("rustls takes its own default settings")
        .build()
        .expect("an HTTP client with the default TLS settings builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rustls_error_is_found_inside_nested_io_errors() {
        let rustls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls);
        let outer = std::io::Error::other(inner);
        assert!(is_tls_failure(&outer));
        assert!(!is_tls_failure(&std::io::Error::other(
            "connection refused"
        )));
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("infercache-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let e = read_ca_file(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no PEM"), "{e}");
        let missing = dir.join("missing.pem");
        let e = read_ca_file(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
