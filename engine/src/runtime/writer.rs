//! The write path: one task owns a database connection and executes
//! commands in batches. Every command of a batch runs in its own savepoint
//! (so one failing command changes nothing and does not disturb the others)
//! and the batch commits once: with SQLite's `synchronous=FULL`, one fsync
//! acknowledges many commands (group commit). A command's reply is sent only
//! after its batch committed, so an acknowledged command is on disk.

use std::sync::Arc;

use sqlx::Acquire;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::Error;
use crate::catalog::Catalog;
use crate::runtime::clock::Clock;
use crate::runtime::commands::{self, Command, Ctx, ProcessCache, Reply};
use crate::store::Store;

/// A command and where its answer goes.
pub(crate) struct Envelope {
    pub(crate) command: Command,
    pub(crate) reply: oneshot::Sender<Result<Reply, Error>>,
}

/// What the writer needs.
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
}

/// Write-path counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Commands executed.
    pub commands: std::sync::atomic::AtomicU64,
    /// Transactions committed.
    pub commits: std::sync::atomic::AtomicU64,
}

impl Writer {
    /// Runs until every sender is gone, then returns.
    pub(crate) async fn run(self, mut inbox: mpsc::Receiver<Envelope>) {
        let mut batch: Vec<Envelope> = Vec::with_capacity(self.max_batch);
        while inbox.recv_many(&mut batch, self.max_batch).await > 0 {
            let envelopes = std::mem::take(&mut batch);
            self.execute(envelopes).await;
        }
    }

    async fn execute(&self, envelopes: Vec<Envelope>) {
        let results = match self.batch(&envelopes).await {
            Ok(results) => results,
            Err(e) => {
                // The commit itself failed (or the connection did): run each
                // command alone so that one bad apple cannot sink the rest.
                tracing::warn!(error = %e, size = envelopes.len(), "batch failed; running commands one by one");
                let mut results = Vec::with_capacity(envelopes.len());
                for env in &envelopes {
                    results.push(self.single(&env.command).await);
                }
                results
            }
        };
        self.stats
            .commands
            .fetch_add(envelopes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let wake = results.iter().any(|r| r.is_ok());
        for (env, result) in envelopes.into_iter().zip(results) {
            // The caller may have gone away; the command is committed all the same.
            let _ = env.reply.send(result);
        }
        if wake {
            self.jobs_changed.notify_waiters();
        }
    }

    async fn batch(&self, envelopes: &[Envelope]) -> Result<Vec<Result<Reply, Error>>, Error> {
        let mut conn = self.store.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        let ctx = Ctx {
            backend: self.store.backend(),
            processes: &self.processes,
            catalog: &self.catalog,
            now: self.clock.now(),
        };
        let mut results = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            let mut savepoint = tx.begin().await?;
            let result = commands::exec(&mut savepoint, &ctx, env.command.clone()).await;
            match &result {
                Ok(_) => savepoint.commit().await?,
                Err(e) if commands::is_retryable(e) => {
                    savepoint.rollback().await?;
                    return Err(Error::Concurrent {
                        instance: String::new(),
                    });
                }
                Err(_) => savepoint.rollback().await?,
            }
            results.push(result);
        }
        tx.commit().await?;
        self.stats
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(results)
    }

    async fn single(&self, command: &Command) -> Result<Reply, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut conn = self.store.pool().acquire().await?;
                let mut tx = conn.begin().await?;
                let ctx = Ctx {
                    backend: self.store.backend(),
                    processes: &self.processes,
                    catalog: &self.catalog,
                    now: self.clock.now(),
                };
                let reply = commands::exec(&mut tx, &ctx, command.clone()).await?;
                tx.commit().await?;
                self.stats
                    .commits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok::<_, Error>(reply)
            }
            .await;
            match result {
                Err(e) if commands::is_retryable(&e) && attempt < 5 => continue,
                other => return other,
            }
        }
    }
}
