-- A job's idempotency key is `tramite:<instance>:<node>:<job id>`: unique
-- because its job's id is. The UNIQUE constraint's index guarded nothing
-- the primary key does not, and cost every job one more B-tree insert of a
-- ~100-byte key (2.6 of ~97 page images per commit at 64 clients). SQLite
-- cannot drop a table constraint's index: a one-time copy of the table on
-- the first start after an upgrade. No table refers to jobs.
CREATE TABLE jobs_next (
    id              TEXT    PRIMARY KEY,
    instance_id     TEXT    NOT NULL REFERENCES instances (id),
    token           INTEGER NOT NULL,
    node_id         TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    connector       TEXT,
    operation       TEXT,
    input           TEXT,
    idempotency_key TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    timeout_ms      INTEGER,
    run_at          INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL
);
INSERT INTO jobs_next (id, instance_id, token, node_id, kind, connector, operation, input,
                       idempotency_key, status, attempts, max_attempts, timeout_ms, run_at,
                       lease_owner, lease_until, last_error, created_at)
    SELECT id, instance_id, token, node_id, kind, connector, operation, input,
           idempotency_key, status, attempts, max_attempts, timeout_ms, run_at,
           lease_owner, lease_until, last_error, created_at
    FROM jobs ORDER BY rowid;
DROP TABLE jobs;
ALTER TABLE jobs_next RENAME TO jobs;
CREATE INDEX jobs_due ON jobs (status, run_at);
CREATE INDEX jobs_by_instance ON jobs (instance_id);
