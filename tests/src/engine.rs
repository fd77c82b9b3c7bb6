//! A real engine on a real database for tests: a fresh SQLite file, or a
//! fresh database on the PostgreSQL server (never skipped: a missing server
//! fails the test), the shipped processes deployed, the simulators as
//! connectors and a manual clock.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::Connection;
use tramite_connectors::Simulators;
use tramite_engine::runtime::clock::ManualClock;
use tramite_engine::runtime::connector::{
    BoxFuture, Connector, ConnectorCall, ConnectorError, Connectors,
};
use tramite_engine::runtime::{CompleteTask, Engine, EngineConfig, PublishMessage, StartInstance};
use tramite_engine::store::instances::InstanceRow;
use tramite_engine::store::tasks::{Filter, TaskRow};

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// A SQLite file in a fresh temporary folder.
    Sqlite,
    /// A fresh database on the PostgreSQL server.
    Postgres,
}

/// The PostgreSQL server tests use: `TRAMITE_TEST_POSTGRES_URL`, or the
/// local server with trust authentication.
pub fn postgres_url() -> String {
    std::env::var("TRAMITE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// Which backend.
    pub kind: Db,
    dir: Option<PathBuf>,
}

impl TestDb {
    /// Creates an empty database.
    pub async fn new(kind: Db) -> TestDb {
        let name = format!("tramite_t_{}", uuid::Uuid::now_v7().simple());
        match kind {
            Db::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).expect("temp dir");
                TestDb {
                    url: format!("sqlite://{}/tramite.db", dir.display()),
                    kind,
                    dir: Some(dir),
                }
            }
            Db::Postgres => {
                let base = postgres_url();
                let mut conn = sqlx::PgConnection::connect(&base)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL is required at {base} (set TRAMITE_TEST_POSTGRES_URL): {e}"
                        )
                    });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let url = with_database(&base, &name);
                TestDb {
                    url,
                    kind,
                    dir: None,
                }
            }
        }
    }
}

/// `postgres://user@host:port/db?x` with another database name.
fn with_database(url: &str, name: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let (head, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_end = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    format!("{}/{name}{query}", &head[..authority_end])
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if self.kind == Db::Postgres {
            // Best effort, on a thread of its own (drop cannot await): test
            // databases must not pile up on the server across CI runs.
            let name = self.url.rsplit('/').next().unwrap_or_default().to_owned();
            let _ = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_url()).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// An engine for a test.
pub struct Harness {
    /// The engine.
    pub engine: Engine,
    /// Its connectors.
    pub sims: Simulators,
    /// Its clock.
    pub clock: Arc<ManualClock>,
    /// Its database.
    pub db: TestDb,
    /// What the engine calls: the simulators in process, unless the test
    /// chose otherwise (HTTP connectors to them, say).
    pub connectors: Connectors,
}

/// 2026-11-27 09:00 in Cochabamba (UTC−4).
pub const T0: i64 = 1_795_784_400_000;

impl Harness {
    /// A fresh database with the shipped processes deployed.
    pub async fn new(kind: Db) -> Harness {
        let sims = Simulators::new();
        let connectors = sims.connectors();
        Harness::with_connectors(kind, sims, connectors).await
    }

    /// A fresh database with the shipped processes deployed, calling
    /// `connectors` (`sims` are the simulators behind them, to inspect).
    pub async fn with_connectors(kind: Db, sims: Simulators, connectors: Connectors) -> Harness {
        let db = TestDb::new(kind).await;
        let clock = Arc::new(ManualClock::new(T0));
        let engine = open(&db, &connectors, &clock).await;
        engine
            .deploy_dir(&crate::repo_root().join("processes"))
            .await
            .expect("processes deploy");
        Harness {
            engine,
            sims,
            clock,
            db,
            connectors,
        }
    }

    /// Stops the engine gracefully and opens a new one on the same database.
    pub async fn restart(&mut self) {
        self.engine.shutdown().await;
        self.engine = open(&self.db, &self.connectors, &self.clock).await;
    }

    /// Stops the engine gracefully and opens a new one on the same
    /// database, its configuration tweaked.
    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut EngineConfig)) {
        self.engine.shutdown().await;
        self.engine = open_with(&self.db, &self.connectors, &self.clock, tweak).await;
    }

    /// Kills the engine (running jobs never report) and opens a new one.
    pub async fn crash(&mut self) {
        self.engine.halt().await;
        self.engine = open(&self.db, &self.connectors, &self.clock).await;
    }

    /// Moves the clock.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Starts an instance of `code` by `channel`.
    pub async fn start(&self, code: &str, channel: &str, data: Value) -> String {
        self.engine
            .start(StartInstance {
                code: code.to_owned(),
                business_key: String::new(),
                channel: channel.to_owned(),
                data: object(data),
                actor: "test".to_owned(),
                request_id: None,
            })
            .await
            .expect("instance starts")
    }

    /// The open (or claimed) tasks of `instance`.
    pub async fn open_tasks(&self, instance: &str) -> Vec<TaskRow> {
        self.engine
            .tasks(&Filter {
                instance_id: Some(instance.to_owned()),
                limit: 100,
                ..Filter::default()
            })
            .await
            .expect("tasks")
    }

    /// The open task of `instance` at `node` (panics if there is none).
    pub async fn task(&self, instance: &str, node: &str) -> TaskRow {
        let tasks = self.open_tasks(instance).await;
        let open: Vec<&TaskRow> = tasks.iter().collect();
        open.iter()
            .find(|t| t.node_id == node)
            .map(|t| (*t).clone())
            .unwrap_or_else(|| {
                let at: Vec<&str> = open.iter().map(|t| t.node_id.as_str()).collect();
                panic!("no open task at `{node}`; open tasks are at {at:?}")
            })
    }

    /// Completes the open task at `node` as `user`.
    pub async fn complete(&self, instance: &str, node: &str, outcome: &str, data: Value) {
        let task = self.task(instance, node).await;
        self.engine
            .complete(CompleteTask {
                task: task.id,
                user: "agente1".to_owned(),
                outcome: outcome.to_owned(),
                data: object(data),
                roles: None,
            })
            .await
            .unwrap_or_else(|e| panic!("completing `{node}` with `{outcome}`: {e:?}"));
    }

    /// Whether `instance` has an open task at `node`.
    pub async fn task_open(&self, instance: &str, node: &str) -> bool {
        self.open_tasks(instance)
            .await
            .iter()
            .any(|t| t.node_id == node)
    }

    /// Runs every due job (connector calls, timers).
    pub async fn jobs(&self) -> usize {
        self.engine.run_due_jobs().await.expect("jobs run")
    }

    /// Publishes a message.
    pub async fn publish(
        &self,
        name: &str,
        key: &str,
        id: &str,
        payload: Value,
    ) -> tramite_engine::runtime::Delivery {
        self.engine
            .publish(PublishMessage {
                name: name.to_owned(),
                key: key.to_owned(),
                payload,
                id: id.to_owned(),
                ttl_ms: 24 * 3_600_000,
            })
            .await
            .expect("publish")
    }

    /// The instance.
    pub async fn instance(&self, id: &str) -> InstanceRow {
        self.engine.instance(id).await.expect("instance")
    }

    /// Deploys one definition, `text` named `name` (the test expects it
    /// valid).
    pub async fn deploy(&self, name: &str, text: &str) {
        self.engine
            .deploy(vec![(name.to_owned(), text.to_owned())])
            .await
            .unwrap_or_else(|e| panic!("deploying {name}: {e}"));
    }

    /// The first open incident of instance `id` (the test expects one).
    pub async fn open_incident(&self, id: &str) -> tramite_engine::store::incidents::IncidentRow {
        self.engine
            .incidents(Some("open"), Some(id))
            .await
            .expect("incidents")
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("instance {id} has no open incident"))
    }

    /// Resolves `incident` by running its step again, with no variables
    /// (operador1).
    pub async fn run_again(&self, incident: &str) {
        self.engine
            .resolve_incident_then(
                incident,
                "operador1",
                Map::new(),
                Some(tramite_engine::runtime::commands::Then::RunAgain),
            )
            .await
            .expect("resolved by running the step again");
    }

    /// The journal kinds of an instance, in order.
    pub async fn history(&self, id: &str) -> Vec<String> {
        self.engine
            .history(id)
            .await
            .expect("history")
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }
}

