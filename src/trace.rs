//! OpenTelemetry tracing (issue #19), off by default (`[tracing] otlp_endpoint = ""`): a span
//! per request (`edgegate.request`, a child of the client's W3C `traceparent` when the client
//! is a trusted proxy), and inside it the decision (`edgegate.decide`), each Redis command
//! (`redis HGETALL`, …) and the upstream exchange (`edgegate.upstream`), whose context goes
//! upstream as `traceparent`. Exported over OTLP/HTTP (protobuf) by a batch processor on a
//! thread of its own. Sampled by `sample_ratio`, parent-based: a trusted caller's sampled
//! flag is kept.
//!
//! **Off costs nothing but a branch**: every hook asks `Option<&Tracing>` first, nothing is
//! allocated or read from a thread-local, and a client's `traceparent` passes through as
//! any other header.

use crate::config::TracingConfig;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use pingora::http::RequestHeader;
use std::sync::Arc;

pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

/// A span under way, in its context (ended by `end`, or when dropped).
pub type Traced = Context;

impl Tracing {
    /// `None` when tracing is off.
    pub fn new(cfg: &TracingConfig) -> Result<Option<Arc<Tracing>>, String> {
        if cfg.otlp_endpoint.is_empty() {
            return Ok(None);
        }
        let endpoint = cfg.otlp_endpoint.clone();
        let timeout = std::time::Duration::from_millis(cfg.export_timeout_ms);
        // The exporter's blocking HTTP client has a runtime of its own: it must not be made
        // (or dropped) on a Tokio worker, which the tests' gateways start on.
        let exporter = std::thread::spawn(move || {
            use opentelemetry_otlp::WithExportConfig;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .build()
                .map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "tracing: the exporter could not be built".to_string())?
        .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio)));
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("edgegate");
        Ok(Some(Arc::new(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })))
    }

    /// The request's span: a child of the client's `traceparent` when `trusted` (it came
    /// through `listen.trusted_proxies`), else the root of a trace of its own.
    pub fn request(&self, req: &RequestHeader, trusted: bool) -> Traced {
        let parent = if trusted {
            self.propagator.extract(&Headers(&req.headers))
        } else {
            Context::new()
        };
        let span = self
            .tracer
            .span_builder("edgegate.request")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new(
                "http.request.method",
                req.method.as_str().to_string(),
            )])
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span)
    }

    /// A child span of `parent`.
    pub fn child(
        &self,
        parent: &Traced,
        name: impl Into<std::borrow::Cow<'static, str>>,
        kind: SpanKind,
    ) -> Traced {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// Write `cx` as `traceparent` (and `tracestate`) into an upstream request, replacing the
    /// client's.
    pub fn inject(&self, cx: &Traced, req: &mut RequestHeader) -> pingora::Result<()> {
        let mut pairs = Pairs(Vec::with_capacity(2));
        self.propagator.inject_context(cx, &mut pairs);
        req.remove_header("traceparent");
        req.remove_header("tracestate");
        for (k, v) in pairs.0 {
            req.insert_header(k, v)?;
        }
        Ok(())
    }

    /// Flush what is queued (a stop).
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

/// The context a span under way is current in, for a Redis command's span (`Option` so the
/// caller's check for "tracing on" comes first and costs nothing when off).
pub fn current_span() -> Option<Context> {
    let cx = Context::current();
    cx.has_active_span().then_some(cx)
}

/// The request's spans, kept in its CTX.
#[derive(Debug)]
pub struct RequestTrace {
    pub request: Traced,
    /// From `upstream_peer` to the upstream's response header.
    pub upstream: Option<Traced>,
}

/// End the span of `cx` with `attributes`, an error status for a 5xx or a failure.
pub fn end(cx: &Traced, attributes: Vec<KeyValue>, failed: bool) {
    let span = cx.span();
    span.set_attributes(attributes);
    if failed {
        span.set_status(Status::error(""));
    }
    span.end();
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Pairs(Vec<(String, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}
