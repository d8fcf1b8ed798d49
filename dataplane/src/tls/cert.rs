//! The certificate the TLS listener serves: read from its PEM files into a
//! rustls `CertifiedKey` (the chain and the key checked to belong together,
//! the leaf's validity read), held in an `ArcSwap` that every handshake
//! reads ([`CertStore`], the listener's certificate resolver), and replaced
//! whole by [`CertReloader`] when the files change: prepare, then swap. A
//! replacement that fails any check is rejected and the one serving stays.

use super::TlsMetrics;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a certificate and key could not be served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: String },
    #[error("{path}: not a PEM certificate chain: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("{path}: no usable PEM private key in it: {reason}")]
    BadKey { path: String, reason: String },
    /// The key is not the leaf certificate's, of a type rustls cannot sign
    /// with, or the leaf cannot be parsed.
    #[error("the certificate and key do not make a usable pair: {0}")]
    Mismatch(String),
    #[error("the certificate expired at {not_after} (unix time)")]
    Expired { not_after: i64 },
}

/// Where the certificate chain and its key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate ready to serve, and what is worth saying about it.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub certified: Arc<CertifiedKey>,
    /// SHA-256 of the leaf certificate's DER, lowercase hex (what
    /// `openssl x509 -fingerprint -sha256` prints, without the colons).
    pub fingerprint: String,
    /// The leaf's `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
    /// Certificates in the chain served (the leaf first).
    pub chain_len: usize,
    /// SHA-256 over both files' bytes: tells an unchanged pair from a new one.
    files_digest: [u8; 32],
}