/// Another engine on the same database, connectors and clock (a second node).
pub async fn second_engine(h: &Harness) -> Engine {
    open(&h.db, &h.connectors, &h.clock).await
}

/// Another engine on the same database, or why it could not open.
pub async fn try_second_engine(h: &Harness) -> Result<Engine, tramite_engine::Error> {
    try_open_with(&h.db, &h.connectors, &h.clock, |_| {}).await
}

/// Another engine on the same database, its configuration tweaked.
pub async fn engine_with(h: &Harness, tweak: impl FnOnce(&mut EngineConfig)) -> Engine {
    open_with(&h.db, &h.connectors, &h.clock, tweak).await
}

/// Another engine on the same database with `lanes` write lanes
/// (PostgreSQL; SQLite has one writer whatever the setting).
pub async fn engine_with_lanes(h: &Harness, lanes: usize) -> Engine {
    open_with(&h.db, &h.connectors, &h.clock, |c| c.writers = lanes).await
}

async fn open(db: &TestDb, connectors: &Connectors, clock: &Arc<ManualClock>) -> Engine {
    open_with(db, connectors, clock, |_| {}).await
}

async fn open_with(
    db: &TestDb,
    connectors: &Connectors,
    clock: &Arc<ManualClock>,
    tweak: impl FnOnce(&mut EngineConfig),
) -> Engine {
    try_open_with(db, connectors, clock, tweak)
        .await
        .expect("engine opens")
}

async fn try_open_with(
    db: &TestDb,
    connectors: &Connectors,
    clock: &Arc<ManualClock>,
    tweak: impl FnOnce(&mut EngineConfig),
) -> Result<Engine, tramite_engine::Error> {
    let mut config = EngineConfig::new(db.url.clone());
    config.catalog = tramite_connectors::catalog();
    config.connectors = connectors.clone();
    config.clock = Arc::clone(clock) as Arc<dyn tramite_engine::runtime::clock::Clock>;
    config.lease = Duration::from_secs(30);
    config.node_name = "test".to_owned();
    tweak(&mut config);
    Engine::open(config).await
}

/// A JSON object from `json!({...})`.
pub fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => panic!("expected an object, got {other}"),
    }
}

/// Runs a test body once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body($crate::engine::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body($crate::engine::Db::Postgres).await
            }
        }
    };
}

/// A system that answers every call alike: a result, or a failure.
pub struct Always(pub Result<Map<String, Value>, ConnectorError>);

impl Connector for Always {
    fn call<'a>(
        &'a self,
        _call: ConnectorCall<'a>,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ConnectorError>> {
        let answer = self.0.clone();
        Box::pin(async move { answer })
    }
}
