//! Retention: what ended long enough ago is deleted, so that a database
//! serving a call centre for years does not grow for ever.
//!
//! Off unless [`EngineConfig::retention`](super::EngineConfig::retention)
//! is set (`tramite serve --retention 180d`): an instance's history is a
//! record someone may need, and only its owner knows for how long. Each
//! node purges in small batches through its writer, so a purge never holds
//! back the commands batched with it for long; on PostgreSQL, nodes purging
//! at once skip each other's rows.

use std::time::Duration;

use super::Engine;

/// Instances (and expired messages) per batch. Measured on SQLite (P06
/// requests of 21 history entries, 5 tasks and 2 jobs each, with the
/// commit): 7–20 ms a batch, median 12 ms — about as long as the writer's
/// usual batch, so the commands batched with it wait that much once.
pub const PURGE_BATCH: i64 = 100;

/// How often a node looks for what to purge when the last look found less
/// than a batch.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);

/// The pause between batches while a backlog lasts (a first purge of
/// years of history): the writer serves other commands in between.
const BETWEEN_BATCHES: Duration = Duration::from_millis(50);

/// Purges what ended more than `keep` ago until the engine stops.
pub(crate) async fn run(engine: Engine, keep: Duration) {
    let mut stop = engine.inner.stop.subscribe();
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    loop {
        if *stop.borrow() {
            return;
        }
        let before = engine.now().saturating_sub(keep_ms);
        let started = std::time::Instant::now();
        let pause = match engine.purge(before).await {
            Ok(purged) => {
                let instances = purged.instances.len() as u64;
                if instances > 0 || purged.messages > 0 {
                    metrics::counter!("tramite_purged_total", "what" => "instances")
                        .increment(instances);
                    metrics::counter!("tramite_purged_total", "what" => "messages")
                        .increment(purged.messages);
                    tracing::info!(
                        instances,
                        messages = purged.messages,
                        before,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "purged what ended before the retention period"
                    );
                }
                if instances as i64 >= PURGE_BATCH || purged.messages as i64 >= PURGE_BATCH {
                    BETWEEN_BATCHES
                } else {
                    PURGE_EVERY
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purge failed; trying again later");
                PURGE_EVERY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}