impl CertFiles {
    /// Read both files and build the pair, checking that the key is the
    /// leaf's. Blocking (reads files).
    pub fn load(&self) -> Result<LoadedCert, CertError> {
        let cert_pem = read(&self.cert)?;
        let key_pem = read(&self.key)?;
        let files_digest = digest(&cert_pem, &key_pem);
        let cert_path = self.cert.display().to_string();
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::BadCertificate {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(CertError::NoCertificate { path: cert_path });
        };
        let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
        let not_after = leaf_not_after(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::BadKey {
            path: self.key.display().to_string(),
            reason: e.to_string(),
        })?;
        let chain_len = chain.len();
        // Pingora's listener signs with `ring`; so does this check.
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| CertError::Mismatch(e.to_string()))?;
        Ok(LoadedCert {
            certified: Arc::new(certified),
            fingerprint,
            not_after,
            chain_len,
            files_digest,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    // Lengths first, so moving bytes from one file to the other changes it.
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

fn leaf_not_after(leaf: &CertificateDer<'_>) -> Result<i64, CertError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CertError::Mismatch(format!("cannot parse the leaf certificate: {e}")))?;
    Ok(parsed.validity().not_after.timestamp())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The listener's certificate resolver: every handshake is given the
/// certificate current when it starts; a swap affects only handshakes after
/// it, never a connection already made.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    pub fn new(first: Arc<CertifiedKey>) -> Self {
        Self {
            current: ArcSwap::new(first),
        }
    }

    fn swap(&self, next: Arc<CertifiedKey>) {
        self.current.store(next);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What a reload attempt came to.
#[derive(Debug)]
pub enum Reloaded {
    /// The files hold what was last tried (served or rejected): nothing done.
    Unchanged,
    /// A new certificate is served to every new connection.
    Swapped(LoadedCert),
}

/// Reloads the served certificate from its files, one attempt at a time.
pub struct CertReloader {
    files: CertFiles,
    store: Arc<CertStore>,
    metrics: TlsMetrics,
    /// The files' digest at the last attempt, served or rejected: a file
    /// event that leaves the bytes as they were does nothing, and a broken
    /// replacement is reported once, not at every event.
    last_tried: Mutex<[u8; 32]>,
}

impl CertReloader {
    /// Start from `first`, already loaded from `files`.
    pub fn new(files: CertFiles, first: &LoadedCert, metrics: TlsMetrics) -> Self {
        metrics.expiry.set(first.not_after);
        Self {
            files,
            store: Arc::new(CertStore::new(first.certified.clone())),
            metrics,
            last_tried: Mutex::new(first.files_digest),
        }
    }

    /// The resolver the listener is built with.
    pub fn store(&self) -> Arc<CertStore> {
        self.store.clone()
    }

    pub fn files(&self) -> &CertFiles {
        &self.files
    }

    /// Load the files and, if they changed since the last attempt (or
    /// `force`), check the pair and swap it in. A pair that fails any check,
    /// or has already expired, is rejected, counted in
    /// `molt_tls_certificate_reload_failures_total`, and the current one
    /// keeps serving. Blocking (reads files).
    pub fn reload(&self, force: bool) -> Result<Reloaded, CertError> {
        // A poisoned lock only means an earlier attempt panicked; the digest
        // it guards is still a digest.
        let mut last = self.last_tried.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.prepare(&mut last, force);
        match &result {
            Ok(Reloaded::Swapped(next)) => {
                self.store.swap(next.certified.clone());
                self.metrics.reloads.inc();
                self.metrics.expiry.set(next.not_after);
            }
            Ok(Reloaded::Unchanged) => {}
            Err(_) => self.metrics.reload_failures.inc(),
        }
        result
    }

    fn prepare(&self, last: &mut [u8; 32], force: bool) -> Result<Reloaded, CertError> {
        let cert = read(&self.files.cert)?;
        let key = read(&self.files.key)?;
        let seen = digest(&cert, &key);
        if seen == *last && !force {
            return Ok(Reloaded::Unchanged);
        }
        *last = seen;
        let next = self.files.load()?;
        if next.not_after < unix_now() {
            return Err(CertError::Expired {
                not_after: next.not_after,
            });
        }
        Ok(Reloaded::Swapped(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    /// A directory of its own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "molt-tls-{name}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Pair {
        cert: String,
        key: String,
        fingerprint: String,
    }

    fn pair(params: rcgen::CertificateParams) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pair {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn localhost() -> Pair {
        pair(rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap())
    }

    fn write(files: &CertFiles, cert: &str, key: &str) {
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
    }

    fn reloader(dir: &TempDir, first: &Pair) -> (CertReloader, TlsMetrics) {
        let files = CertFiles {
            cert: dir.0.join("cert.pem"),
            key: dir.0.join("key.pem"),
        };
        write(&files, &first.cert, &first.key);
        let loaded = files.load().unwrap();
        assert_eq!(loaded.fingerprint, first.fingerprint);
        let metrics = TlsMetrics::new(&Registry::new()).unwrap();
        (CertReloader::new(files, &loaded, metrics.clone()), metrics)
    }

    fn served(r: &CertReloader) -> String {
        let current = r.store.current.load_full();
        hex::encode(Sha256::digest(current.end_entity_cert().unwrap().as_ref()))
    }

    #[test]
    fn a_renewed_pair_is_swapped_in_and_an_unchanged_one_is_left_alone() {
        let dir = TempDir::new("renew");
        let (a, b) = (localhost(), localhost());
        let (r, metrics) = reloader(&dir, &a);
        assert!(matches!(r.reload(false), Ok(Reloaded::Unchanged)));
        assert_eq!(served(&r), a.fingerprint);

        write(r.files(), &b.cert, &b.key);
        match r.reload(false) {
            Ok(Reloaded::Swapped(loaded)) => assert_eq!(loaded.fingerprint, b.fingerprint),
            other => panic!("expected a swap, got {other:?}"),
        }
        assert_eq!(served(&r), b.fingerprint);
        assert_eq!(metrics.reloads.get(), 1);
        assert!(matches!(r.reload(false), Ok(Reloaded::Unchanged)));
        // SIGHUP forces a fresh load even of the same bytes.
        assert!(matches!(r.reload(true), Ok(Reloaded::Swapped(_))));
        assert_eq!(metrics.reload_failures.get(), 0);
    }

    #[test]
    fn a_broken_replacement_is_rejected_and_the_old_pair_keeps_serving() {
        let dir = TempDir::new("broken");
        let (a, b) = (localhost(), localhost());
        let (r, metrics) = reloader(&dir, &a);
        let expired = {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            pair(params)
        };
        let cases: [(&str, &str, &str); 5] = [
            ("garbage", "not a certificate", &a.key),
            ("empty", "", &a.key),
            ("someone else's key", &b.cert, &a.key),
            (
                "a key that is not PEM",
                &b.cert,
                "-----BEGIN PRIVATE KEY-----\nAAAA\n",
            ),
            ("expired", &expired.cert, &expired.key),
        ];
        for (i, (what, cert, key)) in cases.into_iter().enumerate() {
            write(r.files(), cert, key);
            assert!(r.reload(false).is_err(), "{what} was accepted");
            assert_eq!(
                served(&r),
                a.fingerprint,
                "{what} replaced the served certificate"
            );
            assert_eq!(metrics.reload_failures.get(), i as u64 + 1, "{what}");
            // The same broken bytes are reported once, not at every event.
            assert!(matches!(r.reload(false), Ok(Reloaded::Unchanged)), "{what}");
        }
        assert_eq!(metrics.reloads.get(), 0);

        write(r.files(), &b.cert, &b.key);
        assert!(matches!(r.reload(false), Ok(Reloaded::Swapped(_))));
        assert_eq!(served(&r), b.fingerprint);
    }

    #[test]
    fn a_missing_file_is_an_error_with_its_path() {
        let dir = TempDir::new("missing");
        let a = localhost();
        let (r, _) = reloader(&dir, &a);
        std::fs::remove_file(&r.files().key).unwrap();
        let err = r.reload(false).unwrap_err().to_string();
        assert!(err.contains("key.pem"), "{err}");
        assert_eq!(served(&r), a.fingerprint);
    }
}
