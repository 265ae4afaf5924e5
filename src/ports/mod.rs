//! Sharing a workspace's ports on the content site (SPEC §8, `content_domain`): each port's
//! settings from its workspace record (visibility, protocol, CORS), who passes which
//! visibility, and the CORS edgegate answers for a workspace's own ports. `auth` checks the
//! content site's credentials; `api` answers the sign-in through the app domain, port tokens,
//! share links and the exchange on the content host. Called by `decide` for routes on
//! `{content_domain}` (and, for the protocol, every `{port}` route).

pub mod api;
pub mod auth;

use crate::config::{Config, ConfigError, Visibility};
use crate::error::GatewayError;
use crate::route::pattern::KeyTemplate;
use crate::route::store::Cached;
use crate::route::{Route, WorkspaceId};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

/// `[ports]`, compiled.
#[derive(Debug)]
pub struct PortRules {
    field: KeyTemplate,
    pub org_field: String,
    pub max: Visibility,
    pub share_links: bool,
    pub cookie: String,
    pub cookie_ttl: u64,
    pub code_ttl: u64,
    pub callback_path: String,
    pub api_prefix: String,
    /// The app host browsers are sent to for the sign-in (lower case, no port).
    pub app_host: String,
    pub login_url: String,
    pub token_ttl: u64,
    pub share_max_ttl: u64,
    grant_key: KeyTemplate,
    pub cookie_secure: bool,
    /// The sign-in's state cookie: a nonce naming the browser that started it.
    pub state_cookie: String,
}

/// The cookies the content site sets: the port cookie and the sign-in's state cookie.
pub fn cookie_names(p: &crate::config::PortsConfig) -> [String; 2] {
    [p.cookie.clone(), state_cookie(&p.cookie)]
}

fn state_cookie(cookie: &str) -> String {
    format!("{cookie}_state")
}

/// The header a port token comes in (one of edgegate's own: never forwarded, in any spelling).
pub const TOKEN_HEADER: &str = "x-edgegate-port-token";

impl PortRules {
    pub fn new(config: &Config) -> Result<PortRules, ConfigError> {
        let p = &config.ports;
        let prefix = &config.redis.key_prefix;
        let app_host = if p.app_host.is_empty() {
            config
                .default
                .as_ref()
                .and_then(|d| d.hosts.first())
                .map(|h| config.expand_host(h))
                .unwrap_or_default()
        } else {
            config.expand_host(&p.app_host)
        };
        Ok(PortRules {
            field: KeyTemplate::new("", &p.field, "{port}")
                .map_err(|e| ConfigError(format!("ports.field: {e}")))?,
            org_field: p.org_field.clone(),
            max: p.max_visibility,
            share_links: p.share_links,
            cookie: p.cookie.clone(),
            cookie_ttl: p.cookie_ttl_secs,
            code_ttl: p.code_ttl_secs,
            callback_path: p.callback_path.clone(),
            api_prefix: p.api_prefix.clone(),
            app_host,
            login_url: p.login_url.clone(),
            token_ttl: p.token_ttl_secs,
            share_max_ttl: p.share_max_ttl_secs,
            grant_key: KeyTemplate::new(prefix, &p.grant_key, "{jti}")
                .map_err(|e| ConfigError(format!("ports.grant_key: {e}")))?,
            cookie_secure: config.auth.cookie_secure,
            state_cookie: state_cookie(&p.cookie),
        })
    }

    /// The Redis key of grant `gid`.
    pub fn grant_key(&self, gid: &str) -> String {
        self.grant_key.key(gid)
    }

    /// Port `port`'s settings in `record` (at `key`, for the log). Off the content site every
    /// port is private: a shared port's pages must not run same-site with the app, where the
    /// visitor's app cookies would ride along on their requests.
    pub fn settings(
        &self,
        record: &Cached,
        key: &str,
        port: u16,
        content_site: bool,
    ) -> Result<PortSettings, GatewayError> {
        let field = self.field.key(&port.to_string());
        let raw = match record.get(&field).map(|v| v.trim()) {
            None | Some("") => Raw::default(),
            Some(text) => serde_json::from_str::<Raw>(text).map_err(|e| {
                log::warn!("bad route record {key}: field {field:?}: {e}");
                GatewayError::BadRecord
            })?,
        };
        let asked = raw.visibility.unwrap_or(Visibility::Private);
        let visibility = if content_site {
            asked.min(self.max)
        } else {
            Visibility::Private
        };
        Ok(PortSettings {
            visibility,
            protocol: raw.protocol.unwrap_or(Protocol::Http),
            verify: raw.verify.unwrap_or(true),
            cors: raw.cors.unwrap_or(CorsMode::Edgegate),
        })
    }

