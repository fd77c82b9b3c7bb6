//! `tramite`: the command line of the engine (README.md, "The command
//! line", lists every command with its flags).
//!
//! - `tramite validate <files|dirs>`: every problem of every definition,
//!   compiler-style, exit 1 if any;
//! - `tramite graph <file> --format mermaid|dot`: the procedure as a diagram;
//! - `tramite schema`, `tramite openapi`: the definition format's JSON
//!   Schema, the HTTP API's OpenAPI document;
//! - `tramite serve`: the engine behind the HTTP API and the web UI;
//!   `tramite simulators`: NAF, GIS and Smartflex over HTTP;
//! - `tramite test`: scenario tests; `tramite demo`: one P06 request;
//! - `tramite bench`, `tramite bench-http`, `tramite perf`: the benchmarks.

mod bench;
mod bench_http;
mod demo;
mod perf;
mod serve;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tramite_engine::diagram::{self, Format};
use tramite_engine::library;
use tramite_engine::text::Lang;

/// mimalloc instead of glibc's allocator: the server allocates small objects
/// on many threads (rows, JSON, requests), where glibc's arenas contend.
/// Its `override` feature also takes C's `malloc`, so the bundled SQLite's
/// page cache and values (15 % of a busy server's samples went to glibc's
/// `malloc`/`free`) use it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// The engine refused or could not read something.
    #[error(transparent)]
    Engine(#[from] tramite_engine::Error),
    /// Writing the output failed (a closed pipe, a full disk).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// The server could not start.
    #[error("{0}")]
    Serve(String),
    /// `graph` draws one definition.
    #[error("{} is a folder; `graph` draws one definition file", path.display())]
    NotAFile {
        /// What was given.
        path: PathBuf,
    },
    /// A definition has problems; they were already printed.
    #[error("{count} problem(s) found")]
    Invalid {
        /// How many.
        count: usize,
    },
}

