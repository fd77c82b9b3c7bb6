//! Ids, references and settings: everything one node can get wrong alone.

use std::collections::{BTreeMap, BTreeSet};

use super::{Checker, ProcedureInterface, list};
use crate::definition::{EdgeLabel, Field, NodeKind, VarType};
use crate::diagnostic::{Code, did_you_mean};
use crate::position::YamlPath;

pub(super) fn check(c: &mut Checker<'_>) {
    stored_names(c);
    duplicates(c);
    start_count(c);
    edges(c);
    roles(c);
    documents(c);
    nodes(c);
    services(c);
    calls(c);
    indicators(c);
}

fn duplicate_ids<'a>(
    c: &mut Checker<'_>,
    what: &str,
    items: impl IntoIterator<Item = (&'a str, YamlPath)>,
) {
    let mut seen = BTreeSet::new();
    for (id, path) in items {
        if !seen.insert(id) {
            c.error(
                Code::DuplicateId,
                path,
                format!("{what} `{id}` is defined twice"),
            );
        }
    }
}

/// CEL's reserved words: the language's own and those kept for later.
const CEL_RESERVED: [&str; 21] = [
    "as",
    "break",
    "const",
    "continue",
    "else",
    "false",
    "for",
    "function",
    "if",
    "import",
    "in",
    "let",
    "loop",
    "namespace",
    "null",
    "package",
    "return",
    "true",
    "var",
    "void",
    "while",
];

/// What expressions read besides variables (see `variables::Scope`):
/// `instance` everywhere, the others in the mappings that receive them,
/// where a variable of that name could not be read.
const ROOTS: [&str; 5] = ["instance", "result", "error", "message", "output"];

/// Whether `id` is letters, digits and `_`, starting with a letter.
fn is_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The longest procedure code, node id, role id or end outcome, in
/// characters. Each is stored in an indexed column (PostgreSQL refuses an
/// index entry over about 2,700 bytes: the start or the end would fail at
/// run time) and shown in diagrams, inboxes and metrics.
const MAX_NAME_CHARS: usize = 100;

/// Names the database stores and indexes, and the code that addresses
/// name in URLs, must be short; the code must also be one path segment.
fn stored_names(c: &mut Checker<'_>) {
    let def = c.def;
    let p = c.parsed;
    let code = &def.code;
    let code_like = code
        .chars()
        .next()
        .is_some_and(|ch| ch.is_ascii_alphanumeric())
        && code
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
    if p.section_complete("code") && (!code_like || code.chars().count() > MAX_NAME_CHARS) {
        c.error(
            Code::InvalidValue,
            YamlPath::root().key("code"),
            format!(
                "the code `{code}` must be letters, digits, `-`, `_` and `.`, starting with a letter or digit, at most {MAX_NAME_CHARS} characters (e.g. `OPE-SUM-VEN-P06`): it is the procedure's address in the API"
            ),
        );
    }
    let mut long = Vec::new();
    for (i, n) in def.nodes.iter().enumerate() {
        let base = p.item_path("nodes", i);
        long.push(("node id", n.id.as_str(), base.key("id")));
        if let NodeKind::End(e) = &n.kind {
            long.push(("outcome", e.outcome.as_str(), base.key("outcome")));
        }
    }
    for (i, r) in def.roles.iter().enumerate() {
        long.push(("role id", r.id.as_str(), p.item_path("roles", i).key("id")));
    }
    for (what, name, path) in long {
        if name.chars().count() > MAX_NAME_CHARS {
            c.error(
                Code::InvalidValue,
                path,
                format!(
                    "this {what} is {} characters long; at most {MAX_NAME_CHARS}",
                    name.chars().count()
                ),
            );
        }
    }
}

