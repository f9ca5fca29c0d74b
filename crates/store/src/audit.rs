//! The audit trail's hash chain: the canonical form of an entry and the one streaming check
//! every backend uses, so a chain written by one backend verifies the same everywhere.
//!
//! **Canonical form** (version 1): the compact JSON (serde_json, no whitespace) of an object
//! with exactly these fields in this order:
//! `{"v":1,"org","workspace","seq","at","actor_kind","actor_key_id","actor_role",
//! "actor_end_user","action","resource","outcome","ip","user_agent","detail","prev_hash"}`,
//! where `at` is epoch milliseconds, absent optional values are `null`, and `detail` is the
//! entry's detail as its stored compact JSON **text** (a JSON string, so no re-encoding of the
//! detail can change the hash). `hash` is the lowercase hex SHA-256 of those bytes. The first
//! entry of a workspace links to [`GENESIS`].

use paddock_types::api::{AuditBreak, AuditVerify};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `prev_hash` of a workspace's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry as stored, borrowed: what the canonical form is computed from.
#[derive(Debug, Clone, Serialize)]
pub struct Canonical<'a> {
    pub v: u32,
    pub org: &'a str,
    pub workspace: &'a str,
    pub seq: u64,
    pub at: i64,
    pub actor_kind: &'a str,
    pub actor_key_id: Option<&'a str>,
    pub actor_role: Option<&'a str>,
    pub actor_end_user: Option<&'a str>,
    pub action: &'a str,
    pub resource: &'a str,
    pub outcome: &'a str,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub detail: &'a str,
    pub prev_hash: &'a str,
}

impl Canonical<'_> {
    /// Lowercase hex SHA-256 of the canonical JSON.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        // Writing into the hasher cannot fail; serde_json only fails on non-string map keys,
        // which this struct does not have.
        if serde_json::to_writer(HashWriter(&mut hasher), self).is_err() {
            return String::new();
        }
        hex(&hasher.finalize())
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// The streaming verifier: feed entries in `seq` order with their stored `hash`, then
/// [`Verifier::finish`]. Stops at the first break.
#[derive(Debug)]
pub struct Verifier {
    next_seq: u64,
    prev: String,
    entries: u64,
    broken: Option<AuditBreak>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            next_seq: 1,
            prev: GENESIS.to_owned(),
            entries: 0,
            broken: None,
        }
    }
}

impl Verifier {
    /// Checks one entry; false once the chain is broken (stop feeding).
    pub fn push(&mut self, entry: &Canonical<'_>, stored_hash: &str) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let reason = if entry.seq != self.next_seq {
            // A missing entry (deleted) or one moved away: the expected seq is what is broken.
            self.broken = Some(AuditBreak {
                seq: self.next_seq,
                reason: "sequence gap".to_owned(),
            });
            return false;
        } else if entry.hash() != stored_hash {
            Some("hash mismatch")
        } else if entry.prev_hash != self.prev {
            Some("prev_hash does not link")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.broken = Some(AuditBreak {
                seq: entry.seq,
                reason: reason.to_owned(),
            });
            return false;
        }
        self.entries += 1;
        self.next_seq += 1;
        stored_hash.clone_into(&mut self.prev);
        true
    }

    pub fn finish(self) -> AuditVerify {
        AuditVerify {
            ok: self.broken.is_none(),
            entries: self.entries,
            first_broken: self.broken,
        }
    }
}

/// Holds `verdict` (of the whole chain) against a checkpoint taken earlier: the chain must still
/// reach the checkpoint's entry (`at_seq`: the hash of entry `seq` now, if it exists) with the
/// same hash. Seq 0 is the empty trail's checkpoint and always holds.
pub fn against_checkpoint(
    verdict: AuditVerify,
    seq: u64,
    hash: &str,
    at_seq: Option<&str>,
) -> AuditVerify {
    if !verdict.ok || seq == 0 {
        return verdict;
    }
    let reason = match at_seq {
        None => "checkpoint entry missing",
        Some(h) if h != hash => "checkpoint hash differs",
        Some(_) => return verdict,
    };
    AuditVerify {
        ok: false,
        entries: verdict.entries.min(seq.saturating_sub(1)),
        first_broken: Some(paddock_types::api::AuditBreak {
            seq,
            reason: reason.to_owned(),
        }),
    }
}
