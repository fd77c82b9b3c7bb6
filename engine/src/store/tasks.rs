//! Table `tasks`: user tasks in inboxes.

use sqlx::Row;

use super::{Conn, Error, json};

/// A task as stored. Its form, instructions and outcomes come from the
/// definition's node, not from the row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskRow {
    /// Id.
    pub id: String,
    /// Instance.
    pub instance_id: String,
    /// Token waiting on it.
    pub token: i64,
    /// User task node.
    pub node_id: String,
    /// Procedure code.
    pub code: String,
    /// Instance's business key.
    pub business_key: String,
    /// Candidate role.
    pub role: String,
    /// `open`, `claimed`, `completed` or `cancelled`.
    pub status: String,
    /// Who claimed it.
    pub assignee: Option<String>,
    /// The outcome it was completed with.
    pub outcome: Option<String>,
    /// The data it was completed with.
    pub data: Option<serde_json::Value>,
    /// Created, ms.
    pub created_at: i64,
    /// Due, ms.
    pub due_at: Option<i64>,
    /// Completed, ms.
    pub completed_at: Option<i64>,
    /// Completed by.
    pub completed_by: Option<String>,
}

const COLUMNS: &str = "id, instance_id, token, node_id, code, business_key, role, status, assignee, \
    outcome, data, created_at, due_at, completed_at, completed_by";

fn row(r: &sqlx::any::AnyRow) -> Result<TaskRow, Error> {
    let data: Option<String> = r.try_get(10)?;
    Ok(TaskRow {
        id: r.try_get(0)?,
        instance_id: r.try_get(1)?,
        token: r.try_get(2)?,
        node_id: r.try_get(3)?,
        code: r.try_get(4)?,
        business_key: r.try_get(5)?,
        role: r.try_get(6)?,
        status: r.try_get(7)?,
        assignee: r.try_get(8)?,
        outcome: r.try_get(9)?,
        data: data.map(|d| json(&d, "tasks", "data")).transpose()?,
        created_at: r.try_get(11)?,
        due_at: r.try_get(12)?,
        completed_at: r.try_get(13)?,
        completed_by: r.try_get(14)?,
    })
}

/// A new open task.
#[derive(Debug, Clone)]
pub struct NewTask<'a> {
    /// Id.
    pub id: &'a str,
    /// Instance.
    pub instance_id: &'a str,
    /// Token.
    pub token: u32,
    /// Node.
    pub node_id: &'a str,
    /// Code.
    pub code: &'a str,
    /// Business key.
    pub business_key: &'a str,
    /// Role.
    pub role: &'a str,
    /// Now, ms.
    pub created_at: i64,
    /// Due, ms.
    pub due_at: Option<i64>,
}

