//! The admin listener (its own address, never the public one): `/metrics` in Prometheus text
//! format, `/healthz` (the process answers), `/readyz` (whether this instance can serve, by
//! the rule in `readiness`; `?verbose` says why) and `POST /drain` (fail readiness, wait for
//! the balancer, stop).

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::route::store::RouteStore;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct Admin {
    metrics: Arc<Metrics>,
    store: Arc<dyn RouteStore>,
    readiness: Arc<Readiness>,
    /// Route records in memory now.
    warm: Box<dyn Fn() -> usize + Send + Sync>,
}

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        store: Arc<dyn RouteStore>,
        readiness: Arc<Readiness>,
        warm: Box<dyn Fn() -> usize + Send + Sync>,
    ) -> Self {
        Self {
            metrics,
            store,
            readiness,
            warm,
        }
    }

    async fn readyz(&self, verbose: bool) -> http::Response<Vec<u8>> {
        let s = self.readiness.state(self.store.ping().await, (self.warm)());
        self.metrics.ready.set(i64::from(s.ready));
        self.metrics.degraded.set(i64::from(s.degraded()));
        let status = if s.ready { 200 } else { 503 };
        let word = match (s.ready, s.draining, s.degraded()) {
            (_, true, _) => "draining",
            (true, _, true) => "degraded",
            (true, _, false) => "ready",
            (false, _, _) => "route store unreachable, nothing cached",
        };
        let body = if verbose {
            serde_json::json!({
                "status": word,
                "ready": s.ready,
                "draining": s.draining,
                "degraded": s.degraded(),
                "store": if s.store_up { "ok" } else { "unreachable" },
                "cached_records": s.warm,
            })
        } else {
            serde_json::json!({ "status": word })
        };
        reply(status, "application/json", body.to_string().into_bytes())
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let mut resp = http::Response::new(body);
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => {
                let held = i64::try_from((self.warm)()).unwrap_or(i64::MAX);
                self.metrics.cached_records.set(held);
                reply(200, "text/plain; version=0.0.4", self.metrics.render())
            }
            "/healthz" => reply(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => {
                let verbose = session
                    .req_header()
                    .uri
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "verbose"));
                self.readyz(verbose).await
            }
            "/drain" if session.req_header().method == http::Method::POST => {
                let first = self.readiness.ask_drain();
                if first {
                    log::warn!("drain asked for on the admin listener: readiness fails now");
                }
                reply(
                    202,
                    "application/json",
                    br#"{"status":"draining"}"#.to_vec(),
                )
            }
            _ => reply(404, "application/json", br#"{"error":"no_route"}"#.to_vec()),
        }
    }
}
