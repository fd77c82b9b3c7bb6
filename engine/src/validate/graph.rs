//! Checks of the whole graph, with petgraph: every node is reachable, an
//! end is reachable from every node, no cycle spins without waiting, and
//! every fork's branches meet at its join.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::unionfind::UnionFind;
use petgraph::visit::{Bfs, EdgeRef, NodeFiltered, Reversed};

use super::{Checker, list};
use crate::definition::{Fork, NodeKind, Successor};
use crate::diagnostic::Code;

/// The definition as a petgraph graph; node weights are indexes into `def.nodes`.
struct Graph {
    graph: DiGraph<usize, ()>,
}

impl Graph {
    fn build(c: &Checker<'_>) -> Graph {
        let mut graph = DiGraph::with_capacity(c.def.nodes.len(), c.def.nodes.len() * 2);
        for i in 0..c.def.nodes.len() {
            graph.add_node(i);
        }
        for (i, n) in c.def.nodes.iter().enumerate() {
            for e in n.edges(&c.node_path(i)) {
                if let Some(&j) = c.nodes.get(e.to) {
                    graph.update_edge(NodeIndex::new(i), NodeIndex::new(j), ());
                }
            }
        }
        Graph { graph }
    }
}

pub(super) fn check(c: &mut Checker<'_>) {
    let g = Graph::build(c);
    let Some(start) = c
        .def
        .nodes
        .iter()
        .position(|n| matches!(n.kind, NodeKind::Start(_)))
    else {
        return;
    };
    spin_cycles(c, &g);
    // A misspelt `next` cuts an edge: what it would have reached, and what
    // could only end through it, would be reported for the same mistake.
    let cut = c.diagnostics.iter().any(|d| {
        d.code == Code::UnknownNode
            && d.path.segments().first() == Some(&crate::position::Segment::Key("nodes".into()))
    });
    if cut {
        return;
    }
    let reachable = reach(&g, start);
    unreachable(c, &reachable);
    trapped(c, &g, &reachable);
    forks(c);
    side_paths(c, start);
    side_path_ends(c, start);
}

/// A non-interrupting escalation's path runs as a side token beside the
/// task it leaves open. Where it meets the main flow, every step from the
/// meeting point on would run once for each token — Smartflex asked to
/// register one sale twice — so the two may meet only at an `end` or a
/// `join`. Reports each escalation with every step of the main flow its
/// path reaches.
/// The nodes reachable from `from` along `successors`, leaving out side
/// edges if `skip_side`; `stop_at`: nodes reached but not passed (a side
/// token is absorbed at the join of the fork it runs in).
fn walk(
    successors: &[Vec<Successor>],
    from: usize,
    skip_side: bool,
    stop_at: &dyn Fn(usize) -> bool,
) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([from]);
    while let Some(i) = queue.pop_front() {
        if seen.insert(i) && !stop_at(i) {
            queue.extend(
                successors[i]
                    .iter()
                    .filter(|e| !(skip_side && e.side))
                    .map(|e| e.to),
            );
        }
    }
    seen
}

/// A request's outcome is its main path's end: an end only a
/// non-interrupting escalation's side path reaches ends that path alone,
/// so an indicator counting it would never count anything. (An end no
/// path reaches is `unreachable`'s to report.)
fn side_path_ends(c: &mut Checker<'_>, start: usize) {
    let def = c.def;
    let successors = def.successors();
    let ends = |seen: BTreeSet<usize>| -> BTreeSet<&str> {
        seen.into_iter()
            .filter_map(|i| match &def.nodes[i].kind {
                NodeKind::End(e) => Some(e.outcome.as_str()),
                _ => None,
            })
            .collect()
    };
    let main = ends(walk(&successors, start, true, &|_| false));
    let any = ends(walk(&successors, start, false, &|_| false));
    for (i, ind) in def.indicators.iter().enumerate() {
        let base = c.parsed.item_path("indicators", i);
        for (part, population) in [
            ("numerator", &ind.numerator),
            ("denominator", &ind.denominator),
        ] {
            for (j, end) in population.ends.iter().enumerate() {
                if any.contains(end.as_str()) && !main.contains(end.as_str()) {
                    c.error(
                        Code::UnknownEnd,
                        base.key(part).key("ends").index(j),
                        format!(
                            "outcome `{end}` is reached only by an escalation's side path, which \
                             does not end the request (its outcome is its main path's end): the \
                             indicator would never count it; the requests end as {}",
                            list(&main)
                        ),
                    );
                }
            }
        }
    }
}

