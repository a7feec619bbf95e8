//! Retry timing and log rate for the agent: exponential backoff with full jitter, the ±10% jitter
//! on the regular poll, and "log the first failure, then at most once a minute".
//!
//! Owns: the arithmetic. Must not: sleep, read the clock or draw random numbers — callers pass
//! `now` and a uniform sample in `[0, 1)`, so tests drive it in virtual time.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Longest wait between attempts while the control plane is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// At most one "still unreachable" warning per this long.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Exponential backoff from `base` (the poll interval) to `max`, with full jitter: the n-th
/// consecutive failure waits a uniform time in `[floor, min(max, base * 2^n)]`, so a fleet that
/// lost its control plane at the same moment does not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The ceiling of the next wait (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.failures.min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Records a failure and returns how long to wait; `sample` is uniform in `[0, 1)`. The wait
    /// is never below a tenth of the base interval, so a run of unlucky samples cannot spin.
    pub fn fail(&mut self, sample: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.ceiling();
        let floor = self.base / 10;
        ceiling.mul_f64(sample.clamp(0.0, 1.0)).max(floor)
    }

    /// The wait after a failure that more attempts will not fix soon (a refused enrolment
    /// token): the maximum, jittered.
    pub fn fail_hard(&mut self, sample: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.max.mul_f64(0.5 + sample.clamp(0.0, 1.0) / 2.0)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `interval` ±10%, for the regular poll.
pub fn jittered(interval: Duration, sample: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * sample.clamp(0.0, 1.0))
}

/// A uniform sample in `[0, 1)` from the OS.
pub fn sample() -> f64 {
    let x = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// What to log about a failed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureLog {
    /// The first failure after success: warn.
    First,
    /// Still failing, and the last warning is a minute old: warn with the count.
    Still { failures: u64, for_secs: u64 },
    /// Still failing; warned recently: debug only.
    Quiet,
}

/// Tracks an outage for the logs: one warning when it starts, then at most one per
/// [`WARN_EVERY`], and one info line when it ends.
#[derive(Debug, Default, Clone)]
pub struct Outage {
    since: Option<Instant>,
    last_warn: Option<Instant>,
    failures: u64,
}

impl Outage {
    pub fn failed(&mut self, now: Instant) -> FailureLog {
        self.failures += 1;
        let Some(since) = self.since else {
            self.since = Some(now);
            self.last_warn = Some(now);
            return FailureLog::First;
        };
        match self.last_warn {
            Some(w) if now.saturating_duration_since(w) < WARN_EVERY => FailureLog::Quiet,
            _ => {
                self.last_warn = Some(now);
                FailureLog::Still {
                    failures: self.failures,
                    for_secs: now.saturating_duration_since(since).as_secs(),
                }
            }
        }
    }

    /// Ends the outage; returns (failures, seconds) when there was one to report.
    pub fn recovered(&mut self, now: Instant) -> Option<(u64, u64)> {
        let since = self.since.take()?;
        let failures = std::mem::take(&mut self.failures);
        self.last_warn = None;
        Some((failures, now.saturating_duration_since(since).as_secs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter_and_resets() {
        let base = Duration::from_secs(10);
        let mut b = Backoff::new(base, MAX_BACKOFF);
        assert_eq!(b.ceiling(), base);
        // The top of the jitter range follows the doubling ceiling.
        assert_eq!(b.fail(0.999_999).as_secs(), 19);
        assert_eq!(b.ceiling(), Duration::from_secs(20));
        assert_eq!(b.fail(0.5), Duration::from_secs(20));
        assert_eq!(b.fail(0.0), base / 10, "never below the floor");
        for _ in 0..40 {
            b.fail(0.5);
        }
        assert_eq!(b.ceiling(), MAX_BACKOFF, "capped, no overflow");
        assert_eq!(b.fail(1.0), MAX_BACKOFF);
        assert!(b.failures() > 40);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.ceiling(), base);
        let hard = b.fail_hard(0.0);
        assert_eq!(hard, MAX_BACKOFF / 2);
        assert!(b.fail_hard(0.99) <= MAX_BACKOFF);
    }

    #[test]
    fn poll_jitter_is_ten_percent() {
        let i = Duration::from_secs(10);
        assert_eq!(jittered(i, 0.0), Duration::from_secs(9));
        assert_eq!(jittered(i, 0.5), i);
        assert!(jittered(i, 0.999) <= Duration::from_secs(11));
        let s = sample();
        assert!((0.0..1.0).contains(&s));
    }

    #[test]
    fn outage_warns_first_then_once_a_minute_then_reports_recovery() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.recovered(t0), None, "no outage, nothing to report");
        assert_eq!(o.failed(t0), FailureLog::First);
        assert_eq!(o.failed(t0 + Duration::from_secs(10)), FailureLog::Quiet);
        assert_eq!(o.failed(t0 + Duration::from_secs(59)), FailureLog::Quiet);
        assert_eq!(
            o.failed(t0 + Duration::from_secs(61)),
            FailureLog::Still {
                failures: 4,
                for_secs: 61
            }
        );
        assert_eq!(o.failed(t0 + Duration::from_secs(100)), FailureLog::Quiet);
        assert_eq!(o.recovered(t0 + Duration::from_secs(130)), Some((5, 130)));
        assert_eq!(o.failed(t0 + Duration::from_secs(131)), FailureLog::First);
    }
}
