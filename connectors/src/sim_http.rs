//! The simulators served over HTTP (`tramite simulators`), each with an API
//! shaped like a remote system's own — Spanish field names, its own error
//! codes, its own statuses — so that the engine reaches them through the
//! HTTP connector and its YAML mapping exactly as it would reach the real
//! NAF, GIS and Smartflex (`connectors/config/*.yaml` points at them).
//!
//! | system | request | answer |
//! | --- | --- | --- |
//! | NAF | `GET /naf/v1/clientes/{ci}/cartera?extension=` | 200 `{"data": …}`; 422 `CI_INVALIDO` |
//! | GIS | `GET /gis/v1/cobertura?direccion=&zona=&servicio=&ciudad=` | 200; 404 `DIRECCION_NO_ENCONTRADA` |
//! | Smartflex | `POST /smartflex/v1/solicitudes` + `Idempotency-Key` | 201 (200 on a repeat); 422 `PRODUCTO_NO_DISPONIBLE`; 409 `CLIENTE_BLOQUEADO` |
//!
//! Errors are `{"error": {"code", "message"}}`; an injected fault answers
//! 503 `NO_DISPONIBLE`, an injected refusal 403 `ACCESO_DENEGADO`, a call
//! over the rate limit 429 `LIMITE_EXCEDIDO`
//! with `Retry-After` (seconds). `GET /<system>/health` answers 503 during
//! an outage. Faults are switched at run time with
//! `POST /_admin/<system>/faults` (`{"latency_ms", "error_rate",
//! "rate_limit_per_s", "outage", "fail_next", "refuse_next", "lose_next",
//! "hold_next", "hold_ms", "clear"}`) and calls counted at `GET /_admin/<system>/stats`
//! (with `held`, the idempotency keys of the answers held back right now,
//! and `cut`, those whose callers hung up while they were).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tramite_engine::runtime::connector::{Connector, ConnectorCall, ConnectorError};

use crate::Simulators;
use crate::faults::Faults;

/// The router serving the three simulators.
pub fn router(sims: Simulators) -> Router {
    Router::new()
        .route("/naf/v1/clientes/{ci}/cartera", get(naf_portfolio))
        .route("/gis/v1/cobertura", get(gis_coverage))
        .route("/smartflex/v1/solicitudes", post(smartflex_register))
        .route("/{system}/health", get(health))
        .route("/_admin/{system}/faults", post(set_faults))
        .route("/_admin/{system}/stats", get(stats))
        .with_state(Arc::new(sims))
}

/// A running simulator server.
#[derive(Debug)]
pub struct Server {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Listens on `address` (port 0: any free port) and serves `sims`.
    pub async fn start(address: SocketAddr, sims: Simulators) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(sims);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Server {
            address,
            stop: Some(stop),
            task,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The base URL of `system` (`http://127.0.0.1:8090/naf`).
    pub fn base_url(&self, system: &str) -> String {
        format!("http://{}/{system}", self.address)
    }

    /// Stops listening and closes every connection, idle keep-alive ones
    /// included (they would otherwise go on answering): from then on the
    /// system is down, its connections refused.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown closes idle connections and waits for the busy
        // ones; a call stuck in a simulated latency is cut after a while.
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}

type Shared = State<Arc<Simulators>>;

/// A system's error in its own words.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Runs a simulator and answers as the system would; `business` maps the
/// catalog's business errors to the system's (status, code).
async fn answer(
    sim: &dyn Connector,
    call: ConnectorCall<'_>,
    ok: StatusCode,
    business: &[(&str, StatusCode, &str)],
) -> Response {
    respond(sim.call(call).await, ok, business)
}

/// A simulator's answer as its system's HTTP answer: `ok` for a result,
/// `business`'s status and code for a business error.
fn respond(
    result: Result<Map<String, Value>, ConnectorError>,
    ok: StatusCode,
    business: &[(&str, StatusCode, &str)],
) -> Response {
    match result {
        Ok(out) => (ok, Json(json!({"data": out}))).into_response(),
        Err(ConnectorError::Business { code, message }) => {
            match business.iter().find(|(name, ..)| *name == code) {
                Some((_, status, system_code)) => error(*status, system_code, &message),
                None => error(StatusCode::UNPROCESSABLE_ENTITY, &code, &message),
            }
        }
        Err(ConnectorError::Transient {
            message,
            retry_after: Some(wait),
        }) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "LIMITE_EXCEDIDO", &message);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(wait.as_secs().max(1)),
            );
            response
        }
        Err(ConnectorError::Transient { message, .. }) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "NO_DISPONIBLE", &message)
        }
        Err(ConnectorError::Refused { message }) => {
            error(StatusCode::FORBIDDEN, "ACCESO_DENEGADO", &message)
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn input<const N: usize>(pairs: [(&str, Option<Value>); N]) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect()
}

