-- Members (people with passwords) and their login sessions.
--
-- A member belongs to one org with one role, optionally narrowed to one workspace of it. The
-- password is kept only as an argon2id PHC string; the email is unique per org among members
-- not removed, compared case-insensitively (`email_norm` is its lowercase form). A removed
-- member keeps its row (the audit trail names it) but can no longer log in.
--
-- A session token is kept only as its SHA-256 (`token_hash`); the token is shown once.

-- Orgs get a name (NULL for the bootstrap org, created before names existed).
ALTER TABLE orgs ADD COLUMN name TEXT;
CREATE UNIQUE INDEX orgs_by_name ON orgs (lower(name)) WHERE name IS NOT NULL;

CREATE TABLE members (
    id            TEXT    NOT NULL PRIMARY KEY,
    org           TEXT    NOT NULL REFERENCES orgs (id),
    email         TEXT    NOT NULL,
    email_norm    TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    workspace     TEXT,
    created_at    INTEGER NOT NULL,
    removed_at    INTEGER,
    FOREIGN KEY (org, workspace) REFERENCES workspaces (org, id)
) WITHOUT ROWID;

CREATE UNIQUE INDEX members_by_email ON members (org, email_norm) WHERE removed_at IS NULL;
CREATE INDEX members_by_login ON members (email_norm);

CREATE TABLE sessions (
    token_hash TEXT    NOT NULL PRIMARY KEY,
    member     TEXT    NOT NULL REFERENCES members (id),
    org        TEXT    NOT NULL,
    workspace  TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER,
    FOREIGN KEY (org, workspace) REFERENCES workspaces (org, id)
) WITHOUT ROWID;

CREATE INDEX sessions_by_member ON sessions (member);

-- The audit trail names the member of a session request in `audit.actor_key_id` (the actor's
-- id: `key_…` or `usr_…`), so the canonical form and its hashes stay as they are.