fn duplicates(c: &mut Checker<'_>) {
    let def = c.def;
    let p = c.parsed;
    // A node id travels: in diagrams (Mermaid and DOT identifiers), in the
    // idempotency keys sent to systems as an HTTP header (ASCII only), in
    // URLs and in metrics labels.
    for (i, n) in def.nodes.iter().enumerate() {
        if !is_identifier(&n.id) {
            c.error(
                Code::InvalidValue,
                p.item_path("nodes", i).key("id"),
                format!(
                    "node id `{}` must be letters, digits and `_`, starting with a letter (e.g. `paso_1`): it names the step in diagrams, in the keys sent to systems and in addresses",
                    n.id
                ),
            );
        }
    }
    duplicate_ids(
        c,
        "node",
        def.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), p.item_path("nodes", i).key("id"))),
    );
    duplicate_ids(
        c,
        "role",
        def.roles
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str(), p.item_path("roles", i).key("id"))),
    );
    // Expressions read a variable by its bare name: a name CEL cannot parse
    // as one (`nombre-cliente` is a subtraction, `teléfono` not a name at
    // all) or a reserved word could be declared and written but never
    // read, and a root an expression reads for something else hides it.
    for (i, v) in def.variables.iter().enumerate() {
        // CEL's own rule: `[_a-zA-Z][_a-zA-Z0-9]*`.
        let mut chars = v.name.chars();
        let name_like = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        let why = if !name_like {
            Some(
                "must be letters (a–z, without accents), digits and `_`, starting with a letter or `_` (e.g. `nombre_cliente`): expressions read it by name",
            )
        } else if CEL_RESERVED.contains(&v.name.as_str()) {
            Some("is a reserved word of expressions; choose another name")
        } else if ROOTS.contains(&v.name.as_str()) {
            Some(
                "is what expressions call the instance, or in some mappings a system's result, an error, a message or a called procedure's output, where this variable could not be read; choose another name",
            )
        } else {
            None
        };
        if let Some(why) = why {
            c.error(
                Code::InvalidValue,
                p.item_path("variables", i).key("name"),
                format!("variable `{}` {why}", v.name),
            );
        }
    }
    duplicate_ids(
        c,
        "variable",
        def.variables
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.as_str(), p.item_path("variables", i).key("name"))),
    );
    duplicate_ids(
        c,
        "document",
        def.documents
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), p.item_path("documents", i).key("id"))),
    );
    duplicate_ids(
        c,
        "indicator",
        def.indicators
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), p.item_path("indicators", i).key("id"))),
    );
    for (i, n) in def.nodes.iter().enumerate() {
        let base = p.item_path("nodes", i);
        match &n.kind {
            NodeKind::UserTask(t) => {
                duplicate_ids(
                    c,
                    "outcome",
                    t.outcomes
                        .iter()
                        .enumerate()
                        .map(|(j, o)| (o.id.as_str(), base.key("outcomes").index(j).key("id"))),
                );
                duplicate_ids(
                    c,
                    "form field",
                    t.form
                        .iter()
                        .enumerate()
                        .map(|(j, f)| (f.name.as_str(), base.key("form").index(j).key("name"))),
                );
            }
            NodeKind::Start(s) => duplicate_ids(
                c,
                "start field",
                s.data
                    .iter()
                    .enumerate()
                    .map(|(j, f)| (f.name.as_str(), base.key("data").index(j).key("name"))),
            ),
            _ => {}
        }
    }
}

fn start_count(c: &mut Checker<'_>) {
    let starts: Vec<usize> = c
        .def
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.kind, NodeKind::Start(_)))
        .map(|(i, _)| i)
        .collect();
    match starts.as_slice() {
        // A node that failed to load may have been the start.
        [] if c.broken.is_empty() => c.error(
            Code::StartCount,
            YamlPath::root().key("nodes"),
            "there is no start node: add one node with `kind: start`",
        ),
        [] | [_] => {}
        [first, rest @ ..] => {
            let first_id = c.def.nodes[*first].id.clone();
            for i in rest {
                c.error(
                    Code::StartCount,
                    c.node_path(*i).key("kind"),
                    format!(
                        "a definition has exactly one start node; `{first_id}` is already one \
                         (route channels with an exclusive gate after the start)"
                    ),
                );
            }
        }
    }
}

