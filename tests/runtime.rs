//! The durable runtime on both backends: P06 through every branch, forms,
//! double completion, retries, incidents, restarts, versions, gates.

use std::time::Duration;

use serde_json::json;
use tramite_engine::Error;
use tramite_engine::runtime::connector::ConnectorError;
use tramite_engine::runtime::{CompleteTask, Delivery, PublishMessage};
use tramite_engine::store::tasks::Filter;
use tramite_tests::engine::{Always, Db, Harness};
use tramite_tests::on_both_backends;

use tramite_tests::p06::{
    P06, PHONE, refused_at_the_sale, retried_registers_once, through_coverage,
    through_identification, through_installation, through_requirements, with_capacity_confirmed,
    with_the_installation_cancelled,
};

async fn sale_made(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    assert_eq!(h.jobs().await, 1, "the Smartflex registration runs");
    through_installation(&h, &id).await;

    let i = h.instance(&id).await;
    assert_eq!(i.status, "completed");
    assert_eq!(i.outcome.as_deref(), Some("venta_concretada"));
    let v = &i.state.variables;
    assert_eq!(v["naf_impedimento"], json!(false));
    assert_eq!(v["gis_capacidad"], json!(true));
    assert_eq!(
        v["requisitos_adjuntos"],
        json!(["ci_anverso.jpg", "ci_reverso.jpg", "factura.pdf"])
    );
    assert!(v["numero_solicitud"].as_str().unwrap().starts_with("SF-"));
    assert_eq!(v["dias_ejecucion"], json!(4));
    assert!(i.state.tokens.is_empty());
    assert_eq!(h.sims.smartflex.registration_count(), 1);

    let history = h.history(&id).await;
    let first = |k: &str| {
        history
            .iter()
            .position(|h| h == k)
            .unwrap_or_else(|| panic!("{k} missing from {history:?}"))
    };
    assert_eq!(history[0], "instance_started");
    assert!(first("job_succeeded") < first("message_received"));
    assert!(first("message_received") < first("child_started"));
    assert_eq!(
        history.last().map(String::as_str),
        Some("instance_completed")
    );
    let entries = h.engine.history(&id).await.unwrap();
    assert!(
        entries.windows(2).all(|w| w[0].seq < w[1].seq),
        "history is in order"
    );
    let completion = entries
        .iter()
        .find(|e| e.kind == "task_completed" && e.node_id.as_deref() == Some("identificar_cliente"))
        .unwrap();
    assert_eq!(completion.actor, "agente1");
    assert_eq!(completion.data["data"]["ci"], json!("4587213"));
}
on_both_backends!(p06_sale_made, super::sale_made);

async fn naf_impediment(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "5123987").await; // central_riesgos
    let task = h.task(&id, "informar_imposibilidad").await;
    assert_eq!(task.role, "agente_ventas_digitales");
    let v = h.instance(&id).await.state.variables;
    assert_eq!(v["naf_impedimento"], json!(true));
    assert_eq!(v["naf_motivos"], json!(["central_riesgos"]));
    h.complete(
        &id,
        "informar_imposibilidad",
        "informado",
        json!({"motivo_rechazo": "central_riesgos"}),
    )
    .await;
    let i = h.instance(&id).await;
    assert_eq!(i.outcome.as_deref(), Some("venta_no_concretada"));
    assert_eq!(h.sims.smartflex.registration_count(), 0);
}
on_both_backends!(p06_naf_impediment, super::naf_impediment);

async fn no_gis_capacity(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Valle Hermoso").await;
    assert_eq!(
        h.instance(&id).await.state.variables["gis_capacidad"],
        json!(false)
    );
    h.complete(
        &id,
        "verificar_capacidad",
        "continuar",
        json!({"capacidad_confirmada": false}),
    )
    .await;
    h.complete(
        &id,
        "informar_imposibilidad",
        "informado",
        json!({"motivo_rechazo": "sin_capacidad_tecnica", "detalle_rechazo": "Zona sin cobertura"}),
    )
    .await;
    assert_eq!(
        h.instance(&id).await.outcome.as_deref(),
        Some("venta_no_concretada")
    );
}
on_both_backends!(p06_no_gis_capacity, super::no_gis_capacity);

async fn lost_call_then_call_back(db: Db) {
    let h = Harness::new(db).await;
    let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
    h.complete(&id, "recibir_llamada", "llamada_perdida", json!({}))
        .await;
    let task = h.task(&id, "devolver_llamada").await;
    assert_eq!(task.due_at, Some(tramite_tests::engine::T0 + 30 * 60_000));
    h.complete(&id, "devolver_llamada", "cliente_contactado", json!({}))
        .await;
    h.task(&id, "identificar_cliente").await;
    // The escalation timer of the completed call-back was withdrawn.
    h.advance(Duration::from_secs(3_600));
    h.jobs().await;
    h.task(&id, "identificar_cliente").await;
    assert!(!h.history(&id).await.contains(&"task_overdue".to_owned()));
}
on_both_backends!(
    p06_lost_call_then_call_back,
    super::lost_call_then_call_back
);

/// An agent who took the call-back just before its 30 minutes ran out is
/// on the phone with the client: the escalation does not take the task
/// away (it is overdue, and the agent completes it); given back unfinished,
/// it escalates then, whatever the clock of the node it is given back on.
async fn an_overdue_claimed_task_stays_with_its_agent(db: Db) {
    let h = Harness::new(db).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
        h.complete(&id, "recibir_llamada", "llamada_perdida", json!({}))
            .await;
        ids.push(id);
    }
    h.advance(Duration::from_secs(29 * 60));
    for id in &ids {
        let task = h.task(id, "devolver_llamada").await;
        h.engine.claim(&task.id, "agente1").await.unwrap();
    }
    h.advance(Duration::from_secs(2 * 60));
    h.jobs().await;
    for id in &ids {
        assert!(h.task_open(id, "devolver_llamada").await);
        assert!(!h.task_open(id, "devolucion_vencida").await);
        assert!(h.history(id).await.contains(&"task_overdue".to_owned()));
    }
    // The first agent reached the client.
    h.complete(&ids[0], "devolver_llamada", "cliente_contactado", json!({}))
        .await;
    h.task(&ids[0], "identificar_cliente").await;
    // The second gives the task back: overdue, it goes to the team lead —
    // even through a node whose clock is behind its due time: that the
    // escalation came due is the token's to say (its timer fired and was
    // held off), not this node's clock.
    let task = h.task(&ids[1], "devolver_llamada").await;
    let now = tramite_engine::runtime::clock::Clock::now(&*h.clock);
    h.clock.set(now - 3 * 60_000);
    h.engine.unclaim(&task.id, "agente1").await.unwrap();
    h.clock.set(now);
    h.task(&ids[1], "devolucion_vencida").await;
    assert!(!h.task_open(&ids[1], "devolver_llamada").await);
    // An unclaimed task still escalates on time.
    let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
    h.complete(&id, "recibir_llamada", "llamada_perdida", json!({}))
        .await;
    h.advance(Duration::from_secs(31 * 60));
    h.jobs().await;
    h.task(&id, "devolucion_vencida").await;
}
on_both_backends!(
    an_overdue_claimed_task_stays_with_its_agent,
    super::an_overdue_claimed_task_stays_with_its_agent
);

/// Claims racing their tasks' escalations on parallel lanes: whichever
/// commits first, a claim that was acknowledged keeps its task (the
/// escalation is held off), and a task the escalation withdrew was not
/// claimed. On PostgreSQL the escalation reads the task's row locked, so it
/// sees a claim that committed while it waited.
async fn a_claim_racing_its_escalation_keeps_the_task(db: Db) {
    let h = Harness::new(db).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
        h.complete(&id, "recibir_llamada", "llamada_perdida", json!({}))
            .await;
        ids.push(id);
    }
    let mut tasks = Vec::new();
    for id in &ids {
        tasks.push(h.task(id, "devolver_llamada").await.id);
    }
    h.advance(Duration::from_secs(31 * 60));
    let claims: Vec<_> = tasks
        .iter()
        .map(|t| {
            let (engine, t) = (h.engine.clone(), t.clone());
            tokio::spawn(async move { engine.claim(&t, "agente1").await })
        })
        .collect();
    h.engine.run_due_jobs().await.unwrap();
    let mut claimed = Vec::new();
    for c in claims {
        claimed.push(c.await.unwrap());
    }
    h.jobs().await;
    for (task, claim) in tasks.iter().zip(claimed) {
        let row = h.engine.task(task).await.unwrap();
        match claim {
            Ok(()) => assert_eq!(
                (row.status.as_str(), row.assignee.as_deref()),
                ("claimed", Some("agente1")),
                "an acknowledged claim lost its task to the escalation"
            ),
            Err(Error::TaskNotOpen { .. }) => assert_eq!(row.status, "cancelled"),
            Err(e) => panic!("claim: {e:?}"),
        }
    }
}
on_both_backends!(
    a_claim_racing_its_escalation_keeps_the_task,
    super::a_claim_racing_its_escalation_keeps_the_task
);

async fn digital_lead(db: Db) {
    let h = Harness::new(db).await;
    let id = h.start(P06, "facebook", json!({"telefono": PHONE})).await;
    h.complete(&id, "revisar_solicitud_digital", "sin_respuesta", json!({}))
        .await;
    // Called again an hour later, twice; the third unanswered call closes it.
    for _ in 0..2 {
        assert!(!h.task_open(&id, "devolver_llamada").await);
        h.advance(Duration::from_secs(3_600));
        h.jobs().await;
        h.complete(&id, "devolver_llamada", "sin_respuesta", json!({}))
            .await;
    }
    assert_eq!(
        h.instance(&id).await.outcome.as_deref(),
        Some("cliente_no_contactado")
    );
    // A channel the start does not list is refused, and nothing is created.
    let err = h
        .engine
        .start(tramite_engine::runtime::StartInstance {
            code: P06.to_owned(),
            business_key: "x".to_owned(),
            channel: "fax".to_owned(),
            data: tramite_tests::engine::object(json!({"telefono": PHONE})),
            actor: "test".to_owned(),
            request_id: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChannelNotAllowed { .. }), "{err:?}");
}
on_both_backends!(p06_digital_lead, super::digital_lead);

async fn smartflex_transient_then_success(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    h.sims.smartflex.faults().fail_next(2);
    let mut runs = 0;
    for _ in 0..10 {
        runs += h.jobs().await;
        if h.task_open(&id, "comunicar_solicitud").await {
            break;
        }
        h.advance(Duration::from_secs(60)); // past the backoff
    }
    assert_eq!(runs, 3, "two failures, then success");
    assert_eq!(h.sims.smartflex.registration_count(), 1);
    let history = h.history(&id).await;
    assert_eq!(history.iter().filter(|k| *k == "job_failed").count(), 2);
    assert!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .is_empty()
    );
}
on_both_backends!(
    p06_smartflex_transient_then_success,
    super::smartflex_transient_then_success
);

async fn smartflex_incident_then_retry(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    h.sims.smartflex.faults().start_outage();
    for _ in 0..20 {
        h.jobs().await;
        h.advance(Duration::from_secs(300));
    }
    let incidents = h.engine.incidents(Some("open"), Some(&id)).await.unwrap();
    assert_eq!(incidents.len(), 1, "retries exhausted: one incident");
    assert_eq!(incidents[0].node_id, "registrar_venta_smartflex");
    assert!(
        incidents[0].message.starts_with("8 attempt(s) failed"),
        "{}",
        incidents[0].message
    );
    assert!(
        !h.task_open(&id, "comunicar_solicitud").await,
        "the instance waits"
    );
    // Retrying while the fault lasts is refused by nobody, but the operator
    // fixes the fault first.
    h.sims.smartflex.faults().end_outage();
    h.engine
        .retry_incident(&incidents[0].id, "operador1")
        .await
        .unwrap();
    let again = h
        .engine
        .retry_incident(&incidents[0].id, "operador1")
        .await
        .unwrap_err();
    assert!(matches!(again, Error::IncidentNotOpen { .. }));
    assert_eq!(h.jobs().await, 1);
    h.task(&id, "comunicar_solicitud").await;
    assert_eq!(h.sims.smartflex.registration_count(), 1);
    assert!(
        h.history(&id)
            .await
            .contains(&"incident_retried".to_owned())
    );
}
on_both_backends!(
    p06_smartflex_incident_then_retry,
    super::smartflex_incident_then_retry
);

/// A refusal (credentials Smartflex no longer takes) is the same on every
/// attempt: the step stops with an incident at the first, its seven other
/// attempts and their backoff unspent, and nothing is registered. Retried
/// once the credentials are fixed, it registers once.
async fn a_refused_call_is_an_incident_at_once(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    h.sims.smartflex.faults().refuse_next(1);
    assert_eq!(h.jobs().await, 1);
    let (message, incident) = refused_at_the_sale(&h, &id).await;
    assert!(
        message.contains("the credentials were refused"),
        "{message}"
    );
    // No attempt is left waiting: hours later, still nothing has run.
    for _ in 0..5 {
        h.advance(Duration::from_secs(3600));
        assert_eq!(h.jobs().await, 0, "a refusal is not retried");
    }
    assert_eq!(h.sims.smartflex.registration_count(), 0);
    let history = h.history(&id).await;
    assert!(!history.contains(&"job_failed".to_owned()), "{history:?}");
    retried_registers_once(&h, &id, &incident).await;
}
on_both_backends!(
    a_refused_call_is_an_incident_at_once,
    super::a_refused_call_is_an_incident_at_once
);

async fn a_connector_error_holding_nul_ends_in_an_incident(db: Db) {
    let sims = tramite_connectors::Simulators::new();
    let connectors = sims
        .connectors()
        // A Smartflex behind a proxy that answers its error page with NUL bytes.
        .with(
            "smartflex",
            std::sync::Arc::new(Always(Err(ConnectorError::transient(
                "HTTP 502 from http://proxy/v1/solicitudes: \u{1f}\u{8b}\0\0gz",
            )))),
        );
    let h = Harness::with_connectors(db, sims, connectors).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    let mut attempts = 0;
    for _ in 0..20 {
        attempts += h.jobs().await;
        h.advance(Duration::from_secs(300));
    }
    // Each failure was recorded (a NUL refused by PostgreSQL would have
    // left the job running and called again after its lease, forever).
    assert_eq!(attempts, 8, "the retry policy's attempts, then no more");
    let incidents = h.engine.incidents(Some("open"), Some(&id)).await.unwrap();
    assert_eq!(incidents.len(), 1, "retries exhausted: one incident");
    assert!(
        incidents[0].message.contains("\u{FFFD}\u{FFFD}gz") && !incidents[0].message.contains('\0'),
        "{:?}",
        incidents[0].message
    );
    let history = h.engine.history(&id).await.unwrap();
    let failed = history.iter().filter(|e| e.kind == "job_failed").count();
    assert_eq!(failed, 7, "every retried failure is in the history");
}
on_both_backends!(
    p06_connector_error_holding_nul,
    super::a_connector_error_holding_nul_ends_in_an_incident
);

/// An output mapping that fails on what a system sent, quoting it (CEL's
/// "no such key" names the key): the NUL in it is replaced, and the
/// instance stops with one incident — on PostgreSQL, which refuses NUL in
/// text and JSON, recording it failed, and the call ran again at every
/// lease without end.
async fn a_mapping_error_quoting_a_nul_ends_in_one_incident(db: Db) {
    let sims = tramite_connectors::Simulators::new();
    // A NAF whose answer holds a NUL in a field (`"A\u0000"`, decoded).
    let answer = json!({"found": true, "member": false, "client_name": "A\u{0}",
                        "has_impediment": false, "impediments": [], "debt_bs": 0});
    let naf = Always(Ok(answer.as_object().cloned().unwrap()));
    let connectors = sims.connectors().with("naf", std::sync::Arc::new(naf));
    let h = Harness::with_connectors(db, sims, connectors).await;
    h.deploy(
        "plan.yaml",
        r#"
code: T-PLAN
name: Plan
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: ci, type: string}
  - {name: plan, type: string}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: ci, type: string, required: true}], next: naf}
  - id: naf
    kind: service_task
    connector: naf
    operation: check_portfolio
    input: {ci: ci}
    output: {plan: "{'A': 'hogar'}[result.client_name]"}
    next: fin
  - {id: fin, kind: end, outcome: listo}
"#,
    )
    .await;
    let id = h.start("T-PLAN", "web", json!({"ci": "4587213"})).await;
    let mut ran = 0;
    for _ in 0..5 {
        ran += h.jobs().await;
        h.advance(Duration::from_secs(300));
    }
    assert_eq!(ran, 1, "the call ran once");
    let incident = h.open_incident(&id).await;
    assert!(
        incident.message.contains('\u{FFFD}') && !incident.message.contains('\0'),
        "{:?}",
        incident.message
    );
}
on_both_backends!(
    a_mapping_error_quoting_a_nul_ends_in_one_incident,
    super::a_mapping_error_quoting_a_nul_ends_in_one_incident
);

/// A NAF that answers without `member` (which it always returns) and with
/// `debt_bs` as text: not taken as an answer, but as a failure naming both,
/// retried with the same key, and an incident once the attempts run out —
/// where storing the text as `naf_deuda_bs` stopped the request after the
/// call, with an incident that could not be retried and named neither NAF
/// nor its answer.
async fn an_answer_off_the_catalog_is_a_failure_that_names_it(db: Db) {
    let sims = tramite_connectors::Simulators::new();
    let answer = json!({"found": true, "has_impediment": false, "impediments": [],
                        "debt_bs": "0.00"});
    let naf = Always(Ok(answer.as_object().cloned().unwrap()));
    let connectors = sims.connectors().with("naf", std::sync::Arc::new(naf));
    let h = Harness::with_connectors(db, sims, connectors).await;
    let id = tramite_tests::p06::at_the_naf_check(&h, "4587213").await;
    let mut ran = 0;
    for _ in 0..8 {
        ran += h.jobs().await;
        h.advance(Duration::from_secs(300));
    }
    assert_eq!(ran, 5, "P06's NAF check allows 5 attempts");
    let incident = h.open_incident(&id).await;
    assert_eq!(incident.node_id, "consultar_naf");
    assert!(!incident.after_effect, "a retry may ask again");
    for expected in [
        "naf.check_portfolio answered, but not as the catalog says it answers",
        "lacks `member`, which the catalog says the system always returns",
        "gives `debt_bs` the value \"0.00\", which is not of its type, number",
    ] {
        assert!(
            incident.message.contains(expected),
            "{expected}: {}",
            incident.message
        );
    }
    assert!(
        h.instance(&id)
            .await
            .state
            .variables
            .get("naf_deuda_bs")
            .is_none_or(serde_json::Value::is_null)
    );
}
on_both_backends!(
    an_answer_off_the_catalog_is_a_failure_that_names_it,
    super::an_answer_off_the_catalog_is_a_failure_that_names_it
);

/// An output the catalog says a system may leave out (NAF's `client_name`,
/// absent for a CI it does not know) reads as null when it is left out, so
/// the guard the validator suggests works: a missing key failed every read,
/// guarded or not, with an incident only resolving could close.
async fn an_output_left_out_reads_as_null(db: Db) {
    let h = Harness::new(db).await;
    h.deploy(
        "nombre.yaml",
        r#"
code: T-NOMBRE
name: Nombre
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: ci, type: string}
  - {name: nombre, type: string}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: ci, type: string, required: true}], next: naf}
  - id: naf
    kind: service_task
    connector: naf
    operation: check_portfolio
    input: {ci: ci}
    output: {nombre: "result.client_name != null ? result.client_name : 'sin nombre'"}
    next: fin
  - {id: fin, kind: end, outcome: listo}
"#,
    )
    .await;
    let unknown = h.start("T-NOMBRE", "web", json!({"ci": "1000001"})).await;
    let known = h.start("T-NOMBRE", "web", json!({"ci": "4587213"})).await;
    assert_eq!(h.jobs().await, 2);
    for (id, name) in [(unknown, "sin nombre"), (known, "María Elena Rojas Vargas")] {
        let row = h.instance(&id).await;
        assert_eq!(row.status, "completed", "{id}: {:?}", row.state);
        assert_eq!(row.state.variables["nombre"], name);
    }
}
on_both_backends!(
    an_output_left_out_reads_as_null,
    super::an_output_left_out_reads_as_null
);

/// A system that answers with a value nested deeper than the engine keeps
/// (here NAF's `impediments`, a list, nested 100 levels) has not answered
/// as any step can store: a failure that says so, retried, then an
/// incident — stored, it would have left the request unreadable for good.
async fn an_answer_nested_too_deep_is_a_failure(db: Db) {
    let sims = tramite_connectors::Simulators::new();
    let deep = (0..100).fold(json!("deuda"), |v, _| json!([v]));
    let answer = json!({"found": true, "member": true, "has_impediment": true,
                        "impediments": deep, "debt_bs": 10.0});
    let naf = Always(Ok(answer.as_object().cloned().unwrap()));
    let connectors = sims.connectors().with("naf", std::sync::Arc::new(naf));
    let h = Harness::with_connectors(db, sims, connectors).await;
    let id = tramite_tests::p06::at_the_naf_check(&h, "4587213").await;
    for _ in 0..8 {
        h.jobs().await;
        h.advance(Duration::from_secs(300));
    }
    let incident = h.open_incident(&id).await;
    assert!(
        incident
            .message
            .contains("naf.check_portfolio answered with values nested deeper than 64 levels"),
        "{}",
        incident.message
    );
    assert_eq!(h.instance(&id).await.status, "running", "still readable");
}
on_both_backends!(
    an_answer_nested_too_deep_is_a_failure,
    super::an_answer_nested_too_deep_is_a_failure
);

/// A Smartflex that is throttling: its first answers ask to be left alone
/// (90 s, then two days), then it registers.
struct ThrottledSmartflex {
    calls: std::sync::atomic::AtomicUsize,
    then: std::sync::Arc<tramite_connectors::smartflex::Simulator>,
}

impl tramite_engine::runtime::connector::Connector for ThrottledSmartflex {
    fn call<'a>(
        &'a self,
        call: tramite_engine::runtime::connector::ConnectorCall<'a>,
    ) -> tramite_engine::runtime::connector::BoxFuture<
        'a,
        Result<serde_json::Map<String, serde_json::Value>, ConnectorError>,
    > {
        let wait = match self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Some(Duration::from_secs(90)),
            1 => Some(Duration::from_secs(2 * 86_400)),
            _ => None,
        };
        match wait {
            Some(wait) => Box::pin(async move {
                Err(ConnectorError::Transient {
                    message: "HTTP 429 Too Many Requests".to_owned(),
                    retry_after: Some(wait),
                })
            }),
            None => self.then.call(call),
        }
    }
}

/// The node's policy would retry Smartflex after 2 s; the system asked for
/// 90 s, so nothing is sent before. A wait of two days is held to an hour.
async fn a_system_asking_to_wait_is_not_asked_sooner(db: Db) {
    let sims = tramite_connectors::Simulators::new();
    let throttled = ThrottledSmartflex {
        calls: Default::default(),
        then: sims.smartflex.clone(),
    };
    let connectors = sims
        .connectors()
        .with("smartflex", std::sync::Arc::new(throttled));
    let h = Harness::with_connectors(db, sims, connectors).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    assert_eq!(h.jobs().await, 1, "asked once, told to wait 90 s");
    h.advance(Duration::from_secs(89));
    assert_eq!(h.jobs().await, 0, "not asked again before 90 s");
    h.advance(Duration::from_secs(2));
    assert_eq!(h.jobs().await, 1, "asked after 90 s, told to wait two days");
    h.advance(Duration::from_secs(3_590));
    assert_eq!(h.jobs().await, 0, "not asked again before the hour");
    h.advance(Duration::from_secs(20));
    assert_eq!(h.jobs().await, 1, "two days held to an hour");
    assert_eq!(h.sims.smartflex.registration_count(), 1);
    h.task(&id, "comunicar_solicitud").await;
    let history = h.engine.history(&id).await.unwrap();
    let waits: Vec<i64> = history
        .iter()
        .filter(|e| e.kind == "job_failed")
        .map(|e| e.data["retry_at"].as_i64().unwrap() - e.at)
        .collect();
    assert_eq!(waits, [90_000, 3_600_000], "each wait in the history");
    assert!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .is_empty()
    );
}
on_both_backends!(
    a_system_asking_to_wait,
    super::a_system_asking_to_wait_is_not_asked_sooner
);

/// A NAF that keeps answering "come back in 30 s" (a throttling gateway)
/// does not use up the step's 5 attempts while it does, for an hour from
/// the call's start: a short throttle is waited out, not an incident. After
/// the hour its refusals count, and the fifth ends in one.
async fn throttling_uses_no_attempts_for_an_hour(db: Db) {
    let sims = tramite_connectors::Simulators::new();
    let naf = Always(Err(ConnectorError::Transient {
        message: "too many requests (HTTP 429)".to_owned(),
        retry_after: Some(Duration::from_secs(30)),
    }));
    let connectors = sims.connectors().with("naf", std::sync::Arc::new(naf));
    let h = Harness::with_connectors(db, sims, connectors).await;
    let id = tramite_tests::p06::at_the_naf_check(&h, "4587213").await;
    let mut calls = 0;
    // Within the hour: asked every minute, nothing counted.
    for _ in 0..60 {
        calls += h.jobs().await;
        h.advance(Duration::from_secs(60));
    }
    assert_eq!(calls, 60, "asked again and again");
    assert!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .is_empty(),
        "no incident within the hour"
    );
    // Past it: five more refusals, then the incident.
    let mut after = 0;
    for _ in 0..20 {
        after += h.jobs().await;
        h.advance(Duration::from_secs(60));
    }
    assert_eq!(after, 5, "the step's 5 attempts, counted from then");
    let incident = h.open_incident(&id).await;
    assert!(
        incident.message.starts_with("5 attempt(s) failed"),
        "{}",
        incident.message
    );
    let history = h.engine.history(&id).await.unwrap();
    let counted = history
        .iter()
        .filter(|e| e.kind == "job_failed" && e.data["counted"] == json!(true))
        .count();
    assert_eq!(counted, 4, "the history says which refusals counted");
    // An operator's retry starts the hour again.
    h.engine
        .retry_incident(&incident.id, "operador1")
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(h.jobs().await, 1);
        h.advance(Duration::from_secs(60));
    }
    assert!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .is_empty(),
        "ten refusals after the retry, none counted"
    );
}
on_both_backends!(
    throttling_uses_no_attempts_for_an_hour,
    super::throttling_uses_no_attempts_for_an_hour
);

