//! The port endpoints (`decide`): on the app's hosts, the content site's sign-in (`GET
//! {api_prefix}{id}/{port}/authorize`: the app session is checked where it lives, a grant and
//! a one-time code are made, the browser goes back with the code), port tokens and share
//! links (`POST …/token`, `…/share`); on a content host, the exchange of a code or a share link
//! for the host-only port cookie, which takes the credential out of the URL with a 303.

use super::auth::{access_of, Grant, GrantKind};
use super::{PortRules, TOKEN_HEADER};
use crate::api::{Answered, Reply};
use crate::auth::token::{new_jti, now, TokenType};
use crate::auth::{session, Auth, Check, Spend};
use crate::config::AuthMethod;
use crate::error::GatewayError;
use crate::route::store::Records;
use crate::route::{record, PortEndpoint, Route, RouteTable, WorkspaceId};
use pingora::http::{Method, RequestHeader};

/// What the port endpoints read.
pub struct PortEndpoints<'a> {
    pub routes: &'a RouteTable,
    pub records: &'a Records,
    pub auth: &'a Auth,
    pub rules: &'a PortRules,
}

/// The signed-in caller of an endpoint on the app's hosts.
struct Caller {
    user: String,
    session_key: String,
    expires_at: Option<u64>,
}

/// A checked caller: the route, the record's owner, and how the caller passes the port.
struct Allowed<'r> {
    route: &'r Route,
    caller: Caller,
    owner: String,
}

