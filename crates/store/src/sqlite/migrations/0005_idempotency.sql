-- Paddock schema, version 5: `Idempotency-Key` records, per workspace. A row is claimed "in
-- flight" (status NULL) before the request runs and completed with the response it got; rows
-- older than the retention (24 h) are ignored and purged on the next claim.

CREATE TABLE idempotency (
    org          TEXT    NOT NULL,
    workspace    TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    status       INTEGER,
    content_type TEXT,
    location     TEXT,
    body         BLOB,
    PRIMARY KEY (org, workspace, key)
) WITHOUT ROWID;

CREATE INDEX idempotency_by_age ON idempotency (created_at);
