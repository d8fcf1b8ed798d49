//! Integration tests of the control plane, in one test binary: repository
//! tests ([`store`]), API tests through the real router ([`api`]) and the
//! at-rest key's rotation ([`secrets`]), each
//! run against SQLite and against PostgreSQL (`DATABASE_URL`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

mod api;
mod billing;
mod bots;
mod fleet;
mod harness;
mod identity;
mod limits;
mod money;
mod notifications;
mod plans;
mod secrets;
mod store;
