//! The route table: which route a request's host or path names, and the canonical workspace id
//! it carries, decided in `request_filter` before anything asks Redis. The records behind the
//! routes come from `store` through `cache`; `record` turns one into an upstream.

pub mod cache;
pub mod id;
pub mod pattern;
pub mod record;
pub mod redis_conn;
pub mod store;

pub use id::WorkspaceId;

use crate::config::{
    api_template, route_error, ApiRoute, AuthMethod, Config, ConfigError, RouteConfig,
};
use crate::error::GatewayError;
use crate::upstream::UpstreamAddr;
use pattern::{KeyTemplate, Token};
use std::sync::Arc;

/// One compiled `[[route]]`.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    kind: RouteKind,
    /// The record's key: `{key_prefix}` + the template around `{id}`.
    key: KeyTemplate,
    pub upstream_field: String,
    pub owner_field: String,
    pub status_field: Option<Arc<str>>,
    pub port: u16,
    pub preserve_host: bool,
    pub strip_prefix: bool,
    pub auth: Vec<AuthMethod>,
    pub forward_token: bool,
    pub upstream_tls: bool,
    pub upstream_sni: Option<String>,
    pub upstream_verify: bool,
    /// On `{content_domain}`: its ports are shared by visibility (`ports`).
    pub content: bool,
    record_shape: u64,
}

#[derive(Debug)]
enum RouteKind {
    Host {
        pattern: Vec<Token>,
        /// For `{port}` routes: the inclusive ranges a host may name (empty: none).
        ports: Vec<(u16, u16)>,
    },
    Path {
        /// Everything before `{id}`, e.g. `/__ide/`.
        prefix: String,
        hosts: Vec<String>,
    },
}

/// The app API behind the `default` hosts.
#[derive(Debug)]
pub struct DefaultRoute {
    pub name: Arc<str>,
    pub upstream: UpstreamAddr,
    pub preserve_host: bool,
}

/// Requests edgegate answers itself (SPEC §2), on the default hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    IdeToken,
    TerminalToken,
    IdeBootstrap,
    AgentStatus,
}

impl Endpoint {
    /// Whether it mints a credential (a token, or the ide cookie): rate limited per address.
    pub fn mints(&self) -> bool {
        !matches!(self, Endpoint::AgentStatus)
    }

    /// The route name used in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::IdeToken => "ide_token",
            Endpoint::TerminalToken => "terminal_token",
            Endpoint::IdeBootstrap => "ide_bootstrap",
            Endpoint::AgentStatus => "agent_status",
        }
    }
}

#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    default_hosts: Vec<String>,
    default: Option<DefaultRoute>,
    /// `(endpoint, text before {id}, text after {id})`.
    endpoints: Vec<(Endpoint, String, String)>,
    ide_route: Option<usize>,
    workspace_route: Option<usize>,
    /// The content route the port endpoints serve (`ports.route`).
    ports_route: Option<usize>,
    /// `ports.api_prefix` and `ports.callback_path`, when there is a content route.
    ports_api: Option<(String, String)>,
}

/// What the table says about one request.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    Workspace(WorkspaceMatch<'a>),
    Default(&'a DefaultRoute),
    /// An endpoint edgegate answers itself.
    Endpoint(Endpoint, WorkspaceId),
    /// `/__ide/{id}` without its slash: send the browser to the canonical prefix.
    Redirect(String),
    /// A port endpoint on the app's hosts (`ports::api`).
    PortEndpoint(PortEndpoint, WorkspaceId, u16),
    /// The exchange of a code or share link for the port cookie, on a content host.
    PortCallback(&'a Route, WorkspaceId, u16),
}

/// The port endpoints edgegate answers on the app's hosts (`{ports.api_prefix}{id}/{port}/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortEndpoint {
    /// `GET …/authorize`: the content site's sign-in.
    Authorize,
    /// `POST …/token`: a port token.
    Token,
    /// `POST …/share`: a share link.
    Share,
}

