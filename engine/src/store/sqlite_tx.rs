//! The SQLite writer's storage: rusqlite on one thread. Every statement is a
//! function call on a cached prepared statement — no channel and no thread
//! switch per statement, which is what bounded the writer on sqlx's SQLite
//! driver (see docs/benchmarks.md). Same schema and same semantics as the
//! sqlx functions of the table modules.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::definitions::DefinitionRow;
use super::incidents::IncidentRow;
use super::instances::InstanceRow;
use super::jobs::{ClaimedJob, NewJob};
use super::messages::{MessageRow, NewSubscription, Recorded, Subscription};
use super::tasks::{NewTask, TaskRow};
use super::tx::{JobClaim, NewDefinition, Purge, Purged, TaskCompletion, Tx};
use super::{Backend, Error, journal, json};

/// Opens the writer's connection on the database file at `path`.
///
/// Its page cache is 16 MB, not more: when a B-tree split reorders sibling
/// pages, SQLite parks one under a page number past the end of the file,
/// and the commit that follows then walks the cache's whole hash table
/// (`pcache1TruncateUnsafe`) — 5 % of the writer's time with a 64 MB cache
/// in a profile of the P06 benchmark, none visible with 16 MB. Pages the
/// cache misses come from the operating system's cache. The writer's own
/// checkpoint is a backstop at [`BACKSTOP_PAGES`] ([`backstop`]): a thread
/// of its own checkpoints (see `runtime::writer`).
///
/// `synchronous = NORMAL`: COMMIT writes the log without waiting for the
/// disk, and the writer's caller syncs the log with [`LogFile`] before it
/// acknowledges anything, on another thread, while the next batch runs.
/// Checkpoints still sync the log before copying it into the database file.
fn open(path: &std::path::Path) -> Result<Connection, Error> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; \
         PRAGMA foreign_keys = ON; PRAGMA cache_size = -16000; PRAGMA temp_store = MEMORY;",
    )?;
    // In place of SQLite's automatic checkpoint (which this replaces).
    conn.wal_hook(Some(backstop));
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// The log's length, in pages, from which the writer's commits checkpoint
/// it themselves: the checkpoint thread does it all along, but under
/// continuous load the log only starts over after a checkpoint by the
/// writer (docs/benchmarks.md, "The completion tail on SQLite").
pub const BACKSTOP_PAGES: std::ffi::c_int = 10_000;

thread_local! {
    /// This thread's "the log could not be synced" flag: the writer's
    /// thread sets it ([`watch_log_sync`]) for [`backstop`], which SQLite
    /// calls with no room for state of its own.
    static LOG_SYNC_FAILED: std::cell::RefCell<Option<std::sync::Arc<std::sync::atomic::AtomicBool>>> =
        const { std::cell::RefCell::new(None) };
}

/// Tells the commits of this thread's connections whether a sync of the
/// log has failed (the writer's flag).
pub fn watch_log_sync(failed: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    LOG_SYNC_FAILED.with(|f| *f.borrow_mut() = Some(failed));
}

/// SQLite's automatic checkpoint, as SQLite runs it after a commit (a
/// passive checkpoint from [`BACKSTOP_PAGES`] on), but none once a sync
/// of the log has failed — the log may hold frames the disk never got,
/// and a checkpoint copies them without checking their checksums — and an
/// I/O error of its own counts as such a failure (SQLite's own checkpoint
/// drops it). Always `Ok`: the commit before it stands either way, and an
/// error here would make it look failed, and its commands run again.
fn backstop(wal: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    use std::sync::atomic::Ordering;
    if pages < BACKSTOP_PAGES {
        return Ok(());
    }
    let failed = LOG_SYNC_FAILED.with(|f| f.borrow().clone());
    if failed.as_ref().is_some_and(|f| f.load(Ordering::Acquire)) {
        return Ok(());
    }
    match wal.checkpoint() {
        Ok(()) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::SystemIoFailure =>
        {
            tracing::error!(error = %e, "the writer's WAL checkpoint could not write or sync; the engine takes no more changes until it is restarted");
            if let Some(failed) = failed {
                failed.store(true, Ordering::Release);
            }
        }
        Err(e) => tracing::warn!(error = %e, "the writer's WAL checkpoint failed"),
    }
    Ok(())
}

/// The SQLite writer's connection, with the running instances and the open
/// tasks it wrote lately.
///
/// SQLite has one writer by construction, so what this connection last
/// wrote to an instance is what the database holds: a command on an
/// instance the writer wrote lately skips the row's read and the parse of
/// its JSON state. The cache follows the transaction: what a rolled-back
/// transaction or savepoint wrote is dropped from it, and a commit that fails
/// drops everything. Should anything else ever write an instance, the
/// update's revision guard still refuses the stale copy (and drops it).
pub struct Writing {
    conn: Connection,
    /// Running instances.
    instances: Kept<InstanceRow>,
    /// Open tasks this writer created: completing one skips reading it back
    /// (that read was 4.6 % of the writer's instructions in the P06
    /// benchmark). Any other change to a task drops it.
    tasks: Kept<TaskRow>,
    /// The id the next version gets, at least (see `insert_definition`).
    next_definition_id: i64,
}

impl Writing {
    /// Opens the writer's connection on the database file at `path`.
    pub fn open(path: &std::path::Path) -> Result<Writing, Error> {
        Ok(Writing {
            conn: open(path)?,
            instances: Kept::new(CACHED_INSTANCES),
            tasks: Kept::new(CACHED_TASKS),
            next_definition_id: 0,
        })
    }

    /// Starts a write transaction.
    pub fn begin(&mut self) -> Result<(), Error> {
        Ok(self.conn.execute_batch("BEGIN IMMEDIATE")?)
    }

    /// Commits the transaction.
    pub fn commit(&mut self) -> Result<(), Error> {
        let committed = self.conn.execute_batch("COMMIT");
        if committed.is_err() {
            // Whatever became of the transaction, the cache no longer vouches for it.
            self.instances.rows.clear();
            self.tasks.rows.clear();
        }
        self.instances.settled();
        self.tasks.settled();
        Ok(committed?)
    }

    /// Rolls the transaction back (if one is open).
    pub fn rollback(&mut self) -> Result<(), Error> {
        self.instances.forget_since(0);
        self.tasks.forget_since(0);
        if self.conn.is_autocommit() {
            return Ok(());
        }
        Ok(self.conn.execute_batch("ROLLBACK")?)
    }

    /// Opens the savepoint of one command.
    pub fn savepoint(&mut self) -> Result<(), Error> {
        self.instances.savepoint();
        self.tasks.savepoint();
        Ok(self.conn.execute_batch("SAVEPOINT command")?)
    }

    /// Keeps what the command did.
    pub fn release(&mut self) -> Result<(), Error> {
        Ok(self.conn.execute_batch("RELEASE command")?)
    }

