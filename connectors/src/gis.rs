//! GIS (Sistema de Georreferenciación): technical capacity at an address —
//! coverage, supported speeds and special characteristics.
//!
//! [`Simulator`] answers `check_coverage` from a fixed map of zones of the
//! Cochabamba metropolitan area ([`dataset`], listed in the crate's
//! README). Whether a service can be installed depends on the networks of
//! the zone and on what the service needs:
//!
//! | service | needs |
//! | --- | --- |
//! | `internet_fibra` | fibra |
//! | `television` | fibra or hfc |
//! | `telefonia_fija` | fibra or cobre |
//! | `duo_internet_tv` | fibra or hfc |
//! | `trio` | fibra, or hfc and cobre |
//!
//! `sin_puertos_libres` takes fibra out (the fibre node is full);
//! `zona_restringida` forbids any installation.

use serde_json::{Map, Value};
use tramite_engine::catalog::{ConnectorSpec, ErrorSpec, OperationSpec, ParamSpec};
use tramite_engine::definition::VarType;
use tramite_engine::runtime::connector::{BoxFuture, Connector, ConnectorCall, ConnectorError};

use crate::faults::Faults;
use crate::service::Service;
use crate::sim::{Answer, Harness, business, fold, text, zone_key};

/// The name of GIS's one operation.
pub const OPERATION: &str = "check_coverage";

/// A network technology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Technology {
    /// `fibra`: fibre to the home (GPON).
    Fibra,
    /// `hfc`: hybrid fibre-coaxial (cable TV and DOCSIS internet).
    Hfc,
    /// `cobre`: copper pairs (landline and ADSL).
    Cobre,
}

impl Technology {
    /// The code GIS answers with.
    pub fn code(self) -> &'static str {
        match self {
            Technology::Fibra => "fibra",
            Technology::Hfc => "hfc",
            Technology::Cobre => "cobre",
        }
    }
}

/// A special characteristic of a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `requiere_poste`: a pole must be planted; installable, but slower.
    RequierePoste,
    /// `edificio_sin_ducto`: buildings without a cable duct; installable.
    EdificioSinDucto,
    /// `zona_restringida`: installation forbidden (protected area); no capacity.
    ZonaRestringida,
    /// `sin_puertos_libres`: the fibre node has no free ports; fibra cannot
    /// be used, other networks can.
    SinPuertosLibres,
}

impl Feature {
    /// The code GIS answers with.
    pub fn code(self) -> &'static str {
        match self {
            Feature::RequierePoste => "requiere_poste",
            Feature::EdificioSinDucto => "edificio_sin_ducto",
            Feature::ZonaRestringida => "zona_restringida",
            Feature::SinPuertosLibres => "sin_puertos_libres",
        }
    }
}

/// One network present in a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// Its technology.
    pub technology: Technology,
    /// The highest speed it supports there, in Mbps.
    pub max_speed_mbps: u32,
}

/// One zone of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Its name (`Cala Cala`).
    pub name: String,
    /// Other names people give it (`Sacaba` for `Sacaba Centro`).
    pub aliases: Vec<String>,
    /// Municipality: `Cercado` (the city of Cochabamba), `Sacaba`,
    /// `Quillacollo`, `Tiquipaya`.
    pub municipality: String,
    /// Networks present; empty: no coverage.
    pub networks: Vec<Network>,
    /// Special characteristics.
    pub features: Vec<Feature>,
    /// Serving node or cabinet; `None` without coverage.
    pub network_node: Option<String>,
}

impl Zone {
    /// Whether the zone is inside the footprint.
    pub fn has_coverage(&self) -> bool {
        !self.networks.is_empty()
    }

    /// Whether a new line of `technology` can be connected in the zone now.
    fn open(&self, technology: Technology) -> bool {
        let full =
            technology == Technology::Fibra && self.features.contains(&Feature::SinPuertosLibres);
        !full
            && !self.features.contains(&Feature::ZonaRestringida)
            && self.networks.iter().any(|n| n.technology == technology)
    }

