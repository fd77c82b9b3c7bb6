//! Any text given to the loader and validator ends in a definition or in
//! diagnostics: never a panic, never a hang. A definition that passes is
//! also compiled for running (its forms) and drawn (Mermaid and DOT), as a
//! deploy and the web pages would; its `call` nodes resolve against the
//! shipped procedures, so the checks of a call's input and output run too.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tramite_engine::catalog::Catalog;
use tramite_engine::diagram::{Format, render};
use tramite_engine::library::{SourceFile, interfaces};
use tramite_engine::runtime::process::Process;
use tramite_engine::text::Lang;
use tramite_engine::validate::{Context, ProcedureInterface, compile};

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(tramite_connectors::catalog)
}

/// The shipped procedures' interfaces: what a fuzzed `call` resolves to.
fn procedures() -> &'static BTreeMap<String, ProcedureInterface> {
    static PROCEDURES: OnceLock<BTreeMap<String, ProcedureInterface>> = OnceLock::new();
    PROCEDURES.get_or_init(|| {
        let shipped = [
            include_str!("../../processes/ope-sum-ven-p06.yaml"),
            include_str!("../../processes/opr-pas-p02.yaml"),
            include_str!("../../processes/com-gcm-p01.yaml"),
        ];
        let files: Vec<SourceFile> = shipped
            .iter()
            .map(|text| SourceFile {
                path: "shipped.yaml".into(),
                text: (*text).to_owned(),
            })
            .collect();
        interfaces(&files)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let ctx = Context {
            catalog: catalog(),
            procedures: procedures(),
        };
        if let Ok(compiled) = compile("fuzz.yaml", text, &ctx) {
            for (format, lang) in [(Format::Mermaid, Lang::Es), (Format::Dot, Lang::En)] {
                let _ = render(&compiled.definition, format, lang);
            }
            let _ = Process::new(1, 1, compiled.definition);
        }
    }
});
