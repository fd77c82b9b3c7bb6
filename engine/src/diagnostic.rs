//! Problems found in a definition, each with a stable code, its YAML path
//! and, when known, its line and column.

use std::fmt;

use crate::position::{Pos, YamlPath};

/// What kind of problem a diagnostic reports. The code is stable: tests,
/// editors and the API match on it rather than on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    /// The text is not YAML.
    YamlSyntax,
    /// A value has the wrong type or is not one of the allowed values.
    InvalidValue,
    /// A key that the format does not have.
    UnknownField,
    /// A required key is absent.
    MissingField,
    /// Two things that need distinct ids share one.
    DuplicateId,
    /// Not exactly one start node.
    StartCount,
    /// A reference to a node that does not exist.
    UnknownNode,
    /// A node no path from the start reaches.
    Unreachable,
    /// A node from which no end can be reached.
    NoEndReachable,
    /// An exclusive gate without a default branch.
    GateWithoutDefault,
    /// An expression that does not compile.
    Expression,
    /// A cycle without any waiting node: the engine would spin forever.
    SpinCycle,
    /// A role that the definition does not declare.
    UnknownRole,
    /// A connector that the catalog does not have.
    UnknownConnector,
    /// An operation that the connector does not have.
    UnknownOperation,
    /// An input that the operation does not take.
    UnknownInput,
    /// A required input of the operation is not mapped.
    MissingInput,
    /// A field of `result` (or `output`) that the operation (or procedure) does not return.
    UnknownOutput,
    /// A business error that the operation does not declare.
    UnknownBusinessError,
    /// An expression reads, or a mapping writes, an undeclared variable.
    UnknownVariable,
    /// An expression reads a variable that nothing ever writes.
    NeverWritten,
    /// A value's type does not fit the variable's type.
    TypeMismatch,
    /// A fork whose branches do not all meet at its join.
    ForkWithoutJoin,
    /// A join that no fork names.
    JoinWithoutFork,
    /// A call to a procedure that is not known.
    UnknownProcedure,
    /// An indicator naming an end outcome that no end node has.
    UnknownEnd,
    /// A document id that the definition does not declare.
    UnknownDocument,
    /// A setting that is out of range or contradicts another one.
    InvalidSetting,
    /// A warning: an expression reads a variable that some path from the
    /// start leaves unwritten when the expression runs.
    MaybeUnwritten,
    /// A warning: a `call` leads, through the procedures it calls, back to
    /// the calling procedure.
    CallCycle,
}

impl Code {
    /// The code as printed: `unknown-node`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::YamlSyntax => "yaml-syntax",
            Code::InvalidValue => "invalid-value",
            Code::UnknownField => "unknown-field",
            Code::MissingField => "missing-field",
            Code::DuplicateId => "duplicate-id",
            Code::StartCount => "start-count",
            Code::UnknownNode => "unknown-node",
            Code::Unreachable => "unreachable",
            Code::NoEndReachable => "no-end-reachable",
            Code::GateWithoutDefault => "gate-without-default",
            Code::Expression => "expression",
            Code::SpinCycle => "spin-cycle",
            Code::UnknownRole => "unknown-role",
            Code::UnknownConnector => "unknown-connector",
            Code::UnknownOperation => "unknown-operation",
            Code::UnknownInput => "unknown-input",
            Code::MissingInput => "missing-input",
            Code::UnknownOutput => "unknown-output",
            Code::UnknownBusinessError => "unknown-business-error",
            Code::UnknownVariable => "unknown-variable",
            Code::NeverWritten => "never-written",
            Code::TypeMismatch => "type-mismatch",
            Code::ForkWithoutJoin => "fork-without-join",
            Code::JoinWithoutFork => "join-without-fork",
            Code::UnknownProcedure => "unknown-procedure",
            Code::UnknownEnd => "unknown-end",
            Code::UnknownDocument => "unknown-document",
            Code::InvalidSetting => "invalid-setting",
            Code::MaybeUnwritten => "maybe-unwritten",
            Code::CallCycle => "call-cycle",
        }
    }

    /// Whether the code is a warning: the definition deploys with it.
    pub fn is_warning(self) -> bool {
        matches!(self, Code::MaybeUnwritten | Code::CallCycle)
    }

    /// `error` or `warning`, as printed before the code.
    pub fn severity(self) -> &'static str {
        if self.is_warning() {
            "warning"
        } else {
            "error"
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// What kind of problem.
    pub code: Code,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
    /// Where in the document.
    pub path: YamlPath,
    /// Line and column, when the text could be indexed.
    pub pos: Option<Pos>,
}

