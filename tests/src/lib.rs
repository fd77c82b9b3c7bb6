//! Helpers for tramite's whole-system tests: where the repository's files
//! are, and how to validate definitions the way `tramite validate` does.

pub mod engine;
pub mod p06;

use std::path::{Path, PathBuf};

use tramite_engine::diagnostic::Diagnostics;
use tramite_engine::library::{self, SourceFile};
use tramite_engine::validate::Compiled;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// The shipped process definitions.
pub fn processes() -> Vec<SourceFile> {
    library::read(&[repo_root().join("processes")]).expect("processes/ is readable")
}

/// Validates `text` as `tramite validate` would, with the shipped
/// definitions as the procedures a `call` may name.
pub fn compile(name: &str, text: &str) -> Result<Compiled, Diagnostics> {
    let file = SourceFile {
        path: PathBuf::from(name),
        text: text.to_owned(),
    };
    let catalog = tramite_connectors::catalog();
    library::compile(std::slice::from_ref(&file), &processes(), &catalog)
        .pop()
        .expect("one file in, one result out")
        .1
}

/// One expected diagnostic, written in a corpus file as
/// `# expect: LINE:COL CODE "part of the message"`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expected {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
    /// The diagnostic code (`unknown-node`).
    pub code: String,
    /// Text the message must contain.
    pub contains: String,
}

/// The expectations written in a corpus file.
pub fn expectations(text: &str) -> Vec<Expected> {
    let mut out: Vec<Expected> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# expect:"))
        .map(|rest| {
            let rest = rest.trim();
            let (pos, rest) = rest.split_once(' ').expect("expect: POS CODE \"TEXT\"");
            let (line, column) = pos.split_once(':').expect("POS is LINE:COL");
            let (code, contains) = rest.split_once(' ').expect("expect: POS CODE \"TEXT\"");
            Expected {
                line: line.parse().expect("line number"),
                column: column.parse().expect("column number"),
                code: code.to_owned(),
                contains: contains.trim().trim_matches('"').to_owned(),
            }
        })
        .collect();
    out.sort();
    out
}

/// A rework loop: revise (a user task) beside a note (a gate), join,
/// decide, and fork again or end. Valid: the fork's join waits for the
/// task each round.
pub const REWORK: &str = r#"
code: T-REWORK
name: Revisión en paralelo
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: rehacer, type: boolean}
nodes:
  - id: inicio
    kind: start
    channels: [web]
    next: dividir
  - id: dividir
    kind: fork
    branches: [revisar, anotar]
    join: unir
  - id: revisar
    kind: user_task
    role: agente
    form:
      - {name: rehacer, type: boolean}
    outcomes:
      - {id: ok, label: Listo, next: unir}
  - id: anotar
    kind: exclusive_gate
    branches:
      - when: rehacer == true
        next: unir
    default: unir
  - id: unir
    kind: join
    next: otra_vez
  - id: otra_vez
    kind: exclusive_gate
    branches:
      - when: rehacer == true
        next: dividir
    default: fin
  - id: fin
    kind: end
    outcome: listo
"#;
