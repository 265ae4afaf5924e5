//! Prometheus metrics (one registry per gateway), counted from `logging`, the route cache, the
//! Redis store and the auth decision; served by `admin`. Labels are route names, methods,
//! status classes, results and causes: never a workspace, user, host or raw path.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

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

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_failures: IntCounterVec,
    pub auth_decisions: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    /// The `cache_lookups` series resolved once: a lookup on every request need not hash labels.
    pub cache: CacheCounters,
    pub cache_invalidations: IntCounter,
    pub redis_duration: HistogramVec,
    pub redis_errors: IntCounterVec,
    pub websockets_open: IntGaugeVec,
    pub websocket_duration: HistogramVec,
    pub websocket_closes: IntCounterVec,
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
        let cache = CacheCounters {
            hit: cache_lookups.with_label_values(&["hit"]),
            negative_hit: cache_lookups.with_label_values(&["negative_hit"]),
            miss: cache_lookups.with_label_values(&["miss"]),
            stale: cache_lookups.with_label_values(&["stale"]),
        };
        Ok(Metrics {
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

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("cannot encode metrics: {e}");
        }
        out
    }
}

/// The method as a label: the standard ones, everything else `other` (a client must not be
/// able to mint series).
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// `2xx`, `4xx`, …; `0` when no response was sent.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
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
}
