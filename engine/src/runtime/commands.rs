//! Commands: every change to the engine's state is one command, executed
//! inside one transaction by the writer. A command reads what it needs,
//! runs the token machine, and writes the instance, its tasks, jobs,
//! subscriptions, incidents and journal — all or nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value, json};

use crate::Error;
use crate::definition::{Channel, NodeKind};
use crate::runtime::connector::ConnectorError;
use crate::runtime::machine::{Effect, InstanceMeta, JobKind, Machine, default_retry, new_id};
use crate::runtime::process::Process;
use crate::runtime::state::{InstanceState, Sending, Wait};
use crate::store::instances::InstanceRow;
use crate::store::jobs::ClaimedJob;
use crate::store::messages::{MessageRow, Recorded};
use crate::store::{
    self, Backend, InstanceWrite, NewDefinition, Receipt, TaskCompletion, Tx, Written, definitions,
    incidents, journal, messages, tasks,
};

/// A request to change state.
#[derive(Debug, Clone)]
pub enum Command {
    /// Store validated definitions as new versions (or find them unchanged).
    Deploy {
        /// `(file name, source)` of each definition, validated together.
        sources: Vec<(String, String)>,
        /// Check only: validate against what is deployed and say which
        /// versions a deploy would make, storing nothing.
        dry_run: bool,
        /// A text that is an earlier version's becomes a new version (a
        /// process owner going back to it), rather than answering that
        /// version: not for start-up, where a node's stale files would
        /// otherwise roll the procedure back.
        again: bool,
    },
    /// Start an instance.
    Start(StartInstance),
    /// Claim a task.
    Claim {
        /// Task.
        task: String,
        /// User.
        user: String,
    },
    /// Give a claimed task back.
    Unclaim {
        /// Task.
        task: String,
        /// User.
        user: String,
    },
    /// Give a task to someone (a team lead's decision).
    Assign {
        /// Task.
        task: String,
        /// To whom.
        user: String,
        /// Who decided.
        by: String,
    },
    /// Complete a task.
    Complete(CompleteTask),
    /// Claim due jobs for a worker.
    ClaimJobs {
        /// The worker pool's name; each claim gets its own lease owner.
        owner: String,
        /// How long the lease lasts beyond the job's timeout, ms.
        lease_ms: i64,
        /// At most this many.
        limit: i64,
        /// Timeout of jobs that set none, ms.
        default_timeout_ms: i64,
    },
    /// A worker's result for a job.
    JobDone {
        /// The job as claimed.
        job: Box<ClaimedJob>,
        /// The lease owner.
        owner: String,
        /// What the connector answered (timers: `Ok` with nothing).
        result: Result<Map<String, Value>, ConnectorError>,
    },
    /// Stop a claimed job at an incident instead of running it (see
    /// [`ClaimedJob::stop`]).
    StopJob {
        /// The job as claimed.
        job: Box<ClaimedJob>,
        /// The lease owner.
        owner: String,
        /// The incident's message.
        why: String,
    },
    /// Publish a message.
    Publish(PublishMessage),
    /// Cancel a running instance.
    Cancel {
        /// Instance.
        instance: String,
        /// Why.
        reason: String,
        /// Who.
        actor: String,
    },
    /// Run an incident's job (or node) again.
    RetryIncident {
        /// Incident.
        incident: String,
        /// Who.
        actor: String,
    },
    /// Close an incident by hand, writing `variables`, then going on as if
    /// the failing step had succeeded or running the step again.
    ResolveIncident {
        /// Incident.
        incident: String,
        /// Who.
        actor: String,
        /// Variables to write.
        variables: Map<String, Value>,
        /// What the token does then; `None`: what the incident calls for
        /// (see [`Then`]).
        then: Option<Then>,
    },
    /// Release the leases of jobs whose worker is gone (single-node start-up).
    ReleaseLeases,
    /// Record that a person's web session has ended before its expiry
    /// (they signed out), so that no node accepts it again.
    EndSession {
        /// The session's id.
        id: String,
        /// When it would have expired, ms.
        expires_at: i64,
    },
    /// Delete what retention keeps no longer: one batch of instances that
    /// ended before `before` (ms), with their tasks, jobs, incidents,
    /// messages and history, and of messages no instance took that expired
    /// before then (see [`crate::store::Tx::purge`]).
    Purge {
        /// Ended (or expired) before this, ms.
        before: i64,
        /// At most this many instances, and as many messages.
        limit: i64,
    },
}

/// How many times a timer is claimed without its firing being recorded
/// before it becomes an incident.
pub const TIMER_FIRINGS: i64 = 10;

impl Command {
    /// The command's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Deploy { .. } => "deploy",
            Command::Start(_) => "start",
            Command::Claim { .. } => "claim",
            Command::Unclaim { .. } => "unclaim",
            Command::Assign { .. } => "assign",
            Command::Complete(_) => "complete",
            Command::ClaimJobs { .. } => "claim_jobs",
            Command::JobDone { .. } => "job_done",
            Command::StopJob { .. } => "stop_job",
            Command::Publish(_) => "publish",
            Command::Cancel { .. } => "cancel",
            Command::RetryIncident { .. } => "retry_incident",
            Command::ResolveIncident { .. } => "resolve_incident",
            Command::ReleaseLeases => "release_leases",
            Command::EndSession { .. } => "end_session",
            Command::Purge { .. } => "purge",
        }
    }
}

/// What starting an instance takes.
#[derive(Debug, Clone)]
pub struct StartInstance {
    /// Procedure code.
    pub code: String,
    /// Business key (the instance id when empty).
    pub business_key: String,
    /// Channel (`ivr`, `web`, …).
    pub channel: String,
    /// Start data, checked against the start's fields.
    pub data: Map<String, Value>,
    /// Who starts it.
    pub actor: String,
    /// The caller's own id for this start (an IVR call id, a lead id): a
    /// second start of the same procedure with the same id starts nothing
    /// and answers the first instance.
    pub request_id: Option<String>,
}

/// What completing a task takes.
#[derive(Debug, Clone)]
pub struct CompleteTask {
    /// Task.
    pub task: String,
    /// Who completes it.
    pub user: String,
    /// Which button.
    pub outcome: String,
    /// The form's data.
    pub data: Map<String, Value>,
    /// The caller's roles, when the task's role must be one of them. Checked
    /// inside the completion's own transaction, so an API needs no read of
    /// the task before it (and cannot act on a stale one).
    pub roles: Option<Vec<String>>,
}

/// What a completion finished: for the caller's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedTask {
    /// The procedure's code.
    pub code: String,
    /// The task's node.
    pub node_id: String,
    /// When the task was created (ms).
    pub created_at: i64,
    /// The same completion had already been made (the same user, outcome
    /// and data): nothing was written this time. A client that retries
    /// after losing the first answer learns it succeeded, and metrics count
    /// it once.
    pub repeated: bool,
}

/// A message for waiting instances.
#[derive(Debug, Clone)]
pub struct PublishMessage {
    /// Message name.
    pub name: String,
    /// Correlation key.
    pub key: String,
    /// Payload (readable as `message`).
    pub payload: Value,
    /// The publisher's id; the same id twice is delivered once.
    pub id: String,
    /// How long to keep it if no instance waits yet, ms.
    pub ttl_ms: i64,
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Nothing to say.
    Done,
    /// Deployed versions, one per source: `(code, version, new)`.
    Deployed(Vec<Deployed>),
    /// The instance started (or found by its request id).
    Started {
        /// The instance.
        id: String,
        /// False when the start's request id had started it before.
        new: bool,
    },
    /// Jobs claimed.
    Jobs(Vec<ClaimedJob>),
    /// Where a message went.
    Published(Delivery),
    /// A task completed.
    Completed(CompletedTask),
    /// What a purge deleted.
    Purged(store::Purged),
}

/// One deployed definition.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Deployed {
    /// Code.
    pub code: String,
    /// Version.
    pub version: i64,
    /// False when the text is the latest version's (or, at start-up, an
    /// earlier version's, which stays where it is).
    pub new: bool,
    /// What will not stop the definition from running but may hurt it: a
    /// read of a variable some path leaves unwritten (`file:line:column:
    /// warning[maybe-unwritten]: …`), a call that leads back to its caller
    /// (`warning[call-cycle]`), a service task's `timeout` shorter than its
    /// connector's tries.
    pub warnings: Vec<String>,
}

/// Where a published message went.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Delivery {
    /// To a waiting instance.
    Delivered {
        /// The instance.
        instance: String,
    },
    /// Kept until an instance waits for it (or it expires).
    Kept,
    /// Its id was seen before: nothing done.
    Duplicate,
}

impl PartialEq for ClaimedJob {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.attempts == other.attempts
    }
}

/// Deployed processes, by version row id: immutable, and no id is ever
/// given to two versions (not even after a rollback: see the SQLite
/// writer's `insert_definition`), so cached forever.
#[derive(Debug, Default)]
pub struct ProcessCache {
    by_id: RwLock<HashMap<i64, Arc<Process>>>,
}

impl ProcessCache {
    /// The process of version `id` if it is compiled already.
    pub fn cached(&self, id: i64) -> Option<Arc<Process>> {
        self.by_id.read().expect("cache lock").get(&id).cloned()
    }

    /// The process of version `id`, loading and compiling it once.
    pub async fn get(&self, conn: &mut impl Tx, id: i64) -> Result<Arc<Process>, Error> {
        if let Some(p) = self.cached(id) {
            return Ok(p);
        }
        let row = conn
            .definition_by_id(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "version",
                id: id.to_string(),
            })?;
        let process = Arc::new(compile_stored(&row)?);
        self.by_id
            .write()
            .expect("cache lock")
            .insert(id, Arc::clone(&process));
        Ok(process)
    }
}

/// Reads a stored version (validated when it was deployed).
fn compile_stored(row: &definitions::DefinitionRow) -> Result<Process, Error> {
    let parsed = crate::loader::parse(&row.source);
    if !parsed.is_complete() {
        return Err(Error::Invalid(vec![crate::diagnostic::Diagnostics {
            file: row.file_name.clone(),
            items: parsed.diagnostics,
        }]));
    }
    Ok(Process::new(row.id, row.version, parsed.definition))
}

/// What every command can use.
pub struct Ctx<'a> {
    /// Which database.
    pub backend: Backend,
    /// Deployed processes.
    pub processes: &'a ProcessCache,
    /// Connectors' operations, to validate deployments.
    pub catalog: &'a crate::catalog::Catalog,
    /// Now, ms.
    pub now: i64,
    /// Instances changed by the command, announced after the commit.
    pub touched: std::sync::Mutex<Vec<String>>,
    /// Whether the command scheduled a job (workers are woken only then).
    pub scheduled: std::sync::atomic::AtomicBool,
    /// What the command's instance writes told the commit (on PostgreSQL
    /// the transaction's id, and whether their jobs' notice is sent).
    pub receipt: std::sync::Mutex<Receipt>,
}

/// How many instances one command may start through calls. Procedures
/// that call each other in a ring would otherwise start instances without
/// end inside one transaction, and stop the writer; past the limit the
/// call that would start one more gets an incident.
pub const MAX_STARTS_PER_COMMAND: usize = 100;

/// Work a command causes on other instances, done in the same transaction.
enum Followup {
    StartChild {
        parent: String,
        business_key: String,
        token: u32,
        id: String,
        code: String,
        input: Map<String, Value>,
        /// Whether the parent waits for the child's end (else it moves on
        /// once the child has started).
        wait: bool,
    },
    ChildEnded {
        parent: String,
        token: u32,
        child: String,
        variables: Map<String, Value>,
    },
    Deliver {
        instance: String,
        subscription: String,
        message: MessageRow,
    },
    Cancel {
        instance: String,
        reason: String,
    },
    ParentIncident {
        parent: String,
        token: u32,
        /// Only if the parent's token still waits for this child.
        child: String,
        message: String,
        /// The child ran and was cancelled (not: it could not start).
        cancelled: bool,
    },
}

