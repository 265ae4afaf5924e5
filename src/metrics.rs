//! Prometheus metrics (one registry per gateway), counted from `logging`, the route cache, the
//! Redis store and the auth decision; served by `admin`. Labels are route names, methods,
//! status classes, results and causes: never a workspace, user, host or raw path.

use crate::FastMap;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

/// Request durations: sub-millisecond proxying up to slow upstreams.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Redis command latency.
const REDIS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// WebSocket session lengths: seconds to a working day.
const WS_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
];

pub struct CacheCounters {
    pub hit: IntCounter,
    pub negative_hit: IntCounter,
    pub miss: IntCounter,
    pub stale: IntCounter,
}

/// The `method` label: the standard methods, everything else `other` (a client must not be
/// able to mint series).
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "other",
];
/// The `status` label: `2xx`, `4xx`, …; `none` when no response was sent.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// How a request ended: the `result` label of the request series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response (or an error) came from the upstream.
    Proxied,
    /// edgegate refused it with one of its JSON errors.
    Refused,
    /// edgegate answered it itself (API endpoints, redirects).
    Answered,
    /// No response was sent.
    Dropped,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Proxied,
        Outcome::Refused,
        Outcome::Answered,
        Outcome::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Proxied => "proxied",
            Outcome::Refused => "refused",
            Outcome::Answered => "answered",
            Outcome::Dropped => "dropped",
        }
    }
}

/// The `method` labels of `edgegate_auth_decisions_total` (`AuthMethod::as_str`, `none`
/// without a credential) and its `result` labels.
const AUTH_METHODS: [&str; 8] = [
    "session",
    "terminal_token",
    "ide_cookie",
    "dev_ide_token",
    "none",
    "port_cookie",
    "port_token",
    "share_link",
];
const AUTH_RESULTS: [&str; 5] = ["ok", "open", "forbidden", "unauthenticated", "error"];

/// One route's request counter and duration histogram, resolved once per combination of
/// labels. `with_label_values` hashes its labels with SipHash and looks the series up under
/// the vector's lock: three times per request, ~1.1k instructions, where a resolved series
/// costs an index (docs/BENCHMARKS.md). Slots are filled on first use, so /metrics still
/// lists only the series that have counted something.
struct RequestSeries {
    count: IntCounter,
    duration: Histogram,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
}

type RouteSeries = Box<[OnceLock<RequestSeries>]>;

