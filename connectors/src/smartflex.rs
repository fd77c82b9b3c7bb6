//! Smartflex: the commercial and operational platform where a sale is
//! registered as a service request; its reports feed the indicator.
//!
//! [`Simulator`] registers requests in memory, numbered in sequence
//! (`SF-2026-000001`, …). The job's idempotency key is the request's
//! identity: a key seen before returns the request it registered, never a
//! second one. [`Simulator::registrations`] lets tests check that.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde_json::{Map, Value};
use tramite_engine::catalog::{ConnectorSpec, ErrorSpec, OperationSpec, ParamSpec};
use tramite_engine::definition::VarType;
use tramite_engine::runtime::connector::{BoxFuture, Connector, ConnectorCall, ConnectorError};

use crate::faults::Faults;
use crate::gis;
use crate::naf::{self, Impediment};
use crate::service::Service;
use crate::sim::{Answer, Harness, business, rfc3339_utc, text, zone_key};

/// The name of Smartflex's one operation.
pub const OPERATION: &str = "register_service_request";

/// A product Smartflex does not sell in a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    /// The zone (compared case- and accent-insensitively).
    pub zone: String,
    /// The product.
    pub service: Service,
    /// Why, as Smartflex says it.
    pub reason: String,
}

/// What the Smartflex simulator knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// CIs Smartflex refuses (`client_blocked`): `CI-DEPARTMENT` (`5123987-CB`)
    /// or a bare `CI` for every department. By default NAF's
    /// `central_riesgos` clients and `6543210`, listed in Smartflex before
    /// NAF's portfolio caught up.
    pub blocked_cis: Vec<String>,
    /// Products not sold in some zones (`product_not_available`).
    pub not_sold: Vec<Restriction>,
    /// Installation backlog per zone, in days, added to the product's own
    /// lead time.
    pub zone_backlog_days: Vec<(String, u32)>,
    /// Backlog of a zone not in `zone_backlog_days`.
    pub default_backlog_days: u32,
    /// The map zones are read by, GIS's by default (the company's one map):
    /// a request for a zone by another of its names, or by its name in a
    /// municipality (`Centro` in Sacaba is `Sacaba Centro`), is for that
    /// zone, as GIS reads it (`Casco Viejo` is `Centro`): what GIS finds,
    /// Smartflex prices and refuses alike.
    pub map: Vec<gis::Zone>,
    /// The sequence number of the first request (1: `SF-2026-000001`).
    pub first_number: u64,
    /// When set, every request is registered at this instant (reproducible
    /// demos); otherwise at the system clock's time.
    pub fixed_clock: Option<SystemTime>,
}

impl Default for Config {
    fn default() -> Config {
        // The same people NAF knows: a CI with the department it was
        // issued in (the same number in another department is another
        // person).
        let mut blocked_cis: Vec<String> = naf::dataset()
            .into_iter()
            .filter(|c| c.impediments.contains(&Impediment::CentralRiesgos))
            .map(|c| format!("{}-{}", c.ci, c.extension))
            .collect();
        blocked_cis.push("6543210".to_owned());
        let backlog = [
            ("Centro", 0),
            ("Cala Cala", 0),
            ("Queru Queru", 0),
            ("Sarco", 1),
            ("Villa Busch", 1),
            ("Hipódromo", 1),
            ("Tupuraya", 2),
            ("Temporal", 2),
            ("Muyurina", 4),
            ("Pacata Alta", 4),
            ("Sacaba Centro", 5),
            ("Quillacollo Centro", 5),
            ("Tiquipaya", 7),
        ];
        let no_landline = "numeración de telefonía fija no habilitada en la zona";
        Config {
            blocked_cis,
            not_sold: vec![
                Restriction {
                    zone: "Tiquipaya".to_owned(),
                    service: Service::TelefoniaFija,
                    reason: no_landline.to_owned(),
                },
                Restriction {
                    zone: "Tiquipaya".to_owned(),
                    service: Service::Trio,
                    reason: no_landline.to_owned(),
                },
            ],
            zone_backlog_days: backlog
                .iter()
                .map(|&(zone, days)| (zone.to_owned(), days))
                .collect(),
            default_backlog_days: 3,
            map: gis::dataset(),
            first_number: 1,
            fixed_clock: None,
        }
    }
}

