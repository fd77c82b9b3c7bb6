//! The write path: on SQLite one thread owns the database connection, on
//! PostgreSQL a few lanes each own one; each executes commands in batches.
//! Every command of a batch runs in its own savepoint
//! (so one failing command changes nothing and does not disturb the others)
//! — only once a command of the batch has failed: the batch first runs
//! without them, is rolled back whole on a failure and runs again with
//! them — and the batch commits once, so one fsync acknowledges many
//! commands (group commit). A command's reply is sent only after its batch
//! committed and the commit is on disk, so an acknowledged command is
//! durable. On SQLite that fsync runs on a thread of its own while the
//! writer runs the next batch (see [`spawn_log_sync`]).

use std::sync::Arc;

use sqlx::Acquire;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::Error;
use crate::catalog::Catalog;
use crate::runtime::clock::Clock;
use crate::runtime::commands::{self, Command, Ctx, ProcessCache, Reply};
use crate::store::{Receipt, Store, jobs};

/// A command and where its answer goes.
pub(crate) struct Envelope {
    pub(crate) command: Command,
    pub(crate) reply: oneshot::Sender<Result<Reply, Error>>,
}

/// Drops the commands whose callers stopped waiting before the writer
/// reached them (an HTTP request past its time limit, a client that hung
/// up): they were never acknowledged, and a caller told "timed out" who
/// sends the command again must not find the first one done as well.
fn without_abandoned(batch: &mut Vec<Envelope>, stats: &Stats) {
    let before = batch.len();
    batch.retain(|env| !env.reply.is_closed());
    let dropped = before - batch.len();
    if dropped > 0 {
        stats
            .abandoned
            .fetch_add(dropped as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            commands = dropped,
            "commands whose callers stopped waiting were not run"
        );
    }
}

/// Most commands a PostgreSQL lane takes into one transaction. Its
/// statements are round trips one after another, so a batch's callers all
/// wait for the whole batch: many small batches on parallel lanes answer
/// sooner than one large batch on one lane.
const LANE_BATCH: usize = 8;

/// What the writer needs.
#[derive(Clone)]
pub(crate) struct Writer {
    pub(crate) store: Store,
    pub(crate) processes: Arc<ProcessCache>,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) max_batch: usize,
    /// Woken when a batch may have made jobs due.
    pub(crate) jobs_changed: Arc<Notify>,
    /// Counters for the benchmark.
    pub(crate) stats: Arc<Stats>,
    /// Ids of instances changed by each committed batch.
    pub(crate) changes: tokio::sync::broadcast::Sender<Arc<str>>,
}

/// Write-path counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Commands executed.
    pub commands: std::sync::atomic::AtomicU64,
    /// Transactions committed.
    pub commits: std::sync::atomic::AtomicU64,
    /// Commands not run because their callers had stopped waiting.
    pub abandoned: std::sync::atomic::AtomicU64,
}

impl Writer {
    /// One of the lanes sharing `inbox` (PostgreSQL), until every sender is
    /// gone: each takes what is waiting when it is free (at most
    /// [`LANE_BATCH`]) and runs it as one transaction, side by side with the
    /// others. Lanes are as safe as engine nodes are: every command locks its
    /// instance's row, and a deadlock between two lanes' batches falls back
    /// to running their commands one by one.
    pub(crate) async fn run_lane(self, inbox: Arc<tokio::sync::Mutex<mpsc::Receiver<Envelope>>>) {
        let most = self.max_batch.min(LANE_BATCH);
        let mut batch: Vec<Envelope> = Vec::with_capacity(most);
        loop {
            let got = inbox.lock().await.recv_many(&mut batch, most).await;
            if got == 0 {
                return;
            }
            let mut envelopes = std::mem::take(&mut batch);
            without_abandoned(&mut envelopes, &self.stats);
            if !envelopes.is_empty() {
                self.execute(envelopes).await;
            }
        }
    }

    async fn execute(&self, envelopes: Vec<Envelope>) {
        let touched = std::sync::Mutex::new(Vec::new());
        let scheduled = std::sync::atomic::AtomicBool::new(false);
        let mut outcome = self
            .batch(&envelopes, &touched, &scheduled, Isolation::Optimistic)
            .await;
        if matches!(outcome, Ok(None)) {
            again_with_savepoints(envelopes.len(), &touched, &scheduled);
            outcome = self
                .batch(&envelopes, &touched, &scheduled, Isolation::PerCommand)
                .await;
        }
        let results = match outcome.and_then(|r| r.ok_or(Error::Stopped)) {
            Ok(results) => results,
            // Running them again could do them twice; answering success
            // could be a lie.
            Err(Error::CommitOutcomeUnknown) => envelopes
                .iter()
                .map(|_| Err(Error::CommitOutcomeUnknown))
                .collect(),
            Err(e) => {
                // The commit itself failed (or the connection did): run each
                // command alone so that one bad apple cannot sink the rest.
                tracing::warn!(error = %e, size = envelopes.len(), "batch failed; running commands one by one");
                touched.lock().expect("touched lock").clear();
                let mut results = Vec::with_capacity(envelopes.len());
                for env in &envelopes {
                    results.push(self.single(&env.command, &touched, &scheduled).await);
                }
                results
            }
        };
        self.finish(Settled {
            envelopes,
            results,
            touched: touched.into_inner().expect("touched lock"),
            scheduled: scheduled.into_inner(),
            committed: true,
        });
    }

