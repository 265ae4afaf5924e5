//! The endpoints edgegate answers itself (SPEC §2), asked by the decision (`decide`) when the
//! route table matched one: minting dev-ide and terminal tokens for a record's owner, the IDE
//! bootstrap that swaps a one-time dev-ide token for the ide cookie, and the agent status.
//! Each answer comes with how its caller was checked (`Check`).

use crate::auth::token::session_binding;
use crate::auth::token::{now, TokenType};
use crate::auth::{presented_token, session, Auth, Check, Principal, Spend};
use crate::config::{ApiConfig, AuthMethod};
use crate::error::GatewayError;
use crate::route::store::Records;
use crate::route::{record, Endpoint, Route, RouteTable, WorkspaceId};
use bytes::Bytes;
use pingora::http::{Method, RequestHeader};

/// A response edgegate makes itself.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![
                ("content-type", "application/json".into()),
                // Bodies here carry tokens or private state.
                ("cache-control", "no-store".into()),
            ],
            body: Bytes::from(value.to_string()),
        }
    }

    pub fn redirect(location: String) -> Reply {
        Reply {
            status: 302,
            headers: vec![("location", location)],
            body: Bytes::new(),
        }
    }
}

/// What the endpoints read.
pub struct Endpoints<'a> {
    pub routes: &'a RouteTable,
    pub records: &'a Records,
    pub auth: &'a Auth,
    pub config: &'a ApiConfig,
}

/// An endpoint's answer, and how its caller was checked.
#[derive(Debug)]
pub struct Answered {
    pub check: Check,
    pub reply: Result<Reply, GatewayError>,
}

/// A caller that passed an endpoint's check, and the record it asked about.
struct Caller<'r> {
    principal: Principal,
    route: &'r Route,
}

