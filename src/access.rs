//! A finished request in the access log and the metrics (`RequestLog`, from `logging`, or from
//! a WebSocket tunnel when it ends): one JSON line per request, query strings with credential
//! values redacted, headers (so cookies) never logged.

use crate::auth::Check;
use crate::config::UserField;
use crate::ctx::RequestCtx;
use crate::metrics::{self, Metrics};
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Where finished requests are counted and logged.
pub struct RequestLog {
    metrics: Arc<Metrics>,
    access: AccessLog,
    audit: Option<crate::audit::Audit>,
}

impl RequestLog {
    pub fn new(
        metrics: Arc<Metrics>,
        access: AccessLog,
        audit: Option<crate::audit::Audit>,
    ) -> Self {
        Self {
            metrics,
            access,
            audit,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Reopen the access log's and the audit trail's files.
    pub fn reopen(&self) {
        self.access.reopen();
        if let Some(a) = &self.audit {
            a.reopen();
        }
    }

    /// Count an auth decision (a request's first and its moved-backend retry).
    pub fn checked(&self, check: Check) {
        if check != Check::NONE {
            self.metrics.record_auth(check.method_label(), check.result);
        }
    }

    /// A WebSocket is open: counted until `finish` sees it end.
    pub fn ws_opened(&self, ctx: &mut RequestCtx) {
        ctx.ws_opened = Some(std::time::Instant::now());
        self.metrics
            .websockets_open
            .with_label_values(&[ctx.route_name()])
            .inc();
    }

    /// An upstream connect failure or timeout, by route.
    pub fn upstream_failure(&self, ctx: &RequestCtx, e: &pingora::Error) {
        let kind = match crate::error::GatewayError::from_proxy_error(e) {
            Some(crate::error::GatewayError::UpstreamTimeout) => "timeout",
            Some(crate::error::GatewayError::UpstreamRefused) => "connect",
            _ => return,
        };
        self.metrics
            .upstream_failures
            .with_label_values(&[ctx.route_name(), kind])
            .inc();
    }

    /// Metrics and the access log line for a finished request.
    pub fn finish(&self, req: &RequestHeader, status: u16, ctx: &RequestCtx) {
        let route = ctx.route_name();
        let method = metrics::method_label(&req.method);
        let outcome = if ctx.refusal.is_some() {
            metrics::Outcome::Refused
        } else if ctx.plan.is_some() {
            metrics::Outcome::Proxied
        } else if status > 0 {
            metrics::Outcome::Answered
        } else {
            metrics::Outcome::Dropped
        };
        let elapsed = ctx.started.elapsed();
        let m = &self.metrics;
        m.record_request(
            route,
            &req.method,
            status,
            outcome,
            elapsed,
            ctx.bytes_in,
            ctx.bytes_out,
        );
        if let Some(r) = &ctx.refusal {
            m.refusals.with_label_values(&[r.code()]).inc();
        }
        let ws_close = ctx.ws_opened.map(|opened| {
            let cause = ctx.ws_close_cause.unwrap_or("error");
            m.websockets_open.with_label_values(&[route]).dec();
            m.websocket_duration
                .with_label_values(&[route])
                .observe(opened.elapsed().as_secs_f64());
            m.websocket_closes.with_label_values(&[route, cause]).inc();
            cause
        });
        if let Some(a) = &self.audit {
            a.finished(ctx, status);
        }
        if self.access.enabled() {
            let time_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let user =
                ctx.principal()
                    .filter(|p| p.identifies())
                    .and_then(|p| match self.access.user {
                        UserField::Clear => Some(Cow::Borrowed(p.user.as_str())),
                        UserField::Hashed => Some(Cow::Owned(pseudonym(&p.user))),
                        UserField::Off => None,
                    });
            let host = req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.authority().map(|a| a.as_str()))
                .map(loggable_host);
            self.access.write(&Entry {
                time_ms,
                request_id: &ctx.request_id,
                client: ctx.client,
                host,
                workspace: ctx.workspace.as_ref().map(|w| w.as_str()),
                user,
                route,
                method,
                path: req.uri.path(),
                query: req.uri.query().map(redact_query),
                status,
                duration_us: elapsed.as_micros() as u64,
                upstream: ctx.target().map(|t| t.addr),
                upstream_status: ctx.upstream_answer.map(|(s, _)| s),
                upstream_us: ctx.upstream_answer.map(|(_, us)| us),
                bytes_in: ctx.bytes_in,
                bytes_out: ctx.bytes_out,
                auth_method: ctx.check.method_label(),
                auth_result: ctx.check.result,
                error: ctx.refusal.as_ref().map(|r| r.code()),
                ws_close,
            });
        }
    }
}

/// Lines are appended to a 64 KiB buffer under a lock (a memcpy per request, no system call);
/// the buffer is written out when full and by a flusher thread every 200 ms, so a line reaches
/// the destination within that time.
pub struct AccessLog {
    out: Option<Arc<Mutex<Buffered>>>,
    /// The file appended to, reopened by `reopen` (`None`: stdout, stderr, off).
    path: Option<String>,
    /// How the verified user is written (`log.access_log_user`).
    user: UserField,
}

type Buffered = std::io::BufWriter<Box<dyn Write + Send>>;

impl AccessLog {
    /// `stdout`, `stderr`, `off`, or a file path opened for appending.
    pub fn open(spec: &str) -> Result<AccessLog, String> {
        let dest: Box<dyn Write + Send> = match spec {
            "off" => {
                return Ok(AccessLog {
                    out: None,
                    path: None,
                    user: UserField::Clear,
                })
            }
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("log.access_log: cannot open {path}: {e}"))?,
            ),
        };
        let out = Arc::new(Mutex::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            dest,
        )));
        let weak = Arc::downgrade(&out);
        std::thread::Builder::new()
            .name("edgegate-access-log".into())
            .spawn(move || {
                // Ends when the gateway (and its log) is gone.
                while let Some(out) = weak.upgrade() {
                    if let Ok(mut o) = out.lock() {
                        let _ = o.flush();
                    }
                    drop(out);
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            })
            .map_err(|e| format!("log.access_log: cannot start its flusher: {e}"))?;
        let path = (!matches!(spec, "stdout" | "stderr")).then(|| spec.to_string());
        Ok(AccessLog {
            out: Some(out),
            path,
            user: UserField::Clear,
        })
    }

    /// Write to a freshly opened file at the same path (SIGUSR1, after a rotation moved the
    /// old one away); what was buffered goes to the old one first. A path that cannot be
    /// opened keeps the old file (logged).
    pub fn reopen(&self) {
        let (Some(out), Some(path)) = (&self.out, &self.path) else {
            return;
        };
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => {
                if let Ok(mut o) = out.lock() {
                    let _ = o.flush();
                    *o = std::io::BufWriter::with_capacity(64 * 1024, Box::new(file));
                }
            }
            Err(e) => log::error!("cannot reopen {path}: {e}; still writing the old file"),
        }
    }

    /// Write the verified user as `user` says.
    pub fn with_user(mut self, user: UserField) -> AccessLog {
        self.user = user;
        self
    }

    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Append one line that is already JSON (the audit trail's events).
    pub fn write_line(&self, line: &str) {
        let Some(out) = &self.out else { return };
        if let Ok(mut o) = out.lock() {
            let _ = o.write_all(line.as_bytes());
            let _ = o.write_all(b"\n");
        }
    }

    /// Append one line; a failing destination is not the request's problem.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some(out) = &self.out else { return };
        let mut line = Vec::with_capacity(384);
        entry.write_json(&mut line);
        line.push(b'\n');
        if let Ok(mut o) = out.lock() {
            let _ = o.write_all(&line);
        }
    }
}

