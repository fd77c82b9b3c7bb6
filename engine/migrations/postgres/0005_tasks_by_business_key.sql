-- A search of the inbox by business key in one range of one index, not a
-- walk of the role's inbox lane (see the SQLite migration of the same
-- name). (Built once on the first start after an upgrade.)
CREATE INDEX tasks_by_business_key ON tasks (business_key);
