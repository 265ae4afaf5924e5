//! Who may open a port on the content site (`decide`, for routes on `{content_domain}`): the
//! port cookie or a port token, each standing for a grant in Redis (revocable), checked
//! against the port's visibility; a public port needs nothing. The app session never reaches
//! the content site: a grant names the session it was made under, and dies with it.

use super::{Access, PortRules, PortSettings, TOKEN_HEADER};
use crate::auth::token::TokenType;
use crate::auth::{session, Auth, Principal};
use crate::config::{AuthMethod, Visibility};
use crate::error::GatewayError;
use crate::route::store::Records;
use crate::route::{Route, WorkspaceId};
use pingora::http::RequestHeader;

/// What a grant stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// A browser signed in through the app domain (the port cookie).
    Session,
    /// A port token (non-browser clients).
    Token,
    /// A share link, and the cookies it was exchanged for.
    Share,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Session => "session",
            GrantKind::Token => "token",
            GrantKind::Share => "share",
        }
    }

    fn parse(s: &str) -> Option<GrantKind> {
        match s {
            "session" => Some(GrantKind::Session),
            "token" => Some(GrantKind::Token),
            "share" => Some(GrantKind::Share),
            _ => None,
        }
    }
}

/// A grant: the Redis record (`ports.grant_key`) a port cookie, port token or share link
/// stands for. Deleting it revokes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub kind: GrantKind,
    pub workspace: WorkspaceId,
    pub port: u16,
    /// The user it was made for (the owner who made it, for a share link).
    pub user: String,
    /// The Redis key of the app session it was made under (not for a share link, which
    /// outlives its maker's session on purpose).
    pub session: Option<String>,
}

impl PortRules {
    /// Keep `grant` as `gid` for `ttl` seconds.
    pub async fn put_grant(
        &self,
        records: &Records,
        gid: &str,
        grant: &Grant,
        ttl: u64,
    ) -> Result<(), GatewayError> {
        let port = grant.port.to_string();
        let mut fields = vec![
            ("kind", grant.kind.as_str()),
            ("workspace", grant.workspace.as_str()),
            ("port", port.as_str()),
            ("user", grant.user.as_str()),
        ];
        if let Some(s) = &grant.session {
            fields.push(("session", s.as_str()));
        }
        records.put_record(&self.grant_key(gid), &fields, ttl).await
    }

    /// Make grant `gid` live `ttl` seconds from now, only if it still exists: `false` when it
    /// was deleted (revoked) since it was read. Never writes it back, so a revocation that
    /// lands between a read and this call stays a revocation.
    pub async fn extend_grant(
        &self,
        records: &Records,
        gid: &str,
        ttl: u64,
    ) -> Result<bool, GatewayError> {
        records.expire(&self.grant_key(gid), ttl).await
    }

    /// Grant `gid`, if it is still there and well formed (read through the secrets cache:
    /// never served stale, dropped by an invalidation of its key).
    pub async fn grant(&self, records: &Records, gid: &str) -> Result<Option<Grant>, GatewayError> {
        if gid.is_empty() || gid.len() > 64 || !gid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let (found, _) = records.get_secret(&self.grant_key(gid)).await;
        let Some(rec) = found? else { return Ok(None) };
        let field = |f: &str| rec.get(f);
        let parsed = (|| {
            Some(Grant {
                kind: GrantKind::parse(field("kind")?)?,
                workspace: WorkspaceId::parse(field("workspace")?)?,
                port: field("port")?.parse().ok()?,
                user: field("user")?.to_string(),
                session: field("session").map(str::to_string),
            })
        })();
        if parsed.is_none() {
            log::warn!("a malformed grant record (key redacted): refused");
        }
        Ok(parsed)
    }
}

/// The request being let onto a port, with what its record says.
pub struct PortAsk<'a> {
    pub req: &'a RequestHeader,
    pub proto: &'a str,
    pub is_upgrade: bool,
    pub route: &'a Route,
    pub id: &'a WorkspaceId,
    pub port: u16,
    pub owner: &'a str,
    /// The workspace's organization.
    pub org: Option<&'a str>,
    pub settings: PortSettings,
    /// The request's `Origin`, when it is another port of the workspace that may use the
    /// visitor's credentials here (`decide`): it counts as the request's own origin.
    pub sibling: Option<&'a str>,
}

/// The verdict on a port: the credential tried and how the caller passed.
pub struct PortOutcome {
    pub method: Option<AuthMethod>,
    pub verdict: Result<(Option<Principal>, Access), GatewayError>,
}

/// Decide who may pass onto the port. A public port needs nothing (and identifies nobody);
/// otherwise a port token from its header, else the port cookie, each naming a grant for this
/// very workspace and port.
pub async fn authorize(
    auth: &Auth,
    rules: &PortRules,
    records: &Records,
    ask: &PortAsk<'_>,
) -> PortOutcome {
    if ask.settings.visibility == Visibility::Public {
        return PortOutcome {
            method: None,
            verdict: Ok((None, Access::Anyone)),
        };
    }
    let methods = &ask.route.auth;
    let header = ask
        .req
        .headers
        .get(TOKEN_HEADER)
        .map(|v| v.to_str().unwrap_or_default().trim());
    if let (Some(token), true) = (header, methods.contains(&AuthMethod::PortToken)) {
        let verdict = by_token(auth, rules, records, ask, token).await;
        return PortOutcome {
            method: Some(AuthMethod::PortToken),
            verdict,
        };
    }
    let values = session::cookie_values(ask.req, &rules.cookie);
    let cookie = match values.single() {
        Ok(Some(c)) => c,
        Ok(None) => {
            return PortOutcome {
                method: None,
                verdict: Err(GatewayError::Unauthenticated),
            }
        }
        Err(e) => {
            return PortOutcome {
                method: Some(AuthMethod::PortCookie),
                verdict: Err(e),
            }
        }
    };
    let (method, verdict) = by_cookie(auth, rules, records, ask, cookie).await;
    PortOutcome { method, verdict }
}

