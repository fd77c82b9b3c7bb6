//! The edges that leave a node, with where each is written and how to label it.

use super::{Definition, Node, NodeKind};
use crate::duration::Duration;
use crate::expr::Expr;
use crate::position::YamlPath;
use crate::text::Text;

/// What an edge means, for diagrams and messages.
#[derive(Debug, Clone, Copy)]
pub enum EdgeLabel<'a> {
    /// The only way on.
    Next,
    /// A user task's outcome button.
    Outcome(&'a Text),
    /// An exclusive gate's condition (and its label, if any).
    Condition(&'a Expr, Option<&'a Text>),
    /// An exclusive gate's default.
    Default(Option<&'a Text>),
    /// A parallel branch.
    Branch,
    /// A routed business error.
    Error(&'a str),
    /// A message wait's timeout.
    Timeout(&'a Duration),
    /// An overdue task's escalation: its due time, and whether it takes
    /// the task away (else a side path runs beside it).
    Overdue {
        /// The task's due time.
        due: Option<&'a Duration>,
        /// Whether the task is withdrawn.
        interrupting: bool,
    },
}

/// An edge from one node to another.
#[derive(Debug, Clone)]
pub struct Edge<'a> {
    /// The target node's id.
    pub to: &'a str,
    /// Where the target is written.
    pub path: YamlPath,
    /// What the edge means.
    pub label: EdgeLabel<'a>,
    /// The variables surely written when a token takes this edge: a
    /// start's and a submitted form's required fields, an outcome's or
    /// error route's `set`, a service task's or call's `output`, a
    /// message's `store`. An optional field may be left out, so it is not
    /// among them.
    pub writes: Vec<&'a str>,
}

impl Node {
    /// Every edge leaving this node; `base` is the node's own path.
    pub fn edges(&self, base: &YamlPath) -> Vec<Edge<'_>> {
        fn edge<'a>(to: &'a str, path: YamlPath, label: EdgeLabel<'a>) -> Edge<'a> {
            Edge {
                to,
                path,
                label,
                writes: Vec::new(),
            }
        }
        fn required(fields: &[super::Field]) -> impl Iterator<Item = &str> {
            fields
                .iter()
                .filter(|f| f.required)
                .map(|f| f.name.as_str())
        }
        fn keys(mapping: &super::Mapping) -> impl Iterator<Item = &str> {
            mapping.keys().map(String::as_str)
        }
        let mut out = Vec::new();
        match &self.kind {
            NodeKind::Start(s) => out.push(Edge {
                writes: required(&s.data).collect(),
                ..edge(&s.next, base.key("next"), EdgeLabel::Next)
            }),
            NodeKind::UserTask(t) => {
                for (i, o) in t.outcomes.iter().enumerate() {
                    let form = required(&t.form).filter(|_| o.validate);
                    out.push(Edge {
                        writes: form.chain(keys(&o.set)).collect(),
                        ..edge(
                            &o.next,
                            base.key("outcomes").index(i).key("next"),
                            EdgeLabel::Outcome(&o.label),
                        )
                    });
                }
                if let Some(e) = &t.escalation {
                    out.push(edge(
                        &e.next,
                        base.key("escalation").key("next"),
                        EdgeLabel::Overdue {
                            due: t.due.as_ref(),
                            interrupting: e.interrupting,
                        },
                    ));
                }
            }
            NodeKind::ServiceTask(s) => {
                out.push(Edge {
                    writes: keys(&s.output).collect(),
                    ..edge(&s.next, base.key("next"), EdgeLabel::Next)
                });
                for (i, r) in s.errors.iter().enumerate() {
                    out.push(Edge {
                        writes: keys(&r.set).collect(),
                        ..edge(
                            &r.next,
                            base.key("errors").index(i).key("next"),
                            EdgeLabel::Error(&r.error),
                        )
                    });
                }
            }
            NodeKind::ExclusiveGate(g) => {
                for (i, b) in g.branches.iter().enumerate() {
                    out.push(edge(
                        &b.next,
                        base.key("branches").index(i).key("next"),
                        EdgeLabel::Condition(&b.when, b.label.as_ref()),
                    ));
                }
                if let Some(d) = &g.default {
                    out.push(edge(
                        d,
                        base.key("default"),
                        EdgeLabel::Default(g.default_label.as_ref()),
                    ));
                }
            }
            NodeKind::Fork(f) => {
                for (i, b) in f.branches.iter().enumerate() {
                    out.push(edge(b, base.key("branches").index(i), EdgeLabel::Branch));
                }
            }
            NodeKind::Join(j) => out.push(edge(&j.next, base.key("next"), EdgeLabel::Next)),
            NodeKind::MessageWait(w) => {
                out.push(Edge {
                    writes: keys(&w.store).collect(),
                    ..edge(&w.next, base.key("next"), EdgeLabel::Next)
                });
                if let Some(t) = &w.timeout {
                    out.push(edge(
                        &t.next,
                        base.key("timeout").key("next"),
                        EdgeLabel::Timeout(&t.after),
                    ));
                }
            }
            NodeKind::TimerWait(t) => out.push(edge(&t.next, base.key("next"), EdgeLabel::Next)),
            NodeKind::Call(c) => out.push(Edge {
                writes: keys(&c.output).collect(),
                ..edge(&c.next, base.key("next"), EdgeLabel::Next)
            }),
            NodeKind::End(_) => {}
        }
        out
    }
}

/// Where an edge leads, by node index, and whether it is a
/// non-interrupting escalation's: its path runs as a side token beside the
/// task it leaves open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Successor {
    /// The index of the node it leads to.
    pub to: usize,
    /// A non-interrupting escalation's edge.
    pub side: bool,
}

impl Definition {
    /// Each node's successors, by index. An id shared by two nodes means
    /// the first of them (as validation reads it, reporting the second); a
    /// `next` naming no node leads nowhere.
    pub fn successors(&self) -> Vec<Vec<Successor>> {
        let mut index = std::collections::HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            index.entry(n.id.as_str()).or_insert(i);
        }
        let root = YamlPath::root();
        self.nodes
            .iter()
            .map(|n| {
                let side = match &n.kind {
                    NodeKind::UserTask(t) => t
                        .escalation
                        .as_ref()
                        .filter(|e| !e.interrupting)
                        .map(|e| e.next.as_str()),
                    _ => None,
                };
                n.edges(&root)
                    .iter()
                    .filter_map(|e| {
                        Some(Successor {
                            to: *index.get(e.to)?,
                            side: side == Some(e.to)
                                && matches!(e.label, EdgeLabel::Overdue { .. }),
                        })
                    })
                    .collect()
            })
            .collect()
    }
}
