//! How the runtime calls external systems.
//!
//! The trait lives in the engine (the engine calls it); the `connectors`
//! crate implements it for NAF, GIS, Smartflex and HTTP. A connector's
//! answer is either a result, a **business error** (an answer the
//! definition routes, never retried), a **transient** failure (retried per
//! the node's policy, then an incident) or a **refusal** (the request as it
//! stands can never pass: an incident at once, without the attempts left).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

/// A boxed future, so that connectors can be stored as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One call of an operation.
#[derive(Debug, Clone)]
pub struct ConnectorCall<'a> {
    /// The operation's name in the catalog.
    pub operation: &'a str,
    /// The evaluated input mapping.
    pub input: &'a Map<String, Value>,
    /// Stable across every retry of the same job: the system must not act twice on it.
    pub idempotency_key: &'a str,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// Why a call did not return a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConnectorError {
    /// The system answered with a named business error (`invalid_ci`).
    #[error("business error `{code}`: {message}")]
    Business {
        /// The error's name, as declared in the catalog.
        code: String,
        /// What the system said.
        message: String,
    },
    /// The call failed in a way that may pass: timeout, refused, 5xx.
    #[error("transient failure: {message}")]
    Transient {
        /// What went wrong.
        message: String,
        /// How long the system asked to be left alone (an HTTP
        /// `Retry-After`): the next attempt waits at least this long, up to
        /// [`MAX_RETRY_AFTER`], even where the node's policy would retry
        /// sooner — retrying a throttled system early only spends attempts.
        retry_after: Option<Duration>,
    },
    /// The request cannot pass as it stands: the system refused it (HTTP
    /// 400, 401, 403, 404, a 422 without a business code the catalog
    /// declares, a redirect) or it cannot be built (a path's input
    /// missing). Sent again, it fails the same way until someone changes
    /// something (the connector's file, a credential, the system's data). The step stops with an incident at once rather than
    /// spending its attempts and their backoff, and an operator retries it
    /// after the fix.
    #[error("refused: {message}")]
    Refused {
        /// What the system answered, and what to change.
        message: String,
    },
}

/// `text` as a system's text is kept: every U+0000 replaced by U+FFFD
/// (PostgreSQL refuses NUL in text and JSON), cut to [`MAX_ERROR_TEXT`]
/// characters, marked `…`.
pub fn clean(text: String) -> String {
    let mut text = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    };
    if let Some((cut, _)) = text.char_indices().nth(MAX_ERROR_TEXT) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The most characters of a system's error text that are kept (the rest
/// is cut, marked with `…`): enough for any message meant for a person.
pub const MAX_ERROR_TEXT: usize = 2000;

/// The longest wait a system's `Retry-After` can impose on a job: one
/// asking for a day would otherwise hold a client's request that long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl ConnectorError {
    /// A transient failure without a wait asked by the system.
    pub fn transient(message: impl Into<String>) -> ConnectorError {
        ConnectorError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error with every U+0000 in its text replaced by U+FFFD,
    /// and its text cut to [`MAX_ERROR_TEXT`] characters.
    ///
    /// A system's text reaches the jobs', incidents' and journal's columns,
    /// and PostgreSQL refuses a NUL in text and JSON: one such character
    /// (a proxy's gzip page, a remote message) would make recording the
    /// result fail on every attempt, so the call would run again and again
    /// with no incident. A system that answers a megabyte of text as its
    /// message (a stack trace, an HTML page) would have it copied into the
    /// job, the history and every inbox and incident page that shows it.
    pub fn printable(self) -> ConnectorError {
        match self {
            ConnectorError::Business { code, message } => ConnectorError::Business {
                code: clean(code),
                message: clean(message),
            },
            ConnectorError::Transient {
                message,
                retry_after,
            } => ConnectorError::Transient {
                message: clean(message),
                retry_after,
            },
            ConnectorError::Refused { message } => ConnectorError::Refused {
                message: clean(message),
            },
        }
    }
}

