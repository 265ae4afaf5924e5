//! Request headers at both ends: reading the browser's Host in `request_filter`, and rewriting
//! the upstream request in `upstream_request_filter` (SPEC §5). The browser's Host (port
//! included) and Origin go upstream untouched by default: code-server compares a WebSocket's
//! Origin with Host, or with `X-Forwarded-Host`, and refuses a mismatch.

use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use http::HeaderName;
use pingora::http::RequestHeader;
use pingora::protocols::http::authority::raw_target_authority;
use std::net::IpAddr;

/// Headers that only edgegate may set; client-sent copies are removed before any upstream.
/// (Names built once: removing by `&str` parses the name on every call.)
static OWNED: [HeaderName; 9] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-edgegate-user"),
    HeaderName::from_static("x-edgegate-workspace"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
];

/// The browser's Host: the single `Host` header, or the authority of an absolute-form or
/// HTTP/2 request. Missing, duplicated or disagreeing → 400.
pub fn browser_host(req: &RequestHeader) -> Result<&str, GatewayError> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(h.to_str().map_err(|_| GatewayError::BadHost)?),
        (None, None) => None,
        _ => return Err(GatewayError::BadHost),
    };
    // HTTP/2 carries it in the URI; an HTTP/1 absolute-form target only in the raw bytes.
    let authority = match req.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => raw_target_authority(req.raw_path())
            .authority()
            .map(|a| std::str::from_utf8(a).map_err(|_| GatewayError::BadHost))
            .transpose()?,
    };
    match (header, authority) {
        (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a) => Err(GatewayError::BadHost),
        (Some(h), _) => Ok(h),
        (None, Some(a)) => Ok(a),
        (None, None) => Err(GatewayError::BadHost),
    }
}

/// 414 for an overlong request target, 431 for too many or too large headers.
pub fn check_limits(
    req: &RequestHeader,
    limits: &crate::config::LimitsConfig,
) -> Result<(), GatewayError> {
    if req.raw_path().len() > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong);
    }
    if req.headers.len() > limits.max_headers {
        return Err(GatewayError::HeadersTooLarge);
    }
    let bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if bytes > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge);
    }
    Ok(())
}

/// Lower-case, without port or trailing dot, checked to be a DNS name or IP literal.
pub fn normalize_host(raw: &str) -> Result<String, GatewayError> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: `[::1]` or `[::1]:8080`.
        let end = rest.find(']').ok_or(GatewayError::BadHost)?;
        let port = &rest[end + 1..];
        if !(port.is_empty() || valid_port(port.strip_prefix(':').ok_or(GatewayError::BadHost)?)) {
            return Err(GatewayError::BadHost);
        }
        rest[..end]
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| GatewayError::BadHost)?;
        return Ok(raw[..end + 2].to_ascii_lowercase());
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if valid_port(port) => h,
            Some(_) => return Err(GatewayError::BadHost),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(GatewayError::BadHost);
    }
    Ok(host.to_ascii_lowercase())
}

/// The port part of a Host value, if it has one.
pub fn host_port(raw: &str) -> Option<&str> {
    let after_host = match raw.strip_prefix('[') {
        Some(rest) => &rest[rest.find(']')? + 1..],
        None => raw,
    };
    after_host
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| valid_port(p))
}

fn valid_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u16>().is_ok()
}

/// An IP network for `listen.trusted_proxies`.
#[derive(Debug, Clone, Copy)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<IpNet> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr: ip, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // Keep the top `prefix` bits of an address `width` bits wide.
        let top = |bits: u128, width: u32| {
            bits.checked_shr(width - u32::from(self.prefix))
                .unwrap_or(0)
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                top(u32::from(n).into(), 32) == top(u32::from(a).into(), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => top(n.into(), 128) == top(a.into(), 128),
            _ => false,
        }
    }
}

/// What the upstream request needs from outside the CTX.
pub struct Forwarding<'a> {
    pub client_ip: Option<IpAddr>,
    pub trusted_proxies: &'a [IpNet],
    pub proto: &'static str,
    /// Cookies that are edgegate's credentials (app session, ide cookie).
    pub credential_cookies: [&'a str; 2],
}

/// Append `ip` in its usual text form; IPv4 without `fmt`, which costs more than the rest of
/// the forwarding headers together.
pub fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u16(out, octet.into());
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Append a decimal number.
pub fn push_u16(out: &mut String, n: u16) {
    out.push_str(decimal(n.into(), &mut [0; 20]));
}

/// `n` in decimal, written into the end of `buf`, without `fmt`.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or_default()
}

