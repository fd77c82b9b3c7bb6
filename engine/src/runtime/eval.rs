//! Evaluating CEL expressions against an instance's data.

use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

use crate::expr::{Expr, Form};

/// The standard CEL environment, built once: building it registers every
/// function and is far too slow to do per evaluation.
static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// Whether the environment expressions run in declares a function (global
/// or member) called `name`. CEL offers no look-up by name alone; declaring
/// one of that name on a throwaway context is refused exactly when the
/// environment has one.
pub(crate) fn declares_function(name: &str) -> bool {
    cel::Context::with_env(Arc::clone(&ENV))
        .add_function(name, |a: i64| a)
        .is_err()
}

/// Functions a process owner may mean, for "did you mean" (each is checked
/// to be declared by a test).
pub(crate) const COMMON_FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "type",
    "dyn",
    "timestamp",
    "duration",
    "getFullYear",
    "getMonth",
    "getDayOfMonth",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
];

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// It did not compile (validation prevents this for deployed definitions).
    #[error("`{expression}` does not compile")]
    Compile {
        /// The expression.
        expression: String,
    },
    /// CEL refused to evaluate it with these values.
    #[error("`{expression}` failed: {reason}")]
    Execution {
        /// The expression.
        expression: String,
        /// CEL's reason.
        reason: String,
    },
    /// It gave text with the NUL character (U+0000), which PostgreSQL's
    /// text cannot hold (a connector's answer, a `"\x00"` literal).
    #[error("`{expression}` gave text with the NUL character (U+0000)")]
    NulCharacter {
        /// The expression.
        expression: String,
    },
    /// A mapping gave a value that does not fit the variable it writes (a
    /// system answering `"7"` where an integer is declared, `2.5` into an
    /// `integer`): stored, it would break every step that reads it.
    #[error("`{expression}` gave {value}, which does not fit `{variable}` (declared `{declared}`)")]
    WrongType {
        /// The expression.
        expression: String,
        /// The variable it writes.
        variable: String,
        /// The variable's declared type.
        declared: crate::definition::VarType,
        /// What it gave.
        value: Value,
    },
    /// A condition gave something other than true or false.
    #[error("`{expression}` gave {value} where true or false was expected")]
    NotBoolean {
        /// The expression.
        expression: String,
        /// What it gave.
        value: Value,
    },
}

/// What an expression can read.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// The instance's variables; a declared variable not yet written reads as null.
    pub variables: &'a Map<String, Value>,
    /// Names of declared variables.
    pub declared: &'a dyn Fn(&str) -> bool,
    /// `instance`: id, business_key, channel, started_at.
    pub instance: &'a Value,
    /// One more name where it applies: `result`, `error`, `message`, `output`.
    pub extra: Option<(&'a str, &'a Value)>,
}

/// Evaluates `expr` to a JSON value.
///
/// A constant, or a path whose every step is there, is read directly (see
/// [`Form`]); anything else, including a path that CEL would refuse, runs in
/// CEL, so the result and the error are CEL's either way.
pub fn eval(expr: &Expr, scope: &Scope<'_>) -> Result<Value, EvalError> {
    match expr.form() {
        Form::Constant(value) => return Ok(value.clone()),
        Form::Path { root, fields } => {
            let found = lookup(root, scope).and_then(|value| {
                fields
                    .iter()
                    .try_fold(value, |at, field| at.as_object()?.get(field))
            });
            if let Some(value) = found {
                return Ok(value.clone());
            }
        }
        Form::General => {}
    }
    eval_cel(expr, scope)
}

/// The value `name` stands for in `scope`, if it stands for one.
fn lookup<'a>(name: &str, scope: &Scope<'a>) -> Option<&'a Value> {
    match scope.extra {
        Some((extra, value)) if extra == name => Some(value),
        _ if name == "instance" => Some(scope.instance),
        _ if (scope.declared)(name) => Some(scope.variables.get(name).unwrap_or(&Value::Null)),
        _ => None,
    }
}

