//! Storage: one SQL schema, two backends (SQLite embedded, PostgreSQL for
//! several engine processes), behind one `Store` and its transactions.
//!
//! Queries are written once, with `$N` placeholders that both backends
//! accept, and run through sqlx's `Any` driver — except on SQLite the
//! writer's statements (`sqlite_tx`) and the hot reads (`sqlite_reads`),
//! which run on rusqlite without a thread hop; what differs (connection
//! settings, migrations, how jobs are claimed) lives in `sqlite.rs` and
//! `postgres.rs`. One module per table, restate-style: each adds functions
//! over a connection inside a transaction.
//!
//! A bound `LIMIT` is written `LIMIT CAST($n AS BIGINT)`: SQLite (3.46 on)
//! plans a bare `LIMIT $n` with the bound value, so every new value
//! re-prepares the statement, which was half the read path's CPU under load.
//! The cast hides the value from the planner; the plans stay index-ordered.

pub mod definitions;
pub mod incidents;
pub mod instances;
pub mod jobs;
pub mod journal;
pub mod messages;
mod postgres;
pub mod sessions;
mod sqlite;
pub mod sqlite_reads;
pub mod sqlite_tx;
pub mod tasks;
mod tx;

pub use tx::{
    InstanceWrite, JobClaim, JobRetry, NewDefinition, Purge, Purged, Receipt, TaskCompletion, Tx,
    Written,
};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, ConnectOptions};
use std::str::FromStr;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A JSON column did not hold what it should.
    #[error("corrupt JSON in {table}.{column}: {source}")]
    Json {
        /// Table.
        table: &'static str,
        /// Column.
        column: &'static str,
        /// Parser's complaint.
        source: serde_json::Error,
    },
    /// SQLite refused or failed a statement (the writer's connection).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The SQLite log could not be opened or its folder synced.
    #[error("cannot open the SQLite write-ahead log: {source}")]
    LogFile {
        /// Operating system's complaint.
        source: std::io::Error,
    },
    /// The writer's thread could not start.
    #[error("cannot start the writer thread: {0}")]
    Thread(String),
    /// The URL names no supported database.
    #[error("unsupported database URL `{0}`: use sqlite://FILE or postgres://…")]
    UnsupportedUrl(String),
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A connection pool to the engine's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    writes: AnyPool,
    backend: Backend,
    sqlite_file: String,
    /// SQLite: the hot reads, in place (see [`sqlite_reads`]).
    reads: Option<std::sync::Arc<sqlite_reads::Reads>>,
}

/// A connection inside a transaction: what table functions take.
pub type Conn = AnyConnection;

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at
    /// `url`, with one write connection (see [`Store::open_with_writers`]).
    pub async fn open(url: &str) -> Result<Store, Error> {
        Store::open_with_writers(url, 1).await
    }

    /// Like [`Store::open`], with `writers` write connections on PostgreSQL
    /// (SQLite has one writer by construction).
    pub async fn open_with_writers(url: &str, writers: u32) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(Error::UnsupportedUrl(url.to_owned()));
        };
        let url = match backend {
            Backend::Sqlite => sqlite::url(url),
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let pool = |size: u32, reads: bool| {
            AnyPoolOptions::new()
                .max_connections(size)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        match backend {
                            Backend::Sqlite => sqlite::configure(conn).await?,
                            Backend::Postgres => postgres::configure(conn, reads).await?,
                        }
                        Ok(())
                    })
                })
                .connect_with(options.clone())
        };
        // Reads never make the writer wait for a connection: it has its own.
        let writes = pool(
            match backend {
                Backend::Sqlite => 1,
                Backend::Postgres => writers.max(1),
            },
            false,
        )
        .await?;
        match backend {
            Backend::Sqlite => sqlite::migrator().run(&writes).await?,
            Backend::Postgres => postgres::migrator().run(&writes).await?,
        }
        // PostgreSQL: 12 for reads, with 8 write lanes and one listener a
        // node holds 21 connections, so 4 nodes fit the server's default 100.
        let pool = pool(
            match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 12,
            },
            true,
        )
        .await?;
        let sqlite_file = sqlite::file(&url);
        let reads = match backend {
            // One per thread that may read at once, and a spare or two.
            Backend::Sqlite if !url.contains(":memory:") => {
                let threads = std::thread::available_parallelism().map_or(2, usize::from);
                Some(std::sync::Arc::new(sqlite_reads::Reads::open(
                    std::path::Path::new(&sqlite_file),
                    threads + 2,
                )?))
            }
            _ => None,
        };
        Ok(Store {
            pool,
            writes,
            backend,
            sqlite_file,
            reads,
        })
    }

    /// The SQLite database file `url` names, if it names one (not
    /// PostgreSQL, not a database in memory), before anything is opened.
    pub fn sqlite_file_of(url: &str) -> Option<std::path::PathBuf> {
        (url.starts_with("sqlite:") && !url.contains(":memory:"))
            .then(|| std::path::PathBuf::from(sqlite::file(&sqlite::url(url))))
    }

    /// The SQLite database file, for the writer's own connection.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        (self.backend == Backend::Sqlite).then(|| std::path::PathBuf::from(&self.sqlite_file))
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A task.
    pub async fn task(&self, id: &str) -> Result<Option<tasks::TaskRow>, Error> {
        match &self.reads {
            Some(reads) => reads.task(id),
            None => tasks::get(&mut *self.pool.acquire().await?, id).await,
        }
    }

    /// An instance (read, not locked).
    pub async fn instance(&self, id: &str) -> Result<Option<instances::InstanceRow>, Error> {
        match &self.reads {
            Some(reads) => reads.instance(id),
            None => instances::get(&mut *self.pool.acquire().await?, self.backend, id, false).await,
        }
    }

    /// Instances started by `parent`, oldest first.
    pub async fn children(&self, parent: &str) -> Result<Vec<instances::InstanceRow>, Error> {
        match &self.reads {
            Some(reads) => reads.children(parent),
            None => instances::children(&mut *self.pool.acquire().await?, parent).await,
        }
    }

    /// Tasks matching `filter`, soonest due first ([`tasks::list`]). A
    /// filter on a variable reads instances' states, so it may scan: it
    /// always runs on the pool.
    pub async fn tasks(&self, filter: &tasks::Filter) -> Result<Vec<tasks::TaskRow>, Error> {
        match &self.reads {
            Some(reads) if filter.variable.is_none() => reads.tasks(filter),
            _ => tasks::list(&mut *self.pool.acquire().await?, filter).await,
        }
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The writer's own connection.
    pub(crate) fn writes(&self) -> &AnyPool {
        &self.writes
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writes.close().await;
    }
}

