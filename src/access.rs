//! The access log: one JSON line per request, written from `logging`. Query strings are logged
//! with any `token` value redacted; headers (so cookies) are never logged.

use serde::Serialize;
use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Lines are appended to a 64 KiB buffer under a lock (a memcpy per request, no system call);
/// the buffer is written out when full and by a flusher thread every 200 ms, so a line reaches
/// the destination within that time.
pub struct AccessLog {
    out: Option<Arc<Mutex<Buffered>>>,
}

type Buffered = std::io::BufWriter<Box<dyn Write + Send>>;

impl AccessLog {
    /// `stdout`, `stderr`, `off`, or a file path opened for appending.
    pub fn open(spec: &str) -> Result<AccessLog, String> {
        let dest: Box<dyn Write + Send> = match spec {
            "off" => return Ok(AccessLog { out: None }),
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
        Ok(AccessLog { out: Some(out) })
    }

    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Append one line; a failing destination is not the request's problem.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some(out) = &self.out else { return };
        // Serialised straight into the buffer: no line to allocate and grow first.
        if let Ok(mut o) = out.lock() {
            let _ = serde_json::to_writer(&mut *o, entry);
            let _ = o.write_all(b"\n");
        }
    }
}

/// One access-log line.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// Unix time in seconds, millisecond precision.
    pub time: f64,
    pub request_id: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<Cow<'a, str>>,
    pub status: u16,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub auth_method: &'static str,
    pub auth_result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_close: Option<&'static str>,
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
];

fn is_secret(param: &str) -> bool {
    let name = param.split_once('=').map_or(param, |(k, _)| k);
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
pub fn addr_text(addr: std::net::SocketAddr) -> String {
    if addr.is_ipv6() {
        return addr.to_string();
    }
    let mut out = String::with_capacity(21);
    crate::headers::push_ip(&mut out, addr.ip());
    out.push(':');
    crate::headers::push_u16(&mut out, addr.port());
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_values_are_redacted() {
        assert_eq!(
            super::redact_query("a=1&token=abc.def&b=2"),
            "a=1&token=REDACTED&b=2"
        );
        assert_eq!(super::redact_query("a=1"), "a=1");
        assert_eq!(super::redact_query("mytoken=1"), "mytoken=1");
        assert_eq!(
            super::redact_query("tkn=x&code=y&q=1"),
            "tkn=REDACTED&code=REDACTED&q=1"
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in ["127.0.0.1:80", "10.0.0.255:65535", "[::1]:8080"] {
            let addr: std::net::SocketAddr = a.parse().expect("test address");
            assert_eq!(super::addr_text(addr), addr.to_string());
        }
    }
}
