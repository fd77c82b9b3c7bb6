//! Scenario tests for process owners: run a definition against scripted
//! connector answers, task completions, messages and a virtual clock, on a
//! throwaway database, and check the path taken, the end and variables.
//!
//! A scenario is YAML (see `docs/scenarios.md`):
//!
//! ```yaml
//! scenario: Venta concretada
//! procedure: OPE-SUM-VEN-P06
//! start: {channel: ivr, data: {telefono: "72345678"}}
//! answers:
//!   naf.check_portfolio:
//!     - result: {found: true, member: true, has_impediment: false, impediments: [], debt_bs: 0.0}
//! steps:
//!   - complete: recibir_llamada
//!     outcome: atendida
//!   - wait: 49h
//! expect:
//!   end: venta_concretada
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::Error;
use crate::catalog::{Catalog, OperationSpec};
use crate::duration::Duration;
use crate::runtime::clock::{Clock, ManualClock};
use crate::runtime::connector::{BoxFuture, Connector, ConnectorCall, ConnectorError, Connectors};
use crate::runtime::{CompleteTask, Engine, EngineConfig, PublishMessage, StartInstance};
use crate::store::tasks::Filter;
use crate::text::Text;

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it shows.
    pub scenario: Text,
    /// The procedure's code.
    pub procedure: String,
    /// How the instance starts.
    pub start: Start,
    /// Scripted answers per `connector.operation`, used in order.
    #[serde(default)]
    pub answers: BTreeMap<String, Vec<Answer>>,
    /// What happens, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// What must hold at the end.
    pub expect: Expect,
}

/// The start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// Channel.
    pub channel: String,
    /// Start data.
    #[serde(default)]
    pub data: Map<String, Value>,
}

/// One scripted answer of an operation: exactly one of `result`,
/// `business`, `transient` or `refused`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// The operation's result.
    #[serde(default)]
    pub result: Option<Map<String, Value>>,
    /// A named business error.
    #[serde(default)]
    pub business: Option<BusinessAnswer>,
    /// A transient failure (timeout, refused, 5xx), with its message.
    #[serde(default)]
    pub transient: Option<String>,
    /// Beside `transient`: the system asked to be called again no sooner
    /// than this (HTTP `Retry-After`, as a throttled or closing system
    /// answers); the engine waits it when it is longer than the step's
    /// backoff, up to an hour.
    #[serde(default)]
    pub retry_after: Option<crate::duration::Duration>,
    /// A refusal (HTTP 400, 401, 403, 404…), with its message: the step
    /// stops with an incident at once, its attempts left unused.
    #[serde(default)]
    pub refused: Option<String>,
}

/// A scripted business error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessAnswer {
    /// Its code, as the catalog declares it.
    pub code: String,
    /// Its message.
    #[serde(default)]
    pub message: String,
}

/// One step. Exactly one of `complete`, `message`, `wait` or `retry`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Complete the open task at this node (of the instance or of a
    /// procedure it called).
    #[serde(default)]
    pub complete: Option<String>,
    /// With this outcome.
    #[serde(default)]
    pub outcome: Option<String>,
    /// And this form data.
    #[serde(default)]
    pub data: Map<String, Value>,
    /// Publish a message.
    #[serde(default)]
    pub message: Option<MessageStep>,
    /// Move the clock.
    #[serde(default)]
    pub wait: Option<Duration>,
    /// Retry the open incident at this node (of the instance or of a
    /// procedure it called), as an operator would once its cause is fixed.
    #[serde(default)]
    pub retry: Option<String>,
}

/// A message to publish.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageStep {
    /// Name.
    pub name: String,
    /// Correlation key.
    pub key: String,
    /// Payload.
    #[serde(default)]
    pub payload: Value,
    /// Message id (generated when absent).
    #[serde(default)]
    pub id: Option<String>,
}

/// What must hold at the end.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The nodes the instance went through, in order.
    #[serde(default)]
    pub path: Option<Vec<String>>,
    /// The end's outcome; `running` if it must still wait.
    pub end: String,
    /// Variables and their values.
    #[serde(default)]
    pub variables: Map<String, Value>,
    /// How many incidents are open at the end, on the instance and the
    /// procedures it called (0 unless given).
    #[serde(default)]
    pub incidents: usize,
}

