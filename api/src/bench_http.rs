//! `tramite bench-http`: the inbox and task completion over HTTP on loopback,
//! with a large number of open tasks in the database.
//!
//! A million tasks are not made by a million starts (that would take most of
//! an hour): the benchmark starts a thousand real P06 instances through the
//! engine, then copies them in SQL — instance, task and pending job, every id
//! suffixed and rewritten inside the instance's state — so that each copy is
//! a real instance the engine completes like any other. Copies get spread
//! due times, so inbox order is not insertion order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tramite_api::http::{AppState, Users, router};
use tramite_engine::runtime::{Engine, EngineConfig, StartInstance};

use crate::Error;

/// Benchmark settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Open tasks in the database before measuring.
    pub(crate) tasks: usize,
    /// Concurrent HTTP clients.
    pub(crate) clients: usize,
    /// Requests per measured phase.
    pub(crate) requests: usize,
    /// Database URL; a fresh SQLite file in a temporary folder when absent.
    pub(crate) database_url: Option<String>,
    /// Engines, each behind its own HTTP server, sharing the database (more
    /// than one needs PostgreSQL); client `i` calls server `i % nodes`.
    pub(crate) nodes: usize,
    /// The completion phase is run once for each of these client counts.
    pub(crate) completion_clients: Vec<usize>,
    /// PostgreSQL write lanes per engine (`None`: the engine's default).
    pub(crate) writers: Option<usize>,
}

const AGENT_TOKEN: &str = "bench-agent-token";
const ROLE: &str = "agente_ventas_digitales";
/// Real instances made through the engine; the rest are their copies.
const TEMPLATES: usize = 1_000;

/// One measured phase.
#[derive(Debug)]
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) clients: usize,
    pub(crate) seconds: f64,
    pub(crate) failures: usize,
    pub(crate) latencies_ms: Vec<f64>,
}

impl Phase {
    pub(crate) fn pct(&self, p: f64) -> f64 {
        crate::bench::percentile(&self.latencies_ms, p)
    }

    pub(crate) fn per_second(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.seconds
    }
}

/// What was measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) database: String,
    pub(crate) nodes: usize,
    pub(crate) tasks: i64,
    pub(crate) seed_seconds: f64,
    pub(crate) phases: Vec<Phase>,
    pub(crate) rss_mb: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "database      {}", self.database)?;
        writeln!(
            f,
            "open tasks    {} (seeded in {:.1} s)",
            self.tasks, self.seed_seconds
        )?;
        writeln!(f, "engines       {}", self.nodes)?;
        writeln!(
            f,
            "{:<22} {:>7} {:>8} {:>10} {:>9} {:>9} {:>9} {:>8}",
            "phase", "clients", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "failed"
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "{:<22} {:>7} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                p.name,
                p.clients,
                p.latencies_ms.len(),
                p.per_second(),
                p.pct(0.50),
                p.pct(0.99),
                p.pct(1.0),
                p.failures
            )?;
        }
        write!(
            f,
            "RSS at the end {:.1} MB (engine, server and clients)",
            self.rss_mb
        )
    }
}

