//! `molt dev`'s email: an SMTP sink (`molt_fakes::smtp_sink`) on its own
//! thread that keeps every message as `<dir>/mail/<n>.eml` and logs where,
//! and the control plane's `[notifications]` pointing at it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

/// Serve the sink on `listener` (bound before anything started), writing
/// messages under `dir`.
pub(crate) fn start_sink(listener: TcpListener, dir: &Path) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let sink = molt_fakes::smtp_sink::SmtpSink::with_dir(dir.to_owned());
    std::thread::Builder::new()
        .name("smtp-sink".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => sink.serve(listener).await,
                        Err(e) => tracing::error!(error = %e, %addr, "smtp sink stopped"),
                    }
                }),
                Err(e) => tracing::error!(error = %e, "cannot start the smtp sink runtime"),
            }
        })?;
    Ok(())
}

/// The control plane's `[notifications]`: email to the sink, no TLS (it
/// is on loopback), quick retries.
pub(crate) fn notifications_config(sink: SocketAddr) -> String {
    format!(
        r#"
# Notification email goes to molt dev's SMTP sink (messages in mail/).
[notifications]
backoff = "1s"
max_backoff = "30s"

[notifications.email]
host = "{host}"
port = {port}
tls = "none"
from = "Molt dev <notify@molt.local>"
"#,
        host = sink.ip(),
        port = sink.port(),
    )
}

/// The banner's lines about notifications.
pub(crate) fn banner(mail_dir: &Path, cp: SocketAddr) -> String {
    format!(
        "Notifications: email goes to a local SMTP sink, one file per message in {mail}/ ;\n  \
         in-app:  molt ctl notifications list --user-id <user id>\n  \
         webhook: molt ctl webhooks create --url http://127.0.0.1:PORT/hook  (API: http://{cp}/api/v1/webhook-endpoints)",
        mail = mail_dir.display(),
    )
}
