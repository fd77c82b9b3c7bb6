//! The HTTP API through the router and over a real socket, on SQLite and
//! PostgreSQL: authentication and roles, P06 driven only over HTTP, and
//! every kind of bad input answered with problem+json.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use tramite_api::http::{AppState, Users, Webhooks, WhatsApp, router};
use tramite_tests::engine::{Db, Harness};

const AGENT: &str = "token-agente";
const AGENT2: &str = "token-agente-2";
const LEAD: &str = "token-responsable";
const INSTALLER: &str = "token-instalaciones";
const CHANNEL: &str = "token-canal";
const NO_ROLES: &str = "token-sin-roles";
const OWNER_ONLY: &str = "token-solo-procesos";
const WHATSAPP_SECRET: &str = "whatsapp-app-secret";

/// One recorder per test process (metrics are global).
fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("one recorder")
        })
        .clone()
}

struct Api {
    h: Harness,
    app: axum::Router,
}

impl Api {
    async fn new(db: Db) -> Api {
        Api::with_users(db, Api::users()).await
    }

    fn users() -> Users {
        // These tests refuse credentials on purpose, by the dozen.
        Users::default()
            .with_refusal_delay(std::time::Duration::ZERO)
            .with("ana", AGENT, &["agente_ventas_digitales"])
            .with("bea", AGENT2, &["agente_ventas_digitales"])
            .with(
                "luis",
                LEAD,
                &["responsable_centro_llamadas", "operator", "process_owner"],
            )
            .with(
                "tito",
                INSTALLER,
                &["jefe_instalaciones", "tecnico_instalaciones"],
            )
            .with("ivr", CHANNEL, &["channel"])
            .with("nadie", NO_ROLES, &[])
            .with("pia", OWNER_ONLY, &["process_owner"])
    }

    async fn with_users(db: Db, users: Users) -> Api {
        Api::over(Harness::new(db).await, users)
    }

    fn over(h: Harness, users: Users) -> Api {
        let app = router(Arc::new(AppState {
            engine: h.engine.clone(),
            users,
            metrics: Some(metrics_handle()),
            connectors: h.connectors.clone(),
            webhooks: Webhooks {
                whatsapp: Some(WhatsApp {
                    app_secret: WHATSAPP_SECRET.to_owned(),
                    verify_token: "verificar-tramite".to_owned(),
                    message: "requisitos_whatsapp".to_owned(),
                    country_code: "591".to_owned(),
                    ttl_ms: 86_400_000,
                }),
            },
            health: Default::default(),
            census: Default::default(),
        }));
        Api { h, app }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let request = match body {
            Some(b) => request
                .header("content-type", "application/json")
                .body(Body::from(b)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value, content_type)
    }

    async fn json(
        &self,
        method: Method,
        uri: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(method, uri, Some(token), Some(body.to_string()))
            .await;
        (s, v)
    }

    async fn get(&self, uri: &str, token: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::GET, uri, Some(token), None).await;
        (s, v)
    }

