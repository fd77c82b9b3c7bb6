//! `tramite perf`: the performance suite. One command runs every benchmark
//! of `docs/benchmarks.md` on each backend — SQLite, PostgreSQL with one
//! node, PostgreSQL with two — prints one table against the aims and writes
//! every number as JSON.
//!
//! In-process numbers come from [`crate::bench`] and [`crate::bench_http`];
//! what a deployment would see comes from real `tramite serve` processes
//! (this same executable) driven over loopback HTTP: P06 end to end,
//! start-up time and resident memory with many waiting instances.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tramite_engine::runtime::{Engine, EngineConfig};

use crate::Error;

/// Suite settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Small sizes: checks that every part runs (seconds, not minutes).
    pub(crate) quick: bool,
    /// A PostgreSQL server (`postgres://user@host:port`) on which the suite
    /// may create and drop databases named `tramite_perf_*`; PostgreSQL is
    /// skipped without it.
    pub(crate) postgres: Option<String>,
    /// Where the JSON goes.
    pub(crate) json: PathBuf,
    /// Where the table goes as Markdown, if anywhere (docs/benchmarks.md
    /// takes it as it is).
    pub(crate) markdown: Option<PathBuf>,
    /// PostgreSQL write lanes in all, divided among a run's nodes.
    pub(crate) writers: usize,
}

/// How much work each benchmark does.
#[derive(Debug, Clone, Copy, Serialize)]
struct Size {
    /// P06 instances driven in-process.
    instances: usize,
    /// P06 instances driven over HTTP.
    http_instances: usize,
    /// Clients of the P06 runs and the inbox reads.
    clients: usize,
    /// Client counts of the completion runs.
    completion_clients: [usize; 2],
    /// Open tasks in the database of the inbox benchmark.
    inbox_tasks: usize,
    /// Requests per inbox or completion phase.
    requests: usize,
    /// Waiting instances of the memory benchmark.
    waiting: usize,
}