impl PortEndpoint {
    pub fn name(&self) -> &'static str {
        match self {
            PortEndpoint::Authorize => "port_authorize",
            PortEndpoint::Token => "port_token",
            PortEndpoint::Share => "port_share",
        }
    }
}

#[derive(Debug)]
pub struct WorkspaceMatch<'a> {
    pub route: &'a Route,
    pub id: WorkspaceId,
    /// The `{port}` the host named, already checked against the route's allow-list.
    pub port: Option<u16>,
    /// The path (without query) to send upstream when the route strips its prefix.
    pub upstream_path: Option<String>,
}

impl Route {
    /// What a parse of a record depends on (its status and upstream fields, the default
    /// port): routes with the same shape may share a cached parse (`record::read`).
    pub fn record_shape(&self) -> u64 {
        self.record_shape
    }

    /// For a host route without `{port}`: the host for `id` (lower case), e.g. for token URLs.
    pub fn host_for(&self, id: &WorkspaceId) -> Option<String> {
        self.host_for_port(id, None)
    }

    /// The host for `id` and, on a `{port}` route, `port` (lower case).
    pub fn host_for_port(&self, id: &WorkspaceId, port: Option<u16>) -> Option<String> {
        let RouteKind::Host { pattern, .. } = &self.kind else {
            return None;
        };
        let mut h = String::new();
        for t in pattern {
            match t {
                Token::Lit(l) => h.push_str(l),
                Token::Id => h.push_str(&id.as_str().to_ascii_lowercase()),
                Token::Port => h.push_str(&port?.to_string()),
            }
        }
        Some(h)
    }

    /// Whether a `{port}` route's allow-list has `port`.
    pub fn allows_port(&self, port: u16) -> bool {
        match &self.kind {
            RouteKind::Host { ports, .. } => {
                ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port))
            }
            RouteKind::Path { .. } => false,
        }
    }

    /// The workspace and port a normalised host names on this host route, when it matches and
    /// the port is allowed.
    pub fn parse_host(&self, host: &str) -> Option<(WorkspaceId, Option<u16>)> {
        let RouteKind::Host { pattern, .. } = &self.kind else {
            return None;
        };
        let (raw_id, raw_port) = match_host(pattern, host)?;
        let id = WorkspaceId::parse(raw_id)?;
        let port = match raw_port {
            Some(p) => Some(p.parse().ok().filter(|p| self.allows_port(*p))?),
            None => None,
        };
        Some((id, port))
    }

    /// For a path route: its prefix for `id`, e.g. `/__ide/{ID}/`.
    pub fn prefix_for(&self, id: &WorkspaceId) -> Option<String> {
        match &self.kind {
            RouteKind::Path { prefix, .. } => Some(format!("{prefix}{id}/")),
            RouteKind::Host { .. } => None,
        }
    }

    /// The Redis key of this route's record for `id`, prefix included.
    pub fn key(&self, id: &WorkspaceId) -> String {
        self.key.key(id.as_str())
    }
}