/// The outcome of one scenario.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's title.
    pub name: String,
    /// What did not hold; empty when it passed.
    pub failures: Vec<String>,
    /// The path taken.
    pub path: Vec<String>,
}

impl Report {
    /// Whether everything held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Answers connector calls from the script.
struct Script {
    answers: Mutex<HashMap<String, VecDeque<Answer>>>,
}

struct Scripted {
    name: String,
    script: Arc<Script>,
}

impl Connector for Scripted {
    fn call<'a>(
        &'a self,
        call: ConnectorCall<'a>,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ConnectorError>> {
        let key = format!("{}.{}", self.name, call.operation);
        let next = self
            .script
            .answers
            .lock()
            .expect("script lock")
            .get_mut(&key)
            .and_then(VecDeque::pop_front);
        Box::pin(async move {
            match next {
                Some(Answer {
                    result: Some(r),
                    business: None,
                    transient: None,
                    retry_after: None,
                    refused: None,
                }) => Ok(r),
                Some(Answer {
                    result: None,
                    business: Some(b),
                    transient: None,
                    retry_after: None,
                    refused: None,
                }) => Err(ConnectorError::Business {
                    code: b.code,
                    message: b.message,
                }),
                Some(Answer {
                    result: None,
                    business: None,
                    transient: Some(message),
                    retry_after,
                    refused: None,
                }) => Err(ConnectorError::Transient {
                    message,
                    retry_after: retry_after.map(|d| d.as_std()),
                }),
                Some(Answer {
                    result: None,
                    business: None,
                    transient: None,
                    retry_after: None,
                    refused: Some(message),
                }) => Err(ConnectorError::Refused { message }),
                Some(_) => Err(ConnectorError::transient(format!(
                    "an answer for `{key}` needs exactly one of `result`, `business`, `transient`, `refused` (and `retry_after` only beside `transient`)"
                ))),
                None => Err(ConnectorError::transient(format!(
                    "the scenario has no (more) answers for `{key}`"
                ))),
            }
        })
    }
}

/// Journal kinds that mean "the token entered this node".
const ENTERED: [&str; 10] = [
    "instance_started",
    "gate_passed",
    "forked",
    "joined",
    "task_created",
    "job_created",
    "message_awaited",
    "timer_scheduled",
    "child_started",
    "end_reached",
];

/// Runs `scenario` against `definitions` (`(file name, source)`) on a fresh
/// SQLite database under `dir`.
pub async fn run(
    scenario: &Scenario,
    definitions: &[(String, String)],
    catalog: &Catalog,
    dir: &std::path::Path,
) -> Result<Report, Error> {
    // A malformed answer would read as a transient failure, be retried
    // with the next answer, and the run would pass on an answer its author
    // did not mean: the scenario is refused before it runs.
    let mut malformed = malformed_answers(scenario);
    malformed.extend(answers_off_the_catalog(scenario, catalog));
    if !malformed.is_empty() {
        return Ok(Report {
            name: scenario.scenario.es.clone(),
            failures: malformed,
            path: Vec::new(),
        });
    }
    let script = Arc::new(Script {
        answers: Mutex::new(
            scenario
                .answers
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                .collect(),
        ),
    });
    let mut connectors = Connectors::new();
    for c in catalog.connectors() {
        connectors = connectors.with(
            &c.name,
            Arc::new(Scripted {
                name: c.name.clone(),
                script: Arc::clone(&script),
            }),
        );
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let clock = Arc::new(ManualClock::new(1_795_784_400_000));
    let mut config = EngineConfig::new(format!("sqlite://{}/scenario.db", dir.display()));
    config.catalog = catalog.clone();
    config.connectors = connectors;
    config.clock = Arc::clone(&clock) as Arc<dyn crate::runtime::clock::Clock>;
    let engine = Engine::open(config).await?;
    let result = drive(&engine, &clock, scenario, definitions)
        .await
        .map(|mut report| {
            // Answers left after a step broke the run off say nothing new.
            let broke_off = report
                .failures
                .iter()
                .any(|f| f.starts_with("step ") || f.starts_with("start:"));
            if !broke_off {
                report.failures.extend(unused_answers(&script, catalog));
            }
            report
                .failures
                .splice(0..0, unknown_answers(scenario, catalog));
            report
        });
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    result
}

/// The operation of the catalog that `key` (`connector.operation`) names.
fn operation_of<'a>(catalog: &'a Catalog, key: &str) -> Option<&'a OperationSpec> {
    let (connector, operation) = key.split_once('.').unwrap_or((key, ""));
    catalog.operation(connector, operation)
}

