//! The receiver's metrics, counted in atomics and written in Prometheus' text exposition
//! format (version 0.0.4) for `GET /metrics`.
//!
//! Every label set is known in advance, so every series has its place from the start: a
//! request is counted under its route (the index of its route in the route table, or one
//! place for requests that matched no route) and its status, in a dense table of atomic
//! counters. Counting a request is a few relaxed atomic additions: no lock, no allocation, no
//! hashing of labels, and no label a client could make up (the route label is the route's
//! template, never the path asked for). docs/DECISIONS.md says why this is not a crate.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::problem::ProblemCode;

/// The statuses counted apart: 100 to 599 (the receiver answers no other).
const FIRST_STATUS: u16 = 100;
const STATUSES: usize = 500;

/// The upper bounds of the request duration histogram's buckets, in microseconds (the
/// exposition shows them in seconds): 0.5 ms to 60 s.
const BOUNDS_US: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// One route's request durations: a count per bucket (not cumulative: the exposition adds
/// them up), the `+Inf` bucket last, and the sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }
}

/// What became of a `POST /v1/deployments` that got past authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployOutcome {
    /// Applied (`201`).
    Applied,
    /// The replay of a bundle applied before (`200`): nothing changed.
    Replayed,
    /// Refused (a `4xx`): nothing was applied.
    Refused,
    /// Failed on the receiver's side (a `5xx`): nothing was applied.
    Failed,
    /// A dry run answered its plan: nothing was applied.
    Planned,
}

impl DeployOutcome {
    const ALL: [DeployOutcome; 5] = [
        DeployOutcome::Applied,
        DeployOutcome::Replayed,
        DeployOutcome::Refused,
        DeployOutcome::Failed,
        DeployOutcome::Planned,
    ];

    /// The outcome of a deploy's answer: its status, and whether it was a dry run (whose
    /// success is a plan).
    pub fn of_answer(status: u16, dry_run: bool) -> DeployOutcome {
        match DeployOutcome::of_status(status) {
            DeployOutcome::Applied | DeployOutcome::Replayed if dry_run => DeployOutcome::Planned,
            other => other,
        }
    }

    /// The outcome an answer's status tells.
    pub fn of_status(status: u16) -> DeployOutcome {
        match status {
            201 => DeployOutcome::Applied,
            200..=299 => DeployOutcome::Replayed,
            500.. => DeployOutcome::Failed,
            _ => DeployOutcome::Refused,
        }
    }

    fn label(self) -> &'static str {
        match self {
            DeployOutcome::Applied => "applied",
            DeployOutcome::Replayed => "replayed",
            DeployOutcome::Refused => "refused",
            DeployOutcome::Failed => "failed",
            DeployOutcome::Planned => "planned",
        }
    }
}

/// What became of an attempt to obtain a new OAuth access token for a credential (a refresh,
/// or the credential's own grant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new access token was obtained.
    Ok,
    /// The credential needs a person to authorize it again (its refresh token was refused,
    /// or it has none).
    NeedsAuthorization,
    /// The token endpoint could not be reached, refused, or answered something unusable; or
    /// the outbound policy refused it.
    Failed,
}

impl RefreshOutcome {
    const ALL: [RefreshOutcome; 3] = [
        RefreshOutcome::Ok,
        RefreshOutcome::NeedsAuthorization,
        RefreshOutcome::Failed,
    ];

    /// The outcome of an attempt that succeeded (`None`) or failed with `code`.
    pub fn of(code: Option<ProblemCode>) -> RefreshOutcome {
        match code {
            None => RefreshOutcome::Ok,
            Some(ProblemCode::NeedsAuthorization) => RefreshOutcome::NeedsAuthorization,
            Some(_) => RefreshOutcome::Failed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            RefreshOutcome::Ok => "ok",
            RefreshOutcome::NeedsAuthorization => "needs_authorization",
            RefreshOutcome::Failed => "failed",
        }
    }
}

/// Whether a reload (`SIGHUP`) of the configuration and the TLS certificate succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Everything read was applied.
    Ok,
    /// A file could not be read or was invalid: what it configures was kept as it was.
    Failed,
}

/// A route as the metrics label it: its method and template.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel {
    /// `GET`, `POST`…
    pub method: &'static str,
    /// The route's template, e.g. `/v1/credentials/{path}`.
    pub template: &'static str,
}

/// The route label of requests that matched no route (unknown paths, and known paths asked
/// with a method they do not have).
pub const UNMATCHED: &str = "unmatched";

/// The receiver's counters.
#[derive(Debug)]
pub struct Metrics {
    routes: Vec<RouteLabel>,
    /// `(routes.len() + 1) × STATUSES` counters: route `r`'s count of status `s` is at
    /// `r × STATUSES + (s − 100)`; the last row is for requests that matched no route.
    requests: Box<[AtomicU64]>,
    /// One histogram per route, and one for requests that matched no route.
    durations: Box<[Histogram]>,
    deployments: [AtomicU64; DeployOutcome::ALL.len()],
    refreshes: [AtomicU64; RefreshOutcome::ALL.len()],
    reloads: [AtomicU64; 2],
    cached_answers: AtomicU64,
}

