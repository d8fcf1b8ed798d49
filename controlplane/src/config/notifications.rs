//! `[notifications]`: the delivery worker's knobs and, in
//! `[notifications.email]`, the SMTP server email goes through; as
//! written and resolved.

use crate::notify::{NotifySettings, SmtpSettings, SmtpTls};
use molt_config::dataplane::Env;
use molt_config::Secret;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[notifications.email] tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawSmtpTls {
    /// STARTTLS, required (default; port 587).
    #[default]
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
    /// No TLS: a local sink only (port 25).
    None,
}

/// `[notifications]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifications {
    /// Pause between scans that found nothing (default 1s).
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// Tries of one delivery before it is `failed` (default 12).
    pub max_attempts: Option<i64>,
    /// First retry delay, doubling per try (default 5s).
    #[serde(default, with = "humantime_serde")]
    pub backoff: Option<Duration>,
    /// Longest retry delay (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// A claim older than this is taken over (default 1m).
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// Deliveries sent at once by one worker (default 8).
    pub concurrency: Option<usize>,
    /// Longest wait for a webhook endpoint (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub webhook_timeout: Option<Duration>,
    /// Without it, email deliveries are recorded as `skipped`.
    pub email: Option<RawEmail>,
}

/// `[notifications.email]`: the SMTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmail {
    pub host: String,
    /// Default by `tls`: 587, 465, or 25.
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: RawSmtpTls,
    /// Environment variables holding the SMTP user name and password.
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    /// The `From:` mailbox, e.g. `"Molt <notify@example.com>"`.
    pub from: String,
    /// PEM file of extra CAs trusted for the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Longest SMTP conversation (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// `[notifications]`, resolved.
#[derive(Debug, Clone, Default)]
pub struct NotificationsConfig {
    pub settings: NotifySettings,
    pub email: Option<SmtpSettings>,
    /// Run a delivery worker in the background (tests drive their own).
    pub run_worker: bool,
}

/// `[notifications]` (absent: the defaults), errors pushed with their
/// field paths.
pub(super) fn resolve_notifications(
    raw: Option<&RawNotifications>,
    env: &dyn Env,
    errs: &mut Vec<String>,
) -> NotificationsConfig {
    let default = RawNotifications::default();
    let n = raw.unwrap_or(&default);
    let d = NotifySettings::default();
    let settings = NotifySettings {
        poll_interval: n.poll_interval.unwrap_or(d.poll_interval),
        max_attempts: n.max_attempts.unwrap_or(d.max_attempts),
        backoff: n.backoff.unwrap_or(d.backoff),
        max_backoff: n.max_backoff.unwrap_or(d.max_backoff),
        lease: n.lease.unwrap_or(d.lease),
        concurrency: n.concurrency.unwrap_or(d.concurrency),
        webhook_timeout: n.webhook_timeout.unwrap_or(d.webhook_timeout),
    };
    if !(1..=100).contains(&settings.max_attempts) {
        errs.push("notifications.max_attempts: must be 1 to 100".into());
    }
    if settings.concurrency == 0 {
        errs.push("notifications.concurrency: must be at least 1".into());
    }
    for (field, d) in [
        ("poll_interval", settings.poll_interval),
        ("backoff", settings.backoff),
        ("lease", settings.lease),
        ("webhook_timeout", settings.webhook_timeout),
    ] {
        if d.is_zero() {
            errs.push(format!("notifications.{field}: must be above 0"));
        }
    }
    if settings.max_backoff < settings.backoff {
        errs.push("notifications.max_backoff: must be at least backoff".into());
    }
    NotificationsConfig {
        settings,
        email: n.email.as_ref().and_then(|e| resolve_email(e, env, errs)),
        run_worker: true,
    }
}

