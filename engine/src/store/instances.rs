//! Table `instances`: one row per instance, its state as one JSON document.

use sqlx::Row;

use super::{Backend, Conn, Error, Query, json};
use crate::runtime::state::InstanceState;

/// An instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    /// Id (UUID v7).
    pub id: String,
    /// Version row id.
    pub definition_id: i64,
    /// Procedure code.
    pub code: String,
    /// Version number.
    pub version: i64,
    /// Business key.
    pub business_key: String,
    /// Channel.
    pub channel: String,
    /// `running`, `completed` or `cancelled`.
    pub status: String,
    /// End outcome.
    pub outcome: Option<String>,
    /// Variables and tokens.
    pub state: InstanceState,
    /// Incremented by every change; guards against lost updates.
    pub revision: i64,
    /// The calling instance.
    pub parent_id: Option<String>,
    /// The calling token.
    pub parent_token: Option<i64>,
    /// Start, ms.
    pub started_at: i64,
    /// End, ms.
    pub ended_at: Option<i64>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
}

pub(crate) const COLUMNS: &str = "id, definition_id, code, version, business_key, channel, status, \
    outcome, state, revision, parent_id, parent_token, started_at, ended_at, cancel_reason";

pub(crate) fn row(r: &sqlx::any::AnyRow) -> Result<InstanceRow, Error> {
    row_at(r, 0)
}

/// The instance in [`COLUMNS`] from column `at` on (a join reads two
/// tables' columns, some of the same name, from one row).
pub(crate) fn row_at(r: &sqlx::any::AnyRow, at: usize) -> Result<InstanceRow, Error> {
    let state: String = r.try_get(at + 8)?;
    Ok(InstanceRow {
        id: r.try_get(at)?,
        definition_id: r.try_get(at + 1)?,
        code: r.try_get(at + 2)?,
        version: r.try_get(at + 3)?,
        business_key: r.try_get(at + 4)?,
        channel: r.try_get(at + 5)?,
        status: r.try_get(at + 6)?,
        outcome: r.try_get(at + 7)?,
        state: json(&state, "instances", "state")?,
        revision: r.try_get(at + 9)?,
        parent_id: r.try_get(at + 10)?,
        parent_token: r.try_get(at + 11)?,
        started_at: r.try_get(at + 12)?,
        ended_at: r.try_get(at + 13)?,
        cancel_reason: r.try_get(at + 14)?,
    })
}

/// Reads an instance; on PostgreSQL `lock` takes its row lock in the same
/// statement, so that commands on one instance from several nodes run one
/// after another (and each reads what the one before it committed).
pub async fn get(
    conn: &mut Conn,
    backend: Backend,
    id: &str,
    lock: bool,
) -> Result<Option<InstanceRow>, Error> {
    let sql = if lock && backend == Backend::Postgres {
        format!("SELECT {COLUMNS} FROM instances WHERE id = $1 FOR UPDATE")
    } else {
        format!("SELECT {COLUMNS} FROM instances WHERE id = $1")
    };
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    r.as_ref().map(row).transpose()
}

/// The instance of `code` started with the caller's `request` id, if any.
pub async fn by_request(
    conn: &mut Conn,
    code: &str,
    request: &str,
) -> Result<Option<String>, Error> {
    Ok(
        sqlx::query_scalar("SELECT id FROM instances WHERE code = $1 AND request_id = $2")
            .bind(code)
            .bind(request)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Records the caller's id of the start of instance `id`.
pub async fn set_request(conn: &mut Conn, id: &str, request: &str) -> Result<(), Error> {
    sqlx::query("UPDATE instances SET request_id = $2 WHERE id = $1")
        .bind(id)
        .bind(request)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

const INSERT: &str = "INSERT INTO instances (id, definition_id, code, version, business_key, channel, status, \
     outcome, state, revision, parent_id, parent_token, started_at, ended_at, cancel_reason) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";
const INSERT_PARAMS: usize = 15;

const UPDATE: &str = "UPDATE instances SET status = $2, outcome = $3, state = $4, revision = revision + 1, \
     ended_at = $5, cancel_reason = $6 WHERE id = $1 AND revision = $7";
const UPDATE_PARAMS: usize = 7;

fn bind_insert<'q>(q: Query<'q>, i: &InstanceRow) -> Query<'q> {
    let state = serde_json::to_string(&i.state).expect("state serializes");
    q.bind(i.id.clone())
        .bind(i.definition_id)
        .bind(i.code.clone())
        .bind(i.version)
        .bind(i.business_key.clone())
        .bind(i.channel.clone())
        .bind(i.status.clone())
        .bind(i.outcome.clone())
        .bind(state)
        .bind(i.revision)
        .bind(i.parent_id.clone())
        .bind(i.parent_token)
        .bind(i.started_at)
        .bind(i.ended_at)
        .bind(i.cancel_reason.clone())
}

fn bind_update<'q>(q: Query<'q>, i: &InstanceRow) -> Query<'q> {
    let state = serde_json::to_string(&i.state).expect("state serializes");
    q.bind(i.id.clone())
        .bind(i.status.clone())
        .bind(i.outcome.clone())
        .bind(state)
        .bind(i.ended_at)
        .bind(i.cancel_reason.clone())
        .bind(i.revision)
}