/// Opens a task.
pub async fn insert(conn: &mut Conn, t: &NewTask<'_>) -> Result<(), Error> {
    let mut sql = String::new();
    insert_sql(&mut sql, 1, 1);
    bind(
        sqlx::query(sqlx::AssertSqlSafe(sql)),
        std::slice::from_ref(t),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Parameters per task in [`insert_sql`].
pub(super) const PARAMS: usize = 9;

/// Writes `INSERT INTO tasks … VALUES …` for `n` open tasks whose
/// parameters are numbered from `$first`, [`PARAMS`] each, bound by
/// [`bind`] (see [`super::journal::insert_sql`] on why other statements
/// embed it).
pub(super) fn insert_sql(sql: &mut String, first: usize, n: usize) {
    super::insert_rows(
        sql,
        "INSERT INTO tasks (id, instance_id, token, node_id, code, business_key, role, status, \
         created_at, due_at, due_order) VALUES ",
        "($1, $2, $3, $4, $5, $6, $7, 'open', $8, $9, COALESCE($9, 9223372036854775807))",
        PARAMS,
        first,
        n,
    );
}

/// Binds the parameters of [`insert_sql`], after those already bound.
pub(super) fn bind<'q>(mut q: super::Query<'q>, tasks: &[NewTask<'_>]) -> super::Query<'q> {
    for t in tasks {
        q = q
            .bind(t.id.to_owned())
            .bind(t.instance_id.to_owned())
            .bind(i64::from(t.token))
            .bind(t.node_id.to_owned())
            .bind(t.code.to_owned())
            .bind(t.business_key.to_owned())
            .bind(t.role.to_owned())
            .bind(t.created_at)
            .bind(t.due_at);
    }
    q
}

/// A task by id.
pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<TaskRow>, Error> {
    by_id(conn, id, "").await
}

async fn by_id(conn: &mut Conn, id: &str, suffix: &str) -> Result<Option<TaskRow>, Error> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM tasks WHERE id = $1{suffix}"));
    let r = sqlx::query(sql).bind(id).fetch_optional(&mut *conn).await?;
    r.as_ref().map(row).transpose()
}

/// PostgreSQL, in a write transaction: a task, its row locked for the rest
/// of the transaction. A command that decides from a task's status (an
/// escalation coming due: is an agent holding it?) must see a claim that
/// committed while it waited, not the status before it: without the lock,
/// READ COMMITTED shows the old status, and the withdrawal that follows
/// still matches the claimed row once the claim commits.
pub async fn get_for_update(conn: &mut Conn, id: &str) -> Result<Option<TaskRow>, Error> {
    by_id(conn, id, " FOR UPDATE").await
}

/// PostgreSQL: a task and its instance, the instance's row locked for the
/// rest of the transaction (as [`super::instances::get`] locks it), in one
/// statement: a completion needs both, the task first to find its instance,
/// and each statement is a round trip.
pub async fn with_instance(
    conn: &mut Conn,
    id: &str,
) -> Result<Option<(TaskRow, super::instances::InstanceRow)>, Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let qualified = |table: &str, columns: &str| {
            columns
                .split(',')
                .map(|c| format!("{table}.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "SELECT {}, {} FROM tasks t JOIN instances i ON i.id = t.instance_id \
             WHERE t.id = $1 FOR UPDATE OF i",
            qualified("t", COLUMNS),
            qualified("i", super::instances::COLUMNS)
        )
    });
    let r = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    r.map(|r| {
        let columns = COLUMNS.split(',').count();
        Ok((row(&r)?, super::instances::row_at(&r, columns)?))
    })
    .transpose()
}

/// Claims an open task for `user`; false if it is not open.
pub async fn claim(conn: &mut Conn, id: &str, user: &str) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE tasks SET status = 'claimed', assignee = $2 WHERE id = $1 AND status = 'open'",
    )
    .bind(id)
    .bind(user)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Returns a claimed task to its role's inbox; false if `user` does not hold it.
pub async fn unclaim(conn: &mut Conn, id: &str, user: &str) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE tasks SET status = 'open', assignee = NULL WHERE id = $1 AND status = 'claimed' AND assignee = $2",
    )
    .bind(id)
    .bind(user)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Completes a task still open or claimed; false if it is not.
pub async fn complete(
    conn: &mut Conn,
    done: &crate::store::TaskCompletion<'_>,
) -> Result<bool, Error> {
    let q = sqlx::query(sqlx::AssertSqlSafe(complete_sql(1)));
    let done = bind_completion(q, done).execute(&mut *conn).await?;
    Ok(done.rows_affected() == 1)
}

/// The `UPDATE` of [`complete`], its parameters numbered from `$first` and
/// bound by [`bind_completion`]: PostgreSQL runs it inside the statement
/// that writes the instance (`instances::write_all`).
pub(super) fn complete_sql(first: usize) -> String {
    let [id, outcome, data, now, user] = std::array::from_fn(|k| first + k);
    format!(
        "UPDATE tasks SET status = 'completed', outcome = ${outcome}, data = ${data}, \
         completed_at = ${now}, completed_by = ${user}, assignee = COALESCE(assignee, ${user}) \
         WHERE id = ${id} AND status IN ('open', 'claimed') AND (assignee IS NULL OR assignee = ${user})"
    )
}

/// Binds the parameters of [`complete_sql`], after those already bound.
pub(super) fn bind_completion<'q>(
    q: super::Query<'q>,
    done: &crate::store::TaskCompletion<'_>,
) -> super::Query<'q> {
    q.bind(done.id.to_owned())
        .bind(done.outcome.to_owned())
        .bind(done.data.to_string())
        .bind(done.now)
        .bind(done.user.to_owned())
}