impl Size {
    fn of(quick: bool, postgres: bool) -> Size {
        match (quick, postgres) {
            (true, _) => Size {
                instances: 40,
                http_instances: 20,
                clients: 8,
                completion_clients: [8, 32],
                inbox_tasks: 3_000,
                requests: 300,
                waiting: 2_000,
            },
            // PostgreSQL runs take several times longer per instance here
            // (see docs/benchmarks.md): fewer of them keep the suite short.
            (false, true) => Size {
                instances: 1_000,
                http_instances: 500,
                clients: 64,
                completion_clients: [64, 256],
                inbox_tasks: 1_000_000,
                requests: 5_000,
                waiting: 100_000,
            },
            (false, false) => Size {
                instances: 3_000,
                http_instances: 1_500,
                clients: 64,
                completion_clients: [64, 256],
                inbox_tasks: 1_000_000,
                requests: 20_000,
                waiting: 100_000,
            },
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Measurement {
    backend: &'static str,
    nodes: usize,
    /// Stable id, e.g. `p06_in_process`.
    name: &'static str,
    /// What a reader of the table sees.
    label: String,
    clients: Option<usize>,
    value: f64,
    unit: &'static str,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    aim: Option<Aim>,
}

/// An aim of issue #8 and whether this run met it.
#[derive(Debug, Clone, Serialize)]
struct Aim {
    text: &'static str,
    met: bool,
}

/// The whole run, as written to JSON.
#[derive(Debug, Serialize)]
struct Document {
    date_ms: i64,
    machine: Value,
    commit: Option<String>,
    quick: bool,
    sizes: Value,
    seconds: f64,
    measurements: Vec<Measurement>,
}

/// Runs the suite; prints the table as it goes and at the end.
pub(crate) async fn run(settings: Settings, out: &mut impl std::io::Write) -> Result<(), Error> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("tramite-perf-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).map_err(Error::Output)?;
    let users = write_users(&dir)?;
    let mut all = Vec::new();
    let mut sizes = serde_json::Map::new();

    let size = Size::of(settings.quick, false);
    sizes.insert("sqlite".into(), json!(size));
    let sqlite = Backend::Sqlite { dir: dir.clone() };
    let run = Run {
        nodes: 1,
        size,
        users: &users,
        writers: None,
    };
    for m in suite(&sqlite, run, out).await? {
        all.push(m);
    }
    if let Some(server) = &settings.postgres {
        let size = Size::of(settings.quick, true);
        sizes.insert("postgres".into(), json!(size));
        let pg = Backend::Postgres {
            server: server.trim_end_matches('/').to_owned(),
        };
        // One budget of write lanes, divided among the nodes: the same
        // write concurrency on the database's cores either way.
        let run = |nodes: usize| Run {
            nodes,
            size,
            users: &users,
            writers: Some((settings.writers / nodes).max(1)),
        };
        let one = suite(&pg, run(1), out).await?;
        let two = suite(&pg, run(2), out).await?;
        all.extend(one);
        all.extend(two);
        all.extend(scale_out(&pg, run, out).await?);
    }
    let _ = std::fs::remove_dir_all(&dir);

    writeln!(out)?;
    table(&all, out)?;
    let document = Document {
        date_ms: now_ms(),
        machine: machine(),
        commit: commit(),
        quick: settings.quick,
        sizes: Value::Object(sizes),
        seconds: started.elapsed().as_secs_f64(),
        measurements: all,
    };
    let text = serde_json::to_string_pretty(&document)
        .map_err(|e| Error::Output(std::io::Error::other(e)))?;
    std::fs::write(&settings.json, text + "\n").map_err(Error::Output)?;
    if let Some(path) = &settings.markdown {
        std::fs::write(path, markdown(&document.measurements)).map_err(Error::Output)?;
    }
    writeln!(
        out,
        "\nwritten to {} ({:.0} s in all)",
        settings.json.display(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// Where the databases of one backend come from: each benchmark gets a new
/// one, so none measures what an earlier one left behind.
enum Backend {
    Sqlite { dir: PathBuf },
    Postgres { server: String },
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// A new, empty database's URL.
    async fn fresh(&self, what: &str) -> Result<String, Error> {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        match self {
            Backend::Sqlite { dir } => Ok(format!(
                "sqlite://{}",
                dir.join(format!("{what}-{tag}.db")).display()
            )),
            Backend::Postgres { server } => {
                let name = format!("tramite_perf_{what}_{}", &tag[tag.len() - 12..]);
                admin(server, &format!("CREATE DATABASE {name}")).await?;
                Ok(format!("{server}/{name}"))
            }
        }
    }

    /// Drops a database made by [`Backend::fresh`].
    async fn drop_database(&self, url: &str) -> Result<(), Error> {
        match self {
            Backend::Sqlite { .. } => {
                let path = url.trim_start_matches("sqlite://");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
                Ok(())
            }
            Backend::Postgres { server } => {
                let name = url.rsplit('/').next().unwrap_or_default();
                admin(
                    server,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )
                .await
            }
        }
    }
}

/// PostgreSQL's own counters of one database, to tell what a P06 instance
/// costs the server.
#[derive(Debug, Clone, Copy)]
struct Counters {
    wal_bytes: f64,
    commits: f64,
    rows: f64,
}

impl Counters {
    /// `None` on SQLite.
    async fn read(backend: &Backend, url: &str) -> Result<Option<Counters>, Error> {
        use sqlx::{Connection, Row};
        let Backend::Postgres { .. } = backend else {
            return Ok(None);
        };
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .map_err(|e| Error::Serve(format!("PostgreSQL at {url}: {e}")))?;
        // Backends report their statistics at most once a second and when
        // they close: wait for the engine's closed connections to report.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let row = sqlx::query(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
             xact_commit::float8, (tup_inserted + tup_updated + tup_deleted)::float8 \
             FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| Error::Serve(format!("pg_stat_database: {e}")))?;
        let get = |i: usize| row.try_get::<f64, _>(i).unwrap_or(0.0);
        Ok(Some(Counters {
            wal_bytes: get(0),
            commits: get(1),
            rows: get(2),
        }))
    }
}

/// One statement on the server's `postgres` database.
async fn admin(server: &str, sql: &str) -> Result<(), Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .map_err(|e| Error::Serve(format!("PostgreSQL at {server}: {e}")))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .map_err(|e| Error::Serve(format!("{sql}: {e}")))?;
    Ok(())
}

/// One backend's runs: how many nodes, how big.
#[derive(Clone, Copy)]
struct Run<'a> {
    nodes: usize,
    size: Size,
    /// The users file the `tramite serve` children read.
    users: &'a Path,
    /// Write lanes per node (PostgreSQL; `None`: the engine's default).
    writers: Option<usize>,
}

/// Every benchmark on one backend with `run.nodes` engine nodes.
async fn suite(
    backend: &Backend,
    run: Run<'_>,
    out: &mut impl std::io::Write,
) -> Result<Vec<Measurement>, Error> {
    let Run {
        nodes,
        size,
        writers,
        ..
    } = run;
    let name = backend.name();
    let mut found = Vec::new();
    let m = |label: String, id: &'static str| Measurement {
        backend: name,
        nodes,
        name: id,
        label,
        clients: None,
        value: 0.0,
        unit: "",
        p50_ms: None,
        p99_ms: None,
        aim: None,
    };
    match writers {
        Some(w) => writeln!(out, "== {name}, {nodes} node(s), {w} write lanes each")?,
        None => writeln!(out, "== {name}, {nodes} node(s)")?,
    }

    // P06 end to end, in-process.
    let url = backend.fresh("p06").await?;
    let before = Counters::read(backend, &url).await?;
    let r = crate::bench::run(crate::bench::Settings {
        instances: size.instances,
        clients: size.clients,
        database_url: Some(url.clone()),
        nodes,
        writers,
    })
    .await?;
    let after = Counters::read(backend, &url).await?;
    backend.drop_database(&url).await?;
    let per_second = r.instances as f64 / r.seconds;
    found.push(Measurement {
        clients: Some(size.clients),
        value: per_second,
        unit: "P06/s",
        p50_ms: Some(r.pct(0.5)),
        p99_ms: Some(r.pct(0.99)),
        aim: (name == "sqlite").then_some(Aim {
            text: "≥ 2,000 P06/s",
            met: per_second >= 2_000.0,
        }),
        ..m(
            "P06 end to end, in-process (command latency)".into(),
            "p06_in_process",
        )
    });
    show(found.last(), out)?;
    found.push(Measurement {
        value: r.commands as f64 / r.instances as f64,
        unit: "commands",
        ..m(
            format!(
                "engine commands per P06 instance ({:.1} per write transaction)",
                r.commands as f64 / r.commits.max(1) as f64
            ),
            "commands_per_p06",
        )
    });
    show(found.last(), out)?;
    if let (Some(before), Some(after)) = (before, after) {
        let per = |a: f64, b: f64| (b - a) / r.instances as f64;
        for (id, label, unit, value) in [
            (
                "wal_per_p06",
                "WAL written per P06 instance (whole run, both procedures)",
                "KB",
                per(before.wal_bytes, after.wal_bytes) / 1024.0,
            ),
            (
                "commits_per_p06",
                "PostgreSQL transactions per P06 instance (reads included)",
                "commits",
                per(before.commits, after.commits),
            ),
            (
                "rows_per_p06",
                "rows inserted, updated or deleted per P06 instance",
                "rows",
                per(before.rows, after.rows),
            ),
        ] {
            found.push(Measurement {
                value,
                unit,
                ..m(label.into(), id)
            });
            show(found.last(), out)?;
        }
    }

    // P06 end to end over HTTP, against `tramite serve` processes.
    let url = backend.fresh("http").await?;
    let r = p06_over_http(&url, run).await?;
    backend.drop_database(&url).await?;
    found.push(Measurement {
        clients: Some(size.clients),
        value: r.instances as f64 / r.seconds,
        unit: "P06/s",
        p50_ms: Some(crate::bench::percentile(&r.latencies_ms, 0.5)),
        p99_ms: Some(crate::bench::percentile(&r.latencies_ms, 0.99)),
        ..m(
            "P06 end to end over HTTP, `tramite serve` (command latency)".into(),
            "p06_http",
        )
    });
    show(found.last(), out)?;
    found.push(Measurement {
        value: r.peak_rss_mb,
        unit: "MB",
        ..m(
            "peak RSS of a `tramite serve` under that load".into(),
            "p06_http_rss",
        )
    });
    show(found.last(), out)?;

    // Inbox and completions over HTTP with many open tasks.
    let url = backend.fresh("inbox").await?;
    let r = crate::bench_http::run(crate::bench_http::Settings {
        tasks: size.inbox_tasks,
        clients: size.clients,
        requests: size.requests,
        database_url: Some(url.clone()),
        nodes,
        completion_clients: size.completion_clients.to_vec(),
        writers,
    })
    .await?;
    backend.drop_database(&url).await?;
    for p in &r.phases {
        let (id, completion) = match p.name {
            "inbox first page" => ("inbox_first_page", false),
            "inbox next pages" => ("inbox_next_pages", false),
            "badge counts" => ("badge_counts", false),
            crate::bench_http::PACED => ("task_completion_paced", false),
            _ => ("task_completion", true),
        };
        let p99 = p.pct(0.99);
        found.push(Measurement {
            clients: Some(p.clients),
            value: p.per_second(),
            unit: "req/s",
            p50_ms: Some(p.pct(0.5)),
            p99_ms: Some(p99),
            aim: (completion && p.clients == 64).then_some(Aim {
                text: "p99 < 20 ms at 64 clients",
                met: p99 < 20.0,
            }),
            ..m(
                if p.name == crate::bench_http::PACED {
                    format!(
                        "task completion over HTTP at half the rate of {} clients, each timed from when it was due, {} open tasks",
                        p.clients,
                        thousands(r.tasks as u64)
                    )
                } else {
                    format!(
                        "{} over HTTP, {} open tasks",
                        p.name,
                        thousands(r.tasks as u64)
                    )
                },
                id,
            )
        });
        show(found.last(), out)?;
        if p.failures > 0 {
            return Err(Error::Serve(format!(
                "{}: {} of {} requests failed",
                p.name,
                p.failures,
                p.latencies_ms.len()
            )));
        }
    }

    // Start-up and memory: what one node does, so measured with one.
    if nodes == 1 {
        let url = backend.fresh("memory").await?;
        let r = start_and_memory(&url, run).await?;
        backend.drop_database(&url).await?;
        found.push(Measurement {
            value: r.cold_start_ms,
            unit: "ms",
            aim: Some(Aim {
                text: "< 200 ms",
                met: r.cold_start_ms < 200.0,
            }),
            ..m(
                "start-up on a new database (schema, deploy processes/) to /readyz".into(),
                "start_up_empty",
            )
        });
        show(found.last(), out)?;
        found.push(Measurement {
            value: r.warm_start_ms,
            unit: "ms",
            aim: Some(Aim {
                text: "< 200 ms",
                met: r.warm_start_ms < 200.0,
            }),
            ..m(
                format!(
                    "start-up with {} waiting instances to /readyz",
                    thousands(r.waiting as u64)
                ),
                "start_up_loaded",
            )
        });
        show(found.last(), out)?;
        found.push(Measurement {
            value: r.peak_rss_mb,
            unit: "MB",
            aim: Some(Aim {
                text: "< 200 MB",
                met: r.peak_rss_mb < 200.0,
            }),
            ..m(
                format!(
                    "peak RSS of `tramite serve` with {} waiting instances, after inbox pages and completions",
                    thousands(r.waiting as u64)
                ),
                "rss_waiting",
            )
        });
        show(found.last(), out)?;
    }
    Ok(found)
}

/// Mirrored pairs behind each scale-out ratio: four runs each (one node,
/// two, two, one), in-process and over HTTP.
const SCALE_OUT_PAIRS: usize = 3;

/// How two nodes compare with one on PostgreSQL: P06 in-process and over
/// HTTP, each the median of [`SCALE_OUT_PAIRS`] ratios, each ratio from
/// runs side by side in the order one node, two, two, one (the two
/// nodes' sum over the one node's).
///
/// Not the two suites' own P06 numbers, which are minutes apart: this
/// machine's speed drifts by a third within an hour (docs/benchmarks.md),
/// and a ratio of runs that far apart measured the drift as much as the
/// nodes. Runs side by side share the machine's mood; the mirrored order
/// cancels a drift that is steady over the pair's minute, which a plain
/// one-then-two pair charges to the second run every time.
async fn scale_out<'a>(
    pg: &Backend,
    run: impl Fn(usize) -> Run<'a>,
    out: &mut impl std::io::Write,
) -> Result<Vec<Measurement>, Error> {
    writeln!(
        out,
        "== postgres, one node and two side by side, {SCALE_OUT_PAIRS} pairs (one, two, two, one)"
    )?;
    let mut in_process = Vec::new();
    let mut over_http = Vec::new();
    for _ in 0..SCALE_OUT_PAIRS {
        // P06/s in-process and over HTTP, summed over each node count's two runs.
        let mut sums = [(0.0, 0.0); 2];
        for nodes in [1, 2, 2, 1] {
            let r = run(nodes);
            let url = pg.fresh("p06").await?;
            let b = crate::bench::run(crate::bench::Settings {
                instances: r.size.instances,
                clients: r.size.clients,
                database_url: Some(url.clone()),
                nodes,
                writers: r.writers,
            })
            .await?;
            pg.drop_database(&url).await?;
            let url = pg.fresh("http").await?;
            let h = p06_over_http(&url, r).await?;
            pg.drop_database(&url).await?;
            let sum = &mut sums[nodes - 1];
            sum.0 += b.instances as f64 / b.seconds;
            sum.1 += h.instances as f64 / h.seconds;
        }
        let [one, two] = sums.map(|(a, b)| (a / 2.0, b / 2.0));
        let ratio = |two: f64, one: f64| 100.0 * two / one.max(f64::MIN_POSITIVE);
        in_process.push(ratio(two.0, one.0));
        over_http.push(ratio(two.1, one.1));
        writeln!(
            out,
            "  P06/s in-process {:.0} → {:.0} ({:.1} %), over HTTP {:.0} → {:.0} ({:.1} %)",
            one.0,
            two.0,
            in_process.last().copied().unwrap_or_default(),
            one.1,
            two.1,
            over_http.last().copied().unwrap_or_default()
        )?;
    }
    let mut found = Vec::new();
    for (id, what, mut ratios) in [
        ("scale_out_in_process", "P06 in-process", in_process),
        ("scale_out_http", "P06 over HTTP", over_http),
    ] {
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        found.push(Measurement {
            backend: "postgres",
            nodes: 2,
            name: id,
            label: format!(
                "two nodes ÷ one node, {what} (median of {SCALE_OUT_PAIRS} mirrored pairs, {:.0}–{:.0} %)",
                ratios[0],
                ratios[ratios.len() - 1]
            ),
            clients: None,
            value: median,
            unit: "%",
            p50_ms: None,
            p99_ms: None,
            aim: Some(Aim {
                text: "≥ 90 %",
                met: median >= 90.0,
            }),
        });
        show(found.last(), out)?;
    }
    Ok(found)
}

fn show(m: Option<&Measurement>, out: &mut impl std::io::Write) -> Result<(), Error> {
    if let Some(m) = m {
        writeln!(out, "  {}", line(m))?;
    }
    Ok(())
}

fn line(m: &Measurement) -> String {
    let ms = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.2}"));
    let aim = m.aim.as_ref().map_or(String::new(), |a| {
        format!("{} {}", a.text, if a.met { "met" } else { "NOT met" })
    });
    format!(
        "{:<9} {:>5} {:>7} {:>10.1} {:<6} {:>8} {:>8}  {:<28} {}",
        m.backend,
        m.nodes,
        m.clients.map_or("—".to_owned(), |c| c.to_string()),
        m.value,
        m.unit,
        ms(m.p50_ms),
        ms(m.p99_ms),
        aim,
        m.label
    )
}

