//! Definite assignment: an expression that reads a variable some path from
//! the start reaches without writing it. A declared variable not yet
//! written reads as null, so `intentos < 3` on such a path raises an
//! incident at run time and `nota != ''` is silently true. Reported
//! as a warning, not an error: the path may be one that the gates' conditions
//! never let a token take, which only running would tell.
//!
//! The analysis is the compilers' "must" data flow over the graph. Each edge
//! writes what [`crate::definition::Edge::writes`] says; a node starts with
//! what every edge into it surely wrote (their intersection), except a join,
//! which waits for every branch of its fork and so starts with the union of
//! what each branch surely wrote. It runs only on a definition without
//! errors, whose graph is whole.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::Checker;
use crate::definition::{Edge, Node, NodeKind, Purpose};
use crate::diagnostic::Code;
use crate::expr::{Expr, Form};
use crate::position::YamlPath;

/// A set of variables; `None` is "every variable" (no path seen yet).
type Vars = Option<BTreeSet<String>>;

/// The edges into and out of each node, by index into the flows: looked
/// up once, not found by a scan of every edge at each visit (a chain of
/// 3,000 gates took minutes).
struct Adjacent {
    into: Vec<Vec<usize>>,
    out_of: Vec<Vec<usize>>,
}

impl Adjacent {
    fn of(nodes: usize, flows: &[Flow]) -> Adjacent {
        let mut a = Adjacent {
            into: vec![Vec::new(); nodes],
            out_of: vec![Vec::new(); nodes],
        };
        for (e, f) in flows.iter().enumerate() {
            a.into[f.to].push(e);
            a.out_of[f.from].push(e);
        }
        a
    }
}

/// One edge of the graph, by node index, with what a token surely has
/// written (or found not null) once it takes it.
struct Flow {
    from: usize,
    to: usize,
    writes: BTreeSet<String>,
}

pub(super) fn check(c: &mut Checker<'_>) {
    let def = c.def;
    let Some(start) = def
        .nodes
        .iter()
        .position(|n| matches!(n.kind, NodeKind::Start(_)))
    else {
        return;
    };
    let mut flows = Vec::new();
    for (i, n) in def.nodes.iter().enumerate() {
        for (k, Edge { to, writes, .. }) in n.edges(&YamlPath::root()).into_iter().enumerate() {
            let Some(&to) = c.nodes.get(to) else {
                continue;
            };
            let mut writes: BTreeSet<String> = writes.into_iter().map(str::to_owned).collect();
            if let NodeKind::ExclusiveGate(g) = &n.kind {
                writes.extend(gate_knows(g, k));
            }
            flows.push(Flow {
                from: i,
                to,
                writes,
            });
        }
    }
    let adjacent = Adjacent::of(def.nodes.len(), &flows);
    let groups = join_groups(c, &flows, &adjacent);
    let assigned = solve(start, &flows, &adjacent, &groups);

    let mut found = Vec::new();
    for (i, n) in def.nodes.iter().enumerate() {
        let Some(before) = &assigned[i] else {
            continue; // Unreachable: reported as an error elsewhere.
        };
        for read in reads(c, i, n) {
            let facts = read.expr.null_facts();
            for v in read.expr.reads().iter().map(|r| r.root.as_str()) {
                if c.def.variable(v).is_none()
                    || before.contains(v)
                    || read.also.contains(&v)
                    || facts.null_safe.contains(v)
                    || (read.null_copies && read.copies(v))
                {
                    continue;
                }
                let path = witness(
                    &Paths {
                        def,
                        flows: &flows,
                        adjacent: &adjacent,
                        groups: &groups,
                        assigned: &assigned,
                    },
                    start,
                    i,
                    v,
                );
                found.push((read.path.clone(), message(v, read.expr, &path)));
            }
        }
    }
    for (path, message) in found {
        c.warn(Code::MaybeUnwritten, path, message);
    }
}

fn message(v: &str, expr: &Expr, path: &[&str]) -> String {
    let mut m = format!(
        "`{}` reads `{v}`, which a path from the start leaves unwritten (it would read as null)",
        expr.source().trim()
    );
    if !path.is_empty() {
        m.push_str(&format!(": {}", path.join(" → ")));
    }
    m.push_str(&format!(
        ". Write `{v}` on that path (a required field, a `set`, an `output`), or read it guarded: `{v} != null ? {v} : …`"
    ));
    m
}

