//! The one `impl ProxyHttp`: a request's path through edgegate, hook by hook.
//!
//! ```text
//! request_filter:          host → route → record (cache, Redis) → auth → resolve → ctx.target
//!                          (or an answer of edgegate's own: api.rs, a redirect, a JSON error)
//! upstream_peer:           ctx.target → HttpPeer (group_key per workspace)
//! upstream_request_filter: forwarded headers, identity headers, stripped path
//! response_filter:         X-Request-Id back to the client; a 101 opens a WebSocket
//! *_body_filter:           bytes in and out, which side of a WebSocket ended first
//! fail_to_proxy:           upstream refused/timed out → 502/504 JSON
//! logging:                 metrics and the access log line (metrics.rs, access.rs)
//! ```

use crate::access::{self, AccessLog};
use crate::activity::Activity;
use crate::api::Reply;
use crate::auth::{self, Auth};
use crate::config::{ApiConfig, AuthMethod, Config, UpstreamConfig};
use crate::ctx::{Refresh, RequestCtx};
use crate::error::{self, GatewayError};
use crate::headers::{self, Forwarding};
use crate::metrics::{self, Metrics};
use crate::net::IpNet;
use crate::route::store::{Records, RedisRuntime};
use crate::route::{record, Endpoint, RouteMatch, RouteTable};
use crate::upstream::{self, Resolver, Target};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// The proxy: cheap to clone (one `Arc`), so a WebSocket tunnel can outlive the Pingora task
/// that opened it (websocket.rs).
#[derive(Clone)]
pub struct Gateway(Arc<Core>);

/// Everything the gateway's hooks share; reached through `Gateway`'s `Deref`.
pub struct Core {
    pub(crate) routes: RouteTable,
    pub(crate) records: Records,
    pub(crate) auth: Auth,
    pub(crate) api: ApiConfig,
    resolver: Resolver,
    pub(crate) upstream: UpstreamConfig,
    trusted_proxies: Vec<IpNet>,
    /// Where records' upstreams may resolve to.
    address_policy: crate::net::AddressPolicy,
    pub(crate) ws_idle_timeout: Duration,
    /// Makes upstream connections for WebSocket tunnels (TLS and timeouts per peer).
    pub(crate) connector: TransportConnector,
    /// Flips to `true` when the process starts to stop (WebSocket tunnels then send 1012).
    pub(crate) stopping: Arc<watch::Sender<bool>>,
    /// Hashes of invalidated keys, for open WebSockets to re-check their credential.
    pub(crate) invalidations: broadcast::Sender<u64>,
    pub(crate) metrics: Arc<Metrics>,
    access_log: AccessLog,
    activity: Option<Arc<Activity>>,
    limits: crate::config::LimitsConfig,
    in_flight: crate::limits::InFlight,
    /// Keeps the Redis connection's runtime alive as long as the service.
    _redis_runtime: Option<Arc<RedisRuntime>>,
}

impl std::ops::Deref for Gateway {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.0
    }
}

impl Gateway {
    pub fn new(
        config: &Config,
        records: Records,
        metrics: Arc<Metrics>,
        redis_runtime: Option<Arc<RedisRuntime>>,
        activity: Option<Arc<Activity>>,
    ) -> std::result::Result<Self, String> {
        Ok(Self(Arc::new(Core {
            routes: RouteTable::new(config).map_err(|e| e.to_string())?,
            records,
            auth: Auth::new(config).map_err(|e| e.to_string())?,
            api: config.api.clone(),
            resolver: Resolver::new(
                Duration::from_millis(config.cache.dns_ttl_ms),
                Duration::from_millis(config.cache.negative_ttl_ms),
                Duration::from_millis(config.upstream.connect_timeout_ms),
                config.cache.max_entries,
            ),
            upstream: config.upstream.clone(),
            trusted_proxies: config.trusted_proxies(),
            address_policy: config.address_policy(),
            ws_idle_timeout: config.ws_idle_timeout(),
            connector: TransportConnector::new(Some(ConnectorOptions {
                ca_file: config.upstream.ca_file.clone(),
                ..ConnectorOptions::new(1)
            })),
            stopping: Arc::new(watch::channel(false).0),
            invalidations: broadcast::channel(1024).0,
            metrics,
            access_log: AccessLog::open(&config.log.access_log)?,
            activity,
            limits: config.limits.clone(),
            in_flight: crate::limits::InFlight::new(config.limits.max_connections_per_workspace),
            _redis_runtime: redis_runtime,
        })))
    }