/// Executes one command on `conn` (inside the writer's transaction).
pub async fn exec(conn: &mut impl Tx, ctx: &Ctx<'_>, command: Command) -> Result<Reply, Error> {
    let mut followups = VecDeque::new();
    let reply = match command {
        Command::Deploy {
            sources,
            dry_run,
            again,
        } => deploy(conn, ctx, &sources, DeployMode { dry_run, again }).await?,
        Command::Start(start) => {
            if let Some(request) = &start.request_id {
                conn.lock_key(&format!("start:{}:{request}", start.code))
                    .await?;
                if let Some(id) = conn.instance_by_request(&start.code, request).await? {
                    // A repeat is answered only to its own channel: another
                    // channel's token would learn that request's instance.
                    let same = conn
                        .instance(&id, false)
                        .await?
                        .is_some_and(|row| row.channel == start.channel);
                    if !same {
                        return Err(Error::RequestIdTaken {
                            request: request.clone(),
                        });
                    }
                    return Ok(Reply::Started { id, new: false });
                }
            }
            let id = new_id();
            start_instance(conn, ctx, &start, &id, None, &mut followups).await?;
            if let Some(request) = &start.request_id {
                conn.set_instance_request(&id, request).await?;
            }
            Reply::Started { id, new: true }
        }
        Command::Claim { task, user } => {
            claim(conn, ctx, &task, &user).await?;
            Reply::Done
        }
        Command::Unclaim { task, user } => {
            unclaim(conn, ctx, &task, &user, &mut followups).await?;
            Reply::Done
        }
        Command::Assign { task, user, by } => {
            let row = open_task(conn, &task).await?;
            if !conn.assign_task(&task, &user).await? {
                return Err(Error::TaskNotOpen {
                    task,
                    status: "taken".to_owned(),
                });
            }
            journal_one(
                conn,
                ctx,
                &row.instance_id,
                &by,
                "task_assigned",
                &row.node_id,
                json!({"task": task, "to": user}),
            )
            .await?;
            Reply::Done
        }
        Command::Complete(c) => Reply::Completed(complete(conn, ctx, &c, &mut followups).await?),
        Command::ClaimJobs {
            owner,
            lease_ms,
            limit,
            default_timeout_ms,
        } => {
            // A lease owner per claim: a job claimed again (its lease expired)
            // by the same pool must not accept the earlier run's result.
            let owner = format!("{owner}/{}", new_id());
            let claimed = conn
                .claim_jobs(store::JobClaim {
                    owner: &owner,
                    now: ctx.now,
                    lease_until: ctx.now + lease_ms,
                    limit,
                    default_timeout_ms,
                })
                .await?;
            // A job that is not to run is handed back marked, and stopped at
            // its incident by a command of its own (`StopJob`): raised here,
            // with the job held, the incident's rows would wait on the
            // instance a cancel holds while the cancel waits on the job.
            let run = claimed
                .into_iter()
                .map(|mut job| {
                    job.stop = why_not_run(&job);
                    job
                })
                .collect();
            Reply::Jobs(run)
        }
        Command::JobDone { job, owner, result } => {
            job_done(conn, ctx, &job, &owner, result, &mut followups).await?;
            Reply::Done
        }
        Command::StopJob { job, owner, why } => {
            // The instance first, as a cancel and a job's result take them;
            // not read: its row may be why the job stops (a timer's).
            conn.lock_instance(&job.instance_id).await?;
            raise_job_incident(conn, ctx, &job, &owner, &why).await?;
            Reply::Done
        }
        Command::Publish(m) => Reply::Published(publish(conn, ctx, &m, &mut followups).await?),
        Command::Cancel {
            instance,
            reason,
            actor,
        } => {
            cancel(conn, ctx, &instance, &reason, &actor, true, &mut followups).await?;
            Reply::Done
        }
        Command::RetryIncident { incident, actor } => {
            settle_incident(conn, ctx, &incident, &actor, None, &mut followups).await?;
            Reply::Done
        }
        Command::ResolveIncident {
            incident,
            actor,
            variables,
            then,
        } => {
            settle_incident(
                conn,
                ctx,
                &incident,
                &actor,
                Some((variables, then)),
                &mut followups,
            )
            .await?;
            Reply::Done
        }
        Command::ReleaseLeases => {
            conn.release_leases(ctx.now).await?;
            ctx.scheduled
                .store(true, std::sync::atomic::Ordering::Relaxed);
            Reply::Done
        }
        Command::EndSession { id, expires_at } => {
            conn.end_session(&id, expires_at, ctx.now).await?;
            Reply::Done
        }
        Command::Purge { before, limit } => {
            Reply::Purged(conn.purge(store::Purge { before, limit }).await?)
        }
    };
    run_followups(conn, ctx, &mut followups).await?;
    Ok(reply)
}

async fn run_followups(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    queue: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    let mut started = 0;
    while let Some(f) = queue.pop_front() {
        match f {
            Followup::StartChild {
                parent,
                business_key,
                token,
                id,
                code,
                input,
                wait,
            } => {
                let start = StartInstance {
                    code: code.clone(),
                    business_key,
                    channel: "procedure".to_owned(),
                    data: input,
                    actor: "engine".to_owned(),
                    request_id: None,
                };
                // A child that cannot start stops the parent's call, not the command.
                started += 1;
                let result = if started > MAX_STARTS_PER_COMMAND {
                    Err(Error::TooManyStarts {
                        limit: MAX_STARTS_PER_COMMAND,
                    })
                } else {
                    let mut nested = VecDeque::new();
                    start_instance(conn, ctx, &start, &id, Some((&parent, token)), &mut nested)
                        .await
                        .map(|()| nested)
                };
                match result {
                    Ok(nested) => {
                        if !wait {
                            move_past_call(conn, ctx, &parent, token, &id, queue).await?;
                        }
                        queue.extend(nested);
                    }
                    Err(e @ (Error::Store(_) | Error::Concurrent { .. })) => return Err(e),
                    Err(e) => queue.push_back(Followup::ParentIncident {
                        parent,
                        token,
                        child: id,
                        message: format!("cannot start `{code}`: {e}"),
                        cancelled: false,
                    }),
                }
            }
            Followup::ChildEnded {
                parent,
                token,
                child,
                variables,
            } => {
                let row = load(conn, &parent).await?;
                if row.status != "running" {
                    continue;
                }
                let process = ctx.processes.get(conn, row.definition_id).await?;
                if !waits_for_child(&row, token, &child) {
                    continue;
                }
                let node_id = row.state.token(token).expect("checked").node.clone();
                let NodeKind::Call(call) = &process.definition.node(&node_id).expect("node").kind
                else {
                    continue;
                };
                if !call.wait {
                    continue; // it moves on once the child has started
                }
                let output = Value::Object(variables);
                let (row, effects) = run_machine(row, &process, ctx.now, |m| {
                    match m.assign(&call.output, Some(("output", &output))) {
                        Ok(written) => {
                            m.note(
                                "child_ended",
                                Some(&node_id),
                                json!({"child": child, "written": written}),
                            );
                            m.go(token, &call.next)?;
                        }
                        Err(e) => m.raise(token, &node_id, e.to_string(), true),
                    }
                    Ok(())
                })?;
                save(conn, ctx, Change::of(row, effects, "engine"), queue).await?;
            }
            Followup::Deliver {
                instance,
                subscription,
                message,
            } => {
                let expires_at = message.expires_at.unwrap_or(ctx.now);
                hand_over(
                    conn,
                    ctx,
                    &message,
                    (instance, subscription),
                    expires_at,
                    queue,
                )
                .await?;
            }
            Followup::Cancel { instance, reason } => {
                cancel(conn, ctx, &instance, &reason, "engine", false, queue).await?;
            }
            Followup::ParentIncident {
                parent,
                token,
                child,
                message,
                cancelled,
            } => {
                let row = load(conn, &parent).await?;
                if row.status != "running" {
                    continue;
                }
                if !waits_for_child(&row, token, &child) {
                    continue;
                }
                let process = ctx.processes.get(conn, row.definition_id).await?;
                let Some(node_id) = row.state.token(token).map(|t| t.node.clone()) else {
                    continue;
                };
                let (row, effects) = run_machine(row, &process, ctx.now, |m| {
                    // The history said `child_started` when the call asked
                    // for the child; it says too that no child came of it.
                    if !cancelled {
                        m.note(
                            "child_start_failed",
                            Some(&node_id),
                            json!({"child": child}),
                        );
                    }
                    m.raise(token, &node_id, message, false);
                    if cancelled
                        && let Some(t) = m.state.token_mut(token)
                        && let Wait::Incident {
                            cancelled_child, ..
                        } = &mut t.wait
                    {
                        *cancelled_child = Some(child);
                    }
                    Ok(())
                })?;
                save(conn, ctx, Change::of(row, effects, "engine"), queue).await?;
            }
        }
    }
    Ok(())
}

/// Whether `row`'s token `token` waits at a call for `child`: not if it
/// has moved on since the child's follow-up was queued.
fn waits_for_child(row: &InstanceRow, token: u32, child: &str) -> bool {
    matches!(row.state.token(token).map(|t| &t.wait), Some(Wait::Call { child: c }) if c == child)
}

/// Moves the token of a call that does not wait for its child past the
/// call, now that the child has started (in the same transaction).
async fn move_past_call(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    parent: &str,
    token: u32,
    child: &str,
    queue: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    let row = load(conn, parent).await?;
    if row.status != "running" || !waits_for_child(&row, token, child) {
        return Ok(());
    }
    let process = ctx.processes.get(conn, row.definition_id).await?;
    let node_id = row.state.token(token).expect("checked").node.clone();
    let NodeKind::Call(call) = &process.definition.node(&node_id).expect("node").kind else {
        return Ok(());
    };
    let (row, effects) = run_machine(row, &process, ctx.now, |m| Ok(m.go(token, &call.next)?))?;
    save(conn, ctx, Change::of(row, effects, "engine"), queue).await
}

/// Runs `f` on a token machine over `row`'s state; the row, with the new
/// state, and the machine's effects are returned, for `save`.
///
/// The row is taken and given back: on an error the machine may have left
/// its state half changed, and the row is dropped with the error rather
/// than kept for a later write (it used to be copied first, 1.8 % of the
/// writer's instructions).
fn run_machine(
    mut row: InstanceRow,
    process: &Process,
    now: i64,
    f: impl FnOnce(&mut Machine<'_>) -> Result<(), Error>,
) -> Result<(InstanceRow, Vec<Effect>), Error> {
    let meta = InstanceMeta::from(&row);
    let effects = {
        let mut m = Machine::new(process, &meta, &mut row.state, now);
        f(&mut m)?;
        std::mem::take(&mut m.effects)
    };
    Ok((row, effects))
}

async fn load(conn: &mut impl Tx, id: &str) -> Result<InstanceRow, Error> {
    conn.instance(id, true)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "instance",
            id: id.to_owned(),
        })
}

/// A stored content hash without the version a redeployed text adds to
/// it (`…@3`, see `deploy`).
fn base_hash(stored: &str) -> &str {
    stored.split('@').next().unwrap_or(stored)
}

/// FNV-1a: a stable content hash, so identical sources map to one version.
fn content_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}-{}", text.len())
}

/// How a deploy treats what it is given (see [`Command::Deploy`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeployMode {
    pub(crate) dry_run: bool,
    pub(crate) again: bool,
}