    /// The open task at `node` of `instance` (or its children), seen by `token`.
    async fn task(&self, instance: &str, node: &str, token: &str) -> String {
        let (status, tasks) = self.get("/api/v1/tasks?limit=500", token).await;
        assert_eq!(status, StatusCode::OK);
        let family: Vec<String> = std::iter::once(instance.to_owned())
            .chain(
                self.h
                    .engine
                    .children(instance)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|c| c.id),
            )
            .collect();
        tasks["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["node_id"] == node && family.iter().any(|i| t["instance_id"] == i.as_str()))
            .unwrap_or_else(|| panic!("no task at {node}: {tasks}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn complete(&self, instance: &str, node: &str, token: &str, outcome: &str, data: Value) {
        let task = self.task(instance, node, token).await;
        let (status, body) = self
            .json(
                Method::POST,
                &format!("/api/v1/tasks/{task}/complete"),
                token,
                json!({"outcome": outcome, "data": data}),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{node}: {body}");
        self.h.jobs().await;
    }

    async fn start_p06(&self) -> String {
        let (status, body) = self
            .json(
                Method::POST,
                "/api/v1/instances",
                CHANNEL,
                json!({"code": "OPE-SUM-VEN-P06", "channel": "ivr", "business_key": "LLAMADA-1", "data": {"telefono": "72345678"}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(tramite_tests::engine::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(tramite_tests::engine::Db::Postgres).await
            }
        }
    };
}

async fn p06_sale_over_http(db: Db) {
    let api = Api::new(db).await;
    let id = api.start_p06().await;
    api.complete(&id, "recibir_llamada", AGENT, "atendida", json!({}))
        .await;
    api.complete(&id, "identificar_cliente", AGENT, "continuar", json!({"nombre_cliente": "Juan Pérez", "servicio_solicitado": "internet_fibra", "ci": "4587213"})).await;
    api.complete(
        &id,
        "solicitar_domicilio",
        AGENT,
        "continuar",
        json!({"direccion": "Av. América 1234", "zona": "Cala Cala"}),
    )
    .await;
    api.complete(
        &id,
        "verificar_capacidad",
        AGENT,
        "continuar",
        json!({"capacidad_confirmada": true}),
    )
    .await;
    api.complete(
        &id,
        "solicitar_requisitos",
        AGENT,
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    let (status, delivery) = api
        .json(Method::POST, "/api/v1/messages", CHANNEL, json!({"name": "requisitos_whatsapp", "key": "72345678", "id": "wamid.1", "payload": {"media": ["ci.jpg"]}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(delivery["status"], "delivered");
    api.complete(
        &id,
        "imprimir_requisitos",
        AGENT,
        "impresos",
        json!({"requisitos_impresos": true}),
    )
    .await;
    api.complete(
        &id,
        "comunicar_solicitud",
        AGENT,
        "comunicado",
        json!({"dias_estimados": 5}),
    )
    .await;
    api.complete(
        &id,
        "programar",
        INSTALLER,
        "programada",
        json!({"fecha_programada": "2026-12-01"}),
    )
    .await;
    api.complete(
        &id,
        "instalar",
        INSTALLER,
        "cerrar",
        json!({"instalacion_realizada": true, "dias_ejecucion": 4}),
    )
    .await;
    api.complete(
        &id,
        "seguimiento_venta",
        AGENT,
        "continuar",
        json!({"contrato_firmado": true}),
    )
    .await;
    // The task page has what the agent needs.
    let task = api.task(&id, "control_calidad", AGENT).await;
    let (status, page) = api.get(&format!("/api/v1/tasks/{task}"), AGENT).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page["title"]["es"],
        "Llamar al cliente para verificar satisfacción del servicio"
    );
    assert_eq!(page["outcomes"][0]["id"], "registrado");
    assert_eq!(page["instance"]["variables"]["telefono"], "72345678");
    api.complete(
        &id,
        "control_calidad",
        AGENT,
        "registrado",
        json!({"cliente_satisfecho": true}),
    )
    .await;
    let (status, instance) = api.get(&format!("/api/v1/instances/{id}"), AGENT).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(instance["outcome"], "venta_concretada");
    assert_eq!(instance["children"].as_array().unwrap().len(), 1);
    let (_, history) = api
        .get(&format!("/api/v1/instances/{id}/history"), AGENT)
        .await;
    assert_eq!(
        history.as_array().unwrap().last().unwrap()["kind"],
        "instance_completed"
    );
}
both!(p06_sale_over_http);

async fn p06_rejection_over_http(db: Db) {
    let api = Api::new(db).await;
    let id = api.start_p06().await;
    api.complete(&id, "recibir_llamada", AGENT, "atendida", json!({}))
        .await;
    api.complete(&id, "identificar_cliente", AGENT, "continuar", json!({"nombre_cliente": "Rosa Quispe", "servicio_solicitado": "television", "ci": "5123987"})).await;
    api.complete(
        &id,
        "informar_imposibilidad",
        AGENT,
        "informado",
        json!({"motivo_rechazo": "central_riesgos"}),
    )
    .await;
    let (_, instance) = api.get(&format!("/api/v1/instances/{id}"), AGENT).await;
    assert_eq!(instance["outcome"], "venta_no_concretada");
    let (status, values) = api
        .get(
            &format!(
                "/api/v1/indicators/OPE-SUM-VEN-P06/venta_digital_eficiente?from={}&to={}",
                tramite_tests::engine::T0 - 86_400_000,
                tramite_tests::engine::T0 + 86_400_000
            ),
            LEAD,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(values[0]["numerator"], 0);
    assert_eq!(values[0]["denominator"], 1);
    assert_eq!(values[0]["verdict"]["es"], "Observado");
    // An offset no place on Earth has is refused, not dated in year 6000;
    // one past what a 32-bit number holds is the same mistake, not a
    // malformed query.
    for offset in ["2000000000", "9999999999"] {
        let (status, problem) = api
            .get(
                &format!("/api/v1/indicators/OPE-SUM-VEN-P06/venta_digital_eficiente?from=0&to=1&utc_offset_minutes={offset}"),
                LEAD,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        let text = problem.to_string();
        assert!(
            text.contains("utc_offset_minutes") && text.contains("between -840 and 840"),
            "{problem}"
        );
    }
    // A range that ends where it begins asks for nothing.
    let (status, problem) = api
        .get(
            "/api/v1/indicators/OPE-SUM-VEN-P06/venta_digital_eficiente?from=5&to=5",
            LEAD,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
}
both!(p06_rejection_over_http);

async fn authentication_and_roles(db: Db) {
    let api = Api::new(db).await;
    let id = api.start_p06().await;
    let task = api.task(&id, "recibir_llamada", AGENT).await;
    // No token, or a wrong one: 401 everywhere.
    for uri in [
        "/api/v1/tasks",
        "/api/v1/definitions",
        &format!("/api/v1/instances/{id}"),
        &format!("/api/v1/tasks/{task}"),
    ] {
        let (status, body, content_type) = api.call(Method::GET, uri, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(body["type"], "https://tramite.dev/problems/unauthorized");
        let (status, _, _) = api.call(Method::GET, uri, Some("wrong"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    // (role, action) matrix.
    let forbidden = [
        (
            AGENT,
            Method::POST,
            "/api/v1/definitions".to_owned(),
            json!({"files": []}),
        ),
        (
            AGENT,
            Method::POST,
            "/api/v1/instances".to_owned(),
            json!({"code": "OPE-SUM-VEN-P06", "channel": "ivr"}),
        ),
        (
            AGENT,
            Method::POST,
            format!("/api/v1/instances/{id}/cancel"),
            json!({"reason": "x"}),
        ),
        (
            AGENT,
            Method::POST,
            "/api/v1/messages".to_owned(),
            json!({"name": "m", "key": "k", "id": "1"}),
        ),
        (
            CHANNEL,
            Method::POST,
            format!("/api/v1/tasks/{task}/complete"),
            json!({"outcome": "atendida"}),
        ),
        (
            INSTALLER,
            Method::POST,
            format!("/api/v1/tasks/{task}/claim"),
            json!({}),
        ),
        (
            CHANNEL,
            Method::POST,
            format!("/api/v1/instances/{id}/cancel"),
            json!({"reason": "x"}),
        ),
    ];
    for (token, method, uri, body) in forbidden {
        let (status, problem) = api.json(method.clone(), &uri, token, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {problem}");
    }
    // The refused completion (checked inside the engine's transaction) left
    // the task as it was and said whose it is.
    let (status, problem) = api
        .json(
            Method::POST,
            &format!("/api/v1/tasks/{task}/complete"),
            INSTALLER,
            json!({"outcome": "atendida"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        problem["detail"],
        "this task is for the role `agente_ventas_digitales`"
    );
    let (_, open) = api.get(&format!("/api/v1/tasks/{task}"), AGENT).await;
    assert_eq!(open["task"]["status"], "open", "{open}");
    let (status, _) = api.get("/api/v1/incidents", AGENT).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .get("/api/v1/tasks?role=jefe_instalaciones", AGENT)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.get(&format!("/api/v1/tasks/{task}"), INSTALLER).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "another role's task cannot be opened"
    );
    // An installer's inbox does not show the agent's task, whether or not
    // it names an (empty) role.
    for path in ["/api/v1/tasks", "/api/v1/tasks?role="] {
        let (status, tasks) = api.get(path, INSTALLER).await;
        assert_eq!(status, StatusCode::OK, "{path}: {tasks}");
        assert!(tasks["items"].as_array().unwrap().is_empty(), "{path}");
    }
    let (_, tasks) = api.get("/api/v1/tasks?role=", AGENT).await;
    assert_eq!(tasks["items"][0]["id"], task.as_str(), "{tasks}");
    // A claimed task is completed only by its assignee.
    let (status, _) = api
        .json(
            Method::POST,
            &format!("/api/v1/tasks/{task}/claim"),
            AGENT,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let other = api
        .h
        .engine
        .complete(tramite_engine::runtime::CompleteTask {
            task: task.clone(),
            user: "otro".into(),
            outcome: "atendida".into(),
            data: Default::default(),
            roles: None,
        });
    assert!(matches!(
        other.await,
        Err(tramite_engine::Error::TaskClaimedByOther { .. })
    ));
    // The operator cancels, with a reason.
    let (status, _) = api
        .json(
            Method::POST,
            &format!("/api/v1/instances/{id}/cancel"),
            LEAD,
            json!({"reason": "prueba"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, problem) = api
        .json(
            Method::POST,
            &format!("/api/v1/instances/{id}/cancel"),
            LEAD,
            json!({"reason": "otra vez"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        problem["type"],
        "https://tramite.dev/problems/instance-not-running"
    );
}
both!(authentication_and_roles);

async fn bad_input_gets_problem_json(db: Db) {
    let api = Api::new(db).await;
    let id = api.start_p06().await;
    let task = api.task(&id, "recibir_llamada", AGENT).await;
    let url = format!("/api/v1/tasks/{task}/complete");
    // A key longer than the database can index (PostgreSQL refuses a B-tree
    // entry over ~2.7 KB) → 422 naming it, on both backends, not a 500.
    let long = "k".repeat(8 * 1024);
    for (uri, body, field, limit) in [
        (
            "/api/v1/instances",
            json!({"code": "OPE-SUM-VEN-P06", "channel": "ivr", "business_key": long}),
            "business_key",
            512,
        ),
        (
            "/api/v1/instances",
            json!({"code": "OPE-SUM-VEN-P06", "channel": "ivr", "request_id": long}),
            "request_id",
            512,
        ),
        (
            "/api/v1/messages",
            json!({"name": "requisitos_whatsapp", "key": "72345678", "id": long}),
            "id",
            512,
        ),
        (
            "/api/v1/messages",
            json!({"name": "requisitos_whatsapp", "key": long, "id": "m-1"}),
            "key",
            512,
        ),
        (
            "/webhooks/leads",
            json!({"id": long, "process": "OPE-SUM-VEN-P06", "source": "web", "data": {"telefono": "71234567"}}),
            "id",
            508, // 512 less `web:`, under which it is kept
        ),
        (
            "/webhooks/leads",
            json!({"id": "k".repeat(509), "process": "OPE-SUM-VEN-P06", "source": "web", "data": {"telefono": "71234567"}}),
            "id",
            508,
        ),
    ] {
        let (status, problem) = api.json(Method::POST, uri, CHANNEL, body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{uri} {field}: {problem}"
        );
        assert_eq!(
            problem["type"], "https://tramite.dev/problems/too-long",
            "{problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}` is longer than {limit} bytes")),
            "{problem}"
        );
    }
    // A value nested deeper than the engine stores safely (JSON readers
    // stop at 128 levels, and a value is kept deeper than it came) → 422
    // naming it, and nothing stored; as deep as allowed → taken.
    let deep = |levels: usize| {
        let mut v = json!("x");
        for _ in 0..levels {
            v = json!([v]);
        }
        v
    };
    let message = |payload, id: &str| json!({"name": "requisitos_whatsapp", "key": "70000002", "id": id, "payload": payload});
    let start = |value| json!({"code": "OPE-SUM-VEN-P06", "channel": "ivr", "data": {"telefono": "71234567", "notas": value}});
    for (uri, body, field) in [
        ("/api/v1/messages", message(deep(65), "deep-1"), "payload"),
        ("/api/v1/instances", start(deep(64)), "data"),
    ] {
        let (status, problem) = api.json(Method::POST, uri, CHANNEL, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {problem}");
        assert_eq!(problem["type"], "https://tramite.dev/problems/too-deep");
        assert_eq!(
            problem["detail"],
            format!("`{field}` is nested deeper than 64 levels"),
            "{problem}"
        );
    }
    let (status, kept) = api
        .json(
            Method::POST,
            "/api/v1/messages",
            CHANNEL,
            message(deep(64), "deep-2"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    // Malformed JSON → 400; wrong shape or unknown field → 422; not JSON → 415.
    let (status, problem, _) = api
        .call(
            Method::POST,
            &url,
            Some(AGENT),
            Some("{\"outcome\": ".into()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(
        problem["type"],
        "https://tramite.dev/problems/malformed-body"
    );
    let (status, problem) = api
        .json(
            Method::POST,
            &url,
            AGENT,
            json!({"outcome": "atendida", "extra": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `extra`"),
        "{problem}"
    );
    let (status, _) = api
        .json(Method::POST, &url, AGENT, json!({"outcome": 7}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let request = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header("authorization", format!("Bearer {AGENT}"))
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(
        api.app.clone().oneshot(request).await.unwrap().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    // Oversized → 413.
    let huge =
        json!({"outcome": "atendida", "data": {"x": "a".repeat(tramite_api::http::MAX_BODY + 10)}})
            .to_string();
    let (status, _, _) = api.call(Method::POST, &url, Some(AGENT), Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Wrong outcome → 422; then a correct completion. The same completion
    // again (a retry after a lost answer) → 204, and nothing more happens;
    // another outcome, other data or another agent → 409.
    let (status, _) = api
        .json(Method::POST, &url, AGENT, json!({"outcome": "vender"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    api.complete(&id, "recibir_llamada", AGENT, "atendida", json!({}))
        .await;
    let (status, _) = api
        .json(Method::POST, &url, AGENT, json!({"outcome": "atendida"}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "the same completion again");
    for (token, body) in [
        (AGENT, json!({"outcome": "llamada_perdida"})),
        (AGENT, json!({"outcome": "atendida", "data": {"nota": "x"}})),
        (AGENT2, json!({"outcome": "atendida"})),
    ] {
        let (status, problem) = api.json(Method::POST, &url, token, body.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{token} {body}");
        assert_eq!(
            problem["type"],
            "https://tramite.dev/problems/task-not-open"
        );
    }
    let (_, history) = api
        .get(&format!("/api/v1/instances/{id}/history"), LEAD)
        .await;
    let completions = history
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["kind"] == "task_completed" && e["data"]["task"] == task.as_str())
        .count();
    assert_eq!(completions, 1, "completed once: {history}");
    // A form with wrong fields → 422 with a message per field; nothing changes.
    let next = api.task(&id, "identificar_cliente", AGENT).await;
    let (status, problem) = api
        .json(
            Method::POST,
            &format!("/api/v1/tasks/{next}/complete"),
            AGENT,
            json!({"outcome": "continuar", "data": {"ci": "12ab"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["nombre_cliente", "servicio_solicitado", "ci"],
        "{problem}"
    );
    // An unknown instance → 404; a broken definition → 422 with line and column.
    let (status, _) = api.get("/api/v1/instances/nope", AGENT).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let broken = "code: X\nname: X\nversion: 1\nowner_role: r\nroles: [{id: r, name: R}]\nnodes:\n  - id: a\n    kind: start\n    channels: [web]\n    next: b\n";
    let (status, problem) = api
        .json(
            Method::POST,
            "/api/v1/definitions",
            LEAD,
            json!({"files": [{"name": "x.yaml", "source": broken}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["code"], "unknown-node");
    assert_eq!(
        (
            problem["errors"][0]["line"].clone(),
            problem["errors"][0]["column"].clone()
        ),
        (json!(10), json!(11))
    );
    // A deploy of nothing is no deploy (it answered 201 with nothing made).
    let (status, problem) = api
        .json(
            Method::POST,
            "/api/v1/definitions",
            LEAD,
            json!({"files": []}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem.to_string().contains("no definition to deploy"),
        "{problem}"
    );
    // A message kept for less than no time, or past a year: refused, where
    // it was quietly clamped and answered "kept".
    for ttl in [-5, 400 * 86_400] {
        let (status, problem) = api
            .json(
                Method::POST,
                "/api/v1/messages",
                LEAD,
                json!({"name": "requisitos_whatsapp", "key": "70000000", "id": format!("ttl-{ttl}"), "ttl_seconds": ttl}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{ttl}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "ttl_seconds", "{problem}");
    }
    // A status no task, request or incident has (a typo, Spanish) is a
    // 422 naming the ones there are, not an empty list.
    for uri in [
        "/api/v1/tasks?status=abierto",
        "/api/v1/tasks?status=",
        "/api/v1/instances?status=finished",
        "/api/v1/incidents?status=abierto",
        "/api/v1/incidents?status=retried",
    ] {
        let (status, problem) = api.get(uri, LEAD).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "status", "{uri}: {problem}");
    }
    let (status, _) = api.get("/api/v1/incidents?status=resolved", LEAD).await;
    assert_eq!(status, StatusCode::OK);
}
both!(bad_input_gets_problem_json);

/// Refusals before any handler (a NUL character, a path that is not UTF-8,
/// an unknown route or method, a webhook's query or body) are problem+json
/// too, and change nothing.
async fn refusals_before_the_handler_are_problem_json(db: Db) {
    let api = Api::new(db).await;
    let id = api.start_p06().await;
    let problem = |status: StatusCode, kind: &str, got: (StatusCode, Value, String)| {
        assert_eq!(got.0, status, "{}", got.1);
        assert_eq!(got.2, "application/problem+json", "{}", got.1);
        assert_eq!(
            got.1["type"],
            format!("https://tramite.dev/problems/{kind}"),
            "{}",
            got.1
        );
    };
    // A NUL in a path, a query, a JSON body (escaped) or a form.
    for uri in ["/api/v1/tasks/%00", "/api/v1/tasks?variable=telefono:%00"] {
        let got = api.call(Method::GET, uri, Some(AGENT), None).await;
        problem(StatusCode::BAD_REQUEST, "nul-character", got);
    }
    let with_nul = r#"{"code": "OPE-SUM-VEN-P06", "channel": "ivr", "data": {"telefono": "72345678", "nombre_cliente": "x\u0000"}}"#;
    let got = api
        .call(
            Method::POST,
            "/api/v1/instances",
            Some(CHANNEL),
            Some(with_nul.into()),
        )
        .await;
    problem(StatusCode::BAD_REQUEST, "nul-character", got);
    let (_, started) = api
        .get("/api/v1/instances?code=OPE-SUM-VEN-P06&limit=500", LEAD)
        .await;
    assert_eq!(
        started["items"].as_array().map(Vec::len),
        Some(1),
        "nothing started: {started}"
    );
    // The text `\u0000` (its backslash escaped) is no NUL.
    let text = r#"{"code": "OPE-SUM-VEN-P06", "channel": "ivr", "data": {"telefono": "72345678", "nombre_cliente": "x\\u0000"}}"#;
    let (status, _, _) = api
        .call(
            Method::POST,
            "/api/v1/instances",
            Some(CHANNEL),
            Some(text.into()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // In JSON, `%00` is text, not a NUL.
    let (status, body) = api
        .json(
            Method::POST,
            "/api/v1/messages",
            CHANNEL,
            json!({"name": "pago", "key": "72345678", "id": "m-url", "payload": {"url": "https://x/?a=%00"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A path that is not UTF-8 once decoded.
    let got = api
        .call(Method::GET, "/api/v1/tasks/%FF", Some(AGENT), None)
        .await;
    problem(StatusCode::BAD_REQUEST, "invalid-path", got);
    // No such route; no such method.
    let got = api
        .call(Method::GET, "/api/v1/nada", Some(AGENT), None)
        .await;
    problem(StatusCode::NOT_FOUND, "not-found", got);
    let got = api
        .call(
            Method::POST,
            "/api/v1/tasks",
            Some(AGENT),
            Some("{}".into()),
        )
        .await;
    problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", got);
    // The WhatsApp webhook: a repeated query field; a body over the limit.
    let got = api
        .call(
            Method::GET,
            "/webhooks/whatsapp?hub.mode=a&hub.mode=b",
            None,
            None,
        )
        .await;
    problem(StatusCode::BAD_REQUEST, "invalid-query", got);
    let huge = "a".repeat(tramite_api::http::MAX_BODY + 10);
    let got = api
        .call(Method::POST, "/webhooks/whatsapp", None, Some(huge))
        .await;
    problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", got);
    // What was refused changed nothing: the first instance waits as it did.
    api.task(&id, "recibir_llamada", AGENT).await;
}
both!(refusals_before_the_handler_are_problem_json);

/// A user without roles sees no inbox (the engine reads no roles as any).
async fn a_user_without_roles_sees_no_inbox(db: Db) {
    let api = Api::new(db).await;
    api.start_p06().await;
    let (status, page) = api.get("/api/v1/tasks", AGENT).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    let (status, page) = api.get("/api/v1/tasks", NO_ROLES).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"], json!([]), "{page}");
    assert_eq!(page["next_cursor"], Value::Null);
    let (status, counts) = api.get("/api/v1/tasks/counts", NO_ROLES).await;
    assert_eq!(status, StatusCode::OK, "{counts}");
}
both!(a_user_without_roles_sees_no_inbox);

/// Twenty clients complete one task at once, half with each outcome: one
/// completion is made; who sent the same one is told it is done (a repeat
/// changes nothing), who sent the other outcome gets 409.
async fn twenty_clients_complete_one_task(db: Db) {
    let api = Arc::new(Api::new(db).await);
    let id = api.start_p06().await;
    let task = api.task(&id, "recibir_llamada", AGENT).await;
    let mut handles = Vec::new();
    for k in 0..20 {
        let api = Arc::clone(&api);
        let url = format!("/api/v1/tasks/{task}/complete");
        let outcome = if k % 2 == 0 {
            "atendida"
        } else {
            "llamada_perdida"
        };
        handles.push(tokio::spawn(async move {
            let (status, _) = api
                .json(Method::POST, &url, AGENT, json!({"outcome": outcome}))
                .await;
            (outcome, status)
        }));
    }
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    let (_, history) = api
        .get(&format!("/api/v1/instances/{id}/history"), LEAD)
        .await;
    let completions: Vec<&Value> = history
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["kind"] == "task_completed")
        .collect();
    assert_eq!(completions.len(), 1, "completed once: {history}");
    let made = completions[0]["data"]["outcome"].as_str().unwrap();
    for (outcome, status) in &answers {
        let expected = if *outcome == made {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(*status, expected, "{outcome} after {made}: {answers:?}");
    }
}
both!(twenty_clients_complete_one_task);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::new(Db::Sqlite).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = api.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET /api/v1/definitions HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {LEAD}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("\"code\":\"OPE-SUM-VEN-P06\""),
        "{response}"
    );
}

async fn pages_counts_assignment_and_lists(db: Db) {
    let api = Api::new(db).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(api.start_p06().await);
        api.h.advance(std::time::Duration::from_secs(1));
    }
    // Inbox pages, soonest due first.
    let (_, first) = api.get("/api/v1/tasks?limit=2", AGENT).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, second) = api
        .get(&format!("/api/v1/tasks?limit=2&cursor={cursor}"), AGENT)
        .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());
    let seen: std::collections::BTreeSet<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|t| t["instance_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen.len(), 3, "every task once");
    let (status, _) = api.get("/api/v1/tasks?cursor=garbage", AGENT).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // Badge counts per role.
    let (_, counts) = api.get("/api/v1/tasks/counts", AGENT).await;
    assert_eq!(
        counts,
        json!([{"role": "agente_ventas_digitales", "count": 3, "more": false}])
    );
    // The team lead assigns; an agent cannot.
    let task = api.task(&ids[0], "recibir_llamada", AGENT).await;
    let (status, _) = api
        .json(
            Method::POST,
            &format!("/api/v1/tasks/{task}/assign"),
            AGENT,
            json!({"user": "ana"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .json(
            Method::POST,
            &format!("/api/v1/tasks/{task}/assign"),
            LEAD,
            json!({"user": "ana"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, page) = api.get(&format!("/api/v1/tasks/{task}"), AGENT).await;
    assert_eq!(page["task"]["assignee"], "ana");
    // Instances, filtered and paged, newest first.
    let (_, list) = api
        .get(
            "/api/v1/instances?code=OPE-SUM-VEN-P06&status=running&limit=2",
            LEAD,
        )
        .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], ids[2].as_str());
    assert_eq!(items[0]["waiting_at"], json!(["recibir_llamada"]));
    let cursor = list["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = api
        .get(
            &format!("/api/v1/instances?code=OPE-SUM-VEN-P06&limit=2&cursor={cursor}"),
            LEAD,
        )
        .await;
    assert_eq!(rest["items"][0]["id"], ids[0].as_str());
    // Filters: due before, a variable's value, the node an instance waits at.
    let later = tramite_tests::engine::T0 + 10 * 60_000;
    let (_, due) = api
        .get(&format!("/api/v1/tasks?due_before={later}"), AGENT)
        .await;
    assert_eq!(
        due["items"].as_array().unwrap().len(),
        3,
        "recibir_llamada is due in 2 minutes"
    );
    let (_, none_due) = api
        .get(
            &format!("/api/v1/tasks?due_before={}", tramite_tests::engine::T0),
            AGENT,
        )
        .await;
    assert!(none_due["items"].as_array().unwrap().is_empty());
    let (_, by_phone) = api
        .get("/api/v1/tasks?variable=telefono:72345678", AGENT)
        .await;
    assert_eq!(by_phone["items"].as_array().unwrap().len(), 3);
    let (_, other_phone) = api
        .get("/api/v1/tasks?variable=telefono:70000000", AGENT)
        .await;
    assert!(other_phone["items"].as_array().unwrap().is_empty());
    let (status, _) = api.get("/api/v1/tasks?variable=no-colon", AGENT).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, waiting) = api
        .get("/api/v1/instances?node=recibir_llamada", LEAD)
        .await;
    assert_eq!(waiting["items"].as_array().unwrap().len(), 3);
    let (_, elsewhere) = api
        .get("/api/v1/instances?node=control_calidad", LEAD)
        .await;
    assert!(elsewhere["items"].as_array().unwrap().is_empty());
    // A definition with its versions and source.
    let (status, def) = api.get("/api/v1/definitions/OPE-SUM-VEN-P06", AGENT).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(def["versions"][0]["version"], 1);
    assert!(
        def["latest"]["source"]
            .as_str()
            .unwrap()
            .contains("code: OPE-SUM-VEN-P06")
    );
    let (status, _) = api.get("/api/v1/definitions/NOPE", AGENT).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
both!(pages_counts_assignment_and_lists);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_and_offline_docs_page() {
    let api = Api::new(Db::Sqlite).await;
    let (status, doc, _) = api.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/tasks",
        "/api/v1/tasks/{id}/complete",
        "/api/v1/instances",
        "/api/v1/messages",
        "/api/v1/indicators/{code}/{indicator}",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["CompleteRequest"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Every route the router serves, with each of its methods (the API,
    // the webhooks, health and metrics; the web pages and the docs page
    // apart), is documented.
    let source = include_str!("../src/http/mod.rs");
    let mut checked = 0;
    for chunk in source.split(".route(").skip(1) {
        let chunk = chunk.split(".layer(").next().unwrap();
        let route = chunk.split('"').nth(1).unwrap();
        if !["/api/v1", "/webhooks", "/healthz", "/readyz", "/metrics"]
            .iter()
            .any(|p| route.starts_with(p))
        {
            continue;
        }
        let path = paths
            .get(route)
            .unwrap_or_else(|| panic!("route {route} is not in the OpenAPI document"));
        for (call, method) in [("get(", "get"), ("post(", "post")] {
            if chunk.contains(call) {
                assert!(
                    path.get(method).is_some(),
                    "{method} {route} is not in the OpenAPI document"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 29, "only {checked} routes found");
    // Every operation says it can answer 503 and 500, and which problems
    // those are (commit-outcome-unknown must be told apart).
    for (route, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let server = &operation["responses"]["5XX"]["description"];
            assert!(
                server
                    .as_str()
                    .is_some_and(|d| d.contains("commit-outcome-unknown")),
                "{method} {route} does not document its 5xx answers"
            );
        }
    }
    // The docs page is served from the binary (nothing fetched from a CDN).
    let response = api
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/api/docs/")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let html = String::from_utf8(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(html.contains("swagger"), "{html}");
    assert!(
        !html.contains("https://"),
        "the page loads nothing from the internet"
    );
}

/// Every role × every endpoint: without a token 401; with a role the
/// endpoint does not allow 403; with one it allows, neither. The table must
/// name every route the router serves.
async fn authorization_matrix(db: Db) {
    let api = Api::new(db).await;
    let id = api.start_p06().await;
    let victim = api.start_p06().await; // the one the operator may cancel
    let task = api.task(&id, "recibir_llamada", AGENT).await;
    let all = [AGENT, LEAD, INSTALLER, CHANNEL];
    let t0 = tramite_tests::engine::T0;
    let table: Vec<(Method, String, &str, Vec<&str>, Value)> = vec![
        (
            Method::GET,
            "/api/v1/definitions".into(),
            "/api/v1/definitions",
            all.to_vec(),
            Value::Null,
        ),
        (
            Method::POST,
            "/api/v1/definitions".into(),
            "/api/v1/definitions",
            vec![LEAD],
            json!({"files": []}),
        ),
        (
            Method::GET,
            "/api/v1/definitions/OPE-SUM-VEN-P06".into(),
            "/api/v1/definitions/{code}",
            all.to_vec(),
            Value::Null,
        ),
        (
            Method::GET,
            "/api/v1/definitions/OPE-SUM-VEN-P06/diagram".into(),
            "/api/v1/definitions/{code}/diagram",
            all.to_vec(),
            Value::Null,
        ),
        (
            Method::POST,
            "/api/v1/instances".into(),
            "/api/v1/instances",
            vec![CHANNEL, LEAD],
            json!({"code": "OPE-SUM-VEN-P06", "channel": "ivr", "data": {"telefono": "72345678"}}),
        ),
        (
            Method::GET,
            "/api/v1/instances".into(),
            "/api/v1/instances",
            all.to_vec(),
            Value::Null,
        ),
        (
            Method::GET,
            format!("/api/v1/instances/{id}"),
            "/api/v1/instances/{id}",
            vec![AGENT, LEAD],
            Value::Null,
        ),
        (
            Method::GET,
            format!("/api/v1/instances/{id}/history"),
            "/api/v1/instances/{id}/history",
            vec![AGENT, LEAD],
            Value::Null,
        ),
        (
            Method::POST,
            format!("/api/v1/instances/{victim}/cancel"),
            "/api/v1/instances/{id}/cancel",
            vec![LEAD],
            json!({"reason": "matriz"}),
        ),
        (
            Method::GET,
            "/api/v1/tasks".into(),
            "/api/v1/tasks",
            all.to_vec(),
            Value::Null,
        ),
        (
            Method::GET,
            "/api/v1/tasks/counts".into(),
            "/api/v1/tasks/counts",
            all.to_vec(),
            Value::Null,
        ),
        (
            Method::GET,
            format!("/api/v1/tasks/{task}"),
            "/api/v1/tasks/{id}",
            vec![AGENT],
            Value::Null,
        ),
        (
            Method::POST,
            format!("/api/v1/tasks/{task}/claim"),
            "/api/v1/tasks/{id}/claim",
            vec![AGENT],
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/v1/tasks/{task}/unclaim"),
            "/api/v1/tasks/{id}/unclaim",
            vec![AGENT],
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/v1/tasks/{task}/assign"),
            "/api/v1/tasks/{id}/assign",
            vec![LEAD],
            json!({"user": "ana"}),
        ),
        (
            Method::POST,
            format!("/api/v1/tasks/{task}/complete"),
            "/api/v1/tasks/{id}/complete",
            vec![AGENT],
            json!({"outcome": "no-such-button"}),
        ),
        (
            Method::POST,
            "/api/v1/messages".into(),
            "/api/v1/messages",
            vec![CHANNEL, LEAD],
            json!({"name": "nada", "key": "k", "id": "matriz"}),
        ),
        (
            Method::GET,
            "/api/v1/messages".into(),
            "/api/v1/messages",
            vec![LEAD],
            Value::Null,
        ),
        (
            Method::POST,
            "/webhooks/leads".into(),
            "/webhooks/leads",
            vec![CHANNEL],
            json!({"id": "matriz", "process": "OPE-SUM-VEN-P06", "source": "web", "data": {"telefono": "71234567"}}),
        ),
        (
            Method::POST,
            "/webhooks/ivr".into(),
            "/webhooks/ivr",
            vec![CHANNEL],
            json!({"id": "matriz", "process": "OPE-SUM-VEN-P06", "data": {"telefono": "71234567"}}),
        ),
        (
            Method::GET,
            "/api/v1/incidents".into(),
            "/api/v1/incidents",
            vec![LEAD],
            Value::Null,
        ),
        (
            Method::POST,
            "/api/v1/incidents/nope/retry".into(),
            "/api/v1/incidents/{id}/retry",
            vec![LEAD],
            json!({}),
        ),
        (
            Method::POST,
            "/api/v1/incidents/nope/resolve".into(),
            "/api/v1/incidents/{id}/resolve",
            vec![LEAD],
            json!({"variables": {}}),
        ),
        (
            Method::GET,
            format!(
                "/api/v1/indicators/OPE-SUM-VEN-P06/venta_digital_eficiente?from={t0}&to={}",
                t0 + 1
            ),
            "/api/v1/indicators/{code}/{indicator}",
            all.to_vec(),
            Value::Null,
        ),
    ];
    // Every bearer-authenticated route of the router (the WhatsApp webhook
    // is signed instead, and tested on its own).
    let source = include_str!("../src/http/mod.rs");
    for chunk in source.split(".route(").skip(1) {
        let chunk = chunk.split(".layer(").next().unwrap();
        let route = chunk.split('"').nth(1).unwrap();
        if !(route.starts_with("/api/v1") || route.starts_with("/webhooks/"))
            || route == "/webhooks/whatsapp"
        {
            continue;
        }
        let methods: Vec<&str> = ["get(", "post("]
            .into_iter()
            .filter(|m| chunk.contains(m))
            .collect();
        assert!(!methods.is_empty(), "{route}: no method found");
        for m in methods {
            let method = if m == "get(" {
                Method::GET
            } else {
                Method::POST
            };
            assert!(
                table
                    .iter()
                    .any(|(tm, _, tr, _, _)| *tm == method && *tr == route),
                "{method} {route} is missing from the matrix"
            );
        }
    }
    for (method, uri, _, allowed, body) in &table {
        let body = (!body.is_null()).then(|| body.to_string());
        let (status, _, _) = api.call(method.clone(), uri, None, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} without a token"
        );
        for token in all {
            let (status, problem, _) = api
                .call(method.clone(), uri, Some(token), body.clone())
                .await;
            if allowed.contains(&token) {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {uri} as {token}: {status} {problem}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} as {token}: {problem}"
                );
            }
        }
    }
    // Who may assign no task learns nothing of which tasks exist: a task
    // that does not is 403 to them, 404 only to who may assign.
    for (token, expected) in [
        (AGENT, StatusCode::FORBIDDEN),
        (CHANNEL, StatusCode::FORBIDDEN),
        (NO_ROLES, StatusCode::FORBIDDEN),
        (OWNER_ONLY, StatusCode::FORBIDDEN),
        // An operator, and the owner of another procedure (OPR-PAS-P02).
        (LEAD, StatusCode::NOT_FOUND),
        (INSTALLER, StatusCode::NOT_FOUND),
    ] {
        let (status, problem) = api
            .json(
                Method::POST,
                "/api/v1/tasks/nope/assign",
                token,
                json!({"user": "ana"}),
            )
            .await;
        assert_eq!(status, expected, "{token}: {problem}");
    }
}
both!(authorization_matrix);

/// A request holds a client's identity, address and documents: it is read
/// by the roles its procedure names and by operators and process owners,
/// not by a channel's token nor by another procedure's people; lists show
/// only what the reader may open. An agent sees that a request is stopped
/// and where, the operator what failed.
async fn requests_are_read_by_the_people_of_their_procedure(db: Db) {
    let api = Api::new(db).await;
    let id = api.start_p06().await;
    api.complete(&id, "recibir_llamada", AGENT, "atendida", json!({}))
        .await;
    api.h.sims.naf.faults().start_outage();
    api.complete(&id, "identificar_cliente", AGENT, "continuar", json!({"nombre_cliente": "Juan Pérez", "servicio_solicitado": "internet_fibra", "ci": "4587213"})).await;
    for _ in 0..20 {
        api.h.jobs().await;
        api.h.advance(std::time::Duration::from_secs(300));
    }
    let (status, seen) = api.get(&format!("/api/v1/instances/{id}"), AGENT).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["variables"]["ci"], "4587213");
    let incident = &seen["incidents"][0];
    assert_eq!(incident["node_id"], "consultar_naf", "{seen}");
    assert!(incident.get("message").is_none(), "{incident}");
    let (_, history) = api
        .get(&format!("/api/v1/instances/{id}/history"), AGENT)
        .await;
    // A history's entries of one kind.
    let of_kind = |history: &Value, kind: &str| -> Vec<Value> {
        history
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    };
    let raised = of_kind(&history, "incident_raised");
    assert_eq!(raised.len(), 1, "{history}");
    assert!(raised[0]["data"].get("message").is_none(), "{history}");
    assert!(!history.to_string().contains("outage"), "{history}");
    let (_, history) = api
        .get(&format!("/api/v1/instances/{id}/history"), LEAD)
        .await;
    assert!(history.to_string().contains("outage"), "{history}");
    // A process owner reads every request, but what failed inside a
    // system is the operators'.
    let (status, seen) = api
        .get(&format!("/api/v1/instances/{id}"), OWNER_ONLY)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen["incidents"][0].get("message").is_none(), "{seen}");
    let (_, seen) = api.get(&format!("/api/v1/instances/{id}"), LEAD).await;
    assert!(
        seen["incidents"][0]["message"]
            .as_str()
            .unwrap()
            .contains("attempt"),
        "{seen}"
    );
    for token in [CHANNEL, INSTALLER, NO_ROLES] {
        for uri in [
            format!("/api/v1/instances/{id}"),
            format!("/api/v1/instances/{id}/history"),
            "/api/v1/instances?code=OPE-SUM-VEN-P06".to_owned(),
        ] {
            let (status, problem) = api.get(&uri, token).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{uri} as {token}: {problem}");
            assert_eq!(
                problem["type"], "https://tramite.dev/problems/forbidden",
                "{problem}"
            );
        }
        let (status, list) = api.get("/api/v1/instances", token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["items"], json!([]), "{token} lists nothing of P06");
        let (status, _, html) = page(
            &api,
            Method::GET,
            &format!("/instances/{id}"),
            Some(token),
            None,
            false,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
        assert!(!html.contains("4587213"), "{html}");
        // The refusal keeps the header: who is signed in, and "Salir".
        assert!(html.contains(r#"id="user""#), "{html}");
        let list = "/instances?code=OPE-SUM-VEN-P06";
        let (status, _, html) = page(&api, Method::GET, list, Some(token), None, false).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{list} as {token}: {html}");
    }
    for token in [AGENT, LEAD] {
        let (_, list) = api.get("/api/v1/instances", token).await;
        assert_eq!(list["items"][0]["id"], id.as_str(), "{list}");
    }
    let (status, _, html) = page(
        &api,
        Method::GET,
        &format!("/instances/{id}"),
        Some(AGENT),
        None,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("el equipo de operaciones fue avisado"),
        "{html}"
    );
    assert!(!html.contains("outage"), "{html}");
    let (_, _, html) = page(
        &api,
        Method::GET,
        &format!("/instances/{id}"),
        Some(LEAD),
        None,
        false,
    )
    .await;
    assert!(html.contains("outage"), "{html}");
    // The operator retries it from the incidents page: an agent cannot,
    // and the history names the operator as the API's retry would (the
    // page wrote `operator:luis` where the API writes `luis`).
    let incident = seen["incidents"][0]["id"].as_str().unwrap().to_owned();
    let retry = format!("/incidents/{incident}/retry");
    let (status, _, _) = page(&api, Method::POST, &retry, Some(AGENT), Some(""), false).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    api.h.sims.naf.faults().end_outage();
    let (status, headers, _) = page(&api, Method::POST, &retry, Some(LEAD), Some(""), false).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/incidents");
    let (_, history) = api
        .get(&format!("/api/v1/instances/{id}/history"), LEAD)
        .await;
    let retried = of_kind(&history, "incident_retried");
    assert_eq!(retried.len(), 1, "{history}");
    assert_eq!(retried[0]["actor"], "luis", "{history}");
    // A second click finds it settled: back to the list, not a page about
    // a task someone else took.
    let (status, headers, _) = page(&api, Method::POST, &retry, Some(LEAD), Some(""), false).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/incidents");
}
both!(requests_are_read_by_the_people_of_their_procedure);

/// A link on a request's page leads somewhere. The installation
/// (OPR-PAS-P02) a P06 agent may not read is named without a link, and an
/// installer sees no link up to the P06 sale; someone who reads both gets
/// both links.
async fn links_between_requests_lead_where_the_reader_may_go(db: Db) {
    use tramite_tests::p06::{through_coverage, through_identification, through_requirements};
    let api = Api::new(db).await;
    let id = through_identification(&api.h, "4587213").await;
    through_coverage(&api.h, &id, "Cala Cala").await;
    through_requirements(&api.h, &id).await;
    api.h.jobs().await;
    let child = tramite_tests::p06::communicated(&api.h, &id).await;
    let html = |uri: String, token: &'static str| {
        let api = &api;
        async move {
            let (status, _, html) = page(api, Method::GET, &uri, Some(token), None, false).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {html}");
            html
        }
    };
    let to_child = format!(r#"href="/instances/{}""#, child.id);
    let to_parent = format!(r#"href="/instances/{id}""#);
    let sale = html(format!("/instances/{id}"), AGENT).await;
    assert!(!sale.contains(&to_child), "{sale}");
    assert!(sale.contains("OPR-PAS-P02"), "{sale}");
    let installation = html(format!("/instances/{}", child.id), INSTALLER).await;
    assert!(!installation.contains(&to_parent), "{installation}");
    assert!(
        html(format!("/instances/{id}"), LEAD)
            .await
            .contains(&to_child)
    );
    assert!(
        html(format!("/instances/{}", child.id), LEAD)
            .await
            .contains(&to_parent)
    );
}
both!(links_between_requests_lead_where_the_reader_may_go);

/// A system's refusal routed by the procedure (Smartflex: the client is
/// blocked) shows its code to everyone who reads the request, and the
/// system's own text to operators only, like any failure inside a system.
async fn a_systems_refusal_text_is_the_operators(db: Db) {
    use tramite_tests::p06::{through_coverage, through_identification, through_requirements};
    let api = Api::new(db).await;
    let id = through_identification(&api.h, "6543210").await;
    through_coverage(&api.h, &id, "Cala Cala").await;
    through_requirements(&api.h, &id).await;
    api.h.jobs().await;
    api.task(&id, "informar_imposibilidad", AGENT).await;
    let refusal = |history: &Value| -> Value {
        history
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "job_business_error")
            .map(|e| e["data"]["error"].clone())
            .unwrap_or_else(|| panic!("{history}"))
    };
    let uri = format!("/api/v1/instances/{id}/history");
    let (_, history) = api.get(&uri, AGENT).await;
    assert_eq!(refusal(&history), json!({"code": "client_blocked"}));
    let (_, history) = api.get(&uri, LEAD).await;
    assert!(
        refusal(&history)["message"]
            .as_str()
            .unwrap()
            .contains("central de riesgos"),
        "{history}"
    );
}
both!(a_systems_refusal_text_is_the_operators);

/// A WhatsApp Business Cloud API message event, as Meta documents it: an
/// image from the client's phone (with its country code).
fn whatsapp_event(wamid: &str, from: &str) -> String {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "59144000000", "phone_number_id": "106540352242922"},
                    "contacts": [{"profile": {"name": "Juan Pérez"}, "wa_id": from}],
                    "messages": [{
                        "from": from,
                        "id": wamid,
                        "timestamp": "1795784400",
                        "type": "image",
                        "image": {
                            "caption": "CI anverso",
                            "mime_type": "image/jpeg",
                            "sha256": "j1dUyJcn2h3Qp4XkOF5kO0nUUgEr6sU6TqPe7iVKTs8=",
                            "id": "1234567890123456"
                        }
                    }]
                }
            }]
        }]
    })
    .to_string()
}

/// Sends, signed, a WhatsApp event of `first`'s message and a plain one
/// `wamid` (from the same phone): the event is answered 200, the second
/// message kept. Returns the answer's messages.
async fn first_and_another(api: &Api, mut first: Value, wamid: &str) -> Vec<Value> {
    let second = serde_json::from_str::<Value>(&whatsapp_event(wamid, "59172345678")).unwrap();
    first["entry"][0]["changes"][0]["value"]["messages"]
        .as_array_mut()
        .unwrap()
        .push(second["entry"][0]["changes"][0]["value"]["messages"][0].clone());
    let body = first.to_string();
    let (status, answer) = api
        .whatsapp(&body, Some(signature(WHATSAPP_SECRET, &body)))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let messages = answer["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 2, "{answer}");
    assert_eq!(messages[1]["delivery"]["status"], "kept", "{answer}");
    messages
}

fn signature(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Api {
    /// POSTs a WhatsApp event with `X-Hub-Signature-256: sig` (none if `None`).
    async fn whatsapp(&self, body: &str, sig: Option<String>) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/webhooks/whatsapp")
            .header("content-type", "application/json");
        if let Some(sig) = sig {
            request = request.header("x-hub-signature-256", sig);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// The documented WhatsApp payload, correctly signed, advances a P06
/// waiting for the requirements; with a wrong signature it does not.
async fn whatsapp_webhook_advances_a_waiting_p06(db: Db) {
    use tramite_tests::p06::{through_coverage, through_identification};
    let api = Api::new(db).await;
    let h = &api.h;
    // The verification handshake: the challenge comes back as plain text.
    let handshake = |token: &str| {
        Request::builder()
            .uri(format!(
                "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"
            ))
            .body(Body::empty())
            .unwrap()
    };
    let response = api
        .app
        .clone()
        .oneshot(handshake("verificar-tramite"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(&text[..], b"1158201444");
    let response = api.app.clone().oneshot(handshake("otro")).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // P06 waiting at step 9 for the client's WhatsApp.
    let id = through_identification(h, "4587213").await;
    h.jobs().await;
    through_coverage(h, &id, "Cala Cala").await;
    h.jobs().await;
    tramite_tests::p06::with_capacity_confirmed(h, &id).await;
    h.complete(
        &id,
        "solicitar_requisitos",
        "requisitos_solicitados",
        json!({}),
    )
    .await;
    let body = whatsapp_event("wamid.HBgLNTkxNzIzNDU2NzgVAgASGBQzQTdBNUE0", "59172345678");
    for bad in [
        None,
        Some(signature("another-secret", &body)),
        Some("sha256=zz".to_owned()),
    ] {
        let (status, problem) = api.whatsapp(&body, bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
        assert_eq!(
            problem["type"],
            "https://tramite.dev/problems/bad-signature"
        );
    }
    assert!(
        !h.task_open(&id, "imprimir_requisitos").await,
        "nothing moved"
    );
    let (status, answer) = api
        .whatsapp(&body, Some(signature(WHATSAPP_SECRET, &body)))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["messages"][0]["key"], "72345678");
    assert_eq!(
        answer["messages"][0]["delivery"]["instance"],
        id.as_str(),
        "{answer}"
    );
    h.task(&id, "imprimir_requisitos").await;
    let instance = h.instance(&id).await;
    assert_eq!(
        instance.state.variables["requisitos_adjuntos"],
        json!(["1234567890123456"]),
        "the media reference is kept on the instance"
    );
    // WhatsApp redelivers: the same wamid changes nothing.
    let (_, again) = api
        .whatsapp(&body, Some(signature(WHATSAPP_SECRET, &body)))
        .await;
    assert_eq!(
        again["messages"][0]["delivery"]["status"], "duplicate",
        "{again}"
    );
    // The other side of the CI, a minute later, as its own message: the
    // rest of the sending reaches the same request (P06's `collect`).
    h.advance(std::time::Duration::from_secs(60));
    let reverso = whatsapp_event("wamid.reverso", "59172345678")
        .replace("1234567890123456", "6543210987654321")
        .replace("CI anverso", "CI reverso");
    let (status, second) = api
        .whatsapp(&reverso, Some(signature(WHATSAPP_SECRET, &reverso)))
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        second["messages"][0]["delivery"]["instance"],
        id.as_str(),
        "{second}"
    );
    assert_eq!(
        h.instance(&id).await.state.variables["requisitos_adjuntos"],
        json!(["1234567890123456", "6543210987654321"]),
        "both photos are on the request"
    );
    // A message nobody waits for is kept and shown to operators.
    let stray = whatsapp_event("wamid.stray", "59170000001");
    let (_, kept) = api
        .whatsapp(&stray, Some(signature(WHATSAPP_SECRET, &stray)))
        .await;
    assert_eq!(kept["messages"][0]["delivery"]["status"], "kept", "{kept}");
    let (status, list) = api.get("/api/v1/messages?status=pending", LEAD).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["id"], "wamid.stray");
    assert_eq!(list["items"][0]["key"], "70000001");
    let (status, _) = api.get("/api/v1/messages", AGENT).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A NUL in a message (the database cannot store one) is replaced, not
    // refused: a refusal would make Meta send the whole event again and
    // again, holding back its other messages.
    let nul = whatsapp_event("wamid.nul\u{0}x", "59170000002").replace("CI anverso", "CI\\u0000");
    assert!(nul.contains("\\u0000"), "{nul}");
    let (status, kept) = api
        .whatsapp(&nul, Some(signature(WHATSAPP_SECRET, &nul)))
        .await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    assert_eq!(kept["messages"][0]["delivery"]["status"], "kept", "{kept}");
    let (_, list) = api.get("/api/v1/messages?status=pending", LEAD).await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "wamid.nul\u{fffd}x"),
        "{list}"
    );
}
both!(whatsapp_webhook_advances_a_waiting_p06);

/// Leads and IVR calls start P06 with their channel; the same event twice
/// starts one instance.
async fn lead_and_ivr_webhooks_start_p06_once(db: Db) {
    let api = Api::new(db).await;
    let lead = json!({"id": "fb-lead-881", "process": "OPE-SUM-VEN-P06", "source": "facebook", "data": {"telefono": "71234567", "nombre_cliente": "Ana"}});
    let (status, first) = api
        .json(Method::POST, "/webhooks/leads", CHANNEL, lead.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["new"], true);
    let (status, again) = api
        .json(Method::POST, "/webhooks/leads", CHANNEL, lead.clone())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (again["id"].clone(), again["new"].clone()),
        (first["id"].clone(), json!(false))
    );
    let instance = api.h.instance(first["id"].as_str().unwrap()).await;
    assert_eq!(instance.channel, "facebook");
    // Another channel's start with that request id learns nothing of it
    // (nor starts a second request).
    let (status, problem) = api
        .json(
            Method::POST,
            "/api/v1/instances",
            CHANNEL,
            json!({"code": "OPE-SUM-VEN-P06", "channel": "web", "request_id": "facebook:fb-lead-881", "data": {"telefono": "71234567"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(
        problem["type"],
        "https://tramite.dev/problems/request-id-taken"
    );
    assert!(
        !problem.to_string().contains(first["id"].as_str().unwrap()),
        "{problem}"
    );
    let (status, _) = api.json(Method::POST, "/webhooks/leads", AGENT, lead).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "agents do not post leads");
    let (status, problem) = api
        .json(
            Method::POST,
            "/webhooks/leads",
            CHANNEL,
            json!({"id": "x", "process": "OPE-SUM-VEN-P06", "data": {"telefono": "71234567"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let call = json!({"id": "call-20261127-0001", "process": "OPE-SUM-VEN-P06", "data": {"telefono": "72345678"}});
    let (status, started) = api
        .json(Method::POST, "/webhooks/ivr", CHANNEL, call.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(api.h.instance(&id).await.channel, "ivr");
    api.task(&id, "recibir_llamada", AGENT).await;
    let (status, _) = api.json(Method::POST, "/webhooks/ivr", CHANNEL, call).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a repeated call event starts nothing"
    );
    // The start data is checked like any start's.
    let (status, _) = api
        .json(
            Method::POST,
            "/webhooks/ivr",
            CHANNEL,
            json!({"id": "call-2", "process": "OPE-SUM-VEN-P06", "data": {"telefono": "abc"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}
both!(lead_and_ivr_webhooks_start_p06_once);

/// A token the users file ties to its channels starts requests by those
/// only: Botmaker's token cannot pose as the IVR, by the API or by the lead
/// webhook's `source`; a token without `channels` starts by any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_token_starts_requests_by_its_own_channels_only() {
    let file: tramite_api::http::auth::UsersFile = serde_yaml::from_str(&format!(
        "users:\n  - {{name: botmaker, token_sha256: {}, roles: [channel], channels: [botmaker, web]}}\n  - {{name: cualquiera, token_sha256: {}, roles: [channel]}}\n",
        tramite_api::http::auth::hash("token-botmaker"),
        tramite_api::http::auth::hash("token-cualquiera"),
    ))
    .unwrap();
    let users = Users::from_file(file).unwrap();
    let api = Api::over(Harness::new(Db::Sqlite).await, users);
    let start = |channel: &str, request: &str| json!({"code": "OPE-SUM-VEN-P06", "channel": channel, "request_id": request, "data": {"telefono": "71234567"}});
    let (status, problem) = api
        .json(
            Method::POST,
            "/api/v1/instances",
            "token-botmaker",
            start("ivr", "a"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("`botmaker`, `web` only"),
        "{problem}"
    );
    let lead = json!({"id": "L-1", "process": "OPE-SUM-VEN-P06", "source": "ivr", "data": {"telefono": "71234567"}});
    let (status, _) = api
        .json(
            Method::POST,
            "/webhooks/leads",
            "token-botmaker",
            lead.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .json(Method::POST, "/webhooks/ivr", "token-botmaker", lead)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, started) = api
        .json(
            Method::POST,
            "/api/v1/instances",
            "token-botmaker",
            start("botmaker", "b"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let (status, started) = api
        .json(
            Method::POST,
            "/api/v1/instances",
            "token-cualquiera",
            start("ivr", "c"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let filter = tramite_engine::store::instances::InstanceFilter {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        api.h.engine.instances(&filter).await.unwrap().len(),
        2,
        "the refused starts started nothing"
    );
}

/// A token tied to its channels publishes only the messages its users entry
/// lists: the IVR's token cannot deliver a client's WhatsApp documents to
/// the request waiting on that phone; a token without `channels` publishes
/// any message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_token_publishes_only_its_own_messages() {
    let file: tramite_api::http::auth::UsersFile = serde_yaml::from_str(&format!(
        "users:\n  - {{name: ivr, token_sha256: {}, roles: [channel], channels: [ivr]}}\n  - {{name: botmaker, token_sha256: {}, roles: [channel], channels: [botmaker], messages: [respuesta_cliente]}}\n  - {{name: cualquiera, token_sha256: {}, roles: [channel]}}\n",
        tramite_api::http::auth::hash("token-ivr"),
        tramite_api::http::auth::hash("token-botmaker"),
        tramite_api::http::auth::hash("token-cualquiera"),
    ))
    .unwrap();
    let users = Users::from_file(file).unwrap();
    let api = Api::over(Harness::new(Db::Sqlite).await, users);
    let message = |name: &str, id: &str| json!({"name": name, "key": "72345678", "id": id, "payload": {"media": ["ci.jpg"]}});
    for (token, name, refused) in [
        ("token-ivr", "requisitos_whatsapp", "publishes no messages"),
        (
            "token-botmaker",
            "requisitos_whatsapp",
            "publishes `respuesta_cliente` only",
        ),
    ] {
        let (status, problem) = api
            .json(
                Method::POST,
                "/api/v1/messages",
                token,
                message(name, token),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(refused), "{token}: {detail}");
    }
    assert!(
        api.h
            .engine
            .messages("pending", 10)
            .await
            .unwrap()
            .is_empty(),
        "the refused messages were not kept"
    );
    for (token, name) in [
        ("token-botmaker", "respuesta_cliente"),
        ("token-cualquiera", "requisitos_whatsapp"),
    ] {
        let (status, body) = api
            .json(
                Method::POST,
                "/api/v1/messages",
                token,
                message(name, token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{token}: {body}");
        assert_eq!(body["status"], "kept", "{token}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_shows_each_system() {
    let api = Api::new(Db::Sqlite).await;
    let (status, body, _) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["database"], "up");
    assert_eq!(body["writer"], "up");
    for system in ["naf", "gis", "smartflex"] {
        assert_eq!(body["systems"][system]["status"], "in_process", "{body}");
    }
    let (status, _, _) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

/// A node that takes no more changes (here its engine stopped; a failed
/// sync of the SQLite log does the same) fails its liveness check, so that
/// an orchestrator restarts it, and is not ready, so that a balancer
/// sends it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_takes_no_changes_is_neither_live_nor_ready() {
    let api = Api::new(Db::Sqlite).await;
    api.h.engine.shutdown().await;
    let (status, _, _) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, body, _) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "not ready", "{body}");
    assert_eq!(body["writer"], "stopped", "{body}");
}

/// The language switch goes back to the page it came from, and only to a
/// page of this site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn language_switch_stays_on_the_site() {
    let api = Api::new(Db::Sqlite).await;
    for (referer, back) in [
        (
            "http://tramite.local/instances?status=running",
            "/instances?status=running",
        ),
        ("http://tramite.local//evil.example/x", "/inbox"),
        ("http://tramite.local/\\evil.example", "/inbox"),
        // A page that answered a form: its address takes only a POST.
        ("http://tramite.local/tasks/t1/claim", "/tasks/t1"),
        ("http://tramite.local/tasks/t1/unclaim", "/tasks/t1"),
        ("http://tramite.local/incidents/i1/retry", "/incidents"),
    ] {
        let response = api
            .app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/lang/en")
                    .header("referer", referer)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()["location"], back, "{referer}");
        assert!(
            response.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .starts_with("tramite_lang=en")
        );
    }
}

/// A web page request as the browser sends it: the session cookie, a form
/// body where there is one; its status, headers and HTML.
/// The session cookie a sign-in with `token` gives (one that names nobody
/// when the sign-in is refused), as a `Cookie` header's value.
async fn signed_in(api: &Api, token: &str) -> String {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}")))
        .unwrap();
    let response = api.app.clone().oneshot(request).await.unwrap();
    response
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .unwrap_or("tramite_session=none")
        .to_owned()
}

/// Sent to sign in, an agent comes back to the page they were on (a task's
/// page then gives back what they had typed), not to the inbox; a form's
/// page for a form; a `next` that would leave the site is not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_again_goes_back_to_the_page() {
    let api = Api::new(Db::Sqlite).await;
    let send = |method: Method, uri: String, form: Option<String>| {
        let api = &api;
        async move {
            let mut request = Request::builder().method(method).uri(uri);
            if form.is_some() {
                request = request.header("content-type", "application/x-www-form-urlencoded");
            }
            let body = form.map_or_else(Body::empty, Body::from);
            let response = api
                .app
                .clone()
                .oneshot(request.body(body).unwrap())
                .await
                .unwrap();
            let location = response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned());
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, location, String::from_utf8(bytes.to_vec()).unwrap())
        }
    };
    let to_sign_in = Some("/login?next=%2Ftasks%2Ft1".to_owned());
    let (status, location, _) = send(Method::GET, "/tasks/t1".into(), None).await;
    assert_eq!(
        (status, location),
        (StatusCode::SEE_OTHER, to_sign_in.clone())
    );
    let (_, location, _) = send(Method::POST, "/tasks/t1/claim".into(), Some(String::new())).await;
    assert_eq!(location, to_sign_in, "a form's page, not its address");
    let (_, _, html) = send(Method::GET, "/login?next=%2Ftasks%2Ft1".into(), None).await;
    assert!(html.contains(r#"name="next" value="/tasks/t1""#), "{html}");
    let signed = |next: &str| format!("token={AGENT}&next={next}");
    let (status, location, _) =
        send(Method::POST, "/login".into(), Some(signed("/tasks/t1"))).await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/tasks/t1"))
    );
    // The inbox's filter (a client's number) is no part of where to go
    // back to.
    let (_, location, _) = send(Method::GET, "/inbox?business_key=72345678".into(), None).await;
    assert_eq!(location.as_deref(), Some("/login?next=%2Finbox"));
    for away in [
        "//evil.example/x",
        "/%5Cevil.example",
        "https://evil.example",
        "/logout",
        "/login?next=/logout",
    ] {
        let (_, location, _) = send(Method::POST, "/login".into(), Some(signed(away))).await;
        assert_eq!(location.as_deref(), Some("/inbox"), "{away}");
    }
    let (status, _, html) = send(
        Method::POST,
        "/login".into(),
        Some("token=wrong&next=/tasks/t1".into()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        html.contains(r#"name="next" value="/tasks/t1""#),
        "kept for the next try: {html}"
    );
    // Someone else signing in on the PC the last session was on starts in
    // the inbox, not on the page that session asked for.
    let earlier = signed_in(&api, AGENT).await;
    let response = sign_in_after(&api, earlier, format!("token={LEAD}&next=/tasks/t1")).await;
    assert_eq!(response.headers()["location"], "/inbox?new_user=1");
}

/// A web session unused for `IDLE_MS` ends (an agent who walked away from
/// a shared PC without "Salir"); opening a page renews it, in a new cookie
/// for the same session, while the inbox refreshing itself does not.
async fn an_unused_session_ends_and_a_used_one_goes_on(db: Db) {
    let api = Api::new(db).await;
    let first = signed_in(&api, AGENT).await;
    let inbox = |cookie: String, htmx: bool| {
        let api = &api;
        async move {
            let mut request = Request::builder().uri("/inbox").header("cookie", cookie);
            if htmx {
                request = request.header("hx-request", "true");
            }
            let response = api
                .app
                .clone()
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let renewed = response
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|c| c.to_str().ok())
                .filter_map(|c| c.split(';').next())
                .find(|c| c.starts_with("tramite_session="))
                .map(str::to_owned);
            (response.status(), renewed)
        }
    };
    let minutes = |n: u64| std::time::Duration::from_secs(60 * n);
    api.h.advance(minutes(20));
    assert_eq!(
        inbox(first.clone(), true).await,
        (StatusCode::OK, None),
        "refreshing itself is no use"
    );
    let (status, renewed) = inbox(first.clone(), false).await;
    assert_eq!(status, StatusCode::OK);
    let renewed = renewed.expect("a page opened renews the session");
    api.h.advance(minutes(20));
    // Signed out, the refreshing inbox is sent to the sign-in page
    // (htmx's `HX-Redirect`).
    assert_eq!(
        inbox(first, true).await.0,
        StatusCode::UNAUTHORIZED,
        "40 minutes unused: signed out"
    );
    assert_eq!(inbox(renewed.clone(), true).await.0, StatusCode::OK);
    api.h.advance(minutes(11));
    assert_eq!(
        inbox(renewed.clone(), true).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(inbox(renewed, false).await.0, StatusCode::SEE_OTHER);
}
both!(an_unused_session_ends_and_a_used_one_goes_on);

/// A sign-in (`form`) from a browser that holds `cookie`, as another
/// person on the same PC would send it.
async fn sign_in_after(api: &Api, cookie: String, form: String) -> axum::response::Response {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookie)
        .body(Body::from(form))
        .unwrap();
    api.app.clone().oneshot(request).await.unwrap()
}

async fn page(
    api: &Api,
    method: Method,
    uri: &str,
    token: Option<&str>,
    form: Option<&str>,
    htmx: bool,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header("cookie", signed_in(api, t).await);
    }
    if htmx {
        request = request.header("hx-request", "true");
    }
    let request = match form {
        Some(f) => request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(f.to_owned())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = api.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The task page proposes each field's `default` (step 7.1 opens with GIS's
/// verdict ticked), as the API's task does; once completed, the page says
/// so instead of offering the form again, a second click of the same
/// agent lands in the inbox, and another agent's late submit is a 409 that
/// shows the task closed and what they had typed. Pages are never cached by the browser, nor
/// framed by another site.
async fn task_pages_propose_defaults_and_close_once_done(db: Db) {
    use tramite_tests::p06::{through_coverage, through_identification};
    let api = Api::new(db).await;
    let id = through_identification(&api.h, "4587213").await;
    through_coverage(&api.h, &id, "Cala Cala").await;
    assert_eq!(
        api.h.instance(&id).await.state.variables["gis_capacidad"],
        json!(true)
    );
    let task = api.h.task(&id, "verificar_capacidad").await.id;
    let (status, view) = api.get(&format!("/api/v1/tasks/{task}"), AGENT).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        view["proposed"]["capacidad_confirmada"],
        json!(true),
        "{view}"
    );

    let uri = format!("/tasks/{task}");
    let (status, headers, html) = page(&api, Method::GET, &uri, Some(AGENT), None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["cache-control"], "no-store");
    // Nor shown in another site's frame (clickjacking an agent's buttons).
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["content-security-policy"], "frame-ancestors 'none'");
    assert!(
        html.contains(
            r#"id="f-capacidad_confirmada-true" name="capacidad_confirmada" value="true" checked required>"#
        ),
        "GIS's verdict is proposed, as the Sí of a required yes/no question: {html}"
    );
    // Left unanswered, a required yes/no question is refused, not read as No.
    let (status, _, refused) = page(
        &api,
        Method::POST,
        &uri,
        Some(AGENT),
        Some("outcome=continuar"),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused.contains("Este dato es obligatorio."), "{refused}");
    let title = &html[html.find("<title>").unwrap()..html.find("</title>").unwrap()];
    assert!(!title.contains("<script"), "{title}");
    assert!(html.contains(r#"id="task-form""#));

    let form = "capacidad_confirmada__present=1&capacidad_confirmada=true&outcome=continuar";
    for _ in 0..2 {
        // The second is the agent's double click.
        let (status, headers, _) =
            page(&api, Method::POST, &uri, Some(AGENT), Some(form), false).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers["location"], "/inbox?done=1");
    }
    // The same agent's stale tab, with another answer: not recorded, and
    // the page says the task is closed rather than "completed".
    let other = form.replace("capacidad_confirmada=true", "capacidad_confirmada=false");
    let (status, _, html) = page(&api, Method::POST, &uri, Some(AGENT), Some(&other), false).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(html.contains(r#"id="task-closed""#), "{html}");
    let history = api.h.history(&id).await;
    assert_eq!(
        history.iter().filter(|k| *k == "task_completed").count(),
        4,
        "steps 2, 3, 5 and 7.1, each once: {history:?}"
    );
    let (status, _, html) = page(&api, Method::GET, &uri, Some(AGENT), None, false).await;
    assert_eq!(status, StatusCode::OK);
    let closed = &html[html.find(r#"id="task-closed""#).expect("the closed card")..];
    assert!(
        closed[..closed.find("</div>").unwrap()].contains("(ana, "),
        "who completed it: {closed}"
    );
    assert!(
        !html.contains(r#"id="task-form""#),
        "no form to fill in again"
    );
    assert!(html.contains("Concluida"));
    let (status, _, html) = page(&api, Method::POST, &uri, Some(AGENT2), Some(form), false).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(html.contains(r#"id="task-closed""#), "{html}");
    // What the late agent had typed is shown to copy, not lost.
    let typed = &html[html.find(r#"id="typed""#).expect("what was typed")..];
    assert!(
        typed.contains(
            "<dt>¿Existe capacidad técnica para lo que el cliente requiere?</dt><dd>Sí</dd>"
        ),
        "{typed}"
    );

    // The inbox's refresh after the session ended goes to the sign-in page
    // rather than pasting it into the table.
    let (status, headers, html) = page(&api, Method::GET, "/inbox/rows", None, None, true).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["hx-redirect"], "/login");
    assert!(html.is_empty());
    let (status, headers, _) = page(&api, Method::GET, "/inbox/rows", None, None, false).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // The rows are a part of the inbox: signed in, back to the inbox.
    assert_eq!(headers["location"], "/login?next=%2Finbox");
}
both!(task_pages_propose_defaults_and_close_once_done);

/// The web inbox shows the 100 tasks due soonest and says when there are
/// more, on the page and in its 10-second refresh, instead of leaving the
/// rest unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_says_when_it_shows_only_some_tasks() {
    let api = Api::new(Db::Sqlite).await;
    tramite_tests::p06::waiting_for_identification(&api.h, 100).await;
    let (status, _, html) = page(&api, Method::GET, "/inbox", Some(AGENT), None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(html.matches("data-task=").count(), 100);
    assert!(!html.contains(r#"id="more""#), "exactly 100: nothing more");
    // So does the list of requests (the 100 newest).
    let requests = |html: &str| html.matches(r#"<tr><td><a href="/instances/"#).count();
    let (_, _, list) = page(&api, Method::GET, "/instances", Some(LEAD), None, false).await;
    assert_eq!(requests(&list), 100, "{list}");
    assert!(!list.contains(r#"id="more""#), "exactly 100: nothing more");
    tramite_tests::p06::waiting_for_identification(&api.h, 1).await;
    let (_, _, list) = page(&api, Method::GET, "/instances", Some(LEAD), None, false).await;
    assert_eq!(requests(&list), 100);
    assert!(
        list.contains(r#"id="more""#) && list.contains("solicitudes más recientes; hay más"),
        "{list}"
    );
    for uri in ["/inbox", "/inbox/rows"] {
        let (status, _, html) = page(
            &api,
            Method::GET,
            uri,
            Some(AGENT),
            None,
            uri.ends_with("rows"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(html.matches("data-task=").count(), 100, "{uri}");
        assert!(
            html.contains(r#"id="more""#) && html.contains("hay más"),
            "{uri}: {html}"
        );
    }
}

/// An inbox row is titled by its task's own version: a node renamed in a
/// later version still shows its title for the tasks of the earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_rows_are_titled_by_their_own_version() {
    let api = Api::new(Db::Sqlite).await;
    let v1 = r#"
code: T-RENOMBRE
name: Renombre
version: 1
owner_role: agente_ventas_digitales
roles: [{id: agente_ventas_digitales, name: Agente}]
nodes:
  - id: inicio
    kind: start
    channels: [web]
    next: revisar
  - id: revisar
    kind: user_task
    label: {es: Revisar la primera versión, en: Review v1}
    role: agente_ventas_digitales
    outcomes:
      - {id: ok, label: Listo, next: fin}
  - id: fin
    kind: end
    outcome: listo
"#;
    let deploy = |text: String| {
        let engine = api.h.engine.clone();
        async move {
            engine
                .deploy(vec![("renombre.yaml".into(), text)])
                .await
                .expect("deploys")
        }
    };
    deploy(v1.to_owned()).await;
    let id = api.h.start("T-RENOMBRE", "web", json!({})).await;
    deploy(
        v1.replace("version: 1", "version: 2")
            .replace("next: revisar", "next: revisar_todo")
            .replace("id: revisar\n", "id: revisar_todo\n")
            .replace("Revisar la primera versión", "Revisar todo"),
    )
    .await;
    assert_eq!(api.h.instance(&id).await.version, 1);
    let (status, _, html) = page(&api, Method::GET, "/inbox", Some(AGENT), None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Revisar la primera versión"), "{html}");
}

/// Review findings (6 December, night): metrics from the web form, gauges
/// that go back to 0, assignments to people who exist, empty ids, a NUL
/// spelt in JSON, the incidents page for operators only, and one refused
/// WhatsApp message that does not hold back the event's others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_findings_over_http() {
    const RITA: &str = "clave-rita";
    let api = Api::with_users(Db::Sqlite, Api::users().with("rita", RITA, &["agente"])).await;
    api.h
        .engine
        .deploy(vec![(
            "rework.yaml".into(),
            tramite_tests::REWORK.to_owned(),
        )])
        .await
        .expect("deploys");
    let id = api.h.start("T-REWORK", "web", json!({})).await;
    let metrics = || async {
        let response = api
            .app
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    let text = metrics().await;
    assert!(
        text.contains("tramite_tasks_open{role=\"agente\"} 1"),
        "{text}"
    );

    // Assigning to a name nobody signs in with, or to someone without the
    // task's role, is refused; the task stays open to its role.
    let task = api.h.task(&id, "revisar").await;
    for user in ["rtia", "ana"] {
        let (status, problem) = api
            .json(
                Method::POST,
                &format!("/api/v1/tasks/{}/assign", task.id),
                LEAD,
                json!({"user": user}),
            )
            .await;
        // LEAD lacks T-REWORK's owner role `agente`: operators may assign.
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{user}: {problem}"
        );
        assert_eq!(
            problem["type"],
            "https://tramite.dev/problems/no-such-assignee"
        );
    }
    assert!(api.h.task(&id, "revisar").await.assignee.is_none());
    let (status, _) = api
        .json(
            Method::POST,
            &format!("/api/v1/tasks/{}/assign", task.id),
            LEAD,
            json!({"user": "rita"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Completed through the agent's form: counted like the API's.
    let (status, headers, _) = page(
        &api,
        Method::POST,
        &format!("/tasks/{}", task.id),
        Some(RITA),
        Some("outcome=ok&rehacer=false"),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/inbox?done=1");
    // The same completion sent again over the API (a retry): done, and
    // not counted twice.
    let done = api.h.engine.task(&task.id).await.unwrap();
    let (status, problem) = api
        .json(
            Method::POST,
            &format!("/api/v1/tasks/{}/complete", task.id),
            RITA,
            json!({"outcome": done.outcome, "data": done.data}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{problem}");
    let text = metrics().await;
    assert!(
        text.contains("tramite_tasks_completed_total{process=\"T-REWORK\",node=\"revisar\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tramite_tasks_open{role=\"agente\"} 0"),
        "{text}"
    );

    // Empty ids would make every later start or message a "repeat".
    for (uri, body) in [
        (
            "/api/v1/instances",
            json!({"code": "T-REWORK", "channel": "web", "request_id": " "}),
        ),
        (
            "/webhooks/ivr",
            json!({"id": "", "process": "OPE-SUM-VEN-P06", "data": {"telefono": "72345678"}}),
        ),
        (
            "/api/v1/messages",
            json!({"name": "requisitos_whatsapp", "key": "72345678", "id": ""}),
        ),
        (
            "/api/v1/messages",
            json!({"name": "requisitos_whatsapp", "key": "", "id": "wamid.x"}),
        ),
    ] {
        let (status, problem) = api.json(Method::POST, uri, CHANNEL, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {problem}");
        assert_eq!(problem["type"], "https://tramite.dev/problems/empty-id");
    }

    // NUL spelt as JSON inside the query's variable filter.
    let (status, problem) = api
        .get("/api/v1/tasks?variable=telefono:%22%5Cu0000%22", AGENT)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(
        problem["type"],
        "https://tramite.dev/problems/nul-character"
    );

    // The incidents page is the operators', as the JSON list is.
    let (status, _, html) = page(&api, Method::GET, "/incidents", Some(AGENT), None, false).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("No tiene acceso"), "{html}");
    let (_, _, inbox) = page(&api, Method::GET, "/inbox", Some(AGENT), None, false).await;
    assert!(!inbox.contains("href=\"/incidents\""));
    let (status, _, html) = page(&api, Method::GET, "/incidents", Some(LEAD), None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("href=\"/incidents\""));

    // A WhatsApp event of two messages whose first reuses a wamid taken by
    // another message: refused for good, listed; the second still goes in.
    api.h
        .publish("otro_mensaje", "70000000", "wamid.tomado", json!({}))
        .await;
    let first =
        serde_json::from_str::<Value>(&whatsapp_event("wamid.tomado", "59172345678")).unwrap();
    let messages = first_and_another(&api, first, "wamid.nuevo").await;
    assert!(
        messages[0]["refused"]
            .as_str()
            .unwrap()
            .contains("wamid.tomado")
    );
    // Likewise a message nested past what the engine keeps (its caption an
    // object 70 levels deep): refused for good, the other still goes in.
    let mut deep =
        serde_json::from_str::<Value>(&whatsapp_event("wamid.hondo", "59172345678")).unwrap();
    deep["entry"][0]["changes"][0]["value"]["messages"][0]["image"]["caption"] =
        (0..70).fold(json!("CI"), |v, _| json!({"a": v}));
    let messages = first_and_another(&api, deep, "wamid.otro").await;
    assert!(messages[0]["refused"].is_string(), "{messages:?}");

    // Resolve says what the token does then: `go_on` or `run_again`.
    for (then, status) in [
        ("sideways", StatusCode::UNPROCESSABLE_ENTITY),
        ("go_on", StatusCode::NOT_FOUND),
        ("run_again", StatusCode::NOT_FOUND),
    ] {
        let (got, problem) = api
            .json(
                Method::POST,
                "/api/v1/incidents/nope/resolve",
                LEAD,
                json!({"variables": {}, "then": then}),
            )
            .await;
        assert_eq!(got, status, "{then}: {problem}");
    }
    // The body may be left out (what the incident calls for, no
    // variables); a body that is not JSON is still refused.
    let (got, problem, _) = api
        .call(
            Method::POST,
            "/api/v1/incidents/nope/resolve",
            Some(LEAD),
            None,
        )
        .await;
    assert_eq!(got, StatusCode::NOT_FOUND, "no body: {problem}");
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/incidents/nope/resolve")
        .header("authorization", format!("Bearer {LEAD}"))
        .header("content-type", "text/plain")
        .body(Body::from("go on"))
        .unwrap();
    assert_eq!(
        api.app.clone().oneshot(request).await.unwrap().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );

    // A process owner checks a new version before deploying it: validated
    // against what is deployed, the version it would become, nothing stored.
    // v2 decides on `rehacer` itself, an optional field: null there would
    // be an incident, which the deploy warns of.
    let v2 = tramite_tests::REWORK
        .replace("name: Revisión en paralelo", "name: Revisión v2")
        .replace(
            "- when: rehacer == true\n        next: dividir",
            "- when: rehacer\n        next: dividir",
        );
    assert_ne!(v2.matches("rehacer == true").count(), 2);
    let files = json!({"files": [{"name": "rework.yaml", "source": v2}]});
    let (status, would) = api
        .json(
            Method::POST,
            "/api/v1/definitions?dry_run=true",
            LEAD,
            files.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{would}");
    // Warned of, with line and column, and taken.
    let warned = |answer: &Value| {
        assert_eq!(
            (&answer[0]["code"], &answer[0]["version"], &answer[0]["new"]),
            (&json!("T-REWORK"), &json!(2), &json!(true)),
            "{answer}"
        );
        let warnings: Vec<&str> = answer[0]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        assert_eq!(warnings.len(), 1, "{answer}");
        assert!(
            warnings[0].starts_with(
                "rework.yaml:37:15: warning[maybe-unwritten]: `rehacer` reads `rehacer`"
            ),
            "{answer}"
        );
    };
    warned(&would);
    let (_, versions) = api.get("/api/v1/definitions/T-REWORK", LEAD).await;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "{versions}"
    );
    let broken = v2.replace("default: fin", "default: fim");
    assert_ne!(broken, v2);
    let (status, problem) = api
        .json(
            Method::POST,
            "/api/v1/definitions?dry_run=true",
            LEAD,
            json!({"files": [{"name": "rework.yaml", "source": broken}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["code"], "unknown-node", "{problem}");
    let (status, deployed) = api
        .json(Method::POST, "/api/v1/definitions", LEAD, files)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    warned(&deployed);
}

/// An agent gives back, from the task page, a call-back they took just
/// before it was due: its escalation, held off while they had it, runs then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_releases_an_overdue_task_from_its_page() {
    let api = Api::new(Db::Sqlite).await;
    let id = api
        .h
        .start("OPE-SUM-VEN-P06", "ivr", json!({"telefono": "72345678"}))
        .await;
    api.h
        .complete(&id, "recibir_llamada", "llamada_perdida", json!({}))
        .await;
    let task = api.h.task(&id, "devolver_llamada").await;
    let uri = format!("/tasks/{}", task.id);
    let (status, _, html) = page(&api, Method::GET, &uri, Some(AGENT), None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !html.contains(r#"id="release""#),
        "not held yet: nothing to release"
    );
    let (status, _, _) = page(
        &api,
        Method::POST,
        &format!("{uri}/claim"),
        Some(AGENT),
        Some(""),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    api.h.advance(std::time::Duration::from_secs(31 * 60));
    api.h.jobs().await;
    assert!(
        api.h.task_open(&id, "devolver_llamada").await,
        "held: not escalated"
    );
    let (_, _, html) = page(&api, Method::GET, &uri, Some(AGENT), None, false).await;
    assert!(
        html.contains(r#"id="release""#) && html.contains("Liberar"),
        "{html}"
    );
    // Overdue, and released it goes on to the team lead, not back to the
    // inbox: the page says so and the button asks first.
    assert!(
        html.contains(r#"<span class="badge overdue">Vencida</span>"#),
        "{html}"
    );
    assert!(
        html.contains("data-confirm=\"La tarea está vencida: al liberarla no vuelve a la bandeja, pasa a «1.2. Devolución de llamada vencida»."),
        "{html}"
    );
    // Another agent cannot release it.
    let (status, _, _) = page(
        &api,
        Method::POST,
        &format!("{uri}/unclaim"),
        Some(AGENT2),
        Some(""),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, headers, _) = page(
        &api,
        Method::POST,
        &format!("{uri}/unclaim"),
        Some(AGENT),
        Some(""),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/inbox");
    assert!(!api.h.task_open(&id, "devolver_llamada").await);
    api.h.task(&id, "devolucion_vencida").await;
}

/// A form posted from another site (a sibling subdomain that SameSite
/// counts as the same site) is refused before it acts, sign-in included;
/// one from the page's own host goes through, as does one behind proxies
/// that name the host first in `X-Forwarded-Host`. Over HTTPS the session
/// cookie is `Secure`; the API's scheme name is case-insensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_from_another_site_is_refused() {
    let api = Api::new(Db::Sqlite).await;
    let id = api.start_p06().await;
    let task = api.task(&id, "recibir_llamada", AGENT).await;
    let cookie = signed_in(&api, AGENT).await;
    let post = |uri: String, headers: Vec<(&'static str, &'static str)>, body: String| {
        let (app, cookie) = (api.app.clone(), cookie.clone());
        async move {
            let mut request = Request::builder()
                .method(Method::POST)
                .uri(uri)
                .header("cookie", cookie.clone())
                .header("content-type", "application/x-www-form-urlencoded");
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = app
                .oneshot(request.body(Body::from(body)).unwrap())
                .await
                .unwrap();
            (response.status(), response.headers().clone())
        }
    };
    let claim = format!("/tasks/{task}/claim");
    for from in [
        vec![
            ("host", "ventas.example.bo"),
            ("origin", "https://evil.example.bo"),
        ],
        vec![
            ("host", "ventas.example.bo"),
            ("referer", "https://evil.example.bo/x"),
        ],
        vec![("host", "ventas.example.bo"), ("origin", "null")],
        // Chained proxies: only the first host of the list is the page's.
        vec![
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-host", "ventas.example.bo, evil.example.bo"),
            ("origin", "https://evil.example.bo"),
        ],
    ] {
        let (status, _) = post(claim.clone(), from.clone(), String::new()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{from:?}");
    }
    let (status, _) = post(
        "/login".into(),
        vec![
            ("host", "ventas.example.bo"),
            ("origin", "https://evil.example.bo"),
        ],
        format!("token={AGENT}"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "sign-in from another site");
    let (_, task_row) = api.get(&format!("/api/v1/tasks/{task}"), AGENT).await;
    assert_eq!(
        task_row["task"]["status"], "open",
        "nothing was claimed: {task_row}"
    );

    let (status, _) = post(
        claim.clone(),
        vec![
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-host", "ventas.example.bo, 10.0.0.5:8080"),
            ("origin", "https://ventas.example.bo"),
        ],
        String::new(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the page's own host, through two proxies"
    );
    let (_, task_row) = api.get(&format!("/api/v1/tasks/{task}"), AGENT).await;
    assert_eq!(task_row["task"]["status"], "claimed", "{task_row}");

    let (status, headers) = post(
        "/login".into(),
        vec![
            ("host", "ventas.example.bo"),
            ("origin", "https://ventas.example.bo"),
        ],
        format!("token={AGENT}"),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    let (status, headers) = post("/login".into(), vec![], format!("token={AGENT}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        !headers
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Secure")
    );

    let (status, _, _) = api.call(Method::GET, "/api/v1/tasks", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let request = Request::builder()
        .uri("/api/v1/tasks")
        .header("authorization", format!("bearer {AGENT}"))
        .body(Body::empty())
        .unwrap();
    let response = api.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "`bearer` in lower case");
}

/// A page asked with a query or a form it cannot read answers with a page
/// in the agent's language, not axum's English text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_answer_what_they_cannot_read_with_a_page() {
    let api = Api::new(Db::Sqlite).await;
    for (method, uri, form) in [
        (Method::GET, "/definitions/OPE-SUM-VEN-P06?version=x", None),
        (Method::GET, "/inbox?role=a&role=b", None),
        (Method::POST, "/login", Some("nada=1")),
    ] {
        let (status, headers, html) =
            page(&api, method.clone(), uri, Some(AGENT), form, false).await;
        assert!(status.is_client_error(), "{method} {uri}: {status}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{method} {uri}: {headers:?}"
        );
        assert!(
            html.contains("La página recibió datos que no puede leer"),
            "{method} {uri}: {html}"
        );
    }
}

/// The web UI's cookie is a signed session, not the bearer token: stolen,
/// it opens no API call, and it ends after a shift; a raw token in a
/// cookie (what earlier versions kept) opens no page; over HTTPS the plain
/// cookie (which a sibling subdomain can set) opens none either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_session_is_not_the_token_and_ends_after_a_shift() {
    let api = Api::new(Db::Sqlite).await;
    let cookie = signed_in(&api, AGENT).await;
    let value = cookie.strip_prefix("tramite_session=").unwrap();
    assert!(!value.contains(AGENT), "{cookie}");
    let open = |cookie: String| {
        let app = api.app.clone();
        async move {
            let request = Request::builder()
                .uri("/inbox")
                .header("cookie", cookie)
                .body(Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            (
                response.status(),
                response.headers().get("location").cloned(),
            )
        }
    };
    assert_eq!(open(cookie.clone()).await.0, StatusCode::OK);
    // Over HTTPS only the `__Host-` cookie counts: a sibling subdomain can
    // plant the plain one (its own user's) in the agent's browser.
    let over_https = |cookie: String| {
        let app = api.app.clone();
        async move {
            let request = Request::builder()
                .uri("/inbox")
                .header("cookie", cookie)
                .header("x-forwarded-proto", "https")
                .body(Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap().status()
        }
    };
    assert_eq!(over_https(cookie.clone()).await, StatusCode::SEE_OTHER);
    let chained = {
        let request = Request::builder()
            .uri("/inbox")
            .header("cookie", cookie.clone())
            .header("x-forwarded-proto", "https, http")
            .body(Body::empty())
            .unwrap();
        api.app.clone().oneshot(request).await.unwrap().status()
    };
    assert_eq!(
        chained,
        StatusCode::SEE_OTHER,
        "the client's side is the first entry"
    );
    let host = cookie.replacen("tramite_session=", "__Host-tramite_session=", 1);
    assert_eq!(over_https(host).await, StatusCode::OK);
    let (status, _, _) = api
        .call(Method::GET, "/api/v1/tasks", Some(value), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the cookie is no API key");
    let (status, to) = open(format!("tramite_session={AGENT}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(to.unwrap(), "/login?next=%2Finbox");
    let (status, _) = open(format!("tramite_token={AGENT}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "a raw token opens nothing");
    api.h.advance(std::time::Duration::from_secs(12 * 3600));
    let (status, to) = open(cookie).await;
    assert_eq!(
        (status, to.unwrap()),
        (
            StatusCode::SEE_OTHER,
            "/login?next=%2Finbox".parse().unwrap()
        ),
        "a shift later"
    );
}

/// "Salir" ends the session itself, not only the browser's cookie: a copy
/// kept or stolen before opens no page afterwards, on this node or on
/// another sharing the database (PostgreSQL), while the agent's other
/// sessions and a new sign-in still work.
async fn signing_out_ends_the_session_on_every_node(db: Db) {
    let users = Api::users().with_session_key("clave de las sesiones");
    let api = Api::with_users(db, users.clone()).await;
    let other_node = if db == Db::Postgres {
        let engine = tramite_tests::engine::second_engine(&api.h).await;
        Some(router(Arc::new(AppState {
            engine,
            users: users.clone(),
            metrics: None,
            connectors: api.h.connectors.clone(),
            webhooks: Webhooks::default(),
            health: Default::default(),
            census: Default::default(),
        })))
    } else {
        None
    };
    let send = |app: axum::Router, method: Method, uri: &'static str, cookie: String| async move {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("cookie", cookie)
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let to = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        let cleared = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("tramite_session=;"));
        (response.status(), to, cleared)
    };
    let inbox = |app: axum::Router, cookie: String| send(app, Method::GET, "/inbox", cookie);
    let kept = signed_in(&api, AGENT).await;
    let elsewhere = signed_in(&api, AGENT).await;
    assert_ne!(kept, elsewhere, "two sign-ins, two sessions");
    assert_eq!(inbox(api.app.clone(), kept.clone()).await.0, StatusCode::OK);
    if let Some(node) = &other_node {
        assert_eq!(inbox(node.clone(), kept.clone()).await.0, StatusCode::OK);
    }
    let (status, to, cleared) = send(api.app.clone(), Method::POST, "/logout", kept.clone()).await;
    assert_eq!(
        (status, to.as_deref(), cleared),
        (StatusCode::SEE_OTHER, Some("/login"), true)
    );
    let refused = (
        StatusCode::SEE_OTHER,
        Some("/login?next=%2Finbox".to_owned()),
        false,
    );
    assert_eq!(
        inbox(api.app.clone(), kept.clone()).await,
        refused,
        "the cookie kept from before signing out"
    );
    if let Some(node) = &other_node {
        assert_eq!(
            inbox(node.clone(), kept.clone()).await,
            refused,
            "on the other node too"
        );
        assert_eq!(
            inbox(node.clone(), elsewhere.clone()).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        inbox(api.app.clone(), elsewhere.clone()).await.0,
        StatusCode::OK,
        "the agent's other session goes on"
    );
    // The typed address only makes the browser forget: a GET changes
    // nothing on the server.
    let (status, _, cleared) =
        send(api.app.clone(), Method::GET, "/logout", elsewhere.clone()).await;
    assert_eq!((status, cleared), (StatusCode::SEE_OTHER, true));
    assert_eq!(
        inbox(api.app.clone(), elsewhere.clone()).await.0,
        StatusCode::OK
    );
    // A browser holding both cookies (signed in over HTTP, later over
    // HTTPS) signs both sessions out at once; the ended one again is
    // harmless.
    let https =
        signed_in(&api, AGENT)
            .await
            .replacen("tramite_session=", "__Host-tramite_session=", 1);
    assert_eq!(
        inbox(api.app.clone(), https.clone()).await.0,
        StatusCode::OK
    );
    let both = format!("{https}; {elsewhere}");
    let (status, ..) = send(api.app.clone(), Method::POST, "/logout", both).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(inbox(api.app.clone(), https).await, refused);
    assert_eq!(inbox(api.app.clone(), elsewhere).await, refused);
    let (status, _, cleared) = send(api.app.clone(), Method::POST, "/logout", kept).await;
    assert_eq!(
        (status, cleared),
        (StatusCode::SEE_OTHER, true),
        "an ended session signed out again"
    );
    let fresh = signed_in(&api, AGENT).await;
    assert_eq!(inbox(api.app.clone(), fresh).await.0, StatusCode::OK);
}
both!(signing_out_ends_the_session_on_every_node);

/// A task another agent holds shows who holds it and no form; a submit
/// refused because another agent took the task meanwhile keeps what was
/// typed; an unclaimed task's page offers to claim it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_held_by_another_agent_says_by_whom_and_keeps_what_was_typed() {
    let api = Api::new(Db::Sqlite).await;
    let id = api.start_p06().await;
    api.complete(&id, "recibir_llamada", AGENT, "atendida", json!({}))
        .await;
    let task = api.task(&id, "identificar_cliente", AGENT).await;
    let uri = format!("/tasks/{task}");
    let (_, _, html) = page(&api, Method::GET, &uri, Some(AGENT), None, false).await;
    assert!(html.contains(r#"id="claim-first""#), "{html}");
    assert!(html.contains(r#"id="task-form""#), "{html}");
    // A field's hint is tied to its input for screen readers.
    assert!(
        html.contains(r#"aria-describedby="hint-ci""#) && html.contains(r#"id="hint-ci""#),
        "{html}"
    );
    // "El cliente desiste" closes the request without the form's checks:
    // it asks first, naming the end; "Verificar en NAF" does not.
    assert!(
        html.contains(r#"id="outcome-cliente_desiste" formnovalidate class="danger" data-confirm="Esto cierra la solicitud como «"#),
        "{html}"
    );
    assert!(html.contains(r#"id="outcome-continuar">"#), "{html}");
    let (status, _) = api
        .json(
            Method::POST,
            &format!("/api/v1/tasks/{task}/claim"),
            AGENT2,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, html) = page(&api, Method::GET, &uri, Some(AGENT), None, false).await;
    assert!(
        html.contains("Esta tarea está tomada por <strong>bea</strong>"),
        "{html}"
    );
    assert!(
        !html.contains(r#"id="task-form""#),
        "no form to fill in vain: {html}"
    );
    assert!(!html.contains(r#"id="claim-first""#), "{html}");
    let typed = "nombre_cliente=Juan+P%C3%A9rez&ci=4587213&servicio_solicitado=internet_fibra&outcome=continuar";
    let (status, _, html) = page(&api, Method::POST, &uri, Some(AGENT), Some(typed), false).await;
    assert_eq!(status, StatusCode::CONFLICT, "{html}");
    assert!(
        html.contains("Esta tarea está tomada por <strong>bea</strong>"),
        "{html}"
    );
    assert!(
        html.contains(r#"value="Juan Pérez""#),
        "what was typed stays: {html}"
    );
    assert!(html.contains(r#"value="4587213""#), "{html}");
    // A refused field says so to screen readers too.
    let wrong = "nombre_cliente=Juan&ci=12&servicio_solicitado=internet_fibra&outcome=continuar";
    api.json(
        Method::POST,
        &format!("/api/v1/tasks/{task}/unclaim"),
        AGENT2,
        json!({}),
    )
    .await;
    let (status, _, html) = page(&api, Method::POST, &uri, Some(AGENT), Some(wrong), false).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(
        html.contains(r#"aria-describedby="hint-ci error-ci" aria-invalid="true""#),
        "{html}"
    );
}

/// A form the engine cannot take just then (here the database was set
/// read only, as a PostgreSQL standby is after a fail-over) comes back with
/// what the agent typed and a line saying it was not saved, with the API's
/// status (503) — not an error page that loses a call's notes. Sent again
/// once the database takes changes, it completes the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_the_engine_cannot_take_keeps_what_was_typed() {
    use sqlx::Connection;
    let api = Api::new(Db::Postgres).await;
    let id = api.start_p06().await;
    api.complete(&id, "recibir_llamada", AGENT, "atendida", json!({}))
        .await;
    let task = api.task(&id, "identificar_cliente", AGENT).await;
    let uri = format!("/tasks/{task}");
    let name = api.h.db.url.rsplit('/').next().unwrap().to_owned();
    // New sessions only: the ones open are ended, and the pool opens new.
    let read_only = |on: &'static str| {
        let name = name.clone();
        async move {
            let mut admin = sqlx::PgConnection::connect(&tramite_tests::engine::postgres_url())
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {name} SET default_transaction_read_only = {on}"
            )))
            .execute(&mut admin)
            .await
            .unwrap();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&name)
            .execute(&mut admin)
            .await
            .unwrap();
        }
    };
    let readyz = || async {
        let response = api
            .app
            .clone()
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        (status, body["writer"].clone())
    };
    assert_eq!(readyz().await, (StatusCode::OK, json!("up")));
    read_only("on").await;
    // Not ready while it takes no changes: a balancer sends the agents
    // elsewhere (the first probe may meet a connection the server ended).
    let mut seen = readyz().await;
    if seen.0 == StatusCode::SERVICE_UNAVAILABLE && seen.1 != json!("read-only") {
        seen = readyz().await;
    }
    assert_eq!(seen, (StatusCode::SERVICE_UNAVAILABLE, json!("read-only")));
    let typed = "nombre_cliente=Juan+P%C3%A9rez&ci=4587213&servicio_solicitado=internet_fibra&outcome=continuar";
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (status, _, html) =
            page(&api, Method::POST, &uri, Some(AGENT), Some(typed), false).await;
        // The first may meet a connection the server ended.
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(html.contains(r#"id="not-saved""#), "{html}");
            assert!(html.contains("No se guardó"), "{html}");
            assert!(html.contains("avise a soporte"), "someone must act: {html}");
            assert!(
                html.contains(r#"value="Juan Pérez""#),
                "what was typed stays: {html}"
            );
            assert!(html.contains(r#"value="4587213""#), "{html}");
            answers.clear();
            break;
        }
        answers.push(status);
    }
    assert!(
        answers.is_empty(),
        "never refused as not saved: {answers:?}"
    );
    assert!(api.h.task_open(&id, "identificar_cliente").await);
    read_only("off").await;
    let mut seen = readyz().await;
    if seen.0 != StatusCode::OK {
        seen = readyz().await;
    }
    assert_eq!(seen, (StatusCode::OK, json!("up")));
    let mut sent = None;
    for _ in 0..3 {
        let (status, headers, _) =
            page(&api, Method::POST, &uri, Some(AGENT), Some(typed), false).await;
        if status == StatusCode::SEE_OTHER {
            sent = Some(headers["location"].to_str().unwrap().to_owned());
            break;
        }
    }
    assert_eq!(sent.as_deref(), Some("/inbox?done=1"));
    assert!(!api.h.task_open(&id, "identificar_cliente").await);
}

/// A request's history reads as sentences: the outcome's label, the data
/// with the variables' labels and the options' labels, the role's name,
/// due times as the pages show them, "sistema" for the engine's own steps
/// — no internal keys, ids, JSON or milliseconds. The client card shows an
/// option's label, not its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_history_reads_as_sentences() {
    let api = Api::new(Db::Sqlite).await;
    let id = api.start_p06().await;
    api.complete(&id, "recibir_llamada", AGENT, "atendida", json!({}))
        .await;
    api.complete(&id, "identificar_cliente", AGENT, "continuar", json!({"nombre_cliente": "Juan Pérez", "servicio_solicitado": "internet_fibra", "ci": "4587213"})).await;
    api.h.jobs().await;
    let (status, _, html) = page(
        &api,
        Method::GET,
        &format!("/instances/{id}"),
        Some(AGENT),
        None,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let timeline = &html[html.find(r#"id="timeline""#).unwrap()..html.find("</ol>").unwrap()];
    for words in [
        "Agente Ventas Digitales",
        "«Verificar en NAF»",
        "Internet por fibra óptica",
        "(sistema)",
        "(ana)",
        "Juan Pérez",
    ] {
        assert!(timeline.contains(words), "{words}: {timeline}");
    }
    for raw in [
        "agente_ventas_digitales",
        "due_at",
        "internet_fibra",
        "{&quot;",
        "(engine)",
        "(worker)",
        "1795",
    ] {
        assert!(!timeline.contains(raw), "{raw}: {timeline}");
    }
    let card = &html[html.find("</ol>").unwrap()..];
    assert!(card.contains("Internet por fibra óptica"), "{card}");
    // The list of requests names the step each waits at, the inbox's
    // filter the role: by their labels, not their ids.
    let (_, _, list) = page(&api, Method::GET, "/instances", Some(AGENT), None, false).await;
    assert!(!list.contains("solicitar_domicilio"), "{list}");
    let (_, _, inbox) = page(&api, Method::GET, "/inbox", Some(AGENT), None, false).await;
    assert!(
        inbox.contains(
            r#"<option value="agente_ventas_digitales">Agente Ventas Digitales</option>"#
        ),
        "{inbox}"
    );
}

/// A browser that asks for an address that is no page gets a page in its
/// language; an API client still gets problem+json for the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_gets_pages_for_what_is_no_page() {
    let api = Api::new(Db::Sqlite).await;
    for (method, uri) in [
        (Method::GET, "/inbox/"),
        (Method::GET, "/tasks"),
        (Method::DELETE, "/inbox"),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header("accept", "text/html,application/xhtml+xml")
            .body(Body::empty())
            .unwrap();
        let response = api.app.clone().oneshot(request).await.unwrap();
        assert!(response.status().is_client_error(), "{method} {uri}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{method} {uri}"
        );
    }
    let (status, problem, content_type) = api.call(Method::GET, "/inbox/", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type, "application/problem+json", "{problem}");
    let request = Request::builder()
        .uri("/api/v1/nada")
        .header("accept", "text/html")
        .body(Body::empty())
        .unwrap();
    let response = api.app.clone().oneshot(request).await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "the API stays JSON"
    );
}

/// Finishing or releasing a task comes back to the inbox as the agent had
/// filtered it, not to the unfiltered inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_comes_back_to_the_filtered_inbox() {
    let api = Api::new(Db::Sqlite).await;
    let id = api.start_p06().await;
    let task = api.task(&id, "recibir_llamada", AGENT).await;
    let session = signed_in(&api, AGENT).await;
    let send = |method: Method, uri: String, cookie: String, body: Option<&'static str>| {
        let app = api.app.clone();
        async move {
            let mut request = Request::builder()
                .method(method)
                .uri(uri)
                .header("cookie", cookie);
            if body.is_some() {
                request = request.header("content-type", "application/x-www-form-urlencoded");
            }
            let response = app
                .oneshot(request.body(Body::from(body.unwrap_or_default())).unwrap())
                .await
                .unwrap();
            response.headers().clone()
        }
    };
    let headers = send(
        Method::GET,
        "/inbox?role=agente_ventas_digitales&status=claimed&business_key=LLAMADA+1".into(),
        session.clone(),
        None,
    )
    .await;
    let kept = headers
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("tramite_inbox="))
        .expect("the inbox keeps its filters");
    let cookies = format!("{session}; {kept}");
    let headers = send(
        Method::POST,
        format!("/tasks/{task}/claim"),
        cookies.clone(),
        Some(""),
    )
    .await;
    assert_eq!(headers["location"], format!("/tasks/{task}"));
    let headers = send(
        Method::POST,
        format!("/tasks/{task}/unclaim"),
        cookies.clone(),
        Some(""),
    )
    .await;
    assert_eq!(
        headers["location"],
        "/inbox?role=agente_ventas_digitales&status=claimed&business_key=LLAMADA%201"
    );
    // The unfiltered inbox forgets the filters.
    let headers = send(Method::GET, "/inbox".into(), session.clone(), None).await;
    assert!(
        headers
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("tramite_inbox=;")),
        "{headers:?}"
    );
    let headers = send(
        Method::POST,
        format!("/tasks/{task}"),
        cookies,
        Some("outcome=atendida"),
    )
    .await;
    assert_eq!(
        headers["location"],
        "/inbox?role=agente_ventas_digitales&status=claimed&business_key=LLAMADA%201&done=1"
    );
    // The next person to sign in on this PC starts without those filters.
    let response = sign_in_after(&api, kept, format!("token={AGENT2}")).await;
    assert!(
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("tramite_inbox=;")),
        "{:?}",
        response.headers()
    );
    // A reference typed with a stray space still finds its request.
    let next = api.task(&id, "identificar_cliente", AGENT).await;
    let (status, _, html) = page(
        &api,
        Method::GET,
        "/inbox?business_key=%20LLAMADA-1%20",
        Some(AGENT),
        None,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(&format!("/tasks/{next}")), "{html}");
}

/// A role a procedure's version 2 adds reads version 2's requests, not
/// version 1's: the list shows only what the request's own version lets
/// the user open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_reads_the_requests_of_the_versions_that_name_it() {
    const SUPERVISOR: &str = "token-supervisor";
    let api = Api::with_users(
        Db::Sqlite,
        Api::users().with("sara", SUPERVISOR, &["supervisor"]),
    )
    .await;
    let version = |roles: &str| {
        format!(
            "code: T-VERSIONES\nname: Versiones\nversion: 1\nowner_role: agente\nroles: [{roles}]\nnodes:\n  - {{id: inicio, kind: start, channels: [web], next: hacer}}\n  - {{id: hacer, kind: user_task, role: agente, outcomes: [{{id: ok, label: Listo, next: fin}}]}}\n  - {{id: fin, kind: end, outcome: listo}}\n"
        )
    };
    api.h
        .engine
        .deploy(vec![(
            "v.yaml".into(),
            version("{id: agente, name: Agente}"),
        )])
        .await
        .unwrap();
    let old = api.h.start("T-VERSIONES", "web", json!({})).await;
    api.h
        .engine
        .deploy(vec![(
            "v.yaml".into(),
            version("{id: agente, name: Agente}, {id: supervisor, name: Supervisor}"),
        )])
        .await
        .unwrap();
    let new = api.h.start("T-VERSIONES", "web", json!({})).await;
    let (status, list) = api
        .get("/api/v1/instances?code=T-VERSIONES", SUPERVISOR)
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [new.as_str()], "{list}");
    let (status, _) = api
        .get(&format!("/api/v1/instances/{old}"), SUPERVISOR)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .get(&format!("/api/v1/instances/{new}"), SUPERVISOR)
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// The `/readyz` handler itself asks each system once for many calls made
/// together and in quick succession.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_calls_share_one_check_of_the_systems() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tramite_engine::runtime::connector::{
        BoxFuture, Connector, ConnectorCall, ConnectorError, Connectors, Health,
    };
    struct Counted(AtomicUsize);
    impl Connector for Counted {
        fn call<'a>(
            &'a self,
            _: ConnectorCall<'a>,
        ) -> BoxFuture<'a, Result<serde_json::Map<String, Value>, ConnectorError>> {
            Box::pin(async { Err(ConnectorError::transient("not called here")) })
        }
        fn health(&self) -> BoxFuture<'_, Health> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Health::Up { latency_ms: 50.0 }
            })
        }
    }
    let h = Harness::new(Db::Sqlite).await;
    let counted = Arc::new(Counted(AtomicUsize::new(0)));
    let app = router(Arc::new(AppState {
        engine: h.engine.clone(),
        users: Users::default(),
        metrics: None,
        connectors: Connectors::new().with("naf", counted.clone()),
        webhooks: Webhooks::default(),
        health: Default::default(),
        census: Default::default(),
    }));
    let ask = || {
        let app = app.clone();
        async move {
            let response = app
                .oneshot(
                    Request::builder()
                        .uri("/readyz")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }
    };
    let (a, b, c) = tokio::join!(ask(), ask(), ask());
    let d = ask().await;
    for answer in [a, b, c, d] {
        assert_eq!(answer["systems"]["naf"]["status"], "up", "{answer}");
    }
    assert_eq!(
        counted.0.load(Ordering::SeqCst),
        1,
        "one check for four calls"
    );
    // Without metrics, `/metrics` is a 404 that says so, like every error.
    let response = app
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let problem: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        problem["type"], "https://tramite.dev/problems/not-configured",
        "{problem}"
    );
}

/// `/metrics` needs no token, so its census of the database (a count over
/// every instance) is taken at most once per period: scrapes within it
/// reuse the gauges, and the next one after it counts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_within_a_period_reuse_one_census() {
    const CENSUS: &str = "code: T-CENSUS\nname: Censo\nversion: 1\nowner_role: agente\nroles: [{id: agente, name: Agente}]\nnodes:\n  - {id: inicio, kind: start, channels: [web], next: revisar}\n  - {id: revisar, kind: user_task, role: agente, outcomes: [{id: ok, label: Listo, next: fin}]}\n  - {id: fin, kind: end, outcome: listo}\n";
    let h = Harness::new(Db::Sqlite).await;
    h.engine
        .deploy(vec![("censo.yaml".into(), CENSUS.to_owned())])
        .await
        .expect("deploys");
    let app_with = |census| {
        router(Arc::new(AppState {
            engine: h.engine.clone(),
            users: Users::default(),
            metrics: Some(metrics_handle()),
            connectors: h.connectors.clone(),
            webhooks: Webhooks::default(),
            health: Default::default(),
            census,
        }))
    };
    let running = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("tramite_instances{process=\"T-CENSUS\",status=\"running\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u32>().ok())
    };
    let scrape = |app: axum::Router| async move {
        let response = app
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    let cached = app_with(tramite_api::http::CensusCache::fresh_for(
        std::time::Duration::from_secs(1),
    ));
    h.start("T-CENSUS", "web", json!({})).await;
    assert_eq!(running(&scrape(cached.clone()).await), Some(1));
    h.start("T-CENSUS", "web", json!({})).await;
    assert_eq!(
        running(&scrape(cached.clone()).await),
        Some(1),
        "within the period: the last census"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(
        running(&scrape(cached).await),
        Some(2),
        "after it: counted again"
    );
    h.start("T-CENSUS", "web", json!({})).await;
    assert_eq!(
        running(&scrape(app_with(Default::default())).await),
        Some(3),
        "no period: every scrape counts"
    );
}

/// A census the database holds up (a table locked, a slow disk) does not
/// hold up the scrape: it answers within the census's patience with the
/// last counts, where it waited out the request's 30 s and lost every
/// metric with a 503; a scrape while that census still runs answers at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_census_does_not_hold_up_the_scrape() {
    let h = Harness::new(Db::Postgres).await;
    let app = router(Arc::new(AppState {
        engine: h.engine.clone(),
        users: Users::default(),
        metrics: Some(metrics_handle()),
        connectors: h.connectors.clone(),
        webhooks: Webhooks::default(),
        health: Default::default(),
        census: Default::default(),
    }));
    let mut holder = h.engine.store().pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    for patience in [10, 2] {
        let asked = std::time::Instant::now();
        let response = app
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(patience),
            "{:?}",
            asked.elapsed()
        );
    }
    holder.rollback().await.unwrap();
}

/// A definition posted with a byte order mark (a file saved by Notepad) is
/// the definition read from disk without it: one version, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_order_mark_makes_no_new_version() {
    const TEXT: &str = "code: T-BOM\nname: Marca\nversion: 1\nowner_role: agente\nroles: [{id: agente, name: Agente}]\nnodes:\n  - {id: inicio, kind: start, channels: [web], next: fin}\n  - {id: fin, kind: end, outcome: listo}\n";
    let api = Api::new(Db::Sqlite).await;
    let mut answers = Vec::new();
    for source in [format!("\u{feff}{TEXT}"), TEXT.to_owned()] {
        let (status, body) = api
            .json(
                Method::POST,
                "/api/v1/definitions",
                LEAD,
                json!({"files": [{"name": "marca.yaml", "source": source}]}),
            )
            .await;
        assert!(status.is_success(), "{status} {body}");
        answers.push((body[0]["version"].clone(), body[0]["new"].clone()));
    }
    assert_eq!(
        answers,
        [(json!(1), json!(true)), (json!(1), json!(false))],
        "the second is the first again"
    );
    // A JSON body that starts with a byte-order mark (as some Windows tools
    // write it) is read, not refused as malformed; a mark inside is not
    // dropped. (The key's stray spaces are not kept: the pages' filters
    // trim what is typed.)
    let body = json!({"code": "OPE-SUM-VEN-P06", "channel": "ivr", "business_key": " bom-1 ", "data": {"telefono": "72345678"}}).to_string();
    let (status, started, _) = api
        .call(
            Method::POST,
            "/api/v1/instances",
            Some(CHANNEL),
            Some(format!("\u{feff}{body}")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let (_, seen) = api
        .get(
            &format!("/api/v1/instances/{}", started["id"].as_str().unwrap()),
            LEAD,
        )
        .await;
    assert_eq!(seen["business_key"], "bom-1", "{seen}");
    let (status, problem, _) = api
        .call(
            Method::POST,
            "/api/v1/instances",
            Some(CHANNEL),
            Some(format!(" \u{feff}{body}")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
}

/// A process owner who deploys a service task whose `timeout` is shorter
/// than its connector's tries hears it in the deploy's answer (dry run
/// included), not only in the log of the next start-up; the definition
/// still deploys: it runs, its last tries are cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_warns_of_a_timeout_shorter_than_its_connectors_tries() {
    let root = tramite_tests::repo_root();
    let path = root.join("connectors/config/naf.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("timeout: 3s", "timeout: 5s");
    let naf = tramite_connectors::http::HttpConnector::from_yaml(
        &path,
        &text,
        &tramite_connectors::catalog(),
        &|_| Some("secreto".to_owned()),
    )
    .expect("the edited file loads");
    let sims = tramite_connectors::Simulators::new();
    let connectors = sims.connectors().with("naf", Arc::new(naf));
    let api = Api::over(
        Harness::with_connectors(Db::Sqlite, sims, connectors).await,
        Api::users(),
    );
    let p06 = std::fs::read_to_string(root.join("processes/ope-sum-ven-p06.yaml")).unwrap();
    let post = |uri: &'static str, source: String| {
        let api = &api;
        async move {
            api.json(
                Method::POST,
                uri,
                LEAD,
                json!({"files": [{"name": "p06.yaml", "source": source}]}),
            )
            .await
        }
    };
    let (status, body) = post("/api/v1/definitions", p06.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body[0]["new"], false, "the shipped file again: {body}");
    let warnings = body[0]["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{body}");
    let warning = warnings[0].as_str().unwrap();
    assert!(
        warning.starts_with("OPE-SUM-VEN-P06 `consultar_naf`: its timeout (10 s) is shorter than naf's tries can take (15.6 s"),
        "{warning}"
    );
    // A new version with room for the tries: no warning, and the dry run
    // says the same as the deploy would.
    let roomy = p06.replacen("timeout: 10s", "timeout: 20s", 1);
    assert_ne!(roomy, p06, "P06 gives consultar_naf 10 s");
    let (status, body) = post("/api/v1/definitions?dry_run=true", roomy.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["warnings"], json!([]), "{body}");
    let (status, body) = post("/api/v1/definitions?dry_run=true", p06).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body[0]["warnings"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    let (status, body) = post("/api/v1/definitions", roomy).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (&body[0]["new"], &body[0]["warnings"]),
        (&json!(true), &json!([])),
        "{body}"
    );
}

/// `procedure` is the engine's own channel, for a `call`: a start from
/// outside naming it (the API, a lead's `source`) is refused, so a
/// sub-procedure never runs without the request that called it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_procedure_channel_is_the_engines_own() {
    let api = Api::new(Db::Sqlite).await;
    let (status, body) = api
        .json(
            Method::POST,
            "/api/v1/instances",
            CHANNEL,
            json!({"code": "OPR-PAS-P02", "channel": "procedure", "data": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`procedure`") && d.contains("[\"other\"]")),
        "{body}"
    );
    let (status, body) = api
        .json(
            Method::POST,
            "/webhooks/leads",
            CHANNEL,
            json!({"id": "lead-1", "process": "OPE-SUM-VEN-P06", "source": "procedure", "data": {"telefono": "72345678"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, instances) = api.get("/api/v1/instances", LEAD).await;
    assert_eq!(
        instances["items"],
        json!([]),
        "nothing started: {instances}"
    );
    // A channel the start lists is still open (a `call` still starts
    // OPR-PAS-P02: `p06_sale_over_http` reaches the installation).
    let (status, body) = api
        .json(
            Method::POST,
            "/api/v1/instances",
            CHANNEL,
            json!({"code": "OPE-SUM-VEN-P06", "channel": "web", "data": {"telefono": "72345678"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
