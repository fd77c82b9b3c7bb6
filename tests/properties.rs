//! Random sequences of commands keep the engine's invariants.
//!
//! proptest draws a sequence of what people and systems do to a few P06
//! requests and to a procedure with parallel branches — start (some starts
//! repeated with their request id), claim, unclaim, assign, complete (with
//! good data or bad; two agents at once), WhatsApp messages (early, late,
//! repeated), connector failures, incidents retried or resolved every way,
//! cancellations (of parents and of the children they wait for), time
//! passing, worker runs, a worker dying with the jobs it claimed, engine
//! restarts and crashes — and after every step checks what must always
//! hold:
//!
//! - each command has the answer its situation calls for: a claim, a
//!   completion with good data, a cancellation succeed unless another agent
//!   holds the task; bad data is `InvalidData`; nothing else is an error;
//! - an ended instance has no tokens; a running one has at least one, each
//!   at a node of its version, with distinct ids below `next_token`;
//! - every wait is backed by its row and every row by its wait: an open
//!   task, a pending job or timer, a subscription, an open incident, a
//!   running child — nothing pending for an ended instance;
//! - the history only grows, in order; an instance starts once and ends at
//!   most once, with the event its status says;
//! - no task is completed twice (the journal names each completion);
//! - Smartflex never registers one request twice.
//!
//! Then every case is driven to its end — incidents retried, tasks
//! completed, time moved on — and every instance must have ended: a token
//! stuck where nothing can move it fails the property. A failing case is
//! shrunk to a short sequence and printed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use tramite_engine::Error;
use tramite_engine::definition::{NodeKind, VarType};
use tramite_engine::runtime::commands::{Command, Reply, Then};
use tramite_engine::runtime::state::Wait;
use tramite_engine::runtime::{CompleteTask, StartInstance};
use tramite_engine::store::incidents::IncidentRow;
use tramite_engine::store::instances::{InstanceFilter, InstanceRow};
use tramite_engine::store::tasks::{Filter, TaskRow};
use tramite_tests::engine::{Db, Harness, object};

/// A procedure with parallel branches, a timer in one of them, and a loop
/// back over the fork: the shapes P06 does not have.
const PARALLEL: &str = r#"
code: T-PARALELO
name: Revisión en paralelo
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: rehacer, type: boolean}
nodes:
  - id: inicio
    kind: start
    channels: [web]
    next: dividir
  - id: dividir
    kind: fork
    branches: [revisar, esperar]
    join: unir
  - id: revisar
    kind: user_task
    role: agente
    form:
      - {name: rehacer, type: boolean, required: true}
    outcomes:
      - {id: listo, label: Listo, next: unir}
  - id: esperar
    kind: timer_wait
    after: 2h
    next: aprobar
  - id: aprobar
    kind: user_task
    role: agente
    due: 1h
    escalation:
      next: unir
    outcomes:
      - {id: aprobado, label: Aprobado, next: unir}
  - id: unir
    kind: join
    next: otra_vez
  - id: otra_vez
    kind: exclusive_gate
    branches:
      - when: rehacer == true
        next: dividir
    default: fin
  - id: fin
    kind: end
    outcome: listo
"#;

