//! TLS for the client listener: rustls through Pingora (TLS 1.2 and 1.3,
//! `ring`'s AEAD suites only), HTTP/2 and HTTP/1.1 by ALPN, a self-signed
//! certificate for loopback when asked, and the served certificate reloaded
//! without a restart when its files change ([`cert`], [`watch`]).
//!
//! The listener is given a certificate resolver ([`cert::CertStore`])
//! instead of the files: Pingora's rustls `TlsSettings` would read them once,
//! at bind time. New connections get the certificate current at their
//! handshake; connections already made keep theirs.

pub mod cert;
pub mod watch;

use cert::{CertFiles, CertReloader};
use molt_config::TlsConfig;
use pingora_core::listeners::tls::TlsSettings;
use prometheus::{IntCounter, IntGauge, Registry};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot create a self-signed certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("server.tls: {0}")]
    Load(#[from] cert::CertError),
    #[error("cannot set up the TLS listener: {0}")]
    Settings(String),
    #[error("cannot register the TLS metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Write a self-signed certificate and key for `localhost`/`127.0.0.1`
/// unless both files exist already.
pub fn ensure_self_signed(cert: &Path, key: &Path) -> Result<(), TlsError> {
    if cert.is_file() && key.is_file() {
        return Ok(());
    }
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    for (path, pem) in [(cert, ck.cert.pem()), (key, ck.key_pair.serialize_pem())] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
                path: dir.display().to_string(),
                source,
            })?;
        }
        std::fs::write(path, pem).map_err(|source| TlsError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// The TLS listener's settings and the reloader of its certificate.
pub struct ServingTls {
    pub settings: TlsSettings,
    pub reloader: Arc<CertReloader>,
}

/// Load the certificate and key (checked here, so a bad file is a startup
/// error rather than Pingora's panic at bind time) and build the listener's
/// settings around a resolver that later reloads can swap.
pub fn prepare(cfg: &TlsConfig, registry: &Registry) -> Result<ServingTls, TlsError> {
    if cfg.self_signed {
        ensure_self_signed(&cfg.cert_file, &cfg.key_file)?;
    }
    let files = CertFiles {
        cert: cfg.cert_file.clone(),
        key: cfg.key_file.clone(),
    };
    let first = files.load()?;
    tracing::info!(
        fingerprint_sha256 = %first.fingerprint,
        not_after = first.not_after,
        chain_len = first.chain_len,
        "TLS certificate loaded"
    );
    let reloader = Arc::new(CertReloader::new(files, &first, TlsMetrics::new(registry)?));
    // The paths are only Pingora's fallback; with a resolver it never reads them.
    let mut settings = TlsSettings::intermediate(
        &cfg.cert_file.to_string_lossy(),
        &cfg.key_file.to_string_lossy(),
    )
    .map_err(|e| TlsError::Settings(e.to_string()))?;
    settings.set_cert_resolver(reloader.store());
    settings.enable_h2();
    Ok(ServingTls { settings, reloader })
}

/// The served certificate's reloads and expiry.
#[derive(Debug, Clone)]
pub struct TlsMetrics {
    pub reloads: IntCounter,
    pub reload_failures: IntCounter,
    /// The served leaf's `notAfter` (Unix seconds), for an expiry alert.
    pub expiry: IntGauge,
}

impl TlsMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reloads = IntCounter::new(
            "molt_tls_certificate_reloads_total",
            "New TLS certificates swapped in without a restart.",
        )?;
        let reload_failures = IntCounter::new(
            "molt_tls_certificate_reload_failures_total",
            "TLS certificate replacements rejected (unreadable, mismatched key, expired); the previous one kept serving.",
        )?;
        let expiry = IntGauge::new(
            "molt_tls_certificate_expiry_timestamp_seconds",
            "When the served TLS certificate expires (its notAfter, Unix seconds).",
        )?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(reload_failures.clone()))?;
        registry.register(Box::new(expiry.clone()))?;
        Ok(Self {
            reloads,
            reload_failures,
            expiry,
        })
    }
}