#[derive(Debug, Deserialize)]
struct NafQuery {
    extension: Option<String>,
}

async fn naf_portfolio(
    State(sims): Shared,
    headers: HeaderMap,
    Path(ci): Path<String>,
    Query(q): Query<NafQuery>,
) -> Response {
    let input = input([
        ("ci", Some(Value::String(ci))),
        ("ci_extension", q.extension.map(Value::String)),
    ]);
    let key = idempotency_key(&headers);
    answer(
        sims.naf.as_ref(),
        ConnectorCall {
            operation: crate::naf::OPERATION,
            input: &input,
            idempotency_key: &key,
            attempt: 1,
        },
        StatusCode::OK,
        &[(
            "invalid_ci",
            StatusCode::UNPROCESSABLE_ENTITY,
            "CI_INVALIDO",
        )],
    )
    .await
}

#[derive(Debug, Deserialize)]
struct GisQuery {
    direccion: Option<String>,
    zona: Option<String>,
    servicio: Option<String>,
    ciudad: Option<String>,
}

async fn gis_coverage(
    State(sims): Shared,
    headers: HeaderMap,
    Query(q): Query<GisQuery>,
) -> Response {
    let input = input([
        ("address", q.direccion.map(Value::String)),
        ("zone", q.zona.map(Value::String)),
        ("service", q.servicio.map(Value::String)),
        ("city", q.ciudad.map(Value::String)),
    ]);
    let key = idempotency_key(&headers);
    answer(
        sims.gis.as_ref(),
        ConnectorCall {
            operation: crate::gis::OPERATION,
            input: &input,
            idempotency_key: &key,
            attempt: 1,
        },
        StatusCode::OK,
        &[(
            "address_not_found",
            StatusCode::NOT_FOUND,
            "DIRECCION_NO_ENCONTRADA",
        )],
    )
    .await
}

/// Smartflex's request body, in its own words.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Solicitud {
    ci: Option<String>,
    /// The department the CI was issued in.
    expedido: Option<String>,
    nombre: Option<String>,
    telefono: Option<String>,
    direccion: Option<String>,
    zona: Option<String>,
    /// The zone's municipality (`Sacaba`); none: the city of Cochabamba.
    ciudad: Option<String>,
    servicio: Option<String>,
    canal: Option<String>,
    referencia: Option<String>,
}

async fn smartflex_register(
    State(sims): Shared,
    headers: HeaderMap,
    body: Result<Json<Solicitud>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(s)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "SOLICITUD_MAL_FORMADA",
            "the body is not a Smartflex request",
        );
    };
    let key = idempotency_key(&headers);
    if key.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "FALTA_IDEMPOTENCY_KEY",
            "Smartflex requires an Idempotency-Key header",
        );
    }
    let input = input([
        ("ci", s.ci.map(Value::String)),
        ("ci_extension", s.expedido.map(Value::String)),
        ("client_name", s.nombre.map(Value::String)),
        ("phone", s.telefono.map(Value::String)),
        ("address", s.direccion.map(Value::String)),
        ("zone", s.zona.map(Value::String)),
        ("city", s.ciudad.map(Value::String)),
        ("service", s.servicio.map(Value::String)),
        ("channel", s.canal.map(Value::String)),
        ("reference", s.referencia.map(Value::String)),
    ]);
    let (result, created) = sims
        .smartflex
        .call_telling_new(ConnectorCall {
            operation: crate::smartflex::OPERATION,
            input: &input,
            idempotency_key: &key,
            attempt: 1,
        })
        .await;
    respond(
        result,
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &[
            (
                "product_not_available",
                StatusCode::UNPROCESSABLE_ENTITY,
                "PRODUCTO_NO_DISPONIBLE",
            ),
            ("client_blocked", StatusCode::CONFLICT, "CLIENTE_BLOQUEADO"),
        ],
    )
}

fn faults_of<'a>(sims: &'a Simulators, system: &str) -> Option<&'a Faults> {
    match system {
        "naf" => Some(sims.naf.faults()),
        "gis" => Some(sims.gis.faults()),
        "smartflex" => Some(sims.smartflex.faults()),
        _ => None,
    }
}

async fn health(State(sims): Shared, Path(system): Path<String>) -> Response {
    match faults_of(&sims, &system) {
        None => error(StatusCode::NOT_FOUND, "SISTEMA_DESCONOCIDO", &system),
        Some(f) if f.in_outage() => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NO_DISPONIBLE",
            "outage (simulated)",
        ),
        Some(_) => Json(json!({"status": "up"})).into_response(),
    }
}

