//! The client's side of a relayed WebSocket: the upgraded stream (TCP or
//! TLS) taken out of Pingora's HTTP/1 session, read into a small buffer of
//! our own, and tungstenite's sans-I/O framing ([`WebSocketContext`],
//! server role) over an in-memory buffer pair ([`MemIo`]).
//!
//! Why the stream leaves the session, and what a resting connection costs,
//! is in [`super::relay`]'s module doc.

use super::relay::{Limits, CLOSE_GRACE, READ_BUFFER};
use crate::ws::error::CloseReason;
use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use pingora_core::protocols::http::ServerSession as HttpSession;
use pingora_core::protocols::Stream;
use pingora_proxy::Session;
use std::io::{self, Cursor, Read, Write};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tungstenite::protocol::{CloseFrame, Role, WebSocketContext};

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

/// A `Read + Write` over buffers for tungstenite's sans-I/O context:
/// reads drain `rx` (the last chunk read from the client) and report
/// `WouldBlock` when it is empty; writes append to `tx`.
#[derive(Debug, Default)]
pub(super) struct MemIo {
    pub(super) rx: Bytes,
    pub(super) tx: Vec<u8>,
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

/// The client side: framing state, pending output, the upgraded stream
/// (taken out of the session), and the session (for the shutdown flag).
pub(super) struct Client<'a> {
    pub(super) session: &'a mut Session,
    pub(super) stream: Stream,
    /// Socket read buffer. Each chunk read is split off it without a copy
    /// and handed to [`MemIo`]; once that is drained, the next read reuses
    /// the same memory.
    buf: BytesMut,
    /// How much room the next read gets: [`FIRST_READ_BUFFER`] until a read
    /// fills its room, then [`READ_BUFFER`].
    read_size: usize,
    pub(super) ws: WebSocketContext,
    pub(super) io: MemIo,
}

impl Limits {
    /// Framing config for the client side, which reads [`MemIo`].
    fn client_framing(&self) -> tungstenite::protocol::WebSocketConfig {
        self.framing_with_chunk(FRAMING_CHUNK)
    }
}

impl<'a> Client<'a> {
    /// The client side of a relay over `stream`, taken out of `session`.
    pub(super) fn new(session: &'a mut Session, stream: Stream, limits: Limits) -> Self {
        Self {
            session,
            stream,
            buf: BytesMut::with_capacity(FIRST_READ_BUFFER),
            read_size: FIRST_READ_BUFFER,
            ws: WebSocketContext::new(Role::Server, Some(limits.client_framing())),
            io: MemIo::default(),
        }
    }

    /// One socket read: `Ok(None)` at end of stream. Cancel-safe (nothing is
    /// consumed unless the read completes), so it can sit in `select!`.
    pub(super) async fn read(&mut self) -> io::Result<Option<Bytes>> {
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
    pub(super) async fn flush(&mut self, limit: Duration) -> Result<(), CloseReason> {
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
    pub(super) async fn close(&mut self, code: u16, reason: &str) {
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

/// Take the upgraded client stream out of `session` (see the module doc),
/// with whatever Pingora already read from it past the upgrade request.
/// The session is left holding a stand-in with no socket.
pub(super) fn take_stream(session: &mut Session) -> Result<(Stream, Option<Bytes>), CloseReason> {
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
pub(super) async fn restore_session(session: &mut Session, path: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::Message;

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
