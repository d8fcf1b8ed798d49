//! The mock provider: an OpenAI- and Anthropic-compatible HTTP server used as
//! the stand-in upstream by end-to-end tests, `molt dev` and load tests.
//!
//! This module owns the public handle ([`MockProvider`]), the routing, the
//! request intake (full body read, credential check, JSON parsing, behaviour
//! controls) and the record of received requests; which keys it accepts
//! (any, or a set a test changes at run time) is [`keys`]. The wire formats live in
//! [`openai`] and [`anthropic`] (and the Realtime WebSocket in [`realtime`]),
//! pacing and SSE framing in [`sse`], and the
//! per-request controls (`x-mock-*` headers, `mock-error-<code>` models) in
//! [`control`].
//!
//! Answers are deterministic: the text is the words of [`content::SENTENCE`],
//! one per chunk, so output tokens equal the chunk count, and input tokens are
//! `max(1, body_len / 4)`. Every request (other than `/_mock/*`) is recorded
//! with exactly the usage the mock reported to the client.

mod anthropic;
mod content;
mod control;
mod errors;
mod keys;
mod openai;
mod realtime;
mod sse;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{header, request, HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use control::Controls;
use errors::{error_response, Flavor};
pub use keys::KeySet;
use sse::{event_stream_response, truncated_response, Pacing, StreamEvents};

/// Request bodies up to this size are accepted (tests send multi-MiB bodies).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The record keeps only the most recent requests so a long load test cannot
/// grow it without bound; tests inspect far fewer.
const MAX_RECORDS: usize = 100_000;

/// Response header carrying the [`RecordedRequest::id`] of the request.
const REQUEST_ID_HEADER: &str = "x-mock-request-id";

/// Model reported when a request names none.
const DEFAULT_MODEL: &str = "mock-model";

/// Defaults for requests that carry no `x-mock-*` controls.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Number of content chunks (and so output tokens) per answer.
    pub chunks: usize,
    /// Gap between consecutive chunks of a stream.
    pub chunk_delay: Duration,
    /// Delay before the first chunk of a stream, or before a non-streaming answer.
    pub ttft: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            chunks: 8,
            chunk_delay: Duration::ZERO,
            ttft: Duration::ZERO,
        }
    }
}

/// Shared state: options + the record of requests. Cloneable handle.
#[derive(Clone)]
pub struct MockProvider {
    inner: Arc<Inner>,
}

struct Inner {
    options: MockOptions,
    next_id: AtomicU64,
    records: Mutex<VecDeque<RecordedRequest>>,
    keys: keys::AcceptedKeys,
}

/// One request the mock received, and the usage it reported back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordedRequest {
    /// 1-based, in arrival order; also sent back as `x-mock-request-id`.
    pub id: u64,
    pub method: String,
    /// Path and query string, as received.
    pub path: String,
    pub authorization: Option<String>,
    pub x_api_key: Option<String>,
    /// Azure's `api-key` header.
    pub api_key_header: Option<String>,
    pub anthropic_version: Option<String>,
    /// The body's `model`, or the Azure deployment name when the body has none.
    pub model: Option<String>,
    pub body_len: usize,
    /// Lowercase hex SHA-256 of the exact body bytes received.
    pub body_sha256: String,
    /// The body asked for `"stream": true`.
    pub stream: bool,
    /// The body asked for `"stream_options": {"include_usage": true}`.
    pub include_usage: bool,
    /// Exactly the usage the response reported (`None` if it reported none).
    pub usage: Option<ReportedUsage>,
    /// All request headers, names lowercased, in received order per name.
    pub headers: Vec<(String, String)>,
}

/// Token usage as reported to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReportedUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A provider API a route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    Models,
}

/// What a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Api(Api),
    NotFound,
    MethodNotAllowed,
}

impl Endpoint {
    /// The error/list format clients of this endpoint expect. `/v1/models` is
    /// shared by both providers; Anthropic clients always send `anthropic-version`.
    fn flavor(self, headers: &HeaderMap) -> Flavor {
        match self {
            Self::Api(Api::Messages) => Flavor::Anthropic,
            Self::Api(Api::Models) if headers.contains_key("anthropic-version") => {
                Flavor::Anthropic
            }
            _ => Flavor::OpenAi,
        }
    }

    fn takes_json_body(self) -> bool {
        matches!(self, Self::Api(api) if api != Api::Models)
    }
}

