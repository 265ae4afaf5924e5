//! Request headers at both ends: reading the browser's Host in `request_filter`, and rewriting
//! the upstream request in `upstream_request_filter` (SPEC §5). The browser's Host (port
//! included) and Origin go upstream untouched by default: code-server compares a WebSocket's
//! Origin with Host, or with `X-Forwarded-Host`, and refuses a mismatch.

use crate::error::GatewayError;
use crate::net::IpNet;
use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::authority::raw_target_authority;
use std::borrow::Cow;
use std::net::IpAddr;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_EDGEGATE_USER: HeaderName = HeaderName::from_static("x-edgegate-user");
const X_EDGEGATE_WORKSPACE: HeaderName = HeaderName::from_static("x-edgegate-workspace");

/// Whether a client-sent header never goes upstream as it came: the headers only edgegate sets
/// (client copies are dropped, SPEC §5) and the hop-by-hop ones, which describe the client's
/// connection (RFC 9110 §7.6.1, with the de-facto Keep-Alive and Proxy-Connection, and HTTP/2's
/// upgrade settings), and `Proxy` (CGI turns it into `HTTP_PROXY`, "httpoxy"). Spellings that
/// differ only in `_` for `-` or in repeated `-` count as the same name: CGI and WSGI upstreams
/// fold `X_Edgegate_User` and `X-Edgegate-User` into one variable. One `match` per header
/// name, no hashing: most requests have none.
fn not_forwarded(name: &HeaderName) -> bool {
    let n = name.as_str();
    dropped(n) || (folds(n) && dropped(&fold(n)))
}

/// Whether a header name has a spelling a CGI-style upstream folds into another name.
fn folds(name: &str) -> bool {
    name.bytes()
        .zip(name.bytes().skip(1).chain(Some(b'x')))
        .any(|(a, b)| a == b'_' || (a == b'-' && b == b'-'))
        || name.starts_with('-')
        || name.ends_with('-')
}

/// The name as a CGI-style upstream sees it, in `-` spelling: `_` is `-`, runs of `-` are one,
/// and none leads or trails.
fn fold(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = if c == '_' { '-' } else { c };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The request's framing, unambiguous for every upstream (SPEC §5, RFC 9112 §6): a header
/// that a CGI-style upstream would read as `Content-Length` or `Transfer-Encoding` but that is
/// not spelled so (`Transfer_Encoding`, `Content--Length`) is refused, since edgegate frames
/// the body without it and the upstream would frame it with it. (A request line with control
/// characters never gets this far: `connection` refuses it before Pingora parses it.)
pub fn check_framing(req: &RequestHeader) -> Result<(), GatewayError> {
    for name in req.headers.keys() {
        let n = name.as_str();
        if folds(n) && matches!(fold(n).as_str(), "content-length" | "transfer-encoding") {
            return Err(GatewayError::BadFraming);
        }
    }
    Ok(())
}

/// Names `not_forwarded` drops, in their one standard spelling.
fn dropped(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-request-id"
            | "x-edgegate-user"
            | "x-edgegate-workspace"
            | "x-edgegate-port-token"
            | "forwarded"
            | "x-real-ip"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
            | "proxy"
    )
}