/// Faults to switch on (or off) at run time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsRequest {
    /// Latency added to every call, ms.
    latency_ms: Option<u64>,
    /// Probability (0–1) that a call fails; 0 switches it off.
    error_rate: Option<f64>,
    /// Most calls a second the system takes (429 with `Retry-After`
    /// beyond); 0 switches the limit off.
    rate_limit_per_s: Option<u32>,
    /// Start (true) or end (false) an outage.
    outage: Option<bool>,
    /// The next N calls fail before reaching the system.
    fail_next: Option<u32>,
    /// The next N calls are refused before reaching the system (HTTP 403).
    refuse_next: Option<u32>,
    /// The next N calls act but their reply is lost.
    lose_next: Option<u32>,
    /// The next N calls act, then their reply is held back `hold_ms`.
    hold_next: Option<u32>,
    /// How long `hold_next` holds each reply, ms (required with it).
    hold_ms: Option<u64>,
    /// Clear every fault first.
    #[serde(default)]
    clear: bool,
}

async fn set_faults(
    State(sims): Shared,
    Path(system): Path<String>,
    body: Result<Json<FaultsRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(f) = faults_of(&sims, &system) else {
        return error(StatusCode::NOT_FOUND, "SISTEMA_DESCONOCIDO", &system);
    };
    let r = match body {
        Ok(Json(r)) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "FALLAS_MAL_FORMADAS",
                &e.body_text(),
            );
        }
    };
    if r.hold_next.is_some() != r.hold_ms.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "FALLAS_MAL_FORMADAS",
            "hold_next and hold_ms go together: how many replies to hold, and for how long",
        );
    }
    apply(f, &r);
    StatusCode::NO_CONTENT.into_response()
}

fn apply(f: &Faults, r: &FaultsRequest) {
    if r.clear {
        f.clear();
    }
    if let Some(ms) = r.latency_ms {
        f.set_latency(Duration::from_millis(ms));
    }
    match r.error_rate {
        Some(p) if p > 0.0 => f.set_error_rate(p.min(1.0), rand::random()),
        Some(_) => f.clear_error_rate(),
        None => {}
    }
    match r.outage {
        Some(true) => f.start_outage(),
        Some(false) => f.end_outage(),
        None => {}
    }
    if let Some(n) = r.rate_limit_per_s {
        f.set_rate_limit(n);
    }
    if let Some(n) = r.fail_next {
        f.fail_next(n);
    }
    if let Some(n) = r.refuse_next {
        f.refuse_next(n);
    }
    if let Some(n) = r.lose_next {
        f.lose_next_replies(n);
    }
    if let (Some(n), Some(ms)) = (r.hold_next, r.hold_ms) {
        f.hold_next_replies(n, Duration::from_millis(ms));
    }
}

/// Faults for every system at start-up (`tramite simulators --latency …`).
#[derive(Debug, Clone, Default)]
pub struct StartFaults {
    /// Latency added to every call.
    pub latency: Duration,
    /// Probability that a call fails (0: never).
    pub error_rate: f64,
    /// Most calls a second each system takes (0: no limit).
    pub rate_limit: u32,
}

impl StartFaults {
    /// Applies these faults to the three simulators.
    pub fn apply(&self, sims: &Simulators) {
        for system in ["naf", "gis", "smartflex"] {
            if let Some(f) = faults_of(sims, system) {
                apply(
                    f,
                    &FaultsRequest {
                        latency_ms: Some(self.latency.as_millis() as u64),
                        error_rate: Some(self.error_rate),
                        rate_limit_per_s: Some(self.rate_limit),
                        outage: None,
                        fail_next: None,
                        refuse_next: None,
                        lose_next: None,
                        hold_next: None,
                        hold_ms: None,
                        clear: false,
                    },
                );
            }
        }
    }
}

async fn stats(State(sims): Shared, Path(system): Path<String>) -> Response {
    let calls = match system.as_str() {
        "naf" => sims.naf.calls(),
        "gis" => sims.gis.calls(),
        "smartflex" => sims.smartflex.calls(),
        _ => return error(StatusCode::NOT_FOUND, "SISTEMA_DESCONOCIDO", &system),
    };
    let Some(faults) = faults_of(&sims, &system) else {
        return error(StatusCode::NOT_FOUND, "SISTEMA_DESCONOCIDO", &system);
    };
    let mut body = json!({
        "calls": calls,
        "faults_injected": faults.injected(),
        "held": faults.held(),
        "cut": faults.cut(),
    });
    if system == "smartflex" {
        body["registrations"] = json!(sims.smartflex.registration_count());
        body["duplicates"] = json!(duplicate_registrations(&sims));
    }
    Json(body).into_response()
}

/// The requests Smartflex registered more than once — the same reference
/// (the instance's business key), or the same client and product when no
/// reference was sent. A check for demos and tests: it must stay empty.
pub fn duplicate_registrations(sims: &Simulators) -> Vec<String> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    for r in sims.smartflex.registrations() {
        let key = r
            .reference
            .clone()
            .unwrap_or_else(|| format!("{}/{}", r.ci, r.service));
        *seen.entry(key).or_default() += 1;
    }
    let mut twice: Vec<String> = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect();
    twice.sort();
    twice
}
