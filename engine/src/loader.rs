//! From YAML text to a [`Definition`], reporting every structural problem.
//!
//! The text is read with serde_yaml into a value, then each top-level
//! section, each list item and each node is deserialized on its own, so one
//! mistake does not hide the next. Positions come from a
//! [`PositionIndex`] of the same text, looked up by the path of the problem.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use crate::definition::{
    Call, Definition, End, ExclusiveGate, Fork, Join, Links, MessageWait, Node, NodeKind,
    ServiceTask, Start, TimerWait, UserTask,
};
use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::position::{PositionIndex, Segment, YamlPath};
use crate::text::{Numbering, Text};

/// The result of reading a definition's text, before semantic validation.
#[derive(Debug)]
pub struct Parsed {
    /// What could be read; sections with errors are left empty.
    pub definition: Definition,
    /// Positions of the text.
    pub index: PositionIndex,
    /// Structural problems (syntax, types, unknown and missing fields).
    pub diagnostics: Vec<Diagnostic>,
    /// Ids of nodes that failed to load; references to them are not reported again.
    pub broken_nodes: BTreeSet<String>,
    /// Whether the text was a YAML map at all; if not, there is nothing to validate.
    pub readable: bool,
    /// For each list section (`nodes`, `roles`, ...), the YAML index of each
    /// loaded item: items that failed are missing from the definition, so
    /// the definition's index and the file's can differ.
    origins: BTreeMap<&'static str, Vec<usize>>,
    /// Top-level sections with at least one structural problem.
    failed: BTreeSet<String>,
}