/// One access-log line.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Unix time in milliseconds (written as seconds with three decimals, `time`).
    pub time_ms: u64,
    /// Edgegate's own id (letters and digits: written as is).
    pub request_id: &'a str,
    /// The client's address (through trusted proxies).
    pub client: Option<std::net::IpAddr>,
    /// The Host the client sent (at most 255 bytes).
    pub host: Option<&'a str>,
    pub workspace: Option<&'a str>,
    /// The verified user, as `log.access_log_user` says.
    pub user: Option<Cow<'a, str>>,
    pub route: &'a str,
    pub method: &'static str,
    pub path: &'a str,
    pub query: Option<Cow<'a, str>>,
    pub status: u16,
    /// Microseconds (written as milliseconds with three decimals, `duration_ms`).
    pub duration_us: u64,
    pub upstream: Option<std::net::SocketAddr>,
    /// The upstream's own status (the client may have got another: a drain, a refusal).
    pub upstream_status: Option<u16>,
    /// Microseconds from asking the upstream to its response header (`upstream_ms`).
    pub upstream_us: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub auth_method: &'static str,
    pub auth_result: &'static str,
    pub error: Option<&'static str>,
    pub ws_close: Option<&'static str>,
}

/// `,"name":"`, the opening of a field, as one literal (one copy per field, not three).
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":\"").as_bytes()
    };
}