/// The options of every `Connection` header, trimmed, empty ones skipped (requests and
/// responses alike).
fn connection_tokens(headers: &http::HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Fewer `Connection` options than this are accepted (as Pingora's standard policy).
const MAX_CONNECTION_OPTIONS: usize = 10;

/// The headers a request's `Connection` options name, which are hop-by-hop too (RFC 9110
/// §7.6.1), less those `not_forwarded` drops anyway. Refused as Pingora's standard
/// upstream policy refuses them (edgegate applies that policy itself, see `upstream::peer`):
/// ten or more options, an option that is not a token, or one that names `Host` or a
/// forwarding header.
fn connection_options(headers: &http::HeaderMap) -> Result<Vec<HeaderName>, &'static str> {
    let mut named = Vec::new();
    for (i, option) in connection_tokens(headers).enumerate() {
        if i + 1 >= MAX_CONNECTION_OPTIONS {
            return Err("too many Connection options");
        }
        if !option.iter().all(|&b| is_tchar(b)) {
            return Err("a Connection option is not a token");
        }
        // What browsers send (`keep-alive`, `Upgrade`) and `close` name nothing left to
        // remove: no `HeaderName` (an allocation for a non-standard name) for those.
        if [&b"keep-alive"[..], b"upgrade", b"close"]
            .iter()
            .any(|o| option.eq_ignore_ascii_case(o))
        {
            continue;
        }
        let name = HeaderName::from_bytes(option).map_err(|_| "bad Connection option")?;
        if matches!(
            name.as_str(),
            "host" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
        ) {
            return Err("Connection names a protected header");
        }
        if !not_forwarded(&name) {
            named.push(name);
        }
    }
    Ok(named)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The most headers `rewrite_upstream_request` adds: room is made for them at once.
const ADDED: usize = 6;

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

/// Lower-case, without port or trailing dot, checked to be a DNS name or IP literal. Borrowed
/// when the browser sent it in lower case already (they do).
pub fn normalize_host(raw: &str) -> Result<Cow<'_, str>, GatewayError> {
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
        // Rare enough that the copy is not worth avoiding.
        return Ok(Cow::Owned(raw[..end + 2].to_ascii_lowercase()));
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if valid_port(port) => h,
            Some(_) => return Err(GatewayError::BadHost),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err(GatewayError::BadHost);
    }
    // One pass: the characters of a DNS name or IPv4 literal, noting any upper case.
    let mut upper = false;
    for b in host.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {}
            b'A'..=b'Z' => upper = true,
            _ => return Err(GatewayError::BadHost),
        }
    }
    Ok(if upper {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
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

/// What forwarding the request's `Cookie` headers takes, once edgegate's own cookies must not
/// reach the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CookieStrip {
    /// No credential cookie in them: they go as they came.
    #[default]
    Keep,
    /// Nothing but credential cookies: the headers go.
    Remove,
    /// Both kinds, or a header that could not be read: rebuilt by `without_cookies`.
    Rebuild,
}

/// The `Cookie` header without the named cookies; `None` when nothing is left.
pub fn without_cookies<N: AsRef<str>>(headers: &http::HeaderMap, names: &[N]) -> Option<String> {
    let mut kept = String::new();
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(h) = h.to_str() else { continue };
        for pair in h.split(';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            let name = pair.split_once('=').map_or(pair, |(k, _)| k).trim_ascii();
            if names.iter().any(|n| n.as_ref() == name) {
                continue;
            }
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(pair);
        }
    }
    (!kept.is_empty()).then_some(kept)
}

/// What the upstream copy of a request takes from the decision about it
/// (`RequestCtx::edits`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Edits<'a> {
    pub request_id: &'a str,
    /// `X-Edgegate-Workspace`.
    pub workspace: Option<&'a str>,
    /// `X-Edgegate-User`: the verified user.
    pub user: Option<&'a str>,
    pub strip_cookies: CookieStrip,
    pub strip_authorization: bool,
    /// `Host` to send instead of the browser's.
    pub host_header: Option<&'a str>,
    /// Path and query to send instead of the browser's.
    pub upstream_path: Option<&'a str>,
    /// The upstream speaks HTTP/2 (an `h2c` port): the client's `TE: trailers` goes too, the
    /// one `TE` HTTP/2 allows, which gRPC servers ask for.
    pub h2: bool,
}

/// What the upstream request needs from the connection and the config.
pub struct Forwarding<'a> {
    pub client_ip: Option<IpAddr>,
    pub trusted_proxies: &'a [IpNet],
    pub proto: &'static str,
    /// Cookies that never reach a workspace: edgegate's credentials (app session, ide
    /// cookie) and the app's others (`auth.app_cookies`).
    pub credential_cookies: &'a [String],
}

/// Append `ip` in its usual text form; IPv4 without `fmt`, which costs more than the rest of
/// the forwarding headers together. (Also the access log's upstream address.)
pub fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(decimal(octet.into(), &mut [0; 20]));
            }
        }
        std::net::IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// `n` in decimal ASCII digits, written into the end of `buf`, without `fmt`: two digits per
/// division, from a table (the access line writes some forty digits per request).
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    const PAIRS: [u8; 200] = {
        let mut t = [0u8; 200];
        let mut i = 0;
        while i < 100 {
            t[2 * i] = b'0' + (i / 10) as u8;
            t[2 * i + 1] = b'0' + (i % 10) as u8;
            i += 1;
        }
        t
    };
    let mut i = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    &buf[i..]
}

