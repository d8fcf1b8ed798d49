//! Test doubles for Molt: stand-ins for the services the product talks to,
//! faithful enough that the real clients run against them unchanged.
//!
//! [`mock_provider`] is the OpenAI-/Anthropic-compatible stand-in upstream
//! used by end-to-end tests, `molt dev` and load tests; [`mock_bot`] stands
//! in for a user's bot gateway (WebSocket chat); [`fake_fly`] stands in for
//! the Fly Machines API; [`fake_stripe`] stands in for Stripe's meter events
//! API and signs webhooks as Stripe does; [`fake_clerk`] signs Clerk's
//! webhooks as Svix does and serves a rotating, failing JWKS with tokens
//! signed by its keys. The fakes share `serve`: serving
//! a router in the background on a loopback port, or over TLS with a
//! [`tls::loopback_certificate`].
//!
//! Architecture invariant: no library crate of the product depends on this
//! one; only the `molt` binary (for `molt dev` and the fakes' subcommands)
//! does, and the other crates only as a dev-dependency of their tests.
//! `molt/tests/architecture.rs` checks it.

pub mod fake_clerk;
pub mod fake_fly;
pub mod fake_stripe;
pub mod mock_bot;
pub mod mock_provider;
mod serve;
pub mod tls;
