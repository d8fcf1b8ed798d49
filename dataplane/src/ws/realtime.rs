//! `GET /v1/realtime?model=<model>`: OpenAI's Realtime API, proxied with the
//! provider's master key injected and usage recorded.
//!
//! The handshake is checked like a model route's request, all before the
//! upgrade: the molt key (`Authorization: Bearer`, or in
//! `Sec-WebSocket-Protocol` as `molt-key.<key>` or in OpenAI's own browser
//! scheme `openai-insecure-api-key.<key>`; tickets are not accepted here,
//! because a ticket does not carry the key's model allowlist), then the
//! model (alias → canonical, 404 unknown, 403 not allowed for the key, 400
//! when its provider has no Realtime API). Then the provider's
//! `<base_url>/realtime?model=<upstream name>` is dialled (`ws://` for an
//! `http` base URL, `wss://` with rustls for `https`) with the next master
//! key (round-robin, as on the HTTP routes) and `OpenAI-Beta` passed
//! through, so a refused or unreachable provider is a plain 502/504.
//! Only after that is the `101` written and the session relayed with the
//! bot router's relay ([`super::relay`]): same limits, keepalive,
//! backpressure, close codes and shutdown behaviour.
//!
//! Usage: the relay sums the usage of every `response.done` event the
//! provider sends, class by class (cached, audio: see
//! [`crate::usage_reader`]); one usage event (route
//! `realtime`) is recorded when the session closes, and the token counters
//! (`molt_tokens_total`) grow by the same amounts. A session cut short
//! records what the provider had reported so far.
//!
//! Not done here: the request-rate and token limits of the HTTP routes
//! (the session's token count is only known as it runs); the per-user
//! connection cap does apply.

use super::error::WsReject;
use super::handshake::{self, Credential};
use super::relay::{BotStream, Limits, RelayStats, Upstream};
use super::{WsHub, WsOutcome, WsRoute, WsSession};
use crate::auth::AuthError;
use crate::log_limit::upstream_warnings;
use crate::proxy::ledger::{Caller, Closing, Outcome, UsageRecord};
use crate::proxy::RouteLabel;
use crate::runtime::{ProviderRuntime, Runtime};
use http::{header, HeaderValue};
use molt_config::AuthStyle;
use pingora_core::upstreams::peer::Peer;
use pingora_proxy::Session;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::net::TcpStream;
use tokio_tungstenite::Connector;
use tungstenite::client::IntoClientRequest;

/// `OpenAI-Beta`, which selects the beta Realtime protocol upstream.
const OPENAI_BETA: &str = "openai-beta";

