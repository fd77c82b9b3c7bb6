//! Table `jobs`: connector calls and timers, claimed under leases.

use sqlx::Row;

use super::{Backend, Conn, Error, json};

/// A job a worker has claimed.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Id.
    pub id: String,
    /// Instance.
    pub instance_id: String,
    /// Token.
    pub token: i64,
    /// Node.
    pub node_id: String,
    /// `service` or `timer`.
    pub kind: String,
    /// Connector.
    pub connector: Option<String>,
    /// Operation.
    pub operation: Option<String>,
    /// Input.
    pub input: serde_json::Map<String, serde_json::Value>,
    /// Why the stored input could not be read, if it could not (a row
    /// edited by hand, a fault of the disk): such a job is not run but
    /// stops at an incident, so that one bad row never stops every claim.
    pub unreadable: Option<String>,
    /// Stable across retries.
    pub idempotency_key: String,
    /// This attempt's number, from 1.
    pub attempts: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// How long one attempt may take, ms.
    pub timeout_ms: Option<i64>,
    /// This claim's lease owner: a result is applied only under it.
    pub lease_owner: String,
    /// When the job was made, or an operator last retried it, ms: a
    /// throttling system's patience counts from it.
    pub created_at: i64,
    /// Set by the claim, never by the store: why this job is not run but
    /// stops at an incident. The incident is raised by a command of its
    /// own, which locks the instance before the job as every other command
    /// does; raised inside the claim, which already holds the job, it
    /// deadlocked on PostgreSQL with a cancel holding the instance.
    pub stop: Option<String>,
}

/// [`reschedule`]'s statement (both backends); `$5` is 1 to give the
/// claim's attempt back.
pub(super) const RESCHEDULE: &str = "UPDATE jobs SET status = 'ready', lease_owner = NULL, \
     lease_until = NULL, run_at = $3, last_error = $4, attempts = attempts - $5 \
     WHERE id = $1 AND lease_owner = $2 AND status = 'running'";

/// A new job.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// Id.
    pub id: &'a str,
    /// Instance.
    pub instance_id: &'a str,
    /// Token.
    pub token: u32,
    /// Node.
    pub node_id: &'a str,
    /// `service` or `timer`.
    pub kind: &'a str,
    /// Connector.
    pub connector: Option<&'a str>,
    /// Operation.
    pub operation: Option<&'a str>,
    /// Input as JSON.
    pub input: Option<String>,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// How long one attempt may take, ms.
    pub timeout_ms: Option<i64>,
    /// When to run, ms.
    pub run_at: i64,
    /// Now, ms.
    pub created_at: i64,
}

/// What a job asked its system: read when an operator runs the step again,
/// to ask with the same idempotency key when the input is the same.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// The key the system saw.
    pub idempotency_key: String,
    /// Input as JSON.
    pub input: Option<String>,
}

/// A job's request, if the job exists.
pub async fn request(conn: &mut Conn, id: &str) -> Result<Option<JobRequest>, Error> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT idempotency_key, input FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(idempotency_key, input)| JobRequest {
        idempotency_key,
        input,
    }))
}