async fn deploy(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    sources: &[(String, String)],
    DeployMode { dry_run, again }: DeployMode,
) -> Result<Reply, Error> {
    use crate::library::{self, SourceFile};
    // A text sent with a byte order mark (a Notepad file posted to the API)
    // is the same definition as the file read from disk without it: one
    // hash, one version, and no invisible character in the stored source.
    let sources: Vec<(String, String)> = sources
        .iter()
        .map(|(name, text)| (name.clone(), crate::loader::without_bom(text).to_owned()))
        .collect();
    let sources = sources.as_slice();
    // Nodes deploying at once (all starting up) take turns, so versions stay sequential.
    conn.lock_key("deploy").await?;
    let files: Vec<SourceFile> = sources
        .iter()
        .map(|(name, text)| SourceFile {
            path: name.into(),
            text: text.clone(),
        })
        .collect();
    // Calls resolve against what is being deployed and what is deployed
    // already: the latest version of every other code (the rows come
    // latest first per code). Each file is parsed once, here in the writer,
    // however many versions are stored.
    let deploying: std::collections::HashSet<String> = files
        .iter()
        .map(|f| crate::loader::parse(&f.text).definition.code)
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut context = Vec::new();
    // The latest deployed versions of the codes being deployed: what the
    // callers were checked against until now.
    let mut replaced = Vec::new();
    // Versions no new instance starts from, whose running instances still
    // call the latest version of what they call when they reach the call.
    let mut serving = Vec::new();
    let mut latest = std::collections::HashMap::new();
    // The latest version's text, by its hash, of each code.
    let mut latest_hash = std::collections::HashMap::new();
    for row in conn.all_definitions().await? {
        latest.entry(row.code.clone()).or_insert(row.version);
        latest_hash
            .entry(row.code.clone())
            .or_insert_with(|| base_hash(&row.content_hash).to_owned());
        let file = SourceFile {
            path: row.file_name.into(),
            text: row.source,
        };
        let newest = seen.insert(row.code.clone());
        if newest && !deploying.contains(&row.code) {
            context.push(file);
            continue;
        }
        if newest {
            replaced.push(file.clone());
        }
        serving.push(Serving {
            code: row.code,
            version: row.version,
            file,
        });
    }
    let results = library::compile(&files, &context, ctx.catalog);
    let mut failures: Vec<_> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().cloned())
        .collect();
    let now = DeployedNow {
        others: &context,
        replaced: &replaced,
    };
    // A file whose text is its code's latest version's deploys nothing new
    // (every start-up deploys processes/ again) and breaks no caller: the
    // deploy answers that version. The text of an earlier version is a new
    // version (going back to it): answered as the earlier one, it changed
    // nothing, and new requests kept starting from the latest.
    // At start-up (`again` false) such a text keeps its version, with a
    // warning: a node whose files are behind must not roll it back.
    let mut stored = Vec::with_capacity(results.len());
    for ((_, r), (_, text)) in results.iter().zip(sources) {
        let Ok(compiled) = r else {
            stored.push(None);
            continue;
        };
        let code = &compiled.definition.code;
        let hash = content_hash(text);
        stored.push(if latest_hash.get(code) == Some(&hash) {
            latest.get(code).copied()
        } else if again {
            None
        } else {
            conn.definition_by_hash(code, &hash)
                .await?
                .map(|row| row.version)
        });
    }
    let changing: std::collections::HashSet<String> = results
        .iter()
        .zip(&stored)
        .filter_map(|((_, r), stored)| match (r, stored) {
            (Ok(compiled), None) => Some(compiled.definition.code.clone()),
            _ => None,
        })
        .collect();
    if failures.is_empty() && !changing.is_empty() {
        failures = broken_callers(&files, &now, &changing, ctx.catalog);
    }
    if failures.is_empty() && !changing.is_empty() {
        failures = broken_running(conn, &files, &now, &serving, &changing, ctx.catalog).await?;
    }
    if !failures.is_empty() {
        return Err(Error::Invalid(failures));
    }
    let mut out = Vec::new();
    for (((name, text), (_, result)), stored) in sources.iter().zip(results).zip(stored) {
        let compiled = result.expect("checked");
        let code = compiled.definition.code;
        let warnings: Vec<String> = compiled.warnings.lines().collect();
        let mut hash = content_hash(text);
        if let Some(version) = stored {
            let mut warnings = warnings;
            if let Some(newest) = latest.get(&code).filter(|v| **v != version) {
                warnings.push(format!(
                    "{name} is the text of version {version}, not of the latest ({newest}), which \
                     new requests start from: left as it is; deploy it through the API to make \
                     it the latest again"
                ));
            }
            out.push(Deployed {
                code,
                version,
                new: false,
                warnings,
            });
            continue;
        }
        if dry_run {
            // Two files of one code fail validation (`duplicate-id`), so
            // each code here gets one new version.
            out.push(Deployed {
                version: latest.get(&code).map_or(1, |v| v + 1),
                code,
                new: true,
                warnings,
            });
            continue;
        }
        // One text, one hash, per code (a unique key): the same text
        // again, as a later version, is told apart by that version.
        if conn.definition_by_hash(&code, &hash).await?.is_some() {
            let next = latest.get(&code).map_or(1, |v| v + 1);
            hash = format!("{hash}@{next}");
        }
        let row = conn
            .insert_definition(NewDefinition {
                code: &code,
                hash: &hash,
                file_name: name,
                source: text,
                now: ctx.now,
            })
            .await?;
        out.push(Deployed {
            code,
            version: row.version,
            new: true,
            warnings,
        });
    }
    Ok(Reply::Deployed(out))
}

fn channel_name(c: Channel) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn start_instance(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    start: &StartInstance,
    id: &str,
    parent: Option<(&str, u32)>,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    let latest = conn
        .latest_definition_id(&start.code)
        .await?
        .ok_or_else(|| Error::NotDeployed {
            code: start.code.clone(),
        })?;
    let process = ctx.processes.get(conn, latest).await?;
    let (start_node, start_spec) = process.start().ok_or_else(|| Error::NotDeployed {
        code: start.code.clone(),
    })?;
    // `procedure` is the engine's own channel for a `call`: from outside
    // (no parent) it is not among the accepted, or a sub-procedure would
    // run without its caller.
    let internal = channel_name(Channel::Procedure);
    let allowed: Vec<String> = start_spec
        .channels
        .iter()
        .map(|c| channel_name(*c))
        .filter(|c| parent.is_some() || *c != internal)
        .collect();
    if !allowed.contains(&start.channel) {
        return Err(Error::ChannelNotAllowed {
            code: start.code.clone(),
            channel: start.channel.clone(),
            allowed,
        });
    }
    if let Some(form) = process.form(start_node) {
        let errors = form.check(&Value::Object(start.data.clone()));
        if !errors.is_empty() {
            return Err(Error::InvalidData { errors });
        }
    }
    // Without stray spaces, which no one filtering by it would type (the
    // inbox and the requests list trim what is typed).
    let business_key = match start.business_key.trim() {
        "" => id.to_owned(),
        key => key.to_owned(),
    };
    let mut row = InstanceRow {
        id: id.to_owned(),
        definition_id: process.id,
        code: process.code.clone(),
        version: process.version,
        business_key,
        channel: start.channel.clone(),
        status: "running".to_owned(),
        outcome: None,
        state: InstanceState::default(),
        revision: 0,
        parent_id: parent.map(|(p, _)| p.to_owned()),
        parent_token: parent.map(|(_, t)| i64::from(t)),
        started_at: ctx.now,
        ended_at: None,
        cancel_reason: None,
    };
    let meta = InstanceMeta::from(&row);
    let mut state = InstanceState::default();
    let mut m = Machine::new(&process, &meta, &mut state, ctx.now);
    m.write(&start.data);
    m.note(
        "instance_started",
        Some(start_node),
        json!({"code": process.code, "version": process.version, "channel": start.channel, "data": start.data, "parent": parent.map(|(p, _)| p)}),
    );
    m.start()?;
    let effects = std::mem::take(&mut m.effects);
    row.state = state;
    save(
        conn,
        ctx,
        Change {
            new: true,
            ..Change::of(row, effects, &start.actor)
        },
        followups,
    )
    .await
}

/// An instance after a machine run, for [`save`].
struct Change<'a> {
    row: InstanceRow,
    effects: Vec<Effect>,
    /// Who made the change, for its journal entries.
    actor: &'a str,
    /// A new instance, inserted rather than updated.
    new: bool,
    /// The task whose completion made the change, written with it.
    completes: Option<TaskCompletion<'a>>,
}

impl<'a> Change<'a> {
    /// A running instance's change that completes no task.
    fn of(row: InstanceRow, effects: Vec<Effect>, actor: &'a str) -> Self {
        Change {
            row,
            effects,
            actor,
            new: false,
            completes: None,
        }
    }
}

/// Persists an instance after a machine run and applies its effects.
async fn save(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    change: Change<'_>,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    let Change {
        mut row,
        effects,
        actor,
        new,
        completes,
    } = change;
    let mut entries: Vec<(String, Option<String>, Value)> = Vec::new();
    let mut ended = None;
    // What the instance's own write carries (one statement on PostgreSQL),
    // and what is applied after it because it refers to the instance.
    let mut created_tasks = Vec::new();
    let mut created_jobs = Vec::new();
    let mut writes = Vec::with_capacity(effects.len());
    for effect in effects {
        match effect {
            Effect::Journal { kind, node, data } => entries.push((kind.to_owned(), node, data)),
            Effect::Ended { outcome } => ended = Some(outcome),
            Effect::CreateTask {
                id,
                token,
                node,
                role,
                due_at,
            } => created_tasks.push((id, token, node, role, due_at)),
            Effect::CreateJob(job) => created_jobs.push(job),
            other => writes.push(other),
        }
    }
    if let Some(outcome) = ended {
        row.status = "completed".to_owned();
        row.outcome = Some(outcome.clone());
        row.ended_at = Some(ctx.now);
        entries.push((
            "instance_completed".to_owned(),
            None,
            json!({"outcome": outcome}),
        ));
        if let (Some(parent), Some(token)) = (&row.parent_id, row.parent_token) {
            // A variable the child declares but never wrote on the path it
            // took reads as null in the parent's `output.x`, as a variable
            // not yet written does everywhere else, rather than stopping
            // the parent with an incident.
            let mut variables = row.state.variables.clone();
            let process = ctx.processes.get(conn, row.definition_id).await?;
            for declared in &process.definition.variables {
                variables
                    .entry(declared.name.clone())
                    .or_insert(Value::Null);
            }
            followups.push_back(Followup::ChildEnded {
                parent: parent.clone(),
                token: token as u32,
                child: row.id.clone(),
                variables,
            });
        }
    }
    let new_entries: Vec<journal::NewEntry<'_>> = entries
        .iter()
        .map(|(kind, node, data)| journal::NewEntry {
            instance_id: &row.id,
            at: ctx.now,
            actor,
            kind,
            node_id: node.as_deref(),
            data,
        })
        .collect();
    let new_tasks: Vec<tasks::NewTask<'_>> = created_tasks
        .iter()
        .map(|(id, token, node, role, due_at)| tasks::NewTask {
            id,
            instance_id: &row.id,
            token: *token,
            node_id: node,
            code: &row.code,
            business_key: &row.business_key,
            role,
            created_at: ctx.now,
            due_at: *due_at,
        })
        .collect();
    let mut new_jobs = Vec::with_capacity(created_jobs.len());
    for job in &created_jobs {
        new_jobs.push(job_row(conn, ctx, &row, job).await?);
    }
    let written = conn
        .write_instance(InstanceWrite {
            row: &row,
            new,
            completes,
            journal: &new_entries,
            tasks: &new_tasks,
            jobs: &new_jobs,
        })
        .await?;
    if !new_jobs.is_empty() {
        ctx.scheduled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    drop((new_entries, new_tasks, new_jobs));
    match written {
        Written::Done(receipt) => ctx.receipt.lock().expect("receipt lock").merge(receipt),
        Written::Stale => {
            return Err(Error::Concurrent {
                instance: row.id.clone(),
            });
        }
        // Claimed, assigned or closed by someone else since it was read
        // (PostgreSQL: a claim locks the task, not the instance): the task
        // as it is now says which, so that the caller is not told a task
        // held by a colleague is completed.
        Written::TaskNotOpen => {
            let id = completes.map_or_else(String::new, |c| c.id.to_owned());
            let now = conn.task(&id).await?;
            return Err(match (now, completes) {
                (Some(t), Some(c))
                    if t.status == "claimed"
                        && t.assignee.as_deref().is_some_and(|a| a != c.user) =>
                {
                    Error::TaskClaimedByOther {
                        task: id,
                        assignee: t.assignee.unwrap_or_default(),
                    }
                }
                (Some(t), _) if t.status != "open" && t.status != "claimed" => Error::TaskNotOpen {
                    task: id,
                    status: t.status,
                },
                _ => Error::TaskNotOpen {
                    task: id,
                    status: "completed".to_owned(),
                },
            });
        }
    }
    if !new {
        // What the database holds now, for `keep_instance`.
        row.revision += 1;
    }
    ctx.touched
        .lock()
        .expect("touched lock")
        .push(row.id.clone());
    for effect in writes {
        apply(conn, ctx, &row, effect, followups).await?;
    }
    conn.keep_instance(row);
    Ok(())
}