fn table(all: &[Measurement], out: &mut impl std::io::Write) -> Result<(), Error> {
    writeln!(
        out,
        "{:<9} {:>5} {:>7} {:>10} {:<6} {:>8} {:>8}  {:<28} what",
        "backend", "nodes", "clients", "value", "unit", "p50 ms", "p99 ms", "aim"
    )?;
    for m in all {
        writeln!(out, "{}", line(m))?;
    }
    Ok(())
}

/// The table as Markdown: one row per measurement, aims marked.
fn markdown(all: &[Measurement]) -> String {
    let ms = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.1}"));
    let mut text = String::from(
        "| backend | nodes | what | clients | value | p50 ms | p99 ms | aim |\n\
         | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |\n",
    );
    for m in all {
        let aim = m.aim.as_ref().map_or(String::new(), |a| {
            format!(
                "{} {}",
                a.text,
                if a.met { "**met**" } else { "**not met**" }
            )
        });
        let value = if m.value >= 1_000.0 {
            thousands(m.value.round() as u64)
        } else {
            format!("{:.1}", m.value)
        };
        text.push_str(&format!(
            "| {} | {} | {} | {} | {value} {} | {} | {} | {aim} |\n",
            if m.backend == "sqlite" {
                "SQLite"
            } else {
                "PostgreSQL"
            },
            m.nodes,
            m.label,
            m.clients.map_or("—".to_owned(), |c| c.to_string()),
            m.unit,
            ms(m.p50_ms),
            ms(m.p99_ms),
        ));
    }
    text
}

