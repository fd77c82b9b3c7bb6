//! Durations written by process owners: `90s`, `15m`, `2h`, `1h30m`, `15d`,
//! `2w`, or ISO 8601 (`PT30M`, `P15D`, `P1DT12H`); `ms` for the short waits
//! of connector settings (`200ms`).
//!
//! Months and years are refused on purpose: their length depends on the
//! calendar, and a due time must mean the same thing on every day.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A positive, calendar-independent duration, remembering how it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duration {
    value: std::time::Duration,
    source: String,
}

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Nothing was written.
    #[error("a duration must not be empty")]
    Empty,
    /// A number was not followed by a unit, or the unit is unknown.
    #[error(
        "unknown unit in `{0}`: use ms, s, m, h, d, w (e.g. `15m`, `2h`, `15d`) or ISO 8601 (`PT15M`)"
    )]
    Unit(String),
    /// Months and years have no fixed length.
    #[error("`{0}`: months and years have no fixed length; write days instead (e.g. `30d`)")]
    Calendar(String),
    /// The text is not a duration at all.
    #[error("`{0}` is not a duration: use e.g. `15m`, `2h`, `1h30m`, `15d` or ISO 8601 `PT15M`")]
    Syntax(String),
    /// Zero is not a wait.
    #[error("`{0}` is zero; a duration must be positive")]
    Zero(String),
    /// Longer than [`MAX_DAYS`]: no procedure waits that long, and a due
    /// time far enough ahead would overflow the clock's arithmetic. The
    /// bound is generous on purpose: stored versions are parsed again at
    /// every start, and one must never stop loading.
    #[error("`{0}` is too long: at most 36500 days (a hundred years)")]
    Overflow(String),
}

/// The longest duration accepted, in days (a hundred years).
pub const MAX_DAYS: u64 = 36_500;

impl Duration {
    /// The duration as a standard library value.
    pub fn as_std(&self) -> std::time::Duration {
        self.value
    }

    /// The duration as written in the definition.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn unit_seconds(unit: char) -> Option<u64> {
    Some(match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return None,
    })
}

/// Parses `<n><unit>` runs (`1h30m`, `200ms`) into milliseconds; with
/// `iso`, `M` means minutes only after `T`.
fn parse_runs(text: &str, whole: &str, iso: bool) -> Result<u64, Error> {
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut in_time = false;
    let mut any = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        if iso && c == 'T' && number.is_empty() {
            in_time = true;
            continue;
        }
        if number.is_empty() {
            return Err(Error::Syntax(whole.to_owned()));
        }
        // Short forms are lower case (`15m` is minutes; `M` would be ambiguous
        // with months); ISO 8601 is upper case, with H, M, S only after `T`.
        let millis = match (iso, c, in_time) {
            (false, 'M' | 'y' | 'Y', _) | (true, 'M' | 'Y', false) => {
                return Err(Error::Calendar(whole.to_owned()));
            }
            (false, 'm', _) if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            (false, 's' | 'm' | 'h' | 'd' | 'w', _) => unit_seconds(c).expect("known unit") * 1_000,
            (true, 'W' | 'D', false) | (true, 'H' | 'M' | 'S', true) => {
                unit_seconds(c.to_ascii_lowercase()).expect("known unit") * 1_000
            }
            (true, 'W' | 'D' | 'H' | 'S', _) => return Err(Error::Syntax(whole.to_owned())),
            _ => return Err(Error::Unit(whole.to_owned())),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| Error::Overflow(whole.to_owned()))?;
        total = n
            .checked_mul(millis)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| Error::Overflow(whole.to_owned()))?;
        number.clear();
        any = true;
    }
    if !number.is_empty() {
        return Err(Error::Unit(whole.to_owned()));
    }
    if !any {
        return Err(Error::Syntax(whole.to_owned()));
    }
    Ok(total)
}

impl FromStr for Duration {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(Error::Empty);
        }
        let millis = match trimmed.strip_prefix('P') {
            Some(iso) => parse_runs(iso, trimmed, true)?,
            None => parse_runs(trimmed, trimmed, false)?,
        };
        if millis == 0 {
            return Err(Error::Zero(trimmed.to_owned()));
        }
        if millis > MAX_DAYS * 86_400_000 {
            return Err(Error::Overflow(trimmed.to_owned()));
        }
        Ok(Duration {
            value: std::time::Duration::from_millis(millis),
            source: trimmed.to_owned(),
        })
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: 200ms, 90s, 15m, 2h, 1h30m, 15d, 2w, or ISO 8601 such as PT15M or P15D.",
            "type": "string",
            "pattern": "^(P(?!$)(\\d+W)?(\\d+D)?(T(?=\\d)(\\d+H)?(\\d+M)?(\\d+S)?)?|(\\d+(ms|[smhdw]))+)$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        s.parse::<Duration>().unwrap().as_std().as_secs()
    }

    #[test]
    fn short_and_iso_forms() {
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("15m"), 900);
        assert_eq!(secs("1h30m"), 5_400);
        assert_eq!(secs("15d"), 15 * 86_400);
        assert_eq!(secs("2w"), 14 * 86_400);
        assert_eq!(secs("PT30M"), 1_800);
        assert_eq!(secs("P15D"), 15 * 86_400);
        assert_eq!(secs("P1DT12H"), 36 * 3_600);
        let ms = |s: &str| s.parse::<Duration>().unwrap().as_std().as_millis();
        assert_eq!(ms("200ms"), 200);
        assert_eq!(ms("1s500ms"), 1_500);
        assert_eq!(ms("1m"), 60_000, "`m` alone is still minutes");
    }

    #[test]
    fn refuses_what_is_ambiguous_or_wrong() {
        assert_eq!("".parse::<Duration>(), Err(Error::Empty));
        assert!(matches!("P1M".parse::<Duration>(), Err(Error::Calendar(_))));
        assert!(matches!("1y".parse::<Duration>(), Err(Error::Calendar(_))));
        assert!(matches!("1M".parse::<Duration>(), Err(Error::Calendar(_))));
        assert!(matches!("P1H".parse::<Duration>(), Err(Error::Syntax(_))));
        assert!(matches!("PT1D".parse::<Duration>(), Err(Error::Syntax(_))));
        assert!(matches!("P".parse::<Duration>(), Err(Error::Syntax(_))));
        assert!(matches!(
            "1h 30m".parse::<Duration>(),
            Err(Error::Syntax(_))
        ));
        assert!(matches!("2H".parse::<Duration>(), Err(Error::Unit(_))));
        assert!(matches!("15".parse::<Duration>(), Err(Error::Unit(_))));
        assert!(matches!("15x".parse::<Duration>(), Err(Error::Unit(_))));
        assert!(matches!("soon".parse::<Duration>(), Err(Error::Syntax(_))));
        assert!(matches!("0m".parse::<Duration>(), Err(Error::Zero(_))));
        assert!(matches!(
            "99999999999999999999d".parse::<Duration>(),
            Err(Error::Overflow(_))
        ));
        // Fits in u64 milliseconds, but would wrap as the i64 due times
        // are computed (an escalation firing at once).
        assert!(matches!(
            "16000000000w".parse::<Duration>(),
            Err(Error::Overflow(_))
        ));
        assert!(matches!(
            "36501d".parse::<Duration>(),
            Err(Error::Overflow(_))
        ));
        assert_eq!(secs("36500d"), 36_500 * 86_400);
        assert_eq!(secs("P5214W"), 5_214 * 604_800);
    }
}