async fn apply(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    row: &InstanceRow,
    effect: Effect,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    match effect {
        Effect::CancelTask { id } => conn.cancel_task(&id, ctx.now).await?,
        Effect::CancelJob { id } => {
            // A timer stopped at an incident is left behind by the token
            // (its task completed, its message come): the incident goes
            // with it, rather than staying open for an operator to settle
            // something that no longer waits.
            if conn.cancel_job(&id).await? {
                for (incident, node) in conn.withdraw_incidents_of_job(&id, ctx.now).await? {
                    journal_one(
                        conn,
                        ctx,
                        &row.id,
                        "engine",
                        "incident_withdrawn",
                        &node,
                        json!({"incident": incident, "job": id}),
                    )
                    .await?;
                }
            }
        }
        Effect::Subscribe {
            id,
            token,
            node,
            name,
            key,
        } => {
            conn.lock_key(&format!("message:{name}:{key}")).await?;
            conn.subscribe(messages::NewSubscription {
                id: &id,
                instance: &row.id,
                token,
                node: &node,
                name: &name,
                key: &key,
                now: ctx.now,
            })
            .await?;
            // A message that came before the instance waited (but not before
            // it started) is delivered now.
            if let Some(message) = conn
                .pending_message(
                    &name,
                    &key,
                    row.started_at - MESSAGE_CLOCK_SLACK_MS,
                    ctx.now,
                )
                .await?
            {
                conn.message_delivered(&message.id, &row.id).await?;
                followups.push_back(Followup::Deliver {
                    instance: row.id.clone(),
                    subscription: id,
                    message,
                });
            }
        }
        Effect::Unsubscribe { id } => conn.unsubscribe(&id).await?,
        Effect::StartChild {
            id,
            token,
            code,
            input,
            wait,
        } => followups.push_back(Followup::StartChild {
            parent: row.id.clone(),
            business_key: row.business_key.clone(),
            token,
            id,
            code,
            input,
            wait,
        }),
        Effect::CancelChild { id } => followups.push_back(Followup::Cancel {
            instance: id,
            reason: parent_cancelled(&row.id),
        }),
        Effect::Incident {
            id,
            token,
            node,
            job,
            message,
            after_effect,
        } => {
            conn.insert_incident(&incidents::IncidentRow {
                id,
                instance_id: row.id.clone(),
                job_id: job,
                node_id: node,
                token: i64::from(token),
                message,
                after_effect,
                status: "open".to_owned(),
                created_at: ctx.now,
                resolved_at: None,
                resolved_by: None,
                resolution: None,
            })
            .await?
        }
        // `save` writes these with the instance's row.
        Effect::Ended { .. }
        | Effect::Journal { .. }
        | Effect::CreateTask { .. }
        | Effect::CreateJob(_) => {}
    }
    Ok(())
}

/// The row of a job the machine scheduled.
async fn job_row<'a>(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    row: &'a InstanceRow,
    job: &'a crate::runtime::machine::NewJob,
) -> Result<store::jobs::NewJob<'a>, Error> {
    let (kind, connector, operation, input) = match &job.kind {
        JobKind::Service {
            connector,
            operation,
            input,
        } => (
            "service",
            Some(connector.as_str()),
            Some(operation.as_str()),
            Some(Value::Object(input.clone()).to_string()),
        ),
        JobKind::Timer => ("timer", None, None, None),
    };
    let timeout_ms = match &job.kind {
        JobKind::Service { .. } => {
            let process = ctx.processes.get(conn, row.definition_id).await?;
            match process.definition.node(&job.node).map(|n| &n.kind) {
                Some(NodeKind::ServiceTask(s)) => {
                    s.timeout.as_ref().map(|t| t.as_std().as_millis() as i64)
                }
                _ => None,
            }
        }
        JobKind::Timer => None,
    };
    Ok(store::jobs::NewJob {
        id: &job.id,
        instance_id: &row.id,
        token: job.token,
        node_id: &job.node,
        kind,
        connector,
        operation,
        input,
        idempotency_key: job
            .key
            .clone()
            .unwrap_or_else(|| format!("tramite:{}:{}:{}", row.id, job.node, job.id)),
        max_attempts: job.max_attempts,
        timeout_ms,
        run_at: job.run_at,
        created_at: ctx.now,
    })
}

async fn open_task(conn: &mut impl Tx, id: &str) -> Result<tasks::TaskRow, Error> {
    let task = conn.task(id).await?.ok_or_else(|| Error::NotFound {
        what: "task",
        id: id.to_owned(),
    })?;
    still_open(task)
}

/// The task, if it is open or claimed.
fn still_open(task: tasks::TaskRow) -> Result<tasks::TaskRow, Error> {
    if task.status != "open" && task.status != "claimed" {
        return Err(Error::TaskNotOpen {
            task: task.id,
            status: task.status,
        });
    }
    Ok(task)
}

async fn journal_one(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    instance: &str,
    actor: &str,
    kind: &str,
    node: &str,
    data: Value,
) -> Result<(), Error> {
    conn.append_journal(&[journal::NewEntry {
        instance_id: instance,
        at: ctx.now,
        actor,
        kind,
        node_id: Some(node),
        data: &data,
    }])
    .await?;
    Ok(())
}

async fn claim(conn: &mut impl Tx, ctx: &Ctx<'_>, id: &str, user: &str) -> Result<(), Error> {
    let task = open_task(conn, id).await?;
    if let Some(holder) = task.assignee.as_deref() {
        if holder == user {
            return Ok(()); // claiming twice is harmless
        }
        return Err(Error::TaskClaimedByOther {
            task: id.to_owned(),
            assignee: holder.to_owned(),
        });
    }
    if !conn.claim_task(id, user).await? {
        return Err(Error::TaskNotOpen {
            task: id.to_owned(),
            status: "taken".to_owned(),
        });
    }
    journal_one(
        conn,
        ctx,
        &task.instance_id,
        user,
        "task_claimed",
        &task.node_id,
        json!({"task": id}),
    )
    .await
}

async fn unclaim(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    id: &str,
    user: &str,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    // The instance before the task, the order a completion and a task's
    // escalation timer take them in (on PostgreSQL an agent giving back an
    // overdue task as its escalation fires would deadlock otherwise).
    if conn.task_and_instance(id).await?.is_none() {
        return Err(Error::NotFound {
            what: "task",
            id: id.to_owned(),
        });
    }
    let task = open_task(conn, id).await?;
    match task.assignee.as_deref() {
        Some(holder) if holder == user => {}
        Some(holder) => {
            return Err(Error::TaskClaimedByOther {
                task: id.to_owned(),
                assignee: holder.to_owned(),
            });
        }
        None => return Ok(()),
    }
    // The task's row is locked since it was read (PostgreSQL; SQLite has
    // one writer): nothing can have changed it in between.
    if !conn.unclaim_task(id, user).await? {
        return Ok(());
    }
    journal_one(
        conn,
        ctx,
        &task.instance_id,
        user,
        "task_unclaimed",
        &task.node_id,
        json!({"task": id}),
    )
    .await?;
    escalate_if_overdue(conn, ctx, &task, user, followups).await
}

/// A task given back after its due time, whose interrupting escalation was
/// held off while an agent had it (`fire_timer`), escalates now.
async fn escalate_if_overdue(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    task: &store::tasks::TaskRow,
    user: &str,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    // Whether it came due is the token's to say (below), not this node's
    // clock: one behind the node that fired the timer would leave the task
    // un-escalated for good.
    if task.due_at.is_none() {
        return Ok(());
    }
    let row = load(conn, &task.instance_id).await?;
    if row.status != "running" {
        return Ok(());
    }
    let process = ctx.processes.get(conn, row.definition_id).await?;
    let Some(NodeKind::UserTask(u)) = process.definition.node(&task.node_id).map(|n| &n.kind)
    else {
        return Ok(());
    };
    let Some(escalation) = u.escalation.as_ref().filter(|e| e.interrupting) else {
        return Ok(());
    };
    // Held off: the token waits on the task with its timer spent. (A timer
    // still pending fires by itself, and finds the task given back.)
    let Some(token) = row.state.tokens.iter().find_map(|t| match &t.wait {
        Wait::Task {
            task: waited,
            timer: None,
        } if *waited == task.id => Some(t.id),
        _ => None,
    }) else {
        return Ok(());
    };
    let (row, effects) = run_machine(row, &process, ctx.now, |m| {
        m.note(
            "task_overdue",
            Some(&task.node_id),
            json!({"task": task.id, "interrupting": true, "released": true}),
        );
        m.effects.push(Effect::CancelTask {
            id: task.id.clone(),
        });
        m.go(token, &escalation.next)?;
        Ok(())
    })?;
    save(conn, ctx, Change::of(row, effects, user), followups).await
}

async fn complete(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    c: &CompleteTask,
    followups: &mut VecDeque<Followup>,
) -> Result<CompletedTask, Error> {
    // The role first: who may not see the task learns nothing of its state.
    let (task, row) = conn
        .task_and_instance(&c.task)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "task",
            id: c.task.clone(),
        })?;
    if let Some(roles) = &c.roles
        && !roles.contains(&task.role)
    {
        return Err(Error::TaskForOtherRole {
            task: c.task.clone(),
            role: task.role,
        });
    }
    if is_repeat(&task, c) {
        return Ok(repeated(task));
    }
    let task = still_open(task)?;
    // The task's token must still wait on it. On PostgreSQL a completion
    // that waited for another's lock on the instance reads the instance
    // as that one left it but the task as it was before (only the locked
    // row is read again): the task looks open, its token has moved on.
    // The task read again now is as that one left it: the same completion
    // (a client's retry that met its first try still running) is a repeat.
    let waits_here = row
        .state
        .token(task.token as u32)
        .is_some_and(|t| matches!(&t.wait, Wait::Task { task: waited, .. } if *waited == task.id));
    if !waits_here {
        return match conn.task(&c.task).await? {
            Some(now) if is_repeat(&now, c) => Ok(repeated(now)),
            now => Err(Error::TaskNotOpen {
                task: c.task.clone(),
                status: now
                    .filter(|t| t.status != "open" && t.status != "claimed")
                    .map_or_else(|| "completed".to_owned(), |t| t.status),
            }),
        };
    }
    if let Some(holder) = task.assignee.as_deref()
        && holder != c.user
    {
        return Err(Error::TaskClaimedByOther {
            task: c.task.clone(),
            assignee: holder.to_owned(),
        });
    }
    let process = ctx.processes.get(conn, row.definition_id).await?;
    let NodeKind::UserTask(node) = &process
        .definition
        .node(&task.node_id)
        .ok_or_else(|| Error::NotFound {
            what: "node",
            id: task.node_id.clone(),
        })?
        .kind
    else {
        return Err(Error::NotFound {
            what: "user task",
            id: task.node_id.clone(),
        });
    };
    let outcome = node
        .outcomes
        .iter()
        .find(|o| o.id == c.outcome)
        .ok_or_else(|| Error::UnknownOutcome {
            outcome: c.outcome.clone(),
            allowed: node.outcomes.iter().map(|o| o.id.clone()).collect(),
        })?;
    let data = Value::Object(c.data.clone());
    let form = if outcome.validate {
        process.form(&task.node_id)
    } else {
        process.lenient_form(&task.node_id)
    };
    if let Some(form) = form {
        let errors = form.check(&data);
        if !errors.is_empty() {
            return Err(Error::InvalidData { errors });
        }
    }
    let token = task.token as u32;
    let (row, effects) = run_machine(row, &process, ctx.now, |m| {
        if let Some(t) = m.state.token(token)
            && let Wait::Task {
                timer: Some(timer), ..
            } = &t.wait
        {
            m.effects.push(Effect::CancelJob { id: timer.clone() });
        }
        m.write(&c.data);
        // What the outcome records is computed from the data given: data it
        // cannot be computed from (a field left empty under `validate:
        // false`) is the caller's to fix, not a server error.
        let set = m
            .assign(&outcome.set, None)
            .map_err(|e| Error::InvalidData {
                errors: vec![crate::runtime::forms::FieldError {
                    // The variable a value of the wrong type was meant for.
                    field: match &e {
                        crate::runtime::eval::EvalError::WrongType { variable, .. } => {
                            variable.clone()
                        }
                        _ => String::new(),
                    },
                    message: format!(
                        "the outcome `{}` cannot record its values from this data: {e}",
                        outcome.id
                    ),
                }],
            })?;
        m.note(
            "task_completed",
            Some(&task.node_id),
            json!({"task": c.task, "outcome": c.outcome, "data": c.data, "set": set}),
        );
        m.go(token, &outcome.next)?;
        Ok(())
    })?;
    // The task's completion is written with the instance (one statement on
    // PostgreSQL); a task claimed by someone else meanwhile writes neither.
    let completes = Some(TaskCompletion {
        id: &c.task,
        user: &c.user,
        outcome: &c.outcome,
        data: &data,
        now: ctx.now,
    });
    save(
        conn,
        ctx,
        Change {
            completes,
            ..Change::of(row, effects, &c.user)
        },
        followups,
    )
    .await?;
    Ok(CompletedTask {
        code: task.code,
        node_id: task.node_id,
        created_at: task.created_at,
        repeated: false,
    })
}

/// The answer to a completion `task` already had: nothing written.
fn repeated(task: tasks::TaskRow) -> CompletedTask {
    CompletedTask {
        code: task.code,
        node_id: task.node_id,
        created_at: task.created_at,
        repeated: true,
    }
}