/// What a token that leaves gate `g` by edge `k` knows is not null: a
/// branch's own `x != null` terms, and — since a gate takes the first
/// branch that holds — the `x` of every earlier branch that is exactly
/// `x == null` (the default edge comes after all of them).
fn gate_knows(g: &crate::definition::ExclusiveGate, k: usize) -> Vec<String> {
    let own = g
        .branches
        .get(k)
        .map(|b| b.when.null_facts().not_null_if_true)
        .unwrap_or_default();
    let earlier = g
        .branches
        .iter()
        .take(k)
        .filter_map(|b| b.when.null_facts().null_test);
    own.into_iter().chain(earlier).collect()
}

/// An expression of a node, with what it may additionally count as
/// written (an outcome's `set` runs after the form's required fields are
/// stored), and whether copying a null through it is harmless.
struct Read<'a> {
    path: YamlPath,
    expr: &'a Expr,
    also: Vec<&'a str>,
    /// A mapping whose value may be null: a variable copied whole (`zona:
    /// zona`) then copies null, which is not a mistake. Anything computed
    /// from it (`intentos + 1`, `ext.trim()`) fails or misleads.
    null_copies: bool,
}

impl Read<'_> {
    /// Whether the expression only copies `v`, whole.
    fn copies(&self, v: &str) -> bool {
        matches!(self.expr.form(), Form::Path { root, fields } if root == v && fields.is_empty())
    }
}

/// The expressions node `i` evaluates when a token is there. Fields'
/// `default`s are left out (a default that cannot be computed proposes
/// nothing, by design), and so are indicators' conditions: they read
/// finished instances, where an unanswered question is a fact to count.
fn reads<'a>(c: &Checker<'a>, i: usize, node: &'a Node) -> Vec<Read<'a>> {
    // An input the operation (or the called procedure) does not require
    // may be sent empty.
    let optional_input = |k: &str| match &node.kind {
        NodeKind::ServiceTask(s) => c
            .operation(s)
            .is_some_and(|op| op.inputs.iter().any(|p| p.name == k && !p.required)),
        NodeKind::Call(call) => c.ctx.procedures.get(&call.procedure).is_some_and(|p| {
            p.start_fields
                .iter()
                .any(|(f, required)| f == k && !required)
        }),
        _ => false,
    };
    node.expressions(&c.node_path(i))
        .into_iter()
        .filter_map(|e| {
            let key = e.key.unwrap_or_default();
            let (also, null_copies) = match e.purpose {
                Purpose::Default => return None,
                Purpose::OutcomeSet { form, validated } => {
                    let required = form.iter().filter(|f| f.required && validated);
                    (required.map(|f| f.name.as_str()).collect(), true)
                }
                Purpose::Input | Purpose::CallInput => (Vec::new(), optional_input(key)),
                // A variable may hold null.
                Purpose::Output | Purpose::ErrorSet | Purpose::Store | Purpose::CallOutput => {
                    (Vec::new(), true)
                }
                Purpose::Condition | Purpose::Correlation | Purpose::TimerAt => (Vec::new(), false),
            };
            Some(Read {
                path: e.path,
                expr: e.expr,
                also,
                null_copies,
            })
        })
        .collect()
}

/// For each join, the edges into it grouped by the branch of its fork they
/// come from (edge indexes into `flows`). A join named by no fork (or by
/// two, which loading refuses), or an edge into it that no branch reaches,
/// gets no groups: its
/// edges are then intersected like any node's, which can only warn more.
fn join_groups(
    c: &Checker<'_>,
    flows: &[Flow],
    adjacent: &Adjacent,
) -> BTreeMap<usize, Vec<Vec<usize>>> {
    let def = c.def;
    let mut forks: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, n) in def.nodes.iter().enumerate() {
        if let NodeKind::Fork(f) = &n.kind
            && let Some(&join) = c.nodes.get(f.join.as_str())
        {
            forks.entry(join).or_default().push(i);
        }
    }
    let mut out = BTreeMap::new();
    for (join, named_by) in forks {
        let [fork] = named_by[..] else { continue };
        let NodeKind::Fork(f) = &def.nodes[fork].kind else {
            continue;
        };
        let into = &adjacent.into[join];
        let mut groups = Vec::new();
        for branch in &f.branches {
            let Some(&first) = c.nodes.get(branch.as_str()) else {
                continue;
            };
            let group: Vec<usize> = if first == join {
                into.iter()
                    .copied()
                    .filter(|&e| flows[e].from == fork)
                    .collect()
            } else {
                let inside = within(first, join, flows, adjacent);
                into.iter()
                    .copied()
                    .filter(|&e| inside.contains(&flows[e].from))
                    .collect()
            };
            groups.push(group);
        }
        let covered: BTreeSet<usize> = groups.iter().flatten().copied().collect();
        if groups.iter().all(|g| !g.is_empty()) && covered.len() == into.len() {
            out.insert(join, groups);
        }
    }
    out
}