    /// Undoes what the command did.
    pub fn rollback_to_savepoint(&mut self) -> Result<(), Error> {
        self.instances.forget_since(self.instances.mark);
        self.tasks.forget_since(self.tasks.mark);
        Ok(self
            .conn
            .execute_batch("ROLLBACK TO command; RELEASE command")?)
    }
}

/// The database's write-ahead log (`<file>-wal`), opened to be synced.
///
/// An fsync covers every write made to the file before it, through any
/// descriptor, so one sync after a COMMIT returned makes that commit — and
/// every earlier one — durable. SQLite keeps no locks on the log (they are on
/// the database and `-shm` files), so this descriptor of its own is safe to
/// open and close; and the log is never replaced while the writer's
/// connection is open (SQLite deletes it only when the last connection
/// closes, and truncates it in place).
#[derive(Debug)]
pub struct LogFile(std::fs::File);

impl LogFile {
    /// Opens the log of the database at `db`, which the writer's connection
    /// ([`Writing::open`]) has created, and syncs its folder once, so that
    /// the log's name is as durable as its contents.
    pub fn open(db: &std::path::Path) -> Result<LogFile, Error> {
        let mut name = db.as_os_str().to_owned();
        name.push("-wal");
        let log = std::fs::File::open(&name).map_err(|source| Error::LogFile { source })?;
        let folder = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        std::fs::File::open(folder)
            .and_then(|f| f.sync_all())
            .map_err(|source| Error::LogFile { source })?;
        Ok(LogFile(log))
    }

    /// Waits until everything written to the log so far is on disk.
    pub fn sync(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
}

/// Most instances the writer keeps: far more than the instances in flight
/// under load (a few hundred), few enough to stay small next to SQLite's
/// page caches.
const CACHED_INSTANCES: usize = 2_048;

/// Most open tasks the writer keeps: a task's completion usually follows
/// its creation within minutes, and a miss only costs the read.
const CACHED_TASKS: usize = 4_096;

/// Rows by id as the writer's connection last wrote them, following the
/// transaction: what a rolled-back transaction or savepoint wrote is
/// forgotten with it.
struct Kept<T> {
    rows: std::collections::HashMap<String, T>,
    /// Ids written in the open transaction, in order.
    written: Vec<String>,
    /// Where in `written` the open savepoint began.
    mark: usize,
    capacity: usize,
}

impl<T: Clone> Kept<T> {
    fn new(capacity: usize) -> Kept<T> {
        Kept {
            rows: std::collections::HashMap::new(),
            written: Vec::new(),
            mark: 0,
            capacity,
        }
    }

    fn get(&self, id: &str) -> Option<T> {
        self.rows.get(id).cloned()
    }

    /// Takes the copy of `id` out, if any, without cloning it: whoever
    /// takes it gives the changed row back with [`Kept::wrote`] or leaves
    /// the row to be read from the database.
    fn take(&mut self, id: &str) -> Option<T> {
        self.rows.remove(id)
    }

    /// Records that the open transaction wrote `row`.
    fn wrote(&mut self, id: &str, row: T) {
        self.written.push(id.to_owned());
        if self.rows.len() >= self.capacity && !self.rows.contains_key(id) {
            // Any entry: a miss only costs the read this cache saves.
            if let Some(evict) = self.rows.keys().next().cloned() {
                self.rows.remove(&evict);
            }
        }
        self.rows.insert(id.to_owned(), row);
    }

    /// Drops the copy of `id`, if any: the row changed in a way not kept.
    /// Nothing to undo should the change be rolled back: a row not kept is
    /// read from the database.
    fn forget(&mut self, id: &str) {
        self.rows.remove(id);
    }

    /// Drops what the transaction wrote after position `from` of `written`.
    fn forget_since(&mut self, from: usize) {
        for id in self.written.drain(from.min(self.written.len())..) {
            self.rows.remove(&id);
        }
        self.mark = self.mark.min(self.written.len());
    }

    /// A savepoint opens: what follows may be undone alone.
    fn savepoint(&mut self) {
        self.mark = self.written.len();
    }

