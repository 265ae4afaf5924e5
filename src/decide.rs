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
use crate::config::Visibility;
use crate::config::{ApiConfig, AuthMethod, Config, LimitsConfig};
use crate::error::GatewayError;
use crate::headers::{self, CookieStrip};
use crate::lifecycle::{Lifecycle, Wake};
use crate::net::AddressPolicy;
use crate::ports::auth::PortAsk;
use crate::ports::{self, Cors, Passed, PortRules, PortSettings, Protocol};
use crate::ratelimit::RateLimits;
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
    /// Shared with the decision a reload replaces this one with: the caches stay warm.
    records: Arc<Records>,
    auth: Auth,
    api: ApiConfig,
    resolver: Resolver,
    address_policy: AddressPolicy,
    limits: LimitsConfig,
    lifecycle: Lifecycle,
    ports: PortRules,
    /// The per-address limit of the token endpoints (`None`: none, as in `explain`).
    rate_limits: Option<Arc<RateLimits>>,
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
    /// The client's address (`ratelimit::client_address`), for the per-address limit of the
    /// token endpoints; `None` where there is no client (re-checks, `explain`).
    pub client: Option<std::net::IpAddr>,
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
    /// The route's status field: which field of that record says it still runs (`drain`).
    pub status_field: Option<Arc<str>>,
    /// On the content site: how the caller got onto the port, and what that depended on (a
    /// tightened port, a new owner or organization drains what no longer passes, `drain`).
    pub access: Option<Passed>,
    /// What the response's CORS headers become (`ports::apply_cors`).
    pub cors: Cors,
}

/// What to do with the request. Not boxed: almost every decision is a `Proxy`, and a box
/// would be one more allocation per request for the rare `Answer`'s sake.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// edgegate answers itself (an endpoint, a redirect).
    Answer(Reply),
    Proxy(Plan),
    /// The workspace is stopped and the caller may open it: wake it (the caller publishes
    /// this, on a request's first decision only) and tell the client it is starting.
    Wake(Wake),
}

/// A decision, with what it found on the way (for the log and the metrics, refusals too).
#[derive(Debug)]
pub struct Decided {
    /// The matched route's name.
    pub route: Option<Arc<str>>,
    pub workspace: Option<WorkspaceId>,
    pub check: Check,
    /// On the content site: the port's visibility and the rule that decided.
    pub port: Option<PortVerdict>,
    pub outcome: Result<Action, GatewayError>,
}

/// What a port's visibility made of a request (`edgegate explain` names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortVerdict {
    pub visibility: Visibility,
    pub rule: &'static str,
}

impl Decided {
    fn refused(e: GatewayError) -> Decided {
        Decided {
            route: None,
            workspace: None,
            check: Check::NONE,
            port: None,
            outcome: Err(e),
        }
    }

