//! TLS termination with rustls: per-listener certificates chosen by SNI (exact names first, then
//! one-label wildcards such as `*.{base_domain}`, then the listener's first certificate), and
//! ALPN offering HTTP/2 beside HTTP/1.1. Browsers open WebSockets on HTTP/1.1 connections, since
//! edgegate does not advertise extended CONNECT. Loaded by `runtime::Runtime::build`, set on the listeners by `lib::build_server`.

use crate::config::{ConfigError, TlsListenConfig};
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::ALPN;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// Load every certificate of one listener; errors name the field (`listen.tls[0].certs[1]…`).
    pub fn load(field: &str, cfg: &TlsListenConfig) -> Result<SniResolver, ConfigError> {
        pingora::tls::install_default_crypto_provider();
        let provider = CryptoProvider::get_default()
            .ok_or_else(|| ConfigError(format!("{field}: no TLS crypto provider")))?;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for (i, c) in cfg.certs.iter().enumerate() {
            let f = format!("{field}.certs[{i}]");
            let (cert, key) = (
                c.cert_file.display().to_string(),
                c.key_file.display().to_string(),
            );
            let (chain, der) = pingora::tls::load_certs_and_key_files(&cert, &key)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    ConfigError(format!(
                        "{f}: cannot load a certificate chain from {cert:?} and a key from {key:?}"
                    ))
                })?;
            let signing = provider
                .key_provider
                .load_private_key(der)
                .map_err(|e| ConfigError(format!("{f}.key_file: {e}")))?;
            let certified = Arc::new(CertifiedKey::new(chain, signing));
            if c.names.is_empty() {
                return Err(ConfigError(format!(
                    "{f}.names: list the SNI names it serves"
                )));
            }
            for n in &c.names {
                let n = n.to_ascii_lowercase();
                match n.strip_prefix("*.") {
                    Some(suffix) => wildcard.insert(suffix.to_string(), certified.clone()),
                    None => exact.insert(n, certified.clone()),
                };
            }
            default.get_or_insert(certified);
        }
        let default = default
            .ok_or_else(|| ConfigError(format!("{field}.certs: at least one certificate")))?;
        Ok(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(c) = self.exact.get(&name) {
            return c.clone();
        }
        // A wildcard covers exactly one label.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return c.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// A listener's certificates, replaced whole by a reload (SIGHUP) while handshakes read them.
#[derive(Debug)]
pub struct Certificates(arc_swap::ArcSwap<SniResolver>);

impl Certificates {
    pub fn new(resolver: Arc<SniResolver>) -> Arc<Certificates> {
        Arc::new(Certificates(arc_swap::ArcSwap::new(resolver)))
    }

    /// Serve `resolver`'s certificates from the next handshake on.
    pub fn replace(&self, resolver: Arc<SniResolver>) {
        self.0.store(resolver);
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().pick(hello.server_name()))
    }
}

/// Pingora's settings for one TLS listener, with its certificates (`runtime::Runtime::tls`).
pub fn settings(
    field: &str,
    cfg: &TlsListenConfig,
    resolver: Arc<Certificates>,
) -> Result<TlsSettings, ConfigError> {
    let mut s =
        TlsSettings::intermediate("", "").map_err(|e| ConfigError(format!("{field}: {e}")))?;
    s.set_cert_resolver(resolver);
    if cfg.h2 {
        s.set_alpn(ALPN::H2H1);
    }
    Ok(s)
}
