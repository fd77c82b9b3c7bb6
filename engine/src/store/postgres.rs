//! PostgreSQL specifics: migrations and job claims that several engine
//! processes can run at once.

use std::borrow::Cow;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// Every connection's session: the engine's advisory locks (starts by
/// request id, deploys, message correlation) are taken and then the rows
/// read, which finds the other node's commit only under READ COMMITTED, a
/// fresh snapshot per statement. A database whose default is REPEATABLE READ
/// (common on managed services) would otherwise lose message deliveries.
/// A connection left inside a transaction by a frozen node holds its row
/// locks only a minute.
pub(super) async fn configure(
    conn: &mut sqlx::AnyConnection,
    reads: bool,
) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await?;
    conn.execute("SET idle_in_transaction_session_timeout = '60s'")
        .await?;
    if reads {
        // A read whose caller gave up (an HTTP request ends at 30 s) stops
        // too, rather than scanning on for nobody (an inbox filtered by a
        // variable reads instances' states). Not on the write connections:
        // a migration building an index on a large table may take longer.
        conn.execute(sqlx::AssertSqlSafe(format!(
            "SET statement_timeout = '{}s'",
            READ_TIMEOUT.as_secs()
        )))
        .await?;
    }
    Ok(())
}

/// The longest a statement on the read connections may run.
pub(crate) const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The embedded migrations (applied under PostgreSQL's advisory lock, so
/// that several nodes starting at once migrate exactly once).
pub(super) fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            Cow::Borrowed("init"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!("../../migrations/postgres/0001_init.sql")),
            false,
        ),
        Migration::new(
            2,
            Cow::Borrowed("inbox order"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/postgres/0002_inbox_order.sql"
            )),
            false,
        ),
        Migration::new(
            3,
            Cow::Borrowed("start request"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/postgres/0003_start_request.sql"
            )),
            false,
        ),
        Migration::new(
            4,
            Cow::Borrowed("tasks by instance"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/postgres/0004_tasks_by_instance.sql"
            )),
            false,
        ),
        Migration::new(
            5,
            Cow::Borrowed("tasks by business key"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/postgres/0005_tasks_by_business_key.sql"
            )),
            false,
        ),
        Migration::new(
            6,
            Cow::Borrowed("jobs without key index"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/postgres/0006_jobs_without_key_index.sql"
            )),
            false,
        ),
        Migration::new(
            7,
            Cow::Borrowed("instances census"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/postgres/0007_instances_census.sql"
            )),
            false,
        ),
        Migration::new(
            8,
            Cow::Borrowed("ended sessions"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/postgres/0008_ended_sessions.sql"
            )),
            false,
        ),
        Migration::new(
            9,
            Cow::Borrowed("list orders"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/postgres/0009_list_orders.sql"
            )),
            false,
        ),
        Migration::new(
            10,
            Cow::Borrowed("retention"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!("../../migrations/postgres/0010_retention.sql")),
            false,
        ),
        Migration::new(
            11,
            Cow::Borrowed("no tasks queue"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/postgres/0011_no_tasks_queue.sql"
            )),
            false,
        ),
    ])
}

/// Claims due jobs; `SKIP LOCKED` lets nodes claim side by side without
/// waiting on each other's rows, and never the same row twice.
pub(super) const CLAIM_JOBS: &str = "WITH due AS ( \
         SELECT id FROM jobs WHERE status IN ('ready', 'running') AND run_at <= $3 \
         ORDER BY run_at LIMIT CAST($4 AS BIGINT) FOR UPDATE SKIP LOCKED) \
     UPDATE jobs j SET status = 'running', lease_owner = $1, lease_until = $2 + COALESCE(timeout_ms, $5), run_at = $2 + COALESCE(timeout_ms, $5), \
         attempts = j.attempts + 1 \
     FROM due WHERE j.id = due.id \
     RETURNING j.id, j.instance_id, j.token, j.node_id, j.kind, j.connector, j.operation, \
               j.input, j.idempotency_key, j.attempts, j.max_attempts, j.timeout_ms, j.created_at";
