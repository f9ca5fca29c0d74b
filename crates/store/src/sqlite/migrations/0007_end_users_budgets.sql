-- Paddock schema, version 7: end-users, their secrets, cost budgets, budget reservations and the
-- usage ledger.

CREATE TABLE end_users (
    id          TEXT    PRIMARY KEY,
    org         TEXT    NOT NULL,
    workspace   TEXT    NOT NULL,
    external_id TEXT    NOT NULL,
    metadata    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (org, workspace, external_id)
);

-- Secrets gain an owner: '' for the workspace, or an end-user id, whose secret shadows the
-- workspace's of the same name in that end-user's runs.
CREATE TABLE secrets_v7 (
    org        TEXT    NOT NULL,
    workspace  TEXT    NOT NULL,
    owner      TEXT    NOT NULL DEFAULT '',
    name       TEXT    NOT NULL,
    key_id     INTEGER NOT NULL,
    nonce      BLOB    NOT NULL,
    ciphertext BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (org, workspace, owner, name),
    FOREIGN KEY (org, workspace, key_id) REFERENCES data_keys (org, workspace, key_id)
) WITHOUT ROWID;
INSERT INTO secrets_v7 (org, workspace, owner, name, key_id, nonce, ciphertext, created_at, updated_at)
    SELECT org, workspace, '', name, key_id, nonce, ciphertext, created_at, updated_at FROM secrets;
DROP TABLE secrets;
ALTER TABLE secrets_v7 RENAME TO secrets;

CREATE TABLE budgets (
    id          TEXT    PRIMARY KEY,
    org         TEXT    NOT NULL,
    workspace   TEXT    NOT NULL,
    -- 'workspace', 'agent' or 'end_user'.
    subject     TEXT    NOT NULL,
    -- The agent or end-user capped; NULL caps each one separately.
    target      TEXT,
    -- 'day' or 'month' (UTC).
    period      TEXT    NOT NULL,
    limit_micros INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX budgets_by_workspace ON budgets (org, workspace);

-- The most a model call in flight can cost, held against the budgets until the call's answer is
-- journaled (then it is settled into the ledger) or the run ends. One per run: a run makes one
-- model call at a time, and a call re-issued after a crash replaces its reservation.
CREATE TABLE budget_reservations (
    run_id     TEXT    PRIMARY KEY,
    org        TEXT    NOT NULL,
    workspace  TEXT    NOT NULL,
    agent      TEXT    NOT NULL,
    end_user   TEXT    NOT NULL DEFAULT '',
    micros     INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX budget_reservations_by_workspace ON budget_reservations (org, workspace);

-- Completed model calls, summed per workspace, agent, end-user ('' for none), model and UTC day.
-- Written in the same transaction as the `model_responded` event, so it never drifts from the
-- journals.
CREATE TABLE usage_ledger (
    org           TEXT    NOT NULL,
    workspace     TEXT    NOT NULL,
    day           TEXT    NOT NULL,
    agent         TEXT    NOT NULL,
    end_user      TEXT    NOT NULL DEFAULT '',
    model         TEXT    NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    model_calls   INTEGER NOT NULL,
    cost_micros   INTEGER NOT NULL,
    PRIMARY KEY (org, workspace, day, agent, end_user, model)
) WITHOUT ROWID;
