//! P06 with the engine calling NAF, GIS and Smartflex over real HTTP: the
//! shipped connector files (`connectors/config/*.yaml`) pointed at the
//! simulators served on a loopback socket, with faults injected on the
//! wire — bursts of 5xx, slow answers past the timeout, refused
//! connections, lost replies.

use std::time::Duration;

use serde_json::json;
use tramite_connectors::Simulators;
use tramite_connectors::http::HttpConnector;
use tramite_connectors::sim_http::{Server, duplicate_registrations};
use tramite_engine::runtime::connector::{Connectors, Health};
use tramite_tests::engine::{Db, Harness};
use tramite_tests::on_both_backends;
use tramite_tests::p06::{
    refused_at_the_sale, retried_registers_once, through_coverage, through_identification,
    through_installation, through_requirements,
};

/// The shipped connector file of `system`, pointed at `server`, with the
/// timeouts and retry waits of a test (1 s, 3 tries 20–100 ms apart).
fn http_connector(system: &str, server: &Server) -> HttpConnector {
    http_connector_at(system, &server.base_url(system), |text| text)
}

/// The shipped connector file of `system` at `base_url`, with the test's
/// timeouts and retry waits, then edited by `edit`.
fn http_connector_at(
    system: &str,
    base_url: &str,
    edit: impl FnOnce(String) -> String,
) -> HttpConnector {
    let path = tramite_tests::repo_root().join(format!("connectors/config/{system}.yaml"));
    let text = std::fs::read_to_string(&path).expect("connector file");
    let text: String = text
        .replace(&format!("http://127.0.0.1:8090/{system}"), base_url)
        .lines()
        .map(|l| {
            if l.starts_with("timeout:") {
                "timeout: 1s".to_owned()
            } else if l.starts_with("retry:") {
                "retry: {attempts: 3, first_delay: 20ms, max_delay: 100ms}".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let text = edit(text);
    let secrets = |name: &str| {
        ["NAF_TOKEN", "GIS_API_KEY", "SMARTFLEX_PASSWORD"]
            .contains(&name)
            .then(|| "test-secret".to_owned())
    };
    tramite_connectors::http::install_tls_provider();
    HttpConnector::from_yaml(&path, &text, &tramite_connectors::catalog(), &secrets)
        .unwrap_or_else(|e| panic!("{system}: {e}"))
}

/// Simulators on a socket and a harness whose engine reaches them over HTTP.
async fn remote(db: Db) -> (Harness, Server) {
    let sims = Simulators::new();
    let server = Server::start("127.0.0.1:0".parse().unwrap(), sims.clone())
        .await
        .expect("simulators listen");
    let mut connectors = Connectors::new();
    for system in ["naf", "gis", "smartflex"] {
        connectors = connectors.with(system, std::sync::Arc::new(http_connector(system, &server)));
    }
    (Harness::with_connectors(db, sims, connectors).await, server)
}

async fn sale_over_http(db: Db) {
    let (h, _server) = remote(db).await;
    let id = through_identification(&h, "4587213").await;
    assert_eq!(h.sims.naf.calls(), 1, "NAF was called over HTTP");
    h.task(&id, "solicitar_domicilio").await;
    through_coverage(&h, &id, "Cala Cala").await;
    assert_eq!(h.sims.gis.calls(), 1);
    through_requirements(&h, &id).await;
    assert_eq!(h.jobs().await, 1);
    let registrations = h.sims.smartflex.registrations();
    assert_eq!(registrations.len(), 1);
    let r = &registrations[0];
    assert_eq!(r.ci, "4587213");
    assert_eq!(r.zone, "Cala Cala");
    assert_eq!(r.phone, tramite_tests::p06::PHONE);
    assert!(
        !r.idempotency_key.is_empty(),
        "the job's key crossed the wire"
    );
    // The outputs mapped back from the JSON answer reached the instance.
    let instance = h.instance(&id).await;
    assert_eq!(
        instance.state.variables["numero_solicitud"],
        json!(r.request_number)
    );
    through_installation(&h, &id).await;
    assert_eq!(h.instance(&id).await.status, "completed");
}
on_both_backends!(p06_sale_over_http, super::sale_over_http);

/// The systems' own error codes and statuses come back as the catalog's
/// business errors, through each file's `errors` mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_errors_over_http() {
    use tramite_engine::runtime::connector::{Connector, ConnectorCall, ConnectorError};
    let server = Server::start("127.0.0.1:0".parse().unwrap(), Simulators::new())
        .await
        .unwrap();
    let input = |pairs: serde_json::Value| pairs.as_object().unwrap().clone();
    let cases = [
        (
            "naf",
            "check_portfolio",
            input(json!({"ci": "1234"})),
            "invalid_ci",
        ),
        (
            "gis",
            "check_coverage",
            input(json!({"address": "Calle Jordán", "zone": "Cala Cala", "service": "trio"})),
            "address_not_found",
        ),
        (
            "smartflex",
            "register_service_request",
            input(
                json!({"ci": "6543210", "client_name": "X", "phone": "70000000", "address": "A 1",
                         "zone": "Centro", "service": "trio", "channel": "ivr"}),
            ),
            "client_blocked",
        ),
    ];
    for (system, operation, input, expected) in cases {
        let connector = http_connector(system, &server);
        let answer = connector
            .call(ConnectorCall {
                operation,
                input: &input,
                idempotency_key: "job-1",
                attempt: 1,
            })
            .await;
        match answer {
            Err(ConnectorError::Business { code, message }) => {
                assert_eq!(code, expected, "{system}: {message}");
                assert!(!message.is_empty());
            }
            other => panic!("{system}: expected `{expected}`, got {other:?}"),
        }
    }
}

/// A burst of 503s and a slow answer are retried inside one attempt; a
/// lost reply is retried with the same idempotency key and registers once.
async fn bursts_timeouts_and_lost_replies(db: Db) {
    let (h, _server) = remote(db).await;
    h.sims.naf.faults().fail_next(2);
    let id = through_identification(&h, "4587213").await; // runs the NAF job
    assert_eq!(h.sims.naf.calls(), 3, "two 503s, then the answer");
    assert_eq!(
        h.history(&id)
            .await
            .iter()
            .filter(|k| *k == "job_failed")
            .count(),
        0,
        "retried inside the attempt: the engine saw one success"
    );
    // Slower than the 1 s timeout on every try: the attempt fails...
    h.sims
        .gis
        .faults()
        .set_latency(Duration::from_millis(1_500));
    through_coverage(&h, &id, "Cala Cala").await; // runs the GIS job
    assert!(!h.task_open(&id, "verificar_capacidad").await);
    assert_eq!(h.sims.gis.calls(), 3, "three tries, each past the timeout");
    assert_eq!(
        h.history(&id)
            .await
            .iter()
            .filter(|k| *k == "job_failed")
            .count(),
        1
    );
    // ...and the engine's own retry succeeds once GIS is fast again.
    h.sims.gis.faults().set_latency(Duration::ZERO);
    h.advance(Duration::from_secs(300));
    h.jobs().await;
    h.task(&id, "verificar_capacidad").await;
    through_requirements(&h, &id).await;
    h.sims.smartflex.faults().lose_next_replies(1);
    assert_eq!(h.jobs().await, 1);
    h.task(&id, "comunicar_solicitud").await;
    assert_eq!(
        h.sims.smartflex.calls(),
        2,
        "registered, reply lost, asked again"
    );
    assert_eq!(h.sims.smartflex.registration_count(), 1);
    assert!(duplicate_registrations(&h.sims).is_empty());
}
on_both_backends!(
    p06_bursts_timeouts_and_lost_replies_over_http,
    super::bursts_timeouts_and_lost_replies
);

/// Smartflex down (connections refused): retries run out, an incident is
/// raised; Smartflex comes back on the same port, the operator retries,
/// and the sale is registered exactly once.
async fn refused_connections_then_incident_then_recovery(db: Db) {
    let (h, server) = remote(db).await;
    let address = server.address();
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    let smartflex = h.connectors.get("smartflex").unwrap().clone();
    assert!(matches!(smartflex.health().await, Health::Up { .. }));
    server.stop().await;
    match smartflex.health().await {
        Health::Down { reason } => assert_eq!(
            reason, "cannot reach the system",
            "no internal address for /readyz's anonymous callers"
        ),
        other => panic!("expected down, got {other:?}"),
    }
    for _ in 0..20 {
        h.jobs().await;
        h.advance(Duration::from_secs(300));
    }
    let incidents = h.engine.incidents(Some("open"), Some(&id)).await.unwrap();
    assert_eq!(incidents.len(), 1, "retries exhausted: one incident");
    // Readable by every signed-in user (the instance's incidents and
    // history): the system and what went wrong, with the trace id that
    // finds the log line, never the internal address.
    let message = &incidents[0].message;
    assert!(
        message.contains("smartflex register_service_request: could not connect (trace 00-"),
        "{message}"
    );
    assert!(!message.contains(&address.to_string()), "{message}");
    assert!(!message.contains("127.0.0.1"), "{message}");
    assert_eq!(h.sims.smartflex.registration_count(), 0);
    let _server = Server::start(address, h.sims.clone())
        .await
        .expect("back on the same port");
    retried_registers_once(&h, &id, &incidents[0].id).await;
    assert!(duplicate_registrations(&h.sims).is_empty());
}
on_both_backends!(
    p06_refused_connections_then_incident_then_recovery,
    super::refused_connections_then_incident_then_recovery
);

/// A server that answers every request with the raw HTTP `answer`, then
/// closes the connection; its base URL for `system` and how many requests
/// it answered.
fn canned(
    system: &str,
    answer: Vec<u8>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/{system}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            read_request(&mut socket);
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = socket.write_all(&answer);
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    });
    (base, count)
}