impl WsHub {
    /// `GET /v1/realtime?model=`: the whole session.
    pub(super) async fn realtime(
        &self,
        session: &mut Session,
        request_id: &str,
        rt: &Arc<Runtime>,
        out: &mut WsOutcome,
    ) -> Result<u16, WsReject> {
        let start = Instant::now();
        let usage = UsageRecord::starting_now();
        Self::begin_upgrade(session, rt)?;
        let req = session.req_header();
        let up = handshake::parse(req)?;
        let token = match handshake::credential(req, None) {
            Credential::Bearer(t) | Credential::Protocol(t) => t,
            Credential::Ticket(_) | Credential::None => {
                return Err(WsReject::Auth(AuthError::Missing))
            }
        };
        let principal = rt
            .auth
            .authenticate(Some(token), |n| rt.model(n).map(|m| m.name.clone()))
            .map_err(WsReject::Auth)?;
        out.key_id = Some(principal.key_id.to_string());
        let requested = up.model.as_deref().ok_or(WsReject::MissingModel)?;
        // Names echoed in errors are capped, like the HTTP routes do.
        let shown = || requested.chars().take(200).collect::<String>();
        let model = rt
            .model(requested)
            .ok_or_else(|| WsReject::UnknownModel(shown()))?;
        if !principal.may_use(&model.name) {
            return Err(WsReject::ModelNotAllowed(shown()));
        }
        let provider = &rt.providers[model.provider];
        // Azure's Realtime API has another path and auth header, Anthropic
        // has none; only providers that take OpenAI's bearer key qualify.
        if provider.config.kind.auth_style() != AuthStyle::Bearer {
            return Err(WsReject::NotRealtime(shown()));
        }
        let beta = req.headers.get(OPENAI_BETA).cloned().or_else(|| {
            up.offers_openai_beta
                .then(|| HeaderValue::from_static("realtime=v1"))
        });
        let cfg = &rt.config.websocket;
        let max = cfg.max_connections_per_user;
        let guard = self.register(|r| r.register_session(&principal.user, max), max)?;
        let limits = Limits::from(cfg);
        // Boxed for the reason given at `connect_bot`'s call in `chat`.
        let mut upstream = Box::pin(connect_provider(
            provider,
            &model.upstream_name,
            beta,
            limits,
            rt,
            request_id,
        ))
        .await?;
        let protocol = if up.offers_realtime {
            Some(handshake::REALTIME_PROTOCOL)
        } else if up.offers_molt {
            Some(handshake::PROTOCOL)
        } else {
            None
        };
        let resp = handshake::switching_protocols(&up, request_id, protocol)
            .map_err(|_| WsReject::Internal)?;
        let mut stats = RelayStats {
            upstream: Upstream::Realtime,
            ..RelayStats::default()
        };
        let Some(reason) = self
            .relay_upgraded(session, resp, &mut upstream, limits, &guard, &mut stats)
            .await
        else {
            return Ok(101);
        };
        drop(guard);
        let usage = UsageRecord {
            model: Some(model.name.clone()),
            provider: Some(provider.config.name.clone()),
            stream: true,
            attempts: 1,
            tokens: stats.tokens,
            ..usage
        };
        let closing = Closing {
            request_id,
            route: RouteLabel::Ws(WsRoute::Realtime),
            caller: Caller {
                key_id: &principal.key_id,
                user_id: &principal.user,
            },
            status: 101,
            outcome: Outcome::Closed(reason),
            duration: start.elapsed(),
        };
        out.session = Some(WsSession {
            reason,
            bot: None,
            model: Some(model.name.clone()),
            provider: Some(provider.config.name.clone()),
            stats,
            duration: closing.duration,
        });
        // The ledger counts the session's tokens in `molt_tokens_total` too.
        self.ledger.record(self.ledger.event(&closing, &usage));
        Ok(101)
    }
}

/// `<base_url>/realtime?model=<upstream_name>`, `ws` or `wss` by the base
/// URL's scheme.
fn realtime_url(provider: &ProviderRuntime, upstream_model: &str) -> String {
    let u = &provider.config.base_url;
    let scheme = if u.tls { "wss" } else { "ws" };
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    let model: String = url::form_urlencoded::byte_serialize(upstream_model.as_bytes()).collect();
    format!(
        "{scheme}://{host}:{}{}/realtime?model={model}",
        u.port, u.path_prefix
    )
}

/// The rustls client config for `wss://` providers: the platform's roots
/// (and `SSL_CERT_FILE`/`SSL_CERT_DIR`, like the HTTP routes' peers), the
/// process's `ring` provider. Built once; `None` if it cannot be built,
/// which makes every `wss://` session a 502 with the reason logged.
fn tls_config() -> Option<Arc<pingora_rustls::ClientConfig>> {
    static CONFIG: OnceLock<Option<Arc<pingora_rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            pingora_rustls::install_default_crypto_provider();
            let provider = pingora_rustls::CryptoProvider::get_default()?.clone();
            let mut roots = pingora_rustls::RootCertStore::empty();
            match pingora_rustls::load_native_certs() {
                Ok(certs) => {
                    // Unparsable platform certificates are skipped, as
                    // rustls-native-certs' own callers do.
                    roots.add_parsable_certificates(certs);
                }
                Err(e) => tracing::error!(error = %e, "cannot load root certificates for wss:// providers"),
            }
            let config = pingora_rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| tracing::error!(error = %e, "cannot build the TLS client config for wss:// providers"))
                .ok()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(config))
        })
        .clone()
}

