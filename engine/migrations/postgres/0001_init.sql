-- tramite schema, PostgreSQL. Times are milliseconds since the Unix epoch (UTC).
-- JSON documents are stored as TEXT.

CREATE TABLE definitions (
    id           BIGSERIAL PRIMARY KEY,
    code         TEXT    NOT NULL,
    version      BIGINT NOT NULL,
    content_hash TEXT    NOT NULL,
    file_name    TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    deployed_at  BIGINT NOT NULL,
    CONSTRAINT definitions_code_version UNIQUE (code, version),
    CONSTRAINT definitions_code_hash UNIQUE (code, content_hash)
);

CREATE TABLE instances (
    id            TEXT    PRIMARY KEY,
    definition_id BIGINT NOT NULL REFERENCES definitions (id),
    code          TEXT    NOT NULL,
    version       BIGINT NOT NULL,
    business_key  TEXT    NOT NULL,
    channel       TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    outcome       TEXT,
    state         TEXT    NOT NULL,
    revision      BIGINT NOT NULL,
    parent_id     TEXT,
    parent_token  BIGINT,
    started_at    BIGINT NOT NULL,
    ended_at      BIGINT,
    cancel_reason TEXT
);
CREATE INDEX instances_by_code ON instances (code, status, started_at);
CREATE INDEX instances_by_business_key ON instances (business_key);
CREATE INDEX instances_by_parent ON instances (parent_id);

CREATE TABLE tasks (
    id           TEXT    PRIMARY KEY,
    instance_id  TEXT    NOT NULL REFERENCES instances (id),
    token        BIGINT NOT NULL,
    node_id      TEXT    NOT NULL,
    code         TEXT    NOT NULL,
    business_key TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    assignee     TEXT,
    outcome      TEXT,
    data         TEXT,
    created_at   BIGINT NOT NULL,
    due_at       BIGINT,
    completed_at BIGINT,
    completed_by TEXT
);
CREATE INDEX tasks_inbox ON tasks (role, status, due_at);
CREATE INDEX tasks_by_instance ON tasks (instance_id);

CREATE TABLE jobs (
    id              TEXT    PRIMARY KEY,
    instance_id     TEXT    NOT NULL REFERENCES instances (id),
    token           BIGINT NOT NULL,
    node_id         TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    connector       TEXT,
    operation       TEXT,
    input           TEXT,
    idempotency_key TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        BIGINT NOT NULL,
    max_attempts    BIGINT NOT NULL,
    timeout_ms      BIGINT,
    run_at          BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    CONSTRAINT jobs_idempotency_key UNIQUE (idempotency_key)
);
CREATE INDEX jobs_due ON jobs (status, run_at);
CREATE INDEX jobs_by_instance ON jobs (instance_id);

CREATE TABLE incidents (
    id          TEXT    PRIMARY KEY,
    instance_id TEXT    NOT NULL REFERENCES instances (id),
    job_id      TEXT,
    node_id     TEXT    NOT NULL,
    token       BIGINT NOT NULL,
    message     TEXT    NOT NULL,
    after_effect BIGINT NOT NULL DEFAULT 0,
    status      TEXT    NOT NULL,
    created_at  BIGINT NOT NULL,
    resolved_at BIGINT,
    resolved_by TEXT,
    resolution  TEXT
);
CREATE INDEX incidents_by_status ON incidents (status, created_at);
CREATE INDEX incidents_by_instance ON incidents (instance_id);

CREATE TABLE subscriptions (
    id              TEXT    PRIMARY KEY,
    instance_id     TEXT    NOT NULL REFERENCES instances (id),
    token           BIGINT NOT NULL,
    node_id         TEXT    NOT NULL,
    message_name    TEXT    NOT NULL,
    correlation_key TEXT    NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX subscriptions_by_key ON subscriptions (message_name, correlation_key);
CREATE INDEX subscriptions_by_instance ON subscriptions (instance_id);

CREATE TABLE messages (
    id              TEXT    PRIMARY KEY,
    message_name    TEXT    NOT NULL,
    correlation_key TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    instance_id     TEXT,
    received_at     BIGINT NOT NULL,
    expires_at      BIGINT
);
CREATE INDEX messages_pending ON messages (message_name, correlation_key, status);

CREATE TABLE journal (
    seq         BIGSERIAL PRIMARY KEY,
    instance_id TEXT    NOT NULL,
    at          BIGINT NOT NULL,
    actor       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    node_id     TEXT,
    data        TEXT
);
CREATE INDEX journal_by_instance ON journal (instance_id, seq);
