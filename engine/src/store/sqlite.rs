//! SQLite specifics: file creation, durability settings, migrations, job claims.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Executor, SqlStr};

use super::Conn;

/// Adds `mode=rwc` so that the file is created on first start.
pub(super) fn url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The file of a `sqlite:` URL (`sqlite://x.db`, `sqlite:///abs/x.db`, `sqlite:x.db`).
pub(super) fn file(url: &str) -> String {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split('?').next().unwrap_or(rest).to_owned()
}

/// Durability first: WAL with `synchronous=FULL` fsyncs the log at every
/// commit, so an acknowledged command survives a power cut. Group commit
/// (see `runtime::writer`) is what keeps that affordable. Temporary storage
/// in memory keeps the per-command savepoints' sub-journal off the disk.
pub(super) async fn configure(conn: &mut Conn) -> Result<(), sqlx::Error> {
    conn.execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; \
         PRAGMA foreign_keys = ON; PRAGMA cache_size = -32000; PRAGMA temp_store = MEMORY;",
    )
    .await?;
    Ok(())
}

/// The embedded migrations.
pub(super) fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            Cow::Borrowed("init"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!("../../migrations/sqlite/0001_init.sql")),
            false,
        ),
        Migration::new(
            2,
            Cow::Borrowed("inbox order"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!("../../migrations/sqlite/0002_inbox_order.sql")),
            false,
        ),
        Migration::new(
            3,
            Cow::Borrowed("start request"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/sqlite/0003_start_request.sql"
            )),
            false,
        ),
    ])
}

/// Claims due jobs in one statement: SQLite has one writer, so no row locks are needed.
pub(super) const CLAIM_JOBS: &str = "UPDATE jobs SET status = 'running', lease_owner = $1, \
     lease_until = $2 + COALESCE(timeout_ms, $5), run_at = $2 + COALESCE(timeout_ms, $5), attempts = attempts + 1 \
     WHERE id IN (SELECT id FROM jobs WHERE status IN ('ready', 'running') AND run_at <= $3 \
                  ORDER BY run_at LIMIT CAST($4 AS BIGINT)) \
     RETURNING id, instance_id, token, node_id, kind, connector, operation, input, \
               idempotency_key, attempts, max_attempts, timeout_ms";
