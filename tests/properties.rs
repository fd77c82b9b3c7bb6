//! Random sequences of commands keep the engine's invariants.
//!
//! proptest draws a sequence of what people and systems do to a few P06
//! requests — start, claim, unclaim, complete (with good data or bad),
//! WhatsApp messages (early, late, repeated), connector failures, time
//! passing, worker runs, engine restarts and crashes — and after every step
//! checks what must always hold:
//!
//! - a command either succeeds or fails with a client's error (bad data, a
//!   task no longer open, …), never a storage failure;
//! - an ended instance has no tokens; a running one has at least one;
//! - every open or claimed task has exactly one token waiting on it, in a
//!   running instance, and every token waiting on a task has it open;
//! - no task is completed twice (the journal names each completion);
//! - Smartflex never registers one request twice.
//!
//! A failing case is shrunk to a short sequence and printed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use tramite_engine::Error;
use tramite_engine::runtime::CompleteTask;
use tramite_engine::runtime::state::Wait;
use tramite_engine::store::tasks::Filter;
use tramite_tests::engine::{Db, Harness};

/// One thing that happens.
#[derive(Debug, Clone)]
enum Step {
    /// A call or a web lead comes in.
    Start { web: bool },
    /// Someone claims the `pick`-th open task.
    Claim { pick: usize, user: u8 },
    /// Someone gives a task back.
    Unclaim { pick: usize, user: u8 },
    /// Someone completes a task: with the happy path's data, or with data
    /// that is wrong.
    Complete { pick: usize, user: u8, good: bool },
    /// The client of the `pick`-th request sends the documents (`copy`
    /// picks the WhatsApp id, so some arrive twice).
    Whatsapp { pick: usize, copy: u8 },
    /// The next calls to a system fail.
    Fault { system: u8, calls: u8 },
    /// The workers run what is due.
    Jobs,
    /// Time passes.
    Advance { minutes: u16 },
    /// The engine stops gracefully, or dies, and starts again.
    Restart { crash: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => any::<bool>().prop_map(|web| Step::Start { web }),
        2 => (0..8usize, 0..3u8).prop_map(|(pick, user)| Step::Claim { pick, user }),
        1 => (0..8usize, 0..3u8).prop_map(|(pick, user)| Step::Unclaim { pick, user }),
        16 => (0..8usize, 0..3u8, prop::bool::weighted(0.9))
            .prop_map(|(pick, user, good)| Step::Complete { pick, user, good }),
        2 => (0..4usize, 0..2u8).prop_map(|(pick, copy)| Step::Whatsapp { pick, copy }),
        1 => (0..3u8, 1..4u8).prop_map(|(system, calls)| Step::Fault { system, calls }),
        6 => Just(Step::Jobs),
        1 => (1..3_000u16).prop_map(|minutes| Step::Advance { minutes }),
        1 => any::<bool>().prop_map(|crash| Step::Restart { crash }),
    ]
}

const USERS: [&str; 3] = ["ana", "beto", "carla"];

/// An engine error a client may cause; anything else breaks the property.
fn clients_fault(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidData { .. }
            | Error::UnknownOutcome { .. }
            | Error::TaskNotOpen { .. }
            | Error::TaskClaimedByOther { .. }
            | Error::InstanceNotRunning { .. }
            | Error::NotFound { .. }
    )
}

async fn open_tasks(h: &Harness) -> Vec<tramite_engine::store::tasks::TaskRow> {
    h.engine
        .tasks(&Filter {
            limit: 500,
            ..Filter::default()
        })
        .await
        .expect("tasks")
}

