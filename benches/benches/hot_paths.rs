//! Criterion benchmarks of the data plane's per-request hot paths.
//!
//! This file owns one bench group per public hot-path function of
//! `molt_dataplane` (authentication, request-body scanning, SSE usage
//! reading, body splicing, config snapshot load/swap), each with a baseline
//! measured in the same run where one is meaningful (plain SHA-256, a full
//! `serde_json` parse), so a figure can be read against a reference taken
//! on the same machine at the same moment.
//!
//! Every fixture is built once, outside the timed loop; each group's doc
//! comment says exactly what one iteration is.
//!
//! Run: `cargo bench -p molt-benches -- --warm-up-time 1 --measurement-time 3`.

// Fixtures are constants of this file (static bodies, a fixed config, a
// token minted with a known secret): if building one fails, the bench itself
// is wrong and aborting with the message is the right report.
#![allow(clippy::expect_used)]

use bytes::Bytes;
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use molt_config::dataplane::{ApiKey, JwtAlgorithm, JwtConfig, JwtKey};
use molt_config::{DataplaneConfig, Secret};
use molt_dataplane::auth::Authenticator;
use molt_dataplane::json_scan::JsonScanner;
use molt_dataplane::runtime::{Runtime, RuntimeHandle};
use molt_dataplane::splice::{self, Edit};
use molt_dataplane::usage_reader::{SseUsageReader, StreamKind};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The fields the proxy tracks in a request body, with its capture limit
/// (mirrors `proxy::REQUEST_FIELDS`, which is private).
const REQUEST_FIELDS: &[&str] = &["model", "stream", "stream_options"];
const CAPTURE_LIMIT: usize = 4096;

/// A socket read's worth: large bodies are fed in chunks of this size.
const CHUNK: usize = 16 * 1024;

/// Size of the large request body.
const LARGE_BODY: usize = 2 * 1024 * 1024;

const API_KEY: &str = "molt_sk_bench_4f9c2a7d1e8b3f6a0c5d9e2b7a4f1c8d";
const JWT_SECRET: &str = "bench-secret-bench-secret-bench-secret";
const JWT_ISSUER: &str = "molt-controlplane";

/// A typical small chat request (about 300 bytes).
const SMALL_BODY: &str = concat!(
    r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful "#,
    r#"assistant that answers briefly."},{"role":"user","content":"Summarise the plot of "#,
    r#"Hamlet in three sentences, mentioning Ophelia and Polonius."}],"temperature":0.7,"#,
    r#""max_tokens":256,"stream":false,"user":"user-7f3a","metadata":{"bot":"bot-7f3a"}}"#,
);

/// An OpenAI content chunk as sent when `include_usage` is on (every chunk
/// carries `"usage":null`, which the reader must look at). About 250 bytes.
const SSE_CONTENT_CHUNK: &str = concat!(
    r#"data: {"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","#,
    r#""created":1741569952,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306","#,
    r#""choices":[{"index":0,"delta":{"content":" Hello"},"logprobs":null,"finish_reason":null}],"#,
    r#""usage":null}"#,
    "\n\n",
);

/// The same chunk from a stream without `include_usage` (no `usage` key at
/// all, so the reader's `memmem` finds nothing and parses nothing).
const SSE_CONTENT_CHUNK_NO_USAGE: &str = concat!(
    r#"data: {"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","#,
    r#""created":1741569952,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306","#,
    r#""choices":[{"index":0,"delta":{"content":" Hello"},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
);

/// OpenAI's final usage-only chunk (what stripping cuts out).
const SSE_USAGE_CHUNK: &str = concat!(
    r#"data: {"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","#,
    r#""created":1741569952,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306","#,
    r#""choices":[],"usage":{"prompt_tokens":37,"completion_tokens":112,"total_tokens":149,"#,
    r#""prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"#,
    r#""completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"#,
    r#""accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
    "\n\n",
);

