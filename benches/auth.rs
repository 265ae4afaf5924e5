//! Micro-benchmarks of the per-request auth and header work: a session-cookie check on a cache
//! hit, JWT verification (HS256 and EdDSA), and rewriting a typical browser request for the
//! upstream. Run with `cargo bench --bench auth` (EdDSA keys are made with `openssl`).

use criterion::{criterion_group, criterion_main, Criterion};
use edgegate::auth::token::{TokenKeys, TokenType};
use edgegate::config::{Config, TokenConfig};
use edgegate::headers::{rewrite_upstream_request, Edits, Forwarding};
use edgegate::route::store::{Records, StaticStore};
use edgegate::route::WorkspaceId;
use pingora::http::RequestHeader;
use std::hint::black_box;
use std::sync::Arc;

const ID: &str = "01HZX3M9Q4T8V6W2Y5B7C9D1EF";

fn dir() -> std::path::PathBuf {
    // One directory, reused by every run (its files are rewritten each time).
    let d = std::env::temp_dir().join("edgegate-bench");
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn config() -> Config {
    let secret = dir().join("secret");
    std::fs::write(&secret, "bench-secret-0123456789abcdef-0123456789").expect("secret");
    let text = include_str!("../conf/demo.toml").replace(
        "secret_env = \"EDGEGATE_DEMO_SECRET\"",
        &format!("secret_file = {:?}", secret.display().to_string()),
    );
    Config::parse(&text).expect("demo config")
}

fn browser_request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/static/out/vs/workbench/workbench.js?v=1", None)
        .expect("req");
    for (k, v) in [
        ("host", "ws-01hzx3m9q4t8v6w2y5b7c9d1ef.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Safari/537.36"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "theme=dark; session=demo-session; _ga=GA1.2.3"),
        ("origin", "https://ws-01hzx3m9q4t8v6w2y5b7c9d1ef.example.com"),
        ("referer", "https://ws-01hzx3m9q4t8v6w2y5b7c9d1ef.example.com/"),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-mode", "cors"),
    ] {
        req.append_header(k, v).expect("header");
    }
    req
}

fn auth(c: &mut Criterion) {
    let config = config();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    let metrics = Arc::new(edgegate::metrics::Metrics::new().expect("metrics"));
    let records = Records::new(
        Arc::new(StaticStore::new(&config)),
        Records::new_cache(&config, &metrics, "records"),
        &config,
        metrics,
    );
    let auth = edgegate::auth::Auth::new(&config).expect("auth");
    let req = browser_request();
    // Warm the cache.
    rt.block_on(auth.session_owner(&records, &req, "demo-user"))
        .expect("store")
        .expect("owner");
    c.bench_function("session cookie check (cache hit)", |b| {
        b.iter(|| {
            let r = rt.block_on(auth.session_owner(&records, black_box(&req), "demo-user"));
            black_box(r.is_ok());
        })
    });

    let id = WorkspaceId::parse(ID).expect("id");
    let hs = TokenKeys::from_config(&config.auth.tokens, 3600).expect("hs256 keys");
    let (t, _) = hs
        .mint(TokenType::Terminal, &id, "demo-user")
        .expect("mint");
    c.bench_function("JWT verify HS256", |b| {
        b.iter(|| black_box(hs.verify(black_box(&t), TokenType::Terminal, &id).is_ok()))
    });

    let (private, public) = (dir().join("ed.key"), dir().join("ed.pub"));
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        let ed = TokenKeys::from_config(
            &TokenConfig {
                algorithm: "EdDSA".into(),
                private_key_file: Some(private),
                public_key_file: Some(public),
                ..TokenConfig::default()
            },
            3600,
        )
        .expect("eddsa keys");
        let (t, _) = ed
            .mint(TokenType::Terminal, &id, "demo-user")
            .expect("mint");
        c.bench_function("JWT verify EdDSA", |b| {
            b.iter(|| black_box(ed.verify(black_box(&t), TokenType::Terminal, &id).is_ok()))
        });
    }

    let edits = Edits {
        request_id: "0123456789abcdef01234567",
        workspace: Some(ID),
        user: Some("demo-user"),
        strip_cookies: edgegate::headers::CookieStrip::Rebuild,
        ..Edits::default()
    };
    let fwd = Forwarding {
        client_ip: Some("203.0.113.7".parse().expect("ip")),
        trusted_proxies: &[],
        proto: "https",
        credential_cookies: &["session".to_string(), "edgegate_ide".to_string()],
    };
    c.bench_function("rewrite a browser request for the upstream", |b| {
        b.iter(|| {
            let mut r = req.clone();
            rewrite_upstream_request(&mut r, &edits, &fwd).expect("rewrite");
            black_box(r);
        })
    });
}

criterion_group!(benches, auth);
criterion_main!(benches);