impl Parsed {
    /// Whether everything in the text was read.
    pub fn is_complete(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// Whether `section` (`nodes`, `roles`, …) loaded without a problem, so
    /// that checks depending on all of it can run.
    pub fn section_complete(&self, section: &str) -> bool {
        self.readable && !self.failed.contains(section)
    }

    /// The path of item `i` of list `section` as loaded, in the file.
    pub fn item_path(&self, section: &str, i: usize) -> YamlPath {
        let original = self
            .origins
            .get(section)
            .and_then(|o| o.get(i))
            .copied()
            .unwrap_or(i);
        YamlPath::root().key(section).index(original)
    }
}

const TOP_LEVEL: [&str; 11] = [
    "code",
    "name",
    "version",
    "description",
    "owner_role",
    "roles",
    "variables",
    "links",
    "documents",
    "indicators",
    "nodes",
];
const REQUIRED: [&str; 6] = ["code", "name", "version", "owner_role", "roles", "nodes"];
const NODE_COMMON: [&str; 4] = ["id", "kind", "step", "label"];

/// Fills in a diagnostic's position from its path: an unknown field points
/// at its key, anything else at its value (or the nearest ancestor).
pub fn locate(diagnostic: &mut Diagnostic, index: &PositionIndex) {
    if diagnostic.pos.is_some() {
        return;
    }
    let key = match diagnostic.code {
        Code::UnknownField | Code::UnknownInput => index.key(&diagnostic.path),
        _ => None,
    };
    diagnostic.pos = key.or_else(|| index.locate(&diagnostic.path));
}

/// `text` without a leading UTF-8 byte order mark. Windows editors
/// (Notepad, Excel's "CSV UTF-8") write one; serde_yaml takes it for the
/// start of a second document and refuses the whole file, and it is not
/// part of anything a person sees on the first line.
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Reads a definition from YAML text.
pub fn parse(text: &str) -> Parsed {
    let text = without_bom(text);
    let index = PositionIndex::build(text);
    let mut parsed = Parsed {
        definition: blank(),
        index,
        diagnostics: Vec::new(),
        broken_nodes: BTreeSet::new(),
        readable: false,
        origins: BTreeMap::new(),
        failed: BTreeSet::new(),
    };
    let value: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let mut message = syntax_message(&e);
            if message.contains("duplicate entry") {
                message.push_str(
                    " (inside `{...}`, a comma splits a text in two: put the text in quotes)",
                );
            }
            let duplicate = message
                .contains("duplicate entry")
                .then(|| parsed.index.first_duplicate())
                .flatten();
            let second = message
                .contains("more than one document")
                .then(|| parsed.index.second_document())
                .flatten();
            if second.is_some() {
                message.push_str(" (a `---` line starts another: one definition per file)");
            }
            let mut d = Diagnostic::new(Code::YamlSyntax, YamlPath::root(), message);
            d.pos = duplicate.or(second).or_else(|| {
                e.location().map(|l| crate::position::Pos {
                    line: l.line() as u32,
                    column: l.column() as u32,
                })
            });
            parsed.diagnostics.push(d);
            return parsed;
        }
    };
    let root = YamlPath::root();
    let Value::Mapping(map) = value else {
        parsed.diagnostics.push(Diagnostic::new(
            Code::InvalidValue,
            root,
            "a definition is a map with `code`, `name`, `version`, `owner_role`, `roles` and `nodes`",
        ));
        return parsed;
    };
    parsed.readable = true;
    let mut seen = BTreeSet::new();
    let diags = &mut parsed.diagnostics;
    let def = &mut parsed.definition;
    let origins = &mut parsed.origins;
    for (key, value) in map {
        let Some(key) = key.as_str().map(str::to_owned) else {
            diags.push(Diagnostic::new(
                Code::InvalidValue,
                root.clone(),
                "keys must be text",
            ));
            continue;
        };
        let path = root.key(&key);
        seen.insert(key.clone());
        let before = diags.len();
        match key.as_str() {
            "code" => set(&mut def.code, one::<String>(value, &path, diags)),
            "name" => set(&mut def.name, one::<Text>(value, &path, diags)),
            "version" => set(&mut def.version, one::<Numbering>(value, &path, diags)),
            "description" => def.description = one::<Option<Text>>(value, &path, diags).flatten(),
            "owner_role" => set(&mut def.owner_role, one::<String>(value, &path, diags)),
            "roles" => def.roles = list(value, &path, diags, origins.entry("roles").or_default()),
            "variables" => {
                def.variables = list(value, &path, diags, origins.entry("variables").or_default())
            }
            "links" => set(&mut def.links, one::<Links>(value, &path, diags)),
            "documents" => {
                def.documents = list(value, &path, diags, origins.entry("documents").or_default())
            }
            "indicators" => {
                def.indicators = list(
                    value,
                    &path,
                    diags,
                    origins.entry("indicators").or_default(),
                )
            }
            "nodes" => {
                let origin = origins.entry("nodes").or_default();
                def.nodes = nodes(value, &path, diags, &mut parsed.broken_nodes, origin);
            }
            other => diags.push(unknown_field(&root, other, &TOP_LEVEL)),
        }
        if diags.len() > before {
            parsed.failed.insert(key);
        }
    }
    for required in REQUIRED {
        if !seen.contains(required) {
            parsed.failed.insert(required.to_owned());
            parsed.diagnostics.push(Diagnostic::new(
                Code::MissingField,
                root.clone(),
                format!("missing field `{required}`"),
            ));
        }
    }
    parsed
}

