//! GIS (Sistema de Georreferenciación): technical capacity at an address —
//! coverage, supported speeds and special characteristics.

use tramite_engine::catalog::{ConnectorSpec, ErrorSpec, OperationSpec, ParamSpec};
use tramite_engine::definition::VarType;

/// GIS's operations.
pub fn spec() -> ConnectorSpec {
    ConnectorSpec {
        name: "gis".to_owned(),
        title: "GIS — Sistema de Georreferenciación".to_owned(),
        operations: vec![OperationSpec {
            name: "check_coverage".to_owned(),
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
                    "highest speed supported at the address",
                ),
                ParamSpec::required("technologies", VarType::List, "e.g. fibra, hfc, cobre"),
                ParamSpec::required(
                    "special_features",
                    VarType::List,
                    "e.g. requiere_poste, edificio_sin_ducto, zona_restringida",
                ),
                ParamSpec::optional("network_node", VarType::String, "serving node or cabinet"),
            ],
            errors: vec![ErrorSpec::new(
                "address_not_found",
                "the address cannot be georeferenced; ask the client for a reference",
            )],
        }],
    }
}
