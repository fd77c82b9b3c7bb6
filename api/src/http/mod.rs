//! The router: `/api/v1/…` over the engine, `/healthz`, `/readyz`.
//!
//! Every handler authenticates first, checks the user's role, calls the
//! engine, and answers JSON; every failure is an [`Error`] rendered once as
//! problem+json.

pub mod auth;
pub mod error;
mod guard;
pub mod webhooks;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tramite_engine::definition::NodeKind;
use tramite_engine::runtime::connector::{Connectors, Health};
use tramite_engine::runtime::{
    CompleteTask, Engine, IndicatorQuery, PublishMessage, StartInstance,
};
use tramite_engine::store::tasks::{Filter, TaskCursor};

pub use auth::{User, Users};
pub use error::Error;
pub use webhooks::{Webhooks, WhatsApp};

/// The largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// The longest a request may take before it is answered 503.
pub const MAX_REQUEST_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// What every handler shares.
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// Who may call.
    pub users: Users,
    /// Renders the Prometheus metrics, when a recorder is installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The engine's connectors, for their health checks.
    pub connectors: Connectors,
    /// Inbound channels.
    pub webhooks: Webhooks,
    /// The systems' last health checks, for `/readyz`.
    pub health: SystemHealth,
    /// The database's last census, for `/metrics`.
    pub census: CensusCache,
}

/// How long a health check of the systems answers `/readyz` before the
/// systems are asked again.
pub const HEALTH_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// The systems' last health checks. `/readyz` needs no token (load
/// balancers call it): without this, every call, a balancer's each second
/// or anyone's flood, would send a request to NAF, GIS and Smartflex.
#[derive(Debug, Default)]
pub struct SystemHealth {
    last: Arc<tokio::sync::Mutex<Option<Checked>>>,
}

/// When the systems were last checked, and what each answered.
type Checked = (std::time::Instant, Map<String, Value>);

impl SystemHealth {
    /// The systems' health, checked at most once per [`HEALTH_FRESH`];
    /// callers that come during a check wait for its answer. The check runs
    /// in a task of its own that keeps the lock and stores its answer: a
    /// caller that hangs up (a balancer's short timeout) neither leaves
    /// the check unrecorded nor lets the next caller start another.
    pub async fn get(&self, connectors: &Connectors) -> Map<String, Value> {
        let mut last = Arc::clone(&self.last).lock_owned().await;
        if let Some((at, systems)) = &*last
            && at.elapsed() < HEALTH_FRESH
        {
            return systems.clone();
        }
        let connectors = connectors.clone();
        let check = tokio::spawn(async move {
            let systems = check_systems(&connectors).await;
            *last = Some((std::time::Instant::now(), systems.clone()));
            systems
        });
        check.await.unwrap_or_default()
    }
}

/// The last census of the database behind `/metrics`, which needs no token
/// (the scraper has none): one census runs at a time, and scrapes within
/// `fresh` of the last reuse its gauges, so a flood of scrapes (or several
/// scrapers) costs one count per period, not one per request. A census
/// that fails (the database unreachable) is logged and waits its period
/// too; the scrape still answers, with the gauges' last counts and
/// `tramite_census_up` 0.
#[derive(Debug, Default)]
pub struct CensusCache {
    fresh: std::time::Duration,
    last: Arc<tokio::sync::Mutex<LastCensus>>,
}

/// When the census was last taken (or tried), and the label sets it set.
#[derive(Debug, Default)]
struct LastCensus {
    at: Option<std::time::Instant>,
    seen: Census,
}

impl CensusCache {
    /// Reuses a census for `fresh` (`tramite serve`: [`CENSUS_FRESH`]; the
    /// default, zero, counts on every scrape).
    pub fn fresh_for(fresh: std::time::Duration) -> CensusCache {
        CensusCache {
            fresh,
            last: Default::default(),
        }
    }
}

/// How long `tramite serve` reuses a census: a third of Prometheus's
/// usual 15 s scrape interval.
pub const CENSUS_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

type Shared = State<Arc<AppState>>;
type Body<T> = Result<Json<T>, JsonRejection>;

/// A JSON body that may be left out: a request with neither a body nor a
/// `Content-Type` reads as `T::default()` (an operator's bare `curl -X
/// POST`); anything else is read as [`Json`], with its errors.
struct MaybeBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> axum::extract::FromRequest<S>
    for MaybeBody<T>
{
    type Rejection = JsonRejection;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, JsonRejection> {
        if req.headers().contains_key(axum::http::header::CONTENT_TYPE) {
            return Json::<T>::from_request(req, state)
                .await
                .map(|Json(t)| MaybeBody(t));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await?;
        if bytes.is_empty() {
            return Ok(MaybeBody(T::default()));
        }
        // A body without a type: `Json`'s own refusal (415).
        Json::<T>::from_request(axum::extract::Request::new(bytes.into()), state)
            .await
            .map(|Json(t)| MaybeBody(t))
    }
}

/// The OpenAPI 3.1 document, generated from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "tramite", description = "Workflow engine for business procedures written in YAML: task inboxes, instances, definitions, messages, incidents, indicators. Every error is application/problem+json."),
    paths(healthz, readyz, prometheus, webhooks::whatsapp_verify, webhooks::whatsapp_event, webhooks::lead, webhooks::ivr, webhooks::list_messages, list_definitions, deploy, definition, diagram, start, instances, instance, history, cancel, inbox, counts, task, claim, unclaim, assign, complete, publish, incidents, retry, resolve, indicator),
    modifiers(&BearerAuth, &ServerProblems)
)]
pub struct ApiDoc;