/// Withdraws a task that is still open or claimed.
pub async fn cancel(conn: &mut Conn, id: &str, now: i64) -> Result<(), Error> {
    sqlx::query(
        "UPDATE tasks SET status = 'cancelled', completed_at = $2 WHERE id = $1 AND status IN ('open', 'claimed')",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What an inbox shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these roles (empty: any).
    pub roles: Vec<String>,
    /// Only this status (`open`, `claimed`, …); open and claimed when absent.
    pub status: Option<String>,
    /// Only tasks of this instance.
    pub instance_id: Option<String>,
    /// Only this assignee.
    pub assignee: Option<String>,
    /// Only this procedure.
    pub code: Option<String>,
    /// Only this business key.
    pub business_key: Option<String>,
    /// At most this many.
    pub limit: i64,
    /// Only tasks after this cursor (from the previous page).
    pub after: Option<TaskCursor>,
    /// Only tasks due before this moment, ms.
    pub due_before: Option<i64>,
    /// Only tasks whose instance has this variable with this (JSON) value.
    pub variable: Option<(String, serde_json::Value)>,
}

/// Where a page of tasks ended, in inbox order (due time, creation, id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCursor {
    /// Due time, `i64::MAX` for none.
    pub due: i64,
    /// Creation time.
    pub created: i64,
    /// Id.
    pub id: String,
}

impl TaskCursor {
    /// The cursor after `task`.
    pub fn after(task: &TaskRow) -> TaskCursor {
        TaskCursor {
            due: task.due_at.unwrap_or(i64::MAX),
            created: task.created_at,
            id: task.id.clone(),
        }
    }

    /// As text for a URL.
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.due, self.created, self.id)
    }

    /// From text; `None` if it is not a cursor.
    pub fn decode(text: &str) -> Option<TaskCursor> {
        let mut parts = text.splitn(3, '.');
        Some(TaskCursor {
            due: parts.next()?.parse().ok()?,
            created: parts.next()?.parse().ok()?,
            id: parts.next().filter(|id| !id.is_empty())?.to_owned(),
        })
    }
}

/// Tasks matching `filter`, soonest due first.
///
/// The inbox is read as "lanes", one per (role, status) pair asked for, each
/// one range scan of the `tasks_inbox` index in due order that stops after
/// one page; one statement takes the page off their union. So a page costs
/// the same with a thousand tasks as with a million, where one scan over
/// `role IN (…) AND status IN (…)` would sort every matching task. An
/// instance's or a business key's tasks, a handful, are read by one seek and
/// sorted (see `narrow`).
pub async fn list(conn: &mut Conn, filter: &Filter) -> Result<Vec<TaskRow>, Error> {
    let sql = list_sql(filter, conn.backend_name() == "PostgreSQL");
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for value in list_values(filter) {
        q = match value {
            Value::Int(i) => q.bind(i),
            Value::Text(t) => q.bind(t),
        };
    }
    let rows = q.fetch_all(&mut *conn).await?;
    rows.iter().map(row).collect()
}

/// A value bound to a statement built at run time, whichever driver runs it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Int(i64),
    Text(String),
}

/// The values of [`list_sql`]'s placeholders, in order.
pub(super) fn list_values(filter: &Filter) -> Vec<Value> {
    let (roles, statuses) = lanes(filter);
    let mut values = vec![Value::Int(filter.limit.max(1))];
    if narrow(filter) {
        values.extend(roles.iter().flatten().map(|r| Value::Text((*r).to_owned())));
        values.extend(statuses.iter().map(|s| Value::Text((*s).to_owned())));
        condition_values(filter, &mut values);
        return values;
    }
    for role in &roles {
        for status in &statuses {
            if let Some(role) = role {
                values.push(Value::Text(role.to_string()));
            }
            values.push(Value::Text(status.to_string()));
            condition_values(filter, &mut values);
        }
    }
    values
}

/// The values of [`conditions`]' placeholders, in order.
fn condition_values(filter: &Filter, values: &mut Vec<Value>) {
    for value in [
        &filter.instance_id,
        &filter.assignee,
        &filter.code,
        &filter.business_key,
    ]
    .into_iter()
    .flatten()
    {
        values.push(Value::Text(value.clone()));
    }
    if let Some(at) = filter.due_before {
        values.push(Value::Int(at));
    }
    if let Some((name, value)) = &filter.variable {
        // `3.0` is the whole number 3, as the engine stores it.
        let whole = value
            .as_f64()
            .filter(|f| !value.is_i64() && !value.is_u64() && f.fract() == 0.0 && f.abs() < 9e15)
            .map(|f| serde_json::Value::from(f as i64));
        let value = whole.as_ref().unwrap_or(value);
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        values.push(Value::Text(name.clone()));
        values.push(Value::Text(value.to_string()));
        values.push(Value::Text(text));
    }
    if let Some(c) = &filter.after {
        values.push(Value::Int(c.due));
        values.push(Value::Int(c.created));
        values.push(Value::Text(c.id.clone()));
    }
}