/// One thing that happens.
#[derive(Debug, Clone)]
enum Step {
    /// A call or a web lead comes in; `again` sends the last start's
    /// request once more (a channel's retry).
    Start { web: bool, again: bool },
    /// An instance of the procedure with parallel branches starts.
    StartParallel,
    /// Someone claims the `pick`-th open task.
    Claim { pick: usize, user: u8 },
    /// Someone gives a task back.
    Unclaim { pick: usize, user: u8 },
    /// A team lead gives a task to someone.
    Assign { pick: usize, user: u8 },
    /// Someone completes a task: with data that fits its form (one of
    /// its outcomes, picked by `pick`), or with data that does not.
    Complete { pick: usize, user: u8, good: bool },
    /// The client of the `pick`-th request sends the documents (`copy`
    /// picks the WhatsApp id, so some arrive twice).
    Whatsapp { pick: usize, copy: u8 },
    /// The next calls to a system fail, or succeed with their answers lost.
    Fault { system: u8, calls: u8 },
    /// An operator settles the `pick`-th open incident: retried, or
    /// resolved (going on with the step's result written, running the step
    /// again, as the incident calls for, or going on without the result —
    /// refused).
    Settle { pick: usize, how: u8 },
    /// A team lead cancels the `pick`-th running instance (a parent, or a
    /// child its parent waits for).
    Cancel { pick: usize },
    /// Two agents complete the `pick`-th open task at the same moment:
    /// exactly one of them does.
    Race { pick: usize },
    /// A worker claims the due jobs and dies with them (its results never
    /// come); the engine goes on, or is restarted after a crash. Its leases
    /// must expire (or be released) and the jobs run again, once.
    Ghost { crash: bool },
    /// The workers run what is due.
    Jobs,
    /// Time passes.
    Advance { minutes: u16 },
    /// The engine stops gracefully, or dies, and starts again.
    Restart { crash: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(web, again)| Step::Start { web, again }),
        1 => Just(Step::StartParallel),
        2 => (0..8usize, 0..3u8).prop_map(|(pick, user)| Step::Claim { pick, user }),
        1 => (0..8usize, 0..3u8).prop_map(|(pick, user)| Step::Unclaim { pick, user }),
        1 => (0..8usize, 0..3u8).prop_map(|(pick, user)| Step::Assign { pick, user }),
        16 => (0..64usize, 0..3u8, prop::bool::weighted(0.8))
            .prop_map(|(pick, user, good)| Step::Complete { pick, user, good }),
        2 => (0..8usize, 0..2u8).prop_map(|(pick, copy)| Step::Whatsapp { pick, copy }),
        2 => (0..3u8, 1..12u8).prop_map(|(system, calls)| Step::Fault { system, calls }),
        2 => (0..4usize, 0..5u8).prop_map(|(pick, how)| Step::Settle { pick, how }),
        1 => (0..8usize).prop_map(|pick| Step::Cancel { pick }),
        2 => (0..64usize).prop_map(|pick| Step::Race { pick }),
        1 => any::<bool>().prop_map(|crash| Step::Ghost { crash }),
        6 => Just(Step::Jobs),
        2 => (1..3_000u16).prop_map(|minutes| Step::Advance { minutes }),
        1 => any::<bool>().prop_map(|crash| Step::Restart { crash }),
    ]
}

const USERS: [&str; 3] = ["ana", "beto", "carla"];

/// What an agent answers at a task: an outcome and data its form accepts.
/// `pick` chooses among the outcomes (call lost, no answer, gives up, …);
/// `to_the_end` only those that lead to an end.
fn answer(node: &str, pick: usize, to_the_end: bool) -> (&'static str, Value) {
    let any = !to_the_end;
    match node {
        "recibir_llamada" if any && pick % 4 == 1 => ("llamada_perdida", json!({})),
        "devolver_llamada" | "revisar_solicitud_digital" if any && pick % 2 == 1 => {
            ("sin_respuesta", json!({}))
        }
        "devolver_llamada" | "revisar_solicitud_digital" => ("cliente_contactado", json!({})),
        "devolucion_vencida" if any && pick % 2 == 1 => ("reintentar", json!({})),
        "devolucion_vencida" => ("cerrar", json!({})),
        "identificar_cliente" if any && pick % 7 == 3 => ("cliente_desiste", json!({})),
        "identificar_cliente" | "solicitar_domicilio" if any && pick % 7 == 5 => {
            ("llamada_perdida", json!({}))
        }
        "verificar_capacidad" if any && pick % 5 == 4 => {
            ("continuar", json!({"capacidad_confirmada": false}))
        }
        "recordar_requisitos" if any && pick % 2 == 1 => ("esperar_nuevamente", json!({})),
        "recordar_requisitos" => ("cliente_desiste", json!({})),
        "imprimir_requisitos" if any && pick % 5 == 4 => {
            ("incompletos", json!({"requisitos_impresos": false}))
        }
        "seguimiento_venta" if any && pick % 6 == 5 => {
            ("instalacion_fallida", json!({"contrato_firmado": false}))
        }
        "control_calidad" if any && pick % 4 == 3 => ("sin_respuesta", json!({})),
        "informar_imposibilidad" => ("informado", json!({"motivo_rechazo": "otro"})),
        "revisar" => ("listo", json!({"rehacer": any && pick.is_multiple_of(3)})),
        "aprobar" => ("aprobado", json!({})),
        _ => tramite_tests::p06::answer(node, pick)
            .unwrap_or_else(|| panic!("the test has no answer for a task at `{node}`")),
    }
}

/// How often each thing happened over a whole run, so that a run that
/// never reached the interesting states fails instead of passing.
#[derive(Default)]
struct Reached {
    sales: AtomicUsize,
    other_ends: AtomicUsize,
    cancelled: AtomicUsize,
    loops: AtomicUsize,
    incidents: AtomicUsize,
    refused: AtomicUsize,
    races: AtomicUsize,
    orphaned_jobs: AtomicUsize,
}

