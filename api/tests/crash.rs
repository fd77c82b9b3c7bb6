//! Crash test, at a size CI can afford: P06 requests driven over HTTP
//! against real `tramite serve` processes reaching the simulators over HTTP,
//! while a node is killed with SIGKILL at random moments and restarted —
//! two nodes on one PostgreSQL database, and one node on SQLite. Then the
//! invariants: every request reached its end once, every task was completed
//! at most once, every history is whole, Smartflex registered each sale once.
//!
//! Besides the kills at random moments, one kill lands where a crash is most
//! dangerous: Smartflex has registered a sale and is holding its answer, so
//! the node dies without having recorded it. Another node (or, on SQLite,
//! the restarted one) must take the job over once its lease expires and ask
//! again with the same key — and Smartflex must still hold one registration.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TOKEN: &str = "clave-de-la-prueba-de-caidas";
const REQUESTS: usize = 24;
/// Kills at random moments, besides the one of a node waiting on Smartflex.
const KILLS: usize = 3;
/// How long Smartflex keeps back the answer of the one registration whose
/// node is killed: long enough to find that node and kill it, behind random
/// kills queued before (each waits for its node to come back), and shorter
/// than the Smartflex connector's timeout (raised to 19 s in [`setup`])
/// and the step's 20 s.
const HOLD_MS: u64 = 15_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Everything one run needs on disk: users, connector files.
struct Setup {
    dir: PathBuf,
    simulators: u16,
    _sims: Process,
}

