-- The journal's sequence is the table's rowid without AUTOINCREMENT.
-- AUTOINCREMENT reads and rewrites the table's row in sqlite_sequence on
-- every insert, and a P06 request appends some forty entries. Without it
-- SQLite gives a new row the largest rowid plus one; journal rows are never
-- deleted, so no number is ever used twice and the order is the same.
-- (A one-time copy of the table on the first start after an upgrade.)
CREATE TABLE journal_next (
    seq         INTEGER PRIMARY KEY,
    instance_id TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    node_id     TEXT,
    data        TEXT
);
INSERT INTO journal_next (seq, instance_id, at, actor, kind, node_id, data)
    SELECT seq, instance_id, at, actor, kind, node_id, data FROM journal;
DROP TABLE journal;
ALTER TABLE journal_next RENAME TO journal;
CREATE INDEX journal_by_instance ON journal (instance_id, seq);
