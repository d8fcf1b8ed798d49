//! The load generator behind `molt load`: runs a scenario file against one
//! or more HTTP targets and reports latency percentiles, throughput, errors
//! and (for SSE) time to first event and inter-event gaps.
//!
//! This module owns the command-line surface ([`LoadArgs`]), the run
//! ([`run`]): warm-up, then targets taking turns in short rounds
//! (A B C A B C ...) so that machine noise hits every target alike, and
//! the [`Report`]. The parts: [`scenario`] (file format, overrides,
//! validation), `driver` (open-loop pacing free of coordinated omission,
//! closed-loop workers), `client` (one HTTP/1.1 keep-alive connection and a
//! timed exchange), `stats` (HDR histograms).

mod client;
mod driver;
mod report;
pub mod scenario;
mod stats;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use report::{Report, TargetReport};
pub use scenario::{Mode, Plan};
pub use stats::Percentiles;

use client::{Conn, RequestTemplate};
use driver::{lock, Load};
use stats::Stats;

/// `molt load`: run a scenario file.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Scenario file (TOML, or JSON if it ends in `.json`).
    #[arg(long)]
    pub scenario: PathBuf,
    /// Target URL, or NAME=URL. Repeat to compare targets in interleaved
    /// rounds. Replaces the scenario's targets.
    #[arg(long = "target", value_name = "[NAME=]URL")]
    pub targets: Vec<String>,
    /// Extra request header, 'name: value', sent to every target
    /// (repeatable; wins over the scenario's headers).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Override the scenario's mode.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Override the open-loop rate (requests per second per target).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Override the measured time per target, e.g. `15s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Override the warm-up per target, e.g. `3s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warmup: Option<Duration>,
    /// Override the number of interleaved rounds.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Override connections (open loop) or workers (closed loop) per target.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Generator threads. 1 (the default) keeps the generator on one core,
    /// leaving the rest of a small machine to the system under test.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("scenario {path}: {reason}")]
    Scenario { path: PathBuf, reason: String },
    #[error("target {target}: cannot resolve: {reason}")]
    Resolve { target: String, reason: String },
    #[error("load generator runtime: {0}")]
    Runtime(std::io::Error),
    #[error("writing the report: {0}")]
    Output(std::io::Error),
    #[error("every target failed every request; see the report above")]
    AllFailed,
}

