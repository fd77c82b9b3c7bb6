//! Node kinds: one enum, each kind its own struct.
//!
//! In YAML a node is a map with `id`, `kind`, optional `step` and `label`,
//! and the fields of its kind beside them. The loader splits the common
//! fields from the kind's fields so that each kind is deserialized directly
//! (not through serde's buffered internally-tagged path), which keeps the
//! exact line of a wrong field.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Field, Mapping, NodeId};
use crate::duration::Duration;
use crate::expr::Expr;
use crate::text::{Numbering, Text};

/// A step, gate or event of the procedure. Its JSON Schema is written by
/// hand in [`crate::schema`]: every kind's fields sit beside the common ones.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Unique identifier inside the definition.
    pub id: NodeId,
    /// The step number in the original document (`4`, `"9.1"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Numbering>,
    /// What people see: the task title, the box in the diagram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Text>,
    /// What the node does, by kind.
    #[serde(flatten)]
    pub kind: NodeKind,
}

/// What a node does.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeKind {
    /// Where an instance begins.
    Start(Start),
    /// Work a person does from their inbox.
    UserTask(UserTask),
    /// A call to an external system through a connector, run as a job.
    ServiceTask(ServiceTask),
    /// Takes the first branch whose condition holds, else the default.
    ExclusiveGate(ExclusiveGate),
    /// Splits into parallel branches that meet again at a join.
    Fork(Fork),
    /// Waits for every branch of its fork.
    Join(Join),
    /// Waits for a message correlated to the instance.
    MessageWait(MessageWait),
    /// Waits for a duration or until a point in time.
    TimerWait(TimerWait),
    /// Starts a procedure listed under `links.exit`.
    Call(Call),
    /// Ends the instance with an outcome.
    End(End),
}

impl NodeKind {
    /// The kind's name as written in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            NodeKind::Start(_) => "start",
            NodeKind::UserTask(_) => "user_task",
            NodeKind::ServiceTask(_) => "service_task",
            NodeKind::ExclusiveGate(_) => "exclusive_gate",
            NodeKind::Fork(_) => "fork",
            NodeKind::Join(_) => "join",
            NodeKind::MessageWait(_) => "message_wait",
            NodeKind::TimerWait(_) => "timer_wait",
            NodeKind::Call(_) => "call",
            NodeKind::End(_) => "end",
        }
    }

    /// Every kind name, for error messages and the schema.
    pub const NAMES: [&'static str; 10] = [
        "start",
        "user_task",
        "service_task",
        "exclusive_gate",
        "fork",
        "join",
        "message_wait",
        "timer_wait",
        "call",
        "end",
    ];

    /// Whether a token stops here until something outside the engine
    /// happens (a person, a connector, a message, a clock, a child
    /// procedure). A cycle without such a node would spin forever.
    pub fn waits(&self) -> bool {
        match self {
            NodeKind::UserTask(_)
            | NodeKind::ServiceTask(_)
            | NodeKind::MessageWait(_)
            | NodeKind::TimerWait(_) => true,
            NodeKind::Call(call) => call.wait,
            NodeKind::Start(_)
            | NodeKind::ExclusiveGate(_)
            | NodeKind::Fork(_)
            | NodeKind::Join(_)
            | NodeKind::End(_) => false,
        }
    }
}

/// Channels a request can arrive by.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A phone call routed by the IVR.
    Ivr,
    /// The web page.
    Web,
    /// The Botmaker chatbot.
    Botmaker,
    /// Facebook.
    Facebook,
    /// WhatsApp.
    Whatsapp,
    /// Another procedure (a `call` node).
    Procedure,
    /// Anything else.
    Other,
}

/// Where an instance begins.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// Channels allowed to start an instance.
    pub channels: Vec<Channel>,
    /// Data a start carries; each field writes its variable.
    #[serde(default)]
    pub data: Vec<Field>,
    /// The first node.
    pub next: NodeId,
}

/// Work a person does from their inbox.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserTask {
    /// The role whose members may claim the task.
    pub role: String,
    /// Instructions in Markdown (the call protocol, what to say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<Text>,
    /// The form; each field writes its variable.
    #[serde(default)]
    pub form: Vec<Field>,
    /// The buttons that complete the task, each leading to a node.
    pub outcomes: Vec<Outcome>,
    /// How long the task may stay open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Duration>,
    /// What happens when the task is overdue; requires `due`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
    /// Documents shown or produced at this task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<String>,
}

