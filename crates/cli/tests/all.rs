//! End-to-end tests of the real `paddock` binary: `paddock serve` and `paddock mock-llm` run as
//! child processes and are driven over HTTP, like a user would; `paddock run` is run as a command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;
