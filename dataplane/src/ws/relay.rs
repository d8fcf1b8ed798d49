//! The relay loop of one open connection: client frames in and out through
//! the upgraded client stream, bot frames through a tokio-tungstenite
//! client, one message at a time.
//!
//! Client-side framing is tungstenite's sans-I/O [`WebSocketContext`]
//! (server role) over an in-memory buffer pair ([`MemIo`]): the bytes read
//! from the upgraded connection are fed in, the frames it produces are
//! written out. That gives RFC 6455 in full (masking enforced,
//! fragmentation, control frames of at most 125 bytes, close codes, UTF-8
//! checks of text, frame and message limits) from a well-tested library. A
//! codec of our own would duplicate all that.
//!
//! Memory: once the `101` is written, the relay takes the client's stream
//! (TCP or TLS) out of Pingora's HTTP/1 session ([`take_stream`]) and reads
//! it into its own buffer ([`FIRST_READ_BUFFER`] bytes, growing to
//! [`READ_BUFFER`] once a read fills it). Reading through the session
//! instead (`read_request_body`) would keep Pingora's body reader buffer of
//! a fixed 64 KiB (`BODY_BUFFER_SIZE` in pingora-core's `v1/body.rs`,
//! reserved before every read of a close-delimited body) alive for the
//! connection's whole life, several times the per-connection budget of an
//! idle WebSocket. The session gets a stand-in holding only the request
//! line, so Pingora's `logging` and `finish` still see a request.
//!
//! Backpressure: the loop waits on the client, the bot, a kick and a timer
//! at once, and handles one event to completion before waiting again. A
//! message read from one side is written to the other, and that write is
//! awaited before anything more is read; so a peer that stops reading
//! stalls only its sender, and the relay holds at most one message (plus
//! the kernel's socket buffers). A write that cannot finish within the idle
//! timeout closes the connection.
//!
//! Keepalive: after `ping_interval` without a frame from the client the
//! relay pings it; with nothing heard for `idle_timeout` (pongs count) it
//! closes. The bot side is kept alive by the bot; tokio-tungstenite answers
//! its pings.

use crate::ws::error::CloseReason;
use crate::ws::metrics::WsMetrics;
use crate::ws::registry::{ConnRegistry, Kick, KickSignal};
use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use pingora_core::protocols::http::ServerSession as HttpSession;
use pingora_core::protocols::Stream;
use pingora_proxy::Session;
use std::io::{self, Cursor, Read, Write};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

pub type BotStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long the close handshake may take on either side before the
/// connection is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Read buffer of the client socket and of the bot side's framing state
/// (which reads the bot's socket). Small, because an idle connection should
/// cost little; a large message grows the framing buffer as needed and is
/// read in several socket reads.
pub const READ_BUFFER: usize = 4096;
/// First size of the client socket's read buffer. A chat client sends short
/// messages, and an idle connection holds this buffer for as long as it is
/// open; the first read that fills it grows it to [`READ_BUFFER`].
const FIRST_READ_BUFFER: usize = 512;
/// Chunk in which the client side's framing state copies from [`MemIo`]:
/// an in-memory copy, so a small chunk costs no system call, and it keeps
/// that state's resting buffer small on every idle connection.
const FRAMING_CHUNK: usize = 512;
/// At most this much of what Pingora already read from the client (frames
/// sent right behind the upgrade request) is carried over to the relay.
const MAX_PREREAD: usize = 64 * 1024;

/// The limits one relay runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
}

impl From<&molt_config::dataplane::WebSocketConfig> for Limits {
    fn from(cfg: &molt_config::dataplane::WebSocketConfig) -> Self {
        Self {
            idle_timeout: cfg.idle_timeout,
            ping_interval: cfg.ping_interval,
            max_message_bytes: cfg.max_message_bytes,
            max_frame_bytes: cfg.max_frame_bytes,
        }
    }
}

impl Limits {
    /// Framing config for the upstream side (a bot or a provider), which
    /// reads its socket.
    pub fn framing(&self) -> WebSocketConfig {
        self.framing_with_chunk(READ_BUFFER)
    }