/// One SQLite file, one engine: a second `serve` on it (an overlapping
/// restart, two pods on one volume) is refused before it releases the
/// first one's leases; once the first has stopped, it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_on_one_sqlite_file_is_refused() {
    let h = Harness::new(Db::Sqlite).await;
    let id = through_identification(&h, "4587213").await;
    match tramite_tests::engine::try_second_engine(&h).await {
        Err(Error::DatabaseInUse { lock, .. }) => {
            assert!(lock.to_string_lossy().ends_with(".lock"), "{lock:?}")
        }
        Err(other) => panic!("expected DatabaseInUse, got {other:?}"),
        Ok(_) => panic!("a second engine opened the same SQLite file"),
    }
    // The first engine is untouched.
    h.task(&id, "solicitar_domicilio").await;
    h.engine.shutdown().await;
    let second = tramite_tests::engine::try_second_engine(&h)
        .await
        .expect("opens once the first has stopped");
    assert_eq!(second.instance(&id).await.unwrap().status, "running");
    second.shutdown().await;
}

/// A loop back through a fork whose join waits for a user task (accepted
/// by validation since a join that waits counts as waiting) runs: each
/// round waits at the task, the join fires once per round, and it ends.
async fn a_rework_loop_through_a_join_runs_round_by_round(db: Db) {
    let h = Harness::new(db).await;
    h.engine
        .deploy(vec![(
            "rework.yaml".into(),
            tramite_tests::REWORK.to_owned(),
        )])
        .await
        .expect("a loop that waits at its join deploys");
    let id = h.start("T-REWORK", "web", json!({})).await;
    for round in 0..3 {
        h.complete(&id, "revisar", "ok", json!({"rehacer": round < 2}))
            .await;
    }
    let instance = h.instance(&id).await;
    assert_eq!(instance.outcome.as_deref(), Some("listo"));
    assert!(!h.task_open(&id, "revisar").await);
    let history = h.history(&id).await;
    assert_eq!(
        history.iter().filter(|k| *k == "joined").count(),
        3,
        "{history:?}"
    );
    assert_eq!(
        history.iter().filter(|k| *k == "forked").count(),
        3,
        "{history:?}"
    );
}
on_both_backends!(
    rework_loop_through_a_join,
    super::a_rework_loop_through_a_join_runs_round_by_round
);

async fn form_errors_change_nothing(db: Db) {
    let h = Harness::new(db).await;
    let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
    h.complete(&id, "recibir_llamada", "atendida", json!({}))
        .await;
    let before = h.instance(&id).await;
    let task = h.task(&id, "identificar_cliente").await;
    let err = h
        .engine
        .complete(CompleteTask {
            task: task.id.clone(),
            user: "agente1".to_owned(),
            outcome: "continuar".to_owned(),
            data: tramite_tests::engine::object(
                json!({"ci": "12ab", "servicio_solicitado": "cable", "color": "rojo"}),
            ),
            roles: None,
        })
        .await
        .unwrap_err();
    let Error::InvalidData { errors } = err else {
        panic!("expected form errors, got {err:?}");
    };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["nombre_cliente", "servicio_solicitado", "ci", "color"],
        "{errors:?}"
    );
    let after = h.instance(&id).await;
    assert_eq!(after.revision, before.revision, "nothing changed");
    assert_eq!(h.task(&id, "identificar_cliente").await.status, "open");
    // A wrong outcome is refused the same way.
    let err = h
        .engine
        .complete(CompleteTask {
            task: task.id,
            user: "agente1".to_owned(),
            outcome: "vender".to_owned(),
            data: Default::default(),
            roles: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownOutcome { .. }), "{err:?}");
}
on_both_backends!(
    p06_form_errors_change_nothing,
    super::form_errors_change_nothing
);

async fn completed_once(db: Db) {
    let h = Harness::new(db).await;
    let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
    let task = h.task(&id, "recibir_llamada").await;
    // Twenty agents press the button at once: exactly one wins.
    let attempts = (0..20).map(|n| {
        let engine = h.engine.clone();
        let task = task.id.clone();
        tokio::spawn(async move {
            engine
                .complete(CompleteTask {
                    task,
                    user: format!("agente{n}"),
                    outcome: "atendida".to_owned(),
                    data: Default::default(),
                    roles: None,
                })
                .await
        })
    });
    let results: Vec<_> = futures_join(attempts.collect()).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, Error::TaskNotOpen { .. }))
    );
    let tasks = h
        .engine
        .tasks(&Filter {
            instance_id: Some(id.clone()),
            status: Some("open".into()),
            limit: 10,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1, "one next task, not twenty");
    assert_eq!(
        h.history(&id)
            .await
            .iter()
            .filter(|k| *k == "task_completed")
            .count(),
        1
    );
    // Claimed by one, completed by another: refused.
    let next = h.task(&id, "identificar_cliente").await;
    h.engine.claim(&next.id, "ana").await.unwrap();
    let err = h
        .engine
        .complete(CompleteTask {
            task: next.id,
            user: "beto".into(),
            outcome: "continuar".into(),
            data: Default::default(),
            roles: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TaskClaimedByOther { .. }), "{err:?}");
}
on_both_backends!(p06_task_completed_once, super::completed_once);

/// Good and bad completions sent at once share the writer's batches: every
/// good one commits and every bad one changes nothing, whatever the mix.
async fn good_and_bad_commands_at_once(db: Db) {
    let h = Harness::new(db).await;
    let ids = tramite_tests::p06::waiting_for_identification(&h, 12).await;
    let mut before = Vec::new();
    let mut sends = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        before.push(h.instance(id).await.revision);
        sends.push(send_identification(&h, &h.engine, id, n, n % 3 == 0).await);
    }
    let results = futures_join(sends).await;
    for (n, (id, result)) in ids.iter().zip(&results).enumerate() {
        let bad = n % 3 == 0;
        settled(&h, id, before[n], result, bad).await;
        if !bad {
            assert!(
                h.history(id)
                    .await
                    .iter()
                    .filter(|k| *k == "task_completed")
                    .count()
                    == 2
            );
        }
    }
}
on_both_backends!(
    good_and_bad_commands_share_batches,
    super::good_and_bad_commands_at_once
);

/// Sends the completion of `id`'s client identification through `engine`,
/// `bad` with a form error (`ci` must be digits); `n` makes the good one's
/// `ci` its own.
async fn send_identification(
    h: &Harness,
    engine: &tramite_engine::runtime::Engine,
    id: &str,
    n: usize,
    bad: bool,
) -> tokio::task::JoinHandle<Result<tramite_engine::runtime::CompletedTask, Error>> {
    let task = h.task(id, "identificar_cliente").await;
    let ci = if bad {
        "12ab".to_owned()
    } else {
        format!("{}", 4_000_000 + n)
    };
    let data = json!({"nombre_cliente": "Ana", "servicio_solicitado": "internet_fibra", "ci": ci});
    let engine = engine.clone();
    tokio::spawn(async move {
        engine
            .complete(CompleteTask {
                task: task.id,
                user: "agente1".to_owned(),
                outcome: "continuar".to_owned(),
                data: tramite_tests::engine::object(data),
                roles: None,
            })
            .await
    })
}

/// Holds `id`'s row in a transaction of its own and sends a good
/// identification for it through `lane` (a one-lane engine), returning once
/// the lane waits on that lock: what is sent next queues behind it until
/// the holder commits.
async fn hold_the_lane(
    h: &Harness,
    lane: &tramite_engine::runtime::Engine,
    id: &str,
) -> (
    sqlx::PgConnection,
    tokio::task::JoinHandle<Result<tramite_engine::runtime::CompletedTask, Error>>,
) {
    use sqlx::Connection;
    let mut holder = sqlx::PgConnection::connect(&h.db.url)
        .await
        .expect("PostgreSQL");
    sqlx::query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sqlx::query("SELECT id FROM instances WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut holder)
        .await
        .expect("row lock");
    let first = send_identification(h, lane, id, 0, false).await;
    let mut waited = 0;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut holder)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        waited += 1;
        assert!(waited < 500, "the lane never waited on the row lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (holder, first)
}

/// Commits the holder's transaction: the lane it held goes on.
async fn release(mut holder: sqlx::PgConnection) {
    sqlx::query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("release");
}

/// One P06 request waiting for identification on PostgreSQL, with an
/// engine of one write lane and a second node on the same database.
async fn one_request_two_nodes() -> (
    Harness,
    String,
    tramite_engine::runtime::Engine,
    tramite_engine::runtime::Engine,
) {
    let h = Harness::new(Db::Postgres).await;
    let id = tramite_tests::p06::waiting_for_identification(&h, 1)
        .await
        .remove(0);
    let lane = tramite_tests::engine::engine_with_lanes(&h, 1).await;
    let other = tramite_tests::engine::second_engine(&h).await;
    (h, id, lane, other)
}

/// A bad identification was refused and changed nothing (the instance at
/// revision `before`, its task open); a good one committed.
async fn settled(
    h: &Harness,
    id: &str,
    before: i64,
    result: &Result<tramite_engine::runtime::CompletedTask, Error>,
    bad: bool,
) {
    let after = h.instance(id).await;
    if bad {
        assert!(
            matches!(result, Err(Error::InvalidData { .. })),
            "{id}: {result:?}"
        );
        assert_eq!(
            after.revision, before,
            "{id}: a refused command changed nothing"
        );
        assert_eq!(h.task(id, "identificar_cliente").await.status, "open");
    } else {
        assert!(result.is_ok(), "{id}: {result:?}");
        assert!(after.revision > before, "{id}: the good command committed");
    }
}

/// On PostgreSQL a lane runs its batch without savepoints and, when a
/// command fails, rolls it back and runs it again with one per command:
/// the failing commands change nothing, the others commit, and they still
/// share a transaction. The lane is held on a row lock so that the
/// commands queue up behind it and arrive as one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_in_a_postgres_batch_leaves_the_others() {
    use std::sync::atomic::Ordering::Relaxed;
    let h = Harness::new(Db::Postgres).await;
    let ids = tramite_tests::p06::waiting_for_identification(&h, 9).await;
    let lane = tramite_tests::engine::engine_with_lanes(&h, 1).await;
    let before: Vec<i64> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(h.instance(id).await.revision);
        }
        v
    };

    // Hold the first instance's row: the lane's first command waits on it.
    let (holder, first) = hold_the_lane(&h, &lane, &ids[0]).await;
    let commits = lane.stats().commits.load(Relaxed);
    let mut rest = Vec::new();
    for (n, id) in ids.iter().enumerate().skip(1) {
        rest.push(send_identification(&h, &lane, id, n, n % 3 == 1).await);
    }
    // The eight commands are queued behind the held lane.
    tokio::time::sleep(Duration::from_millis(200)).await;
    release(holder).await;
    assert!(first.await.expect("joins").is_ok());
    let mut results = Vec::new();
    for r in rest {
        results.push(r.await.expect("joins"));
    }
    let good = (1..ids.len()).filter(|n| n % 3 != 1).count();
    for (n, result) in (1..ids.len()).zip(&results) {
        settled(&h, &ids[n], before[n], result, n % 3 == 1).await;
    }
    let batched = lane.stats().commits.load(Relaxed) - commits;
    assert!(
        (batched as usize) < 1 + good,
        "the first command and {good} good ones in {batched} transactions: they did not share a batch"
    );
}

/// On PostgreSQL a completion locks the instance, a claim only the task: an
/// agent's completion that waited on the instance while a colleague
/// claimed the task on another node is refused naming the colleague, not
/// told that the task, still open, is completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_that_lost_the_task_to_a_claim_names_the_holder() {
    let (h, id, lane, other) = one_request_two_nodes().await;
    let task = h.task(&id, "identificar_cliente").await;
    // agente1's completion waits on the held instance row…
    let (holder, first) = hold_the_lane(&h, &lane, &id).await;
    // …while agente2 claims the task through another node.
    other.claim(&task.id, "agente2").await.unwrap();
    release(holder).await;
    let result = first.await.expect("joins");
    assert!(
        matches!(&result, Err(Error::TaskClaimedByOther { assignee, .. }) if assignee == "agente2"),
        "{result:?}"
    );
    let now = h.task(&id, "identificar_cliente").await;
    assert_eq!(
        (now.status.as_str(), now.assignee.as_deref()),
        ("claimed", Some("agente2"))
    );
}

/// A client that sends a completion again while its first try still waits
/// on the instance (on another node, say, after its own timeout) is told it
/// is done, and the task is completed once: on PostgreSQL the retry reads
/// the task as it was before the first committed, and must read it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_met_its_first_try_running_is_a_repeat() {
    let (h, id, lane, other) = one_request_two_nodes().await;
    let task = h.task(&id, "identificar_cliente").await;
    let (holder, first) = hold_the_lane(&h, &lane, &id).await;
    let again = send_identification(&h, &other, &id, 0, false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    release(holder).await;
    let answers = [first.await.expect("joins"), again.await.expect("joins")];
    let repeated: Vec<bool> = answers
        .iter()
        .map(|a| a.as_ref().map(|c| c.repeated))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("both succeed: {e:?} in {answers:?}"));
    assert_eq!(
        repeated.iter().filter(|r| **r).count(),
        1,
        "one made it, one repeated it: {answers:?}"
    );
    let completions = h
        .engine
        .history(&id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "task_completed" && e.data["task"] == task.id.as_str())
        .count();
    assert_eq!(completions, 1);
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task joins"));
    }
    out
}

async fn restart_mid_process(db: Db) {
    let mut h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    h.restart().await;
    through_requirements(&h, &id).await;
    h.restart().await;
    assert_eq!(h.jobs().await, 1);
    through_installation(&h, &id).await;
    assert_eq!(
        h.instance(&id).await.outcome.as_deref(),
        Some("venta_concretada")
    );
    assert_eq!(h.sims.smartflex.registration_count(), 1);
}
on_both_backends!(p06_restart_mid_process, super::restart_mid_process);

/// A full worker pool goes on as soon as a slot frees, not at its next
/// poll: with one worker and a poll of an hour, three NAF checks due at
/// once all run (a finished job wakes nobody unless it scheduled another,
/// so the second waited the hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_pool_goes_on_when_a_slot_frees() {
    let h = Harness::new(Db::Postgres).await;
    for ci in ["4587213", "3021457", "7788990"] {
        tramite_tests::p06::at_the_naf_check(&h, ci).await;
    }
    let node = tramite_tests::engine::engine_with(&h, |c| {
        c.workers = 1;
        c.poll = Duration::from_secs(3_600);
    })
    .await;
    node.start_workers();
    for _ in 0..500 {
        if h.sims.naf.calls() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.sims.naf.calls(), 3, "every due check ran, one at a time");
    node.shutdown().await;
}

async fn restart_mid_connector_call(db: Db) {
    let mut h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    // Smartflex registers, then the engine dies before it hears back.
    h.sims
        .smartflex
        .faults()
        .set_latency(Duration::from_secs(3_600));
    h.engine.start_workers();
    for _ in 0..200 {
        if h.sims.smartflex.calls() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.sims.smartflex.calls(), 1, "the call is in flight");
    h.crash().await;
    h.sims.smartflex.faults().set_latency(Duration::ZERO);
    if db == Db::Postgres {
        // Other nodes may be alive: the dead engine's lease must expire
        // first (30 s lease + the node's 20 s timeout).
        assert_eq!(h.jobs().await, 0, "the lease still holds");
        h.advance(Duration::from_secs(51));
    }
    // SQLite has one engine: its restart releases the leases at once.
    assert_eq!(h.jobs().await, 1, "the job runs again, with the same key");
    h.task(&id, "comunicar_solicitud").await;
    assert_eq!(h.sims.smartflex.calls(), 2, "run again: at least once");
    assert_eq!(
        h.sims.smartflex.registration_count(),
        1,
        "registered once, not twice"
    );
    // A lost reply (registered, then a timeout) is retried with the same key.
    let id2 = through_identification(&h, "654321").await;
    through_coverage(&h, &id2, "Sarco").await;
    through_requirements(&h, &id2).await;
    h.sims.smartflex.faults().lose_next_replies(1);
    h.jobs().await;
    h.advance(Duration::from_secs(60));
    h.jobs().await;
    h.task(&id2, "comunicar_solicitud").await;
    let regs = h.sims.smartflex.registrations();
    let keys: std::collections::BTreeSet<_> =
        regs.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), regs.len(), "one registration per key");
}
on_both_backends!(
    p06_restart_mid_connector_call,
    super::restart_mid_connector_call
);

/// A call whose node dies every time it runs it (a response that crashes
/// the process, say) is not run forever: once it was claimed as often as
/// its attempts allow, the next claim raises an incident instead of calling
/// again. Retried by an operator, it runs, and registers once.
async fn a_call_that_kills_its_node_each_time_ends_in_an_incident(db: Db) {
    let mut h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    // `registrar_venta_smartflex` allows 8 attempts.
    h.sims
        .smartflex
        .faults()
        .set_latency(Duration::from_secs(3_600));
    for attempt in 1..=8u64 {
        h.engine.start_workers();
        for _ in 0..300 {
            if h.sims.smartflex.calls() >= attempt {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            h.sims.smartflex.calls(),
            attempt,
            "attempt {attempt} is in flight"
        );
        h.crash().await;
        if db == Db::Postgres {
            // The dead engine's lease: 30 s + the step's 20 s timeout.
            h.advance(Duration::from_secs(51));
        }
    }
    h.sims.smartflex.faults().set_latency(Duration::ZERO);
    assert_eq!(h.jobs().await, 0, "not called a ninth time");
    assert_eq!(h.sims.smartflex.calls(), 8);
    let incident = h.open_incident(&id).await;
    assert_eq!(incident.node_id, "registrar_venta_smartflex");
    assert!(
        incident
            .message
            .starts_with("attempt 8 of 8 ended without a recorded result"),
        "{}",
        incident.message
    );
    h.engine
        .retry_incident(&incident.id, "operador1")
        .await
        .unwrap();
    assert_eq!(h.jobs().await, 1);
    h.task(&id, "comunicar_solicitud").await;
    assert_eq!(h.sims.smartflex.registration_count(), 1);
}
on_both_backends!(
    a_call_that_kills_its_node_each_time,
    super::a_call_that_kills_its_node_each_time_ends_in_an_incident
);

async fn versions(db: Db) {
    let h = Harness::new(db).await;
    let path = tramite_tests::repo_root().join("processes/opr-pas-p02.yaml");
    let source = std::fs::read_to_string(&path).unwrap();
    let same = h
        .engine
        .deploy(vec![("opr-pas-p02.yaml".into(), source.clone())])
        .await
        .unwrap();
    assert_eq!(
        (same[0].version, same[0].new),
        (1, false),
        "identical content keeps its version"
    );
    let old = h
        .start("OPR-PAS-P02", "other", json!({"numero_solicitud": "SF-1", "telefono": PHONE, "direccion": "Calle 1", "zona": "Centro", "servicio": "tv"}))
        .await;
    let changed = source.replace(
        "label: {es: Programar la instalación, en: Schedule the installation}",
        "label: {es: Programar la visita técnica, en: Schedule the visit}",
    );
    let v2 = h
        .engine
        .deploy(vec![("opr-pas-p02.yaml".into(), changed)])
        .await
        .unwrap();
    assert_eq!((v2[0].version, v2[0].new), (2, true));
    let new = h
        .start("OPR-PAS-P02", "other", json!({"numero_solicitud": "SF-2", "telefono": PHONE, "direccion": "Calle 2", "zona": "Centro", "servicio": "tv"}))
        .await;
    assert_eq!(
        h.instance(&old).await.version,
        1,
        "a running instance stays on its version"
    );
    assert_eq!(h.instance(&new).await.version, 2);
    // A broken definition is refused with its diagnostics and deploys nothing.
    let broken = source.replace(
        "role: jefe_instalaciones\n    form:",
        "role: jefe\n    form:",
    );
    let err = h
        .engine
        .deploy(vec![("opr-pas-p02.yaml".into(), broken)])
        .await
        .unwrap_err();
    let Error::Invalid(d) = err else {
        panic!("expected diagnostics")
    };
    assert_eq!(
        d[0].items[0].code,
        tramite_engine::diagnostic::Code::UnknownRole
    );
}
on_both_backends!(versions_are_immutable, super::versions);

async fn cancel_with_reason(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    h.jobs().await;
    h.complete(
        &id,
        "comunicar_solicitud",
        "comunicado",
        json!({"dias_estimados": 5}),
    )
    .await;
    let child = h.engine.children(&id).await.unwrap().remove(0);
    h.engine
        .cancel(&id, "cliente desiste por teléfono", "supervisor1")
        .await
        .unwrap();
    let i = h.instance(&id).await;
    assert_eq!(i.status, "cancelled");
    assert_eq!(
        i.cancel_reason.as_deref(),
        Some("cliente desiste por teléfono")
    );
    assert_eq!(
        h.instance(&child.id).await.status,
        "cancelled",
        "the child it waited for is cancelled"
    );
    let open = h
        .engine
        .tasks(&Filter {
            instance_id: Some(child.id.clone()),
            limit: 10,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert!(open.is_empty(), "its tasks are withdrawn");
    let err = h
        .engine
        .cancel(&id, "again", "supervisor1")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InstanceNotRunning { .. }));
}
on_both_backends!(
    cancel_with_reason_cancels_children,
    super::cancel_with_reason
);

const PARALLEL: &str = r#"
code: T-PARALLEL
name: Paralelo
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: monto, type: number}
  - {name: aprobado, type: boolean}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: monto, type: number, required: true}], next: grande}
  - id: grande
    kind: exclusive_gate
    branches:
      - {when: monto > 1000.0, next: dividir}
    default: chico
  - {id: dividir, kind: fork, branches: [legal, pago], join: unir}
  - id: legal
    kind: user_task
    role: agente
    form: [{name: aprobado, type: boolean, required: true}]
    outcomes: [{id: ok, label: Listo, next: unir}]
  - id: pago
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Pagado, next: unir}]
  - {id: unir, kind: join, next: grande_fin}
  - {id: grande_fin, kind: end, outcome: grande}
  - {id: chico, kind: end, outcome: chico}
"#;

async fn gates(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("parallel.yaml", PARALLEL).await;
    let small = h.start("T-PARALLEL", "web", json!({"monto": 10})).await;
    assert_eq!(h.instance(&small).await.outcome.as_deref(), Some("chico"));
    let big = h.start("T-PARALLEL", "web", json!({"monto": 5000.5})).await;
    h.complete(&big, "pago", "ok", json!({})).await;
    let i = h.instance(&big).await;
    assert_eq!(i.status, "running", "the join waits for the other branch");
    assert_eq!(i.state.tokens.len(), 1);
    h.complete(&big, "legal", "ok", json!({"aprobado": true}))
        .await;
    let i = h.instance(&big).await;
    assert_eq!(i.outcome.as_deref(), Some("grande"));
    assert!(i.state.joins.is_empty());
}
on_both_backends!(exclusive_and_parallel_gates, super::gates);

async fn workers_run_jobs_in_background(db: Db) {
    let h = Harness::new(db).await;
    h.engine.start_workers();
    let id = h.start(P06, "web", json!({"telefono": PHONE})).await;
    h.complete(
        &id,
        "revisar_solicitud_digital",
        "cliente_contactado",
        json!({}),
    )
    .await;
    h.complete(
        &id,
        "identificar_cliente",
        "continuar",
        json!({"nombre_cliente": "Ana Vargas", "servicio_solicitado": "television", "ci": "9999999"}),
    )
    .await;
    // No `run_due_jobs` here: the pool claims the NAF job on its own.
    let mut waited = 0;
    while !h.task_open(&id, "solicitar_domicilio").await {
        assert!(waited < 500, "the worker pool never ran the NAF job");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(h.sims.naf.calls(), 1);
    h.engine.shutdown().await;
}
on_both_backends!(
    workers_run_jobs_in_background,
    super::workers_run_jobs_in_background
);

/// A P06 sale whose Smartflex registration fails with Smartflex down until
/// the retries run out; the request and its incident.
async fn smartflex_down_until_an_incident(
    h: &Harness,
) -> (String, tramite_engine::store::incidents::IncidentRow) {
    let id = through_identification(h, "4587213").await;
    through_coverage(h, &id, "Cala Cala").await;
    through_requirements(h, &id).await;
    h.sims.smartflex.faults().start_outage();
    for _ in 0..20 {
        h.jobs().await;
        h.advance(Duration::from_secs(300));
    }
    let incident = h.open_incident(&id).await;
    (id, incident)
}

async fn resolve_incident_by_hand(db: Db) {
    let h = Harness::new(db).await;
    let (id, incident) = smartflex_down_until_an_incident(&h).await;
    // The operator registered the sale in Smartflex by hand and records its number.
    h.engine
        .resolve_incident(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(
                json!({"numero_solicitud": "SF-2026-MANUAL", "dias_estimados": 7}),
            ),
        )
        .await
        .unwrap();
    h.task(&id, "comunicar_solicitud").await;
    let v = h.instance(&id).await.state.variables;
    assert_eq!(v["numero_solicitud"], json!("SF-2026-MANUAL"));
    assert_eq!(h.jobs().await, 0, "the failed job does not run again");
    assert_eq!(h.sims.smartflex.registration_count(), 0);
    let resolved = h
        .engine
        .incidents(Some("resolved"), Some(&id))
        .await
        .unwrap();
    assert_eq!(resolved[0].resolved_by.as_deref(), Some("operador1"));
}
on_both_backends!(resolve_incident_by_hand, super::resolve_incident_by_hand);

/// An incident whose job is no longer stopped at it (here moved by hand in
/// the database) is not "retried" into a token waiting for good on a job
/// that never runs: the retry is refused, changes nothing, and the incident
/// stays open to be resolved.
async fn retrying_an_incident_whose_job_moved_on_is_refused(db: Db) {
    use sqlx::Connection;
    let h = Harness::new(db).await;
    let (id, incident) = smartflex_down_until_an_incident(&h).await;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&h.db.url).await.unwrap();
    let moved = sqlx::query("UPDATE jobs SET status = 'done' WHERE id = $1")
        .bind(incident.job_id.clone().unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(moved.rows_affected(), 1);
    drop(conn);
    let before = h.instance(&id).await.revision;
    let err = h
        .engine
        .retry_incident(&incident.id, "operador1")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IncidentJobGone { .. }), "{err:?}");
    assert_eq!(h.instance(&id).await.revision, before, "nothing changed");
    assert_eq!(h.open_incident(&id).await.id, incident.id, "still open");
    assert!(
        !h.history(&id)
            .await
            .contains(&"incident_retried".to_owned())
    );
}
on_both_backends!(
    retrying_an_incident_whose_job_moved_on_is_refused,
    super::retrying_an_incident_whose_job_moved_on_is_refused
);

