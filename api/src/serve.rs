//! `tramite serve`: the engine behind the HTTP API.

use std::path::PathBuf;
use std::sync::Arc;

use tramite_api::http::{AppState, Users, auth::UsersFile, router};
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

/// What `serve` needs.
pub(crate) struct Settings {
    pub(crate) database_url: String,
    pub(crate) bind: String,
    pub(crate) processes: PathBuf,
    pub(crate) users: Option<PathBuf>,
    pub(crate) log_format: LogFormat,
}

fn token() -> String {
    (0..32)
        .map(|_| format!("{:x}", rand::random_range(0..16u8)))
        .collect()
}

/// Runs until Ctrl-C (or SIGTERM): then stops taking requests, lets those in
/// flight finish, and shuts the engine down (workers, then the writer).
pub(crate) async fn run(s: Settings, out: &mut impl std::io::Write) -> Result<(), Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr; stdout has the banner (and stays locked by the caller).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match s.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    let (users, demo) = match &s.users {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Serve(format!("cannot read {}: {e}", path.display())))?;
            let file: UsersFile = serde_yaml::from_str(&text)
                .map_err(|e| Error::Serve(format!("{}: {e}", path.display())))?;
            (Users::from_file(file), Vec::new())
        }
        None => {
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
    let sims = tramite_connectors::Simulators::new();
    let mut config = EngineConfig::new(s.database_url.clone());
    config.catalog = tramite_connectors::catalog();
    config.connectors = sims.connectors();
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
        s.database_url
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
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::Serve(format!("cannot install the metrics recorder: {e}")))?;
    let app = router(Arc::new(AppState {
        engine: engine.clone(),
        users,
        metrics: Some(metrics),
    }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(Error::Output)?;
    engine.shutdown().await;
    Ok(())
}