impl RouteTable {
    /// Compile the table from a validated config (`Config::validate` checked every rule this
    /// relies on; what could still fail is reported with its field all the same).
    pub fn new(config: &Config) -> Result<RouteTable, ConfigError> {
        let expand = |s: &str| config.expand_host(s);
        let default_hosts: Vec<String> = config
            .default
            .as_ref()
            .map(|d| d.hosts.iter().map(|h| expand(h)).collect())
            .unwrap_or_default();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, rc)| compile(i, rc, &expand, &default_hosts, &config.redis.key_prefix))
            .collect::<Result<Vec<_>, _>>()?;
        let default = match &config.default {
            Some(d) => Some(DefaultRoute {
                name: Arc::from("default"),
                upstream: UpstreamAddr::parse(&d.upstream, 80)
                    .map_err(|e| ConfigError(format!("default.upstream: {:?} {e}", d.upstream)))?,
                preserve_host: d.preserve_host,
            }),
            None => None,
        };
        let api = &config.api;
        let find = |name: &str| routes.iter().position(|r| &*r.name == name);
        let ide_route = find(&api.ide_route);
        let workspace_route = find(&api.workspace_route);
        let ports_route = config.ports_route().and_then(|r| find(&r.name));
        let ports_api = ports_route.map(|_| {
            (
                config.ports.api_prefix.clone(),
                config.ports.callback_path.clone(),
            )
        });
        let mut endpoints = Vec::new();
        for (field, template, reads) in api.endpoints() {
            let enabled = match reads {
                ApiRoute::Ide => ide_route.is_some(),
                ApiRoute::Workspace => workspace_route.is_some(),
            };
            if template.is_empty() || !enabled {
                continue;
            }
            let (head, tail) =
                api_template(template).map_err(|e| ConfigError(format!("api.{field}: {e}")))?;
            let ep = match field {
                "ide_token" => Endpoint::IdeToken,
                "ide_bootstrap" => Endpoint::IdeBootstrap,
                "agent_status" => Endpoint::AgentStatus,
                _ => Endpoint::TerminalToken,
            };
            endpoints.push((ep, head.to_string(), tail.to_string()));
        }
        Ok(RouteTable {
            routes,
            default_hosts,
            default,
            endpoints,
            ide_route,
            workspace_route,
            ports_route,
            ports_api,
        })
    }

    /// The content route the port endpoints serve.
    pub fn ports_route(&self) -> Option<&Route> {
        self.ports_route.map(|i| &self.routes[i])
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route the IDE endpoints read their records from.
    pub fn ide_route(&self) -> Option<&Route> {
        self.ide_route.map(|i| &self.routes[i])
    }

    /// The route the terminal-token endpoint reads its records from.
    pub fn workspace_route(&self) -> Option<&Route> {
        self.workspace_route.map(|i| &self.routes[i])
    }

    /// Match a normalised host (see `headers::normalize_host`) and a raw request path.
    pub fn match_request(
        &self,
        host: &str,
        path: &str,
        query: Option<&str>,
        is_upgrade: bool,
    ) -> Result<RouteMatch<'_>, GatewayError> {
        for route in &self.routes {
            match &route.kind {
                RouteKind::Host { pattern, ports } => {
                    let Some((raw_id, raw_port)) = match_host(pattern, host) else {
                        continue;
                    };
                    let id = WorkspaceId::parse(raw_id).ok_or(GatewayError::BadId)?;
                    let port = match raw_port {
                        Some(p) => {
                            let p: u16 = p.parse().map_err(|_| GatewayError::PortNotAllowed)?;
                            if !ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&p)) {
                                return Err(GatewayError::PortNotAllowed);
                            }
                            Some(p)
                        }
                        None => None,
                    };
                    if let (true, Some(port), Some((_, callback))) =
                        (route.content, port, &self.ports_api)
                    {
                        if path == callback {
                            return Ok(RouteMatch::PortCallback(route, id, port));
                        }
                    }
                    return Ok(RouteMatch::Workspace(WorkspaceMatch {
                        route,
                        id,
                        port,
                        upstream_path: None,
                    }));
                }
                RouteKind::Path { prefix, hosts } => {
                    if !hosts.iter().any(|h| h == host) {
                        continue;
                    }
                    let Some(rest) = path.strip_prefix(prefix.as_str()) else {
                        continue;
                    };
                    return match_path_route(route, prefix, rest, query, is_upgrade);
                }
            }
        }
        if self.default_hosts.iter().any(|h| h == host) {
            for (ep, head, tail) in &self.endpoints {
                if let Some(raw) = path
                    .strip_prefix(head.as_str())
                    .and_then(|r| r.strip_suffix(tail.as_str()))
                {
                    if raw.contains('/') {
                        continue;
                    }
                    let id = WorkspaceId::parse(raw).ok_or(GatewayError::BadId)?;
                    return Ok(RouteMatch::Endpoint(*ep, id));
                }
            }
            if let Some(m) = self.port_endpoint(path) {
                return m;
            }
            if let Some(d) = &self.default {
                return Ok(RouteMatch::Default(d));
            }
        }
        Err(GatewayError::NoRoute)
    }
}

