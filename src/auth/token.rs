//! Scoped JWTs (SPEC §4): minting (`POST …/ide-token`, `…/terminal-token`, the bootstrap's
//! ide cookie, `edgegate token mint`) and verification (`request_filter`). The algorithm comes
//! from config only, never from a token's header; the leeway is at most 5 s (jsonwebtoken's
//! default is 60 s); size is capped before anything is decoded.

use crate::config::{ConfigError, TokenConfig};
use crate::route::id::WorkspaceId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a token opens. A token of one type never opens another type's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenType {
    /// Bootstrap or tunnel access to a dev container's IDE (`dev:{ID}`).
    #[serde(rename = "dev-ide")]
    DevIde,
    /// The agent WebSocket of a workspace (`workspace:{ID}`).
    #[serde(rename = "terminal")]
    Terminal,
    /// The value of the ide cookie the bootstrap sets.
    #[serde(rename = "ide-session")]
    IdeSession,
    /// The one-time code the app domain hands a content host (`ports`), scoped to a port.
    #[serde(rename = "port-code")]
    PortCode,
    /// The value of the content site's port cookie, scoped to a port.
    #[serde(rename = "port-cookie")]
    PortCookie,
    /// A port token for non-browser clients (`X-Edgegate-Port-Token`), scoped to a port.
    #[serde(rename = "port-token")]
    PortToken,
    /// A share link's token, scoped to a port.
    #[serde(rename = "port-share")]
    PortShare,
}

impl TokenType {
    pub fn parse(s: &str) -> Option<TokenType> {
        match s {
            "dev-ide" => Some(TokenType::DevIde),
            "terminal" => Some(TokenType::Terminal),
            "ide-session" => Some(TokenType::IdeSession),
            "port-code" => Some(TokenType::PortCode),
            "port-cookie" => Some(TokenType::PortCookie),
            "port-token" => Some(TokenType::PortToken),
            "port-share" => Some(TokenType::PortShare),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vmid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ws: Option<String>,
    #[serde(rename = "type")]
    typ: TokenType,
    exp: u64,
    iat: u64,
    jti: String,
    iss: String,
    aud: String,
    /// For an ide-session token (the ide cookie): the app session it was minted under
    /// (`session_binding`), so the cookie stops working when that session ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sb: Option<String>,
    /// For the port types: the port of the workspace the token opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    /// For a sign-in code: the nonce of the browser that started the sign-in (its state
    /// cookie), so the code signs in that browser alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    st: Option<String>,
}

/// A freshly minted token.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    /// Lifetime in seconds.
    pub ttl: u64,
    pub jti: String,
}

/// A token that passed every check but the owner comparison, which needs the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub sub: String,
    pub jti: String,
    pub exp: u64,
    /// The app session an ide cookie is bound to (`session_binding` of its id).
    pub session_binding: Option<String>,
    /// The port a port-scoped token opens (checked by `verify_port`).
    pub port: Option<u16>,
    /// A sign-in code's browser nonce.
    pub state: Option<String>,
}

/// What an ide cookie carries to name the app session it was minted under: the first 128 bits
/// of SHA-256 over the session id, hex. The cookie is signed, so the value cannot be forged,
/// and it does not reveal the session id to whoever reads the cookie.
pub fn session_binding(sid: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"edgegate ide cookie binding\0")
        .chain_update(sid.as_bytes())
        .finalize();
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xF)]));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Malformed, oversize, badly signed, expired, or missing a claim: 401.
    #[error("invalid token")]
    Invalid,
    /// A valid token of another type: 403.
    #[error("token of another type")]
    WrongType,
    /// A valid token for another id: 403.
    #[error("token for another workspace")]
    WrongScope,
}

pub struct TokenKeys {
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Signature-only check, for recognising our tokens to strip them from upstream requests.
    signature_only: Validation,
    issuer: String,
    audience: String,
    leeway: u64,
    max_bytes: usize,
    dev_ide_ttl: u64,
    terminal_ttl: u64,
    ide_session_ttl: u64,
    /// Longest lives of the port types: code, cookie, token, share link (`[ports]`).
    port_ttls: [u64; 4],
}