    /// Framing config for the client side, which reads [`MemIo`].
    fn client_framing(&self) -> WebSocketConfig {
        self.framing_with_chunk(FRAMING_CHUNK)
    }

    fn framing_with_chunk(&self, read_chunk: usize) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(read_chunk)
            // Frames go into our own buffer and out in one write per
            // message, so tungstenite need not buffer.
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_frame_bytes))
    }
}

/// What the relay reads out of the upstream's text messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// A bot gateway: `brain_event`s are counted by type.
    #[default]
    Bot,
    /// OpenAI's Realtime API: token usage is summed over `response.done`
    /// events.
    Realtime,
}

/// Counts of one connection, for the usage event and the log line.
/// "Bot" in the field names means the upstream side, a bot or a provider.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayStats {
    /// Set by the caller before the relay starts.
    pub upstream: Upstream,
    pub client_messages: u64,
    pub client_bytes: u64,
    pub bot_messages: u64,
    pub bot_bytes: u64,
    pub brain_events: u64,
    /// Realtime: `response.done` events seen, and the usage they reported.
    pub responses: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A `Read + Write` over buffers for tungstenite's sans-I/O context:
/// reads drain `rx` (the last chunk read from the client) and report
/// `WouldBlock` when it is empty; writes append to `tx`.
#[derive(Debug, Default)]
struct MemIo {
    rx: Bytes,
    tx: Vec<u8>,
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rx.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.rx.len());
        buf[..n].copy_from_slice(&self.rx[..n]);
        self.rx.advance(n);
        if self.rx.is_empty() {
            // Let go of the chunk now, so the client's read buffer is the
            // only owner of its memory again and the next read reuses it.
            self.rx = Bytes::new();
        }
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One event the loop reacts to.
enum Event {
    Kick(Kick),
    Client(io::Result<Option<Bytes>>),
    Bot(Option<Result<Message, tungstenite::Error>>),
    Timer,
}

/// The client side: framing state, pending output, the upgraded stream
/// (taken out of the session), and the session (for the shutdown flag).
struct Client<'a> {
    session: &'a mut Session,
    stream: Stream,
    /// Socket read buffer. Each chunk read is split off it without a copy
    /// and handed to [`MemIo`]; once that is drained, the next read reuses
    /// the same memory.
    buf: BytesMut,
    /// How much room the next read gets: [`FIRST_READ_BUFFER`] until a read
    /// fills its room, then [`READ_BUFFER`].
    read_size: usize,
    ws: WebSocketContext,
    io: MemIo,
}

impl Client<'_> {
    /// One socket read: `Ok(None)` at end of stream. Cancel-safe (nothing is
    /// consumed unless the read completes), so it can sit in `select!`.
    async fn read(&mut self) -> io::Result<Option<Bytes>> {
        self.buf.reserve(self.read_size);
        let room = self.buf.capacity() - self.buf.len();
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == room {
            // More may be waiting: read in larger pieces from now on.
            self.read_size = READ_BUFFER;
        }
        Ok((n > 0).then(|| self.buf.split().freeze()))
    }

    /// Write whatever framing produced, bounded by `limit`.
    async fn flush(&mut self, limit: Duration) -> Result<(), CloseReason> {
        // Pongs and close replies tungstenite queued while reading.
        let _ = self.ws.flush(&mut self.io);
        if self.io.tx.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.io.tx);
        let stream = &mut self.stream;
        let write = async move {
            stream.write_all(&data).await?;
            stream.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseReason::ClientGone),
            Err(_) => Err(CloseReason::ClientStalled),
        }
    }

    /// Send a close frame and wait briefly for the client's answer.
    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseReason::close_code(CloseReason::sendable(code)),
            reason: reason.into(),
        };
        // Errors here mean the context already saw a close; the frame (if
        // any) is in `tx` either way.
        let _ = self.ws.close(&mut self.io, Some(frame));
        if self.flush(CLOSE_GRACE).await.is_err() {
            return;
        }
        // RFC 6455 §7.1.1: the server closes TCP after the close exchange;
        // give the client a moment to answer so its side ends cleanly.
        let deadline = Instant::now() + CLOSE_GRACE;
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, self.read()).await {
            self.io.rx = chunk;
            loop {
                match self.ws.read(&mut self.io) {
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        break
                    }
                    // Closed (the answer arrived) or broken: done.
                    Err(_) => return,
                }
            }
        }
    }
}

