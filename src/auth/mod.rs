//! The two-path auth contract (SPEC §2, §4, §6), decided in `request_filter` after the record
//! is read and before any upstream is contacted: a scoped token where the route and path take
//! one, else a cookie (the app session, or the ide cookie) whose user owns the record, with the
//! cross-site Origin rule for cookies. A refusal here means the request never leaves edgegate.

pub mod session;
pub mod token;

use crate::config::{AuthMethod, Config, ConfigError};
use crate::error::GatewayError;
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
}

impl Principal {
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

/// A template `head{x}tail` with the key prefix applied.
#[derive(Debug, Clone)]
pub struct KeyTemplate {
    head: String,
    tail: String,
}

impl KeyTemplate {
    fn new(
        field: &str,
        prefix: &str,
        template: &str,
        placeholder: &str,
    ) -> Result<Self, ConfigError> {
        let (head, tail) = template
            .split_once(placeholder)
            .ok_or_else(|| ConfigError(format!("{field}: {placeholder:?} is missing")))?;
        if tail.contains(placeholder) {
            return Err(ConfigError(format!(
                "{field}: {placeholder:?} may appear only once"
            )));
        }
        Ok(Self::from_parts(prefix, head, tail))
    }

    /// A template already split around its placeholder.
    pub(crate) fn from_parts(prefix: &str, head: &str, tail: &str) -> Self {
        Self {
            head: format!("{prefix}{head}"),
            tail: tail.to_string(),
        }
    }