/// An empty definition that sections fill in as they load.
fn blank() -> Definition {
    Definition {
        code: String::new(),
        name: Text {
            es: String::new(),
            en: None,
        },
        version: Numbering(String::new()),
        description: None,
        owner_role: String::new(),
        roles: Vec::new(),
        variables: Vec::new(),
        links: Links::default(),
        documents: Vec::new(),
        indicators: Vec::new(),
        nodes: Vec::new(),
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn syntax_message(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    // serde_yaml appends "at line L column C"; the position is reported apart.
    match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Deserializes one item. Every unknown field in it is reported, each
/// removed and the rest read again (serde stops at the first, and a
/// misspelt `lable`, `rol` and `nxt` in one node are three mistakes to fix
/// at once); after them, the first other problem.
fn one<T: DeserializeOwned>(
    value: Value,
    base: &YamlPath,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    read(value, base, diags, &[])
}

/// [`one`], where `also` are fields read apart (a node's `id`, `kind`,
/// `step`, `label`), named among the expected ones of an unknown field at
/// the item's own level.
fn read<T: DeserializeOwned>(
    mut value: Value,
    base: &YamlPath,
    diags: &mut Vec<Diagnostic>,
    also: &[&str],
) -> Option<T> {
    let mut unknown = false;
    // Where a field that was not known was dropped: a "missing field"
    // there is most likely the same mistake (`nombre` for `name`), not
    // another to fix.
    let mut misspelt: Vec<YamlPath> = Vec::new();
    // Each round removes a mapping's unknown fields, so a round per
    // mapping at most; a bound all the same.
    for _ in 0..256 {
        let e = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => return (!unknown).then_some(v),
            Err(e) => e,
        };
        let segments: Vec<serde_path_to_error::Segment> = e.path().iter().cloned().collect();
        let path = followed(base, &segments);
        let message = e.into_inner().to_string();
        if !message.starts_with("unknown field") {
            let same_mistake = message.starts_with("missing field") && misspelt.contains(&path);
            if !same_mistake {
                diags.push(serde_diagnostic(path, &message));
            }
            return None;
        }
        let words = backticked(&message);
        let field = words.first().copied().unwrap_or_default();
        let parent = match segments.split_last() {
            Some((serde_path_to_error::Segment::Map { key }, rest)) if key == field => rest,
            _ => segments.as_slice(),
        };
        let own: Vec<&str> = words.iter().skip(1).copied().collect();
        let mut expected = own.clone();
        if parent.is_empty() {
            expected.extend(also.iter().filter(|a| !words.contains(a)));
        }
        // Every unknown field of that mapping at once: serde would stop at
        // the first again, and a misspelt sibling deeper down (a "missing
        // field") would end the reading before the next was seen.
        let Some(removed) = remove_unknown(
            &mut value,
            parent,
            Known {
                field,
                own: &own,
                expected: &expected,
            },
        ) else {
            diags.push(serde_diagnostic(path, &message));
            return None;
        };
        let at = followed(base, parent);
        for key in &removed.keys {
            diags.push(unknown_field(&at, key, &expected));
        }
        // A key read again under the field it was close to (`rol` as
        // `role`) leaves nothing missing on its account: a field missing
        // there after it is another mistake, reported now.
        if removed.dropped {
            misspelt.push(at);
        }
        unknown = true;
    }
    None
}

/// `base` followed by serde's path into it.
fn followed(base: &YamlPath, segments: &[serde_path_to_error::Segment]) -> YamlPath {
    let mut path = base.clone();
    for segment in segments {
        match segment {
            serde_path_to_error::Segment::Seq { index } => path = path.index(*index),
            serde_path_to_error::Segment::Map { key } => path = path.key(key.clone()),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    path
}

/// What serde said a mapping may hold, and the field it stopped at.
#[derive(Clone, Copy)]
struct Known<'a> {
    /// The unknown field serde named (it must be a key of the mapping,
    /// else its message was misread: a key holding a backtick).
    field: &'a str,
    /// The mapping's own fields, which a misspelt key is read as.
    own: &'a [&'a str],
    /// Every field it may hold (its own, and those read apart).
    expected: &'a [&'a str],
}

/// Takes from the mapping at `at` inside `value` every key not expected,
/// returning them in their order: one close to a field of its own that is
/// not there (`rol` for `role`) is read as that field, so that what it
/// holds is still checked and its absence is no second mistake; any other
/// is removed. `None` where the path cannot be followed or serde's field
/// is not among the keys.
fn remove_unknown(
    value: &mut Value,
    at: &[serde_path_to_error::Segment],
    known: Known<'_>,
) -> Option<Removed> {
    let mut here = value;
    for segment in at {
        here = match (segment, here) {
            (serde_path_to_error::Segment::Map { key }, Value::Mapping(m)) => {
                m.get_mut(Value::String(key.clone()))?
            }
            (serde_path_to_error::Segment::Seq { index }, Value::Sequence(items)) => {
                items.get_mut(*index)?
            }
            _ => return None,
        };
    }
    let Value::Mapping(m) = here else {
        return None;
    };
    let keys: Vec<String> = m
        .keys()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if !keys.iter().any(|k| k == known.field) {
        return None;
    }
    let unknown: Vec<String> = keys
        .iter()
        .filter(|k| !known.expected.contains(&k.as_str()))
        .cloned()
        .collect();
    let mut dropped = false;
    for k in &unknown {
        let Some(v) = m.remove(Value::String(k.clone())) else {
            continue;
        };
        if let Some(meant) = did_you_mean(k, known.own.iter().copied())
            && !m.contains_key(Value::String(meant.to_owned()))
        {
            m.insert(Value::String(meant.to_owned()), v);
        } else {
            dropped = true;
        }
    }
    Some(Removed {
        keys: unknown,
        dropped,
    })
}

/// The unknown keys [`remove_unknown`] took out of a mapping.
struct Removed {
    keys: Vec<String>,
    /// Whether one of them was dropped, not read again under the field it
    /// was close to.
    dropped: bool,
}

/// Deserializes a list item by item, so that every broken item is reported.
fn list<T: DeserializeOwned>(
    value: Value,
    base: &YamlPath,
    diags: &mut Vec<Diagnostic>,
    origin: &mut Vec<usize>,
) -> Vec<T> {
    match value {
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let v = one(item, &base.index(i), diags)?;
                origin.push(i);
                Some(v)
            })
            .collect(),
        Value::Null => Vec::new(),
        _ => {
            diags.push(Diagnostic::new(
                Code::InvalidValue,
                base.clone(),
                "expected a list",
            ));
            Vec::new()
        }
    }
}