/// A `tramite serve` child process, killed when dropped.
struct Node {
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn spawn(url: &str, users: &Path, writers: Option<usize>) -> Result<Node, Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(Error::Output)?
            .port();
        let exe = std::env::current_exe().map_err(Error::Output)?;
        let mut command = Command::new(exe);
        command.args([
            "serve",
            "--database-url",
            url,
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--users",
            &users.display().to_string(),
            "--processes",
            "processes",
        ]);
        if let Some(writers) = writers {
            command.args(["--writers", &writers.to_string()]);
        }
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(Error::Output)?;
        Ok(Node { child, port })
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until `/readyz` answers 200; how long since `since`.
    async fn ready(&mut self, client: &reqwest::Client, since: Instant) -> Result<f64, Error> {
        let url = format!("{}/readyz", self.base());
        while since.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Serve(format!("tramite serve exited: {status}")));
            }
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(since.elapsed().as_secs_f64() * 1_000.0);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Err(Error::Serve(format!("{url} not ready after 60 s")))
    }

    /// The child's peak resident memory (VmHWM), MB.
    fn peak_rss_mb(&self) -> f64 {
        crate::bench::status_mb(&format!("/proc/{}/status", self.child.id()), "VmHWM:")
    }
}

const TOKEN: &str = "perf-token";