    fn answered(route: &str, id: WorkspaceId, answered: crate::api::Answered) -> Decided {
        Decided {
            route: Some(route.into()),
            workspace: Some(id),
            check: answered.check,
            port: None,
            outcome: answered.reply.map(Action::Answer),
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
    pub fn new(config: &Config, runtime: Runtime, records: Arc<Records>) -> Decider {
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
            lifecycle: Lifecycle::new(config),
            ports: runtime.ports,
            rate_limits: None,
        }
    }

    /// Limit the token endpoints per client address.
    pub fn with_rate_limits(mut self, limits: Arc<RateLimits>) -> Decider {
        self.rate_limits = Some(limits);
        self
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

    pub fn ports(&self) -> &PortRules {
        &self.ports
    }

    /// Decide about `req`.
    pub async fn decide(&self, req: &RequestHeader, facts: &Facts<'_>) -> Decided {
        let matched = match self.route(req, facts) {
            Ok(m) => m,
            Err(e) => return Decided::refused(e),
        };
        match matched {
            RouteMatch::Redirect(location) => Decided {
                route: None,
                workspace: None,
                check: Check::NONE,
                port: None,
                outcome: Ok(Action::Answer(Reply::redirect(location))),
            },
            RouteMatch::PortEndpoint(ep, id, port) => {
                let navigation_only = ep == crate::route::PortEndpoint::Authorize;
                if let Err(e) = self
                    .navigation(req, navigation_only)
                    .and_then(|()| self.limit_minting(facts))
                {
                    return Decided {
                        outcome: Err(e),
                        ..Decided::answered(ep.name(), id, no_answer())
                    };
                }
                let endpoints = self.port_endpoints();
                let answered = Box::pin(endpoints.answer(req, ep, id, port, facts.proto)).await;
                Decided::answered(ep.name(), id, answered)
            }
            RouteMatch::PortCallback(route, id, port) => {
                if let Err(e) = self
                    .navigation(req, true)
                    .and_then(|()| self.limit_minting(facts))
                {
                    return Decided {
                        outcome: Err(e),
                        ..Decided::answered(&route.name, id, no_answer())
                    };
                }
                let endpoints = self.port_endpoints();
                let answered = Box::pin(endpoints.callback(req, route, id, port)).await;
                Decided::answered(&route.name, id, answered)
            }
            RouteMatch::Endpoint(endpoint, id) => {
                // Minting and the bootstrap are limited per client address, before anything
                // is read or written (a real request only: not `explain`).
                if endpoint.mints() {
                    if let Err(e) = self.limit_minting(facts) {
                        return Decided {
                            outcome: Err(e),
                            ..Decided::answered(endpoint.name(), id, no_answer())
                        };
                    }
                }
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
                Decided::answered(endpoint.name(), id, answered)
            }
            RouteMatch::Default(d) => Decided {
                route: Some(d.name.clone()),
                workspace: None,
                check: Check::NONE,
                port: None,
                outcome: self.app(d).await.map(Action::Proxy),
            },
            RouteMatch::Workspace(m) => {
                let (check, port, outcome) = self.workspace(req, facts, &m).await;
                Decided {
                    route: Some(m.route.name.clone()),
                    workspace: Some(m.id),
                    check,
                    port,
                    outcome,
                }
            }
        }
    }

    /// The sign-in and the exchange take a browser's navigation only (or a client that sends
    /// no Fetch Metadata): an `<img>` or `fetch` from a hostile page must neither set a cookie
    /// nor spend the visitor's rate limit.
    fn navigation(&self, req: &RequestHeader, required: bool) -> Result<(), GatewayError> {
        let mode = req.headers.get("sec-fetch-mode").map(|v| v.as_bytes());
        if required && !matches!(mode, None | Some(b"navigate")) {
            return Err(GatewayError::Forbidden);
        }
        Ok(())
    }

    /// Endpoints that mint a credential are limited per client address, before anything is
    /// read or written (a real request only: not `explain`).
    fn limit_minting(&self, facts: &Facts<'_>) -> Result<(), GatewayError> {
        match (&self.rate_limits, facts.spend) {
            (Some(limits), Spend::Yes) => limits.endpoint(facts.client),
            _ => Ok(()),
        }
    }

    fn port_endpoints(&self) -> ports::api::PortEndpoints<'_> {
        ports::api::PortEndpoints {
            routes: &self.routes,
            records: &self.records,
            auth: &self.auth,
            rules: &self.ports,
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
                h2c: false,
            },
            principal: None,
            strip_cookies: CookieStrip::Keep,
            strip_authorization: false,
            record_key: None,
            status_field: None,
            access: None,
            cors: Cors::Untouched,
        })
    }

    /// A workspace route: its record, the caller checked against it, then its state and
    /// upstream (told only to a caller auth let through).
    async fn workspace(
        &self,
        req: &RequestHeader,
        facts: &Facts<'_>,
        m: &WorkspaceMatch<'_>,
    ) -> (Check, Option<PortVerdict>, Result<Action, GatewayError>) {
        let key = m.route.key(&m.id);
        let rec = match self.records.get(&key).await.0 {
            Ok(Some(rec)) => rec,
            Ok(None) => return (Check::NONE, None, Err(GatewayError::UnknownWorkspace)),
            Err(e) => return (Check::NONE, None, Err(e)),
        };
        let rr = match record::read(m.route, &key, &rec, m.port) {
            Ok(rr) => rr,
            Err(e) => return (Check::NONE, None, Err(e)),
        };
        let settings = match m.port {
            Some(p) => match self.ports.settings(&rec, &key, p, m.route.content) {
                Ok(s) => s,
                Err(e) => return (Check::NONE, None, Err(e)),
            },
            None => PortSettings::PRIVATE,
        };
        // Auth decides before anything is resolved or connected: a refusal returns here. The
        // cookies are read once, for auth and for what the rewrite strips.
        let a = &self.auth;
        let cookies = Cookies::read(req, &a.session_cookie, &a.ide_cookie, &a.app_cookies);
        let (check, verdict, principal, access, cors) = match (m.route.content, m.port) {
            (true, Some(port)) => {
                // Another port of the workspace may use the visitor's credentials here only if
                // it is no more open than this one: a public page must not read a private
                // port with whoever visits it.
                let sibling = ports::sibling_origin(req, m.route, &m.id, port, facts.proto)
                    .filter(|(_, other)| {
                        self.ports
                            .settings(&rec, &key, *other, true)
                            .is_ok_and(|s| s.visibility <= settings.visibility)
                    })
                    .map(|(origin, _)| origin);
                let verdict = |rule| {
                    Some(PortVerdict {
                        visibility: settings.visibility,
                        rule,
                    })
                };
                // Preflights carry no credential: edgegate answers the workspace's own ports.
                if let (ports::CorsMode::Edgegate, true, Some(origin)) =
                    (settings.cors, ports::is_preflight(req), sibling)
                {
                    let reply = ports::preflight_reply(req, origin);
                    let rule = verdict("cors preflight from another port of the workspace");
                    return (Check::NONE, rule, Ok(Action::Answer(reply)));
                }
                let ask = PortAsk {
                    req,
                    proto: facts.proto,
                    is_upgrade: facts.is_upgrade,
                    route: m.route,
                    id: &m.id,
                    port,
                    owner: rr.owner,
                    org: self.ports.org(&rec),
                    settings,
                    sibling,
                };
                let out = ports::auth::authorize(a, &self.ports, &self.records, &ask).await;
                let (principal, access) = match out.verdict {
                    Ok(pa) => pa,
                    Err(e) => {
                        let check = Check {
                            method: out.method,
                            result: e.auth_result(),
                        };
                        let rule = verdict("no credential that passes this visibility");
                        // A browser without a credential is sent to sign in through the app.
                        if e == GatewayError::Unauthenticated && self.sign_in_applies(req, facts) {
                            let to = self.sign_in(req, facts, &m.id, port);
                            return (check, rule, Ok(Action::Answer(to)));
                        }
                        return (check, rule, Err(e));
                    }
                };
                let check = Check::of(out.method, &Ok(principal.clone()));
                let cors = match (settings.cors, sibling) {
                    (ports::CorsMode::Edgegate, Some(o)) => Cors::Allow(o.to_string()),
                    _ => Cors::App,
                };
                let passed = Passed {
                    port,
                    access,
                    owner: Arc::from(rr.owner),
                    owner_field: Arc::from(m.route.owner_field.as_str()),
                    org: self.ports.org(&rec).map(Arc::from),
                };
                (check, verdict(access.rule()), principal, Some(passed), cors)
            }
            _ => {
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
                match outcome.verdict {
                    Ok(p) => (check, None, p, None, Cors::Untouched),
                    Err(e) => return (check, None, Err(e)),
                }
            }
        };
        let upstream = match rr.upstream {
            Ok(u) => u,
            Err(GatewayError::NotRunning) => {
                let wake = || Wake {
                    key: key.clone(),
                    workspace: m.id,
                    route: m.route.name.clone(),
                    user: principal
                        .as_ref()
                        .filter(|p| p.identifies())
                        .map(|p| p.user.clone()),
                };
                let woken = self.lifecycle.not_running(rr.status, wake);
                // Nobody in particular (a public port, a share link) does not wake a
                // workspace: anyone could keep it running.
                let anonymous = !principal.as_ref().is_some_and(|p| p.identifies());
                let woken = match woken {
                    Ok(Action::Wake(_)) if anonymous => Err(GatewayError::NotRunning),
                    other => other,
                };
                return (check, verdict, woken);
            }
            Err(e) => return (check, verdict, Err(e)),
        };
        let target = match self
            .workspace_target(req, facts, m, &upstream, &key, &settings)
            .await
        {
            Ok(t) => t,
            Err(e) => return (check, verdict, Err(e)),
        };
        // Credentials stop here: edgegate's cookies always, `Authorization` when any of its
        // values carried a token of ours (every value goes then).
        let by_token = principal.as_ref().is_some_and(|p| p.by_token());
        let strip_authorization = auth::bearers(req).any(|b| by_token || a.tokens.is_ours(b));
        let plan = Plan {
            target,
            principal,
            strip_cookies: cookies.strip,
            strip_authorization,
            record_key: Some(key),
            status_field: m.route.status_field.clone(),
            access,
            cors,
        };
        (check, verdict, Ok(Action::Proxy(plan)))
    }

    /// Whether a refused content-site request goes to sign in: a browser's navigation
    /// (`GET`), never an upgrade or a fetch (those get their 401).
    fn sign_in_applies(&self, req: &RequestHeader, facts: &Facts<'_>) -> bool {
        !facts.is_upgrade
            && matches!(req.method, http::Method::GET | http::Method::HEAD)
            && crate::error::navigation(req)
            && !self.ports.app_host.is_empty()
    }

    /// The redirect to the sign-in on the app's host, which comes back to this very URL (any
    /// `token` parameter left out).
    fn sign_in(
        &self,
        req: &RequestHeader,
        facts: &Facts<'_>,
        id: &WorkspaceId,
        port: u16,
    ) -> Reply {
        let listen = headers::browser_host(req)
            .ok()
            .and_then(headers::host_port)
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let mut back = req.uri.path().to_string();
        if let Some(q) = req.uri.query() {
            let q = crate::query::strip_token(q).unwrap_or_else(|| q.to_string());
            if !q.is_empty() {
                back.push('?');
                back.push_str(&q);
            }
        }
        let state = crate::auth::token::new_jti();
        let location = format!(
            "{}://{}{listen}{}{id}/{port}/authorize?path={}&state={state}",
            facts.proto,
            self.ports.app_host,
            self.ports.api_prefix,
            ports::api::encode(&back)
        );
        let mut reply = Reply::redirect(location);
        reply.status = 303;
        reply.headers.push(("cache-control", "no-store".into()));
        let secure = if self.ports.cookie_secure {
            "; Secure"
        } else {
            ""
        };
        // This browser's nonce: the code that comes back must carry it (login CSRF).
        reply.headers.push((
            "set-cookie",
            format!(
                "{}={state}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                self.ports.state_cookie,
                self.ports.code_ttl * 5
            ),
        ));
        reply
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
        settings: &PortSettings,
    ) -> Result<Target, GatewayError> {
        if settings.protocol == Protocol::H2c && facts.is_upgrade {
            // An HTTP/2 upstream takes no HTTP/1.1 upgrade.
            return Err(GatewayError::BadUpgrade);
        }
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
        let port_tls = settings.protocol == Protocol::Https;
        let tls = (route.upstream_tls || port_tls).then(|| UpstreamTls {
            sni: route
                .upstream_sni
                .clone()
                .unwrap_or_else(|| match &upstream.host {
                    upstream::UpstreamHost::Name(n) => n.clone(),
                    // An address is what the certificate must name then (an IP SAN):
                    // Pingora verifies nothing at all for an empty SNI.
                    upstream::UpstreamHost::Ip(ip) => ip.to_string(),
                }),
            verify: if port_tls {
                settings.verify
            } else {
                route.upstream_verify
            },
        });
        // A pool per workspace, and per way of speaking to it: an unverified TLS peer never
        // shares a connection with a verified one, nor h2c with HTTP/1.1.
        let scope = match (&tls, settings.protocol) {
            (Some(t), _) if !t.verify => std::borrow::Cow::Owned(format!("{key}\0tls-unverified")),
            (Some(_), _) => std::borrow::Cow::Owned(format!("{key}\0tls")),
            (None, Protocol::H2c) => std::borrow::Cow::Owned(format!("{key}\0h2c")),
            (None, _) => std::borrow::Cow::Borrowed(key),
        };
        Ok(Target {
            addr,
            group_key: upstream::group_key(&scope, &addr),
            host_header: (!route.preserve_host).then(|| upstream.to_string()),
            upstream_path,
            tls,
            content: match route.prefix_for(&m.id) {
                Some(prefix) => Content::Tunnel(prefix),
                None => Content::Workspace,
            },
            h2c: settings.protocol == Protocol::H2c,
        })
    }
}

