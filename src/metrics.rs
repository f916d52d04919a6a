//! Counters and histograms for `GET /metrics` (Prometheus text format), kept by the engine,
//! and the rendering of the whole metrics page from them and the daemon's `status`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::protocol::{AccountState, Status, Timings};

/// Upper bounds of the histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A cumulative histogram of seconds.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Appends the histogram's lines under `name`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Appends a single-valued metric.
pub fn render_value(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Request outcomes and latency histograms.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    /// Finished requests by outcome: `ok` or an error kind.
    outcomes: BTreeMap<String, u64>,
    first_token: Histogram,
    duration: Histogram,
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a finished request with this outcome.
    pub fn count(&self, outcome: &str) {
        *self.lock().outcomes.entry(outcome.to_owned()).or_default() += 1;
    }

    /// Counts a successful request and its timings.
    pub fn completed(&self, t: &Timings) {
        let mut s = self.lock();
        *s.outcomes.entry("ok".into()).or_default() += 1;
        if let Some(ms) = t.first_token_ms {
            s.first_token.observe(ms as f64 / 1000.0);
        }
        s.duration.observe(t.total_ms as f64 / 1000.0);
    }

    pub fn outcomes(&self) -> BTreeMap<String, u64> {
        self.lock().outcomes.clone()
    }

    /// The Prometheus text for `GET /metrics`.
    pub fn render(&self, status: &Status, in_flight: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP poed_requests_total Finished completion requests by outcome (ok or an error kind).\n# TYPE poed_requests_total counter\n");
        for (outcome, n) in &status.requests {
            let _ = writeln!(out, "poed_requests_total{{outcome=\"{outcome}\"}} {n}");
        }
        let values: [(&str, &str, &str, u64); 7] = [
            (
                "poed_requests_in_flight",
                "gauge",
                "Completion requests running or queued.",
                in_flight as u64,
            ),
            (
                "poed_requests_queued",
                "gauge",
                "Requests waiting for a tab.",
                status.pool.queued as u64,
            ),
            (
                "poed_tabs",
                "gauge",
                "Tabs in the pool.",
                status.pool.tabs as u64,
            ),
            (
                "poed_tabs_idle",
                "gauge",
                "Idle tabs.",
                status.pool.idle as u64,
            ),
            (
                "poed_browser_up",
                "gauge",
                "1 when the browser is up.",
                u64::from(status.browser.state == "up"),
            ),
            (
                "poed_browser_restarts_total",
                "counter",
                "Browser relaunches after a crash.",
                u64::from(status.browser.restarts),
            ),
            (
                "poed_signed_in",
                "gauge",
                "1 when the profile is known to be signed in.",
                u64::from(status.account.state == AccountState::SignedIn),
            ),
        ];
        for (name, kind, help, value) in values {
            render_value(&mut out, name, kind, help, value);
        }
        let a = &status.account;
        if let Some(p) = &a.points {
            let points: [(&str, &str, Option<i64>); 4] = [
                ("poed_points_balance", "The account's points left, as last seen.", p.balance),
                ("poed_points_allotment", "The account's points per period.", p.allotment),
                ("poed_points_reset_timestamp_seconds", "When the points reset (Unix time).", p.reset_at.and_then(|t| i64::try_from(t).ok())),
                ("poed_points_seen_timestamp_seconds", "When the points were last seen (Unix time).", i64::try_from(p.seen_at).ok()),
            ];
            for (name, help, value) in points {
                if let Some(v) = value {
                    render_value(&mut out, name, "gauge", help, v);
                }
            }
        }
        render_value(
            &mut out,
            "poed_send_backoff_seconds",
            "gauge",
            "How long sends are held back after the site refused some for its rate.",
            a.send_backoff_ms as f64 / 1000.0,
        );
        let s = self.lock();
        s.first_token.render(
            &mut out,
            "poed_time_to_first_token_seconds",
            "Time from request to the first text of the reply.",
        );
        s.duration.render(
            &mut out,
            "poed_request_duration_seconds",
            "Time from request to the complete reply.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_renders_prometheus_text() {
        let mut h = Histogram::default();
        h.observe(0.07);
        h.observe(3.0);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(out.contains("# TYPE x_seconds histogram"));
        assert!(out.contains("x_seconds_bucket{le=\"0.05\"} 0\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{le=\"5\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(out.contains("x_seconds_count 2\n"));
    }
}
