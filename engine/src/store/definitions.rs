//! Table `definitions`: deployed versions, immutable.

use sqlx::Row;

use super::{Conn, Error};

/// A stored version.
#[derive(Debug, Clone)]
pub struct DefinitionRow {
    /// Row id.
    pub id: i64,
    /// Procedure code.
    pub code: String,
    /// Version, from 1.
    pub version: i64,
    /// Hash of the source.
    pub content_hash: String,
    /// File name it was deployed from.
    pub file_name: String,
    /// The YAML.
    pub source: String,
    /// When, ms.
    pub deployed_at: i64,
}

const COLUMNS: &str = "id, code, version, content_hash, file_name, source, deployed_at";

fn row(r: &sqlx::any::AnyRow) -> Result<DefinitionRow, Error> {
    Ok(DefinitionRow {
        id: r.try_get("id")?,
        code: r.try_get("code")?,
        version: r.try_get("version")?,
        content_hash: r.try_get("content_hash")?,
        file_name: r.try_get("file_name")?,
        source: r.try_get("source")?,
        deployed_at: r.try_get("deployed_at")?,
    })
}

/// The version of `code` with this content, if deployed.
pub async fn by_hash(
    conn: &mut Conn,
    code: &str,
    hash: &str,
) -> Result<Option<DefinitionRow>, Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM definitions WHERE code = $1 AND content_hash = $2"
    ));
    let r = sqlx::query(sql)
        .bind(code)
        .bind(hash)
        .fetch_optional(&mut *conn)
        .await?;
    r.as_ref().map(row).transpose()
}

/// The latest version of `code`.
pub async fn latest(conn: &mut Conn, code: &str) -> Result<Option<DefinitionRow>, Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM definitions WHERE code = $1 ORDER BY version DESC LIMIT 1"
    ));
    let r = sqlx::query(sql)
        .bind(code)
        .fetch_optional(&mut *conn)
        .await?;
    r.as_ref().map(row).transpose()
}

/// The row id of the latest version of `code`, without its source.
pub async fn latest_id(conn: &mut Conn, code: &str) -> Result<Option<i64>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM definitions WHERE code = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(code)
    .fetch_optional(&mut *conn)
    .await?)
}

/// A version by row id.
pub async fn by_id(conn: &mut Conn, id: i64) -> Result<Option<DefinitionRow>, Error> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM definitions WHERE id = $1"));
    let r = sqlx::query(sql).bind(id).fetch_optional(&mut *conn).await?;
    r.as_ref().map(row).transpose()
}

/// Every version, newest first per code.
pub async fn all(conn: &mut Conn) -> Result<Vec<DefinitionRow>, Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM definitions ORDER BY code, version DESC"
    ));
    let rows = sqlx::query(sql).fetch_all(&mut *conn).await?;
    rows.iter().map(row).collect()
}

/// Every version's id and code, newest version first per code (without
/// the sources: for lookups that use compiled, cached versions).
pub async fn ids(conn: &mut Conn) -> Result<Vec<(i64, String)>, Error> {
    let rows = sqlx::query("SELECT id, code FROM definitions ORDER BY code, version DESC")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("code")?)))
        .collect()
}

/// Stores the next version of `code`; returns its row.
pub async fn insert(
    conn: &mut Conn,
    code: &str,
    hash: &str,
    file_name: &str,
    source: &str,
    now: i64,
) -> Result<DefinitionRow, Error> {
    let next: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM definitions WHERE code = $1")
            .bind(code)
            .fetch_one(&mut *conn)
            .await?;
    let sql = sqlx::AssertSqlSafe(format!(
        "INSERT INTO definitions (code, version, content_hash, file_name, source, deployed_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    ));
    let r = sqlx::query(sql)
        .bind(code)
        .bind(next)
        .bind(hash)
        .bind(file_name)
        .bind(source)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
    row(&r)
}
