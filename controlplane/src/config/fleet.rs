//! `[fleet]`: where bots run (Fly Machines, or local mock bots) and the
//! provisioner's knobs, as written and resolved.

use crate::fleet::fly::FlySettings;
use crate::provision::ProvisionSettings;
use molt_config::Secret;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[fleet] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawFleetKind {
    Fly,
    Local,
}

/// `[fleet]`: where bots run and the provisioner's knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub kind: RawFleetKind,
    /// Fly Machines API base, without `/v1` (default `http://_api.internal:4280`;
    /// `https://api.machines.dev` from outside Fly's network).
    pub api_url: Option<String>,
    /// PEM file of CA certificates trusted for an `https://` `api_url`, on
    /// top of the bundled webpki roots.
    pub ca_file: Option<PathBuf>,
    pub app: Option<String>,
    /// Environment variable holding the Fly API token.
    pub token_env: Option<String>,
    pub image: Option<String>,
    pub region: Option<String>,
    /// Template of the URL data planes dial for a bot.
    pub gateway_url: Option<String>,
    /// The bots' `PROXY_URL` (the data plane's `/v1`).
    pub proxy_url: Option<String>,
    pub default_model: Option<String>,
    pub fallback_models: Option<Vec<String>>,
    pub volume_size_gb: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub health_deadline: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub step_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    pub max_attempts: Option<i64>,
    #[serde(default, with = "humantime_serde")]
    pub backoff: Option<Duration>,
    pub concurrency: Option<usize>,
}

/// Where bots run, resolved.
#[derive(Debug, Clone)]
pub enum FleetKind {
    Fly(Box<FlySettings>),
    Local,
}

/// The fleet and the provisioner's settings, resolved.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub kind: FleetKind,
    pub provision: ProvisionSettings,
}

/// `[fleet]`, resolved; `None` (with errors pushed) when it is invalid.
pub(super) fn resolve_fleet(
    f: &RawFleet,
    fly_token: Option<String>,
    errs: &mut Vec<String>,
) -> Option<FleetConfig> {
    let before = errs.len();
    let mut p = ProvisionSettings::default();
    if let Some(url) = &f.proxy_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errs.push("fleet.proxy_url: must be an http:// or https:// URL".into());
        }
        p.proxy_url = url.clone();
    } else if f.kind == RawFleetKind::Fly {
        errs.push("fleet.proxy_url: required with kind = \"fly\"".into());
    }
    if let Some(m) = &f.default_model {
        if m.is_empty() {
            errs.push("fleet.default_model: must not be empty".into());
        }
        p.default_model = m.clone();
    }
    p.fallback_models = f.fallback_models.clone().unwrap_or_default();
    p.volume_size_gb = f.volume_size_gb.unwrap_or(p.volume_size_gb);
    p.health_deadline = f.health_deadline.unwrap_or(p.health_deadline);
    p.poll_interval = f.poll_interval.unwrap_or(p.poll_interval);
    p.step_timeout = f.step_timeout.unwrap_or(p.step_timeout);
    p.lease = f.lease.unwrap_or(p.lease);
    p.max_attempts = f.max_attempts.unwrap_or(p.max_attempts);
    p.backoff = f.backoff.unwrap_or(p.backoff);
    p.concurrency = f.concurrency.unwrap_or(p.concurrency);
    for (field, d) in [
        ("fleet.health_deadline", p.health_deadline),
        ("fleet.poll_interval", p.poll_interval),
        ("fleet.step_timeout", p.step_timeout),
        ("fleet.lease", p.lease),
        ("fleet.backoff", p.backoff),
    ] {
        if d.is_zero() {
            errs.push(format!("{field}: must be above 0"));
        }
    }
    if p.volume_size_gb == 0 {
        errs.push("fleet.volume_size_gb: must be at least 1".into());
    }
    if p.max_attempts < 1 {
        errs.push("fleet.max_attempts: must be at least 1".into());
    }
    if p.concurrency == 0 {
        errs.push("fleet.concurrency: must be at least 1".into());
    }
    let kind = match f.kind {
        RawFleetKind::Local => {
            for (field, set) in [
                ("api_url", f.api_url.is_some()),
                ("ca_file", f.ca_file.is_some()),
                ("app", f.app.is_some()),
                ("token_env", f.token_env.is_some()),
                ("image", f.image.is_some()),
                ("region", f.region.is_some()),
                ("gateway_url", f.gateway_url.is_some()),
            ] {
                if set {
                    errs.push(format!("fleet.{field}: only with kind = \"fly\""));
                }
            }
            Some(FleetKind::Local)
        }
        RawFleetKind::Fly => {
            let mut required = |field: &str, v: &Option<String>| match v.as_deref() {
                Some(v) if !v.is_empty() => Some(v.to_owned()),
                _ => {
                    errs.push(format!("fleet.{field}: required with kind = \"fly\""));
                    None
                }
            };
            let app = required("app", &f.app);
            let image = required("image", &f.image);
            let token_env = required("token_env", &f.token_env);
            let https = match f.api_url.as_deref() {
                None => false,
                Some(url) if url.starts_with("https://") => true,
                Some(url) if url.starts_with("http://") => false,
                Some(_) => {
                    errs.push(
                        "fleet.api_url: must be an http:// or https:// URL \
                         (http://_api.internal:4280 on Fly, https://api.machines.dev outside)"
                            .into(),
                    );
                    false
                }
            };
            if let Some(file) = &f.ca_file {
                if !https {
                    errs.push("fleet.ca_file: only with an https:// api_url".into());
                } else if !file.is_file() {
                    errs.push(format!("fleet.ca_file: no such file: {}", file.display()));
                }
            }
            match (app, image, token_env, fly_token) {
                (Some(app), Some(image), Some(_), Some(token)) => {
                    let mut s = FlySettings::new(&app, &image, Secret::new(token));
                    if let Some(url) = &f.api_url {
                        s.base_url = url.clone();
                    }
                    s.ca_file = f.ca_file.clone();
                    s.region = f.region.clone();
                    s.volume_size_gb = p.volume_size_gb;
                    if let Some(t) = &f.gateway_url {
                        s.gateway_url_template = t.clone();
                    }
                    Some(FleetKind::Fly(Box::new(s)))
                }
                _ => None,
            }
        }
    };
    match kind {
        Some(kind) if errs.len() == before => Some(FleetConfig { kind, provision: p }),
        _ => None,
    }
}
