//! Diagrams of a definition: Mermaid (renders on GitHub and in the UI) and
//! Graphviz DOT. Nodes carry their step number and label; edges carry
//! outcomes, conditions, error names and deadlines.

use std::fmt::Write;

use crate::definition::{Definition, EdgeLabel, Node, NodeKind};
use crate::position::YamlPath;
use crate::text::{Lang, Text};

/// Diagram formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Mermaid flowchart.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// Renders `definition` in `format`, with texts in `lang`.
pub fn render(definition: &Definition, format: Format, lang: Lang) -> String {
    match format {
        Format::Mermaid => mermaid(definition, lang),
        Format::Dot => dot(definition, lang),
    }
}

fn node_text(node: &Node, lang: Lang) -> String {
    let label = node
        .label
        .as_ref()
        .map_or_else(|| node.id.clone(), |l| l.get(lang).to_owned());
    let mut text = match &node.step {
        Some(step) => format!("{step}. {label}"),
        None => label,
    };
    match &node.kind {
        NodeKind::ServiceTask(s) => text.push_str(&format!("\n{}.{}", s.connector, s.operation)),
        NodeKind::Call(c) => {
            text.push_str(&format!("\n→ {}", c.procedure));
            // One that does not wait goes on at once: its child's end
            // reports nothing back.
            if !c.wait {
                text.push_str(if lang == Lang::Es {
                    " (sin esperar)"
                } else {
                    " (no wait)"
                });
            }
        }
        NodeKind::TimerWait(t) => {
            if let Some(after) = &t.after {
                text.push_str(&format!("\n⏱ {after}"));
            } else if let Some(at) = &t.at {
                text.push_str(&format!("\n⏱ {}", at.source()));
            }
        }
        NodeKind::MessageWait(w) => text.push_str(&format!("\n✉ {}", w.message)),
        NodeKind::End(e) => text.push_str(&format!("\n[{}]", e.outcome)),
        _ => {}
    }
    text
}

fn edge_text(label: EdgeLabel<'_>, lang: Lang) -> Option<String> {
    let es = lang == Lang::Es;
    let t = |text: &Text| text.get(lang).to_owned();
    match label {
        EdgeLabel::Next | EdgeLabel::Branch => None,
        EdgeLabel::Outcome(text) => Some(t(text)),
        EdgeLabel::Condition(expr, text) => Some(text.map_or_else(|| expr.source().to_owned(), t)),
        EdgeLabel::Default(text) => Some(text.map_or_else(
            || if es { "en otro caso" } else { "otherwise" }.to_owned(),
            t,
        )),
        EdgeLabel::Error(name) => Some(format!("error: {name}")),
        EdgeLabel::Timeout(d) => Some(if es {
            format!("sin respuesta en {d}")
        } else {
            format!("no answer within {d}")
        }),
        EdgeLabel::Overdue { due, interrupting } => {
            let mut text = match (due, es) {
                (Some(d), true) => format!("vencida ({d})"),
                (Some(d), false) => format!("overdue ({d})"),
                (None, true) => "vencida".to_owned(),
                (None, false) => "overdue".to_owned(),
            };
            // A side path leaves the task where it is: drawn alike, the two
            // kinds read the same and do not behave so.
            if !interrupting {
                text.push_str(if es {
                    ", sin quitar la tarea"
                } else {
                    ", the task stays"
                });
            }
            Some(text)
        }
    }
}

/// Mermaid lines that mark `nodes` (where an instance waits) on a diagram
/// from [`render`].
pub fn mermaid_highlight(nodes: &[&str]) -> String {
    if nodes.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = nodes.iter().map(|n| mermaid_id(n)).collect();
    format!(
        "    classDef here fill:#ffd966,stroke:#b45f06,stroke-width:4px\n    class {} here\n",
        ids.join(",")
    )
}

/// A node's Mermaid id: prefixed, as Mermaid reads a bare `end`, `style`,
/// `class`, `click`, `subgraph`, `graph`… as its own keywords (the whole
/// diagram then fails to parse), and renaming only those would collide with
/// a node already called so.
fn mermaid_id(id: &str) -> String {
    format!("n_{id}")
}

/// A label's text as Mermaid shows it literally: its entity codes for the
/// quote that would close the label, for `<` and `>` (its HTML sanitiser
/// reads `<limite…` as a tag and drops the rest), and for `#` (so that a
/// literal `#quot;` stays text); line breaks as `<br/>`.
fn mermaid_escape(text: &str) -> String {
    text.replace('#', "#35;")
        .replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
        .replace('\n', "<br/>")
}

