//! SQLite's hot reads — a task, an instance, an instance's children, one
//! inbox page — on rusqlite connections, run in place on the caller's
//! thread.
//!
//! Through sqlx, each of these reads crossed to a connection's own worker
//! thread and back: a profile of the P06 benchmark put about half of the
//! process's CPU in that crossing (waking the thread, parking it, returning
//! the connection to its pool) and in the driver's row conversion, more
//! than the SQLite work itself. A read here is an index lookup of a few
//! pages, tens of microseconds, so it runs where it is asked for, as a
//! mutex would be taken. Reads that can scan (statistics, indicators,
//! history, an inbox filtered by a variable) stay on the sqlx pool, whose
//! threads keep them off the async runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, params};

use super::Error;
use super::instances::InstanceRow;
use super::sqlite_tx::{instance, instance_by_id, task, task_by_id, with_data, with_state};
use super::tasks::{self, Filter, TaskRow};

/// A few read-only connections to one database file.
pub struct Reads {
    connections: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    /// Inbox statements by shape: building one (formatting every lane,
    /// renumbering its placeholders) cost a third of what running it does.
    inbox: Mutex<HashMap<tasks::Shape, Arc<str>>>,
}

/// Most inbox statements kept: shapes are few (lanes × conditions present),
/// and past this they are built each time rather than kept without bound.
const INBOX_STATEMENTS: usize = 256;

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads")
            .field("connections", &self.connections.len())
            .finish()
    }
}

/// Page cache per read connection, KiB. Every commit of the writer empties
/// a reader's cache (SQLite drops it when the log changed), so under load
/// a large one only costs memory.
const CACHE_KIB: i64 = 8_000;

impl Reads {
    /// Opens `count` read-only connections to the (existing, migrated)
    /// database at `path`.
    pub fn open(path: &std::path::Path, count: usize) -> Result<Reads, Error> {
        let connections = (0..count.max(1))
            .map(|_| {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_URI,
                )?;
                conn.execute_batch(&format!(
                    "PRAGMA busy_timeout = 10000; PRAGMA cache_size = -{CACHE_KIB};"
                ))?;
                conn.set_prepared_statement_cache_capacity(64);
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Reads {
            connections,
            next: AtomicUsize::new(0),
            inbox: Mutex::default(),
        })
    }

    /// Runs `f` on a free connection (or waits for one, when every one is
    /// busy on another thread).
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let n = self.connections.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Ok(conn) = self.connections[(first + i) % n].try_lock() {
                return f(&conn);
            }
        }
        // A poisoned connection only means a panic elsewhere mid-read: the
        // connection itself is still usable.
        let conn = self.connections[first]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&conn)
    }

    /// A task.
    pub fn task(&self, id: &str) -> Result<Option<TaskRow>, Error> {
        self.with(|conn| task_by_id(conn, id))
    }

    /// An instance.
    pub fn instance(&self, id: &str) -> Result<Option<InstanceRow>, Error> {
        self.with(|conn| instance_by_id(conn, id))
    }

    /// Instances started by `parent`, oldest first.
    pub fn children(&self, parent: &str) -> Result<Vec<InstanceRow>, Error> {
        let sql = format!(
            "SELECT {} FROM instances WHERE parent_id = ?1 ORDER BY started_at",
            super::instances::COLUMNS
        );
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![parent], instance)?;
            rows.map(|r| with_state(r?)).collect()
        })
    }

    /// One inbox page, as [`tasks::list`] reads it.
    pub fn tasks(&self, filter: &Filter) -> Result<Vec<TaskRow>, Error> {
        let sql = self.inbox_statement(filter);
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(inbox_values(filter)), task)?;
            rows.map(|r| with_data(r?)).collect()
        })
    }
}

impl Reads {
    /// The inbox statement for `filter`'s shape, built once.
    fn inbox_statement(&self, filter: &Filter) -> Arc<str> {
        let shape = tasks::Shape::of(filter);
        // A new shape is built under the lock: that happens a few times in
        // the life of the process.
        let mut kept = self
            .inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sql) = kept.get(&shape) {
            debug_assert_eq!(
                &**sql,
                numbered(&tasks::list_sql(filter, false)),
                "one shape, one statement"
            );
            return Arc::clone(sql);
        }
        let sql: Arc<str> = numbered(&tasks::list_sql(filter, false)).into();
        if kept.len() < INBOX_STATEMENTS {
            kept.insert(shape, Arc::clone(&sql));
        }
        sql
    }
}