/// Schedules a job.
pub async fn insert(conn: &mut Conn, j: &NewJob<'_>) -> Result<(), Error> {
    let mut sql = String::new();
    insert_sql(&mut sql, 1, 1);
    bind(
        sqlx::query(sqlx::AssertSqlSafe(sql)),
        std::slice::from_ref(j),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// [`CHANNEL`] as a literal, so that [`NOTIFIED`] can be built from it.
macro_rules! channel {
    () => {
        "tramite_jobs"
    };
}

/// The PostgreSQL channel on which a transaction that scheduled jobs tells
/// every engine node, when it commits, that jobs wait (the nodes LISTEN on
/// it), so that an idle node never looks for a job that is not there yet.
pub const CHANNEL: &str = channel!();

/// A `WITH` item that sends the notice on [`CHANNEL`] (delivered when the
/// transaction commits). `pg_notify` returns `void`, which is no column to
/// fetch: a statement reads `notified` (a count of it) so that it runs.
pub(crate) const NOTIFIED: &str = concat!(
    "notified AS MATERIALIZED (SELECT pg_notify('",
    channel!(),
    "', ''))"
);

/// Parameters per job in [`insert_sql`].
pub(super) const PARAMS: usize = 13;

/// Writes `INSERT INTO jobs … VALUES …` for `n` ready jobs whose parameters
/// are numbered from `$first`, [`PARAMS`] each, bound by [`bind`] (see
/// [`super::journal::insert_sql`] on why other statements embed it).
pub(super) fn insert_sql(sql: &mut String, first: usize, n: usize) {
    super::insert_rows(
        sql,
        "INSERT INTO jobs (id, instance_id, token, node_id, kind, connector, operation, input, \
         idempotency_key, status, attempts, max_attempts, timeout_ms, run_at, created_at) VALUES ",
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, 'ready', 0, $10, $11, $12, $13)",
        PARAMS,
        first,
        n,
    );
}

/// Binds the parameters of [`insert_sql`], after those already bound.
pub(super) fn bind<'q>(mut q: super::Query<'q>, jobs: &[NewJob<'_>]) -> super::Query<'q> {
    for j in jobs {
        q = q
            .bind(j.id.to_owned())
            .bind(j.instance_id.to_owned())
            .bind(i64::from(j.token))
            .bind(j.node_id.to_owned())
            .bind(j.kind.to_owned())
            .bind(j.connector.map(str::to_owned))
            .bind(j.operation.map(str::to_owned))
            .bind(j.input.clone())
            .bind(j.idempotency_key.clone())
            .bind(i64::from(j.max_attempts))
            .bind(j.timeout_ms)
            .bind(j.run_at)
            .bind(j.created_at);
    }
    q
}

/// Claims up to `limit` due jobs (ready, or running with an expired lease)
/// for `owner` until `lease_until` plus the job's timeout (or
/// `default_timeout_ms`): a lease never ends while its call may still run.
pub async fn claim(
    conn: &mut Conn,
    backend: Backend,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
    default_timeout_ms: i64,
) -> Result<Vec<ClaimedJob>, Error> {
    let sql = match backend {
        Backend::Sqlite => super::sqlite::CLAIM_JOBS,
        Backend::Postgres => super::postgres::CLAIM_JOBS,
    };
    let rows = sqlx::query(sql)
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .bind(default_timeout_ms)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            let input: Option<String> = r.try_get("input")?;
            let (input, unreadable) = read_input(input.as_deref());
            Ok(ClaimedJob {
                id: r.try_get("id")?,
                instance_id: r.try_get("instance_id")?,
                token: r.try_get("token")?,
                node_id: r.try_get("node_id")?,
                kind: r.try_get("kind")?,
                connector: r.try_get("connector")?,
                operation: r.try_get("operation")?,
                input,
                unreadable,
                stop: None,
                idempotency_key: r.try_get("idempotency_key")?,
                attempts: r.try_get("attempts")?,
                max_attempts: r.try_get("max_attempts")?,
                timeout_ms: r.try_get("timeout_ms")?,
                lease_owner: owner.to_owned(),
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// A claimed job's stored input, or why it cannot be read: the claim
/// goes on either way (see [`ClaimedJob::unreadable`]).
pub(super) fn read_input(
    text: Option<&str>,
) -> (serde_json::Map<String, serde_json::Value>, Option<String>) {
    match text.map(|t| json(t, "jobs", "input")) {
        None => (serde_json::Map::new(), None),
        Some(Ok(input)) => (input, None),
        Some(Err(e)) => (serde_json::Map::new(), Some(e.to_string())),
    }
}

/// Marks a job done if `owner` still holds its lease; false if the lease
/// was lost (another worker took it over, or it was cancelled).
pub async fn finish(
    conn: &mut Conn,
    id: &str,
    owner: &str,
    status: &str,
    error: Option<&str>,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE jobs SET status = $3, lease_owner = NULL, lease_until = NULL, last_error = $4 \
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(status)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Puts a job held by `retry.owner` back in the queue for `retry.run_at`.
pub async fn reschedule(conn: &mut Conn, retry: super::JobRetry<'_>) -> Result<bool, Error> {
    let done = sqlx::query(RESCHEDULE)
        .bind(retry.id)
        .bind(retry.owner)
        .bind(retry.run_at)
        .bind(retry.error)
        .bind(i64::from(!retry.counted))
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Makes a job in an incident runnable again, with a fresh set of attempts.
pub async fn revive(conn: &mut Conn, id: &str, now: i64) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE jobs SET status = 'ready', attempts = 0, run_at = $2, created_at = $2 WHERE id = $1 AND status = 'incident'",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Drops a job that has not finished; whether it was stopped at an
/// incident (the common case, a job due or running, is one statement).
pub async fn cancel(conn: &mut Conn, id: &str) -> Result<bool, Error> {
    let pending = sqlx::query(CANCEL_PENDING)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if pending.rows_affected() == 1 {
        return Ok(false);
    }
    let stopped = sqlx::query(CANCEL_STOPPED)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(stopped.rows_affected() == 1)
}

/// [`cancel`]'s statements (both backends: `$1` is SQLite's first
/// parameter too).
pub(super) const CANCEL_PENDING: &str = "UPDATE jobs SET status = 'cancelled', lease_owner = NULL \
     WHERE id = $1 AND status IN ('ready', 'running')";
pub(super) const CANCEL_STOPPED: &str = "UPDATE jobs SET status = 'cancelled', lease_owner = NULL WHERE id = $1 AND status = 'incident'";

/// Releases every lease (a single-node SQLite engine starting up: whoever
/// held them is gone).
pub async fn release_all(conn: &mut Conn, now: i64) -> Result<u64, Error> {
    let done = sqlx::query(
        "UPDATE jobs SET status = 'ready', lease_owner = NULL, lease_until = NULL, run_at = $1 \
         WHERE status = 'running'",
    )
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Counts jobs by status (for tests and metrics).
pub async fn count(conn: &mut Conn, status: &str) -> Result<i64, Error> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = $1")
            .bind(status)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// The earliest `run_at` of a job waiting to run, ms.
pub async fn next_due(conn: &mut Conn) -> Result<Option<i64>, Error> {
    Ok(
        sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE status IN ('ready', 'running')")
            .fetch_one(&mut *conn)
            .await?,
    )
}