/// Whether `c` is the completion `task` already had: the same user, outcome
/// and data. Anything else on a closed task is a conflict, so that a second
/// agent, or a changed answer, is never told it was recorded.
fn is_repeat(task: &tasks::TaskRow, c: &CompleteTask) -> bool {
    task.status == "completed"
        && task.completed_by.as_deref() == Some(c.user.as_str())
        && task.outcome.as_deref() == Some(c.outcome.as_str())
        && task
            .data
            .as_ref()
            .is_some_and(|d| d.as_object() == Some(&c.data))
}

/// Delay before attempt `attempt + 1`, with equal jitter (half fixed, half random).
fn backoff(policy: &crate::definition::RetryPolicy, attempt: u32) -> i64 {
    let initial = policy.initial_delay.as_std().as_millis() as i64;
    let max = policy.max_delay.as_std().as_millis() as i64;
    let delay = match policy.backoff {
        crate::definition::Backoff::Fixed => initial,
        crate::definition::Backoff::Exponential => {
            initial.saturating_mul(1_i64 << attempt.saturating_sub(1).min(30))
        }
    }
    .min(max);
    if policy.jitter && delay > 1 {
        delay / 2 + rand::random_range(0..=delay / 2)
    } else {
        delay
    }
}

/// How long from a job's start a system that asks to be called later
/// (`Retry-After`) is waited out without its refusals counting against the
/// step's attempts: an hour, as long as one such wait may be
/// ([`crate::runtime::connector::MAX_RETRY_AFTER`]).
pub const THROTTLE_PATIENCE_MS: i64 = 3_600_000;

/// Ends `job`, claimed under `owner`, in an incident with `message` (kept
/// as a system's text is), for an operator to retry or resolve; nothing if
/// the lease was lost meanwhile (another worker owns the outcome).
/// Why a claimed job must not run but stop at an incident, if it must.
fn why_not_run(job: &ClaimedJob) -> Option<String> {
    if let Some(why) = &job.unreadable {
        // Not run (with what input?), nor left to fail every claim: the
        // jobs due behind it still run.
        tracing::error!(job = %job.id, instance = %job.instance_id, error = %why, "a job's stored input is unreadable");
        Some(format!(
            "the call was not made: its stored input cannot be read ({why}); resolve the \
             incident to run the step again (its input computed anew), or with the variables \
             the step would have written"
        ))
    } else if job.kind == "timer" && job.attempts > TIMER_FIRINGS {
        // Firing a timer again is harmless, so a node that died firing it
        // is no reason to stop; a firing that fails inside the engine every
        // time (its request's row unreadable, say) is, rather than being
        // tried every lease for ever.
        Some(format!(
            "the timer fired {TIMER_FIRINGS} times without its firing being recorded (each \
             time it failed inside the engine: see the server's log); a retry fires it again"
        ))
    } else if job.kind != "timer" && job.attempts > job.max_attempts {
        // Each claim counts as an attempt, so a call claimed once more than
        // its attempts allow had its last run end unrecorded (its node died
        // calling, say): a call that crashes its node every time must not
        // run forever. An operator looks at it instead.
        Some(format!(
            "attempt {max} of {max} ended without a recorded result: the node running the call \
             stopped or could not record its answer (the system may have acted; a retry asks \
             again with the same idempotency key; earlier attempts are in the history)",
            max = job.max_attempts
        ))
    } else {
        None
    }
}

async fn raise_job_incident(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    job: &ClaimedJob,
    owner: &str,
    message: &str,
) -> Result<(), Error> {
    if !conn
        .finish_job(&job.id, owner, "incident", Some(message))
        .await?
    {
        return Ok(());
    }
    let incident = new_id();
    let text = crate::runtime::connector::clean(message.to_owned());
    conn.insert_incident(&incidents::IncidentRow {
        id: incident.clone(),
        instance_id: job.instance_id.clone(),
        job_id: Some(job.id.clone()),
        node_id: job.node_id.clone(),
        token: job.token,
        message: text.clone(),
        after_effect: false,
        status: "open".to_owned(),
        created_at: ctx.now,
        resolved_at: None,
        resolved_by: None,
        resolution: None,
    })
    .await?;
    journal_one(
        conn,
        ctx,
        &job.instance_id,
        "worker",
        "incident_raised",
        &job.node_id,
        json!({"incident": incident, "job": job.id, "message": text}),
    )
    .await
}

/// `out`, if the catalog says the job's operation can answer it; else a
/// transient failure naming what is wrong. A system (or its HTTP file) that
/// answers without an output it always returns, or with a value of the
/// wrong type, has not answered as its steps expect: asked again with the
/// same key, it may answer right, and if it never does the incident says
/// what was wrong, not a mapping error far from it (or a gate silently
/// taking the wrong branch on a null).
fn as_catalogued(
    catalog: &crate::catalog::Catalog,
    job: &ClaimedJob,
    out: Map<String, Value>,
) -> Result<Map<String, Value>, ConnectorError> {
    let (Some(connector), Some(operation)) = (&job.connector, &job.operation) else {
        return Ok(out);
    };
    // Stored as it came, a value past the limit would leave its instance
    // unreadable (see `MAX_NESTING`).
    if out
        .values()
        .any(|v| super::nests_deeper(v, super::MAX_NESTING - 1))
    {
        return Err(ConnectorError::transient(format!(
            "{connector}.{operation} answered with values nested deeper than {} levels of \
             arrays and objects",
            super::MAX_NESTING
        )));
    }
    let Some(spec) = catalog.operation(connector, operation) else {
        return Ok(out);
    };
    let problems = spec.result_problems(&out);
    if problems.is_empty() {
        // An output the system may leave out reads as null when it does, as
        // a called procedure's unwritten variable does: `result.x != null`
        // guards it, where a missing key failed every read, guarded or
        // not, with an incident only resolving could close.
        let mut out = out;
        for p in &spec.outputs {
            out.entry(p.name.as_str()).or_insert(Value::Null);
        }
        Ok(out)
    } else {
        Err(ConnectorError::transient(format!(
            "{connector}.{operation} answered, but not as the catalog says it answers: the answer {}",
            problems.join("; it ")
        )))
    }
}

async fn apply_job_result(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    job: &ClaimedJob,
    owner: &str,
    result: Result<Map<String, Value>, ConnectorError>,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    let result = result
        .and_then(|out| as_catalogued(ctx.catalog, job, out))
        .map_err(ConnectorError::printable);
    let mut row = load(conn, &job.instance_id).await?;
    let process = ctx.processes.get(conn, row.definition_id).await?;
    let token = job.token as u32;
    let node_id = job.node_id.clone();
    // A refusal is the same on every attempt: the attempts left would only
    // delay the incident by their backoff, and the operator's fix.
    if let Err(ConnectorError::Refused { message }) = &result {
        let text = format!(
            "attempt {} refused, not retried (fix the cause, then retry or resolve the incident): {message}",
            job.attempts
        );
        return raise_job_incident(conn, ctx, job, owner, &text).await;
    }
    // Transient failure with attempts left: back in the queue, instance untouched.
    if let Err(ConnectorError::Transient {
        message,
        retry_after,
    }) = &result
    {
        let policy = match process.definition.node(&node_id).map(|n| &n.kind) {
            Some(NodeKind::ServiceTask(s)) => s.retry.clone().unwrap_or_else(default_retry),
            _ => default_retry(),
        };
        // A system that asked to be left alone for a while (throttled,
        // closing for the night) is up, not failing: waited out without
        // using up the step's attempts, for `THROTTLE_PATIENCE_MS` from the
        // job's start (or an operator's retry). After that its refusals
        // count like any failure, so one that never lets the call in still
        // ends in an incident.
        let throttled = retry_after.is_some() && ctx.now - job.created_at < THROTTLE_PATIENCE_MS;
        if job.attempts < job.max_attempts || throttled {
            let asked = retry_after.map_or(0, |wait| {
                wait.min(crate::runtime::connector::MAX_RETRY_AFTER)
                    .as_millis() as i64
            });
            let at = ctx.now + backoff(&policy, job.attempts as u32).max(asked);
            let retry = store::JobRetry {
                id: &job.id,
                owner,
                run_at: at,
                error: message,
                counted: !throttled,
            };
            if conn.reschedule_job(retry).await? {
                ctx.scheduled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                journal_one(
                    conn,
                    ctx,
                    &row.id,
                    "worker",
                    "job_failed",
                    &node_id,
                    json!({"job": job.id, "attempt": job.attempts, "error": message, "retry_at": at, "counted": !throttled}),
                )
                .await?;
            }
            return Ok(());
        }
        let text = format!("{} attempt(s) failed; last: {message}", job.attempts);
        return raise_job_incident(conn, ctx, job, owner, &text).await;
    }
    let error_text = match &result {
        Err(e) => Some(e.to_string()),
        Ok(_) => None,
    };
    if !conn
        .finish_job(&job.id, owner, "done", error_text.as_deref())
        .await?
    {
        return Ok(()); // lease lost or job cancelled: this result is stale
    }
    let waiting = row.state.token(token).map(|t| t.wait.clone());
    let node = process.definition.node(&node_id).map(|n| &n.kind);
    // An overdue task an agent is working keeps its agent (see
    // `fire_timer`): read only when this is the task's interrupting
    // escalation coming due.
    let claimed = match (&waiting, node) {
        (
            Some(Wait::Task {
                task,
                timer: Some(t),
            }),
            Some(NodeKind::UserTask(u)),
        ) if *t == job.id && u.escalation.as_ref().is_some_and(|e| e.interrupting) => conn
            .task(task)
            .await?
            .is_some_and(|t| t.status == "claimed" || t.assignee.is_some()),
        _ => false,
    };
    let meta = InstanceMeta::from(&row);
    let mut state = row.state.clone();
    let mut m = Machine::new(&process, &meta, &mut state, ctx.now);
    match (job.kind.as_str(), waiting, node) {
        ("service", Some(Wait::Job { job: j }), Some(NodeKind::ServiceTask(s))) if j == job.id => {
            match result {
                Ok(output) => {
                    let output = Value::Object(output);
                    match m.assign(&s.output, Some(("result", &output))) {
                        Ok(written) => {
                            m.note(
                                "job_succeeded",
                                Some(&node_id),
                                json!({"job": job.id, "attempt": job.attempts, "written": written}),
                            );
                            m.go(token, &s.next)?;
                        }
                        Err(e) => m.raise(token, &node_id, e.to_string(), true),
                    }
                }
                Err(ConnectorError::Business { code, message }) => {
                    let error = json!({"code": code, "message": message});
                    m.note(
                        "job_business_error",
                        Some(&node_id),
                        json!({"job": job.id, "error": error}),
                    );
                    match s.errors.iter().find(|r| r.error == code) {
                        Some(route) => match m.assign(&route.set, Some(("error", &error))) {
                            Ok(_) => m.go(token, &route.next)?,
                            Err(e) => {
                                m.raise(token, &node_id, e.to_string(), true);
                                if let Some(t) = m.state.token_mut(token)
                                    && let Wait::Incident { route, .. } = &mut t.wait
                                {
                                    *route = Some(code.clone());
                                }
                            }
                        },
                        None => m.raise(
                            token,
                            &node_id,
                            format!("unrouted business error `{code}`: {message}"),
                            false,
                        ),
                    }
                }
                Err(ConnectorError::Transient { .. } | ConnectorError::Refused { .. }) => {
                    unreachable!("handled above")
                }
            }
        }
        ("timer", Some(wait), Some(kind)) => {
            fire_timer(&mut m, token, &node_id, &job.id, &wait, kind, claimed)?
        }
        _ => return Ok(()), // the token moved on (cancelled, escalated): nothing to do
    }
    let effects = std::mem::take(&mut m.effects);
    row.state = state;
    save(conn, ctx, Change::of(row, effects, "worker"), followups).await
}

/// Applies a job's result; if the machine refuses to go on (a runaway
/// loop), the token stops with an incident instead of the job running
/// again and again.
async fn job_done(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    job: &ClaimedJob,
    owner: &str,
    result: Result<Map<String, Value>, ConnectorError>,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    match apply_job_result(conn, ctx, job, owner, result, followups).await {
        Err(Error::Machine(e)) => {
            let row = load(conn, &job.instance_id).await?;
            let process = ctx.processes.get(conn, row.definition_id).await?;
            let (row, effects) = run_machine(row, &process, ctx.now, |m| {
                let token = job.token as u32;
                let wait = m.state.token(token).map(|t| t.wait.clone());
                let beside = match process.definition.node(&job.node_id).map(|n| &n.kind) {
                    Some(NodeKind::UserTask(u)) => {
                        u.escalation.as_ref().filter(|e| !e.interrupting)
                    }
                    _ => None,
                };
                match (wait, beside) {
                    // A task whose escalation runs beside it stays its
                    // agent's (they may be on the phone): only the
                    // escalation's path failed, and its incident is on a
                    // side token of its own, which resolving runs again.
                    (
                        Some(Wait::Task {
                            task,
                            timer: Some(t),
                        }),
                        Some(escalation),
                    ) if t == job.id => {
                        if let Some(tk) = m.state.token_mut(token) {
                            tk.wait = Wait::Task { task, timer: None };
                        }
                        m.branch_stopped(token, &escalation.next, e.to_string());
                    }
                    // Otherwise what the token waited on is withdrawn, as
                    // the discarded run would have done: an interrupting
                    // escalation's task left open would stay in the inbox
                    // (completing it refused), and resolving the incident
                    // would open a second one beside it.
                    (wait, _) => {
                        if let Some(wait) = wait {
                            m.withdraw(&wait);
                        }
                        m.raise(token, &job.node_id, e.to_string(), true);
                    }
                }
                Ok(())
            })?;
            save(conn, ctx, Change::of(row, effects, "worker"), followups).await
        }
        other => other,
    }
}

