//! The headers that cross the proxy: what a client sent (its credential and
//! request id), the request head sent upstream (client credentials and
//! hop-by-hop headers out, the provider's credential in), and the response
//! head sent back (the provider's quota and hop-by-hop headers out, the
//! client's own `x-ratelimit-*` and `x-request-id` in).

use super::respond::Stamp;
use super::route::Route;
use crate::auth::API_KEY_PREFIX;
use crate::limits::RateLimitHeaders;
use crate::runtime::ProviderRuntime;
use crate::scrub::Secrets;
use http::{header, HeaderName, HeaderValue, Method};
use molt_config::{ApiFormat, AuthStyle};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

/// Client headers never forwarded upstream: credentials (ours, not the
/// provider's), hop-by-hop headers, framing we recompute, and headers that
/// would let a client steer the master key's account or learn about it.
const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "accept-encoding",
    "x-request-id",
    "openai-organization",
    "openai-project",
    "anthropic-beta-admin",
    // Credential headers other SDKs and gateways use. A client credential
    // under any other name is caught by its value (`carries_credential`).
    "x-goog-api-key",
    "x-openai-api-key",
    "x-anthropic-api-key",
    "x-litellm-api-key",
    "x-portkey-api-key",
    "helicone-auth",
    "x-auth-token",
    "x-access-token",
    "x-amz-security-token",
    "ocp-apim-subscription-key",
    "x-functions-key",
    "cf-aig-authorization",
];

/// Upstream response headers never forwarded to the client.
const STRIPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "set-cookie",
    "openai-organization",
    "openai-project",
    // The provider's quota for our master key is not the client's business
    // (the proxy sends the client's own x-ratelimit-* values instead).
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
];

/// The client's `x-request-id` if it is sane, else a new UUIDv7.
pub(super) fn request_id(req: &RequestHeader) -> String {
    req.headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// The credential a client sent: `Authorization: Bearer` on every route,
/// and `x-api-key` on the Anthropic route (as its SDK sends it).
pub(super) fn client_credential(req: &RequestHeader, format: ApiFormat) -> Option<&str> {
    if format == ApiFormat::Anthropic {
        if let Some(v) = req.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            return Some(v);
        }
    }
    let v = req.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// What the upstream request head is built from.
pub(super) struct UpstreamHead<'a> {
    pub(super) client: &'a RequestHeader,
    pub(super) route: Route,
    pub(super) provider: &'a ProviderRuntime,
    pub(super) body_len: usize,
    pub(super) request_id: &'a str,
    /// The pooled session speaks HTTP/2 (absolute URI, no `Host`).
    pub(super) h2: bool,
    /// The credential the client authenticated with: never forwarded,
    /// under any header name or in the query string.
    pub(super) credential: Option<&'a str>,
}

/// Whether a header value or query parameter carries a client credential:
/// the one the client authenticated with, or anything shaped like a molt
/// key.
fn carries_credential(value: &[u8], credential: Option<&str>) -> bool {
    let finder = |needle: &[u8]| memchr::memmem::find(value, needle).is_some();
    finder(API_KEY_PREFIX.as_bytes())
        || credential.is_some_and(|c| !c.is_empty() && finder(c.as_bytes()))
}

/// The client's query string without any parameter that carries a
/// credential.
fn forwarded_query<'q>(query: &'q str, credential: Option<&str>) -> std::borrow::Cow<'q, str> {
    if !carries_credential(query.as_bytes(), credential) {
        return std::borrow::Cow::Borrowed(query);
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !carries_credential(pair.as_bytes(), credential))
        .collect();
    std::borrow::Cow::Owned(kept.join("&"))
}

/// The request header sent upstream: the client's headers minus
/// credentials and hop-by-hop headers, plus the provider's credential.
pub(super) fn upstream_request(head: &UpstreamHead<'_>) -> Result<RequestHeader> {
    let UpstreamHead {
        client,
        route,
        provider,
        body_len,
        request_id,
        h2,
        credential,
    } = *head;
    let base = &provider.config.base_url;
    let mut path = String::with_capacity(base.path_prefix.len() + 24);
    path.push_str(&base.path_prefix);
    path.push_str(route.upstream_suffix());
    if let Some(q) = client.uri.query() {
        let q = forwarded_query(q, credential);
        if !q.is_empty() {
            path.push('?');
            path.push_str(&q);
        }
    }
    // No case map: every name here is a `HeaderName` or a lowercase literal,
    // which Pingora writes the same way without one (well-known names
    // title-cased), and the map would double the header's memory for the
    // life of a stream.
    let mut req = RequestHeader::build_no_case(
        Method::POST,
        path.as_bytes(),
        Some(client.headers.len() + 4),
    )?;
    // Headers the client named in `Connection` are hop-by-hop too (RFC 9110
    // §7.6.1), e.g. `HTTP2-Settings` beside `Upgrade: h2c`.
    let connection_named = |name: &str| {
        client
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(name))
    };
    for (name, value) in &client.headers {
        if !STRIPPED_REQUEST_HEADERS.contains(&name.as_str())
            && !carries_credential(value.as_bytes(), credential)
            && !connection_named(name.as_str())
        {
            req.append_header(name.clone(), value.clone())?;
        }
    }
    req.insert_header(header::HOST, provider.host.clone())?;
    req.insert_header(header::CONTENT_LENGTH, body_len)?;
    // Identity, so usage can be read from the body as it passes.
    req.insert_header(header::ACCEPT_ENCODING, "identity")?;
    req.insert_header("x-request-id", request_id)?;
    let cred = provider.next_credential().clone();
    match provider.config.kind.auth_style() {
        AuthStyle::Bearer => req.insert_header(header::AUTHORIZATION, cred)?,
        AuthStyle::ApiKeyHeader => req.insert_header(HeaderName::from_static("api-key"), cred)?,
        AuthStyle::XApiKey => {
            req.insert_header(HeaderName::from_static("x-api-key"), cred)?;
            if !req.headers.contains_key("anthropic-version") {
                req.insert_header(
                    HeaderName::from_static("anthropic-version"),
                    provider.anthropic_version.clone(),
                )?;
            }
        }
    }
    if h2 {
        let scheme = if base.tls { "https" } else { "http" };
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(base.authority())
            .path_and_query(path)
            .build()
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "upstream URI", e))?;
        req.set_uri(uri);
        req.remove_header(&header::HOST);
    }
    Ok(req)
}

