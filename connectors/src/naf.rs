//! NAF (Núcleo Administrativo Financiero), module "Paquete Accionario",
//! option "Cartera": the client portfolio, where impediments to a sale are
//! recorded (debt, credit-risk listing, equipment not returned).
//!
//! [`Simulator`] answers `check_portfolio` from a fixed portfolio
//! ([`dataset`], listed in the crate's README): a CI that is not in it is a
//! new client, with no impediment.

use serde_json::{Map, Value};
use tramite_engine::catalog::{ConnectorSpec, ErrorSpec, OperationSpec, ParamSpec};
use tramite_engine::definition::VarType;
use tramite_engine::runtime::connector::{BoxFuture, Connector, ConnectorCall, ConnectorError};

use crate::faults::Faults;
use crate::sim::{Answer, Harness, business, text};

/// The name of NAF's one operation.
pub const OPERATION: &str = "check_portfolio";

/// Department codes a CI can be issued in (`ci_extension`).
pub const EXTENSIONS: [&str; 9] = ["CB", "LP", "SC", "OR", "PT", "CH", "TJ", "BE", "PD"];

/// Why NAF refuses a new sale to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Impediment {
    /// `deuda_pendiente`: overdue bills.
    DeudaPendiente,
    /// `central_riesgos`: listed in the credit-risk bureau.
    CentralRiesgos,
    /// `devolucion_equipo`: equipment (modem, decoder) not returned.
    DevolucionEquipo,
}

impl Impediment {
    /// The code NAF answers with.
    pub fn code(self) -> &'static str {
        match self {
            Impediment::DeudaPendiente => "deuda_pendiente",
            Impediment::CentralRiesgos => "central_riesgos",
            Impediment::DevolucionEquipo => "devolucion_equipo",
        }
    }
}

/// One client of the portfolio.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// Identity card number, with its complement if any (`1234567-1A`).
    pub ci: String,
    /// Department the CI was issued in (`CB`).
    pub extension: String,
    /// Full name on record.
    pub name: String,
    /// Member (socio) of the cooperative.
    pub member: bool,
    /// Impediments to a new sale; empty when none.
    pub impediments: Vec<Impediment>,
    /// Overdue debt in bolivianos (non-zero only with `deuda_pendiente`).
    pub debt_bs: f64,
}

/// What the NAF simulator knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The portfolio; [`dataset`] by default.
    pub clients: Vec<Client>,
}

impl Default for Config {
    fn default() -> Config {
        Config { clients: dataset() }
    }
}

/// The simulated portfolio: fifteen clients covering every branch of P06's
/// step 4 (see the README's "Simulators and their data sets").
pub fn dataset() -> Vec<Client> {
    use Impediment::{CentralRiesgos, DeudaPendiente, DevolucionEquipo};
    let client =
        |ci: &str, ext: &str, name: &str, member, impediments: &[Impediment], debt_bs| Client {
            ci: ci.to_owned(),
            extension: ext.to_owned(),
            name: name.to_owned(),
            member,
            impediments: impediments.to_vec(),
            debt_bs,
        };
    vec![
        // No impediment.
        client("4587213", "CB", "María Elena Rojas Vargas", true, &[], 0.0),
        client(
            "1234567-1A",
            "CB",
            "Carmen Rosa Torrico Zurita",
            true,
            &[],
            0.0,
        ),
        client("654321", "CB", "Gregorio Arnez Montaño", true, &[], 0.0),
        client(
            "2845671",
            "LP",
            "Jorge Luis Vargas Limachi",
            false,
            &[],
            0.0,
        ),
        client("9876543", "SC", "Daniela Suárez Egüez", false, &[], 0.0),
        client(
            "7012345",
            "CB",
            "Sofía Alejandra Montaño Heredia",
            false,
            &[],
            0.0,
        ),
        client("6011223", "CB", "Patricia Veizaga Terrazas", true, &[], 0.0),
        // Clean in NAF, but Smartflex already blocks it (see smartflex).
        client(
            "6543210",
            "CB",
            "Juan Carlos Quispe Mamani",
            false,
            &[],
            0.0,
        ),
        // Impediments.
        client(
            "3021457",
            "CB",
            "Rosa Mamani Choque",
            true,
            &[DeudaPendiente],
            350.5,
        ),
        client(
            "45678",
            "CB",
            "Hilda Salazar de Camacho",
            true,
            &[DeudaPendiente],
            89.9,
        ),
        client(
            "5123987",
            "CB",
            "Luis Fernando Gutiérrez Soria",
            false,
            &[CentralRiesgos],
            0.0,
        ),
        client(
            "3344556",
            "OR",
            "Wilfredo Condori Flores",
            false,
            &[CentralRiesgos],
            0.0,
        ),
        client(
            "7894561",
            "CB",
            "Ana Lucía Fernández Claure",
            false,
            &[DevolucionEquipo],
            0.0,
        ),
        client(
            "8123456",
            "CB",
            "Pedro Antonio Choque Colque",
            true,
            &[DeudaPendiente, CentralRiesgos],
            1280.0,
        ),
        client(
            "5566778-2B",
            "CB",
            "Marco Antonio Villarroel Rocha",
            false,
            &[DeudaPendiente, DevolucionEquipo],
            540.0,
        ),
    ]
}

