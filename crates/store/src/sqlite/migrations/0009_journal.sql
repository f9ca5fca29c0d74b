-- The journal, one row per append: the events one append added to a run, in the order appends
-- were made, found by run through an index. Keyed by (run_id, seq), one row per event, the
-- concurrent runs of a group commit each wrote into their own part of the events table: a commit
-- of 35 appends rewrote about 300 pages (each run's last leaf and the neighbours each split
-- rebalanced), 40 times the bytes of the events themselves, and every event cost a row and an
-- index entry. Now an append is one row at the end of the table and one small index entry.
CREATE TABLE journal (
    id        INTEGER PRIMARY KEY,
    run_id    TEXT    NOT NULL REFERENCES runs (id),
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    -- JSON array of the events first_seq..=last_seq in order, each
    -- {"at": <ms>, "kind": <the serialized EventKind, with its "type" tag>}.
    events    TEXT    NOT NULL
);
INSERT INTO journal (run_id, first_seq, last_seq, events)
    SELECT run_id, seq, seq, '[{"at":' || at || ',"kind":' || kind || '}]'
    FROM events ORDER BY run_id, seq;
DROP TABLE events;
CREATE UNIQUE INDEX journal_by_run ON journal (run_id, last_seq);
