//! The generator's side of the wire: one HTTP/1.1 keep-alive connection
//! ([`Conn`]) and one timed request/response exchange on it ([`exchange`]).
//!
//! Built directly on `hyper::client::conn::http1` rather than a pooled
//! client so the number of connections per target is exactly what the
//! scenario says and every (re)connect is counted. A connection whose state
//! is unknown after an error or timeout is dropped and re-dialled on next
//! use, never reused.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::stats::{ErrorKind, Sample};

/// The request every exchange of a target sends, prepared once.
#[derive(Debug, Clone)]
pub(crate) struct RequestTemplate {
    pub(crate) method: Method,
    pub(crate) path: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) sse: bool,
    pub(crate) timeout: Duration,
}

impl RequestTemplate {
    fn build(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.path.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// One client connection to a target, dialled lazily.
#[derive(Debug)]
pub(crate) struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Connections dialled over this slot's life (1 if keep-alive held).
    pub(crate) opened: u64,
}

impl Conn {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: None,
            opened: 0,
        }
    }

    /// A sender ready for the next request: the open one if it is still
    /// usable, else a fresh connection.
    async fn ready(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ErrorKind> {
        if let Some(sender) = &mut self.sender {
            // Waits for the previous exchange to be fully done; fails if the
            // server closed the connection meanwhile (idle timeout).
            if sender.ready().await.is_err() {
                self.sender = None;
            }
        }
        if self.sender.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|_| ErrorKind::Connect)?;
            // Requests and small responses must not wait for Nagle.
            stream.set_nodelay(true).map_err(|_| ErrorKind::Connect)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| ErrorKind::Connect)?;
            // Drives the connection; ends when the sender is dropped or the
            // peer closes. Its error, if any, surfaces on the next send.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.opened += 1;
            self.sender = Some(sender);
        }
        // Set just above when it was `None`.
        self.sender.as_mut().ok_or(ErrorKind::Connect)
    }

    /// Forget the connection (its state is unknown after a failure).
    fn discard(&mut self) {
        self.sender = None;
    }
}

/// Send the template's request on `conn` as if it had been sent at `due`,
/// and time the response. A request that is already `timeout` late is not
/// sent at all: it has failed whatever the server would do.
pub(crate) async fn exchange(
    conn: &mut Conn,
    tpl: &RequestTemplate,
    due: Instant,
) -> Result<Sample, ErrorKind> {
    let deadline = due + tpl.timeout;
    if Instant::now() >= deadline {
        return Err(ErrorKind::Timeout);
    }
    let result = tokio::time::timeout_at(deadline.into(), timed(conn, tpl, due)).await;
    match result {
        Ok(Ok(sample)) => Ok(sample),
        Ok(Err(kind)) => {
            if !matches!(kind, ErrorKind::Status(_) | ErrorKind::NotSse) {
                conn.discard();
            }
            Err(kind)
        }
        Err(_elapsed) => {
            conn.discard();
            Err(ErrorKind::Timeout)
        }
    }
}

async fn timed(conn: &mut Conn, tpl: &RequestTemplate, due: Instant) -> Result<Sample, ErrorKind> {
    let sender = conn.ready().await?;
    let req = tpl.build();
    let sent = Instant::now();
    let response = sender
        .send_request(req)
        .await
        .map_err(|_| ErrorKind::Send)?;
    let status = response.status();
    let is_sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = response.into_body();
    if !status.is_success() || (tpl.sse && !is_sse) {
        // Read it out so the connection stays reusable.
        drain(&mut body).await?;
        return Err(if status.is_success() {
            ErrorKind::NotSse
        } else {
            ErrorKind::Status(status.as_u16())
        });
    }
    let mut sample = Sample {
        lag: sent.saturating_duration_since(due),
        ..Sample::default()
    };
    let mut events = SseEvents::default();
    let mut last_event: Option<Instant> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ErrorKind::Body)?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if !tpl.sse || data.is_empty() {
            continue;
        }
        let now = Instant::now();
        sample.reads += 1;
        for _ in 0..events.feed(data) {
            sample.events += 1;
            match last_event {
                None => sample.ttft = Some(now.saturating_duration_since(due)),
                Some(prev) => sample.gaps.push(now.saturating_duration_since(prev)),
            }
            last_event = Some(now);
        }
    }
    let end = Instant::now();
    sample.latency = end.saturating_duration_since(due);
    sample.service = end.saturating_duration_since(sent);
    Ok(sample)
}

async fn drain(body: &mut Incoming) -> Result<(), ErrorKind> {
    while let Some(frame) = body.frame().await {
        frame.map_err(|_| ErrorKind::Body)?;
    }
    Ok(())
}

/// Counts complete server-sent events that carry data, across arbitrary
/// chunking. An event ends at a blank line (`\n\n` or `\r\n\r\n`); a block
/// of only comments or `event:` lines dispatches nothing, per the SSE spec.
#[derive(Debug, Default)]
struct SseEvents {
    /// Bytes of the current line so far, `\r` excluded.
    line_len: usize,
    /// The current line's first bytes, enough to recognise `data:`.
    prefix: [u8; 5],
    data_in_event: bool,
}

impl SseEvents {
    /// Feed body bytes; returns how many data events completed in them.
    fn feed(&mut self, chunk: &[u8]) -> usize {
        let mut done = 0;
        for &b in chunk {
            match b {
                b'\n' => {
                    if self.line_len == 0 {
                        if std::mem::take(&mut self.data_in_event) {
                            done += 1;
                        }
                    } else if self.line_len >= self.prefix.len() && &self.prefix == b"data:" {
                        self.data_in_event = true;
                    }
                    self.line_len = 0;
                }
                // Only ever part of a CRLF line ending from the providers
                // this tool measures.
                b'\r' => {}
                _ => {
                    if let Some(slot) = self.prefix.get_mut(self.line_len) {
                        *slot = b;
                    }
                    self.line_len += 1;
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_counted_at_every_split() {
        let stream = concat!(
            ": keep-alive\n\n",
            "event: message_start\r\ndata: {\"a\":1}\r\n\r\n",
            "data: {\"b\":2}\n\n",
            "event: ping\n\n",
            "data: [DONE]\n\n",
        );
        for size in 1..stream.len() {
            let mut e = SseEvents::default();
            let n: usize = stream.as_bytes().chunks(size).map(|c| e.feed(c)).sum();
            assert_eq!(n, 3, "chunk size {size}");
        }
    }
}
