//! The runtime parts of a validated `Config`, built in one place: the route table, the auth
//! keys, the TLS certificate resolvers, the trusted proxies and the upstream address policy.
//! `edgegate check` builds them to say whether a config would run (every file it names is
//! read here); `build_gateway` and `build_server` build them to run it.

use crate::auth::Auth;
use crate::config::{Config, ConfigError};
use crate::net::{AddressPolicy, IpNet};
use crate::route::RouteTable;
use crate::tls::SniResolver;
use std::sync::Arc;

pub struct Runtime {
    pub routes: RouteTable,
    pub auth: Auth,
    /// One certificate resolver per `[[listen.tls]]`, in order.
    pub tls: Vec<Arc<SniResolver>>,
    pub trusted_proxies: Vec<IpNet>,
    pub address_policy: AddressPolicy,
    /// How refusals look (the operator's page template, read here).
    pub pages: crate::error::Pages,
    /// `[ports]`: sharing ports on the content site.
    pub ports: crate::ports::PortRules,
}

impl Runtime {
    /// Build from a validated config; errors name the field (`listen.tls[0].certs[1].key_file`).
    pub fn build(config: &Config) -> Result<Runtime, ConfigError> {
        let networks =
            |field: &str, list: &[String]| crate::net::parse_list(field, list).map_err(ConfigError);
        Ok(Runtime {
            routes: RouteTable::new(config)?,
            auth: Auth::new(config)?,
            ports: crate::ports::PortRules::new(config)?,
            tls: config
                .listen
                .tls
                .iter()
                .enumerate()
                .map(|(i, t)| SniResolver::load(&format!("listen.tls[{i}]"), t).map(Arc::new))
                .collect::<Result<_, _>>()?,
            trusted_proxies: networks("listen.trusted_proxies", &config.listen.trusted_proxies)?,
            pages: match config.errors.page_template.as_str() {
                "" => crate::error::Pages::default(),
                path => {
                    crate::error::Pages::new(Some(std::fs::read_to_string(path).map_err(|e| {
                        ConfigError(format!("errors.page_template: cannot read {path}: {e}"))
                    })?))
                }
            },
            address_policy: AddressPolicy::new(
                networks(
                    "upstream.blocked_networks",
                    &config.upstream.blocked_networks,
                )?,
                networks(
                    "upstream.allowed_networks",
                    &config.upstream.allowed_networks,
                )?,
            ),
        })
    }
}
