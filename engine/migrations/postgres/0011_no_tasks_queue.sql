-- `tasks_queue` (status, due order) served only the task lists not limited
-- to roles; those now read one lane of `tasks_inbox` per role the deployed
-- procedures name (`Engine::tasks`). Dropped, a task's insert and each
-- change of its status write one index fewer. (SQLite also takes the
-- status out of `tasks_by_instance`, so that a claim or a completion
-- moves one index entry instead of three. Not here: PostgreSQL writes a
-- new entry in every index of a row whose indexed column changed, and the
-- status in that key lets an instance's lookup read only its open tasks'
-- rows: without it, four paired runs of the P06 benchmark gave 8 % less.)
DROP INDEX tasks_queue;