    /// Counts, answers every caller (after the commit is durable), wakes
    /// workers and announces the changed instances.
    fn finish(&self, settled: Settled) {
        let Settled {
            envelopes,
            results,
            touched: mut ids,
            scheduled: wake,
            committed: _,
        } = settled;
        self.stats
            .commands
            .fetch_add(envelopes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for (env, result) in envelopes.into_iter().zip(results) {
            // The caller may have gone away; the command is committed all the same.
            let _ = env.reply.send(result);
        }
        if wake {
            // A stored permit if the pool is not waiting right now: no
            // wake-up is lost between its claim and its wait.
            self.jobs_changed.notify_one();
        }
        if self.changes.receiver_count() > 0 {
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                let _ = self.changes.send(Arc::from(id));
            }
        }
    }

    /// One transaction. `None`: an `Optimistic` batch met a failing command
    /// and was rolled back whole.
    async fn batch(
        &self,
        envelopes: &[Envelope],
        touched: &std::sync::Mutex<Vec<String>>,
        scheduled: &std::sync::atomic::AtomicBool,
        isolation: Isolation,
    ) -> Result<Option<Vec<Result<Reply, Error>>>, Error> {
        let mut conn = self.store.writes().acquire().await?;
        let mut tx = conn.begin().await?;
        let ctx = Ctx {
            backend: self.store.backend(),
            processes: &self.processes,
            catalog: &self.catalog,
            now: self.clock.now(),
            touched: std::sync::Mutex::new(Vec::new()),
            scheduled: std::sync::atomic::AtomicBool::new(false),
            receipt: std::sync::Mutex::default(),
        };
        let mut results = Vec::with_capacity(envelopes.len());
        // Alone in its batch, a command needs no savepoint: the transaction
        // is its own.
        let alone = envelopes.len() == 1;
        if alone || isolation == Isolation::Optimistic {
            for env in envelopes {
                let result = exec_caught(&mut *tx, &ctx, env.command.clone()).await;
                if let Err(e) = &result {
                    let retryable = commands::is_retryable(e);
                    tx.rollback().await?;
                    if retryable {
                        return Err(Error::Concurrent {
                            instance: String::new(),
                        });
                    }
                    return Ok(if alone { Some(vec![result]) } else { None });
                }
                results.push(result);
            }
            self.commit_and_announce(tx, &ctx, touched, scheduled)
                .await?;
            return Ok(Some(results));
        }
        let mut receipt = Receipt::default();
        for env in envelopes {
            let mut savepoint = tx.begin().await?;
            let result = exec_caught(&mut *savepoint, &ctx, env.command.clone()).await;
            let mut changed = std::mem::take(&mut *ctx.touched.lock().expect("touched lock"));
            let made_jobs = ctx
                .scheduled
                .swap(false, std::sync::atomic::Ordering::Relaxed);
            let told = std::mem::take(&mut *ctx.receipt.lock().expect("receipt lock"));
            match &result {
                Ok(_) => {
                    receipt.merge(told);
                    savepoint.commit().await?;
                    touched.lock().expect("touched lock").append(&mut changed);
                    if made_jobs {
                        scheduled.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(e) if commands::is_retryable(e) => {
                    savepoint.rollback().await?;
                    return Err(Error::Concurrent {
                        instance: String::new(),
                    });
                }
                Err(_) => {
                    savepoint.rollback().await?;
                    // The transaction's id stands whatever became of the
                    // command; its notice is undone with its savepoint.
                    receipt.merge(Receipt {
                        announced: false,
                        ..told
                    });
                }
            }
            results.push(result);
        }
        let scheduled = scheduled.load(std::sync::atomic::Ordering::Relaxed);
        self.commit(tx, scheduled, receipt).await?;
        Ok(Some(results))
    }

    async fn single(
        &self,
        command: &Command,
        touched: &std::sync::Mutex<Vec<String>>,
        scheduled: &std::sync::atomic::AtomicBool,
    ) -> Result<Reply, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut conn = self.store.writes().acquire().await?;
                let mut tx = conn.begin().await?;
                let ctx = Ctx {
                    backend: self.store.backend(),
                    processes: &self.processes,
                    catalog: &self.catalog,
                    now: self.clock.now(),
                    touched: std::sync::Mutex::new(Vec::new()),
                    scheduled: std::sync::atomic::AtomicBool::new(false),
                    receipt: std::sync::Mutex::default(),
                };
                let reply = exec_caught(&mut *tx, &ctx, command.clone()).await?;
                self.commit_and_announce(tx, &ctx, touched, scheduled)
                    .await?;
                Ok::<_, Error>(reply)
            }
            .await;
            match result {
                Err(e) if commands::is_retryable(&e) && attempt < 5 => continue,
                other => return other,
            }
        }
    }

    /// Wakes the job pollers if `ctx`'s commands scheduled jobs, commits
    /// `tx` and hands on the instances they changed and whether they made
    /// jobs.
    async fn commit_and_announce(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Any>,
        ctx: &Ctx<'_>,
        touched: &std::sync::Mutex<Vec<String>>,
        scheduled: &std::sync::atomic::AtomicBool,
    ) -> Result<(), Error> {
        let made_jobs = ctx.scheduled.load(std::sync::atomic::Ordering::Relaxed);
        let receipt = *ctx.receipt.lock().expect("receipt lock");
        self.commit(tx, made_jobs, receipt).await?;
        touched
            .lock()
            .expect("touched lock")
            .append(&mut ctx.touched.lock().expect("touched lock"));
        if made_jobs {
            scheduled.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Commits `tx` (and counts it), telling every node first that it
    /// scheduled jobs if `scheduled` and the `receipt` of its writes does
    /// not say the notice is sent already. When the commit fails — typically the
    /// connection broke after COMMIT was sent — PostgreSQL is asked what
    /// became of the transaction: committed means the batch's results
    /// stand (running it again would start an instance twice); aborted
    /// means it can run again; no answer means nobody can tell.
    async fn commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        scheduled: bool,
        receipt: Receipt,
    ) -> Result<(), Error> {
        let xid = before_commit(&mut tx, self.store.backend(), scheduled, receipt).await?;
        let committed = || {
            self.stats
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let Err(e) = tx.commit().await else {
            committed();
            return Ok(());
        };
        let Some(xid) = xid else {
            return Err(Error::Store(e.into()));
        };
        match self.transaction_status(xid).await {
            Some(true) => {
                tracing::warn!(error = %e, xid, "the commit's answer was lost; the transaction committed");
                committed();
                Ok(())
            }
            Some(false) => Err(Error::Store(e.into())),
            None => {
                tracing::error!(error = %e, xid, "the commit's answer was lost and its outcome cannot be read");
                Err(Error::CommitOutcomeUnknown)
            }
        }
    }

    /// Whether PostgreSQL's transaction `xid` committed (`None`: it could
    /// not be told within [`OUTCOME_PATIENCE`]). Bounded as a whole, not
    /// per try: a try may wait for a pool connection, or hang on one the
    /// network silently dropped, while the lane holds its batch.
    async fn transaction_status(&self, xid: i64) -> Option<bool> {
        tokio::time::timeout(OUTCOME_PATIENCE, self.ask_transaction_status(xid))
            .await
            .ok()
            .flatten()
    }

    async fn ask_transaction_status(&self, xid: i64) -> Option<bool> {
        loop {
            let status: Result<Option<String>, sqlx::Error> =
                sqlx::query_scalar("SELECT txid_status($1)")
                    .bind(xid)
                    .fetch_one(self.store.pool())
                    .await;
            match status.as_ref().map(Option::as_deref) {
                Ok(Some("committed")) => return Some(true),
                Ok(Some("aborted")) => return Some(false),
                // Still in progress on the server (its backend has not seen
                // the connection go), or the database is unreachable.
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }
}

/// Runs one command. A panic in it (a bug, or stored data no command
/// expects, such as a row edited by hand) fails that command alone, as an
/// error does — rolled back with its savepoint or its batch — instead of
/// ending the lane's task or the SQLite writer's thread, and with it every
/// command after.
async fn exec_caught(
    conn: &mut impl crate::store::Tx,
    ctx: &commands::Ctx<'_>,
    command: Command,
) -> Result<Reply, Error> {
    use futures_util::FutureExt;
    let what = command.kind();
    std::panic::AssertUnwindSafe(commands::exec(conn, ctx, command))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(command = what, panic = %why, "a command panicked; it was rolled back and failed alone");
            Err(Error::CommandPanicked)
        })
}

/// How long a commit whose answer was lost is looked up before its caller
/// hears `commit-outcome-unknown`.
const OUTCOME_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// PostgreSQL, just before COMMIT and in one round trip: the transaction's
/// id, so that the outcome of a commit whose answer is lost can be asked
/// for; and, if `scheduled`, a `NOTIFY` that tells every node new jobs
/// wait (PostgreSQL delivers it only on commit, so an idle node never looks
/// for a job that is not there yet). Nothing to send when the `receipt` of
/// the transaction's instance writes has both already — the usual case: an
/// instance's statement reads the id and notifies of the jobs it inserts.
/// `None` on SQLite, whose commits are local calls and whose one node
/// wakes its workers in-process.
async fn before_commit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: crate::store::Backend,
    scheduled: bool,
    receipt: Receipt,
) -> Result<Option<i64>, Error> {
    if backend != crate::store::Backend::Postgres {
        return Ok(None);
    }
    let announce = scheduled && !receipt.announced;
    if let (false, Some(xid)) = (announce, receipt.xid) {
        return Ok(Some(xid));
    }
    let query = if announce {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "WITH {} SELECT txid_current() FROM notified",
            jobs::NOTIFIED
        )))
    } else {
        sqlx::query_scalar(sqlx::AssertSqlSafe("SELECT txid_current()".to_owned()))
    };
    let xid: i64 = query
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| Error::Store(e.into()))?;
    Ok(Some(xid))
}

