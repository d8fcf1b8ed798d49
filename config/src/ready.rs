//! The ready file: how a server process tells whoever started it which
//! addresses its listeners got, so configs and flags can say port 0 and no
//! one has to guess a free port (and race another process for it).
//!
//! Every server subcommand of `molt` takes `--ready-file PATH`. Once all of
//! its listeners are bound it writes, atomically, one JSON object:
//!
//! ```json
//! {"listeners": {"http": "127.0.0.1:40123", "https": "127.0.0.1:40124"}}
//! ```
//!
//! A reader waits for the file to exist and then reads it whole; it is
//! never seen half-written. Listener names are [`HTTP`] (plain HTTP),
//! [`HTTPS`] (TLS), [`API`] (the control plane's API) and [`ADMIN`] (the
//! data plane's metrics and health listener).

use crate::files::write_atomically;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

/// A plain-HTTP listener.
pub const HTTP: &str = "http";
/// A TLS listener.
pub const HTTPS: &str = "https";
/// The control plane's API listener.
pub const API: &str = "api";
/// The data plane's admin listener (metrics, health, readiness).
pub const ADMIN: &str = "admin";

/// What a ready file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Listener name to the address it is bound to.
    pub listeners: BTreeMap<String, SocketAddr>,
}

impl Ready {
    /// A ready file naming these listeners.
    pub fn new<'a>(listeners: impl IntoIterator<Item = (&'a str, SocketAddr)>) -> Self {
        Self {
            listeners: listeners
                .into_iter()
                .map(|(name, addr)| (name.to_owned(), addr))
                .collect(),
        }
    }

    /// Write it to `path`, replacing the file whole (temp file + rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        write_atomically(path, &json)
    }

    /// Read the ready file at `path`.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// Write the ready file at `path` naming `listeners`: what every server
/// calls once all of its listeners are bound.
pub fn write_ready_file<'a>(
    path: &Path,
    listeners: impl IntoIterator<Item = (&'a str, SocketAddr)>,
) -> std::io::Result<()> {
    Ready::new(listeners).write(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_is_the_documented_json_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("molt-ready-{}", std::process::id()));
        let path = dir.join("ready.json");
        let http: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let api: SocketAddr = "127.0.0.1:40124".parse().unwrap();
        write_ready_file(&path, [(HTTP, http), (API, api)]).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"listeners": {"http": "127.0.0.1:40123", "api": "127.0.0.1:40124"}})
        );
        let ready = Ready::read(&path).unwrap();
        assert_eq!(ready.listeners[HTTP], http);
        assert_eq!(ready.listeners[API], api);
        // No temp file is left beside it.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ready.json"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
