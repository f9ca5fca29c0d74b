-- Paddock schema, version 3: organizations, their workspaces and API keys. Keys are stored as
-- the SHA-256 of their secret only; the secret itself is shown once and never kept.

CREATE TABLE orgs (
    id         TEXT    NOT NULL PRIMARY KEY,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE workspaces (
    org        TEXT    NOT NULL REFERENCES orgs (id),
    id         TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org, id),
    UNIQUE (org, name)
) WITHOUT ROWID;

CREATE TABLE api_keys (
    id           TEXT    NOT NULL PRIMARY KEY,
    org          TEXT    NOT NULL,
    workspace    TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    prefix       TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER,
    FOREIGN KEY (org, workspace) REFERENCES workspaces (org, id)
) WITHOUT ROWID;

CREATE INDEX api_keys_by_workspace ON api_keys (org, workspace, id);