/// A button that completes a user task.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// Identifier sent when completing the task.
    pub id: String,
    /// The button's text.
    pub label: Text,
    /// Where the token goes.
    pub next: NodeId,
    /// Variables this outcome sets, besides the form.
    #[serde(default, skip_serializing_if = "Mapping::is_empty")]
    pub set: Mapping,
    /// Whether the form's required fields must be filled for this button
    /// (`false` for "the client gives up": what is filled is still checked).
    #[serde(default = "yes")]
    pub validate: bool,
}

/// What happens to an overdue task.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    /// The node the escalation leads to.
    pub next: NodeId,
    /// Withdraw the task (true) or leave it open beside the escalation (false).
    #[serde(default = "yes")]
    pub interrupting: bool,
}

fn yes() -> bool {
    true
}

/// A call to an external system, run as a job outside the engine's transaction.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceTask {
    /// Connector name from the catalog (`naf`, `gis`, `smartflex`).
    pub connector: String,
    /// Operation of that connector.
    pub operation: String,
    /// Operation inputs, each an expression over the instance's variables.
    #[serde(default)]
    pub input: Mapping,
    /// Variables written from the operation's `result`.
    #[serde(default)]
    pub output: Mapping,
    /// How long one attempt may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// How transient failures are retried before an incident is raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Where named business errors of the operation lead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorRoute>,
    /// The node after success.
    pub next: NodeId,
}

/// Retry of transient failures.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// How the delay between attempts grows.
    #[serde(default)]
    pub backoff: Backoff,
    /// Delay before the second attempt.
    pub initial_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
    /// Randomise each delay (full jitter) so that retries do not arrive in waves.
    #[serde(default = "yes")]
    pub jitter: bool,
}

/// Growth of retry delays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// The same delay every time.
    Fixed,
    /// Doubling delays.
    #[default]
    Exponential,
}

/// Route for a named business error of an operation.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorRoute {
    /// The error's name in the operation's catalog entry.
    pub error: String,
    /// Where the token goes.
    pub next: NodeId,
    /// Variables to set (the error's details are readable as `error`).
    #[serde(default, skip_serializing_if = "Mapping::is_empty")]
    pub set: Mapping,
}

/// Takes the first branch whose condition holds, else the default.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExclusiveGate {
    /// Ordered branches.
    pub branches: Vec<Branch>,
    /// Where the token goes when no condition holds (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<NodeId>,
    /// Label of the default edge in diagrams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_label: Option<Text>,
}

/// One branch of an exclusive gate.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    /// The condition.
    pub when: Expr,
    /// Where the token goes.
    pub next: NodeId,
    /// Label of the edge in diagrams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Text>,
}

/// Splits the token into parallel branches.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fork {
    /// First node of each branch.
    pub branches: Vec<NodeId>,
    /// The join where the branches meet again.
    pub join: NodeId,
}

/// Waits until every branch of the fork that names it has arrived.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// The node after the join.
    pub next: NodeId,
}

/// Waits for a message correlated to this instance.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageWait {
    /// The message name publishers use.
    pub message: String,
    /// Expression whose value must equal the message's correlation key.
    pub correlation: Expr,
    /// Variables written from the message (readable as `message`).
    #[serde(default)]
    pub store: Mapping,
    /// Where to go if the message does not come in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// The rest of a sending: messages of the same name and key that come
    /// after the wait took one, while no wait waits for them, until none
    /// has come for this long, are the instance's too (a client sends
    /// several photos as several messages). Each is stored as the first
    /// was, a list appended to the list before; the instance does not wait
    /// for them. Without it, they are kept for the next wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect: Option<Duration>,
    /// The node after the message arrives.
    pub next: NodeId,
}

/// A deadline with its route.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    /// How long to wait.
    pub after: Duration,
    /// Where the token goes when the time is up.
    pub next: NodeId,
}

/// Waits for a duration (`after`) or until a moment (`at`, an expression
/// giving an RFC 3339 timestamp); exactly one of the two.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimerWait {
    /// Wait this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Duration>,
    /// Wait until this moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Expr>,
    /// The node after the timer fires.
    pub next: NodeId,
}

/// Starts a procedure listed under `links.exit`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// The code of the procedure to start.
    pub procedure: String,
    /// Its start data, each an expression over this instance's variables.
    #[serde(default)]
    pub input: Mapping,
    /// Wait for the child to end (true) or go on at once (false).
    #[serde(default = "yes")]
    pub wait: bool,
    /// Variables written from the child's variables (readable as `output`); requires `wait`.
    #[serde(default)]
    pub output: Mapping,
    /// The node after the call.
    pub next: NodeId,
}

/// Ends the instance.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct End {
    /// The outcome label indicators count (`venta_concretada`).
    pub outcome: String,
}
