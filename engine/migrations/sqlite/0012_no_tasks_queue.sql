-- A task's indexes no longer hold its status where a list does not need it
-- in order, so that a claim or a completion moves one index entry
-- (`tasks_inbox`'s), not three:
-- * `tasks_queue` (status, due order) served only the lists not limited
--   to roles; those now read one lane of `tasks_inbox` per role the
--   deployed procedures name (`Engine::tasks`).
-- * `tasks_by_instance` held (instance, status, due order…) so that an
--   instance's lookup would not lose to a walk of `tasks_queue`; with that
--   gone, it holds the instance and the page's order, which no claim or
--   completion changes (the status is tested on the rows, a handful).
-- (Built once on the first start after an upgrade.)
DROP INDEX tasks_queue;
DROP INDEX tasks_by_instance;
CREATE INDEX tasks_by_instance ON tasks (instance_id, due_order, created_at, id);
