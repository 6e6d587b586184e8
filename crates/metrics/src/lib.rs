//! The gateway's metrics: atomic counters and gauges whose labels are
//! known in advance, one histogram (store write latency), and
//! [`Metrics::render`] in the Prometheus text exposition format 0.0.4.
//!
//! No I/O and no Gatehouse dependencies: whoever serves `/metrics` calls
//! `render`; gauges that are cheaper to read than to keep (active
//! sessions, sink lag) are set just before rendering.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The authentication methods counted separately; anything else is
/// `unknown`, so the label set stays bounded.
pub const AUTH_METHODS: [&str; 6] = [
    "publickey",
    "password",
    "keyboard-interactive",
    "totp",
    "certificate",
    "unknown",
];

/// Upper bounds (seconds) of the store write histogram's buckets.
pub const WRITE_BUCKETS: [f64; 14] = [
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    f64::INFINITY,
];

/// A fixed-bucket histogram; the sum is kept in microseconds.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; WRITE_BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in WRITE_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every metric the gateway exports.
#[derive(Default)]
pub struct Metrics {
    sessions_active: AtomicU64,
    sessions_started: AtomicU64,
    sessions_denied: AtomicU64,
    auth_failures: [AtomicU64; AUTH_METHODS.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    events: AtomicU64,
    audit_spooled: AtomicU64,
    /// Connections not yet authenticated, and those waiting for a place
    /// among them (`server.per_source_queue`).
    startups: AtomicU64,
    startups_waiting: AtomicU64,
    /// Milliseconds the oldest recording chunk not yet in object storage
    /// has waited.
    upload_lag_ms: AtomicU64,
    upload_failures: AtomicU64,
    store_write: Histogram,
    store_commit: Histogram,
    /// Sink name → events behind the head of the trail.
    sink_lag: Mutex<Vec<(String, u64)>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// One event written to the trail, by its type (`session.start`,
    /// `access.denied`, `auth.failure`, ...). `auth_method` is the
    /// failure's `details.method`; `bytes` a `session.end`'s
    /// `(bytes_in, bytes_out)`.
    pub fn event(&self, kind: &str, auth_method: Option<&str>, bytes: Option<(u64, u64)>) {
        self.events.fetch_add(1, Ordering::Relaxed);
        match kind {
            "session.start" => {
                self.sessions_started.fetch_add(1, Ordering::Relaxed);
            }
            "access.denied" => {
                self.sessions_denied.fetch_add(1, Ordering::Relaxed);
            }
            "auth.failure" => self.auth_failure(auth_method.unwrap_or("unknown")),
            _ => {}
        }
        if let Some((bytes_in, bytes_out)) = bytes {
            self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
            self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        }
    }

    fn auth_failure(&self, method: &str) {
        let i = AUTH_METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(AUTH_METHODS.len() - 1);
        self.auth_failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// How long one append to the store took.
    pub fn store_write(&self, d: Duration) {
        self.store_write.observe(d);
    }

    /// How long one commit of the store took (one transaction, however
    /// many appends it carried).
    pub fn store_commit(&self, d: Duration) {
        self.store_commit.observe(d);
    }

    pub fn set_sessions_active(&self, n: u64) {
        self.sessions_active.store(n, Ordering::Relaxed);
    }

    pub fn set_audit_spooled(&self, n: u64) {
        self.audit_spooled.store(n, Ordering::Relaxed);
    }

    /// Unauthenticated connections holding a place, and connections
    /// waiting for one.
    pub fn set_startups(&self, holding: u64, waiting: u64) {
        self.startups.store(holding, Ordering::Relaxed);
        self.startups_waiting.store(waiting, Ordering::Relaxed);
    }

    /// Object-storage recordings: how long the oldest chunk not yet
    /// stored has waited, and the chunks given up on after retries.
    pub fn set_recording_upload(&self, lag: Duration, failures: u64) {
        let ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
        self.upload_lag_ms.store(ms, Ordering::Relaxed);
        self.upload_failures.store(failures, Ordering::Relaxed);
    }

    /// Events the sink `name` has yet to deliver.
    pub fn set_sink_lag(&self, name: &str, lag: u64) {
        let mut lags = match self.sink_lag.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        match lags.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = lag,
            None => lags.push((name.to_string(), lag)),
        }
    }

    /// Everything in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        single(
            &mut out,
            "gatehouse_sessions_active",
            "gauge",
            "Sessions with a target connected now.",
            load(&self.sessions_active),
        );
        single(
            &mut out,
            "gatehouse_sessions_started_total",
            "counter",
            "Sessions started (session.start).",
            load(&self.sessions_started),
        );
        single(
            &mut out,
            "gatehouse_sessions_denied_total",
            "counter",
            "Access denied by policy (access.denied).",
            load(&self.sessions_denied),
        );
        head(
            &mut out,
            "gatehouse_auth_failures_total",
            "counter",
            "Authentication failures (auth.failure) by method.",
        );
        for (method, n) in AUTH_METHODS.iter().zip(&self.auth_failures) {
            let labels = format!("{{method=\"{method}\"}}");
            line(&mut out, "gatehouse_auth_failures_total", &labels, load(n));
        }
        head(
            &mut out,
            "gatehouse_bytes_total",
            "counter",
            "Session bytes from the user (in) and to the user (out), counted at session.end.",
        );
        line(
            &mut out,
            "gatehouse_bytes_total",
            "{direction=\"in\"}",
            load(&self.bytes_in),
        );
        line(
            &mut out,
            "gatehouse_bytes_total",
            "{direction=\"out\"}",
            load(&self.bytes_out),
        );
        single(
            &mut out,
            "gatehouse_events_total",
            "counter",
            "Events the gateway wrote to the audit trail through its audit path.",
            load(&self.events),
        );
        single(
            &mut out,
            "gatehouse_startups",
            "gauge",
            "Connections accepted and not yet authenticated (server.max_startups).",
            load(&self.startups),
        );
        single(
            &mut out,
            "gatehouse_startups_waiting",
            "gauge",
            "Connections over their source's per_source_max_startups waiting for a place.",
            load(&self.startups_waiting),
        );
        single(
            &mut out,
            "gatehouse_audit_spooled",
            "gauge",
            "Events waiting in the audit spool for the store.",
            load(&self.audit_spooled),
        );
        head(
            &mut out,
            "gatehouse_recording_upload_lag_seconds",
            "gauge",
            "How long the oldest recording chunk not yet in object storage has waited (0: all stored).",
        );
        let lag = load(&self.upload_lag_ms) as f64 / 1000.0;
        let _ = writeln!(out, "gatehouse_recording_upload_lag_seconds {lag}");
        single(
            &mut out,
            "gatehouse_recording_upload_failures_total",
            "counter",
            "Recording chunks not stored after every retry.",
            load(&self.upload_failures),
        );
        self.render_histograms(&mut out);
        self.render_sink_lag(&mut out);
        out
    }

    fn render_histograms(&self, out: &mut String) {
        render_histogram(
            out,
            "gatehouse_store_write_seconds",
            "Time to append one event to the audit store, waiting for its commit included.",
            &self.store_write,
        );
        render_histogram(
            out,
            "gatehouse_store_commit_seconds",
            "Time of one audit store commit (one transaction carries every append waiting for it).",
            &self.store_commit,
        );
    }

    fn render_sink_lag(&self, out: &mut String) {
        let lags = match self.sink_lag.lock() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        };
        head(
            out,
            "gatehouse_sink_lag_events",
            "gauge",
            "Events a sink has yet to deliver.",
        );
        for (sink, lag) in lags {
            let labels = format!("{{sink=\"{}\"}}", escape_label(&sink));
            line(out, "gatehouse_sink_lag_events", &labels, lag);
        }
    }
}

