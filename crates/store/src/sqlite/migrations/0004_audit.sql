-- Paddock schema, version 4: the per-workspace audit trail, a hash chain. Rows are only ever
-- inserted; `hash` is the SHA-256 of the entry's canonical form (paddock_store::audit), which
-- includes `prev_hash`, so editing, deleting or reordering a row breaks the chain.

CREATE TABLE audit (
    org            TEXT    NOT NULL,
    workspace      TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    at             INTEGER NOT NULL,
    actor_kind     TEXT    NOT NULL,
    actor_key_id   TEXT,
    actor_role     TEXT,
    actor_end_user TEXT,
    action         TEXT    NOT NULL,
    resource       TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    ip             TEXT,
    user_agent     TEXT,
    detail         TEXT    NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL,
    PRIMARY KEY (org, workspace, seq)
) WITHOUT ROWID;
