//! Table `incidents`: work that needs an operator.

use sqlx::Row;

use super::{Conn, Error};

/// An incident.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IncidentRow {
    /// Id.
    pub id: String,
    /// Instance.
    pub instance_id: String,
    /// The failed job, if the incident came from one.
    pub job_id: Option<String>,
    /// Node.
    pub node_id: String,
    /// Token stopped.
    pub token: i64,
    /// What went wrong.
    pub message: String,
    /// Raised after the step's side effect happened (a connector answered,
    /// a child ended, a message arrived): it can be resolved, not retried.
    pub after_effect: bool,
    /// `open` or `resolved`.
    pub status: String,
    /// Raised, ms.
    pub created_at: i64,
    /// Closed, ms.
    pub resolved_at: Option<i64>,
    /// Closed by.
    pub resolved_by: Option<String>,
    /// `retried` or `resolved`.
    pub resolution: Option<String>,
}

const COLUMNS: &str = "id, instance_id, job_id, node_id, token, message, after_effect, status, \
    created_at, resolved_at, resolved_by, resolution";

fn row(r: &sqlx::any::AnyRow) -> Result<IncidentRow, Error> {
    Ok(IncidentRow {
        id: r.try_get("id")?,
        instance_id: r.try_get("instance_id")?,
        job_id: r.try_get("job_id")?,
        node_id: r.try_get("node_id")?,
        token: r.try_get("token")?,
        message: r.try_get("message")?,
        after_effect: r.try_get::<i64, _>("after_effect")? != 0,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        resolved_at: r.try_get("resolved_at")?,
        resolved_by: r.try_get("resolved_by")?,
        resolution: r.try_get("resolution")?,
    })
}

/// Raises an incident.
pub async fn insert(conn: &mut Conn, i: &IncidentRow) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO incidents (id, instance_id, job_id, node_id, token, message, after_effect, \
         status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8)",
    )
    .bind(&i.id)
    .bind(&i.instance_id)
    .bind(&i.job_id)
    .bind(&i.node_id)
    .bind(i.token)
    .bind(&i.message)
    .bind(i64::from(i.after_effect))
    .bind(i.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An incident by id.
pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<IncidentRow>, Error> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM incidents WHERE id = $1"));
    let r = sqlx::query(sql).bind(id).fetch_optional(&mut *conn).await?;
    r.as_ref().map(row).transpose()
}

/// Closes an open incident; false if it was not open.
pub async fn close(
    conn: &mut Conn,
    id: &str,
    by: &str,
    resolution: &str,
    now: i64,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE incidents SET status = 'resolved', resolved_at = $2, resolved_by = $3, resolution = $4 \
         WHERE id = $1 AND status = 'open'",
    )
    .bind(id)
    .bind(now)
    .bind(by)
    .bind(resolution)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// [`withdraw_of_job`]'s statement (both backends).
pub(super) const WITHDRAW_OF_JOB: &str = "UPDATE incidents SET status = 'resolved', resolved_at = $2, \
     resolved_by = 'engine', resolution = 'withdrawn' WHERE job_id = $1 AND status = 'open' RETURNING id, node_id";

/// Closes the open incidents of job `job` as withdrawn (its token left the
/// step); their ids and steps.
pub async fn withdraw_of_job(
    conn: &mut Conn,
    job: &str,
    now: i64,
) -> Result<Vec<(String, String)>, Error> {
    let ids = sqlx::query_as(WITHDRAW_OF_JOB)
        .bind(job)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    Ok(ids)
}

/// Closes every open incident of an instance (it was cancelled).
pub async fn close_all(conn: &mut Conn, instance: &str, by: &str, now: i64) -> Result<(), Error> {
    sqlx::query(
        "UPDATE incidents SET status = 'resolved', resolved_at = $2, resolved_by = $3, \
         resolution = 'cancelled' WHERE instance_id = $1 AND status = 'open'",
    )
    .bind(instance)
    .bind(now)
    .bind(by)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Incidents with this status (all when `None`), newest first, optionally of one instance.
pub async fn list(
    conn: &mut Conn,
    status: Option<&str>,
    instance: Option<&str>,
    limit: i64,
) -> Result<Vec<IncidentRow>, Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM incidents WHERE ($1 IS NULL OR status = $1) \
         AND ($2 IS NULL OR instance_id = $2) ORDER BY created_at DESC LIMIT CAST($3 AS BIGINT)"
    ));
    let rows = sqlx::query(sql)
        .bind(status)
        .bind(instance)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(row).collect()
}

/// How many incidents are open.
pub async fn open_count(conn: &mut Conn) -> Result<i64, Error> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM incidents WHERE status = 'open'")
            .fetch_one(&mut *conn)
            .await?,
    )
}