    /// The fastest speed `service` can be installed at now, in Mbps; 0 when
    /// it cannot. A fibre network without free ports, or a network that
    /// cannot carry the service, is no speed the client can be offered.
    pub fn fastest_for(&self, service: Service) -> u32 {
        if !self.can_install(service) {
            return 0;
        }
        let carries = |t: Technology| match service {
            Service::InternetFibra => t == Technology::Fibra,
            Service::Television | Service::DuoInternetTv | Service::Trio => {
                matches!(t, Technology::Fibra | Technology::Hfc)
            }
            Service::TelefoniaFija => matches!(t, Technology::Fibra | Technology::Cobre),
        };
        self.networks
            .iter()
            .filter(|n| carries(n.technology) && self.open(n.technology))
            .map(|n| n.max_speed_mbps)
            .max()
            .unwrap_or(0)
    }

    /// Whether `service` can be installed in the zone now.
    pub fn can_install(&self, service: Service) -> bool {
        if !self.has_coverage() {
            return false;
        }
        let has = |t: Technology| self.open(t);
        let (fibra, hfc, cobre) = (
            has(Technology::Fibra),
            has(Technology::Hfc),
            has(Technology::Cobre),
        );
        match service {
            Service::InternetFibra => fibra,
            Service::Television | Service::DuoInternetTv => fibra || hfc,
            Service::TelefoniaFija => fibra || cobre,
            Service::Trio => fibra || (hfc && cobre),
        }
    }
}

/// What the GIS simulator knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The map; [`dataset`] by default.
    pub zones: Vec<Zone>,
}

impl Default for Config {
    fn default() -> Config {
        Config { zones: dataset() }
    }
}

/// The zone of `zones` called `zone` in `city`: see [`Simulator::find_zone`].
/// Smartflex reads zones by the same map and the same rule.
pub fn find_zone<'a>(zones: &'a [Zone], zone: &str, city: Option<&str>) -> Option<&'a Zone> {
    let wanted = zone_key(zone);
    let wanted = wanted.as_str();
    // Names and aliases are keys too: the alias "Zona Central" is
    // typed "Central" as often as not.
    let names = |z: &'_ Zone| {
        std::iter::once(zone_key(&z.name))
            .chain(z.aliases.iter().map(|a| zone_key(a)))
            .collect::<Vec<_>>()
    };
    let city = city.map(fold).filter(|c| !c.is_empty());
    match city.as_deref() {
        None | Some("cochabamba" | "cercado") => {
            zones.iter().find(|z| names(z).iter().any(|n| n == wanted))
        }
        Some(city) if MUNICIPALITIES.contains(&city) => {
            let prefixed = format!("{city} {wanted}");
            zones
                .iter()
                .filter(|z| fold(&z.municipality) == city)
                .find(|z| names(z).iter().any(|n| *n == wanted || *n == prefixed))
        }
        Some(_) => None,
    }
}

/// Municipalities of the footprint, folded. Any other city is outside it.
const MUNICIPALITIES: [&str; 4] = ["cercado", "sacaba", "quillacollo", "tiquipaya"];

