//! The gateway's own refusals (`GatewayError`) and the one place that turns them into a status
//! and a body (`Pages::respond`): the SPEC §7 JSON, or for a browser's navigation an HTML page
//! with the same status (the operator's template, or the built-in one). Called from
//! `request_filter` and `fail_to_proxy`.
//! Internal detail (keys, fields, addresses) goes to the log by the caller, never into the body.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("the Host header is missing or malformed")]
    BadHost,
    #[error("the request path is not allowed")]
    BadPath,
    #[error("the workspace id is not valid")]
    BadId,
    #[error("that port is not open for proxying")]
    PortNotAllowed,
    #[error("only WebSocket upgrades are supported")]
    BadUpgrade,
    #[error("the request's framing is ambiguous")]
    BadFraming,
    #[error("the request line is too long")]
    UriTooLong,
    #[error("the request headers are too large")]
    HeadersTooLarge,
    #[error("the request headers did not arrive in time")]
    HeaderTimeout,
    #[error("too many concurrent connections to this workspace")]
    TooManyConnections,
    /// Over a rate limit; the seconds to wait.
    #[error("too many requests; retry later")]
    RateLimited(u32),
    #[error("no route for this host")]
    NoRoute,
    #[error("unknown workspace")]
    UnknownWorkspace,
    #[error("authentication required")]
    Unauthenticated,
    #[error("the request carries conflicting copies of a credential")]
    AmbiguousCredentials,
    #[error("this one-time token has already been used")]
    TokenSpent,
    #[error("not allowed")]
    Forbidden,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the workspace's route record is invalid")]
    BadRecord,
    #[error("the workspace upstream could not be resolved")]
    UpstreamUnresolvable,
    #[error("the workspace upstream's address is not allowed")]
    UpstreamNotAllowed,
    #[error("the workspace upstream refused the connection")]
    UpstreamRefused,
    #[error("the workspace is not running")]
    NotRunning,
    #[error("the workspace is starting")]
    Starting,
    #[error("the workspace is changing state")]
    Transitioning,
    #[error("the route store is unavailable")]
    StoreUnavailable,
    #[error("the workspace upstream timed out")]
    UpstreamTimeout,
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// One of each kind, for the metrics' `code` label (present at zero from the start). A new
    /// variant goes here too: `every_code_is_listed` checks the list against `code`.
    pub const ALL: [GatewayError; 28] = {
        use GatewayError::*;
        [
            BadHost,
            BadPath,
            BadId,
            PortNotAllowed,
            BadUpgrade,
            BadFraming,
            UriTooLong,
            HeadersTooLarge,
            HeaderTimeout,
            TooManyConnections,
            RateLimited(0),
            NoRoute,
            UnknownWorkspace,
            Unauthenticated,
            AmbiguousCredentials,
            TokenSpent,
            Forbidden,
            MethodNotAllowed,
            BadRecord,
            UpstreamUnresolvable,
            UpstreamNotAllowed,
            UpstreamRefused,
            NotRunning,
            Starting,
            Transitioning,
            StoreUnavailable,
            UpstreamTimeout,
            Internal,
        ]
    };

    pub fn status(&self) -> u16 {
        use GatewayError::*;
        match self {
            BadHost | BadPath | BadId | PortNotAllowed | BadUpgrade | BadFraming => 400,
            Unauthenticated | AmbiguousCredentials | TokenSpent => 401,
            Forbidden => 403,
            NoRoute | UnknownWorkspace => 404,
            MethodNotAllowed => 405,
            HeaderTimeout => 408,
            UriTooLong => 414,
            TooManyConnections | RateLimited(_) => 429,
            HeadersTooLarge => 431,
            BadRecord | UpstreamUnresolvable | UpstreamNotAllowed | UpstreamRefused => 502,
            NotRunning | Starting | Transitioning | StoreUnavailable => 503,
            UpstreamTimeout => 504,
            Internal => 500,
        }
    }

    /// Stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            BadHost => "bad_host",
            BadPath => "bad_path",
            BadId => "bad_id",
            PortNotAllowed => "port_not_allowed",
            BadUpgrade => "bad_upgrade",
            BadFraming => "bad_framing",
            AmbiguousCredentials => "ambiguous_credentials",
            TokenSpent => "token_spent",
            UpstreamNotAllowed => "upstream_not_allowed",
            NoRoute => "no_route",
            UnknownWorkspace => "unknown_workspace",
            Unauthenticated => "unauthenticated",
            Forbidden => "forbidden",
            MethodNotAllowed => "method_not_allowed",
            UriTooLong => "uri_too_long",
            HeadersTooLarge => "headers_too_large",
            HeaderTimeout => "request_timeout",
            TooManyConnections => "too_many_connections",
            RateLimited(_) => "rate_limited",
            BadRecord => "bad_route_record",
            UpstreamUnresolvable => "upstream_unresolvable",
            UpstreamRefused => "upstream_unreachable",
            NotRunning => "workspace_not_running",
            Starting => "workspace_starting",
            Transitioning => "workspace_transitioning",
            StoreUnavailable => "store_unavailable",
            UpstreamTimeout => "upstream_timeout",
            Internal => "internal",
        }
    }

    /// The `result` label of an auth decision that ended in this error: `unauthenticated` for
    /// every 401, `forbidden` for every 403, `error` for the rest (the store failed, the
    /// record is bad: nothing was decided about the caller).
    pub fn auth_result(&self) -> &'static str {
        match self.status() {
            401 => "unauthenticated",
            403 => "forbidden",
            _ => "error",
        }
    }

    /// Whether a navigation's page should reload by itself (`Refresh`): the workspace is on
    /// its way to running, and the page turns into the workspace when it is.
    pub fn passes_soon(&self) -> bool {
        matches!(self, GatewayError::Starting | GatewayError::Transitioning)
    }

    /// Seconds a client should wait before retrying, for the refusals that pass by themselves.
    fn retry_after(&self) -> Option<std::borrow::Cow<'static, str>> {
        let fixed = match self {
            GatewayError::NotRunning => "5",
            GatewayError::Starting | GatewayError::Transitioning => WAIT_SECS,
            GatewayError::StoreUnavailable => "1",
            GatewayError::TooManyConnections => "1",
            GatewayError::RateLimited(secs) => return Some(secs.to_string().into()),
            _ => return None,
        };
        Some(fixed.into())
    }

    /// What a Pingora error met while proxying means for the client (used by `fail_to_proxy`).
    /// `None`: the downstream is gone, nothing can be written.
    pub fn from_proxy_error(e: &Error) -> Option<GatewayError> {
        use ErrorType::*;
        let mapped = match e.etype() {
            HTTPStatus(code) => Self::from_status(*code),
            ConnectTimedout | TLSHandshakeTimedout => GatewayError::UpstreamTimeout,
            ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
                GatewayError::UpstreamTimeout
            }
            _ => match e.esource() {
                ErrorSource::Upstream => GatewayError::UpstreamRefused,
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed | ReadTimedout | WriteTimedout => {
                        return None
                    }
                    _ => GatewayError::BadPath,
                },
                ErrorSource::Internal | ErrorSource::Unset => GatewayError::Internal,
            },
        };
        Some(mapped)
    }

    fn from_status(code: u16) -> GatewayError {
        match code {
            400 => GatewayError::BadPath,
            401 => GatewayError::Unauthenticated,
            403 => GatewayError::Forbidden,
            404 => GatewayError::NoRoute,
            405 => GatewayError::MethodNotAllowed,
            503 => GatewayError::StoreUnavailable,
            504 => GatewayError::UpstreamTimeout,
            500 => GatewayError::Internal,
            _ => GatewayError::UpstreamRefused,
        }
    }
}

