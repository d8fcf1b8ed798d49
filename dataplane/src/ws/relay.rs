//! The relay loop of one open connection: client frames in and out through
//! the upgraded client stream, bot frames through a tokio-tungstenite
//! client, one message at a time.
//!
//! Client-side framing is tungstenite's sans-I/O [`WebSocketContext`](tungstenite::protocol::WebSocketContext)
//! (server role) over an in-memory buffer pair (see [`super::client`]): the bytes read
//! from the upgraded connection are fed in, the frames it produces are
//! written out. That gives RFC 6455 in full (masking enforced,
//! fragmentation, control frames of at most 125 bytes, close codes, UTF-8
//! checks of text, frame and message limits) from a well-tested library. A
//! codec of our own would duplicate all that.
//!
//! Memory: once the `101` is written, the relay takes the client's stream
//! (TCP or TLS) out of Pingora's HTTP/1 session ([`super::client`]) and reads
//! it into its own buffer (512 bytes, growing to
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

use crate::scrub::Secrets;
use crate::usage_reader::{realtime_response_done, TokenUsage};
use crate::ws::client::{restore_session, take_stream, Client};
use crate::ws::error::CloseReason;
use crate::ws::metrics::WsMetrics;
use crate::ws::registry::{ConnRegistry, Kick, KickSignal};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use pingora_proxy::Session;
use std::io;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::Message;

pub type BotStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long the close handshake may take on either side before the
/// connection is simply dropped.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Read buffer of the client socket and of the bot side's framing state
/// (which reads the bot's socket). Small, because an idle connection should
/// cost little; a large message grows the framing buffer as needed and is
/// read in several socket reads.
pub const READ_BUFFER: usize = 4096;

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

    pub(super) fn framing_with_chunk(&self, read_chunk: usize) -> WebSocketConfig {
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
    /// Realtime: `response.done` events seen, and the usage they reported
    /// (summed, class by class).
    pub responses: u64,
    pub tokens: TokenUsage,
    /// Secrets masked in upstream messages ([`crate::scrub`]).
    pub secrets_masked: u64,
}

/// What a relay watches besides its two peers, and where it reports.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    pub limits: Limits,
    /// Masked in every upstream message before it reaches the client.
    pub secrets: &'a Secrets,
    /// Kicks this connection (shutdown, a moved bot).
    pub signal: &'a KickSignal,
    pub registry: &'a ConnRegistry,
    pub metrics: &'a WsMetrics,
}

/// One event the loop reacts to.
enum Event {
    Kick(Kick),
    Client(io::Result<Option<Bytes>>),
    Bot(Option<Result<Message, tungstenite::Error>>),
    Timer,
}

/// Relay between the upgraded client `session` and `bot` until one side
/// ends; returns why.
pub async fn run(
    session: &mut Session,
    bot: &mut BotStream,
    watch: Watch<'_>,
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
            Box::pin(restore_session(session, &path)).await;
            return reason;
        }
    };
    let mut client = Client::new(session, stream, watch.limits);
    let reason = relay(&mut client, preread, bot, &watch, stats).await;
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
    // Boxed: it runs once, at the end, and inline it would size the state
    // every open connection keeps (~1.2 KiB of ~1.9).
    Box::pin(restore_session(client.session, &path)).await;
    reason
}

async fn relay(
    client: &mut Client<'_>,
    preread: Option<Bytes>,
    bot: &mut BotStream,
    watch: &Watch<'_>,
    stats: &mut RelayStats,
) -> CloseReason {
    let Watch {
        limits,
        secrets,
        signal,
        registry,
        metrics,
    } = *watch;
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
                            if let Some(usage) = realtime_response_done(t.as_str()) {
                                stats.responses += 1;
                                stats.tokens.add(&usage);
                            }
                        }
                        _ => {}
                    }
                    let msg = mask_message(msg, secrets, &mut stats.secrets_masked);
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

/// `msg` with every known secret masked (copied only if it holds one).
fn mask_message(msg: Message, secrets: &Secrets, masked: &mut u64) -> Message {
    let bytes: &[u8] = match &msg {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => return msg,
    };
    if !secrets.found_in(bytes) {
        return msg;
    }
    let mut copy = bytes.to_vec();
    *masked += secrets.mask_in_place(&mut copy) as u64;
    match msg {
        // A secret is whole UTF-8 characters, and so is its mask.
        Message::Text(_) => match String::from_utf8(copy) {
            Ok(text) => Message::text(text),
            Err(_) => Message::text(""),
        },
        _ => Message::binary(copy),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_messages_carry_no_secret() {
        let secrets = Secrets::new(["gw-token-0123456789abcdef"]);
        let mut masked = 0;
        let text = Message::text(r#"{"echo":"Bearer gw-token-0123456789abcdef"}"#);
        let out = mask_message(text, &secrets, &mut masked);
        assert_eq!(
            out,
            Message::text(r#"{"echo":"Bearer *************************"}"#)
        );
        let plain = Message::text("hello");
        assert_eq!(mask_message(plain.clone(), &secrets, &mut masked), plain);
        assert_eq!(masked, 1);
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
}
