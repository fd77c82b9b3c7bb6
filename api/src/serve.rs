//! `tramite serve`: the engine behind the HTTP API.

use std::path::PathBuf;
use std::sync::Arc;

use tramite_api::http::{AppState, Users, Webhooks, auth::UsersFile, router};
use tramite_engine::runtime::{Engine, EngineConfig};

use crate::Error;

/// Log output.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// For people.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The shortest retention `serve` takes.
pub(crate) const MIN_RETENTION: std::time::Duration = std::time::Duration::from_secs(86_400);

/// What `serve` needs.
pub(crate) struct Settings {
    pub(crate) database_url: String,
    pub(crate) bind: String,
    pub(crate) processes: PathBuf,
    pub(crate) users: Option<PathBuf>,
    pub(crate) log_format: LogFormat,
    pub(crate) connectors: Option<PathBuf>,
    pub(crate) whatsapp: Option<tramite_api::http::WhatsApp>,
    pub(crate) lease: std::time::Duration,
    /// PostgreSQL write lanes.
    pub(crate) writers: usize,
    /// Connector calls at once.
    pub(crate) workers: usize,
    /// Signs web sessions (`TRAMITE_SESSION_KEY`); random when absent.
    pub(crate) session_key: Option<String>,
    /// How long ended instances are kept; for ever when absent.
    pub(crate) retention: Option<tramite_engine::duration::Duration>,
}

fn token() -> String {
    (0..32)
        .map(|_| format!("{:x}", rand::random_range(0..16u8)))
        .collect()
}

