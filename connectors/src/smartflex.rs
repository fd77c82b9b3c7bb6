//! Smartflex: the commercial and operational platform where a sale is
//! registered as a service request; its reports feed the indicator.

use tramite_engine::catalog::{ConnectorSpec, ErrorSpec, OperationSpec, ParamSpec};
use tramite_engine::definition::VarType;

/// Smartflex's operations.
pub fn spec() -> ConnectorSpec {
    ConnectorSpec {
        name: "smartflex".to_owned(),
        title: "Smartflex — plataforma comercial y operativa".to_owned(),
        operations: vec![OperationSpec {
            name: "register_service_request".to_owned(),
            description: "Registers the sale as a service request (\"Procedimiento Venta\"); \
                          the same idempotency key never registers twice."
                .to_owned(),
            inputs: vec![
                ParamSpec::required("ci", VarType::String, "client's identity card"),
                ParamSpec::required("client_name", VarType::String, "client's full name"),
                ParamSpec::required("phone", VarType::String, "contact phone"),
                ParamSpec::required("address", VarType::String, "installation address"),
                ParamSpec::required("zone", VarType::String, "installation zone"),
                ParamSpec::required("service", VarType::String, "product code"),
                ParamSpec::required("channel", VarType::String, "channel the request came by"),
                ParamSpec::optional("reference", VarType::String, "the instance's business key"),
            ],
            outputs: vec![
                ParamSpec::required(
                    "request_number",
                    VarType::String,
                    "Smartflex service request number",
                ),
                ParamSpec::required("registered_at", VarType::Datetime, "when it was registered"),
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
