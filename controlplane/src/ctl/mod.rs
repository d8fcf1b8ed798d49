//! `molt ctl`: a command-line client of the operators' API, with readable
//! tables by default and the API's JSON with `--json`.
//!
//! Provider master keys are read from environment variables named on the
//! command line (`--key-env`), never from arguments, which leak into shell
//! history and process listings.
//!
//! The control plane is reached over `http://` or `https://` (through
//! [`crate::https`]; `--ca-file` adds a private CA).

mod args;
mod notifications;

pub use args::{
    BotsCmd, CtlArgs, CtlCommand, KeysCmd, LimitsCmd, ListArgs, ModelsCmd, NotificationsCmd,
    PlansCmd, ProvidersCmd, SecretsCmd, UsersCmd, WebhooksCmd,
};

use crate::https::{HttpsClient, TlsSetupError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::{json, Value};
use std::io::Write;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("bad URL {0:?} (expected http:// or https://)")]
    Url(String),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("request failed: {0}")]
    Http(String),
    #[error("{status}: {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected response: {0}")]
    Response(String),
    #[error("environment variable {0} is not set")]
    Env(String),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Input(String),
}

/// Run one `molt ctl` command, writing its output to `out`.
pub async fn run(args: CtlArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let api = Api::new(&args.url, &args.token, args.ca_file.as_deref())?;
    let (value, columns): (Value, &[&str]) = match args.command {
        CtlCommand::Users { command } => match command {
            UsersCmd::Budget { id, month } => {
                let query = month
                    .map(|m| format!("?month={}", encode(&m)))
                    .unwrap_or_default();
                let v = api
                    .call(
                        Method::GET,
                        &format!("/api/v1/users/{}/budget{query}", encode(&id)),
                        None,
                    )
                    .await?;
                let crossed: Vec<String> = v["thresholds_crossed"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| format!("{}%", e["threshold_pct"]))
                    .collect();
                let mut row = v;
                if !args.json {
                    row["thresholds_crossed"] = json!(crossed.join(" "));
                }
                (
                    row,
                    &[
                        "user_id",
                        "month",
                        "budget_usd",
                        "spent_usd",
                        "percent_used",
                        "thresholds_crossed",
                        "unpriced_events",
                    ],
                )
            }
            UsersCmd::List(p) => (
                api.call(Method::GET, &format!("/api/v1/users{}", p.query()), None)
                    .await?,
                &["id", "email", "status", "plan", "stripe_customer_id"],
            ),
            UsersCmd::Create {
                email,
                plan,
                status,
            } => (
                api.call(
                    Method::POST,
                    "/api/v1/users",
                    Some(json!({"email": email, "plan": plan, "status": status})),
                )
                .await?,
                &["id", "email", "status", "plan"],
            ),
        },
        CtlCommand::Keys { command } => match command {
            KeysCmd::List { user_id, page } => {
                let path = page.path_for_user("/api/v1/keys", user_id.as_deref());
                (
                    api.call(Method::GET, &path, None).await?,
                    &[
                        "id",
                        "user_id",
                        "name",
                        "prefix",
                        "models",
                        "expires_at",
                        "revoked_at",
                    ],
                )
            }
            KeysCmd::Create {
                user_id,
                name,
                models,
                expires_at,
            } => {
                let models = (!models.is_empty()).then_some(models);
                let v = api
                    .call(
                        Method::POST,
                        "/api/v1/keys",
                        Some(json!({"user_id": user_id, "name": name, "models": models, "expires_at": expires_at})),
                    )
                    .await?;
                (v, &["secret"])
            }
            KeysCmd::Revoke { id } => (
                api.call(
                    Method::POST,
                    &format!("/api/v1/keys/{}/revoke", encode(&id)),
                    None,
                )
                .await?,
                &["id", "revoked_at"],
            ),
        },
        CtlCommand::Models { command } => match command {
            ModelsCmd::List(p) => {
                let mut v = api
                    .call(Method::GET, &format!("/api/v1/models{}", p.query()), None)
                    .await?;
                if !args.json {
                    // The price in force, as columns of the table.
                    for m in v["items"].as_array_mut().into_iter().flatten() {
                        m["input_price"] = m["price"]["price"]["input"].clone();
                        m["output_price"] = m["price"]["price"]["output"].clone();
                    }
                }
                (
                    v,
                    &[
                        "name",
                        "provider",
                        "upstream_name",
                        "aliases",
                        "fallbacks",
                        "input_price",
                        "output_price",
                    ],
                )
            }
            ModelsCmd::Create {
                name,
                provider,
                upstream_name,
                aliases,
                fallbacks,
                price,
            } => (
                api.call(
                    Method::POST,
                    "/api/v1/models",
                    Some(
                        json!({"name": name, "provider": provider, "upstream_name": upstream_name,
                        "aliases": aliases, "fallbacks": fallbacks, "price": price.to_json()}),
                    ),
                )
                .await?,
                &["id", "name", "provider"],
            ),
            ModelsCmd::Price {
                model,
                price,
                effective_from,
            } => {
                let price = price.to_json().ok_or_else(|| {
                    CtlError::Input("--input-price and --output-price are required".into())
                })?;
                let v = api
                    .call(
                        Method::PUT,
                        &format!("/api/v1/models/{}/price", encode(&model)),
                        Some(json!({"price": price, "effective_from": effective_from})),
                    )
                    .await?;
                (v, &["id", "model", "effective_from", "price"])
            }
            ModelsCmd::Prices { model } => {
                let v = api
                    .call(
                        Method::GET,
                        &format!("/api/v1/models/{}/prices", encode(&model)),
                        None,
                    )
                    .await?;
                let v = if args.json { v } else { json!({"items": v}) };
                (v, &["id", "effective_from", "price", "created_by"])
            }
        },
        CtlCommand::Providers { command } => match command {
            ProvidersCmd::List(p) => (
                api.call(Method::GET, &format!("/api/v1/providers{}", p.query()), None).await?,
                &["id", "name", "kind", "base_url", "key_count"],
            ),
            ProvidersCmd::Create {
                name,
                kind,
                base_url,
                key_env,
            } => (
                api.call(
                    Method::POST,
                    "/api/v1/providers",
                    Some(json!({"name": name, "kind": kind, "base_url": base_url, "keys": keys_from_env(&key_env)?})),
                )
                .await?,
                &["id", "name", "kind", "base_url", "key_count"],
            ),
            ProvidersCmd::SetKeys { id, key_env } => (
                api.call(
                    Method::PATCH,
                    &format!("/api/v1/providers/{}", encode(&id)),
                    Some(json!({"keys": keys_from_env(&key_env)?})),
                )
                .await?,
                &["id", "name", "kind", "base_url", "key_count", "updated_at"],
            ),
        },
        CtlCommand::Bots { command } => {
            const COLUMNS: &[&str] = &["id", "user_id", "status", "desired", "machine_id", "error"];
            let bot = |id: &str, action: &str| format!("/api/v1/bots/{}{action}", encode(id));
            let v = match command {
                BotsCmd::List { user_id, page } => {
                    let path = page.path_for_user("/api/v1/bots", user_id.as_deref());
                    api.call(Method::GET, &path, None).await?
                }
                BotsCmd::Create {
                    user_id,
                    region,
                    model,
                } => {
                    let body = json!({"user_id": user_id, "region": region, "model": model});
                    api.call(Method::POST, "/api/v1/bots", Some(body)).await?
                }
                BotsCmd::Get { id } => api.call(Method::GET, &bot(&id, ""), None).await?,
                BotsCmd::Stop { id } => api.call(Method::POST, &bot(&id, "/stop"), None).await?,
                BotsCmd::Start { id } => api.call(Method::POST, &bot(&id, "/start"), None).await?,
                BotsCmd::Retry { id } => api.call(Method::POST, &bot(&id, "/retry"), None).await?,
                BotsCmd::Delete { id } => api.call(Method::DELETE, &bot(&id, ""), None).await?,
            };
            (v, COLUMNS)
        }
        CtlCommand::Plans { command } => {
            const COLUMNS: &[&str] = &["id", "name", "limits", "description"];
            match command {
                PlansCmd::List(p) => (
                    api.call(Method::GET, &format!("/api/v1/plans{}", p.query()), None)
                        .await?,
                    COLUMNS,
                ),
                PlansCmd::Create {
                    name,
                    description,
                    limits,
                } => {
                    let body = json!({"name": name, "description": description, "limits": limit_set(&limits)?});
                    (
                        api.call(Method::POST, "/api/v1/plans", Some(body)).await?,
                        COLUMNS,
                    )
                }
                PlansCmd::Get { id } => (
                    api.call(Method::GET, &format!("/api/v1/plans/{}", encode(&id)), None)
                        .await?,
                    COLUMNS,
                ),
                PlansCmd::Update {
                    id,
                    description,
                    limits,
                    clear_limits,
                } => {
                    let mut body = serde_json::Map::new();
                    if let Some(d) = description {
                        body.insert("description".into(), Value::String(d));
                    }
                    if clear_limits || !limits.is_empty() {
                        body.insert("limits".into(), limit_set(&limits)?);
                    }
                    let path = format!("/api/v1/plans/{}", encode(&id));
                    (
                        api.call(Method::PATCH, &path, Some(Value::Object(body)))
                            .await?,
                        COLUMNS,
                    )
                }
                PlansCmd::Delete { id } => {
                    api.call(
                        Method::DELETE,
                        &format!("/api/v1/plans/{}", encode(&id)),
                        None,
                    )
                    .await?;
                    if !args.json {
                        writeln!(out, "deleted plan {id}")?;
                    }
                    return Ok(());
                }
            }
        }
        CtlCommand::Usage {
            user_id,
            model,
            from,
            to,
        } => {
            let params: Vec<String> = [
                ("user_id", user_id),
                ("model", model),
                ("from", from),
                ("to", to),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(&v))))
            .collect();
            let v = api
                .call(
                    Method::GET,
                    &format!("/api/v1/usage?{}", params.join("&")),
                    None,
                )
                .await?;
            if !args.json {
                write_usage(out, &v)?;
                return Ok(());
            }
            (v, &[])
        }
        CtlCommand::Limits { command } => {
            let v = match command {
                LimitsCmd::Get => api.call(Method::GET, "/api/v1/limits", None).await?,
                LimitsCmd::Set { file } => {
                    let text = std::fs::read_to_string(&file).map_err(|e| {
                        CtlError::Input(format!("cannot read {}: {e}", file.display()))
                    })?;
                    let doc: Value = serde_json::from_str(&text).map_err(|e| {
                        CtlError::Input(format!("{} is not JSON: {e}", file.display()))
                    })?;
                    api.call(Method::PUT, "/api/v1/limits", Some(doc)).await?
                }
            };
            // A nested document: always shown as JSON.
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )?;
            return Ok(());
        }
        CtlCommand::Secrets { command } => {
            let v = match command {
                SecretsCmd::Status => api.call(Method::GET, "/api/v1/secrets", None).await?,
                SecretsCmd::Reencrypt => {
                    api.call(Method::POST, "/api/v1/secrets/reencrypt", None)
                        .await?
                }
            };
            // A nested document: always shown as JSON.
            writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
            let stale = v.get("status").unwrap_or(&v)["stale"].as_u64().unwrap_or(0);
            if v.get("status").is_some() && stale > 0 {
                return Err(CtlError::Input(format!(
                    "{stale} sealed values are still not under the current key: see `failed` and run again"
                )));
            }
            return Ok(());
        }
        CtlCommand::Notifications { command } => (
            notifications::call(&api, command, !args.json).await?,
            notifications::COLUMNS,
        ),
        CtlCommand::Webhooks { command } => {
            let v = notifications::webhooks(&api, command).await?;
            if !args.json {
                if let Some(secret) = v.get("secret").and_then(Value::as_str) {
                    writeln!(out, "secret (shown once): {secret}")?;
                    let endpoint = v["endpoint"].clone();
                    return write_table(out, &[endpoint], notifications::ENDPOINT_COLUMNS);
                }
            }
            (v, notifications::ENDPOINT_COLUMNS)
        }
        CtlCommand::Audit { limit } => (
            api.call(Method::GET, &format!("/api/v1/audit?limit={limit}"), None)
                .await?,
            &["at", "actor", "action", "target", "diff"],
        ),
    };
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        )?;
        return Ok(());
    }
    let rows = match &value {
        Value::Object(o) if o.contains_key("items") => {
            let rows = o["items"].as_array().cloned().unwrap_or_default();
            write_table(out, &rows, columns)?;
            if let Some(c) = o.get("next_cursor").and_then(Value::as_str) {
                writeln!(out, "(more: --cursor {c})")?;
            }
            return Ok(());
        }
        // A created key: the secret, once, and the record.
        Value::Object(o) if o.contains_key("secret") && o.contains_key("key") => {
            writeln!(
                out,
                "secret (shown once): {}",
                o["secret"].as_str().unwrap_or_default()
            )?;
            vec![o["key"].clone()]
        }
        other => vec![other.clone()],
    };
    let columns: &[&str] = if columns == ["secret"] {
        &["id", "user_id", "name", "prefix", "models", "expires_at"]
    } else {
        columns
    };
    write_table(out, &rows, columns)
}

