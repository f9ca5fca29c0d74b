//! The vault's integration tests: one binary (`mod suite`), on the SQLite store.

mod suite;
