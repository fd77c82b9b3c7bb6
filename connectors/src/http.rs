//! The HTTP connector: a system reached over HTTP, described by one YAML
//! file (`connectors/config/<system>.yaml`) instead of code.
//!
//! The file names the catalog system it implements and, per operation, the
//! request (method, path and query templates, body fields) and how the
//! answer maps back (output name → JSON pointer; status and error code →
//! named business error). Everything is checked against the catalog when
//! the file is loaded, so a misspelt input, output or error is a load error
//! with its line and column, not an incident at three in the morning.
//!
//! Each attempt carries the job's idempotency key (`Idempotency-Key`) and a
//! fresh W3C `traceparent`. Connection failures, timeouts, 429 and 5xx are
//! retried inside the attempt with exponential backoff (`backon`); when
//! those retries run out the engine sees a transient failure and applies
//! the node's own retry policy, then raises an incident. A `Retry-After`
//! longer than the backoff's next wait ends the attempt and goes to the
//! engine, which schedules the next attempt no sooner. A 4xx that the same
//! request would get again (400, 401, 403, 404, 422…) and a redirect are a
//! refusal: not retried at all, the step's incident is raised at once. 408,
//! 409, 423 and 425 say "not now" and go the transient way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use backon::{ExponentialBuilder, Retryable};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tramite_engine::catalog::{Catalog, OperationSpec};
use tramite_engine::duration::Duration;
use tramite_engine::position::{PositionIndex, YamlPath};
use tramite_engine::runtime::connector::{
    BoxFuture, Connector, ConnectorCall, ConnectorError, Health, MAX_RETRY_AFTER,
};

/// A system reached over HTTP, as its YAML file describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The catalog system this file implements (`naf`, `gis`, `smartflex`).
    pub system: String,
    /// Base URL; operation paths are appended (`https://naf.example.bo/api`).
    pub base_url: String,
    /// How requests authenticate; none when absent.
    pub auth: Option<Auth>,
    /// Longest wait for one HTTP exchange (default 10s). Keep it below the
    /// service task's own timeout.
    pub timeout: Option<Duration>,
    /// Longest wait to connect (default 3s).
    pub connect_timeout: Option<Duration>,
    /// Retries inside one attempt of the job (default: 3 tries, 200ms doubling up to 2s).
    pub retry: Option<Retry>,
    /// The health check shown in `/readyz` and in metrics (default `GET /health`).
    pub health: Option<HealthCheck>,
    /// The most requests this node sends the system at once (no cap when
    /// absent: the node's `--workers` bound all its calls). A request past
    /// the cap waits for one to end, within the service task's `timeout`.
    pub max_in_flight: Option<u32>,
    /// Each operation of the system that this file implements.
    pub operations: BTreeMap<String, Operation>,
}

/// Exactly one way to authenticate. Secrets come from environment
/// variables, never from the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// `Authorization: Bearer <$VAR>`.
    pub bearer_env: Option<String>,
    /// `Authorization: Basic`.
    pub basic: Option<BasicAuth>,
    /// A header carrying a key (`X-Api-Key: <$VAR>`).
    pub api_key: Option<ApiKey>,
}

/// HTTP basic authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// User name.
    pub user: String,
    /// The variable holding the password.
    pub password_env: String,
}

/// An API key in a header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The header (`X-Api-Key`).
    pub header: String,
    /// The variable holding the key.
    pub value_env: String,
}

/// The most tries one job attempt may make: more would only hold a worker
/// (the job's own attempts, with their backoff, are the long retries).
pub const MAX_TRIES: u32 = 100;

/// Retries inside one attempt of a job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Tries in all (1: no retry), at most [`MAX_TRIES`].
    pub attempts: u32,
    /// Wait before the second try; doubles each time.
    pub first_delay: Duration,
    /// Longest wait between tries.
    pub max_delay: Duration,
}

/// How to tell whether the system is up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path under the base URL, answered with a 2xx when up.
    pub path: String,
}

/// HTTP methods an operation may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET (no body).
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

/// One operation: the request it sends and how its answer maps back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// The method.
    pub method: Method,
    /// Path under the base URL; `{input}` takes an input's value, encoded.
    pub path: String,
    /// Query parameter → input; left out when the input is absent.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// JSON body field → input (values keep their JSON type); no body when empty.
    #[serde(default)]
    pub body: BTreeMap<String, String>,
    /// Output → JSON pointer into a 2xx answer (`/data/found`).
    #[serde(default)]
    pub output: BTreeMap<String, String>,
    /// Which answers are business errors: non-2xx ones, and 2xx ones that
    /// carry the rule's `code`.
    #[serde(default)]
    pub errors: Vec<ErrorRule>,
}

/// Answers with one of `status` whose code (at the JSON pointer `code`)
/// names a business error of the operation, directly or through `map`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRule {
    /// HTTP statuses this rule reads.
    pub status: Vec<u16>,
    /// JSON pointer to the system's error code.
    pub code: String,
    /// JSON pointer to the system's message, for the history.
    pub message: Option<String>,
    /// The system's code → the catalog's business error, where they differ.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
}

/// Why a connector file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not have the shape of a connector file.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde's message (unknown field, wrong type, …).
        message: String,
    },
    /// The file parses but disagrees with the catalog or itself.
    #[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
    /// The HTTP client could not be built (TLS roots, settings).
    #[error("{path}: cannot build the HTTP client: {source}")]
    Client {
        /// The file.
        path: PathBuf,
        /// Why.
        source: reqwest::Error,
    },
}

/// One problem of a connector file, where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// The YAML path (`operations.check_portfolio.output.found`).
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if !self.at.is_empty() {
            write!(f, "{}: ", self.at)?;
        }
        f.write_str(&self.message)
    }
}

impl ErrorRule {
    /// The system's code in `body`, as text: a string, or a number
    /// (`1001` and `1001.0` are one code, as `map` writes it).
    fn code_in(&self, body: &Value) -> Option<String> {
        match body.pointer(&self.code)? {
            Value::String(code) => Some(code.clone()),
            Value::Number(code) => Some(tramite_engine::runtime::eval::whole_number_text(code)),
            _ => None,
        }
    }
}

/// The resolved credentials of a connector.
#[derive(Clone)]
enum Credentials {
    None,
    Bearer(String),
    Basic { user: String, password: String },
    Header { name: String, value: String },
}

/// A system reached over HTTP.
pub struct HttpConnector {
    config: HttpConfig,
    client: reqwest::Client,
    credentials: Credentials,
    backoff: ExponentialBuilder,
    /// One permit per exchange under way, when the file caps them.
    in_flight: Option<Arc<Semaphore>>,
    /// Operation → the business errors the catalog declares for it: an
    /// answer naming anything else is not routed as a business error.
    business_errors: BTreeMap<String, Vec<String>>,
}