/// Wakes this node's idle workers whenever any node schedules jobs on the
/// shared PostgreSQL database, until `stop`; reconnects after a failure
/// (meanwhile the workers' poll interval still finds every job).
pub(crate) async fn listen_for_jobs(
    url: String,
    wake: Arc<Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => match listener.listen(jobs::CHANNEL).await {
                Ok(()) => {
                    // Jobs scheduled while this node was not listening (its
                    // start, a lost connection) are found by the claim this
                    // wakes, not a poll interval later.
                    wake.notify_one();
                    loop {
                        tokio::select! {
                            got = listener.try_recv() => match got {
                                Ok(Some(_)) => wake.notify_one(),
                                // The connection dropped; the next call
                                // reconnects, and what was announced
                                // meanwhile is lost: look now.
                                Ok(None) => {
                                    tracing::info!("job notifications: connection lost, reconnecting");
                                    wake.notify_one();
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "job notifications interrupted; reconnecting");
                                    break;
                                }
                            },
                            _ = stop.changed() => return,
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for job notifications"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot connect for job notifications"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The SQLite writer: one OS thread owns a rusqlite connection and runs
/// whole batches on it, synchronously. The command code is the same async
/// code as on PostgreSQL; with rusqlite nothing in it actually waits, so
/// `block_on` runs each command straight through.
pub(crate) fn spawn_sqlite(
    writer: Writer,
    path: &std::path::Path,
    mut inbox: mpsc::Receiver<Envelope>,
    runtime: tokio::runtime::Handle,
    failed: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, Error> {
    let mut conn = KeptIfFailed {
        conn: Some(crate::store::sqlite_tx::Writing::open(path).map_err(Error::Store)?),
        failed: Arc::clone(&failed),
    };
    let log = crate::store::sqlite_tx::LogFile::open(path).map_err(Error::Store)?;
    let checkpoints = spawn_checkpointer(path, Arc::clone(&writer.stats), Arc::clone(&failed))?;
    let answers = writer.clone();
    let sync = spawn_log_sync(
        move || log.sync(),
        Arc::clone(&failed),
        move |settled| answers.finish(settled),
    )?;
    std::thread::Builder::new()
        .name("tramite-writer".to_owned())
        .spawn(move || {
            crate::store::sqlite_tx::watch_log_sync(Arc::clone(&failed));
            while let Some(first) = inbox.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < writer.max_batch {
                    match inbox.try_recv() {
                        Ok(env) => batch.push(env),
                        Err(_) => break,
                    }
                }
                if failed.load(std::sync::atomic::Ordering::Acquire) {
                    for env in batch {
                        let _ = env.reply.send(Err(Error::LogSyncFailed));
                    }
                    continue;
                }
                without_abandoned(&mut batch, &writer.stats);
                if batch.is_empty() {
                    continue;
                }
                let settled = writer.execute_sqlite(&mut conn, batch, &runtime);
                if let Err(std::sync::mpsc::SendError(settled)) = sync.batches.send(settled) {
                    // Only a panic ends the sync thread early. This batch
                    // committed, and nobody can tell whether its log is on
                    // disk: its callers hear so, not `Stopped` (which would
                    // read as "not taken").
                    tracing::error!("the log sync thread is gone; the writer stops");
                    for env in settled.envelopes {
                        let _ = env.reply.send(Err(Error::CommitOutcomeUnknown));
                    }
                    break;
                }
            }
            // Every reply is sent before the last checkpoint, which runs
            // after the last commit.
            drop(sync.batches);
            let _ = sync.thread.join();
            drop(checkpoints.stop);
            let _ = checkpoints.thread.join();
            drop(conn);
        })
        .map_err(|e| Error::Store(crate::store::Error::Thread(e.to_string())))
}

/// The writer's connection, closed when the writer ends, unless the log
/// could not be synced (or the thread panics).
///
/// After a failed sync the log may hold pages the disk lost: copying it
/// into the database (the last connection to close checkpoints) could
/// write stale pages over good ones. The connection is then left open
/// until the process exits, so no connection of this process is the last
/// to close; the next process recovers the log, whose checksums stop at
/// the first frame that did not reach the disk.
struct KeptIfFailed {
    conn: Option<crate::store::sqlite_tx::Writing>,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl std::ops::Deref for KeptIfFailed {
    type Target = crate::store::sqlite_tx::Writing;
    fn deref(&self) -> &Self::Target {
        self.conn.as_ref().expect("open until dropped")
    }
}

impl std::ops::DerefMut for KeptIfFailed {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn.as_mut().expect("open until dropped")
    }
}

impl Drop for KeptIfFailed {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.failed.load(std::sync::atomic::Ordering::Acquire) || std::thread::panicking() {
            tracing::error!("the SQLite log is left unchecked for recovery by the next process");
            std::mem::forget(conn);
        }
    }
}

/// A batch, committed (or not) and waiting to be answered: on SQLite by
/// the log sync thread, on PostgreSQL by its lane once COMMIT returned.
pub(crate) struct Settled {
    envelopes: Vec<Envelope>,
    results: Vec<Result<Reply, Error>>,
    /// Ids of the instances the batch changed.
    touched: Vec<String>,
    /// Whether the batch made jobs due.
    scheduled: bool,
    /// Whether the batch committed anything (if not, it needs no sync of
    /// its own, only to wait for the commits before it).
    committed: bool,
}

/// The log sync thread and its queue (dropping `batches` stops it once the
/// queue is answered).
struct LogSync {
    batches: std::sync::mpsc::SyncSender<Settled>,
    thread: std::thread::JoinHandle<()>,
}

/// Answers committed SQLite batches once the log holding them is on disk.
///
/// The writer commits with `synchronous = NORMAL` and hands each batch
/// here: one `fdatasync` of the log covers every batch waiting (group
/// commit across batches), while the writer already runs the next one.
/// (When COMMIT waited for the fsync, the writer sat idle for it: with no
/// fsync at all the P06 benchmark ran 18–30 % faster.)
/// Batches are answered in commit order, so an answer never rests on a
/// commit that is not yet durable. Other connections can read a commit
/// before its sync returns (about a millisecond): only a power loss in that
/// window loses it, and no caller has been told it was done.
///
/// When a sync fails, the batches it covered are answered
/// [`Error::CommitOutcomeUnknown`], every later batch too without syncing
/// again, and `failed` tells the writer to refuse everything
/// ([`Error::LogSyncFailed`]) until the engine restarts. Commands that
/// failed are answered so too: they changed nothing, but their error may
/// rest on a commit that was lost (a task "not open" because a completion
/// in the lost log closed it). A sync that panics counts as one that
/// failed.
fn spawn_log_sync<S, A>(
    mut sync: S,
    failed: Arc<std::sync::atomic::AtomicBool>,
    mut answer: A,
) -> Result<LogSync, Error>
where
    S: FnMut() -> std::io::Result<()> + Send + 'static,
    A: FnMut(Settled) + Send + 'static,
{
    // Bounded: a sync that hangs (a disk that stopped answering) stops the
    // writer at the next batch, and the callers behind it wait at its inbox
    // until their time runs out (over HTTP, 503 `timeout`), rather than
    // commits piling up that nobody can be told of.
    let (batches, queue) = std::sync::mpsc::sync_channel::<Settled>(SYNC_QUEUE);
    let thread = std::thread::Builder::new()
        .name("tramite-log-sync".to_owned())
        .spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut group = vec![first];
                group.extend(queue.try_iter());
                // A sync that panics is a sync that failed: the thread
                // stays to answer this group and every batch queued behind
                // it, which would otherwise be dropped unanswered (their
                // callers told `Stopped`, "not taken", of commits made).
                let synced = || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut sync))
                        .unwrap_or_else(|_| Err(std::io::Error::other("the log's sync panicked")))
                };
                let durable = !failed.load(std::sync::atomic::Ordering::Acquire)
                    && match group.iter().any(|b| b.committed).then(synced) {
                        None | Some(Ok(())) => true,
                        Some(Err(e)) => {
                            tracing::error!(
                                error = %e,
                                "the SQLite log could not be synced to disk; the engine takes no more changes until it is restarted"
                            );
                            failed.store(true, std::sync::atomic::Ordering::Release);
                            false
                        }
                    }
                    // The checkpointer's own sync of the log may have failed
                    // meanwhile: where the kernel reports a write error to
                    // one descriptor only, ours would not hear of it.
                    && !failed.load(std::sync::atomic::Ordering::Acquire);
                for mut settled in group {
                    if !durable {
                        for result in &mut settled.results {
                            *result = Err(Error::CommitOutcomeUnknown);
                        }
                        // Nothing durable happened to announce.
                        settled.touched.clear();
                        settled.scheduled = false;
                    }
                    answer(settled);
                }
            }
        })
        .map_err(|e| Error::Store(crate::store::Error::Thread(e.to_string())))?;
    Ok(LogSync { batches, thread })
}