async fn apply(h: &mut Harness, step: &Step, phones: &mut Vec<String>) {
    let result: Result<(), Error> = match step {
        Step::Start { web } => {
            let phone = format!("7{:07}", 100 + phones.len());
            phones.push(phone.clone());
            h.engine
                .start(tramite_engine::runtime::StartInstance {
                    code: "OPE-SUM-VEN-P06".into(),
                    business_key: String::new(),
                    channel: if *web { "web" } else { "ivr" }.into(),
                    data: tramite_tests::engine::object(json!({"telefono": phone})),
                    actor: "canal".into(),
                    request_id: None,
                })
                .await
                .map(drop)
        }
        Step::Claim { pick, user } => {
            let tasks = open_tasks(h).await;
            match tasks.get(pick % tasks.len().max(1)) {
                Some(t) => h.engine.claim(&t.id, USERS[*user as usize]).await,
                None => Ok(()),
            }
        }
        Step::Unclaim { pick, user } => {
            let tasks = open_tasks(h).await;
            match tasks.get(pick % tasks.len().max(1)) {
                Some(t) => h.engine.unclaim(&t.id, USERS[*user as usize]).await,
                None => Ok(()),
            }
        }
        Step::Complete { pick, user, good } => {
            let tasks = open_tasks(h).await;
            match tasks.get(pick % tasks.len().max(1)) {
                Some(t) => {
                    let (outcome, data) = match tramite_tests::p06::answer(&t.node_id, *pick) {
                        Some((o, d)) if *good => (o.to_owned(), d),
                        Some((o, _)) => (
                            o.to_owned(),
                            json!({"ci": "no es un CI", "dias_estimados": "cinco"}),
                        ),
                        // Off the happy path: the task's first button.
                        None => (first_outcome(h, t).await, json!({})),
                    };
                    h.engine
                        .complete(CompleteTask {
                            task: t.id.clone(),
                            user: USERS[*user as usize].into(),
                            outcome,
                            data: tramite_tests::engine::object(data),
                            roles: None,
                        })
                        .await
                        .map(drop)
                }
                None => Ok(()),
            }
        }
        Step::Whatsapp { pick, copy } => {
            if let Some(phone) = phones.get(pick % phones.len().max(1)) {
                h.publish(
                    "requisitos_whatsapp",
                    phone,
                    &format!("wamid.{phone}.{copy}"),
                    json!({"media": [format!("media-{copy}")]}),
                )
                .await;
            }
            Ok(())
        }
        Step::Fault { system, calls } => {
            let faults = match system {
                0 => h.sims.naf.faults(),
                1 => h.sims.gis.faults(),
                _ => h.sims.smartflex.faults(),
            };
            if *calls % 2 == 0 {
                faults.lose_next_replies(u32::from(*calls));
            } else {
                faults.fail_next(u32::from(*calls));
            }
            Ok(())
        }
        Step::Jobs => h.engine.run_due_jobs().await.map(drop),
        Step::Advance { minutes } => {
            h.advance(Duration::from_secs(u64::from(*minutes) * 60));
            Ok(())
        }
        Step::Restart { crash } => {
            if *crash {
                h.crash().await;
            } else {
                h.restart().await;
            }
            Ok(())
        }
    };
    if let Err(e) = result {
        assert!(clients_fault(&e), "{step:?} failed with {e:?}");
    }
}

async fn first_outcome(h: &Harness, t: &tramite_engine::store::tasks::TaskRow) -> String {
    let instance = h.instance(&t.instance_id).await;
    let process = h.engine.process(instance.definition_id).await.unwrap();
    match process.definition.node(&t.node_id).map(|n| &n.kind) {
        Some(tramite_engine::definition::NodeKind::UserTask(u)) => u.outcomes[0].id.clone(),
        _ => String::new(),
    }
}

/// Everything that must hold after any step.
async fn check(h: &Harness) {
    let instances = h
        .engine
        .instances(&tramite_engine::store::instances::InstanceFilter {
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let tasks = open_tasks(h).await;
    let open: HashMap<&str, &str> = tasks
        .iter()
        .map(|t| (t.id.as_str(), t.instance_id.as_str()))
        .collect();
    let mut waited: HashSet<String> = HashSet::new();
    for i in &instances {
        match i.status.as_str() {
            "running" => assert!(!i.state.tokens.is_empty(), "{} runs with no token", i.id),
            _ => assert!(i.state.tokens.is_empty(), "{} ended with tokens", i.id),
        }
        for token in &i.state.tokens {
            if let Wait::Task { task, .. } = &token.wait {
                assert_eq!(
                    open.get(task.as_str()),
                    Some(&i.id.as_str()),
                    "{} waits on task {task}, which is not open",
                    i.id
                );
                assert!(waited.insert(task.clone()), "two tokens wait on {task}");
            }
        }
    }
    for t in &tasks {
        assert!(
            waited.contains(&t.id),
            "task {} at {} is open but nobody waits on it",
            t.id,
            t.node_id
        );
    }
    let mut completions: HashMap<String, usize> = HashMap::new();
    for i in &instances {
        for e in h.engine.history(&i.id).await.unwrap() {
            if e.kind == "task_completed"
                && let Some(task) = e.data.get("task").and_then(Value::as_str)
            {
                *completions.entry(task.to_owned()).or_default() += 1;
            }
        }
    }
    if let Some((task, n)) = completions.iter().find(|(_, n)| **n > 1) {
        panic!("task {task} completed {n} times");
    }
    let twice = tramite_connectors::sim_http::duplicate_registrations(&h.sims);
    assert!(twice.is_empty(), "Smartflex registered twice: {twice:?}");
}

fn run(db: Db, steps: &[Step]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut h = Harness::new(db).await;
        let mut phones = Vec::new();
        for step in steps {
            apply(&mut h, step, &mut phones).await;
            check(&h).await;
        }
        h.engine.shutdown().await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_keep_the_invariants_on_sqlite(steps in prop::collection::vec(step(), 1..150)) {
        run(Db::Sqlite, &steps);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_keep_the_invariants_on_postgresql(steps in prop::collection::vec(step(), 1..150)) {
        run(Db::Postgres, &steps);
    }
}