/// The response header for the client: the upstream's status and headers,
/// minus hop-by-hop ones and the provider's quota, plus what the stamp
/// carries (`x-request-id`, CORS) and the client's own limits; any secret
/// in a value masked (how many is returned beside it).
pub(super) fn client_response(
    up: &ResponseHeader,
    stamp: &Stamp<'_>,
    limits: Option<&RateLimitHeaders>,
    secrets: &Secrets,
    downstream_h2: bool,
) -> Result<(ResponseHeader, usize)> {
    // No case map, as in `upstream_request`.
    let mut resp = ResponseHeader::build_no_case(up.status, Some(up.headers.len() + 2))?;
    let mut masked = 0;
    for (name, value) in &up.headers {
        if STRIPPED_RESPONSE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if secrets.found_in(value.as_bytes()) {
            let mut bytes = value.as_bytes().to_vec();
            masked += secrets.mask_in_place(&mut bytes);
            let value = HeaderValue::from_bytes(&bytes)
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "masked header", e))?;
            resp.append_header(name.clone(), value)?;
        } else {
            resp.append_header(name.clone(), value.clone())?;
        }
    }
    stamp.apply(&mut resp)?;
    insert_limit_headers(&mut resp, limits)?;
    let has_length = resp.headers.contains_key(header::CONTENT_LENGTH);
    if !has_length && !downstream_h2 {
        // HTTP/1.1 without a length: chunked, so every write goes out at
        // once and the end is explicit (a broken stream then shows as an
        // incomplete body, never as a clean end).
        resp.insert_header(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        )?;
    }
    Ok((resp, masked))
}

/// Add the `x-ratelimit-*` headers, replacing any the provider sent (those
/// describe the master key's quota, not the client's).
pub(super) fn insert_limit_headers(
    resp: &mut ResponseHeader,
    h: Option<&RateLimitHeaders>,
) -> Result<()> {
    let Some(h) = h else { return Ok(()) };
    for (name, value) in h.pairs() {
        resp.insert_header(name, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_by_format() {
        let mut req = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        req.insert_header("x-api-key", "molt_sk_a").unwrap();
        req.insert_header("authorization", "Bearer molt_sk_b")
            .unwrap();
        assert_eq!(
            client_credential(&req, ApiFormat::Anthropic),
            Some("molt_sk_a")
        );
        assert_eq!(
            client_credential(&req, ApiFormat::OpenAi),
            Some("molt_sk_b")
        );
    }

    #[test]
    fn a_credential_is_dropped_under_any_name_and_from_the_query() {
        let key = "molt_sk_abcdefghijklmnop";
        assert!(carries_credential(b"Bearer molt_sk_abcdefghijklmnop", None));
        assert!(carries_credential(
            b"token eyJhbGciOi.jwt.sig",
            Some("eyJhbGciOi.jwt.sig")
        ));
        assert!(!carries_credential(b"gzip", Some(key)));
        assert_eq!(
            forwarded_query(&format!("api-version=2024-10-21&key={key}&x=1"), Some(key)),
            "api-version=2024-10-21&x=1"
        );
        assert_eq!(forwarded_query("api-version=1", Some(key)), "api-version=1");
    }

    #[test]
    fn headers_the_client_names_in_connection_stay_behind() {
        let mut client = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        client
            .insert_header("connection", "Upgrade, HTTP2-Settings, x-hop")
            .unwrap();
        client
            .insert_header("http2-settings", "AAMAAABkAAQAAP__")
            .unwrap();
        client.insert_header("x-hop", "1").unwrap();
        client.insert_header("x-end-to-end", "1").unwrap();
        let config = molt_config::DataplaneConfig::from_wire(
            toml::from_str(
                r#"version = 1
[server]
listen = "127.0.0.1:0"
[[providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
keys = ["sk-test-key-0123456789"]
"#,
            )
            .unwrap(),
            &molt_config::dataplane::ProcessEnv,
        )
        .unwrap();
        let rt = crate::runtime::Runtime::build(config, 1).unwrap();
        let req = upstream_request(&UpstreamHead {
            client: &client,
            route: Route::ChatCompletions,
            provider: &rt.providers[0],
            body_len: 2,
            request_id: "r",
            h2: false,
            credential: None,
        })
        .unwrap();
        assert!(req.headers.get("http2-settings").is_none());
        assert!(req.headers.get("x-hop").is_none());
        assert!(req.headers.get("x-end-to-end").is_some());
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut req = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        req.insert_header("x-request-id", "abc-123").unwrap();
        assert_eq!(request_id(&req), "abc-123");
        req.insert_header("x-request-id", "has space").unwrap();
        assert_ne!(request_id(&req), "has space");
    }
}
