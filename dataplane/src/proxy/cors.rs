//! CORS for browser apps on other origins (`[browser] allowed_origins`):
//! preflights answered for the routes a browser calls (the WebSocket ticket
//! issuer, the OpenAI and Anthropic routes with a short-lived token), the
//! `Access-Control-*` headers on their answers, and nothing at all for an
//! origin that is not allowed. No `Access-Control-Allow-Credentials`: the
//! gateway uses no cookies, and the credential a browser sends is its own
//! `Authorization` header, which CORS already gates by the allowlist.

use super::route::RouteLabel;
use crate::ws::WsRoute;
use http::{header, HeaderValue, Method};
use molt_config::browser::BrowserConfig;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

/// Request headers the OpenAI and Anthropic SDKs send from a browser.
const ALLOWED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "x-api-key",
    "x-request-id",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-beta",
    "idempotency-key",
];
/// Header-name prefixes the SDKs send (`x-stainless-os`, ...).
const ALLOWED_REQUEST_HEADER_PREFIXES: &[&str] = &["x-stainless-"];
/// Response headers a browser app may read.
const EXPOSED_RESPONSE_HEADERS: &str = "x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens";

/// Routes a browser app may call across origins.
pub(super) fn is_browser_route(route: RouteLabel) -> bool {
    matches!(
        route,
        RouteLabel::Http(_) | RouteLabel::Ws(WsRoute::Tickets)
    )
}

/// A browser's preflight: `OPTIONS` with an `Origin` and the method it
/// wants to use.
pub(super) fn is_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The request's `Origin`, if it is one `browser` allows.
pub(super) fn allowed_origin(req: &RequestHeader, browser: &BrowserConfig) -> Option<HeaderValue> {
    let origin = req.headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    browser.allows(text).then(|| origin.clone())
}

/// The answer to an allowed preflight for a route answering `method`.
pub(super) fn preflight(
    req: &RequestHeader,
    origin: &HeaderValue,
    method: &Method,
    browser: &BrowserConfig,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build_no_case(204, Some(6))?;
    resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
    resp.insert_header(header::ACCESS_CONTROL_ALLOW_METHODS, method.as_str())?;
    let requested = req
        .headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let allowed: Vec<&str> = requested
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty() && header_allowed(h))
        .collect();
    if !allowed.is_empty() {
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed.join(", "))?;
    }
    resp.insert_header(
        header::ACCESS_CONTROL_MAX_AGE,
        browser.max_age.as_secs().to_string(),
    )?;
    resp.insert_header(
        header::VARY,
        "origin, access-control-request-method, access-control-request-headers",
    )?;
    resp.insert_header(header::CONTENT_LENGTH, "0")?;
    Ok(resp)
}

fn header_allowed(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ALLOWED_REQUEST_HEADERS.contains(&name.as_str())
        || ALLOWED_REQUEST_HEADER_PREFIXES
            .iter()
            .any(|p| name.starts_with(p))
}

/// The CORS headers of an actual response to an allowed origin; `Vary:
/// Origin` either way once an origin was looked at.
pub(super) fn allow_response(
    resp: &mut ResponseHeader,
    origin: Option<&HeaderValue>,
) -> Result<()> {
    let Some(origin) = origin else {
        return Ok(());
    };
    resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
    resp.insert_header(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        EXPOSED_RESPONSE_HEADERS,
    )?;
    resp.append_header(header::VARY, "origin")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_config::browser::OriginPattern;

    fn browser() -> BrowserConfig {
        BrowserConfig {
            allowed_origins: vec![OriginPattern::parse("https://app.example.com").unwrap()],
            ..BrowserConfig::default()
        }
    }

    fn options(origin: &str, headers: &str) -> RequestHeader {
        let mut req = RequestHeader::build("OPTIONS", b"/v1/ws/tickets", None).unwrap();
        req.insert_header("origin", origin).unwrap();
        req.insert_header("access-control-request-method", "POST")
            .unwrap();
        req.insert_header("access-control-request-headers", headers)
            .unwrap();
        req
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_gets_the_sdk_headers_only() {
        let req = options(
            "https://app.example.com",
            "authorization, content-type, x-stainless-os, x-evil",
        );
        assert!(is_preflight(&req));
        let origin = allowed_origin(&req, &browser()).unwrap();
        let resp = preflight(&req, &origin, &Method::POST, &browser()).unwrap();
        let h = |n: &str| resp.headers.get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(resp.status.as_u16(), 204);
        assert_eq!(h("access-control-allow-origin"), "https://app.example.com");
        assert_eq!(h("access-control-allow-methods"), "POST");
        assert_eq!(
            h("access-control-allow-headers"),
            "authorization, content-type, x-stainless-os"
        );
        assert_eq!(h("access-control-max-age"), "600");
        assert!(resp
            .headers
            .get("access-control-allow-credentials")
            .is_none());
    }

    #[test]
    fn other_origins_get_nothing() {
        let req = options("https://evil.example", "authorization");
        assert!(allowed_origin(&req, &browser()).is_none());
        assert!(allowed_origin(&req, &BrowserConfig::default()).is_none());
        let mut resp = ResponseHeader::build(200, None).unwrap();
        allow_response(&mut resp, None).unwrap();
        assert!(resp.headers.is_empty());
    }
}
