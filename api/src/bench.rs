//! `tramite bench`: N concurrent P06 happy paths end to end on a durable
//! database, tasks completed programmatically, simulated connectors run by
//! the worker pool. Prints instances/s, commands/s, command latency
//! percentiles and peak memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tramite_engine::runtime::{CompleteTask, Engine, EngineConfig, PublishMessage, StartInstance};
use tramite_engine::store::tasks::Filter;

/// Benchmark settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Instances in all.
    pub(crate) instances: usize,
    /// Concurrent clients, each driving one instance at a time.
    pub(crate) clients: usize,
    /// Database URL; a fresh SQLite file in a temporary folder when absent.
    pub(crate) database_url: Option<String>,
    /// Engines sharing the database (more than one needs PostgreSQL);
    /// client `i` sends its commands to engine `i % nodes`.
    pub(crate) nodes: usize,
    /// PostgreSQL write lanes per engine (`None`: the engine's default).
    pub(crate) writers: Option<usize>,
}

/// What was measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) instances: usize,
    pub(crate) seconds: f64,
    pub(crate) commands: u64,
    pub(crate) commits: u64,
    pub(crate) latencies_ms: Vec<f64>,
    pub(crate) peak_rss_mb: f64,
    pub(crate) database: String,
    pub(crate) nodes: usize,
}

impl Report {
    /// The `p`-quantile of command latency, ms.
    pub(crate) fn pct(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }
}

/// The `p`-quantile of sorted values (0 when there are none).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |p: f64| self.pct(p);
        writeln!(f, "database            {}", self.database)?;
        writeln!(f, "engines             {}", self.nodes)?;
        writeln!(f, "instances           {}", self.instances)?;
        writeln!(f, "elapsed             {:.2} s", self.seconds)?;
        writeln!(
            f,
            "instances/s         {:.1}",
            self.instances as f64 / self.seconds
        )?;
        writeln!(
            f,
            "commands/s          {:.1}",
            self.commands as f64 / self.seconds
        )?;
        writeln!(
            f,
            "commands per commit {:.1}",
            self.commands as f64 / self.commits.max(1) as f64
        )?;
        writeln!(f, "latency p50         {:.2} ms", pct(0.50))?;
        writeln!(f, "latency p99         {:.2} ms", pct(0.99))?;
        writeln!(f, "latency max         {:.2} ms", pct(1.0))?;
        write!(f, "peak RSS            {:.1} MB", self.peak_rss_mb)
    }
}

pub(crate) fn peak_rss_mb() -> f64 {
    status_mb("/proc/self/status", "VmHWM:")
}

/// Resident memory now, MB.
pub(crate) fn rss_mb() -> f64 {
    status_mb("/proc/self/status", "VmRSS:")
}