    /// Whether a request let in as `passed` would still be: the port's visibility now, and the
    /// owner or organization its way in depended on (`drain`, after an invalidation).
    pub fn still_passes(&self, record: &Cached, key: &str, passed: &Passed) -> bool {
        let Ok(s) = self.settings(record, key, passed.port, true) else {
            // A record that no longer parses lets nobody in.
            return false;
        };
        let owner = record.get(&passed.owner_field).map(|o| o.trim());
        let same_owner = owner == Some(&*passed.owner);
        let same_org = self.org(record) == passed.org.as_deref();
        passed.access.passes(s.visibility)
            && match passed.access {
                Access::Owner | Access::Share => same_owner,
                Access::Member => same_org,
                Access::User | Access::Anyone => true,
            }
    }

    /// Share links are off (`share_links = false`, or nothing may be shared at all).
    pub fn shares_off(&self) -> bool {
        !self.share_links || self.max == Visibility::Private
    }

    /// The workspace's organization, from its record.
    pub fn org<'r>(&self, record: &'r Cached) -> Option<&'r str> {
        record
            .get(&self.org_field)
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
    }
}

/// One port's settings, as a workspace record's `port.{port}` field holds them (JSON, every
/// key optional): `{"visibility": "public", "protocol": "h2c", "verify": true, "cors":
/// "passthru"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    visibility: Option<Visibility>,
    protocol: Option<Protocol>,
    verify: Option<bool>,
    cors: Option<CorsMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSettings {
    /// Capped by `ports.max_visibility`; private off the content site.
    pub visibility: Visibility,
    pub protocol: Protocol,
    /// For `https`: verify the upstream's certificate.
    pub verify: bool,
    pub cors: CorsMode,
}

impl PortSettings {
    /// A port whose record says nothing: private, plain HTTP/1.1.
    pub const PRIVATE: PortSettings = PortSettings {
        visibility: Visibility::Private,
        protocol: Protocol::Http,
        verify: true,
        cors: CorsMode::Edgegate,
    };
}

/// How edgegate speaks to a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 (WebSockets included).
    Http,
    /// HTTP/1.1 over TLS; `verify` says whether the certificate is checked.
    Https,
    /// HTTP/2 without TLS (prior knowledge), for gRPC.
    H2c,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::H2c => "h2c",
        }
    }
}

/// Who answers CORS for a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorsMode {
    /// edgegate answers preflights from the workspace's other ports on the content site and
    /// allows their credentialed requests; anything else is the app's, de-duplicated.
    #[serde(rename = "default")]
    Edgegate,
    /// The app answers everything itself, preflights included (which, carrying no
    /// credential, reach it only on a public port).
    Passthru,
}

/// How a caller passed a port's visibility: the narrowest visibility it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Owner,
    /// A user of the workspace's organization.
    Member,
    /// Any signed-in user.
    User,
    /// Nobody in particular: the port is public.
    Anyone,
    /// The holder of a share link (any visibility: the owner made the link).
    Share,
}

impl Access {
    /// The narrowest visibility this caller passes.
    fn needs(self) -> Visibility {
        match self {
            Access::Owner | Access::Share => Visibility::Private,
            Access::Member => Visibility::Organization,
            Access::User => Visibility::Authenticated,
            Access::Anyone => Visibility::Public,
        }
    }

    /// Whether this caller still passes a port at `visibility` (a tightened port drains the
    /// ones that do not, `drain`).
    pub fn passes(self, visibility: Visibility) -> bool {
        visibility >= self.needs()
    }

    /// The rule that let the caller through, as `edgegate explain` and the log name it.
    pub fn rule(self) -> &'static str {
        match self {
            Access::Owner => "owner",
            Access::Member => "organization member",
            Access::User => "signed-in user",
            Access::Anyone => "public port",
            Access::Share => "share link",
        }
    }
}

/// How a request got onto a port, with what that depended on: kept with the request's drain
/// hold, so a change of visibility, owner or organization ends what no longer passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    pub port: u16,
    pub access: Access,
    /// The record's owner at the decision, and the field it is read from.
    pub owner: std::sync::Arc<str>,
    pub owner_field: std::sync::Arc<str>,
    /// The workspace's organization at the decision.
    pub org: Option<std::sync::Arc<str>>,
}

/// What edgegate does about CORS on a proxied response (`response_filter`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cors {
    /// Not a content-site request: the response's headers pass as they are.
    #[default]
    Untouched,
    /// A credentialed request from another port of the same workspace: edgegate's own
    /// `Access-Control-Allow-*` for this origin replace the app's.
    Allow(String),
    /// The app's own CORS, de-duplicated, and never `*` with credentials.
    App,
}

/// A CORS preflight: `OPTIONS` with an `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Whether the request's `Origin` is another port of workspace `id` on the content site, over
/// the request's own scheme and listener port: the origin and that port. `decide` lets such a
/// page make credentialed requests here when its own port is no more open than this one.
pub fn sibling_origin<'r>(
    req: &'r RequestHeader,
    route: &Route,
    id: &WorkspaceId,
    port: u16,
    proto: &str,
) -> Option<(&'r str, u16)> {
    let origin = req.headers.get(http::header::ORIGIN)?.to_str().ok()?;
    let (scheme, authority) = origin.split_once("://")?;
    if !scheme.eq_ignore_ascii_case(proto) {
        return None;
    }
    let own = crate::headers::browser_host(req).ok()?;
    if crate::headers::host_port(authority) != crate::headers::host_port(own) {
        return None;
    }
    let host = crate::headers::normalize_host(authority).ok()?;
    match route.parse_host(&host) {
        Some((other, Some(p))) if other == *id && p != port => Some((origin, p)),
        _ => None,
    }
}

