//! The control plane's outbound HTTP client, for `http://` and `https://`
//! alike: the Fly Machines client and `molt ctl` both use it.
//!
//! HTTPS is rustls on the `ring` provider, trusting the bundled webpki
//! roots (so hosts without CA files work) plus an optional PEM bundle of
//! extra CAs (`ca_file`), for private CAs and tests.

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A pooled client for `http://` and `https://` URIs.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("ca_file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("TLS client config: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client trusting webpki's roots plus `ca_file`'s certificates.
pub fn client(ca_file: Option<&Path>) -> Result<HttpsClient, TlsSetupError> {
    let mut http = HttpConnector::new();
    // The HTTPS connector hands `https://` URIs to it for the TCP part.
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca_file)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The rustls client config: `ring`, webpki roots, plus `ca_file`'s
/// certificates.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let bad = |reason: String| TlsSetupError::CaFile {
            path: path.to_owned(),
            reason,
        };
        for cert in molt_config::outbound::ca_certificates(path).map_err(bad)? {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
