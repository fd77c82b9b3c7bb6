//! NAF (Núcleo Administrativo Financiero), module "Paquete Accionario",
//! option "Cartera": the client portfolio, where impediments to a sale are
//! recorded (debt, credit-risk listing, equipment not returned).

use tramite_engine::catalog::{ConnectorSpec, ErrorSpec, OperationSpec, ParamSpec};
use tramite_engine::definition::VarType;

/// NAF's operations.
pub fn spec() -> ConnectorSpec {
    ConnectorSpec {
        name: "naf".to_owned(),
        title: "NAF — Paquete Accionario, opción Cartera".to_owned(),
        operations: vec![OperationSpec {
            name: "check_portfolio".to_owned(),
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
                ParamSpec::optional("client_name", VarType::String, "name on record"),
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