impl Metrics {
    /// Counters for `routes` (in route-table order: a request's route is its index here).
    pub fn new(routes: Vec<RouteLabel>) -> Metrics {
        let rows = routes.len() + 1;
        Metrics {
            requests: (0..rows * STATUSES).map(|_| AtomicU64::new(0)).collect(),
            durations: (0..rows).map(|_| Histogram::default()).collect(),
            routes,
            deployments: Default::default(),
            refreshes: Default::default(),
            reloads: Default::default(),
            cached_answers: AtomicU64::new(0),
        }
    }

    /// Counts a request answered `status` after `took`, under route `route` (an index into
    /// the routes given to [`Metrics::new`]; `None` or out of range: no route).
    pub fn request(&self, route: Option<usize>, status: u16, took: Duration) {
        let row = route
            .filter(|r| *r < self.routes.len())
            .unwrap_or(self.routes.len());
        if let Some(s) = status
            .checked_sub(FIRST_STATUS)
            .map(usize::from)
            .filter(|s| *s < STATUSES)
        {
            self.requests[row * STATUSES + s].fetch_add(1, Relaxed);
        }
        self.durations[row].observe(took);
    }

    /// Counts a deployment's outcome.
    pub fn deployment(&self, outcome: DeployOutcome) {
        self.deployments[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Counts an attempt to obtain an OAuth access token.
    pub fn refresh(&self, outcome: RefreshOutcome) {
        self.refreshes[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Counts a reload.
    pub fn reload(&self, outcome: ReloadOutcome) {
        self.reloads[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Counts a credential read answered from the answer cache.
    pub fn cached_answer(&self) {
        self.cached_answers.fetch_add(1, Relaxed);
    }

    /// The label of row `row`.
    fn label(&self, row: usize) -> (&'static str, &'static str) {
        match self.routes.get(row) {
            Some(r) => (r.method, r.template),
            // An empty label is no label: unmatched requests have no method.
            None => ("", UNMATCHED),
        }
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, version: &str) -> String {
        let mut out = String::with_capacity(4096);
        // `write!` to a `String` cannot fail.
        let mut line = |s: std::fmt::Arguments<'_>| {
            let _ = out.write_fmt(s);
            out.push('\n');
        };
        line(format_args!(
            "# HELP flowpack_build_info The receiver's version (always 1)."
        ));
        line(format_args!("# TYPE flowpack_build_info gauge"));
        line(format_args!(
            "flowpack_build_info{{version=\"{}\"}} 1",
            Escaped(version)
        ));

        line(format_args!(
            "# HELP flowpack_http_requests_total HTTP requests answered, by route template and status."
        ));
        line(format_args!("# TYPE flowpack_http_requests_total counter"));
        for (i, c) in self.requests.iter().enumerate() {
            let n = c.load(Relaxed);
            if n == 0 {
                continue;
            }
            let (method, route) = self.label(i / STATUSES);
            let status = FIRST_STATUS as usize + i % STATUSES;
            line(format_args!(
                "flowpack_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                Escaped(method),
                Escaped(route)
            ));
        }

        line(format_args!(
            "# HELP flowpack_http_request_duration_seconds Time from a request's arrival to its answer's head, by route template."
        ));
        line(format_args!(
            "# TYPE flowpack_http_request_duration_seconds histogram"
        ));
        for (row, h) in self.durations.iter().enumerate() {
            let counts: Vec<u64> = h.buckets.iter().map(|b| b.load(Relaxed)).collect();
            let count: u64 = counts.iter().sum();
            if count == 0 {
                continue;
            }
            let (method, route) = self.label(row);
            let (method, route) = (Escaped(method), Escaped(route));
            let mut cumulative = 0;
            for (i, n) in counts.iter().enumerate() {
                cumulative += n;
                let le = match BOUNDS_US.get(i) {
                    Some(us) => Seconds(*us).to_string(),
                    None => "+Inf".to_owned(),
                };
                line(format_args!(
                    "flowpack_http_request_duration_seconds_bucket{{method=\"{method}\",route=\"{route}\",le=\"{le}\"}} {cumulative}"
                ));
            }
            line(format_args!(
                "flowpack_http_request_duration_seconds_sum{{method=\"{method}\",route=\"{route}\"}} {}",
                Seconds(h.sum_us.load(Relaxed))
            ));
            line(format_args!(
                "flowpack_http_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\"}} {cumulative}"
            ));
        }

        line(format_args!(
            "# HELP flowpack_deployments_total Deployments by outcome: applied, replayed, refused (4xx) or failed (5xx)."
        ));
        line(format_args!("# TYPE flowpack_deployments_total counter"));
        for o in DeployOutcome::ALL {
            line(format_args!(
                "flowpack_deployments_total{{outcome=\"{}\"}} {}",
                o.label(),
                self.deployments[o as usize].load(Relaxed)
            ));
        }

        line(format_args!(
            "# HELP flowpack_oauth_refreshes_total Attempts to obtain a new OAuth access token, by outcome."
        ));
        line(format_args!(
            "# TYPE flowpack_oauth_refreshes_total counter"
        ));
        for o in RefreshOutcome::ALL {
            line(format_args!(
                "flowpack_oauth_refreshes_total{{outcome=\"{}\"}} {}",
                o.label(),
                self.refreshes[o as usize].load(Relaxed)
            ));
        }

        line(format_args!(
            "# HELP flowpack_credential_reads_cached_total Credential reads answered from the answer cache (unchanged store), without a database read."
        ));
        line(format_args!(
            "# TYPE flowpack_credential_reads_cached_total counter"
        ));
        line(format_args!(
            "flowpack_credential_reads_cached_total {}",
            self.cached_answers.load(Relaxed)
        ));

        line(format_args!(
            "# HELP flowpack_reloads_total Reloads of the configuration and TLS certificate (SIGHUP), by outcome."
        ));
        line(format_args!("# TYPE flowpack_reloads_total counter"));
        for (o, label) in [(ReloadOutcome::Ok, "ok"), (ReloadOutcome::Failed, "failed")] {
            line(format_args!(
                "flowpack_reloads_total{{outcome=\"{label}\"}} {}",
                self.reloads[o as usize].load(Relaxed)
            ));
        }
        out
    }
}

/// A label value escaped as the exposition format requires (`\\`, `\"`, `\n`).
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Microseconds shown as seconds, exactly (`2500` → `0.0025`).
struct Seconds(u64);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, us) = (self.0 / 1_000_000, self.0 % 1_000_000);
        if us == 0 {
            return write!(f, "{s}");
        }
        let frac = format!("{us:06}");
        write!(f, "{s}.{}", frac.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(vec![
            RouteLabel {
                method: "GET",
                template: "/healthz",
            },
            RouteLabel {
                method: "GET",
                template: "/v1/credentials/{path}",
            },
        ])
    }

    #[test]
    fn counts_requests_by_route_and_status_and_unmatched_apart() {
        let m = metrics();
        m.request(Some(1), 200, Duration::from_micros(700));
        m.request(Some(1), 200, Duration::from_millis(3));
        m.request(Some(1), 404, Duration::from_micros(10));
        m.request(None, 404, Duration::from_secs(100));
        let text = m.render("1.2.3");
        for expected in [
            "flowpack_build_info{version=\"1.2.3\"} 1",
            "flowpack_http_requests_total{method=\"GET\",route=\"/v1/credentials/{path}\",status=\"200\"} 2",
            "flowpack_http_requests_total{method=\"GET\",route=\"/v1/credentials/{path}\",status=\"404\"} 1",
            "flowpack_http_requests_total{method=\"\",route=\"unmatched\",status=\"404\"} 1",
            "flowpack_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/credentials/{path}\",le=\"0.0005\"} 1",
            "flowpack_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/credentials/{path}\",le=\"0.001\"} 2",
            "flowpack_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/credentials/{path}\",le=\"0.005\"} 3",
            "flowpack_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/credentials/{path}\",le=\"+Inf\"} 3",
            "flowpack_http_request_duration_seconds_sum{method=\"GET\",route=\"/v1/credentials/{path}\"} 0.00371",
            "flowpack_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/credentials/{path}\"} 3",
            "flowpack_http_request_duration_seconds_bucket{method=\"\",route=\"unmatched\",le=\"60\"} 0",
            "flowpack_http_request_duration_seconds_bucket{method=\"\",route=\"unmatched\",le=\"+Inf\"} 1",
            "flowpack_deployments_total{outcome=\"refused\"} 0",
            "flowpack_oauth_refreshes_total{outcome=\"failed\"} 0",
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected}\n{text}");
        }
        // A route never asked has no series.
        assert!(!text.contains("/healthz"), "{text}");
    }

    #[test]
    fn outcomes_follow_the_status() {
        assert_eq!(DeployOutcome::of_status(201), DeployOutcome::Applied);
        assert_eq!(DeployOutcome::of_status(200), DeployOutcome::Replayed);
        assert_eq!(DeployOutcome::of_status(422), DeployOutcome::Refused);
        assert_eq!(DeployOutcome::of_status(503), DeployOutcome::Failed);
    }

    #[test]
    fn seconds_and_label_values_are_written_exactly() {
        assert_eq!(Seconds(0).to_string(), "0");
        assert_eq!(Seconds(2_500).to_string(), "0.0025");
        assert_eq!(Seconds(60_000_000).to_string(), "60");
        assert_eq!(Seconds(1_000_001).to_string(), "1.000001");
        assert_eq!(Escaped("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }
}