fn edges(c: &mut Checker<'_>) {
    let ids: Vec<&str> = c.def.nodes.iter().map(|n| n.id.as_str()).collect();
    let mut problems = Vec::new();
    for (i, n) in c.def.nodes.iter().enumerate() {
        for e in n.edges(&c.node_path(i)) {
            if !c.node_exists(e.to) {
                let mut msg = format!("there is no node `{}`", e.to);
                if let Some(close) = did_you_mean(e.to, ids.iter().copied()) {
                    msg.push_str(&format!("; did you mean `{close}`?"));
                }
                problems.push((e.path, msg));
            } else if let (EdgeLabel::Branch, Some(&j)) = (e.label, c.nodes.get(e.to))
                && matches!(c.def.nodes[j].kind, NodeKind::Join(_))
            {
                problems.push((
                    e.path,
                    format!("fork branch `{}` goes straight to a join", e.to),
                ));
            }
        }
    }
    for (path, msg) in problems {
        let code = if msg.starts_with("fork") {
            Code::InvalidSetting
        } else {
            Code::UnknownNode
        };
        c.error(code, path, msg);
    }
}

fn role_exists(c: &Checker<'_>, role: &str) -> bool {
    c.def.roles.iter().any(|r| r.id == role)
}

fn unknown_role(c: &mut Checker<'_>, role: &str, path: YamlPath) {
    // With a broken `roles` section, the role may be the broken one. An
    // empty one is refused even if a role was declared with an empty id.
    if (role_exists(c, role) && !role.is_empty()) || !c.parsed.section_complete("roles") {
        return;
    }
    let ids: Vec<&str> = c.def.roles.iter().map(|r| r.id.as_str()).collect();
    // An empty one (`role: ""`) would make tasks no role can take.
    let mut msg = if role.is_empty() {
        "the role is empty: it must be one declared under `roles`".to_owned()
    } else {
        format!("role `{role}` is not declared under `roles`")
    };
    if let Some(close) = did_you_mean(role, ids.iter().copied()) {
        msg.push_str(&format!("; did you mean `{close}`?"));
    }
    c.error(Code::UnknownRole, path, msg);
}

fn roles(c: &mut Checker<'_>) {
    let def = c.def;
    // A missing or mistyped `owner_role` is the loader's problem, not a
    // second one here.
    if c.parsed.section_complete("owner_role") {
        unknown_role(c, &def.owner_role, YamlPath::root().key("owner_role"));
    }
    for (i, n) in def.nodes.iter().enumerate() {
        if let NodeKind::UserTask(t) = &n.kind {
            unknown_role(c, &t.role, c.node_path(i).key("role"));
        }
    }
    for (i, ind) in def.indicators.iter().enumerate() {
        let path = c.parsed.item_path("indicators", i).key("responsible_role");
        unknown_role(c, &ind.responsible_role, path);
    }
}

fn documents(c: &mut Checker<'_>) {
    let def = c.def;
    for (i, d) in def.documents.iter().enumerate() {
        for (j, node) in d.nodes.iter().enumerate() {
            if !c.node_exists(node) {
                let path = c.parsed.item_path("documents", i).key("nodes").index(j);
                c.error(
                    Code::UnknownNode,
                    path,
                    format!("there is no node `{node}`"),
                );
            }
        }
    }
    for (i, n) in def.nodes.iter().enumerate() {
        if let NodeKind::UserTask(t) = &n.kind {
            for (j, doc) in t.documents.iter().enumerate() {
                if !def.documents.iter().any(|d| &d.id == doc)
                    && c.parsed.section_complete("documents")
                {
                    let path = c.node_path(i).key("documents").index(j);
                    c.error(
                        Code::UnknownDocument,
                        path,
                        format!("document `{doc}` is not declared under `documents`"),
                    );
                }
            }
        }
    }
}