/// OpenAI-compatible POST routes.
const POST_ROUTES: &[(&str, Endpoint)] = &[
    ("/v1/chat/completions", Endpoint::Api(Api::ChatCompletions)),
    ("/v1/completions", Endpoint::Api(Api::Completions)),
    ("/v1/embeddings", Endpoint::Api(Api::Embeddings)),
    ("/v1/responses", Endpoint::Api(Api::Responses)),
    ("/v1/messages", Endpoint::Api(Api::Messages)),
];

/// Azure OpenAI deployment routes (`?api-version=…` is accepted and ignored).
const AZURE_ROUTES: &[(&str, Endpoint)] = &[
    (
        "/openai/deployments/{deployment}/chat/completions",
        Endpoint::Api(Api::ChatCompletions),
    ),
    (
        "/openai/deployments/{deployment}/completions",
        Endpoint::Api(Api::Completions),
    ),
    (
        "/openai/deployments/{deployment}/embeddings",
        Endpoint::Api(Api::Embeddings),
    ),
];

impl MockProvider {
    pub fn new(opts: MockOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options: opts,
                next_id: AtomicU64::new(1),
                records: Mutex::new(VecDeque::new()),
                keys: keys::AcceptedKeys::default(),
            }),
        }
    }

    /// All routes: the provider APIs under `/v1` (and Azure deployment paths)
    /// plus the `/_mock` inspection endpoints.
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        for &(path, endpoint) in POST_ROUTES {
            router = router.route(
                path,
                post(
                    move |State(provider): State<Self>, request: Request| async move {
                        provider.dispatch(endpoint, None, request).await
                    },
                ),
            );
        }
        for &(path, endpoint) in AZURE_ROUTES {
            router = router.route(
                path,
                post(
                    move |State(provider): State<Self>,
                          Path(deployment): Path<String>,
                          request: Request| async move {
                        provider.dispatch(endpoint, Some(deployment), request).await
                    },
                ),
            );
        }
        router
            .route(
                "/v1/models",
                get(
                    |State(provider): State<Self>, request: Request| async move {
                        provider
                            .dispatch(Endpoint::Api(Api::Models), None, request)
                            .await
                    },
                ),
            )
            .route("/v1/realtime", get(realtime::upgrade))
            .route(
                "/_mock/requests",
                get(|State(provider): State<Self>| async move { Json(provider.records()) }).delete(
                    |State(provider): State<Self>| async move {
                        provider.lock_records().clear();
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .route(
                "/_mock/keys",
                get(|State(provider): State<Self>| async move { Json(provider.inner.keys.get()) })
                    .put(
                        |State(provider): State<Self>, Json(keys): Json<KeySet>| async move {
                            provider.accept_keys(keys);
                            StatusCode::NO_CONTENT
                        },
                    ),
            )
            .route("/_mock/health", get(|| async { "ok" }))
            .fallback(
                |State(provider): State<Self>, request: Request| async move {
                    provider.dispatch(Endpoint::NotFound, None, request).await
                },
            )
            .method_not_allowed_fallback(
                |State(provider): State<Self>, request: Request| async move {
                    provider
                        .dispatch(Endpoint::MethodNotAllowed, None, request)
                        .await
                },
            )
            .with_state(self.clone())
    }

    /// Accept only `keys.accepted` from now on (any, if empty).
    pub fn accept_keys(&self, keys: KeySet) {
        self.inner.keys.set(keys);
    }

    /// What was received so far (the most recent [`MAX_RECORDS`]), oldest first.
    pub fn records(&self) -> Vec<RecordedRequest> {
        self.lock_records().iter().cloned().collect()
    }

    /// Serves HTTP/1.1 and h2c (prior knowledge) on `listener` until the
    /// process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        // Streams are many small writes; Nagle's algorithm would hold each one
        // back until the previous is acknowledged and distort chunk timing.
        let listener = listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "mock provider: could not set TCP_NODELAY");
            }
        });
        axum::serve(listener, self.router()).await
    }

    fn lock_records(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        // A panic while holding the lock cannot leave the deque half-updated
        // (push/pop/clear are atomic from our side), so a poisoned lock is safe to reuse.
        self.inner
            .records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Set the usage of an already recorded request (a Realtime session's
    /// grows with each response).
    fn set_usage(&self, id: u64, usage: ReportedUsage) {
        if let Some(record) = self.lock_records().iter_mut().rev().find(|r| r.id == id) {
            record.usage = Some(usage);
        }
    }

    fn push_record(&self, record: RecordedRequest) {
        let mut records = self.lock_records();
        if records.len() >= MAX_RECORDS {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// Reads the whole request, records it, and answers it. A body that cannot
    /// be read (too large, or the client went away) is answered unrecorded:
    /// there are no exact bytes to fingerprint.
    async fn dispatch(
        self,
        endpoint: Endpoint,
        deployment: Option<String>,
        request: Request,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let flavor = endpoint.flavor(&parts.headers);
        let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(error) => return body_read_error(flavor, &error),
        };
        let json = endpoint.takes_json_body().then(|| parse_object(&body));
        let object = json.as_ref().and_then(|parsed| parsed.as_ref().ok());
        let model = object
            .and_then(|object| object.get("model"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(deployment);
        let mut record = self.new_record(&parts, &body, model, object);
        let controls = Controls::from_headers(&parts.headers, &self.inner.options);

        let refused = matches!(endpoint, Endpoint::Api(_))
            .then(|| self.inner.keys.refuse(flavor, &record))
            .flatten();
        let reply = refused.unwrap_or_else(|| answer(endpoint, flavor, json, &record, &controls));

        record.usage = reply.usage;
        let id = record.id;
        self.push_record(record);
        let header_delay = controls
            .as_ref()
            .map(|controls| controls.header_delay)
            .unwrap_or_default();
        let wait = header_delay + reply.wait;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut response = reply.response;
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER, HeaderValue::from(id));
        response
    }

    fn new_record(
        &self,
        parts: &request::Parts,
        body: &Bytes,
        model: Option<String>,
        object: Option<&Map<String, Value>>,
    ) -> RecordedRequest {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        };
        let flag = |value: Option<&Value>| value.and_then(Value::as_bool).unwrap_or(false);
        RecordedRequest {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), ToString::to_string),
            authorization: header(header::AUTHORIZATION.as_str()),
            x_api_key: header("x-api-key"),
            api_key_header: header("api-key"),
            anthropic_version: header("anthropic-version"),
            model,
            body_len: body.len(),
            body_sha256: hex::encode(Sha256::digest(body)),
            stream: flag(object.and_then(|object| object.get("stream"))),
            include_usage: flag(
                object
                    .and_then(|object| object.get("stream_options"))
                    .and_then(|options| options.get("include_usage")),
            ),
            usage: None,
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        }
    }
}