/// Committed batches that may wait for the log's sync: a few syncs' worth.
const SYNC_QUEUE: usize = 64;

/// How often the checkpointer looks for new commits.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The checkpointer's thread and what stops it (dropping `stop`).
struct Checkpoints {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Copies the WAL back into the database file from a thread of its own, so
/// the writer does not: SQLite's automatic checkpoint runs inside the
/// committing connection's COMMIT, and was 7 % of the writer's time in a
/// profile of the P06 benchmark (page copies and the database file's
/// fsync), time every waiting caller paid. A passive checkpoint never
/// blocks the writer; the writer's own checkpoint stays
/// (`sqlite_tx::backstop`), at a
/// higher mark, should this thread fall behind.
///
/// Once a sync of the log has failed (`failed`), it copies nothing more:
/// the log may hold frames the disk never got, and a checkpoint reads them
/// without checking their checksums. Its own I/O error counts as such a
/// failure too.
fn spawn_checkpointer(
    path: &std::path::Path,
    stats: Arc<Stats>,
    failed: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Checkpoints, Error> {
    let conn = rusqlite::Connection::open(path)
        .and_then(|c| {
            c.execute_batch("PRAGMA busy_timeout = 10000;")?;
            Ok(c)
        })
        .map_err(|e| Error::Store(crate::store::Error::Sqlite(e)))?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tramite-checkpoint".to_owned())
        .spawn(move || {
            let commits = || stats.commits.load(std::sync::atomic::Ordering::Relaxed);
            let mut seen = commits();
            loop {
                // Nothing is ever sent: the sender dropped means stop.
                let last = !matches!(
                    stopped.recv_timeout(CHECKPOINT_EVERY),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
                let now = commits();
                let broken = failed.load(std::sync::atomic::Ordering::Acquire);
                if (now != seen || last) && !broken {
                    seen = now;
                    match conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                        Ok(()) => {}
                        Err(rusqlite::Error::SqliteFailure(e, _))
                            if e.code == rusqlite::ErrorCode::SystemIoFailure =>
                        {
                            tracing::error!(error = %e, "WAL checkpoint could not write or sync; the engine takes no more changes until it is restarted");
                            failed.store(true, std::sync::atomic::Ordering::Release);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "WAL checkpoint failed; the writer's own will run");
                        }
                    }
                }
                if last {
                    if failed.load(std::sync::atomic::Ordering::Acquire) {
                        // Not the last connection to close (see the writer).
                        std::mem::forget(conn);
                    }
                    return;
                }
            }
        })
        .map_err(|e| Error::Store(crate::store::Error::Thread(e.to_string())))?;
    Ok(Checkpoints { stop, thread })
}

/// How a batch keeps its commands apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// No savepoints: the first command that fails rolls the whole batch
    /// back, and the batch runs again `PerCommand`. Failing commands are
    /// rare, and a savepoint is not free: on SQLite it copies every page a
    /// command first touches into its sub-journal (8 % of the writer's time
    /// in a profile of the P06 benchmark); on PostgreSQL it is two more
    /// round trips per command (`SAVEPOINT`, `RELEASE`).
    Optimistic,
    /// Each command in its own savepoint, so a failing one changes nothing
    /// and the others commit.
    PerCommand,
}

