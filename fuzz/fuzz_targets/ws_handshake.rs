//! The WebSocket upgrade check (`dataplane::ws::handshake`): any request
//! head, read the way Pingora reads one (httparse, then a `RequestHeader`).
//! Invariants: no panic; an accepted upgrade is a `GET` over HTTP/1.1 with a
//! well-formed `Sec-WebSocket-Key`, its `101` answer can always be built
//! (with any subprotocol the server may choose), and the credential found
//! is one the request carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use molt_dataplane::ws::handshake::{
    self, Credential, KEY_PROTOCOL_PREFIX, OPENAI_KEY_PROTOCOL_PREFIX, PROTOCOL, REALTIME_PROTOCOL,
};
use pingora_http::RequestHeader;

fuzz_target!(|data: &[u8]| {
    let Some(req) = request_head(data) else {
        return;
    };
    let Ok(up) = handshake::parse(&req) else {
        // A refused request still has a credential reading (unused).
        let _ = handshake::credential(&req, None);
        return;
    };
    assert_eq!(req.method, http::Method::GET);
    assert_eq!(req.version, http::Version::HTTP_11);
    assert_eq!(up.key.len(), 24);
    assert_eq!(handshake::accept_key(up.key).len(), 28);
    for chosen in [None, Some(PROTOCOL), Some(REALTIME_PROTOCOL)] {
        let resp = handshake::switching_protocols(&up, "req-1", chosen)
            .expect("the 101 answer is always buildable");
        assert_eq!(resp.status.as_u16(), 101);
    }
    let raw = String::from_utf8_lossy(data);
    match handshake::credential(&req, up.ticket.as_deref()) {
        Credential::Bearer(token) => {
            assert!(req.headers.contains_key(http::header::AUTHORIZATION));
            assert!(raw.contains(token));
        }
        Credential::Protocol(key) => assert!(
            raw.contains(&format!("{KEY_PROTOCOL_PREFIX}{key}"))
                || raw.contains(&format!("{OPENAI_KEY_PROTOCOL_PREFIX}{key}"))
        ),
        Credential::Ticket(t) => assert_eq!(Some(t), up.ticket.as_deref()),
        Credential::None => assert!(up.ticket.is_none()),
    }
});

/// The request head as Pingora's HTTP/1 server builds it.
fn request_head(data: &[u8]) -> Option<RequestHeader> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = parsed.parse(data).ok()? else {
        return None;
    };
    let mut req = RequestHeader::build(
        parsed.method?,
        parsed.path?.as_bytes(),
        Some(parsed.headers.len()),
    )
    .ok()?;
    req.set_version(match parsed.version {
        Some(1) => http::Version::HTTP_11,
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_09,
    });
    for h in parsed.headers.iter() {
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        req.append_header(h.name.to_owned(), value).ok()?;
    }
    Some(req)
}
