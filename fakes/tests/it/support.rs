//! Test harness: starts a mock provider on an ephemeral port and talks to it
//! over real HTTP/1.1 or h2c connections (one connection per request, so a
//! dropped connection shows up as a body error on exactly that request).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use molt_fakes::mock_provider::{MockOptions, MockProvider};
use serde_json::Value;
use tokio::net::TcpStream;

/// A running mock provider.
pub(crate) struct Mock {
    pub(crate) addr: SocketAddr,
    pub(crate) provider: MockProvider,
}

pub(crate) async fn start() -> Mock {
    start_with(MockOptions::default()).await
}

pub(crate) async fn start_with(options: MockOptions) -> Mock {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let provider = MockProvider::new(options);
    tokio::spawn(provider.clone().serve(listener));
    Mock { addr, provider }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    H2c,
}

/// One data frame of a response body and when it arrived.
pub(crate) struct Frame {
    pub(crate) at: Instant,
    pub(crate) data: Bytes,
}

/// A response read to the end (or to the transport error that ended it).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    /// When the response headers arrived.
    pub(crate) headers_at: Instant,
    pub(crate) frames: Vec<Frame>,
    /// The error that cut the body short, if any.
    pub(crate) body_error: Option<String>,
}

impl Answer {
    pub(crate) fn body(&self) -> Vec<u8> {
        self.frames
            .iter()
            .flat_map(|frame| frame.data.iter().copied())
            .collect()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.body()).unwrap()
    }

    pub(crate) fn json(&self) -> Value {
        assert!(
            self.body_error.is_none(),
            "body error: {:?}",
            self.body_error
        );
        serde_json::from_slice(&self.body()).unwrap()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }

    /// The SSE events of the body as (event name, data) pairs.
    pub(crate) fn events(&self) -> Vec<(Option<String>, String)> {
        let text = self.text();
        assert!(
            text.is_empty() || text.ends_with("\n\n"),
            "SSE body must end with a blank line: {text:?}"
        );
        text.split("\n\n")
            .filter(|block| !block.is_empty())
            .map(|block| {
                let mut name = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        assert!(data.is_none(), "one data line per event: {block:?}");
                        data = Some(value.to_owned());
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                (name, data.unwrap())
            })
            .collect()
    }

    /// The JSON payloads of the SSE events (all but a final `[DONE]`).
    pub(crate) fn event_json(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|(_, data)| data != "[DONE]")
            .map(|(_, data)| serde_json::from_str(&data).unwrap())
            .collect()
    }
}

/// A JSON POST with the credential every provider API needs.
pub(crate) fn post(path: &str, body: &Value) -> Request<Full<Bytes>> {
    post_bytes(path, Bytes::from(body.to_string()))
}

/// A POST of exactly `body`, with a credential.
pub(crate) fn post_bytes(path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .body(Full::new(body))
        .unwrap()
}

/// `request` with header `name` set (or replaced) to `value`.
pub(crate) fn with_header(
    mut request: Request<Full<Bytes>>,
    name: &'static str,
    value: &str,
) -> Request<Full<Bytes>> {
    request.headers_mut().insert(name, value.parse().unwrap());
    request
}

pub(crate) fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("authorization", "Bearer sk-test")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends `request` over a fresh HTTP/1.1 connection.
pub(crate) async fn send(mock: &Mock, request: Request<Full<Bytes>>) -> Answer {
    send_with(mock, Protocol::Http1, request).await
}

pub(crate) async fn send_with(
    mock: &Mock,
    protocol: Protocol,
    mut request: Request<Full<Bytes>>,
) -> Answer {
    let io = TokioIo::new(TcpStream::connect(mock.addr).await.unwrap());
    let response = match protocol {
        Protocol::Http1 => {
            request
                .headers_mut()
                .insert("host", mock.addr.to_string().parse().unwrap());
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        }
        Protocol::H2c => {
            *request.uri_mut() = format!("http://{}{}", mock.addr, request.uri())
                .parse()
                .unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        }
    };
    let headers_at = Instant::now();
    let (parts, mut body) = response.into_parts();
    let mut frames = Vec::new();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    frames.push(Frame {
                        at: Instant::now(),
                        data,
                    });
                }
            }
            Err(error) => {
                body_error = Some(format!("{error:?}"));
                break;
            }
        }
    }
    Answer {
        status: parts.status,
        headers: parts.headers,
        headers_at,
        frames,
        body_error,
    }
}

/// Elapsed time since `start`, for timing assertions with generous slack.
pub(crate) fn since(start: Instant, at: Instant) -> Duration {
    at.saturating_duration_since(start)
}
