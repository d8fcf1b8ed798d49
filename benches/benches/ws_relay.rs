//! Criterion benchmark of the WebSocket frame relay
//! (`molt_dataplane::ws::relay::run`), with two baselines in the same group.
//!
//! One iteration is one round trip of a 200-byte text frame: the client
//! writes one masked 200-byte text frame, the echo bot answers it with the
//! same text, and the client reads the 204-byte unmasked frame back. On the
//! relayed paths that is two frames through the relay: one client frame
//! read, checked (masking, UTF-8, size limits), counted and written to the
//! bot, and one bot frame read, counted and written to the client.
//!
//! The three paths, each set up once outside the timed loop:
//! - `direct_to_bot`: the client's bytes over loopback TCP straight to the
//!   echo bot (tokio-tungstenite server). No proxy: the floor.
//! - `tungstenite_forwarder`: a minimal forwarder with no relay logic: a
//!   tokio-tungstenite server over an in-memory duplex pipe on the client
//!   side, a tokio-tungstenite client over loopback TCP to the bot, and a
//!   `select!` moving messages both ways. No timers, metrics, kick signal or
//!   Pingora.
//! - `molt_relay`: the data plane's own relay: a Pingora `Session` over the
//!   in-memory duplex pipe (the same upgrade request and `101` the data
//!   plane handles), then `relay::run` with the production framing limits,
//!   metrics, kick signal and idle timers, connected to the same bot over
//!   loopback TCP.
//!
//! `molt_relay - tungstenite_forwarder` is the relay's own overhead;
//! `tungstenite_forwarder - direct_to_bot` is roughly what any WebSocket
//! terminating proxy pays for the second hop. Everything runs on one
//! current-thread tokio runtime, so the figures include no cross-thread
//! wake-ups (the data plane's would, under load).
//!
//! Run: `cargo bench -p molt-benches --bench ws_relay`.

// Fixtures are built once from constants; if one fails, the bench itself is
// wrong and aborting with the message is the right report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::{SinkExt, StreamExt};
use molt_dataplane::ws::handshake;
use molt_dataplane::ws::metrics::WsMetrics;
use molt_dataplane::ws::registry::{ConnRegistry, KickSignal};
use molt_dataplane::ws::relay::{self, Limits, RelayStats};
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::Message;

/// Payload size of the text frame.
const PAYLOAD: usize = 200;
/// Client frame: 2-byte header, 16-bit length, 4-byte mask, payload.
const CLIENT_FRAME: usize = 2 + 2 + 4 + PAYLOAD;
/// Server frame: 2-byte header, 16-bit length, payload (unmasked).
const SERVER_FRAME: usize = 2 + 2 + PAYLOAD;

const UPGRADE: &str = concat!(
    "GET /ws/chat?bot=bot-1 HTTP/1.1\r\n",
    "Host: 127.0.0.1\r\n",
    "Upgrade: websocket\r\n",
    "Connection: Upgrade\r\n",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    "Sec-WebSocket-Version: 13\r\n\r\n",
);

/// The data plane's framing limits (the config defaults' order of size).
fn limits() -> Limits {
    Limits {
        idle_timeout: Duration::from_secs(300),
        ping_interval: Duration::from_secs(30),
        max_message_bytes: 1 << 20,
        max_frame_bytes: 1 << 20,
    }
}

/// A chat-chunk-like JSON text of exactly `PAYLOAD` bytes.
fn payload() -> Vec<u8> {
    let mut p = br#"{"type":"message","content":""#.to_vec();
    let tail = br#"","done":false}"#;
    let fill = PAYLOAD - p.len() - tail.len();
    p.extend(std::iter::repeat_n(b'a', fill));
    p.extend_from_slice(tail);
    assert_eq!(p.len(), PAYLOAD);
    p
}

/// One masked client text frame carrying `payload`, and the unmasked frame
/// a server sends back for the same text.
fn frames(payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let len = (payload.len() as u16).to_be_bytes();
    let mut client = vec![0x81, 0x80 | 126, len[0], len[1]];
    client.extend_from_slice(&mask);
    client.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut server = vec![0x81, 126, len[0], len[1]];
    server.extend_from_slice(payload);
    assert_eq!((client.len(), server.len()), (CLIENT_FRAME, SERVER_FRAME));
    (client, server)
}