/// A job whose stored input no longer reads as JSON (a row edited by hand,
/// a fault of the disk) stops at an incident of its own rather than failing
/// every claim (and so every job of every node): the check due beside it
/// still runs, and running the step again computes its input anew.
async fn an_unreadable_job_stops_at_an_incident_and_the_rest_run(db: Db) {
    use sqlx::Connection;
    let h = Harness::new(db).await;
    let broken = tramite_tests::p06::at_the_naf_check(&h, "4587213").await;
    let other = tramite_tests::p06::at_the_naf_check(&h, "9876543").await;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&h.db.url).await.unwrap();
    let edited = sqlx::query("UPDATE jobs SET input = '{\"ci\": 45872' WHERE instance_id = $1")
        .bind(&broken)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(edited.rows_affected(), 1);
    drop(conn);
    assert_eq!(h.jobs().await, 1, "the other request's check runs");
    assert_eq!(h.sims.naf.calls(), 1, "the unreadable one was not called");
    h.task(&other, "solicitar_domicilio").await;
    let incident = h.open_incident(&broken).await;
    assert!(
        incident.message.contains("its stored input cannot be read"),
        "{}",
        incident.message
    );
    assert!(
        h.history(&broken)
            .await
            .contains(&"incident_raised".to_owned())
    );
    assert_eq!(h.jobs().await, 0, "nor is it claimed again");
    h.run_again(&incident.id).await;
    assert_eq!(h.jobs().await, 1, "run again, its input computed anew");
    assert_eq!(h.sims.naf.calls(), 2);
    h.task(&broken, "solicitar_domicilio").await;
}
on_both_backends!(
    an_unreadable_job_stops_at_an_incident_and_the_rest_run,
    super::an_unreadable_job_stops_at_an_incident_and_the_rest_run
);

/// A job's incident resolved by running the step again: a new call (with
/// the variables written), once the system is back.
async fn resolve_incident_by_running_it_again(db: Db) {
    let h = Harness::new(db).await;
    let (id, incident) = smartflex_down_until_an_incident(&h).await;
    h.sims.smartflex.faults().end_outage();
    h.engine
        .resolve_incident_then(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({"detalle_rechazo": "Smartflex volvió"})),
            Some(tramite_engine::runtime::commands::Then::RunAgain),
        )
        .await
        .unwrap();
    assert_eq!(h.jobs().await, 1, "a new call");
    assert_eq!(h.sims.smartflex.registration_count(), 1);
    h.task(&id, "comunicar_solicitud").await;
    let v = h.instance(&id).await.state.variables;
    assert_eq!(v["detalle_rechazo"], "Smartflex volvió");
}
on_both_backends!(
    resolve_incident_by_running_it_again,
    super::resolve_incident_by_running_it_again
);

/// Smartflex registered the sale but every answer was lost: running the
/// step again with the same input asks with the same idempotency key, and
/// Smartflex answers the registration it made instead of making a second
/// (a second installation order for one sale). An input the operator
/// changed is a new request.
async fn running_again_a_call_that_took_effect_asks_with_its_key(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    h.sims.smartflex.faults().lose_next_replies(100);
    for _ in 0..20 {
        h.jobs().await;
        h.advance(Duration::from_secs(300));
    }
    let incident = h.open_incident(&id).await;
    assert!(
        !incident.after_effect,
        "a lost answer is not known to have taken effect"
    );
    assert_eq!(
        h.sims.smartflex.registration_count(),
        1,
        "the calls took effect once"
    );
    h.sims.smartflex.faults().lose_next_replies(0);
    h.run_again(&incident.id).await;
    h.jobs().await;
    assert_eq!(
        h.sims.smartflex.registration_count(),
        1,
        "asked again, not registered twice"
    );
    let twice = tramite_connectors::sim_http::duplicate_registrations(&h.sims);
    assert!(twice.is_empty(), "Smartflex registered twice: {twice:?}");
    h.task(&id, "comunicar_solicitud").await;
}
on_both_backends!(
    running_again_a_call_that_took_effect_asks_with_its_key,
    super::running_again_a_call_that_took_effect_asks_with_its_key
);

/// An operator's variables are checked like a form: only the procedure's
/// variables, of their types; going on past Smartflex stands in for its
/// answer, so both variables its output writes must be given (without
/// them, step 11 would show no request number). A refusal changes nothing.
async fn resolving_checks_the_variables(db: Db) {
    let h = Harness::new(db).await;
    let (id, incident) = smartflex_down_until_an_incident(&h).await;
    let refused = |vars: serde_json::Value| {
        let h = &h;
        let incident = incident.id.clone();
        async move {
            match h
                .engine
                .resolve_incident(&incident, "operador1", tramite_tests::engine::object(vars))
                .await
            {
                Err(Error::InvalidData { errors }) => {
                    let mut e: Vec<(String, String)> =
                        errors.into_iter().map(|e| (e.field, e.message)).collect();
                    e.sort();
                    e
                }
                other => panic!("expected InvalidData, got {other:?}"),
            }
        }
    };
    assert_eq!(
        refused(json!({})).await,
        [
            (
                "dias_estimados".to_owned(),
                "this field is required".to_owned()
            ),
            (
                "numero_solicitud".to_owned(),
                "this field is required".to_owned()
            ),
        ]
    );
    assert_eq!(
        refused(json!({"numero_solicitud": "SF-1", "dias_estimados": "siete"})).await,
        [(
            "dias_estimados".to_owned(),
            "must be a whole number".to_owned()
        )]
    );
    assert_eq!(
        refused(json!({"numero_solicitud": "SF-1", "dias_estimados": 7, "dias_estimado": 7})).await,
        [(
            "dias_estimado".to_owned(),
            "is not a variable of OPE-SUM-VEN-P06".to_owned()
        )]
    );
    assert_eq!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .len(),
        1,
        "nothing changed"
    );
    h.engine
        .resolve_incident(
            &incident.id,
            "operador1",
            // Every output given; one may be empty (null), as a result can be.
            tramite_tests::engine::object(
                json!({"numero_solicitud": "SF-1", "dias_estimados": null}),
            ),
        )
        .await
        .unwrap();
    h.task(&id, "comunicar_solicitud").await;
}
on_both_backends!(
    resolving_checks_the_variables,
    super::resolving_checks_the_variables
);

const VISIT: &str = r#"
code: T-VISITA
name: Visita programada
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: fecha_visita, type: datetime}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: fecha_visita, type: datetime}], next: esperar_visita}
  - {id: esperar_visita, kind: timer_wait, at: fecha_visita, next: visitar}
  - id: visitar
    kind: user_task
    role: agente
    outcomes: [{id: hecho, label: Hecho, next: fin}]
  - {id: fin, kind: end, outcome: listo}
"#;

/// A timer whose firing fails inside the engine every time (here its
/// request's row no longer reads, edited by hand) is not fired every lease
/// for ever: after `TIMER_FIRINGS` claims it becomes an incident an
/// operator sees.
async fn a_timer_that_never_fires_becomes_an_incident(db: Db) {
    use sqlx::Connection;
    use tramite_engine::runtime::commands::TIMER_FIRINGS;
    let mut h = Harness::new(db).await;
    h.deploy("visita.yaml", VISIT).await;
    let id = h
        .start(
            "T-VISITA",
            "web",
            json!({"fecha_visita": "2026-11-27T14:00:00Z"}),
        )
        .await;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&h.db.url).await.unwrap();
    let edited = sqlx::query("UPDATE instances SET state = '{\"tokens\": [' WHERE id = $1")
        .bind(&id)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(edited.rows_affected(), 1);
    // The SQLite writer keeps its own copy of the row it wrote.
    h.restart().await;
    h.advance(Duration::from_secs(3_600));
    let mut claims = 0;
    for _ in 0..2 * TIMER_FIRINGS {
        claims += h.jobs().await;
        // Past the lease of the claim whose firing was not recorded.
        h.advance(Duration::from_secs(600));
    }
    assert_eq!(
        claims as i64, TIMER_FIRINGS,
        "fired up to the cap, then no more"
    );
    let message: String = sqlx::query_scalar(
        "SELECT message FROM incidents WHERE instance_id = $1 AND status = 'open'",
    )
    .bind(&id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(message.contains("the timer fired 10 times"), "{message}");
}
on_both_backends!(
    a_timer_that_never_fires_becomes_an_incident,
    super::a_timer_that_never_fires_becomes_an_incident
);

/// A timer whose time cannot be computed stops with an incident; resolving
/// it with `go_on` goes past the wait, as the API promises, instead of
/// computing the same time again and stopping at once.
async fn going_on_past_a_timer_that_could_not_be_set(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("visita.yaml", VISIT).await;
    let id = h.start("T-VISITA", "web", json!({})).await;
    let incident = h.open_incident(&id).await;
    assert_eq!(incident.node_id, "esperar_visita");
    h.engine
        .resolve_incident_then(
            &incident.id,
            "operador1",
            serde_json::Map::new(),
            Some(tramite_engine::runtime::commands::Then::GoOn),
        )
        .await
        .unwrap();
    assert!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .is_empty()
    );
    h.task(&id, "visitar").await;
}
on_both_backends!(
    going_on_past_a_timer_that_could_not_be_set,
    super::going_on_past_a_timer_that_could_not_be_set
);

/// Going back: the text of an earlier version, deployed again through the
/// API, becomes a new version, the latest, and new requests start from it
/// (it was answered as the earlier version, and the later one stayed
/// live). A node starting up with a file behind the latest leaves the
/// latest where it is, and says so.
async fn an_earlier_text_deployed_again_becomes_the_latest(db: Db) {
    let h = Harness::new(db).await;
    let changed = VISIT.replace("name: Visita programada", "name: Visita programada (b)");
    let deploy = |text: String| {
        let h = &h;
        async move {
            let deployed = h
                .engine
                .deploy(vec![("visita.yaml".to_owned(), text)])
                .await
                .unwrap();
            (deployed[0].version, deployed[0].new)
        }
    };
    assert_eq!(deploy(VISIT.to_owned()).await, (1, true));
    assert_eq!(deploy(changed.clone()).await, (2, true));
    assert_eq!(
        deploy(VISIT.to_owned()).await,
        (3, true),
        "back to the first"
    );
    assert_eq!(deploy(VISIT.to_owned()).await, (3, false), "unchanged");
    let id = h.start("T-VISITA", "web", json!({})).await;
    assert_eq!(h.instance(&id).await.version, 3);
    let dir = std::env::temp_dir().join(format!(
        "tramite-behind-{}",
        tramite_engine::runtime::machine::new_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("visita.yaml"), &changed).unwrap();
    let started = h.engine.deploy_dir(&dir).await.unwrap();
    assert_eq!((started[0].version, started[0].new), (2, false));
    assert!(
        started[0]
            .warnings
            .iter()
            .any(|w| w.contains("not of the latest (3)")),
        "{:?}",
        started[0].warnings
    );
    let id = h.start("T-VISITA", "web", json!({})).await;
    assert_eq!(h.instance(&id).await.version, 3, "still the latest");
    let _ = std::fs::remove_dir_all(&dir);
}
on_both_backends!(
    an_earlier_text_deployed_again_becomes_the_latest,
    super::an_earlier_text_deployed_again_becomes_the_latest
);

/// Claims `instance`'s due jobs past their firings without reporting any
/// (a node that dies firing, again and again), until its timer stops at an
/// incident.
async fn timer_stopped_at_an_incident(
    h: &Harness,
    instance: &str,
) -> tramite_engine::store::incidents::IncidentRow {
    use tramite_engine::runtime::commands::{Command, TIMER_FIRINGS};
    for _ in 0..TIMER_FIRINGS {
        h.engine
            .submit(Command::ClaimJobs {
                owner: "muere".into(),
                lease_ms: 1_000,
                limit: 8,
                default_timeout_ms: 1_000,
            })
            .await
            .expect("claimed");
        h.advance(Duration::from_secs(600));
    }
    assert_eq!(h.jobs().await, 0, "stopped, not fired");
    h.open_incident(instance).await
}

/// A timer that could not fire is settled by firing it, by retry or by
/// resolve alike: the wait goes on to its next step. Resolving used to go
/// "past" the wait by entering it again, its time started over.
async fn a_timer_stopped_at_an_incident_is_settled_by_firing_it(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("visita.yaml", VISIT).await;
    let start = json!({"fecha_visita": "2026-11-27T14:00:00Z"});
    let retried = h.start("T-VISITA", "web", start.clone()).await;
    let resolved = h.start("T-VISITA", "web", start).await;
    h.advance(Duration::from_secs(3_600));
    for (id, resolve) in [(retried, false), (resolved, true)] {
        let incident = timer_stopped_at_an_incident(&h, &id).await;
        assert_eq!(incident.node_id, "esperar_visita");
        if resolve {
            let written = h
                .engine
                .resolve_incident(
                    &incident.id,
                    "operador1",
                    tramite_tests::engine::object(json!({"fecha_visita": "2026-12-01T10:00:00Z"})),
                )
                .await;
            assert!(
                matches!(written, Err(Error::InvalidData { .. })),
                "{written:?}"
            );
            h.engine
                .resolve_incident(&incident.id, "operador1", serde_json::Map::new())
                .await
                .unwrap();
        } else {
            h.engine
                .retry_incident(&incident.id, "operador1")
                .await
                .unwrap();
        }
        assert_eq!(h.jobs().await, 1, "fired");
        h.task(&id, "visitar").await;
        let history = h.history(&id).await;
        assert_eq!(
            history.iter().filter(|k| *k == "timer_scheduled").count(),
            1,
            "its time not started over: {history:?}"
        );
    }
}
on_both_backends!(
    a_timer_stopped_at_an_incident_is_settled_by_firing_it,
    super::a_timer_stopped_at_an_incident_is_settled_by_firing_it
);

/// An escalation's timer stopped at an incident, and the agent completed
/// the task meanwhile: the incident is closed with it, as withdrawn. It
/// stayed open, and settling it ran the token's next step again (a second
/// task beside the first, which could never be completed).
async fn an_incident_whose_step_was_left_is_withdrawn(db: Db) {
    let h = Harness::new(db).await;
    h.deploy(
        "llamar.yaml",
        r#"
code: T-LLAMAR
name: Llamar
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: llamar}
  - id: llamar
    kind: user_task
    role: agente
    due: 1h
    escalation: {next: insistir}
    outcomes: [{id: ok, label: Listo, next: revisar}]
  - id: insistir
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Listo, next: revisar}]
  - id: revisar
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Listo, next: fin}]
  - {id: fin, kind: end, outcome: listo}
"#,
    )
    .await;
    let id = h.start("T-LLAMAR", "web", json!({})).await;
    h.advance(Duration::from_secs(3_600));
    let incident = timer_stopped_at_an_incident(&h, &id).await;
    h.complete(&id, "llamar", "ok", json!({})).await;
    assert!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .is_empty(),
        "closed with the step it stopped"
    );
    let open: Vec<String> = h
        .open_tasks(&id)
        .await
        .into_iter()
        .map(|t| t.node_id)
        .collect();
    assert_eq!(open, ["revisar"], "nothing opened or moved");
    let closed = h
        .engine
        .incidents(Some("resolved"), Some(&id))
        .await
        .unwrap();
    assert_eq!(closed[0].resolution.as_deref(), Some("withdrawn"));
    assert!(
        h.history(&id)
            .await
            .contains(&"incident_withdrawn".to_owned())
    );
    // An operator who settles it late moves nothing.
    let again = h.engine.retry_incident(&incident.id, "operador1").await;
    assert!(
        matches!(again, Err(Error::IncidentNotOpen { .. })),
        "{again:?}"
    );
}
on_both_backends!(
    an_incident_whose_step_was_left_is_withdrawn,
    super::an_incident_whose_step_was_left_is_withdrawn
);

const CHILD_WITHOUT_RESULT: &str = r#"
code: T-HIJO
name: Revisión
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: aprobado, type: boolean}
nodes:
  - {id: inicio, kind: start, channels: [procedure], next: fin}
  - {id: fin, kind: end, outcome: sin_revision}
"#;

const PARENT_READING_IT: &str = r#"
code: T-PADRE
name: Solicitud
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
links: {exit: [{code: T-HIJO, name: Revisión}]}
variables:
  - {name: aprobado, type: boolean}
nodes:
  - {id: inicio, kind: start, channels: [web], next: revisar}
  - {id: revisar, kind: call, procedure: T-HIJO, wait: true, output: {aprobado: output.aprobado}, next: decidir}
  - id: decidir
    kind: user_task
    role: agente
    outcomes: [{id: hecho, label: Hecho, next: fin}]
  - {id: fin, kind: end, outcome: listo}
"#;

/// A child that ends on a path that never wrote a variable it declares:
/// the parent's `output.x` reads null (a variable not yet written is null)
/// instead of stopping the parent with an incident only a person can clear.
async fn a_child_variable_never_written_reads_null(db: Db) {
    let h = Harness::new(db).await;
    h.engine
        .deploy(vec![
            ("hijo.yaml".into(), CHILD_WITHOUT_RESULT.into()),
            ("padre.yaml".into(), PARENT_READING_IT.into()),
        ])
        .await
        .unwrap();
    let id = h.start("T-PADRE", "web", json!({})).await;
    assert!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .is_empty()
    );
    h.task(&id, "decidir").await;
    assert_eq!(
        h.instance(&id).await.state.variables["aprobado"],
        serde_json::Value::Null
    );
}
on_both_backends!(
    a_child_variable_never_written_reads_null,
    super::a_child_variable_never_written_reads_null
);

/// A new version of a called procedure that its deployed callers cannot
/// call any more (a start field they do not give, an output they read
/// renamed) is refused — deploy and dry run alike — naming the caller's
/// line: deployed, it would stop every P06 at step 11 with an incident.
/// A change the callers do not notice deploys.
async fn a_callee_its_callers_cannot_call_is_refused(db: Db) {
    let h = Harness::new(db).await;
    let p02 =
        std::fs::read_to_string(tramite_tests::repo_root().join("processes/opr-pas-p02.yaml"))
            .unwrap();
    let needs_more = p02
        .replace(
            "      - {name: servicio, type: string, required: true}",
            "      - {name: servicio, type: string, required: true}\n      - {name: ci, type: string, required: true}",
        )
        .replace("variables:\n", "variables:\n  - {name: ci, type: string}\n");
    let renamed = p02.replace("dias_ejecucion", "dias_instalacion");
    assert!(
        needs_more != p02 && renamed != p02,
        "the test's edits apply"
    );
    for (what, source) in [
        ("a new start field", &needs_more),
        ("an output renamed", &renamed),
    ] {
        for dry_run in [false, true] {
            let files = vec![("opr-pas-p02.yaml".to_owned(), source.clone())];
            let result = if dry_run {
                h.engine.check_deploy(files).await
            } else {
                h.engine.deploy(files).await
            };
            match result {
                Err(Error::Invalid(d)) => {
                    assert_eq!(d.len(), 1, "{what}: {d:?}");
                    assert!(d[0].file.contains("ope-sum-ven-p06.yaml"), "{what}: {d:?}");
                    assert!(
                        d[0].items.iter().all(|i| i.pos.is_some()),
                        "{what}: lines named"
                    );
                }
                other => panic!("{what} (dry run {dry_run}): {other:?}"),
            }
        }
    }
    let relabelled = p02.replace("Instalaciones y traslados", "Instalaciones y mudanzas");
    assert!(relabelled != p02);
    let deployed = h
        .engine
        .deploy(vec![("opr-pas-p02.yaml".into(), relabelled)])
        .await
        .expect("a change the callers do not notice deploys");
    assert!(deployed[0].new);
}
on_both_backends!(
    a_callee_its_callers_cannot_call_is_refused,
    super::a_callee_its_callers_cannot_call_is_refused
);

/// A caller's older version keeps running instances, which call the
/// latest version of the callee when they reach their call. A callee that
/// only the latest caller can call is refused while an instance of the
/// older version has yet to reach its call (the message names the version
/// and how many), and deploys once every such instance has called — one
/// waiting on the child it called, or past it, is not held back by it.
async fn a_callee_an_older_running_caller_cannot_call_is_refused(db: Db) {
    let h = Harness::new(db).await;
    let caller = |version: u32, input: &str| {
        format!(
            r#"
code: T-PIDE
name: Pide
version: {version}
owner_role: agente
roles: [{{id: agente, name: Agente}}]
links:
  exit: [{{code: T-DA, name: Da}}]
variables:
  - {{name: a, type: string}}
  - {{name: b, type: string}}
nodes:
  - {{id: inicio, kind: start, channels: [web], data: [{{name: a, type: string}}, {{name: b, type: string}}], next: preparar}}
  - id: preparar
    kind: user_task
    role: agente
    outcomes: [{{id: ok, label: Listo, next: llamar}}]
  - {{id: llamar, kind: call, procedure: T-DA, input: {{{input}}}, next: revisar}}
  - id: revisar
    kind: user_task
    role: agente
    outcomes: [{{id: ok, label: Listo, next: fin}}]
  - {{id: fin, kind: end, outcome: listo}}
"#
        )
    };
    let callee = |fields: &str| {
        format!(
            r#"
code: T-DA
name: Da
version: 1
owner_role: agente
roles: [{{id: agente, name: Agente}}]
links:
  entry: [{{code: T-PIDE, name: Pide}}]
variables:
  - {{name: a, type: string}}
  - {{name: b, type: string}}
nodes:
  - {{id: inicio, kind: start, channels: [procedure], data: [{fields}], next: hacer}}
  - id: hacer
    kind: user_task
    role: agente
    outcomes: [{{id: ok, label: Listo, next: fin}}]
  - {{id: fin, kind: end, outcome: listo}}
"#
        )
    };
    let a_only = "{name: a, type: string, required: true}, {name: b, type: string}";
    let a_and_b =
        "{name: a, type: string, required: true}, {name: b, type: string, required: true}";
    h.engine
        .deploy(vec![
            ("pide.yaml".into(), caller(1, "a: a")),
            ("da.yaml".into(), callee(a_only)),
        ])
        .await
        .unwrap();
    // Version 1: one instance before its call, one waiting on its child.
    let before = h.start("T-PIDE", "web", json!({"a": "x", "b": "y"})).await;
    let waiting = h.start("T-PIDE", "web", json!({"a": "x", "b": "y"})).await;
    h.complete(&waiting, "preparar", "ok", json!({})).await;
    h.engine
        .deploy(vec![("pide.yaml".into(), caller(2, "a: a, b: b"))])
        .await
        .unwrap();
    let needs_b = vec![("da.yaml".to_owned(), callee(a_and_b))];
    for dry_run in [true, false] {
        let result = if dry_run {
            h.engine.check_deploy(needs_b.clone()).await
        } else {
            h.engine.deploy(needs_b.clone()).await
        };
        match result {
            Err(Error::Invalid(d)) => {
                assert_eq!(d.len(), 1, "{d:?}");
                assert!(
                    d[0].file.contains(
                        "version 1 of T-PIDE: 1 running instance(s) have yet to reach its call"
                    ),
                    "{d:?}"
                );
                assert!(d[0].items.iter().all(|i| i.pos.is_some()), "{d:?}");
            }
            other => panic!("dry run {dry_run}: {other:?}"),
        }
    }
    // The last instance of version 1 calls (the callee deployed now, which
    // it can call); then no instance of version 1 has a call ahead.
    h.complete(&before, "preparar", "ok", json!({})).await;
    let deployed = h
        .engine
        .deploy(needs_b)
        .await
        .expect("no instance left to break");
    assert_eq!((deployed[0].version, deployed[0].new), (2, true));
    // Both version-1 instances, past their call, go on to their end.
    for id in [&before, &waiting] {
        let children = h.engine.children(id).await.unwrap();
        assert_eq!(children.len(), 1, "{id}");
        h.complete(&children[0].id, "hacer", "ok", json!({})).await;
        h.complete(id, "revisar", "ok", json!({})).await;
        assert_eq!(h.instance(id).await.status, "completed");
    }
}
on_both_backends!(
    a_callee_an_older_running_caller_cannot_call_is_refused,
    super::a_callee_an_older_running_caller_cannot_call_is_refused
);

