//! Asymmetric token keys (EdDSA, ES256, RS256 from PEM files made by `openssl` in the test),
//! and the algorithm-confusion attack: an HS256 token signed with the configured public key.

mod common;

use common::*;
use edgegate::auth::token::{now, TokenKeys, TokenType};
use edgegate::config::TokenConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A private and public PEM key pair for `alg`, in a directory that goes with the first.
fn key_pair(alg: &str) -> (Scratch, PathBuf, PathBuf) {
    let dir = Scratch::new("eg-keys");
    let private = dir.join(format!("{alg}.key"));
    let public = dir.join(format!("{alg}.pub"));
    let p = private.to_str().expect("utf-8 path");
    match alg {
        "EdDSA" => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
        "ES256" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]),
        _ => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]),
    }
    openssl(&[
        "pkey",
        "-in",
        p,
        "-pubout",
        "-out",
        public.to_str().expect("utf-8 path"),
    ]);
    (dir, private, public)
}

fn token_config(alg: &str, private: &Path, public: &Path) -> TokenConfig {
    TokenConfig {
        algorithm: alg.into(),
        private_key_file: Some(private.into()),
        public_key_file: Some(public.into()),
        ..TokenConfig::default()
    }
}

#[test]
fn every_asymmetric_algorithm_signs_and_verifies_from_pem_files() {
    let id = edgegate::route::WorkspaceId::parse(ID_A).expect("id");
    for alg in ["EdDSA", "ES256", "RS256"] {
        let (_keys, private, public) = key_pair(alg);
        let keys = TokenKeys::from_config(&token_config(alg, &private, &public), 3600)
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        let (t, _) = keys.mint(TokenType::Terminal, &id, OWNER).expect("mint");
        assert_eq!(
            keys.verify(&t, TokenType::Terminal, &id)
                .expect("verify")
                .sub,
            OWNER
        );
        // A public key that does not match the private key is a config error.
        let (_other, _, other_public) = key_pair(if alg == "EdDSA" { "ES256" } else { "EdDSA" });
        let mismatched = TokenKeys::from_config(&token_config(alg, &private, &other_public), 3600);
        assert!(mismatched.is_err(), "{alg} with a foreign public key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_public_key_of_an_eddsa_config_is_refused() {
    let (_keys, private, public) = key_pair("EdDSA");
    let redis = Redis::start();
    redis.sessions();
    let a = upstream("a").await;
    let app = upstream("app").await;
    let text = config_text(free_port(), redis.port, app.addr, "").replace(
        &format!("secret_file = \"{}\"", secret_file()),
        &format!(
            "algorithm = \"EdDSA\"\nprivate_key_file = {:?}\npublic_key_file = {:?}",
            private.display().to_string(),
            public.display().to_string()
        ),
    );
    assert!(text.contains("EdDSA"));
    let gw = Gateway::start(&text);
    redis.workspace(ID_A, &a.addr.to_string());
    let host = gw.ws_host(ID_A);

    let keys =
        TokenKeys::from_config(&token_config("EdDSA", &private, &public), 3600).expect("keys");
    let id = edgegate::route::WorkspaceId::parse(ID_A).expect("id");
    let (good, _) = keys.mint(TokenType::Terminal, &id, OWNER).expect("mint");
    let r = upgrade(gw.addr, &host, &format!("/agent/ws?token={good}"), &[]).await;
    assert_eq!(r.status, 101, "an EdDSA terminal token: {}", r.body);
    assert!(eventually(Duration::from_secs(5), || async { a.count() == 1 }).await);

    let t = now();
    let claims = serde_json::json!({
        "sub": OWNER, "ws": ID_A, "type": "terminal", "iat": t, "exp": t + 60,
        "jti": "confused", "iss": "edgegate", "aud": "edgegate",
    });
    let pem = std::fs::read(&public).expect("public key");
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&pem),
    )
    .expect("sign");
    let hs_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    for (name, token) in [
        ("HS256 with the public key", confused),
        ("HS256 with a secret", hs_secret),
    ] {
        let r = upgrade(gw.addr, &host, &format!("/agent/ws?token={token}"), &[]).await;
        assert_eq!(r.status, 401, "{name}");
    }
    assert_eq!(a.count(), 1, "no refused token reached the upstream");
}