#[derive(Parser)]
#[command(
    name = "tramite",
    version,
    about = "A workflow engine for business procedures written in YAML"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check definitions and print every problem with its line and column.
    Validate {
        /// Definition files, or folders whose *.yaml files are definitions.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// `human`: with the source line; `short`: one line per problem (file:line:col).
        #[arg(long, value_enum, default_value_t = Style::Human)]
        style: Style,
        /// More definitions (files or folders) that `call` nodes may name,
        /// besides those given and those beside them.
        #[arg(long = "library", value_name = "PATH")]
        library: Vec<PathBuf>,
        /// Fail (exit 1) on warnings too, such as a read of a variable some
        /// path leaves unwritten; without it they are printed and the
        /// definitions still count as valid, as a deploy takes them.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Print a definition as a Mermaid or Graphviz diagram.
    Graph {
        /// The definition file.
        file: PathBuf,
        /// Diagram format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
        /// Language of labels.
        #[arg(long, value_enum, default_value_t = Language::Es)]
        lang: Language,
        /// More definitions (files or folders) that its `call` nodes may
        /// name, besides those beside it (a draft drawn away from them).
        #[arg(long = "library", value_name = "PATH")]
        library: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the definition format.
    Schema,
    /// Serve the HTTP API: opens (or creates) the database, deploys the
    /// procedures, runs the simulated connectors.
    Serve {
        /// Database URL (SQLite file created on first start, or PostgreSQL).
        #[arg(
            long,
            env = "TRAMITE_DATABASE_URL",
            hide_env_values = true,
            default_value = "sqlite://tramite.db"
        )]
        database_url: String,
        /// Address to listen on.
        #[arg(long, env = "TRAMITE_BIND", default_value = "127.0.0.1:8080")]
        bind: String,
        /// Procedures to deploy on start.
        #[arg(long, env = "TRAMITE_PROCESSES", default_value = "processes")]
        processes: PathBuf,
        /// Users file (YAML: users with name, token_sha256, roles). Without it,
        /// demo users are created and their tokens printed.
        #[arg(long, env = "TRAMITE_USERS")]
        users: Option<PathBuf>,
        /// Log format.
        #[arg(long, env = "TRAMITE_LOG_FORMAT", value_enum, default_value_t = serve::LogFormat::Pretty)]
        log_format: serve::LogFormat,
        /// Folder of HTTP connector files (one YAML per system, see
        /// connectors/README.md); systems without a file stay simulated.
        #[arg(long, env = "TRAMITE_CONNECTORS")]
        connectors: Option<PathBuf>,
        /// The engine message a WhatsApp message from a client becomes (the
        /// webhook is on when WHATSAPP_APP_SECRET and WHATSAPP_VERIFY_TOKEN are set).
        #[arg(
            long,
            env = "TRAMITE_WHATSAPP_MESSAGE",
            default_value = "requisitos_whatsapp"
        )]
        whatsapp_message: String,
        /// Country prefix removed from WhatsApp senders' numbers to get the correlation key.
        #[arg(long, env = "TRAMITE_WHATSAPP_COUNTRY_CODE", default_value = "591")]
        whatsapp_country_code: String,
        /// How long a node holds a job it claimed before another node may
        /// take it over (plus the job's own timeout), seconds.
        #[arg(long, env = "TRAMITE_LEASE_SECONDS", default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(1..))]
        lease_seconds: u64,
        /// PostgreSQL: write transactions this node runs side by side. Size
        /// the sum over all nodes to the database's cores (docs/scaling.md).
        #[arg(long, env = "TRAMITE_WRITERS", default_value_t = 8,
              value_parser = at_least_one)]
        writers: usize,
        /// Connector calls this node runs at once (each waits on a system:
        /// more than the cores is normal; fewer caps the load on the systems).
        #[arg(long, env = "TRAMITE_WORKERS", default_value_t = 32,
              value_parser = at_least_one)]
        workers: usize,
        /// Delete instances that ended longer ago than this (`180d`), with
        /// their tasks, history and messages, and messages no instance took
        /// once expired that long; kept for ever when absent (README, "Retention").
        #[arg(long, env = "TRAMITE_RETENTION")]
        retention: Option<tramite_engine::duration::Duration>,
    },
    /// Serve the NAF, GIS and Smartflex simulators over HTTP (the systems
    /// connectors/config/*.yaml point at), with optional faults.
    Simulators {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        bind: std::net::SocketAddr,
        /// Latency added to every call, ms.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Probability (0–1) that a call fails with 503.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Most calls a second each system takes; beyond, 429 with
        /// `Retry-After` (0: no limit).
        #[arg(long, default_value_t = 0)]
        rate_limit: u32,
    },
    /// Run the engine with its embedded defaults (SQLite file, simulated
    /// connectors) through one P06 request and print its history.
    Demo {
        /// Database URL; the SQLite file is created on first start.
        #[arg(long, default_value = "sqlite://tramite.db")]
        database_url: String,
        /// Where the procedures are (relative to the working directory).
        #[arg(long, env = "TRAMITE_PROCESSES", default_value = "processes")]
        processes: PathBuf,
        /// Language of labels.
        #[arg(long, value_enum, default_value_t = Language::Es)]
        lang: Language,
    },
    /// Run scenario files against the definitions, with scripted connector
    /// answers and a virtual clock; print expected and actual paths on failure.
    Test {
        /// Scenario files, or folders of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Where the definitions are.
        #[arg(long, default_value = "processes")]
        processes: PathBuf,
    },
    /// Run N concurrent P06 happy paths end to end and print throughput and latency.
    Bench {
        /// Instances in all.
        #[arg(long, default_value_t = 2_000)]
        instances: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Database URL (default: a fresh SQLite file in a temporary folder).
        #[arg(long)]
        database_url: Option<String>,
        /// Engines in this process sharing the database (PostgreSQL only
        /// beyond 1); clients are spread over them.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// PostgreSQL write lanes per engine (default: the engine's own, 8).
        #[arg(long)]
        writers: Option<usize>,
    },
    /// The performance suite: every benchmark on SQLite and, with
    /// --postgres, on PostgreSQL with one and two nodes; prints a table
    /// against the aims and writes the numbers as JSON. Run from the
    /// repository (it deploys processes/); build with --release.
    Perf {
        /// Small sizes: checks that every part runs, in seconds.
        #[arg(long)]
        quick: bool,
        /// A PostgreSQL server where databases `tramite_perf_*` may be created
        /// and dropped, e.g. postgres://postgres@127.0.0.1:5432
        #[arg(long)]
        postgres: Option<String>,
        /// Where to write the JSON.
        #[arg(long, default_value = "perf.json")]
        json: PathBuf,
        /// Also write the table as Markdown to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// PostgreSQL write lanes in all, divided among the nodes of a run,
        /// so that one and two nodes put the same write concurrency on the
        /// database (the two-node ratio then measures contention, not
        /// oversubscribed cores).
        #[arg(long, default_value_t = 8)]
        writers: usize,
    },
    /// Print the HTTP API's OpenAPI 3.1 document (as served at /api/openapi.json).
    Openapi,
    /// Inbox pages, badge counts and task completions over HTTP on loopback
    /// with many open tasks in the database; prints p50/p99 and requests/s.
    BenchHttp {
        /// Open tasks in the database before measuring.
        #[arg(long, default_value_t = 1_000_000)]
        tasks: usize,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Requests per measured phase.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Database URL (default: a fresh SQLite file in a temporary folder).
        #[arg(long)]
        database_url: Option<String>,
        /// Engines, each with its own HTTP server, sharing the database
        /// (PostgreSQL only beyond 1); clients are spread over them.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Client counts for the completion phase, run once per count
        /// (default: --clients).
        #[arg(long, value_delimiter = ',')]
        completion_clients: Vec<usize>,
        /// PostgreSQL write lanes per engine (default: the engine's own, 8).
        #[arg(long)]
        writers: Option<usize>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Style {
    Human,
    Short,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Clone, Copy, ValueEnum)]
