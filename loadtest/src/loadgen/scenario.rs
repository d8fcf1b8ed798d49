//! Scenario files and the validated [`Plan`] a load run executes.
//!
//! This module owns the on-disk format (TOML, or JSON when the file name
//! ends in `.json`), its defaults, and the merge of command-line overrides
//! (`--target`, `--header`, `--rate`, ...) over the file. Everything that can
//! be wrong with a run (bad URL, header, rate, missing body file) is found
//! here, before a single connection is opened.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Uri};
use serde::{Deserialize, Serialize};

use super::{LoadArgs, LoadError};

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Fixed rate: requests are due at scheduled times whether or not
    /// earlier ones have finished; latency counts from the scheduled time.
    Open,
    /// Fixed concurrency: each worker sends its next request as soon as the
    /// previous one finished; measures throughput.
    Closed,
}

/// A scenario file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Defaults to the file name without its extension.
    pub name: Option<String>,
    /// Free text: what the scenario measures.
    pub description: Option<String>,
    pub mode: Mode,
    /// Open loop: requests per second sent to each target.
    pub rate: Option<f64>,
    /// Measured time per target (split evenly across the rounds).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Unmeasured load per target before the first round.
    #[serde(default, with = "humantime_serde")]
    pub warmup: Option<Duration>,
    /// Targets take turns (A B C A B C ...) in this many rounds.
    pub rounds: Option<u32>,
    /// Open loop: connections per target (the most requests in flight).
    /// Closed loop: workers per target, one connection each.
    pub connections: Option<usize>,
    /// A request that has not finished this long after it was due is an
    /// error (`timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Read responses as server-sent events: time to first event and the
    /// gaps between events are recorded.
    #[serde(default)]
    pub sse: bool,
    pub request: RequestFile,
    /// Where to send; replaced as a whole by `--target`.
    #[serde(default)]
    pub targets: Vec<TargetFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFile {
    /// Default `POST`.
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body, inline.
    pub body: Option<String>,
    /// The body from a file, relative to the scenario file.
    pub body_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    /// Defaults to the URL's `host:port`.
    pub name: Option<String>,
    pub url: String,
    /// Sent to this target only (e.g. its own credential).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Defaults for what a scenario leaves out.
const DEFAULT_CONNECTIONS: usize = 32;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Above this an open-loop schedule is not one a single pacing thread keeps.
const MAX_RATE: f64 = 1_000_000.0;

/// One endpoint under test, resolved and ready to be dialled.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub addr: SocketAddr,
    /// Origin-form request target (`/v1/chat/completions?x=y`).
    pub path: String,
    /// Every header of the request, `Host` included.
    pub headers: HeaderMap,
}

/// A validated run: the scenario with every override applied.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub description: Option<String>,
    pub mode: Mode,
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub rounds: u32,
    pub connections: usize,
    pub timeout: Duration,
    pub sse: bool,
    pub method: Method,
    pub body: Bytes,
    pub targets: Vec<Target>,
}

