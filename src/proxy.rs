//! The one `impl ProxyHttp`: a request's path through edgegate, hook by hook. Each hook is a
//! few lines that call the module named after what it does.
//!
//! ```text
//! early_request_filter:    the connection's timeouts (connection.rs knows the headers are in)
//! request_filter:          decide (decide.rs: route → record → auth → upstream) → ctx;
//!                          the answer edgegate gives itself (api.rs), a refusal (error.rs), or
//!                          a WebSocket tunnel (websocket.rs); else the plan is proxied
//! upstream_peer:           the plan's target → HttpPeer (group_key per workspace); after a
//!                          refused connect, the same decision once more from a fresh record
//! upstream_request_filter: the plan's edits: forwarded and identity headers, credentials
//!                          stripped, the tunnel's path (headers.rs)
//! response_filter:         X-Request-Id back; what a workspace response may set (headers.rs)
//! *_body_filter:           bytes in and out
//! fail_to_proxy:           upstream refused/timed out → 502/504 JSON (the real error kept)
//! logging:                 metrics and the access log line (access.rs)
//! ```

use crate::access::{AccessLog, RequestLog};
use crate::activity::Activity;
use crate::auth::Spend;
use crate::config::{Config, LimitsConfig, UpstreamConfig};
use crate::ctx::{Refresh, RequestCtx};
use crate::decide::{Decider, Facts};
use crate::error::{self, GatewayError};
use crate::headers::{self, Forwarding};
use crate::metrics::Metrics;
use crate::net::IpNet;
use crate::route::store::{Records, RedisRuntime};
use crate::runtime::Runtime;
use crate::upstream;
use crate::websocket::{TunnelEnv, Tunnels};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// The proxy: cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Gateway(Arc<Core>);

/// What the hooks share. Each module gets its part: the decision its `Decider`, tunnels their
/// `Tunnels` and `TunnelEnv`, the log its `RequestLog`.
struct Core {
    /// Replaced whole by a reload (SIGHUP, `reload`); each request decides with the one it
    /// loaded.
    decider: Arc<arc_swap::ArcSwap<Decider>>,
    /// The caches every decision reads, kept across reloads.
    records: Arc<Records>,
    /// Cookies that never reach a workspace nor may be set by one (names: not reloaded).
    credential_cookies: Vec<String>,
    tunnels: Tunnels,
    log: Arc<RequestLog>,
    activity: Option<Arc<Activity>>,
    upstream: UpstreamConfig,
    limits: LimitsConfig,
    trusted_proxies: Vec<IpNet>,
    in_flight: crate::limits::InFlight,
    /// How refusals look to whom asked.
    pages: error::Pages,
    /// Publishes the wake requests decisions make.
    waker: crate::lifecycle::Waker,
    /// The upstream sockets of requests in flight, for draining stopped workspaces.
    drains: Arc<crate::drain::Drains>,
    /// Marks background traffic, which is not activity (`activity.background_header`).
    background_header: Option<http::HeaderName>,
    /// Per-address (token endpoints, in the decider) and per-user (here) rate limits.
    rate_limits: Arc<crate::ratelimit::RateLimits>,
    /// Spans for requests, decisions and upstreams (`None`: tracing is off).
    tracing: Option<Arc<crate::trace::Tracing>>,
    /// Keeps the Redis connection's runtime alive as long as the service.
    _redis_runtime: Option<Arc<RedisRuntime>>,
}

impl Gateway {
    pub fn new(
        config: &Config,
        mut runtime: Runtime,
        records: Records,
        metrics: Arc<Metrics>,
        redis_runtime: Option<Arc<RedisRuntime>>,
        activity: Option<Arc<Activity>>,
        tracing: Option<Arc<crate::trace::Tracing>>,
    ) -> std::result::Result<Self, String> {
        let trusted_proxies = runtime.trusted_proxies.clone();
        let pages = std::mem::take(&mut runtime.pages);
        let waker = crate::lifecycle::Waker::new(config, metrics.clone());
        let drains = crate::drain::Drains::new(metrics.clone());
        let audit = crate::audit::Audit::open(
            config,
            metrics.clone(),
            records.store(),
            redis_runtime.as_ref().and_then(|r| r.handle()),
        )?;
        let rate_limits = Arc::new(crate::ratelimit::RateLimits::new(config, metrics.clone()));
        let records = Arc::new(records);
        let decider =
            Decider::new(config, runtime, records.clone()).with_rate_limits(rate_limits.clone());
        let credential_cookies = decider.auth().credential_cookies.clone();
        Ok(Self(Arc::new(Core {
            decider: Arc::new(arc_swap::ArcSwap::from_pointee(decider)),
            records,
            credential_cookies,
            tunnels: Tunnels::new(config),
            log: Arc::new(RequestLog::new(
                metrics,
                AccessLog::open(&config.log.access_log)?.with_user(config.log.access_log_user),
                audit,
            )),
            activity,
            upstream: config.upstream.clone(),
            limits: config.limits.clone(),
            trusted_proxies,
            in_flight: crate::limits::InFlight::new(config.limits.max_connections_per_workspace),
            pages,
            waker,
            drains,
            rate_limits,
            background_header: http::HeaderName::from_bytes(
                config.activity.background_header.as_bytes(),
            )
            .ok(),
            tracing,
            _redis_runtime: redis_runtime,
        })))
    }