/// What the test remembers between steps.
#[derive(Default)]
struct World {
    /// The P06 requests' phones, in start order.
    phones: Vec<String>,
    /// The last start's request id, data, instance and whether it came
    /// by the web (else by the IVR).
    last_start: Option<(String, Value, String, bool)>,
    /// Each instance's history as last seen: sequence numbers and kinds.
    histories: HashMap<String, Vec<(i64, String)>>,
}

async fn open_tasks(h: &Harness) -> Vec<TaskRow> {
    h.engine
        .tasks(&Filter {
            limit: 500,
            ..Filter::default()
        })
        .await
        .expect("tasks")
}

async fn instances(h: &Harness) -> Vec<InstanceRow> {
    h.engine
        .instances(&InstanceFilter {
            limit: 1_000,
            ..Default::default()
        })
        .await
        .expect("instances")
}

fn pick<T>(items: &[T], pick: usize) -> Option<&T> {
    items.get(pick % items.len().max(1))
}

/// Whether the task is held by someone other than `user`.
fn held_by_other(task: &TaskRow, user: &str) -> bool {
    task.assignee.as_deref().is_some_and(|a| a != user)
}

/// The answer a step must get, given what it found.
enum Expect {
    Ok,
    ClaimedByOther,
    InvalidData,
    /// An incident that needs a resolution (its step took effect).
    NeedsResolution,
}

