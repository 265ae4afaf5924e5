//! `edgegate explain URL`: the incident checklist of a workspace that cannot be reached, as one
//! command. It runs the gateway's own decision (`Gateway::decide`, the code `request_filter`
//! runs) on a request built from the URL and options, without proxying, and reports each step:
//! route, id, Redis key and record (secrets masked), resolved upstream, a TCP connect, and the
//! auth decision with its reason. Endpoints edgegate answers itself are named, not executed
//! (a bootstrap would spend its token).

use crate::config::Config;
use crate::headers;
use crate::route::RouteMatch;
use pingora::http::RequestHeader;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// What to explain.
pub struct Question {
    pub url: String,
    pub method: String,
    /// A `Cookie` header value (e.g. `session=…`).
    pub cookie: Option<String>,
    /// Sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    pub origin: Option<String>,
    pub upgrade: bool,
}

/// The report, and whether the request would reach its upstream.
pub struct Answer {
    pub report: String,
    pub proxied: bool,
}

fn request(q: &Question) -> Result<RequestHeader, String> {
    let (scheme, rest) = q
        .url
        .split_once("://")
        .ok_or("the URL needs a scheme (http:// or https://)")?;
    if !matches!(scheme, "http" | "https" | "ws" | "wss") {
        return Err(format!("unsupported scheme {scheme:?}"));
    }
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut req = RequestHeader::build(q.method.as_str(), target.as_bytes(), None)
        .map_err(|e| format!("bad request target: {e}"))?;
    let add = |req: &mut RequestHeader, k: &'static str, v: &str| {
        req.append_header(k, v)
            .map(|_| ())
            .map_err(|e| format!("bad {k} header: {e}"))
    };
    add(&mut req, "host", authority)?;
    if let Some(c) = &q.cookie {
        add(&mut req, "cookie", c)?;
    }
    if let Some(t) = &q.token {
        add(&mut req, "authorization", &format!("Bearer {t}"))?;
    }
    if let Some(o) = &q.origin {
        add(&mut req, "origin", o)?;
    }
    if q.upgrade || scheme.starts_with("ws") {
        add(&mut req, "connection", "Upgrade")?;
        add(&mut req, "upgrade", "websocket")?;
    }
    Ok(req)
}

/// Field values that are never printed.
fn masked(field: &str, value: &str) -> String {
    let f = field.to_ascii_lowercase();
    if ["token", "secret", "password", "key", "cookie"]
        .iter()
        .any(|s| f.contains(s))
    {
        "••••".to_string()
    } else {
        value.to_string()
    }
}