/// An `Optimistic` batch met a failing command and was rolled back whole,
/// so nothing it announced happened: it runs again `PerCommand`.
fn again_with_savepoints(
    size: usize,
    touched: &std::sync::Mutex<Vec<String>>,
    scheduled: &std::sync::atomic::AtomicBool,
) {
    tracing::debug!(
        size,
        "a command of the batch failed; running it again with savepoints"
    );
    touched.lock().expect("touched lock").clear();
    scheduled.store(false, std::sync::atomic::Ordering::Relaxed);
}

impl Writer {
    /// Runs a batch; its callers are answered once its commit is durable.
    fn execute_sqlite(
        &self,
        conn: &mut crate::store::sqlite_tx::Writing,
        envelopes: Vec<Envelope>,
        runtime: &tokio::runtime::Handle,
    ) -> Settled {
        let commits = || {
            self.stats
                .commits
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = commits();
        let touched = std::sync::Mutex::new(Vec::new());
        let scheduled = std::sync::atomic::AtomicBool::new(false);
        let mut batch = |isolation| {
            self.sqlite_batch(
                conn,
                SqliteBatch {
                    envelopes: &envelopes,
                    touched: &touched,
                    scheduled: &scheduled,
                    runtime,
                    isolation,
                },
            )
        };
        let mut outcome = batch(Isolation::Optimistic);
        if matches!(outcome, Ok(None)) {
            again_with_savepoints(envelopes.len(), &touched, &scheduled);
            outcome = batch(Isolation::PerCommand);
        }
        let results = match outcome {
            Ok(Some(results)) => results,
            Ok(None) | Err(_) => {
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, size = envelopes.len(), "batch failed; running commands one by one");
                }
                let _ = conn.rollback();
                touched.lock().expect("touched lock").clear();
                scheduled.store(false, std::sync::atomic::Ordering::Relaxed);
                envelopes
                    .iter()
                    .map(|env| {
                        self.sqlite_batch(
                            conn,
                            SqliteBatch {
                                envelopes: std::slice::from_ref(env),
                                touched: &touched,
                                scheduled: &scheduled,
                                runtime,
                                isolation: Isolation::PerCommand,
                            },
                        )
                        .and_then(|r| r.and_then(|mut r| r.pop()).ok_or(Error::Stopped))
                        .unwrap_or_else(|e| {
                            let _ = conn.rollback();
                            Err(e)
                        })
                    })
                    .collect()
            }
        };
        Settled {
            envelopes,
            results,
            touched: touched.into_inner().expect("touched lock"),
            scheduled: scheduled.into_inner(),
            committed: commits() != before,
        }
    }

    /// One transaction. `None`: an `Optimistic` batch met a failing command
    /// and was rolled back whole.
    fn sqlite_batch(
        &self,
        conn: &mut crate::store::sqlite_tx::Writing,
        b: SqliteBatch<'_>,
    ) -> Result<Option<Vec<Result<Reply, Error>>>, Error> {
        let SqliteBatch {
            envelopes,
            touched,
            scheduled,
            runtime,
            isolation,
        } = b;
        conn.begin()?;
        let ctx = Ctx {
            backend: crate::store::Backend::Sqlite,
            processes: &self.processes,
            catalog: &self.catalog,
            now: self.clock.now(),
            touched: std::sync::Mutex::new(Vec::new()),
            scheduled: std::sync::atomic::AtomicBool::new(false),
            receipt: std::sync::Mutex::default(),
        };
        let alone = envelopes.len() == 1;
        let savepoints = !alone && isolation == Isolation::PerCommand;
        let mut results = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            if savepoints {
                conn.savepoint()?;
            }
            let result = runtime.block_on(exec_caught(conn, &ctx, env.command.clone()));
            let mut changed = std::mem::take(&mut *ctx.touched.lock().expect("touched lock"));
            let made_jobs = ctx
                .scheduled
                .swap(false, std::sync::atomic::Ordering::Relaxed);
            match (&result, savepoints) {
                (Ok(_), true) => conn.release()?,
                (Err(_), true) => conn.rollback_to_savepoint()?,
                (Err(_), false) => {
                    conn.rollback()?;
                    if !alone {
                        return Ok(None);
                    }
                }
                (Ok(_), false) => {}
            }
            if result.is_ok() {
                touched.lock().expect("touched lock").append(&mut changed);
                if made_jobs {
                    scheduled.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            results.push(result);
        }
        if !(alone && results[0].is_err()) {
            conn.commit()?;
            self.stats
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Some(results))
    }
}

