-- Events in the order they were appended, found by run through an index. Keyed by
-- (run_id, seq), the concurrent runs of a group commit each wrote into their own part of the
-- table: one commit of 35 appends rewrote about 200 pages (every run's last leaf, and the
-- neighbours each split rebalanced), 40 times the bytes of the events themselves. Appended in
-- order, a commit's rows share the table's last few pages and only the small index entries land
-- apart.
CREATE TABLE events_v9 (
    id     INTEGER PRIMARY KEY,
    run_id TEXT    NOT NULL REFERENCES runs (id),
    seq    INTEGER NOT NULL,
    at     INTEGER NOT NULL,
    -- The serialized EventKind (with its "type" tag).
    kind   TEXT    NOT NULL
);
INSERT INTO events_v9 (run_id, seq, at, kind)
    SELECT run_id, seq, at, kind FROM events ORDER BY run_id, seq;
DROP TABLE events;
ALTER TABLE events_v9 RENAME TO events;
CREATE UNIQUE INDEX events_by_run ON events (run_id, seq);
