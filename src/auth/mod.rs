//! The two-path auth contract (SPEC §2, §4, §6), decided in `request_filter` after the record
//! is read and before any upstream is contacted: a scoped token where the route and path take
//! one, else a cookie (the app session, or the ide cookie) whose user owns the record, with the
//! cross-site Origin rule for cookies. A refusal here means the request never leaves edgegate.

pub mod session;
pub mod token;

use crate::config::{AuthMethod, Config, ConfigError};
use crate::error::GatewayError;
use crate::route::pattern::KeyTemplate;
use crate::route::store::Records;
use crate::route::{Route, WorkspaceId};
use pingora::http::RequestHeader;
use token::{TokenError, TokenKeys, TokenType};

/// The request being authorised, as the auth decision needs it.
#[derive(Clone, Copy)]
pub struct Asking<'a> {
    pub req: &'a RequestHeader,
    /// The request's cookies, read once (`session::Cookies::read`).
    pub cookies: &'a session::Cookies<'a>,
    pub is_upgrade: bool,
    /// The scheme the client used (`http`/`https`), for the request's own origin.
    pub proto: &'a str,
    /// What to do with a one-time token's `jti`.
    pub spend: Spend<'a>,
    /// Re-checking an open WebSocket: the principal it was opened with.
    pub established: Option<&'a Principal>,
}

/// What `Auth::authorize` found: the credential it tried (or used), and its verdict —
/// `Ok(None)` for an open route.
#[derive(Debug)]
pub struct Outcome {
    pub method: Option<AuthMethod>,
    pub verdict: Result<Option<Principal>, GatewayError>,
}

impl Outcome {
    fn of(method: Option<AuthMethod>, verdict: Result<Option<Principal>, GatewayError>) -> Self {
        Outcome { method, verdict }
    }
}

/// How a one-time token's `jti` is treated by this decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend<'a> {
    /// Spend it (SET NX): a token already spent is refused.
    Yes,
    /// This request spent this `jti` already (a re-decision after its backend moved).
    Already(&'a str),
    /// Look, do not touch (`edgegate explain`).
    DryRun,
}

/// Who a request was verified to be, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub method: AuthMethod,
    /// For a session or an ide cookie (bound to a session): a hash of the session's Redis key,
    /// so an invalidation of that key can be matched against open WebSockets without keeping
    /// the session id around.
    pub session_key_hash: Option<u64>,
    /// When the credential stops by itself (a session's `expires_at`), unix seconds.
    pub expires_at: Option<u64>,
    /// The one-time token's `jti` this request spent.
    pub jti: Option<String>,
    /// For a token an endpoint minted: the Redis key of the app session it was minted under,
    /// which its WebSocket re-checks (the token's client sends no session cookie).
    pub session_key: Option<SessionKey>,
}

/// A session's Redis key, which embeds the session id: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(pub String);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl Principal {
    /// Whether the principal is a user the upstream may be told about (`X-Edgegate-User`): a
    /// share link's holder is nobody in particular.
    pub fn identifies(&self) -> bool {
        self.method != AuthMethod::ShareLink
    }

    /// Whether a WebSocket this principal opened has a maximum life (`token_tunnel_max`): a
    /// token's proves who the client was at the upgrade only.
    pub fn tunnel_has_max_life(&self) -> bool {
        self.by_token() || self.method == AuthMethod::PortToken
    }

    /// Whether this principal's proof was a token (its WebSocket has a maximum life).
    pub fn by_token(&self) -> bool {
        matches!(
            self.method,
            AuthMethod::TerminalToken | AuthMethod::DevIdeToken
        )
    }
}

/// A stable hash of a Redis key (for matching invalidation messages).
pub fn key_hash(key: &str) -> u64 {
    crate::stable_hash(key)
}

pub struct Auth {
    pub tokens: TokenKeys,
    pub session_cookie: String,
    session_key: KeyTemplate,
    pub ide_cookie: String,
    /// The app's other cookies, which never reach a workspace either.
    pub app_cookies: Vec<String>,
    /// Every cookie stripped before a workspace: session, ide cookie, the app's others.
    pub credential_cookies: Vec<String>,
    pub ide_cookie_ttl: u64,
    pub cookie_secure: bool,
    trusted_origins: Vec<String>,
    pub agent_ws_path: String,
    pub jti_key: KeyTemplate,
    pub agent_key: KeyTemplate,
    /// Longest life of a WebSocket opened with a token.
    pub token_tunnel_max: std::time::Duration,
    /// How often an open WebSocket re-checks its credential.
    pub recheck_interval: std::time::Duration,
}