/// Scripted answers for an operation the catalog does not have: a misspelt
/// key would otherwise only show as a call without answers.
fn unknown_answers(scenario: &Scenario, catalog: &Catalog) -> Vec<String> {
    let known: Vec<String> = catalog
        .connectors()
        .flat_map(|c| {
            c.operations
                .iter()
                .map(move |o| format!("{}.{}", c.name, o.name))
        })
        .collect();
    scenario
        .answers
        .keys()
        .filter(|key| operation_of(catalog, key).is_none())
        .map(|key| {
            format!(
                "answers: `{key}` is not an operation of the catalog (known: {})",
                known.join(", ")
            )
        })
        .collect()
}

/// Scripted answers that are no answer: not exactly one of `result`,
/// `business`, `transient`, `refused`, or a `retry_after` beside anything but
/// `transient`; one line each, with its place in its operation's list.
fn malformed_answers(scenario: &Scenario) -> Vec<String> {
    let mut out = Vec::new();
    for (key, answers) in &scenario.answers {
        for (i, a) in answers.iter().enumerate() {
            let given = [
                a.result.is_some(),
                a.business.is_some(),
                a.transient.is_some(),
                a.refused.is_some(),
            ]
            .into_iter()
            .filter(|g| *g)
            .count();
            let problem = if given != 1 {
                "needs exactly one of `result`, `business`, `transient`, `refused`"
            } else if a.retry_after.is_some() && a.transient.is_none() {
                "has `retry_after`, which goes only beside `transient`"
            } else {
                continue;
            };
            out.push(format!("answers: `{key}` answer {} {problem}", i + 1));
        }
    }
    out
}

/// Scripted answers no system could give, by its catalog: a result without
/// an output the system always returns, with one it does not have, or with
/// a value of the wrong type; a business error the operation does not
/// raise. Run, such an answer would pass a scenario that the real system
/// can never play out (or fail it with an incident far from the mistake).
fn answers_off_the_catalog(scenario: &Scenario, catalog: &Catalog) -> Vec<String> {
    let mut out = Vec::new();
    for (key, answers) in &scenario.answers {
        let Some(op) = operation_of(catalog, key) else {
            continue; // reported as an unknown operation
        };
        let outputs: Vec<&str> = op.outputs.iter().map(|p| p.name.as_str()).collect();
        let raised: Vec<&str> = op.errors.iter().map(|e| e.name.as_str()).collect();
        for (i, a) in answers.iter().enumerate() {
            let at = format!("answers: `{key}` answer {}", i + 1);
            if let Some(result) = &a.result {
                out.extend(
                    op.result_problems(result)
                        .into_iter()
                        .map(|problem| format!("{at} {problem}")),
                );
                // A system may answer more than the catalog lists, but a
                // scripted name it does not list is a misspelt output.
                for name in result.keys() {
                    if !outputs.contains(&name.as_str()) {
                        out.push(format!(
                            "{at} returns `{name}`, which is not an output of the operation (outputs: {})",
                            outputs.join(", ")
                        ));
                    }
                }
            }
            if let Some(b) = &a.business
                && !raised.contains(&b.code.as_str())
            {
                out.push(format!(
                    "{at} is the business error `{}`, which the operation does not raise (it raises: {})",
                    b.code,
                    if raised.is_empty() {
                        "none".to_owned()
                    } else {
                        raised.join(", ")
                    }
                ));
            }
        }
    }
    out
}

