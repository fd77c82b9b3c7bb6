//! The operation catalog: which connectors exist, what each operation takes
//! and returns, and which business errors it may raise.
//!
//! The engine defines the shape; the `connectors` crate fills it. This keeps
//! validation exact (an unknown operation is caught at load time) without
//! the engine depending on any connector.

use std::collections::BTreeMap;

use crate::definition::VarType;

/// Every connector known to a running engine.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    connectors: BTreeMap<String, ConnectorSpec>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// Adds (or replaces) a connector.
    pub fn with(mut self, spec: ConnectorSpec) -> Catalog {
        self.connectors.insert(spec.name.clone(), spec);
        self
    }

    /// The connector with this name.
    pub fn connector(&self, name: &str) -> Option<&ConnectorSpec> {
        self.connectors.get(name)
    }

    /// The operation `operation` of connector `connector`, if both exist.
    pub fn operation(&self, connector: &str, operation: &str) -> Option<&OperationSpec> {
        self.connector(connector)?.operation(operation)
    }

    /// Every connector, by name.
    pub fn connectors(&self) -> impl Iterator<Item = &ConnectorSpec> {
        self.connectors.values()
    }
}

/// What one connector offers.
#[derive(Debug, Clone)]
pub struct ConnectorSpec {
    /// The name definitions use (`naf`).
    pub name: String,
    /// What the system is, for people.
    pub title: String,
    /// Its operations.
    pub operations: Vec<OperationSpec>,
}

impl ConnectorSpec {
    /// The operation with this name.
    pub fn operation(&self, name: &str) -> Option<&OperationSpec> {
        self.operations.iter().find(|o| o.name == name)
    }
}

/// One operation of a connector.
#[derive(Debug, Clone)]
pub struct OperationSpec {
    /// The name definitions use (`check_portfolio`).
    pub name: String,
    /// What it does.
    pub description: String,
    /// What it takes.
    pub inputs: Vec<ParamSpec>,
    /// What it returns, readable as `result.<name>`.
    pub outputs: Vec<ParamSpec>,
    /// Business errors it may raise (routable in the definition).
    pub errors: Vec<ErrorSpec>,
}

impl OperationSpec {
    /// What in `result` no answer of this operation can hold, one line
    /// each: an output the catalog says is always returned that is missing
    /// (or null), or a value its output's type does not admit. Names the
    /// catalog does not list are not looked at: a system may answer more.
    pub fn result_problems(
        &self,
        result: &serde_json::Map<String, serde_json::Value>,
    ) -> Vec<String> {
        let mut problems: Vec<String> = self
            .outputs
            .iter()
            .filter(|p| p.required && result.get(&p.name).is_none_or(serde_json::Value::is_null))
            .map(|p| {
                format!(
                    "lacks `{}`, which the catalog says the system always returns",
                    p.name
                )
            })
            .collect();
        for p in &self.outputs {
            if let Some(value) = result.get(&p.name)
                && !crate::runtime::machine::admits(p.ty, value)
            {
                // Quoted short: a system's whole answer is not for every
                // reader of incidents and histories.
                let mut shown = value.to_string();
                if let Some((cut, _)) = shown.char_indices().nth(64) {
                    shown.truncate(cut);
                    shown.push('…');
                }
                problems.push(format!(
                    "gives `{}` the value {shown}, which is not of its type, {}",
                    p.name, p.ty
                ));
            }
        }
        problems
    }
}

/// An input or output of an operation.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: VarType,
    /// Whether an input must be given (outputs: whether always present).
    pub required: bool,
    /// What it means.
    pub description: String,
}

impl ParamSpec {
    /// A required input (or an output that is always present).
    pub fn required(name: &str, ty: VarType, description: &str) -> ParamSpec {
        ParamSpec {
            name: name.to_owned(),
            ty,
            required: true,
            description: description.to_owned(),
        }
    }

    /// An optional input (or an output that may be absent).
    pub fn optional(name: &str, ty: VarType, description: &str) -> ParamSpec {
        ParamSpec {
            required: false,
            ..ParamSpec::required(name, ty, description)
        }
    }
}

/// A named business error: an answer, not a failure (no retry).
#[derive(Debug, Clone)]
pub struct ErrorSpec {
    /// Its name (`invalid_ci`).
    pub name: String,
    /// When it happens.
    pub description: String,
}

impl ErrorSpec {
    /// A business error.
    pub fn new(name: &str, description: &str) -> ErrorSpec {
        ErrorSpec {
            name: name.to_owned(),
            description: description.to_owned(),
        }
    }
}
