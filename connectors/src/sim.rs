//! What the three simulators share: the call harness (count, faults,
//! latency), reading inputs, folding names for comparison and writing
//! timestamps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tramite_engine::runtime::connector::ConnectorError;

use crate::faults::Faults;

/// An operation's answer.
pub(crate) type Answer = Result<Map<String, Value>, ConnectorError>;

/// Counts calls and applies faults around a simulator's handler.
#[derive(Debug)]
pub(crate) struct Harness {
    system: &'static str,
    faults: Faults,
    calls: AtomicU64,
}

impl Harness {
    pub(crate) fn new(system: &'static str) -> Harness {
        Harness {
            system,
            faults: Faults::new(),
            calls: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Runs one call (`key`: its idempotency key): counts it, waits the
    /// latency, fails it if a fault says so (before `handle` runs, or after
    /// it for a lost reply), holds its answer back if one says so.
    pub(crate) async fn run(&self, key: &str, handle: impl FnOnce() -> Answer) -> Answer {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let latency = self.faults.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let plan = self.faults.plan();
        if let Some(reason) = plan.fail {
            if plan.refused {
                return Err(ConnectorError::Refused {
                    message: format!("{} (simulated): {reason}", self.system),
                });
            }
            return Err(ConnectorError::Transient {
                message: format!("{} (simulated): {reason}", self.system),
                retry_after: plan.retry_after,
            });
        }
        let answer = handle();
        if plan.lose_reply {
            return Err(transient(format!(
                "{} (simulated): timed out waiting for the reply (the request may have been \
                 processed)",
                self.system
            )));
        }
        if let Some(hold) = self.faults.take_hold() {
            self.faults.hold(key, hold).await;
        }
        answer
    }

    /// The answer to an operation this system does not have.
    pub(crate) fn unknown_operation(&self, operation: &str) -> ConnectorError {
        transient(format!(
            "{} (simulated) has no operation `{operation}`: the catalog and the connector \
             disagree (misconfiguration)",
            self.system
        ))
    }

    /// The answer to a call without a required input (or with one of the
    /// wrong type): the definition's input mapping or its data is wrong,
    /// which an operator must see as an incident.
    pub(crate) fn bad_input(&self, operation: &str, name: &str) -> ConnectorError {
        transient(format!(
            "{} (simulated) rejected `{operation}`: input `{name}` is missing, empty or not a \
             string",
            self.system
        ))
    }
}

fn transient(message: String) -> ConnectorError {
    ConnectorError::transient(message)
}

/// A business error.
pub(crate) fn business(code: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Business {
        code: code.to_owned(),
        message: message.into(),
    }
}

/// A string input, trimmed; `None` when absent, null, empty or not a string.
pub(crate) fn text<'a>(input: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    input
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A zone as systems compare it: folded, and a leading "zona" dropped
/// ("Zona Tiquipaya" is Tiquipaya), as agents type it either way.
pub(crate) fn zone_key(zone: &str) -> String {
    let folded = fold(zone);
    match folded.strip_prefix("zona ") {
        Some(rest) => rest.to_owned(),
        None => folded,
    }
}

/// A name folded for comparison: lower case, without accents, every run of
/// other characters than letters and digits made one space, trimmed.
/// `"  Hipódromo "` and `"HIPODROMO"` fold alike, and so does a name typed
/// or pasted with its accents apart (`o` then U+0301, Unicode's NFD).
pub(crate) fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        let c = match c {
            // Combining accents: the letter before them is kept bare.
            '\u{300}'..='\u{36f}' => continue,
            'á' | 'à' | 'ä' | 'â' | 'ã' => 'a',
            'é' | 'è' | 'ë' | 'ê' => 'e',
            'í' | 'ì' | 'ï' | 'î' => 'i',
            'ó' | 'ò' | 'ö' | 'ô' | 'õ' => 'o',
            'ú' | 'ù' | 'ü' | 'û' => 'u',
            'ñ' => 'n',
            'ç' => 'c',
            c => c,
        };
        if c.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(c);
        } else {
            space = true;
        }
    }
    out
}

/// `t` as an RFC 3339 UTC timestamp to the second
/// (`2026-03-14T15:04:05Z`), and its year.
pub(crate) fn rfc3339_utc(t: SystemTime) -> (String, i64) {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            // Before 1970: round towards the past, like the positive side.
            let back = e.duration();
            let whole = i64::try_from(back.as_secs()).unwrap_or(i64::MAX);
            -whole - i64::from(back.subsec_nanos() > 0)
        }
    };
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let text = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    );
    (text, y)
}

