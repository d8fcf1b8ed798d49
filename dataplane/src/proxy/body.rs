//! The request body of a model route: read whole, within the size and time
//! limits, validated by the incremental JSON scanner as it arrives, and kept
//! as the `Bytes` chunks Pingora delivered (re-sent to every fallback
//! without a copy); and the zero-copy edits the proxy makes to it.

use crate::error::ClientError;
use crate::json_scan::JsonScanner;
use crate::splice::Edit;
use bytes::Bytes;
use http::{header, Version};
use pingora_error::ErrorType;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// Top-level request fields the scanner tracks, in this order.
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
];
const F_MODEL: usize = 0;
const F_STREAM: usize = 1;
const F_STREAM_OPTIONS: usize = 2;
/// The output caps, in the order their APIs prefer them.
const F_MAX_OUTPUT: [usize; 3] = [4, 3, 5];
/// Tracked field values longer than this are located but not copied.
const MAX_FIELD_VALUE: usize = 4096;

/// The body as read from the client, with what the scanner found.
pub(super) struct RequestBody {
    pub(super) chunks: Vec<Bytes>,
    scanner: JsonScanner,
}

/// The limits a body is read within.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimits {
    pub(super) max_bytes: usize,
    pub(super) timeout: std::time::Duration,
}

impl RequestBody {
    /// Read and validate the whole body: 413 past `max_bytes` (declared or
    /// sent), 408 if it does not arrive within `timeout`, 400 if it is not
    /// one JSON document, its chunked encoding is broken or the client goes
    /// away mid-body. After a failed read the connection is not kept alive.
    pub(super) async fn read(
        session: &mut Session,
        limits: BodyLimits,
    ) -> Result<Self, ClientError> {
        let max = limits.max_bytes;
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(ClientError::BodyTooLarge(max));
        }
        if expects_continue(session.req_header()) {
            // Without this, curl waits a second before sending the body.
            let _ = session.as_downstream_mut().write_continue_response().await;
        }
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let mut scanner = JsonScanner::new(REQUEST_FIELDS, MAX_FIELD_VALUE);
        let mut chunks = Vec::new();
        let mut len = 0usize;
        loop {
            let next = tokio::time::timeout_at(deadline, session.read_request_body()).await;
            match next {
                Err(_) => return Err(ClientError::BodyTimeout),
                Ok(Err(e)) => {
                    // Whatever went wrong, the connection's framing is lost:
                    // no byte after this one may be read as a next request.
                    session.set_keepalive(None);
                    return Err(read_error(&e));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => {
                    len += chunk.len();
                    if len > max {
                        return Err(ClientError::BodyTooLarge(max));
                    }
                    scanner.feed(&chunk).map_err(ClientError::MalformedJson)?;
                    chunks.push(chunk);
                }
            }
        }
        scanner.finish().map_err(ClientError::MalformedJson)?;
        Ok(Self { chunks, scanner })
    }

    /// Length of the whole body in bytes.
    pub(super) fn len(&self) -> u64 {
        self.scanner.len()
    }

    /// The `model` string, if the body has one.
    pub(super) fn model(&self) -> Option<String> {
        self.scanner.field(F_MODEL).and_then(|f| f.as_str())
    }

    /// `"stream": true`.
    pub(super) fn stream(&self) -> bool {
        self.scanner.field(F_STREAM).and_then(|f| f.as_bool()) == Some(true)
    }

    /// The client's cap on output tokens, under whichever name its API uses.
    pub(super) fn max_output_tokens(&self) -> Option<u64> {
        F_MAX_OUTPUT
            .iter()
            .find_map(|&f| self.scanner.field(f).and_then(|v| v.as_u64()))
    }

    /// The edit that renames the model to `upstream_name`, if the body
    /// names it otherwise.
    pub(super) fn rename_model(&self, upstream_name: &str) -> Option<Edit> {
        let span = self.scanner.field(F_MODEL)?;
        if span.as_str().as_deref() == Some(upstream_name) {
            return None;
        }
        // Serialising a `&str` into a Vec cannot fail.
        let name = serde_json::to_vec(upstream_name).unwrap_or_default();
        Some(Edit::replace(span.start, span.end, name))
    }

    /// The edit that makes an OpenAI stream report usage, and whether the
    /// client did not ask for it (so the proxy must cut the usage chunk out).
    pub(super) fn include_usage_edit(&self) -> (Option<Edit>, bool) {
        include_usage_edit(&self.scanner)
    }
}