    /// A trusted proxy (TLS-terminating load balancer) says the client came over HTTPS.
    fn tls_before_us(&self, session: &Session) -> bool {
        let trusted = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| self.trusted_proxies.iter().any(|n| n.contains(a.ip())));
        trusted
            && session
                .req_header()
                .headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    }

    /// What the upstream request needs from the connection and the config.
    pub(crate) fn forwarding<'a>(&'a self, session: &Session, ctx: &RequestCtx) -> Forwarding<'a> {
        Forwarding {
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            trusted_proxies: &self.trusted_proxies,
            proto: ctx.proto,
            credential_cookies: &self.auth.credential_cookies,
        }
    }

    pub(crate) fn count_upstream_failure(&self, ctx: &RequestCtx, e: &Error) {
        let kind = match GatewayError::from_proxy_error(e) {
            Some(GatewayError::UpstreamTimeout) => "timeout",
            Some(GatewayError::UpstreamRefused) => "connect",
            _ => return,
        };
        self.metrics
            .upstream_failures
            .with_label_values(&[ctx.route_name(), kind])
            .inc();
    }

    /// After a connect failure: whether the workspace's backend may have moved, in which case
    /// its cached record is dropped and the request is to be decided again, once.
    pub(crate) fn may_have_moved(&self, ctx: &mut RequestCtx, e: &Error) -> bool {
        let refused = matches!(
            e.etype(),
            ErrorType::ConnectRefused | ErrorType::ConnectNoRoute
        );
        match (&ctx.activity_key, ctx.refresh) {
            (Some(key), Refresh::No) if refused => {
                self.records.cache().invalidate(key);
                ctx.refresh = Refresh::Pending;
                true
            }
            _ => false,
        }
    }

    /// A WebSocket is open: count it until `logging` sees it end.
    pub(crate) fn ws_opened(&self, ctx: &mut RequestCtx) {
        ctx.ws_opened = Some(std::time::Instant::now());
        self.metrics
            .websockets_open
            .with_label_values(&[ctx.route_name()])
            .inc();
    }

    /// Mark the request's workspace active, at most once a second per request.
    pub(crate) fn touch(&self, ctx: &mut RequestCtx) {
        let (Some(activity), Some(key)) = (&self.activity, &ctx.activity_key) else {
            return;
        };
        let now = crate::auth::token::now();
        if now != ctx.activity_marked {
            ctx.activity_marked = now;
            activity.touch(key, now);
        }
    }

    /// Route and authorise the request and bind its target into `ctx`, or say what edgegate
    /// answers itself.
    pub(crate) async fn decide(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<Option<Reply>, GatewayError> {
        headers::check_limits(req, &self.limits)?;
        headers::check_framing(req)?;
        let host = headers::normalize_host(headers::browser_host(req)?)?;
        // `Upgrade: h2c` (or anything but websocket) would let a client speak past the proxy
        // to the upstream: never upgraded.
        if let Some(up) = req.headers.get(http::header::UPGRADE) {
            if !up.as_bytes().eq_ignore_ascii_case(b"websocket") {
                return Err(GatewayError::BadUpgrade);
            }
        }
        let matched =
            self.routes
                .match_request(&host, req.uri.path(), req.uri.query(), ctx.is_upgrade)?;
        let target = match matched {
            RouteMatch::Redirect(location) => return Ok(Some(Reply::redirect(location))),
            RouteMatch::Endpoint(endpoint, id) => {
                ctx.route = Some(endpoint.name().into());
                ctx.workspace = Some(id);
                // Boxed: the endpoints' state stays out of every proxied request's future.
                let reply = Box::pin(self.answer(
                    req,
                    endpoint,
                    id,
                    ctx.is_upgrade,
                    ctx.proto,
                    &mut ctx.principal,
                ))
                .await;
                // The access log and the auth metric say how the endpoint's caller was
                // checked, as for proxied requests (errors before any check say nothing).
                // A caller that passed its check stays "ok" even when the endpoint fails later
                // (store outage, unknown agent state).
                if let Some(result) = match &reply {
                    _ if ctx.principal.is_some() => Some("ok"),
                    Ok(_) => Some("ok"),
                    Err(e) => Some(e.auth_result()).filter(|r| *r != "error"),
                } {
                    let method = ctx.principal.as_ref().map_or(
                        if endpoint == Endpoint::IdeBootstrap {
                            AuthMethod::DevIdeToken
                        } else {
                            AuthMethod::Session
                        },
                        |p| p.method,
                    );
                    ctx.auth_method = Some(method);
                    ctx.auth_result = result;
                    self.metrics
                        .auth_decisions
                        .with_label_values(&[method.as_str(), result])
                        .inc();
                }
                return reply.map(Some);
            }
            RouteMatch::Default(d) => {
                ctx.route = Some(d.name.clone());
                let addr = self.resolver.resolve(&d.upstream).await?;
                Target {
                    addr,
                    group_key: upstream::group_key("default", &addr),
                    host_header: (!d.preserve_host).then(|| d.upstream.to_string()),
                    upstream_path: None,
                    tls: None,
                    content: upstream::Content::App,
                }
            }
            RouteMatch::Workspace(m) => {
                ctx.route = Some(m.route.name.clone());
                ctx.workspace = Some(m.id);
                let key = m.route.key(&m.id);

                let (found, _outcome) = self.records.get(&key).await;
                let rec = found?.ok_or(GatewayError::UnknownWorkspace)?;
                let rr = record::read(m.route, &key, &rec, m.port)?;
                // Auth decides before anything is resolved or connected: a refusal returns
                // here, with no target bound. The cookies are read once, for auth and for
                // what the rewrite strips.
                let cookies = auth::session::Cookies::read(
                    req,
                    &self.auth.session_cookie,
                    &self.auth.ide_cookie,
                    &self.auth.app_cookies,
                );
                // A re-decision of this request (its backend moved) must not spend its one-time
                // token a second time; `explain` spends nothing.
                let spent = ctx.principal.as_ref().and_then(|p| p.jti.clone());
                let spend = match &spent {
                    _ if ctx.dry_run => auth::Spend::DryRun,
                    Some(jti) => auth::Spend::Already(jti),
                    None => auth::Spend::Yes,
                };
                let decision = self
                    .auth
                    .authorize(
                        &self.records,
                        &auth::Asking {
                            req,
                            cookies: &cookies,
                            is_upgrade: ctx.is_upgrade,
                            proto: ctx.proto,
                            spend,
                        },
                        m.route,
                        &m.id,
                        rr.owner,
                        &mut ctx.auth_method,
                    )
                    .await;
                let result = match &decision {
                    Ok(Some(_)) => "ok",
                    Ok(None) => "open",
                    Err(e) => e.auth_result(),
                };
                ctx.auth_result = result;
                self.metrics
                    .record_auth(ctx.auth_method.map_or("none", |m| m.as_str()), result);
                ctx.principal = decision?;
                // Only authorised requests count against the workspace's cap.
                if ctx.slot.is_none() {
                    ctx.slot = self
                        .in_flight
                        .enter(&key)
                        .ok_or(GatewayError::TooManyConnections)?;
                }
                let addr = self.resolver.resolve(&rr.upstream).await?;
                if !self.address_policy.permits(addr.ip()) {
                    log::warn!(
                        "route record {key} names an upstream in a blocked network ({addr}); \
                         refused (upstream.blocked_networks)"
                    );
                    return Err(GatewayError::UpstreamNotAllowed);
                }
                // Credentials stop here: edgegate's cookies always, a Bearer when it was
                // ours, and `?token=` unless the route's upstream validates it too.
                ctx.strip_cookies = cookies.strip;
                let bearer = auth::bearer(req);
                let used_bearer = matches!(
                    ctx.principal.as_ref().map(|p| p.method),
                    Some(AuthMethod::TerminalToken | AuthMethod::DevIdeToken)
                ) && bearer.is_some();
                ctx.strip_authorization =
                    used_bearer || bearer.is_some_and(|b| self.auth.tokens.is_ours(b));
                // Only where a URL token is a credential at all: the agent path's upgrade.
                let keep_token = m.route.forward_token
                    && (!m.route.auth.contains(&AuthMethod::TerminalToken)
                        || (ctx.is_upgrade && req.uri.path() == self.auth.agent_ws_path));
                let query = match req.uri.query() {
                    Some(q) if !keep_token => match auth::strip_token_param(q) {
                        Some(stripped) => Some((stripped, true)),
                        None => Some((q.to_string(), false)),
                    },
                    Some(q) => Some((q.to_string(), false)),
                    None => None,
                };
                let upstream_path = match (m.upstream_path, query) {
                    (None, None) | (None, Some((_, false))) => None,
                    (path, q) => {
                        let mut p = path.unwrap_or_else(|| req.uri.path().to_string());
                        if let Some((q, _)) = q.filter(|(q, _)| !q.is_empty()) {
                            p.push('?');
                            p.push_str(&q);
                        }
                        Some(p)
                    }
                };
                let tls =
                    m.route.upstream_tls.then(|| upstream::UpstreamTls {
                        sni: m.route.upstream_sni.clone().unwrap_or_else(|| {
                            match &rr.upstream.host {
                                upstream::UpstreamHost::Name(n) => n.clone(),
                                upstream::UpstreamHost::Ip(_) => String::new(),
                            }
                        }),
                        verify: m.route.upstream_verify,
                    });
                let target = Target {
                    addr,
                    group_key: upstream::group_key(&key, &addr),
                    host_header: (!m.route.preserve_host).then(|| rr.upstream.to_string()),
                    upstream_path,
                    tls,
                    content: match m.route.prefix_for(&m.id) {
                        Some(prefix) => upstream::Content::Tunnel(prefix),
                        None => upstream::Content::Workspace,
                    },
                };
                ctx.activity_key = Some(key);
                self.touch(ctx);
                target
            }
        };
        ctx.target = Some(target);
        Ok(None)
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
        let l = &self.limits;
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
        if session.digest().is_some_and(|d| d.ssl_digest.is_some()) || self.tls_before_us(session) {
            ctx.proto = "https";
        }
        if ctx.is_upgrade {
            // Pingora reads an upgraded body under the HTTP read timeout (60 s by default);
            // an idle WebSocket is not a stalled request.
            session.set_read_timeout(Some(self.ws_idle_timeout));
        }
        match self.decide(session.req_header(), ctx).await {
            Ok(None) if ctx.is_upgrade => {
                // WebSockets are tunnelled here, so a stopping process can close them cleanly.
                // Boxed: the tunnel's state would otherwise be part of (and copied with) every
                // request's `request_filter` future.
                if let Err(e) = Box::pin(self.tunnel(session, ctx)).await {
                    error::respond(session, &e, &ctx.request_id).await?;
                    ctx.refusal = Some(e);
                }
                Ok(true)
            }
            Ok(None) => Ok(false),
            Ok(Some(reply)) => {
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
                Ok(true)
            }
            Err(e) => {
                error::respond(session, &e, &ctx.request_id).await?;
                ctx.refusal = Some(e);
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
            // The cached backend refused: decide again from a fresh record (auth included).
            ctx.refresh = Refresh::Done;
            if let Err(e) = self.decide(session.req_header(), ctx).await {
                return Err(Error::explain(ErrorType::HTTPStatus(e.status()), e.code()));
            }
        }
        // Only ever the target this request's own `request_filter` bound.
        let target = ctx
            .target
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(500), "no target was decided"))?;
        Ok(upstream::peer(target, &self.upstream, ctx.is_upgrade))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let fwd = self.forwarding(session, ctx);
        headers::rewrite_upstream_request(upstream_request, ctx, &fwd)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // The id the upstream saw, so a client report can be matched with both sides' logs.
        headers::set_response_request_id(upstream_response, &ctx.request_id)?;
        // What a workspace's response may set in the browser (SPEC §8).
        if let Some(t) = &ctx.target {
            headers::confine_response(
                upstream_response,
                &t.content,
                &self.auth.credential_cookies,
            )?;
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
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let Some(b) = body {
            ctx.bytes_out += b.len() as u64;
        }
        Ok(None)
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
        let retry = self.may_have_moved(ctx, &e);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let code = match GatewayError::from_proxy_error(e) {
            Some(err) => {
                let status = err.status();
                self.count_upstream_failure(ctx, e);
                // Once the upstream's response has started, a clean error cannot follow it:
                // the connection is closed, so the client sees a truncated response.
                if session.response_written().is_none() {
                    if let Err(we) = error::respond(session, &err, &ctx.request_id).await {
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
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.log_request(session.req_header(), status, ctx);
    }
}

impl Gateway {
    /// Metrics and the access log line for a finished request.
    pub(crate) fn log_request(&self, req: &RequestHeader, status: u16, ctx: &RequestCtx) {
        let route = ctx.route_name();
        let method = metrics::method_label(&req.method);
        let outcome = if ctx.refusal.is_some() {
            metrics::Outcome::Refused
        } else if ctx.target.is_some() {
            metrics::Outcome::Proxied
        } else if status > 0 {
            metrics::Outcome::Answered
        } else {
            metrics::Outcome::Dropped
        };
        let elapsed = ctx.started.elapsed();
        let m = &self.metrics;
        m.record_request(route, &req.method, status, outcome, elapsed);
        let ws_close = ctx.ws_opened.map(|opened| {
            let cause = ctx.ws_close_cause.unwrap_or("error");
            m.websockets_open.with_label_values(&[route]).dec();
            m.websocket_duration
                .with_label_values(&[route])
                .observe(opened.elapsed().as_secs_f64());
            m.websocket_closes.with_label_values(&[route, cause]).inc();
            cause
        });
        if self.access_log.enabled() {
            let time_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.access_log.write(&access::Entry {
                time_ms,
                request_id: &ctx.request_id,
                route,
                method,
                path: req.uri.path(),
                query: req.uri.query().map(access::redact_query),
                status,
                duration_us: elapsed.as_micros() as u64,
                upstream: ctx.target.as_ref().map(|t| t.addr),
                bytes_in: ctx.bytes_in,
                bytes_out: ctx.bytes_out,
                auth_method: ctx.auth_method.map_or("none", |a| a.as_str()),
                auth_result: ctx.auth_result,
                error: ctx.refusal.as_ref().map(|r| r.code()),
                ws_close,
            });
        }
    }
}