/// Every operation can answer 503 (nothing changed: `busy`, `timeout`,
/// `storage-unavailable`, `log-sync-failed`, `shutting-down`; or
/// `commit-outcome-unknown`, which clients must tell apart) and 500: said
/// once here rather than on each path.
struct ServerProblems;

impl utoipa::Modify for ServerProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder};
        let problem = ResponseBuilder::new()
            .description(
                "Problem (application/problem+json). 503: `busy`, `storage-unavailable`, \
                 `log-sync-failed` (nothing was changed: send it again) or `timeout`, \
                 `shutting-down`, `commit-outcome-unknown` (the change may or may not have \
                 been made: look before sending it again, or send starts with a \
                 `request_id`); 500: `internal`",
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .entry("5XX".to_owned())
                    .or_insert_with(|| RefOr::T(problem.clone()));
            }
        }
    }
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's router.
pub fn router(state: Arc<AppState>) -> Router {
    use utoipa::OpenApi;
    let refusals = state.users.refusals();
    Router::new()
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/api/docs")
                .url("/api/openapi.json", ApiDoc::openapi()),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/api/v1/definitions", get(list_definitions).post(deploy))
        .route("/api/v1/definitions/{code}", get(definition))
        .route("/api/v1/definitions/{code}/diagram", get(diagram))
        .route("/api/v1/instances", post(start).get(instances))
        .route("/api/v1/instances/{id}", get(instance))
        .route("/api/v1/instances/{id}/history", get(history))
        .route("/api/v1/instances/{id}/cancel", post(cancel))
        .route("/api/v1/tasks", get(inbox))
        .route("/api/v1/tasks/counts", get(counts))
        .route("/api/v1/tasks/{id}", get(task))
        .route("/api/v1/tasks/{id}/claim", post(claim))
        .route("/api/v1/tasks/{id}/unclaim", post(unclaim))
        .route("/api/v1/tasks/{id}/assign", post(assign))
        .route("/api/v1/tasks/{id}/complete", post(complete))
        .route(
            "/api/v1/messages",
            post(publish).get(webhooks::list_messages),
        )
        .route(
            "/webhooks/whatsapp",
            get(webhooks::whatsapp_verify).post(webhooks::whatsapp_event),
        )
        .route("/webhooks/leads", post(webhooks::lead))
        .route("/webhooks/ivr", post(webhooks::ivr))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/incidents/{id}/retry", post(retry))
        .route("/api/v1/incidents/{id}/resolve", post(resolve))
        .route("/api/v1/indicators/{code}/{indicator}", get(indicator))
        .merge(
            crate::web::routes().layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                crate::web::renew_session,
            )),
        )
        .fallback(|| async { Error::NoRoute })
        .method_not_allowed_fallback(|| async { Error::WrongMethod })
        .layer(axum::middleware::from_fn(guard::check))
        .layer(axum::middleware::from_fn_with_state(
            refusals,
            auth::slow_refusals,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async { Error::Timeout(MAX_REQUEST_TIME) },
                ))
                .timeout(MAX_REQUEST_TIME),
        )
        .layer(axum::middleware::from_fn(crate::web::as_page))
        .with_state(state)
}

/// One page of a list, and the cursor of the next one (`None` on the last).
#[derive(Debug, Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// Parses `name:value` for the inbox's variable filter.
fn variable_filter(text: &str) -> Result<(String, Value), Error> {
    let bad = || {
        Error::field(
            "variable",
            "write `name:value`, with a name of letters, digits and `_`",
        )
    };
    let (name, value) = text.split_once(':').ok_or_else(bad)?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad());
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    // `"\u0000"` decodes to the NUL the guard refuses in the raw query.
    if tramite_engine::runtime::eval::holds_nul(&value) {
        return Err(Error::NulCharacter);
    }
    Ok((name.to_owned(), value))
}

/// The error for a `cursor` that no page produced.
fn bad_cursor() -> Error {
    Error::field("cursor", "not a cursor from a previous page")
}