impl PortEndpoints<'_> {
    /// Answer a port endpoint on the app's hosts.
    pub async fn answer(
        &self,
        req: &RequestHeader,
        ep: PortEndpoint,
        id: WorkspaceId,
        port: u16,
        proto: &str,
    ) -> Answered {
        let allowed = self.allowed(req, ep, &id, port, proto).await;
        let (check, reply) = match allowed {
            Ok(a) => {
                let check = Check {
                    method: Some(AuthMethod::Session),
                    result: "ok",
                };
                (check, self.respond(req, ep, &id, port, proto, a).await)
            }
            // No app session, on a navigation: the app's login, which comes back here.
            Err(GatewayError::Unauthenticated)
                if ep == PortEndpoint::Authorize && !self.rules.login_url.is_empty() =>
            {
                let here = format!(
                    "{proto}://{}{}",
                    crate::headers::browser_host(req).unwrap_or_default(),
                    req.uri.path_and_query().map_or("/", |p| p.as_str())
                );
                let check = Check {
                    method: None,
                    result: "unauthenticated",
                };
                let login = &self.rules.login_url;
                let sep = if login.contains('?') { '&' } else { '?' };
                (
                    check,
                    Ok(see_other(format!(
                        "{login}{sep}return_to={}",
                        encode(&here)
                    ))),
                )
            }
            Err(e) => (check_of(&e), Err(e)),
        };
        Answered { check, reply }
    }

    /// The caller's app session (from the app's own origin for the POSTs), the record, and the
    /// caller passing the port's visibility (the owner alone for a share link).
    async fn allowed(
        &self,
        req: &RequestHeader,
        ep: PortEndpoint,
        id: &WorkspaceId,
        port: u16,
        proto: &str,
    ) -> Result<Allowed<'_>, GatewayError> {
        let method_ok = match ep {
            PortEndpoint::Authorize => req.method == Method::GET || req.method == Method::HEAD,
            PortEndpoint::Token | PortEndpoint::Share => req.method == Method::POST,
        };
        if !method_ok {
            return Err(GatewayError::MethodNotAllowed);
        }
        let route = self.routes.ports_route().ok_or(GatewayError::NoRoute)?;
        let key = route.key(id);
        let (found, _) = self.records.get(&key).await;
        let rec = found?.ok_or(GatewayError::UnknownWorkspace)?;
        let owner = record::read(route, &key, &rec, Some(port))?
            .owner
            .to_string();
        let sid = session::cookie_values(req, &self.auth.session_cookie)
            .single()?
            .ok_or(GatewayError::Unauthenticated)?;
        let s = self
            .auth
            .session(self.records, sid)
            .await?
            .ok_or(GatewayError::Unauthenticated)?;
        if ep != PortEndpoint::Authorize {
            // A credential in a JSON body: only for the app's own pages.
            self.auth.check_origin(req, false, proto)?;
        }
        let session_key = self.auth.session_key_of(sid);
        let settings = self.rules.settings(&rec, &key, port, true)?;
        if ep == PortEndpoint::Share {
            if self.rules.shares_off() {
                return Err(GatewayError::Forbidden);
            }
            if s.user != owner {
                return Err(GatewayError::Forbidden);
            }
        } else {
            access_of(
                self.rules,
                self.records,
                &session_key,
                &s.user,
                &owner,
                self.rules.org(&rec),
                settings.visibility,
            )
            .await?;
        }
        Ok(Allowed {
            route,
            caller: Caller {
                user: s.user,
                session_key,
                expires_at: s.expires_at,
            },
            owner,
        })
    }

    async fn respond(
        &self,
        req: &RequestHeader,
        ep: PortEndpoint,
        id: &WorkspaceId,
        port: u16,
        proto: &str,
        a: Allowed<'_>,
    ) -> Result<Reply, GatewayError> {
        let host = a
            .route
            .host_for_port(id, Some(port))
            .ok_or(GatewayError::Internal)?;
        // The content host is served on the port the browser reached this one on.
        let listen = crate::headers::browser_host(req)
            .ok()
            .and_then(crate::headers::host_port)
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let origin = format!("{proto}://{host}{listen}");
        let callback = &self.rules.callback_path;
        let gid = new_jti();
        let until_session_ends = |ttl: u64| {
            a.caller
                .expires_at
                .map_or(ttl, |exp| ttl.min(exp.saturating_sub(now()).max(1)))
        };
        let mint = |typ, user: &str, ttl, state: Option<&str>| {
            self.auth
                .tokens
                .mint_port(typ, id, port, user, &gid, ttl, state)
                .map_err(|e| {
                    log::error!("cannot mint a {typ:?} token: {e}");
                    GatewayError::Internal
                })
        };
        let grant = |kind, session: Option<String>| Grant {
            kind,
            workspace: *id,
            port,
            user: a.caller.user.clone(),
            session,
        };
        match ep {
            PortEndpoint::Authorize => {
                let path = return_path(req.uri.query());
                // The browser that started the sign-in names itself with a nonce (its state
                // cookie on the content host); without one, the sign-in starts over there.
                let Some(state) = crate::query::param(req.uri.query(), "state").filter(|s| {
                    (16..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
                }) else {
                    return Ok(see_other(format!("{origin}{path}")));
                };
                // Until the code is exchanged: an unused one leaves nothing behind for long.
                let ttl = self.rules.code_ttl + self.auth.tokens.leeway() + 1;
                let g = grant(GrantKind::Session, Some(a.caller.session_key.clone()));
                self.rules.put_grant(self.records, &gid, &g, ttl).await?;
                let code = mint(
                    TokenType::PortCode,
                    &a.caller.user,
                    self.rules.code_ttl,
                    Some(&state),
                )?;
                Ok(see_other(format!(
                    "{origin}{callback}?token={code}&path={}",
                    encode(&path)
                )))
            }
            PortEndpoint::Token => {
                let ttl = until_session_ends(self.rules.token_ttl);
                let g = grant(GrantKind::Token, Some(a.caller.session_key.clone()));
                self.rules.put_grant(self.records, &gid, &g, ttl).await?;
                let token = mint(TokenType::PortToken, &a.caller.user, ttl, None)?;
                Ok(Reply::json(
                    200,
                    &serde_json::json!({
                        "token": token,
                        "expires_in": ttl,
                        "header": TOKEN_HEADER,
                        "url": format!("{origin}/"),
                    }),
                ))
            }
            PortEndpoint::Share => {
                let asked = crate::query::param(req.uri.query(), "ttl_secs")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(24 * 3600);
                let ttl = asked.clamp(1, self.rules.share_max_ttl);
                debug_assert_eq!(a.caller.user, a.owner);
                // A share link outlives its maker's session on purpose; it ends when it
                // expires or its grant is deleted.
                let g = grant(GrantKind::Share, None);
                self.rules.put_grant(self.records, &gid, &g, ttl).await?;
                let link = mint(TokenType::PortShare, "", ttl, None)?;
                Ok(Reply::json(
                    200,
                    &serde_json::json!({
                        "url": format!("{origin}{callback}?token={link}"),
                        "id": gid,
                        "expires_in": ttl,
                    }),
                ))
            }
        }
    }

    /// On a content host: a code from the sign-in (spent here, once) or a share link,
    /// exchanged for the port cookie; a 303 takes it out of the address bar and history.
    pub async fn callback(
        &self,
        req: &RequestHeader,
        route: &Route,
        id: WorkspaceId,
        port: u16,
    ) -> Answered {
        let (method, reply) = match self.exchange(req, route, &id, port).await {
            Ok((method, reply)) => (Some(method), Ok(reply)),
            Err((method, e)) => (method, Err(e)),
        };
        let check = match &reply {
            Ok(_) => Check {
                method,
                result: "ok",
            },
            Err(e) => Check {
                method,
                ..check_of(e)
            },
        };
        Answered { check, reply }
    }

    async fn exchange(
        &self,
        req: &RequestHeader,
        route: &Route,
        id: &WorkspaceId,
        port: u16,
    ) -> Result<(AuthMethod, Reply), (Option<AuthMethod>, GatewayError)> {
        if req.method != Method::GET && req.method != Method::HEAD {
            return Err((None, GatewayError::MethodNotAllowed));
        }
        let token =
            crate::query::token(req.uri.query()).ok_or((None, GatewayError::Unauthenticated))?;
        let keys = &self.auth.tokens;
        let refuse = |m| move |e: GatewayError| (Some(m), e);
        let (method, gid, user, ttl) = match keys.verify_port(&token, TokenType::PortCode, id, port)
        {
            Ok(v) => {
                let m = AuthMethod::PortCookie;
                // The code signs in the browser that started its sign-in, and no other: a code
                // a user got for themselves, in a link, signs nobody else in (login CSRF).
                let nonce = session::cookie_values(req, &self.rules.state_cookie)
                    .single()
                    .map_err(refuse(m))?;
                if nonce.is_none() || nonce != v.state.as_deref() {
                    return Err((Some(m), GatewayError::Forbidden));
                }
                self.auth
                    .spend(self.records, &v, Spend::Yes)
                    .await
                    .map_err(refuse(m))?;
                let g = self
                    .rules
                    .grant(self.records, &v.jti)
                    .await
                    .map_err(refuse(m))?
                    .filter(|g| g.kind == GrantKind::Session && g.user == v.sub)
                    .ok_or((Some(m), GatewayError::Unauthenticated))?;
                let key = g
                    .session
                    .as_deref()
                    .ok_or((Some(m), GatewayError::Unauthenticated))?;
                let s = session::session_at(self.records, key)
                    .await
                    .map_err(refuse(m))?
                    .filter(|s| s.user == g.user)
                    .ok_or((Some(m), GatewayError::Unauthenticated))?;
                let ttl = s.expires_at.map_or(self.rules.cookie_ttl, |exp| {
                    self.rules.cookie_ttl.min(exp.saturating_sub(now()).max(1))
                });
                // The grant now lives as long as the cookie that stands for it. Its expiry
                // only: rewriting the grant read above would bring it back if the app deleted
                // it (revoked it) in between.
                if !self
                    .rules
                    .extend_grant(self.records, &v.jti, ttl)
                    .await
                    .map_err(refuse(m))?
                {
                    return Err((Some(m), GatewayError::Unauthenticated));
                }
                (m, v.jti, g.user, ttl)
            }
            Err(crate::auth::token::TokenError::WrongType) => {
                let m = AuthMethod::ShareLink;
                if self.rules.shares_off() {
                    return Err((Some(m), GatewayError::Forbidden));
                }
                let v = keys
                    .verify_port(&token, TokenType::PortShare, id, port)
                    .map_err(|e| (Some(m), crate::auth::token_refusal(e)))?;
                let g = self
                    .rules
                    .grant(self.records, &v.jti)
                    .await
                    .map_err(refuse(m))?
                    .filter(|g| g.kind == GrantKind::Share && g.workspace == *id && g.port == port)
                    .ok_or((Some(m), GatewayError::Unauthenticated))?;
                // Its maker must still own the workspace.
                let key = route.key(id);
                let (found, _) = self.records.get(&key).await;
                let rec = found
                    .map_err(refuse(m))?
                    .ok_or((Some(m), GatewayError::UnknownWorkspace))?;
                let owner = record::read(route, &key, &rec, Some(port))
                    .map_err(refuse(m))?
                    .owner;
                if owner != g.user {
                    return Err((Some(m), GatewayError::Unauthenticated));
                }
                let ttl = v.exp.saturating_sub(now()).clamp(1, self.rules.cookie_ttl);
                (m, v.jti, g.user, ttl)
            }
            Err(e) => return Err((Some(AuthMethod::PortCookie), crate::auth::token_refusal(e))),
        };
        let cookie = self
            .auth
            .tokens
            .mint_port(TokenType::PortCookie, id, port, &user, &gid, ttl, None)
            .map_err(|e| {
                log::error!("cannot mint a port cookie: {e}");
                (Some(method), GatewayError::Internal)
            })?;
        let secure = if self.rules.cookie_secure {
            "; Secure"
        } else {
            ""
        };
        let mut reply = see_other(return_path(req.uri.query()));
        reply.headers.push((
            "set-cookie",
            format!(
                "{}={cookie}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax{secure}",
                self.rules.cookie
            ),
        ));
        if method == AuthMethod::PortCookie {
            // The sign-in is over: its nonce goes.
            reply.headers.push((
                "set-cookie",
                format!(
                    "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}",
                    self.rules.state_cookie
                ),
            ));
        }
        Ok((method, reply))
    }
}