fn side_paths(c: &mut Checker<'_>, start: usize) {
    let nodes = &c.def.nodes;
    let successors = c.def.successors();
    let walk = |from: usize, skip_side: bool, stop_at: &dyn Fn(usize) -> bool| {
        walk(&successors, from, skip_side, stop_at)
    };
    let main = walk(start, true, &|_| false);
    let main_join = |j: usize| main.contains(&j) && matches!(nodes[j].kind, NodeKind::Join(_));
    // Each fork's region: what its branches reach before its join.
    let regions: Vec<(usize, BTreeSet<usize>)> = nodes
        .iter()
        .filter_map(|n| match &n.kind {
            NodeKind::Fork(f) => {
                let join = *c.nodes.get(f.join.as_str())?;
                let mut region = BTreeSet::new();
                for b in &f.branches {
                    if let Some(&first) = c.nodes.get(b.as_str()) {
                        region.extend(walk(first, false, &|j| j == join));
                    }
                }
                region.remove(&join);
                Some((join, region))
            }
            _ => None,
        })
        .collect();
    let mut found = Vec::new();
    for (i, edges) in successors.iter().enumerate() {
        let Some(side) = edges.iter().find(|e| e.side) else {
            continue;
        };
        // The join of the innermost fork around the task: the one join
        // where the side token is counted in rather than let through.
        let own_join = regions
            .iter()
            .filter(|(_, region)| region.contains(&i))
            .min_by_key(|(_, region)| region.len())
            .map(|(join, _)| *join);
        let reached = walk(side.to, false, &main_join);
        let meets: Vec<&str> = reached
            .iter()
            .filter(|j| {
                main.contains(j) && !matches!(nodes[**j].kind, NodeKind::End(_) | NodeKind::Join(_))
            })
            .map(|j| nodes[*j].id.as_str())
            .collect();
        let joins: Vec<&str> = reached
            .iter()
            .filter(|j| main_join(**j) && Some(**j) != own_join)
            .map(|j| nodes[*j].id.as_str())
            .collect();
        if !meets.is_empty() {
            let message = format!(
                "this escalation leaves the task open, so its path runs beside the main flow; it reaches steps of the main flow ({}), which would then run twice. End the side path with an `end` of its own (or at the enclosing fork's `join`), or make the escalation interrupting",
                list(&meets)
            );
            found.push((c.node_path(i).key("escalation").key("next"), message));
        } else if !joins.is_empty() {
            let message = format!(
                "this escalation leaves the task open, so its path runs beside the main flow; it reaches {}, the join of a fork the task is not inside: the side token would pass it beside the main flow's, and the steps after it would run twice. End the side path with an `end` of its own{}, or make the escalation interrupting",
                list(&joins),
                own_join.map_or(String::new(), |j| format!(
                    " or at `{}`, the join of the fork around the task",
                    nodes[j].id
                )),
            );
            found.push((c.node_path(i).key("escalation").key("next"), message));
        }
    }
    for (path, message) in found {
        c.error(Code::InvalidSetting, path, message);
    }
}

fn reach(g: &Graph, from: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut bfs = Bfs::new(&g.graph, NodeIndex::new(from));
    while let Some(n) = bfs.next(&g.graph) {
        seen.insert(n.index());
    }
    seen
}

fn unreachable(c: &mut Checker<'_>, reachable: &BTreeSet<usize>) {
    for (i, n) in c.def.nodes.iter().enumerate() {
        // A second node with a taken id is reported as a duplicate already.
        let duplicate = c.nodes.get(n.id.as_str()) != Some(&i);
        if !reachable.contains(&i) && !duplicate {
            c.error(
                Code::Unreachable,
                c.node_path(i).key("id"),
                format!("no path from the start reaches `{}`", n.id),
            );
        }
    }
}