/// Reads a request's head and the body its Content-Length announces.
fn read_request(socket: &mut std::net::TcpStream) {
    use std::io::Read;
    let mut seen = Vec::new();
    let mut buf = [0_u8; 4096];
    while let Ok(n) = socket.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                break;
            }
        }
    }
}

/// A server that holds every request `hold` before answering `answer`, each
/// on a thread of its own; its base URL for `system` and the most requests
/// it held at once.
fn slow(
    system: &str,
    answer: Vec<u8>,
    hold: Duration,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/{system}", listener.local_addr().unwrap());
    let most = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    let now = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            let (answer, most, now) = (answer.clone(), seen.clone(), now.clone());
            std::thread::spawn(move || {
                read_request(&mut socket);
                let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(held, Ordering::SeqCst);
                std::thread::sleep(hold);
                now.fetch_sub(1, Ordering::SeqCst);
                let _ = socket.write_all(&answer);
                let _ = socket.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (base, most)
}

fn answer(status: &str, body: &str) -> Vec<u8> {
    answer_with(status, "", body)
}

/// An answer with extra header lines (each ending in `\r\n`).
fn answer_with(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn register(
    connector: &HttpConnector,
) -> Result<
    serde_json::Map<String, serde_json::Value>,
    tramite_engine::runtime::connector::ConnectorError,
> {
    use tramite_engine::runtime::connector::{Connector, ConnectorCall};
    let input = json!({"ci": "4587213", "client_name": "María Elena Rojas Vargas",
        "phone": "71712345", "address": "Calle Baptista 345", "zone": "Centro",
        "service": "trio", "channel": "telefono"});
    connector
        .call(ConnectorCall {
            operation: "register_service_request",
            input: input.as_object().unwrap(),
            idempotency_key: "tramite:i:registrar:j",
            attempt: 1,
        })
        .await
}

/// A code under a business-error status that the catalog does not declare
/// (a "request in progress" for a key still being processed) is no answer
/// the definition could route: it is a failure the engine retries with the
/// same idempotency key. A declared one still routes, numeric codes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_declared_codes_are_business_errors() {
    use tramite_engine::runtime::connector::ConnectorError;
    let (base, count) = canned(
        "smartflex",
        answer(
            "409 Conflict",
            r#"{"error":{"code":"SOLICITUD_EN_PROCESO","message":"en proceso"}}"#,
        ),
    );
    let connector = http_connector_at("smartflex", &base, |text| text);
    match register(&connector).await {
        Err(ConnectorError::Transient { message, .. }) => {
            assert!(
                message.contains("409") && message.contains("SOLICITUD_EN_PROCESO"),
                "{message}"
            )
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a 4xx is not retried inside the attempt"
    );

    // A number (written either way) looked up in `map`, and a code that is
    // already the catalog's name.
    for (code, numeric_map) in [
        ("1001", true),
        ("1001.0", true),
        ("\"client_blocked\"", false),
    ] {
        let (base, _) = canned(
            "smartflex",
            answer(
                "422 Unprocessable Entity",
                &format!(r#"{{"error":{{"code":{code},"message":"bloqueado"}}}}"#),
            ),
        );
        let connector = http_connector_at("smartflex", &base, |text| {
            if numeric_map {
                text.replace(
                    "CLIENTE_BLOQUEADO: client_blocked",
                    "\"1001\": client_blocked",
                )
            } else {
                text
            }
        });
        match register(&connector).await {
            Err(ConnectorError::Business {
                code: name,
                message,
            }) => {
                assert_eq!(
                    (name.as_str(), message.as_str()),
                    ("client_blocked", "bloqueado"),
                    "{code}"
                )
            }
            other => panic!("{code}: expected client_blocked, got {other:?}"),
        }
    }
}

/// An answer larger than the connector reads is refused, whether its size
/// is announced or only streamed, instead of being held in memory.
/// A success with no body — a 204, or any 2xx of an operation that maps no
/// output — is a success with nothing in it, not a failure retried into an
/// incident (what the definition then reads from it is its output
/// mapping's to refuse, saying the system acted); a 200 whose body is no
/// JSON, where outputs are mapped, is still a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_with_nothing_to_read_is_a_success() {
    let empty = |status: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let (base, count) = canned("smartflex", empty("204 No Content"));
    let connector = http_connector_at("smartflex", &base, |text| text);
    assert_eq!(register(&connector).await.unwrap(), serde_json::Map::new());
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "asked once"
    );
    let (base, _) = canned("smartflex", empty("200 OK"));
    let connector = http_connector_at("smartflex", &base, |text| text);
    assert!(
        matches!(
            register(&connector).await,
            Err(tramite_engine::runtime::connector::ConnectorError::Transient { .. })
        ),
        "outputs to read and no JSON"
    );
    // An operation that returns nothing it always returns (a notice sent)
    // may map no output: any 2xx of it is a success, body or none.
    use tramite_engine::catalog::{Catalog, ConnectorSpec, OperationSpec, ParamSpec};
    use tramite_engine::definition::VarType;
    let catalog = Catalog::new().with(ConnectorSpec {
        name: "avisos".to_owned(),
        title: "Avisos".to_owned(),
        operations: vec![OperationSpec {
            name: "notify".to_owned(),
            description: "sends a notice".to_owned(),
            inputs: vec![ParamSpec::required("to", VarType::String, "whom")],
            outputs: vec![ParamSpec::optional(
                "ticket",
                VarType::String,
                "its ticket, if any",
            )],
            errors: Vec::new(),
        }],
    });
    let (base, _) = canned("avisos", empty("200 OK"));
    let text = format!(
        "system: avisos\nbase_url: {base}\noperations:\n  notify:\n    method: POST\n    path: /v1/avisos\n    body: {{to: to}}\n"
    );
    let connector = HttpConnector::from_yaml(
        std::path::Path::new("avisos.yaml"),
        &text,
        &catalog,
        &|_| None,
    )
    .expect("an operation with no output it always returns may map none");
    let input = json!({"to": "72345678"}).as_object().cloned().unwrap();
    let answer = tramite_engine::runtime::connector::Connector::call(
        &connector,
        tramite_engine::runtime::connector::ConnectorCall {
            operation: "notify",
            input: &input,
            idempotency_key: "k-aviso",
            attempt: 1,
        },
    )
    .await;
    assert_eq!(answer.unwrap(), serde_json::Map::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_is_refused() {
    use tramite_engine::runtime::connector::ConnectorError;
    let big = "x".repeat(tramite_connectors::http::MAX_ANSWER_BYTES + 1);
    let announced = answer("200 OK", &big);
    let mut streamed =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".to_vec();
    streamed.extend_from_slice(big.as_bytes());
    for raw in [announced, streamed] {
        let (base, _) = canned("smartflex", raw);
        let connector = http_connector_at("smartflex", &base, |text| text);
        match register(&connector).await {
            Err(ConnectorError::Transient { message, .. }) => {
                assert!(message.contains("larger than 4 MiB"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// An error answer is judged by its status, however large or broken its
/// body (a gateway's page, a body cut short): a 429 still says when to come
/// back, and a refused credential is still a refusal, not a failure to
/// retry (the body is read only as far as a code and message need).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_is_judged_by_its_status_whatever_its_body() {
    use tramite_engine::runtime::connector::ConnectorError;
    let big = "x".repeat(tramite_connectors::http::MAX_ANSWER_BYTES + 1);
    let (base, asked) = canned(
        "smartflex",
        answer_with("429 Too Many Requests", "Retry-After: 120\r\n", &big),
    );
    let connector = http_connector_at("smartflex", &base, |text| text);
    match register(&connector).await {
        Err(ConnectorError::Transient {
            retry_after,
            message,
        }) => {
            assert_eq!(
                retry_after,
                Some(std::time::Duration::from_secs(120)),
                "{message}"
            );
        }
        other => panic!("expected a wait of 120 s, got {other:?}"),
    }
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    let cut = format!(
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n<html>",
        big.len()
    );
    for raw in [answer("401 Unauthorized", &big), cut.into_bytes()] {
        let (base, _) = canned("smartflex", raw);
        let connector = http_connector_at("smartflex", &base, |text| text);
        match register(&connector).await {
            Err(ConnectorError::Refused { message }) => {
                assert!(message.contains("401"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// A system that answers with a redirect (a gateway that moved, or adds a
/// trailing slash) is not followed: following would turn the sale's POST
/// into a bodiless GET and carry the credentials to the other host. The
/// call stops, once, saying the connector's address must change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed() {
    use tramite_engine::runtime::connector::ConnectorError;
    let (elsewhere, followed) = canned("smartflex", answer("200 OK", r#"{"data":{}}"#));
    let moved = format!(
        "HTTP/1.1 301 Moved Permanently\r\nLocation: {elsewhere}/v1/solicitudes/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (base, asked) = canned("smartflex", moved.into_bytes());
    let connector = http_connector_at("smartflex", &base, |text| text);
    match register(&connector).await {
        Err(ConnectorError::Refused { message }) => {
            assert!(
                message.contains("301") && message.contains("base_url"),
                "{message}"
            );
            assert!(
                !message.contains("127.0.0.1"),
                "no address in what users read: {message}"
            );
        }
        other => panic!("expected the call to stop, got {other:?}"),
    }
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "not retried"
    );
    assert_eq!(
        followed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "not followed"
    );
}

/// A 4xx that the same request would get again is a refusal, sent once and
/// never retried (the engine raises the step's incident at once). One that
/// says "not now" (408, 409, 421, 423, 425), says when to come back
/// (`Retry-After`), or is a 404 web page (a balancer's during a deploy, not
/// the system's answer) is a failure the next attempt may get past; a 401
/// page (a proxy's answer to a refused credential) is still a refusal. None
/// is retried inside the attempt (the wait asked here is longer than the
/// backoff's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_pass_is_refused_not_retried() {
    use tramite_engine::runtime::connector::ConnectorError;
    let body = r#"{"error":{"code":"X","message":"no"}}"#;
    let page = |status: &str| {
        let html = format!("<html><body>{status}</body></html>");
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
            html.len()
        )
        .into_bytes()
    };
    // (status, the answer a web page, its Retry-After in seconds, refused)
    for (status, html, retry_after, refused) in [
        ("400 Bad Request", false, None, true),
        ("401 Unauthorized", false, None, true),
        ("403 Forbidden", false, None, true),
        ("404 Not Found", false, None, true),
        ("410 Gone", false, None, true),
        ("422 Unprocessable Entity", false, None, true),
        ("408 Request Timeout", false, None, false),
        ("409 Conflict", false, None, false),
        ("421 Misdirected Request", false, None, false),
        ("423 Locked", false, None, false),
        ("425 Too Early", false, None, false),
        ("404 Not Found", true, None, false),
        ("401 Unauthorized", true, None, true),
        ("403 Forbidden", false, Some(60), false),
    ] {
        let raw = match (html, retry_after) {
            (true, _) => page(status),
            (false, Some(s)) => answer_with(status, &format!("Retry-After: {s}\r\n"), body),
            (false, None) => answer(status, body),
        };
        let wait = retry_after.map(Duration::from_secs);
        let (base, count) = canned("smartflex", raw);
        let connector = http_connector_at("smartflex", &base, |text| text);
        let code = &status[..3];
        let (message, asked) = match (register(&connector).await, refused) {
            (Err(ConnectorError::Refused { message }), true) => (message, None),
            (
                Err(ConnectorError::Transient {
                    message,
                    retry_after,
                }),
                false,
            ) => (message, retry_after),
            (other, _) => panic!("{status}: expected refused = {refused}, got {other:?}"),
        };
        assert!(
            message.starts_with("smartflex register_service_request: HTTP ")
                && message.contains(code)
                && message.contains("(trace 00-"),
            "{status}: {message}"
        );
        assert!(!message.contains("127.0.0.1"), "{status}: {message}");
        assert_eq!(asked, wait, "{status}: {message}");
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{status} is sent once"
        );
    }
}

/// Smartflex no longer takes the engine's credentials (403 over real HTTP):
/// the sale's step stops with an incident at its first attempt, none of the
/// others spent; retried once the credentials are fixed, it registers once.
async fn a_refusal_over_http_is_an_incident_at_once(db: Db) {
    let (h, _server) = remote(db).await;
    let id = through_identification(&h, "4587213").await;
    through_coverage(&h, &id, "Cala Cala").await;
    through_requirements(&h, &id).await;
    h.sims.smartflex.faults().refuse_next(1);
    assert_eq!(h.jobs().await, 1);
    let (message, incident) = refused_at_the_sale(&h, &id).await;
    assert!(
        message.contains("smartflex register_service_request: HTTP 403 Forbidden (trace 00-"),
        "{message}"
    );
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.jobs().await, 0, "not retried");
    assert_eq!(h.sims.smartflex.registration_count(), 0);
    retried_registers_once(&h, &id, &incident).await;
}
on_both_backends!(
    p06_a_refusal_over_http_is_an_incident_at_once,
    super::a_refusal_over_http_is_an_incident_at_once
);

/// A throttled system's `Retry-After` is honoured: a wait longer than the
/// backoff's next one (20–40 ms here) ends the attempt at once and goes to
/// the engine, which schedules the next attempt no sooner (a test in
/// `runtime.rs`); no wait is asked by a date already past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_longer_than_the_backoff_goes_to_the_engine() {
    use tramite_engine::runtime::connector::ConnectorError;
    let (base, count) = canned(
        "smartflex",
        answer_with(
            "503 Service Unavailable",
            "Retry-After: 30\r\n",
            r#"{"error":{"code":"NO_DISPONIBLE"}}"#,
        ),
    );
    let connector = http_connector_at("smartflex", &base, |text| text);
    match register(&connector).await {
        Err(ConnectorError::Transient {
            message,
            retry_after,
        }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)));
            assert!(
                message.contains("503") && message.contains("asked to wait 30 s"),
                "{message}"
            );
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "not asked again inside the attempt"
    );

    // A wait no longer than the backoff's (none, here: a date already
    // past) is retried inside the attempt as any 429.
    let (base, count) = canned(
        "smartflex",
        answer_with(
            "429 Too Many Requests",
            "Retry-After: Mon, 07 Dec 2026 00:00:00 GMT\r\n",
            r#"{"error":{"code":"DEMASIADAS"}}"#,
        ),
    );
    let connector = http_connector_at("smartflex", &base, |text| text);
    match register(&connector).await {
        Err(ConnectorError::Transient {
            message,
            retry_after,
        }) => {
            assert_eq!(retry_after, None, "{message}");
            assert!(!message.contains("wait"), "{message}");
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// A system that answers a refusal with a 200 (`{"ok": false, "error":
/// {...}}`) is routed like one answering 409, when its rule lists the 200;
/// a 200 whose code names no business error (absent, `null`, `0`, `"OK"`,
/// not text) is a result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_answered_with_a_success_status_is_a_business_error() {
    use tramite_engine::runtime::connector::ConnectorError;
    let refused = r#"{"ok":false,"error":{"code":"CLIENTE_BLOQUEADO","message":"bloqueado"}}"#;
    let registered = r#"{"ok":true,"error":null,"data":{"request_number":"SF-2026-000042","registered_at":"2026-12-07T10:00:00Z","estimated_days":3}}"#;
    let with_200 = |text: String| text.replace("status: [409, 422]", "status: [200, 409, 422]");
    let (base, _) = canned("smartflex", answer("200 OK", refused));
    match register(&http_connector_at("smartflex", &base, with_200)).await {
        Err(ConnectorError::Business { code, message }) => {
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("client_blocked", "bloqueado")
            )
        }
        other => panic!("expected client_blocked, got {other:?}"),
    }
    // The shipped file lists no 200: the same answer is a result (with no
    // request number), which is why the rule must say so.
    let (base, _) = canned("smartflex", answer("200 OK", refused));
    let out = register(&http_connector_at("smartflex", &base, |t| t))
        .await
        .unwrap();
    assert!(!out.contains_key("request_number"), "{out:?}");
    for code in ["null", "0", "\"OK\"", "false", "{\"x\": 1}"] {
        let body = registered.replace("\"error\":null", &format!("\"error\":{{\"code\":{code}}}"));
        let (base, _) = canned("smartflex", answer("200 OK", &body));
        let out = register(&http_connector_at("smartflex", &base, with_200))
            .await
            .unwrap_or_else(|e| panic!("{code}: {e:?}"));
        assert_eq!(out["request_number"], "SF-2026-000042", "{code}");
    }
}

/// `max_in_flight` caps the requests one node has under way at a system:
/// six sales at once reach a system capped at two, two at a time, and all
/// are answered; without the cap the system gets more at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_caps_the_requests_under_way() {
    let registered = answer(
        "201 Created",
        r#"{"data":{"request_number":"SF-2026-000042","registered_at":"2026-12-07T10:00:00Z","estimated_days":3}}"#,
    );
    for (cap, most_expected) in [(Some(2), 2..=2), (None, 3..=6)] {
        // Held long enough that six calls started together overlap even
        // on a busy machine; the file's timeout makes room for it.
        let (base, most) = slow("smartflex", registered.clone(), Duration::from_millis(600));
        let connector = std::sync::Arc::new(http_connector_at("smartflex", &base, |text| {
            let text = text.replace("timeout: 1s", "timeout: 5s");
            match cap {
                Some(n) => format!("{text}\nmax_in_flight: {n}\n"),
                None => text,
            }
        }));
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let connector = connector.clone();
            calls.spawn(async move { register(&connector).await });
        }
        while let Some(done) = calls.join_next().await {
            let out = done.unwrap().expect("answered");
            assert_eq!(out["request_number"], "SF-2026-000042");
        }
        let most = most.load(std::sync::atomic::Ordering::SeqCst);
        assert!(most_expected.contains(&most), "cap {cap:?}: {most} at once");
    }
}

/// Two tries of one request at once (a retry after a lost reply, while
/// the first is still being answered): Smartflex registers it once and
/// says "created" (201) to one of them only, the other getting the same
/// request with 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tries_of_one_request_are_created_once() {
    let sims = Simulators::new();
    let server = Server::start("127.0.0.1:0".parse().unwrap(), sims.clone())
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let admin = client
        .post(format!(
            "http://{}/_admin/smartflex/faults",
            server.address()
        ))
        .json(&json!({"latency_ms": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 204);
    let post = || {
        client
            .post(format!("{}/v1/solicitudes", server.base_url("smartflex")))
            .header("idempotency-key", "k-twice")
            .basic_auth("tramite", Some("test-secret"))
            .json(
                &json!({"ci": "4587213", "nombre": "María Elena Rojas Vargas",
                "telefono": "71712345", "direccion": "Calle Baptista 345",
                "zona": "Centro", "servicio": "trio", "canal": "telefono"}),
            )
            .send()
    };
    let (a, b) = tokio::join!(post(), post());
    let mut statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 201]);
    assert_eq!(sims.smartflex.registration_count(), 1);
}

/// `tramite simulators --rate-limit`: a Smartflex over its limit answers
/// 429 with `Retry-After`, registers nothing, and the HTTP connector hands
/// the wait to the engine (it is longer than the file's next backoff); once
/// the second has passed, the same request registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_simulator_says_when_to_come_back() {
    use tramite_engine::runtime::connector::ConnectorError;
    tramite_connectors::http::install_tls_provider();
    let sims = Simulators::new();
    let server = Server::start("127.0.0.1:0".parse().unwrap(), sims.clone())
        .await
        .unwrap();
    let admin = reqwest::Client::new()
        .post(format!(
            "http://{}/_admin/smartflex/faults",
            server.address()
        ))
        .json(&json!({"rate_limit_per_s": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 204);
    // Straight at the socket: the status, the header and the system's
    // code. Four requests at once against one a second: however slow the
    // machine, they do not spread over the three seconds that would let
    // them all in.
    let raw = reqwest::Client::new();
    let post = |n: usize| {
        raw.post(format!("{}/v1/solicitudes", server.base_url("smartflex")))
            .header("idempotency-key", format!("k-raw-{n}"))
            .basic_auth("tramite", Some("test-secret"))
            .json(
                &json!({"ci": "4587213", "nombre": "María Elena Rojas Vargas",
                "telefono": "71712345", "direccion": "Calle Baptista 345",
                "zona": "Centro", "servicio": "trio", "canal": "telefono",
                "referencia": format!("r-{n}")}),
            )
            .send()
    };
    let (a, b, c, d) = tokio::join!(post(0), post(1), post(2), post(3));
    let answers = [a, b, c, d];
    let mut let_in = 0;
    let mut refused = 0;
    for answer in answers {
        let answer = answer.unwrap();
        if answer.status().is_success() {
            let_in += 1;
            continue;
        }
        assert_eq!(answer.status(), 429);
        assert_eq!(answer.headers()["retry-after"], "1");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "LIMITE_EXCEDIDO", "{body}");
        refused += 1;
    }
    assert!(
        let_in >= 1 && refused >= 1,
        "{let_in} let in, {refused} refused"
    );
    assert_eq!(
        sims.smartflex.registration_count(),
        let_in,
        "a refusal registers nothing"
    );
    // Through the connector: three calls at once (one request, so one
    // registration at most); a refused one hands the wait to the engine.
    let connector = http_connector("smartflex", &server);
    let (a, b, c) = tokio::join!(
        register(&connector),
        register(&connector),
        register(&connector)
    );
    let calls = [a, b, c];
    let waits: Vec<Duration> = calls
        .iter()
        .filter_map(|c| match c {
            Err(ConnectorError::Transient {
                retry_after: Some(wait),
                ..
            }) => Some(*wait),
            Ok(_) => None,
            other => panic!("expected a result or a wait, got {other:?}"),
        })
        .collect();
    assert!(!waits.is_empty(), "{calls:?}");
    assert!(
        waits.iter().all(|w| *w == Duration::from_secs(1)),
        "{waits:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    register(&connector).await.expect("let in after the wait");
    assert_eq!(sims.smartflex.registration_count(), let_in + 1);
}