/// The master keys held by the environment variables `names` (never
/// taken from arguments, which leak into shell history).
fn keys_from_env(names: &[String]) -> Result<Vec<String>, CtlError> {
    names
        .iter()
        .map(|var| std::env::var(var).map_err(|_| CtlError::Env(var.clone())))
        .collect()
}

/// `FIELD=N` arguments as a limit set object. Field names are checked by
/// the server, which knows them (and names an unknown one in its error).
fn limit_set(args: &[String]) -> Result<Value, CtlError> {
    let mut set = serde_json::Map::new();
    for arg in args {
        let (field, n) = arg
            .split_once('=')
            .ok_or_else(|| CtlError::Input(format!("--limit {arg:?}: expected FIELD=N")))?;
        let n: u64 = n.trim().parse().map_err(|_| {
            CtlError::Input(format!("--limit {arg:?}: {n:?} is not a whole number"))
        })?;
        if set.insert(field.trim().to_owned(), n.into()).is_some() {
            return Err(CtlError::Input(format!("--limit {field}: given twice")));
        }
    }
    Ok(Value::Object(set))
}

/// Aligned columns; strings unquoted, `null` as `-`, objects as compact
/// JSON.
/// The usage report as tables: rows per day, then per model with its cost
/// by token class, then the totals.
fn write_usage(out: &mut dyn Write, v: &Value) -> Result<(), CtlError> {
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let cols = [
        "day",
        "user_id",
        "model",
        "requests",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "billed_usd",
        "unpriced_events",
    ];
    write_table(out, &rows, &cols)?;
    writeln!(out)?;
    let classes = [
        "input",
        "cache_read_input",
        "cache_write_5m_input",
        "cache_write_1h_input",
        "audio_input",
        "output",
        "reasoning_output",
        "audio_output",
    ];
    let mut by_class = Vec::new();
    for m in v["models"].as_array().into_iter().flatten() {
        for class in classes {
            let tokens = &m["tokens_by_class"][class];
            if tokens.as_i64().unwrap_or(0) != 0 {
                by_class.push(
                    json!({"model": m["model"], "class": class, "tokens": tokens,
                    "cost_usd": m["cost_by_class"][class]}),
                );
            }
        }
    }
    write_table(out, &by_class, &["model", "class", "tokens", "cost_usd"])?;
    let t = &v["totals"];
    let dollars = |v: &Value| v.as_str().unwrap_or("0.00").to_owned();
    writeln!(
        out,
        "total: {} requests, {} input, {} output tokens, cost ${}, billed ${}, {} unpriced events",
        t["requests"],
        t["input_tokens"],
        t["output_tokens"],
        dollars(&t["cost_usd"]),
        dollars(&t["billed_usd"]),
        t["unpriced_events"]
    )?;
    Ok(())
}