/// Inserts a new instance.
pub async fn insert(conn: &mut Conn, i: &InstanceRow) -> Result<(), Error> {
    bind_insert(sqlx::query(INSERT), i)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Writes an instance's changes if nobody changed it since it was read.
/// Returns false on a lost race.
pub async fn update(conn: &mut Conn, i: &InstanceRow) -> Result<bool, Error> {
    let done = bind_update(sqlx::query(UPDATE), i)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// PostgreSQL: inserts or updates an instance, as [`insert`] and
/// [`update`] do, and writes what the change adds — the completion of the
/// task that caused it, journal entries, tasks, jobs — in the same
/// statement (`WITH completed AS (UPDATE tasks …), journal_rows AS (INSERT
/// INTO journal …), task_rows AS (INSERT INTO tasks …) UPDATE instances
/// …`): each statement is a round trip, and nearly every change has
/// journal entries and a new task or job. A task's or job's reference to a
/// new instance is checked at the end of the statement, once the instance
/// is there. The instance is updated only if its task was completed; on
/// anything but [`Written::Done`] the rest is written all the same and the
/// caller rolls the transaction back. The statement also reads the
/// transaction's id and, if it schedules jobs, sends their notice on
/// [`crate::store::jobs::CHANNEL`] (delivered on commit): the commit then needs no
/// statement of its own (see [`crate::store::Receipt`]).
///
/// [`Written::Done`]: crate::store::Written::Done
pub async fn write_all(
    conn: &mut Conn,
    w: crate::store::InstanceWrite<'_>,
) -> Result<crate::store::Written, Error> {
    use super::{jobs, journal, tasks};
    use crate::store::Written;
    let (statement, mut next) = if w.new {
        (INSERT, INSERT_PARAMS + 1)
    } else {
        (UPDATE, UPDATE_PARAMS + 1)
    };
    let mut ctes = Vec::new();
    if !w.journal.is_empty() {
        let mut sql = String::from("journal_rows AS (");
        journal::insert_sql(&mut sql, next, w.journal.len());
        next += journal::PARAMS * w.journal.len();
        ctes.push(sql + ")");
    }
    if !w.tasks.is_empty() {
        let mut sql = String::from("task_rows AS (");
        tasks::insert_sql(&mut sql, next, w.tasks.len());
        next += tasks::PARAMS * w.tasks.len();
        ctes.push(sql + ")");
    }
    if !w.jobs.is_empty() {
        let mut sql = String::from("job_rows AS (");
        jobs::insert_sql(&mut sql, next, w.jobs.len());
        next += jobs::PARAMS * w.jobs.len();
        ctes.push(sql + ")");
    }
    // An `INSERT … VALUES` cannot wait on the task's `UPDATE`: a new
    // instance's completion (the engine makes none) is a statement first.
    let completes = match w.completes {
        Some(done) if w.new => {
            if !tasks::complete(conn, &done).await? {
                return Ok(Written::TaskNotOpen);
            }
            None
        }
        other => other,
    };
    // What the commit needs, read and sent here rather than in a round
    // trip of its own: the transaction's id and, with new jobs, their
    // notice.
    let announced = !w.jobs.is_empty();
    let mut receipt = String::from("txid_current()");
    if announced {
        ctes.push(jobs::NOTIFIED.to_owned());
        receipt.push_str(", (SELECT count(*) FROM notified)");
    }
    let with = |ctes: &[String]| {
        if ctes.is_empty() {
            String::new()
        } else {
            format!("WITH {} ", ctes.join(", "))
        }
    };
    let sql = if completes.is_some() {
        // Defined before the instance's update, which reads it.
        ctes.insert(
            0,
            format!("completed AS ({} RETURNING 1)", tasks::complete_sql(next)),
        );
        ctes.push(format!(
            "changed AS ({statement} AND EXISTS (SELECT 1 FROM completed) RETURNING 1)"
        ));
        format!(
            "{}SELECT EXISTS (SELECT 1 FROM completed), EXISTS (SELECT 1 FROM changed), {receipt}",
            with(&ctes)
        )
    } else {
        format!("{}{statement} RETURNING {receipt}", with(&ctes))
    };
    let q = sqlx::query(sqlx::AssertSqlSafe(sql));
    let q = if w.new {
        bind_insert(q, w.row)
    } else {
        bind_update(q, w.row)
    };
    let q = journal::bind(q, w.journal);
    let q = tasks::bind(q, w.tasks);
    let q = jobs::bind(q, w.jobs);
    let done = |r: &sqlx::any::AnyRow, at: usize| -> Result<Written, Error> {
        Ok(Written::Done(crate::store::Receipt {
            xid: Some(r.try_get(at)?),
            announced,
        }))
    };
    let Some(completion) = completes else {
        return match q.fetch_optional(&mut *conn).await? {
            Some(r) => done(&r, 0),
            None => Ok(Written::Stale),
        };
    };
    let r = tasks::bind_completion(q, &completion)
        .fetch_one(&mut *conn)
        .await?;
    let (completed, changed): (bool, bool) = (r.try_get(0)?, r.try_get(1)?);
    match (completed, changed) {
        (false, _) => Ok(Written::TaskNotOpen),
        (true, false) => Ok(Written::Stale),
        (true, true) => done(&r, 2),
    }
}

/// Children of an instance.
pub async fn children(conn: &mut Conn, parent: &str) -> Result<Vec<InstanceRow>, Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM instances WHERE parent_id = $1 ORDER BY started_at"
    ));
    let rows = sqlx::query(sql).bind(parent).fetch_all(&mut *conn).await?;
    rows.iter().map(row).collect()
}