/// The values of the inbox statement for `filter`, as rusqlite binds them.
pub(super) fn inbox_values(filter: &Filter) -> Vec<rusqlite::types::Value> {
    tasks::list_values(filter)
        .into_iter()
        .map(|v| match v {
            tasks::Value::Int(i) => rusqlite::types::Value::Integer(i),
            tasks::Value::Text(t) => rusqlite::types::Value::Text(t),
        })
        .collect()
}

/// `$N` placeholders as SQLite's numbered `?N`: SQLite reads `$1` as a
/// *named* parameter, numbered by first appearance, which is not the
/// order the values are bound in when `$1` appears last.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{inbox_values, numbered};
    use crate::store::tasks::{self, Filter};

    /// How SQLite would run the inbox query for `filter` on a migrated
    /// database: the details of its query plan, one per step.
    fn plan(filter: &Filter) -> Vec<String> {
        let conn = rusqlite::Connection::open_in_memory().expect("database");
        for m in crate::store::sqlite::migrator().iter() {
            conn.execute_batch(m.sql.as_str()).expect("migration");
        }
        let sql = numbered(&tasks::list_sql(filter, false));
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan");
        stmt.query_map(rusqlite::params_from_iter(inbox_values(filter)), |r| {
            r.get::<_, String>(3)
        })
        .expect("query plan")
        .collect::<Result<_, _>>()
        .expect("plan rows")
    }

    /// Two filters share a kept statement exactly when their statements
    /// are the same text: the shape misses none of what the text depends on.
    #[test]
    fn one_shape_is_one_statement() {
        let base = Filter {
            limit: 50,
            ..Filter::default()
        };
        let filters = [
            base.clone(),
            Filter {
                roles: vec!["vendedor".to_owned()],
                ..base.clone()
            },
            Filter {
                roles: vec!["vendedor".to_owned(), "supervisor".to_owned()],
                ..base.clone()
            },
            Filter {
                status: Some("completed".to_owned()),
                ..base.clone()
            },
            Filter {
                instance_id: Some("i1".to_owned()),
                ..base.clone()
            },
            Filter {
                assignee: Some("ana".to_owned()),
                ..base.clone()
            },
            Filter {
                code: Some("OPE-SUM-VEN-P06".to_owned()),
                ..base.clone()
            },
            Filter {
                business_key: Some("BK-1".to_owned()),
                ..base.clone()
            },
            Filter {
                due_before: Some(5),
                ..base.clone()
            },
            Filter {
                variable: Some(("plan".to_owned(), serde_json::json!("Hogar"))),
                ..base.clone()
            },
            Filter {
                after: Some(tasks::TaskCursor {
                    due: 1,
                    created: 2,
                    id: "t".to_owned(),
                }),
                ..base.clone()
            },
            Filter {
                roles: vec!["supervisor".to_owned()],
                instance_id: Some("i2".to_owned()),
                limit: 10,
                ..base
            },
        ];
        for a in &filters {
            for b in &filters {
                assert_eq!(
                    tasks::Shape::of(a) == tasks::Shape::of(b),
                    tasks::list_sql(a, false) == tasks::list_sql(b, false),
                    "{a:?} / {b:?}"
                );
            }
        }
    }

    /// An instance's tasks are found through that instance's index entries,
    /// not by walking every open task in the inbox's order.
    #[test]
    fn an_instances_tasks_are_looked_up_by_instance() {
        let steps = plan(&Filter {
            instance_id: Some("i1".to_owned()),
            limit: 10,
            ..Filter::default()
        });
        assert!(
            steps
                .iter()
                .any(|s| s.contains("USING INDEX tasks_by_instance (instance_id=?)")),
            "{steps:?}"
        );
        assert!(
            !steps.iter().any(|s| s.contains("tasks_inbox")),
            "{steps:?}"
        );
        assert_eq!(
            steps.iter().filter(|s| s.starts_with("SEARCH")).count(),
            1,
            "one seek for both statuses, not a lane each: {steps:?}"
        );
    }

    /// An instance's or a business key's tasks, read by one sorted
    /// statement, are the tasks the filter names in inbox order, page by
    /// page: checked against the same filter applied in Rust.
    #[test]
    fn narrow_filters_give_the_inbox_order() {
        let conn = rusqlite::Connection::open_in_memory().expect("database");
        for m in crate::store::sqlite::migrator().iter() {
            conn.execute_batch(m.sql.as_str()).expect("migration");
        }
        // Tasks without their instances: only the tasks table is read.
        conn.execute_batch("PRAGMA foreign_keys = OFF")
            .expect("pragma");
        // (id, instance, key, role, status, due)
        let mut tasks = Vec::new();
        for n in 0..40_i64 {
            let instance = if n % 3 == 0 { "i2" } else { "i1" };
            let key = if n % 4 == 0 { "K2" } else { "K1" };
            let role = if n % 5 < 2 { "supervisor" } else { "agente" };
            let status = ["open", "claimed", "completed"][(n % 7 % 3) as usize];
            let due = (n * 37 % 11 != 0).then_some(n * 7919 % 5);
            tasks.push((format!("t{n:02}"), instance, key, role, status, due));
            conn.execute(
                "INSERT INTO tasks (id, instance_id, token, node_id, code, business_key, role, status, \
                 created_at, due_at, due_order) VALUES (?1, ?2, 0, 'n', 'X', ?3, ?4, ?5, ?6, ?7, ?8)",
                rusqlite::params![
                    format!("t{n:02}"),
                    instance,
                    key,
                    role,
                    status,
                    n * 3 % 4,
                    due,
                    due.unwrap_or(i64::MAX)
                ],
            )
            .expect("task");
        }
        let read = |filter: &Filter| -> Vec<String> {
            let sql = numbered(&tasks::list_sql(filter, false));
            let mut stmt = conn.prepare(&sql).expect("statement");
            stmt.query_map(rusqlite::params_from_iter(inbox_values(filter)), |r| {
                r.get::<_, String>(0)
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
        };
        let filters = [
            (Some("i1"), None, vec![], None),
            (Some("i1"), None, vec!["agente"], None),
            (
                Some("i2"),
                None,
                vec!["agente", "supervisor"],
                Some("completed"),
            ),
            (None, Some("K1"), vec![], None),
            (None, Some("K2"), vec!["agente"], None),
            (Some("i1"), Some("K1"), vec![], None),
        ];
        for (instance, key, roles, status) in filters {
            let mut expected: Vec<_> = tasks
                .iter()
                .filter(|t| instance.is_none_or(|i| t.1 == i))
                .filter(|t| key.is_none_or(|k| t.2 == k))
                .filter(|t| roles.is_empty() || roles.contains(&t.3))
                .filter(|t| status.map_or(t.4 != "completed", |s| t.4 == s))
                .map(|t| {
                    (
                        t.5.unwrap_or(i64::MAX),
                        t.0[1..].parse::<i64>().unwrap() * 3 % 4,
                        t.0.clone(),
                    )
                })
                .collect();
            expected.sort();
            assert!(expected.len() > 3, "the case reads several tasks");
            // Pages of three, each after the last one's cursor.
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let filter = Filter {
                    roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                    status: status.map(str::to_owned),
                    instance_id: instance.map(str::to_owned),
                    business_key: key.map(str::to_owned),
                    limit: 3,
                    after: after.clone(),
                    ..Filter::default()
                };
                let page = read(&filter);
                let Some(last) = page.last() else { break };
                let (due, created, id) = expected
                    .iter()
                    .find(|e| &e.2 == last)
                    .cloned()
                    .expect("a task the filter names");
                after = Some(tasks::TaskCursor { due, created, id });
                got.extend(page);
            }
            let expected: Vec<String> = expected.into_iter().map(|e| e.2).collect();
            assert_eq!(got, expected, "{instance:?} {key:?} {roles:?} {status:?}");
        }
    }

    /// A search by business key seeks the key in every lane, with or
    /// without roles, instead of walking the lane in page order.
    #[test]
    fn a_business_key_search_seeks_the_key() {
        for roles in [vec![], vec!["vendedor".to_owned(), "backoffice".to_owned()]] {
            let steps = plan(&Filter {
                roles,
                business_key: Some("BK-1".to_owned()),
                limit: 50,
                ..Filter::default()
            });
            let searches: Vec<&String> = steps
                .iter()
                .filter(|s| s.starts_with("SEARCH tasks"))
                .collect();
            assert!(!searches.is_empty(), "{steps:?}");
            assert!(
                searches
                    .iter()
                    .all(|s| s.contains("INDEX tasks_by_business_key (business_key=?")),
                "{steps:?}"
            );
        }
    }

    /// A role's inbox page stays one ordered range scan per lane, no sort
    /// of the whole inbox.
    #[test]
    fn an_inbox_page_walks_its_lanes_in_order() {
        let steps = plan(&Filter {
            roles: vec!["vendedor".to_owned()],
            limit: 50,
            ..Filter::default()
        });
        assert!(
            steps
                .iter()
                .any(|s| s.contains("USING INDEX tasks_inbox (role=? AND status=?)")),
            "{steps:?}"
        );
    }

    #[test]
    fn placeholders_become_numbered_and_json_paths_stay() {
        assert_eq!(
            numbered("a = $2 AND json_extract(s, '$.variables.' || $3) LIMIT $1"),
            "a = ?2 AND json_extract(s, '$.variables.' || ?3) LIMIT ?1"
        );
    }
}
