-- A job's idempotency key is `tramite:<instance>:<node>:<job id>`: unique
-- because its job's id is. The UNIQUE constraint's index guarded nothing
-- the primary key does not, and cost every job one more index insert.
ALTER TABLE jobs DROP CONSTRAINT jobs_idempotency_key;