impl Entry<'_> {
    /// The JSON object, by hand: a tenth of what a generic serialiser costs per request. Keys
    /// are fixed; every string value is escaped; absent optional fields are left out.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":");
        push_fixed3(out, self.time_ms);
        push_static_field(out, key!("request_id"), Some(self.request_id));
        if let Some(ip) = self.client {
            out.extend_from_slice(b",\"client\":\"");
            crate::headers::push_ip(out, ip);
            out.push(b'"');
        }
        push_str_field(out, key!("host"), self.host);
        push_static_field(out, key!("workspace"), self.workspace);
        push_str_field(out, key!("user"), self.user.as_deref());
        push_str_field(out, key!("route"), Some(self.route));
        push_static_field(out, key!("method"), Some(self.method));
        push_str_field(out, key!("path"), Some(self.path));
        push_str_field(out, key!("query"), self.query.as_deref());
        out.extend_from_slice(b",\"status\":");
        push_u64(out, self.status.into());
        out.extend_from_slice(b",\"duration_ms\":");
        push_fixed3(out, self.duration_us);
        if let Some(addr) = self.upstream {
            out.extend_from_slice(b",\"upstream\":\"");
            push_addr(out, addr);
            out.push(b'"');
        }
        if let Some(s) = self.upstream_status {
            out.extend_from_slice(b",\"upstream_status\":");
            push_u64(out, s.into());
        }
        if let Some(us) = self.upstream_us {
            out.extend_from_slice(b",\"upstream_ms\":");
            push_fixed3(out, us);
        }
        out.extend_from_slice(b",\"bytes_in\":");
        push_u64(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_u64(out, self.bytes_out);
        push_static_field(out, key!("auth_method"), Some(self.auth_method));
        push_static_field(out, key!("auth_result"), Some(self.auth_result));
        push_static_field(out, key!("error"), self.error);
        push_static_field(out, key!("ws_close"), self.ws_close);
        out.push(b'}');
    }
}

/// A stable pseudonym of a user id: the first 64 bits of SHA-256, hex.
fn pseudonym(user: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"edgegate access log user\0")
        .chain_update(user.as_bytes())
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `,"key":"value"` for values edgegate itself names (labels, codes, its request ids), which
/// need no escaping; nothing for `None`. `key` is the field's opening, from `key!`.
fn push_static_field(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    let Some(value) = value else { return };
    debug_assert!(value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    out.extend_from_slice(key);
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// `,"key":"value"` with the value escaped as JSON requires; nothing for `None`. `key` is the
/// field's opening, from `key!`.
fn push_str_field(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    let Some(value) = value else { return };
    out.extend_from_slice(key);
    let bytes = value.as_bytes();
    let plain = |b: &u8| *b >= 0x20 && *b != b'"' && *b != b'\\' && *b != 0x7F;
    if bytes.iter().all(plain) {
        // The usual case: nothing to escape, one copy.
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1F | 0x7F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xF) as usize]);
        } else {
            out.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(crate::headers::decimal(n, &mut [0; 20]));
}

