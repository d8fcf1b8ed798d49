//! The server side of the RFC 6455 opening handshake, with no I/O: checks
//! the client's upgrade request, finds its credential, and builds the
//! `101 Switching Protocols` answer.
//!
//! Credentials, in this order (the first one present is the one used; a
//! bad one is a 401, never a fall-through to the next):
//! 1. `Authorization: Bearer <molt key or JWT>` (SDKs, servers, mobile);
//! 2. `Sec-WebSocket-Protocol` (browsers): the client offers
//!    `["molt", "molt-key.<key>"]`; the server answers `molt`. The spec
//!    requires the answer to be one of the offered protocols, and echoing
//!    the key entry would send the key back in a response header, so the
//!    non-secret `molt` entry is what gets chosen;
//! 3. `Sec-WebSocket-Protocol` in OpenAI's browser scheme, for the Realtime
//!    route's browser clients: `["realtime", "openai-insecure-api-key.<key>",
//!    "openai-beta.realtime-v1"]` with the molt key in place of an OpenAI
//!    key; the server answers `realtime` (never the key entry, as above);
//! 4. `?ticket=<ticket>` from `POST /v1/ws/tickets` (browsers that would
//!    rather not keep a long-lived key in page memory).

use crate::ws::error::WsReject;
use http::{header, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

/// The subprotocol the server selects when the client offers it.
pub const PROTOCOL: &str = "molt";
/// Prefix of the subprotocol entry that carries a molt key.
pub const KEY_PROTOCOL_PREFIX: &str = "molt-key.";
/// The subprotocol OpenAI's Realtime API selects for browser clients.
pub const REALTIME_PROTOCOL: &str = "realtime";
/// OpenAI's browser scheme for a key in `Sec-WebSocket-Protocol`; on the
/// Realtime route it carries the molt key.
pub const OPENAI_KEY_PROTOCOL_PREFIX: &str = "openai-insecure-api-key.";
/// OpenAI's browser stand-in for the `OpenAI-Beta: realtime=v1` header.
pub const OPENAI_BETA_PROTOCOL: &str = "openai-beta.realtime-v1";

/// A credential as the client presented it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Bearer(&'a str),
    Protocol(&'a str),
    Ticket(&'a str),
    None,
}

/// What a valid upgrade request carries.
#[derive(Debug)]
pub struct Upgrade<'a> {
    pub key: &'a str,
    pub bot: Option<String>,
    /// `?model=` (the Realtime route).
    pub model: Option<String>,
    pub ticket: Option<String>,
    /// The client offered `molt`, so the server must name it.
    pub offers_molt: bool,
    /// The client offered `realtime` (OpenAI's browser scheme).
    pub offers_realtime: bool,
    /// The client offered `openai-beta.realtime-v1`.
    pub offers_openai_beta: bool,
}

/// Check that `req` is a WebSocket upgrade request (RFC 6455 §4.2.1).
pub fn parse(req: &RequestHeader) -> Result<Upgrade<'_>, WsReject> {
    if req.method != http::Method::GET {
        return Err(WsReject::MethodNotAllowed);
    }
    if req.version == http::Version::HTTP_2 {
        return Err(WsReject::NeedsHttp1);
    }
    if req.version != http::Version::HTTP_11 {
        return Err(WsReject::NotWebSocket("HTTP/1.1 is required"));
    }
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") {
        return Err(WsReject::NotWebSocket("no `Upgrade: websocket` header"));
    }
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(WsReject::NotWebSocket("no `Connection: upgrade` header"));
    }
    if req
        .headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(WsReject::UnsupportedVersion);
    }
    let key = req
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| valid_key(k))
        .ok_or(WsReject::NotWebSocket("bad or missing Sec-WebSocket-Key"))?;
    let mut bot = None;
    let mut model = None;
    let mut ticket = None;
    if let Some(q) = req.uri.query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            match &*k {
                "bot" => bot = Some(v.into_owned()),
                "model" => model = Some(v.into_owned()),
                "ticket" => ticket = Some(v.into_owned()),
                _ => {}
            }
        }
    }
    let offers = |name: &str| protocols(req).any(|p| p == name);
    Ok(Upgrade {
        key,
        bot,
        model,
        ticket,
        offers_molt: offers(PROTOCOL),
        offers_realtime: offers(REALTIME_PROTOCOL),
        offers_openai_beta: offers(OPENAI_BETA_PROTOCOL),
    })
}