/// Instances in a status, oldest first (bounded).
pub async fn by_status(
    conn: &mut Conn,
    status: &str,
    limit: i64,
) -> Result<Vec<InstanceRow>, Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM instances WHERE status = $1 ORDER BY started_at LIMIT CAST($2 AS BIGINT)"
    ));
    let rows = sqlx::query(sql)
        .bind(status)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(row).collect()
}

/// Hands `each` the instances of `code` started in `[from, to)`, one at a
/// time as they are read (see [`super::for_each_row`]).
pub async fn each_started_between(
    conn: &mut Conn,
    code: &str,
    from: i64,
    to: i64,
    mut each: impl FnMut(InstanceRow),
) -> Result<(), Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM instances WHERE code = $1 AND started_at >= $2 AND started_at < $3"
    ));
    let rows = sqlx::query(sql)
        .bind(code)
        .bind(from)
        .bind(to)
        .fetch(&mut *conn);
    super::for_each_row(rows, |r| {
        each(row(r)?);
        Ok(())
    })
    .await
}

/// Which instances to list.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    /// Procedure code.
    pub code: Option<String>,
    /// Only these versions, by definition id (what the reader may read);
    /// empty matches none.
    pub definitions: Option<Vec<i64>>,
    /// Version.
    pub version: Option<i64>,
    /// `running`, `completed`, `cancelled`.
    pub status: Option<String>,
    /// Business key.
    pub business_key: Option<String>,
    /// Started at or after, ms.
    pub started_from: Option<i64>,
    /// Started before, ms.
    pub started_to: Option<i64>,
    /// Only instances with a token at this node.
    pub node: Option<String>,
    /// Only instances after this cursor: `(started_at, id)` of the previous page's last.
    pub after: Option<(i64, String)>,
    /// At most this many.
    pub limit: i64,
}