/// Rewrite the upstream copy of the request: edgegate's own headers replace any the client
/// sent, hop-by-hop headers and those the client's `Connection` names are dropped (Pingora's
/// standard upstream policy, applied here), Host stays the browser's unless the route says
/// otherwise, Origin is never touched, a stripped tunnel path replaces the browser's, and the
/// target is in origin-form (RFC 9112 §3.2.1: what a client sends an origin server).
///
/// The headers are edited as a plain `http::HeaderMap`, with room made for edgegate's own in
/// one step, and the result goes upstream without Pingora's record of the client's header-name
/// case: standard names are written in their usual capitalisation, others in lower case (as
/// Envoy and HAProxy send them; names are case-insensitive, RFC 9110 §5.1). Going through
/// Pingora's `insert_header` instead keeps a second map of names in step with the first, and
/// both grew and rehashed while the six headers went in: a profile put that at a tenth of
/// edgegate's cost per request (docs/BENCHMARKS.md).
pub fn rewrite_upstream_request(
    req: &mut RequestHeader,
    edits: &Edits<'_>,
    fwd: &Forwarding<'_>,
) -> pingora::Result<()> {
    let bad =
        |what: &'static str| pingora::Error::explain(pingora::ErrorType::HTTPStatus(400), what);
    // X-Forwarded-Host is the browser's Host as sent (port included): the header's own value
    // when there is one, else the authority of the request target. Routing checked it with
    // `browser_host` (one Host, agreeing with the target) before any rewrite.
    let forwarded_host = match req.headers.get(http::header::HOST) {
        Some(v) => v.clone(),
        None => {
            let host = browser_host(req).map_err(|_| bad("bad host"))?;
            http::HeaderValue::from_str(host).map_err(|_| bad("bad host"))?
        }
    };

    let trusted = fwd
        .client_ip
        .is_some_and(|ip| fwd.trusted_proxies.iter().any(|n| n.contains(ip)));
    let mut xff = Vec::with_capacity(48);
    if trusted {
        for v in req.headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(v) = v.to_str() {
                if !xff.is_empty() {
                    xff.extend_from_slice(b", ");
                }
                xff.extend_from_slice(v.trim_ascii().as_bytes());
            }
        }
    }
    if let Some(ip) = fwd.client_ip {
        if !xff.is_empty() {
            xff.extend_from_slice(b", ");
        }
        push_ip(&mut xff, ip);
    }
    // The target goes upstream in origin-form, from the URI (an absolute-form target's URI
    // holds its path and query; the authority was checked against Host). Bytes that are not
    // UTF-8 are only in Pingora's raw copy, which is set again below.
    let raw_target = (!req.raw_path_is_utf8()).then(|| origin_form(req.raw_path()));
    let end_stream = req.send_end_stream();

    let mut parts: http::request::Parts = std::mem::replace(
        req,
        RequestHeader::from(http::Request::new(()).into_parts().0),
    )
    .into();
    let headers = &mut parts.headers;
    headers
        .try_reserve(ADDED)
        .map_err(|_| bad("too many headers"))?;
    // Duplicate equal lengths (`Content-Length: 5` twice, or `5, 5`) framed the body as one
    // length (Pingora refuses differing ones): one goes upstream (RFC 9110 §8.6).
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let (Some(first), second) = (lengths.next(), lengths.next()) {
        if second.is_some() || first.as_bytes().contains(&b',') {
            let one = first
                .as_bytes()
                .split(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii)
                .and_then(|v| http::HeaderValue::from_bytes(v).ok())
                .ok_or_else(|| bad("bad content-length"))?;
            headers.insert(http::header::CONTENT_LENGTH, one);
        }
    }
    // Hop-by-hop and edgegate's own headers go; most requests carry none, so look before
    // paying a hash-map removal per name.
    let te_trailers = edits.h2
        && headers
            .get_all(http::header::TE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if headers.keys().any(not_forwarded) {
        let named = connection_options(headers).map_err(bad)?;
        // One scan per name removed (usually one or two), and no list of them to allocate.
        while let Some(name) = headers.keys().find(|k| not_forwarded(k)).cloned() {
            headers.remove(&name);
        }
        for name in &named {
            headers.remove(name);
        }
    }
    // A value from the client that is not a header value is the client's error (400); one
    // from a record or from edgegate itself is not (500).
    let value = |s: &str| http::HeaderValue::from_str(s).map_err(|_| bad("bad header value"));
    let own_value = |s: &str| {
        http::HeaderValue::from_str(s).map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InternalError, "bad header value")
        })
    };
    let add = |headers: &mut http::HeaderMap, name: HeaderName, v: http::HeaderValue| {
        headers
            .try_insert(name, v)
            .map(|_| ())
            .map_err(|_| bad("too many headers"))
    };
    if !xff.is_empty() {
        let v = http::HeaderValue::from_bytes(&xff).map_err(|_| bad("bad header value"))?;
        add(headers, X_FORWARDED_FOR, v)?;
    }
    add(
        headers,
        X_FORWARDED_PROTO,
        http::HeaderValue::from_static(fwd.proto),
    )?;
    add(headers, X_FORWARDED_HOST, forwarded_host.clone())?;
    add(headers, X_REQUEST_ID, own_value(edits.request_id)?)?;
    if let Some(id) = edits.workspace {
        add(headers, X_EDGEGATE_WORKSPACE, own_value(id)?)?;
    }
    if let Some(user) = edits.user {
        add(headers, X_EDGEGATE_USER, own_value(user)?)?;
    }
    match edits.strip_cookies {
        CookieStrip::Keep => {}
        CookieStrip::Remove => {
            headers.remove(http::header::COOKIE);
        }
        CookieStrip::Rebuild => match without_cookies(headers, fwd.credential_cookies) {
            Some(rest) => add(headers, http::header::COOKIE, value(&rest)?)?,
            None => {
                headers.remove(http::header::COOKIE);
            }
        },
    }
    if edits.strip_authorization {
        headers.remove(http::header::AUTHORIZATION);
    }
    if te_trailers {
        add(
            headers,
            http::header::TE,
            http::HeaderValue::from_static("trailers"),
        )?;
    }
    if let Some(h) = edits.host_header {
        add(headers, http::header::HOST, own_value(h)?)?;
    } else if !headers.contains_key(http::header::HOST) {
        // An absolute-form request may come without Host; its target's authority was the
        // browser's host, and the origin-form target going upstream no longer carries it.
        add(headers, http::header::HOST, forwarded_host)?;
    }

    let mut out = RequestHeader::from(parts);
    if let Some(raw) = raw_target {
        out.set_raw_path(&raw)?;
    }
    if let Some(end) = end_stream {
        out.set_send_end_stream(end);
    }
    if let Some(p) = edits.upstream_path {
        let uri = http::Uri::try_from(p).map_err(|_| bad("bad upstream path"))?;
        out.set_uri(uri);
    }
    *req = out;
    Ok(())
}