/// The process is up and can still take changes (whether the database
/// answers is `/readyz`). A node whose SQLite log failed to sync, or whose
/// writer stopped, refuses every change until it restarts: its liveness
/// check fails, so that an orchestrator restarts it.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "`ok`, as text/plain", content_type = "text/plain", body = String), (status = 503, description = "The engine takes no more changes (a failed sync of the SQLite log, or its writer stopped): restart the process", content_type = "text/plain", body = String)))]
async fn healthz(State(s): Shared) -> (StatusCode, &'static str) {
    if s.engine.writable() {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine takes no more changes: restart it",
        )
    }
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "Ready: the database answers and the engine takes changes. `systems` has each connector's health, checked at most every 5 s (a system that is down does not make the engine unready: its jobs wait and retry)"), (status = 503, description = "The database does not answer, or the engine takes no more changes (`writer`: `stopped`), or the database takes none (`writer`: `read-only`: a PostgreSQL standby, or transactions read-only by default)")))]
async fn readyz(State(s): Shared) -> impl IntoResponse {
    let (database, systems, takes_changes) = tokio::join!(
        sqlx_ping(&s.engine),
        s.health.get(&s.connectors),
        s.engine.takes_changes()
    );
    let writable = s.engine.writable();
    // A database that answers but takes no changes (a standby after a
    // fail-over) would fail every command with 503: not ready either.
    let read_only = database && matches!(takes_changes, Ok(false));
    let ready = database && writable && !read_only;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not ready" },
            "database": if database { "up" } else { "down" },
            "writer": if !writable { "stopped" } else if read_only { "read-only" } else { "up" },
            "systems": systems,
        })),
    )
}

/// Checks every connector at once (each check has its own timeout) and
/// records `tramite_connector_up`.
pub async fn check_systems(connectors: &Connectors) -> Map<String, Value> {
    let checks: Vec<_> = connectors
        .iter()
        .map(|(name, c)| {
            let (name, c) = (name.to_owned(), std::sync::Arc::clone(c));
            tokio::spawn(async move { (name, c.health().await) })
        })
        .collect();
    let mut systems = Map::new();
    for check in checks {
        if let Ok((name, health)) = check.await {
            let up = !matches!(health, Health::Down { .. });
            metrics::gauge!("tramite_connector_up", "system" => name.clone())
                .set(f64::from(u8::from(up)));
            systems.insert(name, json!(health));
        }
    }
    systems
}

async fn sqlx_ping(engine: &Engine) -> bool {
    engine
        .tasks(&Filter {
            limit: 1,
            ..Filter::default()
        })
        .await
        .is_ok()
}

/// Prometheus text: what the engine counted (connector calls, task waits)
/// and a census of the database (instances, open tasks, open incidents).
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text (no token: for the scraper)"), (status = 404, description = "Metrics are not enabled")))]
async fn prometheus(State(s): Shared) -> Result<(StatusCode, String), Error> {
    let Some(handle) = &s.metrics else {
        return Err(Error::NotConfigured { what: "metrics" });
    };
    // A census under way (a slow one: the database busy, a table locked)
    // is not waited for: the scrape answers at once with the last counts.
    let Ok(mut last) = Arc::clone(&s.census.last).try_lock_owned() else {
        return Ok((StatusCode::OK, handle.render()));
    };
    if last.at.is_none_or(|at| at.elapsed() >= s.census.fresh) {
        let engine = s.engine.clone();
        // In a task of its own that keeps the lock: a scraper that hangs
        // up (or a request past its time limit) neither loses the count
        // nor lets the next scrape start another beside it.
        let counting = tokio::spawn(async move {
            let counted = count(&engine).await;
            last.at = Some(std::time::Instant::now());
            match counted {
                Ok(counts) => {
                    last.seen = counts.into_gauges(&last.seen);
                    metrics::gauge!("tramite_census_up").set(1.0);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the census of the database failed; its gauges keep their last counts");
                    metrics::gauge!("tramite_census_up").set(0.0);
                }
            }
        });
        // Waited for only so long (a scraper gives up after 10 s by
        // default, and every other metric would be lost with it): past
        // that, the last counts go out, and the census goes on to set the
        // gauges (and `tramite_census_up`, which only its outcome sets:
        // slow is not down) when it ends.
        if tokio::time::timeout(CENSUS_PATIENCE, counting)
            .await
            .is_err()
        {
            tracing::warn!(
                "the census of the database is slow; the scrape answers with its last counts"
            );
        }
    }
    Ok((StatusCode::OK, handle.render()))
}

/// How long a scrape waits for the census it started.
const CENSUS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// What the database holds, for the census gauges.
struct Counts {
    instances: Vec<(String, String, Option<String>, i64)>,
    open: Vec<(String, i64)>,
    incidents: i64,
}

/// Counts instances, open tasks and open incidents, all before any gauge
/// is set: a count that fails leaves every gauge as it was.
async fn count(engine: &Engine) -> Result<Counts, tramite_engine::Error> {
    let roles = engine.roles().await?;
    let mut conn = engine.store().pool().acquire().await?;
    Ok(Counts {
        instances: tramite_engine::store::instances::census(&mut conn).await?,
        open: tramite_engine::store::tasks::open_by_role(&mut conn, &roles).await?,
        incidents: tramite_engine::store::incidents::open_count(&mut conn).await?,
    })
}

