//! The storage trait: what commands need inside one transaction. Two
//! implementations: sqlx's connection (PostgreSQL, and reads on either
//! backend) and rusqlite's (the SQLite writer, which runs a whole batch on
//! one thread without a thread switch per statement).

use std::future::Future;

use serde_json::Value;

use super::definitions::DefinitionRow;
use super::incidents::IncidentRow;
use super::instances::InstanceRow;
use super::jobs::{ClaimedJob, NewJob};
use super::messages::{MessageRow, NewSubscription, Recorded, Subscription};
use super::tasks::{NewTask, TaskRow};
use super::{Backend, Error, journal};

/// Storage inside a transaction.
pub trait Tx: Send {
    /// Which backend.
    fn backend(&self) -> Backend;

    /// The version of `code` with this content hash.
    fn definition_by_hash(
        &mut self,
        code: &str,
        hash: &str,
    ) -> impl Future<Output = Result<Option<DefinitionRow>, Error>> + Send;
    /// The row id of the latest version of `code`.
    fn latest_definition_id(
        &mut self,
        code: &str,
    ) -> impl Future<Output = Result<Option<i64>, Error>> + Send;
    /// A version by row id.
    fn definition_by_id(
        &mut self,
        id: i64,
    ) -> impl Future<Output = Result<Option<DefinitionRow>, Error>> + Send;
    /// Every version.
    fn all_definitions(&mut self)
    -> impl Future<Output = Result<Vec<DefinitionRow>, Error>> + Send;
    /// Stores the next version of `code`.
    fn insert_definition(
        &mut self,
        new: NewDefinition<'_>,
    ) -> impl Future<Output = Result<DefinitionRow, Error>> + Send;

