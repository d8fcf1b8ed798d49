//! Email: the [`Mailer`] the delivery worker sends through, its SMTP
//! implementation ([`SmtpMailer`], lettre on tokio with rustls: STARTTLS,
//! implicit TLS, or plain for a local sink), and the message a
//! notification becomes ([`render`]: the templates in
//! `controlplane/templates/`, a plain-text and an HTML part).

use crate::domain::Notification;
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use molt_config::outbound::cause_text;
use molt_config::Secret;
use std::path::PathBuf;
use std::time::Duration;

const TEXT_TEMPLATE: &str = include_str!("../../templates/notification.txt");
const HTML_TEMPLATE: &str = include_str!("../../templates/notification.html");

/// One message to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The server refused it for good (bad recipient, policy): retrying
    /// will not help.
    #[error("refused: {0}")]
    Permanent(String),
    /// Anything else (server down, 4xx, timeout): try again later.
    #[error("{0}")]
    Transient(String),
}

/// Sends email; the worker's view of SMTP.
#[async_trait::async_trait]
pub trait Mailer: std::fmt::Debug + Send + Sync {
    async fn send(&self, email: &Email) -> Result<(), MailError>;
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required), usually port 587.
    StartTls,
    /// TLS from the first byte, usually port 465.
    Implicit,
    /// No TLS: only for a local sink.
    None,
}

/// `[notifications.email]`, resolved.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// User name and password, when the server wants them.
    pub credentials: Option<(String, Secret)>,
    /// The `From:` mailbox, e.g. `Molt <notify@example.com>`.
    pub from: String,
    /// Extra CA certificates (PEM) trusted for the server's certificate.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

/// A mailer that cannot be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum MailSetupError {
    #[error("from: {0}")]
    From(String),
    #[error("ca_file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
}

/// [`Mailer`] over SMTP with lettre.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpMailer {
    pub fn new(s: &SmtpSettings) -> Result<Self, MailSetupError> {
        let from: Mailbox = s
            .from
            .parse()
            .map_err(|e: lettre::address::AddressError| MailSetupError::From(e.to_string()))?;
        let tls = match s.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(tls_parameters(s)?),
            SmtpTls::Implicit => Tls::Wrapper(tls_parameters(s)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(s.port)
            .tls(tls)
            .timeout(Some(s.timeout));
        if let Some((user, password)) = &s.credentials {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }
}

/// rustls (lettre's `ring` provider) trusting webpki's roots plus
/// `ca_file`'s certificates.
fn tls_parameters(s: &SmtpSettings) -> Result<TlsParameters, MailSetupError> {
    let mut b = TlsParameters::builder(s.host.clone());
    if let Some(path) = &s.ca_file {
        let bad = |reason: String| MailSetupError::CaFile {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| bad(e.to_string()))?);
    }
    b.build_rustls()
        .map_err(|e| MailSetupError::Tls(e.to_string()))
}

#[async_trait::async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, email: &Email) -> Result<(), MailError> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Permanent(e.to_string()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&email.subject)
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(email.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(email.html.clone()),
                    ),
            )
            .map_err(|e| MailError::Permanent(e.to_string()))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(MailError::Permanent(cause_text(&e))),
            Err(e) => Err(MailError::Transient(cause_text(&e))),
        }
    }
}

/// The message `n` becomes for `to`.
pub fn render(n: &Notification, to: &str) -> Email {
    let fill = |template: &str, escape: fn(&str) -> String| {
        template
            .replace("{{title}}", &escape(&n.title))
            .replace("{{message}}", &escape(&n.message))
            .replace("{{id}}", &escape(&n.id))
            .replace("{{kind}}", &escape(n.kind.as_str()))
    };
    Email {
        to: to.to_owned(),
        subject: n.title.clone(),
        text: fill(TEXT_TEMPLATE, str::to_owned),
        html: fill(HTML_TEMPLATE, html_escape),
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NoticeKind;

    #[test]
    fn both_parts_carry_the_notification_and_html_is_escaped() {
        let n = Notification {
            id: "ntf_1".into(),
            user_id: "usr_1".into(),
            kind: NoticeKind::BotFailed,
            subject: "bot_1@1".into(),
            title: "Your bot could not be started".into(),
            message: "machine <m1> failed & stopped".into(),
            data: serde_json::json!({}),
            created_at: 1,
            read_at: None,
            deliveries: Vec::new(),
        };
        let e = render(&n, "ada@example.com");
        assert_eq!(e.subject, "Your bot could not be started");
        assert!(
            e.text.contains("machine <m1> failed & stopped"),
            "{}",
            e.text
        );
        assert!(e.text.contains("ntf_1"));
        assert!(
            e.html.contains("machine &lt;m1&gt; failed &amp; stopped"),
            "{}",
            e.html
        );
        assert!(!e.html.contains("{{"), "{}", e.html);
    }
}
