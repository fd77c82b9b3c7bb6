//! Fault injection for the simulators: the network and availability
//! problems a real NAF, GIS or Smartflex has, on demand and reproducibly.
//!
//! A [`Faults`] is a cheap handle (clones share one state), so a test can
//! keep one while the simulator it was given to is registered in the
//! engine's connectors. Every injected failure is a
//! [`ConnectorError::Transient`](tramite_engine::runtime::connector::ConnectorError::Transient)
//! but [`Faults::refuse_next`]'s, a refusal; only [`Faults::lose_next_replies`] lets the system act before failing —
//! every other fault fails the call before the system sees it, so nothing
//! is registered. [`Faults::hold_next_replies`] fails nothing: it keeps a
//! reply back after the system acted, so that a test can kill the caller
//! in the one window where a crash must not make the system act twice.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Shared, switchable faults of one simulator (or of several, if the same
/// handle is given to each).
///
/// For each call, in this order: the fixed latency is waited; an outage
/// fails it; else a pending "refuse next" refuses it, then a pending "fail
/// next" fails it (each used up as it is taken); else a
/// rate limit may refuse it, saying when to come back; else the error rate
/// may fail it; else the system acts, and a pending "lose next reply" turns
/// its answer into a transient failure, or a pending "hold next reply"
/// keeps its answer back for a while.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<State>>,
    /// The idempotency keys of the calls whose replies are being held back
    /// right now, and of those whose callers hung up while they were (see
    /// [`Faults::held`], [`Faults::cut`]).
    held: Arc<Mutex<Holds>>,
}

#[derive(Debug, Default)]
struct State {
    refuse_next: u32,
    fail_next: u32,
    lose_next: u32,
    hold_next: u32,
    hold: Duration,
    outage: bool,
    latency: Duration,
    rate: Option<Rate>,
    limit: Option<Bucket>,
    injected: u64,
}

/// Answers held back: now, and cut off by their callers.
#[derive(Debug, Default)]
struct Holds {
    now: Vec<String>,
    cut: Vec<String>,
}

/// A token bucket: `per_second` calls a second, a burst of as many.
#[derive(Debug)]
struct Bucket {
    per_second: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self) -> Result<(), Duration> {
        let now = tokio::time::Instant::now();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

#[derive(Debug)]
struct Rate {
    probability: f64,
    rng: XorShift64,
}

/// What the faults decided for one call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Fail before the system acts, with this reason.
    pub(crate) fail: Option<&'static str>,
    /// With `fail`: the system refused the call as it stands (credentials
    /// it no longer takes), so that sending it again cannot pass.
    pub(crate) refused: bool,
    /// With `fail`: the rate limit refused the call, and a call after this
    /// long would be let in (what a throttled system's `Retry-After` says,
    /// in whole seconds).
    pub(crate) retry_after: Option<Duration>,
    /// Let the system act, then fail as if the reply were lost.
    pub(crate) lose_reply: bool,
}

impl Faults {
    /// No faults.
    pub fn new() -> Faults {
        Faults::default()
    }

    /// The next `n` calls fail transiently before reaching the system
    /// (replaces any count still pending; 0 cancels it).
    pub fn fail_next(&self, n: u32) {
        self.lock().fail_next = n;
    }

    /// The next `n` calls are refused before reaching the system, as a
    /// system that no longer takes the caller's credentials answers (HTTP
    /// 403): a refusal, which the engine does not retry (replaces any count
    /// still pending; 0 cancels it).
    pub fn refuse_next(&self, n: u32) {
        self.lock().refuse_next = n;
    }

    /// The next `n` calls that reach the system act (Smartflex registers)
    /// but their reply is lost: the caller sees a transient failure, as on a
    /// timeout after the system committed. A retry with the same
    /// idempotency key must then get the original answer.
    pub fn lose_next_replies(&self, n: u32) {
        self.lock().lose_next = n;
    }

    /// The next `n` calls that reach the system act (Smartflex registers)
    /// and their answer is then kept back for `hold` before it is sent:
    /// the window in which a caller that dies has had the system act but
    /// has not recorded it. Nothing fails; see [`Faults::held`].
    pub fn hold_next_replies(&self, n: u32, hold: Duration) {
        let mut state = self.lock();
        state.hold_next = n;
        state.hold = hold;
    }

    /// The idempotency keys of the calls whose answers are being kept back
    /// right now by [`Faults::hold_next_replies`]: the system has acted on
    /// each, and its caller is waiting.
    pub fn held(&self) -> Vec<String> {
        self.holds().now.clone()
    }

    /// The idempotency keys of the calls whose callers hung up (a node
    /// killed, say) while their answers were held back: the system acted,
    /// and the caller never heard.
    pub fn cut(&self) -> Vec<String> {
        self.holds().cut.clone()
    }

