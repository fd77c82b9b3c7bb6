//! P06 walked step by step, for tests that need an instance at a given step.

use serde_json::{Value, json};
use tramite_engine::runtime::Delivery;

use crate::engine::Harness;

/// The procedure's code.
pub const P06: &str = "OPE-SUM-VEN-P06";
/// The client's phone in these walks.
pub const PHONE: &str = "72345678";

/// Starts P06 by IVR and walks it to the NAF check with `ci`.
pub async fn through_identification(h: &Harness, ci: &str) -> String {
    let id = at_the_naf_check(h, ci).await;
    assert_eq!(h.jobs().await, 1, "the NAF check runs");
    id
}

/// Starts P06 by IVR and walks it until its NAF check with `ci` is due,
/// not yet run.
pub async fn at_the_naf_check(h: &Harness, ci: &str) -> String {
    let id = h
        .start(
            P06,
            "ivr",
            json!({"telefono": PHONE, "nombre_cliente": "Juan Pérez"}),
        )
        .await;
    h.complete(&id, "recibir_llamada", "atendida", json!({}))
        .await;
    h.complete(
        &id,
        "identificar_cliente",
        "continuar",
        json!({"nombre_cliente": "Juan Pérez Rojas", "servicio_solicitado": "internet_fibra", "ci": ci}),
    )
    .await;
    id
}

/// Starts `count` P06 requests by IVR and answers each call: each waits at
/// the client's identification (step 2).
pub async fn waiting_for_identification(h: &Harness, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let id = h.start(P06, "ivr", json!({"telefono": PHONE})).await;
        h.complete(&id, "recibir_llamada", "atendida", json!({}))
            .await;
        ids.push(id);
    }
    ids
}

/// From the address (step 5) to the requirements being asked for (step 8).
pub async fn through_coverage(h: &Harness, id: &str, zone: &str) {
    h.complete(
        id,
        "solicitar_domicilio",
        "continuar",
        json!({"direccion": "Av. América 1234", "zona": zone}),
    )
    .await;
    assert_eq!(h.jobs().await, 1, "the GIS check runs");
}

/// Step 7.1: the agent confirms the technical capacity GIS found; the
/// request then waits for the agent to ask for the requirements (8).
pub async fn with_capacity_confirmed(h: &Harness, id: &str) {
    h.complete(
        id,
        "verificar_capacidad",
        "continuar",
        json!({"capacidad_confirmada": true}),
    )
    .await;
}

/// Installs the sale of `through_requirements` (the Smartflex registration
/// and step 11), then cancels its OPR-PAS-P02 as a duplicate order: the
/// parent waits at `instalacion` with an incident. Returns the child.
pub async fn with_the_installation_cancelled(h: &Harness, id: &str) -> String {
    h.jobs().await;
    let child = communicated(h, id).await;
    h.engine
        .cancel(&child.id, "orden duplicada", "jefe1")
        .await
        .unwrap();
    child.id
}

