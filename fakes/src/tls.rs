//! A self-signed certificate for serving a stand-in over TLS on
//! `127.0.0.1` (the fakes' `spawn_tls`, a test's control plane), with its
//! PEM written where a client's `ca_file` can point.

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the TLS server config: {0}")]
    Config(#[from] rustls::Error),
}

/// A fresh self-signed certificate for `127.0.0.1`: its PEM written to
/// `dir/name`, and a server config (ring) presenting it.
pub fn loopback_certificate(
    dir: &Path,
    name: &str,
) -> Result<(PathBuf, Arc<rustls::ServerConfig>), CertificateError> {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let pem = dir.join(name);
    std::fs::write(&pem, ck.cert.pem()).map_err(|source| CertificateError::Write {
        path: pem.clone(),
        source,
    })?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)?;
    Ok((pem, Arc::new(config)))
}
