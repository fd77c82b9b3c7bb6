-- A start may carry the caller's own id for it (an IVR call id, a lead id):
-- a second start with the same id finds the first instance instead of
-- starting another, so a webhook delivered twice starts one instance.
ALTER TABLE instances ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX instances_by_request ON instances (code, request_id) WHERE request_id IS NOT NULL;
-- The messages an instance received, for its page.
CREATE INDEX messages_by_instance ON messages (instance_id);
