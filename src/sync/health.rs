//! Per-app health for the sync report, read from the daemon's Prometheus metrics.
//!
//! Owns: summing the request counters, error counters and the duration histogram by app, the
//! delta against a baseline taken when a release became active, and the approximate p99.
//! Must not: add work to the request path — everything here reads what the serving code already
//! records, once per poll.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use prometheus::core::Collector as _;

use crate::ops::metrics::Metrics;

/// `outpost_request_errors_total` kinds that fail a request before the guest runs: no instance
/// slot free (`saturated`) and host-side setup of the instance (`internal`).
pub const INSTANTIATE_KINDS: &[&str] = &["saturated", "internal"];

/// Cumulative counts of one app, as the metrics hold them at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    /// Requests answered with a 5xx status.
    pub errors: u64,
    pub instantiate_failures: u64,
    /// The duration histogram summed over protocols: (upper bound in seconds, cumulative count),
    /// in bucket order.
    pub buckets: Vec<(f64, u64)>,
    /// Observations in the histogram (including those above the last bound).
    pub observations: u64,
}

impl Counts {
    /// What happened since `base` (an earlier snapshot of the same app). Counters never go
    /// down, but a missing baseline bucket or a reset is treated as zero rather than wrapping.
    pub fn since(&self, base: &Counts) -> Counts {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, (le, n))| {
                let before = base
                    .buckets
                    .get(i)
                    .filter(|(ble, _)| ble == le)
                    .map_or(0, |(_, b)| *b);
                (*le, n.saturating_sub(before))
            })
            .collect();
        Counts {
            requests: self.requests.saturating_sub(base.requests),
            errors: self.errors.saturating_sub(base.errors),
            instantiate_failures: self
                .instantiate_failures
                .saturating_sub(base.instantiate_failures),
            buckets,
            observations: self.observations.saturating_sub(base.observations),
        }
    }

    /// Upper bound, in milliseconds, of the bucket holding the 99th percentile; `None` without
    /// observations. Above the last bound it is that bound (the p99 is at least that).
    pub fn p99_ms(&self) -> Option<f64> {
        if self.observations == 0 {
            return None;
        }
        // The smallest count that covers 99% of the observations.
        let target = self.observations - self.observations / 100;
        let bound = self
            .buckets
            .iter()
            .find(|(_, n)| *n >= target)
            .or(self.buckets.last())
            .map(|(le, _)| *le)?;
        Some(bound * 1000.0)
    }
}

/// Every app's counts now, by the `app` label.
pub fn snapshot(metrics: &Metrics) -> BTreeMap<String, Counts> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    for family in metrics.requests.collect() {
        for m in family.get_metric() {
            let (mut app, mut status) = (None, None);
            for l in m.get_label() {
                match l.name() {
                    "app" => app = Some(l.value()),
                    "status" => status = Some(l.value()),
                    _ => {}
                }
            }
            let Some(app) = app else { continue };
            let n = m.get_counter().get_value() as u64;
            let c = out.entry(app.to_owned()).or_default();
            c.requests += n;
            if status.is_some_and(|s| s.starts_with('5')) {
                c.errors += n;
            }
        }
    }
    for family in metrics.request_errors.collect() {
        for m in family.get_metric() {
            let (mut app, mut kind) = (None, None);
            for l in m.get_label() {
                match l.name() {
                    "app" => app = Some(l.value()),
                    "kind" => kind = Some(l.value()),
                    _ => {}
                }
            }
            if let (Some(app), Some(kind)) = (app, kind)
                && INSTANTIATE_KINDS.contains(&kind)
            {
                out.entry(app.to_owned()).or_default().instantiate_failures +=
                    m.get_counter().get_value() as u64;
            }
        }
    }
    for family in metrics.request_duration.collect() {
        for m in family.get_metric() {
            let Some(app) = m
                .get_label()
                .iter()
                .find(|l| l.name() == "app")
                .map(|l| l.value())
            else {
                continue;
            };
            let h = m.get_histogram();
            let c = out.entry(app.to_owned()).or_default();
            c.observations += h.get_sample_count();
            let buckets = h.get_bucket();
            if c.buckets.is_empty() {
                c.buckets = buckets
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect();
            } else {
                for (acc, b) in c.buckets.iter_mut().zip(buckets) {
                    acc.1 += b.cumulative_count();
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::{Protocol, RequestMetrics};

    #[test]
    fn snapshot_sums_by_app_and_deltas_subtract_the_baseline() {
        let m = Metrics::new();
        let a = RequestMetrics::new(&m, None, "a", "main");
        let a2 = RequestMetrics::new(&m, Some("t"), "a", "admin");
        let b = RequestMetrics::new(&m, None, "b", "main");
        for _ in 0..3 {
            a.record(http::StatusCode::OK, Protocol::Http1, 0.002);
        }
        a.record(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            Protocol::Http1,
            0.002,
        );
        b.record(http::StatusCode::OK, Protocol::Http2, 0.002);
        let base = snapshot(&m);
        assert_eq!(base["a"].requests, 4);
        assert_eq!(base["a"].errors, 1);
        assert_eq!(base["b"].requests, 1);

        // After activation: 98 fast requests on two components and two protocols, two slow 503s.
        for i in 0..98 {
            let p = if i % 2 == 0 {
                Protocol::Http1
            } else {
                Protocol::Http2
            };
            let c = if i % 3 == 0 { &a2 } else { &a };
            c.record(http::StatusCode::OK, p, 0.0004);
        }
        a.record(http::StatusCode::SERVICE_UNAVAILABLE, Protocol::Http1, 0.7);
        a.record(http::StatusCode::BAD_GATEWAY, Protocol::Http3, 0.7);
        m.request_errors
            .with_label_values(&["a", "saturated"])
            .inc();
        m.request_errors.with_label_values(&["a", "trap"]).inc();
        let d = snapshot(&m)["a"].since(&base["a"]);
        assert_eq!(d.requests, 100);
        assert_eq!(d.errors, 2);
        assert_eq!(
            d.instantiate_failures, 1,
            "traps are not instantiation failures"
        );
        assert_eq!(d.observations, 100);
        // 99 of 100 must be covered: the 0.5 ms bucket holds 98, so the p99 is in the 1 s bucket.
        assert_eq!(d.p99_ms(), Some(1000.0));
        let untouched = snapshot(&m)["b"].since(&base["b"]);
        assert_eq!(untouched.requests, 0);
        assert_eq!(untouched.p99_ms(), None);
    }

    #[test]
    fn p99_picks_the_bucket_that_covers_99_percent() {
        let c = Counts {
            observations: 1000,
            buckets: vec![(0.001, 900), (0.01, 989), (0.1, 995), (1.0, 1000)],
            ..Counts::default()
        };
        assert_eq!(c.p99_ms(), Some(100.0));
        let all_fast = Counts {
            observations: 10,
            buckets: vec![(0.001, 10), (0.01, 10)],
            ..Counts::default()
        };
        assert_eq!(all_fast.p99_ms(), Some(1.0));
        // Everything above the last bound: the last bound is the best lower estimate.
        let slow = Counts {
            observations: 10,
            buckets: vec![(0.001, 0), (0.01, 0)],
            ..Counts::default()
        };
        assert_eq!(slow.p99_ms(), Some(10.0));
        // A baseline that is ahead (metrics reset) never underflows.
        assert_eq!(Counts::default().since(&c).requests, 0);
    }
}
