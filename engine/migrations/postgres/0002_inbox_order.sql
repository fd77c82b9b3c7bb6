-- The inbox reads tasks soonest due first, a task without a due time last.
-- `due_order` is that order as a plain column, so that one page of one
-- role's inbox is one range scan of an index (no sort of the whole inbox).
ALTER TABLE tasks ADD COLUMN due_order BIGINT NOT NULL DEFAULT 9223372036854775807;
UPDATE tasks SET due_order = due_at WHERE due_at IS NOT NULL;
DROP INDEX tasks_inbox;
CREATE INDEX tasks_inbox ON tasks (role, status, due_order, created_at, id);
-- Lists that are not limited to roles (operators) scan by status.
CREATE INDEX tasks_queue ON tasks (status, due_order, created_at, id);