/// Evaluates `expr` in CEL.
fn eval_cel(expr: &Expr, scope: &Scope<'_>) -> Result<Value, EvalError> {
    let program = expr.program().map_err(|_| EvalError::Compile {
        expression: expr.source().to_owned(),
    })?;
    let mut context = cel::Context::with_env(Arc::clone(&ENV));
    let fail = |reason: String| EvalError::Execution {
        expression: expr.source().to_owned(),
        reason,
    };
    for read in expr.reads() {
        let name = read.root.as_str();
        if let Some(value) = lookup(name, scope) {
            context.add_variable_from_value(name, to_cel(value));
        }
    }
    let value = program.execute(&context).map_err(|e| fail(e.to_string()))?;
    value.json().map_err(|e| fail(e.to_string()))
}

/// JSON to CEL. Every JSON integer becomes a CEL `int` (serde's route would
/// make positive ones `uint`, and CEL refuses `uint * int`).
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => cel::Value::from(
            map.iter()
                .map(|(k, v)| (k.clone(), to_cel(v)))
                .collect::<std::collections::HashMap<String, cel::Value>>(),
        ),
    }
}

/// A JSON number as text, a whole one without `.0`: `5` and `5.0` both give
/// `5` (a system's answer or a CEL division may give either), `5.5` stays.
pub fn whole_number_text(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if n.as_i64().is_none() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
            format!("{}", f as i64)
        }
        _ => n.to_string(),
    }
}

/// Evaluates a condition.
pub fn condition(expr: &Expr, scope: &Scope<'_>) -> Result<bool, EvalError> {
    match eval(expr, scope)? {
        Value::Bool(b) => Ok(b),
        value => Err(EvalError::NotBoolean {
            expression: expr.source().to_owned(),
            value,
        }),
    }
}

/// Evaluates every expression of a mapping into an object.
pub fn mapping(
    mapping: &crate::definition::Mapping,
    scope: &Scope<'_>,
) -> Result<Map<String, Value>, EvalError> {
    mapping
        .iter()
        .map(|(k, e)| {
            let value = eval(e, scope)?;
            // Stored, it would break every later `::jsonb` read of the row.
            if holds_nul(&value) {
                return Err(EvalError::NulCharacter {
                    expression: e.source().to_owned(),
                });
            }
            Ok((k.clone(), value))
        })
        .collect()
}