/// Words between backticks, in order: serde names fields and variants so.
fn backticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

fn serde_diagnostic(path: YamlPath, message: &str) -> Diagnostic {
    let words = backticked(message);
    if message.starts_with("unknown field") {
        let field = words.first().copied().unwrap_or_default();
        let expected = &words[1.min(words.len())..];
        let at = match path.segments().last() {
            Some(Segment::Key(k)) if k == field => path.clone(),
            _ => path.key(field),
        };
        let parent = at.parent().unwrap_or_default();
        return unknown_field(&parent, field, expected);
    }
    if message.starts_with("missing field") {
        let field = words.first().copied().unwrap_or_default();
        return Diagnostic::new(Code::MissingField, path, format!("missing field `{field}`"));
    }
    if message.starts_with("unknown variant") {
        let value = words.first().copied().unwrap_or_default();
        let expected = &words[1.min(words.len())..];
        let mut text = format!("`{value}` is not allowed here");
        if let Some(close) = did_you_mean(value, expected.iter().copied()) {
            text.push_str(&format!("; did you mean `{close}`?"));
        }
        text.push_str(&format!("; expected one of: {}", expected.join(", ")));
        return Diagnostic::new(Code::InvalidValue, path, text);
    }
    if message.starts_with("invalid type: enum") {
        // serde_yaml reads `!x` as a tag, which reaches a field as an enum:
        // in an expression it is usually a negation written unquoted.
        return Diagnostic::new(
            Code::InvalidValue,
            path,
            format!(
                "{message} (a value that starts with `!` is a YAML tag: put it in quotes, \
                 `\"!impedimento\"`)"
            ),
        );
    }
    Diagnostic::new(Code::InvalidValue, path, message.to_owned())
}