const SLOW: &str = r#"
code: T-SLOW
name: Consulta lenta
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: ci, type: string}
  - {name: impedimento, type: boolean}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: ci, type: string, required: true}], next: consultar}
  - id: consultar
    kind: service_task
    connector: naf
    operation: check_portfolio
    input: {ci: ci}
    output: {impedimento: result.has_impediment}
    timeout: 1s
    retry: {attempts: 2, backoff: fixed, initial_delay: 1s, max_delay: 1s, jitter: false}
    next: fin
  - {id: fin, kind: end, outcome: listo}
"#;

async fn connector_timeout_is_a_transient_failure(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("slow.yaml", SLOW).await;
    h.sims.naf.faults().set_latency(Duration::from_secs(5));
    let id = h.start("T-SLOW", "web", json!({"ci": "4587213"})).await;
    let started = std::time::Instant::now();
    h.jobs().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the attempt was cut at its timeout"
    );
    let history = h.engine.history(&id).await.unwrap();
    let failed = history
        .iter()
        .find(|e| e.kind == "job_failed")
        .expect("a failed attempt");
    assert!(
        failed.data["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 1000 ms"),
        "{failed:?}"
    );
    h.sims.naf.faults().set_latency(Duration::ZERO);
    h.advance(Duration::from_secs(2));
    h.jobs().await;
    assert_eq!(h.instance(&id).await.outcome.as_deref(), Some("listo"));
}
on_both_backends!(
    connector_timeout_is_a_transient_failure,
    super::connector_timeout_is_a_transient_failure
);

/// Two engines on one PostgreSQL database claim side by side: every job
/// runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_never_run_the_same_job() {
    let h = Harness::new(Db::Postgres).await;
    h.deploy("slow.yaml", SLOW).await;
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(
            h.start("T-SLOW", "web", json!({"ci": format!("{}", 4_000_000 + n)}))
                .await,
        );
    }
    let second = tramite_tests::engine::second_engine(&h).await;
    let (a, b) = tokio::join!(h.engine.run_due_jobs(), second.run_due_jobs());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, 40, "each job claimed once: {a} + {b}");
    assert_eq!(h.sims.naf.calls(), 40, "each job ran once");
    for id in ids {
        assert_eq!(h.instance(&id).await.outcome.as_deref(), Some("listo"));
    }
    second.shutdown().await;
}

const AFTER_EFFECT: &str = r#"
code: T-AFTER
name: Mapeo fallido
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: ci, type: string}
  - {name: deuda_doble, type: number}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: ci, type: string, required: true}], next: consultar}
  - id: consultar
    kind: service_task
    connector: naf
    operation: check_portfolio
    input: {ci: ci}
    output: {deuda_doble: "result.debt_bs * 2"}
    next: fin
  - {id: fin, kind: end, outcome: listo}
"#;

async fn incident_after_effect_is_resolved_not_retried(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("after.yaml", AFTER_EFFECT).await;
    // 4587213 has no debt: `debt_bs` is 0.0, and `0.0 * 2` (double times int) fails in CEL.
    let id = h.start("T-AFTER", "web", json!({"ci": "4587213"})).await;
    h.jobs().await;
    let incident = h.open_incident(&id).await;
    assert!(incident.after_effect, "{incident:?}");
    let err = h
        .engine
        .retry_incident(&incident.id, "operador1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::IncidentNeedsResolution { .. }),
        "{err:?}"
    );
    assert_eq!(h.sims.naf.calls(), 1);
    // Nor resolved by running the step again.
    let err = h
        .engine
        .resolve_incident_then(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({"deuda_doble": 0.0})),
            Some(tramite_engine::runtime::commands::Then::RunAgain),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::IncidentNeedsResolution { .. }),
        "{err:?}"
    );
    h.engine
        .resolve_incident(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({"deuda_doble": 0.0})),
        )
        .await
        .unwrap();
    assert_eq!(h.instance(&id).await.outcome.as_deref(), Some("listo"));
    assert_eq!(h.sims.naf.calls(), 1, "the connector was not called again");
}
on_both_backends!(
    incident_after_effect_is_resolved_not_retried,
    super::incident_after_effect_is_resolved_not_retried
);

const ROUTE_SET_FAILS: &str = r#"
code: T-RUTA
name: Ruta de error cuyo set falla
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: ci, type: string}
  - {name: deuda, type: number}
  - {name: motivo, type: integer}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: ci, type: string, required: true}], next: consultar}
  - id: consultar
    kind: service_task
    connector: naf
    operation: check_portfolio
    input: {ci: ci}
    output: {deuda: result.debt_bs}
    errors:
      - error: invalid_ci
        next: corregir
        set: {motivo: int(error.message)}
    next: fin
  - {id: corregir, kind: user_task, role: agente, outcomes: [{id: ok, label: Listo, next: fin}]}
  - {id: fin, kind: end, outcome: listo}
"#;

/// NAF answered a business error whose route's `set` fails (the system's
/// text is no number): the incident is resolved with what the `set` should
/// have written, and the request goes on along the error's route — not
/// past the step as if NAF had answered, nor asked for the answer's
/// `output`.
async fn a_failed_error_route_is_resolved_along_its_route(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("ruta.yaml", ROUTE_SET_FAILS).await;
    let id = h.start("T-RUTA", "web", json!({"ci": "no-es-ci"})).await;
    h.jobs().await;
    let incident = h.open_incident(&id).await;
    assert!(incident.after_effect, "{incident:?}");
    // What the route's `set` writes is what must be given.
    let err = h
        .engine
        .resolve_incident(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({"deuda": 0})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidData { errors } if errors.iter().any(|e| e.field == "motivo")),
        "{err:?}"
    );
    h.engine
        .resolve_incident(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({"motivo": 1})),
        )
        .await
        .unwrap();
    h.task(&id, "corregir").await;
    let i = h.instance(&id).await;
    assert_eq!(i.state.variables["motivo"], json!(1));
    assert!(i.state.variables.get("deuda").is_none(), "{i:?}");
    assert_eq!(h.sims.naf.calls(), 1, "NAF was not asked again");
}
on_both_backends!(
    a_failed_error_route_is_resolved_along_its_route,
    super::a_failed_error_route_is_resolved_along_its_route
);

const COMPUTED_TYPES: &str = r#"
code: T-TIPOS
name: Valores calculados de otro tipo
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: ci, type: string}
  - {name: monto, type: number}
  - {name: cuotas, type: integer}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: ci, type: string, required: true}], next: pedir}
  - id: pedir
    kind: user_task
    role: agente
    form: [{name: monto, type: number, required: true}]
    outcomes: [{id: ok, label: Listo, next: consultar, set: {cuotas: monto}}]
  - id: consultar
    kind: service_task
    connector: naf
    operation: check_portfolio
    input: {ci: ci}
    output: {cuotas: "result.debt_bs + 0.5"}
    next: fin
  - {id: fin, kind: end, outcome: listo}
"#;

/// What an outcome's `set` or a service task's `output` computes is
/// checked against the variable's declared type when it runs: `2.5` into
/// an `integer` is refused (the completion with 422, the answer with an
/// incident), a whole `3.0` is taken, as the integer 3.
async fn computed_values_must_fit_their_variables(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("tipos.yaml", COMPUTED_TYPES).await;
    let id = h.start("T-TIPOS", "web", json!({"ci": "4587213"})).await;
    let task = h.task(&id, "pedir").await;
    let err = h
        .engine
        .complete(tramite_engine::runtime::commands::CompleteTask {
            task: task.id.clone(),
            user: "agente1".to_owned(),
            outcome: "ok".to_owned(),
            data: tramite_tests::engine::object(json!({"monto": 2.5})),
            roles: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidData { errors } if errors[0].field == "cuotas" && errors[0].message.contains("does not fit `cuotas` (declared `integer`)")),
        "{err:?}"
    );
    assert_eq!(
        h.instance(&id).await.state.variables.get("monto"),
        None,
        "nothing was stored"
    );
    h.complete(&id, "pedir", "ok", json!({"monto": 3.0})).await;
    // Stored as the integer it is: CEL adds no double to an int, so a later
    // `cuotas + 1` would fail on 3.0.
    let cuotas = &h.instance(&id).await.state.variables["cuotas"];
    assert!(cuotas.is_i64() && cuotas == &json!(3), "{cuotas}");
    // NAF's debt for this client is 0.0: `0.0 + 0.5` is no integer.
    h.jobs().await;
    let incident = h.open_incident(&id).await;
    assert!(incident.after_effect, "{incident:?}");
    assert!(
        incident.message.contains("does not fit `cuotas`"),
        "{incident:?}"
    );
    assert_eq!(h.instance(&id).await.state.variables["cuotas"], json!(3));
}
on_both_backends!(
    computed_values_must_fit_their_variables,
    super::computed_values_must_fit_their_variables
);

const STORE_FAILS: &str = r#"
code: T-PAGO
name: Pago con monto ilegible
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: ci, type: string}
  - {name: monto, type: integer}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: ci, type: string, required: true}], next: esperar}
  - {id: esperar, kind: message_wait, message: pago, correlation: ci, store: {monto: message.monto}, next: fin}
  - {id: fin, kind: end, outcome: pagado}
"#;

/// A message whose `store` cannot be written (a text where the variable is
/// an integer) stops the request; the message did come, so resolving goes
/// on past the wait and must give what the `store` writes.
async fn a_failed_store_is_resolved_with_what_it_writes(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("pago.yaml", STORE_FAILS).await;
    let id = h.start("T-PAGO", "web", json!({"ci": "4587213"})).await;
    h.publish("pago", "4587213", "pago-1", json!({"monto": "diez"}))
        .await;
    let incident = h.open_incident(&id).await;
    assert!(
        incident.message.contains("does not fit `monto`"),
        "{incident:?}"
    );
    let err = h
        .engine
        .resolve_incident(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidData { errors } if errors.iter().any(|e| e.field == "monto")),
        "{err:?}"
    );
    h.engine
        .resolve_incident(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({"monto": 10})),
        )
        .await
        .unwrap();
    let i = h.instance(&id).await;
    assert_eq!(i.outcome.as_deref(), Some("pagado"));
    assert_eq!(i.state.variables["monto"], json!(10));
}
on_both_backends!(
    a_failed_store_is_resolved_with_what_it_writes,
    super::a_failed_store_is_resolved_with_what_it_writes
);

const GATE_FAILS: &str = r#"
code: T-COMPUERTA
name: Compuerta sin dato
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: n, type: integer}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: n, type: integer}], next: decidir}
  - id: decidir
    kind: exclusive_gate
    branches:
      - {when: n > 3, next: grande}
    default: chico
  - {id: grande, kind: end, outcome: grande}
  - {id: chico, kind: end, outcome: chico}
"#;

/// A gate that could not decide (it read a null) is resolved by deciding
/// again with the variables written; asked to "go on" past it, which it
/// has no one way to do, the resolution is refused, and the history says
/// what was done.
async fn a_gate_incident_is_decided_again_not_gone_past(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("compuerta.yaml", GATE_FAILS).await;
    let id = h.start("T-COMPUERTA", "web", json!({})).await;
    let incident = h.open_incident(&id).await;
    assert_eq!(incident.node_id, "decidir");
    let err = h
        .engine
        .resolve_incident_then(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({"n": 5})),
            Some(tramite_engine::runtime::commands::Then::GoOn),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidData { errors } if errors[0].field == "then"),
        "{err:?}"
    );
    h.engine
        .resolve_incident(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({"n": 5})),
        )
        .await
        .unwrap();
    assert_eq!(h.instance(&id).await.outcome.as_deref(), Some("grande"));
    let resolved = h.engine.history(&id).await.unwrap();
    let entry = resolved
        .iter()
        .find(|e| e.kind == "incident_resolved")
        .expect("resolved");
    assert_eq!(entry.data["then"], "run_again", "{:?}", entry.data);
}
on_both_backends!(
    a_gate_incident_is_decided_again_not_gone_past,
    super::a_gate_incident_is_decided_again_not_gone_past
);

const ESCALATION_IN_FORK: &str = r#"
code: T-ESCALATION
name: Escalamiento en paralelo
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: dividir}
  - {id: dividir, kind: fork, branches: [lenta, rapida], join: unir}
  - id: lenta
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Listo, next: unir}]
    due: 1h
    escalation: {next: aviso, interrupting: false}
  - id: aviso
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Avisado, next: unir}]
  - id: rapida
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Listo, next: unir}]
  - {id: unir, kind: join, next: fin}
  - {id: fin, kind: end, outcome: listo}
"#;

async fn non_interrupting_escalation_inside_a_fork(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("escalation.yaml", ESCALATION_IN_FORK).await;
    let id = h.start("T-ESCALATION", "web", json!({})).await;
    h.advance(Duration::from_secs(2 * 3_600));
    h.jobs().await;
    h.task(&id, "aviso").await;
    h.task(&id, "lenta").await; // still open beside its escalation
    h.complete(&id, "rapida", "ok", json!({})).await;
    h.complete(&id, "aviso", "ok", json!({})).await;
    assert_eq!(
        h.instance(&id).await.status,
        "running",
        "the join still waits for `lenta`"
    );
    h.complete(&id, "lenta", "ok", json!({})).await;
    let i = h.instance(&id).await;
    assert_eq!(i.outcome.as_deref(), Some("listo"));
    let history = h.history(&id).await;
    assert_eq!(
        history.iter().filter(|k| *k == "joined").count(),
        1,
        "the join fired once"
    );
}
on_both_backends!(
    non_interrupting_escalation_inside_a_fork,
    super::non_interrupting_escalation_inside_a_fork
);

/// A version stored before loading refused loops without a wait (written
/// here straight into the table): the path of a non-interrupting
/// escalation spins when its timer fires. The incident is the path's, on a
/// side token of its own; the task it left open stays its agent's, who
/// completes it, and no second task is opened. An interrupting one's task
/// is withdrawn with the incident, as the escalation would have done.
async fn a_side_path_that_cannot_run_leaves_the_task_to_its_agent(db: Db) {
    const BESIDE: &str = r#"
code: T-CICLO
name: Ciclo
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: atender}
  - id: atender
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Listo, next: fin}]
    due: 1h
    escalation: {next: avisar, interrupting: false}
  - {id: avisar, kind: user_task, role: agente, outcomes: [{id: ok, label: Visto, next: avisado}]}
  - {id: avisado, kind: end, outcome: avisado}
  - {id: fin, kind: end, outcome: listo}
"#;
    let h = Harness::new(db).await;
    h.deploy("ciclo.yaml", BESIDE).await;
    let spinning = BESIDE
        .replace("escalation: {next: avisar,", "escalation: {next: g1,")
        .replace(
            "  - {id: fin, kind: end, outcome: listo}",
            "  - {id: fin, kind: end, outcome: listo}\n  - {id: g1, kind: exclusive_gate, branches: [{when: 'false', next: fin}], default: g2}\n  - {id: g2, kind: exclusive_gate, branches: [{when: 'false', next: fin}], default: g1}",
        );
    assert_ne!(spinning, BESIDE);
    // A version stored as it is, past the checks a deploy makes.
    let store = |version: i64, source: String| {
        let h = &h;
        async move {
            let mut conn = h.engine.store().pool().acquire().await.unwrap();
            sqlx::query(
                "INSERT INTO definitions (code, version, content_hash, file_name, source, deployed_at) \
                 VALUES ('T-CICLO', $1, $2, 'ciclo.yaml', $3, 0)",
            )
            .bind(version)
            .bind(format!("antes-de-la-regla-{version}"))
            .bind(source)
            .execute(&mut *conn)
            .await
            .unwrap();
        }
    };
    store(2, spinning.clone()).await;
    let id = h.start("T-CICLO", "web", json!({})).await;
    assert_eq!(h.instance(&id).await.version, 2);
    h.advance(Duration::from_secs(2 * 3_600));
    h.jobs().await;
    let incident = h.open_incident(&id).await;
    assert!(incident.message.contains("loops"), "{}", incident.message);
    assert_eq!(
        incident.node_id, "g1",
        "the path's incident, where the path starts"
    );
    // The agent still has the task, and completes it.
    h.complete(&id, "atender", "ok", json!({})).await;
    let history = h.history(&id).await;
    assert_eq!(
        history.iter().filter(|k| *k == "task_created").count(),
        1,
        "{history:?}"
    );
    // Interrupting, the escalation takes the task: it leaves the inbox
    // with the incident (it stayed there, and completing it was refused).
    store(
        3,
        spinning.replace("interrupting: false", "interrupting: true"),
    )
    .await;
    let taken = h.start("T-CICLO", "web", json!({})).await;
    h.advance(Duration::from_secs(2 * 3_600));
    h.jobs().await;
    assert_eq!(h.open_incident(&taken).await.node_id, "atender");
    let open = h.open_tasks(&taken).await;
    assert!(open.is_empty(), "{open:?}");
}
on_both_backends!(
    a_side_path_that_cannot_run_leaves_the_task_to_its_agent,
    super::a_side_path_that_cannot_run_leaves_the_task_to_its_agent
);

/// Inside a fork, a side path may also end at an `end` of its own (the
/// definition format allows it; loading refused it as a branch "reaching an
/// end without passing its join"): the join waits for the main flow's
/// tokens only, and the instance ends with the main flow's outcome once
/// the side token has ended too.
async fn a_side_path_inside_a_fork_may_end_at_its_own_end(db: Db) {
    let h = Harness::new(db).await;
    let own_end = ESCALATION_IN_FORK
        .replace(
            "outcomes: [{id: ok, label: Avisado, next: unir}]",
            "outcomes: [{id: ok, label: Avisado, next: avisado}]",
        )
        .replace(
            "  - {id: fin, kind: end, outcome: listo}",
            "  - {id: fin, kind: end, outcome: listo}\n  - {id: avisado, kind: end, outcome: escalada}",
        );
    assert_ne!(own_end, ESCALATION_IN_FORK);
    h.deploy("escalation.yaml", &own_end).await;
    let id = h.start("T-ESCALATION", "web", json!({})).await;
    h.advance(Duration::from_secs(2 * 3_600));
    h.jobs().await;
    h.complete(&id, "aviso", "ok", json!({})).await;
    h.complete(&id, "rapida", "ok", json!({})).await;
    assert_eq!(
        h.instance(&id).await.status,
        "running",
        "`lenta` is still open"
    );
    h.complete(&id, "lenta", "ok", json!({})).await;
    let i = h.instance(&id).await;
    assert_eq!(
        (i.status.as_str(), i.outcome.as_deref()),
        ("completed", Some("listo"))
    );
}
on_both_backends!(
    a_side_path_inside_a_fork_may_end_at_its_own_end,
    super::a_side_path_inside_a_fork_may_end_at_its_own_end
);

const ESCALATION_BESIDE: &str = r#"
code: T-AVISO
name: Aviso al responsable
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}, {id: jefe, name: Jefe}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: atender}
  - id: atender
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Listo, next: hecho}]
    due: 1h
    escalation: {next: avisar_jefe, interrupting: false}
  - {id: avisar_jefe, kind: fork, branches: [avisar, registrar], join: avisados}
  - id: avisar
    kind: user_task
    role: jefe
    outcomes: [{id: visto, label: Visto, next: avisados}]
  - id: registrar
    kind: user_task
    role: jefe
    outcomes: [{id: visto, label: Registrado, next: avisados}]
  - {id: avisados, kind: join, next: avisado}
  - {id: hecho, kind: end, outcome: venta_concretada}
  - {id: avisado, kind: end, outcome: escalada}
"#;

/// A non-interrupting escalation outside a fork runs beside the task to
/// its own end (through a fork and join of its own); the instance ends when both have, with the outcome of the
/// main flow's end whichever ends last (a late sale must count as a sale
/// in the indicator, not as "escalada").
async fn a_side_escalation_does_not_decide_the_outcome(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("aviso.yaml", ESCALATION_BESIDE).await;
    for main_first in [true, false] {
        let id = h.start("T-AVISO", "web", json!({})).await;
        h.advance(Duration::from_secs(2 * 3_600));
        h.jobs().await;
        // The side path forks and joins before its end.
        let side = [("avisar", "visto"), ("registrar", "visto")];
        let order = if main_first {
            [("atender", "ok"), side[0], side[1]]
        } else {
            [side[0], side[1], ("atender", "ok")]
        };
        for (node, outcome) in &order[..2] {
            h.complete(&id, node, outcome, json!({})).await;
        }
        assert_eq!(
            h.instance(&id).await.status,
            "running",
            "one token still runs"
        );
        h.complete(&id, order[2].0, order[2].1, json!({})).await;
        let i = h.instance(&id).await;
        assert_eq!(
            (i.status.as_str(), i.outcome.as_deref()),
            ("completed", Some("venta_concretada")),
            "main flow first: {main_first}"
        );
        assert!(i.state.outcome.is_none(), "nothing left in the state");
    }
}
on_both_backends!(
    a_side_escalation_does_not_decide_the_outcome,
    super::a_side_escalation_does_not_decide_the_outcome
);

async fn cancelling_a_child_stops_its_parent_with_an_incident(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    with_the_installation_cancelled(&h, &id).await;
    let incidents = h.engine.incidents(Some("open"), Some(&id)).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].node_id, "instalacion");
    assert!(
        incidents[0]
            .message
            .contains("was cancelled: orden duplicada")
    );
    // The installation was done under the other order: the team lead
    // resolves with what P02 would have returned, and the sale goes on
    // without a second installation order.
    resolved_with_the_installation_done(&h, &id, &incidents[0].id).await;
}

/// Resolves `incident` (a cancelled OPR-PAS-P02's) with what the
/// installation would have returned: the sale goes on to step 12, with
/// no second child.
async fn resolved_with_the_installation_done(h: &Harness, id: &str, incident: &str) {
    h.engine
        .resolve_incident(
            incident,
            "jefe1",
            tramite_tests::engine::object(
                json!({"instalacion_realizada": true, "dias_ejecucion": 4}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(h.engine.children(id).await.unwrap().len(), 1);
    h.task(id, "seguimiento_venta").await;
    assert_eq!(h.instance(id).await.state.variables["dias_ejecucion"], 4);
}

/// The same incident as stored before its token recorded the cancelled
/// child (an upgrade, or an older node in a rolling one): resolving it
/// still goes past the call, with no second installation order.
async fn an_older_cancelled_child_incident_resolves_past_the_call(db: Db) {
    use sqlx::Connection;
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    with_the_installation_cancelled(&h, &id).await;
    // Rewrite the parent's state as the older code wrote it.
    let mut row = h.instance(&id).await;
    for t in &mut row.state.tokens {
        if let tramite_engine::runtime::state::Wait::Incident {
            cancelled_child, ..
        } = &mut t.wait
        {
            assert!(cancelled_child.take().is_some());
        }
    }
    let state = serde_json::to_string(&row.state).unwrap();
    assert!(!state.contains("cancelled_child"), "{state}");
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&h.db.url).await.unwrap();
    let sql = match h.db.kind {
        Db::Postgres => "UPDATE instances SET state = $1::jsonb WHERE id = $2",
        Db::Sqlite => "UPDATE instances SET state = $1 WHERE id = $2",
    };
    let updated = sqlx::query(sql)
        .bind(&state)
        .bind(&id)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    drop(conn);
    // The writer keeps the instances it wrote: a new engine reads the row.
    let mut h = h;
    h.restart().await;
    let incident = h.open_incident(&id).await;
    resolved_with_the_installation_done(&h, &id, &incident.id).await;
}
on_both_backends!(
    an_older_cancelled_child_incident_resolves_past_the_call,
    super::an_older_cancelled_child_incident_resolves_past_the_call
);
on_both_backends!(
    cancelling_a_child_stops_its_parent_with_an_incident,
    super::cancelling_a_child_stops_its_parent_with_an_incident
);

/// A child that could not start (its start data refused) leaves nothing to
/// stand for: resolving the parent's incident with the missing value runs
/// the call again, and the child starts.
async fn resolving_a_call_whose_child_never_started_runs_it(db: Db) {
    let h = Harness::new(db).await;
    let parent = r#"
code: T-PADRE
name: Padre
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
links:
  exit: [{code: T-HIJO, name: Hijo}]
variables:
  - {name: dato, type: string}
  - {name: hecho, type: boolean}
nodes:
  - id: inicio
    kind: start
    channels: [web]
    data: [{name: dato, type: string}]
    next: llamar
  - id: llamar
    kind: call
    procedure: T-HIJO
    input: {dato: dato}
    output: {hecho: output.hecho}
    next: fin
  - {id: fin, kind: end, outcome: listo}
"#;
    let child = r#"
code: T-HIJO
name: Hijo
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
links:
  entry: [{code: T-PADRE, name: Padre}]
variables:
  - {name: dato, type: string}
  - {name: hecho, type: boolean}
nodes:
  - id: inicio
    kind: start
    channels: [procedure]
    data: [{name: dato, type: string, required: true}]
    next: hacer
  - id: hacer
    kind: user_task
    role: agente
    form: [{name: hecho, type: boolean}]
    outcomes: [{id: ok, label: Listo, next: fin}]
  - {id: fin, kind: end, outcome: listo}
"#;
    h.engine
        .deploy(vec![
            ("padre.yaml".into(), parent.to_owned()),
            ("hijo.yaml".into(), child.to_owned()),
        ])
        .await
        .unwrap();
    let id = h.start("T-PADRE", "web", json!({})).await;
    let incidents = h.engine.incidents(Some("open"), Some(&id)).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert!(
        incidents[0].message.contains("cannot start"),
        "{}",
        incidents[0].message
    );
    h.engine
        .resolve_incident(
            &incidents[0].id,
            "operador1",
            tramite_tests::engine::object(json!({"dato": "corregido"})),
        )
        .await
        .unwrap();
    let children = h.engine.children(&id).await.unwrap();
    assert_eq!(
        children.len(),
        1,
        "the call ran again and started its child"
    );
    assert_eq!(children[0].state.variables["dato"], "corregido");
    h.complete(&children[0].id, "hacer", "ok", json!({"hecho": true}))
        .await;
    assert_eq!(h.instance(&id).await.outcome.as_deref(), Some("listo"));
    // A child that can never start (the operator did it by other means):
    // resolved going on, with what it would have returned.
    let id = h.start("T-PADRE", "web", json!({})).await;
    let incident = h.open_incident(&id).await;
    h.engine
        .resolve_incident_then(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({"hecho": true})),
            Some(tramite_engine::runtime::commands::Then::GoOn),
        )
        .await
        .unwrap();
    assert!(h.engine.children(&id).await.unwrap().is_empty());
    let row = h.instance(&id).await;
    assert_eq!(row.outcome.as_deref(), Some("listo"));
    assert_eq!(row.state.variables["hecho"], true);
}
on_both_backends!(
    resolving_a_call_whose_child_never_started_runs_it,
    super::resolving_a_call_whose_child_never_started_runs_it
);

/// Two nodes starting at once deploy the same definitions: both succeed,
/// versions stay sequential, identical content stays one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_deploy_at_once() {
    let h = Harness::new(Db::Postgres).await;
    let second = tramite_tests::engine::second_engine(&h).await;
    let changed = PARALLEL.replace("name: Paralelo", "name: Paralelo v2");
    let (a, b) = tokio::join!(
        h.engine
            .deploy(vec![("parallel.yaml".into(), changed.clone())]),
        second.deploy(vec![("parallel.yaml".into(), changed)]),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a[0].version, 1);
    assert_eq!(b[0].version, 1);
    assert!(a[0].new != b[0].new, "exactly one of them stored it");
    second.shutdown().await;
}