pub async fn explain(config: &Config, q: &Question) -> Result<Answer, String> {
    let parts = crate::build_gateway(config, false)?;
    let gw = &parts.gateway;
    let req = request(q)?;
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "{k:<10} {v}");
    };
    let shown_url = match q.url.split_once('?') {
        Some((base, query)) => format!("{base}?{}", crate::access::redact_query(query)),
        None => q.url.clone(),
    };
    line(&mut out, "request", &format!("{} {shown_url}", q.method));
    let is_upgrade = q.upgrade || q.url.starts_with("ws");

    // The route, as the table sees it (pure: no Redis, no side effect).
    let host = headers::browser_host(&req)
        .and_then(headers::normalize_host)
        .map_err(|e| format!("{e}"));
    let decider = gw.decider();
    let matched = match &host {
        Ok(h) => decider
            .routes()
            .match_request(h, req.uri.path(), req.uri.query(), is_upgrade),
        Err(_) => Err(crate::error::GatewayError::BadHost),
    };
    match matched {
        Err(e) => {
            line(
                &mut out,
                "route",
                &format!("none: {} {} ({})", e.status(), e.code(), e),
            );
            line(&mut out, "verdict", "refused before any lookup");
            return Ok(Answer {
                report: out,
                proxied: false,
            });
        }
        Ok(RouteMatch::Redirect(loc)) => {
            line(&mut out, "route", &format!("redirect: 302 to {loc}"));
            line(&mut out, "verdict", "answered by edgegate (redirect)");
            return Ok(Answer {
                report: out,
                proxied: false,
            });
        }
        Ok(RouteMatch::PortEndpoint(ep, id, port)) => {
            line(
                &mut out,
                "route",
                &format!("{} (answered by edgegate, not executed)", ep.name()),
            );
            line(&mut out, "id", id.as_str());
            line(&mut out, "port", &port.to_string());
            return Ok(Answer {
                report: out,
                proxied: false,
            });
        }
        Ok(RouteMatch::PortCallback(route, id, port)) => {
            line(
                &mut out,
                "route",
                &format!(
                    "{}: the port cookie exchange (answered by edgegate, not executed)",
                    route.name
                ),
            );
            line(&mut out, "id", id.as_str());
            line(&mut out, "port", &port.to_string());
            return Ok(Answer {
                report: out,
                proxied: false,
            });
        }
        Ok(RouteMatch::Endpoint(ep, id)) => {
            line(
                &mut out,
                "route",
                &format!("{} (answered by edgegate, not executed)", ep.name()),
            );
            line(&mut out, "id", id.as_str());
            return Ok(Answer {
                report: out,
                proxied: false,
            });
        }
        Ok(RouteMatch::Default(d)) => {
            line(
                &mut out,
                "route",
                &format!("default (the app API at {})", d.upstream),
            );
        }
        Ok(RouteMatch::Workspace(m)) => {
            line(&mut out, "route", &m.route.name);
            line(&mut out, "id", m.id.as_str());
            let key = m.route.key(&m.id);
            let (found, _) = gw.records().get(&key).await;
            let record = match found {
                Ok(Some(r)) => {
                    let mut fields: Vec<_> = r
                        .iter()
                        .map(|(k, v)| format!("{k}={}", masked(k, v)))
                        .collect();
                    fields.sort();
                    fields.join(" ")
                }
                Ok(None) => "(none)".to_string(),
                Err(e) => format!("unreadable: {e}"),
            };
            line(&mut out, "key", &key);
            line(&mut out, "record", &record);
        }
    }

    // The real decision, as request_filter makes it; a one-time token is checked, never
    // spent, by a question.
    let facts = crate::decide::Facts {
        is_upgrade,
        proto: if q.url.starts_with("https://") || q.url.starts_with("wss://") {
            "https"
        } else {
            "http"
        },
        spend: crate::auth::Spend::DryRun,
        established: None,
        client: None,
    };
    let decided = decider.decide(&req, &facts).await;
    let check = decided.check;
    let auth = match (
        decided.plan().and_then(|p| p.principal.as_ref()),
        check.method,
    ) {
        (Some(p), _) => format!("ok: user {} by {}", p.user, p.method.as_str()),
        (None, Some(m)) => format!("{} ({} tried)", check.result, m.as_str()),
        (None, None) => check.result.to_string(),
    };
    line(&mut out, "auth", &auth);
    if let Some(p) = decided.port {
        line(
            &mut out,
            "access",
            &format!(
                "port visibility {}; rule: {}",
                p.visibility.as_str(),
                p.rule
            ),
        );
    }
    let target = match decided.outcome {
        Err(e) => {
            line(
                &mut out,
                "verdict",
                &format!("refused: {} {} ({e})", e.status(), e.code()),
            );
            return Ok(Answer {
                report: out,
                proxied: false,
            });
        }
        Ok(crate::decide::Action::Wake(w)) => {
            line(
                &mut out,
                "verdict",
                &format!(
                    "the workspace is stopped: a request would publish a wake request for {} \
                     (not done here) and get 503 workspace_starting",
                    w.key
                ),
            );
            return Ok(Answer {
                report: out,
                proxied: false,
            });
        }
        Ok(crate::decide::Action::Answer(_)) => {
            line(&mut out, "verdict", "answered by edgegate");
            return Ok(Answer {
                report: out,
                proxied: false,
            });
        }
        Ok(crate::decide::Action::Proxy(plan)) => plan.target,
    };
    line(&mut out, "upstream", &target.addr.to_string());
    if let Some(p) = &target.upstream_path {
        line(
            &mut out,
            "path",
            &format!("{} (as sent upstream)", p.split('?').next().unwrap_or(p)),
        );
    }
    let timeout = Duration::from_millis(config.upstream.connect_timeout_ms);
    let started = Instant::now();
    let connect = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target.addr)).await;
    let (reachable, how) = match connect {
        Ok(Ok(_)) => (
            true,
            format!("ok in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0),
        ),
        Ok(Err(e)) => (false, format!("failed: {e} (clients get 502)")),
        Err(_) => (
            false,
            format!("no answer within {timeout:?} (clients get 504)"),
        ),
    };
    line(&mut out, "connect", &how);
    line(
        &mut out,
        "verdict",
        if reachable {
            "proxied"
        } else {
            "would be proxied, but the upstream is unreachable"
        },
    );
    Ok(Answer {
        report: out,
        proxied: reachable,
    })
}
