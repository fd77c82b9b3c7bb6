//! CEL expressions: every condition and mapping in a definition.
//!
//! An expression is compiled once, when its definition is loaded. A compile
//! error is kept (not raised) so that validation can report every broken
//! expression of a file at once, each at its own line and column.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr as Ast, IdedExpr, LiteralValue};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an expression did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {line}:{column} of the expression)")]
pub struct CompileError {
    /// What the CEL parser said.
    pub message: String,
    /// Line inside the expression, from 1.
    pub line: u32,
    /// Column inside the expression, from 1.
    pub column: u32,
}

/// Operators and field selections one expression may hold. CEL's parser
/// limits nesting by parentheses, not a chain (`1+1+…`, `a.b.b…`, `a in b
/// in …`): its tree nests one level per operator of a chain, and parsing,
/// checking, evaluating and dropping it recurse once per level. On a 2 MB
/// thread stack (a server's) in a debug build, evaluating 1,500 compiled
/// and ran and 2,100 overflowed — aborting `tramite validate`, or a server
/// on a deploy — where no real condition or mapping has twenty.
pub const MAX_OPERATORS: usize = 1_000;

/// Bytes one expression may hold: a bound on any chain whatever the
/// operator count makes of it (two bytes a level at least).
pub const MAX_EXPRESSION_BYTES: usize = 4_096;