    /// An instance; `lock` takes its row lock where the backend has them.
    fn instance(
        &mut self,
        id: &str,
        lock: bool,
    ) -> impl Future<Output = Result<Option<InstanceRow>, Error>> + Send;
    /// Takes `id`'s row lock where the backend has them, without reading
    /// the row (whose state may be what is wrong with it).
    fn lock_instance(&mut self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Inserts an instance.
    fn insert_instance(
        &mut self,
        row: &InstanceRow,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Updates an instance if its revision is unchanged; false on a lost race.
    fn update_instance(
        &mut self,
        row: &InstanceRow,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Inserts (`w.new`) or updates an instance, as [`Tx::insert_instance`]
    /// and [`Tx::update_instance`] do, with what the change adds: the
    /// completion of the task that caused it, its journal entries, its new
    /// tasks and its new jobs. Anything but [`Written::Done`] means the
    /// transaction must be rolled back: a backend may have written the rest
    /// already (PostgreSQL writes it all in one statement, one round trip
    /// instead of one per row kind and task).
    fn write_instance(
        &mut self,
        w: InstanceWrite<'_>,
    ) -> impl Future<Output = Result<Written, Error>> + Send {
        one_then_the_other::write_instance(self, w)
    }
    /// A command inserted or updated `row`, which is now what the database
    /// holds (its revision included): a backend may keep it for the
    /// instance's next command. Nothing to keep by default.
    fn keep_instance(&mut self, row: InstanceRow) {
        let _ = row;
    }

    /// Opens a task.
    fn insert_task(&mut self, task: &NewTask<'_>)
    -> impl Future<Output = Result<(), Error>> + Send;
    /// A task, its row locked until the transaction ends (PostgreSQL; the
    /// SQLite writer is alone), so that what a command decides from its
    /// status still holds when it commits.
    fn task(&mut self, id: &str) -> impl Future<Output = Result<Option<TaskRow>, Error>> + Send;
    /// A task and its instance, the instance read for update as
    /// [`Tx::instance`] reads it with `lock`: a completion needs both, the
    /// task first to find its instance (one round trip on PostgreSQL instead
    /// of two). `None` if there is no such task.
    fn task_and_instance(
        &mut self,
        id: &str,
    ) -> impl Future<Output = Result<Option<(TaskRow, InstanceRow)>, Error>> + Send {
        one_then_the_other::task_and_instance(self, id)
    }
    /// Claims an open task; false if it is not open.
    fn claim_task(
        &mut self,
        id: &str,
        user: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Gives a claimed task back; false if `user` does not hold it.
    fn unclaim_task(
        &mut self,
        id: &str,
        user: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Gives an open or claimed task to `user`; false if it is not open.
    fn assign_task(
        &mut self,
        id: &str,
        user: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Completes an open or claimed task; false if it is not.
    fn complete_task(
        &mut self,
        done: TaskCompletion<'_>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Withdraws an open or claimed task.
    fn cancel_task(&mut self, id: &str, now: i64)
    -> impl Future<Output = Result<(), Error>> + Send;

    /// Schedules a job.
    fn insert_job(&mut self, job: &NewJob<'_>) -> impl Future<Output = Result<(), Error>> + Send;
    /// Claims due jobs until `lease_until` plus each job's timeout.
    fn claim_jobs(
        &mut self,
        claim: JobClaim<'_>,
    ) -> impl Future<Output = Result<Vec<ClaimedJob>, Error>> + Send;
    /// Ends a job held by `owner` with `status`; false if the lease was lost.
    fn finish_job(
        &mut self,
        id: &str,
        owner: &str,
        status: &str,
        error: Option<&str>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Puts a job back in the queue; false if its lease was lost.
    fn reschedule_job(
        &mut self,
        retry: JobRetry<'_>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Makes a job in an incident runnable again.
    fn revive_job(
        &mut self,
        id: &str,
        now: i64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Drops an unfinished job.
    /// Whether it had stopped at an incident.
    fn cancel_job(&mut self, id: &str) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Closes the open incidents of job `job`, which its token has left,
    /// as `withdrawn`; their ids and steps.
    fn withdraw_incidents_of_job(
        &mut self,
        job: &str,
        now: i64,
    ) -> impl Future<Output = Result<Vec<(String, String)>, Error>> + Send;
    /// What a job asked its system.
    fn job_request(
        &mut self,
        id: &str,
    ) -> impl Future<Output = Result<Option<super::jobs::JobRequest>, Error>> + Send;
    /// Releases every lease.
    fn release_leases(&mut self, now: i64) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Raises an incident.
    fn insert_incident(
        &mut self,
        row: &IncidentRow,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// An incident.
    fn incident(
        &mut self,
        id: &str,
    ) -> impl Future<Output = Result<Option<IncidentRow>, Error>> + Send;
    /// Closes an open incident; false if it was not open.
    fn close_incident(
        &mut self,
        id: &str,
        by: &str,
        resolution: &str,
        now: i64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Closes every open incident of an instance.
    fn close_incidents_of(
        &mut self,
        instance: &str,
        by: &str,
        now: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Registers a message wait.
    fn subscribe(
        &mut self,
        s: NewSubscription<'_>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Removes a message wait.
    fn unsubscribe(&mut self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// The oldest wait for `name` and `key`.
    fn find_subscription(
        &mut self,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<Subscription>, Error>> + Send;
    /// Records a message, unless its id was seen before.
    fn record_message(
        &mut self,
        m: &MessageRow,
    ) -> impl Future<Output = Result<Recorded, Error>> + Send;
    /// The oldest pending, unexpired message for `name` and `key` that
    /// arrived at `since` or later.
    fn pending_message(
        &mut self,
        name: &str,
        key: &str,
        since: i64,
        now: i64,
    ) -> impl Future<Output = Result<Option<MessageRow>, Error>> + Send;
    /// The instances that took messages of `name` and `key`, latest first
    /// (a few).
    fn recent_takers(
        &mut self,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<Vec<String>, Error>> + Send;
    /// Marks a message delivered.
    fn message_delivered(
        &mut self,
        id: &str,
        instance: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Keeps a message marked delivered for later after all (the wait it
    /// was for had been withdrawn), until `expires_at`.
    fn message_kept(
        &mut self,
        id: &str,
        expires_at: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The instance of `code` whose start carried the caller's `request` id.
    fn instance_by_request(
        &mut self,
        code: &str,
        request: &str,
    ) -> impl Future<Output = Result<Option<String>, Error>> + Send;

    /// Records that web session `id` has ended (see [`super::sessions`]).
    fn end_session(
        &mut self,
        id: &str,
        expires_at: i64,
        now: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Records the caller's id of an instance's start.
    fn set_instance_request(
        &mut self,
        id: &str,
        request: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// How many running instances of one version may still reach some
    /// nodes (a deploy's check of the versions its callee serves).
    fn still_to_reach(
        &mut self,
        q: &super::instances::StillToReach<'_>,
    ) -> impl Future<Output = Result<i64, Error>> + Send;

    /// Serializes, until the transaction ends, every transaction that takes
    /// the same key (PostgreSQL advisory lock; a no-op on SQLite, whose single
    /// writer serializes everything anyway).
    fn lock_key(&mut self, key: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// Appends journal entries.
    fn append_journal(
        &mut self,
        entries: &[journal::NewEntry<'_>],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Deletes, oldest first, up to `p.limit` instances that ended before
    /// `p.before` with everything that hangs off them, and as many messages
    /// that no instance took and that expired before then. An instance
    /// that ended is kept while a procedure it called, or its caller,
    /// still runs: the one may report to it, the other read it.
    fn purge(&mut self, p: Purge) -> impl Future<Output = Result<Purged, Error>> + Send;
}

/// What a backend does statement by statement that PostgreSQL does in one.
mod one_then_the_other {
    use super::{Error, InstanceRow, InstanceWrite, TaskRow, Tx, Written};

    pub(super) async fn write_instance<T: Tx + ?Sized>(
        tx: &mut T,
        w: InstanceWrite<'_>,
    ) -> Result<Written, Error> {
        if let Some(done) = w.completes
            && !tx.complete_task(done).await?
        {
            return Ok(Written::TaskNotOpen);
        }
        if w.new {
            tx.insert_instance(w.row).await?;
        } else if !tx.update_instance(w.row).await? {
            return Ok(Written::Stale);
        }
        tx.append_journal(w.journal).await?;
        for task in w.tasks {
            tx.insert_task(task).await?;
        }
        for job in w.jobs {
            tx.insert_job(job).await?;
        }
        Ok(Written::Done(super::Receipt::default()))
    }

    pub(super) async fn task_and_instance<T: Tx + ?Sized>(
        tx: &mut T,
        id: &str,
    ) -> Result<Option<(TaskRow, InstanceRow)>, Error> {
        let Some(task) = tx.task(id).await? else {
            return Ok(None);
        };
        // A task's instance outlives it (a foreign key).
        let instance = tx.instance(&task.instance_id, true).await?;
        Ok(instance.map(|i| (task, i)))
    }
}

/// An instance's change and what it adds ([`Tx::write_instance`]).
#[derive(Debug, Clone, Copy)]
pub struct InstanceWrite<'a> {
    /// The row as it is to be stored; its revision is the one read (an
    /// update is made only if the stored revision is still that).
    pub row: &'a InstanceRow,
    /// Insert rather than update.
    pub new: bool,
    /// The task whose completion made the change, completed with it: if
    /// the task is no longer open to `completes.user` (claimed by someone
    /// else meanwhile), the write reports [`Written::TaskNotOpen`] and the
    /// transaction must be rolled back (the instance is not updated, but a
    /// backend may have written its journal entries, tasks and jobs).
    pub completes: Option<TaskCompletion<'a>>,
    /// Its journal entries.
    pub journal: &'a [journal::NewEntry<'a>],
    /// Tasks it opens.
    pub tasks: &'a [NewTask<'a>],
    /// Jobs it schedules.
    pub jobs: &'a [NewJob<'a>],
}

/// What became of a [`Tx::write_instance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The instance, its task's completion and what it adds are written.
    Done(Receipt),
    /// The stored instance has moved past the revision read: a lost race.
    Stale,
    /// The task it completes is no longer open to its user.
    TaskNotOpen,
}

/// What a backend learned while writing an instance that its commit needs:
/// on PostgreSQL the statement that writes the instance also reads the
/// transaction's id and sends the notice of the jobs it scheduled, so
/// that the commit needs no statement of its own for either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The transaction's id (PostgreSQL's `txid_current()`), by which the
    /// outcome of a commit whose answer is lost can be asked for.
    pub xid: Option<i64>,
    /// The new jobs' notice to every node ([`super::jobs::CHANNEL`]) is
    /// sent, delivered when the transaction commits.
    pub announced: bool,
}

impl Receipt {
    /// Adds what a later write of the same transaction reported.
    pub fn merge(&mut self, later: Receipt) {
        self.xid = self.xid.or(later.xid);
        self.announced |= later.announced;
    }
}

/// A version to store.
#[derive(Debug, Clone, Copy)]
pub struct NewDefinition<'a> {
    /// Code.
    pub code: &'a str,
    /// Content hash.
    pub hash: &'a str,
    /// File name.
    pub file_name: &'a str,
    /// Source.
    pub source: &'a str,
    /// Now, ms.
    pub now: i64,
}

/// A purge of what retention keeps no longer (see [`Tx::purge`]).
#[derive(Debug, Clone, Copy)]
pub struct Purge {
    /// Instances that ended before this (ms) go, and messages never taken
    /// that expired before it.
    pub before: i64,
    /// At most this many instances (and as many messages) in one go, so
    /// that the transaction stays short beside the commands batched with it.
    pub limit: i64,
}

/// What a purge deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    /// The instances, each with its tasks, jobs, incidents, subscriptions,
    /// messages and history.
    pub instances: Vec<String>,
    /// Messages no instance took, expired.
    pub messages: u64,
}

/// A job put back in the queue after a transient failure.
#[derive(Debug, Clone, Copy)]
pub struct JobRetry<'a> {
    /// Job.
    pub id: &'a str,
    /// The lease it was claimed under: nothing happens if it was lost.
    pub owner: &'a str,
    /// When it is due again, ms.
    pub run_at: i64,
    /// The failure, kept as the job's last error.
    pub error: &'a str,
    /// Whether the failed attempt counts against the step's attempts
    /// (false: the claim's count is given back).
    pub counted: bool,
}

/// A claim of due jobs.
#[derive(Debug, Clone, Copy)]
pub struct JobClaim<'a> {
    /// Lease owner, unique to this claim.
    pub owner: &'a str,
    /// Now, ms.
    pub now: i64,
    /// Lease end before the job's timeout is added, ms.
    pub lease_until: i64,
    /// At most this many.
    pub limit: i64,
    /// Timeout of jobs that set none, ms.
    pub default_timeout_ms: i64,
}

/// A task completion.
#[derive(Debug, Clone, Copy)]
pub struct TaskCompletion<'a> {
    /// Task.
    pub id: &'a str,
    /// Who.
    pub user: &'a str,
    /// Outcome.
    pub outcome: &'a str,
    /// Form data.
    pub data: &'a Value,
    /// Now, ms.
    pub now: i64,
}

/// sqlx: PostgreSQL commands, and reads on either backend.
impl Tx for sqlx::AnyConnection {
    fn backend(&self) -> Backend {
        if self.backend_name() == "PostgreSQL" {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
    async fn definition_by_hash(
        &mut self,
        code: &str,
        hash: &str,
    ) -> Result<Option<DefinitionRow>, Error> {
        super::definitions::by_hash(self, code, hash).await
    }
    async fn latest_definition_id(&mut self, code: &str) -> Result<Option<i64>, Error> {
        super::definitions::latest_id(self, code).await
    }
    async fn definition_by_id(&mut self, id: i64) -> Result<Option<DefinitionRow>, Error> {
        super::definitions::by_id(self, id).await
    }
    async fn all_definitions(&mut self) -> Result<Vec<DefinitionRow>, Error> {
        super::definitions::all(self).await
    }
    async fn insert_definition(&mut self, n: NewDefinition<'_>) -> Result<DefinitionRow, Error> {
        super::definitions::insert(self, n.code, n.hash, n.file_name, n.source, n.now).await
    }
    async fn instance(&mut self, id: &str, lock: bool) -> Result<Option<InstanceRow>, Error> {
        let backend = Tx::backend(self);
        super::instances::get(self, backend, id, lock).await
    }
    async fn lock_instance(&mut self, id: &str) -> Result<(), Error> {
        if Tx::backend(self) == super::Backend::Postgres {
            sqlx::query("SELECT id FROM instances WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *self)
                .await?;
        }
        Ok(())
    }
    async fn insert_instance(&mut self, row: &InstanceRow) -> Result<(), Error> {
        super::instances::insert(self, row).await
    }
    async fn update_instance(&mut self, row: &InstanceRow) -> Result<bool, Error> {
        super::instances::update(self, row).await
    }
    async fn write_instance(&mut self, w: InstanceWrite<'_>) -> Result<Written, Error> {
        // SQLite has no `INSERT` inside `WITH`; a statement's parameters
        // are bounded (65,535 on PostgreSQL).
        let many = w.journal.len() > 100 || w.tasks.len() > 100 || w.jobs.len() > 100;
        if Tx::backend(self) != Backend::Postgres || many {
            return one_then_the_other::write_instance(self, w).await;
        }
        super::instances::write_all(self, w).await
    }
    async fn insert_task(&mut self, task: &NewTask<'_>) -> Result<(), Error> {
        super::tasks::insert(self, task).await
    }
    async fn task(&mut self, id: &str) -> Result<Option<TaskRow>, Error> {
        if Tx::backend(self) == Backend::Postgres {
            return super::tasks::get_for_update(self, id).await;
        }
        super::tasks::get(self, id).await
    }
    async fn task_and_instance(
        &mut self,
        id: &str,
    ) -> Result<Option<(TaskRow, InstanceRow)>, Error> {
        if Tx::backend(self) == Backend::Postgres {
            return super::tasks::with_instance(self, id).await;
        }
        one_then_the_other::task_and_instance(self, id).await
    }
    async fn claim_task(&mut self, id: &str, user: &str) -> Result<bool, Error> {
        super::tasks::claim(self, id, user).await
    }
    async fn unclaim_task(&mut self, id: &str, user: &str) -> Result<bool, Error> {
        super::tasks::unclaim(self, id, user).await
    }
    async fn assign_task(&mut self, id: &str, user: &str) -> Result<bool, Error> {
        super::tasks::assign(self, id, user).await
    }
    async fn complete_task(&mut self, d: TaskCompletion<'_>) -> Result<bool, Error> {
        super::tasks::complete(self, &d).await
    }
    async fn cancel_task(&mut self, id: &str, now: i64) -> Result<(), Error> {
        super::tasks::cancel(self, id, now).await
    }
    async fn insert_job(&mut self, job: &NewJob<'_>) -> Result<(), Error> {
        super::jobs::insert(self, job).await
    }
    async fn claim_jobs(&mut self, c: JobClaim<'_>) -> Result<Vec<ClaimedJob>, Error> {
        let backend = Tx::backend(self);
        super::jobs::claim(
            self,
            backend,
            c.owner,
            c.now,
            c.lease_until,
            c.limit,
            c.default_timeout_ms,
        )
        .await
    }
    async fn finish_job(
        &mut self,
        id: &str,
        owner: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<bool, Error> {
        super::jobs::finish(self, id, owner, status, error).await
    }
    async fn reschedule_job(&mut self, retry: JobRetry<'_>) -> Result<bool, Error> {
        super::jobs::reschedule(self, retry).await
    }
    async fn revive_job(&mut self, id: &str, now: i64) -> Result<bool, Error> {
        super::jobs::revive(self, id, now).await
    }
    async fn cancel_job(&mut self, id: &str) -> Result<bool, Error> {
        super::jobs::cancel(self, id).await
    }
    async fn withdraw_incidents_of_job(
        &mut self,
        job: &str,
        now: i64,
    ) -> Result<Vec<(String, String)>, Error> {
        super::incidents::withdraw_of_job(self, job, now).await
    }
    async fn job_request(&mut self, id: &str) -> Result<Option<super::jobs::JobRequest>, Error> {
        super::jobs::request(self, id).await
    }
    async fn release_leases(&mut self, now: i64) -> Result<u64, Error> {
        super::jobs::release_all(self, now).await
    }
    async fn insert_incident(&mut self, row: &IncidentRow) -> Result<(), Error> {
        super::incidents::insert(self, row).await
    }
    async fn incident(&mut self, id: &str) -> Result<Option<IncidentRow>, Error> {
        super::incidents::get(self, id).await
    }
    async fn close_incident(
        &mut self,
        id: &str,
        by: &str,
        resolution: &str,
        now: i64,
    ) -> Result<bool, Error> {
        super::incidents::close(self, id, by, resolution, now).await
    }
    async fn close_incidents_of(
        &mut self,
        instance: &str,
        by: &str,
        now: i64,
    ) -> Result<(), Error> {
        super::incidents::close_all(self, instance, by, now).await
    }
    async fn subscribe(&mut self, s: NewSubscription<'_>) -> Result<(), Error> {
        super::messages::subscribe(self, s).await
    }
    async fn unsubscribe(&mut self, id: &str) -> Result<(), Error> {
        super::messages::unsubscribe(self, id).await
    }
    async fn find_subscription(
        &mut self,
        name: &str,
        key: &str,
    ) -> Result<Option<Subscription>, Error> {
        super::messages::find(self, name, key).await
    }
    async fn record_message(&mut self, m: &MessageRow) -> Result<Recorded, Error> {
        super::messages::record(self, m).await
    }
    async fn pending_message(
        &mut self,
        name: &str,
        key: &str,
        since: i64,
        now: i64,
    ) -> Result<Option<MessageRow>, Error> {
        super::messages::pending(self, name, key, since, now).await
    }
    async fn recent_takers(&mut self, name: &str, key: &str) -> Result<Vec<String>, Error> {
        super::messages::recent_takers(self, name, key).await
    }
    async fn still_to_reach(
        &mut self,
        q: &super::instances::StillToReach<'_>,
    ) -> Result<i64, Error> {
        let backend = Tx::backend(self);
        super::instances::still_to_reach(self, backend, q).await
    }
    async fn message_delivered(&mut self, id: &str, instance: &str) -> Result<(), Error> {
        super::messages::delivered(self, id, instance).await
    }
    async fn message_kept(&mut self, id: &str, expires_at: i64) -> Result<(), Error> {
        super::messages::kept(self, id, expires_at).await
    }
    async fn instance_by_request(
        &mut self,
        code: &str,
        request: &str,
    ) -> Result<Option<String>, Error> {
        super::instances::by_request(self, code, request).await
    }
    async fn set_instance_request(&mut self, id: &str, request: &str) -> Result<(), Error> {
        super::instances::set_request(self, id, request).await
    }
    async fn end_session(&mut self, id: &str, expires_at: i64, now: i64) -> Result<(), Error> {
        super::sessions::end(self, id, expires_at, now).await
    }
    async fn purge(&mut self, p: Purge) -> Result<Purged, Error> {
        super::instances::purge(self, p).await
    }
    async fn lock_key(&mut self, key: &str) -> Result<(), Error> {
        if Tx::backend(self) == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .fetch_one(&mut *self)
                .await?;
        }
        Ok(())
    }
    async fn append_journal(&mut self, entries: &[journal::NewEntry<'_>]) -> Result<(), Error> {
        journal::append(self, entries).await
    }
}
