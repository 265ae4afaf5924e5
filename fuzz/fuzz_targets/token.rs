//! Token pre-checks and verification: any bytes as a Bearer value, a query, or a JWT.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;
use edgegate::auth::token::{TokenKeys, TokenType};

fn keys() -> &'static TokenKeys {
    static K: once_cell::sync::Lazy<TokenKeys> = once_cell::sync::Lazy::new(|| {
        let c = common::config();
        TokenKeys::from_config(&c.auth.tokens, c.auth.ide_cookie_ttl_secs).expect("keys")
    });
    &K
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = edgegate::auth::query_token(Some(s));
    let _ = edgegate::auth::strip_token_param(s);
    let id = edgegate::route::WorkspaceId::parse("01HZX3M9Q4T8V6W2Y5B7C9D1EF").expect("id");
    for typ in [TokenType::DevIde, TokenType::Terminal, TokenType::IdeSession] {
        // Nothing made up verifies.
        assert!(keys().verify(s, typ, &id).is_err());
    }
    let _ = keys().is_ours(s);
    if let Ok(mut req) = pingora::http::RequestHeader::build("GET", b"/", None) {
        if req.append_header("authorization", data).is_ok() {
            let _ = edgegate::auth::bearer(&req);
        }
    }
});
