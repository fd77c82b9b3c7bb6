//! Table `journal`: the append-only history of every change.

use sqlx::Row;

use super::{Conn, Error};

/// One change.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entry {
    /// Global order.
    pub seq: i64,
    /// Instance.
    pub instance_id: String,
    /// When, ms.
    pub at: i64,
    /// Who: a user, `engine`, `worker`, `operator:…`.
    pub actor: String,
    /// What happened (`task_completed`, `job_failed`, …).
    pub kind: String,
    /// Where.
    pub node_id: Option<String>,
    /// Data written, or details.
    pub data: serde_json::Value,
}

/// An entry to append.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    /// Instance.
    pub instance_id: &'a str,
    /// When.
    pub at: i64,
    /// Who.
    pub actor: &'a str,
    /// What.
    pub kind: &'a str,
    /// Where.
    pub node_id: Option<&'a str>,
    /// Details.
    pub data: &'a serde_json::Value,
}

/// Appends entries in one statement.
pub async fn append(conn: &mut Conn, entries: &[NewEntry<'_>]) -> Result<(), Error> {
    for chunk in entries.chunks(100) {
        let mut sql = String::new();
        insert_sql(&mut sql, 1, chunk.len());
        bind(sqlx::query(sqlx::AssertSqlSafe(sql)), chunk)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Parameters per entry in [`insert_sql`].
pub(super) const PARAMS: usize = 6;

/// Writes `INSERT INTO journal … VALUES …` for `n` entries whose
/// parameters are numbered from `$first`, [`PARAMS`] each, bound by
/// [`bind`]. Other statements embed it in a `WITH` so that an instance's
/// change and its history are one round trip.
pub(super) fn insert_sql(sql: &mut String, first: usize, n: usize) {
    super::insert_rows(
        sql,
        "INSERT INTO journal (instance_id, at, actor, kind, node_id, data) VALUES ",
        "($1, $2, $3, $4, $5, $6)",
        PARAMS,
        first,
        n,
    );
}

/// Binds the parameters of [`insert_sql`], after those already bound.
pub(super) fn bind<'q>(mut q: super::Query<'q>, entries: &[NewEntry<'_>]) -> super::Query<'q> {
    for e in entries {
        let data = if e.data.is_null() {
            None
        } else {
            Some(e.data.to_string())
        };
        q = q
            .bind(e.instance_id.to_owned())
            .bind(e.at)
            .bind(e.actor.to_owned())
            .bind(e.kind.to_owned())
            .bind(e.node_id.map(str::to_owned))
            .bind(data);
    }
    q
}

/// An instance's history, in order.
pub async fn of_instance(conn: &mut Conn, instance: &str) -> Result<Vec<Entry>, Error> {
    let rows = sqlx::query(
        "SELECT seq, instance_id, at, actor, kind, node_id, data FROM journal WHERE instance_id = $1 ORDER BY seq",
    )
    .bind(instance)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let data: Option<String> = r.try_get("data")?;
            Ok(Entry {
                seq: r.try_get("seq")?,
                instance_id: r.try_get("instance_id")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                kind: r.try_get("kind")?,
                node_id: r.try_get("node_id")?,
                data: match data {
                    Some(d) => super::json(&d, "journal", "data")?,
                    None => serde_json::Value::Null,
                },
            })
        })
        .collect()
}

/// Hands `each` the step and gate entries of every instance of `code`
/// started in `[from, to)`, for statistics: `(kind, node, at, data)` in the
/// journal's order, one at a time as they are read (see
/// [`super::for_each_row`]).
pub async fn each_of_code(
    conn: &mut Conn,
    code: &str,
    from: i64,
    to: i64,
    mut each: impl FnMut((String, Option<String>, i64, serde_json::Value)),
) -> Result<(), Error> {
    let rows = sqlx::query(
        "SELECT j.kind, j.node_id, j.at, j.data FROM journal j JOIN instances i ON i.id = j.instance_id \
         WHERE i.code = $1 AND i.started_at >= $2 AND i.started_at < $3 \
         AND j.kind IN ('task_created', 'task_completed', 'job_created', 'job_succeeded', \
                        'job_business_error', 'gate_passed') ORDER BY j.seq",
    )
    .bind(code)
    .bind(from)
    .bind(to)
    .fetch(&mut *conn);
    super::for_each_row(rows, |r| {
        let data: Option<String> = r.try_get("data")?;
        each((
            r.try_get("kind")?,
            r.try_get("node_id")?,
            r.try_get("at")?,
            match data {
                Some(d) => super::json(&d, "journal", "data")?,
                None => serde_json::Value::Null,
            },
        ));
        Ok(())
    })
    .await
}