/// A base64 encoding of 16 bytes.
fn valid_key(k: &str) -> bool {
    use base64::Engine as _;
    k.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(k)
            .is_ok_and(|d| d.len() == 16)
}

/// Every entry of every `Sec-WebSocket-Protocol` header.
fn protocols(req: &RequestHeader) -> impl Iterator<Item = &str> {
    req.headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The credential, by the documented precedence.
pub fn credential<'a>(req: &'a RequestHeader, ticket: Option<&'a str>) -> Credential<'a> {
    if let Some(v) = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return match v.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Credential::Bearer(token)
            }
            // Present but not a bearer token: authenticate it as empty, so
            // the client gets a 401 rather than a silent fall-through.
            _ => Credential::Bearer(""),
        };
    }
    if let Some(key) = protocols(req).find_map(|p| p.strip_prefix(KEY_PROTOCOL_PREFIX)) {
        return Credential::Protocol(key);
    }
    if let Some(key) = protocols(req).find_map(|p| p.strip_prefix(OPENAI_KEY_PROTOCOL_PREFIX)) {
        return Credential::Protocol(key);
    }
    match ticket {
        Some(t) => Credential::Ticket(t),
        None => Credential::None,
    }
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// The `101 Switching Protocols` response; `protocol` is the chosen
/// subprotocol, if any (it must be one the client offered).
pub fn switching_protocols(
    up: &Upgrade<'_>,
    request_id: &str,
    protocol: Option<&str>,
) -> pingora_error::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build_no_case(101, Some(5))?;
    resp.insert_header(header::UPGRADE, "websocket")?;
    resp.insert_header(header::CONNECTION, "Upgrade")?;
    resp.insert_header(header::SEC_WEBSOCKET_ACCEPT, accept_key(up.key))?;
    if let Some(p) = protocol {
        resp.insert_header(header::SEC_WEBSOCKET_PROTOCOL, p)?;
    }
    // No Sec-WebSocket-Extensions: permessage-deflate is never negotiated
    // (see the module doc of `ws`).
    resp.insert_header("x-request-id", request_id)?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], path: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const BASE: &[(&str, &str)] = &[
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn rfc_example_accept_key() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_upgrade_and_query() {
        let r = req(BASE, "/ws/chat?bot=b%201&ticket=t.s");
        let up = parse(&r).unwrap();
        assert_eq!(up.bot.as_deref(), Some("b 1"));
        assert_eq!(up.ticket.as_deref(), Some("t.s"));
        assert!(!up.offers_molt);
        let mut h = BASE.to_vec();
        h.retain(|(k, _)| *k != "sec-websocket-version");
        h.push(("sec-websocket-version", "8"));
        assert!(matches!(
            parse(&req(&h, "/ws/chat")),
            Err(WsReject::UnsupportedVersion)
        ));
        assert!(matches!(
            parse(&req(&BASE[1..], "/ws/chat")),
            Err(WsReject::NotWebSocket(_))
        ));
    }

    #[test]
    fn credential_precedence() {
        let mut h = BASE.to_vec();
        h.push(("sec-websocket-protocol", "molt, molt-key.molt_sk_abc"));
        let r = req(&h, "/ws/chat");
        assert!(parse(&r).unwrap().offers_molt);
        assert_eq!(
            credential(&r, Some("t")),
            Credential::Protocol("molt_sk_abc")
        );
        h.push(("authorization", "Bearer molt_sk_xyz"));
        let r = req(&h, "/ws/chat");
        assert_eq!(credential(&r, Some("t")), Credential::Bearer("molt_sk_xyz"));
        let r = req(BASE, "/ws/chat");
        assert_eq!(credential(&r, Some("t")), Credential::Ticket("t"));
        assert_eq!(credential(&r, None), Credential::None);
    }

    #[test]
    fn openai_browser_scheme() {
        let mut h = BASE.to_vec();
        h.push((
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.molt_sk_abc, openai-beta.realtime-v1",
        ));
        let r = req(&h, "/v1/realtime?model=gpt-realtime");
        let up = parse(&r).unwrap();
        assert_eq!(up.model.as_deref(), Some("gpt-realtime"));
        assert!(up.offers_realtime && up.offers_openai_beta && !up.offers_molt);
        assert_eq!(credential(&r, None), Credential::Protocol("molt_sk_abc"));
        let resp = switching_protocols(&up, "r", Some(REALTIME_PROTOCOL)).unwrap();
        assert_eq!(
            resp.headers.get(header::SEC_WEBSOCKET_PROTOCOL).unwrap(),
            "realtime"
        );
    }
}
