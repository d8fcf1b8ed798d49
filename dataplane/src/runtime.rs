//! The runtime built from one config version: everything a request needs,
//! prepared up front so the request path does no parsing, resolving or
//! allocation of lookup structures.
//!
//! Hot reload is prepare-then-swap: [`Runtime::build`] is the fallible step
//! (DNS resolution, JWT keys, header values); [`RuntimeHandle::swap`] is one
//! `ArcSwap::store`. A request loads the snapshot once, in its first filter,
//! and keeps that `Arc` until it ends, so it sees exactly one config version.

use crate::auth::{AuthBuildError, Authenticator};
use crate::scrub::Secrets;
use arc_swap::ArcSwap;
use http::HeaderValue;
use molt_config::{DataplaneConfig, Model, Provider};
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One provider, ready to be dialled.
pub struct ProviderRuntime {
    pub config: Provider,
    pub peer: HttpPeer,
    /// `Host` header value for the upstream.
    pub host: HeaderValue,
    /// Pre-built credential header values, one per master key, marked
    /// sensitive so HPACK never indexes them.
    pub credentials: Vec<HeaderValue>,
    pub anthropic_version: HeaderValue,
    next_key: AtomicUsize,
}

impl ProviderRuntime {
    /// The next master key's header value, round-robin across keys.
    pub fn next_credential(&self) -> &HeaderValue {
        // `credentials` is never empty: validation requires a key.
        let i = self.next_key.fetch_add(1, Ordering::Relaxed) % self.credentials.len().max(1);
        &self.credentials[i]
    }
}

impl std::fmt::Debug for ProviderRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRuntime")
            .field("name", &self.config.name)
            .field("peer", &self.peer.to_string())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Runtime {
    pub version: u64,
    pub config: DataplaneConfig,
    pub auth: Authenticator,
    pub providers: Vec<ProviderRuntime>,
    /// Every secret this config holds, to be masked in whatever an
    /// upstream sends back ([`crate::scrub`]).
    pub secrets: Secrets,
    /// Every name a client may use (canonical or alias) → index in
    /// `config.models`.
    model_index: HashMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Auth(#[from] AuthBuildError),
    #[error("providers[{index}].base_url: cannot resolve {host}: {reason}")]
    Resolve {
        index: usize,
        host: String,
        reason: String,
    },
    #[error("providers[{index}]: a master key is not a valid header value")]
    BadKey { index: usize },
}

impl Runtime {
    /// Prepare everything for `config`. Blocking (resolves upstream host
    /// names): call it from a blocking context, never on the request path.
    pub fn build(config: DataplaneConfig, version: u64) -> Result<Self, BuildError> {
        let auth = Authenticator::new(&config.keys, config.jwt.as_ref())?
            .with_jwks(config.jwks.as_ref())?;
        let providers = config
            .providers
            .iter()
            .enumerate()
            .map(|(i, p)| build_provider(i, p, &config))
            .collect::<Result<_, _>>()?;
        let mut model_index = HashMap::new();
        for (i, m) in config.models.iter().enumerate() {
            model_index.insert(m.name.clone(), i);
            for a in &m.aliases {
                model_index.insert(a.clone(), i);
            }
        }
        let secrets = known_secrets(&config);
        Ok(Self {
            version,
            config,
            auth,
            providers,
            secrets,
            model_index,
        })
    }

    /// The model a client name (canonical or alias) refers to.
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.model_index.get(name).map(|&i| &self.config.models[i])
    }
}

/// The secrets a client must never see: master keys, bot gateway tokens,
/// the ticket and JWT signing secrets.
fn known_secrets(config: &DataplaneConfig) -> Secrets {
    let keys = config.providers.iter().flat_map(|p| &p.keys);
    let tokens = config.bots.iter().map(|b| &b.gateway_token);
    let ticket = config.websocket.ticket_secret.iter();
    let jwt = config.jwt.iter().filter_map(|j| match &j.key {
        molt_config::dataplane::JwtKey::Hmac(secret) => Some(secret),
        molt_config::dataplane::JwtKey::PublicKeyPem(_) => None,
    });
    Secrets::new(
        keys.chain(tokens)
            .chain(ticket)
            .chain(jwt)
            .map(|s| s.expose()),
    )
}

fn build_provider(
    index: usize,
    p: &Provider,
    config: &DataplaneConfig,
) -> Result<ProviderRuntime, BuildError> {
    let url = &p.base_url;
    let addr: SocketAddr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| BuildError::Resolve {
            index,
            host: url.host.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| BuildError::Resolve {
            index,
            host: url.host.clone(),
            reason: "no address".into(),
        })?;
    let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(config.server.upstream_connect_timeout);
    o.total_connection_timeout = Some(config.server.upstream_connect_timeout * 2);
    // Per read: bounds the wait for the header and every gap between
    // streamed chunks.
    o.read_timeout = Some(config.server.upstream_read_timeout);
    o.write_timeout = Some(config.server.upstream_read_timeout);
    o.idle_timeout = Some(Duration::from_secs(60));
    if url.tls {
        o.alpn = ALPN::H2H1;
        o.max_h2_streams = 100;
    }
    let credentials = p
        .keys
        .iter()
        .map(|k| {
            let value = match p.kind.auth_style() {
                molt_config::AuthStyle::Bearer => format!("Bearer {}", k.expose()),
                molt_config::AuthStyle::ApiKeyHeader | molt_config::AuthStyle::XApiKey => {
                    k.expose().to_owned()
                }
            };
            let mut v = HeaderValue::from_str(&value).map_err(|_| BuildError::BadKey { index })?;
            v.set_sensitive(true);
            Ok::<_, BuildError>(v)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ProviderRuntime {
        host: HeaderValue::from_str(&url.authority()).map_err(|_| BuildError::Resolve {
            index,
            host: url.host.clone(),
            reason: "not a valid Host header".into(),
        })?,
        anthropic_version: HeaderValue::from_str(&p.anthropic_version)
            .unwrap_or_else(|_| HeaderValue::from_static("2023-06-01")),
        config: p.clone(),
        peer,
        credentials,
        next_key: AtomicUsize::new(0),
    })
}

/// The live runtime, swapped whole on reload.
#[derive(Debug, Clone)]
pub struct RuntimeHandle(Arc<ArcSwap<Runtime>>);

impl RuntimeHandle {
    pub fn new(rt: Runtime) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(rt)))
    }

    /// The current snapshot; hold it for the whole request.
    pub fn load(&self) -> Arc<Runtime> {
        self.0.load_full()
    }

    pub fn swap(&self, rt: Runtime) {
        self.0.store(Arc::new(rt));
    }
}
