//! One integration-test binary for the crate: local upstreams, the proxy and its clients all talk
//! over real 127.0.0.1 sockets; nothing leaves the machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;