impl RouteTable {
    /// `{api_prefix}{id}/{port}/(authorize|token|share)`, when `path` is under the prefix.
    fn port_endpoint(&self, path: &str) -> Option<Result<RouteMatch<'_>, GatewayError>> {
        let (prefix, _) = self.ports_api.as_ref()?;
        let rest = path.strip_prefix(prefix.as_str())?;
        let mut parts = rest.split('/');
        let (raw_id, raw_port, action) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let ep = match action {
            "authorize" => PortEndpoint::Authorize,
            "token" => PortEndpoint::Token,
            "share" => PortEndpoint::Share,
            _ => return None,
        };
        let Some(id) = WorkspaceId::parse(raw_id) else {
            return Some(Err(GatewayError::BadId));
        };
        let port = raw_port
            .parse::<u16>()
            .ok()
            .filter(|p| self.ports_route().is_some_and(|r| r.allows_port(*p)));
        Some(match port {
            Some(p) => Ok(RouteMatch::PortEndpoint(ep, id, p)),
            None => Err(GatewayError::PortNotAllowed),
        })
    }
}

fn match_path_route<'a>(
    route: &'a Route,
    prefix: &str,
    rest: &str,
    query: Option<&str>,
    is_upgrade: bool,
) -> Result<RouteMatch<'a>, GatewayError> {
    let (raw_id, after) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    // Anything but a clean id here (`%2F`, `..`, `%2e`) is not a workspace: 400, never a guess.
    let id = WorkspaceId::parse(raw_id).ok_or(GatewayError::BadId)?;
    let Some(after) = after else {
        // An upgrade is never answered with a redirect.
        if is_upgrade {
            return Err(GatewayError::BadPath);
        }
        let mut location = format!("{prefix}{id}/");
        // A token in the URL is no credential here, and is not copied into the Location.
        let query = query.map(|q| match crate::query::strip_token(q) {
            Some(stripped) => std::borrow::Cow::Owned(stripped),
            None => std::borrow::Cow::Borrowed(q),
        });
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            location.push('?');
            location.push_str(&q);
        }
        return Ok(RouteMatch::Redirect(location));
    };
    if !path_is_safe(after) {
        return Err(GatewayError::BadPath);
    }
    let upstream_path = route.strip_prefix.then(|| after.to_string());
    Ok(RouteMatch::Workspace(WorkspaceMatch {
        route,
        id,
        port: None,
        upstream_path,
    }))
}

/// No encoded slash or backslash, and no `.`/`..` segment, raw or percent-encoded: the part of
/// a tunnel path after its id must not be able to climb out of the id's prefix anywhere
/// a later hop decodes it.
pub fn path_is_safe(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
        return false;
    }
    !lower.split('/').any(|seg| {
        let seg = seg.replace("%2e", ".");
        seg == "." || seg == ".."
    })
}

/// Match `host` against a compiled host pattern; return the raw `{id}` and `{port}` text.
/// A placeholder takes the longest run of characters up to the next `.` or `-` (`{id}`) or
/// non-digit (`{port}`), so `ws-{id}.d` never swallows the `--8080` of `ws-{id}--{port}.d`.
fn match_host<'h>(pattern: &[Token], host: &'h str) -> Option<(&'h str, Option<&'h str>)> {
    let mut rest = host;
    let mut id = None;
    let mut port = None;
    for tok in pattern {
        match tok {
            Token::Lit(l) => rest = rest.strip_prefix(l.as_str())?,
            Token::Id => {
                // By byte: a `char` pattern decodes UTF-8 on the way (hosts are ASCII here).
                let end = rest
                    .bytes()
                    .position(|b| b == b'.' || b == b'-')
                    .unwrap_or(rest.len());
                id = Some(&rest[..end]);
                rest = &rest[end..];
            }
            Token::Port => {
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                if end == 0 {
                    return None;
                }
                port = Some(&rest[..end]);
                rest = &rest[end..];
            }
        }
    }
    if !rest.is_empty() {
        return None;
    }
    Some((id?, port))
}