const SERIES_PER_ROUTE: usize = METHODS.len() * STATUS_CLASSES.len() * Outcome::ALL.len();

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Resolved request series by route name (routes come from the config and the API's
    /// endpoints, so the map stays small).
    request_series: RwLock<FastMap<Box<str>, RouteSeries>>,
    /// Resolved `auth_decisions` series, `AUTH_METHODS` x `AUTH_RESULTS`.
    auth_series: [OnceLock<IntCounter>; AUTH_METHODS.len() * AUTH_RESULTS.len()],
    pub upstream_failures: IntCounterVec,
    pub auth_decisions: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    /// The `cache_lookups` series resolved once: a lookup on every request need not hash labels.
    pub cache: CacheCounters,
    pub cache_invalidations: IntCounter,
    /// Fresh entries dropped to keep a cache inside its bounds, by cache.
    pub cache_evictions: IntCounterVec,
    pub redis_duration: HistogramVec,
    pub redis_errors: IntCounterVec,
    pub websockets_open: IntGaugeVec,
    pub websocket_duration: HistogramVec,
    pub websocket_closes: IntCounterVec,
    /// Wake requests for stopped workspaces: `published`, `repeated` (within the interval,
    /// here or on another instance), `failed` (the store did not take it).
    pub wake_requests: IntCounterVec,
    /// Requests and WebSockets ended because their workspace stopped or its record went.
    pub drained: IntCounterVec,
    /// Requests refused by a rate limit, by scope (`endpoint`: per client address on token
    /// minting and the bootstrap; `user`: per verified user on proxied requests).
    pub rate_limited: IntCounterVec,
    /// Audit events the stream writer could not keep up with (the file still has them).
    pub audit_dropped: IntCounter,
    /// Request and response body bytes by route and direction (`in`: from the client).
    pub bytes: IntCounterVec,
    /// edgegate's own answers by error code (a bounded set: `GatewayError::ALL`).
    pub refusals: IntCounterVec,
    /// Client connections open now (HTTP/1 and HTTP/2, plain and TLS).
    pub connections_open: prometheus::IntGauge,
    /// When each configured certificate expires (unix s), by listener and names.
    pub cert_expiry: prometheus::GaugeVec,
    /// 1 while `/readyz` says ready (as of its last request).
    pub ready: prometheus::IntGauge,
    /// 1 while ready with the route store down (serving what is cached).
    pub degraded: prometheus::IntGauge,
    /// Route records held in memory, read at each scrape.
    pub cached_records: prometheus::IntGauge,
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let cache_invalidations = IntCounter::new(
            "edgegate_cache_invalidations_total",
            "Cache entries dropped by an invalidation message",
        )?;
        r.register(Box::new(cache_invalidations.clone()))?;
        let websockets_open = IntGaugeVec::new(
            Opts::new("edgegate_websockets_open", "WebSockets currently open"),
            &["route"],
        )?;
        r.register(Box::new(websockets_open.clone()))?;
        let cache_lookups = counter(
            &r,
            "edgegate_cache_lookups_total",
            "Record cache lookups: hit, negative_hit, miss, stale",
            &["result"],
        )?;
        let cache_evictions = counter(
            &r,
            "edgegate_cache_evictions_total",
            "Fresh cache entries dropped to stay inside cache.max_entries / cache.max_bytes",
            &["cache"],
        )?;
        // Present at zero from the start, so an alert has a series to watch.
        for c in ["records", "sessions"] {
            cache_evictions.with_label_values(&[c]);
        }
        let wake_requests = counter(
            &r,
            "edgegate_wake_requests_total",
            "Wake requests for stopped workspaces: published, repeated (within the interval), failed",
            &["result"],
        )?;
        for w in ["published", "repeated", "failed"] {
            wake_requests.with_label_values(&[w]);
        }
        let rate_limited = counter(
            &r,
            "edgegate_rate_limited_total",
            "Requests refused with 429 by a rate limit: scope=endpoint (per client address), scope=user",
            &["scope"],
        )?;
        for s in ["endpoint", "user"] {
            rate_limited.with_label_values(&[s]);
        }
        // Counted by the logger (Pingora's benign races) and `suppress_error_log`: process-wide,
        // so every registry of the process shows the same counter.
        r.register(Box::new(crate::logging::PINGORA_BENIGN.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "edgegate_build_info",
                "1, labelled with the running edgegate's version",
            ),
            &["version"],
        )?;
        r.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let refusals = counter(
            &r,
            "edgegate_refusals_total",
            "Answers edgegate gave itself instead of the upstream's, by error code",
            &["code"],
        )?;
        for e in crate::error::GatewayError::ALL {
            refusals.with_label_values(&[e.code()]);
        }
        let connections_open = prometheus::IntGauge::new(
            "edgegate_connections_open",
            "Client connections open now (HTTP/1 and HTTP/2, plain and TLS)",
        )?;
        r.register(Box::new(connections_open.clone()))?;
        let cert_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "edgegate_tls_certificate_expiry_timestamp_seconds",
                "When each configured certificate expires (unix seconds), by listener and names",
            ),
            &["listener", "names"],
        )?;
        r.register(Box::new(cert_expiry.clone()))?;
        let ready = prometheus::IntGauge::new(
            "edgegate_ready",
            "1 while /readyz says this instance can serve (as of its last request)",
        )?;
        r.register(Box::new(ready.clone()))?;
        let degraded = prometheus::IntGauge::new(
            "edgegate_degraded",
            "1 while ready with the route store down, serving cached routes",
        )?;
        r.register(Box::new(degraded.clone()))?;
        let cached_records = prometheus::IntGauge::new(
            "edgegate_cached_records",
            "Route records held in memory, fresh or kept past their TTL as stale copies \
             (bounded by cache.max_entries and cache.max_bytes)",
        )?;
        r.register(Box::new(cached_records.clone()))?;
        let audit_dropped = IntCounter::new(
            "edgegate_audit_dropped_total",
            "Audit events not queued for the Redis stream (the writer fell behind); the file has them",
        )?;
        r.register(Box::new(audit_dropped.clone()))?;
        let cache = CacheCounters {
            hit: cache_lookups.with_label_values(&["hit"]),
            negative_hit: cache_lookups.with_label_values(&["negative_hit"]),
            miss: cache_lookups.with_label_values(&["miss"]),
            stale: cache_lookups.with_label_values(&["stale"]),
        };
        Ok(Metrics {
            request_series: RwLock::new(FastMap::default()),
            auth_series: std::array::from_fn(|_| OnceLock::new()),
            cache_lookups,
            cache,
            requests: counter(
                &r,
                "edgegate_requests_total",
                "Requests by route, method, status class and result",
                &["route", "method", "status", "result"],
            )?,
            request_duration: histogram(
                &r,
                "edgegate_request_duration_seconds",
                "Time from request start to the end of the response",
                &["route", "method", "result"],
                REQUEST_BUCKETS,
            )?,
            upstream_failures: counter(
                &r,
                "edgegate_upstream_failures_total",
                "Upstream connect failures and timeouts",
                &["route", "kind"],
            )?,
            auth_decisions: counter(
                &r,
                "edgegate_auth_decisions_total",
                "Auth decisions by credential and result",
                &["method", "result"],
            )?,
            cache_invalidations,
            cache_evictions,
            refusals,
            connections_open,
            cert_expiry,
            ready,
            degraded,
            cached_records,
            bytes: counter(
                &r,
                "edgegate_bytes_total",
                "Request (direction=in) and response (direction=out) body bytes by route",
                &["route", "direction"],
            )?,
            wake_requests,
            rate_limited,
            audit_dropped,
            drained: counter(
                &r,
                "edgegate_drained_total",
                "Requests (kind=http) and WebSockets (kind=websocket) ended because their workspace stopped (cause=stopped) or its record went (cause=gone)",
                &["kind", "cause"],
            )?,
            redis_duration: histogram(
                &r,
                "edgegate_redis_command_duration_seconds",
                "Redis command latency",
                &["command"],
                REDIS_BUCKETS,
            )?,
            redis_errors: counter(
                &r,
                "edgegate_redis_errors_total",
                "Redis commands that failed or timed out",
                &["command"],
            )?,
            websockets_open,
            websocket_duration: histogram(
                &r,
                "edgegate_websocket_duration_seconds",
                "How long upgraded connections stayed open",
                &["route"],
                WS_BUCKETS,
            )?,
            websocket_closes: counter(
                &r,
                "edgegate_websocket_closes_total",
                "WebSocket closes by cause: client, upstream, idle_timeout, shutdown, error",
                &["route", "cause"],
            )?,
            registry: r,
        })
    }

    /// Put the series an alert or a dashboard watches in place at zero for each route of the
    /// config, before anything counts: open WebSockets, upstream failures, drains.
    pub fn known_routes<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        for route in routes {
            self.websockets_open.with_label_values(&[route]);
            for status in ["2xx", "4xx", "5xx"] {
                for result in ["proxied", "refused"] {
                    self.requests
                        .with_label_values(&[route, "GET", status, result]);
                }
            }
            for direction in ["in", "out"] {
                self.bytes.with_label_values(&[route, direction]);
            }
            for result in ["proxied", "refused"] {
                self.request_duration
                    .with_label_values(&[route, "GET", result]);
            }
            self.websocket_duration.with_label_values(&[route]);
            for cause in [
                "client",
                "upstream",
                "idle_timeout",
                "shutdown",
                "revoked",
                "error",
            ] {
                self.websocket_closes.with_label_values(&[route, cause]);
            }
            for kind in ["connect", "timeout"] {
                self.upstream_failures.with_label_values(&[route, kind]);
            }
        }
        for kind in ["http", "websocket"] {
            for cause in ["stopped", "gone", "access_changed"] {
                self.drained.with_label_values(&[kind, cause]);
            }
        }
        for method in AUTH_METHODS {
            for result in AUTH_RESULTS {
                self.auth_decisions.with_label_values(&[method, result]);
            }
        }
        for command in ["hgetall", "get", "set", "hset", "xadd", "ping", "activity"] {
            self.redis_errors.with_label_values(&[command]);
            self.redis_duration.with_label_values(&[command]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("cannot encode metrics: {e}");
        }
        out
    }
}