/// The answer slot of a request refused before its endpoint ran.
fn no_answer() -> crate::api::Answered {
    crate::api::Answered {
        check: Check::NONE,
        reply: Err(GatewayError::Internal),
    }
}

#[cfg(test)]
mod tests {
    //! The plan for each route shape, as a table: a request in, a plan or an answer or a
    //! refusal out. Records come from a static store, upstreams are IP literals: no network.
    use super::*;
    use crate::auth::token::TokenType;
    use crate::route::store::StaticStore;

    const ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    const STOPPED: &str = "01BX5ZZKBKACTAV9WEVGEMMVRZ";
    const LOOPBACK: &str = "01C00000000000000000000001";
    const STARTING: &str = "01C00000000000000000000002";

    fn decider() -> Decider {
        let text = format!(
            r#"
            base_domain = "example.test"
            [auth]
            cookie_secure = false
            [store]
            kind = "static"
            [store.records."session:sess-owner"]
            user = "owner"
            [store.records."session:sess-other"]
            user = "other"
            [store.records."workspace:{ID}"]
            backend = "10.0.0.5"
            owner = "owner"
            status = "running"
            [store.records."dev:{ID}"]
            target = "10.0.0.6:9000"
            owner = "owner"
            [store.records."workspace:{STOPPED}"]
            backend = "10.0.0.7"
            owner = "owner"
            status = "stopped"
            [store.records."workspace:{STARTING}"]
            backend = "10.0.0.8"
            owner = "owner"
            status = "starting"
            [store.records."workspace:{LOOPBACK}"]
            backend = "127.0.0.1"
            owner = "owner"
            status = "running"
            [[route]]
            name = "workspace"
            host = "ws-{{id}}.{{base_domain}}"
            key = "workspace:{{id}}"
            status_field = "status"
            auth = ["session", "terminal_token"]
            forward_token = true
            [[route]]
            name = "workspace_port"
            host = "ws-{{id}}--{{port}}.{{base_domain}}"
            key = "workspace:{{id}}"
            status_field = "status"
            allowed_ports = [3000]
            [[route]]
            name = "ide"
            path = "/__ide/{{id}}/"
            key = "dev:{{id}}"
            upstream_field = "target"
            auth = ["ide_cookie", "dev_ide_token"]
            [default]
            hosts = ["{{base_domain}}", "app.{{base_domain}}"]
            upstream = "10.0.0.1:3000"
            {}
            "#,
            crate::config::test_tokens_toml()
        );
        let config = Config::parse(&text).expect("config");
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let records = Records::new(
            Arc::new(StaticStore::new(&config)),
            Records::new_cache(&config, &metrics, "records"),
            &config,
            metrics,
        );
        Decider::new(
            &config,
            Runtime::build(&config).expect("runtime"),
            Arc::new(records),
        )
    }

