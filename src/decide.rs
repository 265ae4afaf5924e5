//! A request's decision, as a value: the answer edgegate gives itself, or a plan to proxy
//! (target, principal, how the caller was checked, the credentials to strip, the upstream
//! path), or the refusal. One pipeline with four callers, so a rule added once holds
//! everywhere: `request_filter`, the moved-backend retry (`upstream_peer`), an open
//! WebSocket's re-check (`websocket`) and `edgegate explain`.
//!
//! ```text
//! limits, framing, Host ─► route table (route) ─► record (route::store, cached) ─► auth
//!   ─► upstream (resolve, address policy, TLS, path) ─► Plan
//! ```
//!
//! It counts nothing and keeps nothing of the request: the caller puts what it returns in the
//! request's CTX, and the metrics and the access log read it from there.

use crate::api::{Endpoints, Reply};
use crate::auth::session::Cookies;
use crate::auth::{self, Asking, Auth, Check, Principal, Spend};
use crate::config::{ApiConfig, AuthMethod, Config, LimitsConfig};
use crate::error::GatewayError;
use crate::headers::{self, CookieStrip};
use crate::net::AddressPolicy;
use crate::route::id::WorkspaceId;
use crate::route::store::Records;
use crate::route::{record, DefaultRoute, RouteMatch, RouteTable, WorkspaceMatch};
use crate::runtime::Runtime;
use crate::upstream::{self, Content, Resolver, Target, UpstreamTls};
use pingora::http::RequestHeader;
use std::sync::Arc;
use std::time::Duration;

/// The routing and auth state every decision reads.
pub struct Decider {
    routes: RouteTable,
    records: Records,
    auth: Auth,
    api: ApiConfig,
    resolver: Resolver,
    address_policy: AddressPolicy,
    limits: LimitsConfig,
}

/// What the caller knows of the request besides its header.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub is_upgrade: bool,
    /// `https` when the client came over TLS (directly or through a trusted proxy).
    pub proto: &'static str,
    /// What a one-time token's `jti` is to this decision.
    pub spend: Spend<'a>,
    /// An open WebSocket's principal, when the decision re-checks it: a token that opened the
    /// tunnel is not verified again (see `auth::Auth::authorize`).
    pub established: Option<&'a Principal>,
}

/// Where a proxied request goes and what it carries.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    /// Who the request was verified to be (`None`: an open route or the app API).
    pub principal: Option<Principal>,
    /// How edgegate's (and the app's) cookies leave the request before the upstream.
    pub strip_cookies: CookieStrip,
    /// `Authorization` carried an edgegate token: it goes.
    pub strip_authorization: bool,
    /// The workspace record behind the request: its activity, its in-flight cap, the key
    /// whose invalidation re-checks an open WebSocket. `None` for the app API.
    pub record_key: Option<String>,
}

/// What to do with the request.
#[derive(Debug)]
pub enum Action {
    /// edgegate answers itself (an endpoint, a redirect).
    Answer(Reply),
    Proxy(Plan),
}

/// A decision, with what it found on the way (for the log and the metrics, refusals too).
#[derive(Debug)]
pub struct Decided {
    /// The matched route's name.
    pub route: Option<Arc<str>>,
    pub workspace: Option<WorkspaceId>,
    pub check: Check,
    pub outcome: Result<Action, GatewayError>,
}

impl Decided {
    fn refused(e: GatewayError) -> Decided {
        Decided {
            route: None,
            workspace: None,
            check: Check::NONE,
            outcome: Err(e),
        }
    }

    /// The plan, when the request is to be proxied.
    pub fn plan(&self) -> Option<&Plan> {
        match &self.outcome {
            Ok(Action::Proxy(p)) => Some(p),
            _ => None,
        }
    }
}