impl Plan {
    /// Read the scenario named by `args`, apply the overrides, resolve the
    /// targets' addresses.
    pub async fn load(args: &LoadArgs) -> Result<Self, LoadError> {
        let path = &args.scenario;
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| LoadError::scenario(path, format!("cannot read: {e}")))?;
        let file = parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let body = match (&file.request.body, &file.request.body_file) {
            (Some(_), Some(_)) => {
                return Err(LoadError::scenario(
                    path,
                    "request: give body or body_file, not both",
                ))
            }
            (Some(inline), None) => Bytes::from(inline.clone()),
            (None, Some(rel)) => {
                let body_path = base.join(rel);
                let bytes = tokio::fs::read(&body_path).await.map_err(|e| {
                    LoadError::scenario(
                        path,
                        format!("request.body_file {}: {e}", body_path.display()),
                    )
                })?;
                Bytes::from(bytes)
            }
            (None, None) => Bytes::new(),
        };
        let mut plan = Self::from_file(path, file, body, args)?;
        for t in &mut plan.targets {
            t.addr = resolve(&t.url, t.addr).await?;
        }
        Ok(plan)
    }

    /// Everything but I/O: validation and the merge of overrides.
    fn from_file(
        path: &Path,
        file: ScenarioFile,
        body: Bytes,
        args: &LoadArgs,
    ) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::scenario(path, reason);
        let mode = args.mode.unwrap_or(file.mode);
        let rate = args.rate.or(file.rate);
        if mode == Mode::Open {
            match rate {
                Some(r) if r.is_finite() && r > 0.0 && r <= MAX_RATE => {}
                Some(r) => return Err(bad(format!("rate {r} is not in (0, {MAX_RATE}]"))),
                None => return Err(bad("mode = \"open\" needs a rate".into())),
            }
        }
        let duration = args.duration.unwrap_or(file.duration);
        let rounds = args.rounds.or(file.rounds).unwrap_or(1);
        if rounds == 0 {
            return Err(bad("rounds must be at least 1".into()));
        }
        if duration.is_zero() {
            return Err(bad("duration must be more than zero".into()));
        }
        let connections = args
            .connections
            .or(file.connections)
            .unwrap_or(DEFAULT_CONNECTIONS);
        if connections == 0 {
            return Err(bad("connections must be at least 1".into()));
        }
        let method_name = file.request.method.as_deref().unwrap_or("POST");
        let method = Method::from_bytes(method_name.as_bytes())
            .map_err(|_| bad(format!("request.method {method_name:?} is not a method")))?;

        let mut common = HeaderMap::new();
        if !body.is_empty() {
            common.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (k, v) in &file.request.headers {
            insert_header(&mut common, k, v).map_err(|e| bad(format!("request.headers: {e}")))?;
        }

        let target_files: Vec<TargetFile> = if args.targets.is_empty() {
            file.targets
        } else {
            args.targets.iter().map(|t| target_from_arg(t)).collect()
        };
        if target_files.is_empty() {
            return Err(bad(
                "no target: add [[targets]] to the scenario or pass --target URL".into(),
            ));
        }
        let mut targets = Vec::with_capacity(target_files.len());
        for (i, t) in target_files.into_iter().enumerate() {
            let (authority, path_q, default_addr) =
                split_url(&t.url).map_err(|e| bad(format!("targets[{i}].url: {e}")))?;
            let mut headers = common.clone();
            for (k, v) in &t.headers {
                insert_header(&mut headers, k, v)
                    .map_err(|e| bad(format!("targets[{i}].headers: {e}")))?;
            }
            for h in &args.headers {
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| bad(format!("--header {h:?}: expected 'name: value'")))?;
                insert_header(&mut headers, k.trim(), v.trim())
                    .map_err(|e| bad(format!("--header: {e}")))?;
            }
            headers.insert(
                HOST,
                HeaderValue::from_str(&authority)
                    .map_err(|_| bad(format!("targets[{i}].url: bad authority")))?,
            );
            targets.push(Target {
                name: t.name.unwrap_or_else(|| authority.clone()),
                url: t.url,
                addr: default_addr,
                path: path_q,
                headers,
            });
        }
        let name = file.name.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "scenario".into())
        });
        Ok(Self {
            name,
            description: file.description,
            mode,
            rate: if mode == Mode::Open { rate } else { None },
            duration,
            warmup: args.warmup.or(file.warmup).unwrap_or(Duration::ZERO),
            rounds,
            connections,
            timeout: file.timeout.unwrap_or(DEFAULT_TIMEOUT),
            sse: file.sse,
            method,
            body,
            targets,
        })
    }
}

/// TOML unless the file name says JSON.
fn parse(path: &Path, text: &str) -> Result<ScenarioFile, LoadError> {
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        serde_json::from_str(text).map_err(|e| LoadError::scenario(path, e.to_string()))
    } else {
        toml::from_str(text).map_err(|e| LoadError::scenario(path, e.to_string()))
    }
}

/// `--target URL` or `--target NAME=URL`.
fn target_from_arg(arg: &str) -> TargetFile {
    match arg.split_once('=') {
        // A URL's own `=` can only come after `?`, so a name never holds `:`
        // or `/`; anything else is a plain URL.
        Some((name, url)) if !name.contains([':', '/']) => TargetFile {
            name: Some(name.to_owned()),
            url: url.to_owned(),
            headers: BTreeMap::new(),
        },
        _ => TargetFile {
            name: None,
            url: arg.to_owned(),
            headers: BTreeMap::new(),
        },
    }
}

/// `http://host:port/path?q` → (`host:port`, `/path?q`, a placeholder
/// address used when `host` is an IP literal). Only plain HTTP/1.1 targets:
/// TLS would measure the handshake library as much as the proxy.
fn split_url(url: &str) -> Result<(String, String, SocketAddr), String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "{url:?}: scheme {other} is not supported (http only)"
            ))
        }
        None => return Err(format!("{url:?}: needs http://")),
    }
    let authority = uri.authority().ok_or_else(|| format!("{url:?}: no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let addr = host
        .parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, port))
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], port)));
    Ok((authority.as_str().to_owned(), path, addr))
}