/// The echo bot: accepts WebSockets on loopback and sends every text or
/// binary message back.
async fn echo_bot() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let cfg = limits().framing();
                let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(cfg))
                    .await
                    .unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Send the upgrade request on `io` and read the response head.
async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    io.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        io.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
}

/// The bot side of a relay: a tokio-tungstenite client over TCP.
async fn connect_bot(addr: std::net::SocketAddr) -> relay::BotStream {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("ws://{addr}/"),
        Some(limits().framing()),
        true,
    )
    .await
    .unwrap();
    ws
}

/// Path 1: the client straight to the bot over TCP.
async fn direct(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    client_handshake(&mut tcp).await;
    tcp
}

/// Path 2: a forwarder with no relay logic.
async fn forwarder(addr: std::net::SocketAddr) -> DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let mut bot = connect_bot(addr).await;
    let cfg: WebSocketConfig = limits().framing();
    let mut down =
        tokio_tungstenite::WebSocketStream::from_raw_socket(server, Role::Server, Some(cfg)).await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                m = down.next() => match m {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        if bot.send(m).await.is_err() { break }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                m = bot.next() => match m {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        if down.send(m).await.is_err() { break }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
    });
    client
}

/// Path 3: the data plane's relay behind a Pingora session.
async fn molt_relay(addr: std::net::SocketAddr) -> DuplexStream {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let mut bot = connect_bot(addr).await;
    let handshake_done = tokio::spawn(async move {
        let mut session = Session::new_h1(Box::new(server));
        assert!(session.read_request().await.unwrap());
        let resp = {
            let up = handshake::parse(session.req_header()).unwrap();
            handshake::switching_protocols(&up, "bench", None).unwrap()
        };
        session.set_read_timeout(None);
        session.set_write_timeout(None);
        session
            .write_response_header(Box::new(resp), false)
            .await
            .unwrap();
        let metrics = WsMetrics::new(&prometheus::Registry::new()).unwrap();
        let registry = Arc::new(ConnRegistry::default());
        let signal = KickSignal::default();
        let mut stats = RelayStats::default();
        let secrets = molt_dataplane::scrub::Secrets::default();
        let watch = relay::Watch {
            limits: limits(),
            secrets: &secrets,
            signal: &signal,
            registry: &registry,
            metrics: &metrics,
        };
        relay::run(&mut session, &mut bot, watch, &mut stats).await
    });
    client_handshake(&mut client).await;
    // Keep the relay's task handle alive in the runtime; it ends when the
    // client pipe is dropped.
    drop(handshake_done);
    client
}

/// `iters` round trips on `io`; returns the time they took.
async fn round_trips<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    frame: &[u8],
    expect: &[u8],
    iters: u64,
) -> Duration {
    let mut back = vec![0u8; expect.len()];
    let start = Instant::now();
    for _ in 0..iters {
        io.write_all(frame).await.unwrap();
        io.read_exact(&mut back).await.unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(back, expect);
    elapsed
}

/// `ws_relay`: one iteration = one 200-byte text frame client→bot and its
/// echo bot→client (see the module doc for the three paths).
fn bench_ws_relay(c: &mut Criterion) {
    let rt: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (frame, expect) = frames(&payload());
    let addr = rt.block_on(echo_bot());
    let mut direct = rt.block_on(direct(addr));
    let mut forwarder = rt.block_on(forwarder(addr));
    let mut relayed = rt.block_on(molt_relay(addr));

    let mut g = c.benchmark_group("ws_relay");
    g.throughput(Throughput::Elements(1));
    g.bench_function("direct_to_bot", |b| {
        b.iter_custom(|n| rt.block_on(round_trips(&mut direct, &frame, &expect, n)))
    });
    g.bench_function("tungstenite_forwarder", |b| {
        b.iter_custom(|n| rt.block_on(round_trips(&mut forwarder, &frame, &expect, n)))
    });
    g.bench_function("molt_relay", |b| {
        b.iter_custom(|n| rt.block_on(round_trips(&mut relayed, &frame, &expect, n)))
    });
    g.finish();
}

criterion_group!(benches, bench_ws_relay);
criterion_main!(benches);