/// A line of a `/proc/<pid>/status` file in kB, as MB (0 where there is no /proc).
pub(crate) fn status_mb(status: &str, field: &str) -> f64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// What a client sends at each task of the happy path.
pub(crate) fn answer(node: &str, n: usize) -> Option<(&'static str, Value)> {
    Some(match node {
        "recibir_llamada" => ("atendida", json!({})),
        "identificar_cliente" => (
            "continuar",
            json!({"nombre_cliente": format!("Cliente {n}"), "servicio_solicitado": "internet_fibra", "ci": format!("{}", 1_000_000 + n)}),
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

async fn timed<T>(latencies: &Mutex<Vec<f64>>, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    // Read before waiting for the lock, which other clients hold too.
    let ms = start.elapsed().as_secs_f64() * 1_000.0;
    latencies.lock().await.push(ms);
    out
}

/// One instance from start to end.
pub(crate) async fn drive(
    engine: &Engine,
    changes: &mut tokio::sync::broadcast::Receiver<Arc<str>>,
    n: usize,
    latencies: &Mutex<Vec<f64>>,
) -> Result<(), tramite_engine::Error> {
    let phone = format!("7{:07}", n % 10_000_000);
    let id = timed(
        latencies,
        engine.start(StartInstance {
            code: "OPE-SUM-VEN-P06".to_owned(),
            business_key: format!("BENCH-{n}"),
            channel: "ivr".to_owned(),
            data: object(json!({"telefono": phone})),
            actor: "bench".to_owned(),
            request_id: None,
        }),
    )
    .await?;
    let mut published = false;
    let filter = Filter {
        instance_id: Some(id.clone()),
        limit: 10,
        ..Filter::default()
    };
    let child_filter = |child: String| Filter {
        instance_id: Some(child),
        limit: 10,
        ..Filter::default()
    };
    let mut child: Option<String> = None;
    loop {
        // Changes already committed are in what the reads below see: only a
        // change after this point is worth waking up for. (Without this, a
        // client woke for its own earlier commands and read everything again
        // for nothing: 18 reads of the instance per request instead of 8.)
        while changes.try_recv().is_ok() {}
        let mut tasks = engine.tasks(&filter).await?;
        if tasks.is_empty() {
            if child.is_none() {
                child = engine.children(&id).await?.into_iter().next().map(|c| c.id);
            }
            if let Some(c) = &child {
                tasks = engine.tasks(&child_filter(c.clone())).await?;
            }
        }
        if let Some(task) = tasks.first() {
            let (outcome, data) = answer(&task.node_id, n).unwrap_or(("", json!({})));
            timed(
                latencies,
                engine.complete(CompleteTask {
                    task: task.id.clone(),
                    user: "bench".to_owned(),
                    outcome: outcome.to_owned(),
                    data: object(data),
                    roles: None,
                }),
            )
            .await?;
            if task.node_id == "solicitar_requisitos" && !published {
                published = true;
                timed(
                    latencies,
                    engine.publish(PublishMessage {
                        name: "requisitos_whatsapp".to_owned(),
                        key: phone.clone(),
                        payload: json!({"media": ["ci.jpg"]}),
                        // Unique per instance: a database that holds an
                        // earlier run would take a per-run number as a duplicate.
                        id: format!("wamid.bench.{id}"),
                        ttl_ms: 3_600_000,
                    }),
                )
                .await?;
            }
            continue;
        }
        let instance = engine.instance(&id).await?;
        if instance.status != "running" {
            return Ok(());
        }
        // Waiting for a job (NAF, GIS, Smartflex) run by the worker pool:
        // sleep until this instance changes (or re-check after a while).
        let deadline = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                changed = changes.recv() => match changed {
                    Ok(changed) if *changed == *id || child.as_deref() == Some(&*changed) => break,
                    Ok(_) => continue,
                    Err(_) => break,
                },
                _ = &mut deadline => break,
            }
        }
    }
}

/// Runs the benchmark.
pub(crate) async fn run(settings: Settings) -> Result<Report, tramite_engine::Error> {
    let dir = std::env::temp_dir().join(format!("tramite-bench-{}", uuid::Uuid::now_v7().simple()));
    let url = match &settings.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&dir).map_err(|source| tramite_engine::Error::Read {
                path: dir.clone(),
                source,
            })?;
            format!("sqlite://{}/bench.db", dir.display())
        }
    };
    let sims = tramite_connectors::Simulators::new();
    let mut engines = Vec::new();
    for node in 0..settings.nodes.max(1) {
        let mut config = EngineConfig::new(url.clone());
        config.catalog = tramite_connectors::catalog();
        config.connectors = sims.connectors();
        config.workers = 256;
        config.poll = Duration::from_millis(5);
        config.node_name = format!("bench-{node}");
        if let Some(writers) = settings.writers {
            config.writers = writers;
        }
        let engine = Engine::open(config).await?;
        engine.deploy_dir(std::path::Path::new("processes")).await?;
        engine.start_workers();
        engines.push(engine);
    }
    // A client hears of a change whichever engine made it (a job of its
    // instance may run on another node), as a UI refreshed by any node would.
    // With one engine, its own channel serves (no hop through a forwarder).
    let (changed, _) = tokio::sync::broadcast::channel::<Arc<str>>(4_096);
    for engine in engines.iter().filter(|_| engines.len() > 1) {
        let mut from = engine.changes();
        let to = changed.clone();
        tokio::spawn(async move {
            loop {
                match from.recv().await {
                    Ok(id) => {
                        let _ = to.send(id);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    let counter = |f: fn(&tramite_engine::runtime::Stats) -> u64| -> u64 {
        engines.iter().map(|e| f(e.stats())).sum()
    };
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(settings.instances * 20)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let commands =
        |s: &tramite_engine::runtime::Stats| s.commands.load(std::sync::atomic::Ordering::Relaxed);
    let commits =
        |s: &tramite_engine::runtime::Stats| s.commits.load(std::sync::atomic::Ordering::Relaxed);
    let commands_before = counter(commands);
    let commits_before = counter(commits);
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..settings.clients.max(1) {
        let engine = engines[client % engines.len()].clone();
        let mut changes = if engines.len() > 1 {
            changed.subscribe()
        } else {
            engine.changes()
        };
        let latencies = Arc::clone(&latencies);
        let next = Arc::clone(&next);
        let total = settings.instances;
        clients.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return Ok::<(), tramite_engine::Error>(());
                }
                drive(&engine, &mut changes, n, &latencies).await?;
            }
        }));
    }
    for c in clients {
        c.await.expect("client task")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let commands = counter(commands) - commands_before;
    let commits = counter(commits) - commits_before;
    for engine in engines {
        engine.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut latencies = Arc::try_unwrap(latencies)
        .expect("clients done")
        .into_inner();
    latencies.sort_by(f64::total_cmp);
    Ok(Report {
        instances: settings.instances,
        seconds,
        commands,
        commits,
        latencies_ms: latencies,
        peak_rss_mb: peak_rss_mb(),
        database: if url.starts_with("sqlite") {
            "SQLite (WAL, log synced before every answer)".to_owned()
        } else {
            "PostgreSQL".to_owned()
        },
        nodes: settings.nodes.max(1),
    })
}
