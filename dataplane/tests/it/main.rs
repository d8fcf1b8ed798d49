//! The data plane's integration tests, one binary: the limiter against a
//! real Redis ([`limits`]), and the proxy run in-process on `127.0.0.1:0`
//! against the mock provider, as Pingora tests its own proxies ([`proxy`]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

mod browser;
mod clients;
mod identity;
mod limits;
mod pool;
mod proxy;
mod secrets;
mod support;
mod tickets;
