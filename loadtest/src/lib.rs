//! Mock upstreams and load generators for Molt.
//!
//! [`mock_provider`] is the OpenAI-/Anthropic-compatible stand-in upstream used by
//! end-to-end tests, `molt dev` and load tests.

pub mod loadgen;
pub mod mock_provider;