/// Two nodes publish two photos of one sending for one waiting instance at
/// once: one is taken by the wait, the other (the rest of the sending, P06's
/// `collect`) is added to its requirements; none is lost or taken twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_publish_to_one_wait() {
    let h = Harness::new(Db::Postgres).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    with_capacity_confirmed(&h, &id).await;
    h.complete(
        &id,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    let second = tramite_tests::engine::second_engine(&h).await;
    let message = |n: u32| tramite_engine::runtime::PublishMessage {
        name: "requisitos_whatsapp".into(),
        key: PHONE.into(),
        payload: json!({"media": [format!("doc{n}.jpg")]}),
        id: format!("wamid.race.{n}"),
        ttl_ms: 3_600_000,
    };
    let (a, b) = tokio::join!(h.engine.publish(message(1)), second.publish(message(2)));
    let outcomes = [a.unwrap(), b.unwrap()];
    let to_it = Delivery::Delivered {
        instance: id.clone(),
    };
    assert_eq!(outcomes, [to_it.clone(), to_it], "{outcomes:?}");
    h.task(&id, "imprimir_requisitos").await;
    let mut media: Vec<String> = serde_json::from_value(
        h.instance(&id).await.state.variables["requisitos_adjuntos"].clone(),
    )
    .unwrap();
    media.sort();
    assert_eq!(media, ["doc1.jpg", "doc2.jpg"]);
    let history = h.history(&id).await;
    assert_eq!(
        history.iter().filter(|k| *k == "message_received").count(),
        2
    );
    second.shutdown().await;
}

/// A client sends the requirements as several WhatsApp messages: P06's wait
/// (`collect: 3m`) takes the first, and the rest of the sending — kept
/// because it came before the wait, or coming after it while the agent is
/// at 9.1, each within 3 minutes of the last one taken (counted from when
/// the wait took it, not from when a kept one arrived) — is added to the
/// requirements. A message after 3 quiet minutes is a new sending, kept for
/// the next wait, which takes it in place of the first sending: that one is
/// kept beside it (`requisitos_anteriores`) when the agent asks for more.
async fn a_sending_of_several_messages_is_one_request(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    with_capacity_confirmed(&h, &id).await;
    let send = |n: &str| {
        let h = &h;
        let n = n.to_owned();
        async move {
            h.publish(
                "requisitos_whatsapp",
                PHONE,
                &format!("wamid.{n}"),
                json!({"media": [format!("{n}.jpg")]}),
            )
            .await
        }
    };
    // Before the wait: kept.
    assert_eq!(send("anverso").await, Delivery::Kept);
    h.advance(Duration::from_secs(20));
    assert_eq!(send("reverso").await, Delivery::Kept);
    // The agent asks for the requirements five minutes later.
    h.advance(Duration::from_secs(5 * 60));
    h.complete(
        &id,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    h.task(&id, "imprimir_requisitos").await;
    let to_it = Delivery::Delivered {
        instance: id.clone(),
    };
    assert_eq!(media(&h, &id).await, ["anverso.jpg", "reverso.jpg"]);
    // After it, while the agent is at 9.1: each within 3 minutes of the last.
    h.advance(Duration::from_secs(2 * 60));
    assert_eq!(send("factura").await, to_it);
    h.advance(Duration::from_secs(2 * 60));
    assert_eq!(send("croquis").await, to_it);
    assert_eq!(
        media(&h, &id).await,
        ["anverso.jpg", "reverso.jpg", "factura.jpg", "croquis.jpg"]
    );
    h.task(&id, "imprimir_requisitos").await;
    // Three quiet minutes later: another sending, for the next wait.
    h.advance(Duration::from_secs(4 * 60));
    assert_eq!(send("otro").await, Delivery::Kept);
    assert_eq!(media(&h, &id).await.len(), 4);
    h.complete(
        &id,
        "imprimir_requisitos",
        "incompletos",
        json!({"requisitos_impresos": false}),
    )
    .await;
    h.complete(
        &id,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    h.task(&id, "imprimir_requisitos").await;
    assert_eq!(media(&h, &id).await, ["otro.jpg"], "the next wait took it");
    // What came in the first sending is kept beside it, to print with it.
    assert_eq!(
        h.instance(&id).await.state.variables["requisitos_anteriores"],
        json!(["anverso.jpg", "reverso.jpg", "factura.jpg", "croquis.jpg"])
    );
}
on_both_backends!(
    a_sending_of_several_messages_is_one_request,
    super::a_sending_of_several_messages_is_one_request
);

/// One phone, two requests (a client asking for two services): each takes
/// its own sending, and a late photo goes to the request whose sending is
/// still open — counted from when each took its last message, not from when
/// the messages arrived (B took a photo kept from before A existed).
async fn the_rest_of_a_sending_goes_to_the_request_still_taking(db: Db) {
    let h = Harness::new(db).await;
    let b = through_identification(&h, "4587213").await;
    through_coverage(&h, &b, "Cala Cala").await;
    with_capacity_confirmed(&h, &b).await;
    h.advance(Duration::from_secs(5 * 60));
    let send = |n: &str| {
        let h = &h;
        let n = n.to_owned();
        async move {
            h.publish(
                "requisitos_whatsapp",
                PHONE,
                &format!("wamid.{n}"),
                json!({"media": [format!("{n}.jpg")]}),
            )
            .await
        }
    };
    assert_eq!(send("de_b").await, Delivery::Kept, "nobody waits yet");
    // A starts after that photo (and the minute of slack for clocks).
    h.advance(Duration::from_secs(3 * 60));
    let a = through_identification(&h, "4587213").await;
    through_coverage(&h, &a, "Cala Cala").await;
    with_capacity_confirmed(&h, &a).await;
    h.complete(
        &a,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    assert!(
        !h.task_open(&a, "imprimir_requisitos").await,
        "B's photo is not A's"
    );
    assert_eq!(
        send("de_a").await,
        Delivery::Delivered {
            instance: a.clone()
        }
    );
    h.advance(Duration::from_secs(60));
    h.complete(
        &b,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    assert_eq!(media(&h, &b).await, ["de_b.jpg"], "B took the kept photo");
    // 2.5 minutes later: A's sending is over, B's is not.
    h.advance(Duration::from_secs(150));
    assert_eq!(
        send("tarde").await,
        Delivery::Delivered {
            instance: b.clone()
        }
    );
    assert_eq!(media(&h, &b).await, ["de_b.jpg", "tarde.jpg"]);
    assert_eq!(media(&h, &a).await, ["de_a.jpg"]);
}
on_both_backends!(
    the_rest_of_a_sending_goes_to_the_request_still_taking,
    super::the_rest_of_a_sending_goes_to_the_request_still_taking
);

/// The requirements a request has received.
async fn media(h: &Harness, id: &str) -> Vec<String> {
    serde_json::from_value(h.instance(id).await.state.variables["requisitos_adjuntos"].clone())
        .unwrap()
}

/// A command whose caller stopped waiting (an HTTP request past its time
/// limit) before the writer reached it is not run: the caller was told it
/// timed out, and sending it again must not do it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_caller_gave_up_is_not_run() {
    use std::sync::atomic::Ordering::Relaxed;
    let h = Harness::new(Db::Postgres).await;
    let ids = tramite_tests::p06::waiting_for_identification(&h, 2).await;
    let lane = tramite_tests::engine::engine_with_lanes(&h, 1).await;
    let (holder, first) = hold_the_lane(&h, &lane, &ids[0]).await;
    // Queued behind the held lane, then abandoned by its caller.
    let abandoned = send_identification(&h, &lane, &ids[1], 1, false).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());
    release(holder).await;
    assert!(first.await.expect("joins").is_ok());
    // The lane has taken the next batch by the time a new command is answered.
    lane.cancel(&ids[0], "fin de la prueba", "supervisora")
        .await
        .unwrap();
    assert!(
        h.task_open(&ids[1], "identificar_cliente").await,
        "the abandoned completion was run"
    );
    assert_eq!(
        lane.stats().abandoned.load(Relaxed),
        1,
        "the completion was queued, then dropped by the writer"
    );
    lane.shutdown().await;
}

/// Managed PostgreSQL services often default to REPEATABLE READ; the
/// engine's advisory-lock-then-read steps need a fresh snapshot per
/// statement, so every connection sets READ COMMITTED for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_read_committed_whatever_the_database_default() {
    use sqlx::Connection;
    let mut h = Harness::new(Db::Postgres).await;
    let name = h.db.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = sqlx::PgConnection::connect(&h.db.url)
        .await
        .expect("PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'"
    )))
    .execute(&mut admin)
    .await
    .expect("alter database");
    h.restart().await;
    let mut conn = h.engine.store().pool().acquire().await.unwrap();
    let level: String = sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(level, "read committed");
    drop(conn);
    // And the engine works on such a database: two nodes race to deliver.
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    with_capacity_confirmed(&h, &id).await;
    let second = tramite_tests::engine::second_engine(&h).await;
    let subscribe = h.complete(
        &id,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    );
    let publish = second.publish(tramite_engine::runtime::PublishMessage {
        name: "requisitos_whatsapp".into(),
        key: PHONE.into(),
        payload: json!({"media": ["ci.jpg"]}),
        id: "wamid.rr.1".into(),
        ttl_ms: 3_600_000,
    });
    let ((), published) = tokio::join!(subscribe, publish);
    published.unwrap();
    h.task(&id, "imprimir_requisitos").await;
    second.shutdown().await;
}

/// A photo kept from the client's earlier request (or a "hola" sent before
/// any request existed) is not the requirements of a request started
/// later: the new one still waits, and takes the next message.
async fn a_message_from_before_the_instance_is_not_its_own(db: Db) {
    let h = Harness::new(db).await;
    let leftover = h
        .publish(
            "requisitos_whatsapp",
            PHONE,
            "wamid.semana.pasada",
            json!({"media": ["foto_vieja.jpg"]}),
        )
        .await;
    assert_eq!(leftover, Delivery::Kept);
    // Two hours later, still within its day of keeping (an expired one
    // would not be taken anyway).
    h.advance(Duration::from_secs(2 * 3_600));
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    with_capacity_confirmed(&h, &id).await;
    // Kept since a message may arrive before its wait: but after the start.
    let early = h
        .publish(
            "requisitos_whatsapp",
            PHONE,
            "wamid.temprano",
            json!({"media": ["ci.jpg"]}),
        )
        .await;
    assert_eq!(early, Delivery::Kept);
    h.complete(
        &id,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    h.task(&id, "imprimir_requisitos").await;
    let v = h.instance(&id).await.state.variables;
    assert_eq!(v["requisitos_adjuntos"], json!(["ci.jpg"]), "{v:?}");
    let pending = h.engine.messages("pending", 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, "wamid.semana.pasada");
    // Kept past its time (a day here), no wait will take it: listed as
    // expired, no longer as pending.
    h.advance(Duration::from_secs(25 * 3_600));
    assert!(h.engine.messages("pending", 10).await.unwrap().is_empty());
    let expired = h.engine.messages("expired", 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, "wamid.semana.pasada");
    assert_eq!(h.engine.messages("delivered", 10).await.unwrap().len(), 1);
}
on_both_backends!(
    a_message_from_before_the_instance_is_not_its_own,
    super::a_message_from_before_the_instance_is_not_its_own
);

async fn p06_indicator_for_days_with_a_known_mix(db: Db) {
    let h = Harness::new(db).await;
    const DAY: Duration = Duration::from_secs(86_400);
    // Day 1: 39 efficient of 40. Day 2: 18 of 20. Day 3: 19 of 20, exactly 95 %.
    for (efficient, total) in [(39, 40), (18, 20), (19, 20)] {
        for n in 0..total {
            tramite_tests::p06::sale(&h, n < efficient).await;
        }
        h.advance(DAY);
    }
    // Day 4: two efficient sales, one request still waiting for its
    // installation (it may yet fail: no verdict for the day) and one
    // cancelled by an operator (in neither line).
    tramite_tests::p06::sale(&h, true).await;
    tramite_tests::p06::sale(&h, true).await;
    let waiting = through_identification(&h, "4587213").await;
    through_coverage(&h, &waiting, "Cala Cala").await;
    let cancelled = through_identification(&h, "4587213").await;
    h.engine
        .cancel(&cancelled, "lead duplicado", "supervisora")
        .await
        .unwrap();
    let values = h
        .engine
        .indicator(&tramite_engine::runtime::IndicatorQuery {
            code: P06.into(),
            indicator: "venta_digital_eficiente".into(),
            from: tramite_tests::engine::T0 - 86_400_000,
            to: tramite_tests::engine::T0 + 5 * 86_400_000,
            period: None,
            utc_offset_minutes: -240,
        })
        .await
        .unwrap();
    type Row = (String, u64, u64, Option<f64>, Option<String>);
    let (open, cancelled): (Vec<u64>, Vec<u64>) =
        values.iter().map(|v| (v.open, v.cancelled)).unzip();
    assert_eq!((open, cancelled), (vec![0, 0, 0, 1], vec![0, 0, 0, 1]));
    let got: Vec<Row> = values
        .into_iter()
        .map(|v| {
            (
                v.period,
                v.numerator,
                v.denominator,
                v.value,
                v.verdict.map(|t| t.es),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "2026-11-27".into(),
                39,
                40,
                Some(97.5),
                Some("Aceptado".into())
            ),
            (
                "2026-11-28".into(),
                18,
                20,
                Some(90.0),
                Some("Observado".into())
            ),
            // The original is silent on exactly 95 %; the definition says Aceptado.
            (
                "2026-11-29".into(),
                19,
                20,
                Some(95.0),
                Some("Aceptado".into())
            ),
            // 100 % of what ended, provisional while one request runs.
            ("2026-11-30".into(), 2, 2, Some(100.0), None),
        ]
    );
}
on_both_backends!(
    p06_indicator_for_days_with_a_known_mix,
    super::p06_indicator_for_days_with_a_known_mix
);

async fn statistics_count_gate_branches_and_time_steps(db: Db) {
    let h = Harness::new(db).await;
    let rejected_by_naf = through_identification(&h, "5123987").await;
    h.advance(Duration::from_secs(90));
    h.complete(
        &rejected_by_naf,
        "informar_imposibilidad",
        "informado",
        json!({"motivo_rechazo": "central_riesgos"}),
    )
    .await;
    let rejected_by_gis = through_identification(&h, "4587213").await;
    through_coverage(&h, &rejected_by_gis, "Alalay").await;
    h.complete(
        &rejected_by_gis,
        "verificar_capacidad",
        "continuar",
        json!({"capacidad_confirmada": false}),
    )
    .await;
    let (steps, gates) = h
        .engine
        .statistics(
            P06,
            tramite_tests::engine::T0,
            tramite_tests::engine::T0 + 86_400_000,
        )
        .await
        .unwrap();
    let count = |gate: &str, next: &str| {
        gates
            .iter()
            .find(|g| g.gate == gate && g.next == next)
            .map_or(0, |g| g.count)
    };
    assert_eq!(
        count("tiene_impedimento", "informar_imposibilidad"),
        1,
        "NAF rejections: {gates:?}"
    );
    assert_eq!(count("tiene_impedimento", "solicitar_domicilio"), 1);
    assert_eq!(
        count("tiene_capacidad", "informar_imposibilidad"),
        1,
        "GIS rejections"
    );
    let step = steps
        .iter()
        .find(|s| s.node == "informar_imposibilidad")
        .expect("timed");
    assert_eq!((step.count, step.max_ms), (1, 90_000));
    assert!(
        steps
            .iter()
            .any(|s| s.node == "consultar_naf" && s.count == 2)
    );
}
on_both_backends!(
    statistics_count_gate_branches_and_time_steps,
    super::statistics_count_gate_branches_and_time_steps
);

async fn timer_pending_across_a_restart_fires_once(db: Db) {
    let mut h = Harness::new(db).await;
    let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
    h.complete(&id, "recibir_llamada", "llamada_perdida", json!({}))
        .await;
    h.crash().await;
    h.advance(Duration::from_secs(31 * 60));
    h.jobs().await;
    h.task(&id, "devolucion_vencida").await;
    assert!(
        !h.task_open(&id, "devolver_llamada").await,
        "the escalation interrupts the call-back"
    );
    h.restart().await;
    h.advance(Duration::from_secs(3_600));
    assert_eq!(h.jobs().await, 0, "nothing left to fire");
    let history = h.history(&id).await;
    assert_eq!(history.iter().filter(|k| *k == "task_overdue").count(), 1);
    // The lost-call deadline's path ends the request without contact.
    h.complete(&id, "devolucion_vencida", "cerrar", json!({}))
        .await;
    assert_eq!(
        h.instance(&id).await.outcome.as_deref(),
        Some("cliente_no_contactado")
    );
}
on_both_backends!(
    timer_pending_across_a_restart_fires_once,
    super::timer_pending_across_a_restart_fires_once
);

async fn messages_early_twice_and_late(db: Db) {
    let h = Harness::new(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    with_capacity_confirmed(&h, &id).await;
    // The client sends the documents before the agent asks for them.
    let early = h
        .publish(
            "requisitos_whatsapp",
            PHONE,
            "wamid.early",
            json!({"media": ["ci.jpg"]}),
        )
        .await;
    assert_eq!(early, Delivery::Kept);
    let pending = h.engine.messages("pending", 500).await.unwrap();
    assert_eq!(pending.len(), 1, "unmatched messages are listable");
    // The same message again (provider retry): delivered once.
    assert_eq!(
        h.publish(
            "requisitos_whatsapp",
            PHONE,
            "wamid.early",
            json!({"media": ["ci.jpg"]})
        )
        .await,
        Delivery::Duplicate
    );
    h.complete(
        &id,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    h.task(&id, "imprimir_requisitos").await;
    assert!(h.engine.messages("pending", 500).await.unwrap().is_empty());
    assert_eq!(
        h.history(&id)
            .await
            .iter()
            .filter(|k| *k == "message_received")
            .count(),
        1
    );
    // Sent back to ask again, nobody writes: after 48 h the agent is reminded.
    h.complete(
        &id,
        "imprimir_requisitos",
        "incompletos",
        json!({"requisitos_impresos": false}),
    )
    .await;
    h.complete(
        &id,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    h.advance(Duration::from_secs(49 * 3_600));
    h.jobs().await;
    h.task(&id, "recordar_requisitos").await;
    // A message after the timeout does not reach the withdrawn wait: it is kept.
    assert_eq!(
        h.publish(
            "requisitos_whatsapp",
            PHONE,
            "wamid.late",
            json!({"media": []})
        )
        .await,
        Delivery::Kept
    );
    h.complete(&id, "recordar_requisitos", "cliente_desiste", json!({}))
        .await;
    let i = h.instance(&id).await;
    assert_eq!(i.outcome.as_deref(), Some("venta_no_concretada"));
    assert_eq!(
        i.state.variables["motivo_rechazo"],
        json!("requisitos_no_recibidos")
    );
}
on_both_backends!(
    messages_early_twice_and_late,
    super::messages_early_twice_and_late
);

async fn entry_procedure_starts_p06_without_waiting(db: Db) {
    let h = Harness::new(db).await;
    let id = h.start("COM-GCM-P01", "other", json!({})).await;
    h.complete(
        &id,
        "definir_producto",
        "registrar",
        json!({"codigo_producto": "internet_fibra", "aprobado": true, "telefono_interesado": PHONE}),
    )
    .await;
    assert_eq!(
        h.instance(&id).await.outcome.as_deref(),
        Some("producto_definido"),
        "it does not wait"
    );
    let child = h.engine.children(&id).await.unwrap().remove(0);
    assert_eq!(
        (child.code.as_str(), child.channel.as_str()),
        (P06, "procedure")
    );
    assert_eq!(child.parent_id.as_deref(), Some(id.as_str()));
    // A call by procedure is not an IVR call: P06 routes it to the digital review (2).
    h.task(&child.id, "revisar_solicitud_digital").await;
}
on_both_backends!(
    entry_procedure_starts_p06_without_waiting,
    super::entry_procedure_starts_p06_without_waiting
);

const DAY: Duration = Duration::from_secs(86_400);

/// Retention: a purge deletes each instance that ended before its time,
/// with its tasks, jobs, messages and history, and each message no instance
/// took once it expired before then; a running instance (however old), one
/// that ended since, and one whose called procedure still runs are kept.
async fn a_purge_deletes_what_ended_before_its_time(db: Db) {
    let h = Harness::new(db).await;
    // Ended ten days ago, having received the client's WhatsApp message.
    let old = through_identification(&h, "4587213").await;
    through_coverage(&h, &old, "Cala Cala").await;
    through_requirements(&h, &old).await;
    assert_eq!(h.engine.messages_of(&old).await.unwrap().len(), 1);
    h.engine
        .cancel(&old, "cliente desistió", "operador1")
        .await
        .unwrap();
    // Started ten days ago and still running.
    let running = through_identification(&h, "4587213").await;
    // A message nobody waits for, kept a day.
    let kept = h
        .publish("requisitos_whatsapp", "70000001", "wamid.nadie", json!({}))
        .await;
    assert_eq!(kept, Delivery::Kept);
    // An entry procedure that ended at once, its P06 still running.
    let parent = h.start("COM-GCM-P01", "other", json!({})).await;
    h.complete(
        &parent,
        "definir_producto",
        "registrar",
        json!({"codigo_producto": "internet_fibra", "aprobado": true, "telefono_interesado": PHONE}),
    )
    .await;
    let child = h.engine.children(&parent).await.unwrap().remove(0).id;
    assert!(h.instance(&parent).await.ended_at.is_some());
    h.advance(10 * DAY);
    // Ended now: kept.
    let recent = through_identification(&h, "4587213").await;
    h.engine
        .cancel(&recent, "duplicada", "operador1")
        .await
        .unwrap();

    let before = h.engine.now() - (5 * DAY).as_millis() as i64;
    let purged = h.engine.purge(before).await.unwrap();
    assert_eq!(purged.instances, vec![old.clone()]);
    assert_eq!(purged.messages, 1, "the message nobody took");
    let gone = h.engine.instance(&old).await.unwrap_err();
    assert!(matches!(gone, Error::NotFound { .. }), "{gone:?}");
    assert!(h.engine.history(&old).await.unwrap().is_empty());
    assert!(h.engine.messages_of(&old).await.unwrap().is_empty());
    let tasks = h
        .engine
        .tasks(&Filter {
            instance_id: Some(old.clone()),
            status: Some("completed".to_owned()),
            limit: 100,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert!(tasks.is_empty(), "{tasks:?}");
    assert!(h.engine.messages("expired", 10).await.unwrap().is_empty());
    for id in [&running, &recent, &parent, &child] {
        h.instance(id).await;
    }
    h.task(&running, "solicitar_domicilio").await;
    assert_eq!(
        h.engine.purge(before).await.unwrap(),
        Default::default(),
        "nothing more is due"
    );

    // Once its P06 has ended, the entry procedure goes; the P06, ended
    // just now, stays until its own time comes.
    h.engine
        .cancel(&child, "sin interés", "operador1")
        .await
        .unwrap();
    let purged = h.engine.purge(before).await.unwrap();
    assert_eq!(purged.instances, vec![parent.clone()]);
    assert_eq!(h.instance(&child).await.status, "cancelled");
    h.advance(10 * DAY);
    let before = h.engine.now() - (5 * DAY).as_millis() as i64;
    let mut purged = h.engine.purge(before).await.unwrap().instances;
    purged.sort();
    let mut expected = vec![recent.clone(), child.clone()];
    expected.sort();
    assert_eq!(purged, expected);
    h.instance(&running).await;
}
on_both_backends!(
    a_purge_deletes_what_ended_before_its_time,
    super::a_purge_deletes_what_ended_before_its_time
);

/// A running engine purges on its own when `retention` is set: an
/// instance that ended longer ago is gone within a pass of the loop.
async fn retention_purges_on_its_own(db: Db) {
    let mut h = Harness::new(db).await;
    let old = through_identification(&h, "4587213").await;
    h.engine
        .cancel(&old, "cliente desistió", "operador1")
        .await
        .unwrap();
    let kept = through_identification(&h, "4587213").await;
    h.advance(10 * DAY);
    h.restart_with(|c| c.retention = Some(5 * DAY)).await;
    h.engine.start_workers();
    let mut gone = false;
    for _ in 0..500 {
        if matches!(h.engine.instance(&old).await, Err(Error::NotFound { .. })) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the loop purged the instance");
    h.instance(&kept).await;
}
on_both_backends!(
    retention_purges_on_its_own,
    super::retention_purges_on_its_own
);

const PARENT: &str = r#"
code: T-PARENT
name: Padre
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
links:
  exit: [{code: T-CHILD, name: Hijo}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: llamar}
  - id: llamar
    kind: call
    procedure: T-CHILD
    input: {telefono: "'no es un teléfono'"}
    next: fin
  - {id: fin, kind: end, outcome: listo}
"#;

const CHILD: &str = r#"
code: T-CHILD
name: Hijo
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables: [{name: telefono, type: string}]
nodes:
  - id: inicio
    kind: start
    channels: [procedure]
    data: [{name: telefono, type: string, required: true, pattern: "[0-9]{7,8}"}]
    next: fin
  - {id: fin, kind: end, outcome: listo}
"#;

async fn a_child_that_cannot_start_raises_an_incident_on_the_call(db: Db) {
    let h = Harness::new(db).await;
    h.engine
        .deploy(vec![
            ("parent.yaml".into(), PARENT.into()),
            ("child.yaml".into(), CHILD.into()),
        ])
        .await
        .unwrap();
    let id = h.start("T-PARENT", "web", json!({})).await;
    let incidents = h.engine.incidents(Some("open"), Some(&id)).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].node_id, "llamar");
    assert!(
        incidents[0].message.contains("cannot start `T-CHILD`"),
        "{}",
        incidents[0].message
    );
    assert!(h.engine.children(&id).await.unwrap().is_empty());
    // The history does not leave it at "started": it says no child came.
    let history = h.history(&id).await;
    let asked = history.iter().position(|k| k == "child_started");
    let failed = history.iter().position(|k| k == "child_start_failed");
    assert!(
        matches!((asked, failed), (Some(a), Some(f)) if a < f),
        "{history:?}"
    );
    // Fixed by hand (the operator writes nothing: the call is re-run and fails again).
    h.engine
        .retry_incident(&incidents[0].id, "operador1")
        .await
        .unwrap();
    assert_eq!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .len(),
        1
    );
}
on_both_backends!(
    a_child_that_cannot_start_raises_an_incident_on_the_call,
    super::a_child_that_cannot_start_raises_an_incident_on_the_call
);

/// The parent of [`PARENT`], with a call that does not wait for its child's
/// end; `phone` is the start data the child gets.
fn parent_not_waiting(phone: &str) -> String {
    PARENT
        .replace("'no es un teléfono'", phone)
        .replace("    next: fin\n", "    wait: false\n    next: fin\n")
}

/// A call that does not wait still waits for its child's start: a child
/// that cannot start leaves the token at the call with an incident (it used
/// to have moved on, so the failure was dropped once the parent had ended).
async fn a_child_that_cannot_start_stops_a_call_that_does_not_wait(db: Db) {
    let h = Harness::new(db).await;
    h.engine
        .deploy(vec![
            (
                "parent.yaml".into(),
                parent_not_waiting("'no es un teléfono'"),
            ),
            ("child.yaml".into(), CHILD.into()),
        ])
        .await
        .unwrap();
    let id = h.start("T-PARENT", "web", json!({})).await;
    let parent = h.instance(&id).await;
    assert_eq!(parent.status, "running", "it did not move on to its end");
    let incidents = h.engine.incidents(Some("open"), Some(&id)).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].node_id, "llamar");
    assert!(
        incidents[0].message.contains("cannot start `T-CHILD`"),
        "{}",
        incidents[0].message
    );
    assert!(h.engine.children(&id).await.unwrap().is_empty());
    assert!(!h.history(&id).await.contains(&"end_reached".to_owned()));
}
on_both_backends!(
    a_child_that_cannot_start_stops_a_call_that_does_not_wait,
    super::a_child_that_cannot_start_stops_a_call_that_does_not_wait
);

/// A call that does not wait moves on once its child has started, even when
/// the child ends at once in the same transaction (its end is not taken as
/// the call's).
async fn a_call_that_does_not_wait_moves_on_once_its_child_started(db: Db) {
    let h = Harness::new(db).await;
    h.engine
        .deploy(vec![
            ("parent.yaml".into(), parent_not_waiting("'72345678'")),
            ("child.yaml".into(), CHILD.into()),
        ])
        .await
        .unwrap();
    let id = h.start("T-PARENT", "web", json!({})).await;
    let parent = h.instance(&id).await;
    assert_eq!(
        (parent.status.as_str(), parent.outcome.as_deref()),
        ("completed", Some("listo"))
    );
    let children = h.engine.children(&id).await.unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].status, "completed");
    let history = h.history(&id).await;
    assert_eq!(
        history.iter().filter(|k| *k == "child_started").count(),
        1,
        "{history:?}"
    );
    assert!(!history.contains(&"child_ended".to_owned()), "{history:?}");
    assert!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .is_empty()
    );
}
on_both_backends!(
    a_call_that_does_not_wait_moves_on_once_its_child_started,
    super::a_call_that_does_not_wait_moves_on_once_its_child_started
);

