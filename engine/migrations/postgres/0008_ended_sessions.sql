-- Web sessions signed out before they expired. A session is a signed
-- cookie that any node checks without the database; signing out must end
-- it on every node, so its id is kept here until it would have expired
-- anyway (rows past `expires_at` are deleted as new ones come).
CREATE TABLE ended_sessions (
    id TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