/// Running instances of one version that may still reach some nodes:
/// those with a token at one of `nodes`, or at one of `unless_called` and
/// not waiting on the child it called there.
#[derive(Debug)]
pub struct StillToReach<'a> {
    /// Procedure code.
    pub code: &'a str,
    /// Its version.
    pub version: i64,
    /// Nodes from which the targets can be reached.
    pub nodes: &'a [String],
    /// Targets a token waiting on its call there has passed.
    pub unless_called: &'a [String],
}

/// [`still_to_reach`]'s statement on SQLite (also the writer's).
pub(super) const STILL_TO_REACH_SQLITE: &str = "SELECT COUNT(*) FROM instances \
     WHERE code = $1 AND version = $2 AND status = 'running' AND EXISTS (\
     SELECT 1 FROM json_each(instances.state, '$.tokens') t \
     WHERE json_extract(t.value, '$.node') IN (SELECT value FROM json_each($3)) \
     OR (json_extract(t.value, '$.node') IN (SELECT value FROM json_each($4)) \
     AND json_extract(t.value, '$.wait.on') <> 'call'))";

const STILL_TO_REACH_POSTGRES: &str = "SELECT COUNT(*) FROM instances \
     WHERE code = $1 AND version = $2 AND status = 'running' AND EXISTS (\
     SELECT 1 FROM jsonb_array_elements(state::jsonb -> 'tokens') t \
     WHERE t ->> 'node' IN (SELECT jsonb_array_elements_text(($3)::jsonb)) \
     OR (t ->> 'node' IN (SELECT jsonb_array_elements_text(($4)::jsonb)) \
     AND t -> 'wait' ->> 'on' <> 'call'))";

/// How many instances [`StillToReach`] describes. It reads every running
/// instance of the code (its `(code, status)` index, then each state):
/// a deploy that would break an older version asks it, nothing else.
pub async fn still_to_reach(
    conn: &mut Conn,
    backend: Backend,
    q: &StillToReach<'_>,
) -> Result<i64, Error> {
    let sql = match backend {
        Backend::Sqlite => STILL_TO_REACH_SQLITE,
        Backend::Postgres => STILL_TO_REACH_POSTGRES,
    };
    Ok(sqlx::query_scalar(sql)
        .bind(q.code)
        .bind(q.version)
        .bind(serde_json::Value::from(q.nodes.to_vec()).to_string())
        .bind(serde_json::Value::from(q.unless_called.to_vec()).to_string())
        .fetch_one(&mut *conn)
        .await?)
}

/// Instances matching `filter`, newest first.
pub async fn list(conn: &mut Conn, f: &InstanceFilter) -> Result<Vec<InstanceRow>, Error> {
    let mut clauses = vec!["1 = 1".to_owned()];
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if f.code.is_some() {
        clauses.push(format!("code = {}", next()));
    }
    if let Some(ids) = &f.definitions {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = ids.iter().map(|_| next()).collect();
        clauses.push(format!("definition_id IN ({})", list.join(", ")));
    }
    if f.version.is_some() {
        clauses.push(format!("version = {}", next()));
    }
    if f.status.is_some() {
        clauses.push(format!("status = {}", next()));
    }
    if f.business_key.is_some() {
        clauses.push(format!("business_key = {}", next()));
    }
    if f.started_from.is_some() {
        clauses.push(format!("started_at >= {}", next()));
    }
    if f.started_to.is_some() {
        clauses.push(format!("started_at < {}", next()));
    }
    if f.node.is_some() {
        let node = next();
        clauses.push(if conn.backend_name() == "PostgreSQL" {
            format!("(state::jsonb -> 'tokens') @> jsonb_build_array(jsonb_build_object('node', ({node})::text))")
        } else {
            format!("EXISTS (SELECT 1 FROM json_each(instances.state, '$.tokens') t WHERE json_extract(t.value, '$.node') = {node})")
        });
    }
    if f.after.is_some() {
        let (a, b) = (next(), next());
        clauses.push(format!("(started_at, id) < ({a}, {b})"));
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM instances WHERE {} ORDER BY started_at DESC, id DESC LIMIT CAST({} AS BIGINT)",
        clauses.join(" AND "),
        next()
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(v) = &f.code {
        q = q.bind(v.clone());
    }
    for id in f.definitions.iter().flatten() {
        q = q.bind(*id);
    }
    if let Some(v) = f.version {
        q = q.bind(v);
    }
    if let Some(v) = &f.status {
        q = q.bind(v.clone());
    }
    if let Some(v) = &f.business_key {
        q = q.bind(v.clone());
    }
    if let Some(v) = f.started_from {
        q = q.bind(v);
    }
    if let Some(v) = f.started_to {
        q = q.bind(v);
    }
    if let Some(node) = &f.node {
        q = q.bind(node.clone());
    }
    if let Some((at, id)) = &f.after {
        q = q.bind(*at).bind(id.clone());
    }
    let rows = q.bind(f.limit.max(1)).fetch_all(&mut *conn).await?;
    rows.iter().map(row).collect()
}

/// How many instances per procedure, status and outcome (for metrics).
pub async fn census(conn: &mut Conn) -> Result<Vec<(String, String, Option<String>, i64)>, Error> {
    let rows = sqlx::query(
        "SELECT code, status, outcome, COUNT(*) AS n FROM instances GROUP BY code, status, outcome",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("code")?,
                r.try_get("status")?,
                r.try_get("outcome")?,
                r.try_get("n")?,
            ))
        })
        .collect()
}

