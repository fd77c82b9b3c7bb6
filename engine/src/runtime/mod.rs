//! The durable runtime: instances, tasks, jobs, and the engine that runs them.
//!
//! Execution model, in one paragraph: every change is a [`Command`] sent to
//! one writer task, which runs commands in batches inside one transaction
//! (a savepoint each) and acknowledges them only after the commit. A command
//! loads the instance (one row: variables and tokens as JSON), runs the pure
//! token [`machine`] until every token waits again, and writes what the
//! machine asks for: tasks for people, jobs for connectors and timers,
//! subscriptions for messages, child instances, incidents, journal entries.
//! Jobs run outside any transaction, in a worker pool, under leases; their
//! results come back as commands.

pub mod clock;
pub mod commands;
pub mod connector;
pub mod eval;
pub mod forms;
pub mod indicators;
pub mod machine;
pub mod process;
pub mod retention;
pub mod scenario;
pub mod state;
mod worker;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use commands::{
    Command, CompleteTask, CompletedTask, Delivery, Deployed, PublishMessage, Reply, StartInstance,
};
pub use writer::Stats;

use crate::Error;
use crate::catalog::Catalog;
use crate::store::incidents::IncidentRow;
use crate::store::instances::InstanceRow;
use crate::store::journal::Entry;
use crate::store::tasks::{Filter, TaskRow};
use crate::store::{self, Store};
use clock::{Clock, SystemClock};
use commands::{DeployMode, ProcessCache};
use connector::Connectors;
use process::Process;
use writer::{Envelope, Writer};

/// How to run an engine.
pub struct EngineConfig {
    /// `sqlite://tramite.db` (created on first start) or `postgres://…`.
    pub database_url: String,
    /// Operations of the connectors, to validate deployments.
    pub catalog: Catalog,
    /// The connectors jobs call.
    pub connectors: Connectors,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Jobs run at once by this engine.
    pub workers: usize,
    /// How long a claimed job is this engine's before others may take it over.
    pub lease: Duration,
    /// How often idle workers look for jobs that came due by time.
    pub poll: Duration,
    /// Attempt timeout of a service task that sets none.
    pub default_timeout: Duration,
    /// Most commands per commit.
    pub max_batch: usize,
    /// PostgreSQL: write transactions this engine runs side by side, each on
    /// its own connection (SQLite has one writer by construction). One
    /// writer's round trips would cap a node at what one connection does.
    pub writers: usize,
    /// This engine's name in leases and logs.
    pub node_name: String,
    /// How long an ended instance is kept, with its tasks, history and
    /// messages (and a message no instance took, past its expiry), before
    /// [`Engine::start_workers`]' purge deletes it; kept for ever when
    /// `None`. See [`retention`].
    pub retention: Option<Duration>,
}

impl EngineConfig {
    /// Defaults for `database_url`: no connectors, system clock, 32 workers,
    /// 30 s leases.
    pub fn new(database_url: impl Into<String>) -> EngineConfig {
        EngineConfig {
            database_url: database_url.into(),
            catalog: Catalog::new(),
            connectors: Connectors::new(),
            clock: Arc::new(SystemClock),
            workers: 32,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(200),
            default_timeout: Duration::from_secs(30),
            max_batch: 1024,
            writers: 8,
            node_name: "tramite".to_owned(),
            retention: None,
        }
    }
}

/// The writer: a task on PostgreSQL, an OS thread with its own connection on SQLite.
enum WriterHandle {
    Tasks(Vec<JoinHandle<()>>),
    Thread(std::thread::JoinHandle<()>),
}

/// Which indicator values to compute.
#[derive(Debug, Clone)]
pub struct IndicatorQuery {
    /// Procedure code.
    pub code: String,
    /// Indicator id in its definition.
    pub indicator: String,
    /// Instances started from (ms, inclusive)…
    pub from: i64,
    /// …to (ms, exclusive); both widened to whole local periods (see
    /// [`indicators::whole_periods`]).
    pub to: i64,
    /// Granularity; the indicator's own period when absent.
    pub period: Option<crate::definition::Period>,
    /// Local time's offset from UTC, for period boundaries (Bolivia: −240).
    pub utc_offset_minutes: i32,
}

