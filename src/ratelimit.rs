//! Rate limits (issue #18), per instance: token minting and the IDE bootstrap per client
//! address (IPv6 by /64, the smallest block a client is usually given), and proxied requests
//! and WebSocket upgrades per verified user. GCRA (`governor`): a burst, then a steady rate.
//! A refusal is 429 `rate_limited` with `Retry-After`, counted in
//! `edgegate_rate_limited_total{scope}`.
//!
//! Each limiter's map is bounded: every `SWEEP_EVERY` checks it counts its keys, drops those
//! back at full allowance (`retain_recent`), and if it is still over `cache.max_entries`
//! starts afresh (every key back at its full burst: a client cannot grow the map, and the
//! worst it can do by spraying addresses is reset the limits it is subject to).

use crate::config::{Config, RateLimitsConfig};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::net::IpNet;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Checks between two counts of a limiter's keys.
const SWEEP_EVERY: u32 = 1024;

/// One keyed limiter and its bound.
struct Keyed<K: Hash + Eq + Clone> {
    quota: Quota,
    limiter: RwLock<DefaultKeyedRateLimiter<K>>,
    clock: DefaultClock,
    max_keys: usize,
    checks: AtomicU32,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(quota: Quota, max_keys: usize) -> Self {
        Keyed {
            quota,
            limiter: RwLock::new(DefaultKeyedRateLimiter::keyed(quota)),
            clock: DefaultClock::default(),
            max_keys,
            checks: AtomicU32::new(0),
        }
    }

    /// `Err(seconds to wait)` when `key` is over its rate.
    fn check(&self, key: &K) -> Result<(), u32> {
        let verdict = {
            let limiter = self.limiter.read().unwrap_or_else(|p| p.into_inner());
            limiter.check_key(key).map_err(|not| {
                let wait = not.wait_time_from(self.clock.now());
                u32::try_from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
                    .unwrap_or(u32::MAX)
                    .max(1)
            })
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        verdict
    }

    fn sweep(&self) {
        let limiter = self.limiter.read().unwrap_or_else(|p| p.into_inner());
        if limiter.len() <= self.max_keys {
            return;
        }
        limiter.retain_recent();
        limiter.shrink_to_fit();
        if limiter.len() <= self.max_keys {
            return;
        }
        drop(limiter);
        log::warn!(
            "rate limiter over {} keys after dropping idle ones: starting afresh",
            self.max_keys
        );
        *self.limiter.write().unwrap_or_else(|p| p.into_inner()) =
            DefaultKeyedRateLimiter::keyed(self.quota);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The limiters of one gateway.
pub struct RateLimits {
    endpoints: Option<Keyed<IpAddr>>,
    users: Option<Keyed<u64>>,
    metrics: Arc<Metrics>,
}

fn quota(per: Duration, count: u32, burst: u32) -> Option<Quota> {
    let count = NonZeroU32::new(count)?;
    let burst = NonZeroU32::new(burst).unwrap_or(count);
    Quota::with_period(per / count.get()).map(|q| q.allow_burst(burst))
}

impl RateLimits {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> RateLimits {
        let rl: &RateLimitsConfig = &config.rate_limits;
        let max = config.cache.max_entries;
        RateLimits {
            endpoints: quota(
                Duration::from_secs(60),
                rl.endpoints_per_minute,
                rl.endpoints_burst,
            )
            .map(|q| Keyed::new(q, max)),
            users: quota(
                Duration::from_secs(1),
                rl.user_requests_per_second,
                rl.user_burst,
            )
            .map(|q| Keyed::new(q, max)),
            metrics,
        }
    }

    /// A token-minting or bootstrap request from `client`.
    pub fn endpoint(&self, client: Option<IpAddr>) -> Result<(), GatewayError> {
        let (Some(limiter), Some(ip)) = (&self.endpoints, client) else {
            return Ok(());
        };
        limiter.check(&address_key(ip)).map_err(|secs| {
            self.metrics
                .rate_limited
                .with_label_values(&["endpoint"])
                .inc();
            GatewayError::RateLimited(secs)
        })
    }

    /// A proxied request (or WebSocket upgrade) of the verified `user`.
    pub fn user(&self, user: &str) -> Result<(), GatewayError> {
        let Some(limiter) = &self.users else {
            return Ok(());
        };
        limiter.check(&crate::stable_hash(&user)).map_err(|secs| {
            self.metrics.rate_limited.with_label_values(&["user"]).inc();
            GatewayError::RateLimited(secs)
        })
    }
}

/// The key of a client address: IPv4 as is, IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// The client's address: the connection's peer, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not one (the proxies append; whatever the
/// client wrote is further left and never chosen over a hop a trusted proxy added).
pub fn client_address(
    peer: Option<IpAddr>,
    req: &pingora::http::RequestHeader,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return Some(ip),
            // Something unparseable where an address should be: stop at the last good hop.
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_with_a_retry_after() {
        let k = Keyed::new(quota(Duration::from_secs(60), 6, 3).expect("quota"), 100);
        for _ in 0..3 {
            assert_eq!(k.check(&1u64), Ok(()));
        }
        let wait = k.check(&1u64).expect_err("over the burst");
        assert!((1..=10).contains(&wait), "one more every 10 s: {wait}");
        assert_eq!(k.check(&2u64), Ok(()), "per key");
        assert!(quota(Duration::from_secs(1), 0, 5).is_none(), "0: off");
    }

    #[test]
    fn the_map_stays_bounded_however_many_keys() {
        let k = Keyed::new(quota(Duration::from_secs(60), 1, 1).expect("quota"), 100);
        for i in 0..5 * SWEEP_EVERY as u64 {
            let _ = k.check(&i);
        }
        assert!(k.len() <= 100 + SWEEP_EVERY as usize, "{}", k.len());
    }

    #[test]
    fn addresses_key_by_v4_or_v6_64_and_trusted_proxies_are_seen_through() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(address_key(ip("10.0.0.1")), ip("10.0.0.1"));

        let trusted = [IpNet::parse("10.0.0.0/8").expect("net")];
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).expect("req");
        req.append_header("x-forwarded-for", "6.6.6.6, 1.2.3.4")
            .expect("h");
        req.append_header("x-forwarded-for", "10.0.0.9").expect("h");
        assert_eq!(
            client_address(Some(ip("10.0.0.1")), &req, &trusted),
            Some(ip("1.2.3.4")),
            "the nearest untrusted hop, not what the client wrote further left"
        );
        assert_eq!(
            client_address(Some(ip("9.9.9.9")), &req, &trusted),
            Some(ip("9.9.9.9")),
            "an untrusted peer's header is ignored"
        );
    }
}
