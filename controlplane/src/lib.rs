//! Molt's control plane: the operators' API, its storage, the config
//! snapshots pushed to data planes and the usage they send back.
//!
//! Entry points: [`server::Server`] (`molt controlplane --config FILE`),
//! [`server::App`] (the same without a listener, for tests and `molt dev`)
//! and [`ctl`] (`molt ctl`, a client of the API).
//!
//! Layers, outside in: [`api`] (axum handlers, thin; the one error→HTTP
//! mapping in [`api::error`]) → [`service`] (all rules, authorisation,
//! audit) → [`store`] (the SQL, one file per resource, as methods of
//! [`store::SqlStore`] over SQLite or PostgreSQL) → [`domain`] (the
//! records). [`snapshot`] compiles and publishes data-plane config.
//! [`provision`] runs bots on a [`fleet::Fleet`] (Fly Machines, or local
//! bots through a [`fleet::local::BotLauncher`]) through a durable state machine in the same database.
//! [`billing`] verifies Stripe webhooks and flushes metered usage to Stripe
//! exactly once. [`identity`] verifies Clerk's (Svix-signed) webhooks and
//! applies them through the user services, and fetches Clerk's JWKS into
//! the snapshot; [`signing`] is what the webhook verifiers share. The
//! services, the snapshot compiler, the provisioner, billing and identity
//! each reach storage through a narrow trait they declare, which
//! [`server`] fills with the one [`store::SqlStore`].
//!
//! Architecture invariant: this crate is the only owner of the database;
//! data planes reach it only through `/internal/v1` and the types of
//! `molt-config`.
//!
//! Architecture invariant: provider master keys are sealed before they are
//! stored and are only ever opened to build a snapshot for data planes; no
//! type returned by an `/api/v1` read can hold one.
//!
//! Architecture invariant: every value sealed at rest names the key that
//! sealed it ([`crypto`]), and re-encryption ([`service::secrets`]) changes
//! only which key seals a value, never the value: a rotation of the
//! at-rest key leaves every snapshot's content as it was.

#![forbid(unsafe_code)]

pub mod api;
pub mod billing;
pub mod config;
pub mod crypto;
pub mod ctl;
pub mod domain;
pub mod fleet;
pub mod https;
pub mod identity;
pub mod metrics;
pub mod provision;
pub mod server;
pub mod service;
pub mod signing;
pub mod snapshot;
pub mod store;

pub use config::Settings;
pub use server::{App, Server};