fn resolve_email(e: &RawEmail, env: &dyn Env, errs: &mut Vec<String>) -> Option<SmtpSettings> {
    let before = errs.len();
    if e.host.trim().is_empty() {
        errs.push("notifications.email.host: must not be empty".into());
    }
    if let Err(err) = e.from.parse::<lettre::message::Mailbox>() {
        errs.push(format!(
            "notifications.email.from: not a mailbox ({err}): {:?}",
            e.from
        ));
    }
    let mut var = |field: &str, name: &Option<String>| {
        let name = name.as_deref()?;
        let value = env.var(name);
        if value.is_none() {
            errs.push(format!(
                "notifications.email.{field}: environment variable {name} is not set"
            ));
        }
        value
    };
    let user = var("username_env", &e.username_env);
    let password = var("password_env", &e.password_env);
    let credentials = match (user, password) {
        (Some(u), Some(p)) => Some((u, Secret::new(p))),
        (None, None) => None,
        _ => {
            errs.push(
                "notifications.email: set both username_env and password_env, or neither".into(),
            );
            None
        }
    };
    let tls = match e.tls {
        RawSmtpTls::Starttls => SmtpTls::StartTls,
        RawSmtpTls::Tls => SmtpTls::Implicit,
        RawSmtpTls::None => SmtpTls::None,
    };
    if tls == SmtpTls::None && credentials.is_some() {
        errs.push("notifications.email.tls: \"none\" would send the password in clear".into());
    }
    if let Some(path) = &e.ca_file {
        if tls == SmtpTls::None {
            errs.push("notifications.email.ca_file: only with tls".into());
        } else if !path.is_file() {
            errs.push(format!(
                "notifications.email.ca_file: no such file: {}",
                path.display()
            ));
        }
    }
    let port = e.port.unwrap_or(match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Implicit => 465,
        SmtpTls::None => 25,
    });
    (errs.len() == before).then(|| SmtpSettings {
        host: e.host.trim().to_owned(),
        port,
        tls,
        credentials,
        from: e.from.clone(),
        ca_file: e.ca_file.clone(),
        timeout: e.timeout.unwrap_or(Duration::from_secs(30)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(text: &str) -> RawNotifications {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_without_a_section() {
        let mut errs = Vec::new();
        let c = resolve_notifications(None, &HashMap::<&str, &str>::new(), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert!(c.email.is_none());
        assert_eq!(c.settings.max_attempts, 12);
        assert!(c.run_worker);
    }

    #[test]
    fn email_resolves_with_port_by_tls_and_credentials_from_env() {
        let raw = parse(
            "backoff = \"2s\"\n[email]\nhost = \"smtp.example.com\"\ntls = \"tls\"\n\
             username_env = \"U\"\npassword_env = \"P\"\nfrom = \"Molt <n@example.com>\"\n",
        );
        let env = HashMap::from([("U", "molt"), ("P", "hunter2")]);
        let mut errs = Vec::new();
        let c = resolve_notifications(Some(&raw), &env, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let e = c.email.unwrap();
        assert_eq!((e.port, e.tls), (465, SmtpTls::Implicit));
        assert_eq!(e.credentials.unwrap().1.expose(), "hunter2");
        assert_eq!(c.settings.backoff, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_their_fields() {
        let raw = parse(
            "max_attempts = 0\nconcurrency = 0\nbackoff = \"1m\"\nmax_backoff = \"1s\"\n\
             [email]\nhost = \"\"\ntls = \"none\"\nusername_env = \"U\"\npassword_env = \"P\"\n\
             from = \"not a mailbox\"\n",
        );
        let env = HashMap::from([("U", "molt")]);
        let mut errs = Vec::new();
        resolve_notifications(Some(&raw), &env, &mut errs);
        for field in [
            "notifications.max_attempts:",
            "notifications.concurrency:",
            "notifications.max_backoff:",
            "notifications.email.host:",
            "notifications.email.from:",
            "notifications.email.password_env:",
            "notifications.email: set both",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(field)),
                "{field}: {errs:?}"
            );
        }
        assert!(toml::from_str::<RawNotifications>(
            "[email]\nhost=\"h\"\nfrom=\"a@b.c\"\ntls=\"ssl\"\n"
        )
        .is_err());
    }
}