/// The nodes reachable from `first` without passing `join`.
fn within(first: usize, join: usize, flows: &[Flow], adjacent: &Adjacent) -> BTreeSet<usize> {
    let mut seen = BTreeSet::from([first]);
    let mut queue = VecDeque::from([first]);
    while let Some(i) = queue.pop_front() {
        for &e in &adjacent.out_of[i] {
            let to = flows[e].to;
            if to != join && seen.insert(to) {
                queue.push_back(to);
            }
        }
    }
    seen
}

/// What each node surely has written when a token arrives: the fixed point
/// of the data flow, from nothing at the start.
fn solve(
    start: usize,
    flows: &[Flow],
    adjacent: &Adjacent,
    groups: &BTreeMap<usize, Vec<Vec<usize>>>,
) -> Vec<Vars> {
    let nodes = adjacent.into.len();
    let mut at: Vec<Vars> = vec![None; nodes];
    at[start] = Some(BTreeSet::new());
    let out = |at: &[Vars], e: usize| -> Vars {
        let f = &flows[e];
        at[f.from]
            .as_ref()
            .map(|s| s.iter().chain(&f.writes).cloned().collect())
    };
    let meet = |sets: &mut dyn Iterator<Item = Vars>| -> Vars {
        sets.fold(None, |acc, s| match (acc, s) {
            (None, s) | (s, None) => s,
            (Some(a), Some(b)) => Some(a.intersection(&b).cloned().collect()),
        })
    };
    let mut queue: VecDeque<usize> = (0..nodes).collect();
    let mut queued = vec![true; nodes];
    while let Some(i) = queue.pop_front() {
        queued[i] = false;
        if i == start {
            continue;
        }
        let into = adjacent.into[i].iter().copied();
        let new = match groups.get(&i) {
            // A join: each branch's intersection, then their union. A
            // branch no token has reached yet holds back the whole join.
            Some(groups) => groups
                .iter()
                .map(|g| meet(&mut g.iter().map(|&e| out(&at, e))))
                .try_fold(BTreeSet::new(), |mut all, branch| {
                    all.extend(branch?);
                    Some(all)
                }),
            None => meet(&mut into.map(|e| out(&at, e))),
        };
        if new != at[i] {
            at[i] = new;
            for &e in &adjacent.out_of[i] {
                let to = flows[e].to;
                if !queued[to] {
                    queued[to] = true;
                    queue.push_back(to);
                }
            }
        }
    }
    at
}

/// What [`witness`] walks.
struct Paths<'a, 'd> {
    def: &'d crate::definition::Definition,
    flows: &'a [Flow],
    adjacent: &'a Adjacent,
    groups: &'a BTreeMap<usize, Vec<Vec<usize>>>,
    assigned: &'a [Vars],
}

/// A shortest path of node ids from the start to `node` on which no edge
/// writes `v`, to show where the read can come unwritten: walked backwards
/// over edges after which `v` is still unwritten. Into a join, the branch
/// that writes `v` on some of its paths but not on this one goes first: it
/// is where the gap is, more than a branch that never writes `v` at all.
fn witness<'d>(p: &Paths<'_, 'd>, start: usize, node: usize, v: &str) -> Vec<&'d str> {
    let out_has = |e: usize| {
        let f = &p.flows[e];
        f.writes.contains(v) || p.assigned[f.from].as_ref().is_none_or(|s| s.contains(v))
    };
    let mut next: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([node]);
    let mut seen = BTreeSet::from([node]);
    while let Some(i) = queue.pop_front() {
        if i == start {
            let mut path = vec![p.def.nodes[i].id.as_str()];
            let mut at = i;
            while let Some(&n) = next.get(&at) {
                path.push(p.def.nodes[n].id.as_str());
                at = n;
            }
            return path;
        }
        let mut into: Vec<usize> = p.adjacent.into[i]
            .iter()
            .copied()
            .filter(|&e| !out_has(e))
            .collect();
        if let Some(groups) = p.groups.get(&i) {
            let gap = |e: &usize| {
                groups
                    .iter()
                    .any(|g| g.contains(e) && g.iter().any(|&o| out_has(o)))
            };
            into.sort_by_key(|e| !gap(e));
        }
        for e in into {
            let from = p.flows[e].from;
            if seen.insert(from) {
                next.insert(from, i);
                queue.push_back(from);
            }
        }
    }
    Vec::new()
}