impl LoadError {
    fn scenario(path: &Path, reason: impl Into<String>) -> Self {
        Self::Scenario {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Per-target state that lives across rounds.
struct TargetRun {
    tpl: Arc<RequestTemplate>,
    conns: Vec<Conn>,
    stats: Arc<Mutex<Stats>>,
    warmup_requests: u64,
    requests: u64,
    elapsed: Duration,
}

/// Run the scenario `args` names and return the report.
pub async fn run(args: LoadArgs) -> Result<Report, LoadError> {
    let plan = Plan::load(&args).await?;
    let mut runs: Vec<TargetRun> = plan
        .targets
        .iter()
        .map(|t| TargetRun {
            tpl: Arc::new(RequestTemplate {
                method: plan.method.clone(),
                // Validated as a URL's path-and-query by the scenario.
                path: t
                    .path
                    .parse()
                    .unwrap_or_else(|_| http::Uri::from_static("/")),
                headers: t.headers.clone(),
                body: plan.body.clone(),
                sse: plan.sse,
                timeout: plan.timeout,
            }),
            conns: (0..plan.connections).map(|_| Conn::new(t.addr)).collect(),
            stats: Arc::new(Mutex::new(Stats::default())),
            warmup_requests: 0,
            requests: 0,
            elapsed: Duration::ZERO,
        })
        .collect();
    let load = |duration| Load {
        mode: plan.mode,
        rate: plan.rate.unwrap_or(0.0),
        duration,
    };

    if !plan.warmup.is_zero() {
        for r in &mut runs {
            // Warm-up figures are thrown away; only the count is kept.
            let scratch = Arc::new(Mutex::new(Stats::default()));
            let conns = std::mem::take(&mut r.conns);
            let (conns, outcome) =
                driver::round(conns, Arc::clone(&r.tpl), load(plan.warmup), scratch).await;
            r.conns = conns;
            r.warmup_requests += outcome.completed;
        }
    }
    let per_round = plan.duration / plan.rounds;
    for _ in 0..plan.rounds {
        for r in &mut runs {
            let conns = std::mem::take(&mut r.conns);
            let (conns, outcome) = driver::round(
                conns,
                Arc::clone(&r.tpl),
                load(per_round),
                Arc::clone(&r.stats),
            )
            .await;
            r.conns = conns;
            r.requests += outcome.completed;
            r.elapsed += outcome.elapsed;
        }
    }

    let targets = plan
        .targets
        .iter()
        .zip(&runs)
        .map(|(t, r)| target_report(t, r, plan.sse))
        .collect();
    Ok(Report {
        scenario: plan.name,
        description: plan.description,
        mode: plan.mode,
        rate: plan.rate,
        connections: plan.connections,
        duration_s: plan.duration.as_secs_f64(),
        warmup_s: plan.warmup.as_secs_f64(),
        rounds: plan.rounds,
        sse: plan.sse,
        targets,
    })
}

fn target_report(t: &scenario::Target, r: &TargetRun, sse: bool) -> TargetReport {
    let s = lock(&r.stats);
    let elapsed = r.elapsed.as_secs_f64();
    TargetReport {
        name: t.name.clone(),
        url: t.url.clone(),
        warmup_requests: r.warmup_requests,
        requests: s.completed(),
        ok: s.ok(),
        errors: s.errors(),
        elapsed_s: elapsed,
        achieved_rate: if elapsed > 0.0 {
            r.requests as f64 / elapsed
        } else {
            0.0
        },
        connections_opened: r.conns.iter().map(|c| c.opened).sum(),
        latency: s.latency(),
        service_time: s.service(),
        schedule_lag: s.lag(),
        ttft: sse.then(|| s.ttft()),
        chunk_gap: sse.then(|| s.gap()),
        events_per_frame: if sse { s.events_per_read() } else { None },
        events_per_stream: if sse { s.events_per_stream() } else { None },
    }
}

/// The whole `molt load` command: build the generator's runtime, run,
/// print the table (or JSON) to stdout. Fails if no request succeeded at
/// all, so a script notices a dead target.
pub fn main(args: LoadArgs) -> Result<Report, LoadError> {
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .map_err(LoadError::Runtime)?;
    let json = args.json;
    let report = runtime.block_on(run(args))?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(|e| LoadError::Output(e.into()))?;
        writeln!(out).map_err(LoadError::Output)?;
    } else {
        write!(out, "{report}").map_err(LoadError::Output)?;
    }
    if report.targets.iter().all(|t| t.ok == 0) {
        return Err(LoadError::AllFailed);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use molt_fakes::mock_provider::{MockOptions, MockProvider};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    async fn mock() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(MockProvider::new(MockOptions::default()).serve(listener));
        format!("http://{addr}/v1/chat/completions")
    }

    fn scenario(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn args(path: &Path, extra: &[&str]) -> LoadArgs {
        let mut argv = vec!["load", "--scenario", path.to_str().unwrap()];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("molt-loadgen-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn open_loop_against_the_mock_interleaves_targets() {
        let url = mock().await;
        let dir = tempdir();
        let path = scenario(
            &dir,
            "chat.toml",
            r#"
                mode = "open"
                rate = 200
                duration = "500ms"
                warmup = "100ms"
                rounds = 2
                connections = 4
                [request]
                headers = { authorization = "Bearer sk-test" }
                body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
            "#,
        );
        let a = format!("a={url}");
        let b = format!("b={url}");
        let report = run(args(&path, &["--target", &a, "--target", &b]))
            .await
            .unwrap();
        assert_eq!(report.targets.len(), 2);
        for t in &report.targets {
            assert_eq!(t.requests, 100, "{t:?}");
            assert_eq!(t.ok, 100, "{t:?}");
            assert_eq!(t.warmup_requests, 20);
            assert!(t.connections_opened <= 4);
            assert!(t.latency.p50 > 0.0 && t.latency.max >= t.latency.p99);
            assert!(t.ttft.is_none());
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["targets"][0]["latency"]["count"], 100);
        assert!(report.to_string().contains("p99 ms"));
    }

    #[tokio::test]
    async fn latency_counts_from_the_due_time_not_the_send_time() {
        // One connection, each answer held 20 ms, 100 req/s: the server can
        // do 50/s, so requests queue. A closed-loop view (service time) stays
        // at ~20 ms; the due-time latency must grow with the queue.
        let url = mock().await;
        let dir = tempdir();
        let path = scenario(
            &dir,
            "slow.toml",
            r#"
                mode = "open"
                rate = 100
                duration = "400ms"
                connections = 1
                [request]
                headers = { authorization = "Bearer sk-test", "x-mock-header-delay-ms" = "20" }
                body = '{"model":"gpt-4o-mini","messages":[]}'
            "#,
        );
        let report = run(args(&path, &["--target", &url])).await.unwrap();
        let t = &report.targets[0];
        assert_eq!(t.ok, 40, "{t:?}");
        assert!(t.service_time.max < 100.0, "{:?}", t.service_time);
        assert!(
            t.latency.max > 3.0 * t.service_time.max,
            "latency {:?} vs service {:?}",
            t.latency,
            t.service_time
        );
        assert!(t.schedule_lag.max > 100.0, "{:?}", t.schedule_lag);
    }

    #[tokio::test]
    async fn sse_records_ttft_and_gaps_and_errors_are_by_kind() {
        let url = mock().await;
        let dir = tempdir();
        let path = scenario(
            &dir,
            "sse.json",
            r#"{
                "mode": "closed", "duration": "300ms", "connections": 2, "sse": true,
                "request": {
                    "headers": {"authorization": "Bearer sk-test", "x-mock-chunks": "5",
                                "x-mock-chunk-delay-ms": "10"},
                    "body": "{\"model\":\"gpt-4o-mini\",\"stream\":true,\"messages\":[]}"
                }
            }"#,
        );
        let report = run(args(&path, &["--target", &url])).await.unwrap();
        let t = &report.targets[0];
        assert!(t.ok > 0 && t.errors.is_empty(), "{t:?}");
        let gap = t.chunk_gap.unwrap();
        assert!(gap.p50 >= 9.0 && gap.p50 < 30.0, "{gap:?}");
        assert!(t.ttft.unwrap().count == t.ok);
        // 5 content chunks, the finish chunk and [DONE].
        assert!(t.events_per_frame.unwrap() > 0.0);

        let report = run(args(
            &path,
            &[
                "--target",
                &url,
                "-H",
                "x-mock-status: 503",
                "--duration",
                "100ms",
            ],
        ))
        .await
        .unwrap();
        let t = &report.targets[0];
        assert_eq!(t.ok, 0);
        assert_eq!(t.errors.get("http_503").copied(), Some(t.requests));
    }

    #[tokio::test]
    async fn a_dead_target_is_a_connect_error() {
        let dir = tempdir();
        let path = scenario(
            &dir,
            "dead.toml",
            "mode = \"open\"\nrate = 100\nduration = \"100ms\"\n[request]\nbody = '{}'\n",
        );
        // Port 9 (discard) on loopback: nothing listens there in a test box.
        let report = run(args(&path, &["--target", "http://127.0.0.1:9/"]))
            .await
            .unwrap();
        let t = &report.targets[0];
        assert_eq!(t.errors.get("connect").copied(), Some(10), "{t:?}");
    }
}
