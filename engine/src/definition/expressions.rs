//! The expressions a node holds, with where each is written and what it is
//! for. One walk, beside [`Node::edges`], that every check of expressions
//! shares: a node kind's new expression cannot then be seen by one check
//! (does it compile, does it read what exists) and missed by another (may
//! it read a variable still unwritten).

use super::{Field, Node, NodeKind};
use crate::expr::Expr;
use crate::position::YamlPath;

/// What an expression is for: what it may read besides the instance's
/// variables, and what its key (in a mapping) names.
#[derive(Debug, Clone, Copy)]
pub enum Purpose<'a> {
    /// A start's or form's field `default`, proposed when the form opens.
    Default,
    /// A user task outcome's `set`, run once the submitted form is stored:
    /// `form`'s required fields are written if `validated`.
    OutcomeSet {
        /// The task's form.
        form: &'a [Field],
        /// Whether the outcome checks the form (its required fields).
        validated: bool,
    },
    /// A service task's `input`: the key is the operation's input.
    Input,
    /// A service task's `output`, reading `result`.
    Output,
    /// A business error route's `set`, reading `error`.
    ErrorSet,
    /// An exclusive gate branch's `when`.
    Condition,
    /// A message wait's `correlation` key.
    Correlation,
    /// A message wait's `store`, reading `message`.
    Store,
    /// A timer's `at`.
    TimerAt,
    /// A call's `input`: the key is the called procedure's start field.
    CallInput,
    /// A call's `output`, reading `output` (the child's variables).
    CallOutput,
}

/// One expression of a node.
#[derive(Debug, Clone)]
pub struct NodeExpr<'a> {
    /// Where it is written.
    pub path: YamlPath,
    /// Its key, in a mapping (or the field whose `default` it is).
    pub key: Option<&'a str>,
    /// The expression.
    pub expr: &'a Expr,
    /// What it is for.
    pub purpose: Purpose<'a>,
}

impl NodeExpr<'_> {
    /// The variable it writes: a mapping's key, where the mapping stores
    /// into the instance (`set`, `output`, `store`).
    pub fn writes(&self) -> Option<&str> {
        match self.purpose {
            Purpose::OutcomeSet { .. }
            | Purpose::Output
            | Purpose::ErrorSet
            | Purpose::Store
            | Purpose::CallOutput => self.key,
            Purpose::Default
            | Purpose::Input
            | Purpose::Condition
            | Purpose::Correlation
            | Purpose::TimerAt
            | Purpose::CallInput => None,
        }
    }
}

impl Node {
    /// Every expression of this node, in the order it is written; `base`
    /// is the node's own path.
    pub fn expressions(&self, base: &YamlPath) -> Vec<NodeExpr<'_>> {
        fn mapping<'a>(
            m: &'a super::Mapping,
            base: &YamlPath,
            purpose: Purpose<'a>,
            out: &mut Vec<NodeExpr<'a>>,
        ) {
            for (k, expr) in m {
                out.push(NodeExpr {
                    path: base.key(k),
                    key: Some(k),
                    expr,
                    purpose,
                });
            }
        }
        fn defaults<'a>(fields: &'a [Field], base: &YamlPath, out: &mut Vec<NodeExpr<'a>>) {
            for (j, f) in fields.iter().enumerate() {
                if let Some(expr) = &f.default {
                    out.push(NodeExpr {
                        path: base.index(j).key("default"),
                        key: Some(&f.name),
                        expr,
                        purpose: Purpose::Default,
                    });
                }
            }
        }
        fn single<'a>(path: YamlPath, expr: &'a Expr, purpose: Purpose<'a>) -> NodeExpr<'a> {
            NodeExpr {
                path,
                key: None,
                expr,
                purpose,
            }
        }
        let mut out = Vec::new();
        match &self.kind {
            NodeKind::Start(s) => defaults(&s.data, &base.key("data"), &mut out),
            NodeKind::UserTask(t) => {
                defaults(&t.form, &base.key("form"), &mut out);
                for (j, o) in t.outcomes.iter().enumerate() {
                    let purpose = Purpose::OutcomeSet {
                        form: &t.form,
                        validated: o.validate,
                    };
                    mapping(
                        &o.set,
                        &base.key("outcomes").index(j).key("set"),
                        purpose,
                        &mut out,
                    );
                }
            }
            NodeKind::ServiceTask(s) => {
                mapping(&s.input, &base.key("input"), Purpose::Input, &mut out);
                mapping(&s.output, &base.key("output"), Purpose::Output, &mut out);
                for (j, r) in s.errors.iter().enumerate() {
                    let path = base.key("errors").index(j).key("set");
                    mapping(&r.set, &path, Purpose::ErrorSet, &mut out);
                }
            }
            NodeKind::ExclusiveGate(g) => {
                for (j, b) in g.branches.iter().enumerate() {
                    let path = base.key("branches").index(j).key("when");
                    out.push(single(path, &b.when, Purpose::Condition));
                }
            }
            NodeKind::MessageWait(w) => {
                out.push(single(
                    base.key("correlation"),
                    &w.correlation,
                    Purpose::Correlation,
                ));
                mapping(&w.store, &base.key("store"), Purpose::Store, &mut out);
            }
            NodeKind::TimerWait(t) => {
                if let Some(at) = &t.at {
                    out.push(single(base.key("at"), at, Purpose::TimerAt));
                }
            }
            NodeKind::Call(call) => {
                mapping(
                    &call.input,
                    &base.key("input"),
                    Purpose::CallInput,
                    &mut out,
                );
                mapping(
                    &call.output,
                    &base.key("output"),
                    Purpose::CallOutput,
                    &mut out,
                );
            }
            NodeKind::Fork(_) | NodeKind::Join(_) | NodeKind::End(_) => {}
        }
        out
    }
}