/// The longest key the database indexes (business keys, request ids,
/// messages' names, ids and keys), in bytes. PostgreSQL refuses a B-tree
/// entry over about 2,700 bytes, and a key past this length is a mistake.
pub const MAX_KEY_BYTES: usize = 512;

/// The deepest nesting of arrays and objects a value given to the engine
/// may have. JSON readers stop at 128 levels (serde_json's limit), and a
/// value is stored deeper than it came (the state's `variables`, a
/// mapping's wrapping, a history entry): one at the limit would be
/// written, then refused on every read, and its instance lost. No form or
/// message needs more than a few levels.
pub const MAX_NESTING: usize = 64;

/// Refuses the values of a map given to the engine (start data, form
/// data, an operator's variables) if one nests deeper than
/// [`MAX_NESTING`], the map's own level counted.
fn map_not_too_deep(field: &'static str, map: &Map<String, Value>) -> Result<(), Error> {
    if map.values().any(|v| nests_deeper(v, MAX_NESTING - 1)) {
        return Err(Error::TooDeep {
            field,
            limit: MAX_NESTING,
        });
    }
    Ok(())
}

/// Whether `v` has more than `room` levels of arrays and objects; it looks
/// no further than that.
fn nests_deeper(v: &Value, room: usize) -> bool {
    match v {
        Value::Array(items) => room == 0 || items.iter().any(|i| nests_deeper(i, room - 1)),
        Value::Object(fields) => room == 0 || fields.values().any(|i| nests_deeper(i, room - 1)),
        _ => false,
    }
}