impl Counts {
    /// Sets the gauges; `seen`: the label sets the last census set.
    /// Returns this census's, for the next.
    fn into_gauges(self, seen: &Census) -> Census {
        let now = Census {
            instances: self
                .instances
                .iter()
                .map(|(c, s, o, _)| (c.clone(), s.clone(), o.clone().unwrap_or_default()))
                .collect(),
            roles: self.open.iter().map(|(r, _)| r.clone()).collect(),
        };
        // A label set the database no longer has (the role's last task
        // done, a procedure's last instance ended) reads 0, not its last
        // count: the census's GROUP BY has no row for it, and a gauge keeps
        // its value.
        for (code, status, outcome) in seen.instances.difference(&now.instances) {
            metrics::gauge!("tramite_instances", "process" => code.clone(), "status" => status.clone(), "outcome" => outcome.clone())
                .set(0.0);
        }
        for role in seen.roles.difference(&now.roles) {
            metrics::gauge!("tramite_tasks_open", "role" => role.clone()).set(0.0);
        }
        for (code, status, outcome, n) in self.instances {
            metrics::gauge!("tramite_instances", "process" => code, "status" => status, "outcome" => outcome.unwrap_or_default())
                .set(n as f64);
        }
        for (role, n) in self.open {
            metrics::gauge!("tramite_tasks_open", "role" => role).set(n as f64);
        }
        metrics::gauge!("tramite_incidents_open").set(self.incidents as f64);
        now
    }
}

#[utoipa::path(get, path = "/api/v1/definitions", tag = "definitions", responses((status = 200, description = "Deployed versions"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn list_definitions(State(s): Shared, headers: HeaderMap) -> Result<Json<Value>, Error> {
    s.users.authenticate(&headers)?;
    let mut conn = s
        .engine
        .store()
        .pool()
        .acquire()
        .await
        .map_err(tramite_engine::Error::from)?;
    let rows = tramite_engine::store::definitions::all(&mut conn)
        .await
        .map_err(tramite_engine::Error::from)?;
    Ok(Json(json!(rows
        .iter()
        .map(|r| json!({"code": r.code, "version": r.version, "file": r.file_name, "deployed_at": r.deployed_at}))
        .collect::<Vec<_>>())))
}

/// A deployment request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    files: Vec<DeployFile>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DeployFile {
    name: String,
    source: String,
}

