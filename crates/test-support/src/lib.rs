//! Scaffolding for end-to-end tests of the real `paddock` binary: start `paddock mock-llm` and
//! `paddock serve` as child processes (SIGKILL and restart them on the same data folder), write
//! agent folders and `paddock.toml`, talk JSON to the API and read its SSE streams; run a local
//! HTTP(S) upstream for egress tests and share a fixture between concurrent tests.
//!
//! It is test code: a helper that cannot do its job panics with a message saying what it was
//! waiting for, and every wait has a generous deadline instead of a fixed sleep. It must never
//! be a dependency of the binary. It cannot see `CARGO_BIN_EXE_paddock` (only the cli's own
//! tests can), so callers pass the binary's path in.

// Panicking with a clear message is how test scaffolding reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client;
mod fixtures;
mod process;
mod shared;
mod sse;
mod upstream;

pub use client::{Api, Resp, is_terminal};
pub use fixtures::{AgentFixture, MOCK_PROMPT, mock_input, provider_toml};
pub use process::{MockLlm, Server, ServerOptions, free_port};
pub use shared::Shared;
pub use sse::SseEvent;
pub use upstream::{SeenRequest, Upstream, reflections};

use std::time::Duration;

/// Deadline of every wait in this crate (starting a process, a run reaching a state, an SSE
/// stream ending). Long because the test machine is small and shared; reaching it is a failure.
pub const WAIT: Duration = Duration::from_secs(180);

/// Pause between two looks while polling.
pub const POLL: Duration = Duration::from_millis(25);