/// One SQLite batch: its commands and where its side results go.
#[derive(Clone, Copy)]
struct SqliteBatch<'a> {
    envelopes: &'a [Envelope],
    touched: &'a std::sync::Mutex<Vec<String>>,
    scheduled: &'a std::sync::atomic::AtomicBool,
    runtime: &'a tokio::runtime::Handle,
    isolation: Isolation,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use tokio::sync::oneshot;

    use super::{Envelope, Settled, spawn_log_sync};
    use crate::Error;
    use crate::runtime::commands::{Command, Reply};

    /// A batch of one command with `result`, and where its answer arrives.
    fn batch(
        result: Result<Reply, Error>,
        committed: bool,
    ) -> (Settled, oneshot::Receiver<Result<Reply, Error>>) {
        let (reply, answer) = oneshot::channel();
        let settled = Settled {
            envelopes: vec![Envelope {
                command: Command::ReleaseLeases,
                reply,
            }],
            results: vec![result],
            touched: vec!["i1".to_owned()],
            scheduled: true,
            committed,
        };
        (settled, answer)
    }

    /// What each answered batch announced: changed instances, jobs made due.
    type Announced = Arc<std::sync::Mutex<Vec<(Vec<String>, bool)>>>;

    /// Answers as the writer does, and records what was announced.
    fn answer_into(announced: Announced) -> impl FnMut(Settled) + Send {
        move |s: Settled| {
            announced
                .lock()
                .expect("announced lock")
                .push((s.touched.clone(), s.scheduled));
            for (env, result) in s.envelopes.into_iter().zip(s.results) {
                let _ = env.reply.send(result);
            }
        }
    }

    #[test]
    fn a_commit_is_answered_only_once_the_log_is_synced() {
        let (entered, syncing) = std::sync::mpsc::channel::<()>();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let announced = Arc::default();
        let sync = spawn_log_sync(
            move || {
                entered.send(()).expect("test waits");
                gate.recv().expect("test releases");
                Ok(())
            },
            Arc::new(AtomicBool::new(false)),
            answer_into(Arc::clone(&announced)),
        )
        .expect("sync thread");
        let (settled, mut answer) = batch(Ok(Reply::Done), true);
        sync.batches.send(settled).expect("queued");
        syncing.recv().expect("the sync started");
        assert!(
            matches!(answer.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "answered before the log was on disk"
        );
        release.send(()).expect("released");
        assert!(matches!(answer.blocking_recv(), Ok(Ok(Reply::Done))));
        drop(sync.batches);
        sync.thread.join().expect("sync thread ends");
        assert_eq!(
            *announced.lock().expect("announced"),
            vec![(vec!["i1".to_owned()], true)]
        );
    }

    #[test]
    fn a_batch_that_committed_nothing_waits_for_no_sync() {
        let syncs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&syncs);
        let sync = spawn_log_sync(
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            Arc::new(AtomicBool::new(false)),
            answer_into(Arc::default()),
        )
        .expect("sync thread");
        let (settled, answer) = batch(Err(Error::Stopped), false);
        sync.batches.send(settled).expect("queued");
        assert!(matches!(answer.blocking_recv(), Ok(Err(Error::Stopped))));
        drop(sync.batches);
        sync.thread.join().expect("sync thread ends");
        assert_eq!(syncs.load(Ordering::SeqCst), 0);
    }

    /// Rows committed to the log of a fresh database at `path`, and whether
    /// they reached the database file itself once `failed` is as given
    /// and the checkpointer has stopped (read from a copy of the file alone).
    fn checkpointed(failed: bool) -> bool {
        let dir = std::env::temp_dir().join(format!(
            "tramite-ckpt-{}-{failed}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        // A connection that never checkpoints itself, and stays open so the
        // log stays: as the writer's.
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
                 CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);",
            )
            .unwrap();
        let stats = Arc::new(super::Stats::default());
        let flag = Arc::new(AtomicBool::new(failed));
        let checkpoints =
            super::spawn_checkpointer(&path, Arc::clone(&stats), Arc::clone(&flag)).unwrap();
        stats.commits.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(super::CHECKPOINT_EVERY * 3);
        drop(checkpoints.stop);
        checkpoints.thread.join().unwrap();
        let copy = dir.join("copy.sqlite");
        std::fs::copy(&path, &copy).unwrap();
        let found = rusqlite::Connection::open(&copy)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0)))
            .is_ok_and(|n| n == 1);
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
        found
    }

    #[test]
    fn no_checkpoint_copies_a_log_whose_sync_failed() {
        assert!(
            checkpointed(false),
            "the checkpointer copies committed rows"
        );
        assert!(
            !checkpointed(true),
            "after a failed sync nothing is copied, not even at the end"
        );
    }

    /// A sync that hangs stops the writer once [`super::SYNC_QUEUE`]
    /// batches wait behind it: commits do not pile up that nobody can be
    /// told of (nor memory with them).
    #[test]
    fn a_hanging_sync_holds_the_writer_back() {
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (entered, syncing) = std::sync::mpsc::channel::<()>();
        let sync = spawn_log_sync(
            move || {
                let _ = entered.send(());
                let _ = hold.recv();
                Ok(())
            },
            Arc::new(AtomicBool::new(false)),
            |_| {},
        )
        .expect("sync thread");
        // The first is taken, and its sync hangs.
        sync.batches
            .send(batch(Ok(Reply::Done), true).0)
            .expect("queued");
        syncing.recv().expect("the sync began");
        let mut queued = 0;
        let full = loop {
            match sync.batches.try_send(batch(Ok(Reply::Done), true).0) {
                Ok(()) => queued += 1,
                Err(e) => break e,
            }
            assert!(queued <= super::SYNC_QUEUE, "never full");
        };
        assert!(matches!(full, std::sync::mpsc::TrySendError::Full(_)));
        assert_eq!(queued, super::SYNC_QUEUE);
        drop(release);
        drop(sync.batches);
        sync.thread.join().expect("sync thread ends");
    }

    /// A sync that panics is a failed sync: the batch it covered and the
    /// batches queued behind it hear that their outcome is unknown, not
    /// `Stopped` (which reads "not taken" of commits made), and the writer
    /// takes no more changes.
    #[test]
    fn a_sync_that_panics_answers_every_batch_queued_behind_it() {
        let (entered, syncing) = std::sync::mpsc::channel::<()>();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let failed = Arc::new(AtomicBool::new(false));
        let sync = spawn_log_sync(
            move || {
                let _ = entered.send(());
                let _ = gate.recv();
                panic!("a sync that panics");
            },
            Arc::clone(&failed),
            answer_into(Arc::default()),
        )
        .expect("sync thread");
        let (first, first_answer) = batch(Ok(Reply::Done), true);
        sync.batches.send(first).expect("queued");
        syncing.recv().expect("the sync began");
        let behind: Vec<_> = (0..3)
            .map(|_| {
                let (queued, answer) = batch(Ok(Reply::Done), true);
                sync.batches.send(queued).expect("queued");
                answer
            })
            .collect();
        release.send(()).expect("released");
        for answer in std::iter::once(first_answer).chain(behind) {
            assert!(matches!(
                answer.blocking_recv(),
                Ok(Err(Error::CommitOutcomeUnknown))
            ));
        }
        assert!(
            failed.load(Ordering::SeqCst),
            "the writer stops taking changes"
        );
        drop(sync.batches);
        sync.thread
            .join()
            .expect("the sync thread outlives the panic");
    }

    #[test]
    fn a_failed_sync_acknowledges_nothing_from_then_on() {
        let syncs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&syncs);
        let failed = Arc::new(AtomicBool::new(false));
        let announced = Arc::default();
        let sync = spawn_log_sync(
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Err(std::io::Error::other("disk gone"))
            },
            Arc::clone(&failed),
            answer_into(Arc::clone(&announced)),
        )
        .expect("sync thread");
        let (done, done_answer) = batch(Ok(Reply::Done), true);
        sync.batches.send(done).expect("queued");
        assert!(matches!(
            done_answer.blocking_recv(),
            Ok(Err(Error::CommitOutcomeUnknown))
        ));
        assert!(
            failed.load(Ordering::SeqCst),
            "the writer is told to stop taking changes"
        );
        // A command that failed changed nothing, but its error may rest on
        // what the lost log held (a task closed by a lost completion): it
        // is not told either.
        let (refused, refused_answer) = batch(Err(Error::Stopped), true);
        // A later commit is not acknowledged either, and not synced again:
        // a sync after a failed one proves nothing about the pages lost.
        let (later, later_answer) = batch(Ok(Reply::Done), true);
        sync.batches.send(refused).expect("queued");
        sync.batches.send(later).expect("queued");
        assert!(matches!(
            refused_answer.blocking_recv(),
            Ok(Err(Error::CommitOutcomeUnknown))
        ));
        assert!(matches!(
            later_answer.blocking_recv(),
            Ok(Err(Error::CommitOutcomeUnknown))
        ));
        drop(sync.batches);
        sync.thread.join().expect("sync thread ends");
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        // Nothing durable was announced to waiting clients or workers.
        assert!(
            announced
                .lock()
                .expect("announced")
                .iter()
                .all(|(ids, scheduled)| ids.is_empty() && !scheduled)
        );
    }
}