/// `n / 1000` with three decimals.
fn push_fixed3(out: &mut Vec<u8>, n: u64) {
    push_u64(out, n / 1000);
    let frac = n % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Query parameters whose values are credentials somewhere (edgegate's `token`, openvscode's
/// `tkn`, OAuth's `code` and friends).
const SECRET_PARAMS: &[&str] = &[
    "token",
    "tkn",
    "access_token",
    "id_token",
    "refresh_token",
    "code",
    "password",
    "secret",
    "api_key",
    "key",
    "sig",
    "signature",
    // The content site's sign-in nonce: whoever reads it can finish a sign-in of their own
    // in the victim's browser (login CSRF).
    "state",
];

/// A Host (or request-target authority) as the access log writes it: without any
/// `user:password@`, and bounded, since a client chose it.
fn loggable_host(host: &str) -> &str {
    let host = host.rsplit_once('@').map_or(host, |(_, after)| after);
    host.get(..255).unwrap_or(host)
}

/// Names are compared decoded (`%74oken` is `token`), as the upstream will read them.
fn is_secret(param: &str) -> bool {
    let name = crate::query::param_name(param);
    SECRET_PARAMS.iter().any(|s| name.eq_ignore_ascii_case(s))
}

/// The query with every credential-like value replaced by `REDACTED`.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    if !query.split('&').any(is_secret) {
        return Cow::Borrowed(query);
    }
    Cow::Owned(
        query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if is_secret(p) => format!("{k}=REDACTED"),
                _ => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// `ip:port` as `SocketAddr`'s `Display` writes it; IPv4 without `fmt`.
pub fn push_addr(out: &mut Vec<u8>, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            crate::headers::push_ip(out, std::net::IpAddr::V4(*v4.ip()));
            out.push(b':');
            out.extend_from_slice(crate::headers::decimal(addr.port().into(), &mut [0; 20]));
        }
        std::net::SocketAddr::V6(_) => out.extend_from_slice(addr.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_values_are_redacted() {
        assert_eq!(
            super::redact_query("a=1&token=abc.def&b=2"),
            "a=1&token=REDACTED&b=2"
        );
        assert_eq!(super::redact_query("a=1"), "a=1");
        assert_eq!(super::redact_query("mytoken=1"), "mytoken=1");
        assert_eq!(
            super::redact_query("%74oken=abc&To%6Ben=d&a=1"),
            "%74oken=REDACTED&To%6Ben=REDACTED&a=1",
            "names are decoded before they are matched"
        );
        assert_eq!(
            super::redact_query("tkn=x&code=y&q=1"),
            "tkn=REDACTED&code=REDACTED&q=1"
        );
        assert_eq!(
            super::redact_query("path=%2F&state=n0nce"),
            "path=%2F&state=REDACTED",
            "the content site's sign-in nonce"
        );
    }

    #[test]
    fn hosts_are_logged_without_userinfo_and_bounded() {
        assert_eq!(
            loggable_host("ws-a.example.test:8080"),
            "ws-a.example.test:8080"
        );
        assert_eq!(
            loggable_host("alice:hunter2@ws-a.example.test"),
            "ws-a.example.test"
        );
        assert_eq!(loggable_host("a@b@host"), "host");
        let long = "h".repeat(300);
        assert_eq!(loggable_host(&long).len(), 255);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in ["127.0.0.1:80", "10.0.0.255:65535", "[::1]:8080"] {
            let addr: std::net::SocketAddr = a.parse().expect("test address");
            let mut out = b"x ".to_vec();
            super::push_addr(&mut out, addr);
            assert_eq!(out, format!("x {addr}").into_bytes());
        }
    }

    #[test]
    fn lines_are_json_with_every_outside_string_escaped() {
        let nasty = "a\"b\\c\nd\re\tf\u{1}g\u{7f}h é 日本 </script>";
        let entry = Entry {
            time_ms: 1_763_900_000_007,
            request_id: "0123abcd",
            client: "203.0.113.9".parse().ok(),
            host: Some(nasty),
            workspace: Some("01HZX3M9Q4T8V6W2Y5B7C9D1EF"),
            user: Some(Cow::Borrowed(nasty)),
            route: nasty,
            method: "GET",
            path: nasty,
            query: Some(Cow::Borrowed("x=1&token=REDACTED")),
            status: 200,
            duration_us: 1_234_567,
            upstream: "127.0.0.1:8080".parse().ok(),
            upstream_status: Some(503),
            upstream_us: Some(2_500),
            bytes_in: 0,
            bytes_out: u64::MAX,
            auth_method: "session",
            auth_result: "ok",
            error: None,
            ws_close: Some("client"),
        };
        let mut out = Vec::new();
        entry.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["time"].as_f64(), Some(1_763_900_000.007));
        assert_eq!(v["route"], nasty);
        assert_eq!(v["path"], nasty);
        assert_eq!(v["query"], "x=1&token=REDACTED");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"].as_f64(), Some(1234.567));
        assert_eq!(v["upstream"], "127.0.0.1:8080");
        assert_eq!(v["client"], "203.0.113.9");
        assert_eq!(v["host"], nasty);
        assert_eq!(v["user"], nasty);
        assert_eq!(v["workspace"], "01HZX3M9Q4T8V6W2Y5B7C9D1EF");
        assert_eq!(v["upstream_status"], 503);
        assert_eq!(v["upstream_ms"].as_f64(), Some(2.5));
        assert_eq!(v["bytes_in"], 0);
        assert_eq!(v["bytes_out"], u64::MAX);
        assert_eq!(v["ws_close"], "client");
        assert!(v.get("error").is_none(), "absent fields are left out");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(
            !text.contains('\n') && !text.contains('\u{1}'),
            "one line: {text}"
        );

        let short = Entry {
            query: None,
            upstream: None,
            duration_us: 5,
            ws_close: None,
            error: Some("forbidden"),
            ..entry
        };
        let mut out = Vec::new();
        short.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["duration_ms"].as_f64(), Some(0.005));
        assert_eq!(v["error"], "forbidden");
        assert!(v.get("query").is_none() && v.get("upstream").is_none());
    }

    #[test]
    fn a_hashed_user_is_a_stable_pseudonym() {
        assert_eq!(pseudonym("user-1"), pseudonym("user-1"));
        assert_ne!(pseudonym("user-1"), pseudonym("user-2"));
        assert_eq!(pseudonym("user-1").len(), 16);
        assert!(!pseudonym("user-1").contains("user"));
    }
}
