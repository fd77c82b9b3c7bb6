//! A set of definition files validated together, so that a `call` node can
//! be checked against the procedure it names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::catalog::Catalog;
use crate::diagnostic::{Code, Diagnostic, Diagnostics};
use crate::loader;
use crate::position::YamlPath;
use crate::validate::{self, Compiled, Context, ProcedureInterface};

/// One definition file and its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user gave it (used in messages).
    pub path: PathBuf,
    /// Its content.
    pub text: String,
}

/// Whether `path` looks like a definition file.
fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Reads the files named, and the YAML files directly inside the folders
/// named (not their subfolders, where scenarios and other YAML live).
pub fn read(paths: &[PathBuf]) -> Result<Vec<SourceFile>, Error> {
    list(paths)?.into_iter().map(read_file).collect()
}

/// The files [`read`] reads, in order, without reading them.
pub fn list(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            let mut inside: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_yaml(p))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    // The same file named twice (`processes/` and `processes/x.yaml`) is read once.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.canonicalize().unwrap_or_else(|_| f.clone())));
    Ok(files)
}

/// Reads one file, which must be UTF-8.
pub fn read_file(path: PathBuf) -> Result<SourceFile, Error> {
    let bytes = std::fs::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let valid = std::str::from_utf8(valid).unwrap_or_default();
        let line = valid.matches('\n').count() + 1;
        let column = valid
            .rsplit('\n')
            .next()
            .unwrap_or_default()
            .chars()
            .count()
            + 1;
        Error::NotUtf8 {
            path: path.clone(),
            line,
            column,
        }
    })?;
    // Notepad and Excel save UTF-8 with a byte order mark; YAML read with it
    // fails as "more than one document".
    let text = match crate::loader::without_bom(&text) {
        rest if rest.len() == text.len() => text,
        rest => rest.to_owned(),
    };
    Ok(SourceFile { path, text })
}

/// The definition files beside `files` (same folders), for resolving calls.
pub fn neighbours(files: &[SourceFile]) -> Result<Vec<SourceFile>, Error> {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|f| match f.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    // Neighbours only resolve calls: one that cannot be read (a backup in
    // another encoding) is left out rather than stopping the check.
    let mut out: Vec<SourceFile> = list(&dirs)?
        .into_iter()
        .filter_map(|p| read_file(p).ok())
        .collect();
    out.retain(|n| !files.iter().any(|f| same_file(&f.path, &n.path)));
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The interfaces of every definition that parses, by code.
pub fn interfaces<'a>(
    files: impl IntoIterator<Item = &'a SourceFile>,
) -> BTreeMap<String, ProcedureInterface> {
    let mut out = BTreeMap::new();
    for f in files {
        let parsed = loader::parse(&f.text);
        let starts = parsed
            .definition
            .nodes
            .iter()
            .any(|n| matches!(n.kind, crate::definition::NodeKind::Start(_)));
        let complete = parsed.readable
            && parsed.section_complete("variables")
            && (starts || parsed.section_complete("nodes"));
        let code = if parsed.definition.code.is_empty() {
            // A file that is not YAML still says which procedure it is.
            match declared_code(&f.text) {
                Some(code) => code,
                None => continue,
            }
        } else {
            parsed.definition.code.clone()
        };
        // The first file of a code, unless a later one loads whole where
        // it did not (a broken draft beside the real file).
        let kept = out
            .get(&code)
            .is_some_and(|p: &ProcedureInterface| p.complete || !complete);
        if !kept {
            out.insert(
                code,
                ProcedureInterface {
                    complete,
                    ..ProcedureInterface::of(&parsed.definition)
                },
            );
        }
    }
    out
}

/// The value of a top-level `code:` line, read from the text alone.
fn declared_code(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix("code:")?.split(" #").next()?.trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// Validates `files` together, `context` files only resolving calls.
/// Returns each file's result in order.
pub fn compile(
    files: &[SourceFile],
    context: &[SourceFile],
    catalog: &Catalog,
) -> Vec<(PathBuf, Result<Compiled, Diagnostics>)> {
    let procedures = interfaces(files.iter().chain(context));
    let ctx = Context {
        catalog,
        procedures: &procedures,
    };
    let mut codes: BTreeMap<String, PathBuf> = BTreeMap::new();
    files
        .iter()
        .map(|f| {
            let name = f.path.display().to_string();
            let mut result = validate::compile(&name, &f.text, &ctx);
            if let Ok(compiled) = &result {
                let code = compiled.definition.code.clone();
                if let Some(first) = codes.get(&code) {
                    let mut d = Diagnostic::new(
                        Code::DuplicateId,
                        YamlPath::root().key("code"),
                        format!("procedure `{code}` is also defined in {}", first.display()),
                    );
                    loader::locate(&mut d, &compiled.index);
                    result = Err(Diagnostics {
                        file: name,
                        items: vec![d],
                    });
                } else {
                    codes.insert(code, f.path.clone());
                }
            }
            (f.path.clone(), result)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_not_in_utf8_is_named_with_its_first_bad_byte() {
        let dir = std::env::temp_dir().join(format!("tramite-latin1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.yaml");
        // "Señal" saved in Windows-1252: ñ is the single byte 0xF1.
        std::fs::write(&path, b"code: X\nname: Se\xf1al\n").unwrap();
        let err = read(std::slice::from_ref(&dir)).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        match &err {
            Error::NotUtf8 { line, column, .. } => assert_eq!((*line, *column), (2, 9)),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().ends_with("p.yaml:2:9: the file is not UTF-8 (saved as Windows-1252 or Latin-1?); save it as UTF-8"), "{err}");
    }
}