/// The simulated map: fifteen zones of the Cochabamba metropolitan area
/// covering every branch of P06's step 7 (see the README's "Simulators and
/// their data sets").
pub fn dataset() -> Vec<Zone> {
    use Feature::{EdificioSinDucto, RequierePoste, SinPuertosLibres, ZonaRestringida};
    use Technology::{Cobre, Fibra, Hfc};
    let zone = |name: &str,
                aliases: &[&str],
                municipality: &str,
                networks: &[(Technology, u32)],
                features: &[Feature],
                node: Option<&str>| Zone {
        name: name.to_owned(),
        aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
        municipality: municipality.to_owned(),
        networks: networks
            .iter()
            .map(|&(technology, max_speed_mbps)| Network {
                technology,
                max_speed_mbps,
            })
            .collect(),
        features: features.to_vec(),
        network_node: node.map(str::to_owned),
    };
    vec![
        zone(
            "Centro",
            &["Casco Viejo", "Centro Histórico", "Zona Central"],
            "Cercado",
            &[(Fibra, 1000), (Hfc, 200), (Cobre, 10)],
            &[EdificioSinDucto],
            Some("OLT-CBA-CEN-01"),
        ),
        zone(
            "Cala Cala",
            &[],
            "Cercado",
            &[(Fibra, 1000), (Hfc, 200), (Cobre, 10)],
            &[],
            Some("OLT-CBA-CCL-01"),
        ),
        zone(
            "Queru Queru",
            &[],
            "Cercado",
            &[(Fibra, 1000), (Hfc, 200)],
            &[],
            Some("OLT-CBA-QQR-01"),
        ),
        zone(
            "Sarco",
            &[],
            "Cercado",
            &[(Fibra, 600), (Hfc, 200), (Cobre, 10)],
            &[],
            Some("OLT-CBA-SAR-01"),
        ),
        zone(
            "Villa Busch",
            &[],
            "Cercado",
            &[(Fibra, 600), (Hfc, 100)],
            &[],
            Some("OLT-CBA-VBU-01"),
        ),
        zone(
            "Tupuraya",
            &[],
            "Cercado",
            &[(Hfc, 100), (Cobre, 8)],
            &[],
            Some("HFC-CBA-TUP-03"),
        ),
        zone(
            "Temporal",
            &[],
            "Cercado",
            &[(Cobre, 6)],
            &[],
            Some("DSLAM-CBA-TEM-02"),
        ),
        zone(
            "Muyurina",
            &[],
            "Cercado",
            &[(Fibra, 600), (Cobre, 10)],
            &[RequierePoste],
            Some("OLT-CBA-MUY-01"),
        ),
        zone(
            "Hipódromo",
            &[],
            "Cercado",
            &[(Fibra, 1000), (Hfc, 200)],
            &[SinPuertosLibres],
            Some("OLT-CBA-HIP-01"),
        ),
        zone(
            "Pacata Alta",
            &[],
            "Cercado",
            &[(Fibra, 300)],
            &[ZonaRestringida],
            Some("OLT-CBA-PAC-02"),
        ),
        zone("Valle Hermoso", &[], "Cercado", &[], &[], None),
        zone("Alalay", &["Laguna Alalay"], "Cercado", &[], &[], None),
        zone(
            "Tiquipaya",
            &["Tiquipaya Centro"],
            "Tiquipaya",
            &[(Fibra, 300)],
            &[RequierePoste],
            Some("OLT-TQP-01"),
        ),
        zone(
            "Sacaba Centro",
            &["Sacaba"],
            "Sacaba",
            &[(Fibra, 300), (Hfc, 100), (Cobre, 8)],
            &[],
            Some("OLT-SAC-01"),
        ),
        zone(
            "Quillacollo Centro",
            &["Quillacollo"],
            "Quillacollo",
            &[(Fibra, 300), (Cobre, 8)],
            &[],
            Some("OLT-QLL-01"),
        ),
    ]
}