/// A ~2 MiB chat body whose bulk is one long `messages` array and whose
/// `model` is the last field, so the scanner must walk every byte before it
/// can route.
fn large_body() -> Vec<u8> {
    let message = r#"{"role":"user","content":"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Escaped \"quotes\" and \\ backslashes and unicode \u00e9 appear too."},"#;
    let tail = r#"{"role":"user","content":"end"}],"stream":true,"model":"gpt-4o-mini"}"#;
    let mut body = Vec::with_capacity(LARGE_BODY + message.len());
    body.extend_from_slice(br#"{"messages":["#);
    while body.len() + message.len() + tail.len() <= LARGE_BODY {
        body.extend_from_slice(message.as_bytes());
    }
    body.extend_from_slice(tail.as_bytes());
    body
}

/// `body` split into socket-sized chunks, as the proxy holds it.
fn chunked(body: &[u8]) -> Vec<Bytes> {
    body.chunks(CHUNK).map(Bytes::copy_from_slice).collect()
}

/// Scan a whole body as the proxy's request filter does: a fresh scanner,
/// every chunk fed, the document finished, `model` read.
fn scan(chunks: &[Bytes]) -> JsonScanner {
    let mut scanner = JsonScanner::new(REQUEST_FIELDS, CAPTURE_LIMIT);
    for c in chunks {
        scanner.feed(c).expect("bench bodies are valid JSON");
    }
    scanner.finish().expect("bench bodies are complete");
    scanner
}

/// `auth`: one iteration is one `Authenticator::authenticate` call on a
/// valid credential (the success path every request takes), including the
/// `Principal` clone it returns. Baseline: SHA-256 of the same key alone,
/// the part of the API-key path no lookup structure can avoid.
fn bench_auth(c: &mut Criterion) {
    let key = ApiKey {
        id: "bench".into(),
        user: "user-bench".into(),
        sha256: Sha256::digest(API_KEY.as_bytes()).into(),
        models: Some(vec!["gpt-4o-mini".into()]),
    };
    // A realistic key table: the lookup is a hash map, so size should not
    // matter, and this shows it.
    let mut keys: Vec<ApiKey> = (0..10_000)
        .map(|i| ApiKey {
            id: format!("k{i}"),
            user: format!("u{i}"),
            sha256: Sha256::digest(format!("molt_sk_other_{i}").as_bytes()).into(),
            models: None,
        })
        .collect();
    keys.push(key);
    let jwt = JwtConfig {
        issuer: JWT_ISSUER.into(),
        algorithm: JwtAlgorithm::Hs256,
        key: JwtKey::Hmac(Secret::new(JWT_SECRET)),
        audience: None,
        leeway: Duration::from_secs(5),
    };
    let auth = Authenticator::new(&keys, Some(&jwt)).expect("HS256 with an HMAC secret is valid");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({
            "sub": "user-bench",
            "iss": JWT_ISSUER,
            "iat": now,
            // Far enough ahead that no bench run outlives it.
            "exp": now + 24 * 3600,
            "models": ["gpt-4o-mini"],
        }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("HS256 signing with a byte secret cannot fail");
    let canonical = |name: &str| Some(name.to_owned());
    // Sanity: both paths succeed, so the timings are of the success path.
    auth.authenticate(Some(API_KEY), canonical)
        .expect("the API key is in the table");
    auth.authenticate(Some(&token), canonical)
        .expect("the JWT verifies");

    let mut g = c.benchmark_group("auth");
    g.bench_function("api_key", |b| {
        b.iter(|| auth.authenticate(black_box(Some(API_KEY)), canonical))
    });
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| -> [u8; 32] { Sha256::digest(black_box(API_KEY).as_bytes()).into() })
    });
    g.bench_function("jwt_hs256", |b| {
        b.iter(|| auth.authenticate(black_box(Some(token.as_str())), canonical))
    });
    g.finish();
}

/// `json_scan`: one iteration scans one whole request body as the proxy
/// does (new scanner, feed every chunk, finish, read `model`). The small
/// body is one chunk; the 2 MiB body is fed in 16 KiB chunks with `model`
/// last. Baseline: `serde_json::from_slice::<Value>` on the same contiguous
/// bytes, i.e. what a parse-then-route proxy would pay.
fn bench_json_scan(c: &mut Criterion) {
    let small = [Bytes::from_static(SMALL_BODY.as_bytes())];
    let large = large_body();
    let large_chunks = chunked(&large);
    assert_eq!(
        scan(&large_chunks)
            .field(0)
            .and_then(|f| f.as_str())
            .as_deref(),
        Some("gpt-4o-mini"),
        "the large body's model is found"
    );

    let mut g = c.benchmark_group("json_scan");
    for (name, chunks, flat) in [
        ("small_300B", &small[..], SMALL_BODY.as_bytes()),
        ("large_2MiB_model_last", &large_chunks[..], &large[..]),
    ] {
        g.throughput(Throughput::Bytes(flat.len() as u64));
        g.bench_with_input(BenchmarkId::new("scanner", name), chunks, |b, chunks| {
            b.iter(|| scan(black_box(chunks)).field(0).map(|f| f.end))
        });
        g.bench_with_input(
            BenchmarkId::new("baseline_serde_json_value", name),
            flat,
            |b, flat| {
                b.iter(|| {
                    serde_json::from_slice::<serde_json::Value>(black_box(flat))
                        .expect("bench bodies are valid JSON")
                })
            },
        );
    }
    g.finish();
}