/// How the caller was checked: the credential tried (or used) and the result, as the access
/// log and `edgegate_auth_decisions_total` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub method: Option<AuthMethod>,
    /// `ok`, `open`, `unauthenticated`, `forbidden`, `error`, or `none` when nothing was checked.
    pub result: &'static str,
}

impl Check {
    /// Nothing was checked (refused before auth, or a route without auth at the edge).
    pub const NONE: Check = Check {
        method: None,
        result: "none",
    };

    /// The one place an auth verdict becomes its label.
    pub fn of(
        method: Option<AuthMethod>,
        verdict: &Result<Option<Principal>, GatewayError>,
    ) -> Check {
        let result = match verdict {
            Ok(Some(_)) => "ok",
            Ok(None) => "open",
            Err(e) => e.auth_result(),
        };
        Check { method, result }
    }

    /// The `method` label: `none` when no credential was tried.
    pub fn method_label(&self) -> &'static str {
        self.method.map_or("none", |m| m.as_str())
    }
}

/// The credential a request's auth is decided by.
enum Credential {
    Token(String, TokenType, AuthMethod),
    IdeCookie,
    Session,
    /// None sent: `none` in the log and the metric.
    Nothing,
}

impl Credential {
    fn method(&self) -> Option<AuthMethod> {
        match self {
            Credential::Token(_, _, m) => Some(*m),
            Credential::IdeCookie => Some(AuthMethod::IdeCookie),
            Credential::Session => Some(AuthMethod::Session),
            Credential::Nothing => None,
        }
    }
}

/// Why a credential was refused, for the access log (never the credential itself).
pub fn token_refusal(e: TokenError) -> GatewayError {
    match e {
        TokenError::Invalid => GatewayError::Unauthenticated,
        TokenError::WrongType | TokenError::WrongScope => GatewayError::Forbidden,
    }
}

impl Auth {
    /// The auth runtime of a validated config: its token keys (read and checked here) and
    /// key templates.
    pub fn new(config: &Config) -> Result<Auth, ConfigError> {
        let a = &config.auth;
        let prefix = &config.redis.key_prefix;
        let template = |field: &str, template: &str, placeholder: &str| {
            KeyTemplate::new(prefix, template, placeholder)
                .map_err(|e| ConfigError(format!("{field}: {e}")))
        };
        Ok(Auth {
            tokens: TokenKeys::from_config(&a.tokens, a.ide_cookie_ttl_secs)?
                .with_port_ttls(&config.ports),
            session_cookie: a.session_cookie.clone(),
            session_key: template("auth.session_key", &a.session_key, "{sid}")?,
            ide_cookie: a.ide_cookie.clone(),
            // The content site's port cookie (and its sign-in state) are stripped and
            // protected as the app's cookies are.
            app_cookies: a
                .app_cookies
                .iter()
                .cloned()
                .chain(crate::ports::cookie_names(&config.ports))
                .collect(),
            credential_cookies: [&a.session_cookie, &a.ide_cookie]
                .into_iter()
                .chain(&a.app_cookies)
                .cloned()
                .chain(crate::ports::cookie_names(&config.ports))
                .collect(),
            ide_cookie_ttl: a.ide_cookie_ttl_secs,
            cookie_secure: a.cookie_secure,
            trusted_origins: a
                .trusted_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            agent_ws_path: a.agent_ws_path.clone(),
            jti_key: template("auth.jti_key", &a.jti_key, "{jti}")?,
            agent_key: template("auth.agent_key", &a.agent_key, "{id}")?,
            token_tunnel_max: std::time::Duration::from_secs(a.token_tunnel_max_secs),
            recheck_interval: std::time::Duration::from_millis(a.recheck_interval_ms),
        })
    }