/// A users file with one user who may do everything P06 and P02 ask.
fn write_users(dir: &Path) -> Result<PathBuf, Error> {
    let path = dir.join("users.yaml");
    std::fs::write(
        &path,
        format!(
            "users:\n  - name: perf\n    token_sha256: {}\n    roles: [channel, operator, agente_ventas_digitales, \
             responsable_centro_llamadas, jefe_instalaciones, tecnico_instalaciones]\n",
            tramite_api::http::auth::hash(TOKEN)
        ),
    )
    .map_err(Error::Output)?;
    Ok(path)
}

fn http_client(clients: usize) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(clients.max(1))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::Serve(format!("HTTP client: {e}")))
}

struct HttpP06 {
    instances: usize,
    seconds: f64,
    latencies_ms: Vec<f64>,
    peak_rss_mb: f64,
}

/// P06 happy paths driven over HTTP only, as a channel and the agents would:
/// start, each task from the inbox (filtered by the request's business key,
/// which OPR-PAS-P02's tasks share), the client's WhatsApp message. Waits for
/// the connectors' jobs by asking again every 2 ms.
async fn p06_over_http(url: &str, run: Run<'_>) -> Result<HttpP06, Error> {
    let Run {
        nodes,
        size,
        users,
        writers,
    } = run;
    let client = http_client(size.clients)?;
    let mut servers = Vec::new();
    for _ in 0..nodes.max(1) {
        let mut node = Node::spawn(url, users, writers)?;
        node.ready(&client, Instant::now()).await?;
        servers.push(node);
    }
    let bases: Arc<Vec<String>> = Arc::new(servers.iter().map(Node::base).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..size.clients.max(1) {
        let (client, bases, next) = (client.clone(), Arc::clone(&bases), Arc::clone(&next));
        let total = size.http_instances;
        clients.push(tokio::spawn(async move {
            let base = &bases[c % bases.len()];
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, Error>(latencies);
                }
                drive_http(&client, base, n, &mut latencies).await?;
            }
        }));
    }
    let mut latencies_ms = Vec::new();
    for c in clients {
        latencies_ms.extend(
            c.await
                .map_err(|e| Error::Serve(format!("client: {e}")))??,
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    let peak_rss_mb = servers.iter().map(Node::peak_rss_mb).fold(0.0, f64::max);
    Ok(HttpP06 {
        instances: size.http_instances,
        seconds,
        latencies_ms,
        peak_rss_mb,
    })
}

/// One request sent and its answer read; a non-2xx answer is an error.
async fn send(
    request: reqwest::RequestBuilder,
    latencies: Option<&mut Vec<f64>>,
) -> Result<Value, Error> {
    let t = Instant::now();
    let r = request
        .bearer_auth(TOKEN)
        .send()
        .await
        .map_err(|e| Error::Serve(format!("HTTP: {e}")))?;
    let status = r.status();
    let body = r
        .bytes()
        .await
        .map_err(|e| Error::Serve(format!("HTTP: {e}")))?;
    if let Some(l) = latencies {
        l.push(t.elapsed().as_secs_f64() * 1_000.0);
    }
    if !status.is_success() {
        return Err(Error::Serve(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The happy path's last task (P06's quality-control call).
const LAST_TASK: &str = "control_calidad";

/// How often a client asks again while a connector's job runs: a few
/// milliseconds, as a UI refreshed by server events would see it, without
/// the clients' reads crowding out the work they wait for.
const POLL: Duration = Duration::from_millis(5);

async fn drive_http(
    client: &reqwest::Client,
    base: &str,
    n: usize,
    latencies: &mut Vec<f64>,
) -> Result<(), Error> {
    let phone = format!("6{:07}", n % 10_000_000);
    let key = format!("PERF-{n}");
    let started = send(
        client
            .post(format!("{base}/api/v1/instances"))
            .json(&json!({
                "code": "OPE-SUM-VEN-P06", "business_key": key, "channel": "ivr",
                "data": {"telefono": phone}
            })),
        Some(latencies),
    )
    .await?;
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut published = false;
    let mut last = String::new();
    while Instant::now() < deadline {
        let page = send(
            client.get(format!("{base}/api/v1/tasks?business_key={key}&limit=10")),
            None,
        )
        .await?;
        if let Some(task) = page["items"].as_array().and_then(|items| items.first()) {
            let node = task["node_id"].as_str().unwrap_or_default();
            let (outcome, data) = crate::bench::answer(node, n).unwrap_or(("", json!({})));
            let task_id = task["id"].as_str().unwrap_or_default();
            send(
                client
                    .post(format!("{base}/api/v1/tasks/{task_id}/complete"))
                    .json(&json!({"outcome": outcome, "data": data})),
                Some(latencies),
            )
            .await?;
            if node == "solicitar_requisitos" && !published {
                published = true;
                send(
                    client.post(format!("{base}/api/v1/messages")).json(&json!({
                        "name": "requisitos_whatsapp", "key": phone,
                        "id": format!("wamid.perf.{n}"), "payload": {"media": ["ci.jpg"]}
                    })),
                    Some(latencies),
                )
                .await?;
            }
            node.clone_into(&mut last);
            continue;
        }
        // No task: a connector's job is running, or, after the last task
        // of the happy path, the request has ended.
        if last == LAST_TASK {
            let instance = send(client.get(format!("{base}/api/v1/instances/{id}")), None).await?;
            if instance["status"] != "running" {
                if instance["outcome"] != "venta_concretada" {
                    return Err(Error::Serve(format!(
                        "{key} ended {} / {}",
                        instance["status"], instance["outcome"]
                    )));
                }
                return Ok(());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    Err(Error::Serve(format!("{key} did not end in 120 s")))
}

struct StartAndMemory {
    cold_start_ms: f64,
    warm_start_ms: f64,
    waiting: usize,
    peak_rss_mb: f64,
}

/// Start-up on a new database; then, with `size.waiting` instances waiting
/// at a task, start-up again and the peak memory after some inbox pages and
/// completions.
async fn start_and_memory(url: &str, run: Run<'_>) -> Result<StartAndMemory, Error> {
    let Run {
        size,
        users,
        writers,
        ..
    } = run;
    let client = http_client(64)?;
    let t = Instant::now();
    let mut node = Node::spawn(url, users, writers)?;
    let cold_start_ms = node.ready(&client, t).await?;
    drop(node);

    // The waiting instances, written by an engine in this process.
    let mut config = EngineConfig::new(url.to_owned());
    config.catalog = tramite_connectors::catalog();
    config.connectors = tramite_connectors::Simulators::new().connectors();
    let engine = Engine::open(config).await?;
    engine.deploy_dir(Path::new("processes")).await?;
    crate::bench_http::seed(&engine, size.waiting, url.starts_with("sqlite")).await?;
    engine.shutdown().await;

    let t = Instant::now();
    let mut node = Node::spawn(url, users, writers)?;
    let warm_start_ms = node.ready(&client, t).await?;
    // Work as a call centre would: 64 agents read pages of the inbox and
    // complete the first task of a request.
    let base = node.base();
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    while ids.len() < size.requests.min(size.waiting) {
        let url = match &cursor {
            Some(c) => format!("{base}/api/v1/tasks?limit=100&cursor={c}"),
            None => format!("{base}/api/v1/tasks?limit=100"),
        };
        let page = send(client.get(url), None).await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        ids.extend(
            items
                .iter()
                .filter(|t| t["node_id"] == "recibir_llamada")
                .filter_map(|t| t["id"].as_str().map(str::to_owned)),
        );
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let mut agents = Vec::new();
    for _ in 0..64 {
        let (client, base, ids, next) = (
            client.clone(),
            base.clone(),
            Arc::clone(&ids),
            Arc::clone(&next),
        );
        agents.push(tokio::spawn(async move {
            while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                send(client.get(format!("{base}/api/v1/tasks?limit=50")), None).await?;
                send(
                    client
                        .post(format!("{base}/api/v1/tasks/{id}/complete"))
                        .json(&json!({"outcome": "atendida", "data": {}})),
                    None,
                )
                .await?;
            }
            Ok::<(), Error>(())
        }));
    }
    for a in agents {
        a.await.map_err(|e| Error::Serve(format!("agent: {e}")))??;
    }
    let peak_rss_mb = node.peak_rss_mb();
    drop(node);
    Ok(StartAndMemory {
        cold_start_ms,
        warm_start_ms,
        waiting: size.waiting,
        peak_rss_mb,
    })
}

/// 1000000 as "1 000 000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the numbers were measured on.
fn machine() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned());
    let memory_kb = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "memory_gib": memory_kb.map(|kb| (kb as f64 / 1_048_576.0 * 10.0).round() / 10.0),
        "os": std::env::consts::OS,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

fn commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_grouped_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1 000");
        assert_eq!(thousands(100_000), "100 000");
        assert_eq!(thousands(1_000_000), "1 000 000");
    }
}