/// The GIS simulator.
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
            harness: Harness::new("GIS"),
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

    /// Its map.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The zone called `zone` in `city` (case, accents, spacing and a
    /// leading "zona" ignored). Without a city, or with `Cochabamba` or
    /// `Cercado`, any zone of the footprint; with `Sacaba`, `Quillacollo`
    /// or `Tiquipaya`, the zones of that municipality (so `Centro` in
    /// `Sacaba` is `Sacaba Centro`); any other city is outside it.
    pub fn find_zone(&self, zone: &str, city: Option<&str>) -> Option<&Zone> {
        find_zone(&self.config.zones, zone, city)
    }

    /// `check_coverage`, without faults.
    pub fn check_coverage(
        &self,
        address: &str,
        zone: &str,
        service: &str,
        city: Option<&str>,
    ) -> Answer {
        if !address.chars().any(|c| c.is_ascii_digit()) {
            return Err(business(
                "address_not_found",
                format!("`{address}` has no door number; GIS cannot place it"),
            ));
        }
        let zone = self.find_zone(zone, city);
        let service = Service::from_code(service.trim());
        let networks: &[Network] = zone.map_or(&[], |z| &z.networks);
        let mut out = Map::new();
        out.insert(
            "has_capacity".to_owned(),
            Value::Bool(zone.zip(service).is_some_and(|(z, s)| z.can_install(s))),
        );
        out.insert("coverage".to_owned(), Value::Bool(!networks.is_empty()));
        out.insert(
            "max_speed_mbps".to_owned(),
            Value::from(zone.zip(service).map_or(0, |(z, s)| z.fastest_for(s))),
        );
        out.insert(
            "technologies".to_owned(),
            networks
                .iter()
                .map(|n| Value::from(n.technology.code()))
                .collect(),
        );
        out.insert(
            "special_features".to_owned(),
            zone.map(|z| z.features.iter().map(|f| Value::from(f.code())).collect())
                .unwrap_or(Value::Array(Vec::new())),
        );
        if let Some(node) = zone.and_then(|z| z.network_node.as_ref()) {
            out.insert("network_node".to_owned(), Value::String(node.clone()));
        }
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
            let Some(address) = text(call.input, "address") else {
                return Err(business("address_not_found", "no address was given"));
            };
            let Some(zone) = text(call.input, "zone") else {
                return Err(self.harness.bad_input(OPERATION, "zone"));
            };
            let Some(service) = text(call.input, "service") else {
                return Err(self.harness.bad_input(OPERATION, "service"));
            };
            self.check_coverage(address, zone, service, text(call.input, "city"))
        }))
    }
}