/// A parent that calls one child without waiting (`avisar`) and waits for
/// another (`revisar`), whose output is read as a number.
const LINKED_PARENT: &str = r#"
code: T-LP
name: Padre
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
links: {exit: [{code: T-LH, name: Hijo}]}
variables: [{name: numero, type: integer}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: avisar}
  - {id: avisar, kind: call, procedure: T-LH, wait: false, next: revisar}
  - {id: revisar, kind: call, procedure: T-LH, wait: true, output: {numero: "int(output.texto)"}, next: fin}
  - {id: fin, kind: end, outcome: listo}
"#;

/// The child of [`LINKED_PARENT`]: an agent writes a text.
const LINKED_CHILD: &str = r#"
code: T-LH
name: Hijo
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables: [{name: texto, type: string}]
nodes:
  - {id: inicio, kind: start, channels: [procedure], next: escribir}
  - id: escribir
    kind: user_task
    role: agente
    form: [{name: texto, type: string, required: true}]
    outcomes: [{id: hecho, label: Hecho, next: fin}]
  - {id: fin, kind: end, outcome: listo}
"#;

/// The child `parent` started at its call `node`.
async fn child_at(h: &Harness, parent: &str, node: &str) -> String {
    let history = h.engine.history(parent).await.unwrap();
    history
        .iter()
        .find(|e| e.kind == "child_started" && e.node_id.as_deref() == Some(node))
        .and_then(|e| e.data["child"].as_str())
        .unwrap_or_else(|| panic!("no child started at `{node}`: {history:?}"))
        .to_owned()
}

/// Children stay on the version they started with when the called procedure
/// is deployed again; an `output` that fails on what the child returned
/// stops the parent at the call with an incident (the child has ended: it is
/// not run again), resolved with the value the parent should have read.
async fn a_child_keeps_its_version_and_a_failed_output_stops_its_parent(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("hijo.yaml", LINKED_CHILD).await;
    h.deploy("padre.yaml", LINKED_PARENT).await;
    let id = h.start("T-LP", "web", json!({})).await;
    let waited = child_at(&h, &id, "revisar").await;
    h.deploy(
        "hijo.yaml",
        &LINKED_CHILD.replace("name: Hijo", "name: Hijo nuevo"),
    )
    .await;
    assert_eq!(
        h.instance(&waited).await.version,
        1,
        "started before the deploy"
    );
    let later = h.start("T-LP", "web", json!({})).await;
    let later_child = child_at(&h, &later, "revisar").await;
    assert_eq!(
        h.instance(&later_child).await.version,
        2,
        "started after it"
    );
    h.complete(&waited, "escribir", "hecho", json!({"texto": "tres"}))
        .await;
    assert_eq!(h.instance(&waited).await.status, "completed");
    let parent = h.instance(&id).await;
    assert_eq!(parent.status, "running");
    let incident = h.open_incident(&id).await;
    assert_eq!(incident.node_id, "revisar");
    assert!(incident.after_effect, "the child ended: not run again");
    h.engine
        .resolve_incident(
            &incident.id,
            "operador1",
            tramite_tests::engine::object(json!({"numero": 3})),
        )
        .await
        .unwrap();
    let parent = h.instance(&id).await;
    assert_eq!(parent.status, "completed");
    assert_eq!(parent.state.variables["numero"], json!(3));
    assert_eq!(
        h.engine.children(&id).await.unwrap().len(),
        2,
        "no child again"
    );
}
on_both_backends!(
    a_child_keeps_its_version_and_a_failed_output_stops_its_parent,
    super::a_child_keeps_its_version_and_a_failed_output_stops_its_parent
);

/// Cancelling a parent cancels the child it waits for, not the one it
/// started without waiting: that one goes on, and can still be worked.
async fn cancelling_a_parent_leaves_the_child_it_did_not_wait_for(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("hijo.yaml", LINKED_CHILD).await;
    h.deploy("padre.yaml", LINKED_PARENT).await;
    let id = h.start("T-LP", "web", json!({})).await;
    let told = child_at(&h, &id, "avisar").await;
    let waited = child_at(&h, &id, "revisar").await;
    h.engine
        .cancel(&id, "duplicada", "supervisor1")
        .await
        .unwrap();
    assert_eq!(h.instance(&id).await.status, "cancelled");
    assert_eq!(h.instance(&waited).await.status, "cancelled");
    assert_eq!(h.instance(&told).await.status, "running");
    h.complete(&told, "escribir", "hecho", json!({"texto": "listo"}))
        .await;
    assert_eq!(h.instance(&told).await.status, "completed");
}
on_both_backends!(
    cancelling_a_parent_leaves_the_child_it_did_not_wait_for,
    super::cancelling_a_parent_leaves_the_child_it_did_not_wait_for
);

/// Procedures that call each other in a ring: one command starts at most
/// `MAX_STARTS_PER_COMMAND` instances, and the call that would start one
/// more gets an incident (the writer used to start instances without end).
async fn procedures_calling_each_other_in_a_ring_stop_at_the_limit(db: Db) {
    let ring = |me: &str, other: &str| {
        format!(
            r#"
code: {me}
name: Anillo
version: 1
owner_role: agente
roles: [{{id: agente, name: Agente}}]
links:
  exit: [{{code: {other}, name: Otro}}]
nodes:
  - {{id: inicio, kind: start, channels: [web, procedure], next: llamar}}
  - {{id: llamar, kind: call, procedure: {other}, next: fin}}
  - {{id: fin, kind: end, outcome: listo}}
"#
        )
    };
    let h = Harness::new(db).await;
    let deployed = h
        .engine
        .deploy(vec![
            ("a.yaml".into(), ring("T-RING-A", "T-RING-B")),
            ("b.yaml".into(), ring("T-RING-B", "T-RING-A")),
        ])
        .await
        .unwrap();
    // Deployed, each with a warning naming the whole cycle.
    assert!(
        deployed[0].warnings.iter().any(|w| w.contains(
            "warning[call-cycle]: calling `T-RING-B` closes a cycle of calls: T-RING-A → T-RING-B → T-RING-A"
        )),
        "{:?}",
        deployed[0].warnings
    );
    assert!(
        deployed[1]
            .warnings
            .iter()
            .any(|w| w.contains("closes a cycle of calls: T-RING-B → T-RING-A → T-RING-B")),
        "{:?}",
        deployed[1].warnings
    );
    let first = h.start("T-RING-A", "web", json!({})).await;
    let limit = tramite_engine::runtime::commands::MAX_STARTS_PER_COMMAND;
    // Walk the chain: each instance's one child, down to the last.
    let mut chain = vec![first.clone()];
    loop {
        let children = h.engine.children(chain.last().unwrap()).await.unwrap();
        assert!(children.len() <= 1);
        let Some(child) = children.into_iter().next() else {
            break;
        };
        chain.push(child.id);
    }
    assert_eq!(
        chain.len(),
        limit + 1,
        "the first and {limit} started by calls"
    );
    let last = chain.last().unwrap();
    let incidents = h.engine.incidents(Some("open"), Some(last)).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].node_id, "llamar");
    assert!(
        incidents[0].message.contains("ring"),
        "{}",
        incidents[0].message
    );
    assert!(
        h.engine
            .incidents(Some("open"), Some(&first))
            .await
            .unwrap()
            .is_empty()
    );
}
on_both_backends!(
    procedures_calling_each_other_in_a_ring_stop_at_the_limit,
    super::procedures_calling_each_other_in_a_ring_stop_at_the_limit
);

/// Timers due on two nodes of one PostgreSQL database fire once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_fire_each_timer_once() {
    let h = Harness::new(Db::Postgres).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
        h.complete(&id, "recibir_llamada", "llamada_perdida", json!({}))
            .await;
        ids.push(id);
    }
    let second = tramite_tests::engine::second_engine(&h).await;
    h.advance(Duration::from_secs(31 * 60));
    let (a, b) = tokio::join!(h.engine.run_due_jobs(), second.run_due_jobs());
    assert_eq!(a.unwrap() + b.unwrap(), 10);
    for id in &ids {
        let history = h.history(id).await;
        assert_eq!(
            history.iter().filter(|k| *k == "task_overdue").count(),
            1,
            "{id}"
        );
        h.task(id, "devolucion_vencida").await;
    }
    second.shutdown().await;
}

const INBOX_LANES: &str = r#"
code: T-INBOX
name: Bandeja
version: 1
owner_role: jefe
roles: [{id: agente, name: Agente}, {id: jefe, name: Jefe}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: dividir}
  - {id: dividir, kind: fork, branches: [pronto, tarde, sin_plazo, del_jefe], join: unir}
  - {id: pronto, kind: user_task, role: agente, due: 10m, outcomes: [{id: ok, label: Listo, next: unir}]}
  - {id: tarde, kind: user_task, role: agente, due: 1h, outcomes: [{id: ok, label: Listo, next: unir}]}
  - {id: sin_plazo, kind: user_task, role: agente, outcomes: [{id: ok, label: Listo, next: unir}]}
  - {id: del_jefe, kind: user_task, role: jefe, due: 30m, outcomes: [{id: ok, label: Listo, next: unir}]}
  - {id: unir, kind: join, next: fin}
  - {id: fin, kind: end, outcome: listo}
"#;

