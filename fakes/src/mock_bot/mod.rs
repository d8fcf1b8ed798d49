//! The mock bot gateway: a stand-in for a user's bot container, speaking
//! the seed's WebSocket chat protocol, for end-to-end tests, `molt dev` and
//! load tests.
//!
//! - `GET <any path>` with a WebSocket upgrade: demands
//!   `Authorization: Bearer <token>` (401 otherwise), then chats. A client
//!   message `{"type":"message"|"chat","content"|"message":"..."}` is
//!   answered with a `thinking` brain event, the reply streamed as
//!   `{"content":"<piece>","done":false}` chunks with a `tool_call` brain
//!   event after the first, a `tool_result` brain event, then
//!   `{"content":"<whole reply>","done":true}`. Brain events look like
//!   `{"type":"brain_event","event":{"id","type","timestamp",...}}`.
//! - Test commands (not part of the seed's protocol):
//!   `{"type":"echo",...}` sends the text back as is (binary messages are
//!   always echoed); `{"type":"flood","count":N,"size":S}` sends N messages
//!   of S bytes as fast as the connection takes them;
//!   `{"type":"big","size":S}` sends one message of S bytes;
//!   `{"type":"close","code":C}` closes with code C;
//!   `{"type":"drop"}` drops the TCP connection without a close frame.
//! - `GET /status`: 200 (what the provisioner polls).
//! - `GET /_mock/connections`: every handshake seen (path, query, headers,
//!   whether it was authorised), oldest first; `DELETE` clears.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Handshakes remembered for `/_mock/connections`.
const MAX_RECORDS: usize = 1000;
/// Cap on what a test command may ask the mock to send (1 GiB).
const MAX_COMMAND_BYTES: u64 = 1 << 30;

/// How the mock bot behaves.
#[derive(Debug, Clone)]
pub struct MockBotOptions {
    /// The gateway token it demands.
    pub token: String,
    /// Content chunks per reply.
    pub chunks: usize,
    /// Pause between streamed chunks.
    pub chunk_delay: Duration,
}

impl Default for MockBotOptions {
    fn default() -> Self {
        Self {
            token: "mock-gateway-token".to_owned(),
            chunks: 4,
            chunk_delay: Duration::ZERO,
        }
    }
}

/// One WebSocket handshake the mock saw.
#[derive(Debug, Clone, Serialize)]
pub struct Handshake {
    pub path: String,
    pub query: Option<String>,
    /// Every header, lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub authorized: bool,
}

struct Inner {
    opts: MockBotOptions,
    records: Mutex<VecDeque<Handshake>>,
    next_event: AtomicU64,
}

/// The mock bot gateway server.
#[derive(Clone)]
pub struct MockBot {
    inner: Arc<Inner>,
}

impl MockBot {
    pub fn new(opts: MockBotOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                opts,
                records: Mutex::new(VecDeque::new()),
                next_event: AtomicU64::new(1),
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/status", get(status))
            .route(
                "/_mock/connections",
                get(connections).delete(clear_connections),
            )
            .fallback(upgrade)
            .with_state(self.clone())
    }

    /// Serve on `listener` until the process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        // Streamed chunks are small writes; don't let Nagle hold them back.
        let listener = listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "mock bot: could not set TCP_NODELAY");
            }
        });
        axum::serve(listener, self.router()).await
    }

    pub fn handshakes(&self) -> Vec<Handshake> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Handshake>> {
        // Push/pop/clear leave the deque consistent even if a holder
        // panicked, so a poisoned lock is safe to reuse.
        self.inner.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, kind: &str, extra: serde_json::Value) -> String {
        let id = self.inner.next_event.fetch_add(1, Ordering::Relaxed);
        let mut event = serde_json::json!({
            "id": format!("evt-{id}"),
            "type": kind,
            "timestamp": now_ms(),
        });
        if let (Some(e), serde_json::Value::Object(x)) = (event.as_object_mut(), extra) {
            e.extend(x);
        }
        serde_json::json!({"type": "brain_event", "event": event}).to_string()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn status() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn connections(State(bot): State<MockBot>) -> impl IntoResponse {
    Json(bot.handshakes())
}

async fn clear_connections(State(bot): State<MockBot>) -> impl IntoResponse {
    bot.lock().clear();
    StatusCode::NO_CONTENT
}

async fn upgrade(
    State(bot): State<MockBot>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let mut seen = BTreeMap::new();
    for (name, value) in &headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        seen.entry(name.as_str().to_owned())
            .and_modify(|old: &mut String| {
                old.push_str(", ");
                old.push_str(&v);
            })
            .or_insert(v);
    }
    let want = format!("Bearer {}", bot.inner.opts.token);
    let authorized = headers
        .get(axum::http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == want.as_bytes());
    {
        let mut records = bot.lock();
        if records.len() >= MAX_RECORDS {
            records.pop_front();
        }
        records.push_back(Handshake {
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers: seen,
            authorized,
        });
    }
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "bad gateway token"})),
        )
            .into_response();
    }
    let Ok(ws) = ws else {
        return (StatusCode::BAD_REQUEST, "WebSocket upgrade expected").into_response();
    };
    ws.on_upgrade(move |socket| chat(bot, socket))
}

