//! Integration tests: real attacks through the process tier (and a few through `none`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;