/// The check a refused port endpoint reports.
fn check_of(e: &GatewayError) -> Check {
    match e.auth_result() {
        "error" => Check::NONE,
        result => Check {
            method: Some(AuthMethod::Session),
            result,
        },
    }
}

/// A 303 that keeps nothing: not cached, no referrer (the URL it answers carried a
/// credential).
fn see_other(location: String) -> Reply {
    Reply {
        status: 303,
        headers: vec![
            ("location", location),
            ("cache-control", "no-store".into()),
            ("referrer-policy", "no-referrer".into()),
        ],
        body: bytes::Bytes::new(),
    }
}

/// The `path` to return to, as a path on the same host: `/` unless it is one (no scheme, no
/// `//` or `/\` authority, no control characters).
pub fn return_path(query: Option<&str>) -> String {
    match crate::query::param(query, "path") {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && p.len() <= 2048
                && p.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            p
        }
        _ => "/".into(),
    }
}

/// Percent-encode everything but RFC 3986's unreserved characters and `/`.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_return_path_stays_on_the_host() {
        let cases = [
            (Some("path=%2Fa%2Fb%3Fq%3D1"), "/a/b?q=1"),
            (Some("path=//evil.test/x"), "/"),
            (Some("path=%2F%2Fevil.test"), "/"),
            (Some("path=/%5Cevil.test"), "/"),
            (Some("path=https://evil.test/"), "/"),
            (Some("path=/a%0d%0aSet-Cookie:x"), "/"),
            (Some("token=x"), "/"),
            (None, "/"),
        ];
        for (q, want) in cases {
            assert_eq!(return_path(q), want, "{q:?}");
        }
        assert_eq!(encode("/a b?c=d&e"), "/a%20b%3Fc%3Dd%26e");
    }
}