    /// Decide who may pass on a workspace route. `Ok(None)`: the route is open (`auth = ["none"]`).
    ///
    /// A token is considered only where the route and the request's shape take one: a terminal
    /// token on a WebSocket upgrade of the agent path (from `Authorization: Bearer` or
    /// `?token=`: an upgrade renders nothing), a dev-ide token from `Authorization: Bearer`
    /// only (a link must never carry it). Either is spent once. Else cookies decide: the ide
    /// cookie (with the app session it was minted under) or the app session, whose user must
    /// own the record, from the request's own origin.
    ///
    /// Re-checking an open WebSocket (`established`): a token that opened it is not verified
    /// again — it authorised the upgrade, was spent there, and its short life must not end a
    /// healthy terminal (`auth.token_tunnel_max_secs` bounds such tunnels); the record must
    /// still name its user. A cookie is checked again in full.
    pub async fn authorize(
        &self,
        records: &Records,
        request: &Asking<'_>,
        route: &Route,
        id: &WorkspaceId,
        owner: &str,
    ) -> Outcome {
        let methods = &route.auth;
        if methods.contains(&AuthMethod::None) {
            return Outcome::of(None, Ok(None));
        }
        if let Some(p) = request.established.filter(|p| p.by_token()) {
            let verdict = match &p.session_key {
                _ if p.user != owner => Err(GatewayError::Forbidden),
                // The session the token was minted under must still be there, and its user's.
                Some(key) => match session::session_at(records, &key.0).await {
                    Ok(Some(s)) if s.user == p.user => Ok(Some(p.clone())),
                    Ok(_) => Err(GatewayError::Unauthenticated),
                    Err(e) => Err(e),
                },
                None => Ok(Some(p.clone())),
            };
            return Outcome::of(Some(p.method), verdict);
        }
        let credential = self.credential(request, route);
        let verdict = match &credential {
            Credential::Token(token, typ, method) => {
                self.token(records, request, id, owner, token, *typ, *method)
                    .await
            }
            Credential::IdeCookie => self.ide_cookie(records, request, id, owner).await,
            Credential::Session => self.session_cookie(records, request, owner).await,
            // Nothing the route takes was sent.
            Credential::Nothing => Err(GatewayError::Unauthenticated),
        };
        Outcome::of(credential.method(), verdict)
    }

    /// Which credential decides, as the route and the request's shape take one.
    fn credential(&self, request: &Asking<'_>, route: &Route) -> Credential {
        let (req, methods) = (request.req, &route.auth);
        let on_agent_path = req.uri.path() == self.agent_ws_path;
        let token = if methods.contains(&AuthMethod::TerminalToken)
            && on_agent_path
            && request.is_upgrade
        {
            presented_token(req).map(|t| (t, TokenType::Terminal, AuthMethod::TerminalToken))
        } else if methods.contains(&AuthMethod::DevIdeToken) {
            bearer(req).map(|t| (t.to_string(), TokenType::DevIde, AuthMethod::DevIdeToken))
        } else {
            None
        };
        match token {
            Some((t, typ, method)) => Credential::Token(t, typ, method),
            None if methods.contains(&AuthMethod::IdeCookie) && !request.cookies.ide.is_empty() => {
                Credential::IdeCookie
            }
            None if methods.contains(&AuthMethod::Session)
                && !request.cookies.session.is_empty() =>
            {
                Credential::Session
            }
            None => Credential::Nothing,
        }
    }

    /// A one-time token: verified for this id and type, its user the owner, then spent.
    /// Token-authenticated requests carry their own proof: no Origin rule.
    #[allow(clippy::too_many_arguments)]
    async fn token(
        &self,
        records: &Records,
        request: &Asking<'_>,
        id: &WorkspaceId,
        owner: &str,
        token: &str,
        typ: TokenType,
        method: AuthMethod,
    ) -> Result<Option<Principal>, GatewayError> {
        let v = self.tokens.verify(token, typ, id).map_err(token_refusal)?;
        if v.sub != owner {
            return Err(GatewayError::Forbidden);
        }
        self.spend(records, &v, request.spend).await?;
        // A token an endpoint minted names the app session it was minted under: once that
        // session has ended the token opens nothing, and its tunnel ends with it. One minted by
        // the operator (`edgegate token mint`) names none.
        let session = match records.note(&self.token_session_note(&v.jti)).await? {
            Some(key) => match session::session_at(records, &key).await? {
                Some(s) if s.user == v.sub => Some((SessionKey(key), s)),
                _ => return Err(GatewayError::Unauthenticated),
            },
            None => None,
        };
        Ok(Some(Principal {
            user: v.sub,
            method,
            session_key_hash: session.as_ref().map(|(_, s)| s.key_hash),
            expires_at: session.as_ref().and_then(|(_, s)| s.expires_at),
            jti: Some(v.jti),
            session_key: session.map(|(k, _)| k),
        }))
    }

