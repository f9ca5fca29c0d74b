-- Paddock schema, version 2: the vault's rows. Only wrapped data keys and sealed values are
-- stored; the master key never reaches the database. Secrets belong to a workspace, not to an
-- end-user.

CREATE TABLE data_keys (
    org           TEXT    NOT NULL,
    workspace     TEXT    NOT NULL,
    key_id        INTEGER NOT NULL,
    -- Which master key wrapped this data key: tells the old key from the new one when a rotation
    -- was interrupted.
    master_key_id TEXT    NOT NULL,
    wrapped       BLOB    NOT NULL,
    nonce         BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (org, workspace, key_id)
) WITHOUT ROWID;

CREATE TABLE secrets (
    org        TEXT    NOT NULL,
    workspace  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    key_id     INTEGER NOT NULL,
    nonce      BLOB    NOT NULL,
    ciphertext BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (org, workspace, name),
    -- A sealed value without its data key could never be opened again.
    FOREIGN KEY (org, workspace, key_id) REFERENCES data_keys (org, workspace, key_id)
) WITHOUT ROWID;