/// From step 7.1 with capacity to the Smartflex registration (10).
pub async fn through_requirements(h: &Harness, id: &str) {
    with_capacity_confirmed(h, id).await;
    h.complete(
        id,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    let delivery = h
        .publish(
            "requisitos_whatsapp",
            PHONE,
            &format!("wamid.{id}"),
            json!({"media": ["ci_anverso.jpg", "ci_reverso.jpg", "factura.pdf"]}),
        )
        .await;
    assert_eq!(
        delivery,
        Delivery::Delivered {
            instance: id.to_owned()
        }
    );
    h.complete(
        id,
        "imprimir_requisitos",
        "impresos",
        json!({"requisitos_impresos": true}),
    )
    .await;
}

/// From the request being communicated (11) to the end (13), the client
/// satisfied.
pub async fn through_installation(h: &Harness, id: &str) {
    through_installation_rated(h, id, true).await;
}

/// Step 11: the request is communicated to the client, and the one
/// installation order (OPR-PAS-P02) it starts is returned.
pub async fn communicated(h: &Harness, id: &str) -> tramite_engine::store::instances::InstanceRow {
    h.complete(
        id,
        "comunicar_solicitud",
        "comunicado",
        json!({"dias_estimados": 5}),
    )
    .await;
    let mut children = h.engine.children(id).await.unwrap();
    assert_eq!(children.len(), 1);
    let child = children.remove(0);
    assert_eq!(child.code, "OPR-PAS-P02");
    assert_eq!(child.channel, "procedure");
    child
}

/// From the request being communicated (11) to the end (13), the client
/// `satisfied` or not at the quality-control call.
pub async fn through_installation_rated(h: &Harness, id: &str, satisfied: bool) {
    let child = &communicated(h, id).await;
    h.complete(
        &child.id,
        "programar",
        "programada",
        json!({"fecha_programada": "2026-12-01"}),
    )
    .await;
    h.complete(
        &child.id,
        "instalar",
        "cerrar",
        json!({"instalacion_realizada": true, "dias_ejecucion": 4}),
    )
    .await;
    assert_eq!(h.instance(&child.id).await.status, "completed");
    h.complete(
        id,
        "seguimiento_venta",
        "continuar",
        json!({"contrato_firmado": true}),
    )
    .await;
    h.complete(
        id,
        "control_calidad",
        "registrado",
        json!({"cliente_satisfecho": satisfied, "comentario_calidad": "Conforme"}),
    )
    .await;
}

/// One P06 sale from the call to the quality-control call, with the
/// client satisfied or not (efficient or not for the indicator).
pub async fn sale(h: &Harness, satisfied: bool) {
    let id = through_identification(h, "4587213").await;
    through_coverage(h, &id, "Cala Cala").await;
    through_requirements(h, &id).await;
    assert_eq!(h.jobs().await, 1);
    through_installation_rated(h, &id, satisfied).await;
    assert_eq!(
        h.instance(&id).await.outcome.as_deref(),
        Some("venta_concretada")
    );
}

/// What an agent answers at each task of the happy path (P06 and the
/// OPR-PAS-P02 it calls): the outcome and the form's data; `n` varies the
/// client.
pub fn answer(node: &str, n: usize) -> Option<(&'static str, Value)> {
    Some(match node {
        "recibir_llamada" => ("atendida", json!({})),
        "identificar_cliente" => (
            "continuar",
            json!({"nombre_cliente": format!("Cliente {n}"), "servicio_solicitado": "internet_fibra", "ci": "4587213"}),
        ),
        "solicitar_domicilio" => (
            "continuar",
            json!({"direccion": format!("Av. América {n}"), "zona": "Cala Cala"}),
        ),
        "verificar_capacidad" => ("continuar", json!({"capacidad_confirmada": true})),
        "solicitar_requisitos" => ("requisitos_solicitados", json!({})),
        "imprimir_requisitos" => ("impresos", json!({"requisitos_impresos": true})),
        "comunicar_solicitud" => ("comunicado", json!({"dias_estimados": 5})),
        "programar" => ("programada", json!({"fecha_programada": "2026-12-01"})),
        "instalar" => (
            "cerrar",
            json!({"instalacion_realizada": true, "dias_ejecucion": 4}),
        ),
        "seguimiento_venta" => ("continuar", json!({"contrato_firmado": true})),
        "control_calidad" => ("registrado", json!({"cliente_satisfecho": true})),
        _ => return None,
    })
}

/// The one open incident of `id`: Smartflex's registration stopped at its
/// first attempt by a refusal, not retried. Returns its message and id.
pub async fn refused_at_the_sale(h: &Harness, id: &str) -> (String, String) {
    let incidents = h
        .engine
        .incidents(Some("open"), Some(id))
        .await
        .expect("incidents");
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let incident = &incidents[0];
    assert_eq!(incident.node_id, "registrar_venta_smartflex");
    assert!(
        incident
            .message
            .starts_with("attempt 1 refused, not retried"),
        "{}",
        incident.message
    );
    assert_eq!(h.sims.smartflex.registration_count(), 0);
    (incident.message.clone(), incident.id.clone())
}

/// Retries `incident` of `id` as an operator, once Smartflex takes the
/// call again: one call registers the sale once, and the agent is asked to
/// tell the client.
pub async fn retried_registers_once(h: &Harness, id: &str, incident: &str) {
    h.engine
        .retry_incident(incident, "operador1")
        .await
        .expect("the incident is retried");
    assert_eq!(h.jobs().await, 1);
    h.task(id, "comunicar_solicitud").await;
    assert_eq!(h.sims.smartflex.registration_count(), 1);
}
