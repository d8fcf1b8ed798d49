//! Paced response bodies: Server-Sent-Event framing, time-to-first-token and
//! inter-chunk delays, and abrupt mid-body connection drops.
//!
//! Every event is its own body frame produced by a lazily polled stream, so
//! hyper writes each one out as soon as it exists instead of buffering the
//! whole answer; delays are real `tokio::time::sleep`s between frames.

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

use super::control::Controls;

/// How long an aborting body waits before failing. hyper tears the connection
/// down as soon as the body errors and discards output it has not flushed yet
/// (HTTP/2 resets the stream and drops its send queue), so this grace period
/// lets the chunks sent before the abort actually reach the client.
const ABORT_FLUSH_GRACE: Duration = Duration::from_millis(25);

/// The OpenAI stream terminator.
pub(crate) const DONE: &str = "data: [DONE]\n\n";

/// An OpenAI-style event: `data: {json}\n\n`.
pub(crate) fn data_event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// A named event as Anthropic and the Responses API send them:
/// `event: <name>\ndata: {json}\n\n`.
pub(crate) fn named_event(name: &str, value: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {value}\n\n"))
}

/// The events of one streamed answer, in order.
#[derive(Debug, Default)]
pub(crate) struct StreamEvents {
    /// Sent together after the time to first token, before the first chunk.
    pub(crate) preamble: Vec<Bytes>,
    /// One per content chunk; `x-mock-abort-after` counts these.
    pub(crate) chunks: Vec<Bytes>,
    /// Sent right after the last chunk (finish, usage, terminator); never sent
    /// by an aborted stream.
    pub(crate) epilogue: Vec<Bytes>,
}

/// Timing and failure of a paced body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    pub(crate) ttft: Duration,
    pub(crate) chunk_delay: Duration,
    pub(crate) abort_after: Option<usize>,
}

impl From<&Controls> for Pacing {
    fn from(controls: &Controls) -> Self {
        Self {
            ttft: controls.ttft,
            chunk_delay: controls.chunk_delay,
            abort_after: controls.abort_after,
        }
    }
}

impl Pacing {
    /// Whether the body is cut short. An abort count at or past the chunk
    /// count still drops the connection, just after the last chunk, so the
    /// epilogue (finish, usage, terminator) is never sent.
    pub(crate) fn aborts(&self) -> bool {
        self.abort_after.is_some()
    }
}

/// One step of a paced body.
#[derive(Debug)]
enum Step {
    Sleep(Duration),
    Emit(Bytes),
    Abort,
}

/// A `200 text/event-stream` response that plays `events` according to `pacing`.
pub(crate) fn event_stream_response(events: StreamEvents, pacing: Pacing) -> Response {
    let mut response = Response::new(paced_body(plan_steps(events, pacing)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A `status` response with `content_type` that sends the first half of `body`
/// and then drops the connection: the non-streaming form of `x-mock-abort-after`.
pub(crate) fn truncated_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response {
    let half = body.slice(..body.len() / 2);
    let mut response = Response::new(paced_body(vec![Step::Emit(half), Step::Abort]));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn plan_steps(events: StreamEvents, pacing: Pacing) -> Vec<Step> {
    let mut steps = Vec::with_capacity(events.preamble.len() + 2 * events.chunks.len() + 4);
    // The time to first token also delays the preamble, so a proxy measuring
    // time-to-first-byte and one measuring time-to-first-content-event agree.
    if !pacing.ttft.is_zero() {
        steps.push(Step::Sleep(pacing.ttft));
    }
    steps.extend(events.preamble.into_iter().map(Step::Emit));
    for (index, chunk) in events.chunks.into_iter().enumerate() {
        if pacing.abort_after == Some(index) {
            steps.push(Step::Abort);
            return steps;
        }
        if index > 0 && !pacing.chunk_delay.is_zero() {
            steps.push(Step::Sleep(pacing.chunk_delay));
        }
        steps.push(Step::Emit(chunk));
    }
    if pacing.aborts() {
        steps.push(Step::Abort);
    } else {
        steps.extend(events.epilogue.into_iter().map(Step::Emit));
    }
    steps
}

/// A body that performs `steps` lazily, one frame per `Emit`.
fn paced_body(steps: Vec<Step>) -> Body {
    let stream = futures::stream::unfold(steps.into_iter(), |mut steps| async move {
        loop {
            match steps.next()? {
                Step::Sleep(duration) => tokio::time::sleep(duration).await,
                Step::Emit(bytes) => return Some((Ok(bytes), steps)),
                Step::Abort => {
                    tokio::time::sleep(ABORT_FLUSH_GRACE).await;
                    // A body error makes hyper close an HTTP/1.1 connection
                    // without the final `0\r\n\r\n` chunk and reset an HTTP/2
                    // stream, which is exactly the truncation clients must see.
                    let error = io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "x-mock-abort-after: dropping the connection mid-body",
                    );
                    return Some((Err(error), steps));
                }
            }
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: usize) -> StreamEvents {
        StreamEvents {
            preamble: vec![Bytes::from_static(b"pre")],
            chunks: (0..chunks).map(|i| Bytes::from(i.to_string())).collect(),
            epilogue: vec![Bytes::from_static(b"end")],
        }
    }

    fn emitted(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|step| match step {
                Step::Sleep(duration) => format!("sleep {}", duration.as_millis()),
                Step::Emit(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Step::Abort => "abort".to_owned(),
            })
            .collect()
    }

    #[test]
    fn delays_go_before_the_first_chunk_and_between_chunks() {
        let pacing = Pacing {
            ttft: Duration::from_millis(5),
            chunk_delay: Duration::from_millis(2),
            abort_after: None,
        };
        assert_eq!(
            emitted(&plan_steps(events(3), pacing)),
            ["sleep 5", "pre", "0", "sleep 2", "1", "sleep 2", "2", "end"]
        );
    }

    #[test]
    fn aborts_skip_the_epilogue() {
        let pacing = |abort_after| Pacing {
            ttft: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            abort_after: Some(abort_after),
        };
        assert_eq!(
            emitted(&plan_steps(events(3), pacing(1))),
            ["pre", "0", "abort"]
        );
        assert_eq!(emitted(&plan_steps(events(3), pacing(0))), ["pre", "abort"]);
        assert_eq!(
            emitted(&plan_steps(events(2), pacing(5))),
            ["pre", "0", "1", "abort"]
        );
    }
}