/// Whether any text in `value` (a string, an object's key) holds U+0000.
pub fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn the_functions_suggested_are_declared_and_a_misspelt_one_is_not() {
        for name in COMMON_FUNCTIONS {
            assert!(declares_function(name), "{name}");
        }
        for name in ["lenght", "lowerAscii", "trim", "optional.of"] {
            assert_eq!(declares_function(name), name == "optional.of", "{name}");
        }
        let undeclared = |source: &str| {
            Expr::compile(source)
                .undeclared_functions(declares_function)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            undeclared("lenght(zona) > 2 && [zona.lowerAscii()].all(z, size(z) > 0)"),
            ["lenght", "lowerAscii"]
        );
        assert!(
            undeclared("optional.of(1).hasValue() && zona.startsWith('C') && 1 in [1] ? -1 : 2")
                .is_empty()
        );
    }

    fn run(source: &str, vars: &Value) -> Result<Value, EvalError> {
        let variables = vars.as_object().unwrap().clone();
        let instance = json!({"channel": "ivr", "business_key": "BK-1"});
        let declared = |n: &str| ["a", "b", "lista", "nulo"].contains(&n);
        eval(
            &Expr::compile(source),
            &Scope {
                variables: &variables,
                declared: &declared,
                instance: &instance,
                extra: Some(("result", &json!({"ok": true, "n": 7}))),
            },
        )
    }

    /// A mapping whose value holds a NUL (from a result, from a literal) is
    /// refused, whatever the depth; the rest of the text is fine.
    #[test]
    fn a_mapping_that_gives_a_nul_is_refused() {
        let variables = Map::new();
        let instance = json!({"channel": "ivr"});
        let declared = |_: &str| true;
        let result =
            json!({"nombre": "Ana\u{0}", "datos": {"lista": ["ok", {"c\u{0}": 1}]}, "ok": "bien"});
        let scope = Scope {
            variables: &variables,
            declared: &declared,
            instance: &instance,
            extra: Some(("result", &result)),
        };
        for source in ["result.nombre", "result.datos", "'a\\x00b'"] {
            let m: crate::definition::Mapping = [("v".to_owned(), Expr::compile(source))]
                .into_iter()
                .collect();
            assert_eq!(
                mapping(&m, &scope),
                Err(EvalError::NulCharacter {
                    expression: source.to_owned()
                }),
                "{source}"
            );
        }
        let m: crate::definition::Mapping = [("v".to_owned(), Expr::compile("result.ok"))]
            .into_iter()
            .collect();
        assert_eq!(mapping(&m, &scope).unwrap()["v"], json!("bien"));
    }

    #[test]
    fn reads_variables_instance_and_extra() {
        let vars = json!({"a": 2, "b": "x", "lista": ["p", "q"]});
        assert_eq!(run("a * 3", &vars), Ok(json!(6)));
        assert_eq!(run("instance.channel == 'ivr'", &vars), Ok(json!(true)));
        assert_eq!(run("result.n + a", &vars), Ok(json!(9)));
        assert_eq!(run("size(lista) > 1 ? lista[0] : b", &vars), Ok(json!("p")));
        assert_eq!(run("nulo == null", &vars), Ok(json!(true)));
        assert_eq!(run("result.ok && a >= 2", &vars), Ok(json!(true)));
    }

    /// Any JSON value, a few levels deep, with keys a path may select.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[xyz]", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// A path or a constant read directly gives what CEL gives, error
        /// included, whatever the data.
        #[test]
        fn direct_reads_agree_with_cel(
            a in json_value(),
            result in json_value(),
            channel in json_value(),
            root in prop::sample::select(vec!["a", "nulo", "unset", "undeclared", "instance", "result"]),
            fields in prop::collection::vec(prop::sample::select(vec!["x", "y", "z", "channel"]), 0..4),
        ) {
            let mut variables = Map::new();
            variables.insert("a".to_owned(), a);
            variables.insert("nulo".to_owned(), Value::Null);
            let instance = json!({"channel": channel, "business_key": "BK-1"});
            let declared = |n: &str| ["a", "nulo", "unset"].contains(&n);
            let scope = Scope {
                variables: &variables,
                declared: &declared,
                instance: &instance,
                extra: Some(("result", &result)),
            };
            let source = std::iter::once(root).chain(fields).collect::<Vec<_>>().join(".");
            let expr = Expr::compile(&source);
            prop_assert!(matches!(expr.form(), Form::Path { .. }), "{source}");
            prop_assert_eq!(eval(&expr, &scope), eval_cel(&expr, &scope), "{}", source);
        }

        #[test]
        fn constants_agree_with_cel(
            source in prop_oneof![
                any::<i64>().prop_map(|i| i.to_string()),
                "[a-zA-Z0-9_ áñ]{0,8}".prop_map(|s| format!("'{s}'")),
                Just("true".to_owned()),
                Just("false".to_owned()),
                Just("null".to_owned()),
            ],
        ) {
            let variables = Map::new();
            let declared = |_: &str| false;
            let scope = Scope {
                variables: &variables,
                declared: &declared,
                instance: &Value::Null,
                extra: None,
            };
            let expr = Expr::compile(&source);
            prop_assert!(matches!(expr.form(), Form::Constant(_)), "{source}");
            prop_assert_eq!(eval(&expr, &scope), eval_cel(&expr, &scope), "{}", source);
        }
    }

    #[test]
    fn runtime_failures_are_typed() {
        let err = run("a + b", &json!({"a": 1, "b": "x"})).unwrap_err();
        assert!(matches!(err, EvalError::Execution { .. }), "{err:?}");
        let declared = |_: &str| true;
        let variables = Map::new();
        let err = condition(
            &Expr::compile("a"),
            &Scope {
                variables: &variables,
                declared: &declared,
                instance: &Value::Null,
                extra: None,
            },
        )
        .unwrap_err();
        assert!(matches!(err, EvalError::NotBoolean { .. }));
    }
}