impl Endpoints<'_> {
    /// Answer `endpoint` for `id`.
    pub async fn answer(
        &self,
        req: &RequestHeader,
        endpoint: Endpoint,
        id: WorkspaceId,
        is_upgrade: bool,
        proto: &str,
    ) -> Answered {
        let caller = self.caller(req, endpoint, &id, is_upgrade, proto).await;
        let (check, reply) = match caller {
            // A caller that passed its check stays `ok` even when the answer fails later (a
            // store outage, no agent state).
            Ok(c) => (
                Check {
                    method: Some(c.principal.method),
                    result: "ok",
                },
                self.respond(req, endpoint, &id, proto, c).await,
            ),
            Err(e) => {
                let check = match e.auth_result() {
                    // Refused before any credential was looked at (method, route, record).
                    "error" => Check::NONE,
                    result => Check {
                        method: Some(if endpoint == Endpoint::IdeBootstrap {
                            AuthMethod::DevIdeToken
                        } else {
                            AuthMethod::Session
                        }),
                        result,
                    },
                };
                (check, Err(e))
            }
        };
        Answered { check, reply }
    }

    /// Who is asking, checked as the endpoint requires: the bootstrap's token and session,
    /// everyone else's owner's session from its own origin.
    async fn caller(
        &self,
        req: &RequestHeader,
        endpoint: Endpoint,
        id: &WorkspaceId,
        is_upgrade: bool,
        proto: &str,
    ) -> Result<Caller<'_>, GatewayError> {
        if is_upgrade {
            return Err(GatewayError::BadPath);
        }
        let is_get = req.method == Method::GET || req.method == Method::HEAD;
        let method_ok = match endpoint {
            Endpoint::IdeToken | Endpoint::TerminalToken => req.method == Method::POST,
            Endpoint::IdeBootstrap | Endpoint::AgentStatus => is_get,
        };
        if !method_ok {
            return Err(GatewayError::MethodNotAllowed);
        }
        let route = match endpoint {
            Endpoint::TerminalToken => self.routes.workspace_route(),
            _ => self.routes.ide_route(),
        }
        .ok_or(GatewayError::NoRoute)?;
        let key = route.key(id);
        let (found, _) = self.records.get(&key).await;
        let rec = found?.ok_or(GatewayError::UnknownWorkspace)?;
        let owner = record::read(route, &key, &rec, None)?.owner;
        let principal = if endpoint == Endpoint::IdeBootstrap {
            self.bootstrap_caller(req, id, owner).await?
        } else {
            let session = self.auth.session_owner(self.records, req, owner).await??;
            self.auth.check_origin(req, false, proto)?;
            Principal {
                user: session.user,
                method: AuthMethod::Session,
                session_key_hash: Some(session.key_hash),
                expires_at: session.expires_at,
                jti: None,
                session_key: None,
            }
        };
        Ok(Caller { principal, route })
    }

    /// The bootstrap's caller: a navigation the app's own page started, a dev-ide token of the
    /// owner (spent here, once), and the app session of the token's own user.
    async fn bootstrap_caller(
        &self,
        req: &RequestHeader,
        id: &WorkspaceId,
        owner: &str,
    ) -> Result<Principal, GatewayError> {
        if !crate::auth::bootstrap_navigation_allowed(req) {
            return Err(GatewayError::Forbidden);
        }
        // One of the two places a credential is taken from the URL (SPEC §4): a top-level
        // navigation that renders nothing of the workspace, only a redirect.
        let token = presented_token(req).ok_or(GatewayError::Unauthenticated)?;
        let v = self
            .auth
            .tokens
            .verify(&token, TokenType::DevIde, id)
            .map_err(|e| match e {
                crate::auth::token::TokenError::Invalid => GatewayError::Unauthenticated,
                _ => GatewayError::Forbidden,
            })?;
        if v.sub != owner {
            return Err(GatewayError::Forbidden);
        }
        // The IDE is served on the app's origin, so a bootstrap link must only ever sign in the
        // browser of the token's own user: otherwise one user could plant a cookie for their
        // workspace, and their content, in another user's browser.
        let sid = session::cookie_values(req, &self.auth.session_cookie)
            .single()?
            .ok_or(GatewayError::Unauthenticated)?;
        let session = self
            .auth
            .session(self.records, sid)
            .await?
            .ok_or(GatewayError::Unauthenticated)?;
        if session.user != v.sub {
            return Err(GatewayError::Forbidden);
        }
        self.auth.spend(self.records, &v, Spend::Yes).await?;
        Ok(Principal {
            user: v.sub,
            method: AuthMethod::DevIdeToken,
            session_key_hash: Some(session.key_hash),
            expires_at: session.expires_at,
            jti: Some(v.jti),
            session_key: None,
        })
    }

    /// The answer to a checked caller.
    async fn respond(
        &self,
        req: &RequestHeader,
        endpoint: Endpoint,
        id: &WorkspaceId,
        proto: &str,
        caller: Caller<'_>,
    ) -> Result<Reply, GatewayError> {
        let user = &caller.principal.user;
        match endpoint {
            Endpoint::IdeToken => {
                let (token, ttl) = self.mint(req, TokenType::DevIde, id, user).await?;
                let host = crate::headers::browser_host(req)?;
                let path = self.config.ide_bootstrap.replace("{id}", id.as_str());
                let url = format!("{proto}://{host}{path}?token={token}");
                Ok(token_reply(&token, ttl, &url))
            }
            Endpoint::TerminalToken => {
                let (token, ttl) = self.mint(req, TokenType::Terminal, id, user).await?;
                let ws_host = caller.route.host_for(id).ok_or(GatewayError::Internal)?;
                // The workspace host is served on the port the browser reached this one on.
                let host = crate::headers::browser_host(req)?;
                let port = crate::headers::host_port(host)
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default();
                let scheme = if proto == "https" { "wss" } else { "ws" };
                let url = format!(
                    "{scheme}://{ws_host}{port}{}?token={token}",
                    self.auth.agent_ws_path
                );
                Ok(token_reply(&token, ttl, &url))
            }
            Endpoint::AgentStatus => {
                let (found, _) = self
                    .records
                    .get(&self.auth.agent_key.key(id.as_str()))
                    .await;
                let state = found?.ok_or(GatewayError::UnknownWorkspace)?;
                let obj: serde_json::Map<String, serde_json::Value> = state
                    .iter()
                    .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
                    .collect();
                Ok(Reply::json(200, &serde_json::Value::Object(obj)))
            }
            Endpoint::IdeBootstrap => self.ide_cookie(req, id, caller),
        }
    }

    /// Mint a token for the caller, and note the app session it is minted under: the token
    /// opens nothing once that session has ended, and a WebSocket it opened re-checks it (the
    /// token's client sends no cookie).
    async fn mint(
        &self,
        req: &RequestHeader,
        typ: TokenType,
        id: &WorkspaceId,
        user: &str,
    ) -> Result<(String, u64), GatewayError> {
        let minted = self.auth.tokens.minted(typ, id, user, None).map_err(|e| {
            log::error!("cannot mint a {typ:?} token: {e}");
            GatewayError::Internal
        })?;
        let sid = session::cookie_values(req, &self.auth.session_cookie)
            .single()?
            .ok_or(GatewayError::Internal)?;
        let keep = minted.ttl + self.auth.tokens.leeway() + 1;
        self.records
            .put(
                &self.auth.token_session_note(&minted.jti),
                &self.auth.session_key_of(sid),
                keep,
            )
            .await?;
        Ok((minted.token, minted.ttl))
    }

    /// The bootstrap's answer: the ide cookie, bound to the session the caller was checked
    /// with and living no longer than it, and a redirect into the tunnel.
    fn ide_cookie(
        &self,
        req: &RequestHeader,
        id: &WorkspaceId,
        caller: Caller<'_>,
    ) -> Result<Reply, GatewayError> {
        let sid = session::cookie_values(req, &self.auth.session_cookie)
            .single()?
            .ok_or(GatewayError::Internal)?;
        let p = caller.principal;
        let (cookie, ttl) = self
            .auth
            .tokens
            .mint_bound(
                TokenType::IdeSession,
                id,
                &p.user,
                Some(session_binding(sid)),
            )
            .map_err(|e| {
                log::error!("cannot mint an ide cookie: {e}");
                GatewayError::Internal
            })?;
        let max_age = p
            .expires_at
            .map_or(ttl, |exp| ttl.min(exp.saturating_sub(now())));
        let prefix = caller.route.prefix_for(id).ok_or(GatewayError::Internal)?;
        let secure = if self.auth.cookie_secure {
            "; Secure"
        } else {
            ""
        };
        let mut reply = Reply::redirect(prefix.clone());
        reply.headers.extend([
            (
                "set-cookie",
                format!(
                    "{}={cookie}; Path={prefix}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
                    self.auth.ide_cookie
                ),
            ),
            ("cache-control", "no-store".into()),
            ("referrer-policy", "no-referrer".into()),
        ]);
        Ok(reply)
    }
}

fn token_reply(token: &str, ttl: u64, url: &str) -> Reply {
    Reply::json(
        200,
        &serde_json::json!({ "token": token, "expires_in": ttl, "url": url }),
    )
}