/// One validated `[[route]]`, compiled.
fn compile(
    i: usize,
    rc: &RouteConfig,
    expand: &dyn Fn(&str) -> String,
    default_hosts: &[String],
    key_prefix: &str,
) -> Result<Route, ConfigError> {
    let kind = match (&rc.host, &rc.path) {
        (Some(host), _) => RouteKind::Host {
            pattern: pattern::host(&expand(host)).map_err(|e| route_error(i, "host", e))?,
            ports: rc.allowed_ports.iter().filter_map(|p| p.bounds()).collect(),
        },
        (None, Some(path)) => RouteKind::Path {
            prefix: pattern::path_prefix(path)
                .map_err(|e| route_error(i, "path", e))?
                .to_string(),
            hosts: match &rc.hosts {
                Some(h) => h.iter().map(|h| expand(h)).collect(),
                None => default_hosts.to_vec(),
            },
        },
        (None, None) => {
            return Err(route_error(
                i,
                "host",
                "exactly one of host or path is required",
            ))
        }
    };
    Ok(Route {
        name: Arc::from(rc.name.as_str()),
        kind,
        key: KeyTemplate::new(key_prefix, &rc.key, "{id}").map_err(|e| route_error(i, "key", e))?,
        upstream_field: rc.upstream_field.clone(),
        owner_field: rc.owner_field.clone(),
        status_field: rc.status_field.as_deref().map(Arc::from),
        port: rc.port,
        preserve_host: rc.preserve_host,
        strip_prefix: rc.strip_prefix,
        auth: rc.auth.clone(),
        forward_token: rc.forward_token,
        upstream_tls: rc.upstream_tls,
        upstream_sni: rc.upstream_sni.clone(),
        upstream_verify: rc.upstream_verify,
        content: rc.on_content_domain(),
        record_shape: crate::stable_hash(&(&rc.status_field, &rc.upstream_field, rc.port)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    fn table() -> RouteTable {
        let c = Config::parse(&format!(
            r#"
            base_domain = "example.test"
            [redis]
            url = "redis://127.0.0.1:6379"
            key_prefix = "eg:"
            invalidate_channel = "edgegate:invalidate"
            connect_timeout_ms = 500
            command_timeout_ms = 500
            [[route]]
            name = "workspace"
            host = "ws-{{id}}.{{base_domain}}"
            key = "workspace:{{id}}"
            [[route]]
            name = "workspace_port"
            host = "ws-{{id}}--{{port}}.{{base_domain}}"
            allowed_ports = [3000, "8080-8090", 9000]
            key = "workspace:{{id}}"
            [[route]]
            name = "ide"
            path = "/__ide/{{id}}/"
            key = "dev:{{id}}"
            upstream_field = "target"
            [default]
            hosts = ["{{base_domain}}", "app.{{base_domain}}"]
            upstream = "127.0.0.1:3000"
            {}
            "#,
            crate::config::test_tokens_toml()
        ))
        .expect("config");
        RouteTable::new(&c).expect("table")
    }

    fn name(m: &RouteMatch<'_>) -> String {
        match m {
            RouteMatch::Workspace(w) => format!(
                "{}:{}:{:?}:{:?}",
                w.route.name, w.id, w.port, w.upstream_path
            ),
            RouteMatch::Default(_) => "default".into(),
            RouteMatch::Endpoint(e, id) => format!("endpoint:{e:?}:{id}"),
            RouteMatch::Redirect(l) => format!("redirect:{l}"),
            RouteMatch::PortEndpoint(e, id, p) => format!("port_endpoint:{e:?}:{id}:{p}"),
            RouteMatch::PortCallback(r, id, p) => format!("port_callback:{}:{id}:{p}", r.name),
        }
    }

    #[test]
    fn a_cached_record_is_parsed_once_per_route_shape() {
        use crate::route::store::Cached;
        let t = table();
        let route = |n: &str| t.routes.iter().find(|r| &*r.name == n).expect("route");
        let (ws, ws_port, ide) = (route("workspace"), route("workspace_port"), route("ide"));
        assert_eq!(
            ws.record_shape(),
            ws_port.record_shape(),
            "same fields, same port"
        );
        assert_ne!(
            ws.record_shape(),
            ide.record_shape(),
            "another upstream field"
        );
        let rec = |pairs: &[(&str, &str)]| {
            Cached::new(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };

        let both = rec(&[
            ("backend", "10.0.0.5:3000"),
            ("target", "10.0.0.6"),
            ("owner", "u1"),
        ]);
        let r = record::read(ws, "k", &both, None).expect("read");
        assert_eq!(
            (r.upstream.expect("upstream").to_string().as_str(), r.owner),
            ("10.0.0.5:3000", "u1")
        );
        assert!(
            matches!(both.upstream().get(), Some((s, p)) if *s == ws.record_shape() && p.get().is_ok())
        );
        // The cached parse, with a port route's port applied on top.
        let r = record::read(ws_port, "k", &both, Some(4000)).expect("read");
        assert_eq!(r.upstream.expect("upstream").to_string(), "10.0.0.5:4000");
        // Another shape reads its own field, and does not take over the cache.
        let r = record::read(ide, "k", &both, None).expect("read");
        assert_eq!(r.upstream.expect("upstream").to_string(), "10.0.0.6:8080");
        assert!(matches!(both.upstream().get(), Some((s, _)) if *s == ws.record_shape()));

        // A failure is remembered with the record, and still a failure the second time.
        let bad = rec(&[("backend", "10.0.0.5:99999"), ("owner", "u1")]);
        for _ in 0..2 {
            assert_eq!(
                record::read(ws, "k", &bad, None)
                    .expect("owner")
                    .upstream
                    .err(),
                Some(GatewayError::BadRecord),
                "a bad upstream is told after auth, not before"
            );
        }
        let no_owner = rec(&[("backend", "10.0.0.5")]);
        assert_eq!(
            record::read(ws, "k", &no_owner, None).err(),
            Some(GatewayError::BadRecord),
            "the owner is checked on every read"
        );
    }

    #[test]
    fn host_and_path_matching_table() {
        let t = table();
        let lower = ID.to_ascii_lowercase();
        let cases: Vec<(String, String, Result<String, GatewayError>)> = vec![
            (
                format!("ws-{lower}.example.test"),
                "/x".into(),
                Ok(format!("workspace:{ID}:None:None")),
            ),
            (
                format!("ws-{lower}--8080.example.test"),
                "/".into(),
                Ok(format!("workspace_port:{ID}:Some(8080):None")),
            ),
            (
                format!("ws-{lower}--22.example.test"),
                "/".into(),
                Err(GatewayError::PortNotAllowed),
            ),
            (
                format!("ws-{lower}--8091.example.test"),
                "/".into(),
                Err(GatewayError::PortNotAllowed),
            ),
            (
                format!("ws-{lower}--3000.example.test"),
                "/".into(),
                Ok(format!("workspace_port:{ID}:Some(3000):None")),
            ),
            (
                format!("ws-{lower}--4000.example.test"),
                "/".into(),
                Err(GatewayError::PortNotAllowed),
            ),
            (
                format!("ws-{lower}--99999.example.test"),
                "/".into(),
                Err(GatewayError::PortNotAllowed),
            ),
            (
                "ws-nope.example.test".into(),
                "/".into(),
                Err(GatewayError::BadId),
            ),
            (
                format!("ws-{lower}x.example.test"),
                "/".into(),
                Err(GatewayError::BadId),
            ),
            (
                "other.example.test".into(),
                "/".into(),
                Err(GatewayError::NoRoute),
            ),
            (
                format!("ws-{lower}.example.testx"),
                "/".into(),
                Err(GatewayError::NoRoute),
            ),
            ("example.test".into(), "/api/x".into(), Ok("default".into())),
            ("app.example.test".into(), "/".into(), Ok("default".into())),
            (
                "app.example.test".into(),
                format!("/__ide/{lower}/static/a.js"),
                Ok(format!("ide:{ID}:None:Some(\"/static/a.js\")")),
            ),
            (
                "app.example.test".into(),
                format!("/__ide/{ID}"),
                Ok(format!("redirect:/__ide/{ID}/")),
            ),
            (
                "app.example.test".into(),
                format!("/__ide/{ID}%2F..%2F01BX5ZZKBKACTAV9WEVGEMMVRZ/"),
                Err(GatewayError::BadId),
            ),
            (
                "app.example.test".into(),
                "/__ide/../__ide/01BX5ZZKBKACTAV9WEVGEMMVRZ/".into(),
                Err(GatewayError::BadId),
            ),
            (
                "app.example.test".into(),
                format!("/__ide/{ID}/../01BX5ZZKBKACTAV9WEVGEMMVRZ/"),
                Err(GatewayError::BadPath),
            ),
            (
                "app.example.test".into(),
                format!("/__ide/{ID}/%2e%2E/x"),
                Err(GatewayError::BadPath),
            ),
            (
                "app.example.test".into(),
                format!("/__ide/{ID}/a%2fb"),
                Err(GatewayError::BadPath),
            ),
            (
                "app.example.test".into(),
                "/__ide//x".into(),
                Err(GatewayError::BadId),
            ),
            // The tunnel prefix is only served on its hosts.
            (
                "other.example.test".into(),
                format!("/__ide/{ID}/"),
                Err(GatewayError::NoRoute),
            ),
        ];
        for (host, path, want) in cases {
            let got = t.match_request(&host, &path, None, false).map(|m| name(&m));
            assert_eq!(got, want, "{host} {path}");
        }
    }

    #[test]
    fn tunnel_redirect_keeps_query_and_upgrade_is_never_redirected() {
        let t = table();
        let m = t
            .match_request(
                "app.example.test",
                &format!("/__ide/{ID}"),
                Some("a=1"),
                false,
            )
            .expect("match");
        assert_eq!(name(&m), format!("redirect:/__ide/{ID}/?a=1"));
        let m = t
            .match_request(
                "app.example.test",
                &format!("/__ide/{ID}"),
                Some("a=1&%74oken=secret"),
                false,
            )
            .expect("match");
        assert_eq!(
            name(&m),
            format!("redirect:/__ide/{ID}/?a=1"),
            "no token copied"
        );
        let e = t
            .match_request("app.example.test", &format!("/__ide/{ID}"), None, true)
            .unwrap_err();
        assert_eq!(e, GatewayError::BadPath);
    }

    #[test]
    fn endpoints_are_matched_on_default_hosts_with_their_id() {
        let t = table();
        let m = t
            .match_request(
                "app.example.test",
                &format!("/api/dev/{ID}/ide-token"),
                None,
                false,
            )
            .expect("match");
        assert!(matches!(m, RouteMatch::Endpoint(Endpoint::IdeToken, id) if id.as_str() == ID));
        let m = t
            .match_request(
                "example.test",
                &format!("/api/workspaces/{ID}/terminal-token"),
                None,
                false,
            )
            .expect("match");
        assert!(matches!(
            m,
            RouteMatch::Endpoint(Endpoint::TerminalToken, _)
        ));
        let e = t
            .match_request("app.example.test", "/api/dev/nope/ide", None, false)
            .unwrap_err();
        assert_eq!(e, GatewayError::BadId);
        // Other API paths go to the app.
        let m = t
            .match_request("app.example.test", "/api/dev/x/y/ide", None, false)
            .expect("m");
        assert!(matches!(m, RouteMatch::Default(_)));
        let id = WorkspaceId::parse(ID).expect("id");
        assert_eq!(
            t.routes()[0].host_for(&id).as_deref(),
            Some("ws-01arz3ndektsv4rrffq69g5fav.example.test")
        );
        assert_eq!(t.routes()[2].prefix_for(&id), Some(format!("/__ide/{ID}/")));
    }

    #[test]
    fn key_templates_get_prefix_and_canonical_id() {
        let t = table();
        let id = WorkspaceId::parse(&ID.to_ascii_lowercase()).expect("id");
        assert_eq!(t.routes()[0].key(&id), format!("eg:workspace:{ID}"));
        assert_eq!(t.routes()[2].key(&id), format!("eg:dev:{ID}"));
    }
}
