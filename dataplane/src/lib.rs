//! Molt's data plane: the Pingora proxy every model request passes through.
//!
//! It owns the client-facing listeners, authentication, routing by the
//! body's `model`, credential injection, streaming with usage accounting,
//! fallbacks, metrics, and hot reload of its config.
//!
//! Entry point: [`server::run`]. The request path is [`proxy`]; the pieces
//! it uses are plain, separately tested and benchmarked modules:
//! [`json_scan`] (body validation and field lookup), [`splice`] (zero-copy
//! edits), [`usage_reader`] (usage from SSE and JSON), [`auth`], [`runtime`]
//! (the prepared, swappable config snapshot).
//!
//! Architecture invariant: the data plane never talks to the database,
//! Stripe or Fly. Its only inputs are its config (file, and snapshots
//! pulled from the control plane by [`sync`]) and client traffic; its only
//! outputs are upstream traffic, usage events through [`sink::UsageSink`]
//! (shipped to the control plane by [`spool`]), logs and metrics. The
//! control plane is reached only over HTTP, at `/internal/v1`.

pub mod admin;
pub mod auth;
pub mod conn_gate;
pub mod error;
pub mod json_scan;
pub mod limits;
pub mod listen;
pub mod log_limit;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod scrub;
pub mod server;
pub mod sink;
pub mod splice;
pub mod spool;
pub mod sync;
pub mod tls;
pub mod tokens;
pub mod usage_reader;
pub mod ws;