/// Whether `filter` picks out a handful of tasks: one instance's, or one
/// business key's. Those are read by one statement and sorted, where an
/// inbox is read lane by lane in index order: the lanes' merge cost a
/// client looking up its instance's next task more than the few rows did.
fn narrow(filter: &Filter) -> bool {
    filter.instance_id.is_some() || filter.business_key.is_some()
}

/// The (role, status) pairs [`list`] reads one lane each of.
pub(super) fn lanes(filter: &Filter) -> (Vec<Option<&str>>, Vec<&str>) {
    let statuses: Vec<&str> = match &filter.status {
        Some(s) => vec![s.as_str()],
        None => vec!["open", "claimed"],
    };
    let roles: Vec<Option<&str>> = if filter.roles.is_empty() {
        vec![None]
    } else {
        filter.roles.iter().map(|r| Some(r.as_str())).collect()
    };
    (roles, statuses)
}

/// What the text of [`list_sql`] depends on: how many lanes, and which of
/// the filter's conditions are present (not their values, which are bound).
/// Filters of one shape share one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    roles: usize,
    statuses: usize,
    conditions: u8,
}

impl Shape {
    pub(super) fn of(filter: &Filter) -> Shape {
        let (roles, statuses) = lanes(filter);
        let present = [
            !filter.roles.is_empty(),
            filter.instance_id.is_some(),
            filter.assignee.is_some(),
            filter.code.is_some(),
            filter.business_key.is_some(),
            filter.due_before.is_some(),
            filter.variable.is_some(),
            filter.after.is_some(),
        ];
        Shape {
            roles: roles.len(),
            statuses: statuses.len(),
            conditions: present
                .iter()
                .enumerate()
                .fold(0, |bits, (i, &on)| bits | (u8::from(on) << i)),
        }
    }
}

/// The statement of [`list`]: `$1` is the page size, then each lane's values
/// (or, for a [`narrow`] filter, the roles, the statuses and the conditions).
pub(super) fn list_sql(filter: &Filter, postgres: bool) -> String {
    let (roles, statuses) = lanes(filter);
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    // See the module documentation of `store` on why a bound LIMIT is cast.
    let limit = format!("CAST({} AS BIGINT)", next());
    if narrow(filter) {
        // On SQLite, `+` keeps role and status out of the index search: an
        // `IN` that searches builds a temporary table of its values on every
        // run, where a test of the instance's few entries is two comparisons.
        let plus = if postgres { "" } else { "+" };
        let mut clauses = Vec::new();
        if !filter.roles.is_empty() {
            let roles: Vec<String> = roles.iter().map(|_| next()).collect();
            clauses.push(format!("{plus}role IN ({})", roles.join(", ")));
        }
        let statuses: Vec<String> = statuses.iter().map(|_| next()).collect();
        clauses.push(format!("{plus}status IN ({})", statuses.join(", ")));
        let clauses = conditions(filter, postgres, &mut next, clauses);
        return format!(
            "SELECT {COLUMNS} FROM {} WHERE {} ORDER BY due_order, created_at, id LIMIT {limit}",
            table(filter, postgres),
            clauses.join(" AND ")
        );
    }
    let mut lanes = Vec::new();
    for role in &roles {
        for _ in &statuses {
            let mut clauses = Vec::new();
            if role.is_some() {
                clauses.push(format!("role = {}", next()));
            }
            clauses.push(format!("status = {}", next()));
            let clauses = conditions(filter, postgres, &mut next, clauses);
            lanes.push(format!(
                "SELECT * FROM (SELECT {COLUMNS}, due_order FROM {} WHERE {} \
                 ORDER BY due_order, created_at, id LIMIT {limit}) AS lane",
                table(filter, postgres),
                clauses.join(" AND ")
            ));
        }
    }
    format!(
        "SELECT {COLUMNS} FROM ({}) AS lanes ORDER BY due_order, created_at, id LIMIT {limit}",
        lanes.join(" UNION ALL ")
    )
}