fn write_table(out: &mut dyn Write, rows: &[Value], columns: &[&str]) -> Result<(), CtlError> {
    let cell = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |vals: Vec<&str>| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(
        out,
        "{}",
        line(
            columns
                .iter()
                .map(|c| c.to_uppercase())
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect()
        )
    )?;
    for r in &cells {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// Percent-encode a query or path component.
pub(super) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Api {
    base: String,
    token: String,
    client: HttpsClient,
}

impl Api {
    fn new(url: &str, token: &str, ca_file: Option<&std::path::Path>) -> Result<Self, CtlError> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CtlError::Url(url.to_owned()));
        }
        Ok(Self {
            base,
            token: token.to_owned(),
            client: crate::https::client(ca_file)?,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        let body = body.unwrap_or_else(|| json!({}));
        let has_body = method != Method::GET;
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(if has_body {
                Bytes::from(body.to_string())
            } else {
                Bytes::new()
            }))
            .map_err(|e| CtlError::Http(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| CtlError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CtlError::Http(e.to_string()))?
            .to_bytes();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|_| CtlError::Response(String::from_utf8_lossy(&bytes).into_owned()))?
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(CtlError::Api {
                status: status.as_u16(),
                code: value["error"]["code"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_owned(),
                message: value["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            })
        }
    }
}
