//! Tables `subscriptions` (instances waiting for a message) and `messages`
//! (messages received: delivered, or kept until an instance waits).

use sqlx::Row;

use super::{Conn, Error};

/// An instance waiting for a message.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Id.
    pub id: String,
    /// Instance.
    pub instance_id: String,
    /// Token.
    pub token: i64,
    /// Node.
    pub node_id: String,
}

/// A wait to register.
#[derive(Debug, Clone, Copy)]
pub struct NewSubscription<'a> {
    /// Id.
    pub id: &'a str,
    /// Instance.
    pub instance: &'a str,
    /// Token.
    pub token: u32,
    /// Message wait node.
    pub node: &'a str,
    /// Message name.
    pub name: &'a str,
    /// Correlation key.
    pub key: &'a str,
    /// Now, ms.
    pub now: i64,
}

/// Registers a wait.
pub async fn subscribe(conn: &mut Conn, s: NewSubscription<'_>) -> Result<(), Error> {
    let NewSubscription {
        id,
        instance,
        token,
        node,
        name,
        key,
        now,
    } = s;
    sqlx::query(
        "INSERT INTO subscriptions (id, instance_id, token, node_id, message_name, correlation_key, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(instance)
    .bind(i64::from(token))
    .bind(node)
    .bind(name)
    .bind(key)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes a wait.
pub async fn unsubscribe(conn: &mut Conn, id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM subscriptions WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The oldest wait for `name` with `key`.
pub async fn find(conn: &mut Conn, name: &str, key: &str) -> Result<Option<Subscription>, Error> {
    let r = sqlx::query(
        "SELECT id, instance_id, token, node_id FROM subscriptions \
         WHERE message_name = $1 AND correlation_key = $2 ORDER BY created_at LIMIT 1",
    )
    .bind(name)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    r.map(|r| {
        Ok(Subscription {
            id: r.try_get("id")?,
            instance_id: r.try_get("instance_id")?,
            token: r.try_get("token")?,
            node_id: r.try_get("node_id")?,
        })
    })
    .transpose()
}

/// A received message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MessageRow {
    /// Message id (the publisher's, for deduplication).
    pub id: String,
    /// Name.
    pub message_name: String,
    /// Correlation key.
    pub correlation_key: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// `delivered` or `pending`.
    pub status: String,
    /// The instance it reached.
    pub instance_id: Option<String>,
    /// Received, ms.
    pub received_at: i64,
    /// Kept until, ms (pending only).
    pub expires_at: Option<i64>,
}

/// Records a message, unless its id was seen before (deduplication).
pub async fn record(conn: &mut Conn, m: &MessageRow) -> Result<Recorded, Error> {
    let done = sqlx::query(
        "INSERT INTO messages (id, message_name, correlation_key, payload, status, instance_id, \
         received_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&m.id)
    .bind(&m.message_name)
    .bind(&m.correlation_key)
    .bind(m.payload.to_string())
    .bind(&m.status)
    .bind(&m.instance_id)
    .bind(m.received_at)
    .bind(m.expires_at)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Recorded::New);
    }
    let (message_name, correlation_key): (String, String) =
        sqlx::query_as("SELECT message_name, correlation_key FROM messages WHERE id = $1")
            .bind(&m.id)
            .fetch_one(&mut *conn)
            .await?;
    Ok(Recorded::Seen {
        message_name,
        correlation_key,
    })
}

/// What [`record`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Stored: its id is new.
    New,
    /// Not stored: a message with its id was received before, with this
    /// name and key (the same message again, if they are its own).
    Seen {
        /// The earlier message's name.
        message_name: String,
        /// The earlier message's correlation key.
        correlation_key: String,
    },
}

/// The oldest pending, unexpired message for `name` and `key` that arrived
/// at `since` or later (the waiting instance's start: a message kept from
/// before it, such as a photo left over from the client's last request,
/// is not its own).
pub async fn pending(
    conn: &mut Conn,
    name: &str,
    key: &str,
    since: i64,
    now: i64,
) -> Result<Option<MessageRow>, Error> {
    let r = sqlx::query(
        "SELECT id, message_name, correlation_key, payload, status, instance_id, received_at, expires_at \
         FROM messages WHERE message_name = $1 AND correlation_key = $2 AND status = 'pending' \
         AND (expires_at IS NULL OR expires_at > $3) AND received_at >= $4 \
         ORDER BY received_at LIMIT 1",
    )
    .bind(name)
    .bind(key)
    .bind(now)
    .bind(since)
    .fetch_optional(&mut *conn)
    .await?;
    r.map(|r| message_row(&r)).transpose()
}

/// The instances that took messages of `name` and `key`, latest first (a
/// few): one of them may be taking the rest of a sending (`collect`).
pub async fn recent_takers(conn: &mut Conn, name: &str, key: &str) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(RECENT_TAKERS)
        .bind(name)
        .bind(key)
        .fetch_all(&mut *conn)
        .await?)
}

/// [`recent_takers`]' statement (both backends).
pub(super) const RECENT_TAKERS: &str = "SELECT instance_id FROM messages WHERE message_name = $1 \
     AND correlation_key = $2 AND status = 'delivered' AND instance_id IS NOT NULL \
     GROUP BY instance_id ORDER BY MAX(received_at) DESC LIMIT 8";

fn message_row(r: &sqlx::any::AnyRow) -> Result<MessageRow, Error> {
    let payload: String = r.try_get("payload")?;
    Ok(MessageRow {
        id: r.try_get("id")?,
        message_name: r.try_get("message_name")?,
        correlation_key: r.try_get("correlation_key")?,
        payload: super::json(&payload, "messages", "payload")?,
        status: r.try_get("status")?,
        instance_id: r.try_get("instance_id")?,
        received_at: r.try_get("received_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// Marks a pending message delivered to `instance`.
pub async fn delivered(conn: &mut Conn, id: &str, instance: &str) -> Result<(), Error> {
    sqlx::query("UPDATE messages SET status = 'delivered', instance_id = $2, expires_at = NULL WHERE id = $1")
        .bind(id)
        .bind(instance)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Keeps a message marked delivered for a later wait after all.
pub async fn kept(conn: &mut Conn, id: &str, expires_at: i64) -> Result<(), Error> {
    sqlx::query(
        "UPDATE messages SET status = 'pending', instance_id = NULL, expires_at = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Received messages with `status`, newest first: `pending` (kept, no
/// instance waited yet, a wait may still take it), `expired` (kept past its
/// time at `now`: no wait will take it), `delivered`.
pub async fn list(
    conn: &mut Conn,
    status: &str,
    now: i64,
    limit: i64,
) -> Result<Vec<MessageRow>, Error> {
    let (stored, when) = match status {
        "pending" => ("pending", "(expires_at IS NULL OR expires_at > $2)"),
        "expired" => ("pending", "expires_at <= $2"),
        other => (other, "$2 = $2"),
    };
    let sql = format!(
        "SELECT id, message_name, correlation_key, payload, status, instance_id, received_at, expires_at \
         FROM messages WHERE status = $1 AND {when} ORDER BY received_at DESC LIMIT CAST($3 AS BIGINT)"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(stored)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(message_row).collect()
}

/// The messages delivered to `instance`, in arrival order.
pub async fn of_instance(conn: &mut Conn, instance: &str) -> Result<Vec<MessageRow>, Error> {
    let rows = sqlx::query(
        "SELECT id, message_name, correlation_key, payload, status, instance_id, received_at, expires_at \
         FROM messages WHERE instance_id = $1 ORDER BY received_at",
    )
    .bind(instance)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(message_row).collect()
}