/// The operators of `source` as CEL reads it: each operator character
/// (`==` counts two: a bound, not a parse) and each word `in`, outside
/// string literals (`'…'`, `"…"`, triple-quoted, raw `r'…'` without
/// escapes) and `//` comments.
fn operators(source: &str) -> usize {
    let chars: Vec<char> = source.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut n = 0;
    let mut i = 0;
    while let Some(c) = at(i) {
        match c {
            '\'' | '"' => {
                let raw = i > 0 && matches!(chars[i - 1], 'r' | 'R');
                let triple = at(i + 1) == Some(c) && at(i + 2) == Some(c);
                let quote = if triple { 3 } else { 1 };
                i += quote;
                while let Some(d) = at(i) {
                    if d == '\\' && !raw {
                        i += 2;
                    } else if d == c && (!triple || (at(i + 1) == Some(c) && at(i + 2) == Some(c)))
                    {
                        i += quote;
                        break;
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            '/' if at(i + 1) == Some('/') => {
                while at(i).is_some_and(|d| d != '\n') {
                    i += 1;
                }
                continue;
            }
            '+' | '-' | '*' | '/' | '%' | '.' | '[' | '<' | '>' | '=' | '!' | '&' | '|' | '?' => {
                n += 1;
            }
            c if c.is_alphanumeric() || c == '_' => {
                let word = i;
                while at(i).is_some_and(|d| d.is_alphanumeric() || d == '_') {
                    i += 1;
                }
                if chars[word..i] == ['i', 'n'] {
                    n += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    n
}

/// A variable an expression reads: `naf.debt` reads root `naf`, field `debt`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VarRef {
    /// The identifier the expression starts from.
    pub root: String,
    /// The first field selected from it, when there is one.
    pub field: Option<String>,
}

/// What an expression is, when it is simple enough to be read off the
/// instance's data without running CEL.
///
/// Most mappings of a definition are a variable or a field of a result
/// (`ci`, `result.has_impediment`, `instance.channel`) or a constant
/// (`'cliente_desiste'`); running them through CEL converted every value
/// read to CEL's types and back, 7 % of the writer's instructions in the P06
/// benchmark. Evaluation reads these directly and falls back to CEL
/// whenever the data is not there, so errors stay CEL's own.
#[derive(Debug, Clone, PartialEq)]
pub enum Form {
    /// A variable and the fields selected from it, outermost last.
    Path {
        /// The identifier the path starts from.
        root: String,
        /// The fields selected, in order.
        fields: Vec<String>,
    },
    /// A constant: a string, an integer, a boolean or null.
    Constant(serde_json::Value),
    /// Anything else, or an expression that did not compile: CEL runs it.
    General,
}

/// A compiled CEL expression together with its source.
#[derive(Clone)]
pub struct Expr {
    source: String,
    compiled: Result<Arc<cel::Program>, CompileError>,
    reads: Vec<VarRef>,
    form: Form,
}

impl Expr {
    /// Compiles `source`; a compile error is kept inside and reported by
    /// [`Expr::program`] and by validation.
    pub fn compile(source: &str) -> Expr {
        let chained = operators(source);
        let too_big = if source.len() > MAX_EXPRESSION_BYTES {
            Some(format!(
                "the expression is {} bytes long; at most {MAX_EXPRESSION_BYTES} are allowed \
                 (compute it in steps, in variables)",
                source.len()
            ))
        } else if chained > MAX_OPERATORS {
            Some(format!(
                "the expression has {chained} operators and field selections; at most \
                 {MAX_OPERATORS} are allowed (compute it in steps, in variables)"
            ))
        } else {
            None
        };
        if let Some(message) = too_big {
            return Expr {
                source: source.to_owned(),
                compiled: Err(CompileError {
                    message,
                    line: 1,
                    column: 1,
                }),
                reads: Vec::new(),
                form: Form::General,
            };
        }
        match cel::Program::compile(source) {
            Ok(program) => {
                let mut reads = BTreeSet::new();
                free_variables(program.expression(), &mut Vec::new(), &mut reads);
                Expr {
                    source: source.to_owned(),
                    form: form(program.expression()),
                    compiled: Ok(Arc::new(program)),
                    reads: reads.into_iter().collect(),
                }
            }
            Err(errors) => {
                let first = errors.errors.first();
                Expr {
                    source: source.to_owned(),
                    compiled: Err(CompileError {
                        message: first.map_or_else(
                            || "the expression does not compile".to_owned(),
                            |e| e.msg.clone(),
                        ),
                        line: first.map_or(1, |e| e.pos.0.max(1) as u32),
                        column: first.map_or(1, |e| e.pos.1.max(0) as u32 + 1),
                    }),
                    reads: Vec::new(),
                    form: Form::General,
                }
            }
        }
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The compiled program, or why it did not compile.
    pub fn program(&self) -> Result<&cel::Program, &CompileError> {
        self.compiled.as_deref()
    }

    /// Free variables the expression reads (names bound by `all`, `exists`,
    /// `map`, `filter` are not free), sorted and without duplicates.
    pub fn reads(&self) -> &[VarRef] {
        &self.reads
    }

    /// Whether the expression is a plain path or a constant.
    pub fn form(&self) -> &Form {
        &self.form
    }

    /// What the expression says about null, read from its syntax tree
    /// (nothing for one that does not compile).
    pub fn null_facts(&self) -> NullFacts {
        let Ok(program) = &self.compiled else {
            return NullFacts::default();
        };
        let root = program.expression();
        let mut walk = NullWalk::default();
        walk.visit(root, true);
        let unsafe_reads = walk.unsafe_reads;
        NullFacts {
            not_null_if_true: not_null_if_true(root),
            null_test: null_test(root).map(str::to_owned),
            null_safe: self
                .reads
                .iter()
                .map(|r| r.root.clone())
                .filter(|v| !unsafe_reads.contains(v))
                .collect(),
        }
    }
}

/// What an expression says about null, for the check of variables a path
/// may leave unwritten (which read as null).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NullFacts {
    /// Variables that are not null whenever the expression is true: its
    /// top-level `&&` terms `x != null` (or `null != x`).
    pub not_null_if_true: Vec<String>,
    /// The variable the whole expression tests for null (`x == null`), so
    /// that it is not null wherever the expression was false.
    pub null_test: Option<String>,
    /// Variables whose every read is safe on null: compared with a literal
    /// (`x == 'otro'`, false on null; not `x != ''`, true on null) or
    /// guarded (`x != null ? x : 0`,
    /// `x != null && x > 3`, `x == null || x > 3`).
    pub null_safe: BTreeSet<String>,
}

/// `x` when `expr` is `x != null` or `null != x`.
fn not_null_term(expr: &IdedExpr) -> Option<&str> {
    compared_with_null(expr, "_!=_")
}

/// `x` when `expr` is `x == null` or `null == x`.
fn null_test(expr: &IdedExpr) -> Option<&str> {
    compared_with_null(expr, "_==_")
}

fn compared_with_null<'a>(expr: &'a IdedExpr, op: &str) -> Option<&'a str> {
    let Ast::Call(call) = &expr.expr else {
        return None;
    };
    if call.func_name != op || call.target.is_some() {
        return None;
    }
    match call.args.as_slice() {
        [a, b] => match (&a.expr, &b.expr) {
            (Ast::Ident(v), Ast::Literal(LiteralValue::Null))
            | (Ast::Literal(LiteralValue::Null), Ast::Ident(v)) => Some(v.as_str()),
            _ => None,
        },
        _ => None,
    }
}

/// The variables the top-level `&&` terms of `expr` say are not null.
fn not_null_if_true(expr: &IdedExpr) -> Vec<String> {
    match &expr.expr {
        Ast::Call(call) if call.func_name == "_&&_" && call.target.is_none() => {
            call.args.iter().flat_map(not_null_if_true).collect()
        }
        _ => not_null_term(expr).map(str::to_owned).into_iter().collect(),
    }
}

/// Walks an expression for the reads a null would break ([`Expr::null_facts`]).
#[derive(Default)]
struct NullWalk {
    /// Variables a guard around the part being walked has found not null,
    /// and names a comprehension binds (which are no variables).
    known: Vec<String>,
    /// Variables read where a null would fail or mislead.
    unsafe_reads: BTreeSet<String>,
}

impl NullWalk {
    /// Walks `expr` with `more` known.
    fn under(&mut self, expr: &IdedExpr, more: Vec<String>, condition: bool) {
        let before = self.known.len();
        self.known.extend(more);
        self.visit(expr, condition);
        self.known.truncate(before);
    }

    /// `condition`: whether `expr`'s truth is what is used (the whole
    /// expression, a side of `&&` or `||`, a ternary's test). There
    /// `x == 'otro'` is false on null, as meant; under a `!` or compared
    /// again it is not (`!(x == 'otro')` is true on null).
    fn visit(&mut self, expr: &IdedExpr, condition: bool) {
        match &expr.expr {
            Ast::Unspecified | Ast::Literal(_) => {}
            Ast::Ident(name) => {
                if !self.known.contains(name) {
                    self.unsafe_reads.insert(name.clone());
                }
            }
            Ast::Select(select) => self.visit(&select.operand, false),
            Ast::Call(call) => {
                let args = call.args.as_slice();
                // `x != ''` is true on null, which is seldom what its
                // author meant; `x != null` is the test itself.
                let literal = |e: &IdedExpr| matches!(e.expr, Ast::Literal(_));
                let null = |e: &IdedExpr| matches!(e.expr, Ast::Literal(LiteralValue::Null));
                let ident = |e: &IdedExpr| matches!(e.expr, Ast::Ident(_));
                match (call.func_name.as_str(), args, &call.target) {
                    ("_==_", [a, b], None)
                        if (null(a) || null(b) || condition)
                            && ((ident(a) && literal(b)) || (literal(a) && ident(b))) => {}
                    ("_!=_", [a, b], None) if (ident(a) && null(b)) || (null(a) && ident(b)) => {}
                    ("_&&_", [l, r], None) => {
                        self.visit(l, condition);
                        self.under(r, not_null_if_true(l), condition);
                    }
                    ("_||_", [l, r], None) => {
                        self.visit(l, condition);
                        let tested = null_test(l).map(str::to_owned).into_iter().collect();
                        self.under(r, tested, condition);
                    }
                    ("_?_:_", [c, t, f], None) => {
                        self.visit(c, true);
                        self.under(t, not_null_if_true(c), false);
                        let tested = null_test(c).map(str::to_owned).into_iter().collect();
                        self.under(f, tested, false);
                    }
                    _ => {
                        if let Some(target) = &call.target {
                            self.visit(target, false);
                        }
                        for arg in args {
                            self.visit(arg, false);
                        }
                    }
                }
            }
            Ast::List(list) => {
                for element in &list.elements {
                    self.visit(element, false);
                }
            }
            Ast::Map(map) => self.entries(&map.entries),
            Ast::Struct(s) => self.entries(&s.entries),
            Ast::Comprehension(c) => {
                self.visit(&c.iter_range, false);
                self.visit(&c.accu_init, false);
                let mut bound = vec![c.iter_var.clone(), c.accu_var.clone()];
                bound.extend(c.iter_var2.clone());
                self.under(&c.loop_cond, bound.clone(), false);
                self.under(&c.loop_step, bound.clone(), false);
                self.under(&c.result, bound, false);
            }
        }
    }

    fn entries(&mut self, entries: &[cel::common::ast::IdedEntryExpr]) {
        for entry in entries {
            match &entry.expr {
                EntryExpr::StructField(field) => self.visit(&field.value, false),
                EntryExpr::MapEntry(e) => {
                    self.visit(&e.key, false);
                    self.visit(&e.value, false);
                }
            }
        }
    }
}

/// The [`Form`] of a compiled expression.
fn form(expr: &IdedExpr) -> Form {
    match &expr.expr {
        Ast::Literal(literal) => match literal {
            LiteralValue::Boolean(b) => Form::Constant((*b.inner()).into()),
            LiteralValue::Int(i) => Form::Constant((*i.inner()).into()),
            LiteralValue::String(s) => Form::Constant(s.inner().into()),
            LiteralValue::Null => Form::Constant(serde_json::Value::Null),
            // Bytes are base64 in JSON, doubles may not be finite: CEL's
            // own conversion decides.
            _ => Form::General,
        },
        _ => {
            let mut fields = Vec::new();
            let mut at = expr;
            loop {
                match &at.expr {
                    // `has(a.b)` is a select that tests: not a read.
                    Ast::Select(select) if !select.test => {
                        fields.push(select.field.clone());
                        at = &select.operand;
                    }
                    Ast::Ident(root) if !root.starts_with('@') => {
                        fields.reverse();
                        return Form::Path {
                            root: root.clone(),
                            fields,
                        };
                    }
                    _ => return Form::General,
                }
            }
        }
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Expr {
    /// The functions the expression calls that `declared` does not know, by
    /// name. CEL's parser takes any name as a call (`lenght(x)`,
    /// `motivos.lowerAscii()`): without this, each fails only when it runs,
    /// at an incident. Operators are left out; a call on a qualified name
    /// (`optional.of(x)`) counts as known if either name is.
    pub fn undeclared_functions(&self, declared: impl Fn(&str) -> bool) -> BTreeSet<String> {
        self.subexpressions()
            .into_iter()
            .filter_map(|e| match &e.expr {
                Ast::Call(call) => Some(call),
                _ => None,
            })
            .filter(|call| {
                call.func_name
                    .starts_with(|c: char| c.is_ascii_alphabetic())
                    && !declared(&call.func_name)
                    && !call
                        .target
                        .as_deref()
                        .and_then(qualified_name)
                        .is_some_and(|q| declared(&format!("{q}.{}", call.func_name)))
            })
            .map(|call| call.func_name.clone())
            .collect()
    }

    /// The fields the expression tests for presence with `has(root.field)`.
    pub fn presence_tests(&self) -> Vec<VarRef> {
        self.subexpressions()
            .into_iter()
            .filter_map(|e| match &e.expr {
                Ast::Select(s) if s.test => match &s.operand.expr {
                    Ast::Ident(root) => Some(VarRef {
                        root: root.clone(),
                        field: Some(s.field.clone()),
                    }),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Every expression inside the compiled one, itself included (none for
    /// one that does not compile).
    fn subexpressions(&self) -> Vec<&IdedExpr> {
        let Ok(program) = &self.compiled else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut stack = vec![program.expression()];
        while let Some(e) = stack.pop() {
            stack.extend(children(e));
            out.push(e);
        }
        out
    }
}

/// `a.b.c` for an expression that spells a name, else `None`.
fn qualified_name(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Ast::Ident(name) => Some(name.clone()),
        Ast::Select(s) if !s.test => qualified_name(&s.operand).map(|q| format!("{q}.{}", s.field)),
        _ => None,
    }
}

/// The keys and values of a map's or a struct's entries.
fn entry_exprs(entries: &[cel::common::ast::IdedEntryExpr]) -> Vec<&IdedExpr> {
    entries
        .iter()
        .flat_map(|entry| match &entry.expr {
            EntryExpr::StructField(field) => vec![&field.value],
            EntryExpr::MapEntry(e) => vec![&e.key, &e.value],
        })
        .collect()
}

/// The expressions directly inside `expr`.
fn children(expr: &IdedExpr) -> Vec<&IdedExpr> {
    match &expr.expr {
        Ast::Unspecified | Ast::Literal(_) | Ast::Ident(_) => Vec::new(),
        Ast::Select(s) => vec![&s.operand],
        Ast::Call(c) => c.target.as_deref().into_iter().chain(&c.args).collect(),
        Ast::List(list) => list.elements.iter().collect(),
        Ast::Map(map) => entry_exprs(&map.entries),
        Ast::Struct(s) => entry_exprs(&s.entries),
        Ast::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
    }
}

fn free_variables(expr: &IdedExpr, bound: &mut Vec<String>, out: &mut BTreeSet<VarRef>) {
    match &expr.expr {
        Ast::Unspecified | Ast::Literal(_) => {}
        Ast::Ident(name) => {
            if !name.starts_with('@') && !bound.contains(name) {
                out.insert(VarRef {
                    root: name.clone(),
                    field: None,
                });
            }
        }
        Ast::Select(select) => {
            if let Ast::Ident(name) = &select.operand.expr
                && !name.starts_with('@')
                && !bound.contains(name)
            {
                out.insert(VarRef {
                    root: name.clone(),
                    field: Some(select.field.clone()),
                });
            } else {
                free_variables(&select.operand, bound, out);
            }
        }
        Ast::Call(call) => {
            if let Some(target) = &call.target {
                free_variables(target, bound, out);
            }
            for arg in &call.args {
                free_variables(arg, bound, out);
            }
        }
        Ast::List(list) => {
            for element in &list.elements {
                free_variables(element, bound, out);
            }
        }
        Ast::Map(map) => entries(&map.entries, bound, out),
        Ast::Struct(s) => entries(&s.entries, bound, out),
        Ast::Comprehension(c) => {
            free_variables(&c.iter_range, bound, out);
            free_variables(&c.accu_init, bound, out);
            let before = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            free_variables(&c.loop_cond, bound, out);
            free_variables(&c.loop_step, bound, out);
            free_variables(&c.result, bound, out);
            bound.truncate(before);
        }
    }
}

fn entries(
    entries: &[cel::common::ast::IdedEntryExpr],
    bound: &mut Vec<String>,
    out: &mut BTreeSet<VarRef>,
) {
    for entry in entries {
        match &entry.expr {
            EntryExpr::StructField(field) => free_variables(&field.value, bound, out),
            EntryExpr::MapEntry(e) => {
                free_variables(&e.key, bound, out);
                free_variables(&e.value, bound, out);
            }
        }
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExprVisitor;
        impl serde::de::Visitor<'_> for ExprVisitor {
            type Value = Expr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CEL expression (a string), or a constant")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Expr, E> {
                Ok(Expr::compile(v))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Expr, E> {
                Ok(Expr::compile(if v { "true" } else { "false" }))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Expr, E> {
                Ok(Expr::compile(&v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Expr, E> {
                Ok(Expr::compile(&v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Expr, E> {
                Ok(Expr::compile(&format!("{v:?}")))
            }
        }
        deserializer.deserialize_any(ExprVisitor)
    }
}

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl JsonSchema for Expr {
    fn schema_name() -> Cow<'static, str> {
        "Expression".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A CEL expression (https://cel.dev), e.g. `!naf_impedimento` or `instance.channel == 'ivr'`.",
            "type": ["string", "boolean", "number"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(e: &Expr) -> Vec<(&str, Option<&str>)> {
        e.reads()
            .iter()
            .map(|r| (r.root.as_str(), r.field.as_deref()))
            .collect()
    }

    #[test]
    fn knows_what_an_expression_says_about_null() {
        let facts = |s: &str| Expr::compile(s).null_facts();
        assert_eq!(
            facts("aprobado && telefono != null && null != ci").not_null_if_true,
            ["telefono", "ci"]
        );
        // Negated, alternative or inside a comprehension: nothing known.
        for s in ["!(a && x != null)", "x != null || y", "l.all(e, x != null)"] {
            assert!(facts(s).not_null_if_true.is_empty(), "{s}");
        }
        assert_eq!(facts("x == null").null_test.as_deref(), Some("x"));
        assert_eq!(facts("x == null && y").null_test, None);
        let safe = |s: &str| facts(s).null_safe.into_iter().collect::<Vec<_>>();
        assert_eq!(
            safe("motivo == 'otro' || 3 == cuenta"),
            ["cuenta", "motivo"]
        );
        assert!(safe("nota != ''").is_empty(), "true on null");
        // Negated or compared again, an equality is true on null.
        assert!(safe("!(motivo == 'otro')").is_empty());
        assert!(safe("(motivo == 'otro') == false").is_empty());
        assert_eq!(safe("x == null ? 0 : 1"), ["x"]);
        assert_eq!(safe("(n != null ? n : 0) + 1"), ["n"]);
        assert_eq!(safe("n != null && n > 3"), ["n"]);
        assert_eq!(safe("n == null || n > 3"), ["n"]);
        // Unguarded: a broken guard, a field of another variable, arithmetic.
        assert!(safe("n != null || n > 3").is_empty());
        assert!(safe("cliente.email != null && email.endsWith('x')").is_empty());
        assert!(safe("n + 1 > 3").is_empty());
        assert!(safe("n.size() > 0 && n == 'a'").is_empty());
    }

    /// On a thread of a server's stack size (2 MB): a chain long enough to
    /// overflow it is refused with a message, one at the bound compiles and
    /// runs; operators inside strings do not count.
    #[test]
    fn a_chain_too_long_is_refused_not_a_stack_overflow() {
        let on_small_stack = |source: String| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    let e = Expr::compile(&source);
                    let value = e
                        .program()
                        .map_err(|c| c.message.clone())?
                        .execute(&cel::Context::default())
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(value)
                })
                .unwrap()
                .join()
                .expect("no overflow")
        };
        let chain = |n: usize| vec!["1"; n].join("+");
        let refused = on_small_stack(format!("{} == 1", chain(100_000))).unwrap_err();
        assert!(refused.contains("bytes long"), "{refused}");
        let refused = on_small_stack(format!("{} == 1", chain(1_500))).unwrap_err();
        assert!(refused.contains("at most 1000 are allowed"), "{refused}");
        let refused = on_small_stack(format!("a{} == 1", ".b".repeat(1_500))).unwrap_err();
        assert!(refused.contains("field selections"), "{refused}");
        // 998 `+` and the `==`'s two characters: the bound.
        let n = MAX_OPERATORS - 1;
        assert_eq!(
            on_small_stack(format!("{} == {n}", chain(n))),
            Ok(cel::Value::Bool(true))
        );
        let text = format!("'{}' != ''", "+.".repeat(1_000));
        assert_eq!(on_small_stack(text), Ok(cel::Value::Bool(true)));
        // Read as CEL lexes: `in` chains count, and no string or comment
        // hides a chain.
        let chain = format!("{} == 0", vec!["1"; 1_500].join("+"));
        for hidden in [
            format!(r"r'\' == '' || {chain}"),
            format!("'''it's''' == '' || {chain}"),
            format!("// the client's debt\n{chain}"),
        ] {
            assert!(operators(&hidden) > MAX_OPERATORS, "{}", &hidden[..30]);
        }
        assert_eq!(operators(&format!("a{}", " in a".repeat(1_200))), 1_200);
        assert_eq!(operators(r#"'a+b' + r"c\" + '''d'e''' // +-+"#), 2);
        let refused = on_small_stack(format!("'{}' != ''", "x".repeat(5_000))).unwrap_err();
        assert!(refused.contains("bytes long"), "{refused}");
    }

    #[test]
    fn reads_free_variables_and_first_field() {
        let e = Expr::compile("result.has_capacity && size(zona) > 0 && a.b.c == 1");
        assert!(e.program().is_ok());
        assert_eq!(
            roots(&e),
            vec![
                ("a", Some("b")),
                ("result", Some("has_capacity")),
                ("zona", None)
            ]
        );
    }

    #[test]
    fn paths_and_constants_are_recognised() {
        let path = |root: &str, fields: &[&str]| Form::Path {
            root: root.to_owned(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        };
        assert_eq!(Expr::compile("ci").form(), &path("ci", &[]));
        assert_eq!(
            Expr::compile("result.has_impediment").form(),
            &path("result", &["has_impediment"])
        );
        assert_eq!(Expr::compile(" a.b.c ").form(), &path("a", &["b", "c"]));
        let constant = |v: serde_json::Value| Form::Constant(v);
        assert_eq!(
            Expr::compile("'cliente_desiste'").form(),
            &constant("cliente_desiste".into())
        );
        assert_eq!(Expr::compile("-3").form(), &constant((-3).into()));
        assert_eq!(Expr::compile("true").form(), &constant(true.into()));
        assert_eq!(
            Expr::compile("null").form(),
            &constant(serde_json::Value::Null)
        );
        for general in [
            "has(a.b)",
            "a[0]",
            "a.b[0].c",
            "size(a)",
            "a + 1",
            "1.5",
            "b'x'",
            "3u",
            "[1]",
            "{'a': 1}.a",
            "a &&",
        ] {
            assert_eq!(Expr::compile(general).form(), &Form::General, "{general}");
        }
    }

    #[test]
    fn comprehension_variables_are_bound() {
        let e = Expr::compile("motivos.all(m, m != deuda) && motivos.exists(x, x == 'a')");
        assert_eq!(roots(&e), vec![("deuda", None), ("motivos", None)]);
    }

    #[test]
    fn compile_errors_are_kept_with_position() {
        let e = Expr::compile("a &&");
        let err = e.program().unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.column >= 4, "{err:?}");
        assert!(e.reads().is_empty());
    }
}