/// Scripted answers no call took: the scenario expected calls that did
/// not happen (answers for an operation the catalog lacks are reported as
/// that, once).
fn unused_answers(script: &Script, catalog: &Catalog) -> Vec<String> {
    let left = script.answers.lock().expect("script lock");
    let mut keys: Vec<_> = left
        .iter()
        .filter(|(key, a)| !a.is_empty() && operation_of(catalog, key).is_some())
        .collect();
    keys.sort_by_key(|(k, _)| k.as_str());
    keys.into_iter()
        .map(|(key, answers)| {
            format!(
                "answers: {} scripted answer(s) for `{key}` were never used",
                answers.len()
            )
        })
        .collect()
}

fn report_failure(scenario: &Scenario, failure: String) -> Report {
    Report {
        name: scenario.scenario.es.clone(),
        failures: vec![failure],
        path: Vec::new(),
    }
}

async fn drive(
    engine: &Engine,
    clock: &ManualClock,
    scenario: &Scenario,
    definitions: &[(String, String)],
) -> Result<Report, Error> {
    engine.deploy(definitions.to_vec()).await?;
    let started = engine
        .start(StartInstance {
            code: scenario.procedure.clone(),
            business_key: "SCENARIO".to_owned(),
            channel: scenario.start.channel.clone(),
            data: scenario.start.data.clone(),
            actor: "scenario".to_owned(),
            request_id: None,
        })
        .await;
    let id = match started {
        Ok(id) => id,
        Err(e) => return Ok(report_failure(scenario, format!("start: {}", describe(&e)))),
    };
    let mut failures = Vec::new();
    // The messages some step of the procedures waits for: one no step
    // waits for (a misspelt name) is kept for ever, and the step that
    // published it would pass having done nothing.
    let waited: std::collections::BTreeSet<String> = definitions
        .iter()
        .flat_map(|(_, text)| crate::loader::parse(text).definition.nodes)
        .filter_map(|node| match node.kind {
            crate::definition::NodeKind::MessageWait(w) => Some(w.message),
            _ => None,
        })
        .collect();
    engine.run_due_jobs().await?;
    for (n, step) in scenario.steps.iter().enumerate() {
        let at = format!("step {}", n + 1);
        if step.complete.is_none() && (step.outcome.is_some() || !step.data.is_empty()) {
            failures.push(format!(
                "{at}: `outcome` and `data` belong to a `complete` step"
            ));
            break;
        }
        match (&step.complete, &step.message, &step.wait, &step.retry) {
            (Some(node), None, None, None) => {
                let Some(task) = open_task(engine, &id, node).await? else {
                    let mut failure = format!(
                        "{at}: no open task at `{node}`; open: {:?}",
                        open_nodes(engine, &id).await?
                    );
                    for waiting in waits(engine, &id).await? {
                        failure.push_str(&format!("; {waiting}"));
                    }
                    failures.push(failure);
                    break;
                };
                let outcome = step.outcome.clone().unwrap_or_default();
                if let Err(e) = engine
                    .complete(CompleteTask {
                        task: task.id,
                        user: "scenario".to_owned(),
                        outcome,
                        data: step.data.clone(),
                        roles: None,
                    })
                    .await
                {
                    failures.push(format!(
                        "{at}: completing `{node}` failed: {}",
                        describe(&e)
                    ));
                    break;
                }
            }
            (None, Some(m), None, None) => {
                let published = engine
                    .publish(PublishMessage {
                        name: m.name.clone(),
                        key: m.key.clone(),
                        payload: m.payload.clone(),
                        id: m
                            .id
                            .clone()
                            .unwrap_or_else(|| format!("scenario-{}", n + 1)),
                        ttl_ms: 7 * 86_400_000,
                    })
                    .await;
                match published {
                    Err(e) => {
                        failures.push(format!(
                            "{at}: publishing `{}` failed: {}",
                            m.name,
                            describe(&e)
                        ));
                        break;
                    }
                    // An id used before: the engine takes it for the
                    // provider's retry and does nothing, so the step would
                    // pass having done nothing.
                    Ok(crate::runtime::Delivery::Duplicate) => {
                        failures.push(format!(
                            "{at}: message `{}` has the id of one published before, so it did nothing (give each message its own `id`)",
                            m.name
                        ));
                        break;
                    }
                    Ok(crate::runtime::Delivery::Kept) if !waited.contains(&m.name) => {
                        failures.push(format!(
                            "{at}: no step of the procedures waits for a message `{}` (they wait \
                             for {}), so it was kept and did nothing",
                            m.name,
                            crate::validate::list(&waited)
                        ));
                        break;
                    }
                    Ok(_) => {}
                }
            }
            (None, None, None, Some(node)) => {
                let mut open = Vec::new();
                for instance in family(engine, &id).await? {
                    open.extend(engine.incidents(Some("open"), Some(&instance)).await?);
                }
                let Some(incident) = open.iter().find(|i| i.node_id == *node) else {
                    let at_nodes: Vec<&str> = open.iter().map(|i| i.node_id.as_str()).collect();
                    failures.push(format!(
                        "{at}: no open incident at `{node}`; open incidents are at {at_nodes:?}"
                    ));
                    break;
                };
                if let Err(e) = engine.retry_incident(&incident.id, "scenario").await {
                    failures.push(format!(
                        "{at}: retrying the incident at `{node}` failed: {}",
                        describe(&e)
                    ));
                    break;
                }
            }
            (None, None, Some(d), None) => {
                // Every timer comes due at its own time, in order: an
                // escalation's task is due from when it was created, not
                // from the end of the wait (`wait: 3d` fires two daily
                // escalations in a row, as production would).
                let until = clock.now() + d.as_std().as_millis() as i64;
                let mut fired = 0;
                while let Some(due) = engine.next_due_job().await?
                    && due > clock.now()
                    && due <= until
                {
                    fired += 1;
                    if fired > MAX_TIMERS_PER_WAIT {
                        break;
                    }
                    clock.set(due);
                    engine.run_due_jobs().await?;
                }
                if fired > MAX_TIMERS_PER_WAIT {
                    // The rest would all run at once at the wait's end,
                    // which is what the cap refuses: the run stops here.
                    failures.push(format!(
                        "{at}: more than {MAX_TIMERS_PER_WAIT} jobs and timers came due in one wait; split it"
                    ));
                    break;
                }
                clock.set(until);
            }
            _ => {
                failures.push(format!(
                    "{at}: a step has exactly one of `complete`, `message`, `wait`, `retry`"
                ));
                break;
            }
        }
        engine.run_due_jobs().await?;
    }
    let instance = engine.instance(&id).await?;
    let path = path_of(engine, &id).await?;
    let end = instance
        .outcome
        .clone()
        .unwrap_or_else(|| instance.status.clone());
    if end != scenario.expect.end {
        failures.push(format!(
            "end: expected `{}`, got `{end}`",
            scenario.expect.end
        ));
    }
    if let Some(expected) = &scenario.expect.path
        && *expected != path
    {
        failures.push(format!(
            "path:\n      expected: {}\n      actual:   {}",
            expected.join(" → "),
            path.join(" → ")
        ));
    }
    let process = engine.process(instance.definition_id).await?;
    for (name, want) in &scenario.expect.variables {
        if !process.declares(name) {
            failures.push(format!(
                "variable `{name}` is not declared by {}",
                scenario.procedure
            ));
            continue;
        }
        let got = instance.state.variables.get(name).unwrap_or(&Value::Null);
        if !same_value(got, want) {
            failures.push(format!("variable `{name}`: expected {want}, got {got}"));
        }
    }
    // Open incidents anywhere in the request: a call that stopped in a
    // child counts, and `end: running` does not excuse one (a step still
    // retrying and one whose retries ran out have the same path).
    // Each with its procedure: a parent and the procedure it called may
    // both have a step of one name.
    let mut open_incidents = Vec::new();
    let mut family = vec![(id.clone(), scenario.procedure.clone())];
    while let Some((member, code)) = family.pop() {
        for incident in engine.incidents(Some("open"), Some(&member)).await? {
            open_incidents.push((code.clone(), incident));
        }
        family.extend(
            engine
                .children(&member)
                .await?
                .into_iter()
                .map(|c| (c.id, c.code)),
        );
    }
    if open_incidents.len() != scenario.expect.incidents {
        let what: Vec<String> = open_incidents
            .iter()
            .map(|(code, i)| format!("{} in {code} ({})", i.node_id, i.message))
            .collect();
        failures.push(format!(
            "open incidents: expected {}, got {}{}",
            scenario.expect.incidents,
            open_incidents.len(),
            if what.is_empty() {
                String::new()
            } else {
                format!(": {}", what.join("; "))
            }
        ));
    }
    Ok(Report {
        name: scenario.scenario.es.clone(),
        failures,
        path,
    })
}