/// Relay between the upgraded client `session` and `bot` until one side
/// ends; returns why.
pub async fn run(
    session: &mut Session,
    bot: &mut BotStream,
    limits: Limits,
    signal: &KickSignal,
    registry: &ConnRegistry,
    metrics: &WsMetrics,
    stats: &mut RelayStats,
) -> CloseReason {
    let path = session.req_header().uri.path().to_owned();
    let (stream, preread) = match take_stream(session) {
        Ok(taken) => taken,
        Err(reason) => {
            let frame = CloseFrame {
                code: CloseReason::close_code(reason.bot_code()),
                reason: reason.label().into(),
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, bot.close(Some(frame))).await;
            restore_session(session, &path).await;
            return reason;
        }
    };
    let mut client = Client {
        session,
        stream,
        buf: BytesMut::with_capacity(FIRST_READ_BUFFER),
        read_size: FIRST_READ_BUFFER,
        ws: WebSocketContext::new(Role::Server, Some(limits.client_framing())),
        io: MemIo::default(),
    };
    let reason = relay(
        &mut client,
        preread,
        bot,
        limits,
        signal,
        registry,
        metrics,
        stats,
    )
    .await;
    // Tell each side that is still there.
    let (to_client, to_bot) = match reason {
        CloseReason::ClientGone | CloseReason::ClientStalled => (None, Some(reason.bot_code())),
        CloseReason::ClientClosed => (None, None),
        CloseReason::BotClosed(_) | CloseReason::BotLost | CloseReason::BotFailed => {
            (Some(reason.client_code()), None)
        }
        _ => (Some(reason.client_code()), Some(reason.bot_code())),
    };
    let close_bot = async {
        if let Some(code) = to_bot {
            let frame = CloseFrame {
                code: CloseReason::close_code(code),
                reason: reason.label().into(),
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, bot.close(Some(frame))).await;
        }
    };
    let close_client = async {
        if let Some(code) = to_client {
            client.close(code, reason.label()).await;
        }
    };
    tokio::join!(close_bot, close_client);
    // FIN (or TLS close_notify) to the client, best effort; dropping the
    // stream closes the socket either way.
    let _ = tokio::time::timeout(CLOSE_GRACE, AsyncWriteExt::shutdown(&mut client.stream)).await;
    restore_session(client.session, &path).await;
    reason
}

/// Take the upgraded client stream out of `session` (see the module doc),
/// with whatever Pingora already read from it past the upgrade request.
/// The session is left holding a stand-in with no socket.
fn take_stream(session: &mut Session) -> Result<(Stream, Option<Bytes>), CloseReason> {
    // Bytes Pingora buffered past the request head come out of the body
    // reader without touching the socket; after that, one poll finds out
    // whether more is waiting, and a pending read is dropped unconsumed.
    let mut preread: Vec<u8> = Vec::new();
    while preread.len() < MAX_PREREAD {
        match session.read_request_body().now_or_never() {
            Some(Ok(Some(chunk))) => preread.extend_from_slice(&chunk),
            Some(Ok(None) | Err(_)) => return Err(CloseReason::ClientGone),
            None => break,
        }
    }
    let stand_in = HttpSession::new_http1(Box::new(Cursor::new(Vec::new())));
    match std::mem::replace(&mut *session.downstream_session, stand_in) {
        HttpSession::H1(h1) => Ok((
            h1.into_inner(),
            (!preread.is_empty()).then(|| preread.into()),
        )),
        other => {
            // Only HTTP/1.1 upgrades reach the relay (the handshake refuses
            // h2); keep the session as it was if that ever changes.
            *session.downstream_session = other;
            tracing::error!("WebSocket relay: the client session is not HTTP/1");
            Err(CloseReason::Protocol)
        }
    }
}

