//! TLS for the client listener: rustls through Pingora, HTTP/2 and
//! HTTP/1.1 by ALPN, and a self-signed certificate for loopback when asked.

use molt_config::TlsConfig;
use pingora_core::listeners::tls::TlsSettings;
use std::path::Path;

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
    Load(String),
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

/// Settings for the TLS listener. Certificate files are checked here, so a
/// bad file is a startup error rather than Pingora's panic at bind time.
pub fn settings(cfg: &TlsConfig) -> Result<TlsSettings, TlsError> {
    if cfg.self_signed {
        ensure_self_signed(&cfg.cert_file, &cfg.key_file)?;
    }
    let cert = cfg.cert_file.to_string_lossy();
    let key = cfg.key_file.to_string_lossy();
    let mut s =
        TlsSettings::intermediate(&cert, &key).map_err(|e| TlsError::Load(e.to_string()))?;
    s.set_certificate_chain_file(&cert)
        .map_err(|e| TlsError::Load(format!("cert_file: {e}")))?;
    s.set_private_key_file(&key)
        .map_err(|e| TlsError::Load(format!("key_file: {e}")))?;
    s.enable_h2();
    Ok(s)
}