/// Rewrite the upstream copy of the request: edgegate's own headers replace any the client
/// sent, Host stays the browser's unless the route says otherwise, Origin is never touched,
/// and a stripped tunnel path replaces the browser's.
pub fn rewrite_upstream_request(
    req: &mut RequestHeader,
    ctx: &RequestCtx,
    fwd: &Forwarding<'_>,
) -> pingora::Result<()> {
    let forwarded_host = browser_host(req)
        .ok()
        .and_then(|h| http::HeaderValue::from_str(h).ok())
        .ok_or_else(|| pingora::Error::explain(pingora::ErrorType::HTTPStatus(400), "bad host"))?;

    let trusted = fwd
        .client_ip
        .is_some_and(|ip| fwd.trusted_proxies.iter().any(|n| n.contains(ip)));
    let mut xff = String::with_capacity(48);
    if trusted {
        for v in req.headers.get_all("x-forwarded-for") {
            if let Ok(v) = v.to_str() {
                if !xff.is_empty() {
                    xff.push_str(", ");
                }
                xff.push_str(v.trim());
            }
        }
    }
    // Clients rarely send any of these: look before paying nine hash-map removals.
    if req.headers.keys().any(|k| OWNED.contains(k)) {
        for name in &OWNED {
            req.remove_header(name);
        }
    }
    if let Some(ip) = fwd.client_ip {
        if !xff.is_empty() {
            xff.push_str(", ");
        }
        push_ip(&mut xff, ip);
    }
    if !xff.is_empty() {
        req.insert_header("x-forwarded-for", xff)?;
    }
    req.insert_header(
        "x-forwarded-proto",
        http::HeaderValue::from_static(fwd.proto),
    )?;
    req.insert_header("x-forwarded-host", forwarded_host)?;
    req.insert_header("x-request-id", ctx.request_id.as_str())?;
    if let Some(id) = &ctx.workspace {
        req.insert_header("x-edgegate-workspace", id.as_str())?;
    }
    if let Some(p) = &ctx.principal {
        req.insert_header("x-edgegate-user", p.user.as_str())?;
    }
    if ctx.strip_credentials {
        match crate::auth::session::without_cookies(req, &fwd.credential_cookies) {
            Some(rest) => {
                req.remove_header(&http::header::COOKIE);
                req.insert_header(http::header::COOKIE, rest)?;
            }
            None => {
                req.remove_header(&http::header::COOKIE);
            }
        }
    }
    if ctx.strip_authorization {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    if let Some(target) = &ctx.target {
        if let Some(h) = &target.host_header {
            req.insert_header(http::header::HOST, h.as_str())?;
        }
        if let Some(p) = &target.upstream_path {
            let uri = http::Uri::try_from(p.as_str()).map_err(|_| {
                pingora::Error::explain(pingora::ErrorType::HTTPStatus(400), "bad upstream path")
            })?;
            req.set_uri(uri);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "::1",
            "fe80::1:2",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("test address");
            let mut s = String::from("x ");
            push_ip(&mut s, ip);
            assert_eq!(s, format!("x {ip}"));
        }
        for n in [0u16, 9, 10, 99, 100, 65535] {
            let mut s = String::new();
            push_u16(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn host_normalisation_table() {
        let cases: &[(&str, Result<&str, GatewayError>)] = &[
            ("ws-abc.example.test", Ok("ws-abc.example.test")),
            ("WS-ABC.Example.Test", Ok("ws-abc.example.test")),
            ("ws-abc.example.test:8443", Ok("ws-abc.example.test")),
            ("ws-abc.example.test.", Ok("ws-abc.example.test")),
            ("ws-abc.example.test.:80", Ok("ws-abc.example.test")),
            ("[::1]:8080", Ok("[::1]")),
            ("[::1]", Ok("[::1]")),
            ("127.0.0.1:80", Ok("127.0.0.1")),
            ("", Err(GatewayError::BadHost)),
            (":80", Err(GatewayError::BadHost)),
            ("a.test:", Err(GatewayError::BadHost)),
            ("a.test:99999", Err(GatewayError::BadHost)),
            ("a.test:x", Err(GatewayError::BadHost)),
            ("a test", Err(GatewayError::BadHost)),
            ("a/b.test", Err(GatewayError::BadHost)),
            ("a%2eb.test", Err(GatewayError::BadHost)),
            ("[::1", Err(GatewayError::BadHost)),
            ("[zz]:80", Err(GatewayError::BadHost)),
        ];
        for (raw, want) in cases {
            let got = normalize_host(raw);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn duplicate_or_disagreeing_host_is_rejected() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        req.append_header("host", "a.test").expect("h");
        assert_eq!(browser_host(&req), Ok("a.test"));
        req.append_header("host", "b.test").expect("h");
        assert_eq!(browser_host(&req), Err(GatewayError::BadHost));

        let mut abs = RequestHeader::build("GET", b"http://b.test/x", None).expect("req");
        abs.append_header("host", "a.test").expect("h");
        assert_eq!(browser_host(&abs), Err(GatewayError::BadHost));
    }

    #[test]
    fn trusted_proxy_networks() {
        let net = IpNet::parse("10.0.0.0/8").expect("net");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.0.0.1".parse().expect("ip")));
        let one = IpNet::parse("127.0.0.1").expect("net");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let v6 = IpNet::parse("fd00::/8").expect("net");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("fe80::1".parse().expect("ip")));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("nope").is_none());
    }
}