/// Shortest HS256 secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKeys {
    /// Load the keys named by `[auth.tokens]`; errors name the field.
    pub fn from_config(cfg: &TokenConfig, ide_session_ttl: u64) -> Result<TokenKeys, ConfigError> {
        let err = |field: &str, msg: String| ConfigError(format!("auth.tokens.{field}: {msg}"));
        let read = |field: &str, path: &std::path::Path| -> Result<Vec<u8>, ConfigError> {
            std::fs::read(path)
                .map_err(|e| err(field, format!("cannot read {}: {e}", path.display())))
        };
        let (alg, encoding, decoding) = match cfg.algorithm.as_str() {
            "HS256" => {
                let secret: Vec<u8> = match (&cfg.secret_file, &cfg.secret_env) {
                    (Some(path), None) => {
                        let mut s = read("secret_file", path)?;
                        while s.last().is_some_and(|b| b.is_ascii_whitespace()) {
                            s.pop();
                        }
                        s
                    }
                    (None, Some(var)) => std::env::var(var)
                        .map_err(|_| err("secret_env", format!("${var} is not set")))?
                        .into_bytes(),
                    _ => {
                        return Err(err(
                            "secret_file",
                            "HS256 needs exactly one of secret_file or secret_env".into(),
                        ))
                    }
                };
                if secret.len() < MIN_SECRET_BYTES {
                    let field = if cfg.secret_file.is_some() {
                        "secret_file"
                    } else {
                        "secret_env"
                    };
                    return Err(err(
                        field,
                        format!("the secret must be at least {MIN_SECRET_BYTES} bytes"),
                    ));
                }
                (
                    Algorithm::HS256,
                    EncodingKey::from_secret(&secret),
                    DecodingKey::from_secret(&secret),
                )
            }
            alg @ ("EdDSA" | "ES256" | "RS256") => {
                let (Some(private), Some(public)) = (&cfg.private_key_file, &cfg.public_key_file)
                else {
                    return Err(err(
                        "private_key_file",
                        format!("{alg} needs private_key_file and public_key_file (PEM)"),
                    ));
                };
                let private = read("private_key_file", private)?;
                let public = read("public_key_file", public)?;
                let bad_priv =
                    |e: jsonwebtoken::errors::Error| err("private_key_file", e.to_string());
                let bad_pub =
                    |e: jsonwebtoken::errors::Error| err("public_key_file", e.to_string());
                match alg {
                    "EdDSA" => (
                        Algorithm::EdDSA,
                        EncodingKey::from_ed_pem(&private).map_err(bad_priv)?,
                        DecodingKey::from_ed_pem(&public).map_err(bad_pub)?,
                    ),
                    "ES256" => (
                        Algorithm::ES256,
                        EncodingKey::from_ec_pem(&private).map_err(bad_priv)?,
                        DecodingKey::from_ec_pem(&public).map_err(bad_pub)?,
                    ),
                    _ => (
                        Algorithm::RS256,
                        EncodingKey::from_rsa_pem(&private).map_err(bad_priv)?,
                        DecodingKey::from_rsa_pem(&public).map_err(bad_pub)?,
                    ),
                }
            }
            other => {
                return Err(err(
                    "algorithm",
                    format!("{other:?} is not one of HS256, EdDSA, ES256, RS256"),
                ))
            }
        };
        if cfg.leeway_secs > 5 {
            return Err(err("leeway_secs", "must be at most 5".into()));
        }
        if cfg.issuer.is_empty() || cfg.audience.is_empty() {
            return Err(err(
                "issuer",
                "issuer and audience must not be empty".into(),
            ));
        }
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = cfg.leeway_secs;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&[&cfg.audience]);
        let mut signature_only = Validation::new(alg);
        signature_only.algorithms = vec![alg];
        signature_only.validate_exp = false;
        signature_only.validate_aud = false;
        signature_only.required_spec_claims.clear();
        let keys = TokenKeys {
            alg,
            encoding,
            decoding,
            validation,
            signature_only,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_secs,
            max_bytes: cfg.max_bytes,
            dev_ide_ttl: cfg.dev_ide_ttl_secs,
            terminal_ttl: cfg.terminal_ttl_secs,
            ide_session_ttl,
            port_ttls: {
                let p = crate::config::PortsConfig::default();
                [
                    p.code_ttl_secs,
                    p.cookie_ttl_secs,
                    p.token_ttl_secs,
                    p.share_max_ttl_secs,
                ]
            },
        };
        // A key pair that does not sign and verify together is a config error, not a 401 later.
        let probe = WorkspaceId::parse("00000000000000000000000000")
            .ok_or_else(|| ConfigError("internal: probe id".into()))?;
        let (t, _) = keys
            .mint(TokenType::Terminal, &probe, "probe")
            .map_err(|e| err("algorithm", format!("cannot sign: {e}")))?;
        keys.verify(&t, TokenType::Terminal, &probe).map_err(|_| {
            err(
                "public_key_file",
                "does not verify what the private key signs".into(),
            )
        })?;
        Ok(keys)
    }

    /// The longest lives of the port types, from `[ports]`: code, cookie, token, share link.
    pub fn with_port_ttls(mut self, ports: &crate::config::PortsConfig) -> TokenKeys {
        self.port_ttls = [
            ports.code_ttl_secs,
            ports.cookie_ttl_secs,
            ports.token_ttl_secs,
            ports.share_max_ttl_secs,
        ];
        self
    }

    /// Clock skew allowed on `exp`, in seconds.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    pub fn ttl(&self, typ: TokenType) -> u64 {
        match typ {
            TokenType::DevIde => self.dev_ide_ttl,
            TokenType::Terminal => self.terminal_ttl,
            TokenType::IdeSession => self.ide_session_ttl,
            TokenType::PortCode => self.port_ttls[0],
            TokenType::PortCookie => self.port_ttls[1],
            TokenType::PortToken => self.port_ttls[2],
            TokenType::PortShare => self.port_ttls[3],
        }
    }

    /// A port-scoped token of `typ` for `user` (empty for a share link), with its id `jti`
    /// (a grant's id, `ports`) and a life of `ttl` seconds (at most the type's); a sign-in code
    /// carries its browser's `state` nonce.
    #[allow(clippy::too_many_arguments)]
    pub fn mint_port(
        &self,
        typ: TokenType,
        id: &WorkspaceId,
        port: u16,
        user: &str,
        jti: &str,
        ttl: u64,
        state: Option<&str>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now();
        let claims = Claims {
            sub: user.to_string(),
            vmid: None,
            ws: Some(id.to_string()),
            typ,
            exp: iat + ttl.min(self.ttl(typ)),
            iat,
            jti: jti.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sb: None,
            port: Some(port),
            st: state.map(str::to_string),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.encoding)
    }

    /// `verify` for a port-scoped token: its port must be `port` too.
    pub fn verify_port(
        &self,
        token: &str,
        want: TokenType,
        id: &WorkspaceId,
        port: u16,
    ) -> Result<Verified, TokenError> {
        let v = self.verify(token, want, id)?;
        if v.port != Some(port) {
            return Err(TokenError::WrongScope);
        }
        Ok(v)
    }

    /// A fresh token of `typ` for `user`, scoped to `id`; returns it with its lifetime in seconds.
    pub fn mint(
        &self,
        typ: TokenType,
        id: &WorkspaceId,
        user: &str,
    ) -> Result<(String, u64), jsonwebtoken::errors::Error> {
        self.mint_bound(typ, id, user, None)
    }

    /// `mint`, naming the app session (`session_binding`) the token is bound to.
    pub fn mint_bound(
        &self,
        typ: TokenType,
        id: &WorkspaceId,
        user: &str,
        session_binding: Option<String>,
    ) -> Result<(String, u64), jsonwebtoken::errors::Error> {
        self.minted(typ, id, user, session_binding)
            .map(|m| (m.token, m.ttl))
    }

    /// `mint`, with the token's `jti` (the endpoints note the session it was minted under).
    pub fn minted(
        &self,
        typ: TokenType,
        id: &WorkspaceId,
        user: &str,
        session_binding: Option<String>,
    ) -> Result<Minted, jsonwebtoken::errors::Error> {
        let iat = now();
        let ttl = self.ttl(typ);
        let scope = Some(id.to_string());
        let (vmid, ws) = match typ {
            TokenType::DevIde | TokenType::IdeSession => (scope, None),
            _ => (None, scope),
        };
        let claims = Claims {
            sub: user.to_string(),
            vmid,
            ws,
            typ,
            exp: iat + ttl,
            iat,
            jti: new_jti(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sb: session_binding,
            port: None,
            st: None,
        };
        let token = jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.encoding)?;
        Ok(Minted {
            token,
            ttl,
            jti: claims.jti,
        })
    }

    /// Every check of SPEC §4 except `sub` = the record's owner, which the caller makes.
    pub fn verify(
        &self,
        token: &str,
        want: TokenType,
        id: &WorkspaceId,
    ) -> Result<Verified, TokenError> {
        if token.len() > self.max_bytes || token.is_empty() {
            return Err(TokenError::Invalid);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?
            .claims;
        let now = now();
        if claims.iat > now + self.leeway
            || claims.exp < claims.iat
            || claims.exp - claims.iat > self.ttl(claims.typ)
            || claims.jti.is_empty()
            // A share link stands for nobody: its `sub` is empty.
            || (claims.sub.is_empty() && claims.typ != TokenType::PortShare)
        {
            return Err(TokenError::Invalid);
        }
        let scope = match (&claims.vmid, &claims.ws) {
            (Some(a), Some(b)) if a != b => return Err(TokenError::Invalid),
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => return Err(TokenError::Invalid),
        };
        if claims.typ != want {
            return Err(TokenError::WrongType);
        }
        if !scope.eq_ignore_ascii_case(id.as_str()) {
            return Err(TokenError::WrongScope);
        }
        Ok(Verified {
            sub: claims.sub,
            jti: claims.jti,
            exp: claims.exp,
            session_binding: claims.sb,
            port: claims.port,
            state: claims.st,
        })
    }

    /// Whether `token` carries our signature (expired or not): such a value never goes upstream.
    pub fn is_ours(&self, token: &str) -> bool {
        token.len() <= self.max_bytes
            && jsonwebtoken::decode::<serde_json::Value>(
                token,
                &self.decoding,
                &self.signature_only,
            )
            .is_ok()
    }
}

