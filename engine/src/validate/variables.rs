//! Variables and expressions: every expression compiles, reads only what
//! exists, and reads nothing that no step ever writes.

use std::collections::{BTreeMap, BTreeSet};

use super::{Checker, list};
use crate::definition::{Field, NodeKind, Purpose, VarType};
use crate::diagnostic::{Code, did_you_mean};
use crate::expr::Expr;
use crate::position::YamlPath;

/// Fields of the `instance` every expression can read.
pub const INSTANCE_FIELDS: [&str; 4] = ["id", "business_key", "channel", "started_at"];

/// Fields of the `error` a business error route's `set` can read: the
/// operation's error code and the system's own text.
const ERROR_FIELDS: [&str; 2] = ["code", "message"];

/// CEL's type identifiers.
const CEL_TYPES: [&str; 10] = [
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// What else an expression can read, besides variables and `instance`.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Only variables and `instance`.
    Instance,
    /// A service task's output: `result`, with the operation's outputs if known.
    Result(Option<&'a [crate::catalog::ParamSpec]>),
    /// A business error route: `error`.
    Error,
    /// A message wait's store: `message` (the payload).
    Message,
    /// A call's output: `output`, with the child's variables if known.
    Output(Option<&'a BTreeMap<String, VarType>>),
}

pub(super) fn check(c: &mut Checker<'_>) {
    let written = writes(c);
    let exprs = expressions(c);
    for (path, expr, scope) in exprs {
        reads(c, &written, &path, expr, scope);
    }
    conditions(c);
}

/// A gate's condition whose type is known without running it (a variable
/// read whole, a constant) must be a boolean: `when: zona` stopped every
/// request that reached the gate with "gave … where true or false was
/// expected".
fn conditions(c: &mut Checker<'_>) {
    let def = c.def;
    for (i, n) in def.nodes.iter().enumerate() {
        for e in n.expressions(&c.node_path(i)) {
            if !matches!(e.purpose, Purpose::Condition) {
                continue;
            }
            if let Some(ty) = static_type(c, e.expr, None)
                && ty != VarType::Boolean
            {
                c.error(
                    Code::TypeMismatch,
                    e.path.clone(),
                    format!(
                        "`{}` is `{ty}`, and a condition must be true or false (compare it: \
                         `{0} == …`)",
                        e.expr.source().trim()
                    ),
                );
            }
        }
    }
}

fn declared(c: &mut Checker<'_>, name: &str, path: YamlPath) -> Option<VarType> {
    if let Some(v) = c.def.variable(name) {
        return Some(v.ty);
    }
    // With a broken `variables` section, the variable may be the broken one.
    if !c.parsed.section_complete("variables") {
        return None;
    }
    let names: Vec<&str> = c.def.variables.iter().map(|v| v.name.as_str()).collect();
    let mut msg = format!("`{name}` is not declared under `variables`");
    if let Some(close) = did_you_mean(name, names.iter().copied()) {
        msg.push_str(&format!("; did you mean `{close}`?"));
    }
    c.error(Code::UnknownVariable, path, msg);
    None
}

fn field_writes(
    c: &mut Checker<'_>,
    fields: &[Field],
    base: &YamlPath,
    out: &mut BTreeSet<String>,
) {
    for (i, f) in fields.iter().enumerate() {
        let path = base.index(i).key("name");
        if let Some(ty) = declared(c, &f.name, path) {
            if !f.ty.fits(ty) {
                c.error(
                    Code::TypeMismatch,
                    base.index(i).key("type"),
                    format!(
                        "field `{}` is `{}` but the variable is declared `{ty}`",
                        f.name, f.ty
                    ),
                );
            }
            out.insert(f.name.clone());
        }
    }
}

/// A root (`result`, `output`) and the type of each of its fields.
type TypedSource<'a> = (&'a str, &'a dyn Fn(&str) -> Option<VarType>);

/// A mapping's entry that stores `expr` into variable `key`, written at
/// `path`: the variable must be declared, and where the value is a plain
/// `<source>.<field>` (or a constant, or a variable) with a known type,
/// that type must fit the variable's.
fn mapping_write(
    c: &mut Checker<'_>,
    (key, expr, path): (&str, &Expr, &YamlPath),
    out: &mut BTreeSet<String>,
    source: Option<TypedSource<'_>>,
) {
    let Some(ty) = declared(c, key, path.clone()) else {
        return;
    };
    out.insert(key.to_owned());
    if let Some(given) = static_type(c, expr, source)
        && !fits_statically(given, ty)
    {
        c.error(
            Code::TypeMismatch,
            path.clone(),
            format!(
                "`{}` is `{given}` but `{key}` is declared `{ty}`",
                expr.source().trim()
            ),
        );
    }
}

/// Whether a value known to be `given` may go where `wanted` is declared,
/// as far as can be told without running it: dates are written as text (CEL
/// has no date literal), and a `number` may hold a whole value an `integer`
/// takes; what is refused is what can never fit (text into a boolean, a
/// number into a string).
pub(super) fn fits_statically(given: VarType, wanted: VarType) -> bool {
    use VarType::{Date, Datetime, Integer, Number, String, Text};
    let texty = |t: VarType| matches!(t, String | Text | Date | Datetime);
    given.fits(wanted) || (texty(given) && texty(wanted)) || (given == Number && wanted == Integer)
}

/// The type an expression surely has: a constant's, a declared variable
/// read whole, or a field of a typed source (`result.x`, `output.x`).
/// `None` where only running it would tell (an operation, a field of a
/// variable, null).
pub(super) fn static_type(
    c: &Checker<'_>,
    expr: &crate::expr::Expr,
    source: Option<TypedSource<'_>>,
) -> Option<VarType> {
    use crate::expr::Form;
    match expr.form() {
        Form::Constant(serde_json::Value::String(_)) => Some(VarType::String),
        Form::Constant(serde_json::Value::Bool(_)) => Some(VarType::Boolean),
        Form::Constant(serde_json::Value::Number(n)) => Some(if n.is_i64() || n.is_u64() {
            VarType::Integer
        } else {
            VarType::Number
        }),
        Form::Path { root, fields } if fields.is_empty() => c.def.variable(root).map(|v| v.ty),
        Form::Path { root, fields } => match (source, fields.as_slice()) {
            (Some((name, type_of)), [field]) if name == root => type_of(field),
            _ => None,
        },
        _ => None,
    }
}

/// Every variable some node writes.
fn writes(c: &mut Checker<'_>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let def = c.def;
    for (i, n) in def.nodes.iter().enumerate() {
        let base = c.node_path(i);
        match &n.kind {
            NodeKind::Start(s) => field_writes(c, &s.data, &base.key("data"), &mut out),
            NodeKind::UserTask(t) => field_writes(c, &t.form, &base.key("form"), &mut out),
            _ => {}
        }
        let (outputs, child) = sources(c, &n.kind);
        let result_type = |f: &str| {
            outputs
                .and_then(|o| o.iter().find(|p| p.name == f))
                .map(|p| p.ty)
        };
        let output_type = |f: &str| child.and_then(|vars| vars.get(f).copied());
        for e in n.expressions(&base) {
            let Some(key) = e.writes() else {
                continue;
            };
            let source: Option<TypedSource<'_>> = match e.purpose {
                Purpose::Output => Some(("result", &result_type)),
                Purpose::CallOutput => Some(("output", &output_type)),
                _ => None,
            };
            mapping_write(c, (key, e.expr, &e.path), &mut out, source);
        }
    }
    out
}

/// What a node's expressions read besides variables, where the catalog or
/// the called procedure tells: a service task operation's outputs
/// (`result`), a call's child variables (`output`).
fn sources<'a>(
    c: &Checker<'a>,
    kind: &'a NodeKind,
) -> (
    Option<&'a [crate::catalog::ParamSpec]>,
    Option<&'a BTreeMap<String, VarType>>,
) {
    match kind {
        NodeKind::ServiceTask(s) => (c.operation(s).map(|op| op.outputs.as_slice()), None),
        NodeKind::Call(call) => (
            None,
            c.ctx
                .procedures
                .get(&call.procedure)
                .filter(|p| p.complete)
                .map(|p| &p.variables),
        ),
        _ => (None, None),
    }
}

