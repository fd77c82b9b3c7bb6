-- An instance's open tasks in one range of one index: equality on the
-- instance and the status, then the inbox's order, so the instance view
-- never depends on the planner weighing the inbox's `tasks_queue` against
-- it. (Built once on the first start after an upgrade.)
DROP INDEX tasks_by_instance;
CREATE INDEX tasks_by_instance ON tasks (instance_id, status, due_order, created_at, id);
