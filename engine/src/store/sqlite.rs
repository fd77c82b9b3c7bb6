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

/// The pool's connections (reads, and the migrations at start): WAL with
/// `synchronous=FULL`, so what they commit is on disk when COMMIT returns.
/// (The writer's own connection commits with `NORMAL` and syncs the log on
/// a thread of its own before answering: see `runtime::writer`.) Temporary
/// storage in memory keeps temporary B-trees off the disk. Each keeps at
/// most 8 MB of pages, as the in-place read connections do: with the
/// writer's 16 MB, SQLite's caches stay under 16 MB + 8 MB per connection
/// (about 120 MB on two cores) however large the database and however long
/// the server runs (the operating system caches the file besides).
pub(super) async fn configure(conn: &mut Conn) -> Result<(), sqlx::Error> {
    conn.execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; \
         PRAGMA foreign_keys = ON; PRAGMA cache_size = -8000; PRAGMA temp_store = MEMORY;",
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
        Migration::new(
            4,
            Cow::Borrowed("journal rowid"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/sqlite/0004_journal_rowid.sql"
            )),
            false,
        ),
        Migration::new(
            5,
            Cow::Borrowed("tasks by instance"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/sqlite/0005_tasks_by_instance.sql"
            )),
            false,
        ),
        Migration::new(
            6,
            Cow::Borrowed("tasks by business key"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/sqlite/0006_tasks_by_business_key.sql"
            )),
            false,
        ),
        Migration::new(
            7,
            Cow::Borrowed("jobs without key index"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/sqlite/0007_jobs_without_key_index.sql"
            )),
            false,
        ),
        Migration::new(
            8,
            Cow::Borrowed("instances census"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/sqlite/0008_instances_census.sql"
            )),
            false,
        ),
        Migration::new(
            9,
            Cow::Borrowed("ended sessions"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/sqlite/0009_ended_sessions.sql"
            )),
            false,
        ),
        Migration::new(
            10,
            Cow::Borrowed("list orders"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!("../../migrations/sqlite/0010_list_orders.sql")),
            false,
        ),
        Migration::new(
            11,
            Cow::Borrowed("retention"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!("../../migrations/sqlite/0011_retention.sql")),
            false,
        ),
        Migration::new(
            12,
            Cow::Borrowed("no tasks queue"),
            MigrationType::Simple,
            SqlStr::from_static(include_str!(
                "../../migrations/sqlite/0012_no_tasks_queue.sql"
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
               idempotency_key, attempts, max_attempts, timeout_ms, created_at";

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, StatementStatus};

    use super::super::sqlite_reads::inbox_values;
    use super::super::tasks::{Filter, list_sql};
    use super::{CLAIM_JOBS, migrator};

    /// The schema the engine migrates to, in memory.
    fn schema() -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory SQLite");
        for migration in migrator().iter() {
            conn.execute_batch(migration.sql.as_str())
                .expect("migration");
        }
        conn
    }

    /// Runs `sql` once per set of values (bound by `$N` name) and tells how
    /// often SQLite re-prepared it.
    fn reprepares(conn: &Connection, sql: &str, runs: &[Vec<rusqlite::types::Value>]) -> i32 {
        let mut stmt = conn.prepare(sql).expect("statement");
        for values in runs {
            for (i, v) in values.iter().enumerate() {
                let at = stmt
                    .parameter_index(&format!("${}", i + 1))
                    .expect("parameter name")
                    .expect("parameter present");
                stmt.raw_bind_parameter(at, v).expect("bind");
            }
            let mut rows = stmt.raw_query();
            while rows.next().expect("step").is_some() {}
        }
        stmt.get_status(StatementStatus::RePrepare)
    }

    /// A bare `LIMIT $1` makes SQLite plan with the bound value, so each
    /// new value re-prepares the statement (it was half the read path's CPU
    /// under load); the inbox's statement must stay prepared.
    #[test]
    fn an_inbox_page_is_not_re_prepared_for_new_values() {
        let conn = schema();
        // A role's inbox (lanes merged) and an instance's tasks (one sorted
        // statement): both statement forms.
        let inbox = |limit: i64, _: &str| Filter {
            roles: vec!["agente".to_owned(), "supervisor".to_owned()],
            limit,
            ..Filter::default()
        };
        let instance = |limit: i64, id: &str| Filter {
            roles: vec!["agente".to_owned()],
            instance_id: Some(id.to_owned()),
            limit,
            ..Filter::default()
        };
        for filter in [inbox, instance] {
            let sql = list_sql(&filter(10, "a"), false);
            let runs: Vec<Vec<rusqlite::types::Value>> = [(10, "a"), (20, "b"), (50, "c")]
                .into_iter()
                .map(|(limit, id)| inbox_values(&filter(limit, id)))
                .collect();
            assert_eq!(reprepares(&conn, &sql, &runs), 0, "{sql}");
            // The control: the same statement with a bare LIMIT is
            // re-prepared, so the assertion above can fail.
            let bare = sql.replace("CAST($1 AS BIGINT)", "$1");
            assert!(reprepares(&conn, &bare, &runs) > 0, "{bare}");
        }
    }

    #[test]
    fn the_job_claim_is_not_re_prepared_for_new_values() {
        use rusqlite::types::Value::{Integer, Text};
        let conn = schema();
        let sql = CLAIM_JOBS;
        let run = |n: i64| {
            vec![
                Text(format!("owner-{n}")),
                Integer(1_000 + n),
                Integer(n),
                Integer(n),
                Integer(30_000),
            ]
        };
        assert_eq!(reprepares(&conn, sql, &[run(1), run(2), run(3)]), 0);
    }

    /// Migration 7 keeps every job as it was (columns, order, the foreign
    /// key to its instance), drops the idempotency key's index and keeps
    /// the others.
    #[test]
    fn jobs_keep_their_rows_across_the_key_index_migration() {
        let conn = Connection::open_in_memory().expect("in-memory SQLite");
        conn.execute_batch("PRAGMA foreign_keys = ON;")
            .expect("pragma");
        let migrations: Vec<_> = migrator().iter().cloned().collect();
        let (before, after): (Vec<_>, Vec<_>) = migrations.into_iter().partition(|m| m.version < 7);
        assert!(!after.is_empty(), "migration 7 exists");
        for m in &before {
            conn.execute_batch(m.sql.as_str()).expect("old migration");
        }
        conn.execute_batch(
            "INSERT INTO definitions (id, code, version, content_hash, file_name, source, deployed_at) \
             VALUES (1, 'P', 1, 'h', 'p.yaml', '', 0); \
             INSERT INTO instances (id, definition_id, code, version, business_key, channel, status, \
                state, revision, started_at) VALUES ('i1', 1, 'P', 1, 'k', 'web', 'running', '{}', 1, 0); \
             INSERT INTO jobs (id, instance_id, token, node_id, kind, connector, operation, input, \
                idempotency_key, status, attempts, max_attempts, timeout_ms, run_at, lease_owner, \
                lease_until, last_error, created_at) VALUES \
             ('j2', 'i1', 1, 'n', 'service', 'naf', 'consultar', '{}', 'tramite:i1:n:j2', 'done', 1, 3, 500, 10, NULL, NULL, NULL, 5), \
             ('j1', 'i1', 2, 'm', 'timer', NULL, NULL, NULL, 'tramite:i1:m:j1', 'running', 2, 1, NULL, 20, 'nodo/1', 30, 'x', 6);",
        )
        .expect("old jobs");
        let rows = |conn: &Connection| -> Vec<Vec<rusqlite::types::Value>> {
            let mut stmt = conn
                .prepare("SELECT * FROM jobs ORDER BY rowid")
                .expect("query");
            let n = stmt.column_count();
            stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        let old = rows(&conn);
        for m in &after {
            conn.execute_batch(m.sql.as_str()).expect("new migration");
        }
        assert_eq!(rows(&conn), old, "every job, every column, in order");
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' ORDER BY name")
            .expect("query")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            indexes,
            ["jobs_by_instance", "jobs_due", "sqlite_autoindex_jobs_1"],
            "the key's unique index is gone, the others are there"
        );
        let fks: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_foreign_key_list('jobs')",
                [],
                |r| r.get(0),
            )
            .expect("foreign keys");
        assert_eq!(fks, 1, "a job still refers to its instance");
    }

    /// A database written before migration 4 keeps its history and its
    /// numbers, new entries continue after the last one, and the journal no
    /// longer touches `sqlite_sequence`.
    #[test]
    fn the_journal_keeps_its_sequence_across_the_rowid_migration() {
        let conn = Connection::open_in_memory().expect("in-memory SQLite");
        let migrations: Vec<_> = migrator().iter().cloned().collect();
        let (before, after): (Vec<_>, Vec<_>) = migrations.into_iter().partition(|m| m.version < 4);
        assert!(!after.is_empty(), "migration 4 exists");
        for m in &before {
            conn.execute_batch(m.sql.as_str()).expect("old migration");
        }
        let append = |instance: &str| {
            conn.execute(
                "INSERT INTO journal (instance_id, at, actor, kind) VALUES (?1, 1, 'engine', 'started')",
                [instance],
            )
            .expect("journal insert")
        };
        for i in ["a", "b", "a"] {
            append(i);
        }
        // An old journal whose numbers have a gap, as any history may.
        conn.execute("DELETE FROM journal WHERE seq = 2", [])
            .expect("gap");
        for m in &after {
            conn.execute_batch(m.sql.as_str()).expect("new migration");
        }
        append("b");
        let rows: Vec<(i64, String)> = conn
            .prepare("SELECT seq, instance_id FROM journal ORDER BY seq")
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            vec![
                (1, "a".to_owned()),
                (3, "a".to_owned()),
                (4, "b".to_owned())
            ]
        );
        let sequences: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_sequence WHERE name = 'journal'",
                [],
                |r| r.get(0),
            )
            .expect("sqlite_sequence");
        assert_eq!(sequences, 0, "the journal no longer uses AUTOINCREMENT");
        let index: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'journal_by_instance'",
                [],
                |r| r.get(0),
            )
            .expect("index");
        assert_eq!(index, 1, "the history's index is back");
    }
}
