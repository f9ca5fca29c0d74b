-- The journal, one row per append: the events one append added to a run, in the order appends
-- were made, found by run through an index. With one row per event (keyed by (run_id, seq)
-- before 0009, in append order since), every event cost a row and an index entry, and a group
-- commit's index entries landed all over the index. Now an append is one row at the end of the
-- table and one small index entry. Works on the events table of either layout.
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