async fn apply(h: &mut Harness, step: &Step, world: &mut World, reached: &Reached) {
    let (result, expect): (Result<(), Error>, Expect) = match step {
        Step::Start { web, again } => {
            if let (true, Some((request, data, instance, first_web))) = (*again, &world.last_start)
            {
                let repeat = h
                    .engine
                    .start_once(p06_start(*web, data.clone(), Some(request.clone())))
                    .await;
                // Answered to its own channel; another channel learns
                // nothing of it, and starts nothing.
                if web == first_web {
                    let (id, new) = repeat.expect("a repeated start is answered");
                    assert_eq!(
                        (&id, new),
                        (instance, false),
                        "a repeated start made another instance"
                    );
                } else {
                    assert!(
                        matches!(repeat, Err(Error::RequestIdTaken { .. })),
                        "a start from another channel with a taken request id: {repeat:?}"
                    );
                }
                return;
            }
            let phone = format!("7{:07}", 100 + world.phones.len());
            world.phones.push(phone.clone());
            let data = json!({"telefono": phone});
            let request = format!("req-{phone}");
            let (id, new) = h
                .engine
                .start_once(p06_start(*web, data.clone(), Some(request.clone())))
                .await
                .expect("a start is answered");
            assert!(new, "a new request id started nothing");
            world.last_start = Some((request, data, id, *web));
            return;
        }
        Step::StartParallel => {
            h.start("T-PARALELO", "web", json!({})).await;
            return;
        }
        Step::Claim { pick: p, user } | Step::Unclaim { pick: p, user } => {
            let tasks = open_tasks(h).await;
            let Some(t) = pick(&tasks, *p) else { return };
            let user = USERS[*user as usize];
            let expect = if held_by_other(t, user) {
                Expect::ClaimedByOther
            } else {
                Expect::Ok
            };
            let result = if matches!(step, Step::Claim { .. }) {
                h.engine.claim(&t.id, user).await
            } else {
                h.engine.unclaim(&t.id, user).await
            };
            (result, expect)
        }
        Step::Assign { pick: p, user } => {
            let tasks = open_tasks(h).await;
            let Some(t) = pick(&tasks, *p) else { return };
            (
                h.engine
                    .assign(&t.id, USERS[*user as usize], "supervisor")
                    .await,
                Expect::Ok,
            )
        }
        Step::Complete {
            pick: p,
            user,
            good,
        } => {
            let tasks = open_tasks(h).await;
            let Some(t) = pick(&tasks, *p) else { return };
            let user = USERS[*user as usize];
            let (outcome, data) = answer(&t.node_id, *p / 8, false);
            let (data, expect) = if held_by_other(t, user) {
                (data, Expect::ClaimedByOther)
            } else if *good {
                (data, Expect::Ok)
            } else {
                match wrong(&t.node_id) {
                    Some(wrong) => (wrong, Expect::InvalidData),
                    None => return,
                }
            };
            let result = h
                .engine
                .complete(CompleteTask {
                    task: t.id.clone(),
                    user: user.into(),
                    outcome: outcome.to_owned(),
                    data: object(data),
                    roles: None,
                })
                .await
                .map(drop);
            if let Err(Error::InvalidData { .. }) = &result {
                reached.refused.fetch_add(1, Ordering::Relaxed);
            }
            (result, expect)
        }
        Step::Whatsapp { pick: p, copy } => {
            if let Some(phone) = pick(&world.phones, *p) {
                h.publish(
                    "requisitos_whatsapp",
                    phone,
                    &format!("wamid.{phone}.{copy}"),
                    json!({"media": [format!("media-{copy}")]}),
                )
                .await;
            }
            return;
        }
        Step::Fault { system, calls } => {
            let faults = match system {
                0 => h.sims.naf.faults(),
                1 => h.sims.gis.faults(),
                _ => h.sims.smartflex.faults(),
            };
            if *calls % 3 == 0 {
                faults.lose_next_replies(u32::from(*calls));
            } else {
                faults.fail_next(u32::from(*calls));
            }
            return;
        }
        Step::Settle { pick: p, how } => {
            let open = h.engine.incidents(Some("open"), None).await.unwrap();
            let Some(incident) = pick(&open, *p) else {
                return;
            };
            reached.incidents.fetch_add(1, Ordering::Relaxed);
            let stand_in = stand_in(h, incident).await;
            let (vars, then) = match how {
                1 => (stand_in.clone(), Some(Then::GoOn)),
                2 => (serde_json::Map::new(), Some(Then::RunAgain)),
                3 => (stand_in.clone(), None),
                _ => (serde_json::Map::new(), Some(Then::GoOn)),
            };
            let result = if *how == 0 {
                h.engine.retry_incident(&incident.id, "operador").await
            } else {
                h.engine
                    .resolve_incident_then(&incident.id, "operador", vars, then)
                    .await
            };
            let refused_after_effect = *how == 0 || then == Some(Then::RunAgain);
            let expect = if incident.after_effect && refused_after_effect {
                Expect::NeedsResolution
            } else if *how == 4 && !stand_in.is_empty() {
                Expect::InvalidData
            } else {
                Expect::Ok
            };
            (result, expect)
        }
        Step::Cancel { pick: p } => {
            let running: Vec<InstanceRow> = instances(h)
                .await
                .into_iter()
                .filter(|i| i.status == "running")
                .collect();
            let Some(i) = pick(&running, *p) else { return };
            (
                h.engine.cancel(&i.id, "duplicada", "supervisor").await,
                Expect::Ok,
            )
        }
        Step::Race { pick: p } => {
            let tasks = open_tasks(h).await;
            let Some(t) = pick(&tasks, *p) else { return };
            if t.assignee.is_some() {
                return;
            }
            let (outcome, data) = answer(&t.node_id, *p / 8, false);
            let complete = |user: &str| {
                h.engine.complete(CompleteTask {
                    task: t.id.clone(),
                    user: user.into(),
                    outcome: outcome.to_owned(),
                    data: object(data.clone()),
                    roles: None,
                })
            };
            let (a, b) = tokio::join!(complete(USERS[0]), complete(USERS[1]));
            let done = [&a, &b].iter().filter(|r| r.is_ok()).count();
            let refused = [&a, &b]
                .iter()
                .filter(|r| matches!(r, Err(Error::TaskNotOpen { .. })))
                .count();
            assert_eq!(
                (done, refused),
                (1, 1),
                "two completions of one task: {a:?} {b:?}"
            );
            reached.races.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Step::Ghost { crash } => {
            let claimed = h
                .engine
                .submit(Command::ClaimJobs {
                    owner: "ghost".into(),
                    lease_ms: 30_000,
                    limit: 8,
                    default_timeout_ms: 10_000,
                })
                .await
                .expect("jobs claimed");
            let Reply::Jobs(jobs) = claimed else {
                panic!("{claimed:?}")
            };
            reached
                .orphaned_jobs
                .fetch_add(jobs.len(), Ordering::Relaxed);
            if *crash {
                h.crash().await;
            }
            return;
        }
        Step::Jobs => (h.engine.run_due_jobs().await.map(drop), Expect::Ok),
        Step::Advance { minutes } => {
            h.advance(Duration::from_secs(u64::from(*minutes) * 60));
            return;
        }
        Step::Restart { crash } => {
            if *crash {
                h.crash().await;
            } else {
                h.restart().await;
            }
            return;
        }
    };
    let fits = matches!(
        (&expect, &result),
        (Expect::Ok, Ok(()))
            | (
                Expect::ClaimedByOther,
                Err(Error::TaskClaimedByOther { .. })
            )
            | (Expect::InvalidData, Err(Error::InvalidData { .. }))
            | (
                Expect::NeedsResolution,
                Err(Error::IncidentNeedsResolution { .. })
            )
    );
    assert!(fits, "{step:?} answered {result:?}");
}

/// What an operator writes to stand in for the result of the incident's
/// step: a value of its type for each variable the step's output writes.
async fn stand_in(h: &Harness, incident: &IncidentRow) -> serde_json::Map<String, Value> {
    let instance = h.instance(&incident.instance_id).await;
    let process = h.engine.process(instance.definition_id).await.unwrap();
    let definition = &process.definition;
    let output = match definition.node(&incident.node_id).map(|n| &n.kind) {
        Some(NodeKind::ServiceTask(s)) => &s.output,
        Some(NodeKind::Call(c)) => &c.output,
        _ => return serde_json::Map::new(),
    };
    output
        .keys()
        .map(|name| {
            let ty = definition
                .variables
                .iter()
                .find(|v| v.name == *name)
                .map(|v| v.ty);
            let value = match ty {
                Some(VarType::Boolean) => json!(false),
                Some(VarType::Integer | VarType::Number) => json!(3),
                Some(VarType::List) => json!([]),
                Some(VarType::Object) => json!({}),
                Some(VarType::Date) => json!("2026-12-01"),
                Some(VarType::Datetime) => json!("2026-12-01T09:00:00-04:00"),
                _ => json!("a mano"),
            };
            (name.clone(), value)
        })
        .collect()
}

fn p06_start(web: bool, data: Value, request_id: Option<String>) -> StartInstance {
    StartInstance {
        code: "OPE-SUM-VEN-P06".into(),
        business_key: String::new(),
        channel: if web { "web" } else { "ivr" }.into(),
        data: object(data),
        actor: "canal".into(),
        request_id,
    }
}

/// Data the task's form must refuse, if its form has a field to get wrong.
fn wrong(node: &str) -> Option<Value> {
    Some(match node {
        "identificar_cliente" => {
            json!({"nombre_cliente": "Ana", "servicio_solicitado": "internet_fibra", "ci": "no es un CI"})
        }
        "solicitar_domicilio" => json!({"direccion": "", "zona": "Cala Cala"}),
        "verificar_capacidad" => json!({"capacidad_confirmada": "sí"}),
        "imprimir_requisitos" => json!({}),
        "comunicar_solicitud" => json!({"dias_estimados": "cinco"}),
        "seguimiento_venta" => json!({"contrato_firmado": null}),
        "control_calidad" => json!({"cliente_satisfecho": 1}),
        "informar_imposibilidad" => json!({"motivo_rechazo": "no es un motivo"}),
        "revisar" => json!({"rehacer": "no"}),
        _ => return None,
    })
}

/// Everything that must hold after any step.
async fn check(h: &Harness, world: &mut World) {
    let instances = instances(h).await;
    let by_id: HashMap<&str, &InstanceRow> = instances.iter().map(|i| (i.id.as_str(), i)).collect();
    let tasks = open_tasks(h).await;
    // What each open task, job, subscription and incident belongs to:
    // the instance, and the node its token waits at.
    let open: HashMap<&str, (&str, &str)> = tasks
        .iter()
        .map(|t| (t.id.as_str(), (t.instance_id.as_str(), t.node_id.as_str())))
        .collect();
    let pool = h.engine.store().pool();
    let job_rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT id, instance_id, node_id, status FROM jobs WHERE status IN ('ready', 'running', 'incident')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let job_places: HashMap<&str, (&str, &str)> = job_rows
        .iter()
        .map(|(j, i, n, _)| (j.as_str(), (i.as_str(), n.as_str())))
        .collect();
    let jobs: Vec<(String, String, String)> = job_rows
        .iter()
        .map(|(j, i, _, s)| (j.clone(), i.clone(), s.clone()))
        .collect();
    let subscriptions: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, instance_id, node_id FROM subscriptions")
            .fetch_all(pool)
            .await
            .unwrap();
    let incidents = h.engine.incidents(Some("open"), None).await.unwrap();

    let mut waited_tasks = HashSet::new();
    let mut waited_jobs: HashMap<String, (String, String, Wait)> = HashMap::new();
    let mut waited_subscriptions: HashMap<String, (String, String)> = HashMap::new();
    let mut waited_incidents: HashMap<String, (String, String)> = HashMap::new();
    for i in &instances {
        if i.status != "running" {
            assert!(i.state.tokens.is_empty(), "{} ended with tokens", i.id);
            continue;
        }
        assert!(!i.state.tokens.is_empty(), "{} runs with no token", i.id);
        let process = h.engine.process(i.definition_id).await.unwrap();
        let mut ids = HashSet::new();
        for token in &i.state.tokens {
            assert!(
                process.definition.node(&token.node).is_some(),
                "{}: a token at `{}`, not a node of {} v{}",
                i.id,
                token.node,
                i.code,
                i.version
            );
            assert!(
                ids.insert(token.id) && token.id < i.state.next_token,
                "{}: token id {} twice or not below {}",
                i.id,
                token.id,
                i.state.next_token
            );
            let once = match &token.wait {
                Wait::Moving => panic!("{}: a token left moving at `{}`", i.id, token.node),
                Wait::Task { task, timer } => {
                    assert_eq!(
                        open.get(task.as_str()),
                        Some(&(i.id.as_str(), token.node.as_str())),
                        "{} at `{}` waits on task {task}, which is not open there",
                        i.id,
                        token.node
                    );
                    timer.iter().all(|t| {
                        waited_jobs
                            .insert(
                                t.clone(),
                                (i.id.clone(), token.node.clone(), token.wait.clone()),
                            )
                            .is_none()
                    }) && waited_tasks.insert(task.clone())
                }
                Wait::Job { job } | Wait::Timer { job } => waited_jobs
                    .insert(
                        job.clone(),
                        (i.id.clone(), token.node.clone(), token.wait.clone()),
                    )
                    .is_none(),
                Wait::Message {
                    subscription,
                    timer,
                } => {
                    timer.iter().all(|t| {
                        waited_jobs
                            .insert(
                                t.clone(),
                                (i.id.clone(), token.node.clone(), token.wait.clone()),
                            )
                            .is_none()
                    }) && waited_subscriptions
                        .insert(subscription.clone(), (i.id.clone(), token.node.clone()))
                        .is_none()
                }
                Wait::Call { child } => {
                    let c = by_id.get(child.as_str()).unwrap_or_else(|| {
                        panic!("{} waits on child {child}, which does not exist", i.id)
                    });
                    assert_eq!(c.status, "running", "{} waits on an ended child", i.id);
                    assert_eq!(c.parent_id.as_deref(), Some(i.id.as_str()));
                    true
                }
                Wait::Incident { incident, .. } => waited_incidents
                    .insert(incident.clone(), (i.id.clone(), token.node.clone()))
                    .is_none(),
            };
            assert!(once, "{}: two waits on one row ({:?})", i.id, token.wait);
        }
        if let Some(parent) = &i.parent_id {
            let p = by_id[parent.as_str()];
            let waits = p
                .state
                .tokens
                .iter()
                .any(|t| matches!(&t.wait, Wait::Call { child } if *child == i.id));
            assert!(
                waits,
                "child {} runs; its parent {parent} does not wait on it",
                i.id
            );
        }
    }
    for t in &tasks {
        assert!(
            waited_tasks.contains(&t.id),
            "task {} at {} is open but nobody waits on it",
            t.id,
            t.node_id
        );
    }
    // A job's incident stops the job (status `incident`) with its token
    // still waiting on it; any other incident stops the token itself.
    let stopped_jobs: HashSet<&str> = jobs
        .iter()
        .filter(|(_, _, s)| s == "incident")
        .map(|(j, _, _)| j.as_str())
        .collect();
    for (job, instance, status) in &jobs {
        assert!(
            waited_jobs.contains_key(job),
            "job {job} of {instance} is {status} but nobody waits on it"
        );
    }
    let pending: HashSet<&str> = jobs.iter().map(|(j, _, _)| j.as_str()).collect();
    for (job, (instance, node, wait)) in &waited_jobs {
        let stopped_is_fine =
            matches!(wait, Wait::Job { .. }) || !stopped_jobs.contains(job.as_str());
        // The job is the one of this instance, at this node.
        if let Some(&(of, at)) = job_places.get(job.as_str()) {
            assert_eq!(
                (of, at),
                (instance.as_str(), node.as_str()),
                "{instance} at `{node}` waits on job {job}, which belongs elsewhere"
            );
        }
        if !pending.contains(job.as_str()) || !stopped_is_fine {
            let status: Option<(String, String)> =
                sqlx::query_as("SELECT status, kind FROM jobs WHERE id = $1")
                    .bind(job)
                    .fetch_optional(pool)
                    .await
                    .unwrap();
            panic!("{instance} at `{node}` waits ({wait:?}) on job {job}, which is {status:?}");
        }
    }
    let mut incident_jobs = HashSet::new();
    for incident in &incidents {
        let at_token = match waited_incidents.get(&incident.id) {
            Some((of, at)) => {
                assert_eq!(
                    (of.as_str(), at.as_str()),
                    (incident.instance_id.as_str(), incident.node_id.as_str()),
                    "incident {} is not where its token stopped",
                    incident.id
                );
                true
            }
            None => false,
        };
        let at_job = incident
            .job_id
            .as_deref()
            .is_some_and(|j| stopped_jobs.contains(j) && incident_jobs.insert(j));
        assert!(
            at_token != at_job,
            "open incident {} ({}) of {} at `{}` stops {} tokens",
            incident.id,
            incident.message,
            incident.instance_id,
            incident.node_id,
            u8::from(at_token) + u8::from(at_job)
        );
    }
    assert_eq!(
        incident_jobs, stopped_jobs,
        "jobs stopped and the open incidents about them differ"
    );
    let open_incidents: HashSet<&str> = incidents.iter().map(|i| i.id.as_str()).collect();
    for incident in waited_incidents.keys() {
        assert!(
            open_incidents.contains(incident.as_str()),
            "a token is stopped at incident {incident}, which is not open"
        );
    }
    let subscribed: HashMap<&str, (&str, &str)> = subscriptions
        .iter()
        .map(|(s, i, n)| (s.as_str(), (i.as_str(), n.as_str())))
        .collect();
    assert_eq!(
        subscribed,
        waited_subscriptions
            .iter()
            .map(|(s, (i, n))| (s.as_str(), (i.as_str(), n.as_str())))
            .collect(),
        "subscriptions and the tokens waiting for messages differ (or wait elsewhere)"
    );

    let mut completions: HashMap<String, usize> = HashMap::new();
    for i in &instances {
        let history = h.engine.history(&i.id).await.unwrap();
        let now: Vec<(i64, String)> = history.iter().map(|e| (e.seq, e.kind.clone())).collect();
        if let Some(before) = world.histories.get(&i.id) {
            assert!(
                now.starts_with(before),
                "{}: the history changed what it had said",
                i.id
            );
        }
        assert!(
            history
                .windows(2)
                .all(|w| w[0].seq < w[1].seq && w[0].at <= w[1].at),
            "{}: the history is out of order",
            i.id
        );
        let count = |kind: &str| history.iter().filter(|e| e.kind == kind).count();
        let ends = (count("instance_completed"), count("instance_cancelled"));
        assert_eq!(
            count("instance_started"),
            1,
            "{} started {} times",
            i.id,
            count("instance_started")
        );
        let expected = match i.status.as_str() {
            "running" => (0, 0),
            "completed" => (1, 0),
            "cancelled" => (0, 1),
            other => panic!("{}: status {other}", i.id),
        };
        assert_eq!(
            ends, expected,
            "{} is {} with ends {ends:?}",
            i.id, i.status
        );
        for e in &history {
            if e.kind == "task_completed"
                && let Some(task) = e.data.get("task").and_then(Value::as_str)
            {
                *completions.entry(task.to_owned()).or_default() += 1;
            }
        }
        world.histories.insert(i.id.clone(), now);
    }
    if let Some((task, n)) = completions.iter().find(|(_, n)| **n > 1) {
        panic!("task {task} completed {n} times");
    }
    let twice = tramite_connectors::sim_http::duplicate_registrations(&h.sims);
    assert!(twice.is_empty(), "Smartflex registered twice: {twice:?}");
}

/// Drives every instance to its end as people and operators would:
/// incidents retried (or resolved where a retry is refused), every task
/// completed with an answer that leads to an end, time moved on a day at a
/// time. Every instance must end.
async fn to_the_end(h: &Harness, world: &mut World, reached: &Reached) {
    for _ in 0..60 {
        let running = instances(h)
            .await
            .iter()
            .filter(|i| i.status == "running")
            .count();
        if running == 0 {
            break;
        }
        for incident in h.engine.incidents(Some("open"), None).await.unwrap() {
            reached.incidents.fetch_add(1, Ordering::Relaxed);
            match h.engine.retry_incident(&incident.id, "operador").await {
                Ok(()) => {}
                Err(Error::IncidentNeedsResolution { .. }) => h
                    .engine
                    .resolve_incident(&incident.id, "operador", stand_in(h, &incident).await)
                    .await
                    .expect("an incident that took effect resolves"),
                Err(e) => panic!("retrying {}: {e:?}", incident.id),
            }
        }
        // The clients send their documents.
        for i in instances(h).await.iter().filter(|i| i.status == "running") {
            let waits = i
                .state
                .tokens
                .iter()
                .any(|t| matches!(t.wait, Wait::Message { .. }));
            let vars = &i.state.variables;
            let key = vars
                .get("whatsapp")
                .filter(|v| !v.is_null())
                .or(vars.get("telefono"))
                .and_then(Value::as_str);
            if let (true, Some(key)) = (waits, key) {
                h.publish(
                    "requisitos_whatsapp",
                    key,
                    &format!("wamid.{}.{}", i.id, h.engine.now()),
                    json!({"media": ["ci.jpg"]}),
                )
                .await;
            }
        }
        for (n, t) in open_tasks(h).await.iter().enumerate() {
            let (outcome, data) = answer(&t.node_id, n, true);
            h.engine
                .complete(CompleteTask {
                    task: t.id.clone(),
                    user: t.assignee.clone().unwrap_or_else(|| USERS[0].to_owned()),
                    outcome: outcome.to_owned(),
                    data: object(data),
                    roles: None,
                })
                .await
                .unwrap_or_else(|e| panic!("completing `{}` with `{outcome}`: {e:?}", t.node_id));
        }
        h.engine.run_due_jobs().await.expect("jobs run");
        h.advance(Duration::from_secs(24 * 3_600));
        h.engine.run_due_jobs().await.expect("jobs run");
        check(h, world).await;
    }
    let instances = instances(h).await;
    let stuck: Vec<(&str, Vec<&str>)> = instances
        .iter()
        .filter(|i| i.status == "running")
        .map(|i| {
            (
                i.id.as_str(),
                i.state.tokens.iter().map(|t| t.node.as_str()).collect(),
            )
        })
        .collect();
    assert!(stuck.is_empty(), "instances that never end: {stuck:?}");
    for i in &instances {
        let counter = match (i.status.as_str(), i.outcome.as_deref()) {
            ("cancelled", _) => &reached.cancelled,
            (_, Some("venta_concretada")) => &reached.sales,
            _ => &reached.other_ends,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    for i in instances.iter().filter(|i| i.code == "T-PARALELO") {
        let rounds = h
            .engine
            .history(&i.id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == "task_created" && e.node_id.as_deref() == Some("revisar"))
            .count();
        if rounds > 1 {
            reached.loops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run(db: Db, steps: &[Step], reached: &Reached) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut h = Harness::new(db).await;
        h.engine
            .deploy(vec![("paralelo.yaml".into(), PARALLEL.into())])
            .await
            .expect("the parallel procedure deploys");
        let mut world = World::default();
        for step in steps {
            apply(&mut h, step, &mut world, reached).await;
            check(&h, &mut world).await;
        }
        to_the_end(&h, &mut world, reached).await;
        h.engine.shutdown().await;
    });
}

/// Runs `cases` random sequences (`PROPTEST_CASES` overrides), then checks
/// the run reached what it is meant to test.
fn property(db: Db, cases: u32) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    let reached = Reached::default();
    let n = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    let covered = |r: &Reached| {
        [
            &r.sales,
            &r.other_ends,
            &r.cancelled,
            &r.refused,
            &r.incidents,
        ]
        .iter()
        .all(|c| n(c) > 0)
    };
    // A short run can miss a rarer state (an incident takes a dozen faults
    // in a row): up to three more half batches run before coverage is
    // judged, so the assertions below fail only when the generator really
    // stopped reaching a state, not by chance.
    let (mut batch, mut total) = (cases, 0);
    for more in 0..4 {
        total += batch;
        let mut runner = TestRunner::new(Config {
            cases: batch,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&prop::collection::vec(step(), 1..150), |steps| {
            run(db, &steps, &reached);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        if covered(&reached) || more == 3 {
            break;
        }
        batch = cases.div_ceil(2);
    }
    eprintln!(
        "{total} cases: {} sales, {} other ends, {} cancelled, {} loops over a fork, {} incidents settled, {} forms refused, {} races, {} jobs left by a dead worker",
        n(&reached.sales),
        n(&reached.other_ends),
        n(&reached.cancelled),
        n(&reached.loops),
        n(&reached.incidents),
        n(&reached.refused),
        n(&reached.races),
        n(&reached.orphaned_jobs),
    );
    // Fewer than this would mean the generator stopped reaching the
    // states the invariants are about.
    assert!(n(&reached.sales) > 0, "no sale was ever made");
    assert!(
        n(&reached.other_ends) > 0,
        "no request ever ended otherwise"
    );
    assert!(n(&reached.cancelled) > 0, "nothing was ever cancelled");
    assert!(n(&reached.refused) > 0, "no form ever refused data");
    assert!(n(&reached.incidents) > 0, "no incident was ever settled");
}

#[test]
fn random_commands_keep_the_invariants_on_sqlite() {
    property(Db::Sqlite, 24);
}

#[test]
fn random_commands_keep_the_invariants_on_postgresql() {
    property(Db::Postgres, 12);
}
