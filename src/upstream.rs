//! Upstream addresses (parsed by `net::UpstreamAddr`): resolving names asynchronously with a cache (never Pingora's blocking
//! `HttpPeer::new` resolution, which panics on failure), and building the per-request
//! `HttpPeer` in `upstream_peer` with its own `group_key`, so two workspaces never share a
//! pooled connection even behind one address.

use crate::config::UpstreamConfig;
use crate::error::GatewayError;
pub use crate::net::{UpstreamAddr, UpstreamHost};
use crate::route::cache::Cache;
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Asynchronous name resolution with a positive and a negative cache.
pub struct Resolver {
    cache: Cache<Option<IpAddr>>,
    ttl: Duration,
    negative_ttl: Duration,
    timeout: Duration,
}

impl Resolver {
    pub fn new(ttl: Duration, negative_ttl: Duration, timeout: Duration, max: usize) -> Self {
        Self {
            cache: Cache::new(max),
            ttl,
            negative_ttl,
            timeout,
        }
    }

    pub async fn resolve(&self, addr: &UpstreamAddr) -> Result<SocketAddr, GatewayError> {
        let name = match &addr.host {
            UpstreamHost::Ip(ip) => return Ok(SocketAddr::new(*ip, addr.port)),
            UpstreamHost::Name(n) => n,
        };
        let (ip, _) = self
            .cache
            .get_or_fetch(name, |_| async {
                let found =
                    tokio::time::timeout(self.timeout, tokio::net::lookup_host((name.as_str(), 0)))
                        .await;
                match found {
                    Ok(Ok(mut addrs)) => match addrs.next() {
                        Some(sa) => (Some(sa.ip()), Some(self.ttl)),
                        None => (None, Some(self.negative_ttl)),
                    },
                    Ok(Err(e)) => {
                        log::warn!("cannot resolve upstream {name}: {e}");
                        (None, Some(self.negative_ttl))
                    }
                    Err(_) => {
                        log::warn!("resolving upstream {name} timed out");
                        (None, Some(Duration::ZERO))
                    }
                }
            })
            .await;
        ip.map(|ip| SocketAddr::new(ip, addr.port))
            .ok_or(GatewayError::UpstreamUnresolvable)
    }
}

/// Where one request goes: decided in `request_filter`, kept in the request's CTX, turned into
/// a peer in `upstream_peer`. Nothing of it lives anywhere else.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Pool isolation: derived from the route's record key and the address.
    pub group_key: u64,
    /// `Host` to send instead of the browser's (routes with `preserve_host = false`).
    pub host_header: Option<String>,
    /// Path and query to send instead of the browser's (stripped tunnel prefix).
    pub upstream_path: Option<String>,
    /// TLS to the upstream: the SNI (and name verified), and whether to verify.
    pub tls: Option<UpstreamTls>,
    /// On whose origin the upstream's responses land (what they may set there).
    pub content: Content,
    /// Speak HTTP/2 without TLS (a port with `protocol = "h2c"`, for gRPC).
    pub h2c: bool,
}

/// Where an upstream's responses are rendered, and so what they may set in the browser
/// (`headers::confine_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The app API (`[default]`): its responses are its own.
    App,
    /// A workspace on a host of its own, a sibling of the app's: it may not set cookies for
    /// the whole domain, nor the app's, nor clear the site's data.
    Workspace,
    /// A workspace tunnelled under a prefix of the app's own origin: as `Workspace`, and its
    /// cookies and service workers are confined to that prefix.
    Tunnel(String),
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
}

/// A pool key per workspace record and address: SipHash with fixed keys, so the same
/// workspace maps to the same pool across requests and threads.
pub fn group_key(scope: &str, addr: &SocketAddr) -> u64 {
    crate::stable_hash(&(scope, addr))
}

/// The peer for one request. Upgrades get the WebSocket idle timeout as their read timeout,
/// since an idle socket is not a slow response.
pub fn peer(target: &Target, cfg: &UpstreamConfig, is_upgrade: bool) -> Box<HttpPeer> {
    let (tls, sni) = match &target.tls {
        Some(t) => (true, t.sni.clone()),
        None => (false, String::new()),
    };
    let mut peer = HttpPeer::new(target.addr, tls, sni);
    peer.group_key = target.group_key;
    let o = &mut peer.options;
    if let Some(t) = &target.tls {
        o.verify_cert = t.verify;
        o.verify_hostname = t.verify;
        // WebSockets and these HTTP/1 semantics stay on HTTP/1.1 upstream.
        o.set_http_version(1, 1);
    }
    if target.h2c {
        // Prior knowledge: there is no ALPN without TLS (Pingora trusts the caller here).
        o.set_http_version(2, 2);
    }
    o.connection_timeout = Some(Duration::from_millis(cfg.connect_timeout_ms));
    o.write_timeout = Some(Duration::from_millis(cfg.write_timeout_ms));
    // 0: no timer; an idle connection stays until the upstream closes it or the pool's LRU
    // evicts it.
    o.idle_timeout =
        (cfg.pool_idle_timeout_ms > 0).then(|| Duration::from_millis(cfg.pool_idle_timeout_ms));
    o.read_timeout = Some(if is_upgrade {
        Duration::from_secs(cfg.ws_idle_timeout_secs)
    } else {
        Duration::from_millis(cfg.read_timeout_ms)
    });
    // Pingora's standard policy strips hop-by-hop and `Connection`-named headers with a
    // removal (two hash lookups) per possible name on every request, ~3.4k instructions.
    // `headers::rewrite_upstream_request` applies the same policy in the pass it already makes
    // over the names, so Pingora passes the request through as that filter left it.
    o.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
    Box::new(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_key_differs_per_workspace_behind_one_address() {
        let addr: SocketAddr = "10.0.0.1:8080".parse().expect("addr");
        assert_ne!(
            group_key("workspace:A", &addr),
            group_key("workspace:B", &addr)
        );
        assert_eq!(
            group_key("workspace:A", &addr),
            group_key("workspace:A", &addr)
        );
    }

    #[test]
    fn a_pool_idle_timeout_of_zero_arms_no_timer() {
        let target = Target {
            addr: "10.0.0.1:8080".parse().expect("addr"),
            group_key: 1,
            host_header: None,
            upstream_path: None,
            tls: None,
            content: Content::Workspace,
            h2c: false,
        };
        let mut cfg = UpstreamConfig::default();
        assert_eq!(
            peer(&target, &cfg, false).options.idle_timeout,
            Some(Duration::from_secs(60))
        );
        cfg.pool_idle_timeout_ms = 0;
        assert_eq!(peer(&target, &cfg, false).options.idle_timeout, None);
    }

    #[tokio::test]
    async fn unresolvable_name_is_an_error_not_a_panic() {
        let r = Resolver::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(2),
            10,
        );
        let addr = UpstreamAddr::parse("no-such-host.invalid", 80).expect("parse");
        assert_eq!(
            r.resolve(&addr).await,
            Err(GatewayError::UpstreamUnresolvable)
        );
        let local = UpstreamAddr::parse("localhost:81", 80).expect("parse");
        let sa = r.resolve(&local).await.expect("localhost resolves");
        assert!(sa.ip().is_loopback());
        assert_eq!(sa.port(), 81);
    }
}