/// Whether `ci` (already trimmed and in upper case) is well formed:
/// 5 to 10 digits, optionally a dash, a digit and a capital letter
/// (`^[0-9]{5,10}(-[0-9][A-Z])?$`).
pub fn is_valid_ci(ci: &str) -> bool {
    let (number, complement) = match ci.split_once('-') {
        Some((n, c)) => (n, Some(c)),
        None => (ci, None),
    };
    let number_ok = (5..=10).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit());
    let complement_ok = complement.is_none_or(|c| {
        let b = c.as_bytes();
        b.len() == 2 && b[0].is_ascii_digit() && b[1].is_ascii_uppercase()
    });
    number_ok && complement_ok
}

/// The NAF simulator.
#[derive(Debug)]
pub struct Simulator {
    config: Config,
    harness: Harness,
}

impl Default for Simulator {
    fn default() -> Simulator {
        Simulator::new(Config::default())
    }
}

impl Simulator {
    /// A simulator over `config`, with its own (inactive) faults.
    pub fn new(config: Config) -> Simulator {
        Simulator {
            config,
            harness: Harness::new("NAF"),
        }
    }

    /// The same simulator, driven by `faults` (e.g. one handle shared by
    /// several simulators).
    pub fn with_faults(mut self, faults: Faults) -> Simulator {
        self.harness.set_faults(faults);
        self
    }

    /// Its faults; clones of the handle switch them.
    pub fn faults(&self) -> &Faults {
        self.harness.faults()
    }

    /// How many calls it has received, failed ones included.
    pub fn calls(&self) -> u64 {
        self.harness.calls()
    }

    /// Its portfolio.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `check_portfolio`, without faults: the client with this CI (and
    /// department, when `extension` is given — the same number issued in
    /// another department is another person).
    pub fn check_portfolio(&self, ci: &str, extension: Option<&str>) -> Answer {
        let ci = ci.trim().to_uppercase();
        if !is_valid_ci(&ci) {
            return Err(business(
                "invalid_ci",
                format!("`{ci}` is not a CI number (5 to 10 digits, optional complement like -1A)"),
            ));
        }
        let extension = extension
            .map(|e| e.trim().to_uppercase())
            .filter(|e| !e.is_empty());
        if let Some(e) = &extension
            && !EXTENSIONS.contains(&e.as_str())
        {
            return Err(business(
                "invalid_ci",
                format!("`{e}` is not a department code ({})", EXTENSIONS.join(", ")),
            ));
        }
        let client = self
            .config
            .clients
            .iter()
            .find(|c| c.ci == ci && extension.as_ref().is_none_or(|e| *e == c.extension));
        let mut out = Map::new();
        out.insert("found".to_owned(), Value::Bool(client.is_some()));
        out.insert(
            "member".to_owned(),
            Value::Bool(client.is_some_and(|c| c.member)),
        );
        if let Some(c) = client {
            out.insert("client_name".to_owned(), Value::String(c.name.clone()));
        }
        let impediments: Vec<Value> = client
            .map(|c| {
                c.impediments
                    .iter()
                    .map(|i| Value::from(i.code()))
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            "has_impediment".to_owned(),
            Value::Bool(!impediments.is_empty()),
        );
        out.insert("impediments".to_owned(), Value::Array(impediments));
        out.insert(
            "debt_bs".to_owned(),
            Value::from(client.map_or(0.0, |c| c.debt_bs)),
        );
        Ok(out)
    }
}

impl Connector for Simulator {
    fn call<'a>(
        &'a self,
        call: ConnectorCall<'a>,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ConnectorError>> {
        Box::pin(self.harness.run(call.idempotency_key, move || {
            if call.operation != OPERATION {
                return Err(self.harness.unknown_operation(call.operation));
            }
            let Some(ci) = text(call.input, "ci") else {
                return Err(business("invalid_ci", "no CI number was given"));
            };
            self.check_portfolio(ci, text(call.input, "ci_extension"))
        }))
    }
}

