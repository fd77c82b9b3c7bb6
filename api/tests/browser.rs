//! The web UI in a real browser: headless Chromium driven over WebDriver
//! (chromedriver), against `tramite serve`'s router on a real socket.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). With `TRAMITE_SCREENSHOTS=1` the main pages are saved to
//! `docs/screenshots/` (1366×768, the call centre's screens).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tramite_api::http::{AppState, Users, Webhooks, router};
use tramite_tests::engine::{Db, Harness};

const AGENT: &str = "clave-agente";
const LEAD: &str = "clave-responsable";
const INSTALLER: &str = "clave-instalaciones";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a port of its own choosing (`--port=0`): a port picked
/// here and freed before chromedriver bound it could be taken by another
/// test's chromedriver in between, which made a test talk to a driver that
/// its owner then killed (seen once as "connection refused" in CI).
async fn driver() -> Driver {
    use std::io::BufRead;
    // Owned by `Driver` at once, so that it is killed and waited for on
    // every path (its `Drop`).
    let mut child = Command::new("chromedriver")
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver; .ci/run installs it)");
    let stdout = child.stdout.take().expect("chromedriver's output");
    let mut driver = Driver { child, port: 0 };
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the announced port, then keeps draining the output so that
    // chromedriver never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(port) = line
                .strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
            {
                let _ = tx.send(port);
            }
        }
    });
    driver.port = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
        .await
        .expect("waiting for chromedriver")
        .expect("chromedriver announced its port");
    driver
}

/// The engine, its pages on a socket, and a browser.
struct Ui {
    h: Harness,
    base: String,
    browser: Client,
    _driver: Driver,
    _profile: std::path::PathBuf,
}