/// How many jobs and timers one `wait` step runs before it is refused.
const MAX_TIMERS_PER_WAIT: usize = 100_000;

/// Equal as JSON, numbers as numbers at any depth: `0` is `0.0` (a
/// connector's amount is a float), whole numbers compared exactly.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

fn describe(e: &Error) -> String {
    match e {
        Error::InvalidData { errors } => errors
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// The open task at `node` in the instance or in any procedure it called.
async fn open_task(
    engine: &Engine,
    root: &str,
    node: &str,
) -> Result<Option<crate::store::tasks::TaskRow>, Error> {
    for instance in family(engine, root).await? {
        let tasks = engine
            .tasks(&Filter {
                instance_id: Some(instance),
                limit: 100,
                ..Filter::default()
            })
            .await?;
        if let Some(t) = tasks.into_iter().find(|t| t.node_id == node) {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

async fn open_nodes(engine: &Engine, root: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for instance in family(engine, root).await? {
        let tasks = engine
            .tasks(&Filter {
                instance_id: Some(instance),
                limit: 100,
                ..Filter::default()
            })
            .await?;
        out.extend(tasks.into_iter().map(|t| t.node_id));
    }
    Ok(out)
}

/// Where the instance (and what it called) waits on something other than
/// a person, in words: a call failing (with its last error: a scenario's
/// missing answer says so there), a message, a time, an incident.
async fn waits(engine: &Engine, root: &str) -> Result<Vec<String>, Error> {
    use crate::runtime::state::Wait;
    let mut out = Vec::new();
    for instance in family(engine, root).await? {
        let row = engine.instance(&instance).await?;
        let history = engine.history(&instance).await?;
        for token in &row.state.tokens {
            let node = &token.node;
            let said = match &token.wait {
                Wait::Job { job } => {
                    // This job's failures, not an earlier pass's at the node.
                    let last = history.iter().rev().find(|e| {
                        e.kind == "job_failed"
                            && e.data.get("job").and_then(Value::as_str) == Some(job.as_str())
                    });
                    match last
                        .and_then(|e| e.data.get("error"))
                        .and_then(Value::as_str)
                    {
                        Some(error) => {
                            format!("waiting at `{node}` on a call that failed: {error}")
                        }
                        None => format!("waiting at `{node}` on a call"),
                    }
                }
                Wait::Message { .. } => format!("waiting at `{node}` for a message"),
                Wait::Timer { .. } => format!("waiting at `{node}` for its time"),
                Wait::Incident { .. } => format!("stopped at `{node}` by an incident"),
                Wait::Task { .. } | Wait::Call { .. } | Wait::Moving => continue,
            };
            out.push(said);
        }
    }
    Ok(out)
}

/// The instance and every instance it called, transitively.
async fn family(engine: &Engine, root: &str) -> Result<Vec<String>, Error> {
    let mut out = vec![root.to_owned()];
    let mut i = 0;
    while i < out.len() {
        for child in engine.children(&out[i]).await? {
            out.push(child.id);
        }
        i += 1;
    }
    Ok(out)
}

/// The nodes the instance entered, in order (the same node twice in a row counts once).
async fn path_of(engine: &Engine, id: &str) -> Result<Vec<String>, Error> {
    let mut path: Vec<String> = Vec::new();
    for entry in engine.history(id).await? {
        let Some(node) = entry.node_id else { continue };
        // A node that stops with an incident while it is entered (a gate's
        // condition, a service's input, a wait's key failing) records the
        // incident and nothing else: the path still goes there.
        let entered = ENTERED.contains(&entry.kind.as_str())
            || (entry.kind == "incident_raised" && entry.data["entering"] == true);
        if entered && path.last() != Some(&node) {
            path.push(node);
        }
    }
    Ok(path)
}