/// 128 random bits, hex.
pub fn new_jti() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness is a broken machine; a time-and-counter jti is still unique.
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        b[8..].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::TokenConfig;

    pub(crate) const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    pub(crate) fn hs_keys() -> TokenKeys {
        let path = crate::config::test_fixture("token-secret", &format!("{SECRET}\n"));
        let cfg = TokenConfig {
            secret_file: Some(path),
            ..TokenConfig::default()
        };
        TokenKeys::from_config(&cfg, 3600).expect("keys")
    }

    fn id(s: &str) -> WorkspaceId {
        WorkspaceId::parse(s).expect("id")
    }

    const A: &str = "01HZX3M9Q4T8V6W2Y5B7C9D1EF";
    const B: &str = "01J0AAAAAAAAAAAAAAAAAAAAAB";

    /// Guards the crypto backend choice: with no or two backends this panics at run time.
    #[test]
    fn real_sign_and_verify_round_trip() {
        let k = hs_keys();
        let (t, ttl) = k.mint(TokenType::Terminal, &id(A), "user-1").expect("mint");
        assert_eq!(ttl, 60);
        let v = k.verify(&t, TokenType::Terminal, &id(A)).expect("verify");
        assert_eq!(v.sub, "user-1");
        assert_eq!(v.jti.len(), 32);
        assert!(k.is_ours(&t));
    }

    #[test]
    fn wrong_type_scope_and_tampering_are_told_apart() {
        let k = hs_keys();
        let (t, _) = k.mint(TokenType::DevIde, &id(A), "user-1").expect("mint");
        assert_eq!(
            k.verify(&t, TokenType::Terminal, &id(A)),
            Err(TokenError::WrongType)
        );
        assert_eq!(
            k.verify(&t, TokenType::DevIde, &id(B)),
            Err(TokenError::WrongScope)
        );
        let mut tampered = t.clone();
        tampered.pop();
        tampered.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(
            k.verify(&tampered, TokenType::DevIde, &id(A)),
            Err(TokenError::Invalid)
        );
        let huge = format!("{t}{}", "A".repeat(5000));
        assert_eq!(
            k.verify(&huge, TokenType::DevIde, &id(A)),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn short_secret_and_unknown_algorithm_are_config_errors() {
        let path = crate::config::test_fixture("short-secret", "too short");
        let cfg = TokenConfig {
            secret_file: Some(path),
            ..TokenConfig::default()
        };
        let e = TokenKeys::from_config(&cfg, 60).err().expect("error");
        assert!(e.0.starts_with("auth.tokens.secret_file"), "{e}");
        let cfg = TokenConfig {
            algorithm: "none".into(),
            ..TokenConfig::default()
        };
        let e = TokenKeys::from_config(&cfg, 60).err().expect("error");
        assert!(e.0.starts_with("auth.tokens.algorithm"), "{e}");
    }
}