fn not_too_long(field: &'static str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_KEY_BYTES {
        return Err(Error::TooLong {
            field,
            limit: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// A running engine. Cheap to clone; all clones are the same engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Store,
    sender: Mutex<Option<mpsc::Sender<Envelope>>>,
    writer: Mutex<Option<WriterHandle>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) connectors: Connectors,
    pub(crate) config: EngineConfig,
    pub(crate) jobs_changed: Arc<Notify>,
    pub(crate) stop: watch::Sender<bool>,
    processes: Arc<ProcessCache>,
    stats: Arc<Stats>,
    changes: tokio::sync::broadcast::Sender<Arc<str>>,
    /// SQLite: the lock file held while the writer runs (see [`lock_sqlite`]).
    lock: Mutex<Option<std::fs::File>>,
    /// SQLite: a sync of the log failed. The lock is then kept until the
    /// process exits: the log must be recovered by a new process, not read
    /// through this one's shared index by an engine opened after this one.
    log_failed: Arc<std::sync::atomic::AtomicBool>,
}

/// Takes the lock beside a SQLite database that says one engine has it.
///
/// SQLite's own locks let two processes share a file, and the second
/// engine's start would release the first one's job leases and run its
/// connector calls again. An advisory lock (`flock`) on a file of its own
/// (not the database, whose POSIX locks are SQLite's) is released by the
/// operating system when the process dies, so a crash never leaves it held.
fn lock_sqlite(database: &std::path::Path) -> Result<std::fs::File, Error> {
    let lock = std::path::PathBuf::from(format!("{}.lock", database.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| Error::Read {
            path: lock.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::DatabaseInUse {
            database: database.to_path_buf(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Read { path: lock, source }),
    }
}

impl Engine {
    /// Opens the database (creating and migrating it as needed) and starts
    /// the writer. Workers start with [`Engine::start_workers`].
    pub async fn open(config: EngineConfig) -> Result<Engine, Error> {
        // Before the migrations: a second engine must not touch the file.
        let lock = match Store::sqlite_file_of(&config.database_url) {
            Some(path) => Some(lock_sqlite(&path)?),
            None => None,
        };
        let store = Store::open_with_writers(&config.database_url, config.writers as u32).await?;
        let log_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sender, inbox) = mpsc::channel(config.max_batch * 4);
        let jobs_changed = Arc::new(Notify::new());
        let processes = Arc::new(ProcessCache::default());
        let stats = Arc::new(Stats::default());
        let (changes, _) = tokio::sync::broadcast::channel(16_384);
        let writer = Writer {
            store: store.clone(),
            processes: Arc::clone(&processes),
            catalog: Arc::new(config.catalog.clone()),
            clock: Arc::clone(&config.clock),
            max_batch: config.max_batch,
            jobs_changed: Arc::clone(&jobs_changed),
            stats: Arc::clone(&stats),
            changes: changes.clone(),
        };
        let handle = match store.sqlite_path() {
            Some(path) => WriterHandle::Thread(writer::spawn_sqlite(
                writer,
                &path,
                inbox,
                tokio::runtime::Handle::current(),
                Arc::clone(&log_failed),
            )?),
            None => {
                let inbox = Arc::new(tokio::sync::Mutex::new(inbox));
                WriterHandle::Tasks(
                    (0..config.writers.max(1))
                        .map(|_| tokio::spawn(writer.clone().run_lane(Arc::clone(&inbox))))
                        .collect(),
                )
            }
        };
        let (stop, _) = watch::channel(false);
        let engine = Engine {
            inner: Arc::new(Inner {
                connectors: config.connectors.clone(),
                store,
                sender: Mutex::new(Some(sender)),
                writer: Mutex::new(Some(handle)),
                workers: Mutex::new(Vec::new()),
                config,
                jobs_changed,
                stop,
                processes,
                stats,
                changes,
                lock: Mutex::new(lock),
                log_failed,
            }),
        };
        // SQLite has one engine by construction: leases left by a previous
        // run belong to nobody now.
        if engine.inner.store.backend() == store::Backend::Sqlite {
            engine.submit(Command::ReleaseLeases).await?;
        }
        Ok(engine)
    }

    /// Whether the engine can still take changes: false once a sync of the
    /// SQLite log failed, or its writer (every PostgreSQL write lane) has
    /// stopped, or the engine is shutting down. Only a restart brings such
    /// a node back, which is what its health check says.
    pub fn writable(&self) -> bool {
        !self
            .inner
            .log_failed
            .load(std::sync::atomic::Ordering::Acquire)
            && self
                .inner
                .sender
                .lock()
                .expect("sender lock")
                .as_ref()
                .is_some_and(|s| !s.is_closed())
    }

    /// Whether the database takes changes: on PostgreSQL, not a standby in
    /// recovery nor a database whose transactions are read-only by
    /// default (a fail-over to a replica, an operator's switch); commands
    /// would fail with 503 `storage-unavailable`. SQLite's refusals (a full
    /// disk) show only when a change is tried.
    pub async fn takes_changes(&self) -> Result<bool, Error> {
        if self.inner.store.backend() != store::Backend::Postgres {
            return Ok(true);
        }
        let mut conn = self.inner.store.pool().acquire().await?;
        let takes: bool = sqlx::query_scalar(
            "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| Error::Store(e.into()))?;
        Ok(takes)
    }

    /// Sends a command to the writer; returns once it is committed.
    pub async fn submit(&self, command: Command) -> Result<Reply, Error> {
        let sender = self
            .inner
            .sender
            .lock()
            .expect("sender lock")
            .clone()
            .ok_or(Error::Stopped)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Envelope { command, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Validates and stores definitions, together: a text that is its
    /// code's latest version's keeps that version; any other, an earlier
    /// version's included (going back to it), becomes a new version.
    pub async fn deploy(&self, sources: Vec<(String, String)>) -> Result<Vec<Deployed>, Error> {
        let mode = DeployMode {
            dry_run: false,
            again: true,
        };
        self.deploy_or_check(sources, mode).await
    }

    /// Validates definitions as [`Engine::deploy`] would, against what is
    /// deployed now (a `call` to a deployed procedure resolves), and says
    /// which version each would become; stores nothing.
    pub async fn check_deploy(
        &self,
        sources: Vec<(String, String)>,
    ) -> Result<Vec<Deployed>, Error> {
        let mode = DeployMode {
            dry_run: true,
            again: true,
        };
        self.deploy_or_check(sources, mode).await
    }

    async fn deploy_or_check(
        &self,
        sources: Vec<(String, String)>,
        DeployMode { dry_run, again }: DeployMode,
    ) -> Result<Vec<Deployed>, Error> {
        // What the connectors make of each definition, by code: parsed
        // here, off the writer (the writer validated them; a file that
        // fails is refused before these are read), and only when a
        // connector bounds its own attempts (simulators do not).
        let bounded = self
            .inner
            .connectors
            .iter()
            .any(|(_, c)| c.longest_attempt().is_some());
        let mut warnings: std::collections::HashMap<String, Vec<String>> = sources
            .iter()
            .filter(|_| bounded)
            .map(|(_, text)| {
                let definition = crate::loader::parse(text).definition;
                let cut = connector::attempts_cut_short(
                    &definition,
                    &self.inner.connectors,
                    self.inner.config.default_timeout,
                );
                (definition.code, cut)
            })
            .collect();
        let deploy = Command::Deploy {
            sources,
            dry_run,
            again,
        };
        match self.submit(deploy).await? {
            Reply::Deployed(mut deployed) => {
                for d in &mut deployed {
                    d.warnings
                        .extend(warnings.remove(&d.code).unwrap_or_default());
                }
                Ok(deployed)
            }
            other => unreachable!("deploy answered {other:?}"),
        }
    }

    /// Deploys every definition directly in `dir`, as a node starting up
    /// does: a file holding an earlier version's text leaves that version
    /// where it is, with a warning (a node whose files are behind must not
    /// roll the procedure back).
    pub async fn deploy_dir(&self, dir: &Path) -> Result<Vec<Deployed>, Error> {
        let files = crate::library::read(&[dir.to_path_buf()])?;
        let sources = files
            .into_iter()
            .map(|f| (f.path.display().to_string(), f.text))
            .collect();
        let mode = DeployMode {
            dry_run: false,
            again: false,
        };
        self.deploy_or_check(sources, mode).await
    }

    /// Starts an instance; returns its id.
    pub async fn start(&self, start: StartInstance) -> Result<String, Error> {
        Ok(self.start_once(start).await?.0)
    }

    /// Starts an instance unless its request id started one before; returns
    /// the instance's id and whether it is new.
    pub async fn start_once(&self, start: StartInstance) -> Result<(String, bool), Error> {
        not_too_long("business_key", &start.business_key)?;
        map_not_too_deep("data", &start.data)?;
        not_too_long(
            "request_id",
            start.request_id.as_deref().unwrap_or_default(),
        )?;
        if start
            .request_id
            .as_deref()
            .is_some_and(|r| r.trim().is_empty())
        {
            return Err(Error::EmptyId {
                field: "request_id",
            });
        }
        match self.submit(Command::Start(start)).await? {
            Reply::Started { id, new } => Ok((id, new)),
            other => unreachable!("start answered {other:?}"),
        }
    }

    /// Claims a task for `user`.
    pub async fn claim(&self, task: &str, user: &str) -> Result<(), Error> {
        self.submit(Command::Claim {
            task: task.to_owned(),
            user: user.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Gives a task to `user`, on `by`'s decision (a team lead).
    pub async fn assign(&self, task: &str, user: &str, by: &str) -> Result<(), Error> {
        self.submit(Command::Assign {
            task: task.to_owned(),
            user: user.to_owned(),
            by: by.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Gives a claimed task back to its role.
    pub async fn unclaim(&self, task: &str, user: &str) -> Result<(), Error> {
        self.submit(Command::Unclaim {
            task: task.to_owned(),
            user: user.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Completes a task with an outcome and the form's data.
    pub async fn complete(&self, complete: CompleteTask) -> Result<CompletedTask, Error> {
        map_not_too_deep("data", &complete.data)?;
        match self.submit(Command::Complete(complete)).await? {
            Reply::Completed(c) => Ok(c),
            other => unreachable!("complete answered {other:?}"),
        }
    }

    /// Publishes a message.
    pub async fn publish(&self, message: PublishMessage) -> Result<Delivery, Error> {
        if message.id.trim().is_empty() {
            return Err(Error::EmptyId { field: "id" });
        }
        if message.key.trim().is_empty() {
            return Err(Error::EmptyId { field: "key" });
        }
        not_too_long("name", &message.name)?;
        not_too_long("id", &message.id)?;
        not_too_long("key", &message.key)?;
        if nests_deeper(&message.payload, MAX_NESTING) {
            return Err(Error::TooDeep {
                field: "payload",
                limit: MAX_NESTING,
            });
        }
        match self.submit(Command::Publish(message)).await? {
            Reply::Published(d) => Ok(d),
            other => unreachable!("publish answered {other:?}"),
        }
    }

    /// Cancels a running instance and the children it waits for.
    pub async fn cancel(&self, instance: &str, reason: &str, actor: &str) -> Result<(), Error> {
        self.submit(Command::Cancel {
            instance: instance.to_owned(),
            reason: reason.to_owned(),
            actor: actor.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Ends web session `id` on every node sharing this database:
    /// [`Engine::session_ended`] says so from then on, until `expires_at`
    /// (ms: when the session would be refused anyway, with whatever margin
    /// the caller's clocks need). Ending it twice is ending it once.
    pub async fn end_session(&self, id: &str, expires_at: i64) -> Result<(), Error> {
        self.submit(Command::EndSession {
            id: id.to_owned(),
            expires_at,
        })
        .await
        .map(drop)
    }

    /// Whether web session `id` was ended by [`Engine::end_session`].
    pub async fn session_ended(&self, id: &str) -> Result<bool, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        Ok(crate::store::sessions::ended(&mut conn, id).await?)
    }

    /// Runs an incident's job (or node) again.
    pub async fn retry_incident(&self, incident: &str, actor: &str) -> Result<(), Error> {
        self.submit(Command::RetryIncident {
            incident: incident.to_owned(),
            actor: actor.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Closes an incident by hand with `variables`; the token then does what
    /// the incident calls for (see [`commands::Then`]).
    pub async fn resolve_incident(
        &self,
        incident: &str,
        actor: &str,
        variables: Map<String, Value>,
    ) -> Result<(), Error> {
        self.resolve_incident_then(incident, actor, variables, None)
            .await
    }

    /// Resolves an incident, saying what its token does then: go on past
    /// the step, or run it again with the variables written (`None`: what
    /// the incident calls for, see [`commands::Then`]).
    pub async fn resolve_incident_then(
        &self,
        incident: &str,
        actor: &str,
        variables: Map<String, Value>,
        then: Option<commands::Then>,
    ) -> Result<(), Error> {
        map_not_too_deep("variables", &variables)?;
        self.submit(Command::ResolveIncident {
            incident: incident.to_owned(),
            actor: actor.to_owned(),
            variables,
            then,
        })
        .await
        .map(drop)
    }

    /// Starts the worker pool (and, on PostgreSQL, the listener through
    /// which other nodes' new jobs wake it).
    pub fn start_workers(&self) {
        let handle = tokio::spawn(worker::pool(self.clone()));
        let mut workers = self.inner.workers.lock().expect("workers lock");
        workers.push(handle);
        if let Some(keep) = self.inner.config.retention {
            workers.push(tokio::spawn(retention::run(self.clone(), keep)));
        }
        if self.inner.store.backend() == store::Backend::Postgres {
            workers.push(tokio::spawn(writer::listen_for_jobs(
                self.inner.config.database_url.clone(),
                Arc::clone(&self.inner.jobs_changed),
                self.inner.stop.subscribe(),
            )));
        }
    }

    /// Deletes one batch ([`retention::PURGE_BATCH`]) of what ended before
    /// `before` (ms): instances with their tasks, jobs, incidents, messages
    /// and history, oldest first, and messages no instance took that
    /// expired. An instance whose caller or called procedure still runs is
    /// kept. Committed when it returns; [`EngineConfig::retention`] runs it
    /// periodically.
    pub async fn purge(&self, before: i64) -> Result<store::Purged, Error> {
        match self
            .submit(Command::Purge {
                before,
                limit: retention::PURGE_BATCH,
            })
            .await?
        {
            Reply::Purged(purged) => Ok(purged),
            other => unreachable!("a purge answers what it purged, not {other:?}"),
        }
    }

    /// Claims and runs due jobs until none is due; returns how many ran.
    /// For tests, scenarios and tools that drive time by hand.
    pub async fn run_due_jobs(&self) -> Result<usize, Error> {
        let owner = format!("{}:inline", self.inner.config.node_name);
        let mut ran = 0;
        loop {
            let asked = tokio::time::Instant::now();
            let Reply::Jobs(jobs) = self
                .submit(Command::ClaimJobs {
                    owner: owner.clone(),
                    lease_ms: self.inner.config.lease.as_millis() as i64,
                    limit: 256,
                    default_timeout_ms: self.inner.config.default_timeout.as_millis() as i64,
                })
                .await?
            else {
                unreachable!("claim answers jobs");
            };
            if jobs.is_empty() {
                return Ok(ran);
            }
            // Jobs stopped at an incident were not run.
            ran += jobs.iter().filter(|job| job.stop.is_none()).count();
            let runs = jobs.into_iter().map(|job| {
                let engine = self.clone();
                async move { worker::run_job(&engine, job, asked).await }
            });
            for handle in runs.map(tokio::spawn).collect::<Vec<_>>() {
                let _ = handle.await;
            }
        }
    }

    /// Stops: workers finish their jobs, the writer commits what it holds,
    /// connections close.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let workers: Vec<_> =
            std::mem::take(&mut *self.inner.workers.lock().expect("workers lock"));
        for w in workers {
            let _ = w.await;
        }
        self.close_writer().await;
    }

    /// Stops abruptly, as a killed process would: running jobs are dropped
    /// mid-call and never report. Only what was committed survives.
    pub async fn halt(&self) {
        let _ = self.inner.stop.send(true);
        let workers: Vec<_> =
            std::mem::take(&mut *self.inner.workers.lock().expect("workers lock"));
        for w in workers {
            w.abort();
        }
        self.close_writer().await;
    }

    async fn close_writer(&self) {
        drop(self.inner.sender.lock().expect("sender lock").take());
        let writer = self.inner.writer.lock().expect("writer lock").take();
        match writer {
            Some(WriterHandle::Tasks(lanes)) => {
                for w in lanes {
                    let _ = w.await;
                }
            }
            Some(WriterHandle::Thread(w)) => {
                let _ = tokio::task::spawn_blocking(move || w.join()).await;
            }
            None => {}
        }
        self.inner.store.close().await;
        // Only once the writer and every connection are gone.
        let lock = self.inner.lock.lock().expect("lock lock").take();
        if self
            .inner
            .log_failed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            tracing::error!("the database stays locked until this process exits: restart it");
            std::mem::forget(lock);
        } else {
            drop(lock);
        }
    }

    /// When the earliest job or timer not yet done comes due (ms), if any.
    pub async fn next_due_job(&self) -> Result<Option<i64>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        Ok(store::jobs::next_due(&mut conn).await?)
    }

    /// The engine's clock.
    pub fn now(&self) -> i64 {
        self.inner.config.clock.now()
    }

    /// Wakes idle workers (after moving a manual clock, for instance).
    pub fn wake(&self) {
        // One stored permit: a pool busy claiming when this happens still
        // wakes at once when it next waits, instead of at its next poll.
        self.inner.jobs_changed.notify_one();
    }

    /// Ids of instances as their changes commit (for waiting without polling:
    /// long polls, live pages). A slow receiver may miss ids (`Lagged`) and
    /// should then re-read what it watches.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.inner.changes.subscribe()
    }

    /// Write-path counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// A deployed version, compiled.
    pub async fn process(&self, definition_id: i64) -> Result<Arc<Process>, Error> {
        // Compiled versions never change: no connection for a cached one.
        if let Some(process) = self.inner.processes.cached(definition_id) {
            return Ok(process);
        }
        let mut conn = self.inner.store.pool().acquire().await?;
        self.inner.processes.get(&mut *conn, definition_id).await
    }

    /// An instance.
    pub async fn instance(&self, id: &str) -> Result<InstanceRow, Error> {
        self.inner
            .store
            .instance(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "instance",
                id: id.to_owned(),
            })
    }

    /// Instances started by `parent`.
    pub async fn children(&self, parent: &str) -> Result<Vec<InstanceRow>, Error> {
        Ok(self.inner.store.children(parent).await?)
    }

    /// A task.
    pub async fn task(&self, id: &str) -> Result<TaskRow, Error> {
        self.inner
            .store
            .task(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "task",
                id: id.to_owned(),
            })
    }

    /// Tasks matching `filter`, soonest due first.
    pub async fn tasks(&self, filter: &Filter) -> Result<Vec<TaskRow>, Error> {
        // A list of no role's tasks (and not one instance's or business
        // key's) reads one lane of the inbox index per role the deployed
        // versions name: every task's role is one of those, and no index
        // orders all tasks by due time alone (it cost a task's every write).
        if filter.roles.is_empty() && filter.instance_id.is_none() && filter.business_key.is_none()
        {
            let roles = self.roles().await?;
            if roles.is_empty() {
                return Ok(Vec::new());
            }
            let every = Filter {
                roles,
                ..filter.clone()
            };
            return Ok(self.inner.store.tasks(&every).await?);
        }
        Ok(self.inner.store.tasks(filter).await?)
    }

    /// Every role a deployed version names (its `roles` and owner), sorted:
    /// every task's role is one of them, since a deploy refuses a task for
    /// an undeclared role and versions are never deleted.
    pub async fn roles(&self) -> Result<Vec<String>, Error> {
        let mut roles = std::collections::BTreeSet::new();
        for (id, _) in self.definition_ids().await? {
            let process = self.process(id).await?;
            let d = &process.definition;
            roles.extend(d.roles.iter().map(|r| r.id.clone()));
            roles.insert(d.owner_role.clone());
        }
        Ok(roles.into_iter().collect())
    }

    /// The owner role of every deployed version, sorted: the roles that may
    /// assign tasks (with `operator`).
    pub async fn owner_roles(&self) -> Result<Vec<String>, Error> {
        let mut roles = std::collections::BTreeSet::new();
        for (id, _) in self.definition_ids().await? {
            roles.insert(self.process(id).await?.definition.owner_role.clone());
        }
        Ok(roles.into_iter().collect())
    }

    /// An instance's history, in order.
    pub async fn history(&self, instance: &str) -> Result<Vec<Entry>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        Ok(store::journal::of_instance(&mut conn, instance).await?)
    }

    /// An indicator's values per period over instances started in
    /// `[from, to)` widened to whole local periods (an empty range stays
    /// empty), as the latest version of `code` declares it.
    pub async fn indicator(
        &self,
        q: &IndicatorQuery,
    ) -> Result<Vec<indicators::IndicatorValue>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        let id = store::definitions::latest_id(&mut conn, &q.code)
            .await?
            .ok_or_else(|| Error::NotDeployed {
                code: q.code.clone(),
            })?;
        let process = self.inner.processes.get(&mut *conn, id).await?;
        let indicator = process
            .definition
            .indicators
            .iter()
            .find(|i| i.id == q.indicator)
            .ok_or_else(|| Error::NotFound {
                what: "indicator",
                id: q.indicator.clone(),
            })?;
        let period = q.period.unwrap_or(indicator.period);
        let mut tally = indicators::Tally::new(indicator, period, q.utc_offset_minutes);
        let (from, to) = indicators::whole_periods(q.from, q.to, period, q.utc_offset_minutes);
        store::instances::each_started_between(&mut conn, &q.code, from, to, |i| tally.add(&i))
            .await?;
        Ok(tally.finish())
    }

    /// Per-step durations and per-branch counts of gates over instances of
    /// `code` started in `[from, to)`.
    pub async fn statistics(
        &self,
        code: &str,
        from: i64,
        to: i64,
    ) -> Result<(Vec<indicators::StepDuration>, Vec<indicators::GateCount>), Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        let mut stats = indicators::Statistics::default();
        store::journal::each_of_code(&mut conn, code, from, to, |e| stats.add(e)).await?;
        Ok(stats.finish())
    }

    /// Messages with `status`: `pending` lists those no instance has taken
    /// yet and a wait may still take, `expired` those kept past their time
    /// (none will), `delivered` the rest. At most `limit`, newest first.
    pub async fn messages(
        &self,
        status: &str,
        limit: i64,
    ) -> Result<Vec<store::messages::MessageRow>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        let now = self.inner.config.clock.now();
        Ok(store::messages::list(&mut conn, status, now, limit).await?)
    }

    /// Instances matching `filter`, newest first.
    pub async fn instances(
        &self,
        filter: &store::instances::InstanceFilter,
    ) -> Result<Vec<InstanceRow>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        Ok(store::instances::list(&mut conn, filter).await?)
    }

    /// Open and claimed tasks per role, for a badge (capped: see
    /// [`store::tasks::COUNT_CAP`]).
    pub async fn task_counts(&self, roles: &[String]) -> Result<Vec<(String, i64)>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        Ok(store::tasks::counts(&mut conn, roles).await?)
    }

    /// The latest deployed version of `code`, compiled.
    pub async fn latest_process(&self, code: &str) -> Result<Arc<Process>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        let id = store::definitions::latest_id(&mut conn, code)
            .await?
            .ok_or_else(|| Error::NotDeployed {
                code: code.to_owned(),
            })?;
        self.inner.processes.get(&mut *conn, id).await
    }

    /// Every deployed version, by code, newest version first.
    pub async fn definitions(&self) -> Result<Vec<store::definitions::DefinitionRow>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        Ok(store::definitions::all(&mut conn).await?)
    }

    /// The versions (id and code) that name one of `roles` (see
    /// [`Definition::names_role`](crate::definition::Definition::names_role)):
    /// a role added in version 2 reads version 2's instances, not version 1's.
    pub async fn versions_naming(&self, roles: &[String]) -> Result<Vec<(i64, String)>, Error> {
        let mut out = Vec::new();
        for (id, code) in self.definition_ids().await? {
            let process = self.process(id).await?;
            if roles.iter().any(|r| process.definition.names_role(r)) {
                out.push((id, code));
            }
        }
        Ok(out)
    }

    /// Every version's id and code, newest version first per code.
    pub async fn definition_ids(&self) -> Result<Vec<(i64, String)>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        Ok(store::definitions::ids(&mut conn).await?)
    }

    /// The messages delivered to an instance (WhatsApp documents, …).
    pub async fn messages_of(
        &self,
        instance: &str,
    ) -> Result<Vec<store::messages::MessageRow>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        Ok(store::messages::of_instance(&mut conn, instance).await?)
    }

    /// Incidents, newest first.
    pub async fn incidents(
        &self,
        status: Option<&str>,
        instance: Option<&str>,
    ) -> Result<Vec<IncidentRow>, Error> {
        let mut conn = self.inner.store.pool().acquire().await?;
        Ok(store::incidents::list(&mut conn, status, instance, 500).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> Value {
        let mut v = Value::from("x");
        for n in 0..levels {
            v = if n % 2 == 0 {
                Value::Array(vec![v])
            } else {
                serde_json::json!({ "a": v })
            };
        }
        v
    }

    /// A value as deep as the engine takes is taken, one level deeper is
    /// refused, in a map (its own level counted) or alone (a payload).
    #[test]
    fn values_nested_past_the_limit_are_refused() {
        assert!(!nests_deeper(&nested(MAX_NESTING), MAX_NESTING));
        assert!(nests_deeper(&nested(MAX_NESTING + 1), MAX_NESTING));
        assert!(!nests_deeper(&Value::from(3), 0));
        let mut data = Map::new();
        data.insert("f".to_owned(), nested(MAX_NESTING - 1));
        assert!(map_not_too_deep("data", &data).is_ok());
        data.insert("g".to_owned(), nested(MAX_NESTING));
        assert!(matches!(
            map_not_too_deep("data", &data),
            Err(Error::TooDeep {
                field: "data",
                limit: MAX_NESTING
            })
        ));
    }

    /// A node whose log failed to sync says it takes no more changes (what
    /// its `/healthz` reports), as it does once stopped.
    #[tokio::test]
    async fn a_failed_log_sync_makes_the_engine_unwritable() {
        let dir = std::env::temp_dir().join(format!("tramite-writable-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let engine = Engine::open(EngineConfig::new(format!(
            "sqlite://{}/t.db",
            dir.display()
        )))
        .await
        .unwrap();
        assert!(engine.writable());
        let failed = &engine.inner.log_failed;
        failed.store(true, std::sync::atomic::Ordering::Release);
        assert!(!engine.writable());
        // Not a real failure: the lock is let go at shutdown as usual.
        failed.store(false, std::sync::atomic::Ordering::Release);
        engine.shutdown().await;
        assert!(!engine.writable(), "stopped");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