impl Ui {
    async fn new() -> Ui {
        let h = Harness::new(Db::Sqlite).await;
        let users = Users::default()
            .with("ana", AGENT, &["agente_ventas_digitales"])
            .with(
                "luis",
                LEAD,
                &["responsable_centro_llamadas", "operator", "process_owner"],
            )
            .with(
                "tito",
                INSTALLER,
                &["jefe_instalaciones", "tecnico_instalaciones"],
            );
        let app = router(Arc::new(AppState {
            engine: h.engine.clone(),
            users,
            metrics: None,
            connectors: h.connectors.clone(),
            webhooks: Webhooks::default(),
            health: Default::default(),
            census: Default::default(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let driver = driver().await;
        let profile = std::env::temp_dir().join(format!(
            "tramite-chromium-{}",
            uuid::Uuid::now_v7().simple()
        ));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1366,768", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--lang=es-BO",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a Chromium session");
        Ui {
            h,
            base,
            browser,
            _driver: driver,
            _profile: profile,
        }
    }

    async fn goto(&self, path: &str) {
        self.browser
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    async fn sign_in(&self, token: &str) {
        self.goto("/logout").await;
        self.goto("/login").await;
        self.browser
            .find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys(token)
            .await
            .unwrap();
        self.click("#sign-in").await;
        assert_eq!(self.wait_path("/inbox").await, "/inbox", "signed in");
    }

    async fn click(&self, css: &str) {
        self.browser
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Waits (up to 5 s) for an element to appear (after a page load).
    async fn wait_for(&self, css: &str) {
        for _ in 0..100 {
            if self.browser.find(Locator::Css(css)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{css} never appeared");
    }

    async fn text(&self, css: &str) -> String {
        self.browser
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Waits (up to 5 s) for the browser to reach `expected`; returns where it is.
    async fn wait_path(&self, expected: &str) -> String {
        let mut path = self.path().await;
        for _ in 0..100 {
            if path == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            path = self.path().await;
        }
        path
    }

    async fn path(&self) -> String {
        let url = self.browser.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Fills a form field as a person would: types, picks or ticks.
    async fn fill(&self, name: &str, value: &str) {
        let css = format!("#f-{name}");
        let el = self
            .browser
            .find(Locator::Css(&css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        if el.tag_name().await.unwrap() == "fieldset" {
            // A yes/no question: its Sí or No.
            let choice = format!("#f-{name}-{value}");
            self.browser
                .find(Locator::Css(&choice))
                .await
                .unwrap_or_else(|e| panic!("{choice}: {e}"))
                .click()
                .await
                .unwrap();
            return;
        }
        match el.attr("type").await.unwrap().as_deref() {
            Some("checkbox") => {
                if el.is_selected().await.unwrap() != (value == "true") {
                    el.click().await.unwrap();
                }
            }
            Some("date") => {
                // Typing into a date input depends on the browser's locale.
                self.browser
                    .execute(
                        "arguments[0].value = arguments[1];",
                        vec![serde_json::to_value(&el).unwrap(), json!(value)],
                    )
                    .await
                    .unwrap();
            }
            _ if el.tag_name().await.unwrap() == "select" => {
                el.select_by_value(value).await.unwrap();
            }
            _ => {
                el.clear().await.unwrap();
                el.send_keys(value).await.unwrap();
            }
        }
    }

    /// From the inbox: claims the task at `node` of `instance` (or of its
    /// child) in one click, fills `fields` and presses `outcome`.
    async fn work(&self, instance: &str, node: &str, fields: &[(&str, &str)], outcome: &str) {
        let task = self.h.task(instance, node).await;
        self.goto("/inbox").await;
        self.click(&format!("tr[data-task='{}'] button.claim", task.id))
            .await;
        let page = format!("/tasks/{}", task.id);
        assert_eq!(self.wait_path(&page).await, page);
        for (name, value) in fields {
            self.fill(name, value).await;
        }
        self.click(&format!("#outcome-{outcome}")).await;
        assert_eq!(
            self.wait_path("/inbox?done=1").await,
            "/inbox?done=1",
            "`{node}` completed with `{outcome}`"
        );
    }

    /// A P06 call answered, its identification task open on the page of
    /// an agent signed in: the request's id and the task.
    async fn at_the_identification(&self) -> (String, tramite_engine::store::tasks::TaskRow) {
        let id = self
            .h
            .start("OPE-SUM-VEN-P06", "ivr", json!({"telefono": "72345678"}))
            .await;
        self.h
            .complete(&id, "recibir_llamada", "atendida", json!({}))
            .await;
        let task = self.h.task(&id, "identificar_cliente").await;
        self.sign_in(AGENT).await;
        self.goto(&format!("/tasks/{}", task.id)).await;
        (id, task)
    }

    async fn screenshot(&self, name: &str) {
        self.screenshot_at(name, "body").await;
    }

    /// A screenshot with `css` scrolled into view (the page's top for `body`).
    async fn screenshot_at(&self, name: &str, css: &str) {
        if std::env::var_os("TRAMITE_SCREENSHOTS").is_none() {
            return;
        }
        self.browser
            .execute(
                "document.querySelector(arguments[0]).scrollIntoView({block: 'start'});",
                vec![json!(css)],
            )
            .await
            .unwrap();
        let png = self.browser.screenshot().await.unwrap();
        let dir = tramite_tests::repo_root().join("docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The page fits a 1366-pixel screen: no horizontal scrolling, and no
    /// text cut off by its box.
    async fn assert_fits(&self) {
        let found = self
            .browser
            .execute(
                r#"const cut = [...document.querySelectorAll("body *")].filter(e => {
                     const s = getComputedStyle(e);
                     return e.children.length === 0 && e.textContent.trim() !== ""
                       && e.scrollWidth > e.clientWidth + 1
                       && (s.overflowX === "hidden" || s.overflowX === "clip" || s.textOverflow === "ellipsis");
                   }).map(e => e.textContent.trim().slice(0, 60));
                   return {wide: document.documentElement.scrollWidth > window.innerWidth, cut};"#,
                vec![],
            )
            .await
            .unwrap();
        let path = self.path().await;
        assert_eq!(found["wide"], json!(false), "{path} scrolls sideways");
        assert_eq!(found["cut"], json!([]), "{path} cuts text off");
    }

    async fn close(self) {
        let _ = self.browser.close().await;
    }
}

/// An agent signs in and takes a P06 request from the call to the
/// quality-control call only through the pages; the installers do their
/// part (OPR-PAS-P02) through theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_completes_p06_through_the_pages() {
    let ui = Ui::new().await;
    let id =
        ui.h.start("OPE-SUM-VEN-P06", "ivr", json!({"telefono": "72345678"}))
            .await;
    ui.sign_in(AGENT).await;
    assert_eq!(ui.text("#user").await, "ana");
    let rows = ui.text("#rows").await;
    assert!(rows.contains("Recibir llamada"), "{rows}");
    ui.screenshot("inbox").await;
    ui.work(&id, "recibir_llamada", &[], "atendida").await;
    assert!(ui.text("#done").await.contains("completada"));
    // Step 3, with the Annex 1 call protocol on the page.
    let task = ui.h.task(&id, "identificar_cliente").await;
    ui.goto("/inbox").await;
    ui.click(&format!("tr[data-task='{}'] button.claim", task.id))
        .await;
    ui.wait_path(&format!("/tasks/{}", task.id)).await;
    let protocol = ui.text("#instructions").await;
    assert!(protocol.contains("Mi nombre es"), "{protocol}");
    ui.fill("nombre_cliente", "María Elena Rojas Vargas").await;
    ui.fill("servicio_solicitado", "internet_fibra").await;
    ui.fill("ci", "4587213").await;
    ui.screenshot("task").await;
    ui.click("#outcome-continuar").await;
    assert_eq!(ui.wait_path("/inbox?done=1").await, "/inbox?done=1");
    assert_eq!(ui.h.jobs().await, 1, "the NAF check runs");
    ui.work(
        &id,
        "solicitar_domicilio",
        &[("direccion", "Av. América 1234"), ("zona", "Cala Cala")],
        "continuar",
    )
    .await;
    assert_eq!(ui.h.jobs().await, 1, "the GIS check runs");
    ui.work(
        &id,
        "verificar_capacidad",
        &[("capacidad_confirmada", "true")],
        "continuar",
    )
    .await;
    ui.work(&id, "solicitar_requisitos", &[], "requisitos_solicitados")
        .await;
    // The client sends the documents by WhatsApp.
    ui.h.publish(
        "requisitos_whatsapp",
        "72345678",
        "wamid.ui",
        json!({"media": ["1234567890"], "attachments": [{"id": "1234567890", "type": "image", "caption": "CI anverso"}]}),
    )
    .await;
    let task = ui.h.task(&id, "imprimir_requisitos").await;
    ui.goto(&format!("/tasks/{}", task.id)).await;
    let received = ui.text("#received").await;
    assert!(received.contains("CI anverso"), "{received}");
    // WhatsApp's kind of media, in the page's language.
    assert!(received.contains("imagen"), "{received}");
    ui.work(
        &id,
        "imprimir_requisitos",
        &[("requisitos_impresos", "true")],
        "impresos",
    )
    .await;
    assert_eq!(ui.h.jobs().await, 1, "Smartflex registers the sale");
    ui.work(
        &id,
        "comunicar_solicitud",
        &[("dias_estimados", "5")],
        "comunicado",
    )
    .await;
    // The installation, by the installers.
    let child = ui.h.engine.children(&id).await.unwrap().remove(0);
    ui.sign_in(INSTALLER).await;
    ui.work(
        &child.id,
        "programar",
        &[("fecha_programada", "2026-12-01")],
        "programada",
    )
    .await;
    ui.work(
        &child.id,
        "instalar",
        &[("instalacion_realizada", "true"), ("dias_ejecucion", "4")],
        "cerrar",
    )
    .await;
    ui.sign_in(AGENT).await;
    ui.work(
        &id,
        "seguimiento_venta",
        &[("contrato_firmado", "true")],
        "continuar",
    )
    .await;
    ui.work(
        &id,
        "control_calidad",
        &[("cliente_satisfecho", "true")],
        "registrado",
    )
    .await;
    let instance = ui.h.instance(&id).await;
    assert_eq!(instance.status, "completed");
    assert_eq!(instance.outcome.as_deref(), Some("venta_concretada"));
    // The instance page: status, timeline, documents.
    ui.goto(&format!("/instances/{id}")).await;
    assert_eq!(ui.text("#outcome").await, "Venta concretada");
    assert!(ui.text("#timeline").await.contains("tarea completada"));
    assert!(
        ui.text("#doc-contrato_servicios")
            .await
            .contains("Registrado")
    );
    ui.goto(&format!("/instances/{id}/documents/solicitud_servicio"))
        .await;
    let doc = ui.text("#document").await;
    assert!(
        doc.contains("Solicitud de Servicio") && doc.contains("4587213"),
        "{doc}"
    );
    ui.screenshot("document").await;
    // English on request; every main page fits the screen in both languages.
    ui.goto(&format!("/instances/{id}")).await;
    ui.assert_fits().await;
    ui.click("#lang").await;
    assert!(ui.text("h2").await.contains("Diagram"));
    ui.screenshot("instance").await;
    let pages = ["/inbox", "/instances", "/definitions", "/indicators"];
    // Incidents are for the team lead (`operator`): an agent has no link
    // to them and is refused the page.
    assert!(
        ui.browser
            .find(Locator::Css("a[href='/incidents']"))
            .await
            .is_err()
    );
    for page in pages {
        for _ in ["en", "es"] {
            ui.goto(page).await;
            ui.assert_fits().await;
            ui.click("#lang").await;
        }
    }
    ui.sign_in(LEAD).await;
    assert!(
        ui.browser
            .find(Locator::Css("a[href='/incidents']"))
            .await
            .is_ok()
    );
    for _ in ["en", "es"] {
        ui.goto("/incidents").await;
        assert!(
            ui.text("h1").await.starts_with("Incident"),
            "the team lead sees the incidents page"
        );
        ui.assert_fits().await;
        ui.click("#lang").await;
    }
    ui.close().await;
}

/// A wrong CI shows an inline error — from the browser's own check, and
/// from the server's when the browser's is bypassed — and nothing is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ci_is_caught_inline_and_nothing_is_saved() {
    let ui = Ui::new().await;
    let (id, task) = ui.at_the_identification().await;
    ui.fill("nombre_cliente", "Juan Pérez").await;
    ui.fill("servicio_solicitado", "trio").await;
    ui.fill("ci", "12A4").await;
    // Typing shows no error yet: the browser checks when the form is sent.
    assert!(ui.browser.find(Locator::Css("#error-ci")).await.is_err());
    ui.click("#outcome-continuar").await;
    // The browser refused to send it and said why under the field.
    assert_eq!(ui.path().await, format!("/tasks/{}", task.id));
    assert!(!ui.text("#error-ci").await.is_empty());
    // Without the browser's check, the server refuses it the same way.
    ui.browser
        .execute(
            "document.getElementById('f-ci').removeAttribute('pattern');",
            vec![],
        )
        .await
        .unwrap();
    ui.click("#outcome-continuar").await;
    ui.wait_for("#form-errors").await;
    assert!(ui.text("#form-errors").await.contains("no se guardó nada"));
    let message = ui.text("#error-ci").await;
    assert_eq!(message, "No tiene el formato esperado (vea la indicación).");
    ui.screenshot_at("task-error", "#task-form").await;
    // The mistake is focused, and once corrected it stops showing.
    let focused = ui
        .browser
        .execute("return document.activeElement.id;", vec![])
        .await
        .unwrap();
    assert_eq!(focused, json!("f-ci"));
    ui.fill("ci", "4587213").await;
    ui.browser
        .execute(
            "document.getElementById('f-ci').dispatchEvent(new Event('change', {bubbles: true}));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(ui.text("#error-ci").await, "");
    // Nothing was saved: the task is still open, the CI never written.
    assert!(ui.h.task_open(&id, "identificar_cliente").await);
    assert!(!ui.h.instance(&id).await.state.variables.contains_key("ci"));
    // The request's page marks where it waits, on the diagram and in words.
    ui.goto(&format!("/instances/{id}")).await;
    assert!(
        ui.text("#waits")
            .await
            .contains("Identificarse según protocolo")
    );
    ui.wait_for("#diagram svg g.here").await;
    let marked = ui.text("#diagram svg g.here").await;
    assert!(marked.contains("Identificarse"), "{marked}");
    ui.close().await;
}

/// What an agent types before pressing "Tomar" (the call has begun) is
/// still in the form once the task is theirs: the claim is a form of its
/// own, and the page after it used to draw the form empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_typed_before_taking_the_task_is_kept() {
    let ui = Ui::new().await;
    let (id, task) = ui.at_the_identification().await;
    ui.fill("nombre_cliente", "Juan Pérez").await;
    ui.fill("servicio_solicitado", "trio").await;
    ui.click("#claim").await;
    ui.wait_for("#release").await;
    let value = |name: &'static str| {
        let ui = &ui;
        async move {
            ui.browser
                .execute(
                    "return document.getElementById(arguments[0]).value;",
                    vec![json!(format!("f-{name}"))],
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(value("nombre_cliente").await, json!("Juan Pérez"));
    assert_eq!(value("servicio_solicitado").await, json!("trio"));
    // Once only: the page drawn again later shows what is saved.
    ui.goto(&format!("/tasks/{}", task.id)).await;
    assert_eq!(value("nombre_cliente").await, json!(""));
    // A send whose session had ended (another tab's "Salir", the 12 hours)
    // goes to the sign-in page; signed in again, the task has it all.
    ui.fill("nombre_cliente", "Juan Pérez").await;
    ui.fill("servicio_solicitado", "trio").await;
    ui.fill("ci", "4587213").await;
    ui.browser.delete_all_cookies().await.unwrap();
    ui.click("#outcome-continuar").await;
    let sign_in = format!("/login?next=%2Ftasks%2F{}", task.id);
    assert_eq!(ui.wait_path(&sign_in).await, sign_in);
    assert!(ui.h.task_open(&id, "identificar_cliente").await);
    // Signed in again, the agent is back on the task, with what they typed.
    ui.browser
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(AGENT)
        .await
        .unwrap();
    ui.click("#sign-in").await;
    let page = format!("/tasks/{}", task.id);
    assert_eq!(ui.wait_path(&page).await, page);
    assert_eq!(value("nombre_cliente").await, json!("Juan Pérez"));
    ui.close().await;
}

/// "El cliente desiste" closes the request without the form's checks, so
/// the browser asks first: cancelling sends nothing, accepting closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_asks_before_closing_the_request() {
    let ui = Ui::new().await;
    let (id, task) = ui.at_the_identification().await;
    ui.fill("nombre_cliente", "Juan Pérez").await;
    ui.click("#outcome-cliente_desiste").await;
    let asked = ui.browser.get_alert_text().await.expect("a question");
    assert!(
        asked.contains("Esto cierra la solicitud como") && asked.contains("¿Continuar?"),
        "{asked}"
    );
    ui.browser.dismiss_alert().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ui.path().await, format!("/tasks/{}", task.id), "stayed");
    assert!(
        ui.h.task_open(&id, "identificar_cliente").await,
        "cancelled: nothing sent"
    );
    ui.click("#outcome-cliente_desiste").await;
    ui.browser.accept_alert().await.unwrap();
    assert_eq!(ui.wait_path("/inbox?done=1").await, "/inbox?done=1");
    let instance = ui.h.instance(&id).await;
    assert_eq!(instance.status, "completed");
    assert_eq!(
        instance.state.variables["motivo_rechazo"], "cliente_desiste",
        "closed as the button says"
    );
    ui.close().await;
}

/// "Salir" in the header is a button that ends the session: the browser
/// lands on the sign-in page, and the session cookie it held, put back
/// (kept by a browser extension, copied off the PC), opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_ends_the_session_even_for_a_copy_of_the_cookie() {
    let ui = Ui::new().await;
    ui.sign_in(AGENT).await;
    let copy = ui
        .browser
        .get_named_cookie("tramite_session")
        .await
        .expect("signed in: a session cookie");
    assert_eq!(ui.text("#sign-out").await, "Salir");
    ui.click("#sign-out").await;
    assert_eq!(ui.wait_path("/login").await, "/login");
    assert!(
        ui.browser
            .get_named_cookie("tramite_session")
            .await
            .is_err(),
        "the browser forgot it"
    );
    ui.browser.add_cookie(copy).await.unwrap();
    ui.goto("/inbox").await;
    assert_eq!(
        ui.wait_path("/login?next=%2Finbox").await,
        "/login?next=%2Finbox",
        "the copy is refused (signing in again comes back to the inbox)"
    );
    ui.sign_in(AGENT).await;
    assert_eq!(ui.path().await, "/inbox", "a new sign-in works");
    ui.close().await;
}

/// An agent cannot open a task of a role they do not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_open_another_roles_task() {
    let ui = Ui::new().await;
    let id =
        ui.h.start(
            "OPR-PAS-P02",
            "other",
            json!({"numero_solicitud": "SF-2026-000001", "telefono": "72345678",
                   "direccion": "Av. América 1234", "zona": "Cala Cala", "servicio": "trio"}),
        )
        .await;
    let tasks =
        ui.h.engine
            .tasks(&tramite_engine::store::tasks::Filter {
                instance_id: Some(id.clone()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
    let task = tasks.first().expect("an installation task");
    ui.sign_in(AGENT).await;
    ui.goto(&format!("/tasks/{}", task.id)).await;
    assert!(ui.text("#error").await.contains("No tiene acceso"));
    ui.goto("/inbox").await;
    assert!(ui.text("#empty").await.contains("No hay tareas"));
    // A call comes in while the inbox is open: it appears without a reload.
    let call =
        ui.h.start("OPE-SUM-VEN-P06", "ivr", json!({"telefono": "72345678"}))
            .await;
    let new = ui.h.task(&call, "recibir_llamada").await;
    let row = format!("tr[data-task='{}']", new.id);
    let mut seen = false;
    for _ in 0..60 {
        if ui.browser.find(Locator::Css(&row)).await.is_ok() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(seen, "the inbox refreshed by itself");
    assert!(!ui.text("#rows").await.contains("Programar"));
    ui.close().await;
}

/// The dashboard shows a known day's value and verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_known_days_value_and_verdict() {
    let ui = Ui::new().await;
    // 2026-11-27: one efficient sale of two → 50 %, Observado (below 95 %).
    tramite_tests::p06::sale(&ui.h, true).await;
    tramite_tests::p06::sale(&ui.h, false).await;
    ui.sign_in(LEAD).await;
    ui.goto("/indicators").await;
    let row = ui
        .text(".board[data-code='OPE-SUM-VEN-P06'] tr[data-day='2026-11-27']")
        .await;
    assert!(row.contains("1 / 2"), "{row}");
    assert!(row.contains("50,0"), "Spanish decimals: {row}");
    assert!(row.contains("Observado"), "{row}");
    ui.screenshot("indicators").await;
    ui.goto("/definitions/OPE-SUM-VEN-P06").await;
    // mermaid drew the diagram from the YAML in the page.
    for _ in 0..50 {
        if ui.browser.find(Locator::Css("#diagram svg")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ui.browser
        .find(Locator::Css("#diagram svg"))
        .await
        .expect("the diagram is drawn");
    ui.screenshot("definition").await;
    ui.close().await;
}