    /// The decision every request goes through now (`explain` asks it too).
    pub fn decider(&self) -> Arc<Decider> {
        self.0.decider.load_full()
    }

    /// Decide with `config` from now on: routes, auth keys, ports, lifecycle and the rest of
    /// what `Decider` reads (the caches stay). The listeners, the Redis connection and the
    /// process settings stay as they are: those need an upgrade (`run -u`). A config that
    /// does not build changes nothing.
    /// Decide with `config` from the next request on. Refused when it names other credential
    /// cookies than the running ones: the header rewrite and the response confinement hold
    /// the names read at start, and a workspace must never set a credential cookie they miss.
    pub fn reload(&self, config: &Config, runtime: Runtime) -> std::result::Result<(), String> {
        let decider = Decider::new(config, runtime, self.0.records.clone())
            .with_rate_limits(self.0.rate_limits.clone());
        if decider.auth().credential_cookies != self.0.credential_cookies {
            return Err(format!(
                "the credential cookie names changed ({} now, {} running): they change with \
                 an upgrade (run -u), not a reload",
                decider.auth().credential_cookies.join(", "),
                self.0.credential_cookies.join(", ")
            ));
        }
        self.0.decider.store(Arc::new(decider));
        Ok(())
    }

    /// Send the spans still queued (a stop).
    pub fn flush_traces(&self) {
        if let Some(t) = &self.0.tracing {
            t.shutdown();
        }
    }

    /// Reopen the log files (after a rotation moved them away).
    pub fn reopen_logs(&self) {
        self.0.log.reopen();
    }

    /// The cached records (the invalidation listener drops keys from them).
    pub fn records(&self) -> &Records {
        &self.0.records
    }

    /// What to run after an invalidation of `key`: the drain of the requests in flight to it,
    /// when there are any (the listener runs it on the Redis runtime).
    pub fn drain_check(
        &self,
        key: &str,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if !self.0.drains.holds(crate::auth::key_hash(key)) {
            return None;
        }
        let (core, key) = (self.0.clone(), key.to_string());
        Some(async move {
            let d = core.decider.load_full();
            core.drains.check(&core.records, d.ports(), &key).await
        })
    }

    /// Set when the process starts to stop (WebSocket tunnels then send 1012).
    pub fn stopping(&self) -> Arc<watch::Sender<bool>> {
        self.0.tunnels.stopping().clone()
    }

    /// Where invalidated keys are announced to open WebSocket tunnels.
    pub fn invalidations(&self) -> broadcast::Sender<u64> {
        self.0.tunnels.invalidations().clone()
    }