fn mermaid(def: &Definition, lang: Lang) -> String {
    let mut out = String::new();
    // The front matter is YAML: a single-quoted string takes any text but
    // its own quote, doubled (a backslash in a double-quoted one is an
    // escape, and `\D` none YAML knows).
    let title = format!("{} — {}", def.code, def.name.get(lang))
        .replace('\n', " ")
        .replace('\'', "''");
    let _ = writeln!(out, "---\ntitle: '{title}'\n---");
    out.push_str("flowchart TD\n");
    for node in &def.nodes {
        let text = mermaid_escape(&node_text(node, lang));
        let (open, close, class) = match node.kind {
            NodeKind::Start(_) => ("([\"", "\"])", "startNode"),
            NodeKind::End(_) => ("([\"", "\"])", "endNode"),
            NodeKind::UserTask(_) => ("[\"", "\"]", "userTask"),
            NodeKind::ServiceTask(_) => ("[[\"", "\"]]", "serviceTask"),
            NodeKind::ExclusiveGate(_) => ("{\"", "\"}", "gate"),
            NodeKind::Fork(_) | NodeKind::Join(_) => ("{{\"", "\"}}", "gate"),
            NodeKind::MessageWait(_) => (">\"", "\"]", "waitNode"),
            NodeKind::TimerWait(_) => ("[/\"", "\"/]", "waitNode"),
            NodeKind::Call(_) => ("[[\"", "\"]]", "callNode"),
        };
        let _ = writeln!(
            out,
            "    {}{open}{text}{close}:::{class}",
            mermaid_id(&node.id)
        );
    }
    for (i, node) in def.nodes.iter().enumerate() {
        let base = YamlPath::root().key("nodes").index(i);
        for edge in node.edges(&base) {
            let arrow = if matches!(
                edge.label,
                EdgeLabel::Overdue { .. } | EdgeLabel::Timeout(_)
            ) {
                "-.->"
            } else {
                "-->"
            };
            match edge_text(edge.label, lang) {
                Some(text) => {
                    let _ = writeln!(
                        out,
                        "    {} {arrow}|\"{}\"| {}",
                        mermaid_id(&node.id),
                        mermaid_escape(&text),
                        mermaid_id(edge.to)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "    {} {arrow} {}",
                        mermaid_id(&node.id),
                        mermaid_id(edge.to)
                    );
                }
            }
        }
    }
    out.push_str(
        "    classDef startNode fill:#e8f5e9,stroke:#2e7d32\n\
         \x20   classDef endNode fill:#eceff1,stroke:#37474f\n\
         \x20   classDef userTask fill:#e3f2fd,stroke:#1565c0\n\
         \x20   classDef serviceTask fill:#fff3e0,stroke:#ef6c00\n\
         \x20   classDef gate fill:#fffde7,stroke:#f9a825\n\
         \x20   classDef waitNode fill:#f3e5f5,stroke:#6a1b9a\n\
         \x20   classDef callNode fill:#e0f7fa,stroke:#00838f\n",
    );
    out
}