/// Runs until Ctrl-C (or SIGTERM): then stops taking requests, lets those in
/// flight finish, and shuts the engine down (workers, then the writer).
pub(crate) async fn run(s: Settings, out: &mut impl std::io::Write) -> Result<(), Error> {
    // A purge cannot be undone: `180m` (minutes) typed for 180 months would
    // delete everything older than three hours.
    if let Some(keep) = &s.retention
        && keep.as_std() < MIN_RETENTION
    {
        return Err(Error::Serve(format!(
            "--retention {keep}: ended requests are kept at least a day (`1d`); `m` is minutes"
        )));
    }
    // A `RUST_LOG` that does not parse is said so, not quietly read as `info`.
    let (filter, bad_filter) = match std::env::var("RUST_LOG") {
        Ok(text) => match tracing_subscriber::EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(e) => (
                tracing_subscriber::EnvFilter::new("info"),
                Some(format!("RUST_LOG={text}: {e}")),
            ),
        },
        Err(_) => (tracing_subscriber::EnvFilter::new("info"), None),
    };
    // Logs go to stderr; stdout has the banner (and stays locked by the caller).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match s.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Some(why) = bad_filter {
        tracing::warn!(%why, "RUST_LOG not understood: logging at info");
    }
    let (users, demo) = match &s.users {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Serve(format!("cannot read {}: {e}", path.display())))?;
            let file: UsersFile = serde_yaml::from_str(tramite_engine::loader::without_bom(&text))
                .map_err(|e| Error::Serve(format!("{}: {e}", path.display())))?;
            let users = Users::from_file(file).map_err(|problems| {
                let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
                Error::Serve(format!("{}:\n{}", path.display(), lines.join("\n")))
            })?;
            (users, Vec::new())
        }
        None => {
            // Demo users (one deploys and settles incidents) with their
            // tokens printed are for a server only this machine reaches.
            if !only_this_machine(&s.bind) {
                return Err(Error::Serve(format!(
                    "--bind {}: without --users (or TRAMITE_USERS) the server makes demo users \
                     and prints their tokens, which is only for a server this machine alone \
                     reaches (--bind 127.0.0.1:8080); pass --users FILE (docs/api.md)",
                    s.bind
                )));
            }
            tracing::warn!(
                "development mode: demo users, tokens printed on stdout (pass --users FILE for real ones)"
            );
            let demo = vec![
                ("agente", token(), vec!["agente_ventas_digitales"]),
                (
                    "responsable",
                    token(),
                    vec!["responsable_centro_llamadas", "operator", "process_owner"],
                ),
                (
                    "instalaciones",
                    token(),
                    vec!["jefe_instalaciones", "tecnico_instalaciones"],
                ),
                ("canal", token(), vec!["channel"]),
            ];
            let mut users = Users::default();
            for (name, t, roles) in &demo {
                users = users.with(name, t, roles);
            }
            (users, demo)
        }
    };
    // Sessions signed with a key of this process alone end when it stops,
    // and another node refuses them: fine for one node, not for several.
    let users = match &s.session_key {
        Some(key) => users.with_session_key(key),
        None => {
            if !s.database_url.starts_with("sqlite") {
                tracing::warn!(
                    "TRAMITE_SESSION_KEY is not set: a web session begun on this node is refused by the others, and ends when this one restarts"
                );
            }
            users
        }
    };
    let sims = tramite_connectors::Simulators::new();
    let catalog = tramite_connectors::catalog();
    let mut connectors = sims.connectors();
    let mut remote = Vec::new();
    let mut from_files = std::collections::BTreeSet::new();
    if let Some(dir) = &s.connectors {
        for c in tramite_connectors::http::load_dir(dir, &catalog)
            .map_err(|e| Error::Serve(e.to_string()))?
        {
            remote.push(format!("{} → {}", c.system(), c.config().base_url));
            let name = c.system().to_owned();
            connectors = connectors.with(&name, Arc::new(c));
            from_files.insert(name);
        }
        // A system left out of the folder is simulated: said out loud, as
        // a sale "registered" in the simulator exists nowhere else.
        for system in catalog.connectors() {
            if !from_files.contains(&system.name) {
                tracing::warn!(system = %system.name, folder = %dir.display(), "no connector file: the system is simulated");
                remote.push(format!(
                    "{} → SIMULATED (no file for it in {})",
                    system.name,
                    dir.display()
                ));
            }
        }
    } else {
        // Without a folder every system is the engine's own simulator: fine
        // to try tramite out, a disaster in production (a sale "registered"
        // in memory exists nowhere else and is gone at the next start).
        for system in catalog.connectors() {
            tracing::warn!(system = %system.name, "no --connectors folder: the system is simulated in memory");
            remote.push(format!(
                "{} → SIMULATED in memory (no --connectors folder / TRAMITE_CONNECTORS)",
                system.name
            ));
        }
    }
    let mut config = EngineConfig::new(s.database_url.clone());
    config.catalog = catalog;
    config.connectors = connectors.clone();
    config.lease = s.lease;
    config.retention = s.retention.as_ref().map(|d| d.as_std());
    config.writers = s.writers;
    config.workers = s.workers;
    config.node_name = format!("{}-{}", s.bind, std::process::id());
    let engine = Engine::open(config).await?;
    let deployed = engine.deploy_dir(&s.processes).await?;
    engine.start_workers();
    let listener = tokio::net::TcpListener::bind(&s.bind)
        .await
        .map_err(|e| Error::Serve(format!("cannot listen on {}: {e}", s.bind)))?;
    let address = listener.local_addr().map_err(Error::Output)?;
    writeln!(
        out,
        "tramite listening on http://{address}  (database {})",
        without_password(&s.database_url)
    )?;
    for d in &deployed {
        writeln!(
            out,
            "  {} v{}{}",
            d.code,
            d.version,
            if d.new { " (new)" } else { "" }
        )?;
    }
    for r in &remote {
        writeln!(out, "  connector {r}")?;
    }
    for problem in deployed.iter().flat_map(|d| &d.warnings) {
        tracing::warn!(%problem, "a service task's timeout cuts its connector's tries short");
        writeln!(out, "  warning: {problem}")?;
    }
    writeln!(
        out,
        "  WhatsApp webhook {}",
        if s.whatsapp.is_some() {
            "on at /webhooks/whatsapp"
        } else {
            "off (set WHATSAPP_APP_SECRET and WHATSAPP_VERIFY_TOKEN)"
        }
    )?;
    if demo.is_empty() {
        writeln!(
            out,
            "users from {}; send `Authorization: Bearer <token>`",
            s.users
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )?;
    } else {
        writeln!(
            out,
            "development mode: demo users (pass --users FILE for real ones); send `Authorization: Bearer <token>`:"
        )?;
        for (name, t, roles) in &demo {
            writeln!(out, "  {name:<14} {t}  {}", roles.join(", "))?;
        }
    }
    // Histograms with buckets, not per-node quantiles: buckets add up
    // across the nodes sharing a database, quantiles do not.
    use metrics_exporter_prometheus::Matcher;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tramite_task_wait_seconds".to_owned()),
            &TASK_WAIT_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("tramite_job_duration_seconds".to_owned()),
                &JOB_DURATION_BUCKETS,
            )
        })
        .map_err(|e| Error::Serve(format!("cannot set the metrics' buckets: {e}")))?
        .install_recorder()
        .map_err(|e| Error::Serve(format!("cannot install the metrics recorder: {e}")))?;
    // Systems' health in the metrics even when nobody asks /readyz.
    let watched = connectors.clone();
    let health = tokio::spawn(async move {
        loop {
            tramite_api::http::check_systems(&watched).await;
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        }
    });
    let app = router(Arc::new(AppState {
        engine: engine.clone(),
        users,
        metrics: Some(metrics),
        connectors,
        webhooks: Webhooks {
            whatsapp: s.whatsapp,
        },
        health: Default::default(),
        census: tramite_api::http::CensusCache::fresh_for(tramite_api::http::CENSUS_FRESH),
    }));
    // After the signal, requests in flight get `DRAIN` to finish; a client
    // that never finishes sending one (or a connection kept open) does not
    // hold the engine's own shutdown back past it.
    let (signalled, heard) = tokio::sync::oneshot::channel::<()>();
    let server = std::future::IntoFuture::into_future(
        axum::serve(no_delay(listener), app).with_graceful_shutdown(async move {
            stop_signal().await;
            let _ = signalled.send(());
        }),
    );
    tokio::select! {
        served = server => served.map_err(Error::Output)?,
        () = async {
            if heard.await.is_ok() {
                tokio::time::sleep(DRAIN).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(seconds = DRAIN.as_secs(), "connections still open after the stop signal: stopping without them");
        }
    }
    health.abort();
    engine.shutdown().await;
    Ok(())
}

