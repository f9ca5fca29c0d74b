//! Behaviour of the model clients against the real mock server over 127.0.0.1, and of the
//! in-process scripted provider.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;
