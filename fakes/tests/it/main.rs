//! Integration tests of the mock provider over real HTTP/1.1 and h2c
//! connections: wire formats, behaviour controls and the request record.

// Tests fail by panicking; unwrap/expect/panic are how they say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod anthropic;
mod controls;
mod openai;
mod records;
mod support;