/// Runs the benchmark.
pub(crate) async fn run(settings: Settings) -> Result<Report, Error> {
    let dir = std::env::temp_dir().join(format!(
        "tramite-bench-http-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let url = match &settings.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&dir).map_err(Error::Output)?;
            format!("sqlite://{}/bench.db", dir.display())
        }
    };
    let sims = tramite_connectors::Simulators::new();
    let mut engines = Vec::new();
    for node in 0..settings.nodes.max(1) {
        let mut config = EngineConfig::new(url.clone());
        config.catalog = tramite_connectors::catalog();
        config.connectors = sims.connectors();
        config.node_name = format!("bench-http-{node}");
        if let Some(writers) = settings.writers {
            config.writers = writers;
        }
        let engine = Engine::open(config).await?;
        engine.deploy_dir(std::path::Path::new("processes")).await?;
        engine.start_workers();
        engines.push(engine);
    }
    let engine = engines[0].clone();

    let started = Instant::now();
    seed(&engine, settings.tasks, url.starts_with("sqlite")).await?;
    let seed_seconds = started.elapsed().as_secs_f64();
    let tasks = open_tasks(&engine).await?;

    let mut servers = Vec::new();
    let mut bases = Vec::new();
    for engine in &engines {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Output)?;
        let address = listener.local_addr().map_err(Error::Output)?;
        let app = router(Arc::new(AppState {
            engine: engine.clone(),
            users: Users::default().with("bench", AGENT_TOKEN, &[ROLE]),
            metrics: None,
            connectors: sims.connectors(),
            webhooks: tramite_api::http::Webhooks::default(),
            health: Default::default(),
            census: Default::default(),
        }));
        servers.push(tokio::spawn(async move {
            axum::serve(crate::serve::no_delay(listener), app).await
        }));
        bases.push(format!("http://{address}"));
    }
    let bases = Arc::new(bases);
    let base_of = move |client_no: usize| bases[client_no % bases.len()].clone();
    let most_clients = settings
        .completion_clients
        .iter()
        .copied()
        .chain([settings.clients])
        .max()
        .unwrap_or(1);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(most_clients.max(1))
        .build()
        .map_err(|e| Error::Serve(format!("HTTP client: {e}")))?;

    let mut phases = Vec::new();
    // First pages, as an inbox refresh asks.
    let (c, b) = (client.clone(), base_of.clone());
    phases.push(
        measure("inbox first page", &settings, settings.clients, move |n| {
            let (client, base) = (c.clone(), b(n));
            async move {
                let page: PageSeen = get(&client, &format!("{base}/api/v1/tasks?limit=50")).await?;
                Some(page.items.len() == 50)
            }
        })
        .await,
    );
    // Deeper pages: a client walks on with the cursor of its last page.
    let cursors: Arc<Vec<Mutex<Option<String>>>> = Arc::new(
        (0..settings.clients.max(1))
            .map(|_| Mutex::new(None))
            .collect(),
    );
    let (c, b) = (client.clone(), base_of.clone());
    phases.push(
        measure(
            "inbox next pages",
            &settings,
            settings.clients,
            move |client_no| {
                let (client, base, cursors) = (c.clone(), b(client_no), Arc::clone(&cursors));
                async move {
                    let mut cursor = cursors[client_no].lock().await;
                    let url = match cursor.as_deref() {
                        Some(c) => format!("{base}/api/v1/tasks?limit=50&cursor={c}"),
                        None => format!("{base}/api/v1/tasks?limit=50"),
                    };
                    let page: PageSeen = get(&client, &url).await?;
                    // The last page (possibly empty) starts the walk again.
                    *cursor = page.next_cursor;
                    Some(page.items.len() <= 50)
                }
            },
        )
        .await,
    );
    let (c, b) = (client.clone(), base_of.clone());
    phases.push(
        measure("badge counts", &settings, settings.clients, move |n| {
            let (client, base) = (c.clone(), b(n));
            async move {
                let r: Value = get(&client, &format!("{base}/api/v1/tasks/counts")).await?;
                Some(r[0]["count"].as_i64()? > 0)
            }
        })
        .await,
    );
    // Completions: each request takes the next task of a shuffled list of
    // the copies' first tasks, so clients do not queue on one instance; each
    // client count gets tasks of its own.
    // One more share for the paced phase after them.
    let phases_of_completion = settings.completion_clients.len().max(1) + 1;
    let mut all_ids = first_tasks(&engine, settings.requests * phases_of_completion).await?;
    let complete = |ids: Arc<Vec<String>>| {
        let next = Arc::new(AtomicUsize::new(0));
        let (c, b) = (client.clone(), base_of.clone());
        move |n: usize| {
            let (client, base, ids, next) = (c.clone(), b(n), Arc::clone(&ids), Arc::clone(&next));
            async move {
                let id = ids.get(next.fetch_add(1, Ordering::Relaxed))?;
                let r = client
                    .post(format!("{base}/api/v1/tasks/{id}/complete"))
                    .bearer_auth(AGENT_TOKEN)
                    .json(&json!({"outcome": "atendida", "data": {}}))
                    .send()
                    .await
                    .ok()?;
                Some(r.status() == reqwest::StatusCode::NO_CONTENT)
            }
        }
    };
    for &clients in &settings.completion_clients {
        let take = settings.requests.min(all_ids.len());
        let ids = Arc::new(all_ids.split_off(all_ids.len() - take));
        phases.push(measure("task completion", &settings, clients, complete(ids)).await);
    }
    // The same clients at half the rate the first of them reached, each
    // request timed from when it was due to be sent: what agents see when
    // the server is not saturated, with every stall counted for each
    // request it delays (a client that waits on a stall sends nothing
    // meanwhile, so the saturated runs count a stall once per client).
    if let Some(first) = phases.iter().find(|p| p.name == "task completion") {
        let (clients, rate) = (first.clients, first.per_second() / 2.0);
        let take = settings.requests.min(all_ids.len());
        let ids = Arc::new(all_ids.split_off(all_ids.len() - take));
        phases.push(paced(PACED, take, clients, rate, complete(ids)).await);
    }
    let rss_mb = crate::bench::rss_mb();
    for server in servers {
        server.abort();
    }
    for engine in engines {
        engine.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report {
        database: if url.starts_with("sqlite") {
            "SQLite (WAL, log synced before every answer)".to_owned()
        } else {
            "PostgreSQL".to_owned()
        },
        nodes: settings.nodes.max(1),
        tasks,
        seed_seconds,
        phases,
        rss_mb,
    })
}

