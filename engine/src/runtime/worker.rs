//! Job workers: claim due jobs under a lease, run them outside any
//! transaction (connector calls can take seconds), and report each result
//! as a command. At-least-once: a worker that dies leaves its lease to
//! expire and another takes the job over, with the same idempotency key.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Map;
use tokio::sync::Semaphore;

use crate::runtime::Engine;
use crate::runtime::commands::{Command, Reply};
use crate::runtime::connector::{ConnectorCall, ConnectorError};
use crate::store::jobs::ClaimedJob;

/// Runs one claimed job to its result command. `asked`: when the claim
/// was sent, which is no later than the lease's start.
pub(crate) async fn run_job(engine: &Engine, mut job: ClaimedJob, asked: tokio::time::Instant) {
    if let Some(why) = job.stop.take() {
        let command = Command::StopJob {
            owner: job.lease_owner.clone(),
            job: Box::new(job),
            why,
        };
        if let Err(e) = engine.submit(command).await {
            // Not recorded: its lease will expire, and the next claim
            // stops it again.
            tracing::warn!(error = %e, "a job's incident not recorded; it will be raised again");
        }
        return;
    }
    let started = std::time::Instant::now();
    let result = if job.kind == "timer" {
        Ok(Map::new())
    } else {
        call(engine, &job, asked).await
    };
    if job.kind != "timer" {
        let connector = job.connector.clone().unwrap_or_default();
        let operation = job.operation.clone().unwrap_or_default();
        metrics::histogram!("tramite_job_duration_seconds", "connector" => connector.clone(), "operation" => operation.clone())
            .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ConnectorError::Business { .. }) => "business_error",
            Err(ConnectorError::Transient { .. }) => "transient_failure",
            Err(ConnectorError::Refused { .. }) => "refused",
        };
        metrics::counter!("tramite_jobs_total", "connector" => connector, "operation" => operation, "outcome" => outcome)
            .increment(1);
    }
    if let Err(e) = &result {
        tracing::debug!(job = %job.id, attempt = job.attempts, error = %e, "job failed");
    }
    let command = Command::JobDone {
        owner: job.lease_owner.clone(),
        job: Box::new(job),
        result,
    };
    if let Err(e) = engine.submit(command).await {
        // Not acknowledged: the lease will expire and the job run again.
        tracing::warn!(error = %e, "job result not recorded; the job will run again");
    }
}

async fn call(
    engine: &Engine,
    job: &ClaimedJob,
    asked: tokio::time::Instant,
) -> Result<Map<String, serde_json::Value>, ConnectorError> {
    let name = job.connector.as_deref().unwrap_or_default();
    let Some(connector) = engine.inner.connectors.get(name) else {
        return Err(ConnectorError::transient(format!(
            "no connector `{name}` is configured"
        )));
    };
    let timeout = job
        .timeout_ms
        .map_or(engine.inner.config.default_timeout, |ms| {
            Duration::from_millis(ms as u64)
        });
    let call = ConnectorCall {
        operation: job.operation.as_deref().unwrap_or_default(),
        input: &job.input,
        idempotency_key: &job.idempotency_key,
        attempt: job.attempts as u32,
    };
    // The lease runs `lease + timeout` from the claim's transaction, which
    // may have waited in a batch: a call that outlived it could overlap the
    // one another node starts once the lease expires, so it ends first.
    let budget = asked
        .checked_add(engine.inner.config.lease)
        .and_then(|at| at.checked_add(timeout))
        .map_or(timeout, |lease_ends| {
            lease_ends
                .saturating_duration_since(tokio::time::Instant::now())
                .min(timeout)
        });
    match tokio::time::timeout(budget, connector.call(call)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectorError::transient(format!(
            "no answer within {} ms",
            budget.as_millis()
        ))),
    }
}

/// Claims and runs jobs until the engine stops.
pub(crate) async fn pool(engine: Engine) {
    let owner = format!("{}:{}", engine.inner.config.node_name, uuid::Uuid::now_v7());
    let slots = Arc::new(Semaphore::new(engine.inner.config.workers.max(1)));
    let mut stop = engine.inner.stop.subscribe();
    // Owned here, so that aborting the pool (`Engine::halt`, a simulated
    // crash) aborts the calls in flight too: none reports afterwards.
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        if *stop.borrow() {
            break;
        }
        let free = slots.available_permits() as i64;
        if free == 0 {
            // Every slot is busy: go on when one frees, not at the next
            // poll. Jobs may already be waiting, and a finished job wakes
            // nobody unless it scheduled another, so a full pool started
            // at most `workers` calls per poll interval.
            tokio::select! {
                _ = running.join_next() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let asked = tokio::time::Instant::now();
        let claimed = match engine
            .submit(Command::ClaimJobs {
                owner: owner.clone(),
                lease_ms: engine.inner.config.lease.as_millis() as i64,
                limit: free,
                default_timeout_ms: engine.inner.config.default_timeout.as_millis() as i64,
            })
            .await
        {
            Ok(Reply::Jobs(jobs)) => jobs,
            Ok(_) => Vec::new(),
            Err(crate::Error::Stopped) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim jobs");
                Vec::new()
            }
        };
        let idle = claimed.is_empty();
        for job in claimed {
            let permit = Arc::clone(&slots)
                .acquire_owned()
                .await
                .expect("semaphore open");
            let engine = engine.clone();
            running.spawn(async move {
                run_job(&engine, job, asked).await;
                drop(permit);
            });
        }
        if idle {
            // Woken by new jobs, or after the poll interval (retries and timers come due by time).
            tokio::select! {
                _ = engine.inner.jobs_changed.notified() => {}
                _ = tokio::time::sleep(engine.inner.config.poll) => {}
                _ = stop.changed() => {}
            }
        }
    }
    // Let running jobs report before returning.
    while running.join_next().await.is_some() {}
}