    fn holds(&self) -> MutexGuard<'_, Holds> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the answer to the call with `key` back for `hold`, listed in
    /// [`Faults::held`] while it waits; no longer once the wait ends, and
    /// in [`Faults::cut`] if it is dropped first (the caller hung up).
    pub(crate) async fn hold(&self, key: &str, hold: Duration) {
        struct Held<'a> {
            faults: &'a Faults,
            key: String,
            waited: bool,
        }
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                let mut holds = self.faults.holds();
                if let Some(i) = holds.now.iter().position(|k| *k == self.key) {
                    holds.now.swap_remove(i);
                }
                if !self.waited {
                    holds.cut.push(std::mem::take(&mut self.key));
                }
            }
        }
        self.holds().now.push(key.to_owned());
        let mut held = Held {
            faults: self,
            key: key.to_owned(),
            waited: false,
        };
        tokio::time::sleep(hold).await;
        held.waited = true;
    }

    /// Every call fails transiently until [`Faults::end_outage`].
    pub fn start_outage(&self) {
        self.lock().outage = true;
    }

    /// Ends an outage.
    pub fn end_outage(&self) {
        self.lock().outage = false;
    }

    /// Whether an outage is on.
    pub fn in_outage(&self) -> bool {
        self.lock().outage
    }

    /// Every call waits `latency` before answering (zero: no wait). The
    /// wait is a `tokio` timer, so a test with paused time does not sleep.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Each call that is not otherwise failed fails transiently with
    /// probability `probability` (clamped to 0–1), drawn from a xorshift
    /// generator seeded with `seed`: the same seed and the same sequence
    /// of calls fail the same calls.
    pub fn set_error_rate(&self, probability: f64, seed: u64) {
        let probability = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        self.lock().rate = Some(Rate {
            probability,
            rng: XorShift64::new(seed),
        });
    }

    /// Turns the error rate off.
    pub fn clear_error_rate(&self) {
        self.lock().rate = None;
    }

    /// At most `per_second` calls a second reach the system (0 turns the
    /// limit off); a burst of as many may come at once. A call over it is
    /// refused before the system acts, as a throttled system answers
    /// (HTTP 429), with how long until a call would be let in.
    pub fn set_rate_limit(&self, per_second: u32) {
        self.lock().limit = (per_second > 0).then(|| Bucket {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            at: tokio::time::Instant::now(),
        });
    }

    /// Turns every fault off (the count of injected failures is kept).
    pub fn clear(&self) {
        let mut state = self.lock();
        let injected = state.injected;
        *state = State {
            injected,
            ..State::default()
        };
    }

    /// How many calls have been failed by injection so far (lost replies
    /// included).
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// How long a call waits before it reaches the system.
    pub(crate) fn latency(&self) -> Duration {
        self.lock().latency
    }

    /// Decides the fate of one call that has waited its latency: decided
    /// then, not when it came in, so that a call whose caller hung up
    /// during its latency never reached the system and uses up no fault,
    /// and an outage begun meanwhile fails it.
    pub(crate) fn plan(&self) -> Plan {
        let mut state = self.lock();
        let mut retry_after = None;
        let mut refused = false;
        let fail = if state.outage {
            Some("outage: the service is unavailable (HTTP 503)")
        } else if state.refuse_next > 0 {
            state.refuse_next -= 1;
            refused = true;
            Some("access denied: the credentials were refused (HTTP 403)")
        } else if state.fail_next > 0 {
            state.fail_next -= 1;
            Some("connection reset by peer")
        } else if let Some(Err(wait)) = state.limit.as_mut().map(Bucket::take) {
            // A system says when to come back in whole seconds, rounded
            // up: sooner would be refused again.
            retry_after = Some(Duration::from_secs(
                wait.as_secs_f64().ceil().max(1.0) as u64
            ));
            Some("too many requests (HTTP 429)")
        } else if let Some(rate) = state.rate.as_mut() {
            let draw = rate.rng.next_unit();
            (draw < rate.probability).then_some("bad gateway (HTTP 502)")
        } else {
            None
        };
        let lose_reply = fail.is_none() && state.lose_next > 0;
        if lose_reply {
            state.lose_next -= 1;
        }
        if fail.is_some() || lose_reply {
            state.injected += 1;
        }
        Plan {
            fail,
            refused,
            retry_after,
            lose_reply,
        }
    }

    /// Whether the answer of a call that has just reached the system is
    /// to be held back, and how long ([`Faults::hold_next_replies`]). Taken
    /// once the system acted, not when the call came in: a call whose
    /// caller hung up during its latency never reached the system, and
    /// must not use the hold up.
    pub(crate) fn take_hold(&self) -> Option<Duration> {
        let mut state = self.lock();
        (state.hold_next > 0).then(|| {
            state.hold_next -= 1;
            state.hold
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // update is a plain assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marsaglia's xorshift64, seeded through splitmix64 (so that small or
/// zero seeds still give a good stream).
#[derive(Debug, Clone)]
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> XorShift64 {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift must never hold zero.
        XorShift64(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in [0, 1).
    fn next_unit(&mut self) -> f64 {
        // The top 53 bits fill an f64's mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(faults: &Faults, calls: usize) -> Vec<bool> {
        (0..calls).map(|_| faults.plan().fail.is_some()).collect()
    }

    #[test]
    fn no_faults_by_default() {
        let f = Faults::new();
        assert_eq!(
            f.plan(),
            Plan {
                fail: None,
                refused: false,
                retry_after: None,
                lose_reply: false,
            }
        );
        assert_eq!(f.injected(), 0);
    }

    /// A limit of 2 a second lets a burst of two in, refuses the third with
    /// a whole second to wait, and lets one more in half a second later
    /// (a token refilled); turned off, everything passes.
    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_refuses_what_is_over_it_and_says_when_to_come_back() {
        let f = Faults::new();
        f.set_rate_limit(2);
        let outcomes = |n: usize| {
            (0..n)
                .map(|_| {
                    let p = f.plan();
                    assert_eq!(p.fail.is_some(), p.retry_after.is_some(), "{p:?}");
                    p.retry_after
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(outcomes(3), [None, None, Some(Duration::from_secs(1))]);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(outcomes(2), [None, Some(Duration::from_secs(1))]);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(outcomes(3), [None, None, Some(Duration::from_secs(1))]);
        assert_eq!(f.injected(), 3);
        f.set_rate_limit(0);
        assert_eq!(outcomes(5), [None; 5]);
    }

    #[test]
    fn fail_next_is_used_up() {
        let f = Faults::new();
        f.fail_next(2);
        assert_eq!(failures(&f, 4), [true, true, false, false]);
        assert_eq!(f.injected(), 2);
    }

    #[test]
    fn refusals_come_before_failures_and_are_used_up() {
        let f = Faults::new();
        f.fail_next(1);
        f.refuse_next(2);
        let plans: Vec<(bool, bool)> = (0..4)
            .map(|_| f.plan())
            .map(|p| (p.fail.is_some(), p.refused))
            .collect();
        assert_eq!(
            plans,
            [(true, true), (true, true), (true, false), (false, false)]
        );
        assert_eq!(f.injected(), 3);
    }

    #[test]
    fn outage_lasts_until_ended_and_keeps_pending_failures() {
        let f = Faults::new();
        f.fail_next(1);
        f.start_outage();
        assert!(f.in_outage());
        assert_eq!(failures(&f, 3), [true, true, true]);
        f.end_outage();
        assert_eq!(failures(&f, 2), [true, false]);
    }

    #[test]
    fn lost_replies_come_after_failures() {
        let f = Faults::new();
        f.fail_next(1);
        f.lose_next_replies(1);
        let first = f.plan();
        assert!(first.fail.is_some() && !first.lose_reply);
        let second = f.plan();
        assert!(second.fail.is_none() && second.lose_reply);
        assert!(!f.plan().lose_reply);
        assert_eq!(f.injected(), 2);
    }

    #[test]
    fn error_rate_is_reproducible() {
        let a = Faults::new();
        let b = Faults::new();
        a.set_error_rate(0.3, 42);
        b.set_error_rate(0.3, 42);
        let fa = failures(&a, 1000);
        assert_eq!(fa, failures(&b, 1000));
        let n = fa.iter().filter(|x| **x).count();
        assert!((200..400).contains(&n), "{n} failures of 1000 at 30 %");

        let c = Faults::new();
        c.set_error_rate(0.3, 43);
        assert_ne!(fa, failures(&c, 1000));
    }

    #[test]
    fn error_rate_extremes_and_clear() {
        let f = Faults::new();
        f.set_error_rate(1.5, 0);
        assert!(failures(&f, 50).iter().all(|x| *x));
        f.set_error_rate(f64::NAN, 0);
        assert!(failures(&f, 50).iter().all(|x| !*x));
        f.set_error_rate(1.0, 7);
        f.set_latency(Duration::from_millis(5));
        f.clear();
        assert_eq!(f.latency(), Duration::ZERO);
        assert!(failures(&f, 10).iter().all(|x| !*x));
        assert_eq!(f.injected(), 50);
    }

    #[test]
    fn clones_share_state() {
        let f = Faults::new();
        let g = f.clone();
        g.fail_next(1);
        assert!(f.plan().fail.is_some());
        assert_eq!(g.injected(), 1);
    }
}
