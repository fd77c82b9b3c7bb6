use std::path::PathBuf;

use crate::diagnostic::Diagnostics;
use crate::runtime::eval::EvalError;
use crate::runtime::forms::FieldError;
use crate::runtime::machine::MachineError;

/// Errors of the engine layer. Each variant is one thing a caller can act
/// on; the API maps them to status codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A definition file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A definition file is not UTF-8 (saved by an editor in Windows-1252,
    /// say): where its first byte that is not.
    #[error(
        "{}:{line}:{column}: the file is not UTF-8 (saved as Windows-1252 or Latin-1?); save it as UTF-8",
        path.display()
    )]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Line of the first byte that is not UTF-8, from 1.
        line: usize,
        /// Its column (in characters), from 1.
        column: usize,
    },
    /// Definitions did not load or did not validate; every problem found is inside.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostics>),
    /// The database failed (details are for logs, not for clients).
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// No such instance, task, incident, job or version.
    #[error("{what} `{id}` does not exist")]
    NotFound {
        /// What was looked for.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// No version of this procedure is deployed.
    #[error("procedure `{code}` is not deployed")]
    NotDeployed {
        /// The code asked for.
        code: String,
    },
    /// The procedure's start does not accept this channel.
    #[error("procedure `{code}` cannot be started by channel `{channel}`; it accepts {allowed:?}")]
    ChannelNotAllowed {
        /// Procedure.
        code: String,
        /// Channel given.
        channel: String,
        /// Channels accepted.
        allowed: Vec<String>,
    },
    /// Submitted data does not fit the form (or the start's data); nothing was changed.
    #[error("{} field(s) are wrong", errors.len())]
    InvalidData {
        /// One entry per wrong field.
        errors: Vec<FieldError>,
    },
    /// The outcome is not one of the task's buttons.
    #[error("outcome `{outcome}` is not one of {allowed:?}")]
    UnknownOutcome {
        /// Outcome given.
        outcome: String,
        /// Outcomes allowed.
        allowed: Vec<String>,
    },
    /// The task was completed or withdrawn already.
    #[error("task `{task}` is {status}, not open")]
    TaskNotOpen {
        /// Task.
        task: String,
        /// Its status.
        status: String,
    },
    /// The caller has none of the task's role.
    #[error("this task is for the role `{role}`")]
    TaskForOtherRole {
        /// Task.
        task: String,
        /// Its role.
        role: String,
    },
    /// Someone else holds the task.
    #[error("task `{task}` is claimed by {assignee}")]
    TaskClaimedByOther {
        /// Task.
        task: String,
        /// Who holds it.
        assignee: String,
    },
    /// The instance has ended.
    #[error("instance `{instance}` is {status}")]
    InstanceNotRunning {
        /// Instance.
        instance: String,
        /// Its status.
        status: String,
    },
    /// One command's calls would start more instances than
    /// [`crate::runtime::commands::MAX_STARTS_PER_COMMAND`] (procedures
    /// that call each other in a ring).
    #[error(
        "one command may start at most {limit} instances through calls; do the procedures call each other in a ring?"
    )]
    TooManyStarts {
        /// The limit.
        limit: usize,
    },
    /// An id that deduplicates (a start's request id, a message's id or
    /// key) left empty: every later one would be taken for a repeat.
    #[error("`{field}` may not be empty")]
    EmptyId {
        /// Which field.
        field: &'static str,
    },
    /// A key the database indexes (a business key, a request id, a
    /// message's name, id or key) longer than [`MAX_KEY_BYTES`](crate::runtime::MAX_KEY_BYTES):
    /// PostgreSQL cannot index it, and no real one is that long.
    #[error("`{field}` is longer than {limit} bytes")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// The longest allowed, in bytes.
        limit: usize,
    },
    /// A value given to the engine (start data, form data, a message's
    /// payload, an operator's variables) is nested deeper than
    /// [`crate::runtime::MAX_NESTING`]: stored a few levels deeper still
    /// (in the state, the history), it could exceed what JSON readers
    /// take and leave the instance unreadable.
    #[error("`{field}` is nested deeper than {limit} levels")]
    TooDeep {
        /// Which value.
        field: &'static str,
        /// The deepest allowed.
        limit: usize,
    },
    /// A message's id was used before by a message of another name or key.
    #[error("message id `{id}` was used before by another message (another name or key)")]
    MessageIdTaken {
        /// The id.
        id: String,
    },
    /// A start's request id was used before by a start from another
    /// channel: it is not answered with that request (whose id it would
    /// reveal), nor does it start a second one.
    #[error("request id `{request}` was used before by a start from another channel")]
    RequestIdTaken {
        /// The request id.
        request: String,
    },
    /// The incident was already retried or resolved.
    #[error("incident `{incident}` is not open")]
    IncidentNotOpen {
        /// Incident.
        incident: String,
    },
    /// The incident came after its step's side effect (a connector answered,
    /// a child ended, a message arrived): running the step again would repeat
    /// it, so it can only be resolved with the variables the step should have written.
    #[error(
        "incident `{incident}` happened after its step took effect; resolve it instead of retrying"
    )]
    IncidentNeedsResolution {
        /// Incident.
        incident: String,
    },
    /// The incident's job is no longer stopped at it, so a retry has
    /// nothing to run; the incident stays open, to be resolved.
    #[error(
        "incident `{incident}` has no stopped call to run again; resolve it instead of retrying"
    )]
    IncidentJobGone {
        /// Incident.
        incident: String,
    },
    /// An expression failed while evaluating a command's own input.
    #[error(transparent)]
    Expression(#[from] EvalError),
    /// The token machine refused to go on.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// Another engine process changed the same instance first; retry.
    #[error("instance `{instance}` changed concurrently")]
    Concurrent {
        /// Instance.
        instance: String,
    },
    /// Another engine (another `tramite serve`, say) has this SQLite file
    /// open: two would each release the other's leases and run its jobs
    /// again. (Several engines share PostgreSQL, not SQLite.)
    #[error(
        "{} is in use by another tramite process (its lock {} is held); stop it first, or use PostgreSQL for several nodes",
        database.display(),
        lock.display()
    )]
    DatabaseInUse {
        /// The database file.
        database: PathBuf,
        /// The lock file held beside it.
        lock: PathBuf,
    },
    /// The engine is shutting down and takes no more commands.
    #[error("the engine is shutting down")]
    Stopped,
    /// Whether the command took effect cannot be confirmed: on PostgreSQL
    /// the connection broke while committing and the database could not be
    /// asked afterwards; on SQLite the log holding the commit (or what the
    /// command read) could not be synced to disk. Never answered as success,
    /// never run again.
    #[error("the change could not be confirmed as committed; it may or may not have been made")]
    CommitOutcomeUnknown,
    /// The database's log could not be synced to disk. Commits since the
    /// last good sync may not survive a power loss, and a later sync
    /// proves nothing about them (the operating system may have dropped the
    /// pages it failed to write), so the engine takes no more changes until
    /// it is restarted.
    #[error(
        "the database's log could not be written to disk; the engine takes no more changes until it is restarted"
    )]
    LogSyncFailed,
    /// The command stopped on an internal fault (logged): nothing it did
    /// was kept, and the engine goes on with the others.
    #[error("the command stopped on an internal fault; nothing it did was kept")]
    CommandPanicked,
}