/// Decides the answer to a fully read request. Pure apart from ids and
/// timestamps: all waiting happens in the caller or inside streamed bodies.
fn answer(
    endpoint: Endpoint,
    flavor: Flavor,
    json: Option<Result<Map<String, Value>, String>>,
    record: &RecordedRequest,
    controls: &Result<Controls, control::ControlError>,
) -> Reply {
    let route = format!("{} {}", record.method, record.path);
    // Unknown routes are answered before the credential check, as real providers do.
    let api = match endpoint {
        Endpoint::Api(api) => api,
        Endpoint::NotFound => {
            let message = format!("Invalid URL ({route})");
            return Reply::error(flavor, StatusCode::NOT_FOUND, &message);
        }
        Endpoint::MethodNotAllowed => {
            let message = format!("Method not allowed ({route})");
            return Reply::error(flavor, StatusCode::METHOD_NOT_ALLOWED, &message);
        }
    };
    let controls = match controls {
        Ok(controls) => controls,
        Err(error) => return Reply::error(flavor, StatusCode::BAD_REQUEST, &error.to_string()),
    };
    // Any credential is accepted (and recorded); only its absence is an error,
    // which is what lets tests check that the proxy injected one.
    if record.authorization.is_none()
        && record.x_api_key.is_none()
        && record.api_key_header.is_none()
    {
        let message = match flavor {
            Flavor::OpenAi => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            Flavor::Anthropic => "x-api-key header is required",
        };
        return Reply::error(flavor, StatusCode::UNAUTHORIZED, message);
    }
    if controls.echo_key {
        let presented = keys::presented_key(record).unwrap_or_default();
        let message = format!(
            "Incorrect API key provided: {presented}. You can find your API key at https://platform.openai.com/account/api-keys."
        );
        let mut reply = Reply::error(flavor, StatusCode::UNAUTHORIZED, &message);
        if let Ok(value) = HeaderValue::from_str(presented) {
            reply
                .response
                .headers_mut()
                .insert("x-echo-credential", value);
        }
        return reply;
    }
    let empty = Map::new();
    let object = match &json {
        None => &empty,
        Some(Ok(object)) => object,
        Some(Err(message)) => return Reply::error(flavor, StatusCode::BAD_REQUEST, message),
    };
    match controls.injected_status(record.model.as_deref()) {
        Ok(None) => {}
        Ok(Some(status)) => {
            let message = format!("Mock provider injected HTTP {} ({route})", status.as_u16());
            return Reply::error(flavor, status, &message);
        }
        Err(error) => return Reply::error(flavor, StatusCode::BAD_REQUEST, &error.to_string()),
    }

    let call = Call {
        model: record.model.as_deref().unwrap_or(DEFAULT_MODEL),
        body: object,
        stream: record.stream,
        include_usage: record.include_usage,
        controls,
        prompt_tokens: content::prompt_tokens(record.body_len),
    };
    match api {
        Api::ChatCompletions => openai::chat_completions(&call),
        Api::Completions => openai::completions(&call),
        Api::Embeddings => openai::embeddings(&call),
        Api::Responses => openai::responses(&call),
        Api::Messages => anthropic::messages(&call),
        Api::Models => call.json_reply(
            &match flavor {
                Flavor::OpenAi => openai::models(),
                Flavor::Anthropic => anthropic::models(),
            },
            None,
        ),
    }
}