    /// A trusted proxy (TLS-terminating load balancer) says the client came over HTTPS.
    fn tls_before_us(&self, session: &Session) -> bool {
        let trusted = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| self.0.trusted_proxies.iter().any(|n| n.contains(a.ip())));
        trusted
            && session
                .req_header()
                .headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    }

    /// What the upstream request needs from the connection and the config.
    fn forwarding<'a>(&'a self, session: &Session, ctx: &RequestCtx) -> Forwarding<'a> {
        Forwarding {
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            trusted_proxies: &self.0.trusted_proxies,
            proto: ctx.proto,
            credential_cookies: &self.0.credential_cookies,
        }
    }

    /// The facts of a request's (re-)decision: a re-decision does not spend the one-time
    /// token the first one spent.
    fn facts<'a>(ctx: &RequestCtx, spent: Option<&'a str>) -> Facts<'a> {
        Facts {
            is_upgrade: ctx.is_upgrade,
            proto: ctx.proto,
            spend: spent.map_or(Spend::Yes, Spend::Already),
            established: None,
            client: ctx.client,
        }
    }

    /// Decide about the request and keep the decision in `ctx`; what to do now (see
    /// `RequestCtx::decided`). Only authorised workspace requests take a place in their
    /// workspace's in-flight count, and mark it active.
    async fn decide(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<Option<crate::api::Reply>, GatewayError> {
        let spent = ctx.principal().and_then(|p| p.jti.clone());
        let decider = self.0.decider.load_full();
        let facts = Self::facts(ctx, spent.as_deref());
        let decided = match (&self.0.tracing, &ctx.trace) {
            (Some(t), Some(tr)) => {
                use opentelemetry::context::FutureExt;
                let cx = t.child(
                    &tr.request,
                    "edgegate.decide",
                    opentelemetry::trace::SpanKind::Internal,
                );
                let d = decider.decide(req, &facts).with_context(cx.clone()).await;
                let mut attrs = vec![opentelemetry::KeyValue::new(
                    "edgegate.auth",
                    d.check.result,
                )];
                if let Some(r) = &d.route {
                    attrs.push(opentelemetry::KeyValue::new(
                        "edgegate.route",
                        r.to_string(),
                    ));
                }
                if let Err(e) = &d.outcome {
                    attrs.push(opentelemetry::KeyValue::new("edgegate.refusal", e.code()));
                }
                crate::trace::end(&cx, attrs, false);
                d
            }
            _ => decider.decide(req, &facts).await,
        };
        self.0.log.checked(decided.check);
        let answer = ctx.decided(decided)?;
        if let Some(key) = ctx.record_key() {
            if ctx.slot.is_none() {
                ctx.slot = self
                    .0
                    .in_flight
                    .enter(key)
                    .ok_or(GatewayError::TooManyConnections)?;
            }
            if let Some(a) = &self.0.activity {
                ctx.touch(a);
            }
        }
        Ok(answer)
    }

    /// Write an answer edgegate gives itself.
    async fn reply(
        session: &mut Session,
        ctx: &RequestCtx,
        reply: crate::api::Reply,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
        for (name, value) in reply.headers {
            resp.append_header(name, value)?;
        }
        resp.insert_header("content-length", reply.body.len().to_string())?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        let empty = reply.body.is_empty();
        session.write_response_header(Box::new(resp), empty).await?;
        if !empty {
            session.write_response_body(Some(reply.body), true).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the CTX inside each request's future, which is moved (copied
    /// whole) as it is boxed; 8 bytes copy for less than the 400 of the state itself.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx::new())
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // No modules. Pingora's default adds a response-compression module, disabled, whose
        // per-request state and filters every request would still pay for: edgegate passes
        // bodies through as the upstream encoded them.
    }

    async fn early_request_filter(&self, session: &mut Session, _: &mut Self::CTX) -> Result<()> {
        // The headers are in: lift the header deadline for the rest of this request.
        crate::connection::headers_received(session.as_downstream().stream());
        // Every client connection ends when it stops making progress (SPEC §8). Pingora keeps
        // an HTTP/1.1 connection alive forever between requests and has no write timeout:
        // both are bounded here, for this request and (kept-alive) the wait for the next.
        let l = &self.0.limits;
        if session.get_keepalive().is_some() {
            session
                .set_keepalive((l.keepalive_timeout_secs > 0).then_some(l.keepalive_timeout_secs));
        }
        session.set_read_timeout(Some(Duration::from_millis(l.body_timeout_ms)));
        session.set_write_timeout(Some(Duration::from_millis(l.send_timeout_ms)));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.is_upgrade = session.is_upgrade_req();
        if let Some(t) = &self.0.tracing {
            // A `traceparent` counts only from a trusted proxy: anyone else's would let a
            // client splice its requests into someone else's traces.
            let trusted = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .is_some_and(|a| self.0.trusted_proxies.iter().any(|n| n.contains(a.ip())));
            ctx.trace = Some(Box::new(crate::trace::RequestTrace {
                request: t.request(session.req_header(), trusted),
                upstream: None,
            }));
        }
        if session.digest().is_some_and(|d| d.ssl_digest.is_some()) || self.tls_before_us(session) {
            ctx.proto = "https";
        }
        if ctx.is_upgrade {
            // Pingora reads an upgraded body under the HTTP read timeout (60 s by default);
            // an idle WebSocket is not a stalled request.
            session.set_read_timeout(Some(self.0.tunnels.idle()));
        }
        ctx.background = self
            .0
            .background_header
            .as_ref()
            .is_some_and(|h| session.req_header().headers.contains_key(h));
        ctx.client = crate::ratelimit::client_address(
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            session.req_header(),
            &self.0.trusted_proxies,
        );
        let decided = self.decide(session.req_header(), ctx).await;
        // A verified user's requests are limited per user (the first decision only: a retry
        // is the same request).
        let limited = match (&decided, ctx.principal()) {
            (Ok(None), Some(p)) => self.0.rate_limits.user(&p.user).err(),
            _ => None,
        };
        let decided = match limited {
            Some(e) => {
                // Refused after all: nothing of the plan goes on (nor into the log).
                ctx.plan = None;
                ctx.slot = None;
                Err(e)
            }
            None => decided,
        };
        match decided {
            Ok(None) if ctx.is_upgrade => {
                // WebSockets are tunnelled here, so a stopping process can close them cleanly.
                // Boxed: the tunnel's state would otherwise be part of (and copied with) every
                // request's `request_filter` future.
                let env = TunnelEnv {
                    decider: self.0.decider.clone(),
                    log: self.0.log.clone(),
                    activity: self.0.activity.clone(),
                };
                let fwd = self.forwarding(session, ctx);
                if let Err(e) = Box::pin(self.0.tunnels.open(session, ctx, &fwd, &env)).await {
                    // Kept before the answer is written: a client gone meanwhile must not turn
                    // the refusal into another one in the log.
                    ctx.refusal = Some(e.clone());
                    self.0.pages.respond(session, &e, &ctx.request_id).await?;
                }
                Ok(true)
            }
            Ok(None) => Ok(false),
            Ok(Some(reply)) => {
                Self::reply(session, ctx, reply).await?;
                Ok(true)
            }
            Err(e) => {
                if let Some(wake) = ctx.wake.take() {
                    // Published before the answer: a client told "starting" can count on it.
                    self.0.waker.wake(&self.0.records, &wake).await;
                }
                ctx.refusal = Some(e.clone());
                self.0.pages.respond(session, &e, &ctx.request_id).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        if ctx.refresh == Refresh::Pending {
            // The cached backend refused: decide again from a fresh record (auth included). A
            // refusal now is this request's answer, kept whole for `fail_to_proxy`.
            ctx.refresh = Refresh::Done;
            match self.decide(session.req_header(), ctx).await {
                Ok(None) => {}
                // A workspace route never answers itself; anything but a plan is refused.
                other => {
                    let e = other.err().unwrap_or(GatewayError::Internal);
                    let (status, code) = (e.status(), e.code());
                    ctx.refusal = Some(e);
                    return Err(Error::explain(ErrorType::HTTPStatus(status), code));
                }
            }
        }
        ctx.upstream_started
            .get_or_insert_with(std::time::Instant::now);
        if let (Some(t), Some(tr)) = (&self.0.tracing, ctx.trace.as_mut()) {
            if tr.upstream.is_none() {
                tr.upstream = Some(t.child(
                    &tr.request,
                    "edgegate.upstream",
                    opentelemetry::trace::SpanKind::Client,
                ));
            }
        }
        // Only ever the target this request's own decision bound.
        let target = ctx
            .target()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(500), "no target was decided"))?;
        Ok(upstream::peer(target, &self.0.upstream, ctx.is_upgrade))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Held for draining (`drain`): a retry's new connection replaces the first one's hold.
        // Every TCP or Unix upstream connection has a socket digest; without one (none of
        // Pingora's connectors makes such), the request would just not drain.
        ctx.hold = None;
        if let (Some(plan), Some(sock)) = (&ctx.plan, digest.and_then(|d| d.socket_digest.clone()))
        {
            if let Some(key) = &plan.record_key {
                ctx.hold = Some(self.0.drains.hold(
                    crate::auth::key_hash(key),
                    sock,
                    plan.status_field.clone(),
                    plan.access.clone(),
                ));
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let fwd = self.forwarding(session, ctx);
        headers::rewrite_upstream_request(upstream_request, &ctx.edits(), &fwd)?;
        if let (Some(t), Some(cx)) = (
            &self.0.tracing,
            ctx.trace.as_ref().and_then(|tr| tr.upstream.as_ref()),
        ) {
            t.inject(cx, upstream_request)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.upstream_answered(upstream_response.status.as_u16());
        if let Some(cx) = ctx.trace.as_ref().and_then(|tr| tr.upstream.as_ref()) {
            let status = upstream_response.status.as_u16();
            crate::trace::end(
                cx,
                vec![opentelemetry::KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                )],
                status >= 500,
            );
        }
        // The id the upstream saw, so a client report can be matched with both sides' logs.
        headers::set_response_request_id(upstream_response, &ctx.request_id)?;
        // What a workspace's response may set in the browser (SPEC §8).
        if let Some(t) = ctx.target() {
            let protected = &self.0.credential_cookies;
            headers::confine_response(upstream_response, &t.content, protected)?;
        }
        if let Some(plan) = &ctx.plan {
            crate::ports::apply_cors(upstream_response, &plan.cors)?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.bytes_in += b.len() as u64;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let Some(b) = body {
            ctx.bytes_out += b.len() as u64;
        }
        if end_of_stream {
            if let Some(cause) = ctx.hold.as_ref().and_then(|h| h.cut()) {
                // A body that runs until the upstream closes "ends" when the drain shuts the
                // socket: the client must see a cut response, not a complete one.
                return Err(pingora::Error::explain(
                    pingora::ErrorType::ReadError,
                    format!("workspace {} mid-response", cause.as_str()),
                ));
            }
            if session.is_body_done() {
                // The upstream's part is over (request body included), and its connection may
                // go back to the pool and carry another request: a drain must not reach that
                // one through this one's hold.
                ctx.hold = None;
            }
        }
        Ok(None)
    }

    /// Pingora's own rule (retry only an idempotent request, on a connection it had reused),
    /// except for a request its workspace's drain ended: retried, it would go out again on
    /// the decision the drain revoked.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let drained = ctx.hold.as_ref().is_some_and(|h| h.cut().is_some());
        if drained
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // A workspace whose cached backend refuses may have moved: drop the cached record and
        // retry once from a fresh one. Anything else is not retried against the same address.
        let retry = ctx.may_have_moved(&self.0.records, &e);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        // The retry's own refusal when there is one (kept whole, not decoded from a status),
        // else what the proxy error means for the client.
        let drained = ctx.hold.as_ref().and_then(|h| h.cut());
        let refusal = match drained {
            // Its workspace stopped while it was in flight (`drain`): that is the answer.
            Some(cause) => {
                log::info!(
                    "request {}: ended, its workspace {}",
                    ctx.request_id,
                    cause.as_str()
                );
                Some(GatewayError::NotRunning)
            }
            None => ctx
                .refusal
                .take()
                .or_else(|| GatewayError::from_proxy_error(e)),
        };
        let code = match refusal {
            Some(err) => {
                let status = err.status();
                if drained.is_none() {
                    self.0.log.upstream_failure(ctx, e);
                }
                // Once the upstream's response has started, a clean error cannot follow it:
                // the connection is closed, so the client sees a truncated response.
                if session.response_written().is_none() {
                    if let Err(we) = self.0.pages.respond(session, &err, &ctx.request_id).await {
                        log::debug!("could not send error response: {we}");
                    }
                }
                ctx.refusal = Some(err);
                status
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora logs every failed request at ERROR. edgegate's own refusals (4xx: the access log
    /// has them, with their code) and clients that went away are no fault of anyone's: they
    /// are counted in `edgegate_pingora_benign_total`, not logged. Upstream failures (5xx) and
    /// anything else still are.
    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, e: &Error) -> bool {
        let kind = if ctx.refusal.as_ref().is_some_and(|r| r.status() < 500) {
            "refused"
        } else if e.esource() == &pingora::ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed
                    | ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::H2Error
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout
            )
        {
            "client_gone"
        } else {
            return false;
        };
        crate::logging::PINGORA_BENIGN
            .with_label_values(&[kind])
            .inc();
        true
    }

    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        // Pingora's default prints the full URI; a `?token=` must never reach a log line.
        format!(
            "{} {} route={} request_id={}",
            session.req_header().method,
            session.req_header().uri.path(),
            ctx.route.as_deref().unwrap_or("-"),
            ctx.request_id
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        if ctx.detached {
            // A WebSocket tunnel took this request over; it logs the request when it ends.
            return;
        }
        // This request is over; the next one on the connection gets its own header deadline.
        crate::connection::request_done(session.as_downstream().stream());
        // Its upstream connection may be pooled already (Pingora releases it before this
        // hook): a drain must not reach the next request on it through this one's hold.
        ctx.hold = None;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.0.log.finish(session.req_header(), status, ctx);
        if let Some(tr) = ctx.trace.take() {
            if let Some(up) = &tr.upstream {
                // Ended at the response header; a failure before it ends it here.
                crate::trace::end(up, Vec::new(), true);
            }
            crate::trace::end(
                &tr.request,
                vec![
                    opentelemetry::KeyValue::new("http.route", ctx.route_name().to_string()),
                    opentelemetry::KeyValue::new("http.response.status_code", i64::from(status)),
                ],
                status == 0 || status >= 500,
            );
        }
    }
}
