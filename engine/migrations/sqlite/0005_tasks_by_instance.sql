-- An instance's open tasks in one range of one index. The index on
-- `instance_id` alone let SQLite, which keeps no statistics, prefer the
-- inbox's `tasks_queue` for `WHERE instance_id = ? AND status = ? ORDER BY
-- due_order, …` (it gives the order) and walk every open task of every
-- instance: the instance view read the whole inbox. With status and the
-- page's order in the index, the lookup is one seek whatever the inbox's
-- size. (Built once on the first start after an upgrade.)
DROP INDEX tasks_by_instance;
CREATE INDEX tasks_by_instance ON tasks (instance_id, status, due_order, created_at, id);