/// A raw (non-UTF-8) target in origin-form: as it is when it starts with `/`; an
/// absolute-form target without its scheme and authority; anything else `/`.
fn origin_form(raw: &[u8]) -> Vec<u8> {
    if raw.starts_with(b"/") {
        return raw.to_vec();
    }
    let after_authority = raw
        .windows(3)
        .position(|w| w == b"://")
        .map(|i| &raw[i + 3..])
        .and_then(|r| {
            r.iter()
                .position(|&b| b == b'/' || b == b'?')
                .map(|i| &r[i..])
        });
    match after_authority {
        Some(rest) if rest.starts_with(b"/") => rest.to_vec(),
        Some(query) => [b"/".as_slice(), query].concat(),
        None => b"/".to_vec(),
    }
}

/// Whether a header of the upstream's response describes only the upstream's connection and
/// Pingora would pass it on: it writes `Connection` and `Date` itself and frames the body by
/// `Transfer-Encoding`/`Content-Length`, but copies `Keep-Alive` (Node and code-server send
/// `timeout=5`, which is not edgegate's idle timeout), `Proxy-Connection` and the rest.
/// `Upgrade` belongs to a 101 and goes only with one.
fn hop_by_hop_response(name: &HeaderName, status: http::StatusCode) -> bool {
    if name == http::header::UPGRADE {
        return status != http::StatusCode::SWITCHING_PROTOCOLS;
    }
    name == http::header::TE || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// The headers the response's `Connection` options name (RFC 9110 §7.6.1), less those the
/// body's framing, Pingora's own or a 101's upgrade need. An option that is not a header name
/// is the upstream's mistake and names nothing.
fn response_connection_options(
    headers: &http::HeaderMap,
    status: http::StatusCode,
) -> Vec<HeaderName> {
    connection_tokens(headers)
        .filter(|o| !o.eq_ignore_ascii_case(b"keep-alive") && !o.eq_ignore_ascii_case(b"close"))
        .filter_map(|o| HeaderName::from_bytes(o).ok())
        .filter(|n| {
            let needed = match n.as_str() {
                "content-length" | "transfer-encoding" | "connection" | "date" | "x-request-id" => {
                    true
                }
                "upgrade" => status == http::StatusCode::SWITCHING_PROTOCOLS,
                _ => false,
            };
            !needed
        })
        .collect()
}

/// What a workspace's response may set in the browser (SPEC §8): workspace content runs on a
/// sibling of the app's host (or, tunnelled, on the app's own origin), so
///
/// - a `Set-Cookie` with a `Domain` attribute (a cookie for every sibling, the app's included),
///   one named like edgegate's or the app's cookies (`protected`), and on a tunnel a
///   `__Host-` one, is dropped: a workspace could otherwise replace the victim's session with
///   its owner's and sign the victim's browser into that owner's workspace;
/// - on a tunnel every cookie's `Path` is the tunnel's prefix, so the app's own cookies and
///   other tunnels' stay out of reach;
/// - `Clear-Site-Data` is dropped (its `cookies` directive logs the user out of the app);
/// - on a tunnel `Service-Worker-Allowed` is dropped: a worker registered with scope `/` would
///   serve every page of the app's origin, long after the tunnel (and the session) are gone.
///
/// The app's own responses (`Content::App`) pass untouched.
pub fn confine_response(
    resp: &mut ResponseHeader,
    content: &crate::upstream::Content,
    protected: &[String],
) -> pingora::Result<()> {
    use crate::upstream::Content;
    let tunnel = match content {
        Content::App => return Ok(()),
        Content::Workspace => None,
        Content::Tunnel(prefix) => Some(prefix.as_str()),
    };
    let (mut cookies, mut clear, mut worker) = (false, false, false);
    for name in resp.headers.keys() {
        cookies |= name == http::header::SET_COOKIE;
        clear |= name.as_str() == "clear-site-data";
        worker |= name.as_str() == "service-worker-allowed";
    }
    if clear {
        resp.remove_header("clear-site-data");
    }
    if worker && tunnel.is_some() {
        resp.remove_header("service-worker-allowed");
    }
    if !cookies {
        return Ok(());
    }
    let set: Vec<http::HeaderValue> = resp
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    resp.remove_header(&http::header::SET_COOKIE);
    for value in set {
        match confine_cookie(&value, tunnel, protected) {
            Some(kept) => resp.append_header(http::header::SET_COOKIE, kept)?,
            None => {
                log::debug!("dropped a Set-Cookie a workspace may not set");
                false
            }
        };
    }
    Ok(())
}

/// One `Set-Cookie` as a workspace may set it, or `None` when it may not.
fn confine_cookie(
    value: &http::HeaderValue,
    tunnel: Option<&str>,
    protected: &[String],
) -> Option<http::HeaderValue> {
    let text = value.to_str().ok()?;
    let mut parts = text.split(';');
    let pair = parts.next()?.trim();
    let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
    if name.is_empty()
        || protected.iter().any(|p| p == name)
        || (tunnel.is_some() && name.starts_with("__Host-"))
    {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 24);
    out.push_str(pair);
    for attr in parts {
        let attr = attr.trim();
        let key = attr.split_once('=').map_or(attr, |(k, _)| k).trim();
        if key.eq_ignore_ascii_case("domain") {
            return None;
        }
        if tunnel.is_some() && key.eq_ignore_ascii_case("path") {
            continue;
        }
        if !attr.is_empty() {
            out.push_str("; ");
            out.push_str(attr);
        }
    }
    if let Some(prefix) = tunnel {
        out.push_str("; Path=");
        out.push_str(prefix);
    }
    http::HeaderValue::from_str(&out).ok()
}

/// `X-Request-Id` on the upstream's response, so a client report can be matched with both
/// sides' logs, and the upstream's hop-by-hop headers taken off. Edited as a plain
/// `http::HeaderMap`, for the reason `rewrite_upstream_request` gives: the response then goes
/// to the client without the upstream's header-name case.
pub fn set_response_request_id(resp: &mut ResponseHeader, id: &str) -> pingora::Result<()> {
    let bad = |what: &'static str| pingora::Error::explain(pingora::ErrorType::InternalError, what);
    let value = http::HeaderValue::from_str(id).map_err(|_| bad("bad request id"))?;
    // A reason phrase other than the status's usual one is kept.
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let mut parts: http::response::Parts = std::mem::replace(
        resp,
        ResponseHeader::from(http::Response::new(()).into_parts().0),
    )
    .into();
    let status = parts.status;
    // Most upstreams send `Connection: keep-alive` and nothing else hop-by-hop: one pass over
    // the headers before anything is parsed or removed.
    let mut names_options = false;
    let mut hop_by_hop = false;
    for (name, value) in &parts.headers {
        if name == http::header::CONNECTION {
            names_options |= !value.as_bytes().eq_ignore_ascii_case(b"keep-alive");
        } else if hop_by_hop_response(name, status) {
            hop_by_hop = true;
        }
    }
    if names_options {
        for name in response_connection_options(&parts.headers, status) {
            parts.headers.remove(&name);
        }
    }
    if hop_by_hop {
        while let Some(name) = parts
            .headers
            .keys()
            .find(|k| hop_by_hop_response(k, status))
            .cloned()
        {
            parts.headers.remove(&name);
        }
    }
    parts
        .headers
        .try_insert(X_REQUEST_ID, value)
        .map_err(|_| bad("too many headers"))?;
    let mut out = ResponseHeader::from(parts);
    if reason.is_some() {
        out.set_reason_phrase(reason.as_deref())?;
    }
    *resp = out;
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
            let mut s = b"x ".to_vec();
            push_ip(&mut s, ip);
            assert_eq!(s, format!("x {ip}").into_bytes());
        }
        let edges = [
            0u64,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            65535,
            1_795_472_551,
            u64::MAX,
        ];
        for n in (0..=100_000).chain(edges) {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    fn try_rewritten(target: &[u8], headers: &[(&str, &str)]) -> pingora::Result<RequestHeader> {
        let mut req = RequestHeader::build("GET", target, None).expect("req");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        let edits = Edits {
            request_id: "0123456789abcdef01234567",
            ..Edits::default()
        };
        let fwd = Forwarding {
            client_ip: "10.1.2.3".parse().ok(),
            trusted_proxies: &[],
            proto: "http",
            credential_cookies: &["session".to_string(), "edgegate_ide".to_string()],
        };
        rewrite_upstream_request(&mut req, &edits, &fwd).map(|_| req)
    }

    fn rewritten(target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        try_rewritten(target, headers).expect("rewrite")
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_stay_on_the_clients_hop() {
        let req = rewritten(
            b"/p",
            &[
                ("Host", "a.test"),
                ("Connection", "keep-alive, X-Hop-A"),
                ("connection", " x-hop-b ,close,, Cookie"),
                ("X-Hop-A", "1"),
                ("X-Hop-B", "2"),
                ("Cookie", "theme=dark"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Proxy-Authorization", "Basic c2VjcmV0"),
                ("Proxy-Authenticate", "Basic"),
                ("TE", "trailers"),
                ("Trailer", "X-Sum"),
                ("Transfer-Encoding", "chunked"),
                ("Upgrade", "websocket"),
                ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
                ("X-Kept", "yes"),
                ("Accept", "*/*"),
            ],
        );
        for gone in [
            "connection",
            "x-hop-a",
            "x-hop-b",
            "cookie",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
        ] {
            assert!(req.headers.get(gone).is_none(), "{gone} went upstream");
        }
        assert_eq!(req.headers["x-kept"], "yes");
        assert_eq!(req.headers["accept"], "*/*");
        assert_eq!(req.headers["host"], "a.test");

        // `close` alone names nothing; the rest of the request is untouched.
        let req = rewritten(
            b"/p",
            &[("Host", "a.test"), ("Connection", "close"), ("X-Kept", "1")],
        );
        assert!(req.headers.get("connection").is_none());
        assert_eq!(req.headers["x-kept"], "1");
    }

    #[test]
    fn connection_options_that_pingoras_policy_refuses_are_400() {
        let ten = (0..10)
            .map(|i| format!("x-o{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        for bad in [
            "X-Forwarded-For",
            "keep-alive, x-forwarded-host",
            "X-Forwarded-Proto",
            "Host",
            "\"x-a\"",
            ":authority",
            "x-a;b",
            ten.as_str(),
        ] {
            let e = try_rewritten(b"/", &[("Host", "a.test"), ("Connection", bad)]).expect_err(bad);
            assert_eq!(e.etype(), &pingora::ErrorType::HTTPStatus(400), "{bad}");
        }
        let nine = (0..9)
            .map(|i| format!("x-o{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(try_rewritten(b"/", &[("Host", "a.test"), ("Connection", &nine)]).is_ok());
    }

    #[test]
    fn upstream_targets_are_origin_form_and_non_utf8_bytes_survive() {
        let req = rewritten(b"http://a.test:8080/x?y=1", &[("Host", "a.test:8080")]);
        assert_eq!(req.raw_path(), b"/x?y=1");
        assert_eq!(req.headers["x-forwarded-host"], "a.test:8080");
        let req = rewritten(b"/caf\xe9/d?q=\xff", &[("Host", "a.test")]);
        assert_eq!(req.raw_path(), b"/caf\xe9/d?q=\xff");
        let req = rewritten(b"http://a.test/caf\xe9?q=1", &[("Host", "a.test")]);
        assert_eq!(
            req.raw_path(),
            b"/caf\xe9?q=1",
            "absolute-form, not UTF-8: origin-form"
        );
        // No Host header: the target's authority becomes the upstream's Host.
        let req = rewritten(b"http://b.test:81/x", &[]);
        assert_eq!(req.raw_path(), b"/x");
        assert_eq!(req.headers["host"], "b.test:81");
        assert_eq!(req.headers["x-forwarded-host"], "b.test:81");
    }

    #[test]
    fn upstream_headers_keep_their_values_and_order() {
        let req = rewritten(
            b"/p",
            &[
                ("Host", "a.test"),
                ("X-Custom-Thing", "One"),
                ("x-custom-thing", "Two"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("Accept", "text/html"),
            ],
        );
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).expect("ascii");
        // Names compared in lower case: which standard names Pingora capitalises is its own.
        let lines: Vec<String> = wire
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((n, v)) => format!("{}:{v}", n.to_ascii_lowercase()),
                None => l.to_string(),
            })
            .collect();
        assert_eq!(
            lines,
            [
                "host: a.test",
                "x-custom-thing: One",
                "x-custom-thing: Two",
                "accept: text/html",
                "x-forwarded-for: 10.1.2.3",
                "x-forwarded-proto: http",
                "x-forwarded-host: a.test",
                &format!(
                    "x-request-id: {}",
                    req.headers["x-request-id"].to_str().expect("id")
                ),
            ]
        );
    }

    #[test]
    fn response_request_id_keeps_a_custom_reason_phrase() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.append_header("X-Up", "1").expect("h");
        resp.set_reason_phrase(Some("Fine")).expect("reason");
        set_response_request_id(&mut resp, "01ABC").expect("set");
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        assert_eq!(resp.headers["x-request-id"], "01ABC");
        assert_eq!(resp.headers["x-up"], "1");
        let mut plain = ResponseHeader::build(404, None).expect("resp");
        set_response_request_id(&mut plain, "01ABC").expect("set");
        assert_eq!(plain.get_reason_phrase(), Some("Not Found"));
    }

    #[test]
    fn the_upstreams_hop_by_hop_response_headers_stop_here() {
        let response = |status: u16, headers: &[(&str, &str)]| {
            let mut resp = ResponseHeader::build(status, None).expect("resp");
            for (k, v) in headers {
                resp.append_header(k.to_string(), *v).expect("h");
            }
            set_response_request_id(&mut resp, "01ABC").expect("set");
            let mut names: Vec<_> = resp.headers.keys().map(|k| k.as_str().to_owned()).collect();
            names.sort();
            names
        };
        let hop = [
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            (
                "Connection",
                "Upgrade, X-Hop, Content-Length, x-request-id, \"bad\"",
            ),
            ("X-Hop", "1"),
            ("Content-Length", "2"),
            ("X-Kept", "1"),
        ];
        assert_eq!(
            response(200, &hop),
            ["connection", "content-length", "x-kept", "x-request-id"],
            "Pingora rewrites Connection; the framing stays"
        );
        assert_eq!(
            response(101, &[("Upgrade", "websocket"), ("Connection", "Upgrade")]),
            ["connection", "upgrade", "x-request-id"],
            "a 101 keeps its Upgrade"
        );
        assert_eq!(
            response(200, &[("Connection", "keep-alive"), ("X-Kept", "1")]),
            ["connection", "x-kept", "x-request-id"]
        );
    }

    #[test]
    fn workspace_responses_cannot_set_what_reaches_beyond_them() {
        use crate::upstream::Content;
        let protected = ["session".to_string(), "edgegate_ide".to_string()];
        let confined = |content: &Content, headers: &[(&str, &str)]| {
            let mut resp = ResponseHeader::build(200, None).expect("resp");
            for (k, v) in headers {
                resp.append_header(k.to_string(), *v).expect("h");
            }
            confine_response(&mut resp, content, &protected).expect("confine");
            let mut out: Vec<String> = resp
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().expect("ascii")))
                .collect();
            out.sort();
            out
        };
        let sent = [
            ("Set-Cookie", "theme=dark; Path=/; HttpOnly"),
            ("Set-Cookie", "session=attacker; Path=/; HttpOnly"),
            ("Set-Cookie", "wide=1; Domain=example.test; Path=/"),
            ("Set-Cookie", "wide2=1; path=/; DOMAIN=.example.test"),
            ("Set-Cookie", "__Host-x=1; Path=/; Secure"),
            ("Set-Cookie", "edgegate_ide=forged"),
            ("Clear-Site-Data", "\"cookies\""),
            ("Service-Worker-Allowed", "/"),
            ("X-Kept", "1"),
        ];
        assert_eq!(
            confined(&Content::Workspace, &sent),
            [
                "service-worker-allowed: /",
                "set-cookie: __Host-x=1; Path=/; Secure",
                "set-cookie: theme=dark; Path=/; HttpOnly",
                "x-kept: 1",
            ]
        );
        assert_eq!(
            confined(&Content::Tunnel("/__ide/01A/".into()), &sent),
            [
                "set-cookie: theme=dark; HttpOnly; Path=/__ide/01A/",
                "x-kept: 1",
            ]
        );
        assert_eq!(
            confined(&Content::App, &sent).len(),
            sent.len(),
            "the app's own pass"
        );
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
            ("\u{e9}.test", Err(GatewayError::BadHost)),
            ("A\u{0}.test", Err(GatewayError::BadHost)),
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
    fn owned_and_hop_by_hop_headers_go_in_every_spelling() {
        let req = rewritten(
            b"/p",
            &[
                ("Host", "a.test"),
                ("X_Edgegate_User", "mallory"),
                ("X-Edgegate_User", "mallory"),
                ("x--edgegate--workspace", "01J0AAAAAAAAAAAAAAAAAAAAAB"),
                ("X_Forwarded_For", "6.6.6.6"),
                ("x-forwarded_host", "evil.test"),
                ("X-Real_IP", "6.6.6.6"),
                ("Proxy", "http://evil.test:1"),
                ("-x-request-id-", "forged"),
                ("X-Kept_Header", "yes"),
            ],
        );
        let names: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "host",
                "x-kept_header",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-request-id"
            ],
            "only edgegate's own copies, and the unrelated header"
        );
        assert_eq!(req.headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(req.headers["x-forwarded-host"], "a.test");
    }

    #[test]
    fn framing_headers_in_other_spellings_are_400() {
        let check = |target: &[u8], headers: &[(&str, &str)]| {
            let mut req = RequestHeader::build("POST", target, None).expect("req");
            for (k, v) in headers {
                req.append_header(k.to_string(), *v).expect("header");
            }
            check_framing(&req)
        };
        for name in [
            "Transfer_Encoding",
            "Content_Length",
            "Transfer---Encoding",
            "content--length",
            "_Content-Length",
            "Transfer-Encoding_",
        ] {
            assert_eq!(
                check(b"/", &[(name, "chunked")]),
                Err(GatewayError::BadFraming),
                "{name}"
            );
        }
        assert_eq!(check(b"/", &[("Content-Length", "5")]), Ok(()));
        assert_eq!(check(b"/", &[("X_Custom", "1")]), Ok(()));
    }

    #[test]
    fn equal_duplicate_lengths_go_upstream_as_one() {
        for lengths in [&["5", "5"][..], &["5, 5"], &["5,5", "5"]] {
            let mut headers = vec![("Host", "a.test")];
            headers.extend(lengths.iter().map(|l| ("Content-Length", *l)));
            let req = rewritten(b"/p", &headers);
            let got: Vec<_> = req.headers.get_all("content-length").iter().collect();
            assert_eq!(got, ["5"], "{lengths:?}");
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
}