/// Per-exchange timeout when the file sets none.
const DEFAULT_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// Connection timeout when the file sets none.
const DEFAULT_CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(3);
/// Tries per attempt, first and longest wait, when the file sets no `retry`.
const DEFAULT_TRIES: u32 = 3;
const DEFAULT_FIRST_DELAY: StdDuration = StdDuration::from_millis(200);
const DEFAULT_MAX_DELAY: StdDuration = StdDuration::from_secs(2);
/// How long a health check may take.
const HEALTH_TIMEOUT: StdDuration = StdDuration::from_secs(2);

/// The largest answer read from a system (4 MiB): a backend that streams
/// more is failing, and up to one answer per worker is held in memory.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

impl std::fmt::Debug for HttpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConnector")
            .field("system", &self.config.system)
            .field("base_url", &self.config.base_url)
            .finish_non_exhaustive()
    }
}

/// Reads every `*.yaml` in `dir` (sorted), each one system.
pub fn load_dir(dir: &Path, catalog: &Catalog) -> Result<Vec<HttpConnector>, Error> {
    let read = |source| Error::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    // Every file is read, so that one broken file does not hide the next.
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    let mut systems = std::collections::HashMap::new();
    for f in &files {
        match load_file(f, catalog) {
            Ok(c) => {
                // Two files of one system: which one served would depend
                // on the files' names (a `smartflex.yaml` left beside
                // `smartflex.prod.yaml` would quietly win).
                if let Some(first) = systems.insert(c.system().to_owned(), f) {
                    let line = std::fs::read_to_string(f)
                        .ok()
                        .and_then(|t| {
                            tramite_engine::loader::without_bom(&t)
                                .lines()
                                .position(|l| l.starts_with("system:"))
                        })
                        .map_or(0, |n| n + 1);
                    problems.push(Problem {
                        path: f.clone(),
                        line,
                        column: usize::from(line > 0),
                        at: "system".to_owned(),
                        message: format!(
                            "`{}` is also connected by {}: one file per system",
                            c.system(),
                            first.display()
                        ),
                    });
                }
                loaded.push(c)
            }
            Err(Error::Invalid { problems: p }) => problems.extend(p),
            Err(Error::Syntax {
                path,
                line,
                column,
                message,
            }) => problems.push(Problem {
                path,
                line,
                column,
                at: String::new(),
                message,
            }),
            Err(other) => return Err(other),
        }
    }
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(Error::Invalid { problems })
    }
}

/// Reads one connector file.
pub fn load_file(path: &Path, catalog: &Catalog) -> Result<HttpConnector, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    HttpConnector::from_yaml(path, &text, catalog, &|name| std::env::var(name).ok())
}