impl Diagnostic {
    /// A diagnostic at `path`; its position is filled in by the loader.
    pub fn new(code: Code, path: YamlPath, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
            path,
            pos: None,
        }
    }
}

/// Every problem of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    /// The file as the user named it.
    pub file: String,
    /// The problems, in order of position.
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Renders every problem compiler-style, with the offending source line
    /// and a caret under the column.
    pub fn render(&self, source: &str) -> String {
        let lines: Vec<&str> = source.lines().collect();
        let mut out = String::new();
        for d in &self.items {
            out.push_str(&format!(
                "{}[{}]: {}\n",
                d.code.severity(),
                d.code,
                d.message
            ));
            match d.pos {
                Some(pos) => {
                    out.push_str(&format!("  --> {}:{} ({})\n", self.file, pos, d.path));
                    if let Some(line) = lines.get(pos.line.saturating_sub(1) as usize) {
                        let gutter = pos.line.to_string().len();
                        out.push_str(&format!("{:gutter$} |\n", ""));
                        out.push_str(&format!("{} | {}\n", pos.line, line));
                        let pad = " ".repeat(pos.column.saturating_sub(1) as usize);
                        out.push_str(&format!("{:gutter$} | {pad}^\n", ""));
                    }
                }
                None => out.push_str(&format!("  --> {} ({})\n", self.file, d.path)),
            }
            out.push('\n');
        }
        out
    }
}

impl Diagnostics {
    /// Each problem on one line: `file:line:column: error[code]: message
    /// (at path)` (`warning[code]` for a warning).
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.items.iter().map(|d| {
            let at = match d.pos {
                Some(pos) => format!("{}:{}", self.file, pos),
                None => self.file.clone(),
            };
            format!(
                "{at}: {}[{}]: {} (at {})",
                d.code.severity(),
                d.code,
                d.message,
                d.path
            )
        })
    }
}

impl fmt::Display for Diagnostics {
    /// [`Diagnostics::lines`], one after the other.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            f.write_str(&line)?;
        }
        Ok(())
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // A name people type is short; the distance costs the product of the
    // lengths in time and memory, and an 80 KB definition of two 40,000
    // letter names would otherwise ask for gigabytes.
    const LONGEST: usize = 64;
    if word.chars().count() > LONGEST {
        return None;
    }
    let candidates: Vec<&str> = candidates
        .into_iter()
        .filter(|c| c.chars().count() <= LONGEST)
        .collect();
    let close = candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    // `owner` for `owner_role`, `final` for `fin`: one is the start of the other.
    close.or_else(|| {
        candidates
            .into_iter()
            .find(|c| word.len().min(c.len()) >= 3 && (c.starts_with(word) || word.starts_with(c)))
    })
}

/// Optimal string alignment distance: a swap of two letters counts as one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = ["role", "outcomes", "instructions"];
        assert_eq!(did_you_mean("rol", names), Some("role"));
        assert_eq!(did_you_mean("outcome", names), Some("outcomes"));
        assert_eq!(did_you_mean("zzz", names), None);
        assert_eq!(did_you_mean("nmae", ["name", "code"]), Some("name"));
        assert_eq!(
            did_you_mean("owner", ["name", "owner_role"]),
            Some("owner_role")
        );
        assert_eq!(did_you_mean("final", ["inicio", "fin"]), Some("fin"));
    }

    /// Two very long names are compared in no time and no memory: no
    /// suggestion, rather than a distance matrix of their lengths' product.
    #[test]
    fn long_names_get_no_suggestion() {
        let long_a = "a".repeat(40_000);
        let long_b = "b".repeat(40_000);
        assert_eq!(did_you_mean(&long_b, [long_a.as_str(), "inicio"]), None);
        let near = format!("{}x", "a".repeat(63));
        assert_eq!(
            did_you_mean(&"a".repeat(64), [near.as_str()]),
            Some(near.as_str())
        );
    }
}
