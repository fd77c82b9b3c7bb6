//! Indicators and process statistics, computed from instance data.
//!
//! What an indicator counts is written in the definition (which ends, which
//! condition over the instance's variables); this module only buckets
//! instances by the period they started in, counts, and judges.
//!
//! Only instances that have ended are counted: a request started today that
//! waits two weeks for its installation would otherwise count against today
//! until it ends, and every recent day would read as failing. A period with
//! instances still running has a value but no verdict yet. Cancelled
//! instances (an operator's decision, not an outcome of the procedure) are
//! counted apart, in neither line.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::definition::{Indicator, Period, Population, Side};
use crate::runtime::eval::{self, Scope};
use crate::store::instances::InstanceRow;
use crate::text::Text;

/// One period's value of an indicator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndicatorValue {
    /// The period's first day (`2026-11-27`; a week's Monday; a month's first day).
    pub period: String,
    /// Ended instances counted above the line.
    pub numerator: u64,
    /// Ended instances counted below the line.
    pub denominator: u64,
    /// Instances started in the period that are still running: counted in
    /// neither line until they end.
    pub open: u64,
    /// Instances started in the period and cancelled: counted in neither line.
    pub cancelled: u64,
    /// `numerator × scale / denominator`; absent when nothing ended.
    pub value: Option<f64>,
    /// The verdict (`Aceptado`, `Observado`); absent without a value and
    /// while any instance of the period is still open (the value can move).
    pub verdict: Option<Text>,
}

impl IndicatorValue {
    /// A period in which nothing started.
    pub fn empty(period: String) -> IndicatorValue {
        IndicatorValue {
            period,
            numerator: 0,
            denominator: 0,
            open: 0,
            cancelled: 0,
            value: None,
            verdict: None,
        }
    }
}

/// How long a step took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepDuration {
    /// The node.
    pub node: String,
    /// How many times it ran to completion.
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: i64,
    /// Median, ms.
    pub p50_ms: i64,
    /// Longest, ms.
    pub max_ms: i64,
}

/// How many tokens left a gate by each branch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateCount {
    /// The gate.
    pub gate: String,
    /// The node the branch leads to.
    pub next: String,
    /// How many times.
    pub count: u64,
}

/// Days since the epoch to a civil date (Howard Hinnant's algorithm).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const DAY_MS: i64 = 86_400_000;

/// The local day (days since the epoch) on which the period holding the
/// instant `at_ms` begins.
fn period_start_day(at_ms: i64, period: Period, utc_offset_minutes: i32) -> i64 {
    let local_days = at_ms
        .saturating_add(i64::from(utc_offset_minutes) * 60_000)
        .div_euclid(DAY_MS);
    match period {
        Period::Daily => local_days,
        // 1970-01-01 was a Thursday: Monday is 3 days before.
        Period::Weekly => local_days - (local_days + 3).rem_euclid(7),
        Period::Monthly => {
            let (_, _, d) = civil(local_days);
            local_days - i64::from(d) + 1
        }
    }
}