impl HttpConnector {
    /// Parses and checks `text` (the contents of `path`); `env` looks up
    /// the secrets' variables.
    pub fn from_yaml(
        path: &Path,
        text: &str,
        catalog: &Catalog,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<HttpConnector, Error> {
        let text = tramite_engine::loader::without_bom(text);
        let index = PositionIndex::build(text);
        let config: HttpConfig = serde_yaml::from_str(text).map_err(|e| {
            let message = e.to_string();
            let (line, column) = unknown_field_position(&message, &index)
                .or_else(|| e.location().map(|l| (l.line(), l.column())))
                .unwrap_or((0, 0));
            Error::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        })?;
        let mut problems = Vec::new();
        let mut problem = |at: YamlPath, message: String| {
            let pos = index.locate(&at);
            problems.push(Problem {
                path: path.to_path_buf(),
                line: pos.map_or(0, |p| p.line as usize),
                column: pos.map_or(0, |p| p.column as usize),
                at: at.to_string(),
                message,
            });
        };
        let root = YamlPath::root();
        let credentials = check_auth(&config, env, &mut problem);
        if let Some(why) = bad_base_url(&config.base_url) {
            problem(
                root.key("base_url"),
                format!("`{}` {why}", redacted(&config.base_url)),
            );
        }
        if let Some(h) = &config.health
            && !h.path.starts_with('/')
        {
            problem(
                root.key("health").key("path"),
                format!(
                    "`{}` must start with `/` (it is put after `base_url`)",
                    h.path
                ),
            );
        }
        if let Some(r) = &config.retry {
            if r.attempts == 0 || r.attempts > MAX_TRIES {
                problem(
                    root.key("retry").key("attempts"),
                    format!("must be from 1 (no retry) to {MAX_TRIES}"),
                );
            }
            // The first wait is not capped by `max_delay`: a longer one
            // would make every estimate of the attempt's length wrong.
            if r.first_delay.as_std() > r.max_delay.as_std() {
                problem(
                    root.key("retry").key("first_delay"),
                    "must not be longer than `max_delay`".to_owned(),
                );
            }
        }
        if config.max_in_flight == Some(0) {
            problem(
                root.key("max_in_flight"),
                "must be at least 1 (leave it out for no cap)".to_owned(),
            );
        }
        match catalog.connector(&config.system) {
            None => {
                let known: Vec<&str> = catalog.connectors().map(|c| c.name.as_str()).collect();
                problem(
                    root.key("system"),
                    format!(
                        "`{}` is not a system of the catalog (known: {})",
                        config.system,
                        known.join(", ")
                    ),
                );
            }
            Some(spec) => {
                for (name, op) in &config.operations {
                    let at = root.key("operations").key(name.clone());
                    match spec.operation(name) {
                        None => problem(
                            at,
                            format!(
                                "`{name}` is not an operation of `{}` (it has: {})",
                                config.system,
                                spec.operations
                                    .iter()
                                    .map(|o| o.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ),
                        Some(op_spec) => check_operation(op, op_spec, &at, &mut problem),
                    }
                }
                // Definitions are checked against the catalog: an operation
                // the file leaves out would pass every check, then fail at
                // every call.
                for op in &spec.operations {
                    if !config.operations.contains_key(&op.name) {
                        problem(
                            root.key("operations"),
                            format!(
                                "`{}` of `{}` is not mapped: every call of it would fail",
                                op.name, config.system
                            ),
                        );
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error::Invalid { problems });
        }
        let business_errors = catalog
            .connector(&config.system)
            .map(|spec| {
                spec.operations
                    .iter()
                    .map(|o| {
                        let names = o.errors.iter().map(|e| e.name.clone()).collect();
                        (o.name.clone(), names)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let timeout = config
            .timeout
            .as_ref()
            .map_or(DEFAULT_TIMEOUT, Duration::as_std);
        let connect = config
            .connect_timeout
            .as_ref()
            .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::as_std);
        install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect)
            .user_agent(concat!("tramite/", env!("CARGO_PKG_VERSION")))
            // A redirect would turn a POST into a bodiless GET, and carry an
            // `api_key` header to whatever host it names: a system that
            // moved is a configuration to change, not a hop to follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| Error::Client {
                path: path.to_path_buf(),
                source,
            })?;
        let backoff = match &config.retry {
            Some(r) => ExponentialBuilder::default()
                .with_min_delay(r.first_delay.as_std())
                .with_max_delay(r.max_delay.as_std())
                .with_max_times(r.attempts.saturating_sub(1) as usize),
            None => ExponentialBuilder::default()
                .with_min_delay(DEFAULT_FIRST_DELAY)
                .with_max_delay(DEFAULT_MAX_DELAY)
                .with_max_times(DEFAULT_TRIES as usize - 1),
        }
        .with_jitter();
        let in_flight = config
            .max_in_flight
            .map(|n| Arc::new(Semaphore::new(n as usize)));
        Ok(HttpConnector {
            config,
            client,
            credentials,
            backoff,
            in_flight,
            business_errors,
        })
    }

    /// Whether the catalog declares `name` a business error of `operation`.
    fn declares(&self, operation: &str, name: &str) -> bool {
        self.business_errors
            .get(operation)
            .is_some_and(|names| names.iter().any(|n| n == name))
    }

    /// The catalog system it implements.
    pub fn system(&self) -> &str {
        &self.config.system
    }

    /// Its configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Credentials::None => request,
            Credentials::Bearer(token) => request.bearer_auth(token),
            Credentials::Basic { user, password } => request.basic_auth(user, Some(password)),
            Credentials::Header { name, value } => request.header(name.as_str(), value.as_str()),
        }
    }

    /// A failure as every signed-in user reads it (the history, the
    /// incident): the system, the operation, what went wrong and the trace
    /// id that finds the log line with the details.
    fn public(&self, call: &ConnectorCall<'_>, message: &str, trace: &str) -> String {
        format!(
            "{} {}: {message} (trace {trace})",
            self.config.system, call.operation
        )
    }

    /// One exchange: build, send, read and classify.
    async fn exchange(
        &self,
        op: &Operation,
        call: &ConnectorCall<'_>,
        trace: &str,
    ) -> Result<Map<String, Value>, Failure> {
        let url = format!(
            "{}{}",
            self.config.base_url.trim_end_matches('/'),
            render_path(&op.path, call.input)?
        );
        let method = match op.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let query: Vec<(&str, String)> = op
            .query
            .iter()
            .filter_map(|(param, input)| {
                call.input
                    .get(input)
                    .filter(|v| !v.is_null())
                    .map(|v| (param.as_str(), plain(v)))
            })
            .collect();
        let mut request = self
            .client
            .request(method, &url)
            .query(&query)
            .header("Idempotency-Key", call.idempotency_key)
            .header("traceparent", trace)
            .header("Accept", "application/json");
        if !op.body.is_empty() {
            let body: Map<String, Value> = op
                .body
                .iter()
                .filter_map(|(field, input)| {
                    call.input.get(input).map(|v| (field.clone(), v.clone()))
                })
                .collect();
            request = request.json(&body);
        }
        // Held until the answer is read: a cap counts requests the system
        // is working on, not waits between tries.
        // (The semaphore is never closed.)
        let _permit = match &self.in_flight {
            Some(slots) => slots.acquire().await.ok(),
            None => None,
        };
        let response = self.authorize(request).send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "request failed"
            };
            Failure::retry(what.to_owned(), format!("{what}: {url}: {}", causes(&e)))
        })?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let wait = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, std::time::SystemTime::now()))
            // No wait is no request; the engine holds a longer one to this.
            .filter(|wait| !wait.is_zero())
            .map(|wait| wait.min(MAX_RETRY_AFTER));
        // A 404 web page is a balancer's or a proxy's answer (a route gone
        // while a deploy or a DNS change is under way), not the system's.
        // (A 401 or 403 page is not: proxies in front of an API answer a
        // refused credential with their own page, and it is a refusal.)
        let page = status == reqwest::StatusCode::NOT_FOUND
            && response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"));
        let bytes = if status.is_success() {
            read_answer(response, &url).await?
        } else {
            read_error_answer(response).await
        };
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let mut undeclared = None;
        if let Some(body) = &body {
            for rule in op
                .errors
                .iter()
                .filter(|r| r.status.contains(&status.as_u16()))
            {
                let Some(code) = rule.code_in(body) else {
                    continue;
                };
                let name = rule.map.get(&code).unwrap_or(&code);
                // A code the catalog does not declare ("request in
                // progress", a new code of the system's) is no business
                // answer the definition could route: under an error status
                // it falls through to the status's own path below (408,
                // 409, 421, 423, 425, 429, 5xx and a 4xx with Retry-After
                // retried with the same idempotency key, any other 4xx a
                // refusal, whose incident's retry keeps the key too), rather
                // than an unrouted business
                // error, whose way out runs the step again under a new key;
                // under a 2xx it is a result (a system may put `"code": 0`
                // or `"status": "OK"` on every success).
                if self.declares(call.operation, name) {
                    let message = rule
                        .message
                        .as_deref()
                        .and_then(|p| body.pointer(p))
                        .map_or_else(|| format!("HTTP {status}"), plain);
                    return Err(Failure::Business(ConnectorError::Business {
                        code: name.clone(),
                        message,
                    }));
                }
                undeclared = Some(code);
            }
        }
        if status.is_success() {
            let Some(body) = &body else {
                // Nothing to read is no failure when nothing was to be read
                // (a 204, an operation that maps no output): retried, the
                // call would act again each time, then raise an incident.
                if status == reqwest::StatusCode::NO_CONTENT || op.output.is_empty() {
                    return Ok(Map::new());
                }
                return Err(Failure::stop(
                    format!("HTTP {status}, not JSON"),
                    format!("HTTP {status} from {url} is not JSON"),
                ));
            };
            return Ok(op
                .output
                .iter()
                .filter_map(|(name, pointer)| {
                    body.pointer(pointer).map(|v| (name.clone(), v.clone()))
                })
                .collect());
        }
        let excerpt: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
        let public = match undeclared {
            // The system's own text: short, and printable, in what every
            // signed-in user may read.
            Some(code) => {
                let code: String = code.chars().filter(|c| !c.is_control()).take(64).collect();
                format!("HTTP {status}, code `{code}` (not in the catalog)")
            }
            None => format!("HTTP {status}"),
        };
        let detail = format!("HTTP {status} from {url}: {excerpt}");
        if status.is_redirection() {
            let to = location.as_deref().unwrap_or("nowhere");
            return Err(Failure::refused(
                format!(
                    "HTTP {status}: the system answers from another address; its connector's `base_url` must change"
                ),
                format!(
                    "HTTP {status} from {url}, redirected to {to} (redirects are not followed)"
                ),
            ));
        }
        // Any 4xx that says when to come back (a gateway's own limit) is
        // taken as a 429: retried within the attempt if the wait is short,
        // else left to the engine (which counts it as throttling).
        if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || wait.is_some()
        {
            match wait {
                Some(wait) => Err(Failure::Transient {
                    message: format!("{public}, asked to wait {} s", wait.as_secs()),
                    detail,
                    retry: true,
                    wait: Some(wait),
                }),
                None => Err(Failure::retry(public, detail)),
            }
        } else if matches!(status.as_u16(), 408 | 409 | 421 | 423 | 425) || page {
            // "Not now": timed out waiting for the request, busy with the
            // same key, sent on the wrong connection, locked, too early; or
            // a page from something in front of the system. Not worth a
            // retry within the attempt, but the next attempt may pass.
            Err(Failure::stop(public, detail))
        } else {
            // Another 4xx: the request as it stands is wrong or not
            // allowed, and sending it again gets the same answer until
            // someone changes something.
            Err(Failure::refused(public, detail))
        }
    }
}

