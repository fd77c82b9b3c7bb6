//! `tramite demo`: the engine with its embedded defaults — a SQLite file
//! created on first start, the procedures in `processes/`, the simulated NAF, GIS and
//! Smartflex — taking one P06 request from the call to the quality-control
//! call, then printing its history.

use std::time::Duration;

use tokio::sync::Mutex;
use tramite_engine::definition::NodeKind;
use tramite_engine::runtime::{Engine, EngineConfig};
use tramite_engine::text::Lang;

/// Runs the demo on `database_url`, printing to `out`.
pub(crate) async fn run(
    database_url: &str,
    processes: &std::path::Path,
    lang: Lang,
    out: &mut impl std::io::Write,
) -> Result<(), crate::Error> {
    let sims = tramite_connectors::Simulators::new();
    let mut config = EngineConfig::new(database_url);
    config.catalog = tramite_connectors::catalog();
    config.connectors = sims.connectors();
    config.poll = Duration::from_millis(20);
    let engine = Engine::open(config).await?;
    for d in engine.deploy_dir(processes).await? {
        writeln!(
            out,
            "deployed {} v{}{}",
            d.code,
            d.version,
            if d.new { " (new)" } else { "" }
        )?;
    }
    engine.start_workers();
    let n = (engine.now() % 1_000_000) as usize;
    let latencies = Mutex::new(Vec::new());
    crate::bench::drive(&engine, &mut engine.changes(), n, &latencies).await?;
    let business_key = format!("BENCH-{n}");
    let instance = engine
        .tasks(&tramite_engine::store::tasks::Filter {
            business_key: Some(business_key.clone()),
            status: Some("completed".to_owned()),
            limit: 1,
            ..Default::default()
        })
        .await?
        .into_iter()
        .next()
        .map(|t| t.instance_id)
        .unwrap_or_default();
    let row = engine.instance(&instance).await?;
    let process = engine.process(row.definition_id).await?;
    writeln!(
        out,
        "\n{} — {} (v{}), instance {}",
        row.code,
        process.definition.name.get(lang),
        row.version,
        row.id
    )?;
    for entry in engine.history(&instance).await? {
        let node = entry
            .node_id
            .as_deref()
            .and_then(|id| process.definition.node(id));
        let label = node.map(|n| {
            let text = n.label.as_ref().map_or(n.id.as_str(), |l| l.get(lang));
            match &n.step {
                Some(step) => format!("{step}. {text}"),
                None => text.to_owned(),
            }
        });
        let detail = match (entry.kind.as_str(), node.map(|n| &n.kind)) {
            ("task_completed", Some(NodeKind::UserTask(t))) => {
                let outcome = entry.data["outcome"].as_str().unwrap_or_default();
                t.outcomes
                    .iter()
                    .find(|o| o.id == outcome)
                    .map(|o| format!("→ {}", o.label.get(lang)))
                    .unwrap_or_default()
            }
            ("job_succeeded", Some(NodeKind::ServiceTask(s))) => {
                format!(
                    "{}.{} → {}",
                    s.connector, s.operation, entry.data["written"]
                )
            }
            ("message_received", _) => format!("✉ {}", entry.data["written"]),
            ("child_ended", Some(NodeKind::Call(c))) => {
                format!("{} → {}", c.procedure, entry.data["written"])
            }
            ("instance_completed", _) => {
                format!("[{}]", entry.data["outcome"].as_str().unwrap_or_default())
            }
            _ => continue,
        };
        writeln!(
            out,
            "  {:<20} {} {}",
            entry.kind,
            label.unwrap_or_default(),
            detail
        )?;
    }
    writeln!(
        out,
        "\nSmartflex registrations: {}; database: {database_url}",
        sims.smartflex.registration_count()
    )?;
    engine.shutdown().await;
    Ok(())
}
