//! The store's integration tests: one binary (`mod suite`), the conformance suite on SQLite plus
//! what only SQLite has (the folder lock, reopen, group commit, migrations).

mod suite;