enum Language {
    Es,
    En,
}

/// The async runtime the commands that run an engine share.
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Output)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Outbound HTTPS uses rustls with the ring provider, chosen once per
    // process (an error only means one is installed already).
    tramite_connectors::http::install_tls_provider();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Invalid { count }) => {
            eprintln!("error: {count} problem(s) found");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Validate {
            paths,
            style,
            library,
            deny_warnings,
        } => validate(
            &Validation {
                paths: &paths,
                extra: &library,
                style,
                deny_warnings,
            },
            &mut stdout,
        ),
        Command::Graph {
            file,
            format,
            lang,
            library: extra,
        } => {
            if file.is_dir() {
                return Err(Error::NotAFile { path: file });
            }
            let files = library::read(std::slice::from_ref(&file))?;
            let mut context = library::neighbours(&files)?;
            context.extend(library::read(&extra)?);
            let catalog = tramite_connectors::catalog();
            let (_, result) = library::compile(&files, &context, &catalog)
                .into_iter()
                .next()
                .expect("one file in, one result out");
            match result {
                Ok(compiled) => {
                    let format = match format {
                        GraphFormat::Mermaid => Format::Mermaid,
                        GraphFormat::Dot => Format::Dot,
                    };
                    let lang = match lang {
                        Language::Es => Lang::Es,
                        Language::En => Lang::En,
                    };
                    stdout.write_all(
                        diagram::render(&compiled.definition, format, lang).as_bytes(),
                    )?;
                    Ok(())
                }
                Err(diagnostics) => {
                    eprint!("{}", diagnostics.render(&files[0].text));
                    Err(Error::Invalid {
                        count: diagnostics.items.len(),
                    })
                }
            }
        }
        Command::Serve {
            database_url,
            bind,
            processes,
            users,
            log_format,
            connectors,
            whatsapp_message,
            whatsapp_country_code,
            lease_seconds,
            writers,
            workers,
            retention,
        } => {
            let secret = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
            let whatsapp = match (
                secret("WHATSAPP_APP_SECRET"),
                secret("WHATSAPP_VERIFY_TOKEN"),
            ) {
                (Some(app_secret), Some(verify_token)) => Some(tramite_api::http::WhatsApp {
                    app_secret,
                    verify_token,
                    message: whatsapp_message,
                    country_code: whatsapp_country_code,
                    ttl_ms: 7 * 86_400_000,
                }),
                (None, None) => None,
                // One without the other was the webhook quietly off, with
                // clients' documents never arriving.
                (Some(_), None) | (None, Some(_)) => {
                    return Err(Error::Serve(
                        "WHATSAPP_APP_SECRET and WHATSAPP_VERIFY_TOKEN go together: one is set \
                         and the other is not, so the WhatsApp webhook would be off; set both \
                         (or neither)"
                            .to_owned(),
                    ));
                }
            };
            let runtime = runtime()?;
            runtime.block_on(serve::run(
                serve::Settings {
                    // Like the WhatsApp secrets, from the environment only.
                    session_key: std::env::var("TRAMITE_SESSION_KEY")
                        .ok()
                        .filter(|k| !k.trim().is_empty()),
                    database_url,
                    bind,
                    processes,
                    users,
                    log_format,
                    connectors,
                    whatsapp,
                    lease: std::time::Duration::from_secs(lease_seconds),
                    writers,
                    workers,
                    retention,
                },
                &mut stdout,
            ))
        }
        Command::Simulators {
            bind,
            latency_ms,
            error_rate,
            rate_limit,
        } => {
            let runtime = runtime()?;
            runtime.block_on(serve::simulators(
                bind,
                tramite_connectors::sim_http::StartFaults {
                    latency: std::time::Duration::from_millis(latency_ms),
                    error_rate,
                    rate_limit,
                },
                &mut stdout,
            ))
        }
        Command::Test { paths, processes } => {
            let runtime = runtime()?;
            runtime.block_on(scenarios(&paths, &processes, &mut stdout))
        }
        Command::Demo {
            database_url,
            processes,
            lang,
        } => {
            let runtime = runtime()?;
            let lang = match lang {
                Language::Es => Lang::Es,
                Language::En => Lang::En,
            };
            runtime.block_on(demo::run(&database_url, &processes, lang, &mut stdout))
        }
        Command::Bench {
            instances,
            clients,
            database_url,
            nodes,
            writers,
        } => {
            let runtime = runtime()?;
            let report = runtime.block_on(bench::run(bench::Settings {
                instances,
                clients,
                database_url,
                nodes,
                writers,
            }))?;
            writeln!(stdout, "{report}")?;
            Ok(())
        }
        Command::BenchHttp {
            tasks,
            clients,
            requests,
            database_url,
            nodes,
            completion_clients,
            writers,
        } => {
            let runtime = runtime()?;
            let report = runtime.block_on(bench_http::run(bench_http::Settings {
                tasks,
                clients,
                requests,
                database_url,
                nodes,
                completion_clients: if completion_clients.is_empty() {
                    vec![clients]
                } else {
                    completion_clients
                },
                writers,
            }))?;
            writeln!(stdout, "{report}")?;
            Ok(())
        }
        Command::Perf {
            quick,
            postgres,
            json,
            markdown,
            writers,
        } => {
            let runtime = runtime()?;
            runtime.block_on(perf::run(
                perf::Settings {
                    quick,
                    postgres,
                    json,
                    markdown,
                    writers,
                },
                &mut stdout,
            ))
        }
        Command::Openapi => {
            use utoipa::OpenApi;
            let doc = tramite_api::http::ApiDoc::openapi()
                .to_pretty_json()
                .map_err(|e| Error::Output(std::io::Error::other(e)))?;
            writeln!(stdout, "{doc}")?;
            Ok(())
        }
        Command::Schema => {
            stdout.write_all(tramite_engine::schema::definition_schema_text().as_bytes())?;
            Ok(())
        }
    }
}