/// A statement being bound (sqlx's `Any` driver).
pub(crate) type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Appends `head` and `n` copies of `row` to `sql`, renumbering `row`'s
/// parameters (`$1` to `$params`) from `$first` on, one run of `params` per
/// copy: a multi-row `INSERT` that other statements can embed in a `WITH`
/// after their own parameters.
pub(crate) fn insert_rows(
    sql: &mut String,
    head: &str,
    row: &str,
    params: usize,
    first: usize,
    n: usize,
) {
    use std::fmt::Write as _;
    sql.push_str(head);
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        let mut rest = row;
        while let Some(at) = rest.find('$') {
            sql.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let k: usize = rest[..digits].parse().expect("a numbered parameter");
            let _ = write!(sql, "{}", first + i * params + k - 1);
            rest = &rest[digits..];
        }
        sql.push_str(rest);
    }
}

/// Hands `each` the rows of `rows` one at a time as they are read (a
/// range may hold more than memory should), letting other tasks run every
/// 256 rows: `each` may be CPU work (an indicator's condition per row).
pub(crate) async fn for_each_row(
    mut rows: impl futures_util::Stream<Item = Result<sqlx::any::AnyRow, sqlx::Error>> + Unpin,
    mut each: impl FnMut(&sqlx::any::AnyRow) -> Result<(), Error>,
) -> Result<(), Error> {
    use futures_util::TryStreamExt;
    let mut n = 0u32;
    while let Some(r) = rows.try_next().await? {
        each(&r)?;
        n += 1;
        if n.is_multiple_of(256) {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

/// Parses a JSON column.
pub(crate) fn json<T: serde::de::DeserializeOwned>(
    text: &str,
    table: &'static str,
    column: &'static str,
) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|source| Error::Json {
        table,
        column,
        source,
    })
}

#[cfg(test)]
mod tests {
    /// Each backend's migrator is a hand-written list: a file added to its
    /// folder but not to the list would never run (a census index once
    /// waited there). Every file is in the list, under its own number.
    #[test]
    fn every_migration_file_is_embedded() {
        for (backend, migrator) in [
            ("sqlite", super::sqlite::migrator()),
            ("postgres", super::postgres::migrator()),
        ] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let mut files: Vec<(i64, String)> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "sql"))
                .map(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    let number = name[..name.find('_').unwrap()].parse().unwrap();
                    (number, std::fs::read_to_string(&p).unwrap())
                })
                .collect();
            files.sort();
            let embedded: Vec<(i64, String)> = migrator
                .iter()
                .map(|m| (m.version, m.sql.as_str().to_owned()))
                .collect();
            assert_eq!(
                embedded, files,
                "{backend}: the migrator and {dir:?} differ"
            );
        }
    }

    /// Rows embedded after another statement's parameters: each copy's
    /// parameters follow the last, a repeated one stays repeated, and
    /// two-digit numbers are read whole.
    #[test]
    fn insert_rows_renumber_each_copy() {
        let mut sql = String::from("WITH r AS (");
        super::insert_rows(
            &mut sql,
            "INSERT INTO t (a, b, c) VALUES ",
            "($1, $2, COALESCE($2, 0), $10)",
            10,
            8,
            2,
        );
        assert_eq!(
            sql,
            "WITH r AS (INSERT INTO t (a, b, c) VALUES \
             ($8, $9, COALESCE($9, 0), $17), ($18, $19, COALESCE($19, 0), $27)"
        );
    }
}