/// Every page of an inbox over several roles, open and claimed tasks, with
/// and without due times, in due order (none last), each task exactly once.
async fn inbox_pages_merge_roles_and_statuses_in_due_order(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("inbox.yaml", INBOX_LANES).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(h.start("T-INBOX", "web", json!({})).await);
        h.advance(Duration::from_secs(60));
    }
    // Some tasks claimed, so the pages mix both statuses.
    for id in ids.iter().step_by(2) {
        let task = h.task(id, "tarde").await;
        h.engine.claim(&task.id, "ana").await.unwrap();
    }
    let all = |after| Filter {
        roles: vec!["agente".into(), "jefe".into()],
        limit: 3,
        after,
        ..Filter::default()
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = h.engine.tasks(&all(after.clone())).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(tramite_engine::store::tasks::TaskCursor::after(last));
        seen.extend(page);
    }
    assert_eq!(seen.len(), 20, "4 tasks × 5 instances, each once");
    let keys: Vec<_> = seen
        .iter()
        .map(|t| (t.due_at.unwrap_or(i64::MAX), t.created_at, t.id.clone()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "pages come in due order");
    let nodes: Vec<&str> = seen.iter().map(|t| t.node_id.as_str()).collect();
    assert_eq!(
        &nodes[..5],
        ["pronto"; 5],
        "the first five are due in 10 minutes"
    );
    assert_eq!(&nodes[15..], ["sin_plazo"; 5], "no due time: last");
    assert_eq!(
        seen.iter().filter(|t| t.status == "claimed").count(),
        3,
        "claimed tasks are in the inbox too"
    );
    // No role named: every role's tasks, in the same pages (a lane per role
    // the deployed versions name, since no index orders all tasks alone).
    let mut every = Vec::new();
    let mut after = None;
    loop {
        let page = h
            .engine
            .tasks(&Filter {
                limit: 3,
                after: after.clone(),
                ..Filter::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(tramite_engine::store::tasks::TaskCursor::after(last));
        every.extend(page.into_iter().map(|t| t.id));
    }
    let ids: Vec<String> = seen.iter().map(|t| t.id.clone()).collect();
    assert_eq!(every, ids);
    // One role, one status, due before a moment.
    let lead = h
        .engine
        .tasks(&Filter {
            roles: vec!["jefe".into()],
            due_before: Some(tramite_tests::engine::T0 + 33 * 60_000),
            limit: 50,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(lead.len(), 3, "the lead's tasks due within 33 minutes");
    assert!(lead.iter().all(|t| t.node_id == "del_jefe"));
    let claimed = h
        .engine
        .tasks(&Filter {
            status: Some("claimed".into()),
            limit: 50,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
}
on_both_backends!(
    inbox_pages_merge_roles_and_statuses_in_due_order,
    super::inbox_pages_merge_roles_and_statuses_in_due_order
);

/// Nodes sharing PostgreSQL hear of each other's jobs: a node whose workers
/// poll only every minute runs a job another node scheduled within moments,
/// woken by `NOTIFY` on the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_is_woken_by_another_nodes_job() {
    use std::sync::Arc;
    use tramite_engine::runtime::{Engine, EngineConfig};
    let h = Harness::new(Db::Postgres).await;
    let mut config = EngineConfig::new(h.db.url.clone());
    config.catalog = tramite_connectors::catalog();
    config.connectors = h.connectors.clone();
    config.clock = Arc::clone(&h.clock) as Arc<dyn tramite_engine::runtime::clock::Clock>;
    config.node_name = "node-b".to_owned();
    config.poll = Duration::from_secs(60);
    let b = Engine::open(config).await.unwrap();
    b.start_workers();
    // Node B listens, finds nothing to do and sleeps for a minute.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Node A (the harness's engine, without workers) schedules the NAF check.
    let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
    h.complete(&id, "recibir_llamada", "atendida", json!({}))
        .await;
    h.complete(
        &id,
        "identificar_cliente",
        "continuar",
        json!({"nombre_cliente": "Juan Pérez", "servicio_solicitado": "trio", "ci": "4587213"}),
    )
    .await;
    let started = std::time::Instant::now();
    while !h.task_open(&id, "solicitar_domicilio").await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node B did not wake up for the job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.sims.naf.calls(), 1, "run once, by node B");
    b.shutdown().await;
}

/// A TCP relay in front of PostgreSQL that can lose a COMMIT's answer.
/// Armed with 1, the next COMMIT reaches the server and the connection is
/// cut before the server's answer comes back (committed, but the engine
/// cannot know); armed with 2, the connection is cut instead of sending it
/// (never committed); armed with 3, the same, and from then on every
/// connection through the relay is a hole (what each side sends is
/// dropped, nothing is closed: a network that silently lost the server),
/// until the trigger is set to something else than [`HOLE`]. Returns the
/// relay's port and its trigger.
async fn lossy_relay(upstream: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU8>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let armed = Arc::new(AtomicU8::new(0));
    let trigger = Arc::clone(&armed);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let armed = Arc::clone(&armed);
            tokio::spawn(async move {
                let (mut client_in, mut client_out) = client.into_split();
                let (mut server_in, mut server_out) = server.into_split();
                let cut = Arc::new(AtomicBool::new(false));
                let cut_down = Arc::clone(&cut);
                let down = {
                    let armed = Arc::clone(&armed);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(n @ 1..) = server_in.read(&mut buf).await {
                            if armed.load(SeqCst) == HOLE {
                                continue;
                            }
                            if cut_down.load(SeqCst)
                                || client_out.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    })
                };
                let mut buf = vec![0u8; 65_536];
                while let Ok(n @ 1..) = client_in.read(&mut buf).await {
                    let chunk = &buf[..n];
                    if armed.load(SeqCst) == HOLE {
                        continue;
                    }
                    // The simple-protocol query `COMMIT`, as sqlx sends it.
                    if chunk.windows(COMMIT.len()).any(|w| w == COMMIT) {
                        match armed.swap(0, SeqCst) {
                            1 => {
                                cut.store(true, SeqCst);
                                let _ = server_out.write_all(chunk).await;
                                // Time for the server to commit before the cut.
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                break;
                            }
                            2 => {
                                cut.store(true, SeqCst);
                                break;
                            }
                            3 => {
                                armed.store(HOLE, SeqCst);
                                cut.store(true, SeqCst);
                                break;
                            }
                            _ => {}
                        }
                    }
                    if server_out.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                // Dropping both halves of both sockets closes them.
                down.abort();
            });
        }
    });
    (port, trigger)
}

/// The trigger of [`lossy_relay`] while it is a hole.
const HOLE: u8 = 255;

/// A new PostgreSQL database, and an engine (the shipped processes
/// deployed) that reaches it through a [`lossy_relay`], with its trigger.
async fn engine_behind_a_lossy_relay() -> (
    tramite_tests::engine::TestDb,
    tramite_engine::runtime::Engine,
    std::sync::Arc<std::sync::atomic::AtomicU8>,
) {
    use tramite_engine::runtime::{Engine, EngineConfig};
    use tramite_tests::engine::TestDb;
    let db = TestDb::new(Db::Postgres).await;
    let authority_start = db
        .url
        .find('@')
        .map_or(db.url.find("://").unwrap() + 3, |i| i + 1);
    let authority_end = authority_start + db.url[authority_start..].find('/').unwrap();
    let upstream = db.url[authority_start..authority_end].to_owned();
    let (port, trigger) = lossy_relay(upstream.clone()).await;
    let mut config = EngineConfig::new(db.url.replace(&upstream, &format!("127.0.0.1:{port}")));
    config.catalog = tramite_connectors::catalog();
    config.connectors = tramite_connectors::Simulators::new().connectors();
    let engine = Engine::open(config).await.unwrap();
    engine
        .deploy_dir(&tramite_tests::repo_root().join("processes"))
        .await
        .unwrap();
    (db, engine, trigger)
}

/// A commit whose answer is lost, where the database cannot be asked
/// either (the network silently drops everything: no error, no answer), is
/// answered 503 `commit-outcome-unknown` after the engine's patience, not
/// after as long as the dead connections take to time out: the lane holds
/// its batch meanwhile.
#[tokio::test]
async fn a_lost_commit_answer_that_cannot_be_looked_up_is_answered_in_time() {
    use std::sync::atomic::Ordering::SeqCst;
    use tramite_engine::runtime::StartInstance;
    let (_db, engine, trigger) = engine_behind_a_lossy_relay().await;
    trigger.store(3, SeqCst);
    let start = engine.start(StartInstance {
        code: P06.to_owned(),
        business_key: "SIN-RED-1".to_owned(),
        channel: "ivr".to_owned(),
        data: tramite_tests::engine::object(json!({"telefono": PHONE})),
        actor: "test".to_owned(),
        request_id: None,
    });
    // Ten seconds: twice the patience; without it the lookup waits on the
    // dead connections for good.
    let answer = tokio::time::timeout(Duration::from_secs(10), start)
        .await
        .expect("answered within twice the engine's patience");
    assert_eq!(trigger.load(SeqCst), HOLE, "the relay cut a COMMIT");
    assert!(
        matches!(answer, Err(Error::CommitOutcomeUnknown)),
        "{answer:?}"
    );
    trigger.store(0, SeqCst);
    engine.halt().await;
}

/// A commit whose answer is lost is looked up (PostgreSQL's `txid_status`),
/// not guessed: a start that did commit is acknowledged once, not run again
/// (which would start a second instance); one that did not is run again.
#[tokio::test]
async fn a_lost_commit_answer_is_looked_up_not_guessed() {
    use sqlx::Connection;
    use std::sync::atomic::Ordering::SeqCst;
    use tramite_engine::runtime::StartInstance;
    let (db, engine, trigger) = engine_behind_a_lossy_relay().await;
    let mut direct = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for (mode, key) in [(1, "RESPUESTA-PERDIDA-1"), (2, "RESPUESTA-PERDIDA-2")] {
        trigger.store(mode, SeqCst);
        let id = engine
            .start(StartInstance {
                code: P06.to_owned(),
                business_key: key.to_owned(),
                channel: "ivr".to_owned(),
                data: tramite_tests::engine::object(json!({"telefono": PHONE})),
                actor: "test".to_owned(),
                request_id: None,
            })
            .await
            .unwrap_or_else(|e| panic!("mode {mode}: the start is acknowledged: {e}"));
        assert_eq!(
            trigger.load(SeqCst),
            0,
            "mode {mode}: the relay cut a COMMIT"
        );
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT id FROM instances WHERE business_key = $1")
                .bind(key)
                .fetch_all(&mut direct)
                .await
                .unwrap();
        assert_eq!(stored, vec![id], "mode {mode}: started exactly once");
    }
    engine.shutdown().await;
}

/// A PostgreSQL database that takes no changes (a standby the nodes were
/// pointed at after a fail-over, here a database set read only) refuses a
/// start as a storage refusal (503 `storage-unavailable` over HTTP), not an
/// internal error, and nothing is written; reads go on.
#[tokio::test]
async fn a_read_only_database_refuses_changes_as_such() {
    use sqlx::Connection;
    use tramite_engine::runtime::StartInstance;
    let h = Harness::new(Db::Postgres).await;
    let name = h.db.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = sqlx::PgConnection::connect(&tramite_tests::engine::postgres_url())
        .await
        .unwrap();
    let read_only = |on: &str| {
        sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} SET default_transaction_read_only = {on}"
        ))
    };
    sqlx::query(read_only("on"))
        .execute(&mut admin)
        .await
        .unwrap();
    // The sessions open now are not read only; new ones are.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();
    let mut errors = Vec::new();
    for attempt in 0..3 {
        let started = h
            .engine
            .start(StartInstance {
                code: P06.to_owned(),
                business_key: format!("SOLO-LECTURA-{attempt}"),
                channel: "ivr".to_owned(),
                data: tramite_tests::engine::object(json!({"telefono": PHONE})),
                actor: "test".to_owned(),
                request_id: None,
            })
            .await;
        // The first may meet a connection the server ended.
        match started {
            Ok(id) => panic!("started {id} on a read-only database"),
            Err(e) if e.is_storage_refusal() => {
                errors.clear();
                break;
            }
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "never refused as storage: {errors:?}");
    let running = h
        .engine
        .instances(&tramite_engine::store::instances::InstanceFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(running.is_empty(), "nothing written: {running:?}");
    sqlx::query(read_only("off"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// On PostgreSQL a read stops when its caller has given up (an HTTP
/// request ends at 30 s): the read connections carry a statement timeout,
/// and a read it cancels is a read timeout (503 `timeout`), not 500.
#[tokio::test]
async fn a_read_past_its_time_stops() {
    let h = Harness::new(Db::Postgres).await;
    let mut conn = h.engine.store().pool().acquire().await.unwrap();
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(timeout, "30s");
    sqlx::query("SET statement_timeout = '50ms'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let cancelled = sqlx::query("SELECT pg_sleep(1)")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    let e = Error::Store(tramite_engine::store::Error::Database(cancelled));
    assert!(e.is_read_timeout() && !e.is_busy(), "{e:?}");
    sqlx::query("SET statement_timeout = '30s'")
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// A SQLite read that meets another's lock (through sqlx, whose SQLite
/// codes are numbers) is `busy`, as a rusqlite one is: 503, send it again.
#[tokio::test]
async fn a_sqlite_read_that_meets_a_lock_is_busy() {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let dir = std::env::temp_dir().join(format!("tramite-busy-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/b.db?mode=rwc", dir.display());
    let mut holder = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE t (x INTEGER)")
        .execute(&mut holder)
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();
    let mut reader = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut reader)
        .await
        .unwrap();
    let locked = sqlx::query("SELECT COUNT(*) FROM t")
        .execute(&mut reader)
        .await
        .unwrap_err();
    let e = Error::Store(tramite_engine::store::Error::Database(locked));
    assert!(e.is_busy(), "{e:?}");
    drop(reader);
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SQLite serves a task, an instance, its children and inbox pages on
/// read connections of its own, in place (`store::sqlite_reads`): they
/// must read exactly what the sqlx pool reads, for every shape of filter
/// the inbox and the API use.
#[tokio::test]
async fn sqlite_reads_in_place_match_the_pool() {
    use tramite_engine::store::tasks::{TaskCursor, list};
    let h = Harness::new(Db::Sqlite).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let id = h
            .start(P06, "ivr", json!({"telefono": format!("7{i:07}")}))
            .await;
        ids.push(id);
    }
    // Some further along (NAF waits, new tasks), some claimed.
    for id in &ids[..4] {
        h.complete(id, "recibir_llamada", "atendida", json!({}))
            .await;
    }
    for id in &ids[4..7] {
        let task = h.task(id, "recibir_llamada").await;
        h.engine.claim(&task.id, "ana").await.unwrap();
    }
    let first = h
        .engine
        .tasks(&Filter {
            limit: 3,
            ..Filter::default()
        })
        .await
        .unwrap();
    let filters = [
        Filter {
            limit: 50,
            ..Filter::default()
        },
        Filter {
            limit: 5,
            ..Filter::default()
        },
        Filter {
            roles: vec![
                "agente_ventas_digitales".to_owned(),
                "supervisor".to_owned(),
            ],
            limit: 50,
            ..Filter::default()
        },
        Filter {
            status: Some("completed".to_owned()),
            limit: 50,
            ..Filter::default()
        },
        Filter {
            status: Some("claimed".to_owned()),
            assignee: Some("ana".to_owned()),
            limit: 50,
            ..Filter::default()
        },
        Filter {
            instance_id: Some(ids[0].clone()),
            limit: 10,
            ..Filter::default()
        },
        Filter {
            code: Some(P06.to_owned()),
            limit: 50,
            ..Filter::default()
        },
        Filter {
            after: Some(TaskCursor::after(first.last().unwrap())),
            limit: 4,
            ..Filter::default()
        },
        Filter {
            due_before: Some(i64::MAX - 1),
            limit: 50,
            ..Filter::default()
        },
    ];
    let mut pool = h.engine.store().pool().acquire().await.unwrap();
    for filter in &filters {
        let in_place: Vec<String> = h
            .engine
            .store()
            .tasks(filter)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        let pooled: Vec<String> = list(&mut pool, filter)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert!(!pooled.is_empty(), "{filter:?} finds tasks");
        assert_eq!(in_place, pooled, "{filter:?}");
    }
    let done = h
        .engine
        .tasks(&Filter {
            status: Some("completed".to_owned()),
            limit: 1,
            ..Filter::default()
        })
        .await
        .unwrap();
    let task = h.engine.store().task(&done[0].id).await.unwrap().unwrap();
    let pooled = tramite_engine::store::tasks::get(&mut pool, &done[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::to_value(&task).unwrap(),
        serde_json::to_value(&pooled).unwrap()
    );
    assert!(task.data.is_some(), "a completed task's data is read back");
    let instance = h.engine.store().instance(&ids[0]).await.unwrap().unwrap();
    let pooled = tramite_engine::store::instances::get(
        &mut pool,
        tramite_engine::store::Backend::Sqlite,
        &ids[0],
        false,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(format!("{instance:?}"), format!("{pooled:?}"));
    assert!(
        h.engine
            .store()
            .instance("no-such-instance")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        h.engine
            .store()
            .task("no-such-task")
            .await
            .unwrap()
            .is_none()
    );
}

/// The WAL is copied back into the database file by a thread of its own,
/// soon after commits, not only when the writer's log reaches its mark:
/// with the engine still running, the database file alone (no WAL) holds
/// what was committed a moment ago.
#[tokio::test]
async fn sqlite_checkpoints_follow_the_commits() {
    use sqlx::Connection;
    let h = Harness::new(Db::Sqlite).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            h.start(P06, "ivr", json!({"telefono": format!("7{i:07}")}))
                .await,
        );
    }
    let file = h.db.url.trim_start_matches("sqlite://").to_owned();
    let copy = format!("{file}.copy");
    let mut found = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::copy(&file, &copy).unwrap();
        let _ = std::fs::remove_file(format!("{copy}-wal"));
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{copy}"))
            .await
            .unwrap();
        // Not checkpointed at all yet: the file has not even the schema.
        found = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM instances")
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0);
        conn.close().await.unwrap();
        if found == 20 {
            break;
        }
    }
    assert_eq!(found, 20, "the database file holds every committed start");
}

/// `Tx::write_instance` writes an instance's change with its history, new
/// tasks and new jobs — on PostgreSQL in one statement — or, on a lost
/// race, reports it so that the transaction is rolled back and none of it
/// remains.
async fn an_instance_and_its_history_are_written_together(db: Db) {
    use sqlx::Connection;
    use tramite_engine::store::jobs::NewJob;
    use tramite_engine::store::journal::{NewEntry, of_instance};
    use tramite_engine::store::tasks::NewTask;
    use tramite_engine::store::{InstanceWrite, Tx, Written};
    let h = Harness::new(db).await;
    let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
    let before = h.instance(&id).await;
    let mut conn = h.engine.store().pool().acquire().await.unwrap();
    let history = of_instance(&mut conn, &id).await.unwrap();
    let data = json!({"nota": "escrita con la instancia"});
    let entries = [
        NewEntry {
            instance_id: &id,
            at: before.started_at + 1,
            actor: "test",
            kind: "first_note",
            node_id: Some("recibir_llamada"),
            data: &data,
        },
        NewEntry {
            instance_id: &id,
            at: before.started_at + 1,
            actor: "test",
            kind: "second_note",
            node_id: None,
            data: &serde_json::Value::Null,
        },
    ];

    // A revision someone else has moved past: false, and the rollback
    // leaves neither the row nor the entries.
    let mut stale = before.clone();
    stale.revision -= 1;
    stale.cancel_reason = Some("stale".to_owned());
    let mut tx = conn.begin().await.unwrap();
    assert_eq!(
        Tx::write_instance(
            &mut *tx,
            InstanceWrite {
                row: &stale,
                new: false,
                completes: None,
                journal: &entries,
                tasks: &[],
                jobs: &[],
            }
        )
        .await
        .unwrap(),
        Written::Stale,
        "a stale revision loses the race"
    );
    tx.rollback().await.unwrap();
    assert_eq!(h.instance(&id).await, before);
    assert_eq!(of_instance(&mut conn, &id).await.unwrap(), history);

    // The current revision: the row moves on and the entries follow the
    // history in their order.
    let mut changed = before.clone();
    changed.cancel_reason = Some("escrita".to_owned());
    let mut tx = conn.begin().await.unwrap();
    assert_eq!(
        Tx::write_instance(
            &mut *tx,
            InstanceWrite {
                row: &changed,
                new: false,
                completes: None,
                journal: &entries,
                tasks: &[],
                jobs: &[],
            }
        )
        .await
        .unwrap(),
        Written::Done(receipt_of(&mut tx, db, false).await)
    );
    tx.commit().await.unwrap();
    let stored = h.engine.store().instance(&id).await.unwrap().unwrap();
    assert_eq!(stored.revision, before.revision + 1);
    assert_eq!(stored.cancel_reason.as_deref(), Some("escrita"));
    let after = of_instance(&mut conn, &id).await.unwrap();
    assert_eq!(after[..history.len()], history[..]);
    let added: Vec<_> = after[history.len()..]
        .iter()
        .map(|e| {
            (
                e.kind.as_str(),
                e.node_id.as_deref(),
                e.actor.as_str(),
                &e.data,
            )
        })
        .collect();
    assert_eq!(
        added,
        [
            ("first_note", Some("recibir_llamada"), "test", &data),
            ("second_note", None, "test", &serde_json::Value::Null),
        ]
    );

    // A new instance with its first entries, two tasks and a job: on
    // PostgreSQL they refer to a row the same statement inserts.
    let mut fresh = before.clone();
    fresh.id = uuid::Uuid::now_v7().to_string();
    fresh.business_key = "NUEVA".to_owned();
    fresh.revision = 0;
    let first = [NewEntry {
        instance_id: &fresh.id,
        ..entries[0].clone()
    }];
    let task_ids = [
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    ];
    let due = NewTask {
        id: &task_ids[0],
        instance_id: &fresh.id,
        token: 1,
        node_id: "recibir_llamada",
        code: &fresh.code,
        business_key: &fresh.business_key,
        role: "agente_ventas",
        created_at: before.started_at + 2,
        due_at: Some(before.started_at + 60_000),
    };
    let new_tasks = [
        due.clone(),
        NewTask {
            id: &task_ids[1],
            due_at: None,
            ..due
        },
    ];
    let job_id = uuid::Uuid::now_v7().to_string();
    let new_jobs = [NewJob {
        id: &job_id,
        instance_id: &fresh.id,
        token: 2,
        node_id: "recordatorio",
        kind: "timer",
        connector: None,
        operation: None,
        input: None,
        idempotency_key: format!("test:{job_id}"),
        max_attempts: 1,
        timeout_ms: None,
        run_at: before.started_at + 3_600_000,
        created_at: before.started_at + 2,
    }];
    // On PostgreSQL the statement that schedules the job tells every node,
    // once the transaction commits.
    let mut listener = match db {
        Db::Postgres => {
            let mut l = sqlx::postgres::PgListener::connect(&h.db.url)
                .await
                .unwrap();
            l.listen(tramite_engine::store::jobs::CHANNEL)
                .await
                .unwrap();
            Some(l)
        }
        Db::Sqlite => None,
    };
    let mut tx = conn.begin().await.unwrap();
    assert_eq!(
        Tx::write_instance(
            &mut *tx,
            InstanceWrite {
                row: &fresh,
                new: true,
                completes: None,
                journal: &first,
                tasks: &new_tasks,
                jobs: &new_jobs,
            }
        )
        .await
        .unwrap(),
        Written::Done(receipt_of(&mut tx, db, true).await)
    );
    if let Some(l) = &mut listener {
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), l.recv()).await;
        assert!(early.is_err(), "no notice before the commit");
    }
    tx.commit().await.unwrap();
    if let Some(l) = &mut listener {
        let notice = tokio::time::timeout(std::time::Duration::from_secs(5), l.recv())
            .await
            .expect("the job's notice arrives after the commit")
            .unwrap();
        assert_eq!(notice.channel(), tramite_engine::store::jobs::CHANNEL);
    }
    assert_eq!(
        h.engine.store().instance(&fresh.id).await.unwrap(),
        Some(fresh.clone())
    );
    let kinds: Vec<String> = of_instance(&mut conn, &fresh.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["first_note"]);
    let mut stored = Vec::new();
    for id in &task_ids {
        let t = h
            .engine
            .store()
            .task(id)
            .await
            .unwrap()
            .expect("task stored");
        stored.push((t.instance_id, t.status, t.role, t.due_at));
    }
    assert_eq!(
        stored,
        [
            (
                fresh.id.clone(),
                "open".to_owned(),
                "agente_ventas".to_owned(),
                Some(before.started_at + 60_000)
            ),
            (
                fresh.id.clone(),
                "open".to_owned(),
                "agente_ventas".to_owned(),
                None
            ),
        ]
    );
    let job: (String, String, i64) =
        sqlx::query_as("SELECT instance_id, status, run_at FROM jobs WHERE id = $1")
            .bind(&job_id)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(
        job,
        (
            fresh.id.clone(),
            "ready".to_owned(),
            before.started_at + 3_600_000
        )
    );
}
on_both_backends!(
    an_instance_and_its_history_are_written_together,
    super::an_instance_and_its_history_are_written_together
);

/// What `Tx::write_instance` should report to the commit in `tx`: on
/// PostgreSQL the transaction's own id and whether it sent the notice of
/// new jobs, so that the commit needs no statement for either; nothing on
/// SQLite.
async fn receipt_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    db: Db,
    jobs: bool,
) -> tramite_engine::store::Receipt {
    match db {
        Db::Sqlite => tramite_engine::store::Receipt::default(),
        Db::Postgres => tramite_engine::store::Receipt {
            xid: Some(
                sqlx::query_scalar("SELECT txid_current()")
                    .fetch_one(&mut **tx)
                    .await
                    .unwrap(),
            ),
            announced: jobs,
        },
    }
}

/// `Tx::task_and_instance` reads what a task's and an instance's own reads
/// give, and on PostgreSQL holds the instance's row lock until the
/// transaction ends, as a read for update does: a completion from another
/// node waits for it.
async fn a_task_is_read_with_its_instance_locked(db: Db) {
    use sqlx::Connection;
    use tramite_engine::store::Tx;
    let h = Harness::new(db).await;
    let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
    let task = h.task(&id, "recibir_llamada").await;
    let mut conn = h.engine.store().pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let (read, instance) = Tx::task_and_instance(&mut *tx, &task.id)
        .await
        .unwrap()
        .expect("the task is there");
    assert_eq!(read, task);
    assert_eq!(instance, h.instance(&id).await);
    assert_eq!(
        Tx::task_and_instance(&mut *tx, "no-such-task")
            .await
            .unwrap(),
        None
    );
    if db == Db::Postgres {
        let mut other = sqlx::PgConnection::connect(&h.db.url).await.unwrap();
        let lock = "SELECT id FROM instances WHERE id = $1 FOR UPDATE NOWAIT";
        let held = sqlx::query(lock).bind(&id).fetch_one(&mut other).await;
        assert!(held.is_err(), "the instance's row is locked");
        tx.rollback().await.unwrap();
        sqlx::query(lock)
            .bind(&id)
            .fetch_one(&mut other)
            .await
            .expect("the lock ends with the transaction");
    }
}
on_both_backends!(
    a_task_is_read_with_its_instance_locked,
    super::a_task_is_read_with_its_instance_locked
);

/// A completion's `UPDATE` of its task travels with the instance's write
/// (`InstanceWrite::completes`; on PostgreSQL one statement): a task that
/// someone else claimed since it was read is not completed and the instance
/// is not written; a stale revision does not write the instance, and the
/// rollback the caller then makes leaves neither; the holder's completion
/// writes both.
async fn a_task_is_completed_with_its_instance(db: Db) {
    use sqlx::Connection;
    use tramite_engine::store::journal::{NewEntry, of_instance};
    use tramite_engine::store::{InstanceWrite, TaskCompletion, Tx, Written};
    let h = Harness::new(db).await;
    let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
    let task = h.task(&id, "recibir_llamada").await;
    let before = h.instance(&id).await;
    let mut conn = h.engine.store().pool().acquire().await.unwrap();
    let history = of_instance(&mut conn, &id).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    assert!(Tx::claim_task(&mut *tx, &task.id, "ana").await.unwrap());
    tx.commit().await.unwrap();
    let claimed = h.engine.store().task(&task.id).await.unwrap().unwrap();

    let mut changed = before.clone();
    changed.cancel_reason = Some("completada".to_owned());
    let data = json!({"nota": "con la tarea"});
    let entries = [NewEntry {
        instance_id: &id,
        at: before.started_at + 1,
        actor: "test",
        kind: "task_completed",
        node_id: Some("recibir_llamada"),
        data: &data,
    }];
    let by = |user| TaskCompletion {
        id: &task.id,
        user,
        outcome: "atendida",
        data: &data,
        now: before.started_at + 1,
    };
    let write = |row, user| InstanceWrite {
        row,
        new: false,
        completes: Some(by(user)),
        journal: &entries,
        tasks: &[],
        jobs: &[],
    };
    let mut stale = changed.clone();
    stale.revision -= 1;
    for (row, user, expected) in [
        (&changed, "beto", Written::TaskNotOpen),
        (&stale, "ana", Written::Stale),
    ] {
        let mut tx = conn.begin().await.unwrap();
        let got = Tx::write_instance(&mut *tx, write(row, user))
            .await
            .unwrap();
        assert_eq!(got, expected, "{user} at revision {}", row.revision);
        // Inside the transaction, before the rollback: the instance is not
        // updated, and a task that was not open to its user not completed.
        let inside = Tx::instance(&mut *tx, &id, false).await.unwrap().unwrap();
        assert_eq!(inside, before, "{user}: the instance is not updated");
        if expected == Written::TaskNotOpen {
            let inside = Tx::task(&mut *tx, &task.id).await.unwrap().unwrap();
            assert_eq!(inside, claimed, "{user}: the task is not completed");
        }
        tx.rollback().await.unwrap();
        assert_eq!(h.instance(&id).await, before, "the instance is as it was");
        assert_eq!(
            h.engine.store().task(&task.id).await.unwrap().unwrap(),
            claimed,
            "the task is still ana's"
        );
        assert_eq!(of_instance(&mut conn, &id).await.unwrap(), history);
    }

    let mut tx = conn.begin().await.unwrap();
    let got = Tx::write_instance(&mut *tx, write(&changed, "ana"))
        .await
        .unwrap();
    assert_eq!(got, Written::Done(receipt_of(&mut tx, db, false).await));
    tx.commit().await.unwrap();
    let done = h.engine.store().task(&task.id).await.unwrap().unwrap();
    assert_eq!(
        (
            done.status.as_str(),
            done.outcome.as_deref(),
            done.completed_by.as_deref(),
            done.completed_at
        ),
        (
            "completed",
            Some("atendida"),
            Some("ana"),
            Some(before.started_at + 1)
        )
    );
    assert_eq!(done.data, Some(data.clone()));
    let stored = h.instance(&id).await;
    assert_eq!(stored.revision, before.revision + 1);
    assert_eq!(stored.cancel_reason.as_deref(), Some("completada"));
    let after = of_instance(&mut conn, &id).await.unwrap();
    assert_eq!(after.len(), history.len() + 1);
    assert_eq!(
        after.last().map(|e| e.kind.as_str()),
        Some("task_completed")
    );
}
on_both_backends!(
    a_task_is_completed_with_its_instance,
    super::a_task_is_completed_with_its_instance
);

/// A completion whose task row still reads open while the task's token has
/// moved on is refused: on PostgreSQL a completion that waited for another
/// one's lock on the instance reads the task as it was before (only the
/// instance's row is read again), and the task's own `UPDATE` now comes
/// after the state machine has run. Simulated by reopening a completed
/// task's row behind the engine's back.
async fn a_task_whose_token_moved_on_is_not_completed(db: Db) {
    let h = Harness::new(db).await;
    let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
    let task = h.task(&id, "recibir_llamada").await;
    h.complete(&id, "recibir_llamada", "atendida", json!({}))
        .await;
    let mut conn = h.engine.store().pool().acquire().await.unwrap();
    sqlx::query(
        "UPDATE tasks SET status = 'open', outcome = NULL, data = NULL, completed_at = NULL, \
         completed_by = NULL, assignee = NULL WHERE id = $1",
    )
    .bind(&task.id)
    .execute(&mut *conn)
    .await
    .unwrap();
    let before = h.instance(&id).await;
    let history = tramite_engine::store::journal::of_instance(&mut conn, &id)
        .await
        .unwrap();
    let err = h
        .engine
        .complete(CompleteTask {
            task: task.id.clone(),
            user: "agente2".to_owned(),
            outcome: "atendida".to_owned(),
            data: Default::default(),
            roles: None,
        })
        .await
        .expect_err("the token no longer waits on the task");
    assert!(matches!(err, Error::TaskNotOpen { .. }), "{err:?}");
    assert_eq!(h.instance(&id).await, before, "the instance is untouched");
    assert_eq!(
        tramite_engine::store::journal::of_instance(&mut conn, &id)
            .await
            .unwrap(),
        history
    );
    let row = h.engine.store().task(&task.id).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.completed_by), ("open", None));
}
on_both_backends!(
    a_task_whose_token_moved_on_is_not_completed,
    super::a_task_whose_token_moved_on_is_not_completed
);

const WAITS_FOR_PAYMENT: &str = r#"
code: T-PAGO
name: Pago
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables: [{name: telefono, type: string}, {name: monto, type: number}]
nodes:
  - id: inicio
    kind: start
    channels: [web]
    data: [{name: telefono, type: string, required: true}]
    next: esperar
  - id: esperar
    kind: message_wait
    message: pago
    correlation: telefono
    store: {monto: message.monto}
    next: fin
  - {id: fin, kind: end, outcome: pagado}
"#;

/// A command that panics (a bug, or a row edited by hand that no command
/// expects: here a token at a step the procedure does not have) fails
/// alone and changes nothing; the engine goes on taking every other
/// command. It used to end the SQLite writer's thread, or the PostgreSQL
/// lane's task, and with it the engine.
async fn a_command_that_panics_fails_alone(db: Db) {
    use sqlx::Connection;
    let mut h = Harness::new(db).await;
    h.deploy("pago.yaml", WAITS_FOR_PAYMENT).await;
    let broken = h.start("T-PAGO", "web", json!({"telefono": PHONE})).await;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&h.db.url).await.unwrap();
    let edited = sqlx::query(
        "UPDATE instances SET state = replace(state, '\"node\":\"esperar\"', '\"node\":\"no_existe\"') \
         WHERE id = $1",
    )
    .bind(&broken)
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(edited.rows_affected(), 1);
    drop(conn);
    // The SQLite writer keeps its own copy of the row it wrote.
    h.restart().await;
    let before = h.instance(&broken).await.revision;
    let message = |id: &str| PublishMessage {
        name: "pago".to_owned(),
        key: PHONE.to_owned(),
        payload: json!({"monto": 120}),
        id: id.to_owned(),
        ttl_ms: 3_600_000,
    };
    let err = h.engine.publish(message("pago-1")).await.unwrap_err();
    assert!(matches!(err, Error::CommandPanicked), "{err:?}");
    assert_eq!(h.instance(&broken).await.revision, before, "nothing kept");
    let other = h
        .start("T-PAGO", "web", json!({"telefono": "70000001"}))
        .await;
    assert_eq!(
        h.instance(&other).await.status,
        "running",
        "the engine goes on"
    );
}
on_both_backends!(
    a_command_that_panics_fails_alone,
    super::a_command_that_panics_fails_alone
);

/// Publishes `message` while a transaction holds `instance` (as a batch
/// that subscribes it would), then has that transaction ask for the
/// message's key, which it must get at once (the publisher waits for the
/// instance before taking the key); the delivery once it lets go.
async fn publish_holding_its_instance(
    h: &Harness,
    instance: &str,
    message: PublishMessage,
) -> Delivery {
    let key = format!("message:{}:{}", message.name, message.key);
    let mut holder = h.engine.store().pool().begin().await.unwrap();
    sqlx::query("SELECT id FROM instances WHERE id = $1 FOR UPDATE")
        .bind(instance)
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let engine = h.engine.clone();
    let publishing = tokio::spawn(async move { engine.publish(message).await });
    // The publisher is under way, waiting for the instance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("SET LOCAL lock_timeout = '500ms'")
        .execute(&mut *holder)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) AS locked")
        .bind(key)
        .fetch_one(&mut *holder)
        .await
        .expect("the key is free: the publisher waits for the instance first");
    holder.commit().await.unwrap();
    publishing.await.unwrap().expect("published")
}