async fn setup() -> Setup {
    tramite_connectors::http::install_tls_provider();
    let dir = std::env::temp_dir().join(format!("tramite-crash-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    let hash: String = Sha256::digest(TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        dir.join("users.yaml"),
        format!(
            "users:\n  - name: prueba\n    token_sha256: {hash}\n    roles: [channel, operator, agente_ventas_digitales, \
             responsable_centro_llamadas, jefe_instalaciones, tecnico_instalaciones]\n"
        ),
    )
    .unwrap();
    let simulators = free_port();
    for system in ["naf", "gis", "smartflex"] {
        let mut text =
            std::fs::read_to_string(repo().join(format!("connectors/config/{system}.yaml")))
                .unwrap()
                .replace("127.0.0.1:8090", &format!("127.0.0.1:{simulators}"));
        if system == "smartflex" {
            // One try waits out the held answer (the shipped 5 s would
            // give up and try again, answered at once, before the kill):
            // still within the step's 20 s.
            assert!(text.contains("timeout: 5s"), "{text}");
            text = text.replace("timeout: 5s", "timeout: 19s");
        }
        std::fs::write(dir.join(format!("connectors/{system}.yaml")), text).unwrap();
    }
    let sims = Process(
        Command::new(env!("CARGO_BIN_EXE_tramite"))
            // Calls take a while, so that kills catch some in flight.
            .args([
                "simulators",
                "--bind",
                &format!("127.0.0.1:{simulators}"),
                "--latency-ms",
                "40",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_up(&format!("http://127.0.0.1:{simulators}/naf/health")).await;
    let held = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{simulators}/_admin/smartflex/faults"
        ))
        .json(&json!({"hold_next": 1, "hold_ms": HOLD_MS}))
        .send()
        .await
        .unwrap();
    assert!(held.status().is_success(), "{held:?}");
    Setup {
        dir,
        simulators,
        _sims: sims,
    }
}

async fn wait_up(url: &str) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never came up");
}

/// One `tramite serve` on `port`.
fn node(setup: &Setup, database_url: &str, port: u16) -> Process {
    let log = std::fs::File::create(setup.dir.join(format!("node-{port}.log"))).unwrap();
    Process(
        Command::new(env!("CARGO_BIN_EXE_tramite"))
            .args([
                "serve",
                "--database-url",
                database_url,
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--users",
                setup.dir.join("users.yaml").to_str().unwrap(),
                "--connectors",
                setup.dir.join("connectors").to_str().unwrap(),
                "--processes",
                repo().join("processes").to_str().unwrap(),
                "--lease-seconds",
                "1",
            ])
            .env("NAF_TOKEN", "x")
            .env("GIS_API_KEY", "x")
            .env("SMARTFLEX_PASSWORD", "x")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Sends `request` to a node of `ports` that answers.
async fn call(
    ports: &[u16],
    build: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Option<(reqwest::StatusCode, Value)> {
    // Each request goes first to a node picked at random, so that what one
    // node committed is read and completed through the other as well.
    let first = rand::rng().random_range(0..ports.len());
    for port in ports.iter().cycle().skip(first).take(ports.len()) {
        let base = format!("http://127.0.0.1:{port}");
        if let Ok(r) = build(&base).bearer_auth(TOKEN).send().await {
            let status = r.status();
            let body = r.json().await.unwrap_or(Value::Null);
            return Some((status, body));
        }
    }
    None
}

/// Drives `REQUESTS` P06 requests to their end through whichever node
/// answers, while `chaos` kills and restarts nodes.
async fn drive(ports: &[u16], kill: tokio::sync::mpsc::Sender<Kill>) -> Vec<String> {
    // The kills come at random points of the work: after a random share
    // (10–90 %) of the task completions, so they always hit a running load.
    let total = (REQUESTS * TASKS_PER_REQUEST) as f64;
    let mut at: Vec<usize> = (0..KILLS)
        .map(|_| (total * rand::rng().random_range(0.1..0.9)) as usize)
        .collect();
    at.sort_unstable();
    drive_to_the_end(ports, &mut at, &kill).await
}

/// Task completions of one P06 happy path, OPR-PAS-P02's included.
const TASKS_PER_REQUEST: usize = 11;

async fn drive_to_the_end(
    ports: &[u16],
    kill_at: &mut Vec<usize>,
    kill: &tokio::sync::mpsc::Sender<Kill>,
) -> Vec<String> {
    // The tasks whose completion was answered 2xx: each must be completed,
    // once, whatever the kills did after the answer.
    let mut acknowledged = Vec::new();
    let mut completed = 0usize;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut started = [false; REQUESTS];
    loop {
        assert!(
            Instant::now() < deadline,
            "the requests did not finish in time"
        );
        // Starts (idempotent by call id) and the clients' WhatsApp messages
        // (kept until the request waits for them; deduplicated by id).
        for (n, started) in started.iter_mut().enumerate() {
            if *started {
                continue;
            }
            let phone = format!("7{:07}", 1_000 + n);
            let start = call(ports, |b| {
                client.post(format!("{b}/webhooks/ivr")).json(&json!({
                    "id": format!("llamada-{n}"), "process": "OPE-SUM-VEN-P06", "data": {"telefono": phone}
                }))
            })
            .await;
            // The message after the start's answer: a client writes once
            // the call has begun (a kept message reaches only a request
            // that had started when it arrived).
            if !matches!(start, Some((s, _)) if s.is_success()) {
                continue;
            }
            let message = call(ports, |b| {
                client.post(format!("{b}/api/v1/messages")).json(&json!({
                    "name": "requisitos_whatsapp", "key": phone, "id": format!("wamid.crash.{n}"),
                    "payload": {"media": [format!("media-{n}")]}
                }))
            })
            .await;
            *started = matches!(message, Some((s, _)) if s.is_success());
        }
        let done = call(ports, |b| {
            client.get(format!(
                "{b}/api/v1/instances?code=OPE-SUM-VEN-P06&status=completed&limit=500"
            ))
        })
        .await;
        if let Some((_, body)) = &done
            && body["items"].as_array().map_or(0, Vec::len) == REQUESTS
        {
            return acknowledged;
        }
        let Some((_, tasks)) =
            call(ports, |b| client.get(format!("{b}/api/v1/tasks?limit=500"))).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let tasks = tasks["items"].as_array().cloned().unwrap_or_default();
        if tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for t in tasks {
            let Some((outcome, data)) =
                tramite_tests::p06::answer(t["node_id"].as_str().unwrap_or_default(), 0)
            else {
                continue;
            };
            // A 409 or 404 here means an earlier attempt did it (its answer
            // was lost with the node): the test goes on.
            let answer = call(ports, |b| {
                client
                    .post(format!(
                        "{b}/api/v1/tasks/{}/complete",
                        t["id"].as_str().unwrap()
                    ))
                    .json(&json!({"outcome": outcome, "data": data}))
            })
            .await;
            if matches!(answer, Some((s, _)) if s.is_success()) {
                acknowledged.push(t["id"].as_str().unwrap().to_owned());
                completed += 1;
                if kill_at.first().is_some_and(|k| completed >= *k) {
                    kill_at.remove(0);
                    let _ = kill.try_send(Kill::Victim);
                }
            }
        }
    }
}

/// Which node a kill is for.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// The one picked as the victim of the random kills.
    Victim,
    /// The one on this port.
    Port(u16),
}

/// Kills a node (SIGKILL) each time it is told to, and starts it again on
/// its port; `nodes` are (port, process), the first the victim. Returns the
/// nodes and how many kills there were.
async fn chaos(
    setup: &Setup,
    url: &str,
    mut nodes: Vec<(u16, Option<Process>)>,
    mut kill: tokio::sync::mpsc::Receiver<Kill>,
) -> (Vec<(u16, Option<Process>)>, usize) {
    let mut kills = 0;
    while let Some(target) = kill.recv().await {
        let i = match target {
            Kill::Victim => 0,
            Kill::Port(port) => nodes
                .iter()
                .position(|(p, _)| *p == port)
                .expect("a kill for a node of the test"),
        };
        let port = nodes[i].0;
        // SIGKILL: no graceful anything. The old process is gone before
        // the new one binds its port.
        drop(nodes[i].1.take());
        kills += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        nodes[i].1 = Some(node(setup, url, port));
        wait_up(&format!("http://127.0.0.1:{port}/healthz")).await;
    }
    (nodes, kills)
}

/// What the Smartflex simulator counted (`/_admin/smartflex/stats`).
async fn smartflex_stats(setup: &Setup) -> Value {
    reqwest::get(format!(
        "http://127.0.0.1:{}/_admin/smartflex/stats",
        setup.simulators
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

/// Smartflex's counts of the answers it holds back: `held` now, and `cut`,
/// those whose caller died waiting.
async fn smartflex_holds(setup: &Setup) -> (Vec<String>, Vec<String>) {
    let stats = smartflex_stats(setup).await;
    let keys = |list: &Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect()
    };
    (keys(&stats["held"]), keys(&stats["cut"]))
}

/// Waits until Smartflex holds back the answer of a registration it has
/// made, then has the node waiting for it killed; returns whether it did.
/// A random kill may cut the hold first (it is then in `cut`): that is the
/// same crash, and nothing is left to do.
async fn kill_the_node_waiting_on_smartflex(
    setup: &Setup,
    url: &str,
    kill: &tokio::sync::mpsc::Sender<Kill>,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    let key = loop {
        assert!(
            Instant::now() < deadline,
            "Smartflex never held a registration's answer"
        );
        match smartflex_holds(setup).await {
            (held, _) if !held.is_empty() => break held[0].clone(),
            (_, cut) if !cut.is_empty() => return false,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    let (status, owner): (String, Option<String>) =
        sqlx::query_as("SELECT status, lease_owner FROM jobs WHERE idempotency_key = $1")
            .bind(&key)
            .fetch_one(&mut db)
            .await
            .expect("the held registration's job");
    let Some(owner) = owner.filter(|_| status == "running") else {
        return false;
    };
    // A lease's owner is `<bind>-<pid>:<worker>`, the bind `127.0.0.1:<port>`.
    let port = owner
        .strip_prefix("127.0.0.1:")
        .and_then(|rest| rest.split('-').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in the lease owner {owner}"));
    kill.send(Kill::Port(port)).await.unwrap();
    true
}

/// The invariants, read from the database and from Smartflex.
async fn check(setup: &Setup, url: &str, acknowledged: &[String]) {
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    let p06_done = count(
        "SELECT COUNT(*) FROM instances WHERE code = 'OPE-SUM-VEN-P06' AND status = 'completed' \
         AND outcome = 'venta_concretada'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(p06_done, REQUESTS as i64, "every request reached its end");
    let p06_all = count("SELECT COUNT(*) FROM instances WHERE code = 'OPE-SUM-VEN-P06'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(p06_all, REQUESTS as i64, "each call started one request");
    // Each sale's installation (OPR-PAS-P02) was ordered once and ended:
    // a child started twice would be driven to its end too and pass the
    // P06 checks.
    let p02_all = count("SELECT COUNT(*) FROM instances WHERE code = 'OPR-PAS-P02'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(
        p02_all, REQUESTS as i64,
        "each sale ordered one installation"
    );
    let unfinished = count("SELECT COUNT(*) FROM instances WHERE status <> 'completed'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(unfinished, 0, "every started instance ended");
    // An acknowledged completion survived every kill after its answer.
    assert!(!acknowledged.is_empty());
    let mut distinct = acknowledged.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        acknowledged.len(),
        "a task was acknowledged twice"
    );
    for id in acknowledged {
        let status: String = sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(status, "completed", "acknowledged task {id}");
    }
    let twice = count(
        "SELECT COUNT(*) FROM (SELECT instance_id, node_id FROM journal WHERE kind = 'task_completed' \
         GROUP BY instance_id, node_id HAVING COUNT(*) > 1) AS t",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(twice, 0, "no task was completed twice");
    let open = count("SELECT COUNT(*) FROM tasks WHERE status IN ('open', 'claimed')")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(open, 0, "no task left behind");
    // Every instance, not only those with an end entry: a missing end
    // counts as much as a doubled one.
    let ends = count(
        "SELECT COUNT(*) FROM instances i WHERE (SELECT COUNT(*) FROM journal j \
         WHERE j.instance_id = i.id AND j.kind = 'instance_completed') <> 1",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(ends, 0, "every history ends exactly once");
    let pending_jobs = count("SELECT COUNT(*) FROM jobs WHERE status IN ('ready', 'running')")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(pending_jobs, 0, "no job left behind");
    let incidents = count("SELECT COUNT(*) FROM incidents WHERE status = 'open'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(incidents, 0);
    let stats = smartflex_stats(setup).await;
    assert_eq!(stats["registrations"], json!(REQUESTS), "{stats}");
    assert_eq!(stats["duplicates"], json!([]), "{stats}");
}

/// Drives the load through `nodes` (port and process, the first the
/// victim of the random kills) while they are killed, stops them, and checks
/// the invariants; returns how many kills there were.
async fn survive(setup: &Setup, url: &str, nodes: Vec<(u16, Option<Process>)>) -> usize {
    let ports: Vec<u16> = nodes.iter().map(|(port, _)| *port).collect();
    let (kill, killed) = tokio::sync::mpsc::channel(KILLS + 1);
    let watcher = kill.clone();
    let ((nodes, kills), acknowledged, watcher_killed) = tokio::join!(
        chaos(setup, url, nodes, killed),
        drive(&ports, kill),
        async move { kill_the_node_waiting_on_smartflex(setup, url, &watcher).await },
    );
    assert_eq!(
        kills,
        KILLS + usize::from(watcher_killed),
        "every kill hit the running load"
    );
    drop(nodes);
    check(setup, url, &acknowledged).await;
    // A node was killed after Smartflex registered and before it heard:
    // the sale was asked again, by whichever node took the job over, and
    // (checked above) registered once.
    let (_, cut) = smartflex_holds(setup).await;
    assert!(
        !cut.is_empty(),
        "no node died while Smartflex held its answer"
    );
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    for key in cut {
        let (attempts, status): (i64, String) =
            sqlx::query_as("SELECT attempts, status FROM jobs WHERE idempotency_key = $1")
                .bind(&key)
                .fetch_one(&mut db)
                .await
                .unwrap();
        assert_eq!(status, "done");
        assert!(
            attempts >= 2,
            "the killed node's Smartflex call was taken over ({attempts} attempts)"
        );
    }
    kills
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgresql_survive_kill_9() {
    let admin = tramite_tests::engine::postgres_url();
    let name = format!("tramite_t_crash_{}", uuid::Uuid::now_v7().simple());
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = match admin.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("{admin} has no database name"),
    };
    let setup = setup().await;
    let (a, b) = (free_port(), free_port());
    let steady = node(&setup, &url, a);
    wait_up(&format!("http://127.0.0.1:{a}/healthz")).await;
    let victim = node(&setup, &url, b);
    wait_up(&format!("http://127.0.0.1:{b}/healthz")).await;
    let kills = survive(&setup, &url, vec![(b, Some(victim)), (a, Some(steady))]).await;
    eprintln!("PostgreSQL, two nodes: {kills} kills under load");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await;
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_on_sqlite_survives_kill_9() {
    let setup = setup().await;
    let url = format!("sqlite://{}", setup.dir.join("tramite.db").display());
    let port = free_port();
    let victim = node(&setup, &url, port);
    wait_up(&format!("http://127.0.0.1:{port}/healthz")).await;
    let kills = survive(&setup, &url, vec![(port, Some(victim))]).await;
    eprintln!("SQLite, one node: {kills} kills under load");
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// SIGTERM (what `docker stop`, systemd and Kubernetes send first) stops a
/// node gracefully: it exits with status 0 instead of dying of the signal,
/// within its drain time even while a client holds a request half sent,
/// and its database opens again with what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_gracefully_on_sigterm() {
    let setup = setup().await;
    let url = format!("sqlite://{}", setup.dir.join("tramite.db").display());
    let port = free_port();
    let mut serving = node(&setup, &url, port);
    wait_up(&format!("http://127.0.0.1:{port}/readyz")).await;
    let client = reqwest::Client::new();
    let (status, started) = call(&[port], |base| {
        client.post(format!("{base}/api/v1/instances")).json(
            &json!({"code": "OPE-SUM-VEN-P06", "channel": "ivr", "data": {"telefono": "72345678"}}),
        )
    })
    .await
    .expect("the node answers");
    assert_eq!(status, reqwest::StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().expect("an instance id").to_owned();
    // The call answered: how long its task waited is a histogram, with
    // buckets that add up across nodes (not per-node quantiles).
    let (_, tasks) = call(&[port], |base| client.get(format!("{base}/api/v1/tasks")))
        .await
        .expect("the inbox");
    let task = tasks["items"][0]["id"].as_str().expect("the call's task");
    let (status, done) = call(&[port], |base| {
        client
            .post(format!("{base}/api/v1/tasks/{task}/complete"))
            .json(&json!({"outcome": "atendida"}))
    })
    .await
    .expect("completed");
    assert!(status.is_success(), "{done}");
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("# TYPE tramite_task_wait_seconds histogram")
            && metrics.contains("tramite_task_wait_seconds_bucket{"),
        "{metrics}"
    );
    // A client that never finishes sending its request holds the server's
    // graceful stop open: it must not hold the node's shutdown for ever.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut stalled, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &serving.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = serving.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(stalled);
    drop(serving);
    let port = free_port();
    let _again = node(&setup, &url, port);
    wait_up(&format!("http://127.0.0.1:{port}/readyz")).await;
    let instance: Value = client
        .get(format!("http://127.0.0.1:{port}/api/v1/instances/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(instance["id"], id.as_str(), "{instance}");
}