    /// The transaction ended with its writes kept: nothing left to undo.
    fn settled(&mut self) {
        self.written.clear();
        self.mark = 0;
    }
}

const DEFINITION: &str = "id, code, version, content_hash, file_name, source, deployed_at";

fn definition(r: &Row<'_>) -> rusqlite::Result<DefinitionRow> {
    Ok(DefinitionRow {
        id: r.get("id")?,
        code: r.get("code")?,
        version: r.get("version")?,
        content_hash: r.get("content_hash")?,
        file_name: r.get("file_name")?,
        source: r.get("source")?,
        deployed_at: r.get("deployed_at")?,
    })
}

/// Column `i` of `r`, which is `name`: by index, because rusqlite's lookup
/// by name compares every column's name on every read (4 % of the writer's
/// time in a profile of the P06 benchmark). Debug builds, and so the tests,
/// check the name.
fn col<T: rusqlite::types::FromSql>(r: &Row<'_>, i: usize, name: &str) -> rusqlite::Result<T> {
    debug_assert_eq!(r.as_ref().column_name(i).ok(), Some(name), "column {i}");
    r.get(i)
}

pub(super) fn instance(r: &Row<'_>) -> rusqlite::Result<(InstanceRow, String)> {
    let state: String = col(r, 8, "state")?;
    Ok((
        InstanceRow {
            id: col(r, 0, "id")?,
            definition_id: col(r, 1, "definition_id")?,
            code: col(r, 2, "code")?,
            version: col(r, 3, "version")?,
            business_key: col(r, 4, "business_key")?,
            channel: col(r, 5, "channel")?,
            status: col(r, 6, "status")?,
            outcome: col(r, 7, "outcome")?,
            state: Default::default(),
            revision: col(r, 9, "revision")?,
            parent_id: col(r, 10, "parent_id")?,
            parent_token: col(r, 11, "parent_token")?,
            started_at: col(r, 12, "started_at")?,
            ended_at: col(r, 13, "ended_at")?,
            cancel_reason: col(r, 14, "cancel_reason")?,
        },
        state,
    ))
}

const TASK: &str = "id, instance_id, token, node_id, code, business_key, role, status, assignee, \
    outcome, data, created_at, due_at, completed_at, completed_by";

pub(super) fn task(r: &Row<'_>) -> rusqlite::Result<(TaskRow, Option<String>)> {
    Ok((
        TaskRow {
            id: col(r, 0, "id")?,
            instance_id: col(r, 1, "instance_id")?,
            token: col(r, 2, "token")?,
            node_id: col(r, 3, "node_id")?,
            code: col(r, 4, "code")?,
            business_key: col(r, 5, "business_key")?,
            role: col(r, 6, "role")?,
            status: col(r, 7, "status")?,
            assignee: col(r, 8, "assignee")?,
            outcome: col(r, 9, "outcome")?,
            data: None,
            created_at: col(r, 11, "created_at")?,
            due_at: col(r, 12, "due_at")?,
            completed_at: col(r, 13, "completed_at")?,
            completed_by: col(r, 14, "completed_by")?,
        },
        col(r, 10, "data")?,
    ))
}

const INCIDENT: &str = "id, instance_id, job_id, node_id, token, message, after_effect, status, \
    created_at, resolved_at, resolved_by, resolution";

fn incident(r: &Row<'_>) -> rusqlite::Result<IncidentRow> {
    Ok(IncidentRow {
        id: r.get("id")?,
        instance_id: r.get("instance_id")?,
        job_id: r.get("job_id")?,
        node_id: r.get("node_id")?,
        token: r.get("token")?,
        message: r.get("message")?,
        after_effect: r.get::<_, i64>("after_effect")? != 0,
        status: r.get("status")?,
        created_at: r.get("created_at")?,
        resolved_at: r.get("resolved_at")?,
        resolved_by: r.get("resolved_by")?,
        resolution: r.get("resolution")?,
    })
}

/// An instance by id (the writer's and the readers' statement).
pub(super) fn instance_by_id(conn: &Connection, id: &str) -> Result<Option<InstanceRow>, Error> {
    let sql = format!(
        "SELECT {} FROM instances WHERE id = ?1",
        super::instances::COLUMNS
    );
    let found = conn
        .prepare_cached(&sql)?
        .query_row(params![id], instance)
        .optional()?;
    found.map(with_state).transpose()
}

/// An instance row with its JSON state parsed.
pub(super) fn with_state((mut row, state): (InstanceRow, String)) -> Result<InstanceRow, Error> {
    row.state = json(&state, "instances", "state")?;
    Ok(row)
}

/// A task by id (the writer's and the readers' statement).
pub(super) fn task_by_id(conn: &Connection, id: &str) -> Result<Option<TaskRow>, Error> {
    let sql = format!("SELECT {TASK} FROM tasks WHERE id = ?1");
    let found = conn
        .prepare_cached(&sql)?
        .query_row(params![id], task)
        .optional()?;
    found.map(with_data).transpose()
}

/// A task row with its JSON data parsed.
pub(super) fn with_data((mut row, data): (TaskRow, Option<String>)) -> Result<TaskRow, Error> {
    row.data = data.map(|d| json(&d, "tasks", "data")).transpose()?;
    Ok(row)
}

impl Tx for Writing {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn definition_by_hash(
        &mut self,
        code: &str,
        hash: &str,
    ) -> Result<Option<DefinitionRow>, Error> {
        let sql =
            format!("SELECT {DEFINITION} FROM definitions WHERE code = ?1 AND content_hash = ?2");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![code, hash], definition)
            .optional()?)
    }

    async fn latest_definition_id(&mut self, code: &str) -> Result<Option<i64>, Error> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id FROM definitions WHERE code = ?1 ORDER BY version DESC LIMIT 1",
            )?
            .query_row(params![code], |r| r.get(0))
            .optional()?)
    }

    async fn definition_by_id(&mut self, id: i64) -> Result<Option<DefinitionRow>, Error> {
        let sql = format!("SELECT {DEFINITION} FROM definitions WHERE id = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![id], definition)
            .optional()?)
    }

    async fn all_definitions(&mut self) -> Result<Vec<DefinitionRow>, Error> {
        let sql = format!("SELECT {DEFINITION} FROM definitions ORDER BY code, version DESC");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], definition)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The version's id is never one this process gave before, even to a
    /// version rolled back: SQLite's `INTEGER PRIMARY KEY` would give the
    /// highest id plus one again, and the compiled processes are cached by
    /// id for the life of the process.
    async fn insert_definition(&mut self, n: NewDefinition<'_>) -> Result<DefinitionRow, Error> {
        let (next, stored): (i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT (SELECT COALESCE(MAX(version), 0) + 1 FROM definitions WHERE code = ?1), \
                        (SELECT COALESCE(MAX(id), 0) + 1 FROM definitions)",
            )?
            .query_row(params![n.code], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let id = stored.max(self.next_definition_id);
        self.next_definition_id = id + 1;
        let sql = format!(
            "INSERT INTO definitions (id, code, version, content_hash, file_name, source, deployed_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING {DEFINITION}"
        );
        Ok(self.conn.prepare_cached(&sql)?.query_row(
            params![id, n.code, next, n.hash, n.file_name, n.source, n.now],
            definition,
        )?)
    }

    async fn lock_instance(&mut self, _id: &str) -> Result<(), Error> {
        Ok(()) // one writer: nothing to wait for
    }

    async fn instance(&mut self, id: &str, lock: bool) -> Result<Option<InstanceRow>, Error> {
        // A read for update takes the copy rather than cloning it (two
        // copies of the state per command were 3 % of the writer's
        // instructions): the command gives the new row back with
        // `keep_instance`; one that writes nothing leaves the row unkept,
        // to be read from the database next time.
        let kept = if lock {
            self.instances.take(id)
        } else {
            self.instances.get(id)
        };
        if let Some(row) = kept {
            return Ok(Some(row));
        }
        // Not kept on a read: the command's write keeps it, should it succeed.
        instance_by_id(&self.conn, id)
    }

    async fn insert_instance(&mut self, i: &InstanceRow) -> Result<(), Error> {
        let state = serde_json::to_string(&i.state).expect("state serializes");
        self.conn.prepare_cached(
            "INSERT INTO instances (id, definition_id, code, version, business_key, channel, status, \
             outcome, state, revision, parent_id, parent_token, started_at, ended_at, cancel_reason) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?
        .execute(params![
            i.id,
            i.definition_id,
            i.code,
            i.version,
            i.business_key,
            i.channel,
            i.status,
            i.outcome,
            state,
            i.revision,
            i.parent_id,
            i.parent_token,
            i.started_at,
            i.ended_at,
            i.cancel_reason
        ])?;
        Ok(())
    }

    async fn update_instance(&mut self, i: &InstanceRow) -> Result<bool, Error> {
        let state = serde_json::to_string(&i.state).expect("state serializes");
        let still_running = i.status == "running"
            && i.outcome.is_none()
            && i.ended_at.is_none()
            && i.cancel_reason.is_none();
        // SQLite moves an index entry for every column a SET names, changed
        // or not: setting `status` to what it was moved the instance's entry
        // in `instances_by_code` on every command. An instance that runs on,
        // as nearly every update leaves it, gets its state and revision only
        // (the guard makes sure nothing else had to change); any other
        // update, or that one failing its guard, writes every column.
        let mut n = 0;
        if still_running {
            n = self
                .conn.prepare_cached(
                    "UPDATE instances SET state = ?2, revision = revision + 1 WHERE id = ?1 AND revision = ?3 \
                     AND status = 'running' AND outcome IS NULL AND ended_at IS NULL AND cancel_reason IS NULL",
                )?
                .execute(params![i.id, state, i.revision])?;
        }
        if n == 0 {
            n = self
                .conn.prepare_cached(
                    "UPDATE instances SET status = ?2, outcome = ?3, state = ?4, revision = revision + 1, \
                     ended_at = ?5, cancel_reason = ?6 WHERE id = ?1 AND revision = ?7",
                )?
                .execute(params![i.id, i.status, i.outcome, state, i.ended_at, i.cancel_reason, i.revision])?;
        }
        // Whatever copy there was is not the stored row now (or was not
        // the stored one, if the guard refused it): `keep_instance` keeps
        // the new one.
        self.instances.forget(&i.id);
        Ok(n == 1)
    }

    fn keep_instance(&mut self, row: InstanceRow) {
        // An ended instance is not kept: commands on it are rare and
        // refused anyway.
        if row.status == "running" {
            let id = row.id.clone();
            self.instances.wrote(&id, row);
        } else {
            self.instances.forget(&row.id);
        }
    }

    async fn insert_task(&mut self, t: &NewTask<'_>) -> Result<(), Error> {
        self.conn.prepare_cached(
            "INSERT INTO tasks (id, instance_id, token, node_id, code, business_key, role, status, \
             created_at, due_at, due_order) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', ?8, ?9, \
             COALESCE(?9, 9223372036854775807))",
        )?
        .execute(params![
            t.id,
            t.instance_id,
            i64::from(t.token),
            t.node_id,
            t.code,
            t.business_key,
            t.role,
            t.created_at,
            t.due_at
        ])?;
        // The row as the database now holds it (`task_by_id` would read
        // back exactly this; a test compares the two).
        let row = TaskRow {
            id: t.id.to_owned(),
            instance_id: t.instance_id.to_owned(),
            token: i64::from(t.token),
            node_id: t.node_id.to_owned(),
            code: t.code.to_owned(),
            business_key: t.business_key.to_owned(),
            role: t.role.to_owned(),
            status: "open".to_owned(),
            assignee: None,
            outcome: None,
            data: None,
            created_at: t.created_at,
            due_at: t.due_at,
            completed_at: None,
            completed_by: None,
        };
        self.tasks.wrote(t.id, row);
        Ok(())
    }

    async fn task(&mut self, id: &str) -> Result<Option<TaskRow>, Error> {
        if let Some(row) = self.tasks.get(id) {
            return Ok(Some(row));
        }
        task_by_id(&self.conn, id)
    }

    async fn claim_task(&mut self, id: &str, user: &str) -> Result<bool, Error> {
        self.tasks.forget(id);
        let n = self
            .conn.prepare_cached("UPDATE tasks SET status = 'claimed', assignee = ?2 WHERE id = ?1 AND status = 'open'")?
            .execute(params![id, user])?;
        Ok(n == 1)
    }

    async fn unclaim_task(&mut self, id: &str, user: &str) -> Result<bool, Error> {
        self.tasks.forget(id);
        let n = self
            .conn.prepare_cached(
                "UPDATE tasks SET status = 'open', assignee = NULL WHERE id = ?1 AND status = 'claimed' AND assignee = ?2",
            )?
            .execute(params![id, user])?;
        Ok(n == 1)
    }

    async fn assign_task(&mut self, id: &str, user: &str) -> Result<bool, Error> {
        self.tasks.forget(id);
        let n = self
            .conn.prepare_cached(
                "UPDATE tasks SET status = 'claimed', assignee = ?2 WHERE id = ?1 AND status IN ('open', 'claimed')",
            )?
            .execute(params![id, user])?;
        Ok(n == 1)
    }

    async fn complete_task(&mut self, d: TaskCompletion<'_>) -> Result<bool, Error> {
        self.tasks.forget(d.id);
        let n = self
            .conn.prepare_cached(
                "UPDATE tasks SET status = 'completed', outcome = ?2, data = ?3, completed_at = ?4, \
                 completed_by = ?5, assignee = COALESCE(assignee, ?5) \
                 WHERE id = ?1 AND status IN ('open', 'claimed') AND (assignee IS NULL OR assignee = ?5)",
            )?
            .execute(params![d.id, d.outcome, serde_json::to_string(&d.data).expect("JSON serializes"), d.now, d.user])?;
        Ok(n == 1)
    }

    async fn cancel_task(&mut self, id: &str, now: i64) -> Result<(), Error> {
        self.tasks.forget(id);
        self.conn.prepare_cached(
            "UPDATE tasks SET status = 'cancelled', completed_at = ?2 WHERE id = ?1 AND status IN ('open', 'claimed')",
        )?
        .execute(params![id, now])?;
        Ok(())
    }

    async fn insert_job(&mut self, j: &NewJob<'_>) -> Result<(), Error> {
        self.conn.prepare_cached(
            "INSERT INTO jobs (id, instance_id, token, node_id, kind, connector, operation, input, \
             idempotency_key, status, attempts, max_attempts, timeout_ms, run_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'ready', 0, ?10, ?11, ?12, ?13)",
        )?
        .execute(params![
            j.id,
            j.instance_id,
            i64::from(j.token),
            j.node_id,
            j.kind,
            j.connector,
            j.operation,
            j.input,
            j.idempotency_key,
            i64::from(j.max_attempts),
            j.timeout_ms,
            j.run_at,
            j.created_at
        ])?;
        Ok(())
    }

    async fn claim_jobs(&mut self, c: JobClaim<'_>) -> Result<Vec<ClaimedJob>, Error> {
        let sql = super::sqlite::CLAIM_JOBS.replace('$', "?");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![c.owner, c.lease_until, c.now, c.limit, c.default_timeout_ms],
            |r| {
                Ok((
                    ClaimedJob {
                        id: col(r, 0, "id")?,
                        instance_id: col(r, 1, "instance_id")?,
                        token: col(r, 2, "token")?,
                        node_id: col(r, 3, "node_id")?,
                        kind: col(r, 4, "kind")?,
                        connector: col(r, 5, "connector")?,
                        operation: col(r, 6, "operation")?,
                        input: serde_json::Map::new(),
                        unreadable: None,
                        stop: None,
                        idempotency_key: col(r, 8, "idempotency_key")?,
                        attempts: col(r, 9, "attempts")?,
                        max_attempts: col(r, 10, "max_attempts")?,
                        timeout_ms: col(r, 11, "timeout_ms")?,
                        lease_owner: c.owner.to_owned(),
                        created_at: col(r, 12, "created_at")?,
                    },
                    col::<Option<String>>(r, 7, "input")?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (mut job, input) = row?;
            (job.input, job.unreadable) = super::jobs::read_input(input.as_deref());
            out.push(job);
        }
        Ok(out)
    }

    async fn finish_job(
        &mut self,
        id: &str,
        owner: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<bool, Error> {
        let n = self
            .conn.prepare_cached(
                "UPDATE jobs SET status = ?3, lease_owner = NULL, lease_until = NULL, last_error = ?4 \
                 WHERE id = ?1 AND lease_owner = ?2 AND status = 'running'",
            )?
            .execute(params![id, owner, status, error])?;
        Ok(n == 1)
    }

    async fn reschedule_job(&mut self, retry: super::JobRetry<'_>) -> Result<bool, Error> {
        let sql = super::jobs::RESCHEDULE.replace('$', "?");
        let n = self.conn.prepare_cached(&sql)?.execute(params![
            retry.id,
            retry.owner,
            retry.run_at,
            retry.error,
            i64::from(!retry.counted)
        ])?;
        Ok(n == 1)
    }

    async fn revive_job(&mut self, id: &str, now: i64) -> Result<bool, Error> {
        let n = self
            .conn.prepare_cached("UPDATE jobs SET status = 'ready', attempts = 0, run_at = ?2, created_at = ?2 WHERE id = ?1 AND status = 'incident'")?
            .execute(params![id, now])?;
        Ok(n == 1)
    }

    async fn cancel_job(&mut self, id: &str) -> Result<bool, Error> {
        if self
            .conn
            .prepare_cached(super::jobs::CANCEL_PENDING)?
            .execute(params![id])?
            == 1
        {
            return Ok(false);
        }
        Ok(self
            .conn
            .prepare_cached(super::jobs::CANCEL_STOPPED)?
            .execute(params![id])?
            == 1)
    }

    async fn withdraw_incidents_of_job(
        &mut self,
        job: &str,
        now: i64,
    ) -> Result<Vec<(String, String)>, Error> {
        let sql = super::incidents::WITHDRAW_OF_JOB.replace('$', "?");
        let mut statement = self.conn.prepare_cached(&sql)?;
        let ids = statement
            .query_map(params![job, now], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    async fn job_request(&mut self, id: &str) -> Result<Option<super::jobs::JobRequest>, Error> {
        Ok(self
            .conn
            .prepare_cached("SELECT idempotency_key, input FROM jobs WHERE id = ?1")?
            .query_row(params![id], |r| {
                Ok(super::jobs::JobRequest {
                    idempotency_key: r.get(0)?,
                    input: r.get(1)?,
                })
            })
            .optional()?)
    }

    async fn release_leases(&mut self, now: i64) -> Result<u64, Error> {
        let n = self
            .conn.prepare_cached(
                "UPDATE jobs SET status = 'ready', lease_owner = NULL, lease_until = NULL, run_at = ?1 \
                 WHERE status = 'running'",
            )?
            .execute(params![now])?;
        Ok(n as u64)
    }

    async fn insert_incident(&mut self, i: &IncidentRow) -> Result<(), Error> {
        self.conn.prepare_cached(
            "INSERT INTO incidents (id, instance_id, job_id, node_id, token, message, after_effect, \
             status, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', ?8)",
        )?
        .execute(params![
            i.id,
            i.instance_id,
            i.job_id,
            i.node_id,
            i.token,
            i.message,
            i64::from(i.after_effect),
            i.created_at
        ])?;
        Ok(())
    }

    async fn incident(&mut self, id: &str) -> Result<Option<IncidentRow>, Error> {
        let sql = format!("SELECT {INCIDENT} FROM incidents WHERE id = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![id], incident)
            .optional()?)
    }

    async fn close_incident(
        &mut self,
        id: &str,
        by: &str,
        resolution: &str,
        now: i64,
    ) -> Result<bool, Error> {
        let n = self
            .conn.prepare_cached(
                "UPDATE incidents SET status = 'resolved', resolved_at = ?2, resolved_by = ?3, resolution = ?4 \
                 WHERE id = ?1 AND status = 'open'",
            )?
            .execute(params![id, now, by, resolution])?;
        Ok(n == 1)
    }

    async fn close_incidents_of(
        &mut self,
        instance: &str,
        by: &str,
        now: i64,
    ) -> Result<(), Error> {
        self.conn
            .prepare_cached(
                "UPDATE incidents SET status = 'resolved', resolved_at = ?2, resolved_by = ?3, \
             resolution = 'cancelled' WHERE instance_id = ?1 AND status = 'open'",
            )?
            .execute(params![instance, now, by])?;
        Ok(())
    }

    async fn subscribe(&mut self, s: NewSubscription<'_>) -> Result<(), Error> {
        self.conn.prepare_cached(
            "INSERT INTO subscriptions (id, instance_id, token, node_id, message_name, correlation_key, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![s.id, s.instance, i64::from(s.token), s.node, s.name, s.key, s.now])?;
        Ok(())
    }

    async fn unsubscribe(&mut self, id: &str) -> Result<(), Error> {
        self.conn
            .prepare_cached("DELETE FROM subscriptions WHERE id = ?1")?
            .execute(params![id])?;
        Ok(())
    }

    async fn find_subscription(
        &mut self,
        name: &str,
        key: &str,
    ) -> Result<Option<Subscription>, Error> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, instance_id, token, node_id FROM subscriptions \
                 WHERE message_name = ?1 AND correlation_key = ?2 ORDER BY created_at LIMIT 1",
            )?
            .query_row(params![name, key], |r| {
                Ok(Subscription {
                    id: r.get("id")?,
                    instance_id: r.get("instance_id")?,
                    token: r.get("token")?,
                    node_id: r.get("node_id")?,
                })
            })
            .optional()?)
    }

    async fn record_message(&mut self, m: &MessageRow) -> Result<Recorded, Error> {
        let n = self
            .conn.prepare_cached(
                "INSERT INTO messages (id, message_name, correlation_key, payload, status, instance_id, \
                 received_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                m.id,
                m.message_name,
                m.correlation_key,
                m.payload.to_string(),
                m.status,
                m.instance_id,
                m.received_at,
                m.expires_at
            ])?;
        if n == 1 {
            return Ok(Recorded::New);
        }
        let (message_name, correlation_key) = self
            .conn
            .prepare_cached("SELECT message_name, correlation_key FROM messages WHERE id = ?1")?
            .query_row(params![m.id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(Recorded::Seen {
            message_name,
            correlation_key,
        })
    }

    async fn recent_takers(&mut self, name: &str, key: &str) -> Result<Vec<String>, Error> {
        let mut statement = self.conn.prepare_cached(super::messages::RECENT_TAKERS)?;
        let rows = statement.query_map(params![name, key], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    async fn pending_message(
        &mut self,
        name: &str,
        key: &str,
        since: i64,
        now: i64,
    ) -> Result<Option<MessageRow>, Error> {
        let found = self
            .conn.prepare_cached(
                "SELECT id, message_name, correlation_key, payload, status, instance_id, received_at, expires_at \
                 FROM messages WHERE message_name = ?1 AND correlation_key = ?2 AND status = 'pending' \
                 AND (expires_at IS NULL OR expires_at > ?3) AND received_at >= ?4 \
                 ORDER BY received_at LIMIT 1",
            )?
            .query_row(params![name, key, now, since], |r| {
                Ok((
                    MessageRow {
                        id: r.get("id")?,
                        message_name: r.get("message_name")?,
                        correlation_key: r.get("correlation_key")?,
                        payload: serde_json::Value::Null,
                        status: r.get("status")?,
                        instance_id: r.get("instance_id")?,
                        received_at: r.get("received_at")?,
                        expires_at: r.get("expires_at")?,
                    },
                    r.get::<_, String>("payload")?,
                ))
            })
            .optional()?;
        found
            .map(|(mut m, payload)| {
                m.payload = json(&payload, "messages", "payload")?;
                Ok(m)
            })
            .transpose()
    }

    async fn message_delivered(&mut self, id: &str, instance: &str) -> Result<(), Error> {
        self.conn.prepare_cached("UPDATE messages SET status = 'delivered', instance_id = ?2, expires_at = NULL WHERE id = ?1")?
            .execute(params![id, instance])?;
        Ok(())
    }

    async fn message_kept(&mut self, id: &str, expires_at: i64) -> Result<(), Error> {
        self.conn.prepare_cached("UPDATE messages SET status = 'pending', instance_id = NULL, expires_at = ?2 WHERE id = ?1")?
            .execute(params![id, expires_at])?;
        Ok(())
    }

    async fn instance_by_request(
        &mut self,
        code: &str,
        request: &str,
    ) -> Result<Option<String>, Error> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM instances WHERE code = ?1 AND request_id = ?2")?
            .query_row(params![code, request], |r| r.get(0))
            .optional()?)
    }

    async fn set_instance_request(&mut self, id: &str, request: &str) -> Result<(), Error> {
        self.conn
            .prepare_cached("UPDATE instances SET request_id = ?2 WHERE id = ?1")?
            .execute(params![id, request])?;
        Ok(())
    }

    async fn purge(&mut self, p: Purge) -> Result<Purged, Error> {
        let instances = self
            .conn
            .prepare_cached(super::instances::PURGEABLE)?
            .query_map(params![p.before, p.limit], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        for id in &instances {
            // Not kept once ended, but the copies must not outlive the rows
            // whatever happened before.
            self.instances.forget(id);
            let tasks = self
                .conn
                .prepare_cached("SELECT id FROM tasks WHERE instance_id = ?1")?
                .query_map(params![id], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            for task in &tasks {
                self.tasks.forget(task);
            }
            for (table, column) in super::instances::PURGED_WITH {
                self.conn
                    .prepare_cached(&format!("DELETE FROM {table} WHERE {column} = ?1"))?
                    .execute(params![id])?;
            }
        }
        let messages = self
            .conn
            .prepare_cached(super::instances::PURGE_EXPIRED_MESSAGES)?
            .execute(params![p.before, p.limit])?;
        Ok(Purged {
            instances,
            messages: messages as u64,
        })
    }

    async fn end_session(&mut self, id: &str, expires_at: i64, now: i64) -> Result<(), Error> {
        self.conn
            .prepare_cached("DELETE FROM ended_sessions WHERE expires_at < ?1")?
            .execute(params![now])?;
        self.conn
            .prepare_cached(
                "INSERT INTO ended_sessions (id, expires_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![id, expires_at])?;
        Ok(())
    }

    async fn still_to_reach(
        &mut self,
        q: &super::instances::StillToReach<'_>,
    ) -> Result<i64, Error> {
        let mut statement = self
            .conn
            .prepare_cached(super::instances::STILL_TO_REACH_SQLITE)?;
        Ok(statement.query_row(
            params![
                q.code,
                q.version,
                serde_json::Value::from(q.nodes.to_vec()).to_string(),
                serde_json::Value::from(q.unless_called.to_vec()).to_string()
            ],
            |r| r.get(0),
        )?)
    }

    async fn lock_key(&mut self, _key: &str) -> Result<(), Error> {
        Ok(()) // one writer: already serialized
    }

    async fn append_journal(&mut self, entries: &[journal::NewEntry<'_>]) -> Result<(), Error> {
        // One row per statement: a multi-row `VALUES` runs as a co-routine in
        // SQLite, and made the journal's appends 10 % dearer (measured).
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO journal (instance_id, at, actor, kind, node_id, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for e in entries {
            // serde_json's writer, not `Display`: the same text without a
            // formatter call per token.
            let data = if e.data.is_null() {
                None
            } else {
                Some(serde_json::to_string(&e.data).expect("JSON serializes"))
            };
            stmt.execute(params![
                e.instance_id,
                e.at,
                e.actor,
                e.kind,
                e.node_id,
                data
            ])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// Whether rows committed past [`super::BACKSTOP_PAGES`] of log reach
    /// the database file (read from a copy of it alone), with the writer's
    /// flag as given.
    fn backstop_copies(failed: bool) -> bool {
        let dir = std::env::temp_dir().join(format!("tramite-backstop-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("temporary folder");
        let path = dir.join("t.db");
        std::thread::scope(|s| {
            s.spawn(|| {
                let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(failed));
                super::watch_log_sync(flag);
                let conn = super::open(&path).expect("writer");
                conn.execute_batch("CREATE TABLE t (b BLOB)").expect("table");
                // 4 MiB a row: the log passes the mark in one commit.
                let rows = super::BACKSTOP_PAGES as usize * 4096 / (4 << 20) + 1;
                conn.execute_batch(&format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
                     INSERT INTO t SELECT zeroblob(4194304) FROM n"
                ))
                .expect("rows");
                let copy = dir.join("copy.db");
                std::fs::copy(&path, &copy).expect("copy");
                let found = rusqlite::Connection::open(&copy)
                    .and_then(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0)))
                    .is_ok_and(|n| n > 0);
                drop(conn);
                let _ = std::fs::remove_dir_all(&dir);
                found
            })
            .join()
            .expect("writer thread")
        })
    }

    /// A full disk (here SQLite's page cap) refuses the change: callers
    /// hear 503 `storage-unavailable`, not an internal error.
    #[test]
    fn a_full_database_is_a_storage_refusal() {
        let dir = std::env::temp_dir().join(format!("tramite-full-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("temporary folder");
        let conn = super::open(&dir.join("t.db")).expect("writer");
        conn.execute_batch("CREATE TABLE t (b BLOB); PRAGMA max_page_count = 8;")
            .expect("table");
        let e = conn
            .execute_batch("INSERT INTO t VALUES (zeroblob(100000))")
            .expect_err("past the cap");
        let e = crate::Error::Store(super::Error::Sqlite(e));
        assert!(e.is_storage_refusal(), "{e:?}");
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The writer's own checkpoint copies a long log into the database
    /// file, but not once a sync of the log has failed: SQLite's automatic
    /// one did regardless, and dropped its own I/O errors.
    #[test]
    fn the_writers_checkpoint_stops_after_a_failed_sync() {
        assert!(backstop_copies(false), "a long log is copied");
        assert!(!backstop_copies(true), "nothing once a sync failed");
    }

    use super::super::instances::InstanceRow;
    use super::super::tx::{NewDefinition, Tx};
    use super::Writing;

    /// A writer on a new database file, migrated, with one running instance.
    async fn writer_with_instance() -> (Writing, InstanceRow, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("tramite-writing-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("temporary folder");
        let mut w = Writing::open(&dir.join("t.db")).expect("writer");
        for m in super::super::sqlite::migrator().iter() {
            w.conn.execute_batch(m.sql.as_str()).expect("migration");
        }
        w.begin().expect("begin");
        let def = w
            .insert_definition(NewDefinition {
                code: "X",
                hash: "h",
                file_name: "x.yaml",
                source: "",
                now: 0,
            })
            .await
            .expect("definition");
        let row = InstanceRow {
            id: "i1".to_owned(),
            definition_id: def.id,
            code: "X".to_owned(),
            version: 1,
            business_key: "K".to_owned(),
            channel: "web".to_owned(),
            status: "running".to_owned(),
            outcome: None,
            state: Default::default(),
            revision: 0,
            parent_id: None,
            parent_token: None,
            started_at: 0,
            ended_at: None,
            cancel_reason: None,
        };
        w.insert_instance(&row).await.expect("insert");
        w.commit().expect("commit");
        (w, row, dir)
    }

    /// A version rolled back does not leave its id to the next insert,
    /// maybe of other content: the writer's process cache, which keeps
    /// what a transaction read by id, would serve the rolled-back one.
    #[tokio::test]
    async fn a_rolled_back_version_id_is_not_given_again() {
        let (mut w, _, dir) = writer_with_instance().await;
        let cache = crate::runtime::commands::ProcessCache::default();
        let source = |name: &str| {
            format!(
                "code: X\nname: {name}\nversion: 1\nowner_role: r\nroles: [{{id: r, name: R}}]\nnodes:\n  - {{id: inicio, kind: start, channels: [web], next: fin}}\n  - {{id: fin, kind: end, outcome: listo}}\n"
            )
        };
        let (first, second) = (source("Primera"), source("Segunda"));
        fn deploy<'a>(source: &'a str, hash: &'a str) -> NewDefinition<'a> {
            NewDefinition {
                code: "X",
                hash,
                file_name: "x.yaml",
                source,
                now: 0,
            }
        }
        w.begin().expect("begin");
        let a = w
            .insert_definition(deploy(&first, "a"))
            .await
            .expect("insert");
        let read = cache.get(&mut w, a.id).await.expect("compiles");
        assert_eq!(read.definition.name.es, "Primera");
        w.rollback().expect("rollback");
        w.begin().expect("begin");
        let b = w
            .insert_definition(deploy(&second, "b"))
            .await
            .expect("insert");
        assert_ne!(a.id, b.id, "the rolled-back id is not given again");
        let read = cache.get(&mut w, b.id).await.expect("compiles");
        assert_eq!(
            read.definition.name.es, "Segunda",
            "not the rolled-back content"
        );
        w.commit().expect("commit");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The instance as a plain read sees it: the kept copy if there is
    /// one (not taken), else the database's row.
    async fn stored(w: &mut Writing) -> InstanceRow {
        w.instance("i1", false)
            .await
            .expect("read")
            .expect("present")
    }

    /// The revision of the writer's copy of the instance, if it keeps one.
    fn kept(w: &Writing) -> Option<i64> {
        w.instances.rows.get("i1").map(|r| r.revision)
    }

    /// What a command does: reads the instance for update, sets its
    /// variable `x`, writes it back and, if the revision guard let the
    /// write through, gives the row back to keep; whether it did.
    async fn set_x(w: &mut Writing, x: i64) -> bool {
        let mut row = w
            .instance("i1", true)
            .await
            .expect("read")
            .expect("present");
        row.state.variables.insert("x".to_owned(), json!(x));
        if !w.update_instance(&row).await.expect("update") {
            return false;
        }
        row.revision += 1;
        w.keep_instance(row);
        true
    }

    /// A read for update takes the kept copy; the command's write gives the
    /// new row back; a command that writes nothing leaves the row to be
    /// read from the database, as stored.
    #[tokio::test]
    async fn a_read_for_update_takes_the_copy() {
        let (mut w, _, path) = writer_with_instance().await;
        assert_eq!(kept(&w), None, "an insert alone keeps nothing");
        w.begin().expect("begin");
        assert!(set_x(&mut w, 1).await);
        w.commit().expect("commit");
        assert_eq!(kept(&w), Some(1), "the write gave the row back");
        let in_database = super::instance_by_id(&w.conn, "i1")
            .expect("read")
            .expect("there");
        assert_eq!(w.instances.rows.get("i1"), Some(&in_database));

        w.begin().expect("begin");
        let taken = w.instance("i1", true).await.expect("read").expect("there");
        assert_eq!(taken.revision, 1);
        assert_eq!(kept(&w), None, "taken, not cloned");
        w.commit().expect("commit");
        let again = w.instance("i1", true).await.expect("read").expect("there");
        assert_eq!(again.revision, 1, "read from the database");
        assert_eq!(again.state.variables.get("x"), Some(&json!(1)));
        let _ = std::fs::remove_dir_all(path);
    }

    /// Entries appended in one call and over two calls keep their order and
    /// their contents, a null `data` included.
    #[tokio::test]
    async fn journal_entries_keep_their_order_across_statements() {
        let (mut w, _, path) = writer_with_instance().await;
        let data: Vec<serde_json::Value> = (0..19)
            .map(|i| {
                if i % 3 == 0 {
                    json!(null)
                } else {
                    json!({"n": i})
                }
            })
            .collect();
        let kinds: Vec<String> = (0..data.len()).map(|i| format!("k{i}")).collect();
        let entries: Vec<_> = data
            .iter()
            .zip(&kinds)
            .enumerate()
            .map(|(i, (data, kind))| super::journal::NewEntry {
                instance_id: "i1",
                at: i as i64,
                actor: "engine",
                kind,
                node_id: (i % 2 == 0).then_some("n"),
                data,
            })
            .collect();
        w.begin().expect("begin");
        w.append_journal(&entries[..1]).await.expect("one entry");
        w.append_journal(&entries[1..]).await.expect("the rest");
        w.commit().expect("commit");
        let mut stmt = w
            .conn
            .prepare("SELECT seq, at, kind, node_id, data FROM journal WHERE instance_id = 'i1' ORDER BY seq")
            .expect("prepare");
        // seq, at, kind, node_id, data
        type Stored = (i64, i64, String, Option<String>, Option<String>);
        let rows: Vec<Stored> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(rows.len(), entries.len());
        for (i, (row, e)) in rows.iter().zip(&entries).enumerate() {
            assert_eq!(row.1, e.at, "entry {i} in its place");
            assert_eq!(row.2, e.kind);
            assert_eq!(row.3.as_deref(), e.node_id);
            assert_eq!(
                row.4
                    .as_deref()
                    .map(|d| serde_json::from_str::<serde_json::Value>(d).expect("JSON")),
                (!e.data.is_null()).then(|| e.data.clone()),
                "entry {i}'s data"
            );
        }
        assert!(rows.windows(2).all(|p| p[0].0 < p[1].0), "sequence grows");
        drop(stmt);
        let _ = std::fs::remove_dir_all(path);
    }

    fn new_task(id: &str) -> super::NewTask<'_> {
        super::NewTask {
            id,
            instance_id: "i1",
            token: 3,
            node_id: "n",
            code: "X",
            business_key: "K",
            role: "agente",
            created_at: 5,
            due_at: Some(9),
        }
    }

    /// The writer's copy of a task it created is the row the database holds;
    /// a change to the task drops the copy, and a rolled-back creation is
    /// not served.
    #[tokio::test]
    async fn a_kept_task_is_the_stored_one() {
        let (mut w, _, path) = writer_with_instance().await;
        w.begin().expect("begin");
        w.insert_task(&new_task("t1")).await.expect("insert");
        w.commit().expect("commit");
        let stored = super::task_by_id(&w.conn, "t1")
            .expect("read")
            .expect("there");
        assert!(w.tasks.rows.contains_key("t1"), "kept");
        assert_eq!(w.task("t1").await.expect("task"), Some(stored));

        w.begin().expect("begin");
        assert!(w.claim_task("t1", "ana").await.expect("claim"));
        w.commit().expect("commit");
        assert!(!w.tasks.rows.contains_key("t1"), "a claim drops the copy");
        let claimed = w.task("t1").await.expect("task").expect("there");
        assert_eq!(claimed.status, "claimed");
        assert_eq!(claimed.assignee.as_deref(), Some("ana"));

        w.begin().expect("begin");
        w.savepoint().expect("savepoint");
        w.insert_task(&new_task("t2")).await.expect("insert");
        w.rollback_to_savepoint().expect("rollback to savepoint");
        w.commit().expect("commit");
        assert_eq!(w.task("t2").await.expect("task"), None);

        w.begin().expect("begin");
        w.insert_task(&new_task("t3")).await.expect("insert");
        w.rollback().expect("rollback");
        assert_eq!(w.task("t3").await.expect("task"), None);
        let _ = std::fs::remove_dir_all(path);
    }

    /// A running instance's update that changes nothing but its state leaves
    /// its other columns as stored; one that changes its status (here from a
    /// status set behind the writer's back) writes them all.
    #[tokio::test]
    async fn an_update_writes_the_columns_that_changed() {
        let (mut w, _, path) = writer_with_instance().await;
        w.begin().expect("begin");
        assert!(set_x(&mut w, 1).await, "a running instance's update");
        w.commit().expect("commit");
        let read = |w: &Writing| -> (String, Option<i64>, i64, String) {
            w.conn
                .query_row(
                    "SELECT status, ended_at, revision, state FROM instances WHERE id = 'i1'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .expect("row")
        };
        let (status, ended, revision, state) = read(&w);
        assert_eq!((status.as_str(), ended, revision), ("running", None, 1));
        assert!(state.contains("\"x\":1"), "{state}");

        // Suspended behind the writer's back: the running copy's update must
        // not take the short form, whose guard now fails, but write it all.
        w.conn
            .execute(
                "UPDATE instances SET status = 'suspended' WHERE id = 'i1'",
                [],
            )
            .expect("suspend");
        w.begin().expect("begin");
        assert!(set_x(&mut w, 2).await, "the full update");
        w.commit().expect("commit");
        let (status, _, revision, state) = read(&w);
        assert_eq!((status.as_str(), revision), ("running", 2));
        assert!(state.contains("\"x\":2"), "{state}");

        // Ending it writes the end.
        w.begin().expect("begin");
        let mut row = stored(&mut w).await;
        row.status = "completed".to_owned();
        row.ended_at = Some(7);
        assert!(w.update_instance(&row).await.expect("update"));
        w.commit().expect("commit");
        let (status, ended, revision, _) = read(&w);
        assert_eq!(
            (status.as_str(), ended, revision),
            ("completed", Some(7), 3)
        );
        let _ = std::fs::remove_dir_all(path);
    }

    /// An update that a rollback undid must not be served from the cache.
    #[tokio::test]
    async fn a_rolled_back_update_is_not_served_from_the_cache() {
        let (mut w, row, path) = writer_with_instance().await;
        w.begin().expect("begin");
        assert!(set_x(&mut w, 1).await);
        assert_eq!(kept(&w), Some(1), "the transaction's write is kept");
        w.rollback().expect("rollback");
        assert_eq!(kept(&w), None, "and forgotten with it");
        let after = stored(&mut w).await;
        assert_eq!(after.revision, row.revision);
        assert!(
            after.state.variables.is_empty(),
            "{:?}",
            after.state.variables
        );
        let _ = std::fs::remove_dir_all(path);
    }

    /// A command rolled back to its savepoint leaves the batch's earlier
    /// write of the same instance as the database holds it.
    #[tokio::test]
    async fn a_savepoint_rollback_keeps_the_earlier_write() {
        let (mut w, _, path) = writer_with_instance().await;
        w.begin().expect("begin");
        assert!(set_x(&mut w, 1).await, "first update");
        w.savepoint().expect("savepoint");
        assert!(set_x(&mut w, 2).await, "second update");
        w.rollback_to_savepoint().expect("rollback to savepoint");
        w.commit().expect("commit");
        let after = stored(&mut w).await;
        assert_eq!(after.revision, 1);
        assert_eq!(after.state.variables.get("x"), Some(&json!(1)));
        let _ = std::fs::remove_dir_all(path);
    }

    /// Should anything write an instance behind the writer's back, the
    /// revision guard refuses the stale copy and the next read is fresh.
    #[tokio::test]
    async fn a_stale_copy_is_refused_and_dropped() {
        let (mut w, _, path) = writer_with_instance().await;
        w.begin().expect("begin");
        assert!(set_x(&mut w, 1).await);
        w.commit().expect("commit");
        w.conn
            .execute(
                "UPDATE instances SET revision = revision + 1 WHERE id = 'i1'",
                [],
            )
            .expect("write behind the cache");
        w.begin().expect("begin");
        let stale = stored(&mut w).await;
        assert_eq!(stale.revision, 1, "served from the cache");
        assert!(
            !w.update_instance(&stale).await.expect("update"),
            "the guard refuses it"
        );
        assert_eq!(
            stored(&mut w).await.revision,
            2,
            "read again from the database"
        );
        w.rollback().expect("rollback");
        let _ = std::fs::remove_dir_all(path);
    }

    /// The log the writer syncs is the file SQLite writes its commits to,
    /// and a commit is in it when COMMIT returns: that is what the sync
    /// thread makes durable.
    #[tokio::test]
    async fn the_synced_log_is_the_file_commits_go_to() {
        use std::os::unix::fs::MetadataExt;
        let (mut w, _, dir) = writer_with_instance().await;
        let db = dir.join("t.db");
        let log = super::LogFile::open(&db).expect("log");
        let before = log.0.metadata().expect("log size").len();
        w.begin().expect("begin");
        assert!(set_x(&mut w, 7).await);
        w.commit().expect("commit");
        log.sync().expect("sync");
        let on_disk = std::fs::metadata(dir.join("t.db-wal")).expect("the -wal file");
        let ours = log.0.metadata().expect("log metadata");
        assert_eq!(ours.ino(), on_disk.ino());
        assert!(
            ours.len() > before,
            "the commit grew the log ({before} → {} bytes)",
            ours.len()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