impl Decider {
    pub fn new(config: &Config, runtime: Runtime, records: Records) -> Decider {
        Decider {
            routes: runtime.routes,
            records,
            auth: runtime.auth,
            api: config.api.clone(),
            resolver: Resolver::new(
                Duration::from_millis(config.cache.dns_ttl_ms),
                Duration::from_millis(config.cache.negative_ttl_ms),
                Duration::from_millis(config.upstream.connect_timeout_ms),
                config.cache.max_entries,
            ),
            address_policy: runtime.address_policy,
            limits: config.limits.clone(),
        }
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Decide about `req`.
    pub async fn decide(&self, req: &RequestHeader, facts: &Facts<'_>) -> Decided {
        let matched = match self.route(req, facts) {
            Ok(m) => m,
            Err(e) => return Decided::refused(e),
        };
        match matched {
            RouteMatch::Redirect(location) => Decided {
                outcome: Ok(Action::Answer(Reply::redirect(location))),
                ..Decided::refused(GatewayError::Internal)
            },
            RouteMatch::Endpoint(endpoint, id) => {
                let endpoints = Endpoints {
                    routes: &self.routes,
                    records: &self.records,
                    auth: &self.auth,
                    config: &self.api,
                };
                // Boxed: the endpoints' state stays out of every proxied request's future.
                let answered =
                    Box::pin(endpoints.answer(req, endpoint, id, facts.is_upgrade, facts.proto))
                        .await;
                Decided {
                    route: Some(endpoint.name().into()),
                    workspace: Some(id),
                    check: answered.check,
                    outcome: answered.reply.map(Action::Answer),
                }
            }
            RouteMatch::Default(d) => Decided {
                route: Some(d.name.clone()),
                workspace: None,
                check: Check::NONE,
                outcome: self.app(d).await.map(Action::Proxy),
            },
            RouteMatch::Workspace(m) => {
                let (check, outcome) = self.workspace(req, facts, &m).await;
                Decided {
                    route: Some(m.route.name.clone()),
                    workspace: Some(m.id),
                    check,
                    outcome: outcome.map(Action::Proxy),
                }
            }
        }
    }

    /// The request's shape, then its route: nothing here asks Redis.
    fn route<'a>(
        &'a self,
        req: &RequestHeader,
        facts: &Facts<'_>,
    ) -> Result<RouteMatch<'a>, GatewayError> {
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
        self.routes
            .match_request(&host, req.uri.path(), req.uri.query(), facts.is_upgrade)
    }

    /// The app API: no auth at the edge, the request goes as it came.
    async fn app(&self, d: &DefaultRoute) -> Result<Plan, GatewayError> {
        let addr = self.resolver.resolve(&d.upstream).await?;
        Ok(Plan {
            target: Target {
                addr,
                group_key: upstream::group_key("default", &addr),
                host_header: (!d.preserve_host).then(|| d.upstream.to_string()),
                upstream_path: None,
                tls: None,
                content: Content::App,
            },
            principal: None,
            strip_cookies: CookieStrip::Keep,
            strip_authorization: false,
            record_key: None,
        })
    }

    /// A workspace route: its record, the caller checked against it, then its upstream.
    async fn workspace(
        &self,
        req: &RequestHeader,
        facts: &Facts<'_>,
        m: &WorkspaceMatch<'_>,
    ) -> (Check, Result<Plan, GatewayError>) {
        let key = m.route.key(&m.id);
        let rec = match self.records.get(&key).await.0 {
            Ok(Some(rec)) => rec,
            Ok(None) => return (Check::NONE, Err(GatewayError::UnknownWorkspace)),
            Err(e) => return (Check::NONE, Err(e)),
        };
        let rr = match record::read(m.route, &key, &rec, m.port) {
            Ok(rr) => rr,
            Err(e) => return (Check::NONE, Err(e)),
        };
        // Auth decides before anything is resolved or connected: a refusal returns here. The
        // cookies are read once, for auth and for what the rewrite strips.
        let a = &self.auth;
        let cookies = Cookies::read(req, &a.session_cookie, &a.ide_cookie, &a.app_cookies);
        let asking = Asking {
            req,
            cookies: &cookies,
            is_upgrade: facts.is_upgrade,
            proto: facts.proto,
            spend: facts.spend,
            established: facts.established,
        };
        let outcome = a
            .authorize(&self.records, &asking, m.route, &m.id, rr.owner)
            .await;
        let check = Check::of(outcome.method, &outcome.verdict);
        let principal = match outcome.verdict {
            Ok(p) => p,
            Err(e) => return (check, Err(e)),
        };
        let target = match self
            .workspace_target(req, facts, m, &rr.upstream, &key)
            .await
        {
            Ok(t) => t,
            Err(e) => return (check, Err(e)),
        };
        // Credentials stop here: edgegate's cookies always, a Bearer when it was ours.
        let bearer = auth::bearer(req);
        let strip_authorization = bearer.is_some_and(|b| {
            principal.as_ref().is_some_and(|p| p.by_token()) || a.tokens.is_ours(b)
        });
        let plan = Plan {
            target,
            principal,
            strip_cookies: cookies.strip,
            strip_authorization,
            record_key: Some(key),
        };
        (check, Ok(plan))
    }

    /// Where a workspace request goes: the record's upstream resolved and allowed, TLS as the
    /// route says, and the path and query to send (a stripped prefix, `?token=` removed
    /// unless the route's upstream validates it too, and only on the agent upgrade).
    async fn workspace_target(
        &self,
        req: &RequestHeader,
        facts: &Facts<'_>,
        m: &WorkspaceMatch<'_>,
        upstream: &crate::net::UpstreamAddr,
        key: &str,
    ) -> Result<Target, GatewayError> {
        let addr = self.resolver.resolve(upstream).await?;
        if !self.address_policy.permits(addr.ip()) {
            log::warn!(
                "route record {key} names an upstream in a blocked network ({addr}); refused \
                 (upstream.blocked_networks)"
            );
            return Err(GatewayError::UpstreamNotAllowed);
        }
        let route = m.route;
        let keep_token = route.forward_token
            && (!route.auth.contains(&AuthMethod::TerminalToken)
                || (facts.is_upgrade && req.uri.path() == self.auth.agent_ws_path));
        let query = match req.uri.query() {
            Some(q) if !keep_token => match crate::query::strip_token(q) {
                Some(stripped) => Some((stripped, true)),
                None => Some((q.to_string(), false)),
            },
            Some(q) => Some((q.to_string(), false)),
            None => None,
        };
        let upstream_path = match (&m.upstream_path, query) {
            (None, None) | (None, Some((_, false))) => None,
            (path, q) => {
                let mut p = path.clone().unwrap_or_else(|| req.uri.path().to_string());
                if let Some((q, _)) = q.filter(|(q, _)| !q.is_empty()) {
                    p.push('?');
                    p.push_str(&q);
                }
                Some(p)
            }
        };
        let tls = route.upstream_tls.then(|| UpstreamTls {
            sni: route
                .upstream_sni
                .clone()
                .unwrap_or_else(|| match &upstream.host {
                    upstream::UpstreamHost::Name(n) => n.clone(),
                    upstream::UpstreamHost::Ip(_) => String::new(),
                }),
            verify: route.upstream_verify,
        });
        Ok(Target {
            addr,
            group_key: upstream::group_key(key, &addr),
            host_header: (!route.preserve_host).then(|| upstream.to_string()),
            upstream_path,
            tls,
            content: match route.prefix_for(&m.id) {
                Some(prefix) => Content::Tunnel(prefix),
                None => Content::Workspace,
            },
        })
    }
}