/// The JSON body of every response edgegate makes itself.
pub fn body(err: &GatewayError, request_id: &str) -> Bytes {
    let v = serde_json::json!({
        "error": err.code(),
        "message": err.to_string(),
        "request_id": request_id,
    });
    Bytes::from(v.to_string())
}

/// Seconds between a waiting page's reloads (and the `Retry-After` of a starting workspace).
const WAIT_SECS: &str = "2";

/// The built-in page for a navigation edgegate refuses. No external asset; every value is
/// escaped where it goes in.
const BUILT_IN_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{status}} {{title}}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}
h1{font-size:1.4em}code{background:#f3f3f3;padding:.1em .3em}small{color:#666}</style></head>
<body><h1>{{status}} {{title}}</h1><p>{{message}}</p><p>{{retry}}</p>
<p><small>Error <code>{{code}}</code> &middot; request <code>{{request_id}}</code></small></p>
</body></html>
"#;

/// What a refusal looks like to whom asked: a browser's navigation gets an HTML page, every
/// other request (fetch, API clients, WebSocket upgrades) the SPEC §7 JSON, same status.
pub struct Pages {
    /// The page's template (`errors.page_template`, else the built-in one): `{{status}}`,
    /// `{{title}}`, `{{message}}`, `{{code}}`, `{{request_id}}` and `{{retry}}` (a sentence
    /// when the page reloads by itself, else empty) are replaced, escaped.
    template: String,
}

impl Default for Pages {
    fn default() -> Self {
        Self {
            template: BUILT_IN_PAGE.to_string(),
        }
    }
}

impl Pages {
    /// Pages from the operator's template (`None`: the built-in one).
    pub fn new(template: Option<String>) -> Self {
        template.map_or_else(Pages::default, |template| Pages { template })
    }

    /// The page for `err`.
    pub fn html(&self, err: &GatewayError, request_id: &str) -> Bytes {
        let status = err.status();
        let title = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let mut page = self.template.clone();
        for (name, value) in [
            ("{{status}}", status.to_string()),
            ("{{title}}", title.to_string()),
            ("{{message}}", err.to_string()),
            ("{{code}}", err.code().to_string()),
            ("{{request_id}}", request_id.to_string()),
            (
                "{{retry}}",
                if err.passes_soon() {
                    "This page reloads by itself.".to_string()
                } else {
                    String::new()
                },
            ),
        ] {
            page = page.replace(name, &escape_html(&value));
        }
        Bytes::from(page)
    }

    /// Write `err` to the client as its status and body (see `Pages`). The connection is kept
    /// for the next request only when the request carried no body that could be left unread.
    pub async fn respond(
        &self,
        session: &mut Session,
        err: &GatewayError,
        request_id: &str,
    ) -> pingora::Result<()> {
        let html = !session.is_upgrade_req() && navigation(session.req_header());
        let (body, content_type) = if html {
            (self.html(err, request_id), "text/html; charset=utf-8")
        } else {
            (body(err, request_id), "application/json")
        };
        let mut resp = ResponseHeader::build(err.status(), Some(9))?;
        resp.insert_header("content-type", content_type)?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-request-id", request_id)?;
        if html {
            // The page is edgegate's, on whatever origin the navigation was for: it runs no
            // script and loads nothing.
            resp.insert_header(
                "content-security-policy",
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            )?;
            resp.insert_header("x-content-type-options", "nosniff")?;
            if err.passes_soon() {
                // The waiting page: reloaded by the browser (no script, which the CSP
                // forbids) until the workspace answers instead.
                resp.insert_header("refresh", WAIT_SECS)?;
            }
        }
        if let Some(secs) = err.retry_after() {
            resp.insert_header("retry-after", &*secs)?;
        }
        if session.is_upgrade_req() {
            // A refused upgrade must not leave the client half-switched: answer and close.
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
}

/// Whether a request is a browser's navigation, which can show a page: `Sec-Fetch-Mode:
/// navigate`, or (browsers without Fetch Metadata) a `GET` whose `Accept` names `text/html`.
pub fn navigation(req: &RequestHeader) -> bool {
    match req.headers.get("sec-fetch-mode") {
        Some(mode) => mode.as_bytes() == b"navigate",
        None => {
            req.method == http::Method::GET
                && req
                    .headers
                    .get(http::header::ACCEPT)
                    .is_some_and(|a| a.as_bytes().windows(9).any(|w| w == b"text/html"))
        }
    }
}

/// `s` with the five characters HTML gives meaning escaped.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_code_is_listed() {
        use super::GatewayError;
        let codes: std::collections::BTreeSet<&str> =
            GatewayError::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), GatewayError::ALL.len(), "one of each");
        // Exhaustive: a new variant fails to compile here until it is listed above.
        let listed = |e: &GatewayError| match e {
            GatewayError::BadHost
            | GatewayError::BadPath
            | GatewayError::BadId
            | GatewayError::PortNotAllowed
            | GatewayError::BadUpgrade
            | GatewayError::BadFraming
            | GatewayError::UriTooLong
            | GatewayError::HeadersTooLarge
            | GatewayError::HeaderTimeout
            | GatewayError::TooManyConnections
            | GatewayError::RateLimited(_)
            | GatewayError::NoRoute
            | GatewayError::UnknownWorkspace
            | GatewayError::Unauthenticated
            | GatewayError::AmbiguousCredentials
            | GatewayError::TokenSpent
            | GatewayError::Forbidden
            | GatewayError::MethodNotAllowed
            | GatewayError::BadRecord
            | GatewayError::UpstreamUnresolvable
            | GatewayError::UpstreamNotAllowed
            | GatewayError::UpstreamRefused
            | GatewayError::NotRunning
            | GatewayError::Starting
            | GatewayError::Transitioning
            | GatewayError::StoreUnavailable
            | GatewayError::UpstreamTimeout
            | GatewayError::Internal => codes.contains(e.code()),
        };
        assert!(GatewayError::ALL.iter().all(listed));
    }

    use super::*;

    #[test]
    fn every_error_has_a_json_body_with_code_and_request_id() {
        let b = body(&GatewayError::NotRunning, "abc");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"], "workspace_not_running");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(GatewayError::NotRunning.status(), 503);
    }

    #[test]
    fn pages_are_escaped_and_navigations_told_apart() {
        let pages = Pages::new(Some(
            "<p>{{status}}|{{title}}|{{code}}|{{request_id}}|{{message}}</p>".into(),
        ));
        let html = pages.html(&GatewayError::UnknownWorkspace, "a<b>&\"'");
        assert_eq!(
            &html[..],
            b"<p>404|Not Found|unknown_workspace|a&lt;b&gt;&amp;&quot;&#39;|unknown workspace</p>"
        );
        let built_in = Pages::default().html(&GatewayError::Forbidden, "0123");
        let text = std::str::from_utf8(&built_in).expect("utf-8");
        assert!(
            text.contains("403 Forbidden") && text.contains("0123"),
            "{text}"
        );
        assert!(!text.contains("{{"), "every placeholder filled");
        let req = |headers: &[(&str, &str)], method: &str| {
            let mut r = RequestHeader::build(method, b"/", None).expect("req");
            for (k, v) in headers {
                r.append_header(k.to_string(), *v).expect("h");
            }
            navigation(&r)
        };
        assert!(req(&[("sec-fetch-mode", "navigate")], "GET"));
        assert!(!req(
            &[("sec-fetch-mode", "cors"), ("accept", "text/html")],
            "GET"
        ));
        assert!(req(&[("accept", "text/html,application/xhtml+xml")], "GET"));
        assert!(!req(&[("accept", "text/html")], "POST"));
        assert!(!req(&[("accept", "*/*")], "GET"), "curl gets JSON");
        assert!(!req(&[], "GET"));
    }

    #[test]
    fn upstream_failures_map_to_502_and_504() {
        let refused = Error::new(ErrorType::ConnectRefused).into_up();
        assert_eq!(
            GatewayError::from_proxy_error(&refused),
            Some(GatewayError::UpstreamRefused)
        );
        let timed_out = Error::new(ErrorType::ConnectTimedout).into_up();
        assert_eq!(
            GatewayError::from_proxy_error(&timed_out).map(|e| e.status()),
            Some(504)
        );
        let read = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(
            GatewayError::from_proxy_error(&read).map(|e| e.status()),
            Some(504)
        );
        let gone = Error::new(ErrorType::ConnectionClosed).into_down();
        assert_eq!(GatewayError::from_proxy_error(&gone), None);
    }
}