/// GIS's operations.
pub fn spec() -> ConnectorSpec {
    ConnectorSpec {
        name: "gis".to_owned(),
        title: "GIS — Sistema de Georreferenciación".to_owned(),
        operations: vec![OperationSpec {
            name: OPERATION.to_owned(),
            description: "Checks whether the requested service can be installed at the address."
                .to_owned(),
            inputs: vec![
                ParamSpec::required("address", VarType::String, "street and number"),
                ParamSpec::required("zone", VarType::String, "zone or neighbourhood"),
                ParamSpec::optional("city", VarType::String, "city; Cochabamba when absent"),
                ParamSpec::required("service", VarType::String, "requested service code"),
            ],
            outputs: vec![
                ParamSpec::required(
                    "has_capacity",
                    VarType::Boolean,
                    "the service can be installed",
                ),
                ParamSpec::required(
                    "coverage",
                    VarType::Boolean,
                    "the address is inside the network's footprint",
                ),
                ParamSpec::required(
                    "max_speed_mbps",
                    VarType::Integer,
                    "fastest speed the service can be installed at now; 0 when it cannot",
                ),
                ParamSpec::required(
                    "technologies",
                    VarType::List,
                    "networks present at the address: fibra, hfc, cobre",
                ),
                ParamSpec::required(
                    "special_features",
                    VarType::List,
                    "requiere_poste, edificio_sin_ducto, zona_restringida, sin_puertos_libres",
                ),
                ParamSpec::optional(
                    "network_node",
                    VarType::String,
                    "serving node or cabinet; absent without coverage",
                ),
            ],
            errors: vec![ErrorSpec::new(
                "address_not_found",
                "the address cannot be georeferenced; ask the client for a reference",
            )],
        }],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sim::tests::call_checked;

    async fn check(sim: &Simulator, pairs: &[(&str, &str)]) -> Answer {
        call_checked(sim, &spec(), OPERATION, pairs).await
    }

    async fn at(zone: &str, service: &str) -> Map<String, Value> {
        let sim = Simulator::default();
        check(
            &sim,
            &[
                ("address", "Av. América 1234"),
                ("zone", zone),
                ("service", service),
            ],
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn capacity() {
        let out = at("Cala Cala", "internet_fibra").await;
        assert_eq!(
            Value::Object(out),
            json!({
                "has_capacity": true, "coverage": true, "max_speed_mbps": 1000,
                "technologies": ["fibra", "hfc", "cobre"], "special_features": [],
                "network_node": "OLT-CBA-CCL-01"
            })
        );
    }

    #[tokio::test]
    async fn zone_matching_ignores_case_accents_and_spacing() {
        for zone in ["hipódromo", "HIPODROMO", "  Hipodromo ", "Zona Hipódromo"] {
            assert_eq!(
                at(zone, "television").await["network_node"],
                json!("OLT-CBA-HIP-01"),
                "{zone}"
            );
        }
        assert_eq!(at("queru-queru", "trio").await["has_capacity"], json!(true));
        assert_eq!(
            at("casco viejo", "trio").await["network_node"],
            json!("OLT-CBA-CEN-01")
        );
    }

    #[tokio::test]
    async fn capacity_depends_on_the_service() {
        for (zone, service, capacity) in [
            ("Tupuraya", "internet_fibra", false),
            ("Tupuraya", "duo_internet_tv", true),
            ("Tupuraya", "trio", true),
            ("Temporal", "telefonia_fija", true),
            ("Temporal", "television", false),
            ("Temporal", "internet_fibra", false),
            ("Queru Queru", "telefonia_fija", true),
            ("Muyurina", "television", true),
            ("Quillacollo Centro", "duo_internet_tv", true),
            ("Hipódromo", "internet_fibra", false),
            ("Hipódromo", "duo_internet_tv", true),
            ("Hipódromo", "trio", false),
            ("Pacata Alta", "internet_fibra", false),
            ("Cala Cala", "internet_satelital", false),
        ] {
            assert_eq!(
                at(zone, service).await["has_capacity"],
                json!(capacity),
                "{zone} {service}"
            );
        }
    }

    /// The speed is what the client can be offered for the service asked:
    /// not a fibre network without free ports, nor one that cannot carry it.
    #[tokio::test]
    async fn the_speed_is_the_one_the_service_can_get() {
        for (zone, service, speed) in [
            ("Cala Cala", "internet_fibra", 1000),
            ("Hipódromo", "television", 200),
            ("Hipódromo", "internet_fibra", 0),
            ("Tupuraya", "duo_internet_tv", 100),
            ("Pacata Alta", "television", 0),
            ("Cala Cala", "internet_satelital", 0),
        ] {
            assert_eq!(
                at(zone, service).await["max_speed_mbps"],
                json!(speed),
                "{zone} {service}"
            );
        }
    }

    #[tokio::test]
    async fn special_features() {
        let out = at("Muyurina", "internet_fibra").await;
        assert_eq!(out["has_capacity"], json!(true));
        assert_eq!(out["special_features"], json!(["requiere_poste"]));
        let out = at("Centro", "internet_fibra").await;
        assert_eq!(out["special_features"], json!(["edificio_sin_ducto"]));
        let out = at("Pacata Alta", "television").await;
        assert_eq!(out["coverage"], json!(true));
        assert_eq!(out["has_capacity"], json!(false));
        assert_eq!(out["special_features"], json!(["zona_restringida"]));
    }

    #[tokio::test]
    async fn no_coverage_and_unknown_zone() {
        for zone in ["Valle Hermoso", "Alalay", "Zona Inexistente"] {
            let out = at(zone, "internet_fibra").await;
            assert_eq!(
                Value::Object(out),
                json!({
                    "has_capacity": false, "coverage": false, "max_speed_mbps": 0,
                    "technologies": [], "special_features": []
                }),
                "{zone}"
            );
        }
    }

    #[tokio::test]
    async fn cities() {
        let sim = Simulator::default();
        let ask = |zone: &'static str, city: &'static str| {
            let sim = &sim;
            async move {
                check(
                    sim,
                    &[
                        ("address", "Calle 1"),
                        ("zone", zone),
                        ("service", "trio"),
                        ("city", city),
                    ],
                )
                .await
                .unwrap()
            }
        };
        assert_eq!(
            ask("Centro", "Sacaba").await["network_node"],
            json!("OLT-SAC-01")
        );
        assert_eq!(
            ask("Centro", "Cochabamba").await["network_node"],
            json!("OLT-CBA-CEN-01")
        );
        assert_eq!(
            ask("Sacaba", "cochabamba").await["network_node"],
            json!("OLT-SAC-01")
        );
        assert_eq!(
            ask("Cala Cala", "Quillacollo").await["coverage"],
            json!(false)
        );
        assert_eq!(ask("Centro", "La Paz").await["coverage"], json!(false));
    }

    #[tokio::test]
    async fn address_not_found() {
        let sim = Simulator::default();
        for address in ["Av. América s/n", "Calle Jordán", ""] {
            let answer = check(
                &sim,
                &[
                    ("address", address),
                    ("zone", "Cala Cala"),
                    ("service", "trio"),
                ],
            )
            .await;
            assert!(
                matches!(&answer, Err(ConnectorError::Business { code, .. }) if code == "address_not_found"),
                "{address:?}: {answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn missing_zone_is_transient() {
        let sim = Simulator::default();
        let answer = check(&sim, &[("address", "Calle 1"), ("service", "trio")]).await;
        assert!(
            matches!(answer, Err(ConnectorError::Transient { .. })),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn faults() {
        let sim = Simulator::default();
        let ok = [
            ("address", "Calle 1"),
            ("zone", "Sarco"),
            ("service", "trio"),
        ];
        sim.faults().fail_next(3);
        for _ in 0..3 {
            assert!(matches!(
                check(&sim, &ok).await,
                Err(ConnectorError::Transient { .. })
            ));
        }
        assert!(check(&sim, &ok).await.is_ok());
        sim.faults().start_outage();
        assert!(check(&sim, &ok).await.is_err());
        sim.faults().clear();
        assert!(check(&sim, &ok).await.is_ok());
        assert_eq!(sim.calls(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn latency() {
        let sim = Simulator::default();
        sim.faults().set_latency(std::time::Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let ok = [
            ("address", "Calle 1"),
            ("zone", "Sarco"),
            ("service", "trio"),
        ];
        assert!(check(&sim, &ok).await.is_ok());
        assert!(started.elapsed() >= std::time::Duration::from_secs(3));
    }

    #[test]
    fn dataset_is_consistent() {
        let zones = dataset();
        assert_eq!(zones.len(), 15);
        for z in &zones {
            assert_eq!(z.has_coverage(), z.network_node.is_some(), "{}", z.name);
            assert!(
                MUNICIPALITIES.contains(&fold(&z.municipality).as_str()),
                "{}",
                z.name
            );
        }
        let mut names: Vec<String> = zones
            .iter()
            .flat_map(|z| {
                std::iter::once(&z.name)
                    .chain(&z.aliases)
                    .map(|n| zone_key(n))
            })
            .collect();
        let total = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), total, "zone names and aliases are unique");
    }

    #[test]
    fn every_name_and_alias_finds_its_own_zone() {
        let sim = Simulator::default();
        for z in dataset() {
            for name in std::iter::once(&z.name).chain(&z.aliases) {
                let found = sim.find_zone(name, None).map(|f| f.name.as_str());
                assert_eq!(found, Some(z.name.as_str()), "`{name}`");
                let found = sim.find_zone(name, Some(&z.municipality));
                assert_eq!(
                    found.map(|f| f.name.as_str()),
                    Some(z.name.as_str()),
                    "`{name}` in {}",
                    z.municipality
                );
            }
        }
        assert_eq!(
            sim.find_zone("Central", None).map(|z| z.name.as_str()),
            Some("Centro")
        );
    }
}