/// Reads an answer's body, refusing one over [`MAX_ANSWER_BYTES`] without
/// holding more than that.
async fn read_answer(mut response: reqwest::Response, url: &str) -> Result<Vec<u8>, Failure> {
    let too_large = || {
        let limit = MAX_ANSWER_BYTES / (1024 * 1024);
        Failure::stop(
            format!("the answer is larger than {limit} MiB"),
            format!("the answer of {url} is larger than {limit} MiB"),
        )
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        Failure::retry(
            "reading the answer failed".to_owned(),
            format!("reading the answer of {url} failed: {e}"),
        )
    })? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The most of an error answer's body that is read: enough for any code
/// and message, however large the page around them.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Reads what an error answer's body holds, up to [`MAX_ERROR_BYTES`]:
/// whatever it is (a proxy's large page, a body cut short), the status —
/// and the `Retry-After` with it — still decides what the failure is. A
/// body cut off reads as no JSON.
async fn read_error_answer(mut response: reqwest::Response) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BYTES - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

/// What one exchange ended with, short of a result.
#[derive(Debug)]
enum Failure {
    /// A business error: the definition routes it.
    Business(ConnectorError),
    /// A refusal, never retried; `message` and `detail` as for `Transient`.
    Refused { message: String, detail: String },
    /// Transient; `retry` says whether trying again now may help.
    /// `message` is what the engine records (an incident, the history, which
    /// every signed-in user may read); `detail` adds what only the log gets:
    /// internal addresses and the system's own words.
    /// `wait`: the system's `Retry-After`, if it sent one.
    Transient {
        message: String,
        detail: String,
        retry: bool,
        wait: Option<StdDuration>,
    },
}

impl Failure {
    fn retry(message: String, detail: String) -> Failure {
        Failure::Transient {
            message,
            detail,
            retry: true,
            wait: None,
        }
    }

    fn refused(message: String, detail: String) -> Failure {
        Failure::Refused { message, detail }
    }

    fn stop(message: String, detail: String) -> Failure {
        Failure::Transient {
            message,
            detail,
            retry: false,
            wait: None,
        }
    }
}

/// A `Retry-After` value: seconds, or an HTTP date (a date already past
/// is no wait). Anything else is ignored, as if the header were absent.
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<StdDuration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(StdDuration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

impl Connector for HttpConnector {
    fn call<'a>(
        &'a self,
        call: ConnectorCall<'a>,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ConnectorError>> {
        Box::pin(async move {
            let Some(op) = self.config.operations.get(call.operation) else {
                return Err(ConnectorError::transient(format!(
                    "`{}` has no HTTP mapping for `{}`",
                    self.config.system, call.operation
                )));
            };
            let trace = traceparent();
            let started = Instant::now();
            let outcome = (|| self.exchange(op, &call, &trace))
                .retry(self.backoff)
                .sleep(tokio::time::sleep)
                .when(|f| matches!(f, Failure::Transient { retry: true, .. }))
                // A system that says when to come back is not asked sooner:
                // a wait longer than the backoff's next one ends the attempt
                // and the engine waits it out, without holding a worker —
                // waiting it here would outgrow the attempt's time
                // (`longest_attempt`, the service task's `timeout`).
                .adjust(|f, next| match (f, next) {
                    (Failure::Transient { wait: Some(wait), .. }, Some(next)) => {
                        (*wait <= next).then_some(next)
                    }
                    _ => next,
                })
                .notify(|f, wait| {
                    // Per-attempt outcomes are the engine's job metrics;
                    // these are the HTTP retries inside an attempt.
                    metrics::counter!("tramite_connector_retries_total", "system" => self.config.system.clone())
                        .increment(1);
                    tracing::info!(system = %self.config.system, operation = call.operation, %trace, failure = ?f, ?wait, "retrying");
                })
                .await;
            let elapsed_ms = started.elapsed().as_millis();
            match outcome {
                Ok(out) => {
                    tracing::debug!(system = %self.config.system, operation = call.operation, %trace, elapsed_ms, "answered");
                    Ok(out)
                }
                Err(Failure::Business(e)) => Err(e),
                Err(Failure::Refused { message, detail }) => {
                    tracing::warn!(system = %self.config.system, operation = call.operation, %trace, elapsed_ms, %detail, "refused");
                    Err(ConnectorError::Refused {
                        message: self.public(&call, &message, &trace),
                    })
                }
                Err(Failure::Transient {
                    message,
                    detail,
                    wait,
                    ..
                }) => {
                    tracing::warn!(system = %self.config.system, operation = call.operation, %trace, elapsed_ms, %detail, "failed");
                    Err(ConnectorError::Transient {
                        message: self.public(&call, &message, &trace),
                        retry_after: wait,
                    })
                }
            }
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let path = self
                .config
                .health
                .as_ref()
                .map_or("/health", |h| h.path.as_str());
            let url = format!("{}{path}", self.config.base_url.trim_end_matches('/'));
            let started = Instant::now();
            let request = self
                .authorize(self.client.get(&url))
                .timeout(HEALTH_TIMEOUT);
            match request.send().await {
                Ok(r) if r.status().is_success() => Health::Up {
                    latency_ms: started.elapsed().as_secs_f64() * 1_000.0,
                },
                // `/readyz` is open to load balancers: the reasons name no
                // internal address (the log and the file have it).
                Ok(r) => {
                    tracing::info!(system = %self.config.system, %url, status = %r.status(), "health check failed");
                    Health::Down {
                        reason: format!("health check answered HTTP {}", r.status().as_u16()),
                    }
                }
                Err(e) if e.is_timeout() => Health::Down {
                    reason: format!("health check timed out ({} s)", HEALTH_TIMEOUT.as_secs()),
                },
                Err(e) => {
                    tracing::info!(system = %self.config.system, %url, error = %e, "health check failed");
                    Health::Down {
                        reason: "cannot reach the system".to_owned(),
                    }
                }
            }
        })
    }

    /// The longest one job attempt can take through this connector: every
    /// try running to its timeout, with the longest waits between tries
    /// (jitter at most doubles a wait). A service task whose own `timeout`
    /// is shorter cuts the last tries off, and its incident then says "no
    /// answer in time" instead of the system's own failure
    /// ([`tramite_engine::runtime::connector::attempts_cut_short`]).
    fn longest_attempt(&self) -> Option<StdDuration> {
        let timeout = self
            .config
            .timeout
            .as_ref()
            .map_or(DEFAULT_TIMEOUT, Duration::as_std);
        let (tries, first, max) = match &self.config.retry {
            Some(r) => (r.attempts, r.first_delay.as_std(), r.max_delay.as_std()),
            None => (DEFAULT_TRIES, DEFAULT_FIRST_DELAY, DEFAULT_MAX_DELAY),
        };
        // Saturating: durations are bounded at load, but not their sums.
        let waits = (0..tries.saturating_sub(1))
            .map(|i| {
                first
                    .saturating_mul(1 << i.min(20))
                    .min(max)
                    .saturating_mul(2)
            })
            .fold(StdDuration::ZERO, StdDuration::saturating_add);
        Some(timeout.saturating_mul(tries).saturating_add(waits))
    }
}

