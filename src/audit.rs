//! The audit trail (issue #18): who opened which workspace, port and route, with what
//! credential, when, for how long, how many bytes, and why it closed. One JSON event per
//! WebSocket session (when it ends) and one per first HTTP access of a user to a workspace's
//! port and route per `audit.http_interval_secs`; to a file (`audit.file`), and optionally to a
//! capped Redis stream (`audit.redis_stream`). Events name the credential's kind, never its
//! value: no token, cookie or session id is ever in one.
//!
//! Called from `RequestLog::finish`, for requests that were proxied to a workspace. The file is
//! appended as the access log is (a buffer flushed every 200 ms); stream events go through a
//! bounded queue to one writer task on the Redis runtime, which sends them in pipelines. A
//! full queue drops the event for the stream (never for the file), counted in
//! `edgegate_audit_dropped_total`.

use crate::access::AccessLog;
use crate::config::Config;
use crate::ctx::RequestCtx;
use crate::first_per::FirstPer;
use crate::metrics::Metrics;
use crate::route::store::RouteStore;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events waiting for the stream writer; beyond it they are dropped (and counted).
const QUEUE: usize = 4096;
/// Events per pipeline.
const BATCH: usize = 256;

pub struct Audit {
    file: AccessLog,
    stream: Option<mpsc::Sender<String>>,
    /// Each (user, workspace, port, route)'s first access per interval, bounded by
    /// `cache.max_entries`.
    seen: FirstPer<u64>,
    metrics: Arc<Metrics>,
}

impl Audit {
    /// Reopen the audit file (SIGUSR1).
    pub fn reopen(&self) {
        self.file.reopen();
    }

    /// `None` when the audit trail is off (`audit.file` and `audit.redis_stream` empty).
    pub fn open(
        config: &Config,
        metrics: Arc<Metrics>,
        store: Arc<dyn RouteStore>,
        redis: Option<tokio::runtime::Handle>,
    ) -> Result<Option<Audit>, String> {
        let a = &config.audit;
        if a.file.is_empty() && a.redis_stream.is_empty() {
            return Ok(None);
        }
        let file = match a.file.as_str() {
            "" => AccessLog::open("off")?,
            path => AccessLog::open(path).map_err(|e| e.replace("log.access_log", "audit.file"))?,
        };
        let stream = match (a.redis_stream.as_str(), redis) {
            ("", _) | (_, None) => None,
            (name, Some(handle)) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                let name = format!("{}{name}", config.redis.key_prefix);
                handle.spawn(write_stream(rx, store, name, a.redis_stream_maxlen));
                Some(tx)
            }
        };
        Ok(Some(Audit {
            file,
            stream,
            seen: FirstPer::new(
                Duration::from_secs(a.http_interval_secs),
                config.cache.max_entries,
            ),
            metrics,
        }))
    }

    /// The event of a finished request, if it makes one: a WebSocket session that was open,
    /// or a user's first HTTP access to a workspace port and route within the interval.
    pub fn finished(&self, ctx: &RequestCtx, status: u16) {
        let Some(plan) = ctx.plan.as_ref().filter(|p| p.record_key.is_some()) else {
            return;
        };
        if ctx.refusal.is_some() {
            return;
        }
        let user = plan.principal.as_ref().map(|p| p.user.as_str());
        let credential = plan
            .principal
            .as_ref()
            .map_or("none", |p| p.method.as_str());
        let workspace = ctx.workspace.as_ref().map(|w| w.as_str());
        let port = plan.target.addr.port();
        let route = ctx.route_name();
        // Most HTTP accesses are not the first in their interval: decided before any of the
        // event is built.
        if ctx.ws_opened.is_none() {
            let key = crate::stable_hash(&(user, workspace, port, route));
            if !self.seen.first(&key, Instant::now()) {
                return;
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut event = json!({
            "time": now_ms as f64 / 1000.0,
            "request_id": ctx.request_id,
            "user": user,
            "workspace": workspace,
            "route": route,
            "port": port,
            "credential": credential,
            "client": ctx.client.map(|c| c.to_string()),
            "bytes_in": ctx.bytes_in,
            "bytes_out": ctx.bytes_out,
        });
        match ctx.ws_opened {
            Some(opened) => {
                let lasted = opened.elapsed();
                event["event"] = "websocket".into();
                event["opened"] =
                    ((now_ms.saturating_sub(lasted.as_millis() as u64)) as f64 / 1000.0).into();
                event["duration_ms"] = (lasted.as_millis() as u64).into();
                event["close"] = ctx.ws_close_cause.unwrap_or("error").into();
            }
            None => {
                event["event"] = "http_access".into();
                event["status"] = status.into();
                event["duration_ms"] = (ctx.started.elapsed().as_millis() as u64).into();
            }
        }
        let line = event.to_string();
        self.file.write_line(&line);
        if let Some(tx) = &self.stream {
            if tx.try_send(line).is_err() {
                self.metrics.audit_dropped.inc();
            }
        }
    }
}

/// The stream writer: batches of queued events, one pipeline each, until the gateway (and its
/// queue) is gone. A store that fails loses that batch (counted), and the next is tried.
async fn write_stream(
    mut rx: mpsc::Receiver<String>,
    store: Arc<dyn RouteStore>,
    stream: String,
    maxlen: u64,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if let Err(e) = store.append(&stream, maxlen, &batch).await {
            log::warn!(
                "audit: {} events not written to {stream}: {e:?}",
                batch.len()
            );
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_access_is_written_once_per_interval_and_the_map_is_bounded() {
        let config = crate::config::test_workspace_config(
            "[audit]\nredis_stream = \"edgegate:audit\"\nhttp_interval_secs = 60\n\
             [cache]\nmax_entries = 8\n",
        );
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let store = Arc::new(crate::route::store::StaticStore::new(&config));
        let audit = Audit::open(&config, metrics, store, None)
            .expect("opens")
            .expect("on");
        let t0 = Instant::now();
        assert!(audit.seen.first(&1, t0));
        assert!(!audit.seen.first(&1, t0 + Duration::from_secs(59)));
        assert!(audit.seen.first(&1, t0 + Duration::from_secs(61)));
        for k in 0..100 {
            audit.seen.first(&k, t0);
        }
        assert!(audit.seen.len() <= 8);
    }
}
