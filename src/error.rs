//! The gateway's own refusals (`GatewayError`) and the one place that turns them into a status
//! and a JSON body (`respond`). Called from `request_filter` and `fail_to_proxy`.
//! Internal detail (keys, fields, addresses) goes to the log by the caller, never into the body.

use bytes::Bytes;
use pingora::http::ResponseHeader;
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
    #[error("the route store is unavailable")]
    StoreUnavailable,
    #[error("the workspace upstream timed out")]
    UpstreamTimeout,
    #[error("internal error")]
    Internal,
}

impl GatewayError {
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
            TooManyConnections => 429,
            HeadersTooLarge => 431,
            BadRecord | UpstreamUnresolvable | UpstreamNotAllowed | UpstreamRefused => 502,
            NotRunning | StoreUnavailable => 503,
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
            BadRecord => "bad_route_record",
            UpstreamUnresolvable => "upstream_unresolvable",
            UpstreamRefused => "upstream_unreachable",
            NotRunning => "workspace_not_running",
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

    /// Seconds a client should wait before retrying, for the refusals that pass by themselves.
    fn retry_after(&self) -> Option<&'static str> {
        match self {
            GatewayError::NotRunning => Some("5"),
            GatewayError::StoreUnavailable => Some("1"),
            GatewayError::TooManyConnections => Some("1"),
            _ => None,
        }
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

/// Write `err` to the client as its status and JSON body. The connection is kept for the next
/// request only when the request carried no body that could be left unread.
pub async fn respond(
    session: &mut Session,
    err: &GatewayError,
    request_id: &str,
) -> pingora::Result<()> {
    let body = body(err, request_id);
    let mut resp = ResponseHeader::build(err.status(), Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-request-id", request_id)?;
    if let Some(secs) = err.retry_after() {
        resp.insert_header("retry-after", secs)?;
    }
    if session.is_upgrade_req() {
        // A refused upgrade must not leave the client half-switched: answer and close.
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

#[cfg(test)]
mod tests {
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