/// `tramite_task_wait_seconds`' buckets: from a task taken at once to one
/// left for days.
const TASK_WAIT_BUCKETS: [f64; 10] = [
    5.0, 30.0, 60.0, 300.0, 900.0, 3_600.0, 14_400.0, 28_800.0, 86_400.0, 259_200.0,
];

/// `tramite_job_duration_seconds`' buckets: a system's answer, up to the
/// longest timeouts.
const JOB_DURATION_BUCKETS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How long requests in flight may take to finish after the stop signal:
/// well inside `docker stop`'s 10 s and Kubernetes' 30 s before SIGKILL,
/// so that the engine's own shutdown still runs.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `bind` listens on loopback addresses only.
fn only_this_machine(bind: &str) -> bool {
    use std::net::ToSocketAddrs;
    bind.to_socket_addrs()
        .is_ok_and(|mut addresses| addresses.all(|a| a.ip().is_loopback()))
}

/// A database URL fit for a log: its password, if any, replaced by `***`.
pub(crate) fn without_password(url: &str) -> String {
    // `?password=…` (libpq's and sqlx's other spelling) first.
    let url = match url.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => url.to_owned(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    // The user information ends at the last `@` before the path.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url;
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url,
    }
}

/// Ctrl-C, or SIGTERM (what `docker stop`, systemd and Kubernetes send
/// first): either starts the graceful stop.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `tramite simulators`: the three simulators over HTTP until Ctrl-C or SIGTERM.
pub(crate) async fn simulators(
    bind: std::net::SocketAddr,
    faults: tramite_connectors::sim_http::StartFaults,
    out: &mut impl std::io::Write,
) -> Result<(), Error> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .try_init();
    let sims = tramite_connectors::Simulators::new();
    faults.apply(&sims);
    let server = tramite_connectors::sim_http::Server::start(bind, sims)
        .await
        .map_err(|e| Error::Serve(format!("cannot listen on {bind}: {e}")))?;
    writeln!(out, "simulators listening on http://{}", server.address())?;
    for system in ["naf", "gis", "smartflex"] {
        writeln!(out, "  {system:<10} {}", server.base_url(system))?;
    }
    writeln!(
        out,
        "faults: POST /_admin/<system>/faults {{\"latency_ms\", \"error_rate\", \"rate_limit_per_s\", \"outage\", \"fail_next\", \"refuse_next\", \"lose_next\", \"hold_next\", \"hold_ms\", \"clear\"}}"
    )?;
    out.flush()?;
    stop_signal().await;
    server.stop().await;
    Ok(())
}

/// Accepted connections send each write at once (`TCP_NODELAY`): a
/// response written in parts must not wait for the client's delayed
/// acknowledgement of the first (Nagle's algorithm, up to 40 ms on Linux).
pub(crate) fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_database_url_is_logged_without_its_password() {
        for (url, shown) in [
            (
                "postgres://tramite:s3cr@t@db:5432/tramite",
                "postgres://tramite:***@db:5432/tramite",
            ),
            (
                "postgres://tramite@db/tramite",
                "postgres://tramite@db/tramite",
            ),
            (
                "postgres://db/tramite?user=t&password=x&sslmode=require",
                "postgres://db/tramite?user=t&password=***&sslmode=require",
            ),
            ("sqlite://tramite.db", "sqlite://tramite.db"),
        ] {
            assert_eq!(super::without_password(url), shown, "{url}");
        }
    }
}