/// What a client message asks for.
#[derive(Debug, serde::Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: Option<String>,
    content: Option<String>,
    message: Option<String>,
    count: Option<u64>,
    size: Option<u64>,
    code: Option<u16>,
}

async fn chat(bot: MockBot, mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(b) => {
                if socket.send(Message::Binary(b)).await.is_err() {
                    return;
                }
                continue;
            }
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        let Ok(m) = serde_json::from_str::<Incoming>(text.as_str()) else {
            let err = serde_json::json!({"type": "error", "error": "not JSON"}).to_string();
            if socket.send(Message::Text(err.into())).await.is_err() {
                return;
            }
            continue;
        };
        let ok = match m.kind.as_deref() {
            Some("message" | "chat") => {
                let said = m.content.or(m.message).unwrap_or_default();
                reply(&bot, &mut socket, &said).await
            }
            Some("echo") => socket.send(Message::Text(text)).await.is_ok(),
            Some("flood") => {
                let size = m.size.unwrap_or(1024).min(MAX_COMMAND_BYTES) as usize;
                let count = m.count.unwrap_or(1000).min(MAX_COMMAND_BYTES);
                let payload = axum::extract::ws::Utf8Bytes::from("x".repeat(size));
                let mut ok = true;
                for _ in 0..count {
                    if socket.send(Message::Text(payload.clone())).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                ok
            }
            Some("big") => {
                let size = m.size.unwrap_or(1 << 20).min(MAX_COMMAND_BYTES) as usize;
                socket
                    .send(Message::Text("y".repeat(size).into()))
                    .await
                    .is_ok()
            }
            Some("close") => {
                let frame = CloseFrame {
                    code: m.code.unwrap_or(1000),
                    reason: "mock bot closing".into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                // Wait for the close answer, then end.
                while let Some(Ok(_)) = socket.recv().await {}
                return;
            }
            Some("drop") => return,
            _ => {
                let err = serde_json::json!({"type": "error", "error": "unknown message type"})
                    .to_string();
                socket.send(Message::Text(err.into())).await.is_ok()
            }
        };
        if !ok {
            return;
        }
    }
}

/// The reply to a chat message, streamed, with brain events around it.
async fn reply(bot: &MockBot, socket: &mut WebSocket, said: &str) -> bool {
    let opts = &bot.inner.opts;
    let answer = format!("Hello from the Molt mock bot. You said: {said}");
    let mut frames = vec![bot.event(
        "thinking",
        serde_json::json!({"content": "reading the message"}),
    )];
    let pieces = split(&answer, opts.chunks.max(1));
    for (i, piece) in pieces.iter().enumerate() {
        frames.push(serde_json::json!({"content": piece, "done": false}).to_string());
        if i == 0 {
            frames.push(bot.event(
                "tool_call",
                serde_json::json!({"tool": "memory.search", "args": {"q": said}}),
            ));
        }
    }
    frames.push(bot.event(
        "tool_result",
        serde_json::json!({"tool": "memory.search", "result": [], "duration_ms": 1}),
    ));
    frames.push(serde_json::json!({"content": answer, "done": true}).to_string());
    for (i, f) in frames.into_iter().enumerate() {
        if i > 0 && !opts.chunk_delay.is_zero() {
            tokio::time::sleep(opts.chunk_delay).await;
        }
        if socket.send(Message::Text(f.into())).await.is_err() {
            return false;
        }
    }
    true
}

/// `s` in `n` pieces of about equal length, on char boundaries.
fn split(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let per = chars.len().div_ceil(n).max(1);
    chars.chunks(per).map(|c| c.iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_lossless() {
        let s = "Hello, wörld! ✓";
        for n in 1..8 {
            assert_eq!(split(s, n).concat(), s);
        }
    }
}