/// A timer came due. `claimed`: the task it guards is held by an agent.
fn fire_timer(
    m: &mut Machine<'_>,
    token: u32,
    node_id: &str,
    job: &str,
    wait: &Wait,
    kind: &NodeKind,
    claimed: bool,
) -> Result<(), Error> {
    match (wait, kind) {
        (
            Wait::Task {
                task,
                timer: Some(t),
            },
            NodeKind::UserTask(u),
        ) if t == job => {
            let Some(escalation) = &u.escalation else {
                return Ok(());
            };
            // An interrupting escalation does not take a task from the
            // agent working it (on the phone with the client, say): it is
            // overdue, and escalates if the agent gives it back unfinished.
            let deferred = escalation.interrupting && claimed;
            m.note(
                "task_overdue",
                Some(node_id),
                json!({"task": task, "interrupting": escalation.interrupting, "deferred": deferred}),
            );
            if deferred {
                if let Some(tk) = m.state.token_mut(token) {
                    tk.wait = Wait::Task {
                        task: task.clone(),
                        timer: None,
                    };
                }
            } else if escalation.interrupting {
                m.effects.push(Effect::CancelTask { id: task.clone() });
                m.go(token, &escalation.next)?;
            } else {
                if let Some(tk) = m.state.token_mut(token) {
                    tk.wait = Wait::Task {
                        task: task.clone(),
                        timer: None,
                    };
                }
                m.branch(token, &escalation.next)?;
            }
        }
        (
            Wait::Message {
                subscription,
                timer: Some(t),
            },
            NodeKind::MessageWait(w),
        ) if t == job => {
            m.effects.push(Effect::Unsubscribe {
                id: subscription.clone(),
            });
            if let Some(timeout) = &w.timeout {
                m.note(
                    "message_timed_out",
                    Some(node_id),
                    json!({"message": w.message}),
                );
                m.go(token, &timeout.next)?;
            }
        }
        (Wait::Timer { job: t }, NodeKind::TimerWait(tw)) if t == job => {
            m.note("timer_fired", Some(node_id), Value::Null);
            m.go(token, &tw.next)?;
        }
        _ => {}
    }
    Ok(())
}

async fn publish(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    msg: &PublishMessage,
    followups: &mut VecDeque<Followup>,
) -> Result<Delivery, Error> {
    // On PostgreSQL the instance a wait belongs to is locked before the
    // key, in the order a subscribing command takes them (it holds its
    // instance, then asks for the key). The other order deadlocked a
    // publisher against a batch that held that instance and subscribed
    // another one under the same key (a second request from one phone):
    // a second of deadlock detection and a retry each time.
    // Likewise the instance a message with no wait would go to as the rest
    // of a sending: it is looked for unlocked, and locked first.
    if ctx.backend == Backend::Postgres {
        let first = match conn.find_subscription(&msg.name, &msg.key).await? {
            Some(peek) => Some(peek.instance_id),
            None => sending_taker(conn, ctx, &msg.name, &msg.key).await?,
        };
        if let Some(instance) = first {
            conn.instance(&instance, true).await?;
        }
    }
    // Publishers and subscribers of one key take turns (several nodes on
    // PostgreSQL): neither can miss the other's uncommitted row.
    conn.lock_key(&format!("message:{}:{}", msg.name, msg.key))
        .await?;
    let waiting = conn.find_subscription(&msg.name, &msg.key).await?;
    let expires_at = ctx.now.saturating_add(msg.ttl_ms.max(0));
    let row = MessageRow {
        id: msg.id.clone(),
        message_name: msg.name.clone(),
        correlation_key: msg.key.clone(),
        payload: msg.payload.clone(),
        status: if waiting.is_some() {
            "delivered"
        } else {
            "pending"
        }
        .to_owned(),
        instance_id: waiting.as_ref().map(|s| s.instance_id.clone()),
        received_at: ctx.now,
        expires_at: if waiting.is_some() {
            None
        } else {
            Some(expires_at)
        },
    };
    match conn.record_message(&row).await? {
        Recorded::New => {}
        // The same message again (a provider's retry): nothing more to do.
        Recorded::Seen {
            message_name,
            correlation_key,
        } if message_name == msg.name && correlation_key == msg.key => {
            return Ok(Delivery::Duplicate);
        }
        // Another message under a used id would be lost as a "duplicate".
        Recorded::Seen { .. } => {
            return Err(Error::MessageIdTaken { id: msg.id.clone() });
        }
    }
    let Some(s) = waiting else {
        if let Some(instance) = rest_of_a_sending(conn, ctx, &row, followups).await? {
            conn.message_delivered(&row.id, &instance).await?;
            return Ok(Delivery::Delivered { instance });
        }
        return Ok(Delivery::Kept);
    };
    let taken = hand_over(
        conn,
        ctx,
        &row,
        (s.instance_id, s.id),
        expires_at,
        followups,
    )
    .await?;
    Ok(match taken {
        Some(instance) => Delivery::Delivered { instance },
        None => Delivery::Kept,
    })
}

/// Hands `message`, recorded as delivered to `first`'s instance, to the
/// first wait that still waits: `first` (instance, subscription), else the
/// oldest other wait for its name and key; if none, it is kept (pending,
/// until `expires_at`). Returns the instance that took it.
///
/// A wait can be withdrawn after it was read: on PostgreSQL, another lane's
/// or node's timeout or cancellation that committed since.
async fn hand_over(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    message: &MessageRow,
    first: (String, String),
    expires_at: i64,
    followups: &mut VecDeque<Followup>,
) -> Result<Option<String>, Error> {
    let mut waiting = Some(first);
    while let Some((instance, subscription)) = waiting {
        if deliver(conn, ctx, &instance, &subscription, message, followups).await? {
            return Ok(Some(instance));
        }
        waiting = conn
            .find_subscription(&message.message_name, &message.correlation_key)
            .await?
            .map(|s| (s.instance_id, s.id));
        if let Some((next, _)) = &waiting {
            conn.message_delivered(&message.id, next).await?;
        }
    }
    conn.message_kept(&message.id, expires_at).await?;
    Ok(None)
}

async fn deliver(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    instance: &str,
    subscription: &str,
    message: &MessageRow,
    followups: &mut VecDeque<Followup>,
) -> Result<bool, Error> {
    let row = load(conn, instance).await?;
    let process = ctx.processes.get(conn, row.definition_id).await?;
    let found = row.state.tokens.iter().find_map(|t| match &t.wait {
        Wait::Message {
            subscription: s,
            timer,
        } if s == subscription => Some((t.id, t.node.clone(), timer.clone())),
        _ => None,
    });
    // The subscription goes whether or not a token still waits on it: one
    // that none waits on is left over from a wait withdrawn since it was
    // read, and must not be found again.
    conn.unsubscribe(subscription).await?;
    let Some((token, node_id, timer)) = found else {
        return Ok(false);
    };
    let NodeKind::MessageWait(w) = &process.definition.node(&node_id).expect("node").kind else {
        return Ok(false);
    };
    let (row, effects) = run_machine(row, &process, ctx.now, |m| {
        if let Some(t) = timer {
            m.effects.push(Effect::CancelJob { id: t });
        }
        // A new take ends the sending before it (of any wait); it starts
        // one if it is a `collect` wait's and its store succeeds.
        m.state.sending = None;
        match m.assign(&w.store, Some(("message", &message.payload))) {
            Ok(written) => {
                m.note(
                    "message_received",
                    Some(&node_id),
                    json!({"message": message.id, "name": message.message_name, "written": written}),
                );
                if w.collect.is_some() {
                    m.state.sending = Some(Sending {
                        node: node_id.clone(),
                        message: message.message_name.clone(),
                        key: message.correlation_key.clone(),
                        at: ctx.now,
                    });
                }
                m.go(token, &w.next)?;
            }
            Err(e) => m.raise(token, &node_id, e.to_string(), true),
        }
        Ok(())
    })?;
    let started_at = row.started_at;
    // The rest of the sending, kept because it came before the wait: the
    // instance's too, as long as the wait took the first (after a store
    // that failed the token stops with an incident, and the rest stays
    // kept, for the next wait) and the instance goes on running. Read only
    // then, and the instance loaded only for a message to store: a
    // delivery is on every P06 request's path.
    let taking =
        row.state.sending.is_some() && !effects.iter().any(|e| matches!(e, Effect::Ended { .. }));
    save(conn, ctx, Change::of(row, effects, "engine"), followups).await?;
    while taking
        && let Some(more) = conn
            .pending_message(
                &message.message_name,
                &message.correlation_key,
                started_at - MESSAGE_CLOCK_SLACK_MS,
                ctx.now,
            )
            .await?
    {
        conn.message_delivered(&more.id, instance).await?;
        let row = load(conn, instance).await?;
        attach(conn, ctx, row, &process, (&node_id, w), &more, followups).await?;
    }
    Ok(true)
}

/// A message no wait waits for that is the rest of a sending whose start a
/// `collect` wait took (same name and key, the last of them less than its
/// `collect` ago, its instance still running): stored on that instance.
/// Returns the instance, if so.
async fn rest_of_a_sending(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    message: &MessageRow,
    followups: &mut VecDeque<Followup>,
) -> Result<Option<String>, Error> {
    let Some(instance) =
        sending_taker(conn, ctx, &message.message_name, &message.correlation_key).await?
    else {
        return Ok(None);
    };
    // Read again, locked: it may have moved on since.
    let row = load(conn, &instance).await?;
    let process = ctx.processes.get(conn, row.definition_id).await?;
    let Some((node, w)) = open_sending(
        &row,
        &process,
        ctx.now,
        &message.message_name,
        &message.correlation_key,
    ) else {
        return Ok(None);
    };
    let node = node.to_owned();
    attach(conn, ctx, row, &process, (&node, w), message, followups).await?;
    Ok(Some(instance))
}

/// The instance a message of `name` and `key` that no wait waits for goes
/// to as the rest of a sending, if any: of the running requests that took
/// this phone's messages (a client may have two), the one whose sending
/// took a message last — if its `collect` window is still open; else the
/// message is kept, for the next wait. Read without locks: a command on
/// the instance may hold its row and want the message's key, so the
/// caller locks the instance (before the key, on PostgreSQL) and checks
/// again.
async fn sending_taker(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    name: &str,
    key: &str,
) -> Result<Option<String>, Error> {
    let mut latest: Option<(i64, InstanceRow)> = None;
    for id in conn.recent_takers(name, key).await? {
        let Some(row) = conn.instance(&id, false).await? else {
            continue;
        };
        if row.status == "running"
            && let Some(s) = &row.state.sending
            && s.message == name
            && s.key == key
            && latest.as_ref().is_none_or(|(at, _)| s.at > *at)
        {
            latest = Some((s.at, row));
        }
    }
    let Some((_, row)) = latest else {
        return Ok(None);
    };
    let process = ctx.processes.get(conn, row.definition_id).await?;
    Ok(open_sending(&row, &process, ctx.now, name, key)
        .is_some()
        .then_some(row.id))
}

/// The wait of `row`'s sending of `name` and `key`, if it is still open at
/// `now` (the instance running, the last message taken less than the
/// wait's `collect` ago).
fn open_sending<'p>(
    row: &InstanceRow,
    process: &'p Process,
    now: i64,
    name: &str,
    key: &str,
) -> Option<(&'p str, &'p crate::definition::MessageWait)> {
    let sending = row
        .state
        .sending
        .as_ref()
        .filter(|s| row.status == "running" && s.message == name && s.key == key)?;
    let node = process.definition.node(&sending.node)?;
    let NodeKind::MessageWait(w) = &node.kind else {
        return None;
    };
    let quiet = w.collect.as_ref()?;
    (now.saturating_sub(sending.at) <= quiet.as_std().as_millis() as i64)
        .then_some((node.id.as_str(), w))
}