    fn request(method: &str, host: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, target.as_bytes(), None).expect("request");
        r.append_header("host", host).expect("host");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    /// A decision in one line: `proxy <addr> <user or -> <path or -> <content>`, `answer
    /// <status>`, or `refuse <code>`, and the check as `method/result`.
    fn summary(d: &Decided) -> String {
        let check = format!("{}/{}", d.check.method_label(), d.check.result);
        let what = match &d.outcome {
            Ok(Action::Proxy(p)) => format!(
                "proxy {} {} {} {:?} key={}",
                p.target.addr,
                p.principal.as_ref().map_or("-", |p| p.user.as_str()),
                p.target.upstream_path.as_deref().unwrap_or("-"),
                p.target.content,
                p.record_key.as_deref().unwrap_or("-"),
            ),
            Ok(Action::Answer(r)) => format!("answer {}", r.status),
            Ok(Action::Wake(w)) => format!(
                "wake {} {} key={}",
                w.workspace.as_str(),
                w.user.as_deref().unwrap_or("-"),
                w.key
            ),
            Err(e) => format!("refuse {}", e.code()),
        };
        format!("{what} [{check}]")
    }

    #[tokio::test]
    async fn the_plan_for_each_route_shape() {
        let d = decider();
        let ws = format!("ws-{}.example.test", ID.to_ascii_lowercase());
        let port = |p: u16| format!("ws-{}--{p}.example.test", ID.to_ascii_lowercase());
        let stopped = format!("ws-{}.example.test", STOPPED.to_ascii_lowercase());
        let loopback = format!("ws-{}.example.test", LOOPBACK.to_ascii_lowercase());
        let starting = format!("ws-{}.example.test", STARTING.to_ascii_lowercase());
        let id = WorkspaceId::parse(ID).expect("id");
        let tokens = &d.auth().tokens;
        let terminal = tokens
            .mint(TokenType::Terminal, &id, "owner")
            .expect("mint")
            .0;
        let dev = tokens
            .mint(TokenType::DevIde, &id, "owner")
            .expect("mint")
            .0;
        let ide = tokens
            .mint_bound(
                TokenType::IdeSession,
                &id,
                "owner",
                Some(crate::auth::token::session_binding("sess-owner")),
            )
            .expect("mint")
            .0;
        let owner = "session=sess-owner";
        let origin = format!("http://{ws}");
        let agent = format!("/agent/ws?token={terminal}");
        let bearer = format!("Bearer {dev}");
        let ide_cookies = format!("edgegate_ide={ide}; session=sess-owner");
        let tunnel = format!("/__ide/{ID}/static/a.js?v=1");
        let upgrade = [("connection", "Upgrade"), ("upgrade", "websocket")];
        let cases: Vec<(&str, RequestHeader, bool, String)> = vec![
            (
                "workspace, owner's session",
                request("GET", &ws, "/x?a=1", &[("cookie", owner)]),
                false,
                format!("proxy 10.0.0.5:8080 owner - Workspace key=workspace:{ID} [session/ok]"),
            ),
            (
                "workspace, no credential",
                request("GET", &ws, "/", &[]),
                false,
                "refuse unauthenticated [none/unauthenticated]".into(),
            ),
            (
                "workspace, another user's session",
                request("GET", &ws, "/", &[("cookie", "session=sess-other")]),
                false,
                "refuse forbidden [session/forbidden]".into(),
            ),
            (
                "workspace, two session values",
                request(
                    "GET",
                    &ws,
                    "/",
                    &[("cookie", "session=sess-owner; session=x")],
                ),
                false,
                "refuse ambiguous_credentials [session/unauthenticated]".into(),
            ),
            (
                "agent upgrade, terminal token in the URL (kept: the agent checks it too)",
                request("GET", &ws, &agent, &upgrade),
                true,
                format!(
                    "proxy 10.0.0.5:8080 owner - Workspace key=workspace:{ID} [terminal_token/ok]"
                ),
            ),
            (
                "agent path, plain GET with the token: no credential",
                request("GET", &ws, &agent, &[]),
                false,
                "refuse unauthenticated [none/unauthenticated]".into(),
            ),
            (
                "agent upgrade, session from another origin",
                request(
                    "GET",
                    &ws,
                    "/agent/ws",
                    &[
                        upgrade[0],
                        upgrade[1],
                        ("cookie", owner),
                        ("origin", "http://evil.test"),
                    ],
                ),
                true,
                "refuse forbidden [session/forbidden]".into(),
            ),
            (
                "agent upgrade, session from its own origin",
                request(
                    "GET",
                    &ws,
                    "/agent/ws",
                    &[
                        upgrade[0],
                        upgrade[1],
                        ("cookie", owner),
                        ("origin", &origin),
                    ],
                ),
                true,
                format!("proxy 10.0.0.5:8080 owner - Workspace key=workspace:{ID} [session/ok]"),
            ),
            (
                "port route, a listed port, ?token= stripped",
                request("GET", &port(3000), "/p?token=t&q=1", &[("cookie", owner)]),
                false,
                format!(
                    "proxy 10.0.0.5:3000 owner /p?q=1 Workspace key=workspace:{ID} [session/ok]"
                ),
            ),
            (
                "port route, an unlisted port",
                request("GET", &port(4000), "/", &[("cookie", owner)]),
                false,
                "refuse port_not_allowed [none/none]".into(),
            ),
            (
                "ide tunnel, the ide cookie beside its session",
                request(
                    "GET",
                    "app.example.test",
                    &tunnel,
                    &[("cookie", &ide_cookies)],
                ),
                false,
                format!(
                    "proxy 10.0.0.6:9000 owner /static/a.js?v=1 Tunnel(\"/__ide/{ID}/\") \
                     key=dev:{ID} [ide_cookie/ok]"
                ),
            ),
            (
                "ide tunnel, a dev-ide token in the URL",
                request(
                    "GET",
                    "app.example.test",
                    &format!("/__ide/{ID}/?token={dev}"),
                    &[],
                ),
                false,
                "refuse unauthenticated [none/unauthenticated]".into(),
            ),
            (
                "ide tunnel, a dev-ide token as Bearer",
                request(
                    "GET",
                    "app.example.test",
                    &tunnel,
                    &[("authorization", &bearer)],
                ),
                false,
                format!(
                    "proxy 10.0.0.6:9000 owner /static/a.js?v=1 Tunnel(\"/__ide/{ID}/\") \
                     key=dev:{ID} [dev_ide_token/ok]"
                ),
            ),
            (
                "ide tunnel without its slash",
                request("GET", "app.example.test", &format!("/__ide/{ID}"), &[]),
                false,
                "answer 302 [none/none]".into(),
            ),
            (
                "mint an ide token, owner's session",
                request(
                    "POST",
                    "app.example.test",
                    &format!("/api/dev/{ID}/ide-token"),
                    &[("cookie", owner)],
                ),
                false,
                "answer 200 [session/ok]".into(),
            ),
            (
                "mint an ide token, another user",
                request(
                    "POST",
                    "app.example.test",
                    &format!("/api/dev/{ID}/ide-token"),
                    &[("cookie", "session=sess-other")],
                ),
                false,
                "refuse forbidden [session/forbidden]".into(),
            ),
            (
                "the app API",
                request("GET", "example.test", "/api/anything", &[("cookie", owner)]),
                false,
                "proxy 10.0.0.1:3000 - - App key=- [none/none]".into(),
            ),
            (
                "a stopped workspace",
                request("GET", &stopped, "/", &[("cookie", owner)]),
                false,
                format!("wake {STOPPED} owner key=workspace:{STOPPED} [session/ok]"),
            ),
            (
                "a stopped workspace, no credential: its state is not told",
                request("GET", &stopped, "/", &[]),
                false,
                "refuse unauthenticated [none/unauthenticated]".into(),
            ),
            (
                "a stopped workspace, another user",
                request("GET", &stopped, "/", &[("cookie", "session=sess-other")]),
                false,
                "refuse forbidden [session/forbidden]".into(),
            ),
            (
                "a workspace on its way up",
                request("GET", &starting, "/", &[("cookie", owner)]),
                false,
                "refuse workspace_transitioning [session/ok]".into(),
            ),
            (
                "a backend on loopback (not allowed here)",
                request("GET", &loopback, "/", &[("cookie", owner)]),
                false,
                "refuse upstream_not_allowed [session/ok]".into(),
            ),
            (
                "an unknown workspace",
                request(
                    "GET",
                    "ws-01c00000000000000000000000.example.test",
                    "/",
                    &[],
                ),
                false,
                "refuse unknown_workspace [none/none]".into(),
            ),
            (
                "a host no route serves",
                request("GET", "elsewhere.test", "/", &[]),
                false,
                "refuse no_route [none/none]".into(),
            ),
            (
                "not an id",
                request("GET", "ws-nope.example.test", "/", &[]),
                false,
                "refuse bad_id [none/none]".into(),
            ),
            (
                "a framing header in another spelling",
                request(
                    "POST",
                    &ws,
                    "/",
                    &[("cookie", owner), ("transfer_encoding", "chunked")],
                ),
                false,
                "refuse bad_framing [none/none]".into(),
            ),
        ];
        for (name, req, is_upgrade, want) in cases {
            let facts = Facts {
                is_upgrade,
                proto: "http",
                spend: Spend::Yes,
                established: None,
                client: None,
            };
            let got = summary(&d.decide(&req, &facts).await);
            assert_eq!(got, want, "{name}");
        }
    }