    pub fn key(&self, value: &str) -> String {
        let mut k = String::with_capacity(self.head.len() + value.len() + self.tail.len());
        k.push_str(&self.head);
        k.push_str(value);
        k.push_str(&self.tail);
        k
    }
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

/// Why a credential was refused, for the access log (never the credential itself).
fn token_refusal(e: TokenError) -> GatewayError {
    match e {
        TokenError::Invalid => GatewayError::Unauthenticated,
        TokenError::WrongType | TokenError::WrongScope => GatewayError::Forbidden,
    }
}

impl Auth {
    pub fn new(config: &Config) -> Result<Auth, ConfigError> {
        let a = &config.auth;
        let prefix = &config.redis.key_prefix;
        if a.session_cookie.is_empty() || a.ide_cookie.is_empty() {
            return Err(ConfigError(
                "auth.session_cookie: cookie names must not be empty".into(),
            ));
        }
        if !a.agent_ws_path.starts_with('/') {
            return Err(ConfigError(
                "auth.agent_ws_path: must start with '/'".into(),
            ));
        }
        if a.ide_cookie_ttl_secs == 0 {
            return Err(ConfigError(
                "auth.ide_cookie_ttl_secs: must be greater than 0".into(),
            ));
        }
        let mut trusted_origins = Vec::new();
        for (i, o) in a.trusted_origins.iter().enumerate() {
            let ok = (o.starts_with("http://") || o.starts_with("https://"))
                && !o.ends_with('/')
                && o.split_once("://")
                    .is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains('/'));
            if !ok {
                return Err(ConfigError(format!(
                    "auth.trusted_origins[{i}]: {o:?} is not an origin (scheme://host[:port])"
                )));
            }
            trusted_origins.push(o.to_ascii_lowercase());
        }
        Ok(Auth {
            tokens: TokenKeys::from_config(&a.tokens, a.ide_cookie_ttl_secs)?,
            session_cookie: a.session_cookie.clone(),
            session_key: KeyTemplate::new("auth.session_key", prefix, &a.session_key, "{sid}")?,
            ide_cookie: a.ide_cookie.clone(),
            app_cookies: a.app_cookies.clone(),
            credential_cookies: [&a.session_cookie, &a.ide_cookie]
                .into_iter()
                .chain(&a.app_cookies)
                .cloned()
                .collect(),
            ide_cookie_ttl: a.ide_cookie_ttl_secs,
            cookie_secure: a.cookie_secure,
            trusted_origins,
            agent_ws_path: a.agent_ws_path.clone(),
            jti_key: KeyTemplate::new("auth.jti_key", prefix, &a.jti_key, "{jti}")?,
            agent_key: KeyTemplate::new("auth.agent_key", prefix, &a.agent_key, "{id}")?,
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
    pub async fn authorize(
        &self,
        records: &Records,
        request: &Asking<'_>,
        route: &Route,
        id: &WorkspaceId,
        owner: &str,
        attempt: &mut Option<AuthMethod>,
    ) -> Result<Option<Principal>, GatewayError> {
        let Asking {
            req,
            cookies,
            is_upgrade,
            proto,
            spend,
        } = *request;
        let methods = &route.auth;
        if methods.contains(&AuthMethod::None) {
            return Ok(None);
        }
        let on_agent_path = req.uri.path() == self.agent_ws_path;
        let token = if methods.contains(&AuthMethod::TerminalToken) && on_agent_path && is_upgrade {
            presented_token(req).map(|t| (t, TokenType::Terminal, AuthMethod::TerminalToken))
        } else if methods.contains(&AuthMethod::DevIdeToken) {
            bearer(req).map(|t| (t.to_string(), TokenType::DevIde, AuthMethod::DevIdeToken))
        } else {
            None
        };
        if let Some((tok, typ, method)) = token {
            *attempt = Some(method);
            let v = self.tokens.verify(&tok, typ, id).map_err(token_refusal)?;
            if v.sub != owner {
                return Err(GatewayError::Forbidden);
            }
            self.spend(records, &v, spend).await?;
            // Token-authenticated requests carry their own proof: no Origin rule.
            return Ok(Some(Principal {
                user: v.sub,
                method,
                session_key_hash: None,
                expires_at: None,
                jti: Some(v.jti),
            }));
        }
        let take_ide = methods.contains(&AuthMethod::IdeCookie) && !cookies.ide.is_empty();
        let take_session = methods.contains(&AuthMethod::Session);
        if !take_ide && !take_session {
            return Err(GatewayError::Unauthenticated);
        }
        // What was tried: nothing at all is `none` in the log and the metric.
        if take_ide {
            *attempt = Some(AuthMethod::IdeCookie);
        } else if !cookies.session.is_empty() {
            *attempt = Some(AuthMethod::Session);
        }
        // Either way the app session decides, looked up once.
        let sid = cookies.session.single()?;
        if take_ide {
            // The ide cookie is bound to the app session it was minted under: it opens the
            // tunnel only beside that very session, while the session lasts.
            let mut refusal = GatewayError::Unauthenticated;
            let binding = sid.map(token::session_binding);
            let mut bound = None;
            for &value in cookies.ide.iter() {
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
            let s = self.session(records, sid).await?;
            return match s {
                Some(s) if s.user == v.sub => {
                    self.check_origin(req, is_upgrade, proto)?;
                    Ok(Some(Principal {
                        user: s.user,
                        method: AuthMethod::IdeCookie,
                        session_key_hash: Some(s.key_hash),
                        expires_at: s.expires_at,
                        jti: None,
                    }))
                }
                // The session ended, or now names someone else: the cookie died with it.
                _ => Err(GatewayError::Unauthenticated),
            };
        }
        let s = self.session_owner_of(records, sid, owner).await??;
        self.check_origin(req, is_upgrade, proto)?;
        Ok(Some(Principal {
            user: s.user,
            method: AuthMethod::Session,
            session_key_hash: Some(s.key_hash),
            expires_at: s.expires_at,
            jti: None,
        }))
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
        .or_else(|| query_token(req.uri.query()))
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

/// Whether a query parameter (`name=value` or a bare `name`) is a `token` parameter: its name,
/// percent-decoded, is `token` in any case (`%74oken`, `TOKEN`). Such a parameter is a
/// credential wherever it appears: redacted from logs, stripped before upstreams.
pub fn is_token_param(param: &str) -> bool {
    param_name(param).eq_ignore_ascii_case("token")
}

/// A query parameter's name, percent-decoded (`+` is a space), as the upstream's parser will
/// read it: names are matched only in this form, so `%74oken` is `token` everywhere.
pub fn param_name(param: &str) -> std::borrow::Cow<'_, str> {
    let name = param.split_once('=').map_or(param, |(k, _)| k);
    if name.bytes().any(|b| b == b'%' || b == b'+') {
        std::borrow::Cow::Owned(percent_decode(name))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// The value of the first `token` query parameter (name and value percent-decoded).
pub fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter(|p| is_token_param(p))
        .find_map(|p| p.split_once('='))
        .map(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `query` without its `token` parameters (`is_token_param`); `None` when there were none.
pub fn strip_token_param(query: &str) -> Option<String> {
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let is_token = is_token_param(p);
            removed |= is_token;
            !is_token
        })
        .collect();
    removed.then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_query_parameter_handling() {
        assert_eq!(
            query_token(Some("a=1&token=x.y.z&b=2")).as_deref(),
            Some("x.y.z")
        );
        assert_eq!(query_token(Some("token=a%2Eb")).as_deref(), Some("a.b"));
        assert_eq!(query_token(Some("tokens=1")), None);
        assert_eq!(query_token(Some("token=")), None);
        assert_eq!(query_token(None), None);
        assert_eq!(
            strip_token_param("a=1&token=x&b=2").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(strip_token_param("token=x").as_deref(), Some(""));
        assert_eq!(strip_token_param("a=1"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a%41"), "aA", "an escape at the very end");
    }

    #[test]
    fn token_parameter_names_are_decoded_before_they_are_matched() {
        for name in [
            "token",
            "%74oken",
            "%74%6F%6b%65%6E",
            "TOKEN",
            "Token",
            "tok%65n",
        ] {
            assert!(is_token_param(&format!("{name}=x")), "{name}");
            assert_eq!(
                query_token(Some(&format!("a=1&{name}=x.y"))).as_deref(),
                Some("x.y"),
                "{name}"
            );
            assert_eq!(
                strip_token_param(&format!("a=1&{name}=x.y&b=2")).as_deref(),
                Some("a=1&b=2"),
                "{name}"
            );
        }
        for name in [
            "tokens", "atoken", "token%00", "%74oke", "to+ken", "token[]",
        ] {
            assert!(!is_token_param(&format!("{name}=x")), "{name}");
        }
        assert!(is_token_param("token"), "a bare name");
    }

    #[test]
    fn bearer_is_case_insensitive_in_its_scheme_only() {
        let mut r = RequestHeader::build("GET", b"/", None).expect("req");
        r.insert_header("authorization", "bearer abc").expect("h");
        assert_eq!(bearer(&r), Some("abc"));
        r.insert_header("authorization", "Basic abc").expect("h");
        assert_eq!(bearer(&r), None);
    }
}
