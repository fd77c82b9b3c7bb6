//! Any expression, compiled and evaluated over any variables, gives a value
//! or a typed error: never a panic, never a hang. The input's first line is
//! the expression; the rest, if it is a JSON object, the variables (the
//! names it holds are the declared ones, so reading an undeclared name is
//! reached too). Each expression is also evaluated as a gate's condition
//! and as a mapping, the two ways the engine uses one.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tramite_engine::expr::Expr;
use tramite_engine::runtime::eval::{Scope, condition, eval, mapping};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, rest) = text.split_once('\n').unwrap_or((text, "{}"));
    let expr = Expr::compile(source);
    let variables: Map<String, Value> = serde_json::from_str(rest).unwrap_or_default();
    let instance = json!({"id": "i-1", "channel": "ivr", "business_key": "k", "started_at": 0});
    let declared = |name: &str| variables.contains_key(name) || name == "telefono";
    let scope = Scope {
        variables: &variables,
        declared: &declared,
        instance: &instance,
        extra: Some(("message", &instance)),
    };
    let _ = eval(&expr, &scope);
    let _ = condition(&expr, &scope);
    let one: BTreeMap<String, Expr> = [("x".to_owned(), expr)].into_iter().collect();
    let _ = mapping(&one, &scope);
});
