//! Any text given to the loader and validator ends in a definition or in
//! diagnostics: never a panic, never a hang.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tramite_engine::catalog::Catalog;
use tramite_engine::validate::{Context, compile};

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(tramite_connectors::catalog)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let procedures = BTreeMap::new();
        let ctx = Context {
            catalog: catalog(),
            procedures: &procedures,
        };
        let _ = compile("fuzz.yaml", text, &ctx);
    }
});