/// Open the provider's Realtime WebSocket with a master key, within the
/// upstream connect timeout (TCP, TLS and the WebSocket handshake).
async fn connect_provider(
    provider: &ProviderRuntime,
    upstream_model: &str,
    beta: Option<HeaderValue>,
    limits: Limits,
    rt: &Runtime,
    request_id: &str,
) -> Result<BotStream, WsReject> {
    let name = &provider.config.name;
    let mut req = realtime_url(provider, upstream_model)
        .into_client_request()
        .map_err(|_| WsReject::ProviderUnreachable)?;
    // Already `Bearer <key>` and marked sensitive (see `runtime`).
    req.headers_mut()
        .insert(header::AUTHORIZATION, provider.next_credential().clone());
    if let Some(beta) = beta {
        req.headers_mut().insert(OPENAI_BETA, beta);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        req.headers_mut().insert("x-request-id", v);
    }
    let connector = if provider.config.base_url.tls {
        Connector::Rustls(tls_config().ok_or(WsReject::ProviderUnreachable)?)
    } else {
        Connector::Plain
    };
    let connect = async {
        // The address resolved when the config was loaded, as the HTTP
        // routes use: no DNS lookup on the request path.
        let tcp = match provider.peer.address().as_inet() {
            Some(addr) => TcpStream::connect(*addr).await,
            None => {
                let u = &provider.config.base_url;
                TcpStream::connect((u.host.as_str(), u.port)).await
            }
        }
        .map_err(tungstenite::Error::Io)?;
        // Realtime deltas are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        tokio_tungstenite::client_async_tls_with_config(
            req,
            tcp,
            Some(limits.framing()),
            Some(connector),
        )
        .await
    };
    let timeout = rt.config.server.upstream_connect_timeout;
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok((stream, _resp))) => Ok(stream),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            if let Some(left_out) = upstream_warnings().admit(&format!("{name}/realtime_refused")) {
                tracing::warn!(provider = %name, status, left_out, "provider refused the Realtime handshake");
            }
            Err(WsReject::ProviderRefused(status))
        }
        Ok(Err(e)) => {
            if let Some(left_out) =
                upstream_warnings().admit(&format!("{name}/realtime_unreachable"))
            {
                tracing::warn!(provider = %name, error = %e, left_out, "Realtime provider unreachable");
            }
            Err(WsReject::ProviderUnreachable)
        }
        Err(_) => {
            if let Some(left_out) = upstream_warnings().admit(&format!("{name}/realtime_timeout")) {
                tracing::warn!(provider = %name, left_out, "Realtime provider handshake timed out");
            }
            Err(WsReject::ProviderTimeout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_config::DataplaneConfig;

    fn runtime(base_url: &str) -> Runtime {
        let toml = format!(
            r#"
version = 1
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[[keys]]
id = "k"
user = "u"
sha256 = "{}"
[[providers]]
name = "p"
kind = "openai"
base_url = "{base_url}"
keys = ["sk-test"]
[[models]]
name = "gpt-realtime"
provider = "p"
upstream_name = "gpt realtime+x"
"#,
            "0".repeat(64)
        );
        let env = std::collections::HashMap::<&str, &str>::new();
        let cfg = DataplaneConfig::from_toml(&toml, &env).unwrap();
        Runtime::build(cfg, 1).unwrap()
    }

    #[test]
    fn upstream_url_follows_the_base_url_scheme() {
        let rt = runtime("http://127.0.0.1:9/v1");
        assert_eq!(
            realtime_url(&rt.providers[0], "gpt realtime+x"),
            "ws://127.0.0.1:9/v1/realtime?model=gpt+realtime%2Bx"
        );
        let rt = runtime("https://127.0.0.1/openai/v1");
        assert_eq!(
            realtime_url(&rt.providers[0], "m"),
            "wss://127.0.0.1:443/openai/v1/realtime?model=m"
        );
    }

    #[test]
    fn tls_config_builds() {
        assert!(tls_config().is_some());
    }
}