/// The filter's conditions other than role and status, after `clauses`, in
/// index order. Placeholders are numbered by `next` in the order
/// [`condition_values`] gives the values.
fn conditions(
    filter: &Filter,
    postgres: bool,
    next: &mut impl FnMut() -> String,
    mut clauses: Vec<String>,
) -> Vec<String> {
    for (present, column) in [
        (filter.instance_id.is_some(), "instance_id"),
        (filter.assignee.is_some(), "assignee"),
        (filter.code.is_some(), "code"),
        (filter.business_key.is_some(), "business_key"),
    ] {
        if present {
            clauses.push(format!("{column} = {}", next()));
        }
    }
    if filter.due_before.is_some() {
        clauses.push(format!("due_order < {}", next()));
    }
    if filter.variable.is_some() {
        let (name, value, text) = (next(), next(), next());
        // JSON in TEXT, compared as JSON on both backends: `true` is not
        // `1` and `null` matches a variable set to null (SQLite's
        // `json_extract` gives SQL values, which made both wrong there). A
        // value that looks like a number also matches the same digits
        // stored as text.
        let test = if postgres {
            format!(
                "(i.state::jsonb -> 'variables' -> {name}) IN (({value})::jsonb, to_jsonb(({text})::text))"
            )
        } else {
            // `->` gives JSON text, which tells `true` from `1`; numbers
            // are compared by value besides (a `number` holding `250.0`
            // is 250, as PostgreSQL's jsonb has it).
            let at = format!("'$.variables.' || {name}");
            format!(
                "((i.state -> ({at})) IN (json({value}), json_quote({text})) \
                 OR (json_type({value}) IN ('integer', 'real') \
                     AND json_type(i.state, {at}) IN ('integer', 'real') \
                     AND (i.state ->> ({at})) = ({value} ->> '$')))"
            )
        };
        clauses.push(format!(
            "instance_id IN (SELECT i.id FROM instances i WHERE i.id = tasks.instance_id AND {test})"
        ));
    }
    if filter.after.is_some() {
        let (a, b, c) = (next(), next(), next());
        clauses.push(format!("(due_order, created_at, id) > ({a}, {b}, {c})"));
    }
    clauses
}

/// The table as the statement names it.
///
/// SQLite keeps no statistics: left to itself it walks `tasks_inbox`,
/// which gives the page's order, and reads every task's row
/// to compare its key. A business key matches a handful of tasks, so its
/// index is named. (PostgreSQL weighs the indexes with its statistics; an
/// instance's own index already wins on SQLite.)
fn table(filter: &Filter, postgres: bool) -> &'static str {
    if !postgres && filter.business_key.is_some() && filter.instance_id.is_none() {
        "tasks INDEXED BY tasks_by_business_key"
    } else {
        "tasks"
    }
}

/// A badge counts up to this many tasks per role and then says "more": an
/// exact count of a million-task inbox would read a million index entries
/// on every refresh.
pub const COUNT_CAP: i64 = 1_000;

/// Open and claimed tasks per role, for the inbox badge, each role's count
/// at most [`COUNT_CAP`] + 1 (more than the cap means "over the cap"); roles
/// without tasks count 0.
pub async fn counts(conn: &mut Conn, roles: &[String]) -> Result<Vec<(String, i64)>, Error> {
    if roles.is_empty() {
        return Ok(Vec::new());
    }
    let sql = (1..=roles.len())
        .map(|i| {
            format!(
                "SELECT CAST(${i} AS TEXT) AS role, (SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE role = ${i} \
                 AND status IN ('open', 'claimed') LIMIT {}) AS capped) AS n",
                COUNT_CAP + 1
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for r in roles {
        q = q.bind(r.clone());
    }
    let rows = q.fetch_all(&mut *conn).await?;
    let mut counts = rows
        .iter()
        .map(|r| Ok((r.try_get("role")?, r.try_get("n")?)))
        .collect::<Result<Vec<_>, Error>>()?;
    counts.sort();
    Ok(counts)
}

/// Gives an open or claimed task to `user`.
pub async fn assign(conn: &mut Conn, id: &str, user: &str) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE tasks SET status = 'claimed', assignee = $2 WHERE id = $1 AND status IN ('open', 'claimed')",
    )
    .bind(id)
    .bind(user)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Open and claimed tasks of each of `roles` that has any (for metrics),
/// each counted in its own range of `tasks_inbox`: no index leads with the
/// status, so one count over every role would read every task ever kept.
pub async fn open_by_role(conn: &mut Conn, roles: &[String]) -> Result<Vec<(String, i64)>, Error> {
    let mut out = Vec::new();
    // SQLite takes at most 500 parts in one compound statement.
    for chunk in roles.chunks(200) {
        let sql = (1..=chunk.len())
            .map(|i| {
                format!(
                    "SELECT CAST(${i} AS TEXT) AS role, (SELECT COUNT(*) FROM tasks WHERE role = ${i} \
                     AND status IN ('open', 'claimed')) AS n"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for role in chunk {
            q = q.bind(role.clone());
        }
        for r in q.fetch_all(&mut *conn).await? {
            let n: i64 = r.try_get("n")?;
            if n > 0 {
                out.push((r.try_get("role")?, n));
            }
        }
    }
    Ok(out)
}