impl Config {
    /// Estimated days to install `service` in `zone` of `city` (none: the
    /// city of Cochabamba): the product's lead time (television 2,
    /// internet_fibra and telefonia_fija 3, duo_internet_tv 4, trio 5) plus
    /// the zone's backlog, within 2–15.
    pub fn estimated_days(&self, zone: &str, city: Option<&str>, service: Service) -> u32 {
        let lead = match service {
            Service::Television => 2,
            Service::InternetFibra | Service::TelefoniaFija => 3,
            Service::DuoInternetTv => 4,
            Service::Trio => 5,
        };
        let zone = self.zone_key(zone, city);
        let backlog = self
            .zone_backlog_days
            .iter()
            .find(|(z, _)| self.zone_key(z, None) == zone)
            .map_or(self.default_backlog_days, |&(_, days)| days);
        (lead + backlog).clamp(2, 15)
    }

    /// `zone` of `city` as compared: the map's zone it names, folded; a
    /// zone the map does not have, folded with a leading "zona" dropped —
    /// and, in another city than Cochabamba, under that city's name, so
    /// that it never takes the backlog or the refusals of a zone of the
    /// same name elsewhere (the tables name the map's zones).
    fn zone_key(&self, zone: &str, city: Option<&str>) -> String {
        if let Some(z) = gis::find_zone(&self.map, zone, city) {
            return zone_key(&z.name);
        }
        match city
            .map(crate::sim::fold)
            .filter(|c| !matches!(c.as_str(), "" | "cochabamba" | "cercado"))
        {
            // `/` is in no folded name.
            Some(city) => format!("{city}/{}", zone_key(zone)),
            None => zone_key(zone),
        }
    }
}

/// One registered service request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Its number (`SF-2026-000001`).
    pub request_number: String,
    /// When it was registered (RFC 3339, UTC).
    pub registered_at: String,
    /// Estimated days to install.
    pub estimated_days: u32,
    /// The idempotency key of the job that registered it.
    pub idempotency_key: String,
    /// The attempt of that job that registered it.
    pub attempt: u32,
    /// Client's identity card.
    pub ci: String,
    /// Client's full name.
    pub client_name: String,
    /// Contact phone.
    pub phone: String,
    /// Installation address.
    pub address: String,
    /// Installation zone.
    pub zone: String,
    /// Its municipality, if given (`Sacaba`); none: the city of Cochabamba.
    pub city: Option<String>,
    /// Product.
    pub service: Service,
    /// Channel the request came by.
    pub channel: String,
    /// The instance's business key, if given.
    pub reference: Option<String>,
}

impl Registration {
    fn answer(&self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert(
            "request_number".to_owned(),
            Value::String(self.request_number.clone()),
        );
        out.insert(
            "registered_at".to_owned(),
            Value::String(self.registered_at.clone()),
        );
        out.insert(
            "estimated_days".to_owned(),
            Value::from(self.estimated_days),
        );
        out
    }
}

#[derive(Debug, Default)]
struct Book {
    by_key: HashMap<String, usize>,
    list: Vec<Registration>,
    next: u64,
}

/// The Smartflex simulator.
#[derive(Debug)]
pub struct Simulator {
    config: Config,
    harness: Harness,
    book: Mutex<Book>,
}

impl Default for Simulator {
    fn default() -> Simulator {
        Simulator::new(Config::default())
    }
}

