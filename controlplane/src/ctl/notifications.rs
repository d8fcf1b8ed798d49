//! `molt ctl notifications` and `molt ctl webhooks`: a user's in-app
//! notifications, replays, and the operator's webhook endpoints.

use super::args::{NotificationsCmd, WebhooksCmd};
use super::{encode, Api, CtlError};
use hyper::Method;
use serde_json::{json, Value};

/// A notification's columns in a table.
pub(super) const COLUMNS: &[&str] = &["id", "created_at", "kind", "title", "read_at", "deliveries"];
/// A webhook endpoint's columns in a table.
pub(super) const ENDPOINT_COLUMNS: &[&str] =
    &["id", "url", "description", "created_at", "disabled_at"];

/// Run a notifications command; for a `table`, each delivery is shown as
/// `channel:status`.
pub(super) async fn call(
    api: &Api,
    command: NotificationsCmd,
    table: bool,
) -> Result<Value, CtlError> {
    let mut v = match command {
        NotificationsCmd::List {
            user_id,
            unread,
            page,
        } => {
            let mut path = format!(
                "/api/v1/users/{}/notifications{}",
                encode(&user_id),
                page.query()
            );
            if unread {
                path.push_str("&unread=true");
            }
            api.call(Method::GET, &path, None).await?
        }
        NotificationsCmd::Read { user_id, id } => {
            let path = format!(
                "/api/v1/users/{}/notifications/{}/read",
                encode(&user_id),
                encode(&id)
            );
            api.call(Method::POST, &path, None).await?
        }
        NotificationsCmd::Replay { id } => {
            let path = format!("/api/v1/notifications/{}/replay", encode(&id));
            api.call(Method::POST, &path, None).await?
        }
    };
    if table {
        match v.get_mut("items").and_then(Value::as_array_mut) {
            Some(items) => items.iter_mut().for_each(summarise),
            None => summarise(&mut v),
        }
    }
    Ok(v)
}

fn summarise(n: &mut Value) {
    let Some(list) = n["deliveries"].as_array() else {
        return;
    };
    let text: Vec<String> = list
        .iter()
        .map(|d| {
            format!(
                "{}:{}",
                d["channel"].as_str().unwrap_or("?"),
                d["status"].as_str().unwrap_or("?")
            )
        })
        .collect();
    n["deliveries"] = json!(text.join(" "));
}

pub(super) async fn webhooks(api: &Api, command: WebhooksCmd) -> Result<Value, CtlError> {
    match command {
        WebhooksCmd::List(p) => {
            api.call(
                Method::GET,
                &format!("/api/v1/webhook-endpoints{}", p.query()),
                None,
            )
            .await
        }
        WebhooksCmd::Create { url, description } => {
            let body = json!({"url": url, "description": description});
            api.call(Method::POST, "/api/v1/webhook-endpoints", Some(body))
                .await
        }
        WebhooksCmd::Delete { id } => {
            let path = format!("/api/v1/webhook-endpoints/{}", encode(&id));
            api.call(Method::DELETE, &path, None).await
        }
    }
}