/// On PostgreSQL a publisher locks the waiting instance before the
/// message's key, as a subscribing command does (its instance, then the
/// key). Here a transaction holds the instance, as a batch that also
/// subscribes another request of the same phone would, and then asks for
/// the key: it gets it at once, and the message is delivered after. With
/// the publisher taking the key first, the two waited on each other until
/// PostgreSQL's deadlock detection killed one, a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_takes_the_waiting_instance_before_the_key() {
    let h = Harness::new(Db::Postgres).await;
    h.deploy("pago.yaml", WAITS_FOR_PAYMENT).await;
    let waiting = h.start("T-PAGO", "web", json!({"telefono": PHONE})).await;
    let delivered = publish_holding_its_instance(
        &h,
        &waiting,
        tramite_engine::runtime::PublishMessage {
            name: "pago".to_owned(),
            key: PHONE.to_owned(),
            payload: json!({"monto": 120}),
            id: "pago-1".to_owned(),
            ttl_ms: 3_600_000,
        },
    )
    .await;
    assert!(
        matches!(
            delivered,
            tramite_engine::runtime::Delivery::Delivered { .. }
        ),
        "{delivered:?}"
    );
    assert_eq!(
        h.instance(&waiting).await.outcome.as_deref(),
        Some("pagado")
    );
}

/// The same order for a message no wait waits for that is the rest of a
/// sending (P06's `collect`): the publisher locks the instance that took
/// the sending, then the key. A transaction holding that instance, as a
/// completion that subscribes it again would ("faltan requisitos"), gets the
/// key at once; the other order deadlocked them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_takes_the_sending_instance_before_the_key() {
    let h = Harness::new(Db::Postgres).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    let delivered = publish_holding_its_instance(
        &h,
        &id,
        PublishMessage {
            name: "requisitos_whatsapp".to_owned(),
            key: PHONE.to_owned(),
            payload: json!({"media": ["croquis.jpg"]}),
            id: "wamid.resto".to_owned(),
            ttl_ms: 3_600_000,
        },
    )
    .await;
    assert_eq!(
        delivered,
        Delivery::Delivered {
            instance: id.clone()
        }
    );
    let media = h.instance(&id).await.state.variables["requisitos_adjuntos"].clone();
    assert_eq!(
        media,
        json!([
            "ci_anverso.jpg",
            "ci_reverso.jpg",
            "factura.pdf",
            "croquis.jpg"
        ])
    );
}

/// On PostgreSQL a cancel locks the children it will cancel before their
/// parent, in the order a child that ends takes them (itself, then its
/// parent). Here a transaction holds the OPR-PAS-P02 child, as the child's
/// last completion would, and then asks for the parent: it gets it at once,
/// and the cancel goes on after. A cancel that held the parent first
/// waited on the child while the child's completion waited on the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_takes_the_child_before_the_parent() {
    let h = Harness::new(Db::Postgres).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    assert_eq!(h.jobs().await, 1, "the Smartflex registration runs");
    let child = tramite_tests::p06::communicated(&h, &id).await;
    let mut holder = h.engine.store().pool().begin().await.unwrap();
    sqlx::query("SELECT id FROM instances WHERE id = $1 FOR UPDATE")
        .bind(&child.id)
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let engine = h.engine.clone();
    let parent = id.clone();
    let cancelling =
        tokio::spawn(async move { engine.cancel(&parent, "cliente desiste", "jefe1").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("SET LOCAL lock_timeout = '500ms'")
        .execute(&mut *holder)
        .await
        .unwrap();
    sqlx::query("SELECT id FROM instances WHERE id = $1 FOR UPDATE")
        .bind(&id)
        .fetch_one(&mut *holder)
        .await
        .expect("the parent is free: the cancel waits for the child first");
    holder.commit().await.unwrap();
    cancelling.await.unwrap().expect("cancelled");
    assert_eq!(h.instance(&id).await.status, "cancelled");
    assert_eq!(h.instance(&child.id).await.status, "cancelled");
}

/// On PostgreSQL a job that is claimed but must not run (here its stored
/// input is unreadable; the same goes for a call claimed past its attempts)
/// is stopped at its incident by a command that locks the instance before
/// the job, as a cancel does. Here a transaction holds the instance, as a
/// cancel would, and then asks for the job: it gets it at once, and the
/// incident is raised after. Raised inside the claim, which held the job,
/// the incident waited on the instance while the cancel waited on the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_takes_its_instance_before_the_job() {
    let h = Harness::new(Db::Postgres).await;
    let id = tramite_tests::p06::at_the_naf_check(&h, "4587213").await;
    let pool = h.engine.store().pool();
    sqlx::query("UPDATE jobs SET input = '{\"ci\": 45872' WHERE instance_id = $1")
        .bind(&id)
        .execute(pool)
        .await
        .unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM instances WHERE id = $1 FOR UPDATE")
        .bind(&id)
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let engine = h.engine.clone();
    let running = tokio::spawn(async move { engine.run_due_jobs().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("SET LOCAL lock_timeout = '500ms'")
        .execute(&mut *holder)
        .await
        .unwrap();
    let status: String =
        sqlx::query_scalar("SELECT status FROM jobs WHERE instance_id = $1 FOR UPDATE")
            .bind(&id)
            .fetch_one(&mut *holder)
            .await
            .expect("the job is free: its incident waits for the instance first");
    assert_eq!(status, "running", "claimed, not yet stopped");
    holder.commit().await.unwrap();
    assert_eq!(running.await.unwrap().unwrap(), 0, "nothing ran");
    assert_eq!(h.sims.naf.calls(), 0);
    let incident = h.open_incident(&id).await;
    assert!(
        incident.message.contains("its stored input cannot be read"),
        "{}",
        incident.message
    );
}

/// A cancel that lands between a claim and its `StopJob` leaves no
/// incident behind: the job went with its request, and the stop finds
/// nothing to stop.
async fn a_job_cancelled_before_it_is_stopped_raises_nothing(db: Db) {
    use sqlx::Connection;
    use tramite_engine::runtime::commands::{Command, Reply};
    let h = Harness::new(db).await;
    let id = tramite_tests::p06::at_the_naf_check(&h, "4587213").await;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&h.db.url).await.unwrap();
    sqlx::query("UPDATE jobs SET input = '{\"ci\": 45872' WHERE instance_id = $1")
        .bind(&id)
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let claimed = h
        .engine
        .submit(Command::ClaimJobs {
            owner: "n1".into(),
            lease_ms: 30_000,
            limit: 8,
            default_timeout_ms: 10_000,
        })
        .await
        .unwrap();
    let Reply::Jobs(mut jobs) = claimed else {
        panic!("{claimed:?}")
    };
    let job = jobs.pop().expect("the NAF check");
    let why = job.stop.clone().expect("marked to stop, not to run");
    h.engine
        .cancel(&id, "cliente desiste", "jefe1")
        .await
        .unwrap();
    h.engine
        .submit(Command::StopJob {
            owner: job.lease_owner.clone(),
            job: Box::new(job),
            why,
        })
        .await
        .unwrap();
    assert!(
        h.engine
            .incidents(Some("open"), Some(&id))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.instance(&id).await.status, "cancelled");
}
on_both_backends!(
    a_job_cancelled_before_it_is_stopped_raises_nothing,
    super::a_job_cancelled_before_it_is_stopped_raises_nothing
);

/// A message published to a wait that was withdrawn after the publisher
/// read it (on PostgreSQL, another lane's or node's timeout or cancellation
/// committing in between) goes to the next wait, or is kept: it used to be
/// answered `Delivered` and dropped. The race is set up behind the engine's
/// back: the subscription row of a cancelled instance is put back, as the
/// publisher would have read it.
async fn a_message_for_a_withdrawn_wait_is_not_dropped(db: Db) {
    let h = Harness::new(db).await;
    h.deploy("pago.yaml", WAITS_FOR_PAYMENT).await;
    let gone = h.start("T-PAGO", "web", json!({"telefono": PHONE})).await;
    let mut conn = h.engine.store().pool().acquire().await.unwrap();
    let stale: (String, i64, String, i64) = sqlx::query_as(
        "SELECT id, token, node_id, created_at FROM subscriptions WHERE instance_id = $1",
    )
    .bind(&gone)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    h.engine.cancel(&gone, "prueba", "jefe1").await.unwrap();
    let put_back = || async {
        let mut conn = h.engine.store().pool().acquire().await.unwrap();
        sqlx::query(
            "INSERT INTO subscriptions (id, instance_id, token, node_id, message_name, correlation_key, created_at) \
             VALUES ($1, $2, $3, $4, 'pago', $5, $6)",
        )
        .bind(&stale.0)
        .bind(&gone)
        .bind(stale.1)
        .bind(&stale.2)
        .bind(PHONE)
        .bind(stale.3)
        .execute(&mut *conn)
        .await
        .unwrap();
    };
    // Nobody else waits: the message is kept for a later wait.
    put_back().await;
    assert_eq!(
        h.publish("pago", PHONE, "pago-1", json!({"monto": 120}))
            .await,
        Delivery::Kept
    );
    let pending = h.engine.messages("pending", 500).await.unwrap();
    assert_eq!(
        pending.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["pago-1"]
    );
    assert_eq!(pending[0].instance_id, None);
    assert!(pending[0].expires_at.is_some());
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM subscriptions")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the left-over wait is gone");
    // A later wait gets the kept message.
    let later = h.start("T-PAGO", "web", json!({"telefono": PHONE})).await;
    assert_eq!(h.instance(&later).await.outcome.as_deref(), Some("pagado"));
    // Another wait behind the withdrawn one: it gets the message.
    let waiting = h.start("T-PAGO", "web", json!({"telefono": PHONE})).await;
    put_back().await;
    assert_eq!(
        h.publish("pago", PHONE, "pago-2", json!({"monto": 80}))
            .await,
        Delivery::Delivered {
            instance: waiting.clone()
        }
    );
    let row = h.instance(&waiting).await;
    assert_eq!(row.outcome.as_deref(), Some("pagado"));
    assert_eq!(row.state.variables["monto"], json!(80));
    assert_eq!(h.instance(&gone).await.status, "cancelled");
}
on_both_backends!(
    a_message_for_a_withdrawn_wait_is_not_dropped,
    super::a_message_for_a_withdrawn_wait_is_not_dropped
);

/// A message id names one message: the same message again is a duplicate,
/// another message (name or key) under a used id is refused, not dropped
/// as a duplicate.
async fn a_message_id_used_by_another_message_is_refused(db: Db) {
    let h = Harness::new(db).await;
    assert_eq!(
        h.publish("pago", PHONE, "m-1", json!({"monto": 1})).await,
        Delivery::Kept
    );
    assert_eq!(
        h.publish("pago", PHONE, "m-1", json!({"monto": 1})).await,
        Delivery::Duplicate
    );
    for (name, key) in [("documentos", PHONE), ("pago", "70000000")] {
        let err = h
            .engine
            .publish(PublishMessage {
                name: name.to_owned(),
                key: key.to_owned(),
                payload: json!({}),
                id: "m-1".to_owned(),
                ttl_ms: 60_000,
            })
            .await
            .expect_err("another message under a used id");
        assert!(
            matches!(err, Error::MessageIdTaken { ref id } if id == "m-1"),
            "{err:?}"
        );
    }
    let pending = h.engine.messages("pending", 500).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].message_name, "pago");
}
on_both_backends!(
    a_message_id_used_by_another_message_is_refused,
    super::a_message_id_used_by_another_message_is_refused
);

/// An outcome whose `set` cannot be computed from the data given (a field
/// left empty under `validate: false`) refuses the completion as wrong data,
/// and changes nothing; it used to be an internal error (HTTP 500).
async fn an_outcome_that_cannot_record_its_values_refuses_the_data(db: Db) {
    let h = Harness::new(db).await;
    h.engine
        .deploy(vec![(
            "montos.yaml".into(),
            r#"
code: T-MONTO
name: Monto
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables: [{name: monto, type: number}, {name: doble, type: number}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: anotar}
  - id: anotar
    kind: user_task
    role: agente
    form: [{name: monto, type: number, required: true}]
    outcomes:
      - {id: ok, label: Listo, next: fin, set: {doble: "monto * 2.0"}}
      - {id: rapido, label: Rápido, next: fin, validate: false, set: {doble: "monto * 2.0"}}
  - {id: fin, kind: end, outcome: listo}
"#
            .into(),
        )])
        .await
        .unwrap();
    let id = h.start("T-MONTO", "web", json!({})).await;
    let task = h.task(&id, "anotar").await;
    let before = h.instance(&id).await;
    let err = h
        .engine
        .complete(CompleteTask {
            task: task.id.clone(),
            user: "ana".to_owned(),
            outcome: "rapido".to_owned(),
            data: Default::default(),
            roles: None,
        })
        .await
        .expect_err("doble cannot be computed without monto");
    match &err {
        Error::InvalidData { errors } => {
            assert!(errors[0].message.contains("`rapido`"), "{errors:?}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.instance(&id).await, before, "nothing changed");
    h.complete(&id, "anotar", "rapido", json!({"monto": 4.5}))
        .await;
    let done = h.instance(&id).await;
    assert_eq!(done.state.variables["doble"], json!(9.0));
}
on_both_backends!(
    an_outcome_that_cannot_record_its_values_refuses_the_data,
    super::an_outcome_that_cannot_record_its_values_refuses_the_data
);

/// Runs the scenario `text` against `processes` (file name, YAML), as
/// `tramite test` does: a new database of its own, the catalog's
/// simulated answers.
async fn run_scenario(
    text: &str,
    processes: &[(String, String)],
) -> tramite_engine::runtime::scenario::Report {
    let scenario: tramite_engine::runtime::scenario::Scenario = serde_yaml::from_str(text).unwrap();
    let dir = std::env::temp_dir().join(format!("tramite-scenario-{}", uuid::Uuid::now_v7()));
    tramite_engine::runtime::scenario::run(
        &scenario,
        processes,
        &tramite_connectors::catalog(),
        &dir,
    )
    .await
    .unwrap()
}

/// A scenario's path ends where the instance stopped: a gate whose
/// condition fails when evaluated raises an incident before anything says
/// it was entered, and the path still names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_path_names_the_node_an_incident_stopped() {
    // `decidir` sends a large fee back to `revisar`, which may change it;
    // a fee of 0 makes its condition fail.
    let definition = "code: T-GATE-FAILS\nname: Puerta que falla\nversion: 1\nowner_role: agente\nroles: [{id: agente, name: Agente}]\nvariables:\n  - {name: cuota, type: integer}\nnodes:\n  - id: inicio\n    kind: start\n    channels: [web]\n    data: [{name: cuota, type: integer, required: true}]\n    next: decidir\n  - id: decidir\n    kind: exclusive_gate\n    branches:\n      - {when: \"100 / cuota > 50\", next: revisar}\n    default: fin\n  - id: revisar\n    kind: user_task\n    role: agente\n    form: [{name: cuota, type: integer, required: true}]\n    outcomes:\n      - {id: ok, label: Listo, next: decidir}\n  - {id: fin, kind: end, outcome: listo}\n";
    for (name, scenario) in [
        (
            "at the first visit",
            "scenario: La puerta divide por cero\nprocedure: T-GATE-FAILS\nstart: {channel: web, data: {cuota: 0}}\nexpect:\n  end: running\n  incidents: 1\n  path: [inicio, decidir]\n",
        ),
        (
            "at the second, through a loop",
            "scenario: La puerta divide por cero la segunda vez\nprocedure: T-GATE-FAILS\nstart: {channel: web, data: {cuota: 1}}\nsteps:\n  - {complete: revisar, outcome: ok, data: {cuota: 0}}\nexpect:\n  end: running\n  incidents: 1\n  path: [inicio, decidir, revisar, decidir]\n",
        ),
    ] {
        let report =
            run_scenario(scenario, &[("gate.yaml".to_owned(), definition.to_owned())]).await;
        assert!(
            report.passed(),
            "{name}: {:?} {:?}",
            report.failures,
            report.path
        );
    }
}

/// A scenario scripts a system that asks to be called again later
/// (`retry_after` beside `transient`): P06's Smartflex step, whose backoff
/// would ask again after 2 s, waits the two minutes asked for. 90 s in it
/// has not asked again; without the system's wait it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_scripts_a_system_asking_to_wait() {
    let root = tramite_tests::repo_root();
    let shipped =
        std::fs::read_to_string(root.join("processes/scenarios/19-smartflex-pide-esperar.yaml"))
            .unwrap();
    // P06 and the procedures it links to, as `tramite test` deploys them.
    let processes: Vec<(String, String)> = tramite_engine::library::read(&[root.join("processes")])
        .unwrap()
        .into_iter()
        .map(|f| (f.path.display().to_string(), f.text))
        .collect();
    let run = |text: String| {
        let processes = processes.clone();
        async move { run_scenario(&text, &processes).await }
    };
    let report = run(shipped.clone()).await;
    assert!(report.passed(), "{:?} {:?}", report.failures, report.path);
    let registered = |path: &[String]| path.iter().any(|n| n == "comunicar_solicitud");
    let sooner = shipped.replace(r#"{"wait": "2m"}"#, r#"{"wait": "90s"}"#);
    assert_ne!(sooner, shipped);
    let report = run(sooner.clone()).await;
    assert_eq!(
        report.path.last().map(String::as_str),
        Some("registrar_venta_smartflex"),
        "still waiting for the system: {:?}",
        report.path
    );
    let unasked = sooner.replace(r#", "retry_after": "2m""#, "");
    assert_ne!(unasked, sooner);
    let report = run(unasked).await;
    assert!(
        registered(&report.path),
        "without the system's wait the backoff asks again: {:?}",
        report.path
    );
    let misplaced = shipped.replace(
        r#"{"result": {"request_number""#,
        r#"{"retry_after": "1m", "result": {"request_number""#,
    );
    let report = run(misplaced).await;
    assert_eq!(
        report.failures,
        [
            "answers: `smartflex.register_service_request` answer 2 has `retry_after`, which goes only beside `transient`"
        ],
        "refused before it runs: {:?}",
        report.path
    );
}

/// A scenario's long `wait` lets every timer come due at its own time, in
/// order: the task an escalation creates is due a day after it was
/// created, so `wait: 3d` escalates twice, as production would, and the
/// third task is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_scenario_wait_fires_timers_in_order() {
    let chain = r#"
code: T-CADENA
name: Cadena de escalamientos
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}, {id: jefe, name: Jefe}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: llamar}
  - id: llamar
    kind: user_task
    role: agente
    due: 1d
    escalation: {next: insistir}
    outcomes: [{id: ok, label: Listo, next: fin}]
  - id: insistir
    kind: user_task
    role: agente
    due: 1d
    escalation: {next: avisar_jefe}
    outcomes: [{id: ok, label: Listo, next: fin}]
  - id: avisar_jefe
    kind: user_task
    role: jefe
    outcomes: [{id: ok, label: Listo, next: fin}]
  - {id: fin, kind: end, outcome: listo}
"#;
    let report = run_scenario(
        r#"
scenario: {es: Tres días sin respuesta, en: Three days without an answer}
procedure: T-CADENA
start: {channel: web}
steps:
  - wait: 3d
expect:
  end: running
  path: [inicio, llamar, insistir, avisar_jefe]
"#,
        &[("cadena.yaml".to_owned(), chain.to_owned())],
    )
    .await;
    assert!(
        report.failures.is_empty(),
        "{:?} {:?}",
        report.failures,
        report.path
    );
}

/// Step 5's municipality reaches GIS: "Centro" in Sacaba is Sacaba's
/// centre (fibre up to 300 Mbps), not Cercado's (1,000).
async fn p06_asks_gis_in_the_clients_municipality(db: Db) {
    let h = Harness::new(db).await;
    let (mut speeds, mut days) = (Vec::new(), Vec::new());
    for municipio in ["Sacaba", "Cercado"] {
        let id = through_identification(&h, "4587213").await;
        h.complete(
            &id,
            "solicitar_domicilio",
            "continuar",
            json!({"direccion": "Calle Bolívar 210", "zona": "Centro", "municipio": municipio}),
        )
        .await;
        assert_eq!(h.jobs().await, 1, "the GIS check runs");
        let vars = h.instance(&id).await.state.variables;
        speeds.push(vars["gis_velocidad_max_mbps"].clone());
        // Smartflex is told the municipality too, and prices the zone's
        // backlog by it.
        tramite_tests::p06::through_requirements(&h, &id).await;
        assert_eq!(h.jobs().await, 1, "the sale is registered");
        let sale = h.sims.smartflex.registrations().pop().unwrap();
        assert_eq!(sale.city.as_deref(), Some(municipio));
        days.push(sale.estimated_days);
    }
    assert_eq!(speeds, [json!(300), json!(1000)]);
    // Fibre internet: 3 days, and Sacaba Centro's backlog of 5 where
    // Cercado's Centro has none.
    assert_eq!(days, [8, 3]);
}
on_both_backends!(
    p06_asks_gis_in_the_clients_municipality,
    super::p06_asks_gis_in_the_clients_municipality
);

/// The inbox's `variable=name:value` filter compares JSON on both
/// backends alike: `true` is not `1`, `null` finds a variable set to null,
/// `3.0` is the whole number 3, and digits find the same digits stored as
/// text (on SQLite `true` matched `1` and `null` matched nothing).
async fn the_variable_filter_compares_json_alike_on_both_backends(db: Db) {
    let h = Harness::new(db).await;
    h.deploy(
        "filtro.yaml",
        r#"
code: T-FILTRO
name: Filtro
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: activo, type: boolean}
  - {name: nota, type: string}
  - {name: cuotas, type: integer}
  - {name: monto, type: number}
nodes:
  - id: inicio
    kind: start
    channels: [web]
    data: [{name: activo, type: boolean}, {name: nota, type: string}, {name: cuotas, type: integer}, {name: monto, type: number}]
    next: revisar
  - {id: revisar, kind: user_task, role: agente, outcomes: [{id: ok, label: Listo, next: fin}]}
  - {id: fin, kind: end, outcome: listo}
"#,
    )
    .await;
    let on = h
        .start(
            "T-FILTRO",
            "web",
            json!({"activo": true, "nota": "1", "cuotas": 3, "monto": 250.0}),
        )
        .await;
    let cleared = h
        .start("T-FILTRO", "web", json!({"activo": false, "nota": null}))
        .await;
    let quoted = "María \"la Ñ\" \\ 7";
    let named = h.start("T-FILTRO", "web", json!({"nota": quoted})).await;
    let found = |name: &str, value: serde_json::Value| {
        let h = &h;
        let name = name.to_owned();
        async move {
            let mut ids: Vec<String> = h
                .engine
                .tasks(&Filter {
                    code: Some("T-FILTRO".into()),
                    variable: Some((name, value)),
                    limit: 10,
                    ..Filter::default()
                })
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.instance_id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(found("activo", json!(true)).await, [on.as_str()]);
    assert!(found("activo", json!(1)).await.is_empty(), "true is not 1");
    assert_eq!(found("nota", json!(null)).await, [cleared.as_str()]);
    assert_eq!(
        found("nota", json!(1)).await,
        [on.as_str()],
        "digits stored as text"
    );
    assert_eq!(found("cuotas", json!(3.0)).await, [on.as_str()]);
    assert!(
        found("cuotas", json!("3")).await.is_empty(),
        "text is not a number"
    );
    // A `number` keeps `250.0`: still 250, as a number.
    assert_eq!(found("monto", json!(250)).await, [on.as_str()]);
    assert!(found("monto", json!(250.5)).await.is_empty());
    // Quotes, a backslash and letters outside ASCII, as stored.
    assert_eq!(found("nota", json!(quoted)).await, [named.as_str()]);
}
on_both_backends!(
    the_variable_filter_compares_json_alike_on_both_backends,
    super::the_variable_filter_compares_json_alike_on_both_backends
);

/// A message wait's correlation key is indexed: one longer than the
/// database can index stops the instance with an incident naming it (on
/// PostgreSQL the whole command failed), and a shorter one waits. A blank
/// one, under which no message can be published, is an incident too, not
/// a wait that nothing could end.
async fn a_correlation_key_too_long_is_an_incident(db: Db) {
    let h = Harness::new(db).await;
    let wait = r#"
code: T-CLAVE
name: Clave larga
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: clave, type: string}
nodes:
  - {id: inicio, kind: start, channels: [web], data: [{name: clave, type: string}], next: esperar}
  - {id: esperar, kind: message_wait, message: aviso, correlation: clave, next: fin}
  - {id: fin, kind: end, outcome: listo}
"#;
    h.engine
        .deploy(vec![("clave.yaml".into(), wait.to_owned())])
        .await
        .unwrap();
    let long = h
        .start("T-CLAVE", "web", json!({"clave": "k".repeat(4_000)}))
        .await;
    let incidents = h.engine.incidents(Some("open"), Some(&long)).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert!(
        incidents[0].message.contains("longer than 512 bytes"),
        "{}",
        incidents[0].message
    );
    let short = h
        .start("T-CLAVE", "web", json!({"clave": "k".repeat(500)}))
        .await;
    assert!(
        h.engine
            .incidents(Some("open"), Some(&short))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.instance(&short).await.state.tokens[0].node, "esperar");
    let blank = h.start("T-CLAVE", "web", json!({"clave": "  "})).await;
    let incidents = h
        .engine
        .incidents(Some("open"), Some(&blank))
        .await
        .unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].message, "correlation `clave` is empty");
}
on_both_backends!(
    a_correlation_key_too_long_is_an_incident,
    super::a_correlation_key_too_long_is_an_incident
);
