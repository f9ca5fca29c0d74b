//! In-process HTTP tests of the router: the real engine, store and scripted model, no sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;