/// The period an instant falls in, as its first day, in local time.
pub fn period_of(at_ms: i64, period: Period, utc_offset_minutes: i32) -> String {
    let (y, m, d) = civil(period_start_day(at_ms, period, utc_offset_minutes));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The first instant (ms) of the local period `at_ms` falls in.
fn period_start_ms(at_ms: i64, period: Period, utc_offset_minutes: i32) -> i64 {
    period_start_day(at_ms, period, utc_offset_minutes)
        .saturating_mul(DAY_MS)
        .saturating_sub(i64::from(utc_offset_minutes) * 60_000)
}

/// `[from, to)` widened to whole local periods: a period cut by the range
/// (a month asked from midnight UTC, four hours into Bolivia's last day of
/// the month before) would otherwise get a value and a verdict from a part
/// of it that reads like the whole.
pub fn whole_periods(from: i64, to: i64, period: Period, utc_offset_minutes: i32) -> (i64, i64) {
    // An empty range stays empty: widened, it would answer a whole period.
    if from >= to {
        return (from, from);
    }
    // `min`/`max`: at the edges of time the arithmetic saturates; the range
    // is then kept as asked, never narrower.
    let from = period_start_ms(from, period, utc_offset_minutes).min(from);
    let last = period_start_ms(to, period, utc_offset_minutes);
    if last == to {
        return (from, to);
    }
    // The next period's start: a day, a week, or (a month's first day plus
    // 32 days is in the next month) the next month's first day.
    let step = match period {
        Period::Daily => 1,
        Period::Weekly => 7,
        Period::Monthly => 32,
    };
    let next = period_start_ms(
        last.saturating_add(step * DAY_MS),
        period,
        utc_offset_minutes,
    );
    (from, next.max(to))
}

fn counts(population: &Population, instance: &InstanceRow) -> bool {
    if !population.ends.is_empty()
        && !instance
            .outcome
            .as_ref()
            .is_some_and(|o| population.ends.contains(o))
    {
        return false;
    }
    let Some(condition) = &population.condition else {
        return true;
    };
    let meta = crate::runtime::machine::InstanceMeta::from(instance).value();
    let declared = |_: &str| true;
    let scope = Scope {
        variables: &instance.state.variables,
        declared: &declared,
        instance: &meta,
        extra: None,
    };
    // A condition that cannot be evaluated (a variable never written on this
    // instance's path) does not count the instance.
    eval::condition(condition, &scope).unwrap_or(false)
}

/// The verdict for `value`.
pub fn verdict(indicator: &Indicator, value: f64) -> Text {
    let v = &indicator.verdict;
    let above = value > v.threshold || (value == v.threshold && v.at_threshold == Side::Above);
    if above {
        v.above.clone()
    } else {
        v.below.clone()
    }
}

/// An indicator's counts per period, one instance at a time: a range can
/// hold more instances than are worth keeping in memory at once.
pub struct Tally<'a> {
    indicator: &'a Indicator,
    period: Period,
    utc_offset_minutes: i32,
    buckets: BTreeMap<String, IndicatorValue>,
}

impl<'a> Tally<'a> {
    /// Counts for `indicator` per `period`, in local time at the offset.
    pub fn new(indicator: &'a Indicator, period: Period, utc_offset_minutes: i32) -> Tally<'a> {
        Tally {
            indicator,
            period,
            utc_offset_minutes,
            buckets: BTreeMap::new(),
        }
    }

    /// Counts `instance` in the period it started in.
    pub fn add(&mut self, instance: &InstanceRow) {
        let period = period_of(instance.started_at, self.period, self.utc_offset_minutes);
        let bucket = self
            .buckets
            .entry(period)
            .or_insert_with_key(|p| IndicatorValue::empty(p.clone()));
        match instance.status.as_str() {
            "completed" => {
                if counts(&self.indicator.numerator, instance) {
                    bucket.numerator += 1;
                }
                if counts(&self.indicator.denominator, instance) {
                    bucket.denominator += 1;
                }
            }
            "cancelled" => bucket.cancelled += 1,
            _ => bucket.open += 1,
        }
    }

    /// The values per period, in period order.
    pub fn finish(self) -> Vec<IndicatorValue> {
        let indicator = self.indicator;
        self.buckets
            .into_values()
            .map(|mut v| {
                v.value = (v.denominator > 0)
                    .then(|| v.numerator as f64 * indicator.scale / v.denominator as f64);
                v.verdict = v
                    .value
                    .filter(|_| v.open == 0)
                    .map(|value| verdict(indicator, value));
                v
            })
            .collect()
    }
}

/// One journal entry as statistics read it: `(kind, node, at, data)`.
pub type StatEntry = (String, Option<String>, i64, Value);

/// Step durations and gate branches, one journal entry at a time (in the
/// journal's order): what is kept is a duration per finished step, not the
/// entries.
#[derive(Debug, Default)]
pub struct Statistics {
    started: BTreeMap<String, (String, i64)>,
    durations: BTreeMap<String, Vec<i64>>,
    gates: BTreeMap<(String, String), u64>,
}

impl Statistics {
    /// Takes in one entry.
    pub fn add(&mut self, (kind, node, at, data): StatEntry) {
        let Some(node) = node else { return };
        let key = |field: &str| data.get(field).and_then(Value::as_str).map(str::to_owned);
        match kind.as_str() {
            "task_created" => {
                if let Some(task) = key("task") {
                    self.started.insert(task, (node, at));
                }
            }
            "job_created" => {
                if let Some(job) = key("job") {
                    self.started.insert(job, (node, at));
                }
            }
            "task_completed" | "job_succeeded" | "job_business_error" => {
                let id = key("task").or_else(|| key("job"));
                if let Some((node, since)) = id.and_then(|id| self.started.remove(&id)) {
                    self.durations.entry(node).or_default().push(at - since);
                }
            }
            "gate_passed" => {
                if let Some(next) = key("next") {
                    *self.gates.entry((node, next)).or_default() += 1;
                }
            }
            _ => {}
        }
    }