fn unknown_field(parent: &YamlPath, field: &str, expected: &[&str]) -> Diagnostic {
    let mut text = format!("unknown field `{field}`");
    if let Some(close) = did_you_mean(field, expected.iter().copied()) {
        text.push_str(&format!("; did you mean `{close}`?"));
    }
    if !expected.is_empty() {
        text.push_str(&format!("; expected one of: {}", expected.join(", ")));
    }
    if field.contains(' ') {
        text.push_str(" (a comma inside `{...}` splits a text in two: put the text in quotes)");
    }
    Diagnostic::new(Code::UnknownField, parent.key(field), text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    id: String,
    step: Option<Numbering>,
    label: Option<Text>,
}

fn nodes(
    value: Value,
    base: &YamlPath,
    diags: &mut Vec<Diagnostic>,
    broken: &mut BTreeSet<String>,
    origin: &mut Vec<usize>,
) -> Vec<Node> {
    let items = match value {
        Value::Sequence(items) => items,
        _ => {
            diags.push(Diagnostic::new(
                Code::InvalidValue,
                base.clone(),
                "`nodes` is a list of nodes",
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = base.index(i);
        // The id alone, so that a node broken elsewhere can still be named.
        let id = item.get("id").and_then(Value::as_str).map(str::to_owned);
        match node(item, &path, diags) {
            Some(n) => {
                out.push(n);
                origin.push(i);
            }
            None => broken.extend(id),
        }
    }
    out
}

/// Reads one node: the common fields, then its kind's fields directly (not
/// through serde's buffered tagged enums, which lose the field's line).
fn node(item: Value, path: &YamlPath, diags: &mut Vec<Diagnostic>) -> Option<Node> {
    let Value::Mapping(map) = item else {
        diags.push(Diagnostic::new(
            Code::InvalidValue,
            path.clone(),
            "a node is a map with `id`, `kind` and the fields of its kind",
        ));
        return None;
    };
    let mut common = Mapping::new();
    let mut rest = Mapping::new();
    let mut kind = None;
    for (k, v) in map {
        match k.as_str() {
            Some("kind") => kind = Some(v),
            Some(name) if NODE_COMMON.contains(&name) => {
                common.insert(k, v);
            }
            _ => {
                rest.insert(k, v);
            }
        }
    }
    let header: Option<Header> = one(Value::Mapping(common), path, diags);
    let kind_path = path.key("kind");
    let kind_name = match kind {
        None => {
            diags.push(Diagnostic::new(
                Code::MissingField,
                path.clone(),
                format!(
                    "missing field `kind` (one of: {})",
                    NodeKind::NAMES.join(", ")
                ),
            ));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            diags.push(Diagnostic::new(
                Code::InvalidValue,
                kind_path.clone(),
                "`kind` must be text",
            ));
            None
        }
    };
    let rest = Value::Mapping(rest);
    let kind = match kind_name.as_deref() {
        None => None,
        Some("start") => read::<Start>(rest, path, diags, &NODE_COMMON).map(NodeKind::Start),
        Some("user_task") => {
            read::<UserTask>(rest, path, diags, &NODE_COMMON).map(NodeKind::UserTask)
        }
        Some("service_task") => {
            read::<ServiceTask>(rest, path, diags, &NODE_COMMON).map(NodeKind::ServiceTask)
        }
        Some("exclusive_gate") => {
            read::<ExclusiveGate>(rest, path, diags, &NODE_COMMON).map(NodeKind::ExclusiveGate)
        }
        Some("fork") => read::<Fork>(rest, path, diags, &NODE_COMMON).map(NodeKind::Fork),
        Some("join") => read::<Join>(rest, path, diags, &NODE_COMMON).map(NodeKind::Join),
        Some("message_wait") => {
            read::<MessageWait>(rest, path, diags, &NODE_COMMON).map(NodeKind::MessageWait)
        }
        Some("timer_wait") => {
            read::<TimerWait>(rest, path, diags, &NODE_COMMON).map(NodeKind::TimerWait)
        }
        Some("call") => read::<Call>(rest, path, diags, &NODE_COMMON).map(NodeKind::Call),
        Some("end") => read::<End>(rest, path, diags, &NODE_COMMON).map(NodeKind::End),
        Some(other) => {
            let mut text = format!("unknown node kind `{other}`");
            if let Some(close) = did_you_mean(other, NodeKind::NAMES) {
                text.push_str(&format!("; did you mean `{close}`?"));
            }
            text.push_str(&format!(
                "; expected one of: {}",
                NodeKind::NAMES.join(", ")
            ));
            diags.push(Diagnostic::new(Code::InvalidValue, kind_path, text));
            None
        }
    };
    let (header, kind) = (header?, kind?);
    Some(Node {
        id: header.id,
        step: header.step,
        label: header.label,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Pos;

    fn at(d: &Diagnostic) -> (Code, u32, u32) {
        let Pos { line, column } = d.pos.expect("position");
        (d.code, line, column)
    }

    fn located(text: &str) -> Vec<Diagnostic> {
        let parsed = parse(text);
        parsed
            .diagnostics
            .into_iter()
            .map(|mut d| {
                locate(&mut d, &parsed.index);
                d
            })
            .collect()
    }

    const HEAD: &str = "code: X\nname: X\nversion: 1\nowner_role: r\nroles: [{id: r, name: R}]\n";

    #[test]
    fn wrong_field_inside_a_node_gets_its_own_line() {
        let text =
            format!("{HEAD}nodes:\n  - id: a\n    kind: user_task\n    rol: r\n    outcomes: []\n");
        let d = located(&text);
        // `rol` is read as the `role` it stands for: no "missing field"
        // beside it.
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(at(&d[0]), (Code::UnknownField, 9, 5));
        assert!(
            d[0].message.contains("did you mean `role`?"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn every_broken_node_is_reported() {
        let text = format!(
            "{HEAD}nodes:\n  - id: a\n    kind: usertask\n  - id: b\n    kind: end\n    outcome: [x]\n  - kind: end\n    outcome: z\n"
        );
        let d = located(&text);
        let got: Vec<_> = d.iter().map(at).collect();
        assert_eq!(
            got,
            vec![
                (Code::InvalidValue, 8, 11),
                (Code::InvalidValue, 11, 14),
                (Code::MissingField, 12, 5),
            ]
        );
        assert!(d[0].message.contains("did you mean `user_task`?"));
    }

    /// A file saved by Notepad starts with a byte order mark: it reads as
    /// the same definition, its mistakes at the lines and columns a person
    /// sees (the mark is invisible), not "more than one document".
    #[test]
    fn a_byte_order_mark_is_not_part_of_the_definition() {
        let text = format!(
            "\u{feff}cde: X\n{}nodes:\n  - id: a\n    kind: user_task\n    rol: r\n    outcomes: []\n",
            &HEAD["code: X\n".len()..]
        );
        let d = located(&text);
        let got: Vec<_> = d.iter().map(at).collect();
        assert!(got.contains(&(Code::UnknownField, 1, 1)), "{d:?}");
        assert!(got.contains(&(Code::UnknownField, 9, 5)), "{d:?}");
        assert!(d.iter().all(|d| d.code != Code::YamlSyntax), "{d:?}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let d = located("code: [unclosed\nname: x\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].code, Code::YamlSyntax);
        assert!(d[0].pos.is_some());
    }

    #[test]
    fn unknown_and_missing_top_level_fields() {
        let d = located("code: X\nnmae: y\n");
        let codes: Vec<_> = d.iter().map(|d| d.code).collect();
        assert!(codes.contains(&Code::UnknownField));
        assert_eq!(at(&d[0]), (Code::UnknownField, 2, 1));
        assert!(d[0].message.contains("did you mean `name`?"));
        assert_eq!(
            codes.iter().filter(|c| **c == Code::MissingField).count(),
            5
        );
    }
}