    #[tokio::test]
    async fn a_re_decision_does_not_spend_its_token_twice_and_a_recheck_keeps_a_tunnels_token() {
        let d = decider();
        let ws = format!("ws-{}.example.test", ID.to_ascii_lowercase());
        let id = WorkspaceId::parse(ID).expect("id");
        let (token, _) = d
            .auth()
            .tokens
            .mint(TokenType::Terminal, &id, "owner")
            .expect("mint");
        let req = request(
            "GET",
            &ws,
            &format!("/agent/ws?token={token}"),
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
        );
        let facts = |spend| Facts {
            is_upgrade: true,
            proto: "http",
            spend,
            established: None,
            client: None,
        };
        let first = d.decide(&req, &facts(Spend::Yes)).await;
        let principal = first
            .plan()
            .and_then(|p| p.principal.clone())
            .expect("principal");
        let jti = principal.jti.clone().expect("jti");
        // The same request decided again (its backend moved): accepted, not spent twice.
        let again = d.decide(&req, &facts(Spend::Already(&jti))).await;
        assert!(again.plan().is_some(), "{:?}", again.outcome);
        // Another request with the same token: spent.
        let replay = d.decide(&req, &facts(Spend::Yes)).await;
        assert_eq!(replay.outcome.err(), Some(GatewayError::TokenSpent));
        // An open tunnel's re-check: its token is not verified (nor spent) again.
        let recheck = Facts {
            established: Some(&principal),
            ..facts(Spend::DryRun)
        };
        assert!(d.decide(&req, &recheck).await.plan().is_some());
    }
}