/// Stores a message of a sending on its instance as its wait stored the
/// first (`store` again, a list appended to the list before), wherever the
/// instance is now.
async fn attach(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    row: InstanceRow,
    process: &Process,
    (node_id, w): (&str, &crate::definition::MessageWait),
    message: &MessageRow,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    let (row, effects) = run_machine(row, process, ctx.now, |m| {
        let before: Vec<(String, Value)> = w
            .store
            .keys()
            .filter_map(|k| Some((k.clone(), m.state.variables.get(k)?.clone())))
            .collect();
        match m.assign(&w.store, Some(("message", &message.payload))) {
            Ok(written) => {
                for (name, old) in before {
                    if let (Value::Array(mut all), Some(Value::Array(new))) =
                        (old, m.state.variables.get_mut(&name))
                    {
                        all.append(new);
                        *new = all;
                    }
                }
                m.note(
                    "message_received",
                    Some(node_id),
                    json!({"message": message.id, "name": message.message_name, "written": written, "late": true}),
                );
                if let Some(s) = m.state.sending.as_mut() {
                    s.at = ctx.now;
                }
            }
            // The instance has moved on: what could not be stored is noted,
            // not an incident on a step it has left.
            Err(e) => m.note(
                "message_received",
                Some(node_id),
                json!({"message": message.id, "name": message.message_name, "error": e.to_string(), "late": true}),
            ),
        }
        Ok(())
    })?;
    save(conn, ctx, Change::of(row, effects, "engine"), followups).await
}

async fn cancel(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    id: &str,
    reason: &str,
    actor: &str,
    strict: bool,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    if ctx.backend == Backend::Postgres {
        lock_descendants(conn, id).await?;
    }
    let row = load(conn, id).await?;
    if row.status != "running" {
        if strict {
            return Err(Error::InstanceNotRunning {
                instance: id.to_owned(),
                status: row.status,
            });
        }
        return Ok(());
    }
    let process = ctx.processes.get(conn, row.definition_id).await?;
    let (mut row, effects) = run_machine(row, &process, ctx.now, |m| {
        m.withdraw_all();
        m.note("instance_cancelled", None, json!({"reason": reason}));
        Ok(())
    })?;
    row.status = "cancelled".to_owned();
    row.ended_at = Some(ctx.now);
    row.cancel_reason = Some(reason.to_owned());
    conn.close_incidents_of(id, actor, ctx.now).await?;
    // A parent waiting for this child would wait forever: stop it with an incident.
    if let (Some(parent), Some(token)) = (row.parent_id.clone(), row.parent_token) {
        followups.push_back(Followup::ParentIncident {
            parent,
            token: token as u32,
            child: row.id.clone(),
            message: format!("{CANCELLED_CHILD}`{}` was cancelled: {reason}", row.id),
            cancelled: true,
        });
    }
    save(conn, ctx, Change::of(row, effects, actor), followups).await
}

/// Locks the children a cancel of `id` reaches (those its tokens wait
/// for, theirs, and so on), read without locks, descendants before their
/// ancestors: the order a child that ends takes them in (itself, then its
/// parent). A cancel that locked the parent first deadlocked against its
/// child's last step on another lane or node.
async fn lock_descendants(conn: &mut impl Tx, id: &str) -> Result<(), Error> {
    let mut found = Vec::new();
    let mut next = vec![id.to_owned()];
    while let Some(at) = next.pop() {
        let Some(row) = conn.instance(&at, false).await? else {
            continue;
        };
        for token in &row.state.tokens {
            if let Wait::Call { child } = &token.wait {
                found.push(child.clone());
                next.push(child.clone());
            }
        }
    }
    // Each was found after its parent.
    for child in found.iter().rev() {
        conn.instance(child, true).await?;
    }
    Ok(())
}

async fn settle_incident(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    id: &str,
    actor: &str,
    resolve: Option<(Map<String, Value>, Option<Then>)>,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    let incident = conn.incident(id).await?.ok_or_else(|| Error::NotFound {
        what: "incident",
        id: id.to_owned(),
    })?;
    if incident.after_effect && resolve.is_none() {
        return Err(Error::IncidentNeedsResolution {
            incident: id.to_owned(),
        });
    }
    // The instance first, then its incident: the order `cancel` takes them
    // in, or on PostgreSQL a retry racing a cancellation deadlocks.
    let mut row = load(conn, &incident.instance_id).await?;
    let token = incident.token as u32;
    let wait = row.state.token(token).map(|t| &t.wait);
    let job = incident.job_id.as_deref();
    // A timer's incident (one that could not fire) leaves its wait in
    // place, and the token may move on past it: the task completed, the
    // message come. Settling it then must move nothing (a second task, a
    // second call to a system): it is closed as withdrawn.
    let stale = match (wait, job) {
        (Some(Wait::Incident { incident, .. }), _) => incident != id,
        (Some(Wait::Job { job: j } | Wait::Timer { job: j }), Some(job)) => j != job,
        (
            Some(Wait::Task { timer: Some(t), .. } | Wait::Message { timer: Some(t), .. }),
            Some(job),
        ) => t != job,
        _ => true,
    };
    let timer = !stale
        && matches!(
            wait,
            Some(Wait::Timer { .. } | Wait::Task { .. } | Wait::Message { .. })
        );
    let resolution = match (stale, &resolve) {
        (true, _) => "withdrawn",
        (false, Some(_)) => "resolved",
        (false, None) => "retried",
    };
    if !conn.close_incident(id, actor, resolution, ctx.now).await? {
        return Err(Error::IncidentNotOpen {
            incident: id.to_owned(),
        });
    }
    if stale {
        return journal_one(
            conn,
            ctx,
            &row.id,
            actor,
            "incident_withdrawn",
            &incident.node_id,
            json!({"incident": id}),
        )
        .await;
    }
    if row.status != "running" {
        return Err(Error::InstanceNotRunning {
            instance: row.id.clone(),
            status: row.status,
        });
    }
    if let (true, Some(job)) = (timer, job) {
        let stopped = StoppedTimer {
            incident: id,
            job,
            node: &incident.node_id,
        };
        return fire_stopped_timer(conn, ctx, row, stopped, actor, resolve, followups).await;
    }
    let process = ctx.processes.get(conn, row.definition_id).await?;
    // Marked on the token since this version; an incident raised before it
    // (or by an older node during a rolling upgrade) says so only in its
    // text, which `cancel` writes.
    let cancelled_child = matches!(
        row.state.token(token).map(|t| &t.wait),
        Some(Wait::Incident {
            cancelled_child: Some(_),
            ..
        })
    ) || (incident.message.starts_with(CANCELLED_CHILD)
        && matches!(
            process.definition.node(&incident.node_id).map(|n| &n.kind),
            Some(NodeKind::Call(_))
        ));
    let meta = InstanceMeta::from(&row);
    let mut state = row.state.clone();
    let mut m = Machine::new(&process, &meta, &mut state, ctx.now);
    // After its effect, a step must not run again; a job's failure or a
    // cancelled child is settled by going on; anything else (an input that
    // could not be computed, a child that could not start) by running the
    // step again with the variables written.
    let goes_on_by_default = incident.job_id.is_some() || incident.after_effect || cancelled_child;
    // A business error whose route's `set` failed: going on takes its route.
    let route = match row.state.token(token).map(|t| &t.wait) {
        Some(Wait::Incident {
            route: Some(code), ..
        }) => match process.definition.node(&incident.node_id).map(|n| &n.kind) {
            Some(NodeKind::ServiceTask(s)) => s.errors.iter().find(|r| &r.error == code),
            _ => None,
        },
        _ => None,
    };
    // What a token can go on past: a step with a `next` of its own. A gate
    // (or a task, a start) decides where the request goes; it is run again.
    let passable = matches!(
        process.definition.node(&incident.node_id).map(|n| &n.kind),
        Some(
            NodeKind::ServiceTask(_)
                | NodeKind::Call(_)
                | NodeKind::MessageWait(_)
                | NodeKind::TimerWait(_)
        )
    );
    let resolve = match resolve {
        Some((_, Some(Then::RunAgain))) if incident.after_effect => {
            return Err(Error::IncidentNeedsResolution {
                incident: id.to_owned(),
            });
        }
        Some((_, Some(Then::GoOn))) if !passable => {
            return Err(Error::InvalidData {
                errors: vec![crate::runtime::forms::FieldError {
                    field: "then".to_owned(),
                    message: "this step decides where the request goes and cannot be gone past; \
                              resolve with `run_again`"
                        .to_owned(),
                }],
            });
        }
        Some((vars, then)) => Some((
            vars,
            passable && then.map_or(goes_on_by_default, |t| t == Then::GoOn),
        )),
        None => None,
    };
    // The history says what was done, not only what was asked.
    m.note(
        if resolve.is_some() {
            "incident_resolved"
        } else {
            "incident_retried"
        },
        Some(&incident.node_id),
        json!({
            "incident": id,
            "variables": resolve.as_ref().map(|(v, _)| v),
            "then": resolve.as_ref().map(|(_, go_on)| if *go_on { Then::GoOn } else { Then::RunAgain }),
        }),
    );
    if let Some((vars, go_on)) = &resolve {
        let errors = resolution_errors(
            &process,
            &Resolution {
                node: &incident.node_id,
                route,
                vars,
                go_on: *go_on,
            },
        );
        if !errors.is_empty() {
            return Err(Error::InvalidData { errors });
        }
    }
    match (&incident.job_id, resolve) {
        (Some(job), None) => {
            // Only a job stopped at its incident runs again. Should it have
            // left that state some other way, closing the incident would
            // leave the token waiting on a job that never runs.
            if !conn.revive_job(job, ctx.now).await? {
                return Err(Error::IncidentJobGone {
                    incident: id.to_owned(),
                });
            }
            ctx.scheduled
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        (Some(job), Some((vars, true))) => {
            conn.cancel_job(job).await?;
            m.write(&vars);
            let next = match process.definition.node(&incident.node_id).map(|n| &n.kind) {
                Some(NodeKind::ServiceTask(s)) => s.next.clone(),
                _ => incident.node_id.clone(),
            };
            m.go(token, &next)?;
        }
        // The step again: a new job, its input computed anew. A call that
        // timed out or lost its answer may have taken effect, so the same
        // input goes with the same idempotency key (the system answers
        // what it did the first time instead of doing it twice); an input
        // the operator changed is a new request, with a new key.
        (Some(job), Some((vars, false))) => {
            let before = conn.job_request(job).await?;
            conn.cancel_job(job).await?;
            m.write(&vars);
            m.rerun(token)?;
            if let Some(before) = before {
                for effect in &mut m.effects {
                    if let Effect::CreateJob(new) = effect
                        && new.token == token
                        && let JobKind::Service { input, .. } = &new.kind
                        && before.input.as_deref()
                            == Some(Value::Object(input.clone()).to_string().as_str())
                    {
                        new.key = Some(before.idempotency_key.clone());
                    }
                }
            }
        }
        // A call's child ran and was cancelled: resolving means the
        // operator supplies what the child should have returned, and the
        // token goes on. Running the call again would start a second child
        // (a second installation order); that is what retry is for. A child
        // that never started leaves nothing to stand for: resolving fixes
        // the input and runs the call again (below).
        (None, Some((vars, true))) => {
            // The step took effect; the operator supplies what it should have written.
            m.write(&vars);
            let next = match process.definition.node(&incident.node_id).map(|n| &n.kind) {
                Some(NodeKind::ServiceTask(s)) => Some(route.map_or(&s.next, |r| &r.next).clone()),
                Some(NodeKind::Call(c)) => Some(c.next.clone()),
                Some(NodeKind::MessageWait(w)) => Some(w.next.clone()),
                Some(NodeKind::TimerWait(t)) => Some(t.next.clone()),
                _ => None,
            };
            match next {
                Some(next) => m.go(token, &next)?,
                None => m.rerun(token)?,
            }
        }
        (None, vars) => {
            if let Some((vars, _)) = vars {
                m.write(&vars);
            }
            m.rerun(token)?;
        }
    }
    let effects = std::mem::take(&mut m.effects);
    row.state = state;
    save(conn, ctx, Change::of(row, effects, actor), followups).await
}

/// A timer's incident, and where it stopped.
struct StoppedTimer<'a> {
    incident: &'a str,
    job: &'a str,
    node: &'a str,
}

