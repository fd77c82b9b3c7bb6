//! Semantic validation of a parsed definition: references, roles,
//! connectors, expressions and variables, and the shape of the graph.
//!
//! Like vector's config graph, validation collects **every** problem before
//! answering. A check that needs a whole section (the graph needs every
//! node, "never written" needs every writer, "unknown role" needs every
//! role) runs only when that section loaded, so one broken node does not
//! cascade into dozens of "unreachable" messages; every other check runs.

mod assigned;
mod graph;
mod references;
mod variables;

pub use variables::INSTANCE_FIELDS;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::catalog::Catalog;
use crate::definition::{Definition, NodeKind, VarType};
use crate::diagnostic::{Code, Diagnostic, Diagnostics};
use crate::loader::{self, Parsed};
use crate::position::{PositionIndex, YamlPath};

/// What a definition may refer to outside itself.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Connectors and their operations.
    pub catalog: &'a Catalog,
    /// Procedures a `call` node may start, by code.
    pub procedures: &'a BTreeMap<String, ProcedureInterface>,
}

/// What a procedure offers to a caller: its start data and its variables.
#[derive(Debug, Clone, Default)]
pub struct ProcedureInterface {
    /// Start data fields, with whether each is required.
    pub start_fields: Vec<(String, bool)>,
    /// The start data fields' types.
    pub start_types: BTreeMap<String, VarType>,
    /// Declared variables and their types (readable by a caller as `output`).
    pub variables: BTreeMap<String, VarType>,
    /// Whether its start accepts the `procedure` channel, i.e. may be called.
    pub callable: bool,
    /// The procedures its `call` nodes start, by code (for cycles of calls
    /// across procedures).
    pub calls: Vec<String>,
    /// Whether its start and variables loaded whole. A file with problems
    /// of its own (a misspelt `channels:`, say) reads as a procedure with no
    /// start fields that cannot be called: a caller's call is not checked
    /// against it, it is told to validate that file.
    pub complete: bool,
}

impl ProcedureInterface {
    /// The interface of a definition.
    pub fn of(definition: &Definition) -> ProcedureInterface {
        let starts = definition.nodes.iter().filter_map(|n| match &n.kind {
            NodeKind::Start(s) => Some(s),
            _ => None,
        });
        let start_fields = starts
            .clone()
            .flat_map(|s| s.data.iter().map(|f| (f.name.clone(), f.required)))
            .collect();
        let start_types = starts
            .clone()
            .flat_map(|s| s.data.iter().map(|f| (f.name.clone(), f.ty)))
            .collect();
        let callable = starts
            .clone()
            .any(|s| s.channels.contains(&crate::definition::Channel::Procedure));
        let variables = definition
            .variables
            .iter()
            .map(|v| (v.name.clone(), v.ty))
            .collect();
        let mut calls: Vec<String> = definition
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Call(c) => Some(c.procedure.clone()),
                _ => None,
            })
            .collect();
        calls.sort();
        calls.dedup();
        ProcedureInterface {
            start_fields,
            start_types,
            variables,
            callable,
            calls,
            complete: true,
        }
    }
}

/// A definition that loaded and validated without a single error.
#[derive(Debug)]
pub struct Compiled {
    /// The definition.
    pub definition: Definition,
    /// Positions in its text, for messages found later.
    pub index: PositionIndex,
    /// What deploys but may go wrong at run time (a variable some path may
    /// leave unwritten), with positions; empty when nothing does.
    pub warnings: Diagnostics,
}

/// Parses and validates `text` (named `file` in messages). Errors refuse
/// the definition; warnings come with it.
pub fn compile(file: &str, text: &str, ctx: &Context<'_>) -> Result<Compiled, Diagnostics> {
    let parsed = loader::parse(text);
    let mut items = parsed.diagnostics.clone();
    items.extend(validate(&parsed, ctx));
    for d in &mut items {
        loader::locate(d, &parsed.index);
    }
    items.sort_by(|a, b| (a.pos, a.code, &a.message).cmp(&(b.pos, b.code, &b.message)));
    items.dedup();
    let (warnings, errors): (Vec<_>, Vec<_>) = items.into_iter().partition(|d| d.code.is_warning());
    if errors.is_empty() {
        return Ok(Compiled {
            definition: parsed.definition,
            index: parsed.index,
            warnings: Diagnostics {
                file: file.to_owned(),
                items: warnings,
            },
        });
    }
    Err(Diagnostics {
        file: file.to_owned(),
        items: errors,
    })
}

/// Every semantic problem of a parsed definition.
pub fn validate(parsed: &Parsed, ctx: &Context<'_>) -> Vec<Diagnostic> {
    if !parsed.readable {
        return Vec::new();
    }
    let mut checker = Checker::new(parsed, ctx);
    references::check(&mut checker);
    variables::check(&mut checker);
    // The graph is only known when every node loaded and there is one start.
    if parsed.section_complete("nodes") && !checker.has(Code::StartCount) {
        graph::check(&mut checker);
        // The data flow needs a whole, sound graph; warnings beside errors
        // would only be noise (beside other warnings, such as a cycle of
        // calls, they are not).
        if !checker.diagnostics.iter().any(|d| !d.code.is_warning())
            && parsed.diagnostics.is_empty()
        {
            assigned::check(&mut checker);
        }
    }
    checker.diagnostics
}

/// Shared state of the checks.
struct Checker<'a> {
    parsed: &'a Parsed,
    def: &'a Definition,
    ctx: &'a Context<'a>,
    broken: &'a BTreeSet<String>,
    /// Node id → position in `def.nodes` (first occurrence).
    nodes: HashMap<&'a str, usize>,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> Checker<'a> {
    fn new(parsed: &'a Parsed, ctx: &'a Context<'a>) -> Checker<'a> {
        let mut nodes = HashMap::new();
        for (i, n) in parsed.definition.nodes.iter().enumerate() {
            nodes.entry(n.id.as_str()).or_insert(i);
        }
        Checker {
            parsed,
            def: &parsed.definition,
            ctx,
            broken: &parsed.broken_nodes,
            nodes,
            diagnostics: Vec::new(),
        }
    }

    fn error(&mut self, code: Code, path: YamlPath, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::new(code, path, message));
    }

    /// A warning: the same list, told apart by its code's severity.
    fn warn(&mut self, code: Code, path: YamlPath, message: impl Into<String>) {
        debug_assert!(code.is_warning());
        self.diagnostics.push(Diagnostic::new(code, path, message));
    }

    /// How many problems were found so far.
    fn error_count(&self) -> usize {
        self.diagnostics.len()
    }

    fn has(&self, code: Code) -> bool {
        self.diagnostics.iter().any(|d| d.code == code)
    }

    /// The catalog's entry for a service task's operation, if both its
    /// connector and its operation are known.
    fn operation(
        &self,
        s: &crate::definition::ServiceTask,
    ) -> Option<&'a crate::catalog::OperationSpec> {
        self.ctx.catalog.operation(&s.connector, &s.operation)
    }

    /// The path of node `i` of the definition, in the file.
    fn node_path(&self, i: usize) -> YamlPath {
        self.parsed.item_path("nodes", i)
    }

    /// Whether `id` names a node (or one that failed to load).
    fn node_exists(&self, id: &str) -> bool {
        self.nodes.contains_key(id) || self.broken.contains(id)
    }
}

/// Formats names as `a`, `b`, `c` for messages.
pub(crate) fn list(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    names
        .into_iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}