/// A body that exceeds [`MAX_BODY_BYTES`] gets 413; any other read failure
/// means the client went away, and the answer is only for the logs.
fn body_read_error(flavor: Flavor, error: &axum::Error) -> Response {
    let too_large =
        std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |error| {
            error.source()
        })
        .any(|error| error.is::<http_body_util::LengthLimitError>());
    if too_large {
        error_response(
            flavor,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    } else {
        error_response(
            flavor,
            StatusCode::BAD_REQUEST,
            &format!("Could not read the request body: {error}"),
        )
    }
}

/// The body as a JSON object, or the 400 message explaining why it is not one.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("The request body must be a JSON object.".to_owned()),
        Err(error) => Err(format!(
            "We could not parse the JSON body of your request. ({error})"
        )),
    }
}

/// `value` with `key` set to `field` (a no-op on non-objects, which callers
/// never pass: every body built here is a `json!({…})` object).
pub(crate) fn with_field(mut value: Value, key: &str, field: Value) -> Value {
    if let Value::Object(object) = &mut value {
        object.insert(key.to_owned(), field);
    }
    value
}

/// A request that passed intake, as the endpoint modules see it.
pub(crate) struct Call<'a> {
    /// The requested model (echoed back) or [`DEFAULT_MODEL`].
    pub(crate) model: &'a str,
    pub(crate) body: &'a Map<String, Value>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) controls: &'a Controls,
    pub(crate) prompt_tokens: u64,
}

impl Call<'_> {
    /// The usage a complete answer reports, unless `x-mock-no-usage` is set.
    pub(crate) fn usage(&self) -> Option<ReportedUsage> {
        (!self.controls.no_usage).then(|| ReportedUsage {
            input_tokens: self.prompt_tokens,
            output_tokens: content::output_tokens(self.controls.chunks),
        })
    }

    /// A non-streaming JSON answer sent after the time to first token. With
    /// `x-mock-abort-after` only half the body is sent, so no usage reaches
    /// the client.
    pub(crate) fn json_reply(&self, body: &Value, usage: Option<ReportedUsage>) -> Reply {
        let pacing = Pacing::from(self.controls);
        let (response, usage) = if pacing.aborts() {
            let bytes = Bytes::from(body.to_string());
            let response = truncated_response(StatusCode::OK, "application/json", bytes);
            (response, None)
        } else {
            (Json(body).into_response(), usage)
        };
        Reply {
            response,
            usage,
            wait: self.controls.ttft,
        }
    }

    /// A streamed answer; `usage` is what the full stream reports and
    /// `aborted_usage` what the stream reported before an `x-mock-abort-after` cut.
    pub(crate) fn stream_reply(
        &self,
        events: StreamEvents,
        usage: Option<ReportedUsage>,
        aborted_usage: Option<ReportedUsage>,
    ) -> Reply {
        let pacing = Pacing::from(self.controls);
        Reply {
            usage: if pacing.aborts() {
                aborted_usage
            } else {
                usage
            },
            response: event_stream_response(events, pacing),
            wait: Duration::ZERO,
        }
    }
}

/// An answer plus what the record needs to know about it.
pub(crate) struct Reply {
    pub(crate) response: Response,
    /// The usage the response reports to the client.
    pub(crate) usage: Option<ReportedUsage>,
    /// Extra wait before the response headers (the time to first token of a
    /// non-streaming answer; streams wait inside the body instead).
    pub(crate) wait: Duration,
}

impl Reply {
    pub(crate) fn error(flavor: Flavor, status: StatusCode, message: &str) -> Self {
        Self {
            response: error_response(flavor, status, message),
            usage: None,
            wait: Duration::ZERO,
        }
    }
}
