-- Paddock schema, version 1. Every row carries the tenant (org, workspace and, for runs and
-- approvals, the end-user) so each query filters on scope without a join.

CREATE TABLE agents (
    org        TEXT    NOT NULL,
    workspace  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    -- The serialized api::AgentDefinition.
    definition TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org, workspace, name, version)
) WITHOUT ROWID;

CREATE TABLE runs (
    id          TEXT    PRIMARY KEY,
    org         TEXT    NOT NULL,
    workspace   TEXT    NOT NULL,
    end_user    TEXT,
    agent       TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    -- The serialized api::Run: the fold of the journal up to last_seq, kept in step with every
    -- append so reading a run never replays its journal.
    run         TEXT    NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER
);

-- Listings, newest first (ids are time-ordered).
CREATE INDEX runs_by_workspace ON runs (workspace, id);
CREATE INDEX runs_by_agent ON runs (workspace, agent, id);
CREATE INDEX runs_by_status ON runs (workspace, status, id);
-- Claiming scans only the runs a worker may take, oldest first; finished runs (the vast
-- majority over time) are not in this index at all.
CREATE INDEX runs_claimable ON runs (id) WHERE status IN ('queued', 'running');

CREATE TABLE events (
    run_id TEXT    NOT NULL REFERENCES runs (id),
    seq    INTEGER NOT NULL,
    at     INTEGER NOT NULL,
    -- The serialized EventKind (with its "type" tag).
    kind   TEXT    NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE approvals (
    id         TEXT    PRIMARY KEY,
    run_id     TEXT    NOT NULL REFERENCES runs (id),
    org        TEXT    NOT NULL,
    workspace  TEXT    NOT NULL,
    end_user   TEXT,
    agent      TEXT    NOT NULL,
    -- The serialized ToolCall awaiting a decision.
    call       TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    comment    TEXT,
    created_at INTEGER NOT NULL,
    decided_at INTEGER
);

CREATE INDEX approvals_by_run ON approvals (run_id, status);
CREATE INDEX approvals_by_workspace ON approvals (workspace, id);
CREATE INDEX approvals_by_status ON approvals (workspace, status, id);