impl Metrics {
    /// Count a finished request and observe its duration.
    #[allow(clippy::too_many_arguments)]
    pub fn record_request(
        &self,
        route: &str,
        method: &http::Method,
        status: u16,
        outcome: Outcome,
        elapsed: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let (mi, si) = (method_index(method), status_index(status));
        let slot = (mi * STATUS_CLASSES.len() + si) * Outcome::ALL.len() + outcome as usize;
        let resolve = || RequestSeries {
            count: self.requests.with_label_values(&[
                route,
                METHODS[mi],
                STATUS_CLASSES[si],
                outcome.as_str(),
            ]),
            duration: self.request_duration.with_label_values(&[
                route,
                METHODS[mi],
                outcome.as_str(),
            ]),
            bytes_in: self.bytes.with_label_values(&[route, "in"]),
            bytes_out: self.bytes.with_label_values(&[route, "out"]),
        };
        let record = |s: &RequestSeries| {
            s.count.inc();
            s.duration.observe(elapsed.as_secs_f64());
            if bytes_in > 0 {
                s.bytes_in.inc_by(bytes_in);
            }
            if bytes_out > 0 {
                s.bytes_out.inc_by(bytes_out);
            }
        };
        if let Ok(routes) = self.request_series.read() {
            if let Some(series) = routes.get(route) {
                record(series[slot].get_or_init(resolve));
                return;
            }
        }
        // The route's first request: its table goes in once. (A poisoned lock only means a
        // panic elsewhere; the count still goes in, through the vectors.)
        match self.request_series.write() {
            Ok(mut routes) => {
                let series = routes
                    .entry(route.into())
                    .or_insert_with(|| (0..SERIES_PER_ROUTE).map(|_| OnceLock::new()).collect());
                record(series[slot].get_or_init(resolve));
            }
            Err(_) => record(&resolve()),
        }
    }

