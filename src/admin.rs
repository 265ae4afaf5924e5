//! The admin listener (its own address, never the public one): `/metrics` in Prometheus text
//! format, `/healthz` (the process answers) and `/readyz` (config loaded and the route store
//! reachable; 503 otherwise).

use crate::metrics::Metrics;
use crate::route::store::RouteStore;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct Admin {
    metrics: Arc<Metrics>,
    store: Arc<dyn RouteStore>,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, store: Arc<dyn RouteStore>) -> Self {
        Self { metrics, store }
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
            "/metrics" => reply(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => reply(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => {
                if self.store.ping().await {
                    reply(200, "application/json", br#"{"status":"ready"}"#.to_vec())
                } else {
                    reply(
                        503,
                        "application/json",
                        br#"{"status":"route store unreachable"}"#.to_vec(),
                    )
                }
            }
            _ => reply(404, "application/json", br#"{"error":"no_route"}"#.to_vec()),
        }
    }
}