/// Chooses rustls' ring provider for this process's HTTPS (once; later
/// calls, or a provider chosen elsewhere, leave it as it is).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// serde_yaml places an unknown field at the start of its mapping; its
/// message names the mapping's path and the field, so the field's own line
/// is found in the position index.
fn unknown_field_position(message: &str, index: &PositionIndex) -> Option<(usize, usize)> {
    let (path, rest) = message.split_once(": unknown field `")?;
    let field = rest.split('`').next()?;
    let mut at = YamlPath::root();
    for segment in path.split('.') {
        let (name, indexes) = segment.split_once('[').unwrap_or((segment, ""));
        if !name.is_empty() {
            at = at.key(name);
        }
        for i in indexes.split('[').filter(|s| !s.is_empty()) {
            at = at.index(i.trim_end_matches(']').parse().ok()?);
        }
    }
    let pos = index.key(&at.key(field))?;
    Some((pos.line as usize, pos.column as usize))
}

/// A value as text for a path or query (strings without quotes).
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `path` with each `{input}` replaced by its value, percent-encoded.
fn render_path(path: &str, input: &Map<String, Value>) -> Result<String, Failure> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| {
            let m = format!("unclosed `{{` in path `{path}`");
            Failure::refused(m.clone(), m)
        })?;
        let name = &rest[open + 1..close];
        let value = input.get(name).filter(|v| !v.is_null()).ok_or_else(|| {
            let m = format!("input `{name}` of path `{path}` is missing");
            Failure::refused(m.clone(), m)
        })?;
        let text = plain(value);
        // URLs read `.` and `..` as "here" and "up" even percent-encoded:
        // `/clientes/../cartera` would ask another resource, credentials and all.
        if text.is_empty() || text == "." || text == ".." {
            let m =
                format!("input `{name}` of path `{path}` is `{text}`, which is no path segment");
            return Err(Failure::refused(m.clone(), m));
        }
        out.push_str(&encode(&text));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// An error and its causes, `: `-separated: a TLS or DNS failure's reason
/// is in its sources, not in reqwest's own text.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A W3C trace context for one call: new trace and span ids.
fn traceparent() -> String {
    let trace: u128 = rand::random();
    let span: u64 = rand::random();
    format!("00-{trace:032x}-{span:016x}-01")
}

fn placeholders(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(name, _)| name))
        .collect()
}

/// `url` with any user name and password in it replaced by `***`: the
/// refusal of such a URL must not print the secret it refuses.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("***");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Why `base_url` is no base for the operations' paths, if it is not:
/// an http(s) URL (which has a host, or does not parse) and nothing after
/// its path. User info would
/// become Basic auth behind `auth`'s back (its secret in the file and in
/// every log line that names the URL); a query or fragment would swallow
/// the paths appended to it.
fn bad_base_url(base: &str) -> Option<&'static str> {
    let Ok(url) = reqwest::Url::parse(base) else {
        return Some("is not a URL");
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Some("is not an http:// or https:// URL");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some(
            "holds a user name or password: give credentials under `auth`, from the environment",
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Some("has a query or fragment, which the operations' paths would be appended to");
    }
    None
}

