//! Small answers the data plane writes itself, whole: errors in the route's
//! format, `GET /v1/models`, a WebSocket ticket, a CORS preflight. One
//! writer for all of them, so every such answer carries the same framing,
//! `x-request-id` and CORS headers.

use bytes::Bytes;
use http::{header, HeaderValue};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// What every answer to one request carries.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub request_id: &'a str,
    /// The browser origin allowed to read the answer (see [`super::cors`]).
    pub cors_origin: Option<&'a HeaderValue>,
}

impl Stamp<'_> {
    /// Add `x-request-id` and, for an allowed browser origin, the CORS
    /// headers of an actual (not preflight) response.
    pub fn apply(&self, resp: &mut ResponseHeader) -> Result<()> {
        resp.insert_header("x-request-id", self.request_id)?;
        super::cors::allow_response(resp, self.cors_origin)
    }
}

/// Write a complete JSON response. `extra` adds route-specific headers
/// (`retry-after`, `x-ratelimit-*`, `cache-control`, ...).
pub async fn write_json(
    session: &mut Session,
    stamp: &Stamp<'_>,
    status: u16,
    body: Bytes,
    extra: impl FnOnce(&mut ResponseHeader) -> Result<()>,
) -> Result<()> {
    if !session.is_body_done() {
        // The unread rest of the body makes the connection unusable.
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build_no_case(status, Some(8))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    stamp.apply(&mut resp)?;
    extra(&mut resp)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Write a header-only answer (a CORS preflight's `204`).
pub async fn write_empty(session: &mut Session, resp: ResponseHeader) -> Result<()> {
    session.write_response_header(Box::new(resp), true).await
}