fn dot_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn dot(def: &Definition, lang: Lang) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(&def.code));
    let _ = writeln!(
        out,
        "    label=\"{} — {}\";\n    labelloc=t;\n    rankdir=TB;\n    node [fontname=\"Helvetica\", fontsize=10];\n    edge [fontname=\"Helvetica\", fontsize=9];",
        dot_escape(&def.code),
        dot_escape(def.name.get(lang))
    );
    for node in &def.nodes {
        let attrs = match node.kind {
            NodeKind::Start(_) => "shape=ellipse, style=filled, fillcolor=\"#e8f5e9\"",
            NodeKind::End(_) => "shape=doublecircle, style=filled, fillcolor=\"#eceff1\"",
            NodeKind::UserTask(_) => "shape=box, style=\"rounded,filled\", fillcolor=\"#e3f2fd\"",
            NodeKind::ServiceTask(_) => "shape=component, style=filled, fillcolor=\"#fff3e0\"",
            NodeKind::ExclusiveGate(_) => "shape=diamond, style=filled, fillcolor=\"#fffde7\"",
            NodeKind::Fork(_) | NodeKind::Join(_) => {
                "shape=diamond, label=\"+\", style=filled, fillcolor=\"#fffde7\""
            }
            NodeKind::MessageWait(_) | NodeKind::TimerWait(_) => {
                "shape=parallelogram, style=filled, fillcolor=\"#f3e5f5\""
            }
            NodeKind::Call(_) => "shape=box, peripheries=2, style=filled, fillcolor=\"#e0f7fa\"",
        };
        let xlabel = if matches!(node.kind, NodeKind::Fork(_) | NodeKind::Join(_)) {
            "xlabel"
        } else {
            "label"
        };
        let _ = writeln!(
            out,
            "    \"{}\" [{xlabel}=\"{}\", {attrs}];",
            dot_escape(&node.id),
            dot_escape(&node_text(node, lang))
        );
    }
    for (i, node) in def.nodes.iter().enumerate() {
        let base = YamlPath::root().key("nodes").index(i);
        for edge in node.edges(&base) {
            let style = if matches!(
                edge.label,
                EdgeLabel::Overdue { .. } | EdgeLabel::Timeout(_)
            ) {
                ", style=dashed"
            } else {
                ""
            };
            let label = edge_text(edge.label, lang)
                .map(|t| format!(" [label=\"{}\"{style}]", dot_escape(&t)))
                .unwrap_or_else(|| {
                    if style.is_empty() {
                        String::new()
                    } else {
                        " [style=dashed]".to_owned()
                    }
                });
            let _ = writeln!(
                out,
                "    \"{}\" -> \"{}\"{label};",
                dot_escape(&node.id),
                dot_escape(edge.to)
            );
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids Mermaid reads as its own words, text it reads as HTML or as its
    /// entity codes, and a title YAML reads as an escape, all draw as
    /// written.
    #[test]
    fn mermaid_draws_keywords_markup_and_titles_as_text() {
        let yaml = r#"
code: T-DIBUJO
name: 'Ventas\Digitales "uno"'
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: style}
  - id: style
    kind: exclusive_gate
    label: "¿Deuda<limite? Ver <Anexo 1> #quot;"
    branches:
      - {when: "true", next: end}
    default: end_
  - {id: end, kind: end, outcome: listo}
  - {id: end_, kind: end, outcome: otro}
"#;
        let def = crate::loader::parse(yaml).definition;
        let text = mermaid(&def, Lang::Es);
        assert!(
            text.starts_with("---\ntitle: 'T-DIBUJO — Ventas\\Digitales \"uno\"'\n---\n"),
            "{text}"
        );
        for line in [
            "    n_style{\"¿Deuda#lt;limite? Ver #lt;Anexo 1#gt; #35;quot;\"}:::gate",
            "    n_style -->|\"true\"| n_end",
            "    n_style -->|\"en otro caso\"| n_end_",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert_eq!(
            mermaid_highlight(&["style"]).lines().nth(1),
            Some("    class n_style here")
        );
    }

    /// What changes how a step behaves is drawn: an escalation that leaves
    /// the task open, a call that does not wait, a timer's time.
    #[test]
    fn side_escalations_calls_that_do_not_wait_and_timers_are_told_apart() {
        let yaml = r#"
code: T-DIBUJO
name: Dibujo
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
nodes:
  - {id: inicio, kind: start, channels: [web], next: llamar}
  - id: llamar
    kind: user_task
    role: agente
    due: 1h
    escalation: {next: avisar, interrupting: false}
    outcomes: [{id: ok, label: Listo, next: esperar}]
  - {id: avisar, kind: end, outcome: avisado}
  - {id: esperar, kind: timer_wait, after: 2d, next: instalar}
  - {id: instalar, kind: call, procedure: OPR-PAS-P02, wait: false, next: fin}
  - {id: fin, kind: end, outcome: listo}
"#;
        let def = crate::loader::parse(yaml).definition;
        let es = mermaid(&def, Lang::Es);
        for line in [
            "    n_llamar -.->|\"vencida (1h), sin quitar la tarea\"| n_avisar",
            "    n_esperar[/\"esperar<br/>⏱ 2d\"/]:::waitNode",
            "    n_instalar[[\"instalar<br/>→ OPR-PAS-P02 (sin esperar)\"]]:::callNode",
        ] {
            assert!(es.lines().any(|l| l == line), "{line}\n{es}");
        }
        let en = dot(&def, Lang::En);
        assert!(en.contains("overdue (1h), the task stays"), "{en}");
        assert!(en.contains("(no wait)"), "{en}");
    }
}