    /// The ide cookie, bound to the app session it was minted under: it opens the tunnel only
    /// beside that very session, while the session lasts (one session lookup).
    async fn ide_cookie(
        &self,
        records: &Records,
        request: &Asking<'_>,
        id: &WorkspaceId,
        owner: &str,
    ) -> Result<Option<Principal>, GatewayError> {
        let sid = request.cookies.session.single()?;
        let mut refusal = GatewayError::Unauthenticated;
        let binding = sid.map(token::session_binding);
        let mut bound = None;
        for &value in request.cookies.ide.iter() {
            match self.tokens.verify(value, TokenType::IdeSession, id) {
                Ok(v) if v.sub != owner => refusal = GatewayError::Forbidden,
                Ok(v) if v.session_binding.is_some() && v.session_binding == binding => {
                    bound = Some(v);
                    break;
                }
                // Minted under another session, or under none.
                Ok(_) | Err(TokenError::Invalid) => {}
                Err(_) => refusal = GatewayError::Forbidden,
            }
        }
        let (Some(v), Some(sid)) = (bound, sid) else {
            return Err(refusal);
        };
        match self.session(records, sid).await? {
            Some(s) if s.user == v.sub => {
                self.check_origin(request.req, request.is_upgrade, request.proto)?;
                Ok(Some(Principal {
                    user: s.user,
                    method: AuthMethod::IdeCookie,
                    session_key_hash: Some(s.key_hash),
                    expires_at: s.expires_at,
                    jti: None,
                    session_key: None,
                }))
            }
            // The session ended, or now names someone else: the cookie died with it.
            _ => Err(GatewayError::Unauthenticated),
        }
    }

    /// The app session, whose user must own the record, from the request's own origin.
    async fn session_cookie(
        &self,
        records: &Records,
        request: &Asking<'_>,
        owner: &str,
    ) -> Result<Option<Principal>, GatewayError> {
        let sid = request.cookies.session.single()?;
        let s = self.session_owner_of(records, sid, owner).await??;
        self.check_origin(request.req, request.is_upgrade, request.proto)?;
        Ok(Some(Principal {
            user: s.user,
            method: AuthMethod::Session,
            session_key_hash: Some(s.key_hash),
            expires_at: s.expires_at,
            jti: None,
            session_key: None,
        }))
    }

    /// Where an endpoint notes the session a token was minted under (beside its spent mark).
    pub fn token_session_note(&self, jti: &str) -> String {
        self.jti_key.key(&format!("{jti}.session"))
    }

    /// The Redis key of session `sid`.
    pub fn session_key_of(&self, sid: &str) -> String {
        self.session_key.key(sid)
    }

    /// Spend a one-time token's `jti` (SET NX, kept as long as the token could verify).
    pub async fn spend(
        &self,
        records: &Records,
        v: &token::Verified,
        how: Spend<'_>,
    ) -> Result<(), GatewayError> {
        match how {
            Spend::Already(jti) if jti == v.jti => Ok(()),
            Spend::DryRun => Ok(()),
            Spend::Yes | Spend::Already(_) => {
                let keep = v.exp.saturating_sub(token::now()) + self.tokens.leeway() + 1;
                if records.spend_once(&self.jti_key.key(&v.jti), keep).await? {
                    Ok(())
                } else {
                    Err(GatewayError::TokenSpent)
                }
            }
        }
    }

    /// The session a request's one session cookie names (`Ok(None)`: none, or not valid).
    pub async fn session(
        &self,
        records: &Records,
        sid: &str,
    ) -> Result<Option<session::SessionUser>, GatewayError> {
        session::session_user(records, &self.session_key, sid).await
    }

    /// The session user if the request's session cookie belongs to `owner`. Outer error: the
    /// store failed (503, fail closed) or the cookie is ambiguous; inner: 401 (no valid
    /// session) or 403 (another user's).
    pub async fn session_owner(
        &self,
        records: &Records,
        req: &RequestHeader,
        owner: &str,
    ) -> Result<Result<session::SessionUser, GatewayError>, GatewayError> {
        let sid = session::cookie_values(req, &self.session_cookie).single()?;
        self.session_owner_of(records, sid, owner).await
    }