    /// Per-step durations and per-branch gate counts.
    pub fn finish(self) -> (Vec<StepDuration>, Vec<GateCount>) {
        let steps = self
            .durations
            .into_iter()
            .map(|(node, mut d)| {
                d.sort_unstable();
                StepDuration {
                    count: d.len() as u64,
                    mean_ms: d.iter().sum::<i64>() / d.len() as i64,
                    p50_ms: d[d.len() / 2],
                    max_ms: *d.last().expect("non-empty"),
                    node,
                }
            })
            .collect();
        let gates = self
            .gates
            .into_iter()
            .map(|((gate, next), count)| GateCount { gate, next, count })
            .collect();
        (steps, gates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn periods_in_local_time() {
        // 2026-11-27 02:00 UTC is still the 26th in Cochabamba (UTC−4).
        let at = 1_795_788_000_000 - 12 * 3_600_000;
        assert_eq!(period_of(at, Period::Daily, 0), "2026-11-27");
        assert_eq!(period_of(at, Period::Daily, -240), "2026-11-26");
        assert_eq!(
            period_of(1_795_788_000_000, Period::Weekly, 0),
            "2026-11-23"
        );
        assert_eq!(
            period_of(1_795_788_000_000, Period::Monthly, 0),
            "2026-11-01"
        );
        assert_eq!(period_of(0, Period::Daily, 0), "1970-01-01");
        assert_eq!(period_of(59 * DAY, Period::Monthly, 0), "1970-03-01");
    }

    /// November asked in UTC from Bolivia (UTC−4), still October 31st
    /// there at the range's start, counts October whole and November whole
    /// (to December's first local midnight, 04:00 UTC), not four hours of
    /// October and November without its last evening.
    #[test]
    fn a_range_is_widened_to_whole_local_periods() {
        let hour = 3_600_000;
        let nov_1_utc = 1_793_491_200_000; // 2026-11-01 00:00 UTC
        let dec_1_utc = 1_796_083_200_000; // 2026-12-01 00:00 UTC
        assert_eq!(period_of(nov_1_utc, Period::Daily, 0), "2026-11-01");
        assert_eq!(period_of(dec_1_utc, Period::Daily, 0), "2026-12-01");
        let (from, to) = whole_periods(nov_1_utc, dec_1_utc, Period::Monthly, -240);
        assert_eq!(
            (from, to),
            (nov_1_utc - 31 * DAY + 4 * hour, dec_1_utc + 4 * hour),
            "October (from its first local midnight) and November, whole"
        );
        assert_eq!(period_of(from, Period::Monthly, -240), "2026-10-01");
        assert_eq!(period_of(to - 1, Period::Monthly, -240), "2026-11-01");
        // Aligned already: unchanged.
        let local_nov = nov_1_utc + 4 * hour;
        let local_dec = dec_1_utc + 4 * hour;
        assert_eq!(
            whole_periods(local_nov, local_dec, Period::Monthly, -240),
            (local_nov, local_dec)
        );
        // Days and weeks: a range inside one is that whole day or week.
        assert_eq!(
            whole_periods(local_nov + hour, local_nov + 2 * hour, Period::Daily, -240),
            (local_nov, local_nov + DAY)
        );
        // 2026-11-01 was a Sunday: its week began on Monday, October 26th.
        let (from, to) =
            whole_periods(local_nov + hour, local_nov + 2 * hour, Period::Weekly, -240);
        assert_eq!((from, to), (local_nov - 6 * DAY, local_nov + DAY));
        assert_eq!(period_of(from, Period::Weekly, -240), "2026-10-26");
        // Far outside any real range: no overflow, never narrower.
        let (from, to) = whole_periods(i64::MIN, i64::MAX, Period::Monthly, -240);
        assert_eq!((from, to), (i64::MIN, i64::MAX));
        // An empty or backwards range stays empty.
        assert_eq!(
            whole_periods(local_nov + hour, local_nov + hour, Period::Daily, -240).0,
            local_nov + hour
        );
        let (from, to) = whole_periods(
            local_nov + 2 * hour,
            local_nov + hour,
            Period::Monthly,
            -240,
        );
        assert_eq!(from, to);
    }
}