/// Reachable nodes from which no end can be reached, reported once per
/// connected group at the group's first node.
fn trapped(c: &mut Checker<'_>, g: &Graph, reachable: &BTreeSet<usize>) {
    let reversed = Reversed(&g.graph);
    let mut can_end = BTreeSet::new();
    for (i, n) in c.def.nodes.iter().enumerate() {
        if matches!(n.kind, NodeKind::End(_)) {
            let mut bfs = Bfs::new(reversed, NodeIndex::new(i));
            while let Some(x) = bfs.next(reversed) {
                can_end.insert(x.index());
            }
        }
    }
    let trapped: Vec<usize> = reachable
        .iter()
        .copied()
        .filter(|i| !can_end.contains(i))
        .collect();
    if trapped.is_empty() {
        return;
    }
    let mut groups = UnionFind::new(c.def.nodes.len());
    for e in g.graph.edge_references() {
        let (a, b) = (e.source().index(), e.target().index());
        if trapped.contains(&a) && trapped.contains(&b) {
            groups.union(a, b);
        }
    }
    let mut by_group: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in &trapped {
        by_group.entry(groups.find(i)).or_default().push(i);
    }
    for members in by_group.values() {
        let first = members[0];
        let ids: Vec<&str> = members
            .iter()
            .map(|&i| c.def.nodes[i].id.as_str())
            .collect();
        let msg = if ids.len() == 1 {
            format!(
                "no end can be reached from `{}`: every path from it stops or loops",
                ids[0]
            )
        } else {
            format!(
                "no end can be reached from {}: every path from them stops or loops",
                list(&ids)
            )
        };
        c.error(Code::NoEndReachable, c.node_path(first).key("id"), msg);
    }
}

/// Cycles made only of nodes that never wait: the engine would loop
/// forever inside one command. Names the whole path.
///
/// A fork one of whose branches cannot reach its join without waiting
/// counts as waiting: its tokens meet at the join, which fires only once
/// that branch has arrived (a rework loop: revise in parallel, join,
/// decide, fork again). Unless a cycle gets from the fork back to itself
/// without its join, which is checked on its own.
fn spin_cycles(c: &mut Checker<'_>, g: &Graph) {
    let nodes = &c.def.nodes;
    let forks = blocking_forks(c, g);
    let instant = |i: usize| !nodes[i].kind.waits() && !forks.contains_key(&i);
    report_spins(c, g, &instant, None);
    for (&fork, &join) in &forks {
        let around = |i: usize| i == fork || (i != join && instant(i));
        report_spins(c, g, &around, Some(fork));
    }
}

/// Reports one cycle per strongly connected group of the nodes `keep`
/// selects (only groups holding `through`, when given).
fn report_spins(
    c: &mut Checker<'_>,
    g: &Graph,
    keep: &dyn Fn(usize) -> bool,
    through: Option<usize>,
) {
    let nodes = &c.def.nodes;
    let instant = g
        .graph
        .filter_map(|_, &i| keep(i).then_some(i), |_, _| Some(()));
    for scc in tarjan_scc(&instant) {
        let self_loop = scc.len() == 1 && instant.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        if through.is_some_and(|t| !scc.iter().any(|&n| instant[n] == t)) {
            continue;
        }
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        let first = *scc
            .iter()
            .min_by_key(|n| instant[**n])
            .expect("non-empty scc");
        let path = cycle_through(&instant, first, &members);
        let ids: Vec<&str> = path
            .iter()
            .map(|&n| nodes[instant[n]].id.as_str())
            .collect();
        c.error(
            Code::SpinCycle,
            c.node_path(instant[first]).key("id"),
            format!(
                "cycle without a waiting step: {} → {}; the engine would loop forever. \
                 Put a user task, service task, wait or waiting call on it",
                ids.join(" → "),
                ids[0]
            ),
        );
    }
}

/// Every fork with the index of its join, where that names a join node.
fn fork_joins<'a>(c: &'a Checker<'_>) -> Vec<(usize, &'a Fork, usize)> {
    let nodes = &c.def.nodes;
    nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match &n.kind {
            NodeKind::Fork(fork) => {
                let &join = c.nodes.get(fork.join.as_str())?;
                matches!(nodes[join].kind, NodeKind::Join(_)).then_some((i, fork, join))
            }
            _ => None,
        })
        .collect()
}

/// Forks (with their join) one of whose branches cannot reach the join
/// without passing a waiting node.
fn blocking_forks(c: &Checker<'_>, g: &Graph) -> BTreeMap<usize, usize> {
    let nodes = &c.def.nodes;
    fork_joins(c)
        .into_iter()
        .filter(|(_, fork, join)| {
            fork.branches.iter().any(|b| {
                c.nodes
                    .get(b.as_str())
                    .is_some_and(|&first| !reaches_without_waiting(g, nodes, first, *join))
            })
        })
        .map(|(i, _, join)| (i, join))
        .collect()
}