/// The instances a purge takes: ended before `$1`, oldest first, at most
/// `$2`; not one whose caller or whose called procedure still runs (both
/// backends; PostgreSQL adds `FOR UPDATE SKIP LOCKED`, so that nodes
/// purging at once take different instances). `instances_by_end` holds
/// only ended instances, so the running ones are never read.
pub(super) const PURGEABLE: &str = "SELECT id FROM instances i \
     WHERE ended_at IS NOT NULL AND ended_at < $1 AND status IN ('completed', 'cancelled') \
     AND NOT EXISTS (SELECT 1 FROM instances c WHERE c.parent_id = i.id AND c.ended_at IS NULL) \
     AND (i.parent_id IS NULL OR NOT EXISTS \
          (SELECT 1 FROM instances p WHERE p.id = i.parent_id AND p.ended_at IS NULL)) \
     ORDER BY ended_at LIMIT CAST($2 AS BIGINT)";

/// The tables a purged instance is deleted from, and their column naming
/// it: what hangs off it first (its foreign keys), itself last.
pub(super) const PURGED_WITH: [(&str, &str); 7] = [
    ("journal", "instance_id"),
    ("subscriptions", "instance_id"),
    ("messages", "instance_id"),
    ("incidents", "instance_id"),
    ("jobs", "instance_id"),
    ("tasks", "instance_id"),
    ("instances", "id"),
];

/// Messages no instance took that expired before `$1`, at most `$2` (both
/// backends): found through `messages_by_status`, since a message cannot
/// expire before it was received.
pub(super) const PURGE_EXPIRED_MESSAGES: &str = "DELETE FROM messages WHERE id IN \
     (SELECT id FROM messages WHERE status = 'pending' AND received_at < $1 \
      AND expires_at IS NOT NULL AND expires_at < $1 LIMIT CAST($2 AS BIGINT))";

/// See [`super::Tx::purge`].
pub async fn purge(conn: &mut Conn, p: super::Purge) -> Result<super::Purged, Error> {
    let choose = if conn.backend_name() == "PostgreSQL" {
        format!("{PURGEABLE} FOR UPDATE SKIP LOCKED")
    } else {
        PURGEABLE.to_owned()
    };
    let instances: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(choose))
        .bind(p.before)
        .bind(p.limit)
        .fetch_all(&mut *conn)
        .await?;
    if !instances.is_empty() {
        let list = (1..=instances.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        for (table, column) in PURGED_WITH {
            let sql = format!("DELETE FROM {table} WHERE {column} IN ({list})");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in &instances {
                q = q.bind(id.clone());
            }
            q.execute(&mut *conn).await?;
        }
    }
    let messages = sqlx::query(PURGE_EXPIRED_MESSAGES)
        .bind(p.before)
        .bind(p.limit)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(super::Purged {
        instances,
        messages,
    })
}
