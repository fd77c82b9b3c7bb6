//! Connectors of tramite: how the engine reaches external systems.
//!
//! One connector = one module (`naf`, `gis`, `smartflex`), each describing
//! its operations for the engine's [`Catalog`]. Validation checks every
//! `service_task` of a definition against this catalog, so an unknown
//! operation, input, output or business error is caught when the YAML is
//! loaded, not when a client is on the phone.

pub mod gis;
pub mod naf;
pub mod smartflex;

use tramite_engine::catalog::Catalog;

/// The catalog of every connector that ships with tramite.
pub fn catalog() -> Catalog {
    Catalog::new()
        .with(naf::spec())
        .with(gis::spec())
        .with(smartflex::spec())
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
}