/// The address to dial: IP literals as they are, names through the resolver
/// (once, before the run, so DNS never lands in a measurement).
async fn resolve(url: &str, literal: SocketAddr) -> Result<SocketAddr, LoadError> {
    if !literal.ip().is_unspecified() {
        return Ok(literal);
    }
    let uri: Uri = url.parse().map_err(|e| LoadError::Resolve {
        target: url.to_owned(),
        reason: format!("{e}"),
    })?;
    let host = uri.host().unwrap_or_default().to_owned();
    let mut addrs = tokio::net::lookup_host((host.as_str(), literal.port()))
        .await
        .map_err(|e| LoadError::Resolve {
            target: url.to_owned(),
            reason: e.to_string(),
        })?;
    addrs.next().ok_or_else(|| LoadError::Resolve {
        target: url.to_owned(),
        reason: "no address".into(),
    })
}

fn insert_header(map: &mut HeaderMap, name: &str, value: &str) -> Result<(), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    // The value is not echoed: it is often a credential.
    let value =
        HeaderValue::from_str(value).map_err(|_| format!("{name}: value is not a header value"))?;
    map.insert(name, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn args(extra: &[&str]) -> LoadArgs {
        let mut argv = vec!["load", "--scenario", "/tmp/s.toml"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    const TOML: &str = r#"
        mode = "open"
        rate = 500
        duration = "2s"
        warmup = "1s"
        rounds = 2
        [request]
        headers = { "x-extra" = "1" }
        body = '{"model":"m"}'
        [[targets]]
        name = "direct"
        url = "http://127.0.0.1:9/v1/chat/completions"
        headers = { authorization = "Bearer a" }
    "#;

    fn plan(text: &str, path: &str, extra: &[&str]) -> Result<Plan, LoadError> {
        let path = Path::new(path);
        let file = parse(path, text)?;
        let body = Bytes::from(file.request.body.clone().unwrap_or_default());
        Plan::from_file(path, file, body, &args(extra))
    }

    #[test]
    fn file_values_and_defaults() {
        let p = plan(TOML, "/x/chat.toml", &[]).unwrap();
        assert_eq!(p.name, "chat");
        assert_eq!((p.mode, p.rate), (Mode::Open, Some(500.0)));
        assert_eq!(p.duration, Duration::from_secs(2));
        assert_eq!(p.rounds, 2);
        assert_eq!(p.connections, DEFAULT_CONNECTIONS);
        let t = &p.targets[0];
        assert_eq!(t.name, "direct");
        assert_eq!(t.path, "/v1/chat/completions");
        assert_eq!(t.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(t.headers["host"], "127.0.0.1:9");
        assert_eq!(t.headers["authorization"], "Bearer a");
        assert_eq!(t.headers["content-type"], "application/json");
        assert_eq!(t.headers["x-extra"], "1");
    }

    #[test]
    fn command_line_overrides_the_file() {
        let p = plan(
            TOML,
            "/x/chat.toml",
            &[
                "--target",
                "molt=http://127.0.0.1:17080/v1/chat/completions",
                "--target",
                "http://localhost:81/a?b=c",
                "-H",
                "Authorization: Bearer molt_sk_x",
                "--rate",
                "50",
                "--mode",
                "closed",
            ],
        )
        .unwrap();
        assert_eq!((p.mode, p.rate), (Mode::Closed, None));
        assert_eq!(p.targets.len(), 2);
        assert_eq!(p.targets[0].name, "molt");
        assert_eq!(p.targets[0].headers["authorization"], "Bearer molt_sk_x");
        assert!(p.targets[0].headers.get("x-extra").is_some());
        assert_eq!(p.targets[1].name, "localhost:81");
        assert_eq!(p.targets[1].path, "/a?b=c");
        assert!(p.targets[1].addr.ip().is_unspecified(), "resolved later");
    }

    #[test]
    fn json_scenarios_and_errors() {
        let json = r#"{"mode":"closed","duration":"1s","request":{"body":"{}"},
                       "targets":[{"url":"http://127.0.0.1:1/"}]}"#;
        let p = plan(json, "/x/t.json", &[]).unwrap();
        assert_eq!(p.mode, Mode::Closed);

        let err =
            |text: &str, extra: &[&str]| plan(text, "/x/s.toml", extra).unwrap_err().to_string();
        assert!(err(&TOML.replace("rate = 500", ""), &[]).contains("needs a rate"));
        assert!(err(TOML, &["--rate", "0"]).contains("rate 0"));
        assert!(err(TOML, &["--target", "https://x/"]).contains("http only"));
        assert!(err(TOML, &["-H", "nocolon"]).contains("expected 'name: value'"));
        let e = err(TOML, &["-H", "authorization: Bearer \u{7f}secret"]);
        assert!(!e.contains("secret"), "values are never echoed: {e}");
        assert!(err(&TOML.replace("mode", "mood"), &[]).contains("unknown field"));
    }
}