/// Every expression of the definition, with its path and scope.
fn expressions<'a>(c: &Checker<'a>) -> Vec<(YamlPath, &'a Expr, Scope<'a>)> {
    let def = c.def;
    let mut out = Vec::new();
    for (i, n) in def.nodes.iter().enumerate() {
        let (outputs, child) = sources(c, &n.kind);
        for e in n.expressions(&c.node_path(i)) {
            let scope = match e.purpose {
                Purpose::Output => Scope::Result(outputs),
                Purpose::ErrorSet => Scope::Error,
                Purpose::Store => Scope::Message,
                Purpose::CallOutput => Scope::Output(child),
                Purpose::Default
                | Purpose::OutcomeSet { .. }
                | Purpose::Input
                | Purpose::Condition
                | Purpose::Correlation
                | Purpose::TimerAt
                | Purpose::CallInput => Scope::Instance,
            };
            out.push((e.path, e.expr, scope));
        }
    }
    for (i, ind) in def.indicators.iter().enumerate() {
        let base = c.parsed.item_path("indicators", i);
        for (part, p) in [
            ("numerator", &ind.numerator),
            ("denominator", &ind.denominator),
        ] {
            if let Some(cond) = &p.condition {
                out.push((base.key(part).key("condition"), cond, Scope::Instance));
            }
        }
    }
    out
}