/// NAF's operations.
pub fn spec() -> ConnectorSpec {
    ConnectorSpec {
        name: "naf".to_owned(),
        title: "NAF — Paquete Accionario, opción Cartera".to_owned(),
        operations: vec![OperationSpec {
            name: OPERATION.to_owned(),
            description:
                "Looks the client up by identity card (CI) and lists impediments to a sale."
                    .to_owned(),
            inputs: vec![
                ParamSpec::required(
                    "ci",
                    VarType::String,
                    "identity card number (carnet de identidad)",
                ),
                ParamSpec::optional(
                    "ci_extension",
                    VarType::String,
                    "department code of the CI, e.g. CB",
                ),
            ],
            outputs: vec![
                ParamSpec::required("found", VarType::Boolean, "the CI is in the portfolio"),
                ParamSpec::required(
                    "member",
                    VarType::Boolean,
                    "the client is a member (socio) of the cooperative",
                ),
                ParamSpec::optional(
                    "client_name",
                    VarType::String,
                    "name on record; absent when the CI is not found",
                ),
                ParamSpec::required(
                    "has_impediment",
                    VarType::Boolean,
                    "some impediment blocks a new sale",
                ),
                ParamSpec::required(
                    "impediments",
                    VarType::List,
                    "impediment codes: deuda_pendiente, central_riesgos, devolucion_equipo",
                ),
                ParamSpec::required("debt_bs", VarType::Number, "overdue debt in bolivianos"),
            ],
            errors: vec![ErrorSpec::new(
                "invalid_ci",
                "the CI number is malformed or its check fails",
            )],
        }],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sim::tests::{call_checked, input};

    async fn check(sim: &Simulator, pairs: &[(&str, &str)]) -> Answer {
        call_checked(sim, &spec(), OPERATION, pairs).await
    }

    fn code(answer: Answer) -> String {
        match answer {
            Err(ConnectorError::Business { code, .. }) => code,
            other => panic!("expected a business error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn client_without_impediment() {
        let sim = Simulator::default();
        let out = check(&sim, &[("ci", "4587213"), ("ci_extension", "CB")])
            .await
            .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({
                "found": true, "member": true, "client_name": "María Elena Rojas Vargas",
                "has_impediment": false, "impediments": [], "debt_bs": 0.0
            })
        );
    }

    #[tokio::test]
    async fn client_with_debt() {
        let sim = Simulator::default();
        let out = check(&sim, &[("ci", "3021457")]).await.unwrap();
        assert_eq!(out["has_impediment"], json!(true));
        assert_eq!(out["impediments"], json!(["deuda_pendiente"]));
        assert_eq!(out["debt_bs"], json!(350.5));
        assert_eq!(out["member"], json!(true));
    }

    #[tokio::test]
    async fn each_impediment_code_occurs() {
        let sim = Simulator::default();
        for (ci, impediments) in [
            ("5123987", json!(["central_riesgos"])),
            ("7894561", json!(["devolucion_equipo"])),
            ("8123456", json!(["deuda_pendiente", "central_riesgos"])),
            (
                "5566778-2B",
                json!(["deuda_pendiente", "devolucion_equipo"]),
            ),
        ] {
            let out = check(&sim, &[("ci", ci)]).await.unwrap();
            assert_eq!(out["has_impediment"], json!(true), "{ci}");
            assert_eq!(out["impediments"], impediments, "{ci}");
        }
    }

    #[tokio::test]
    async fn complement_and_short_ci() {
        let sim = Simulator::default();
        let out = check(&sim, &[("ci", " 1234567-1a ")]).await.unwrap();
        assert_eq!(out["client_name"], json!("Carmen Rosa Torrico Zurita"));
        // Without its complement it is another CI: a new client.
        let out = check(&sim, &[("ci", "1234567")]).await.unwrap();
        assert_eq!(out["found"], json!(false));
        let out = check(&sim, &[("ci", "45678")]).await.unwrap();
        assert_eq!(out["debt_bs"], json!(89.9));
    }

    #[tokio::test]
    async fn new_client() {
        let sim = Simulator::default();
        let out = check(&sim, &[("ci", "9999999"), ("ci_extension", "CB")])
            .await
            .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({
                "found": false, "member": false,
                "has_impediment": false, "impediments": [], "debt_bs": 0.0
            })
        );
    }

    #[tokio::test]
    async fn another_department_is_another_person() {
        let sim = Simulator::default();
        let out = check(&sim, &[("ci", "2845671"), ("ci_extension", "lp")])
            .await
            .unwrap();
        assert_eq!(out["found"], json!(true));
        let out = check(&sim, &[("ci", "2845671"), ("ci_extension", "CB")])
            .await
            .unwrap();
        assert_eq!(out["found"], json!(false));
    }

    #[tokio::test]
    async fn invalid_ci() {
        let sim = Simulator::default();
        for ci in [
            "1234",
            "12345678901",
            "12A4567",
            "1234567-A1",
            "1234567-1",
            "",
            "   ",
        ] {
            assert_eq!(
                code(check(&sim, &[("ci", ci)]).await),
                "invalid_ci",
                "{ci:?}"
            );
        }
        assert_eq!(code(check(&sim, &[]).await), "invalid_ci");
        assert_eq!(
            code(check(&sim, &[("ci", "4587213"), ("ci_extension", "XX")]).await),
            "invalid_ci"
        );
    }

    #[test]
    fn ci_pattern() {
        for ok in ["12345", "1234567890", "1234567-1A", "654321"] {
            assert!(is_valid_ci(ok), "{ok}");
        }
        for bad in [
            "1234",
            "12345678901",
            "1234567-1a",
            "1234567-AA",
            "-1A",
            "12345-1A-1B",
        ] {
            assert!(!is_valid_ci(bad), "{bad}");
        }
    }

    #[test]
    fn dataset_is_consistent() {
        let clients = dataset();
        assert_eq!(clients.len(), 15);
        for c in &clients {
            assert!(is_valid_ci(&c.ci), "{}", c.ci);
            assert!(EXTENSIONS.contains(&c.extension.as_str()), "{}", c.ci);
            let in_debt = c.impediments.contains(&Impediment::DeudaPendiente);
            assert_eq!(in_debt, c.debt_bs > 0.0, "{}", c.ci);
        }
        let mut cis: Vec<&str> = clients.iter().map(|c| c.ci.as_str()).collect();
        cis.sort_unstable();
        cis.dedup();
        assert_eq!(cis.len(), clients.len());
    }

    #[tokio::test]
    async fn fails_n_times_then_answers() {
        let sim = Simulator::default();
        sim.faults().fail_next(2);
        for _ in 0..2 {
            let err = check(&sim, &[("ci", "4587213")]).await.unwrap_err();
            assert!(matches!(err, ConnectorError::Transient { .. }), "{err:?}");
        }
        assert!(check(&sim, &[("ci", "4587213")]).await.is_ok());
        assert_eq!(sim.calls(), 3);
        assert_eq!(sim.faults().injected(), 2);
    }

    #[tokio::test]
    async fn outage_until_cleared() {
        let faults = Faults::new();
        let sim = Simulator::default().with_faults(faults.clone());
        faults.start_outage();
        for _ in 0..5 {
            assert!(matches!(
                check(&sim, &[("ci", "4587213")]).await,
                Err(ConnectorError::Transient { .. })
            ));
        }
        faults.end_outage();
        assert!(check(&sim, &[("ci", "4587213")]).await.is_ok());
        assert_eq!(sim.calls(), 6);
    }

    #[tokio::test]
    async fn unknown_operation_is_transient() {
        let sim = Simulator::default();
        let input = input(&[("ci", "4587213")]);
        let err = sim
            .call(ConnectorCall {
                operation: "check_debts",
                input: &input,
                idempotency_key: "k",
                attempt: 1,
            })
            .await
            .unwrap_err();
        match err {
            ConnectorError::Transient { message, .. } => assert!(message.contains("check_debts")),
            other => panic!("{other:?}"),
        }
    }
}
