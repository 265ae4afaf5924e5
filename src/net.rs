//! Addresses as data: IP networks, the upstream address policy (SPEC §8: backends are reached
//! only where the operator allowed) and upstream addresses as records and the config write
//! them. `IpNet` parses `listen.trusted_proxies` and the `upstream.*_networks` lists;
//! `AddressPolicy` is asked for every address a workspace or dev record resolved to, before
//! anything connects to it; `UpstreamAddr` parses `backend`/`target` and `[default] upstream`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// An IP network (`10.0.0.0/8`, `::1`, `fe80::/10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Whether `ip` is in this network; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts
    /// as its IPv4 address.
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

/// Parse a list of networks from config; the error names the entry (`field[i]`).
pub fn parse_list(field: &str, list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            IpNet::parse(s).ok_or_else(|| format!("{field}[{i}]: {s:?} is not an IP or CIDR"))
        })
        .collect()
}

/// The networks a record's upstream may not resolve into by default: where the gateway's own
/// host, its neighbours' link-local services and the clouds' instance metadata live. A
/// workspace record naming one of them (or a DNS name resolving into one) would turn the
/// gateway into a door to them.
pub const DEFAULT_BLOCKED: &[&str] = &[
    // This host: loopback and "this network".
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    // Link-local, which holds 169.254.169.254 (AWS, GCP, Azure, OpenStack, Oracle metadata).
    "169.254.0.0/16",
    "fe80::/10",
    // Metadata services outside link-local: AWS over IPv6, Alibaba Cloud.
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    // Multicast and broadcast never name one backend.
    "224.0.0.0/4",
    "ff00::/8",
    "255.255.255.255/32",
];

/// Which resolved addresses a record's upstream may have: anything outside `blocked`, and
/// anything inside `allowed` (the operator's exceptions, e.g. loopback for local runs).
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    blocked: Vec<IpNet>,
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(blocked: Vec<IpNet>, allowed: Vec<IpNet>) -> Self {
        Self { blocked, allowed }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.blocked.iter().any(|n| n.contains(ip)) || self.allowed.iter().any(|n| n.contains(ip))
    }
}

/// An upstream as a record or the config names it, before any name is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamHost {
    Ip(IpAddr),
    /// A lower-cased DNS name, resolved by `Resolver`.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    pub host: UpstreamHost,
    pub port: u16,
}

impl UpstreamAddr {
    /// Parse `ip`, `ip:port`, `[v6]:port`, `host` or `host:port`; `default_port` when absent.
    pub fn parse(s: &str, default_port: u16) -> Result<UpstreamAddr, &'static str> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self::ip(sa.ip(), sa.port()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::ip(ip, default_port));
        }
        if let Some(v6) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let ip = v6
                .parse::<IpAddr>()
                .map_err(|_| "is not a valid IPv6 address")?;
            return Ok(Self::ip(ip, default_port));
        }
        let (name, port) = match s.rsplit_once(':') {
            Some((n, p)) => (n, p.parse::<u16>().map_err(|_| "has a bad port")?),
            None => (s, default_port),
        };
        if port == 0 {
            return Err("has port 0");
        }
        if !is_dns_name(name) {
            return Err("is not an ip, ip:port, host or host:port");
        }
        Ok(UpstreamAddr {
            host: UpstreamHost::Name(name.to_ascii_lowercase()),
            port,
        })
    }

    fn ip(ip: IpAddr, port: u16) -> UpstreamAddr {
        UpstreamAddr {
            host: UpstreamHost::Ip(ip),
            port,
        }
    }

    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
}

impl fmt::Display for UpstreamAddr {
    /// The `Host` header form: `host:port`, `[v6]:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            UpstreamHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            UpstreamHost::Ip(ip) => write!(f, "{ip}:{}", self.port),
            UpstreamHost::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forms_table() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("10.0.0.5", Ok("10.0.0.5:8080")),
            ("10.0.0.5:3000", Ok("10.0.0.5:3000")),
            ("[::1]:9000", Ok("[::1]:9000")),
            ("::1", Ok("[::1]:8080")),
            ("[::1]", Ok("[::1]:8080")),
            ("VM-01abc.Example.test", Ok("vm-01abc.example.test:8080")),
            ("vm.example.test:81", Ok("vm.example.test:81")),
            ("vm.example.test:0", Err(())),
            ("vm.example.test:99999", Err(())),
            ("vm..example", Err(())),
            ("-vm.example", Err(())),
            ("vm example", Err(())),
            ("http://vm", Err(())),
            ("", Err(())),
        ];
        for (raw, want) in cases {
            let got = UpstreamAddr::parse(raw, 8080)
                .map(|a| a.to_string())
                .map_err(|_| ());
            assert_eq!(got, want.map(str::to_string), "{raw:?}");
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn trusted_proxy_networks() {
        let net = IpNet::parse("10.0.0.0/8").expect("net");
        assert!(net.contains(ip("10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.0.0.1")));
        let one = IpNet::parse("127.0.0.1").expect("net");
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let v6 = IpNet::parse("fd00::/8").expect("net");
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("nope").is_none());
    }

    #[test]
    fn the_default_policy_refuses_this_host_link_local_and_metadata() {
        let blocked: Vec<String> = DEFAULT_BLOCKED.iter().map(|s| s.to_string()).collect();
        let policy = AddressPolicy::new(parse_list("b", &blocked).expect("defaults parse"), vec![]);
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!policy.permits(ip(bad)), "{bad} must be refused");
        }
        for good in [
            "10.0.0.5",
            "192.168.1.10",
            "172.16.0.1",
            "fd12::5",
            "100.64.0.1",
        ] {
            assert!(policy.permits(ip(good)), "{good} must be allowed");
        }
        let local = AddressPolicy::new(
            parse_list("b", &blocked).expect("defaults parse"),
            parse_list("a", &["127.0.0.0/8".to_string()]).expect("parse"),
        );
        assert!(local.permits(ip("127.0.0.1")));
        assert!(!local.permits(ip("169.254.169.254")));
        assert_eq!(
            parse_list("upstream.allowed_networks", &["x".into()]).unwrap_err(),
            "upstream.allowed_networks[0]: \"x\" is not an IP or CIDR"
        );
    }
}