fn fields(c: &mut Checker<'_>, fields: &[Field], base: &YamlPath) {
    for (i, f) in fields.iter().enumerate() {
        let path = base.index(i);
        let before = c.error_count();
        let textual = matches!(f.ty, VarType::String | VarType::Text);
        let numeric = matches!(f.ty, VarType::Integer | VarType::Number);
        if let Some(pattern) = &f.pattern {
            if !textual {
                c.error(
                    Code::InvalidSetting,
                    path.key("pattern"),
                    format!("`pattern` applies to text fields, not to `{}`", f.ty),
                );
            } else if let Err(e) = jsonschema::options()
                .build(&serde_json::json!({"type": "string", "pattern": pattern}))
            {
                // Compiled by the engine that checks submissions (ECMA-262's
                // look-around and back-references included), not another.
                let reason = e.to_string().lines().last().unwrap_or_default().to_owned();
                c.error(
                    Code::InvalidSetting,
                    path.key("pattern"),
                    format!("the pattern does not compile: {reason}"),
                );
            }
        }
        duplicate_ids(
            c,
            "option",
            f.options
                .iter()
                .enumerate()
                .map(|(j, o)| (o.value.as_str(), path.key("enum").index(j))),
        );
        if !f.options.is_empty() && !textual {
            c.error(
                Code::InvalidSetting,
                path.key("enum"),
                format!("`enum` applies to text fields, not to `{}`", f.ty),
            );
        }
        if (f.min.is_some() || f.max.is_some()) && !numeric {
            c.error(
                Code::InvalidSetting,
                path.clone(),
                format!("`min` and `max` apply to numbers, not to `{}`", f.ty),
            );
        }
        if let (Some(min), Some(max)) = (f.min, f.max)
            && min > max
        {
            c.error(
                Code::InvalidSetting,
                path.key("min"),
                format!("`min` ({min}) is greater than `max` ({max})"),
            );
        }
        // A length on a number was silently ignored, and on a date it
        // measured the text: either way not the limit the owner meant.
        for (key, limit) in [("min_length", f.min_length), ("max_length", f.max_length)] {
            if limit.is_some() && !textual {
                c.error(
                    Code::InvalidSetting,
                    path.key(key),
                    format!(
                        "`{key}` applies to text fields, not to `{}`{}",
                        f.ty,
                        if numeric {
                            " (limit the value with `min` and `max`)"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        if let (Some(min), Some(max)) = (f.min_length, f.max_length)
            && min > max
        {
            c.error(
                Code::InvalidSetting,
                path.key("min_length"),
                format!("`min_length` ({min}) is greater than `max_length` ({max})"),
            );
        }
        for (key, limit) in [("min", f.min), ("max", f.max)] {
            if let Some(n) = limit
                && !n.is_finite()
            {
                c.error(
                    Code::InvalidSetting,
                    path.key(key),
                    format!("`{key}` must be a finite number, not {n}"),
                );
            }
        }
        // The runtime checks submissions with a JSON Schema built from the
        // fields; one that does not compile would refuse every submission,
        // so it is refused here, where the owner can fix it.
        if c.error_count() == before {
            match crate::runtime::forms::Form::new(std::slice::from_ref(f)) {
                Err(e) => c.error(
                    Code::InvalidSetting,
                    path.clone(),
                    format!("the field cannot be checked at run time: {e}"),
                ),
                // An option the field's own limits refuse is offered and
                // then refused whichever agent picks it.
                Ok(form) => {
                    for (j, o) in f.options.iter().enumerate() {
                        let mut sent = serde_json::Map::new();
                        sent.insert(f.name.clone(), o.value.clone().into());
                        let refused = form.check(&serde_json::Value::Object(sent));
                        if let Some(why) = refused.first() {
                            c.error(
                                Code::InvalidSetting,
                                path.key("enum").index(j),
                                format!(
                                    "option `{}` is refused by the field's own checks ({}): \
                                     offered to agents, it could never be sent",
                                    o.value, why.message
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn nodes(c: &mut Checker<'_>) {
    let def = c.def;
    // A join counts one fork's tokens: named by two, the first fork to
    // fill it would let the flow on while the other's branches still work.
    let mut joined: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    let forks: BTreeSet<&str> = def
        .nodes
        .iter()
        .filter_map(|n| match &n.kind {
            NodeKind::Fork(f) => Some(f.join.as_str()),
            _ => None,
        })
        .collect();
    for (i, n) in def.nodes.iter().enumerate() {
        let base = c.node_path(i);
        match &n.kind {
            NodeKind::Start(s) => {
                if s.channels.is_empty() {
                    c.error(
                        Code::InvalidSetting,
                        base.key("channels"),
                        "a start needs at least one channel",
                    );
                }
                fields(c, &s.data, &base.key("data"));
            }
            NodeKind::UserTask(t) => {
                if t.outcomes.is_empty() {
                    c.error(
                        Code::InvalidSetting,
                        base.key("outcomes"),
                        "a user task needs at least one outcome (a button that completes it)",
                    );
                }
                if t.escalation.is_some() && t.due.is_none() {
                    c.error(
                        Code::InvalidSetting,
                        base.key("escalation"),
                        "`escalation` needs `due`: when is the task overdue?",
                    );
                }
                fields(c, &t.form, &base.key("form"));
            }
            NodeKind::ServiceTask(s) => {
                if let Some(r) = &s.retry {
                    if r.attempts == 0 {
                        c.error(
                            Code::InvalidSetting,
                            base.key("retry").key("attempts"),
                            "`attempts` counts the first try too; it must be at least 1",
                        );
                    }
                    if r.initial_delay.as_std() > r.max_delay.as_std() {
                        c.error(
                            Code::InvalidSetting,
                            base.key("retry").key("initial_delay"),
                            format!(
                                "`initial_delay` ({}) is longer than `max_delay` ({})",
                                r.initial_delay, r.max_delay
                            ),
                        );
                    }
                }
            }
            NodeKind::ExclusiveGate(g) => {
                if g.default.is_none() {
                    c.error(
                        Code::GateWithoutDefault,
                        base.key("id"),
                        format!(
                            "exclusive gate `{}` has no `default`: when no condition holds the \
                             token would be stuck; add `default: <node>`",
                            n.id
                        ),
                    );
                }
                if g.branches.is_empty() {
                    c.error(
                        Code::InvalidSetting,
                        base.key("branches"),
                        "an exclusive gate needs at least one branch with a condition",
                    );
                }
            }
            NodeKind::Fork(f) => {
                if f.branches.len() < 2 {
                    c.error(
                        Code::InvalidSetting,
                        base.key("branches"),
                        "a fork needs at least two branches",
                    );
                }
                let mut started = BTreeSet::new();
                for (j, b) in f.branches.iter().enumerate() {
                    if !started.insert(b.as_str()) {
                        c.error(
                            Code::InvalidSetting,
                            base.key("branches").index(j),
                            format!(
                                "fork `{}` starts `{b}` twice: its step would run twice",
                                n.id
                            ),
                        );
                    }
                }
                if let Some(other) = joined.insert(f.join.as_str(), n.id.as_str()) {
                    c.error(
                        Code::InvalidSetting,
                        base.key("join"),
                        format!(
                            "`{}` is already the join of fork `{other}`: each fork needs a join of its own (the first fork to fill a shared one would let the flow on while the other's branches still work)",
                            f.join
                        ),
                    );
                }
                if let Some(&j) = c.nodes.get(f.join.as_str()) {
                    if !matches!(def.nodes[j].kind, NodeKind::Join(_)) {
                        c.error(
                            Code::ForkWithoutJoin,
                            base.key("join"),
                            format!("`{}` is a {}, not a join", f.join, def.nodes[j].kind.name()),
                        );
                    }
                } else if !c.broken.contains(&f.join) {
                    c.error(
                        Code::ForkWithoutJoin,
                        base.key("join"),
                        format!(
                            "fork `{}` names join `{}`, which does not exist",
                            n.id, f.join
                        ),
                    );
                }
            }
            NodeKind::Join(_) => {
                // A node that did not load may be the fork that names it.
                if !forks.contains(n.id.as_str()) && c.broken.is_empty() {
                    c.error(
                        Code::JoinWithoutFork,
                        base.key("id"),
                        format!("no fork names join `{}` in its `join` field", n.id),
                    );
                }
            }
            NodeKind::TimerWait(t) => {
                if t.after.is_some() == t.at.is_some() {
                    c.error(
                        Code::InvalidSetting,
                        base.key("id"),
                        "a timer wait needs exactly one of `after` (a duration) or `at` (a moment)",
                    );
                }
            }
            NodeKind::Call(call) => {
                if !call.wait && !call.output.is_empty() {
                    c.error(
                        Code::InvalidSetting,
                        base.key("output"),
                        "`output` needs `wait: true`: a call that goes on at once has no output",
                    );
                }
            }
            NodeKind::End(e) => {
                if e.outcome.trim().is_empty() && !c.broken.contains(&n.id) {
                    c.error(
                        Code::InvalidSetting,
                        base.key("outcome"),
                        "an end needs an outcome",
                    );
                }
            }
            NodeKind::MessageWait(_) => {}
        }
    }
}

fn services(c: &mut Checker<'_>) {
    let def = c.def;
    let catalog = c.ctx.catalog;
    for (i, n) in def.nodes.iter().enumerate() {
        let NodeKind::ServiceTask(s) = &n.kind else {
            continue;
        };
        let base = c.node_path(i);
        let Some(connector) = catalog.connector(&s.connector) else {
            let names: Vec<&str> = catalog.connectors().map(|c| c.name.as_str()).collect();
            let mut msg = format!("there is no connector `{}`", s.connector);
            if let Some(close) = did_you_mean(&s.connector, names.iter().copied()) {
                msg.push_str(&format!("; did you mean `{close}`?"));
            }
            msg.push_str(&format!("; known connectors: {}", list(&names)));
            c.error(Code::UnknownConnector, base.key("connector"), msg);
            continue;
        };
        let Some(op) = connector.operation(&s.operation) else {
            let names: Vec<&str> = connector
                .operations
                .iter()
                .map(|o| o.name.as_str())
                .collect();
            let mut msg = format!(
                "connector `{}` has no operation `{}`",
                connector.name, s.operation
            );
            if let Some(close) = did_you_mean(&s.operation, names.iter().copied()) {
                msg.push_str(&format!("; did you mean `{close}`?"));
            }
            msg.push_str(&format!("; it has {}", list(&names)));
            c.error(Code::UnknownOperation, base.key("operation"), msg);
            continue;
        };
        for key in s.input.keys() {
            if !op.inputs.iter().any(|p| &p.name == key) {
                let names: Vec<&str> = op.inputs.iter().map(|p| p.name.as_str()).collect();
                c.error(
                    Code::UnknownInput,
                    base.key("input").key(key),
                    format!(
                        "`{}.{}` takes no input `{key}`; it takes {}",
                        connector.name,
                        op.name,
                        list(&names)
                    ),
                );
            }
        }
        for (key, expr) in &s.input {
            let Some(p) = op.inputs.iter().find(|p| &p.name == key) else {
                continue;
            };
            if let Some(given) = super::variables::static_type(c, expr, None)
                && !super::variables::fits_statically(given, p.ty)
            {
                c.error(
                    Code::TypeMismatch,
                    base.key("input").key(key),
                    format!(
                        "`{}` is `{given}` but `{}.{}` takes `{key}` as `{}`",
                        expr.source().trim(),
                        connector.name,
                        op.name,
                        p.ty
                    ),
                );
            }
        }
        for p in op.inputs.iter().filter(|p| p.required) {
            if !s.input.contains_key(&p.name) {
                c.error(
                    Code::MissingInput,
                    base.key("operation"),
                    format!(
                        "`{}.{}` needs input `{}` ({}); map it under `input`",
                        connector.name, op.name, p.name, p.description
                    ),
                );
            }
        }
        duplicate_ids(
            c,
            "the route of business error",
            s.errors
                .iter()
                .enumerate()
                .map(|(j, r)| (r.error.as_str(), base.key("errors").index(j).key("error"))),
        );
        for (j, route) in s.errors.iter().enumerate() {
            if !op.errors.iter().any(|e| e.name == route.error) {
                let names: Vec<&str> = op.errors.iter().map(|e| e.name.as_str()).collect();
                c.error(
                    Code::UnknownBusinessError,
                    base.key("errors").index(j).key("error"),
                    format!(
                        "`{}.{}` has no business error `{}`; it declares {}",
                        connector.name,
                        op.name,
                        route.error,
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            list(&names)
                        }
                    ),
                );
            }
        }
    }
}

fn calls(c: &mut Checker<'_>) {
    let def = c.def;
    let procedures = c.ctx.procedures;
    for (i, n) in def.nodes.iter().enumerate() {
        let NodeKind::Call(call) = &n.kind else {
            continue;
        };
        let base = c.node_path(i);
        let Some(target) = procedures.get(&call.procedure) else {
            let mut msg = format!("there is no procedure `{}`", call.procedure);
            if let Some(close) =
                did_you_mean(&call.procedure, procedures.keys().map(String::as_str))
            {
                msg.push_str(&format!("; did you mean `{close}`?"));
            }
            msg.push_str(&format!("; known procedures: {}", list(procedures.keys())));
            c.error(Code::UnknownProcedure, base.key("procedure"), msg);
            continue;
        };
        if !target.complete {
            c.error(
                Code::UnknownProcedure,
                base.key("procedure"),
                format!(
                    "`{}` has problems of its own (its start or variables could not be read): \
                     validate it and fix them; then this call is checked against it",
                    call.procedure
                ),
            );
        }
        links_of_call(c, &base, &call.procedure);
        if !target.complete {
            continue;
        }
        if !target.callable {
            // Checked against the called procedure's start channels.
            c.error(
                Code::UnknownProcedure,
                base.key("procedure"),
                format!(
                    "`{}` cannot be called: its start does not list the `procedure` channel",
                    call.procedure
                ),
            );
        }
        if let Some(cycle) = call_cycle(procedures, &def.code, &call.procedure) {
            c.warn(
                Code::CallCycle,
                base.key("procedure"),
                format!(
                    "calling `{}` closes a cycle of calls: {}; every round starts another \
                     instance, so a decision on the way must end it (one command starts at \
                     most {} instances, then the call stops at an incident)",
                    call.procedure,
                    cycle.join(" → "),
                    crate::runtime::commands::MAX_STARTS_PER_COMMAND
                ),
            );
        }
        for key in call.input.keys() {
            if !target.start_fields.iter().any(|(f, _)| f == key) {
                let names: Vec<&str> = target
                    .start_fields
                    .iter()
                    .map(|(f, _)| f.as_str())
                    .collect();
                c.error(
                    Code::UnknownInput,
                    base.key("input").key(key),
                    format!(
                        "the start of `{}` takes no field `{key}`; it takes {}",
                        call.procedure,
                        list(&names)
                    ),
                );
            }
        }
        for (key, expr) in &call.input {
            if let Some(wanted) = target.start_types.get(key)
                && let Some(given) = super::variables::static_type(c, expr, None)
                && !super::variables::fits_statically(given, *wanted)
            {
                c.error(
                    Code::TypeMismatch,
                    base.key("input").key(key),
                    format!(
                        "`{}` is `{given}` but the start of `{}` takes `{key}` as `{wanted}`",
                        expr.source().trim(),
                        call.procedure
                    ),
                );
            }
        }
        for (field, required) in &target.start_fields {
            if *required && !call.input.contains_key(field) {
                c.error(
                    Code::MissingInput,
                    base.key("procedure"),
                    format!(
                        "the start of `{}` requires `{field}`; map it under `input`",
                        call.procedure
                    ),
                );
            }
        }
    }
}

/// A call's procedure must be listed under `links.exit`.
fn links_of_call(c: &mut Checker<'_>, base: &YamlPath, procedure: &str) {
    let def = c.def;
    let linked = def.links.exit.iter().any(|l| l.code == procedure);
    let before = def.links.entry.iter().any(|l| l.code == procedure);
    // With a broken `links` section the procedure may be the broken entry.
    if !linked && c.parsed.section_complete("links") {
        let message = if before {
            format!(
                "`{procedure}` is listed under `links.entry`, the procedures that lead to this \
                 one; a call starts one that follows it: list it under `exit`"
            )
        } else {
            format!("`{procedure}` is called but not listed under `links` (exit)")
        };
        c.error(Code::UnknownProcedure, base.key("procedure"), message);
    }
}

/// The shortest cycle of calls through `caller`'s call to `callee`, as the
/// codes in order from `caller` back to it (`A → B → A`); `None` when the
/// procedures `callee` leads to never call `caller`.
fn call_cycle<'a>(
    procedures: &'a BTreeMap<String, ProcedureInterface>,
    caller: &'a str,
    callee: &'a str,
) -> Option<Vec<String>> {
    if callee == caller {
        return Some(vec![caller.to_owned(), caller.to_owned()]);
    }
    // Breadth first from the callee; each code keeps the one it was reached from.
    let mut came_from: BTreeMap<&'a str, &'a str> = BTreeMap::from([(callee, caller)]);
    let mut queue = std::collections::VecDeque::from([callee]);
    while let Some(code) = queue.pop_front() {
        for next in procedures.get(code).into_iter().flat_map(|p| &p.calls) {
            if next == caller {
                let mut path = vec![caller.to_owned()];
                let mut at = code;
                loop {
                    path.push(at.to_owned());
                    if at == callee {
                        break;
                    }
                    at = came_from[at];
                }
                path.push(caller.to_owned());
                path.reverse();
                return Some(path);
            }
            if !came_from.contains_key(next.as_str()) {
                came_from.insert(next, code);
                queue.push_back(next);
            }
        }
    }
    None
}

fn indicators(c: &mut Checker<'_>) {
    let def = c.def;
    if !c.parsed.section_complete("nodes") {
        return; // the end that is named may be in a node that failed to load
    }
    let outcomes: BTreeSet<&str> = def
        .nodes
        .iter()
        .filter_map(|n| match &n.kind {
            NodeKind::End(e) => Some(e.outcome.as_str()),
            _ => None,
        })
        .collect();
    for (i, ind) in def.indicators.iter().enumerate() {
        let base = c.parsed.item_path("indicators", i);
        for (part, population) in [
            ("numerator", &ind.numerator),
            ("denominator", &ind.denominator),
        ] {
            for (j, end) in population.ends.iter().enumerate() {
                if !outcomes.contains(end.as_str()) {
                    let mut msg = format!("no end node has outcome `{end}`");
                    if let Some(close) = did_you_mean(end, outcomes.iter().copied()) {
                        msg.push_str(&format!("; did you mean `{close}`?"));
                    }
                    msg.push_str(&format!("; the ends are {}", list(&outcomes)));
                    c.error(Code::UnknownEnd, base.key(part).key("ends").index(j), msg);
                }
            }
        }
        // `.nan` compares false with everything: every verdict would be
        // "below" whatever the value.
        if !(ind.scale > 0.0 && ind.scale.is_finite()) {
            c.error(
                Code::InvalidSetting,
                base.key("scale"),
                "`scale` must be a positive number",
            );
        }
        if !ind.verdict.threshold.is_finite() {
            c.error(
                Code::InvalidSetting,
                base.key("verdict").key("threshold"),
                "`threshold` must be a number (not `.nan` or `.inf`)",
            );
        }
    }
}
