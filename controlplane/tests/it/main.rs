//! Integration tests of the control plane, in one test binary: repository
//! tests ([`store`]) and API tests through the real router ([`api`]), each
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
mod limits;
mod money;
mod plans;
mod store;
