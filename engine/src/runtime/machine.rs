//! The token machine: moves an instance's tokens through its graph until
//! every token waits, producing effects (tasks, jobs, subscriptions, …) for
//! the command layer to persist. Pure: no I/O, no clock of its own.

use std::collections::VecDeque;

use serde_json::{Map, Value, json};

use crate::definition::{NodeKind, RetryPolicy};
use crate::runtime::eval::{self, EvalError, Scope};
use crate::runtime::process::Process;
use crate::runtime::state::{ForkScope, InstanceState, JoinState, Token, Wait};

/// What the machine asks the store to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Open a task in an inbox.
    CreateTask {
        /// Task id.
        id: String,
        /// Token waiting on it.
        token: u32,
        /// User task node.
        node: String,
        /// Candidate role.
        role: String,
        /// Due time, ms.
        due_at: Option<i64>,
    },
    /// Withdraw an open task.
    CancelTask {
        /// Task id.
        id: String,
    },
    /// Schedule a job.
    CreateJob(NewJob),
    /// Drop a job that has not run.
    CancelJob {
        /// Job id.
        id: String,
    },
    /// Wait for a message.
    Subscribe {
        /// Subscription id.
        id: String,
        /// Token waiting.
        token: u32,
        /// Message wait node.
        node: String,
        /// Message name.
        name: String,
        /// Correlation key.
        key: String,
    },
    /// Stop waiting for a message.
    Unsubscribe {
        /// Subscription id.
        id: String,
    },
    /// Start a linked procedure.
    StartChild {
        /// The child's instance id.
        id: String,
        /// The calling token.
        token: u32,
        /// The procedure code.
        code: String,
        /// Its start data.
        input: Map<String, Value>,
        /// Whether the parent waits for it.
        wait: bool,
    },
    /// Cancel a child the parent waits for.
    CancelChild {
        /// The child's id.
        id: String,
    },
    /// Raise an incident.
    Incident {
        /// Incident id.
        id: String,
        /// Token stopped.
        token: u32,
        /// Where.
        node: String,
        /// The failing job, if any.
        job: Option<String>,
        /// What went wrong.
        message: String,
        /// Raised after the step's side effect: resolve only.
        after_effect: bool,
    },
    /// The last token ended.
    Ended {
        /// The end's outcome label.
        outcome: String,
    },
    /// A journal entry.
    Journal {
        /// What happened.
        kind: &'static str,
        /// Where.
        node: Option<String>,
        /// Data written or details.
        data: Value,
    },
}

/// A job to schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Job id (also the base of the idempotency key).
    pub id: String,
    /// Token waiting on it.
    pub token: u32,
    /// Node.
    pub node: String,
    /// What it does.
    pub kind: JobKind,
    /// When to run it, ms.
    pub run_at: i64,
    /// Attempts in all.
    pub max_attempts: u32,
    /// The idempotency key, when not the one derived from `id`: a step run
    /// again with the same input asks its system with the earlier key.
    pub key: Option<String>,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Call a connector.
    Service {
        /// Connector name.
        connector: String,
        /// Operation.
        operation: String,
        /// Evaluated input.
        input: Map<String, Value>,
    },
    /// Fire a timer.
    Timer,
}

/// The instance fields expressions read as `instance`.
#[derive(Debug, Clone)]
pub struct InstanceMeta {
    /// Instance id.
    pub id: String,
    /// Business key.
    pub business_key: String,
    /// Channel it started by.
    pub channel: String,
    /// Start time, ms.
    pub started_at: i64,
}

impl From<&crate::store::instances::InstanceRow> for InstanceMeta {
    fn from(row: &crate::store::instances::InstanceRow) -> InstanceMeta {
        InstanceMeta {
            id: row.id.clone(),
            business_key: row.business_key.clone(),
            channel: row.channel.clone(),
            started_at: row.started_at,
        }
    }
}

impl InstanceMeta {
    /// As a CEL value.
    pub fn value(&self) -> Value {
        json!({
            "id": self.id,
            "business_key": self.business_key,
            "channel": self.channel,
            "started_at": self.started_at,
        })
    }
}

/// Why the machine stopped with an error (the command is rolled back).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MachineError {
    /// The definition names a node that is not there (validation prevents it).
    #[error("node `{0}` does not exist")]
    UnknownNode(String),
    /// More steps than any sane definition takes in one command.
    #[error("more than {0} steps in one command: the instance loops without waiting")]
    Runaway(u32),
}

const MAX_STEPS: u32 = 10_000;

/// Default retry policy of a service task without one.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        backoff: crate::definition::Backoff::Exponential,
        initial_delay: "1s".parse().expect("valid"),
        max_delay: "30s".parse().expect("valid"),
        jitter: true,
    }
}