    /// `session_owner` for the cookie value already read from the request.
    async fn session_owner_of(
        &self,
        records: &Records,
        sid: Option<&str>,
        owner: &str,
    ) -> Result<Result<session::SessionUser, GatewayError>, GatewayError> {
        let Some(sid) = sid else {
            return Ok(Err(GatewayError::Unauthenticated));
        };
        Ok(match self.session(records, sid).await? {
            Some(s) if s.user == owner => Ok(s),
            Some(_) => Err(GatewayError::Forbidden),
            None => Err(GatewayError::Unauthenticated),
        })
    }

    /// Workspace subdomains are one site, so SameSite does not stop workspace B's page from
    /// using the visitor's cookie against workspace A: a cookie-authenticated request with an
    /// Origin must come from its own origin (or a trusted one), and a cookie-authenticated
    /// upgrade must say where it comes from.
    pub fn check_origin(
        &self,
        req: &RequestHeader,
        is_upgrade: bool,
        proto: &str,
    ) -> Result<(), GatewayError> {
        let origin = match req.headers.get(http::header::ORIGIN) {
            None if is_upgrade => return Err(GatewayError::Forbidden),
            None => return fetch_metadata_allows(req),
            Some(o) => o.to_str().map_err(|_| GatewayError::Forbidden)?,
        };
        let host = crate::headers::browser_host(req)?;
        let own = origin.split_once("://").is_some_and(|(scheme, rest)| {
            scheme.eq_ignore_ascii_case(proto) && rest.eq_ignore_ascii_case(host)
        });
        if own
            || self
                .trusted_origins
                .iter()
                .any(|t| t.eq_ignore_ascii_case(origin))
        {
            Ok(())
        } else {
            Err(GatewayError::Forbidden)
        }
    }
}

/// A cookie-authenticated request without an `Origin`: what the browser says in `Sec-Fetch-*`
/// about who started it decides. Another site, or a sibling subdomain (a workspace), may only
/// navigate here (a top-level or frame `GET`): `<script src>`, `<img>`, `<link>` and no-cors
/// fetches carry the visitor's cookies but no `Origin`, and would run or read the visitor's
/// workspace from a hostile page. Clients that send no `Sec-Fetch-Site` (non-browsers, old
/// browsers) pass, as does a request the user started (`none`) or the page's own origin.
fn fetch_metadata_allows(req: &RequestHeader) -> Result<(), GatewayError> {
    let get = |name: &str| req.headers.get(name).map(|v| v.as_bytes());
    match get("sec-fetch-site") {
        None | Some(b"same-origin") | Some(b"none") => return Ok(()),
        Some(_) => {}
    }
    let navigation = get("sec-fetch-mode") == Some(b"navigate")
        && matches!(req.method, http::Method::GET | http::Method::HEAD)
        && !matches!(get("sec-fetch-dest"), Some(b"object" | b"embed"));
    if navigation {
        Ok(())
    } else {
        Err(GatewayError::Forbidden)
    }
}

/// The IDE bootstrap signs a browser in: only a navigation the app's own page started may do
/// that. A link from anywhere else (another site, a workspace on a sibling subdomain, a mail)
/// is refused even with a valid token and session: a page that can toss or overflow cookies
/// on the domain could otherwise sign the visitor into its owner's IDE (login CSRF). Clients
/// that send no `Sec-Fetch-Site` (non-browsers) pass.
pub fn bootstrap_navigation_allowed(req: &RequestHeader) -> bool {
    req.headers
        .get("sec-fetch-site")
        .is_none_or(|v| v.as_bytes() == b"same-origin")
}

/// `Authorization: Bearer …`, else `?token=`. Only for the two places that take a credential
/// from the URL (SPEC §4): the IDE bootstrap and a WebSocket upgrade of the agent path.
pub fn presented_token(req: &RequestHeader) -> Option<String> {
    bearer(req)
        .map(str::to_string)
        .or_else(|| crate::query::token(req.uri.query()))
}

/// Every `Authorization: Bearer` value the request carries (a second header is as much the
/// client's as the first).
pub fn bearers(req: &RequestHeader) -> impl Iterator<Item = &str> {
    req.headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| {
            let (scheme, token) = v.to_str().ok()?.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

pub fn bearer(req: &RequestHeader) -> Option<&str> {
    let v = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_case_insensitive_in_its_scheme_only() {
        let mut r = RequestHeader::build("GET", b"/", None).expect("req");
        r.insert_header("authorization", "bearer abc").expect("h");
        assert_eq!(bearer(&r), Some("abc"));
        r.insert_header("authorization", "Basic abc").expect("h");
        assert_eq!(bearer(&r), None);
    }
}
