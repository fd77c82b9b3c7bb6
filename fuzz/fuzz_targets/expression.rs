//! Any expression, compiled and evaluated over any variables, gives a value
//! or a typed error: never a panic, never a hang. The input's first line is
//! the expression; the rest, if it is a JSON object, the variables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tramite_engine::expr::Expr;
use tramite_engine::runtime::eval::{Scope, eval};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, rest) = text.split_once('\n').unwrap_or((text, "{}"));
    let expr = Expr::compile(source);
    let variables: Map<String, Value> = serde_json::from_str(rest).unwrap_or_default();
    let instance = json!({"id": "i-1", "channel": "ivr", "business_key": "k", "started_at": 0});
    let declared = |_: &str| true;
    let scope = Scope {
        variables: &variables,
        declared: &declared,
        instance: &instance,
        extra: None,
    };
    let _ = eval(&expr, &scope);
});
