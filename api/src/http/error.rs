//! One error type for the API, mapped to status codes in one place. Clients
//! get problem+json (RFC 9457) with a stable `type`; internal details are
//! logged, never returned.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tramite_engine::diagnostic::Diagnostics;
use tramite_engine::runtime::forms::FieldError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Text with the NUL character (U+0000), which no field may hold.
    #[error("text may not contain the NUL character (U+0000)")]
    NulCharacter,
    /// The path does not decode to UTF-8.
    #[error("the path is not valid UTF-8 once decoded")]
    InvalidPath,
    /// The body is larger than the limit.
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// The body could not be read (the client stopped sending it).
    #[error("the body could not be read")]
    BodyUnreadable,
    /// No such route.
    #[error("no such resource")]
    NoRoute,
    /// The route exists, not with this method.
    #[error("this resource does not accept this method")]
    WrongMethod,
    /// No token, or an unknown one.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The user lacks the role or right.
    #[error("{reason}")]
    Forbidden {
        /// Why.
        reason: String,
    },
    /// The body is not JSON, or too large, or of the wrong type.
    #[error("{0}")]
    Body(#[from] JsonRejection),
    /// Query parameters that do not parse.
    #[error("{0}")]
    Query(#[from] axum::extract::rejection::QueryRejection),
    /// Fields of the data that are wrong.
    #[error("{} field(s) are wrong", errors.len())]
    InvalidData {
        /// One per field.
        errors: Vec<FieldError>,
    },
    /// A definition that does not validate.
    #[error("the definition has problems")]
    InvalidDefinition(Vec<Diagnostics>),
    /// The request took longer than the server allows.
    #[error("the request took longer than {0:?}")]
    Timeout(std::time::Duration),
    /// An assignment to a name no user signs in with, or to a user
    /// without the task's role.
    #[error("no user `{user}` with the role `{role}` can take this task")]
    NoSuchAssignee {
        /// The name given.
        user: String,
        /// The task's role.
        role: String,
    },
    /// A webhook whose signature does not match its body.
    #[error("the request's signature does not match its body")]
    BadSignature,
    /// An optional endpoint this server was not set up for.
    #[error("{what} is not configured on this server")]
    NotConfigured {
        /// What is missing.
        what: &'static str,
    },
    /// What the engine said.
    #[error(transparent)]
    Engine(#[from] tramite_engine::Error),
}

impl Error {
    /// One wrong field: a query parameter or a member of the body the
    /// handler checks itself.
    pub(crate) fn field(field: &str, message: &str) -> Error {
        Error::InvalidData {
            errors: vec![FieldError {
                field: field.into(),
                message: message.into(),
            }],
        }
    }

    /// The HTTP status this error answers with (pages use it too).
    pub(crate) fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// Status, stable kind, message for the client and extra members.
    pub(crate) fn parts(&self) -> (StatusCode, &'static str, String, Value) {
        use tramite_engine::Error as E;
        let none = Value::Null;
        match self {
            Error::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                self.to_string(),
                none,
            ),
            Error::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden", self.to_string(), none),
            Error::NulCharacter => (
                StatusCode::BAD_REQUEST,
                "nul-character",
                self.to_string(),
                none,
            ),
            Error::InvalidPath => (
                StatusCode::BAD_REQUEST,
                "invalid-path",
                self.to_string(),
                none,
            ),
            Error::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                self.to_string(),
                none,
            ),
            Error::BodyUnreadable => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                self.to_string(),
                none,
            ),
            Error::NoRoute => (StatusCode::NOT_FOUND, "not-found", self.to_string(), none),
            Error::WrongMethod => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                self.to_string(),
                none,
            ),
            Error::BadSignature => (
                StatusCode::UNAUTHORIZED,
                "bad-signature",
                self.to_string(),
                none,
            ),
            Error::NoSuchAssignee { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "no-such-assignee",
                self.to_string(),
                none,
            ),
            Error::NotConfigured { .. } => (
                StatusCode::NOT_FOUND,
                "not-configured",
                self.to_string(),
                none,
            ),
            Error::Body(r) => {
                let status = r.status();
                let kind = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "not-json",
                    StatusCode::UNPROCESSABLE_ENTITY => "invalid-body",
                    _ => "malformed-body",
                };
                (status, kind, r.body_text(), none)
            }
            Error::Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                self.to_string(),
                none,
            ),
            Error::Query(r) => (
                StatusCode::BAD_REQUEST,
                "invalid-query",
                r.body_text(),
                none,
            ),
            Error::InvalidData { errors } | Error::Engine(E::InvalidData { errors }) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-data",
                format!("{} field(s) are wrong", errors.len()),
                json!({"errors": errors}),
            ),
            Error::InvalidDefinition(d) | Error::Engine(E::Invalid(d)) => {
                let errors: Vec<Value> = d
                    .iter()
                    .flat_map(|file| {
                        file.items.iter().map(move |i| {
                            json!({
                                "file": file.file,
                                "line": i.pos.map(|p| p.line),
                                "column": i.pos.map(|p| p.column),
                                "path": i.path.to_string(),
                                "code": i.code.as_str(),
                                "message": i.message,
                            })
                        })
                    })
                    .collect();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-definition",
                    format!("{} problem(s) in the definition", errors.len()),
                    json!({"errors": errors}),
                )
            }
            Error::Engine(e) => match e {
                E::NotFound { .. } | E::NotDeployed { .. } => {
                    (StatusCode::NOT_FOUND, "not-found", e.to_string(), none)
                }
                E::ChannelNotAllowed { .. } | E::UnknownOutcome { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "not-allowed",
                    e.to_string(),
                    none,
                ),
                E::TaskNotOpen { .. } => {
                    (StatusCode::CONFLICT, "task-not-open", e.to_string(), none)
                }
                E::TaskForOtherRole { .. } => {
                    (StatusCode::FORBIDDEN, "forbidden", e.to_string(), none)
                }
                E::TaskClaimedByOther { .. } => {
                    (StatusCode::CONFLICT, "task-claimed", e.to_string(), none)
                }
                E::EmptyId { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "empty-id",
                    e.to_string(),
                    none,
                ),
                E::TooLong { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "too-long",
                    e.to_string(),
                    none,
                ),
                E::TooDeep { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "too-deep",
                    e.to_string(),
                    none,
                ),
                E::MessageIdTaken { .. } => (
                    StatusCode::CONFLICT,
                    "message-id-taken",
                    e.to_string(),
                    none,
                ),
                E::RequestIdTaken { .. } => (
                    StatusCode::CONFLICT,
                    "request-id-taken",
                    e.to_string(),
                    none,
                ),
                E::InstanceNotRunning { .. } => (
                    StatusCode::CONFLICT,
                    "instance-not-running",
                    e.to_string(),
                    none,
                ),
                E::IncidentNotOpen { .. }
                | E::IncidentNeedsResolution { .. }
                | E::IncidentJobGone { .. } => {
                    (StatusCode::CONFLICT, "incident-state", e.to_string(), none)
                }
                E::Concurrent { .. } => (
                    StatusCode::CONFLICT,
                    "concurrent-change",
                    e.to_string(),
                    none,
                ),
                E::CommitOutcomeUnknown => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "commit-outcome-unknown",
                    e.to_string(),
                    none,
                ),
                E::LogSyncFailed => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log-sync-failed",
                    e.to_string(),
                    none,
                ),
                E::Stopped => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting-down",
                    e.to_string(),
                    none,
                ),
                e if e.is_read_timeout() => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the read took longer than the database allows (30 s); narrow it (a `code` or `business_key` with a `variable` filter) rather than send it again"
                        .to_owned(),
                    none,
                ),
                e if e.is_storage_refusal() => {
                    tracing::error!(error = %e, "the database takes no changes");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "storage-unavailable",
                        "the database takes no changes just now (its disk is full, or it is read only); nothing was changed, so the request can be sent again once it does"
                            .to_owned(),
                        none,
                    )
                }
                e if e.is_busy() => {
                    tracing::warn!(error = %e, "database busy");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "the database is busy; nothing was changed, so the request can be sent again"
                            .to_owned(),
                        none,
                    )
                }
                _ => {
                    // Database, expression and machine failures: log, never show.
                    tracing::error!(error = %e, "internal error");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "internal error; see the server log".to_owned(),
                        none,
                    )
                }
            },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, kind, detail, extra) = self.parts();
        let mut body = json!({
            "type": format!("https://tramite.dev/problems/{kind}"),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": detail,
        });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        let mut response = (status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tramite_engine::store::Error as Store;

    fn kind(e: tramite_engine::Error) -> (StatusCode, &'static str) {
        let (status, kind, _, _) = Error::from(e).parts();
        (status, kind)
    }

    /// A database out of reach (a connection lost in a fail-over, refused
    /// while the server restarts or is at its connection limit) changed
    /// nothing: 503 `busy`, which clients send again, not 500 `internal`,
    /// which they do not.
    #[test]
    fn a_database_out_of_reach_is_busy_not_internal() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let lost = tramite_engine::Error::Store(Store::Database(sqlx::Error::Io(reset)));
        assert_eq!(kind(lost), (StatusCode::SERVICE_UNAVAILABLE, "busy"));
        let timed_out = tramite_engine::Error::Store(Store::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(kind(timed_out), (StatusCode::SERVICE_UNAVAILABLE, "busy"));
        let locked = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let locked = tramite_engine::Error::Store(Store::Sqlite(locked));
        assert_eq!(kind(locked), (StatusCode::SERVICE_UNAVAILABLE, "busy"));
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let full = tramite_engine::Error::Store(Store::Sqlite(full));
        assert_eq!(
            kind(full),
            (StatusCode::SERVICE_UNAVAILABLE, "storage-unavailable")
        );
        let bug = tramite_engine::Error::CommandPanicked;
        assert_eq!(kind(bug), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
    }
}
