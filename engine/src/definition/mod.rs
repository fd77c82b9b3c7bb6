//! The process definition model: what a YAML file says, typed.
//!
//! Every struct refuses unknown fields, so a misspelt key is an error with
//! its own line and column instead of a silently ignored setting. Values are
//! built by [`crate::loader`], which reports every problem of a file at once.

mod edges;
mod expressions;
mod field;
mod node;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use edges::{Edge, EdgeLabel, Successor};
pub use expressions::{NodeExpr, Purpose};
pub use field::{EnumOption, Field, VarType};
pub use node::{
    Backoff, Branch, Call, Channel, End, ErrorRoute, Escalation, ExclusiveGate, Fork, Join,
    MessageWait, Node, NodeKind, Outcome, RetryPolicy, ServiceTask, Start, Timeout, TimerWait,
    UserTask,
};

use crate::expr::Expr;
use crate::text::{Numbering, Text};

/// A node identifier, unique inside one definition.
pub type NodeId = String;

/// One business procedure: the header of the original document and the
/// graph of its steps.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "tramite process definition")]
pub struct Definition {
    /// The procedure's code in the quality system, e.g. `OPE-SUM-VEN-P06`.
    pub code: String,
    /// The procedure's title.
    pub name: Text,
    /// The version label of the original document (not the deployment version).
    pub version: Numbering,
    /// What the procedure is for (the original's objective and scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Text>,
    /// The role that supervises the procedure and owns its indicators.
    pub owner_role: String,
    /// Every role that appears in the procedure.
    pub roles: Vec<Role>,
    /// Every variable an instance carries, with its type.
    #[serde(default)]
    pub variables: Vec<Variable>,
    /// Procedures that come before (entry) and after (exit) this one.
    #[serde(default)]
    pub links: Links,
    /// Documents the procedure produces or uses.
    #[serde(default)]
    pub documents: Vec<Document>,
    /// Indicators the procedure is judged by.
    #[serde(default)]
    pub indicators: Vec<Indicator>,
    /// The steps and gates, as a list; exactly one is a `start`.
    pub nodes: Vec<Node>,
}

impl Definition {
    /// The node with this id, if any.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The variable with this name, if declared.
    pub fn variable(&self, name: &str) -> Option<&Variable> {
        self.variables.iter().find(|v| v.name == name)
    }

    /// Whether the procedure names `role`, as one of its roles or as its
    /// owner: the people in it may read its requests.
    pub fn names_role(&self, role: &str) -> bool {
        self.owner_role == role || self.roles.iter().any(|r| r.id == role)
    }
}

/// A role people (or systems) act in.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Identifier used by nodes and by user accounts.
    pub id: String,
    /// The role's name as the organisation writes it.
    pub name: Text,
}

/// A variable of an instance.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    /// Name used in expressions and forms.
    pub name: String,
    /// Its type. Form fields, and mappings that copy `result.x` or `output.x`,
    /// must agree (`string` and `text` mix; an `integer` fits a `number`).
    #[serde(rename = "type")]
    pub ty: VarType,
    /// How people call it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Text>,
}

/// Entry and exit procedures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Links {
    /// Procedures that lead into this one.
    #[serde(default)]
    pub entry: Vec<Link>,
    /// Procedures this one leads to.
    #[serde(default)]
    pub exit: Vec<Link>,
}

/// A linked procedure.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Its code, e.g. `OPR-PAS-P02`.
    pub code: String,
    /// Its title.
    pub name: Text,
}

/// A document of the procedure (the original's "Documentos del procedimiento").
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Identifier.
    pub id: String,
    /// Its title.
    pub name: Text,
    /// Form, report, regulation or policy.
    #[serde(rename = "type")]
    pub ty: DocumentType,
    /// Produced by the system, or filled in by hand.
    pub mode: DocumentMode,
    /// Number of originals.
    #[serde(default = "one")]
    pub originals: u32,
    /// Number of copies.
    #[serde(default)]
    pub copies: u32,
    /// Nodes where the document is produced or handled.
    #[serde(default)]
    pub nodes: Vec<NodeId>,
}

fn one() -> u32 {
    1
}

/// Kinds of document, as the quality system classifies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DocumentType {
    /// F: formulario.
    Form,
    /// I: informe.
    Report,
    /// R: reglamento.
    Regulation,
    /// P: política.
    Policy,
}

/// How a document comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DocumentMode {
    /// Produced from the instance's data.
    Automated,
    /// Filled in and tracked by people.
    Manual,
}

/// An indicator: a ratio over instances, computed per period, with a verdict.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Indicator {
    /// Identifier.
    pub id: String,
    /// What is measured ("Venta digital eficiente").
    pub name: Text,
    /// Where the data comes from, as the original says ("Reportes del sistema Smartflex").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Text>,
    /// The role that answers for it.
    pub responsible_role: String,
    /// How often it is computed.
    pub period: Period,
    /// Instances counted above the line.
    pub numerator: Population,
    /// Instances counted below the line.
    pub denominator: Population,
    /// Multiplier of the ratio (100 for a percentage).
    #[serde(default = "hundred")]
    pub scale: f64,
    /// How a value is judged.
    pub verdict: Verdict,
}

fn hundred() -> f64 {
    100.0
}

/// Indicator periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Per calendar day.
    Daily,
    /// Per ISO week.
    Weekly,
    /// Per calendar month.
    Monthly,
}

/// A set of instances started in the period.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Population {
    /// What this set is, for people.
    pub description: Text,
    /// Only instances that reached one of these end outcomes; all instances when empty.
    #[serde(default)]
    pub ends: Vec<String>,
    /// And for which this condition over the instance's variables holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Expr>,
}

/// The parameter of an indicator: a threshold and the verdict on each side.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// The threshold, in the indicator's scale.
    pub threshold: f64,
    /// Verdict for a value above the threshold ("Aceptado").
    pub above: Text,
    /// Verdict for a value below the threshold ("Observado").
    pub below: Text,
    /// Which side a value exactly at the threshold falls on.
    pub at_threshold: Side,
}

/// A side of a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Judged as above.
    Above,
    /// Judged as below.
    Below,
}

/// A map from a name to an expression: inputs, outputs and assignments.
pub type Mapping = BTreeMap<String, Expr>;
