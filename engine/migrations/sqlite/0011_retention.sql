-- Retention (`tramite serve --retention`): ended instances are found by
-- when they ended, oldest first, without reading the running ones. Only an
-- ended instance has an entry, written once, when it ends.
CREATE INDEX instances_by_end ON instances (ended_at) WHERE ended_at IS NOT NULL;
