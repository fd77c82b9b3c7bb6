-- Lists shown newest first, read without scanning every row: the requests
-- page and `GET /api/v1/instances` (no filter, or the versions a reader may
-- read) walk `instances_by_start` backwards and stop after a page, where
-- they read and sorted the whole table, states included (seconds per page
-- at a million instances); `GET /api/v1/messages?status=` walks
-- `messages_by_status`; a sign-out's clean-up of expired ended sessions
-- finds them by `ended_sessions_by_expiry`. Written only when a row is
-- added (or a message's status changes): an update of an instance's state
-- touches no index that does not hold it.
CREATE INDEX instances_by_start ON instances (started_at, id);
CREATE INDEX messages_by_status ON messages (status, received_at);
CREATE INDEX ended_sessions_by_expiry ON ended_sessions (expires_at);