/// Whether a system can be reached, for `/readyz` and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Health {
    /// Runs inside the engine (a simulator): up while the engine is.
    InProcess,
    /// Answered its health check.
    Up {
        /// How long the check took.
        latency_ms: f64,
    },
    /// Did not answer, or answered that it is not well.
    Down {
        /// What the check saw.
        reason: String,
    },
}

/// An external system.
pub trait Connector: Send + Sync + 'static {
    /// Calls an operation. Implementations must honour the idempotency key.
    fn call<'a>(
        &'a self,
        call: ConnectorCall<'a>,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ConnectorError>>;

    /// Checks that the system can be reached; connectors inside the
    /// process are always up.
    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async { Health::InProcess })
    }

    /// The longest one job attempt can take through this connector by its
    /// own settings (every try to its timeout, the waits between them), if
    /// they bound it; `None` for connectors inside the process.
    fn longest_attempt(&self) -> Option<Duration> {
        None
    }
}

/// The connectors a running engine can call, by name.
#[derive(Clone, Default)]
pub struct Connectors {
    by_name: HashMap<String, Arc<dyn Connector>>,
}

impl Connectors {
    /// No connectors.
    pub fn new() -> Connectors {
        Connectors::default()
    }

    /// Adds (or replaces) the connector called `name`.
    pub fn with(mut self, name: &str, connector: Arc<dyn Connector>) -> Connectors {
        self.by_name.insert(name.to_owned(), connector);
        self
    }

    /// The connector called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.by_name.get(name)
    }

    /// Every connector with its name, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Connector>)> {
        let mut all: Vec<_> = self.by_name.iter().map(|(n, c)| (n.as_str(), c)).collect();
        all.sort_by_key(|(n, _)| *n);
        all.into_iter()
    }
}

/// The service tasks of `definition` whose attempt (their `timeout`, else
/// `default_timeout`) is no longer than the longest attempt of the connector
/// they call, one line each: the connector's last tries would be cut off,
/// and the incident would say "no answer in time" instead of the system's
/// own failure. Said at start-up and in every deploy's answer, since either
/// side may change: a definition deployed while the engine runs, or a
/// connector's file read at the next start.
pub fn attempts_cut_short(
    definition: &crate::definition::Definition,
    connectors: &Connectors,
    default_timeout: Duration,
) -> Vec<String> {
    definition
        .nodes
        .iter()
        .filter_map(|node| match &node.kind {
            crate::definition::NodeKind::ServiceTask(task) => {
                let longest = connectors.get(&task.connector)?.longest_attempt()?;
                let budget = task
                    .timeout
                    .as_ref()
                    .map_or(default_timeout, crate::duration::Duration::as_std);
                (longest >= budget).then(|| {
                    format!(
                        "{} `{}`: its timeout ({} s) is shorter than {}'s tries can take ({} s: `timeout` × `retry.attempts` and the waits)",
                        definition.code,
                        node.id,
                        budget.as_secs_f64(),
                        task.connector,
                        longest.as_secs_f64()
                    )
                })
            }
            _ => None,
        })
        .collect()
}

impl std::fmt::Debug for Connectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("Connectors").field("names", &names).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnectorError, MAX_ERROR_TEXT};

    #[test]
    fn a_systems_long_error_text_is_cut_at_a_character_and_marked() {
        let page = "ñ".repeat(100_000);
        let ConnectorError::Business { code, message } = ConnectorError::Business {
            code: "rechazo".to_owned(),
            message: page,
        }
        .printable() else {
            panic!("still a business error");
        };
        assert_eq!(code, "rechazo");
        assert_eq!(message.chars().count(), MAX_ERROR_TEXT + 1);
        assert!(message.ends_with("ñ…"), "cut at a character, marked");
        let short = ConnectorError::transient("HTTP 503\0").printable();
        assert_eq!(short, ConnectorError::transient("HTTP 503\u{FFFD}"));
    }
}