/// `Expect: 100-continue` on a request that may be answered with a
/// `100 Continue`: HTTP/1.0 clients do not know 1xx answers, and RFC 9110
/// (10.1.1) has the server ignore their expectation.
fn expects_continue(req: &RequestHeader) -> bool {
    req.version >= Version::HTTP_11
        && req
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// What a failed body read means for the client's answer. Pingora reports a
/// broken chunked encoding (a size that is not hex, overflows, or a chunk
/// without its CRLF) as `InvalidChunk`; a closed or reset connection, or an
/// HTTP/2 stream the client reset, as a read error.
fn read_error(e: &pingora_error::Error) -> ClientError {
    match e.etype() {
        ErrorType::ConnectionClosed | ErrorType::ReadError => ClientError::BodyAborted,
        // Pingora's own per-read timeout, when it is shorter than ours.
        ErrorType::ReadTimedout => ClientError::BodyTimeout,
        _ => ClientError::BodyFraming,
    }
}

fn include_usage_edit(scanner: &JsonScanner) -> (Option<Edit>, bool) {
    const ADD: &[u8] = br#","stream_options":{"include_usage":true}"#;
    let Some(so) = scanner.field(F_STREAM_OPTIONS) else {
        return match scanner.object_end() {
            Some(end) => (Some(Edit::insert(end, Bytes::from_static(ADD))), true),
            None => (None, false),
        };
    };
    if so.is_null() {
        return (
            Some(Edit::replace(
                so.start,
                so.end,
                Bytes::from_static(br#"{"include_usage":true}"#),
            )),
            true,
        );
    }
    let Some(raw) = so.raw.as_deref() else {
        return (None, false);
    };
    let mut inner = JsonScanner::new(&["include_usage"], 16);
    if inner.feed(raw).is_err() || inner.finish().is_err() {
        // Not an object: leave it for the provider to reject.
        return (None, false);
    }
    match inner.field(0) {
        Some(f) if f.as_bool() == Some(true) => (None, false),
        Some(f) => (
            Some(Edit::replace(
                so.start + f.start,
                so.start + f.end,
                Bytes::from_static(b"true"),
            )),
            true,
        ),
        None => {
            let empty = raw[1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
            let insert: &'static [u8] = if empty {
                br#""include_usage":true"#
            } else {
                br#""include_usage":true,"#
            };
            (
                Some(Edit::insert(so.start + 1, Bytes::from_static(insert))),
                true,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::splice;

    fn scan(doc: &str) -> JsonScanner {
        let mut s = JsonScanner::new(REQUEST_FIELDS, MAX_FIELD_VALUE);
        s.feed(doc.as_bytes()).unwrap();
        s.finish().unwrap();
        s
    }

    fn spliced(doc: &str) -> (String, bool) {
        let s = scan(doc);
        let (edit, strip) = include_usage_edit(&s);
        let chunks = [Bytes::copy_from_slice(doc.as_bytes())];
        let out = splice::apply(&chunks, edit.as_slice());
        (String::from_utf8(out.concat()).unwrap(), strip)
    }

    #[test]
    fn include_usage_is_spliced_without_reserialising() {
        let cases = [
            (
                r#"{"model":"m","stream":true}"#,
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
                true,
            ),
            (
                r#"{"model":"m", "stream_options" : null }"#,
                r#"{"model":"m", "stream_options" : {"include_usage":true} }"#,
                true,
            ),
            (
                r#"{"stream_options":{},"model":"m"}"#,
                r#"{"stream_options":{"include_usage":true},"model":"m"}"#,
                true,
            ),
            (
                r#"{"stream_options":{ "x":1},"model":"m"}"#,
                r#"{"stream_options":{"include_usage":true, "x":1},"model":"m"}"#,
                true,
            ),
            (
                r#"{"stream_options":{"include_usage": false},"model":"m"}"#,
                r#"{"stream_options":{"include_usage": true},"model":"m"}"#,
                true,
            ),
            (
                r#"{"stream_options":{"include_usage":true},"model":"m"}"#,
                r#"{"stream_options":{"include_usage":true},"model":"m"}"#,
                false,
            ),
        ];
        for (input, want, strip) in cases {
            let (got, s) = spliced(input);
            assert_eq!(got, want);
            assert_eq!(s, strip, "{input}");
            serde_json::from_str::<serde_json::Value>(&got).unwrap();
        }
    }

    #[test]
    fn a_broken_encoding_is_told_from_a_client_that_left() {
        let err = |t| read_error(&pingora_error::Error::new(t));
        let invalid_chunk = ErrorType::Custom("InvalidChunk");
        assert!(matches!(err(invalid_chunk), ClientError::BodyFraming));
        assert!(matches!(
            err(ErrorType::ConnectionClosed),
            ClientError::BodyAborted
        ));
        assert!(matches!(
            err(ErrorType::ReadError),
            ClientError::BodyAborted
        ));
        assert!(matches!(
            err(ErrorType::ReadTimedout),
            ClientError::BodyTimeout
        ));
    }

    #[test]
    fn only_http_1_1_and_later_get_100_continue() {
        let mut req = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        req.insert_header("expect", "100-Continue").unwrap();
        assert!(expects_continue(&req));
        req.set_version(Version::HTTP_10);
        assert!(!expects_continue(&req));
        req.set_version(Version::HTTP_2);
        assert!(expects_continue(&req));
        req.insert_header("expect", "something-else").unwrap();
        assert!(!expects_continue(&req));
    }

    #[test]
    fn the_model_is_renamed_only_when_it_differs() {
        let body = RequestBody {
            chunks: vec![Bytes::from_static(br#"{"model":"alias","x":1}"#)],
            scanner: scan(r#"{"model":"alias","x":1}"#),
        };
        assert!(body.rename_model("alias").is_none());
        let edit = body.rename_model("real-name").unwrap();
        let out = splice::apply(&body.chunks, &[edit]).concat();
        assert_eq!(out, br#"{"model":"real-name","x":1}"#);
        assert_eq!(body.model().as_deref(), Some("alias"));
        assert!(!body.stream());
        assert_eq!(body.max_output_tokens(), None);
    }
}