impl Simulator {
    /// A simulator over `config`, with no registrations and its own
    /// (inactive) faults.
    pub fn new(config: Config) -> Simulator {
        let book = Book {
            next: config.first_number,
            ..Book::default()
        };
        Simulator {
            config,
            harness: Harness::new("Smartflex"),
            book: Mutex::new(book),
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

    /// Its rules.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every request registered so far, in order.
    pub fn registrations(&self) -> Vec<Registration> {
        self.book().list.clone()
    }

    /// How many requests have been registered.
    pub fn registration_count(&self) -> usize {
        self.book().list.len()
    }

    /// The request registered under `idempotency_key`, if any.
    pub fn registration(&self, idempotency_key: &str) -> Option<Registration> {
        let book = self.book();
        book.by_key
            .get(idempotency_key)
            .map(|&i| book.list[i].clone())
    }

    /// `register_service_request`, without faults. A key registered before
    /// returns its request unchanged (whatever the input now says).
    pub fn register(
        &self,
        idempotency_key: &str,
        attempt: u32,
        input: &Map<String, Value>,
    ) -> Answer {
        self.register_telling(idempotency_key, attempt, input).0
    }

    /// Like [`Connector::call`] (faults included), also telling whether
    /// this call registered the request (`false`: the key's request was
    /// answered again). Decided under the lock that registers, so that of
    /// two concurrent tries with one key only one is told it created it.
    pub async fn call_telling_new(&self, call: ConnectorCall<'_>) -> (Answer, bool) {
        let created = std::sync::atomic::AtomicBool::new(false);
        let answer = self
            .harness
            .run(call.idempotency_key, || {
                if call.operation != OPERATION {
                    return Err(self.harness.unknown_operation(call.operation));
                }
                let (answer, new) =
                    self.register_telling(call.idempotency_key, call.attempt, call.input);
                created.store(new, std::sync::atomic::Ordering::Relaxed);
                answer
            })
            .await;
        (answer, created.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// [`Simulator::register`], and whether it registered a new request.
    fn register_telling(
        &self,
        idempotency_key: &str,
        attempt: u32,
        input: &Map<String, Value>,
    ) -> (Answer, bool) {
        // One lock for look-up and insertion: concurrent attempts with one
        // key register once.
        let mut book = self.book();
        if let Some(&i) = book.by_key.get(idempotency_key) {
            return (Ok(book.list[i].answer()), false);
        }
        let answer = self.register_new(&mut book, idempotency_key, attempt, input);
        let new = answer.is_ok();
        (answer, new)
    }

    /// Registers a request under a key not seen before.
    fn register_new(
        &self,
        book: &mut Book,
        idempotency_key: &str,
        attempt: u32,
        input: &Map<String, Value>,
    ) -> Answer {
        let field = |name: &str| {
            text(input, name)
                .map(str::to_owned)
                .ok_or_else(|| self.harness.bad_input(OPERATION, name))
        };
        let (ci, client_name, phone, address, zone, service_code, channel) = (
            field("ci")?.to_uppercase(),
            field("client_name")?,
            field("phone")?,
            field("address")?,
            field("zone")?,
            field("service")?,
            field("channel")?,
        );
        let extension = text(input, "ci_extension").map(str::to_uppercase);
        if self
            .config
            .blocked_cis
            .iter()
            .any(|b| blocked(b, &ci, extension.as_deref()))
        {
            return Err(business(
                "client_blocked",
                format!("client {ci} is blocked (registered in the central de riesgos)"),
            ));
        }
        let Some(service) = Service::from_code(&service_code) else {
            return Err(business(
                "product_not_available",
                format!("`{service_code}` is not a product on sale"),
            ));
        };
        let city = text(input, "city").map(str::to_owned);
        let folded_zone = self.config.zone_key(&zone, city.as_deref());
        if let Some(r) =
            self.config.not_sold.iter().find(|r| {
                r.service == service && self.config.zone_key(&r.zone, None) == folded_zone
            })
        {
            return Err(business(
                "product_not_available",
                format!("`{service}` is not sold in {zone}: {}", r.reason),
            ));
        }
        let (registered_at, year) =
            rfc3339_utc(self.config.fixed_clock.unwrap_or_else(SystemTime::now));
        let number = book.next;
        book.next += 1;
        let registration = Registration {
            request_number: format!("SF-{year:04}-{number:06}"),
            registered_at,
            estimated_days: self.config.estimated_days(&zone, city.as_deref(), service),
            idempotency_key: idempotency_key.to_owned(),
            attempt,
            ci,
            client_name,
            phone,
            address,
            zone,
            city,
            service,
            channel,
            reference: text(input, "reference").map(str::to_owned),
        };
        let answer = registration.answer();
        let index = book.list.len();
        book.list.push(registration);
        book.by_key.insert(idempotency_key.to_owned(), index);
        Ok(answer)
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // Every update of the book is complete before the guard drops.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Connector for Simulator {
    fn call<'a>(
        &'a self,
        call: ConnectorCall<'a>,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ConnectorError>> {
        Box::pin(async move { self.call_telling_new(call).await.0 })
    }
}

/// Whether the blocked entry `entry` (`CI` or `CI-DEPARTMENT`) is the
/// client with `ci`, issued in `extension` when given: without it the
/// number alone decides, as it did before Smartflex was told the department.
fn blocked(entry: &str, ci: &str, extension: Option<&str>) -> bool {
    // The department is the last part, when it is one: a CI may have a
    // complement of its own (`5566778-2B-CB`, or bare `5566778-2B`).
    let department = entry.rsplit_once('-').filter(|(_, d)| {
        naf::EXTENSIONS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(d))
    });
    match department {
        Some((number, department)) => {
            number.eq_ignore_ascii_case(ci)
                && extension.is_none_or(|e| e.eq_ignore_ascii_case(department))
        }
        None => entry.eq_ignore_ascii_case(ci),
    }
}
/// Smartflex's operations.
pub fn spec() -> ConnectorSpec {
    ConnectorSpec {
        name: "smartflex".to_owned(),
        title: "Smartflex — plataforma comercial y operativa".to_owned(),
        operations: vec![OperationSpec {
            name: OPERATION.to_owned(),
            description: "Registers the sale as a service request (\"Procedimiento Venta\"); \
                          the same idempotency key never registers twice."
                .to_owned(),
            inputs: vec![
                ParamSpec::required("ci", VarType::String, "client's identity card"),
                ParamSpec::optional(
                    "ci_extension",
                    VarType::String,
                    "department the identity card was issued in (LP, CB, …): the same number in another department is another person",
                ),
                ParamSpec::required("client_name", VarType::String, "client's full name"),
                ParamSpec::required("phone", VarType::String, "contact phone"),
                ParamSpec::required("address", VarType::String, "installation address"),
                ParamSpec::required("zone", VarType::String, "installation zone"),
                ParamSpec::optional(
                    "city",
                    VarType::String,
                    "municipality of the zone (Cercado, Sacaba, Quillacollo, Tiquipaya); the city of Cochabamba when absent",
                ),
                ParamSpec::required("service", VarType::String, "product code"),
                ParamSpec::required("channel", VarType::String, "channel the request came by"),
                ParamSpec::optional("reference", VarType::String, "the instance's business key"),
            ],
            outputs: vec![
                ParamSpec::required(
                    "request_number",
                    VarType::String,
                    "Smartflex service request number, e.g. SF-2026-000123",
                ),
                ParamSpec::required(
                    "registered_at",
                    VarType::Datetime,
                    "when it was registered (RFC 3339, UTC)",
                ),
                ParamSpec::required(
                    "estimated_days",
                    VarType::Integer,
                    "estimated days to install (2–15)",
                ),
            ],
            errors: vec![
                ErrorSpec::new(
                    "product_not_available",
                    "the product is not sold at that address or plan",
                ),
                ErrorSpec::new(
                    "client_blocked",
                    "Smartflex refuses the client (mirrors a NAF impediment)",
                ),
            ],
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;
    use crate::sim::tests::{assert_matches_spec, input};

    /// 2026-03-14T15:24:05Z.
    fn clock() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_773_501_845)
    }

    fn simulator() -> Simulator {
        Simulator::new(Config {
            fixed_clock: Some(clock()),
            ..Config::default()
        })
    }

    fn sale(ci: &str, zone: &str, service: &str) -> Map<String, Value> {
        input(&[
            ("ci", ci),
            ("client_name", "María Elena Rojas Vargas"),
            ("phone", "71712345"),
            ("address", "Av. Santa Cruz 1450"),
            ("zone", zone),
            ("service", service),
            ("channel", "telefono"),
            ("reference", "P06-0001"),
        ])
    }

    async fn register(
        sim: &Simulator,
        key: &str,
        attempt: u32,
        input: &Map<String, Value>,
    ) -> Answer {
        let answer = sim
            .call(ConnectorCall {
                operation: OPERATION,
                input,
                idempotency_key: key,
                attempt,
            })
            .await;
        if let Ok(out) = &answer {
            assert_matches_spec(&spec(), OPERATION, out);
        }
        answer
    }

    fn code(answer: Answer) -> String {
        match answer {
            Err(ConnectorError::Business { code, .. }) => code,
            other => panic!("expected a business error, got {other:?}"),
        }
    }

    fn is_transient(answer: &Answer) -> bool {
        matches!(answer, Err(ConnectorError::Transient { .. }))
    }

    #[tokio::test]
    async fn registers_in_sequence() {
        let sim = simulator();
        let out = register(
            &sim,
            "job-1",
            1,
            &sale("4587213", "Cala Cala", "internet_fibra"),
        )
        .await
        .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({
                "request_number": "SF-2026-000001",
                "registered_at": "2026-03-14T15:24:05Z",
                "estimated_days": 3
            })
        );
        let out = register(
            &sim,
            "job-2",
            1,
            &sale("1234567-1A", "Tiquipaya", "internet_fibra"),
        )
        .await
        .unwrap();
        assert_eq!(out["request_number"], json!("SF-2026-000002"));
        assert_eq!(out["estimated_days"], json!(10));
        let r = sim.registration("job-1").unwrap();
        assert_eq!(r.ci, "4587213");
        assert_eq!(r.service, Service::InternetFibra);
        assert_eq!(r.reference.as_deref(), Some("P06-0001"));
        assert_eq!(sim.registration_count(), 2);
    }

    #[tokio::test]
    async fn system_clock_by_default() {
        let sim = Simulator::new(Config {
            first_number: 123,
            ..Config::default()
        });
        let out = register(&sim, "k", 1, &sale("4587213", "Sarco", "trio"))
            .await
            .unwrap();
        let number = out["request_number"].as_str().unwrap();
        let at = out["registered_at"].as_str().unwrap();
        assert_eq!(number, format!("SF-{}-000123", &at[..4]));
        assert!(at.as_bytes()[..4].iter().all(u8::is_ascii_digit) && at >= "2026");
    }

    #[tokio::test]
    async fn the_same_key_never_registers_twice() {
        let sim = simulator();
        let first = register(&sim, "job-7", 1, &sale("4587213", "Sarco", "trio"))
            .await
            .unwrap();
        // A retry, even with changed data, returns the original request.
        let again = register(&sim, "job-7", 2, &sale("4587213", "Centro", "television"))
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(sim.registration_count(), 1);
        assert_eq!(sim.registration("job-7").unwrap().attempt, 1);
        let other = register(&sim, "job-8", 1, &sale("4587213", "Sarco", "trio"))
            .await
            .unwrap();
        assert_ne!(first["request_number"], other["request_number"]);
        assert_eq!(sim.registration_count(), 2);
    }

    #[tokio::test]
    async fn client_blocked() {
        let sim = simulator();
        for ci in ["5123987", "3344556", "8123456", "6543210"] {
            let answer = register(&sim, ci, 1, &sale(ci, "Sarco", "trio")).await;
            assert_eq!(code(answer), "client_blocked", "{ci}");
        }
        assert_eq!(sim.registration_count(), 0);
        // With the department the CI was issued in, as NAF tells people
        // apart: 5123987 of Cochabamba is blocked, 5123987 of La Paz is
        // someone else; 6543210 is blocked in every department.
        let with = |ci: &str, extension: &str| {
            let mut sale = sale(ci, "Sarco", "trio");
            sale.insert("ci_extension".into(), Value::from(extension));
            sale
        };
        let answer = register(&sim, "cb", 1, &with("5123987", "cb")).await;
        assert_eq!(code(answer), "client_blocked");
        let answer = register(&sim, "any", 1, &with("6543210", "SC")).await;
        assert_eq!(code(answer), "client_blocked");
        let answer = register(&sim, "lp", 1, &with("5123987", "LP")).await;
        assert!(answer.is_ok(), "{answer:?}");
        assert_eq!(sim.registration_count(), 1);
    }

    #[tokio::test]
    async fn product_not_available() {
        let sim = simulator();
        for (zone, service) in [
            ("Sarco", "internet_satelital"),
            ("Sarco", "TRIO"),
            ("Tiquipaya", "trio"),
            ("tiquipaya", "telefonia_fija"),
            ("Zona Tiquipaya", "trio"),
        ] {
            let answer = register(&sim, "k", 1, &sale("4587213", zone, service)).await;
            assert_eq!(code(answer), "product_not_available", "{zone} {service}");
        }
        // Its centre, named in its municipality, is Tiquipaya too.
        let mut in_tiquipaya = sale("4587213", "Centro", "trio");
        in_tiquipaya.insert("city".to_owned(), json!("Tiquipaya"));
        let answer = register(&sim, "k", 1, &in_tiquipaya).await;
        assert_eq!(code(answer), "product_not_available");
        assert_eq!(sim.registration_count(), 0);
        assert!(
            register(
                &sim,
                "k",
                1,
                &sale("4587213", "Tiquipaya", "duo_internet_tv")
            )
            .await
            .is_ok()
        );
    }

    /// Every name GIS finds a zone by is that zone here too: a sale GIS
    /// placed in Tiquipaya by "Tiquipaya Centro" is priced and refused as
    /// Tiquipaya's.
    #[tokio::test]
    async fn gis_aliases_are_their_zones() {
        let config = Config::default();
        let sim = simulator();
        for zone in crate::gis::dataset() {
            for alias in zone.aliases.iter().chain([&format!(
                "Zona {}",
                zone.aliases.first().unwrap_or(&zone.name)
            )]) {
                for service in Service::ALL {
                    assert_eq!(
                        config.estimated_days(alias, None, service),
                        config.estimated_days(&zone.name, None, service),
                        "{alias} {service}"
                    );
                    // Keys of their own: a key seen before answers as it did.
                    let key = format!("{alias} {service}");
                    let sale_in = |zone: &str| sale("4587213", zone, service.code());
                    let by_alias =
                        register(&sim, &format!("{key} alias"), 1, &sale_in(alias)).await;
                    let by_name =
                        register(&sim, &format!("{key} name"), 1, &sale_in(&zone.name)).await;
                    assert_eq!(by_alias.is_ok(), by_name.is_ok(), "{alias} {service}");
                }
            }
        }
        assert_eq!(
            config.estimated_days("Tiquipaya Centro", None, Service::Television),
            9
        );
        // A zone's name in a municipality is that municipality's zone:
        // "Centro" in Sacaba waits Sacaba Centro's backlog, not Cercado's.
        assert_eq!(
            config.estimated_days("Centro", None, Service::Television),
            2
        );
        assert_eq!(
            config.estimated_days("Centro", Some("Sacaba"), Service::Television),
            7
        );
        assert_eq!(
            config.estimated_days("Centro", Some("Cercado"), Service::Television),
            2
        );
        // A zone GIS does not have in the city given is no zone of the
        // tables: any other zone's backlog (3), and nothing refused.
        assert_eq!(
            config.estimated_days("Centro", Some("Oruro"), Service::Television),
            5
        );
        assert!(
            register(&sim, "elsewhere", 1, &{
                let mut s = sale("4587213", "Tiquipaya", "trio");
                s.insert("city".to_owned(), Value::from("Sacaba"));
                s
            })
            .await
            .is_ok(),
            "Tiquipaya's refusal is not Sacaba's"
        );
        // An entry written under an alias is its zone's too.
        let by_alias = Config {
            zone_backlog_days: vec![("Casco Viejo".to_owned(), 6)],
            ..Config::default()
        };
        assert_eq!(
            by_alias.estimated_days("Centro", None, Service::Television),
            8
        );
    }

    #[tokio::test]
    async fn missing_input_is_transient_and_registers_nothing() {
        let sim = simulator();
        let mut input = sale("4587213", "Sarco", "trio");
        input.remove("phone");
        assert!(is_transient(&register(&sim, "k", 1, &input).await));
        assert_eq!(sim.registration_count(), 0);
    }

    #[test]
    fn estimated_days_stay_within_2_and_15() {
        let config = Config::default();
        let zones = crate::gis::dataset();
        for zone in zones
            .iter()
            .map(|z| z.name.as_str())
            .chain(["Zona Desconocida"])
        {
            for service in Service::ALL {
                let days = config.estimated_days(zone, None, service);
                assert!((2..=15).contains(&days), "{zone} {service}: {days}");
            }
        }
        assert_eq!(
            config.estimated_days("HIPODROMO", None, Service::Television),
            3
        );
        assert_eq!(
            config.estimated_days("Zona Desconocida", None, Service::Trio),
            8
        );
        assert_eq!(
            config.estimated_days("Zona Tiquipaya", None, Service::Television),
            9
        );
    }

    #[tokio::test]
    async fn transient_failures_register_nothing_then_one_request() {
        let sim = simulator();
        sim.faults().fail_next(3);
        let input = sale("4587213", "Sarco", "trio");
        for attempt in 1..=3 {
            assert!(is_transient(
                &register(&sim, "job-1", attempt, &input).await
            ));
            assert_eq!(sim.registration_count(), 0);
        }
        let out = register(&sim, "job-1", 4, &input).await.unwrap();
        assert_eq!(out["request_number"], json!("SF-2026-000001"));
        assert_eq!(sim.registration("job-1").unwrap().attempt, 4);
        assert_eq!(sim.calls(), 4);
    }

    #[tokio::test]
    async fn outage_registers_nothing() {
        let sim = simulator();
        sim.faults().start_outage();
        let input = sale("4587213", "Sarco", "trio");
        for attempt in 1..=5 {
            assert!(is_transient(
                &register(&sim, "job-1", attempt, &input).await
            ));
        }
        assert_eq!(sim.registration_count(), 0);
        sim.faults().end_outage();
        assert!(register(&sim, "job-1", 6, &input).await.is_ok());
        assert_eq!(sim.registration_count(), 1);
    }

    #[tokio::test]
    async fn a_lost_reply_is_answered_by_the_retry() {
        let sim = simulator();
        sim.faults().lose_next_replies(1);
        let input = sale("4587213", "Sarco", "trio");
        assert!(is_transient(&register(&sim, "job-1", 1, &input).await));
        // Smartflex acted: the request exists, the caller did not hear.
        assert_eq!(sim.registration_count(), 1);
        let out = register(&sim, "job-1", 2, &input).await.unwrap();
        assert_eq!(out["request_number"], json!("SF-2026-000001"));
        assert_eq!(sim.registration_count(), 1);
    }

    /// A held reply: Smartflex has registered while its caller still
    /// waits, and a caller that hangs up then (a killed node) leaves the
    /// registration for the retry to find.
    #[tokio::test(start_paused = true)]
    async fn a_held_reply_comes_after_the_registration() {
        let sim = std::sync::Arc::new(simulator());
        sim.faults()
            .hold_next_replies(1, std::time::Duration::from_secs(5));
        let input = sale("4587213", "Sarco", "trio");
        let call = {
            let (sim, input) = (std::sync::Arc::clone(&sim), input.clone());
            tokio::spawn(async move { register(&sim, "job-1", 1, &input).await })
        };
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(sim.registration_count(), 1);
        assert_eq!(sim.faults().held(), ["job-1"]);
        // The caller dies: its reply is never sent.
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert!(sim.faults().held().is_empty());
        assert_eq!(sim.faults().cut(), ["job-1"]);
        // Only the next call was held: the retry is answered at once, with
        // the original registration.
        let out = register(&sim, "job-1", 2, &input).await.unwrap();
        assert_eq!(out["request_number"], json!("SF-2026-000001"));
        assert_eq!(sim.registration_count(), 1);
        assert_eq!(sim.faults().injected(), 0, "holding fails nothing");
    }

    /// Registers a sale under `key` on a task of its own, as a caller that
    /// may hang up (abort it).
    fn calling(
        sim: &std::sync::Arc<Simulator>,
        key: &'static str,
    ) -> tokio::task::JoinHandle<Answer> {
        let sim = std::sync::Arc::clone(sim);
        let input = sale("4587213", "Sarco", "trio");
        tokio::spawn(async move { register(&sim, key, 1, &input).await })
    }

    /// A call (`job-1`) whose caller hangs up 100 ms into the system's
    /// latency.
    async fn hang_up_during_latency(sim: &std::sync::Arc<Simulator>) {
        let gone = calling(sim, "job-1");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
    }

    /// A call whose caller hangs up during the system's latency never
    /// reached it: the hold is kept for the next call that does.
    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_reached_the_system_does_not_use_up_the_hold() {
        let sim = std::sync::Arc::new(simulator());
        sim.faults().set_latency(std::time::Duration::from_secs(1));
        sim.faults()
            .hold_next_replies(1, std::time::Duration::from_secs(5));
        let call = |key: &'static str| calling(&sim, key);
        hang_up_during_latency(&sim).await;
        let held = call("job-2");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert_eq!(sim.registration_count(), 1);
        assert_eq!(sim.faults().held(), ["job-2"]);
        assert!(held.await.unwrap().is_ok());
        assert!(sim.faults().cut().is_empty(), "answered in the end");
    }

    /// Faults are decided once a call has waited its latency, as the system
    /// would meet them: a call whose caller hung up meanwhile uses up no
    /// "lose the next reply", and an outage begun meanwhile fails it.
    #[tokio::test(start_paused = true)]
    async fn faults_meet_a_call_after_its_latency() {
        let sim = std::sync::Arc::new(simulator());
        sim.faults().set_latency(std::time::Duration::from_secs(1));
        sim.faults().lose_next_replies(1);
        let call = |key: &'static str| calling(&sim, key);
        hang_up_during_latency(&sim).await;
        assert_eq!(sim.faults().injected(), 0, "it never reached the system");
        let lost = call("job-2").await.unwrap();
        assert!(is_transient(&lost), "the reply is lost: {lost:?}");
        assert_eq!(sim.registration_count(), 1, "after the system acted");
        let during = call("job-3");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        sim.faults().start_outage();
        assert!(is_transient(&during.await.unwrap()));
        assert_eq!(sim.registration_count(), 1, "the outage came first");
    }

    #[tokio::test]
    async fn random_failures_with_retries_register_each_key_once() {
        let sim = simulator();
        sim.faults().set_error_rate(0.5, 2026);
        let input = sale("4587213", "Sarco", "trio");
        let mut calls = 0;
        for job in 0..20 {
            let key = format!("job-{job}");
            let mut attempt = 1;
            calls += 1;
            while is_transient(&register(&sim, &key, attempt, &input).await) {
                attempt += 1;
                calls += 1;
                assert!(attempt < 64, "the error rate never let a call through");
            }
            // One more call with the same key changes nothing.
            calls += 1;
            register(&sim, &key, attempt + 1, &input).await.ok();
        }
        let regs = sim.registrations();
        assert_eq!(regs.len(), 20);
        let numbers: std::collections::HashSet<_> =
            regs.iter().map(|r| &r.request_number).collect();
        assert_eq!(numbers.len(), 20);
        assert!(sim.faults().injected() > 0);
        assert_eq!(sim.calls(), calls);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_attempts_with_one_key_register_once() {
        let sim = std::sync::Arc::new(simulator());
        let input = sale("4587213", "Sarco", "trio");
        let mut handles = Vec::new();
        for attempt in 1..=8 {
            let sim = sim.clone();
            let input = input.clone();
            handles.push(tokio::spawn(async move {
                register(&sim, "job-1", attempt, &input).await.unwrap()
            }));
        }
        let mut answers = Vec::new();
        for h in handles {
            answers.push(h.await.unwrap());
        }
        assert!(answers.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(sim.registration_count(), 1);
    }

    /// An entry is `CI-DEPARTMENT`, and a CI may have a complement of its
    /// own: the department is what follows the last `-`.
    #[test]
    fn a_blocked_ci_with_a_complement_is_read_whole() {
        assert!(blocked("5566778-2B-CB", "5566778-2B", Some("CB")));
        assert!(blocked("5566778-2B-CB", "5566778-2B", None));
        assert!(!blocked("5566778-2B-CB", "5566778", None), "another person");
        assert!(!blocked("5566778-2B-CB", "5566778-2B", Some("LP")));
        assert!(blocked("6543210", "6543210", Some("LP")));
        assert!(
            blocked("5566778-2B", "5566778-2B", Some("LP")),
            "a bare CI with a complement"
        );
        assert!(!blocked("5566778-2B", "5566778", Some("LP")));
    }

    #[test]
    fn blocked_list_mirrors_naf() {
        let blocked = Config::default().blocked_cis;
        for c in naf::dataset() {
            let listed = c.impediments.contains(&Impediment::CentralRiesgos);
            assert_eq!(
                blocked.contains(&format!("{}-{}", c.ci, c.extension)) || blocked.contains(&c.ci),
                listed || c.ci == "6543210",
                "{}",
                c.ci
            );
        }
    }
}