fn reads(
    c: &mut Checker<'_>,
    written: &BTreeSet<String>,
    path: &YamlPath,
    expr: &Expr,
    scope: Scope<'_>,
) {
    if let Err(e) = expr.program() {
        c.error(
            Code::Expression,
            path.clone(),
            format!("`{}` does not compile: {e}", shown(expr.source())),
        );
        return;
    }
    // Every output the catalog lists is in `result`, null when the system
    // left it out: testing its presence is always true.
    if let Scope::Result(Some(outputs)) = scope {
        for test in expr.presence_tests() {
            if let ("result", Some(field)) = (test.root.as_str(), test.field.as_deref())
                && outputs.iter().any(|o| o.name == field)
            {
                c.error(
                    Code::Expression,
                    path.clone(),
                    format!(
                        "`has(result.{field})` is always true: an output the catalog lists is \
                         null when the system leaves it out; test `result.{field} != null`"
                    ),
                );
            }
        }
    }
    for name in expr.undeclared_functions(crate::runtime::eval::declares_function) {
        let mut msg = format!(
            "`{}` calls `{name}`, which is no function an expression can call",
            shown(expr.source())
        );
        // Other languages' names for CEL's, which spelling alone misses.
        let meant = match name.as_str() {
            "len" | "length" | "lenght" | "count" => Some("size"),
            "includes" | "indexOf" => Some("contains"),
            "startswith" | "starts_with" => Some("startsWith"),
            "endswith" | "ends_with" => Some("endsWith"),
            _ => None,
        };
        if let Some(close) = meant.or_else(|| {
            did_you_mean(
                &name,
                crate::runtime::eval::COMMON_FUNCTIONS.iter().copied(),
            )
        }) {
            msg.push_str(&format!("; did you mean `{close}`?"));
        }
        msg.push_str(
            " (CEL's standard functions, without extensions: a list's membership is \
             `x in list`, not `list.contains(x)`)",
        );
        c.error(Code::Expression, path.clone(), msg);
    }
    for r in expr.reads() {
        let field = r.field.as_deref();
        match (r.root.as_str(), scope) {
            ("instance", _) => {
                if let Some(f) = field
                    && !INSTANCE_FIELDS.contains(&f)
                {
                    c.error(
                        Code::UnknownVariable,
                        path.clone(),
                        format!(
                            "`instance` has no field `{f}`; it has {}",
                            list(INSTANCE_FIELDS)
                        ),
                    );
                }
            }
            ("result", Scope::Result(outputs)) => {
                if let (Some(f), Some(outputs)) = (field, outputs)
                    && !outputs.iter().any(|o| o.name == f)
                {
                    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
                    let mut msg = format!("the operation returns no `{f}`");
                    if let Some(close) = did_you_mean(f, names.iter().copied()) {
                        msg.push_str(&format!("; did you mean `result.{close}`?"));
                    }
                    msg.push_str(&format!("; it returns {}", list(&names)));
                    c.error(Code::UnknownOutput, path.clone(), msg);
                }
            }
            ("output", Scope::Output(variables)) => {
                if let (Some(f), Some(vars)) = (field, variables)
                    && !vars.contains_key(f)
                {
                    c.error(
                        Code::UnknownOutput,
                        path.clone(),
                        format!(
                            "the called procedure has no variable `{f}`; it has {}",
                            list(vars.keys())
                        ),
                    );
                }
            }
            ("error", Scope::Error) => {
                if let Some(f) = field
                    && !ERROR_FIELDS.contains(&f)
                {
                    c.error(
                        Code::UnknownOutput,
                        path.clone(),
                        format!(
                            "a business error has no field `{f}`; it has {}",
                            list(ERROR_FIELDS)
                        ),
                    );
                }
            }
            ("message", Scope::Message) => {}
            // CEL's type names (`type(x) == string`), unless a variable is called so.
            (name, _) if CEL_TYPES.contains(&name) && c.def.variable(name).is_none() => {}
            // A root read outside the one place it means something: where
            // it can be read, rather than "declare it" (which is refused:
            // the name is reserved).
            (root @ ("result" | "error" | "message" | "output"), _) => {
                let place = match root {
                    "result" => "a service task's `output`, which maps what the system answered",
                    "error" => "the `set` of a service task's `errors` route",
                    "message" => "a message wait's `store`",
                    _ => "a call's `output`, which maps what the called procedure ended with",
                };
                c.error(
                    Code::UnknownVariable,
                    path.clone(),
                    format!(
                        "`{root}` can be read only in {place}; map what you need there to a \
                         variable, and read that here"
                    ),
                );
            }
            (name, _) => {
                // When some node failed to load, its writes are unknown.
                let complete = c.parsed.section_complete("nodes");
                if declared(c, name, path.clone()).is_some() && complete && !written.contains(name)
                {
                    c.error(
                        Code::NeverWritten,
                        path.clone(),
                        format!(
                            "`{name}` is read here but no step ever writes it (no start field, \
                             form field, output, store or `set` names it)"
                        ),
                    );
                }
            }
        }
    }
}

/// An expression as a message quotes it: its first 80 characters (one
/// refused for its length may be kilobytes long).
fn shown(source: &str) -> std::borrow::Cow<'_, str> {
    match source.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &source[..cut]).into(),
        None => source.into(),
    }
}