fn render_histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    head(out, name, "histogram", help);
    for (bound, bucket) in WRITE_BUCKETS.iter().zip(&h.buckets) {
        let le = if bound.is_infinite() {
            "+Inf".to_string()
        } else {
            bound.to_string()
        };
        let labels = format!("{{le=\"{le}\"}}");
        line(
            out,
            &format!("{name}_bucket"),
            &labels,
            bucket.load(Ordering::Relaxed),
        );
    }
    let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum {sum}");
    line(
        out,
        &format!("{name}_count"),
        "",
        h.count.load(Ordering::Relaxed),
    );
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One metric with one unlabelled series.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    head(out, name, kind, help);
    line(out, name, "", value);
}

fn line(out: &mut String, name: &str, labels: &str, value: u64) {
    let _ = writeln!(out, "{name}{labels} {value}");
}

/// A label value as the text format wants it: backslash, quote and
/// newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[test]
    fn every_metric_has_help_and_type_once() {
        let text = Metrics::new().render();
        for (name, kind) in [
            ("gatehouse_sessions_active", "gauge"),
            ("gatehouse_sessions_started_total", "counter"),
            ("gatehouse_sessions_denied_total", "counter"),
            ("gatehouse_auth_failures_total", "counter"),
            ("gatehouse_bytes_total", "counter"),
            ("gatehouse_events_total", "counter"),
            ("gatehouse_audit_spooled", "gauge"),
            ("gatehouse_startups", "gauge"),
            ("gatehouse_startups_waiting", "gauge"),
            ("gatehouse_store_write_seconds", "histogram"),
            ("gatehouse_store_commit_seconds", "histogram"),
            ("gatehouse_sink_lag_events", "gauge"),
        ] {
            let t = format!("# TYPE {name} {kind}\n");
            assert_eq!(text.matches(&t).count(), 1, "{name}\n{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn events_count_by_type() {
        let m = Metrics::new();
        m.event("session.start", None, None);
        m.event("access.denied", None, None);
        m.event("access.denied", None, None);
        m.event("auth.failure", Some("publickey"), None);
        m.event("auth.failure", Some("made-up"), None);
        m.event("auth.failure", None, None);
        m.event("session.end", None, Some((10, 2000)));
        m.set_sessions_active(3);
        let t = m.render();
        assert_eq!(value(&t, "gatehouse_events_total").as_deref(), Some("7"));
        assert_eq!(
            value(&t, "gatehouse_sessions_started_total").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&t, "gatehouse_sessions_denied_total").as_deref(),
            Some("2")
        );
        assert_eq!(value(&t, "gatehouse_sessions_active").as_deref(), Some("3"));
        let failures = |m: &str| {
            value(
                &t,
                &format!("gatehouse_auth_failures_total{{method=\"{m}\"}}"),
            )
        };
        assert_eq!(failures("publickey").as_deref(), Some("1"));
        assert_eq!(failures("unknown").as_deref(), Some("2"));
        assert_eq!(failures("password").as_deref(), Some("0"));
        assert_eq!(
            t.matches("gatehouse_auth_failures_total{").count(),
            AUTH_METHODS.len()
        );
        assert_eq!(
            value(&t, "gatehouse_bytes_total{direction=\"in\"}").as_deref(),
            Some("10")
        );
        assert_eq!(
            value(&t, "gatehouse_bytes_total{direction=\"out\"}").as_deref(),
            Some("2000")
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        m.store_write(Duration::from_micros(500));
        m.store_write(Duration::from_millis(30));
        m.store_write(Duration::from_secs(20));
        let t = m.render();
        let b = |le: &str| {
            value(
                &t,
                &format!("gatehouse_store_write_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.001").as_deref(), Some("1"));
        assert_eq!(b("0.025").as_deref(), Some("1"));
        assert_eq!(b("0.05").as_deref(), Some("2"));
        assert_eq!(b("10").as_deref(), Some("2"));
        assert_eq!(b("+Inf").as_deref(), Some("3"));
        assert_eq!(
            value(&t, "gatehouse_store_write_seconds_count").as_deref(),
            Some("3")
        );
        assert_eq!(
            value(&t, "gatehouse_store_write_seconds_sum").as_deref(),
            Some("20.0305")
        );
    }

    #[test]
    fn sink_lag_is_set_per_sink_and_escaped() {
        let m = Metrics::new();
        m.set_sink_lag("siem", 5);
        m.set_sink_lag("siem", 2);
        m.set_sink_lag("a\"b", 1);
        let t = m.render();
        assert_eq!(
            value(&t, "gatehouse_sink_lag_events{sink=\"siem\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            value(&t, "gatehouse_sink_lag_events{sink=\"a\\\"b\"}").as_deref(),
            Some("1")
        );
    }
}