#[utoipa::path(post, path = "/api/v1/definitions", tag = "definitions", params(DeployQuery), request_body = DeployRequest, responses((status = 201, description = "Deployed: `[{code, version, new, warnings}]` (`warnings`: what will hurt it without stopping it, such as a service task's timeout shorter than its connector's tries; 422 lists every problem with its line and column)"), (status = 200, description = "`dry_run=true`: the versions a deploy would make; nothing stored"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn deploy(
    State(s): Shared,
    headers: HeaderMap,
    query: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    body: Body<DeployRequest>,
) -> Result<impl IntoResponse, Error> {
    s.users.authenticate(&headers)?.require("process_owner")?;
    let Query(q) = query?;
    let Json(request) = body?;
    if request.files.is_empty() {
        return Err(Error::field("files", "no definition to deploy"));
    }
    let sources = request
        .files
        .into_iter()
        .map(|f| (f.name, f.source))
        .collect();
    if q.dry_run {
        let would = s.engine.check_deploy(sources).await?;
        return Ok((StatusCode::OK, Json(json!(would))));
    }
    let deployed = s.engine.deploy(sources).await?;
    Ok((StatusCode::CREATED, Json(json!(deployed))))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeployQuery {
    /// Validate against what is deployed and answer 200 with the versions a
    /// deploy would make, storing nothing.
    #[serde(default)]
    dry_run: bool,
}

#[utoipa::path(get, path = "/api/v1/definitions/{code}/diagram", tag = "definitions", params(("code" = String, Path)), responses((status = 200, description = "Mermaid diagram of the latest version", content_type = "text/plain", body = String), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn diagram(
    State(s): Shared,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<impl IntoResponse, Error> {
    s.users.authenticate(&headers)?;
    let mut conn = s
        .engine
        .store()
        .pool()
        .acquire()
        .await
        .map_err(tramite_engine::Error::from)?;
    let id = tramite_engine::store::definitions::latest_id(&mut conn, &code)
        .await
        .map_err(tramite_engine::Error::from)?
        .ok_or(tramite_engine::Error::NotDeployed { code })?;
    let process = s.engine.process(id).await?;
    let text = tramite_engine::diagram::render(
        &process.definition,
        tramite_engine::diagram::Format::Mermaid,
        tramite_engine::text::Lang::Es,
    );
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    code: String,
    #[serde(default)]
    business_key: String,
    channel: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Map<String, Value>,
    /// The caller's own id for this request (a lead id, a call id): sent
    /// again, it answers the instance it started the first time.
    request_id: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", request_body = StartRequest, responses((status = 201, description = "Started: `{id, new: true}` (needs `channel` or `operator`)"), (status = 200, description = "Its `request_id` started this instance before: `{id, new: false}`"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn start(
    State(s): Shared,
    headers: HeaderMap,
    body: Body<StartRequest>,
) -> Result<impl IntoResponse, Error> {
    let user = s.users.authenticate(&headers)?;
    user.require_any(&["channel", "operator"], "starting instances")?;
    let Json(r) = body?;
    user.may_start_by(&r.channel)?;
    let (id, new) = s
        .engine
        .start_once(StartInstance {
            code: r.code,
            business_key: r.business_key,
            channel: r.channel,
            data: r.data,
            actor: user.name,
            request_id: r.request_id,
        })
        .await?;
    Ok(started(&id, new))
}

/// What failed inside a system is for the team that can act on it (the
/// operators): the others read in a history that a call failed or an
/// incident was raised, where and when, without the failure's text.
pub(crate) fn without_failures(user: &User, history: &mut [tramite_engine::store::journal::Entry]) {
    if user.has("operator") {
        return;
    }
    for entry in history.iter_mut() {
        let Some(data) = entry.data.as_object_mut() else {
            continue;
        };
        match entry.kind.as_str() {
            "incident_raised" => _ = data.remove("message"),
            "job_failed" | "message_received" => _ = data.remove("error"),
            // The refusal's code is the procedure's (it routes on it); its
            // text is the system's own.
            "job_business_error" => {
                if let Some(error) = data.get_mut("error").and_then(Value::as_object_mut) {
                    error.remove("message");
                }
            }
            _ => {}
        }
    }
}

/// The versions (id and code) whose requests `user` may list: `None` for
/// all (see [`User::may_read`], which judges an instance by its version).
pub(crate) async fn readable_versions(
    engine: &Engine,
    user: &User,
) -> Result<Option<Vec<(i64, String)>>, Error> {
    if user.reads_all() {
        return Ok(None);
    }
    Ok(Some(engine.versions_naming(&user.roles).await?))
}

/// The answer to a start: 201 for a new instance, 200 for the one an
/// earlier start with the same request id made.
pub(crate) fn started(id: &str, new: bool) -> (StatusCode, Json<Value>) {
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(json!({"id": id, "new": new})))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances", params(("id" = String, Path)), responses((status = 200, description = "Variables, tokens, open tasks, incidents, parent and children"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn instance(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let user = s.users.authenticate(&headers)?;
    let i = s.engine.instance(&id).await?;
    user.may_read(&s.engine.process(i.definition_id).await?.definition)?;
    let tasks = s
        .engine
        .tasks(&Filter {
            instance_id: Some(id.clone()),
            limit: 100,
            ..Filter::default()
        })
        .await?;
    let mut incidents = json!(s.engine.incidents(None, Some(&id)).await?);
    if !user.has("operator") {
        // What failed inside a system is for the team that can act on it;
        // the others see that the request is stopped, where and since when.
        for incident in incidents.as_array_mut().into_iter().flatten() {
            if let Some(fields) = incident.as_object_mut() {
                fields.remove("message");
                fields.remove("resolution");
            }
        }
    }
    let children: Vec<String> = s
        .engine
        .children(&id)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    Ok(Json(json!({
        "id": i.id, "code": i.code, "version": i.version, "business_key": i.business_key,
        "channel": i.channel, "status": i.status, "outcome": i.outcome,
        "variables": i.state.variables, "tokens": i.state.tokens,
        "parent": i.parent_id, "children": children,
        "open_tasks": tasks, "incidents": incidents,
        "started_at": i.started_at, "ended_at": i.ended_at, "cancel_reason": i.cancel_reason,
    })))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/history", tag = "instances", params(("id" = String, Path)), responses((status = 200, description = "The journal, in order"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn history(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let user = s.users.authenticate(&headers)?;
    let i = s.engine.instance(&id).await?;
    user.may_read(&s.engine.process(i.definition_id).await?.definition)?;
    let mut history = s.engine.history(&id).await?;
    without_failures(&user, &mut history);
    Ok(Json(json!(history)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    reason: String,
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/cancel", tag = "instances", params(("id" = String, Path)), request_body = CancelRequest, responses((status = 204, description = "Cancelled (needs `operator`)"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn cancel(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body<CancelRequest>,
) -> Result<StatusCode, Error> {
    let user = s.users.authenticate(&headers)?;
    user.require("operator")?;
    let Json(r) = body?;
    s.engine.cancel(&id, &r.reason, &user.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The statuses a task, an instance and an incident can have: a filter
/// naming another (`abierto`, a typo) is a 422, not an empty list.
const TASK_STATUSES: &[&str] = &["open", "claimed", "completed", "cancelled"];
const INSTANCE_STATUSES: &[&str] = &["running", "completed", "cancelled"];
const INCIDENT_STATUSES: &[&str] = &["open", "resolved"];

/// The longest a message no wait takes is kept: a year.
const MAX_TTL_SECONDS: i64 = 365 * 86_400;

/// Refuses a filter `value` of `field` that is not one of `allowed`.
fn one_of(field: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), Error> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(Error::field(
            field,
            &format!(
                "one of {}",
                allowed
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct InboxQuery {
    role: Option<String>,
    status: Option<String>,
    code: Option<String>,
    business_key: Option<String>,
    assignee: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
    /// Only tasks due before this moment (ms since the epoch).
    due_before: Option<i64>,
    /// `name:value`: only tasks whose instance has this variable value
    /// (the value is read as JSON when it parses, else as text).
    variable: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(InboxQuery), responses((status = 200, description = "The inbox of the caller's roles, soonest due first, with `next_cursor`"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn inbox(
    State(s): Shared,
    headers: HeaderMap,
    query: Result<Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<tramite_engine::store::tasks::TaskRow>>, Error> {
    let user = s.users.authenticate(&headers)?;
    let Query(q) = query?;
    one_of("status", q.status.as_deref(), TASK_STATUSES)?;
    // Agents see the tasks of their roles only; no roles, no inbox.
    let roles = user.inbox_roles(q.role)?;
    if roles.is_empty() {
        return Ok(Json(Page {
            items: Vec::new(),
            next_cursor: None,
        }));
    }
    let after = match &q.cursor {
        Some(c) => Some(TaskCursor::decode(c).ok_or_else(bad_cursor)?),
        None => None,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let tasks = s
        .engine
        .tasks(&Filter {
            roles,
            status: q.status,
            code: q.code,
            business_key: q.business_key,
            assignee: q.assignee,
            limit,
            after,
            due_before: q.due_before,
            variable: q.variable.as_deref().map(variable_filter).transpose()?,
            ..Filter::default()
        })
        .await?;
    let next = (tasks.len() as i64 == limit)
        .then(|| tasks.last().map(|t| TaskCursor::after(t).encode()))
        .flatten();
    // Serialised straight from the rows: an inbox page is the hottest read.
    Ok(Json(Page {
        items: tasks,
        next_cursor: next,
    }))
}

#[utoipa::path(get, path = "/api/v1/tasks/counts", tag = "tasks", responses((status = 200, description = "Open and claimed tasks per role of the caller, up to 1,000 each (`more: true` beyond)"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn counts(State(s): Shared, headers: HeaderMap) -> Result<Json<Value>, Error> {
    let user = s.users.authenticate(&headers)?;
    use tramite_engine::store::tasks::COUNT_CAP;
    let counts = s.engine.task_counts(&user.roles).await?;
    Ok(Json(json!(
        counts
            .into_iter()
            .map(|(role, count)| {
                let more = count > COUNT_CAP;
                json!({"role": role, "count": count.min(COUNT_CAP), "more": more})
            })
            .collect::<Vec<_>>()
    )))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AssignRequest {
    user: String,
}

/// Team leads (the procedure's owner role) and operators give tasks to people.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/assign", tag = "tasks", params(("id" = String, Path)), request_body = AssignRequest, responses((status = 204, description = "Assigned (the procedure's owner role or `operator`)"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn assign(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body<AssignRequest>,
) -> Result<StatusCode, Error> {
    let user = s.users.authenticate(&headers)?;
    // Who may assign no task at all learns nothing of which exist.
    if !user.has("operator") && !s.engine.owner_roles().await?.iter().any(|r| user.has(r)) {
        return Err(Error::Forbidden {
            reason: "assigning needs a procedure's owner role or `operator`".to_owned(),
        });
    }
    let task = s.engine.task(&id).await?;
    let instance = s.engine.instance(&task.instance_id).await?;
    let process = s.engine.process(instance.definition_id).await?;
    if !user.has(&process.definition.owner_role) && !user.has("operator") {
        return Err(Error::Forbidden {
            reason: format!(
                "assigning needs the `{}` role",
                process.definition.owner_role
            ),
        });
    }
    let Json(r) = body?;
    // A name nobody signs in with, or someone without the task's role,
    // would hold the task where no one can complete it.
    if s.users.named_with_role(&r.user, &task.role) != Some(true) {
        return Err(Error::NoSuchAssignee {
            user: r.user,
            role: task.role,
        });
    }
    s.engine.assign(&id, &r.user, &user.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct InstancesQuery {
    code: Option<String>,
    version: Option<i64>,
    status: Option<String>,
    business_key: Option<String>,
    started_from: Option<i64>,
    started_to: Option<i64>,
    /// Only instances with a token at this node.
    node: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", params(InstancesQuery), responses((status = 200, description = "Instances, newest first, with `next_cursor`"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn instances(
    State(s): Shared,
    headers: HeaderMap,
    query: Result<Query<InstancesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, Error> {
    let user = s.users.authenticate(&headers)?;
    let Query(q) = query?;
    one_of("status", q.status.as_deref(), INSTANCE_STATUSES)?;
    let readable = readable_versions(&s.engine, &user).await?;
    if let (Some(code), Some(readable)) = (&q.code, &readable)
        && !readable.iter().any(|(_, c)| c == code)
    {
        return Err(Error::Forbidden {
            reason: format!(
                "requests of {code} are read by its roles, `operator` and `process_owner`"
            ),
        });
    }
    let after = match &q.cursor {
        Some(c) => {
            let parsed = c
                .split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())));
            Some(parsed.ok_or_else(bad_cursor)?)
        }
        None => None,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let rows = s
        .engine
        .instances(&tramite_engine::store::instances::InstanceFilter {
            code: q.code,
            definitions: readable.map(|r| r.into_iter().map(|(id, _)| id).collect()),
            version: q.version,
            status: q.status,
            business_key: q.business_key,
            started_from: q.started_from,
            started_to: q.started_to,
            node: q.node,
            after,
            limit,
        })
        .await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| format!("{}.{}", r.started_at, r.id)))
        .flatten();
    let items: Vec<Value> = rows
        .iter()
        .map(|i| {
            let waiting: Vec<&str> = i.state.tokens.iter().map(|t| t.node.as_str()).collect();
            json!({"id": i.id, "code": i.code, "version": i.version, "business_key": i.business_key,
                   "channel": i.channel, "status": i.status, "outcome": i.outcome,
                   "waiting_at": waiting, "started_at": i.started_at, "ended_at": i.ended_at})
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

#[utoipa::path(get, path = "/api/v1/definitions/{code}", tag = "definitions", params(("code" = String, Path)), responses((status = 200, description = "Versions and the latest source"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn definition(
    State(s): Shared,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Json<Value>, Error> {
    s.users.authenticate(&headers)?;
    let mut conn = s
        .engine
        .store()
        .pool()
        .acquire()
        .await
        .map_err(tramite_engine::Error::from)?;
    let versions: Vec<_> = tramite_engine::store::definitions::all(&mut conn)
        .await
        .map_err(tramite_engine::Error::from)?
        .into_iter()
        .filter(|r| r.code == code)
        .collect();
    let latest = versions
        .first()
        .ok_or(tramite_engine::Error::NotDeployed { code: code.clone() })?;
    Ok(Json(json!({
        "code": code,
        "versions": versions.iter().map(|v| json!({"version": v.version, "file": v.file_name, "deployed_at": v.deployed_at, "hash": v.content_hash})).collect::<Vec<_>>(),
        "latest": {"version": latest.version, "source": latest.source},
        // Stored versions were validated when deployed.
        "report": {"valid": true, "errors": []},
    })))
}

/// The task if the user may act on it.
async fn visible_task(
    s: &AppState,
    user: &User,
    id: &str,
) -> Result<tramite_engine::store::tasks::TaskRow, Error> {
    let task = s.engine.task(id).await?;
    if !user.has(&task.role) {
        return Err(Error::Forbidden {
            reason: format!("this task is for the role `{}`", task.role),
        });
    }
    Ok(task)
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path)), responses((status = 200, description = "Form, instructions, outcomes and the instance's context"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn task(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let user = s.users.authenticate(&headers)?;
    let task = visible_task(&s, &user, &id).await?;
    let instance = s.engine.instance(&task.instance_id).await?;
    let process = s.engine.process(instance.definition_id).await?;
    let node = process.definition.node(&task.node_id);
    let (instructions, form, outcomes, proposed) = match node.map(|n| &n.kind) {
        Some(NodeKind::UserTask(t)) => (
            json!(t.instructions),
            json!(t.form),
            json!(t.outcomes),
            process.proposed(&t.form, &instance),
        ),
        _ => (Value::Null, json!([]), json!([]), Map::new()),
    };
    Ok(Json(json!({
        "task": task,
        "title": node.and_then(|n| n.label.clone()),
        "step": node.and_then(|n| n.step.clone()),
        "instructions": instructions,
        "form": form,
        "proposed": proposed,
        "outcomes": outcomes,
        "instance": {"id": instance.id, "business_key": instance.business_key, "channel": instance.channel, "variables": instance.state.variables},
    })))
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/claim", tag = "tasks", params(("id" = String, Path)), responses((status = 204, description = "Claimed"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn claim(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    let user = s.users.authenticate(&headers)?;
    visible_task(&s, &user, &id).await?;
    s.engine.claim(&id, &user.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/unclaim", tag = "tasks", params(("id" = String, Path)), responses((status = 204, description = "Back in the role's inbox"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn unclaim(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    let user = s.users.authenticate(&headers)?;
    visible_task(&s, &user, &id).await?;
    s.engine.unclaim(&id, &user.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CompleteRequest {
    outcome: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Map<String, Value>,
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/complete", tag = "tasks", params(("id" = String, Path)), request_body = CompleteRequest, responses((status = 204, description = "Completed, or this completion was already made by this user with this outcome and data (a retry is safe); 422: a message per wrong field; 409: no longer open, or claimed by someone else"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn complete(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body<CompleteRequest>,
) -> Result<StatusCode, Error> {
    let user = s.users.authenticate(&headers)?;
    let Json(r) = body?;
    // The role is checked by the completion itself (one transaction, no
    // read of the task before it).
    let task = s
        .engine
        .complete(CompleteTask {
            task: id,
            user: user.name,
            outcome: r.outcome,
            data: r.data,
            roles: Some(user.roles),
        })
        .await?;
    record_completion(&s.engine, task);
    Ok(StatusCode::NO_CONTENT)
}

/// The label sets the last scrape's census gave.
#[derive(Debug, Default)]
struct Census {
    instances: std::collections::BTreeSet<(String, String, String)>,
    roles: std::collections::BTreeSet<String>,
}

/// Counts a completed task and how long it waited, whichever way (JSON or
/// the agent's form) it was completed.
pub(crate) fn record_completion(engine: &Engine, task: tramite_engine::runtime::CompletedTask) {
    if task.repeated {
        // Counted when it was made.
        return;
    }
    let waited = (engine.now() - task.created_at).max(0) as f64 / 1_000.0;
    metrics::histogram!("tramite_task_wait_seconds", "process" => task.code.clone(), "node" => task.node_id.clone())
        .record(waited);
    metrics::counter!("tramite_tasks_completed_total", "process" => task.code, "node" => task.node_id).increment(1);
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MessageRequest {
    name: String,
    key: String,
    id: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    payload: Value,
    ttl_seconds: Option<i64>,
}

#[utoipa::path(post, path = "/api/v1/messages", tag = "messages", request_body = MessageRequest, responses((status = 200, description = "Delivered, kept or duplicate (needs `channel` or `operator`)"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn publish(
    State(s): Shared,
    headers: HeaderMap,
    body: Body<MessageRequest>,
) -> Result<Json<Value>, Error> {
    let user = s.users.authenticate(&headers)?;
    user.require_any(&["channel", "operator"], "publishing messages")?;
    let Json(r) = body?;
    user.may_publish(&r.name)?;
    let ttl_seconds = r.ttl_seconds.unwrap_or(7 * 86_400);
    if !(0..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
        // 0: for a wait now or never. Past a year no request of the
        // client's is still waiting; below zero is a mistake.
        return Err(Error::field(
            "ttl_seconds",
            "must be from 0 (only a wait now) to 31536000 (365 days)",
        ));
    }
    let delivery = s
        .engine
        .publish(PublishMessage {
            name: r.name,
            key: r.key,
            payload: r.payload,
            id: r.id,
            ttl_ms: ttl_seconds * 1_000,
        })
        .await?;
    Ok(Json(json!(delivery)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct IncidentQuery {
    status: Option<String>,
    instance: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/incidents", tag = "incidents", params(IncidentQuery), responses((status = 200, description = "Incidents, newest first (needs `operator`)"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn incidents(
    State(s): Shared,
    headers: HeaderMap,
    query: Result<Query<IncidentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, Error> {
    s.users.authenticate(&headers)?.require("operator")?;
    let Query(q) = query?;
    one_of("status", q.status.as_deref(), INCIDENT_STATUSES)?;
    Ok(Json(json!(
        s.engine
            .incidents(q.status.as_deref(), q.instance.as_deref())
            .await?
    )))
}

#[utoipa::path(post, path = "/api/v1/incidents/{id}/retry", tag = "incidents", params(("id" = String, Path)), responses((status = 204, description = "Retried"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn retry(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    let user = s.users.authenticate(&headers)?;
    user.require("operator")?;
    s.engine.retry_incident(&id, &user.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    #[serde(default)]
    #[schema(value_type = Object)]
    variables: Map<String, Value>,
    /// `go_on` (past the step) or `run_again` (the step, with the variables
    /// written); absent: what the incident calls for (docs/api.md).
    #[schema(value_type = Option<String>)]
    then: Option<tramite_engine::runtime::commands::Then>,
}

#[utoipa::path(post, path = "/api/v1/incidents/{id}/resolve", tag = "incidents", params(("id" = String, Path)), request_body(content = Option<ResolveRequest>, description = "Optional: a request with no body and no Content-Type is {}"), responses((status = 204, description = "Resolved with the operator's variables"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn resolve(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<MaybeBody<ResolveRequest>, JsonRejection>,
) -> Result<StatusCode, Error> {
    let user = s.users.authenticate(&headers)?;
    user.require("operator")?;
    let MaybeBody(r) = body?;
    s.engine
        .resolve_incident_then(&id, &user.name, r.variables, r.then)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct IndicatorParams {
    from: i64,
    to: i64,
    #[param(value_type = Option<String>)]
    period: Option<tramite_engine::definition::Period>,
    /// Wider than an offset can be, so that one far out of range gets the
    /// range's 422, not a parse error's 400.
    utc_offset_minutes: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/indicators/{code}/{indicator}", tag = "indicators", params(("code" = String, Path), ("indicator" = String, Path), IndicatorParams), responses((status = 200, description = "Values per period with their verdict"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
async fn indicator(
    State(s): Shared,
    headers: HeaderMap,
    Path((code, indicator)): Path<(String, String)>,
    query: Result<Query<IndicatorParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, Error> {
    s.users.authenticate(&headers)?;
    let Query(q) = query?;
    let utc_offset_minutes = q.utc_offset_minutes.unwrap_or(-240);
    // Real offsets run from −12:00 to +14:00; beyond, periods would be
    // dated in another millennium, not refused.
    if q.from >= q.to {
        return Err(Error::field("to", "must be after `from`"));
    }
    let Some(utc_offset_minutes) = i32::try_from(utc_offset_minutes)
        .ok()
        .filter(|m| (-840..=840).contains(m))
    else {
        return Err(Error::field(
            "utc_offset_minutes",
            "must be between -840 and 840 (minutes from UTC)",
        ));
    };
    let values = s
        .engine
        .indicator(&IndicatorQuery {
            code,
            indicator,
            from: q.from,
            to: q.to,
            period: q.period,
            utc_offset_minutes,
        })
        .await?;
    Ok(Json(json!(values)))
}
