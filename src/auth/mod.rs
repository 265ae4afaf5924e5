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
}

/// Who a request was verified to be, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub method: AuthMethod,
    /// For a session: a hash of its Redis key, so an invalidation of that key can be matched
    /// against open WebSockets without keeping the session id around.
    pub session_key_hash: Option<u64>,
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
    pub ide_cookie_ttl: u64,
    pub cookie_secure: bool,
    trusted_origins: Vec<String>,
    pub agent_ws_path: String,
    pub jti_key: KeyTemplate,
    pub agent_key: KeyTemplate,
    pub bootstrap_requires_session: bool,
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
            ide_cookie_ttl: a.ide_cookie_ttl_secs,
            cookie_secure: a.cookie_secure,
            trusted_origins,
            agent_ws_path: a.agent_ws_path.clone(),
            jti_key: KeyTemplate::new("auth.jti_key", prefix, &a.jti_key, "{jti}")?,
            agent_key: KeyTemplate::new("auth.agent_key", prefix, &a.agent_key, "{id}")?,
            bootstrap_requires_session: a.bootstrap_requires_session,
        })
    }

    /// Decide who may pass on a workspace route. `Ok(None)`: the route is open (`auth = ["none"]`).
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
        } = *request;
        let methods = &route.auth;
        if methods.contains(&AuthMethod::None) {
            return Ok(None);
        }
        // A token where this route and path take one. A token elsewhere is not ours to judge
        // (it may be the workspace app's own), so cookies decide.
        let want = if methods.contains(&AuthMethod::TerminalToken)
            && req.uri.path() == self.agent_ws_path
        {
            Some((TokenType::Terminal, AuthMethod::TerminalToken))
        } else if methods.contains(&AuthMethod::DevIdeToken) {
            Some((TokenType::DevIde, AuthMethod::DevIdeToken))
        } else {
            None
        };
        if let Some((typ, method)) = want {
            if let Some(tok) = presented_token(req) {
                *attempt = Some(method);
                let v = self.tokens.verify(&tok, typ, id).map_err(token_refusal)?;
                if v.sub != owner {
                    return Err(GatewayError::Forbidden);
                }
                // Token-authenticated requests carry their own proof: no Origin rule.
                return Ok(Some(Principal {
                    user: v.sub,
                    method,
                    session_key_hash: None,
                }));
            }
        }
        let mut refusal = GatewayError::Unauthenticated;
        if methods.contains(&AuthMethod::IdeCookie) {
            for &value in cookies.ide.iter() {
                *attempt = Some(AuthMethod::IdeCookie);
                match self.tokens.verify(value, TokenType::IdeSession, id) {
                    Ok(v) if v.sub == owner => {
                        self.check_origin(req, is_upgrade, proto)?;
                        return Ok(Some(Principal {
                            user: v.sub,
                            method: AuthMethod::IdeCookie,
                            session_key_hash: None,
                        }));
                    }
                    Ok(_) => refusal = GatewayError::Forbidden,
                    Err(TokenError::Invalid) => {}
                    Err(_) => refusal = GatewayError::Forbidden,
                }
            }
        }
        if methods.contains(&AuthMethod::Session) {
            let sids = &cookies.session;
            if !sids.is_empty() {
                *attempt = Some(AuthMethod::Session);
            }
            match self.session_owner_of(records, sids, owner).await? {
                Ok((user, hash)) => {
                    self.check_origin(req, is_upgrade, proto)?;
                    return Ok(Some(Principal {
                        user,
                        method: AuthMethod::Session,
                        session_key_hash: Some(hash),
                    }));
                }
                Err(GatewayError::Forbidden) => refusal = GatewayError::Forbidden,
                Err(_) => {}
            }
        }
        Err(refusal)
    }

    /// The session user if one of the session cookies belongs to `owner`. Outer error: the
    /// store failed (503, fail closed); inner: 401 (no valid session) or 403 (another user's).
    pub async fn session_owner(
        &self,
        records: &Records,
        req: &RequestHeader,
        owner: &str,
    ) -> Result<Result<(String, u64), GatewayError>, GatewayError> {
        let sids = session::cookie_values(req, &self.session_cookie);
        self.session_owner_of(records, &sids, owner).await
    }

    /// `session_owner` for cookie values already read from the request.
    async fn session_owner_of(
        &self,
        records: &Records,
        sids: &[&str],
        owner: &str,
    ) -> Result<Result<(String, u64), GatewayError>, GatewayError> {
        let mut refusal = GatewayError::Unauthenticated;
        for &sid in sids {
            match session::session_user(records, &self.session_key, sid).await? {
                Some((user, hash)) if user == owner => return Ok(Ok((user, hash))),
                Some(_) => refusal = GatewayError::Forbidden,
                None => {}
            }
        }
        Ok(Err(refusal))
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
            None => return Ok(()),
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

/// `Authorization: Bearer …`, else `?token=`.
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

/// The first `token` query parameter, percent-decoded.
pub fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "token")
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

/// `query` without its `token` parameters; `None` when there were none to remove.
pub fn strip_token_param(query: &str) -> Option<String> {
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let is_token = p.split_once('=').map_or(*p, |(k, _)| k) == "token";
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
