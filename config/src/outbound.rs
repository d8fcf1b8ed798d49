//! What the planes' outbound HTTPS clients share: the data plane's client
//! of the control plane (`[control_plane] ca_file`), and the control plane's
//! Fly client and `molt ctl` (`[fleet] ca_file`, `--ca-file`).
//!
//! Each builds its own rustls config (the roots it trusts differ); what they
//! share is reading the extra CAs a config names, and turning a failed
//! connection into a message that says why.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::error::Error;
use std::path::Path;

/// The PEM certificates in `path`, for a client's root store. Fails, with a
/// reason to put beside the path, when the file cannot be read, does not
/// parse, or holds no certificate (a key file named by mistake).
pub fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// `e` and its causes, outermost first. An `io::Error` wrapping another
/// error reports that one as its `source`'s source, skipping it (and with it
/// rustls' verdict on a handshake); this follows the wrapped error instead.
pub fn causes<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |&err| {
        match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn Error + 'static)),
            None => err.source(),
        }
    })
}

/// The texts of `e` and its causes, `: `-joined; an `io::Error` that
/// displays as the error it wraps is said once. Clients' own texts ("client
/// error (Connect)") say nothing about why; the chain does.
pub fn cause_text(e: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in causes(e) {
        let text = err.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("certificate not trusted")]
    struct Verdict;

    #[test]
    fn the_chain_goes_through_io_errors_to_what_they_wrap() {
        let e = Outer(io::Error::new(io::ErrorKind::InvalidData, Verdict));
        let chain: Vec<String> = causes(&e).map(ToString::to_string).collect();
        // The io::Error displays as the verdict it wraps: said once.
        assert_eq!(
            chain,
            [
                "outer",
                "certificate not trusted",
                "certificate not trusted"
            ]
        );
        assert!(causes(&e).any(|c| c.downcast_ref::<Verdict>().is_some()));
        assert_eq!(cause_text(&e), "outer: certificate not trusted");
    }

    #[test]
    fn ca_files_without_certificates_are_refused() {
        let dir = std::env::temp_dir().join(format!("molt-outbound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert_eq!(
            ca_certificates(&empty).unwrap_err(),
            "no PEM certificate in it"
        );
        assert!(ca_certificates(&dir.join("missing.pem")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
