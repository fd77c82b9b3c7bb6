//! Table `ended_sessions`: web sessions signed out before they expired.
//! The API's sessions are signed cookies any node checks on its own; this
//! is what makes "Salir" end one on every node, not only in one browser.

use super::{Conn, Error};

/// Records that session `id` has ended; it would have expired at
/// `expires_at` (ms). Sessions past their expiry by `now` are forgotten:
/// their cookies are refused anyway.
pub async fn end(conn: &mut Conn, id: &str, expires_at: i64, now: i64) -> Result<(), Error> {
    sqlx::query("DELETE FROM ended_sessions WHERE expires_at < $1")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO ended_sessions (id, expires_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether session `id` has ended.
pub async fn ended(conn: &mut Conn, id: &str) -> Result<bool, Error> {
    let row = sqlx::query("SELECT id FROM ended_sessions WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}