/// What the benchmark reads of an inbox page: like a client that shows
/// the rows, it reads every byte, but keeps only what it needs.
#[derive(serde::Deserialize)]
struct PageSeen {
    items: Vec<serde::de::IgnoredAny>,
    next_cursor: Option<String>,
}

async fn get<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: &str) -> Option<T> {
    let r = client.get(url).bearer_auth(AGENT_TOKEN).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// `settings.requests` calls of `call` from `settings.clients` clients at
/// once; a call answers whether it succeeded (`None`: it could not be made).
async fn measure<F, Fut>(name: &'static str, settings: &Settings, count: usize, call: F) -> Phase
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<bool>> + Send,
{
    let left = Arc::new(AtomicUsize::new(settings.requests));
    let started = Instant::now();
    let mut clients = Vec::new();
    for client_no in 0..count.max(1) {
        let (call, left) = (call.clone(), Arc::clone(&left));
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let t = Instant::now();
                let ok = call(client_no).await == Some(true);
                latencies.push(t.elapsed().as_secs_f64() * 1_000.0);
                failures += usize::from(!ok);
            }
            (latencies, failures)
        }));
    }
    gather(name, clients, started).await
}

/// The phase its clients measured: their latencies and failures together.
async fn gather(
    name: &'static str,
    clients: Vec<tokio::task::JoinHandle<(Vec<f64>, usize)>>,
    started: Instant,
) -> Phase {
    let count = clients.len();
    let mut latencies_ms = Vec::new();
    let mut failures = 0;
    for c in clients {
        if let Ok((l, f)) = c.await {
            latencies_ms.extend(l);
            failures += f;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    Phase {
        name,
        clients: count,
        seconds,
        failures,
        latencies_ms,
    }
}

/// The paced completion phase's name.
pub(crate) const PACED: &str = "task completion, paced";

/// `requests` calls from `clients` clients at `rate` a second in all, each
/// call due at its place in the schedule and timed from then, however late
/// the client could send it (no coordinated omission).
async fn paced<F, Fut>(
    name: &'static str,
    requests: usize,
    clients: usize,
    rate: f64,
    call: F,
) -> Phase
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<bool>> + Send,
{
    let clients = clients.max(1);
    let rate = rate.max(1.0);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for client_no in 0..clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            let mut index = client_no;
            while index < requests {
                let due = started + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(due).await;
                let ok = call(client_no).await == Some(true);
                latencies.push(due.elapsed().as_secs_f64() * 1_000.0);
                failures += usize::from(!ok);
                index += clients;
            }
            (latencies, failures)
        }));
    }
    gather(name, tasks, started.into_std()).await
}