/// Settles the incident of a timer that could not fire by firing it now,
/// whether retried or resolved: the firing does what the wait calls for
/// (the escalation, the timeout's path, the step after the wait). Going on
/// past the wait, or running it again, would leave what it waited on (the
/// task, the subscription) behind it, and start a timer wait's time over.
async fn fire_stopped_timer(
    conn: &mut impl Tx,
    ctx: &Ctx<'_>,
    mut row: InstanceRow,
    StoppedTimer {
        incident,
        job,
        node,
    }: StoppedTimer<'_>,
    actor: &str,
    resolve: Option<(Map<String, Value>, Option<Then>)>,
    followups: &mut VecDeque<Followup>,
) -> Result<(), Error> {
    if let Some((vars, _)) = &resolve
        && !vars.is_empty()
    {
        return Err(Error::InvalidData {
            errors: vec![crate::runtime::forms::FieldError {
                field: "variables".to_owned(),
                message: "a timer that could not fire is settled by firing it, which writes \
                          no variables; resolve with none"
                    .to_owned(),
            }],
        });
    }
    if !conn.revive_job(job, ctx.now).await? {
        return Err(Error::IncidentJobGone {
            incident: incident.to_owned(),
        });
    }
    ctx.scheduled
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let process = ctx.processes.get(conn, row.definition_id).await?;
    let meta = InstanceMeta::from(&row);
    let mut state = row.state.clone();
    let mut m = Machine::new(&process, &meta, &mut state, ctx.now);
    m.note(
        if resolve.is_some() {
            "incident_resolved"
        } else {
            "incident_retried"
        },
        Some(node),
        json!({"incident": incident, "then": "fire"}),
    );
    let effects = std::mem::take(&mut m.effects);
    row.state = state;
    save(conn, ctx, Change::of(row, effects, actor), followups).await
}

/// What is deployed when a deploy begins: the latest version of each code.
struct DeployedNow<'a> {
    /// Of the codes not being deployed.
    others: &'a [crate::library::SourceFile],
    /// Of the codes being deployed (their versions until now).
    replaced: &'a [crate::library::SourceFile],
}

/// The deployed procedures that call one being deployed and that the new
/// version would break: a start field the call does not give, a channel
/// taken away, an output renamed. Every instance of the caller would stop
/// with an incident at its call; the deploy is refused instead, naming the
/// caller's lines. Only what the new versions break is reported (what was
/// already wrong with a caller is not this deploy's).
fn broken_callers(
    files: &[crate::library::SourceFile],
    deployed: &DeployedNow<'_>,
    deploying: &std::collections::HashSet<String>,
    catalog: &crate::catalog::Catalog,
) -> Vec<crate::diagnostic::Diagnostics> {
    use crate::library::SourceFile;
    let (callers, others): (Vec<SourceFile>, Vec<SourceFile>) =
        deployed.others.iter().cloned().partition(|f| {
            crate::loader::parse(&f.text)
                .definition
                .nodes
                .iter()
                .any(|n| matches!(&n.kind, NodeKind::Call(c) if deploying.contains(&c.procedure)))
        });
    if callers.is_empty() {
        return Vec::new();
    }
    let with_new: Vec<SourceFile> = files.iter().chain(&others).cloned().collect();
    let with_old: Vec<SourceFile> = deployed.replaced.iter().chain(&others).cloned().collect();
    let mut out = new_problems(&callers, &with_old, &with_new, catalog);
    for broken in &mut out {
        broken.file = format!(
            "{} (deployed; calls a procedure being deployed)",
            broken.file
        );
    }
    out
}

/// A version no new instance starts from: an older one, or the latest of a
/// code being deployed.
struct Serving {
    code: String,
    version: i64,
    file: crate::library::SourceFile,
}

/// The versions already serving whose running instances the new versions
/// would stop at a call they have yet to reach (a start field the old
/// call does not give, an output it reads renamed). Instances past their
/// call, or waiting on the child it started, are not affected: a version
/// whose instances are all there does not hold the deploy back.
async fn broken_running(
    conn: &mut impl Tx,
    files: &[crate::library::SourceFile],
    deployed: &DeployedNow<'_>,
    serving: &[Serving],
    deploying: &std::collections::HashSet<String>,
    catalog: &crate::catalog::Catalog,
) -> Result<Vec<crate::diagnostic::Diagnostics>, Error> {
    let with_new: Vec<_> = files.iter().chain(deployed.others).cloned().collect();
    let with_old: Vec<_> = deployed
        .replaced
        .iter()
        .chain(deployed.others)
        .cloned()
        .collect();
    let mut out = Vec::new();
    for s in serving {
        let definition = crate::loader::parse(&s.file.text).definition;
        let calls: Vec<&str> = definition
            .nodes
            .iter()
            .filter(|n| matches!(&n.kind, NodeKind::Call(c) if deploying.contains(&c.procedure)))
            .map(|n| n.id.as_str())
            .collect();
        if calls.is_empty() {
            continue;
        }
        let broken = new_problems(std::slice::from_ref(&s.file), &with_old, &with_new, catalog);
        if broken.is_empty() {
            continue;
        }
        let (nodes, unless_called) = still_calling(&definition, &calls);
        let running = conn
            .still_to_reach(&crate::store::instances::StillToReach {
                code: &s.code,
                version: s.version,
                nodes: &nodes,
                unless_called: &unless_called,
            })
            .await?;
        if running == 0 {
            continue;
        }
        for mut d in broken {
            d.file = format!(
                "{} (version {} of {}: {running} running instance(s) have yet to reach its call)",
                d.file, s.version, s.code
            );
            out.push(d);
        }
    }
    Ok(out)
}

/// Where a token still has `calls` ahead of it: the nodes some path leads
/// from to one of them, and apart, the calls no path leaves and comes back
/// to a call by — a token waiting on the child it called there has passed.
fn still_calling(
    definition: &crate::definition::Definition,
    calls: &[&str],
) -> (Vec<String>, Vec<String>) {
    let next = definition.successors();
    let mut before: Vec<Vec<usize>> = vec![Vec::new(); next.len()];
    for (from, edges) in next.iter().enumerate() {
        for e in edges {
            before[e.to].push(from);
        }
    }
    let mut reaches = vec![false; next.len()];
    let mut queue: VecDeque<usize> = definition
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| calls.contains(&n.id.as_str()))
        .map(|(i, _)| i)
        .collect();
    while let Some(n) = queue.pop_front() {
        if !std::mem::replace(&mut reaches[n], true) {
            queue.extend(&before[n]);
        }
    }
    let (mut nodes, mut unless_called) = (Vec::new(), Vec::new());
    for (i, n) in definition.nodes.iter().enumerate() {
        if !reaches[i] {
            continue;
        }
        let is_call = calls.contains(&n.id.as_str());
        if is_call && !next[i].iter().any(|e| reaches[e.to]) {
            unless_called.push(n.id.clone());
        } else {
            nodes.push(n.id.clone());
        }
    }
    (nodes, unless_called)
}

/// What compiling `callers` against `with_new` reports that compiling them
/// against `with_old` did not: only what the new versions break.
fn new_problems(
    callers: &[crate::library::SourceFile],
    with_old: &[crate::library::SourceFile],
    with_new: &[crate::library::SourceFile],
    catalog: &crate::catalog::Catalog,
) -> Vec<crate::diagnostic::Diagnostics> {
    use crate::library;
    let before = library::compile(callers, with_old, catalog);
    let after = library::compile(callers, with_new, catalog);
    let mut out = Vec::new();
    for ((_, before), (_, after)) in before.into_iter().zip(after) {
        let Err(mut broken) = after else { continue };
        // Each problem already there accounts for one of the same kind at
        // the same place (several missing inputs share the call's line).
        let mut known = before.err().map(|d| d.items).unwrap_or_default();
        broken.items.retain(|d| {
            match known
                .iter()
                .position(|k| k.code == d.code && k.pos == d.pos)
            {
                Some(i) => {
                    known.swap_remove(i);
                    false
                }
                None => true,
            }
        });
        if !broken.items.is_empty() {
            out.push(broken);
        }
    }
    out
}

/// An operator's resolution of an incident, as [`resolution_errors`]
/// checks it.
struct Resolution<'a> {
    /// The incident's step.
    node: &'a str,
    /// After a system's refusal whose route's `set` failed: that route.
    route: Option<&'a crate::definition::ErrorRoute>,
    /// The variables given.
    vars: &'a Map<String, Value>,
    /// Going on past the step (else running it again).
    go_on: bool,
}

/// What is wrong with an operator's variables: each must be a variable the
/// procedure declares, of its type; and going on past a service task or a
/// call stands in for its result, so every variable its `output` (or, after
/// a business error, its route's `set`; past a message wait, its `store`)
/// would have written must be given —
/// else the steps after it read nothing, and the instance stops again at
/// the next gate.
fn resolution_errors(
    process: &Process,
    &Resolution {
        node,
        route,
        vars,
        go_on,
    }: &Resolution<'_>,
) -> Vec<crate::runtime::forms::FieldError> {
    use crate::definition::Field;
    use crate::runtime::forms::{FieldError, Form};
    let declared = &process.definition.variables;
    let outputs: Vec<&str> = match (go_on, process.definition.node(node).map(|n| &n.kind)) {
        (true, Some(NodeKind::ServiceTask(s))) => route
            .map_or(&s.output, |r| &r.set)
            .keys()
            .map(String::as_str)
            .collect(),
        (true, Some(NodeKind::Call(c))) => c.output.keys().map(String::as_str).collect(),
        // A message's `store` that failed: the message did come.
        (true, Some(NodeKind::MessageWait(w))) => w.store.keys().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    let mut errors: Vec<FieldError> = vars
        .keys()
        .filter(|name| !declared.iter().any(|v| v.name == **name))
        .map(|name| FieldError {
            field: name.clone(),
            message: format!("is not a variable of {}", process.definition.code),
        })
        .collect();
    // Given, though it may be null: a result can be empty (a child's
    // variable it never wrote reads as null).
    errors.extend(
        outputs
            .iter()
            .filter(|name| !vars.contains_key(**name))
            .map(|name| FieldError {
                field: (*name).to_owned(),
                message: "this field is required".to_owned(),
            }),
    );
    let fields: Vec<Field> = declared
        .iter()
        .map(|v| Field {
            name: v.name.clone(),
            ty: v.ty,
            label: None,
            hint: None,
            required: false,
            pattern: None,
            options: Vec::new(),
            min: None,
            max: None,
            min_length: None,
            max_length: None,
            default: None,
        })
        .collect();
    let known: Map<String, Value> = vars
        .iter()
        .filter(|(name, _)| declared.iter().any(|v| v.name == **name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match Form::new(&fields) {
        Ok(form) => errors.extend(form.check(&Value::Object(known))),
        // Declared types always compile; never let unchecked data through.
        Err(_) => errors.push(FieldError {
            field: String::new(),
            message: "the procedure's variables cannot be checked".to_owned(),
        }),
    }
    errors
}

/// What a resolved incident's token does after the operator's variables are
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    /// Past the step, as if it had succeeded (the default after a job's
    /// failure, a cancelled child, or a step that took effect). Only a step
    /// with one way on has a past: a service task, a call, a message wait,
    /// a timer; elsewhere (a gate) it is refused, and the step runs again.
    GoOn,
    /// The step again, with the variables written (the default for an
    /// input that could not be computed or a child that could not start);
    /// refused after the step took effect.
    RunAgain,
}

/// How the incident of a parent whose waited-for child was cancelled begins.
const CANCELLED_CHILD: &str = "called instance ";

/// The reason a child cancelled with its parent records.
fn parent_cancelled(parent: &str) -> String {
    format!("parent `{parent}` was cancelled")
}

/// The parent a cancellation's `reason` names, if it is the one a child
/// cancelled with its parent records (for pages that word it themselves).
pub fn cancelled_with_parent(reason: &str) -> Option<&str> {
    reason
        .strip_prefix("parent `")
        .and_then(|r| r.strip_suffix("` was cancelled"))
}

/// How much earlier than its instance's start a kept message may have
/// arrived and still be the instance's: engine nodes stamp with their own
/// clocks, and a client's message sent just after the start must not be
/// lost to a node whose clock runs a little behind. A message left from an
/// earlier request is days older.
const MESSAGE_CLOCK_SLACK_MS: i64 = 60_000;

/// The errors a command's storage can produce, for the writer's retry logic.
pub fn is_retryable(e: &Error) -> bool {
    matches!(e, Error::Concurrent { .. })
        || matches!(e, Error::Store(store::Error::Database(sqlx::Error::Database(d))) if d.code().is_some_and(|c| c == "40001" || c == "40P01"))
}
