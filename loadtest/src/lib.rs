//! Mock upstreams and load generators for Molt.
//!
//! [`mock_provider`] is the OpenAI-/Anthropic-compatible stand-in upstream used by
//! end-to-end tests, `molt dev` and load tests; [`mock_bot`] stands in for a
//! user's bot gateway (WebSocket chat); [`fake_fly`] stands in for the Fly
//! Machines API; [`fake_stripe`] stands in for Stripe's meter events API
//! and signs webhooks as Stripe does.

pub mod fake_fly;
pub mod fake_stripe;
pub mod loadgen;
pub mod mock_bot;
pub mod mock_provider;
