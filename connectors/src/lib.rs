//! Connectors of tramite: how the engine reaches external systems.
//!
//! One connector = one module (`naf`, `gis`, `smartflex`), each describing
//! its operations for the engine's [`Catalog`]. Validation checks every
//! `service_task` of a definition against this catalog, so an unknown
//! operation, input, output or business error is caught when the YAML is
//! loaded, not when a client is on the phone.
//!
//! Each module also has a deterministic **simulator** of its system
//! (`naf::Simulator`, …) over a fixed data set, with switchable
//! [`faults::Faults`]; [`simulated`] and [`Simulators`] register all three
//! under the names the catalog uses.

pub mod faults;
pub mod gis;
pub mod http;
pub mod naf;
pub mod service;
mod sim;
pub mod sim_http;
pub mod smartflex;

use std::sync::Arc;

use tramite_engine::catalog::Catalog;
use tramite_engine::runtime::connector::Connectors;

/// The catalog of every connector that ships with tramite.
pub fn catalog() -> Catalog {
    Catalog::new()
        .with(naf::spec())
        .with(gis::spec())
        .with(smartflex::spec())
}

/// The three simulators, kept at hand to inspect them (Smartflex's
/// registrations, call counts) and to switch their faults.
#[derive(Debug, Clone)]
pub struct Simulators {
    /// NAF, as `naf`.
    pub naf: Arc<naf::Simulator>,
    /// GIS, as `gis`.
    pub gis: Arc<gis::Simulator>,
    /// Smartflex, as `smartflex`.
    pub smartflex: Arc<smartflex::Simulator>,
}

impl Default for Simulators {
    fn default() -> Simulators {
        Simulators::new()
    }
}

impl Simulators {
    /// The three simulators over their default data sets, each with its own
    /// (inactive) faults.
    pub fn new() -> Simulators {
        Simulators {
            naf: Arc::new(naf::Simulator::default()),
            gis: Arc::new(gis::Simulator::default()),
            smartflex: Arc::new(smartflex::Simulator::default()),
        }
    }

    /// Connectors for an engine: these simulators under `naf`, `gis` and
    /// `smartflex` (shared, not copied: what the engine does shows here).
    pub fn connectors(&self) -> Connectors {
        Connectors::new()
            .with("naf", self.naf.clone())
            .with("gis", self.gis.clone())
            .with("smartflex", self.smartflex.clone())
    }
}

/// Connectors for an engine with every system simulated over the default
/// data sets (see the README). Use [`Simulators`] to inspect them.
pub fn simulated() -> Connectors {
    Simulators::new().connectors()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_the_three_systems_of_p06() {
        let c = catalog();
        let ops: Vec<(String, String)> = c
            .connectors()
            .flat_map(|k| {
                k.operations
                    .iter()
                    .map(|o| (k.name.clone(), o.name.clone()))
            })
            .collect();
        for (connector, op) in [
            ("naf", "check_portfolio"),
            ("gis", "check_coverage"),
            ("smartflex", "register_service_request"),
        ] {
            assert!(
                ops.contains(&(connector.to_owned(), op.to_owned())),
                "{connector}.{op} missing from {ops:?}"
            );
        }
    }

    #[tokio::test]
    async fn simulated_connectors_answer_per_the_catalog() {
        use serde_json::{Map, Value};
        use tramite_engine::runtime::connector::ConnectorCall;

        let sims = Simulators::new();
        let connectors = sims.connectors();
        type Call<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let calls: [Call<'_>; 3] = [
            ("naf", "check_portfolio", &[("ci", "4587213")]),
            (
                "gis",
                "check_coverage",
                &[
                    ("address", "Calle Baptista 345"),
                    ("zone", "Centro"),
                    ("service", "trio"),
                ],
            ),
            (
                "smartflex",
                "register_service_request",
                &[
                    ("ci", "4587213"),
                    ("client_name", "María Elena Rojas Vargas"),
                    ("phone", "71712345"),
                    ("address", "Calle Baptista 345"),
                    ("zone", "Centro"),
                    ("service", "trio"),
                    ("channel", "telefono"),
                ],
            ),
        ];
        let catalog = catalog();
        for (name, operation, pairs) in calls {
            let input: Map<String, Value> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect();
            let out = connectors
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not registered"))
                .call(ConnectorCall {
                    operation,
                    input: &input,
                    idempotency_key: "job-1",
                    attempt: 1,
                })
                .await
                .unwrap_or_else(|e| panic!("{name}.{operation}: {e}"));
            let spec = catalog.connector(name).unwrap();
            sim::tests::assert_matches_spec(spec, operation, &out);
        }
        assert_eq!(sims.naf.calls(), 1);
        assert_eq!(sims.gis.calls(), 1);
        assert_eq!(sims.smartflex.registration_count(), 1);
        assert!(format!("{:?}", simulated()).contains("smartflex"));
    }
}