/// Fills the database with `tasks` open tasks: [`TEMPLATES`] real P06
/// instances waiting at their first task, then copies of them.
pub(crate) async fn seed(engine: &Engine, tasks: usize, url_is_sqlite: bool) -> Result<(), Error> {
    let templates = tasks.clamp(1, TEMPLATES);
    for n in 0..templates {
        engine
            .start(StartInstance {
                code: "OPE-SUM-VEN-P06".to_owned(),
                business_key: format!("BENCH-T{n}"),
                channel: "ivr".to_owned(),
                data: crate::bench::object(json!({"telefono": format!("7{n:07}")})),
                actor: "bench".to_owned(),
                request_id: None,
            })
            .await?;
    }
    let copies = tasks.div_ceil(templates) - 1;
    let mut conn = engine
        .store()
        .pool()
        .acquire()
        .await
        .map_err(tramite_engine::Error::from)?;
    // The templates' timers (call-back escalation) move a day ahead, so that
    // a million of them do not fire during the run.
    sqlx::query("UPDATE jobs SET run_at = run_at + 86400000 WHERE status = 'ready'")
        .execute(&mut *conn)
        .await
        .map_err(tramite_engine::Error::from)?;
    // The templates by id, so that each copy reads them by key, not by a
    // scan of an ever larger instances table. Copies of one template are
    // written side by side (their ids share its prefix); on SQLite a large
    // page cache for this connection keeps the indexes' inserts in memory.
    if url_is_sqlite {
        sqlx::query("PRAGMA cache_size = -262144")
            .execute(&mut *conn)
            .await
            .map_err(tramite_engine::Error::from)?;
    }
    for sql in [
        "CREATE TEMPORARY TABLE bench_templates (id TEXT PRIMARY KEY)",
        "INSERT INTO bench_templates SELECT id FROM instances WHERE business_key LIKE 'BENCH-T%'",
    ] {
        sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .map_err(tramite_engine::Error::from)?;
    }
    // Copy k of a template: every id gets `.k`; the state names its task and
    // its timer job, so those ids are rewritten in it too.
    let suffix = "'.' || CAST(n.k AS TEXT)";
    let no_job = "'#no-job#'";
    let statements = [
        format!(
            "INSERT INTO instances (id, definition_id, code, version, business_key, channel, status, \
             outcome, state, revision, parent_id, parent_token, started_at, ended_at, cancel_reason) \
             SELECT i.id || {suffix}, i.definition_id, i.code, i.version, 'BENCH-C' || {suffix} || i.business_key, \
             i.channel, i.status, i.outcome, \
             replace(replace(i.state, t.id, t.id || {suffix}), COALESCE(j.id, {no_job}), COALESCE(j.id, {no_job}) || {suffix}), \
             i.revision, NULL, NULL, i.started_at + n.k, NULL, NULL \
             FROM bench_templates b CROSS JOIN n JOIN instances i ON i.id = b.id \
             JOIN tasks t ON t.instance_id = i.id \
             LEFT JOIN jobs j ON j.instance_id = i.id AND j.status = 'ready'"
        ),
        format!(
            "INSERT INTO tasks (id, instance_id, token, node_id, code, business_key, role, status, \
             created_at, due_at, due_order) \
             SELECT t.id || {suffix}, t.instance_id || {suffix}, t.token, t.node_id, t.code, \
             'BENCH-C' || {suffix} || t.business_key, t.role, t.status, t.created_at + n.k, \
             t.due_at + (n.k * 7919) % 3600000, COALESCE(t.due_at + (n.k * 7919) % 3600000, 9223372036854775807) \
             FROM bench_templates b CROSS JOIN n JOIN tasks t ON t.instance_id = b.id"
        ),
        format!(
            "INSERT INTO jobs (id, instance_id, token, node_id, kind, connector, operation, input, \
             idempotency_key, status, attempts, max_attempts, timeout_ms, run_at, created_at) \
             SELECT j.id || {suffix}, j.instance_id || {suffix}, j.token, j.node_id, j.kind, j.connector, \
             j.operation, j.input, j.idempotency_key || {suffix}, j.status, j.attempts, j.max_attempts, \
             j.timeout_ms, j.run_at, j.created_at \
             FROM bench_templates b CROSS JOIN n JOIN jobs j ON j.instance_id = b.id \
             WHERE j.status = 'ready'"
        ),
    ];
    // In slices of 50 copies per transaction, so the engine's writer is
    // never kept waiting long.
    let mut from = 1;
    while from <= copies {
        let to = (from + 49).min(copies);
        let range = format!(
            "WITH RECURSIVE n(k) AS (SELECT CAST({from} AS BIGINT) UNION ALL \
             SELECT k + 1 FROM n WHERE k < {to}) "
        );
        sqlx::query("BEGIN")
            .execute(&mut *conn)
            .await
            .map_err(tramite_engine::Error::from)?;
        for s in &statements {
            sqlx::query(sqlx::AssertSqlSafe(format!("{range}{s}")))
                .execute(&mut *conn)
                .await
                .map_err(tramite_engine::Error::from)?;
        }
        sqlx::query("COMMIT")
            .execute(&mut *conn)
            .await
            .map_err(tramite_engine::Error::from)?;
        from = to + 1;
    }
    let done = if url_is_sqlite {
        "ANALYZE; PRAGMA cache_size = -32000; DROP TABLE bench_templates"
    } else {
        "ANALYZE; DROP TABLE bench_templates"
    };
    sqlx::raw_sql(done)
        .execute(&mut *conn)
        .await
        .map_err(tramite_engine::Error::from)?;
    // The seeding's gigabyte of writes is written back now, not by a
    // checkpoint in the middle of the measured phases. (PostgreSQL's
    // CHECKPOINT needs a superuser or pg_checkpoint: without either, the
    // measurement goes on and may include it.)
    let checkpoint = if url_is_sqlite {
        "PRAGMA wal_checkpoint(TRUNCATE)"
    } else {
        "CHECKPOINT"
    };
    if let Err(e) = sqlx::raw_sql(checkpoint).execute(&mut *conn).await {
        tracing::warn!(error = %e, "no checkpoint after seeding");
    }
    Ok(())
}

async fn open_tasks(engine: &Engine) -> Result<i64, Error> {
    let mut conn = engine
        .store()
        .pool()
        .acquire()
        .await
        .map_err(tramite_engine::Error::from)?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE status = 'open'")
        .fetch_one(&mut *conn)
        .await
        .map_err(tramite_engine::Error::from)?;
    Ok(n)
}

/// `n` copies' open first tasks, in a scattered order.
async fn first_tasks(engine: &Engine, n: usize) -> Result<Vec<String>, Error> {
    let mut conn = engine
        .store()
        .pool()
        .acquire()
        .await
        .map_err(tramite_engine::Error::from)?;
    let mut ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM tasks WHERE status = 'open' AND node_id = 'recibir_llamada' \
         AND business_key LIKE 'BENCH-C%' ORDER BY id LIMIT $1",
    )
    .bind(n as i64 * 4)
    .fetch_all(&mut *conn)
    .await
    .map_err(tramite_engine::Error::from)?;
    use rand::seq::SliceRandom;
    ids.shuffle(&mut rand::rng());
    ids.truncate(n);
    Ok(ids)
}