/// One run of the machine over one instance.
pub struct Machine<'a> {
    process: &'a Process,
    instance: Value,
    now: i64,
    /// The state being changed.
    pub state: &'a mut InstanceState,
    /// What to persist.
    pub effects: Vec<Effect>,
    queue: VecDeque<u32>,
    steps: u32,
}

/// Fresh ids: time-ordered UUIDs.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl<'a> Machine<'a> {
    /// A machine over `state`.
    pub fn new(
        process: &'a Process,
        meta: &'a InstanceMeta,
        state: &'a mut InstanceState,
        now: i64,
    ) -> Machine<'a> {
        Machine {
            process,
            instance: meta.value(),
            now,
            state,
            effects: Vec::new(),
            queue: VecDeque::new(),
            steps: 0,
        }
    }

    fn journal(&mut self, kind: &'static str, node: Option<&str>, data: Value) {
        self.effects.push(Effect::Journal {
            kind,
            node: node.map(str::to_owned),
            data,
        });
    }

    /// Evaluates with the instance's variables and `extra`.
    pub fn eval(
        &self,
        expr: &crate::expr::Expr,
        extra: Option<(&str, &Value)>,
    ) -> Result<Value, EvalError> {
        let declared = |n: &str| self.process.declares(n);
        eval::eval(expr, &self.scope(&declared, extra))
    }

    fn scope<'s>(
        &'s self,
        declared: &'s dyn Fn(&str) -> bool,
        extra: Option<(&'s str, &'s Value)>,
    ) -> Scope<'s> {
        Scope {
            variables: &self.state.variables,
            declared,
            instance: &self.instance,
            extra,
        }
    }

    /// Evaluates a mapping with `extra` and writes the variables.
    pub fn assign(
        &mut self,
        mapping: &crate::definition::Mapping,
        extra: Option<(&str, &Value)>,
    ) -> Result<Map<String, Value>, EvalError> {
        let declared = |n: &str| self.process.declares(n);
        let mut values = eval::mapping(mapping, &self.scope(&declared, extra))?;
        // Checked before anything is written: a value that does not fit
        // would break every step that reads the variable.
        for (k, v) in values.iter_mut() {
            let Some(var) = self.process.definition.variable(k) else {
                continue;
            };
            normalize(var.ty, v);
            if !admits(var.ty, v) {
                return Err(EvalError::WrongType {
                    expression: mapping
                        .get(k)
                        .map_or_else(String::new, |e| e.source().to_owned()),
                    variable: k.clone(),
                    declared: var.ty,
                    value: v.clone(),
                });
            }
        }
        for (k, v) in &values {
            self.state.variables.insert(k.clone(), v.clone());
        }
        Ok(values)
    }

    /// Writes variables as given (form data, start data, resolutions),
    /// checked before by their forms; a whole number for an `integer` is
    /// stored as one.
    pub fn write(&mut self, values: &Map<String, Value>) {
        for (k, v) in values {
            let mut v = v.clone();
            if let Some(var) = self.process.definition.variable(k) {
                normalize(var.ty, &mut v);
            }
            self.state.variables.insert(k.clone(), v);
        }
    }

    /// Creates the first token at the start node and runs.
    pub fn start(&mut self) -> Result<(), MachineError> {
        let (start, _) = self
            .process
            .start()
            .ok_or_else(|| MachineError::UnknownNode("start".to_owned()))?;
        let id = self.spawn(start, Vec::new(), false);
        self.queue.push_back(id);
        self.run()
    }

    fn spawn(&mut self, node: &str, scopes: Vec<ForkScope>, side: bool) -> u32 {
        let id = self.state.next_token;
        self.state.next_token += 1;
        self.state.tokens.push(Token {
            id,
            node: node.to_owned(),
            wait: Wait::Moving,
            scopes,
            side,
        });
        id
    }

    /// Moves token `id` to `next` and runs until every token waits.
    pub fn go(&mut self, id: u32, next: &str) -> Result<(), MachineError> {
        if let Some(t) = self.state.token_mut(id) {
            t.node = next.to_owned();
            t.wait = Wait::Moving;
            self.queue.push_back(id);
        }
        self.run()
    }

    /// Runs token `id` again at its current node (after an incident).
    pub fn rerun(&mut self, id: u32) -> Result<(), MachineError> {
        if let Some(t) = self.state.token_mut(id) {
            t.wait = Wait::Moving;
            self.queue.push_back(id);
        }
        self.run()
    }

    /// Starts a new token at `node` beside the others (non-interrupting escalation).
    pub fn branch(&mut self, from: u32, node: &str) -> Result<(), MachineError> {
        let id = self.side_token(from, node);
        self.queue.push_back(id);
        self.run()
    }

    /// A side token at `node`, in `from`'s forks: inside one, it is one
    /// more arrival its join must wait for.
    fn side_token(&mut self, from: u32, node: &str) -> u32 {
        let scopes = self
            .state
            .token(from)
            .map(|t| t.scopes.clone())
            .unwrap_or_default();
        if let Some(scope) = scopes.last()
            && let Some(join) = self.state.joins.get_mut(&scope.group)
        {
            join.expected += 1;
        }
        self.spawn(node, scopes, true)
    }

    /// Stops `token` with an incident as it enters `node` (a gate's
    /// condition, a step's input, a wait's key failing): nothing else says
    /// it got there, so the history's entry says so (`entering`).
    fn incident(&mut self, token: u32, node: &str, message: String) {
        self.stop(token, node, message, false, true);
    }

    /// A side token from `from` stopped at `node` with an incident, as
    /// [`Machine::branch`] would have started it there: what a
    /// non-interrupting escalation's path leaves when it could not run
    /// (the task it left open stays its agent's, and resolving the incident
    /// runs the path again, not the task).
    pub(crate) fn branch_stopped(&mut self, from: u32, node: &str, message: String) {
        let id = self.side_token(from, node);
        self.stop(id, node, message, false, true);
    }

    /// Stops `token` at `node` with an incident saying `message`;
    /// `after_effect`: the step had already acted (its system answered), so
    /// it must not simply run again.
    ///
    /// The message may quote what a system sent (a key CEL did not find),
    /// so it is kept as a system's text is: a NUL in it, which PostgreSQL
    /// refuses in text and JSON, would make the whole command fail (and a
    /// job's result would then be applied again and again with no
    /// incident), and a page of it would be copied into every view.
    pub(crate) fn raise(&mut self, token: u32, node: &str, message: String, after_effect: bool) {
        self.stop(token, node, message, after_effect, false);
    }

    /// [`Machine::raise`]; `entering`: the token stopped as it entered
    /// `node`, which nothing else in the history records.
    fn stop(
        &mut self,
        token: u32,
        node: &str,
        message: String,
        after_effect: bool,
        entering: bool,
    ) {
        let message = crate::runtime::connector::clean(message);
        let id = new_id();
        if let Some(t) = self.state.token_mut(token) {
            t.wait = Wait::Incident {
                incident: id.clone(),
                cancelled_child: None,
                route: None,
            };
        }
        self.journal(
            "incident_raised",
            Some(node),
            if entering {
                json!({"incident": id, "message": message, "entering": true})
            } else {
                json!({"incident": id, "message": message})
            },
        );
        self.effects.push(Effect::Incident {
            id,
            token,
            node: node.to_owned(),
            job: None,
            message,
            after_effect,
        });
    }

    fn timer(&mut self, token: u32, node: &str, at: i64, purpose: &str) -> String {
        let id = new_id();
        self.effects.push(Effect::CreateJob(NewJob {
            id: id.clone(),
            token,
            node: node.to_owned(),
            kind: JobKind::Timer,
            run_at: at,
            max_attempts: 1,
            key: None,
        }));
        self.journal(
            "timer_scheduled",
            Some(node),
            json!({"job": id, "at": at, "purpose": purpose}),
        );
        id
    }

    fn run(&mut self) -> Result<(), MachineError> {
        while let Some(id) = self.queue.pop_front() {
            self.advance(id)?;
        }
        Ok(())
    }

    /// Moves one token until it waits or ends.
    fn advance(&mut self, id: u32) -> Result<(), MachineError> {
        let process = self.process;
        loop {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err(MachineError::Runaway(MAX_STEPS));
            }
            let Some(token) = self.state.token(id) else {
                return Ok(());
            };
            let node_id = token.node.clone();
            let node = process
                .definition
                .node(&node_id)
                .ok_or_else(|| MachineError::UnknownNode(node_id.clone()))?;
            match &node.kind {
                NodeKind::Start(s) => self.move_to(id, &s.next),
                NodeKind::ExclusiveGate(g) => {
                    let mut target = None;
                    for (i, branch) in g.branches.iter().enumerate() {
                        let declared = |n: &str| process.declares(n);
                        match eval::condition(&branch.when, &self.scope(&declared, None)) {
                            Ok(true) => {
                                target = Some((branch.next.as_str(), Some(i)));
                                break;
                            }
                            Ok(false) => {}
                            Err(e) => {
                                self.incident(id, &node_id, e.to_string());
                                return Ok(());
                            }
                        }
                    }
                    let (next, branch) = match target {
                        Some(t) => t,
                        None => match &g.default {
                            Some(d) => (d.as_str(), None),
                            None => {
                                self.incident(
                                    id,
                                    &node_id,
                                    "no condition holds and there is no default".to_owned(),
                                );
                                return Ok(());
                            }
                        },
                    };
                    self.journal(
                        "gate_passed",
                        Some(&node_id),
                        json!({"branch": branch, "next": next}),
                    );
                    self.move_to(id, next);
                }
                NodeKind::Fork(f) => {
                    let token = self.state.remove_token(id).expect("token exists");
                    let group = format!("{}#{}", node_id, token.id);
                    self.state.joins.insert(
                        group.clone(),
                        JoinState {
                            arrived: 0,
                            expected: f.branches.len() as u32,
                            side: token.side,
                        },
                    );
                    for branch in &f.branches {
                        let mut scopes = token.scopes.clone();
                        scopes.push(ForkScope {
                            group: group.clone(),
                            join: f.join.clone(),
                        });
                        let t = self.spawn(branch, scopes, token.side);
                        self.queue.push_back(t);
                    }
                    self.journal("forked", Some(&node_id), json!({"branches": f.branches}));
                    return Ok(());
                }
                NodeKind::Join(j) => {
                    let token = self.state.remove_token(id).expect("token exists");
                    let mut scopes = token.scopes;
                    let scope = match scopes.last() {
                        Some(s) if s.join == node_id => scopes.pop().expect("last exists"),
                        // A side token passing a join not its own would run
                        // the steps after it a second time, beside the
                        // tokens the join lets through: its path ends here.
                        // (Loading now refuses such a path; this keeps
                        // versions deployed before that honest.)
                        _ if token.side => {
                            self.journal("side_path_ended", Some(&node_id), Value::Null);
                            return self.side_path_over(scopes, None);
                        }
                        // A token reaching a join outside its fork passes through.
                        _ => {
                            let t = self.spawn(&j.next, scopes, token.side);
                            self.queue.push_back(t);
                            return Ok(());
                        }
                    };
                    let (done, side) = {
                        let entry =
                            self.state
                                .joins
                                .entry(scope.group.clone())
                                .or_insert(JoinState {
                                    arrived: 0,
                                    expected: 1,
                                    side: token.side,
                                });
                        entry.arrived += 1;
                        (entry.arrived >= entry.expected, entry.side)
                    };
                    if done {
                        self.state.joins.remove(&scope.group);
                        self.journal("joined", Some(&node_id), Value::Null);
                        let t = self.spawn(&j.next, scopes, side);
                        self.queue.push_back(t);
                    }
                    return Ok(());
                }
                NodeKind::UserTask(t) => {
                    let task = new_id();
                    let due_at = t
                        .due
                        .as_ref()
                        .map(|d| self.now + d.as_std().as_millis() as i64);
                    let timer = match (due_at, &t.escalation) {
                        (Some(at), Some(_)) => Some(self.timer(id, &node_id, at, "escalation")),
                        _ => None,
                    };
                    self.effects.push(Effect::CreateTask {
                        id: task.clone(),
                        token: id,
                        node: node_id.clone(),
                        role: t.role.clone(),
                        due_at,
                    });
                    self.journal(
                        "task_created",
                        Some(&node_id),
                        json!({"task": task, "role": t.role, "due_at": due_at}),
                    );
                    self.set_wait(id, Wait::Task { task, timer });
                    return Ok(());
                }
                NodeKind::ServiceTask(s) => {
                    let input = {
                        let declared = |n: &str| process.declares(n);
                        eval::mapping(&s.input, &self.scope(&declared, None))
                    };
                    let input = match input {
                        Ok(i) => i,
                        Err(e) => {
                            self.incident(id, &node_id, e.to_string());
                            return Ok(());
                        }
                    };
                    let job = new_id();
                    let attempts = s
                        .retry
                        .as_ref()
                        .map_or(default_retry().attempts, |r| r.attempts);
                    self.journal(
                        "job_created",
                        Some(&node_id),
                        json!({"job": job, "connector": s.connector, "operation": s.operation, "input": input}),
                    );
                    self.effects.push(Effect::CreateJob(NewJob {
                        id: job.clone(),
                        token: id,
                        node: node_id.clone(),
                        kind: JobKind::Service {
                            connector: s.connector.clone(),
                            operation: s.operation.clone(),
                            input,
                        },
                        run_at: self.now,
                        max_attempts: attempts.max(1),
                        key: None,
                    }));
                    self.set_wait(id, Wait::Job { job });
                    return Ok(());
                }
                NodeKind::MessageWait(w) => {
                    let key = match self.eval(&w.correlation, None) {
                        // No message can be published under a blank key
                        // (refused as an empty id): the wait could never end.
                        Ok(Value::String(s)) if s.trim().is_empty() => {
                            self.incident(
                                id,
                                &node_id,
                                format!("correlation `{}` is empty", w.correlation.source()),
                            );
                            return Ok(());
                        }
                        Ok(Value::String(s)) => s,
                        Ok(Value::Null) => {
                            self.incident(
                                id,
                                &node_id,
                                format!("correlation `{}` is null", w.correlation.source()),
                            );
                            return Ok(());
                        }
                        Ok(other) => other.to_string(),
                        Err(e) => {
                            self.incident(id, &node_id, e.to_string());
                            return Ok(());
                        }
                    };
                    // The key is indexed: past the limit PostgreSQL refuses
                    // it and the whole command would fail; an operator can
                    // fix the variable it came from and retry.
                    if key.len() > crate::runtime::MAX_KEY_BYTES {
                        self.incident(
                            id,
                            &node_id,
                            format!(
                                "correlation `{}` is longer than {} bytes",
                                w.correlation.source(),
                                crate::runtime::MAX_KEY_BYTES
                            ),
                        );
                        return Ok(());
                    }
                    let subscription = new_id();
                    let timer = w.timeout.as_ref().map(|t| {
                        let at = self.now + t.after.as_std().as_millis() as i64;
                        self.timer(id, &node_id, at, "timeout")
                    });
                    self.effects.push(Effect::Subscribe {
                        id: subscription.clone(),
                        token: id,
                        node: node_id.clone(),
                        name: w.message.clone(),
                        key: key.clone(),
                    });
                    self.journal(
                        "message_awaited",
                        Some(&node_id),
                        json!({"message": w.message, "key": key}),
                    );
                    self.set_wait(
                        id,
                        Wait::Message {
                            subscription,
                            timer,
                        },
                    );
                    return Ok(());
                }
                NodeKind::TimerWait(t) => {
                    let at = match (&t.after, &t.at) {
                        (Some(after), _) => self.now + after.as_std().as_millis() as i64,
                        (None, Some(expr)) => match self.eval(expr, None).map(|v| timestamp_ms(&v))
                        {
                            Ok(Some(at)) => at,
                            Ok(None) => {
                                self.incident(
                                    id,
                                    &node_id,
                                    format!("`{}` is not an RFC 3339 timestamp", expr.source()),
                                );
                                return Ok(());
                            }
                            Err(e) => {
                                self.incident(id, &node_id, e.to_string());
                                return Ok(());
                            }
                        },
                        (None, None) => self.now,
                    };
                    let job = self.timer(id, &node_id, at, "timer");
                    self.set_wait(id, Wait::Timer { job });
                    return Ok(());
                }
                NodeKind::Call(c) => {
                    let input = {
                        let declared = |n: &str| process.declares(n);
                        eval::mapping(&c.input, &self.scope(&declared, None))
                    };
                    let input = match input {
                        Ok(i) => i,
                        Err(e) => {
                            self.incident(id, &node_id, e.to_string());
                            return Ok(());
                        }
                    };
                    let child = new_id();
                    self.effects.push(Effect::StartChild {
                        id: child.clone(),
                        token: id,
                        code: c.procedure.clone(),
                        input,
                        wait: c.wait,
                    });
                    self.journal(
                        "child_started",
                        Some(&node_id),
                        json!({"child": child, "procedure": c.procedure, "wait": c.wait}),
                    );
                    // Even a call that does not wait for its child's end
                    // waits for its start (a follow-up in the same
                    // transaction): a child that cannot start leaves the
                    // token here with an incident, not somewhere it has
                    // since moved on to.
                    self.set_wait(id, Wait::Call { child });
                    return Ok(());
                }
                NodeKind::End(e) => {
                    let token = self.state.remove_token(id);
                    self.journal("end_reached", Some(&node_id), json!({"outcome": e.outcome}));
                    match token {
                        Some(t) if t.side => {
                            return self.side_path_over(t.scopes, Some(&e.outcome));
                        }
                        _ => self.state.outcome = Some(e.outcome.clone()),
                    }
                    if self.state.tokens.is_empty() {
                        let outcome = self
                            .state
                            .outcome
                            .take()
                            .unwrap_or_else(|| e.outcome.clone());
                        self.effects.push(Effect::Ended { outcome });
                    }
                    return Ok(());
                }
            }
        }
    }

    /// A side token's path is over, at an `end` (`outcome`) or at a join
    /// not its own. Inside a fork its join stops waiting for it (the
    /// escalation raised the count it waits for), and goes on if every
    /// other arrival is in; an instance with no token left ends, with the
    /// outcome of its main flow's end.
    fn side_path_over(
        &mut self,
        mut scopes: Vec<ForkScope>,
        outcome: Option<&str>,
    ) -> Result<(), MachineError> {
        if let Some(scope) = scopes.pop()
            && let Some(join) = self.state.joins.get_mut(&scope.group)
        {
            join.expected = join.expected.saturating_sub(1);
            if join.arrived >= join.expected {
                let side = join.side;
                self.state.joins.remove(&scope.group);
                let next = match self.process.definition.node(&scope.join).map(|n| &n.kind) {
                    Some(NodeKind::Join(j)) => j.next.clone(),
                    _ => return Err(MachineError::UnknownNode(scope.join)),
                };
                self.journal("joined", Some(&scope.join), Value::Null);
                let t = self.spawn(&next, scopes, side);
                self.queue.push_back(t);
                return Ok(());
            }
        }
        if self.state.tokens.is_empty() {
            let outcome = match (self.state.outcome.take(), outcome) {
                (Some(o), _) => o,
                (None, Some(o)) => o.to_owned(),
                // Only a side token was left and it ended at a join: the
                // main flow's end already recorded its outcome, so this
                // is unreachable in practice; the join's id is no outcome.
                (None, None) => String::new(),
            };
            self.effects.push(Effect::Ended { outcome });
        }
        Ok(())
    }

    fn move_to(&mut self, id: u32, next: &str) {
        if let Some(t) = self.state.token_mut(id) {
            t.node = next.to_owned();
        }
    }

    fn set_wait(&mut self, id: u32, wait: Wait) {
        if let Some(t) = self.state.token_mut(id) {
            t.wait = wait;
        }
    }

    /// Withdraws everything the instance waits on (cancellation).
    pub fn withdraw_all(&mut self) {
        let tokens = std::mem::take(&mut self.state.tokens);
        for t in tokens {
            self.withdraw(&t.wait);
        }
        self.state.joins.clear();
    }

    /// Withdraws what one wait holds open.
    pub fn withdraw(&mut self, wait: &Wait) {
        match wait {
            Wait::Moving | Wait::Incident { .. } => {}
            Wait::Task { task, timer } => {
                self.effects.push(Effect::CancelTask { id: task.clone() });
                if let Some(t) = timer {
                    self.effects.push(Effect::CancelJob { id: t.clone() });
                }
            }
            Wait::Job { job } | Wait::Timer { job } => {
                self.effects.push(Effect::CancelJob { id: job.clone() })
            }
            Wait::Message {
                subscription,
                timer,
            } => {
                self.effects.push(Effect::Unsubscribe {
                    id: subscription.clone(),
                });
                if let Some(t) = timer {
                    self.effects.push(Effect::CancelJob { id: t.clone() });
                }
            }
            Wait::Call { child } => self.effects.push(Effect::CancelChild { id: child.clone() }),
        }
    }

    /// Journals an event of the command layer.
    pub fn note(&mut self, kind: &'static str, node: Option<&str>, data: Value) {
        self.journal(kind, node, data);
    }
}