/// A port token: its grant, the session behind it, and the port's visibility. It carries its
/// own proof, so no Origin rule.
async fn by_token(
    auth: &Auth,
    rules: &PortRules,
    records: &Records,
    ask: &PortAsk<'_>,
    token: &str,
) -> Result<(Option<Principal>, Access), GatewayError> {
    let v = auth
        .tokens
        .verify_port(token, TokenType::PortToken, ask.id, ask.port)
        .map_err(crate::auth::token_refusal)?;
    let grant = rules
        .grant(records, &v.jti)
        .await?
        .filter(|g| g.kind == GrantKind::Token && g.user == v.sub)
        .ok_or(GatewayError::Unauthenticated)?;
    signed_in(rules, records, ask, &grant, &v.jti, AuthMethod::PortToken).await
}

/// The port cookie: a session grant (checked as a token's is) or a share link's, from the
/// request's own origin or one of its workspace's other ports.
async fn by_cookie(
    auth: &Auth,
    rules: &PortRules,
    records: &Records,
    ask: &PortAsk<'_>,
    cookie: &str,
) -> (
    Option<AuthMethod>,
    Result<(Option<Principal>, Access), GatewayError>,
) {
    let v = match auth
        .tokens
        .verify_port(cookie, TokenType::PortCookie, ask.id, ask.port)
    {
        Ok(v) => v,
        Err(e) => {
            return (
                Some(AuthMethod::PortCookie),
                Err(crate::auth::token_refusal(e)),
            )
        }
    };
    let grant = match rules.grant(records, &v.jti).await {
        Ok(Some(g)) if g.user == v.sub && g.workspace == *ask.id && g.port == ask.port => g,
        Ok(_) => {
            return (
                Some(AuthMethod::PortCookie),
                Err(GatewayError::Unauthenticated),
            )
        }
        Err(e) => return (Some(AuthMethod::PortCookie), Err(e)),
    };
    let method = match grant.kind {
        GrantKind::Share => AuthMethod::ShareLink,
        _ => AuthMethod::PortCookie,
    };
    if !ask.route.auth.contains(&method) || (method == AuthMethod::ShareLink && rules.shares_off())
    {
        return (Some(method), Err(GatewayError::Unauthenticated));
    }
    // A share link is its maker's grant while the maker owns the workspace: not a new owner's.
    if method == AuthMethod::ShareLink && grant.user != ask.owner {
        return (Some(method), Err(GatewayError::Unauthenticated));
    }
    if ask.sibling.is_none() {
        if let Err(e) = auth.check_origin(ask.req, ask.is_upgrade, ask.proto) {
            return (Some(method), Err(e));
        }
    }
    let verdict = match grant.kind {
        GrantKind::Share => Ok((
            Some(Principal {
                // Nobody in particular: no identity goes upstream (`Principal::identifies`).
                user: format!("share:{}", v.jti),
                method,
                session_key_hash: Some(crate::auth::key_hash(&rules.grant_key(&v.jti))),
                expires_at: Some(v.exp),
                jti: None,
                session_key: None,
            }),
            Access::Share,
        )),
        GrantKind::Token => Err(GatewayError::Unauthenticated),
        GrantKind::Session => signed_in(rules, records, ask, &grant, &v.jti, method).await,
    };
    (Some(method), verdict)
}

/// A grant made for a signed-in user: its session must still be there and the user's, and
/// that user must pass the port's visibility.
async fn signed_in(
    rules: &PortRules,
    records: &Records,
    ask: &PortAsk<'_>,
    grant: &Grant,
    gid: &str,
    method: AuthMethod,
) -> Result<(Option<Principal>, Access), GatewayError> {
    if grant.workspace != *ask.id || grant.port != ask.port {
        return Err(GatewayError::Forbidden);
    }
    let key = grant
        .session
        .as_deref()
        .ok_or(GatewayError::Unauthenticated)?;
    let s = match session::session_at(records, key).await? {
        Some(s) if s.user == grant.user => s,
        _ => return Err(GatewayError::Unauthenticated),
    };
    let access = access_of(
        rules,
        records,
        key,
        &s.user,
        ask.owner,
        ask.org,
        ask.settings.visibility,
    )
    .await?;
    Ok((
        Some(Principal {
            user: s.user,
            method,
            session_key_hash: Some(s.key_hash),
            expires_at: s.expires_at,
            jti: Some(gid.to_string()),
            session_key: None,
        }),
        access,
    ))
}

/// The level a signed-in `user` (with the session at `session_key`) has on a port: what the
/// sign-in and the token endpoint check before they make a grant.
pub async fn access_of(
    rules: &PortRules,
    records: &Records,
    session_key: &str,
    user: &str,
    owner: &str,
    org: Option<&str>,
    visibility: Visibility,
) -> Result<Access, GatewayError> {
    if user == owner {
        return Ok(Access::Owner);
    }
    match visibility {
        Visibility::Private => Err(GatewayError::Forbidden),
        Visibility::Authenticated | Visibility::Public => Ok(Access::User),
        Visibility::Organization => {
            let theirs = session::session_field(records, session_key, &rules.org_field).await?;
            match (org, theirs) {
                (Some(ws), Some(u)) if ws == u => Ok(Access::Member),
                _ => Err(GatewayError::Forbidden),
            }
        }
    }
}