    /// Count an auth decision: `method` is `AuthMethod::as_str` or `none`, `result` one of
    /// `ok`, `open`, `forbidden`, `unauthenticated`, `error`.
    pub fn record_auth(&self, method: &'static str, result: &'static str) {
        let mi = AUTH_METHODS.iter().position(|m| *m == method);
        let ri = AUTH_RESULTS.iter().position(|r| *r == result);
        match (mi, ri) {
            (Some(mi), Some(ri)) => self.auth_series[mi * AUTH_RESULTS.len() + ri]
                .get_or_init(|| self.auth_decisions.with_label_values(&[method, result]))
                .inc(),
            _ => self
                .auth_decisions
                .with_label_values(&[method, result])
                .inc(),
        }
    }
}

fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::HEAD => 4,
        http::Method::OPTIONS => 5,
        http::Method::PATCH => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}

fn status_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// The method as a label: the standard ones, everything else `other` (a client must not be
/// able to mint series).
pub fn method_label(m: &http::Method) -> &'static str {
    METHODS[method_index(m)]
}

/// `2xx`, `4xx`, …; `none` when no response was sent.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_series() {
        let m = Metrics::new().expect("metrics");
        m.requests
            .with_label_values(&["workspace", "GET", "2xx", "proxied"])
            .inc();
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains(
            "edgegate_requests_total{method=\"GET\",result=\"proxied\",route=\"workspace\",status=\"2xx\"} 1"
        ), "{text}");
        assert_eq!(status_class(503), "5xx");
    }

    #[test]
    fn resolved_series_count_where_the_vectors_would() {
        let m = Metrics::new().expect("metrics");
        let ms = Duration::from_millis(3);
        for _ in 0..3 {
            m.record_request(
                "workspace",
                &http::Method::GET,
                200,
                Outcome::Proxied,
                ms,
                0,
                0,
            );
        }
        m.record_request(
            "workspace",
            &http::Method::POST,
            0,
            Outcome::Dropped,
            ms,
            0,
            0,
        );
        m.record_request("api", &http::Method::GET, 404, Outcome::Refused, ms, 0, 0);
        let odd = http::Method::from_bytes(b"PURGE").expect("method");
        m.record_request("workspace", &odd, 204, Outcome::Answered, ms, 0, 0);
        m.record_auth("session", "ok");
        m.record_auth("session", "ok");
        m.record_auth("none", "open");
        m.record_auth("made_up", "ok");
        let text = String::from_utf8(m.render()).expect("utf-8");
        for line in [
            r#"edgegate_requests_total{method="GET",result="proxied",route="workspace",status="2xx"} 3"#,
            r#"edgegate_requests_total{method="POST",result="dropped",route="workspace",status="none"} 1"#,
            r#"edgegate_requests_total{method="GET",result="refused",route="api",status="4xx"} 1"#,
            r#"edgegate_requests_total{method="other",result="answered",route="workspace",status="2xx"} 1"#,
            r#"edgegate_request_duration_seconds_count{method="GET",result="proxied",route="workspace"} 3"#,
            r#"edgegate_request_duration_seconds_bucket{method="GET",result="proxied",route="workspace",le="0.0025"} 0"#,
            r#"edgegate_request_duration_seconds_bucket{method="GET",result="proxied",route="workspace",le="0.005"} 3"#,
            r#"edgegate_auth_decisions_total{method="session",result="ok"} 2"#,
            r#"edgegate_auth_decisions_total{method="none",result="open"} 1"#,
            r#"edgegate_auth_decisions_total{method="made_up",result="ok"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        // Only what counted is listed.
        assert_eq!(
            text.matches("edgegate_requests_total{").count(),
            4,
            "{text}"
        );
    }
}