/// A part of a date or clock of at most `digits` digits, as a number: no
/// sign, no exponent, nothing else (Rust's parsers take `+5` and `1e1`).
fn number(text: &str, digits: usize) -> Option<i64> {
    (!text.is_empty() && text.len() <= digits && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Seconds, with an optional fraction (`05`, `05.250`).
fn seconds(text: &str) -> Option<f64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    number(whole, 2)?;
    if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether `value` may be stored in a variable declared `ty`, as a form
/// field of that type would accept it: null always (not yet known), a whole
/// number as an `integer`, a date as `YYYY-MM-DD`, a date and time as RFC
/// 3339.
pub fn admits(ty: crate::definition::VarType, value: &Value) -> bool {
    use crate::definition::VarType;
    match (ty, value) {
        (_, Value::Null) => true,
        (VarType::String | VarType::Text, Value::String(_)) => true,
        (VarType::Integer, Value::Number(n)) => n.is_i64() || as_whole(n).is_some(),
        (VarType::Number, Value::Number(_)) => true,
        (VarType::Boolean, Value::Bool(_)) => true,
        (VarType::Date, Value::String(s)) => {
            let mut parts = s.split('-');
            let (y, m, d) = (parts.next(), parts.next(), parts.next());
            let (Some(y), Some(m), Some(d)) = (
                y.and_then(|y| number(y, 4)),
                m.and_then(|m| number(m, 2)),
                d.and_then(|d| number(d, 2)),
            ) else {
                return false;
            };
            parts.next().is_none() && s.len() == 10 && is_day(y, m, d)
        }
        (VarType::Datetime, v) => timestamp_ms(v).is_some(),
        (VarType::List, Value::Array(_)) => true,
        (VarType::Object, Value::Object(_)) => true,
        _ => false,
    }
}

/// A whole `3.0` as the integer 3, when it fits CEL's int (a value past
/// it, or a fraction, is no integer).
fn as_whole(n: &serde_json::Number) -> Option<i64> {
    let f = n.as_f64().filter(|f| f.fract() == 0.0)?;
    // i64::MAX as f64 rounds up to 2^63, which is out of range.
    (f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

/// Stores a whole number given as `3.0` in an `integer` variable as `3`:
/// CEL adds no double to an int, so `cuotas + 1` would fail on `3.0`.
fn normalize(ty: crate::definition::VarType, value: &mut Value) {
    if ty == crate::definition::VarType::Integer
        && let Value::Number(n) = value
        && !n.is_i64()
        && let Some(whole) = as_whole(n)
    {
        *value = Value::from(whole);
    }
}

/// Whether `y-m-d` is a day of the calendar: 30 February is not (it used to
/// pass as 2 March, and a timer set for it fired on the wrong day).
fn is_day(y: i64, m: i64, d: i64) -> bool {
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let last = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=last).contains(&d)
}

/// Milliseconds since the epoch of an RFC 3339 timestamp (UTC `Z` or offset).
pub fn timestamp_ms(value: &Value) -> Option<i64> {
    let s = value.as_str()?;
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (
        number(d.next()?, 4)?,
        number(d.next()?, 2)?,
        number(d.next()?, 2)?,
    );
    let (clock, offset_minutes) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, mi) = off[1..].split_once(':')?;
        // Unsigned and bounded before any arithmetic: `-30` is no minute,
        // and a huge hour would overflow.
        let (h, mi) = (number(h, 2)?, number(mi, 2)?);
        if h > 24 || mi > 59 {
            return None;
        }
        (c, sign * (h * 60 + mi))
    };
    let mut parts = clock.splitn(3, ':');
    let h = number(parts.next()?, 2)?;
    let mi = number(parts.next()?, 2)?;
    let sec = seconds(parts.next().unwrap_or("0"))?;
    let valid = (1..=9999).contains(&y) && is_day(y, m, day);
    if !valid || h > 23 || mi > 59 || !(0.0..61.0).contains(&sec) || offset_minutes.abs() >= 24 * 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + h * 3_600 + mi * 60 - offset_minutes * 60;
    Some(seconds * 1_000 + (sec * 1_000.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tasks a run of the machine opened, by node.
    fn tasks(effects: &[Effect]) -> Vec<&str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::CreateTask { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The token waiting at `node`.
    fn at(state: &InstanceState, node: &str) -> u32 {
        state
            .tokens
            .iter()
            .find(|t| t.node == node)
            .unwrap_or_else(|| panic!("no token at {node}: {:?}", state.tokens))
            .id
    }

    /// Side tokens that reach a join not their own (a version deployed
    /// before loading refused it) end there instead of running the steps
    /// after it twice; one that ends inside its fork releases the join.
    #[test]
    fn a_side_path_never_passes_a_join_twice_nor_holds_it_forever() {
        let text = r#"
code: T-SIDE
name: Lados
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: revisar}
  - id: revisar
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Listo, next: abrir}]
  - {id: abrir, kind: fork, branches: [a, b], join: juntar}
  - {id: a, kind: user_task, role: agente, outcomes: [{id: ok, label: Ok, next: juntar}]}
  - {id: b, kind: user_task, role: agente, outcomes: [{id: ok, label: Ok, next: juntar}]}
  - {id: aviso, kind: user_task, role: agente, outcomes: [{id: ok, label: Ok, next: fin_aviso}]}
  - {id: juntar, kind: join, next: registrar}
  - {id: registrar, kind: user_task, role: agente, outcomes: [{id: ok, label: Ok, next: fin}]}
  - {id: fin, kind: end, outcome: listo}
  - {id: fin_aviso, kind: end, outcome: avisado}
"#;
        let process = Process::new(1, 1, crate::loader::parse(text).definition);
        let meta = InstanceMeta {
            id: "i".into(),
            business_key: "k".into(),
            channel: "web".into(),
            started_at: 0,
        };
        let run = |state: &mut InstanceState, step: &dyn Fn(&mut Machine<'_>)| {
            let mut m = Machine::new(&process, &meta, state, 0);
            step(&mut m);
            m.effects
        };

        // An escalation outside the fork whose path leads to its join.
        let mut state = InstanceState::default();
        run(&mut state, &|m| m.start().unwrap());
        let revisar = at(&state, "revisar");
        let effects = run(&mut state, &|m| m.branch(revisar, "juntar").unwrap());
        assert!(tasks(&effects).is_empty(), "{effects:?}");
        run(&mut state, &|m| m.go(revisar, "abrir").unwrap());
        let (a, b) = (at(&state, "a"), at(&state, "b"));
        run(&mut state, &|m| m.go(a, "juntar").unwrap());
        let effects = run(&mut state, &|m| m.go(b, "juntar").unwrap());
        assert_eq!(tasks(&effects), ["registrar"]);
        assert_eq!(state.tokens.len(), 1, "{:?}", state.tokens);

        // An escalation inside the fork whose path ends at an end of its
        // own, before and after the branches arrive.
        for side_first in [true, false] {
            let mut state = InstanceState::default();
            run(&mut state, &|m| m.start().unwrap());
            let revisar = at(&state, "revisar");
            run(&mut state, &|m| m.go(revisar, "abrir").unwrap());
            let (a, b) = (at(&state, "a"), at(&state, "b"));
            run(&mut state, &|m| m.branch(a, "aviso").unwrap());
            let aviso = at(&state, "aviso");
            let mut last = Vec::new();
            let order = if side_first {
                [(aviso, "fin_aviso"), (a, "juntar"), (b, "juntar")]
            } else {
                [(a, "juntar"), (b, "juntar"), (aviso, "fin_aviso")]
            };
            for (token, next) in order {
                last = run(&mut state, &|m| m.go(token, next).unwrap());
            }
            assert_eq!(tasks(&last), ["registrar"], "side first: {side_first}");
            assert!(state.joins.is_empty(), "{:?}", state.joins);
        }
    }

    #[test]
    fn a_variable_admits_only_values_of_its_type() {
        use crate::definition::VarType::*;
        for (ty, good, bad) in [
            (Integer, json!(7), json!(2.5)),
            (Integer, json!(7.0), json!("7")),
            (Integer, json!(-3), json!(u64::MAX)),
            (Number, json!(2.5), json!("2.5")),
            (String, json!("7"), json!(7)),
            (Text, json!("a\nb"), json!(["a"])),
            (Boolean, json!(false), json!("false")),
            (Date, json!("2026-11-27"), json!("27/11/2026")),
            (Date, json!("2026-02-28"), json!("2026-13-01")),
            (
                Datetime,
                json!("2026-11-27T10:00:00-04:00"),
                json!("2026-11-27"),
            ),
            (List, json!([]), json!({})),
            (Object, json!({"a": 1}), json!([1])),
        ] {
            assert!(admits(ty, &good), "{ty} should take {good}");
            assert!(!admits(ty, &bad), "{ty} should refuse {bad}");
            assert!(admits(ty, &Value::Null), "{ty} takes null");
        }
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(timestamp_ms(&json!("1970-01-01T00:00:00Z")), Some(0));
        assert_eq!(
            timestamp_ms(&json!("2026-11-27T14:00:00Z")),
            Some(1_795_788_000_000)
        );
        assert_eq!(
            timestamp_ms(&json!("2026-11-27T10:00:00-04:00")),
            Some(1_795_788_000_000)
        );
        assert_eq!(timestamp_ms(&json!("mañana")), None);
        // Signs, exponents and absurd offsets are no time (they read as
        // 09:30, or overflowed).
        for bad in [
            "2026-01-01T10:-30Z",
            "2026-01-01T-1:00Z",
            "2026-01-01T10:00+922337203685477580:00",
            "2026-01-01T10:00+25:00",
            "2026-01-01T10:00+04:-1",
            "2026-01-01T100:00Z",
            "2026-+1-+1T10:00:+5Z",
            "2026-01-01T10:00:1e1Z",
            "2026-01-01T10:00:05.Z",
        ] {
            assert_eq!(timestamp_ms(&json!(bad)), None, "{bad}");
        }
        // What RFC 3339 allows still reads.
        for good in [
            "2026-01-01T10:00:05.250Z",
            "2026-01-01t10:00:05z",
            "2026-01-01T10:00+05:30",
            "2026-01-01 10:00:05-04:00",
        ] {
            assert!(timestamp_ms(&json!(good)).is_some(), "{good}");
        }
        assert_eq!(
            timestamp_ms(&json!("999999999999999-01-01T00:00:00Z")),
            None
        );
    }

    /// Only days of the calendar are dates: 30 February used to pass, and
    /// a timer set for it fired on 2 March.
    #[test]
    fn a_date_is_a_day_of_the_calendar() {
        use crate::definition::VarType;
        for (date, ok) in [
            ("2026-02-28", true),
            ("2026-02-29", false),
            ("2028-02-29", true),
            ("2100-02-29", false),
            ("2000-02-29", true),
            ("2026-02-30", false),
            ("2026-04-30", true),
            ("2026-04-31", false),
            ("2026-12-31", true),
            ("2026-13-01", false),
            ("2026-01-00", false),
        ] {
            assert_eq!(admits(VarType::Date, &json!(date)), ok, "{date}");
            let at = format!("{date}T10:00:00-04:00");
            assert_eq!(timestamp_ms(&json!(at)).is_some(), ok, "{at}");
        }
        // An offset is less than a day.
        assert_eq!(timestamp_ms(&json!("2026-01-01T10:00+24:00")), None);
        assert!(timestamp_ms(&json!("2026-01-01T10:00+23:59")).is_some());
    }
}