/// Give `session` a stand-in that holds the request line (`GET path`), so
/// Pingora's `logging` and `finish` after the relay see a request; it has
/// no socket and is never reused.
async fn restore_session(session: &mut Session, path: &str) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: molt\r\n\r\n").into_bytes();
    let mut stand_in = HttpSession::new_http1(Box::new(Cursor::new(head)));
    // An in-memory read of a well-formed head (the path came from a parsed
    // request); if it ever failed, `req_header` would panic in logging, so
    // the session keeps what it has.
    match stand_in.read_request().await {
        Ok(true) => {
            stand_in.set_keepalive(None);
            *session.downstream_session = stand_in;
        }
        _ => tracing::error!("WebSocket relay: cannot build the session stand-in"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay(
    client: &mut Client<'_>,
    preread: Option<Bytes>,
    bot: &mut BotStream,
    limits: Limits,
    signal: &KickSignal,
    registry: &ConnRegistry,
    metrics: &WsMetrics,
    stats: &mut RelayStats,
) -> CloseReason {
    let to_bot_msgs = metrics.messages.with_label_values(&["client_to_bot"]);
    let to_bot_bytes = metrics.bytes.with_label_values(&["client_to_bot"]);
    let to_client_msgs = metrics.messages.with_label_values(&["bot_to_client"]);
    let to_client_bytes = metrics.bytes.with_label_values(&["bot_to_client"]);
    let mut last_heard = Instant::now();
    let mut pinged = false;
    let mut preread = preread;
    loop {
        let idle_at = last_heard + limits.idle_timeout;
        let wake = if pinged {
            idle_at
        } else {
            idle_at.min(last_heard + limits.ping_interval)
        };
        let event = tokio::select! {
            biased;
            k = signal.kicked() => Event::Kick(k),
            r = async { preread.take() }, if preread.is_some() => Event::Client(Ok(r)),
            r = client.read() => Event::Client(r),
            m = bot.next() => Event::Bot(m),
            () = tokio::time::sleep_until(wake) => Event::Timer,
        };
        match event {
            Event::Kick(Kick::Shutdown) => return CloseReason::Shutdown,
            Event::Kick(Kick::BotMoved) => return CloseReason::BotMoved,
            Event::Client(Ok(Some(chunk))) => {
                last_heard = Instant::now();
                pinged = false;
                client.io.rx = chunk;
                loop {
                    let msg = match client.ws.read(&mut client.io) {
                        Ok(m) => m,
                        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                            break
                        }
                        Err(e) => return CloseReason::from_client_error(&e),
                    };
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            let len = msg.len() as u64;
                            stats.client_messages += 1;
                            stats.client_bytes += len;
                            to_bot_msgs.inc();
                            to_bot_bytes.inc_by(len);
                            if let Err(r) = send_bot(bot, msg, limits.idle_timeout).await {
                                return r;
                            }
                        }
                        Message::Close(frame) => {
                            // tungstenite queued the answer; send it, and
                            // pass the client's code on to the bot.
                            let _ = client.flush(CLOSE_GRACE).await;
                            let code = frame
                                .as_ref()
                                .map_or(1000, |f| CloseReason::sendable(u16::from(f.code)));
                            let frame = CloseFrame {
                                code: CloseReason::close_code(code),
                                reason: "client closed".into(),
                            };
                            let _ = tokio::time::timeout(CLOSE_GRACE, bot.close(Some(frame))).await;
                            return CloseReason::ClientClosed;
                        }
                        // Pongs answer our pings; pings were answered by
                        // tungstenite (sent by the flush below).
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                if let Err(r) = client.flush(limits.idle_timeout).await {
                    return r;
                }
            }
            Event::Client(Ok(None) | Err(_)) => return CloseReason::ClientGone,
            Event::Bot(Some(Ok(msg))) => match msg {
                Message::Text(_) | Message::Binary(_) => {
                    let len = msg.len() as u64;
                    stats.bot_messages += 1;
                    stats.bot_bytes += len;
                    to_client_msgs.inc();
                    to_client_bytes.inc_by(len);
                    match (&msg, stats.upstream) {
                        (Message::Text(t), Upstream::Bot) => {
                            if let Some(kind) = brain_event_type(t.as_str()) {
                                stats.brain_events += 1;
                                metrics
                                    .brain_events
                                    .with_label_values(&[WsMetrics::brain_label(&kind)])
                                    .inc();
                            }
                        }
                        (Message::Text(t), Upstream::Realtime) => {
                            if let Some((input, output)) = realtime_usage(t.as_str()) {
                                stats.responses += 1;
                                stats.input_tokens += input;
                                stats.output_tokens += output;
                            }
                        }
                        _ => {}
                    }
                    if client.ws.write(&mut client.io, msg).is_err() {
                        return CloseReason::Protocol;
                    }
                    if let Err(r) = client.flush(limits.idle_timeout).await {
                        return r;
                    }
                }
                Message::Close(frame) => {
                    let code = frame
                        .as_ref()
                        .map_or(1000, |f| CloseReason::sendable(u16::from(f.code)));
                    return CloseReason::BotClosed(code);
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            },
            Event::Bot(Some(Err(e))) => {
                tracing::debug!(error = %e, "bot connection failed");
                return match e {
                    tungstenite::Error::Io(_)
                    | tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ) => CloseReason::BotLost,
                    _ => CloseReason::BotFailed,
                };
            }
            Event::Bot(None) => return CloseReason::BotLost,
            Event::Timer => {
                if client.session.is_process_shutting_down() {
                    // Normally the registry's SIGTERM listener got here
                    // first; this covers shutdowns started otherwise.
                    registry.begin_shutdown();
                    continue;
                }
                let now = Instant::now();
                if now >= idle_at {
                    return CloseReason::Idle;
                }
                if !pinged {
                    pinged = true;
                    if client
                        .ws
                        .write(&mut client.io, Message::Ping(Bytes::new()))
                        .is_err()
                    {
                        return CloseReason::Protocol;
                    }
                    if let Err(r) = client.flush(limits.idle_timeout).await {
                        return r;
                    }
                }
            }
        }
    }
}

/// Send one message to the bot, flushed, within `limit`.
async fn send_bot(bot: &mut BotStream, msg: Message, limit: Duration) -> Result<(), CloseReason> {
    match tokio::time::timeout(limit, bot.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(tungstenite::Error::Io(_) | tungstenite::Error::ConnectionClosed)) => {
            Err(CloseReason::BotLost)
        }
        Ok(Err(_)) => Err(CloseReason::BotFailed),
        // The bot stopped reading.
        Err(_) => Err(CloseReason::BotFailed),
    }
}