impl Error {
    /// The database was too busy, or out of reach, to take the change: no
    /// free connection in time, a deadlock or serialisation failure that
    /// outlasted the writer's retries, a connection lost or refused (a
    /// PostgreSQL fail-over or restart, its connection limit), a SQLite
    /// read that waited out another's lock. Nothing was written — a commit
    /// whose answer was lost is looked up, and answered as it happened or
    /// `CommitOutcomeUnknown` — so sending it again is safe.
    pub fn is_busy(&self) -> bool {
        use crate::store::Error as S;
        match self {
            Error::Store(S::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_),
            )) => true,
            // PostgreSQL: admin shutdown, crash shutdown, cannot connect now
            // (a server restarting or failing over), too many connections,
            // and the connection exceptions (not 08P01, a protocol
            // violation: a bug). SQLite through sqlx (its codes are numbers,
            // PostgreSQL's five characters): busy or locked, extended codes
            // included.
            Error::Store(S::Database(sqlx::Error::Database(d))) => {
                d.code().is_some_and(|c| {
                    matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
                        || (c.starts_with("08") && c != "08P01")
                        || (c.len() < 5
                            && c.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6)))
                }) || crate::runtime::commands::is_retryable(self)
            }
            Error::Store(S::Sqlite(rusqlite::Error::SqliteFailure(e, _))) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

impl Error {
    /// A read stopped at its time limit (PostgreSQL's `statement_timeout`
    /// on the read connections): the same read would stop again, so not
    /// `busy` — a narrower filter is the way on.
    pub fn is_read_timeout(&self) -> bool {
        matches!(self, Error::Store(crate::store::Error::Database(sqlx::Error::Database(d)))
            if d.code().is_some_and(|c| c == "57014"))
    }

    /// The database takes no changes just now: its disk is full, or it is
    /// read only (a PostgreSQL standby the engine was pointed at after a
    /// fail-over, a file system remounted read only). Nothing was written,
    /// and the same request passes once an operator has made room or
    /// pointed the engine at the primary.
    pub fn is_storage_refusal(&self) -> bool {
        match self {
            Error::Store(crate::store::Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))) => {
                matches!(
                    e.code,
                    rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::ReadOnly
                )
            }
            // disk_full, read_only_sql_transaction.
            Error::Store(crate::store::Error::Database(sqlx::Error::Database(d))) => d
                .code()
                .is_some_and(|c| matches!(c.as_ref(), "53100" | "25006")),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        Error::Store(crate::store::Error::Database(e))
    }
}
