//! Where each part of a YAML text is: a path → line:column index.
//!
//! serde gives no positions for semantic errors (an unknown node named in
//! `next`), and inside buffered values it gives only the enclosing node's
//! line. So the loader parses the same text a second time for its marks and
//! every diagnostic is located through its YAML path.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// A key of a mapping.
    Key(String),
    /// An index in a sequence, from 0.
    Index(usize),
}

/// A path into a YAML document, e.g. `nodes[3].outcomes[0].next`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct YamlPath(Vec<Segment>);

impl YamlPath {
    /// The whole document.
    pub fn root() -> YamlPath {
        YamlPath(Vec::new())
    }

    /// This path followed by a mapping key.
    pub fn key(&self, key: impl Into<String>) -> YamlPath {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.into()));
        YamlPath(segments)
    }

    /// This path followed by a sequence index.
    pub fn index(&self, index: usize) -> YamlPath {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        YamlPath(segments)
    }

    /// The path one step up, if any.
    pub fn parent(&self) -> Option<YamlPath> {
        let (_, rest) = self.0.split_last()?;
        Some(YamlPath(rest.to_vec()))
    }

    /// The segments from the root.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A position in a text, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Positions of every value and key of a YAML document, by path.
#[derive(Debug, Default, Clone)]
pub struct PositionIndex {
    values: HashMap<YamlPath, Pos>,
    keys: HashMap<YamlPath, Pos>,
    /// The first key written a second time in its mapping.
    duplicate: Option<Pos>,
    /// Where a second document starts (a stray `---`): serde_yaml says
    /// there is one, but not where.
    second_document: Option<Pos>,
}

impl PositionIndex {
    /// Indexes `text`. A text that does not parse gives an index with what
    /// was read before the error (syntax errors are reported by the loader).
    pub fn build(text: &str) -> PositionIndex {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // Events one by one rather than `Parser::load`, which recurses once
        // per nesting level (a few KB of `- - - …` would overflow the
        // stack); past serde_yaml's own limit the loader reports the
        // nesting itself, so the index stops there. A parse error leaves
        // the positions found so far; good enough.
        while let Ok((event, mark)) = parser.next_token() {
            if event == Event::DocumentEnd {
                if let Ok((Event::DocumentStart, mark)) = parser.next_token() {
                    builder.index.second_document = Some(pos(mark));
                }
                break;
            }
            if event == Event::StreamEnd || builder.stack.len() > MAX_DEPTH {
                break;
            }
            builder.on_event(event, mark);
        }
        builder.index
    }

    /// Where the value at `path` starts.
    pub fn value(&self, path: &YamlPath) -> Option<Pos> {
        self.values.get(path).copied()
    }

    /// Where the first key repeated within its mapping is (serde_yaml
    /// reports a duplicate at the mapping's start, which may be far above).
    pub fn first_duplicate(&self) -> Option<Pos> {
        self.duplicate
    }

    /// Where a second document starts, if the text holds one.
    pub fn second_document(&self) -> Option<Pos> {
        self.second_document
    }

    /// Where the key of the entry at `path` is.
    pub fn key(&self, path: &YamlPath) -> Option<Pos> {
        self.keys.get(path).copied()
    }

    /// The best position for a message about `path`: its value, else its key,
    /// else the nearest ancestor's.
    pub fn locate(&self, path: &YamlPath) -> Option<Pos> {
        let mut current = Some(path.clone());
        while let Some(p) = current {
            if let Some(pos) = self.value(&p).or_else(|| self.key(&p)) {
                return Some(pos);
            }
            current = p.parent();
        }
        None
    }
}

enum Frame {
    Map {
        path: YamlPath,
        key: Option<String>,
        located: bool,
    },
    Seq {
        path: YamlPath,
        next: usize,
    },
}

/// Nesting indexed at most: serde_yaml refuses deeper documents.
const MAX_DEPTH: usize = 128;

#[derive(Default)]
struct Builder {
    index: PositionIndex,
    stack: Vec<Frame>,
}

fn pos(mark: Marker) -> Pos {
    Pos {
        line: mark.line() as u32,
        column: mark.col() as u32 + 1,
    }
}

impl Builder {
    /// The path of the node that starts now, or `None` when it is a key
    /// (recorded here).
    fn node_path(&mut self, event: &Event, at: Pos) -> Option<YamlPath> {
        match self.stack.last_mut() {
            None => Some(YamlPath::root()),
            Some(Frame::Seq { path, next }) => {
                let p = path.index(*next);
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key, located }) => match key.take() {
                Some(k) => Some(path.key(k)),
                None => {
                    let name = match event {
                        Event::Scalar(s, ..) => s.clone(),
                        _ => String::from("?"),
                    };
                    let key_path = path.key(name.clone());
                    // Block mappings are marked after their first key; the
                    // first key is the better place for the mapping itself.
                    if !*located {
                        self.index.values.insert(path.clone(), at);
                        *located = true;
                    }
                    if self.index.keys.insert(key_path, at).is_some() {
                        self.index.duplicate.get_or_insert(at);
                    }
                    *key = Some(name);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let at = pos(mark);
        match &event {
            Event::Scalar(..) | Event::Alias(_) => {
                if let Some(path) = self.node_path(&event, at) {
                    self.index.values.insert(path, at);
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.node_path(&event, at) {
                    self.index.values.insert(path.clone(), at);
                    self.stack.push(Frame::Seq { path, next: 0 });
                }
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.node_path(&event, at) {
                    self.stack.push(Frame::Map {
                        path,
                        key: None,
                        located: false,
                    });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(Frame::Map {
                    path,
                    located: false,
                    ..
                }) = self.stack.pop()
                {
                    self.index.values.entry(path).or_insert(at);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_indexed_to_a_limit_without_recursion() {
        // 200,000 levels in 400 KB: `Parser::load` overflowed the stack here.
        let text = format!("{}x", "- ".repeat(200_000));
        let index = PositionIndex::build(&text);
        let mut deep = YamlPath::root();
        for _ in 0..MAX_DEPTH {
            deep = deep.index(0);
        }
        assert!(index.value(&deep).is_some(), "indexed down to the limit");
        assert!(index.value(&deep.index(0).index(0)).is_none());
        let diagnostics = crate::loader::parse(&text).diagnostics;
        assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
        assert_eq!(diagnostics[0].code, crate::diagnostic::Code::YamlSyntax);
    }

    #[test]
    fn indexes_keys_values_and_sequence_items() {
        let text = "code: X\nnodes:\n  - id: a\n    kind: end\n  - id: b\n    next: [c, d]\n";
        let index = PositionIndex::build(text);
        let nodes = YamlPath::root().key("nodes");
        let p = |line, column| Some(Pos { line, column });
        assert_eq!(index.value(&YamlPath::root().key("code")), p(1, 7));
        assert_eq!(index.key(&nodes), p(2, 1));
        assert_eq!(index.value(&nodes.index(0)), p(3, 5));
        assert_eq!(index.value(&nodes.index(1).key("id")), p(5, 9));
        assert_eq!(index.key(&nodes.index(0).key("kind")), p(4, 5));
        assert_eq!(index.value(&nodes.index(1).key("next").index(1)), p(6, 15));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(index.locate(&nodes.index(1).key("missing")), p(5, 5));
        assert_eq!(nodes.index(1).key("next").to_string(), "nodes[1].next");
    }
}