/// Whether a token at `from` can reach `to` through nodes that never wait.
fn reaches_without_waiting(
    g: &Graph,
    nodes: &[crate::definition::Node],
    from: usize,
    to: usize,
) -> bool {
    if nodes[from].kind.waits() {
        return false;
    }
    let instant = NodeFiltered::from_fn(&g.graph, |n: NodeIndex| {
        n.index() == to || !nodes[n.index()].kind.waits()
    });
    let mut bfs = Bfs::new(&instant, NodeIndex::new(from));
    while let Some(n) = bfs.next(&instant) {
        if n.index() == to {
            return true;
        }
    }
    false
}

/// The shortest cycle from `start` back to itself inside `members`.
fn cycle_through(
    graph: &DiGraph<usize, ()>,
    start: NodeIndex,
    members: &BTreeSet<NodeIndex>,
) -> Vec<NodeIndex> {
    let mut parent: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for next in graph.neighbors_directed(n, Direction::Outgoing) {
            if next == start {
                let mut path = vec![n];
                let mut cur = n;
                while let Some(&p) = parent.get(&cur) {
                    path.push(p);
                    cur = p;
                }
                path.reverse();
                return path;
            }
            if members.contains(&next) && next != start && !parent.contains_key(&next) {
                parent.insert(next, n);
                queue.push_back(next);
            }
        }
    }
    vec![start]
}

/// Every branch of a fork must reach its join, and no branch may reach an
/// end without passing it (the join would wait forever).
fn forks(c: &mut Checker<'_>) {
    let nodes = &c.def.nodes;
    // A non-interrupting escalation's path is a side token's, which may
    // end at an `end` of its own inside a fork: `side_paths` checks it.
    let successors = c.def.successors();
    let mut problems = Vec::new();
    for (i, fork, join) in fork_joins(c) {
        let n = &nodes[i];
        for (b, branch) in fork.branches.iter().enumerate() {
            let Some(&start) = c.nodes.get(branch.as_str()) else {
                continue;
            };
            // Each step found, and the step it was found from: the way back
            // to the fork, if the branch has one, is named in full.
            let mut from = BTreeMap::from([(start, start)]);
            let mut queue = VecDeque::from([start]);
            let mut met_join = start == join;
            let mut escaped = None;
            let mut reentered = false;
            while let Some(x) = queue.pop_front() {
                if x == join {
                    met_join = true;
                    continue;
                }
                if x == i {
                    // Not followed further: past the fork is every branch.
                    reentered = true;
                    continue;
                }
                if matches!(nodes[x].kind, NodeKind::End(_)) && escaped.is_none() {
                    escaped = Some(x);
                }
                for y in successors[x].iter().filter(|e| !e.side).map(|e| e.to) {
                    if let std::collections::btree_map::Entry::Vacant(v) = from.entry(y) {
                        v.insert(x);
                        queue.push_back(y);
                    }
                }
            }
            let path = c.node_path(i).key("branches").index(b);
            if reentered {
                let mut way = vec![i];
                while let Some(&before) = from.get(way.last().expect("not empty"))
                    && way.last() != Some(&start)
                {
                    way.push(before);
                }
                way.reverse();
                let way: Vec<_> = way.iter().map(|&x| nodes[x].id.as_str()).collect();
                problems.push((
                    path.clone(),
                    format!(
                        "branch `{branch}` of fork `{}` leads back to the fork before join `{}` \
                         ({}): the fork would start every branch again while the others still \
                         run, and the join would wait for the first round forever",
                        n.id,
                        fork.join,
                        way.join(" → ")
                    ),
                ));
            }
            if let Some(end) = escaped {
                problems.push((
                    path,
                    format!(
                        "branch `{branch}` of fork `{}` reaches end `{}` without passing join `{}`",
                        n.id, nodes[end].id, fork.join
                    ),
                ));
            } else if !met_join {
                problems.push((
                    path,
                    format!(
                        "branch `{branch}` of fork `{}` never reaches join `{}`",
                        n.id, fork.join
                    ),
                ));
            }
        }
    }
    for (path, msg) in problems {
        c.error(Code::ForkWithoutJoin, path, msg);
    }
}
