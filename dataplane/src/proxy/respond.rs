//! Small answers the data plane writes itself, whole: errors in the route's
//! format, `GET /v1/models`, a WebSocket ticket. One writer for all of them,
//! so every such answer carries the same framing and `x-request-id`.

use bytes::Bytes;
use http::header;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Write a complete JSON response. `extra` adds route-specific headers
/// (`retry-after`, `x-ratelimit-*`, `cache-control`, ...).
pub(crate) async fn write_json(
    session: &mut Session,
    status: u16,
    request_id: &str,
    body: Bytes,
    extra: impl FnOnce(&mut ResponseHeader) -> Result<()>,
) -> Result<()> {
    if !session.is_body_done() {
        // The unread rest of the body makes the connection unusable.
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header("x-request-id", request_id)?;
    extra(&mut resp)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