/// edgegate's answer to a preflight from a sibling origin: what was asked, for that origin,
/// with credentials (never `*`).
pub fn preflight_reply(req: &RequestHeader, origin: &str) -> crate::api::Reply {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let method = req
        .headers
        .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .filter(|m| !m.is_empty() && m.bytes().all(token))
        .unwrap_or("GET");
    let headers = req
        .headers
        .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .filter(|h| h.bytes().all(|b| token(b) || b == b',' || b == b' '));
    let mut h = vec![
        ("access-control-allow-origin", origin.to_string()),
        ("access-control-allow-credentials", "true".into()),
        ("access-control-allow-methods", method.to_string()),
        ("access-control-max-age", "600".into()),
        ("vary", "Origin".into()),
        ("cache-control", "no-store".into()),
    ];
    if let Some(hs) = headers.filter(|h| !h.trim().is_empty()) {
        h.push(("access-control-allow-headers", hs.to_string()));
    }
    crate::api::Reply {
        status: 204,
        headers: h,
        body: bytes::Bytes::new(),
    }
}

/// CORS on a content-site response, as decided (`Cors`): edgegate's for a sibling origin, the
/// app's otherwise, and in both cases each `Access-Control-*` header once and never `*` with
/// credentials.
pub fn apply_cors(resp: &mut ResponseHeader, cors: &Cors) -> pingora::Result<()> {
    let is_cors = |n: &http::HeaderName| n.as_str().starts_with("access-control-");
    match cors {
        Cors::Untouched => Ok(()),
        Cors::Allow(origin) => {
            let names: Vec<http::HeaderName> = resp
                .headers
                .keys()
                .filter(|n| is_cors(n))
                .cloned()
                .collect();
            for n in names {
                resp.remove_header(&n);
            }
            resp.insert_header("access-control-allow-origin", origin.as_str())?;
            resp.insert_header("access-control-allow-credentials", "true")?;
            resp.append_header("vary", "Origin")?;
            Ok(())
        }
        Cors::App => {
            let names: Vec<http::HeaderName> = resp
                .headers
                .keys()
                .filter(|n| is_cors(n))
                .cloned()
                .collect();
            for n in names {
                // One value each (the first): two `Allow-Origin`s make browsers refuse both,
                // and a second could widen what the first allowed.
                let first = resp.headers.get(&n).cloned();
                if resp.headers.get_all(&n).iter().count() > 1 {
                    resp.remove_header(&n);
                    if let Some(v) = first {
                        resp.insert_header(n.clone(), v)?;
                    }
                }
            }
            let any = resp
                .headers
                .get("access-control-allow-origin")
                .is_some_and(|v| v.as_bytes().trim_ascii() == b"*");
            if any {
                resp.remove_header("access-control-allow-credentials");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_passes_the_visibilities_at_or_above_its_own() {
        use Visibility::*;
        let table = [
            (Access::Owner, [true, true, true, true]),
            (Access::Share, [true, true, true, true]),
            (Access::Member, [false, true, true, true]),
            (Access::User, [false, false, true, true]),
            (Access::Anyone, [false, false, false, true]),
        ];
        for (access, want) in table {
            let got = [Private, Organization, Authenticated, Public].map(|v| access.passes(v));
            assert_eq!(got, want, "{access:?}");
        }
    }

    #[test]
    fn app_cors_is_deduplicated_and_never_any_origin_with_credentials() {
        let mut r = ResponseHeader::build(200, None).expect("resp");
        r.append_header("access-control-allow-origin", "*")
            .expect("h");
        r.append_header("access-control-allow-origin", "https://x.test")
            .expect("h");
        r.append_header("access-control-allow-credentials", "true")
            .expect("h");
        apply_cors(&mut r, &Cors::App).expect("cors");
        let all: Vec<_> = r
            .headers
            .get_all("access-control-allow-origin")
            .iter()
            .collect();
        assert_eq!(all, ["*"]);
        assert!(r.headers.get("access-control-allow-credentials").is_none());

        let mut r = ResponseHeader::build(200, None).expect("resp");
        r.append_header("access-control-allow-origin", "*")
            .expect("h");
        r.append_header("access-control-expose-headers", "x")
            .expect("h");
        apply_cors(&mut r, &Cors::Allow("https://a.test".into())).expect("cors");
        assert_eq!(
            r.headers
                .get("access-control-allow-origin")
                .map(|v| v.as_bytes()),
            Some(&b"https://a.test"[..])
        );
        assert!(r.headers.get("access-control-expose-headers").is_none());
        assert_eq!(
            r.headers
                .get("access-control-allow-credentials")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
    }
}