fn check_auth(
    config: &HttpConfig,
    env: &dyn Fn(&str) -> Option<String>,
    problem: &mut impl FnMut(YamlPath, String),
) -> Credentials {
    let Some(auth) = &config.auth else {
        return Credentials::None;
    };
    let at = YamlPath::root().key("auth");
    // A secret mounted from a file often ends with a line break: the ends'
    // white space is never part of a token. What is left must be sendable
    // in a header, else every request would fail to build, retried as if
    // the system were down.
    let mut secret = |key: YamlPath, var: &str, sent_as: &dyn Fn(&str) -> String| match env(var) {
        Some(v) if !v.trim().is_empty() => {
            // Only a line break at the end goes: spaces may be part of a
            // password.
            let v = v.trim_end_matches(['\r', '\n']).to_owned();
            if reqwest::header::HeaderValue::from_str(&sent_as(&v)).is_err() {
                problem(
                    key,
                    format!(
                        "the value of `{var}` cannot be sent in an HTTP header (it holds a control character, or a letter outside ASCII)"
                    ),
                );
            }
            v
        }
        Some(_) => {
            problem(key, format!("the environment variable `{var}` is empty"));
            String::new()
        }
        None => {
            problem(key, format!("the environment variable `{var}` is not set"));
            String::new()
        }
    };
    let set = [
        auth.bearer_env.is_some(),
        auth.basic.is_some(),
        auth.api_key.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    let as_is = |v: &str| v.to_owned();
    let credentials = if let Some(var) = &auth.bearer_env {
        Credentials::Bearer(secret(at.key("bearer_env"), var, &|v| {
            format!("Bearer {v}")
        }))
    } else if let Some(b) = &auth.basic {
        // Basic credentials are base64: any password can be sent, but a
        // `:` in the user would move the rest of it into the password.
        let password = secret(
            at.key("basic").key("password_env"),
            &b.password_env,
            &|_| String::new(),
        );
        if b.user.contains(':') || b.user.chars().any(char::is_control) {
            problem(
                at.key("basic").key("user"),
                "must not hold `:` or control characters".to_owned(),
            );
        }
        Credentials::Basic {
            user: b.user.clone(),
            password,
        }
    } else if let Some(k) = &auth.api_key {
        let value = secret(at.key("api_key").key("value_env"), &k.value_env, &as_is);
        if reqwest::header::HeaderName::from_bytes(k.header.as_bytes()).is_err() {
            problem(
                at.key("api_key").key("header"),
                format!(
                    "`{}` is not an HTTP header name (letters, digits and `-`, no spaces)",
                    k.header
                ),
            );
        }
        Credentials::Header {
            name: k.header.clone(),
            value,
        }
    } else {
        Credentials::None
    };
    if set != 1 {
        problem(
            at,
            "give exactly one of `bearer_env`, `basic` or `api_key`".to_owned(),
        );
    }
    credentials
}

fn check_operation(
    op: &Operation,
    spec: &OperationSpec,
    at: &YamlPath,
    problem: &mut impl FnMut(YamlPath, String),
) {
    let inputs: Vec<&str> = spec.inputs.iter().map(|p| p.name.as_str()).collect();
    let outputs: Vec<&str> = spec.outputs.iter().map(|p| p.name.as_str()).collect();
    let errors: Vec<&str> = spec.errors.iter().map(|e| e.name.as_str()).collect();
    if !op.path.starts_with('/') {
        problem(at.key("path"), "must start with `/`".to_owned());
    }
    let sent = placeholders(&op.path)
        .into_iter()
        .map(|name| (at.key("path"), name))
        .chain(
            op.query
                .iter()
                .map(|(param, name)| (at.key("query").key(param.clone()), name.as_str())),
        )
        .chain(
            op.body
                .iter()
                .map(|(field, name)| (at.key("body").key(field.clone()), name.as_str())),
        );
    for (key, name) in sent {
        if !inputs.contains(&name) {
            problem(
                key,
                format!(
                    "`{name}` is not an input of `{}` (inputs: {})",
                    spec.name,
                    inputs.join(", ")
                ),
            );
        }
    }
    if op.method == Method::Get && !op.body.is_empty() {
        problem(at.key("body"), "a GET request has no body".to_owned());
    }
    for (name, pointer) in &op.output {
        let key = at.key("output").key(name.clone());
        if !outputs.contains(&name.as_str()) {
            problem(
                key.clone(),
                format!(
                    "`{name}` is not an output of `{}` (outputs: {})",
                    spec.name,
                    outputs.join(", ")
                ),
            );
        }
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            problem(
                key,
                format!("`{pointer}` is not a JSON pointer (write `/data/{name}`)"),
            );
        }
    }
    for (i, rule) in op.errors.iter().enumerate() {
        let key = at.key("errors").index(i);
        // A pointer without its leading `/` finds nothing: the rule would
        // be dead, and every business error a transient failure, retried.
        for (field, pointer) in [
            ("code", Some(&rule.code)),
            ("message", rule.message.as_ref()),
        ] {
            // `""` is the whole answer (a system answering a bare string).
            if let Some(pointer) = pointer
                && !(pointer.is_empty() || pointer.starts_with('/'))
            {
                problem(
                    key.key(field),
                    format!("`{pointer}` is not a JSON pointer (write `/{pointer}`)"),
                );
            }
        }
        if rule.status.is_empty() {
            problem(
                key.key("status"),
                "names no status: the rule would never apply".to_owned(),
            );
        }
        if let Some(bad) = rule
            .status
            .iter()
            .find(|s| !(200..=299).contains(*s) && !(400..=599).contains(*s))
        {
            problem(
                key.key("status"),
                format!("{bad} is neither a success (200–299) nor an error status (400–599)"),
            );
        }
        for (code, name) in &rule.map {
            if !errors.contains(&name.as_str()) {
                problem(
                    key.key("map").key(code.clone()),
                    format!(
                        "`{name}` is not a business error of `{}` (errors: {})",
                        spec.name,
                        errors.join(", ")
                    ),
                );
            }
        }
    }
    // What the catalog says an operation always returns, definitions read
    // unguarded (`result.request_number`): left unmapped, it would be
    // missing from every answer, after the system had acted.
    for required in spec.outputs.iter().filter(|p| p.required) {
        if !op.output.contains_key(&required.name) {
            problem(
                at.clone(),
                format!(
                    "the output `{}`, which `{}` always returns, is read from nowhere (add it under `output`)",
                    required.name, spec.name
                ),
            );
        }
    }
    for required in spec.inputs.iter().filter(|p| p.required) {
        let sent = placeholders(&op.path).contains(&required.name.as_str())
            || op.query.values().any(|v| *v == required.name)
            || op.body.values().any(|v| *v == required.name);
        if !sent {
            problem(
                at.clone(),
                format!(
                    "the required input `{}` is sent nowhere (path, query or body)",
                    required.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tramite_engine::runtime::connector::{Connectors, attempts_cut_short};

    fn load(text: &str) -> Result<HttpConnector, Error> {
        HttpConnector::from_yaml(Path::new("naf.yaml"), text, &crate::catalog(), &|name| {
            (name == "NAF_TOKEN").then(|| "secret".to_owned())
        })
    }

    const GOOD: &str = "\
system: naf
base_url: http://127.0.0.1:1/naf
auth: {bearer_env: NAF_TOKEN}
operations:
  check_portfolio:
    method: GET
    path: /v1/clientes/{ci}/cartera
    query: {extension: ci_extension}
    output: {found: /data/found, member: /data/member, has_impediment: /data/has_impediment,
             impediments: /data/impediments, debt_bs: /data/debt_bs}
    errors:
      - {status: [422], code: /error/code, message: /error/message}
";

    /// The shipped files give every P06 service task's attempt room for
    /// all of its HTTP tries; a slower file is named with its node.
    #[test]
    fn shipped_files_fit_the_p06_timeouts() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let p06 = std::fs::read_to_string(root.join("processes/ope-sum-ven-p06.yaml")).unwrap();
        let parsed = tramite_engine::loader::parse(&p06);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let definition = parsed.definition;
        let secrets = |_: &str| Some("secret".to_owned());
        let file = |system: &str, edit: &dyn Fn(String) -> String| {
            let path = root.join(format!("connectors/config/{system}.yaml"));
            let text = edit(std::fs::read_to_string(&path).unwrap());
            HttpConnector::from_yaml(&path, &text, &crate::catalog(), &secrets).unwrap()
        };
        let connectors = |edit: &dyn Fn(String) -> String| {
            ["naf", "gis", "smartflex"]
                .into_iter()
                .fold(Connectors::new(), |all, s| {
                    all.with(s, Arc::new(file(s, edit)))
                })
        };
        let default = StdDuration::from_secs(30);
        assert_eq!(
            attempts_cut_short(&definition, &connectors(&|t| t), default),
            Vec::<String>::new()
        );
        let slow = connectors(&|t: String| t.replace("timeout: 3s", "timeout: 5s"));
        assert_eq!(
            slow.get("naf").unwrap().longest_attempt(),
            Some(StdDuration::from_millis(15_600))
        );
        let problems = attempts_cut_short(&definition, &slow, default);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("OPE-SUM-VEN-P06 `consultar_naf`: its timeout (10 s)"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_good_file_loads() {
        let c = load(GOOD).expect("loads");
        assert_eq!(c.system(), "naf");
    }

    /// A file must give what the catalog promises definitions: every
    /// operation of its system, and every output the operation always
    /// returns (definitions read them unguarded).
    #[test]
    fn an_operation_or_an_output_left_unmapped_is_refused() {
        let without_debt = GOOD.replace(", debt_bs: /data/debt_bs", "");
        let Err(Error::Invalid { problems }) = load(&without_debt) else {
            panic!("expected problems");
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "naf.yaml:6:5: operations.check_portfolio: the output `debt_bs`, which `check_portfolio` always returns, is read from nowhere (add it under `output`)"
            ]
        );
        assert!(
            load(GOOD).is_ok(),
            "the optional `client_name` may be left out"
        );
        let Err(Error::Invalid { problems }) =
            load(&GOOD.replace("check_portfolio:", "check_cartera:"))
        else {
            panic!("expected problems");
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.ends_with(
                "operations: `check_portfolio` of `naf` is not mapped: every call of it would fail"
            )),
            "{text:#?}"
        );
    }

    #[test]
    fn every_mistake_is_reported_with_its_line_and_column() {
        let bad = GOOD
            .replace("{ci}", "{cedula}")
            .replace("extension: ci_extension", "extension: ext")
            .replace("found: /data/found", "encontrado: data.found")
            .replace("NAF_TOKEN", "NAF_MISSING");
        let Err(Error::Invalid { problems }) = load(&bad) else {
            panic!("expected problems");
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let expect = [
            "naf.yaml:3:20: auth.bearer_env: the environment variable `NAF_MISSING` is not set",
            "naf.yaml:7:11: operations.check_portfolio.path: `cedula` is not an input of `check_portfolio`",
            "naf.yaml:8:24: operations.check_portfolio.query.extension: `ext` is not an input",
            "naf.yaml:9:26: operations.check_portfolio.output.encontrado: `encontrado` is not an output",
            "naf.yaml:9:26: operations.check_portfolio.output.encontrado: `data.found` is not a JSON pointer",
            "naf.yaml:6:5: operations.check_portfolio: the output `found`, which `check_portfolio` always returns, is read from nowhere",
            "naf.yaml:6:5: operations.check_portfolio: the required input `ci` is sent nowhere",
        ];
        assert_eq!(text.len(), expect.len(), "{text:#?}");
        for e in expect {
            assert!(
                text.iter().any(|t| t.starts_with(e)),
                "missing {e:?} in {text:#?}"
            );
        }
    }

    /// What would make every request fail to build, or a retry wait longer
    /// than its own estimate, is refused when the file loads; a secret's
    /// trailing line break (a mounted file) is not part of it.
    #[test]
    fn credentials_and_waits_that_cannot_work_are_refused_at_load() {
        let with = |text: &str, token: &str| {
            let token = token.to_owned();
            HttpConnector::from_yaml(Path::new("naf.yaml"), text, &crate::catalog(), &move |_| {
                Some(token.clone())
            })
        };
        let Ok(c) = with(GOOD, "secret\n") else {
            panic!("a trailing line break is trimmed");
        };
        assert!(matches!(&c.credentials, Credentials::Bearer(t) if t == "secret"));
        let problems = |r: Result<HttpConnector, Error>| match r {
            Err(Error::Invalid { problems }) => problems
                .iter()
                .map(|p| format!("{}:{} {}: {}", p.line, p.column, p.at, p.message))
                .collect::<Vec<_>>(),
            other => panic!("expected problems, got {other:?}"),
        };
        let found = problems(with(GOOD, "sec\nret"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("3:20 auth.bearer_env: the value of `NAF_TOKEN` cannot be sent"),
            "{found:?}"
        );
        assert!(
            !found[0].contains("sec"),
            "the secret is not shown: {found:?}"
        );
        let api_key = GOOD.replace(
            "auth: {bearer_env: NAF_TOKEN}",
            "auth: {api_key: {header: X Api Key, value_env: NAF_TOKEN}}",
        );
        let found = problems(with(&api_key, "ok"));
        assert!(
            found.len() == 1 && found[0].contains("`X Api Key` is not an HTTP header name"),
            "{found:?}"
        );
        let basic = GOOD.replace(
            "auth: {bearer_env: NAF_TOKEN}",
            "auth: {basic: {user: \"a:b\", password_env: NAF_TOKEN}}",
        );
        let found = problems(with(&basic, "ok"));
        assert!(
            found.len() == 1 && found[0].contains("auth.basic.user: must not hold `:`"),
            "{found:?}"
        );
        let waits = format!("{GOOD}retry: {{attempts: 3, first_delay: 10s, max_delay: 1s}}\n");
        let found = problems(with(&waits, "ok"));
        assert!(
            found.len() == 1
                && found[0].contains("retry.first_delay: must not be longer than `max_delay`"),
            "{found:?}"
        );
        // Billions of tries of a century each: refused at load, where
        // estimating the attempt's length (start-up, every deploy) once
        // overflowed and panicked.
        let endless = format!(
            "{GOOD}retry: {{attempts: 4000000000, first_delay: 36500d, max_delay: 36500d}}\n"
        );
        let found = problems(with(&endless, "ok"));
        assert!(
            found.len() == 1
                && found[0].contains("retry.attempts: must be from 1 (no retry) to 100"),
            "{found:?}"
        );
        let most =
            format!("{GOOD}retry: {{attempts: 100, first_delay: 36500d, max_delay: 36500d}}\n");
        let c = load(&most).expect("100 tries load");
        let longest = c.longest_attempt().expect("bounded");
        assert!(
            longest >= StdDuration::from_secs(99 * 2 * 36_500 * 86_400),
            "{longest:?}"
        );
        // No request could ever be sent; and a rule on a redirect or an
        // informational status could never be read (those are not answers).
        let stuck =
            format!("{GOOD}max_in_flight: 0\n").replace("status: [422]", "status: [200, 302, 422]");
        let found = problems(with(&stuck, "ok"));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("13:16 max_in_flight: must be at least 1")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.contains(
                "errors[0].status: 302 is neither a success (200–299) nor an error status"
            )),
            "{found:?}"
        );
    }

    /// A base URL that would carry a secret or swallow the paths, a health
    /// path that would be glued to it, and error rules that could never
    /// apply are refused at load, each at its line.
    #[test]
    fn urls_and_rules_that_cannot_work_are_refused_at_load() {
        let load = |text: &str| match HttpConnector::from_yaml(
            Path::new("naf.yaml"),
            text,
            &crate::catalog(),
            &|_| Some("secreto".to_owned()),
        ) {
            Err(Error::Invalid { problems }) => problems
                .iter()
                .map(|p| format!("{}:{} {}: {}", p.line, p.column, p.at, p.message))
                .collect::<Vec<_>>(),
            Ok(_) => Vec::new(),
            Err(other) => panic!("{other:?}"),
        };
        for (base, why) in [
            (
                "https://ana:clave@naf.example/naf",
                "holds a user name or password",
            ),
            (
                "https://naf.example/naf?tenant=1",
                "has a query or fragment",
            ),
            ("https://", "is not a URL"),
            ("ftp://naf.example", "is not an http:// or https:// URL"),
        ] {
            let found = load(&GOOD.replace("http://127.0.0.1:1/naf", base));
            assert!(
                found.len() == 1
                    && found[0].starts_with("2:11 base_url: ")
                    && found[0].contains(why),
                "{base}: {found:?}"
            );
            assert!(
                !found[0].contains("clave"),
                "the secret is not shown: {found:?}"
            );
        }
        let found = load(&format!("{GOOD}health: {{path: health}}\n"));
        assert!(
            found.len() == 1 && found[0].contains("health.path: `health` must start with `/`"),
            "{found:?}"
        );
        let found = load(&GOOD.replace(
            "{status: [422], code: /error/code, message: /error/message}",
            "{status: [], code: error/code, message: /error/message}",
        ));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().any(|f| f.contains(
                "errors[0].code: `error/code` is not a JSON pointer (write `/error/code`)"
            )),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.contains("errors[0].status: names no status")),
            "{found:?}"
        );
        assert!(load(GOOD).is_empty(), "the good file loads");
    }

    /// `Retry-After` as seconds or as an HTTP date; a date already past is
    /// no wait, and anything else is as if it were absent.
    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Mon, 07 Dec 2026 10:00:00 GMT").unwrap();
        let secs = |s| Some(StdDuration::from_secs(s));
        assert_eq!(retry_after("120", now), secs(120));
        assert_eq!(retry_after(" 0 ", now), secs(0));
        assert_eq!(retry_after("Mon, 07 Dec 2026 10:01:30 GMT", now), secs(90));
        assert_eq!(retry_after("Mon, 07 Dec 2026 09:59:00 GMT", now), secs(0));
        assert_eq!(retry_after("-5", now), None);
        assert_eq!(retry_after("soon", now), None);
    }

    /// Two files of one system would leave which one serves to the files'
    /// names; both are named instead.
    #[test]
    fn two_files_of_one_system_are_refused() {
        let dir =
            std::env::temp_dir().join(format!("tramite-connectors-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        // `load_dir` reads secrets from the environment: PATH is always set.
        for name in ["naf.prod.yaml", "naf.yaml"] {
            std::fs::write(dir.join(name), GOOD.replace("NAF_TOKEN", "PATH")).unwrap();
        }
        let Err(Error::Invalid { problems }) = load_dir(&dir, &crate::catalog()) else {
            panic!("expected problems");
        };
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let p = &problems[0];
        assert_eq!(p.path.file_name().unwrap(), "naf.yaml");
        assert_eq!((p.line, p.column), (1, 1));
        assert!(
            p.message.contains("also connected by") && p.message.contains("naf.prod.yaml"),
            "{}",
            p.message
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unknown_field_names_its_line() {
        let bad = GOOD.replace("    method: GET", "    method: GET\n    timeout_ms: 5");
        let Err(Error::Syntax { line, message, .. }) = load(&bad) else {
            panic!("expected a syntax error");
        };
        assert_eq!(line, 7, "{message}");
        assert!(message.contains("unknown field `timeout_ms`"), "{message}");
    }

    #[test]
    fn a_folder_reports_the_problems_of_every_file() {
        let dir =
            std::env::temp_dir().join(format!("tramite-connectors-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.yaml"),
            GOOD.replace("system: naf", "system: nafx"),
        )
        .unwrap();
        std::fs::write(
            dir.join("b.yaml"),
            "system: gis\nbase_url: 5\nsurprise: 1\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not a connector").unwrap();
        let Err(Error::Invalid { problems }) = load_dir(&dir, &crate::catalog()) else {
            panic!("expected problems");
        };
        let mut files: Vec<String> = problems
            .iter()
            .map(|p| p.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        files.dedup();
        assert_eq!(files, ["a.yaml", "b.yaml"], "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("`nafx` is not a system"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn paths_are_encoded_and_traces_are_w3c() {
        let input: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"ci": "45 87/21", "n": 3})).unwrap();
        let Ok(path) = render_path("/c/{ci}/x/{n}", &input) else {
            panic!("renders");
        };
        assert_eq!(path, "/c/45%2087%2F21/x/3");
        assert!(render_path("/c/{nope}", &input).is_err());
        // `..` would climb out of the resource, encoded or not.
        for dots in [".", "..", ""] {
            let input: Map<String, Value> =
                serde_json::from_value(serde_json::json!({ "ci": dots })).unwrap();
            assert!(render_path("/c/{ci}/cartera", &input).is_err(), "{dots:?}");
        }
        let t = traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [2, 32, 16, 2]
        );
    }
}