/// The `event.type` of a `{"type":"brain_event","event":{...}}` message.
/// Only messages that mention `brain_event` are parsed, so chat chunks cost
/// one substring search.
fn brain_event_type(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "type")]
        kind: Option<String>,
        event: Option<Event>,
    }
    #[derive(serde::Deserialize)]
    struct Event {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    memchr::memmem::find(text.as_bytes(), b"brain_event")?;
    let env: Envelope = serde_json::from_str(text).ok()?;
    if env.kind.as_deref() != Some("brain_event") {
        return None;
    }
    Some(env.event.and_then(|e| e.kind).unwrap_or_default())
}

/// The usage of a Realtime `response.done` event:
/// `{"type":"response.done","response":{"usage":{"input_tokens","output_tokens",...}}}`.
/// Only messages that mention `response.done` are parsed; audio deltas and
/// the rest cost one substring search.
fn realtime_usage(text: &str) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Done {
        #[serde(rename = "type")]
        kind: String,
        response: Option<Response>,
    }
    #[derive(serde::Deserialize)]
    struct Response {
        usage: Option<Usage>,
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
    }
    memchr::memmem::find(text.as_bytes(), b"response.done")?;
    let done: Done = serde_json::from_str(text).ok()?;
    if done.kind != "response.done" {
        return None;
    }
    let usage = done.response?.usage?;
    Some((
        usage.input_tokens.unwrap_or(0),
        usage.output_tokens.unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_usage_from_response_done() {
        let t = r#"{"type":"response.done","event_id":"e","response":{"id":"r","status":"completed","output":[{"type":"message","content":[{"type":"text","text":"response.done"}]}],"usage":{"total_tokens":30,"input_tokens":12,"output_tokens":18,"input_token_details":{"cached_tokens":0}}}}"#;
        assert_eq!(realtime_usage(t), Some((12, 18)));
        assert_eq!(
            realtime_usage(r#"{"type":"response.text.delta","delta":"response.done"}"#),
            None
        );
        assert_eq!(
            realtime_usage(r#"{"type":"response.done","response":{"usage":null}}"#),
            None
        );
    }

    #[test]
    fn brain_events_are_recognised() {
        let t = r#"{"type":"brain_event","event":{"id":"e1","type":"tool_call","timestamp":1}}"#;
        assert_eq!(brain_event_type(t).as_deref(), Some("tool_call"));
        assert_eq!(
            brain_event_type(r#"{"content":"brain_event","done":false}"#),
            None
        );
        assert_eq!(WsMetrics::brain_label("tool_call"), "tool_call");
        assert_eq!(WsMetrics::brain_label("made-up"), "other");
    }

    #[test]
    fn sans_io_framing_roundtrip() {
        // A masked client text frame "hi", fed in two pieces.
        let frame = [0x81u8, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        let mut ws = WebSocketContext::new(Role::Server, None);
        let mut io = MemIo {
            rx: Bytes::copy_from_slice(&frame[..3]),
            tx: Vec::new(),
        };
        assert!(
            matches!(ws.read(&mut io), Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock)
        );
        io.rx = Bytes::copy_from_slice(&frame[3..]);
        assert_eq!(ws.read(&mut io).unwrap(), Message::text("hi"));
        ws.write(&mut io, Message::text("yo")).unwrap();
        ws.flush(&mut io).unwrap();
        // Server frames are not masked.
        assert_eq!(io.tx, [0x81, 0x02, b'y', b'o']);
    }

    #[test]
    fn unmasked_and_oversized_client_frames_fail() {
        let limits = Limits {
            idle_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
            max_message_bytes: 200,
            max_frame_bytes: 200,
        };
        let mut ws = WebSocketContext::new(Role::Server, Some(limits.client_framing()));
        let mut io = MemIo {
            rx: Bytes::from_static(&[0x81, 0x02, b'h', b'i']),
            tx: Vec::new(),
        };
        let e = ws.read(&mut io).unwrap_err();
        assert_eq!(CloseReason::from_client_error(&e), CloseReason::Protocol);
        let mut ws = WebSocketContext::new(Role::Server, Some(limits.client_framing()));
        // 126 → 16-bit length 300, masked.
        let mut io = MemIo {
            rx: Bytes::from_static(&[0x82, 0xFE, 0x01, 0x2C, 0, 0, 0, 0]),
            tx: Vec::new(),
        };
        let e = ws.read(&mut io).unwrap_err();
        assert_eq!(CloseReason::from_client_error(&e), CloseReason::TooBig);
    }

    #[test]
    fn client_messages_larger_than_the_framing_chunk_arrive_whole() {
        let limits = Limits {
            idle_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 64 * 1024,
        };
        let text: String = (0..10_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let mask = [9u8, 8, 7, 6];
        let mut frame = vec![0x81, 0xFE];
        frame.extend_from_slice(&u16::try_from(text.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut ws = WebSocketContext::new(Role::Server, Some(limits.client_framing()));
        let mut io = MemIo::default();
        // As the socket delivers it: READ_BUFFER-sized chunks, each far
        // larger than the framing chunk.
        let mut got = None;
        for chunk in frame.chunks(READ_BUFFER) {
            io.rx = Bytes::copy_from_slice(chunk);
            match ws.read(&mut io) {
                Ok(m) => got = Some(m),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            assert!(
                io.rx.is_empty(),
                "every chunk is drained before the next read"
            );
        }
        assert_eq!(got, Some(Message::text(text)));
    }
}
