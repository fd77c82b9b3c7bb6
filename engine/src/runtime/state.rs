//! The persistent state of one instance: its variables and its tokens.
//!
//! Stored as one JSON document in the instance's row, so that a command
//! reads and writes one row for the instance whatever the graph's shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Variables and tokens of an instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    /// Variables written so far.
    pub variables: Map<String, Value>,
    /// Tokens alive, each waiting somewhere.
    pub tokens: Vec<Token>,
    /// The id the next token gets.
    pub next_token: u32,
    /// Forks whose branches have not all arrived at their join, by group.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub joins: BTreeMap<String, JoinState>,
    /// The outcome of the end the main flow reached, while side tokens (a
    /// non-interrupting escalation's) still run: the instance ends with it
    /// when they do, not with the outcome of the side path's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The last message a `collect` wait took (or took as the rest of its
    /// sending): the rest of the sending is measured from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending: Option<Sending>,
}

/// Where and when a `collect` wait last took a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sending {
    /// The wait.
    pub node: String,
    /// The message's name.
    pub message: String,
    /// Its correlation key (a phone).
    pub key: String,
    /// When, ms.
    pub at: i64,
}

impl InstanceState {
    /// The token with this id.
    pub fn token(&self, id: u32) -> Option<&Token> {
        self.tokens.iter().find(|t| t.id == id)
    }

    /// The token with this id, mutably.
    pub fn token_mut(&mut self, id: u32) -> Option<&mut Token> {
        self.tokens.iter_mut().find(|t| t.id == id)
    }

    /// Removes the token with this id.
    pub fn remove_token(&mut self, id: u32) -> Option<Token> {
        let i = self.tokens.iter().position(|t| t.id == id)?;
        Some(self.tokens.remove(i))
    }
}

/// A position of the instance in the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// Unique within the instance.
    pub id: u32,
    /// The node it is at.
    pub node: String,
    /// What it waits for.
    pub wait: Wait,
    /// Enclosing forks, innermost last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<ForkScope>,
    /// Started by a non-interrupting escalation beside the main flow: its
    /// end does not decide the instance's outcome.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub side: bool,
}

/// One fork a token is inside of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForkScope {
    /// Identifies this execution of the fork.
    pub group: String,
    /// The join that closes it.
    pub join: String,
}

/// Arrivals at a join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinState {
    /// Branches arrived.
    pub arrived: u32,
    /// Branches started.
    pub expected: u32,
    /// Forked by a side token: the token after the join is one too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub side: bool,
}

/// What a token waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "on")]
pub enum Wait {
    /// Being moved inside the current command.
    Moving,
    /// A person to complete a task; `timer` is the due-time escalation.
    Task {
        /// The task.
        task: String,
        /// The escalation timer job, if the task has a due time and an escalation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timer: Option<String>,
    },
    /// A connector job.
    Job {
        /// The job.
        job: String,
    },
    /// A message; `timer` is the timeout job.
    Message {
        /// The subscription.
        subscription: String,
        /// The timeout timer job, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timer: Option<String>,
    },
    /// A timer job.
    Timer {
        /// The job.
        job: String,
    },
    /// A child instance.
    Call {
        /// The child's id.
        child: String,
    },
    /// An operator, after an expression failed at this node.
    Incident {
        /// The incident.
        incident: String,
        /// At a call: the child that ran and was cancelled. Resolving then
        /// stands for the child's result; without one (the child never
        /// started), resolving fixes the input and runs the call again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cancelled_child: Option<String>,
        /// At a service task: the business error whose route's `set`
        /// failed. The system answered with that error, so resolving goes
        /// on along its route, with what its `set` would have written.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        route: Option<String>,
    },
}