/// The proleptic Gregorian date of a day count since 1970-01-01
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use serde_json::{Map, Value};
    use tramite_engine::catalog::ConnectorSpec;
    use tramite_engine::definition::VarType;

    use super::*;

    /// Asserts that an answer is exactly what the spec promises: no
    /// undeclared output, every required one present, each of its type.
    pub(crate) fn assert_matches_spec(
        spec: &ConnectorSpec,
        operation: &str,
        out: &Map<String, Value>,
    ) {
        let op = spec.operation(operation).expect("operation in spec");
        for key in out.keys() {
            assert!(
                op.outputs.iter().any(|p| &p.name == key),
                "{}.{operation}: output `{key}` is not in the spec",
                spec.name
            );
        }
        for p in &op.outputs {
            let Some(v) = out.get(&p.name) else {
                assert!(!p.required, "required output `{}` missing", p.name);
                continue;
            };
            let ok = match p.ty {
                VarType::String | VarType::Text => v.is_string(),
                VarType::Integer => v.is_i64() || v.is_u64(),
                VarType::Number => v.is_number(),
                VarType::Boolean => v.is_boolean(),
                VarType::List => v.is_array(),
                VarType::Object => v.is_object(),
                VarType::Date => v.as_str().is_some_and(|s| s.len() == 10),
                VarType::Datetime => v
                    .as_str()
                    .is_some_and(|s| s.len() == 20 && s.ends_with('Z') && &s[10..11] == "T"),
            };
            assert!(ok, "output `{}` = {v} is not a {:?}", p.name, p.ty);
        }
    }

    /// Calls `operation` of `connector` with `pairs` as input (idempotency key
    /// `job-1`, first attempt) and checks any result against `spec`.
    pub(crate) async fn call_checked(
        connector: &dyn tramite_engine::runtime::connector::Connector,
        spec: &ConnectorSpec,
        operation: &str,
        pairs: &[(&str, &str)],
    ) -> Answer {
        let input = input(pairs);
        let answer = connector
            .call(tramite_engine::runtime::connector::ConnectorCall {
                operation,
                input: &input,
                idempotency_key: "job-1",
                attempt: 1,
            })
            .await;
        if let Ok(out) = &answer {
            assert_matches_spec(spec, operation, out);
        }
        answer
    }

    /// An input mapping from pairs.
    pub(crate) fn input(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect()
    }

    #[test]
    fn folds_case_accents_and_spacing() {
        assert_eq!(fold("  Hipódromo "), "hipodromo");
        assert_eq!(fold("HIPODROMO"), "hipodromo");
        assert_eq!(fold("Queru-Queru"), "queru queru");
        assert_eq!(fold("cala   CALA"), "cala cala");
        assert_eq!(fold("Ñuflo de Chávez"), "nuflo de chavez");
        assert_eq!(fold("Hipo\u{301}dromo"), "hipodromo");
        assert_eq!(fold("N\u{303}uflo de Cha\u{301}vez"), "nuflo de chavez");
        assert_eq!(fold(""), "");
    }

    #[test]
    fn text_trims_and_drops_empty() {
        let mut m = input(&[("a", "  x "), ("b", "   ")]);
        m.insert("c".to_owned(), Value::from(5));
        m.insert("d".to_owned(), Value::Null);
        assert_eq!(text(&m, "a"), Some("x"));
        assert_eq!(text(&m, "b"), None);
        assert_eq!(text(&m, "c"), None);
        assert_eq!(text(&m, "d"), None);
        assert_eq!(text(&m, "e"), None);
    }

    #[test]
    fn formats_rfc3339() {
        let at = |s: u64| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), ("1970-01-01T00:00:00Z".to_owned(), 1970));
        assert_eq!(at(951_782_400).0, "2000-02-29T00:00:00Z");
        assert_eq!(at(1_767_225_600), ("2026-01-01T00:00:00Z".to_owned(), 2026));
        assert_eq!(at(1_767_225_599).0, "2025-12-31T23:59:59Z");
        assert_eq!(at(1_773_501_845).0, "2026-03-14T15:24:05Z");
        let before = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(rfc3339_utc(before).0, "1969-12-31T23:59:59Z");
    }
}