async fn scenarios(
    paths: &[PathBuf],
    processes: &std::path::Path,
    out: &mut impl Write,
) -> Result<(), Error> {
    let definitions: Vec<(String, String)> = library::read(&[processes.to_path_buf()])?
        .into_iter()
        .map(|f| (f.path.display().to_string(), f.text))
        .collect();
    let catalog = tramite_connectors::catalog();
    let (mut passed, mut failed) = (0, 0);
    let listed = library::list(paths)?;
    // A run that finds nothing to test must not pass: scenarios moved into
    // a subfolder (which is not searched) would leave CI green and untested.
    if listed.is_empty() {
        eprintln!("no scenario files (*.yaml, *.yml) in the paths given");
        return Err(Error::Invalid { count: 1 });
    }
    for path in listed {
        let name = path.display().to_string();
        // One file that cannot be read (not UTF-8, say) fails alone.
        let file = match library::read_file(path) {
            Ok(file) => file,
            Err(e) => {
                failed += 1;
                writeln!(out, "FAIL {name}: {e}")?;
                continue;
            }
        };
        // Read as plain YAML first: only there does serde_yaml refuse a key
        // written twice (into the scenario's maps the last one silently
        // wins: a second `answers` entry for one operation dropped the
        // first, and the retry it scripted was never tested).
        let read = serde_yaml::from_str::<serde_yaml::Value>(&file.text)
            .and_then(|_| serde_yaml::from_str(&file.text));
        let scenario: tramite_engine::runtime::scenario::Scenario = match read {
            Ok(s) => s,
            Err(e) => {
                failed += 1;
                let mut text = e.to_string();
                // serde_yaml names the mapping's first line; the repeat is
                // further down.
                if text.contains("duplicate entry")
                    && let Some(at) =
                        tramite_engine::position::PositionIndex::build(&file.text).first_duplicate()
                {
                    text.push_str(&format!(" (written again at {at})"));
                }
                writeln!(out, "FAIL {name}: {text}")?;
                continue;
            }
        };
        let dir = std::env::temp_dir().join(format!(
            "tramite-scenario-{}",
            uuid::Uuid::now_v7().simple()
        ));
        let report =
            match tramite_engine::runtime::scenario::run(&scenario, &definitions, &catalog, &dir)
                .await
            {
                Ok(report) => report,
                Err(e) => {
                    // One scenario that cannot run does not stop the others.
                    failed += 1;
                    writeln!(out, "FAIL {name}: {e}")?;
                    continue;
                }
            };
        if report.passed() {
            passed += 1;
            writeln!(out, "ok   {name} — {}", report.name)?;
        } else {
            failed += 1;
            writeln!(out, "FAIL {name} — {}", report.name)?;
            for f in &report.failures {
                writeln!(out, "     {f}")?;
            }
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    if failed > 0 {
        return Err(Error::Invalid { count: failed });
    }
    Ok(())
}

/// What `tramite validate` was asked.
struct Validation<'a> {
    paths: &'a [PathBuf],
    /// `--library`.
    extra: &'a [PathBuf],
    style: Style,
    deny_warnings: bool,
}

fn validate(
    &Validation {
        paths,
        extra,
        style,
        deny_warnings,
    }: &Validation<'_>,
    out: &mut impl Write,
) -> Result<(), Error> {
    // Every file is checked: one that cannot be read (missing, not UTF-8)
    // is a problem of its own, not the end of the run.
    let listed = library::list(paths)?;
    if listed.is_empty() {
        eprintln!("no definition files (*.yaml, *.yml) in the paths given");
        return Err(Error::Invalid { count: 1 });
    }
    let mut problems = 0;
    let mut warnings = 0;
    let mut files = Vec::new();
    let mut read = |path, into: &mut Vec<library::SourceFile>| match library::read_file(path) {
        Ok(file) => into.push(file),
        Err(e) => {
            problems += 1;
            eprintln!("{e}");
        }
    };
    for path in listed {
        read(path, &mut files);
    }
    let mut context = library::neighbours(&files)?;
    // The library's files too: one that cannot be read is a problem, and
    // the rest are still checked against what can be.
    for path in library::list(extra)? {
        read(path, &mut context);
    }
    let catalog = tramite_connectors::catalog();
    for ((path, result), file) in library::compile(&files, &context, &catalog)
        .into_iter()
        .zip(&files)
    {
        let report = |diagnostics: &tramite_engine::diagnostic::Diagnostics| match style {
            Style::Human => eprint!("{}", diagnostics.render(&file.text)),
            Style::Short => eprintln!("{diagnostics}"),
        };
        match result {
            Ok(compiled) => {
                let n = compiled.warnings.items.len();
                writeln!(
                    out,
                    "ok: {} ({} v{}, {} nodes{})",
                    path.display(),
                    compiled.definition.code,
                    compiled.definition.version,
                    compiled.definition.nodes.len(),
                    if n > 0 {
                        format!(", {n} warning(s)")
                    } else {
                        String::new()
                    }
                )?;
                if n > 0 {
                    warnings += n;
                    report(&compiled.warnings);
                }
            }
            Err(diagnostics) => {
                problems += diagnostics.items.len();
                report(&diagnostics);
            }
        }
    }
    if deny_warnings {
        problems += warnings;
    }
    if problems > 0 {
        return Err(Error::Invalid { count: problems });
    }
    writeln!(out, "{} definition(s) valid", files.len())?;
    Ok(())
}

/// A count of at least one (`--workers 0` was quietly read as 1).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