/// `sse_usage_reader`: one iteration is one `SseUsageReader::feed` of one
/// complete event (the reader is long-lived, as it is per stream; the
/// output vector is cleared, not reallocated). `strip` is the mode the proxy
/// uses when it added `include_usage` itself and must cut the usage chunk
/// out again.
fn bench_sse_usage_reader(c: &mut Criterion) {
    let chunks = [
        ("content_chunk_usage_null", SSE_CONTENT_CHUNK),
        ("content_chunk_no_usage_key", SSE_CONTENT_CHUNK_NO_USAGE),
        ("final_usage_chunk", SSE_USAGE_CHUNK),
    ];
    let mut g = c.benchmark_group("sse_usage_reader");
    for (name, chunk) in chunks {
        let chunk = Bytes::from_static(chunk.as_bytes());
        g.throughput(Throughput::Bytes(chunk.len() as u64));
        for strip in [false, true] {
            let id = BenchmarkId::new(name, if strip { "strip" } else { "passthrough" });
            g.bench_with_input(id, &chunk, |b, chunk| {
                let mut reader = SseUsageReader::new(StreamKind::OpenAi, strip);
                let mut out = Vec::with_capacity(4);
                b.iter(|| {
                    out.clear();
                    reader.feed(black_box(chunk.clone()), &mut out);
                    out.len()
                })
            });
        }
    }
    g.finish();
}

/// `splice`: one iteration is one `splice::apply` of the `include_usage`
/// insertion at the end of a 2 MiB body held in 16 KiB chunks, producing the
/// re-sliced chunk list (no body byte is copied; the cost is per chunk).
fn bench_splice(c: &mut Criterion) {
    let large = large_body();
    let chunks = chunked(&large);
    let end = scan(&chunks)
        .object_end()
        .expect("a finished scan knows where the object ends");
    let edits = [Edit::insert(
        end,
        Bytes::from_static(br#","stream_options":{"include_usage":true}"#),
    )];
    // No byte throughput: the cost is per held chunk, not per body byte, so
    // a bytes-per-second figure would only mislead.
    let mut g = c.benchmark_group("splice");
    g.bench_function("include_usage_2MiB_16KiB_chunks", |b| {
        b.iter(|| splice::apply(black_box(&chunks), black_box(&edits)))
    });
    g.finish();
}

/// A data-plane config like a production one, with the provider on
/// 127.0.0.1 so building the runtime never touches DNS.
fn bench_config() -> DataplaneConfig {
    let hash = molt_config::hash_api_key(API_KEY);
    let text = format!(
        r#"
version = 1
[server]
listen = "127.0.0.1:17080"
[log]
access_log = false
[[keys]]
id = "bench"
user = "user-bench"
sha256 = "{hash}"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:17001/v1"
keys = ["sk-master-1", "sk-master-2"]
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:17002/v1"
keys = ["sk-ant-master"]
[[models]]
name = "gpt-4o-mini"
provider = "openai"
aliases = ["mini"]
[[models]]
name = "claude-sonnet-4-5"
provider = "anthropic"
aliases = ["sonnet"]
"#
    );
    let env: HashMap<&str, &str> = HashMap::new();
    DataplaneConfig::from_toml(&text, &env).expect("the bench config is valid")
}

/// `runtime`: `load` is one `RuntimeHandle::load` (an `Arc` of the current
/// snapshot, taken and dropped, as every request does once). `swap` is one
/// `RuntimeHandle::swap` of an already built `Runtime`, which includes
/// dropping the previous snapshot; building it is outside the timing.
fn bench_runtime(c: &mut Criterion) {
    let config = bench_config();
    let build = || Runtime::build(config.clone(), 1).expect("the bench runtime builds");
    let handle = RuntimeHandle::new(build());
    let mut g = c.benchmark_group("runtime");
    g.bench_function("load", |b| b.iter(|| black_box(handle.load()).version));
    g.bench_function("swap_prepared", |b| {
        b.iter_batched(build, |rt| handle.swap(rt), BatchSize::SmallInput)
    });
    g.finish();
}

/// `scrub`: one iteration is one `BodyScrubber::feed` of one chunk against
/// 16 secrets (master keys and bot tokens), the work the relay adds to
/// every response chunk so no secret comes back out: an SSE content event
/// (the streaming case) and a 4 KiB JSON answer, both without a secret (the
/// case that matters: a masked secret is an incident, not traffic).
fn bench_scrub(c: &mut Criterion) {
    let keys: Vec<String> = (0..16)
        .map(|i| format!("sk-proj-{i:02}-0123456789abcdefghijklmnopqrstuvwxyz"))
        .collect();
    let secrets = molt_dataplane::scrub::Secrets::new(keys.iter().map(String::as_str));
    let json = r#"{"role":"assistant","content":"Hello, sk-like words and keys. "}"#.repeat(60);
    let chunks = [
        (
            "sse_event",
            Bytes::from_static(SSE_CONTENT_CHUNK.as_bytes()),
        ),
        ("json_4k", Bytes::from(json.into_bytes())),
    ];
    let mut g = c.benchmark_group("scrub");
    for (name, chunk) in chunks {
        g.throughput(Throughput::Bytes(chunk.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &chunk, |b, chunk| {
            let mut scrubber = molt_dataplane::scrub::BodyScrubber::default();
            b.iter(|| scrubber.feed(&secrets, black_box(chunk.clone())))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_scrub,
    bench_auth,
    bench_json_scan,
    bench_sse_usage_reader,
    bench_splice,
    bench_runtime
);
criterion_main!(benches);
