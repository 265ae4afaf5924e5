//! The auth contract against real parts: for each route, a table of credentials with the
//! expected status and whether the recording upstream saw the request.

mod common;

use common::*;
use edgegate::auth::token::{now, TokenType};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Sign arbitrary claims with the test secret (HS256).
fn sign(claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).expect("sign")
}

fn claims(typ: &str, id: &str, sub: &str, iat: u64, exp: u64) -> Value {
    let scope = if typ == "terminal" { "ws" } else { "vmid" };
    json!({
        "sub": sub, scope: id, "type": typ, "iat": iat, "exp": exp,
        "jti": format!("j{iat}{exp}{typ}"), "iss": "edgegate", "aud": "edgegate",
    })
}

/// Bad and good tokens, by name.
struct Tokens {
    term: String,
    dev: String,
    ide_cookie: String,
    term_expired: String,
    dev_expired: String,
    term_tampered: String,
    term_wrong_id: String,
    dev_wrong_id: String,
    term_wrong_user: String,
    dev_wrong_user: String,
    alg_none: String,
    oversize: String,
    too_long_lived: String,
    no_jti: String,
    wrong_aud: String,
}

fn tokens() -> Tokens {
    let t = now();
    let term = mint(TokenType::Terminal, ID_A, OWNER);
    // Same header and signature, payload naming another user.
    let mut parts: Vec<String> = term.split('.').map(str::to_string).collect();
    parts[1] = b64(claims("terminal", ID_A, "user-2", t, t + 60)
        .to_string()
        .as_bytes());
    let term_tampered = parts.join(".");
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("terminal", ID_A, OWNER, t, t + 60)
            .to_string()
            .as_bytes())
    );
    let mut big = claims("terminal", ID_A, OWNER, t, t + 60);
    big["pad"] = json!("x".repeat(5000));
    let mut no_jti = claims("terminal", ID_A, OWNER, t, t + 60);
    no_jti.as_object_mut().expect("object").remove("jti");
    let mut wrong_aud = claims("terminal", ID_A, OWNER, t, t + 60);
    wrong_aud["aud"] = json!("someone-else");
    Tokens {
        dev: mint(TokenType::DevIde, ID_A, OWNER),
        ide_cookie: mint(TokenType::IdeSession, ID_A, OWNER),
        term_expired: sign(&claims("terminal", ID_A, OWNER, t - 200, t - 150)),
        dev_expired: sign(&claims("dev-ide", ID_A, OWNER, t - 400, t - 150)),
        term_tampered,
        term_wrong_id: mint(TokenType::Terminal, ID_B, OWNER),
        dev_wrong_id: mint(TokenType::DevIde, ID_B, OWNER),
        term_wrong_user: mint(TokenType::Terminal, ID_A, "user-2"),
        dev_wrong_user: mint(TokenType::DevIde, ID_A, "user-2"),
        alg_none,
        oversize: sign(&big),
        too_long_lived: sign(&claims("terminal", ID_A, OWNER, t, t + 3600)),
        no_jti: sign(&no_jti),
        wrong_aud: sign(&wrong_aud),
        term,
    }
}

#[derive(Clone, Copy)]
enum Cred<'a> {
    None,
    Session(&'a str),
    Bearer(&'a str),
    Query(&'a str),
    /// A whole `Cookie` header (an ide cookie with its app session, tossed copies, …).
    Cookies(&'a str),
}

async fn send(w: &World, host: &str, path: &str, cred: Cred<'_>) -> Resp {
    let (path, header) = match cred {
        Cred::None => (path.to_string(), None),
        Cred::Session(s) => (path.to_string(), Some(("Cookie", format!("session={s}")))),
        Cred::Bearer(t) => (
            path.to_string(),
            Some(("Authorization", format!("Bearer {t}"))),
        ),
        Cred::Query(t) => {
            let sep = if path.contains('?') { '&' } else { '?' };
            (format!("{path}{sep}token={t}"), None)
        }
        Cred::Cookies(c) => (path.to_string(), Some(("Cookie", c.to_string()))),
    };
    let headers: Vec<(&str, &str)> = header.iter().map(|(k, v)| (*k, v.as_str())).collect();
    w.gw.request("GET", host, &path, &headers).await
}

/// `send` as a WebSocket upgrade; cookie-authenticated upgrades carry their own Origin.
async fn send_upgrade(w: &World, host: &str, path: &str, cred: Cred<'_>) -> Resp {
    let origin = format!("http://{host}");
    let (path, mut headers) = match cred {
        Cred::None => (path.to_string(), vec![]),
        Cred::Session(s) => (path.to_string(), vec![("Cookie", format!("session={s}"))]),
        Cred::Bearer(t) => (
            path.to_string(),
            vec![("Authorization", format!("Bearer {t}"))],
        ),
        Cred::Query(t) => (format!("{path}?token={t}"), vec![]),
        Cred::Cookies(c) => (path.to_string(), vec![("Cookie", c.to_string())]),
    };
    if headers.iter().any(|(k, _)| *k == "Cookie") {
        headers.push(("Origin", origin));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    upgrade(w.gw.addr, host, &path, &headers).await
}

/// `run_table` for WebSocket upgrades: 101 exactly when the upstream saw the upgrade.
async fn run_upgrade_table(
    w: &World,
    upstream: &edgegate::demo::EchoUpstream,
    host: &str,
    path: &str,
    cases: &[(&str, Cred<'_>, u16)],
) {
    for (name, cred, status) in cases {
        let before = upstream.count();
        let r = send_upgrade(w, host, path, *cred).await;
        assert_eq!(r.status, *status, "upgrade {host}{path} {name}: {}", r.body);
        // The upstream records the upgrade when it reads it: give a 101 a moment.
        let reached = if *status == 101 {
            eventually(std::time::Duration::from_secs(5), || async {
                upstream.count() > before
            })
            .await
        } else {
            upstream.count() > before
        };
        assert_eq!(
            reached,
            *status == 101,
            "upgrade {host}{path} {name}: upstream saw it"
        );
        if r.status != 101 {
            let code = r.error_code();
            assert!(
                matches!(
                    code.as_str(),
                    "unauthenticated" | "forbidden" | "token_spent" | "ambiguous_credentials"
                ),
                "{name}: {code}"
            );
        }
    }
    assert_eq!(w.app.count(), 0, "nothing fell through to the app");
}

async fn world() -> World {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.dev(ID_A, &w.b.addr.to_string());
    w.redis.hset(
        "session:sess-expired",
        &[("user", OWNER), ("expires_at", &(now() - 10).to_string())],
    );
    w.redis.hset(
        "session:sess-later",
        &[("user", OWNER), ("expires_at", &(now() + 3600).to_string())],
    );
    w.redis.hset(
        &format!("agent:{ID_A}"),
        &[("state", "online"), ("agent_version", "1.2.3")],
    );
    w
}

/// Run a table of `(name, credential, status)` against one host and path; the request must
/// reach `upstream` exactly when the status is 200.
async fn run_table(
    w: &World,
    upstream: &edgegate::demo::EchoUpstream,
    host: &str,
    path: &str,
    cases: &[(&str, Cred<'_>, u16)],
) {
    for (name, cred, status) in cases {
        let before = upstream.count();
        let r = send(w, host, path, *cred).await;
        assert_eq!(r.status, *status, "{host}{path} {name}: {}", r.body);
        let reached = upstream.count() - before;
        assert_eq!(
            reached,
            usize::from(*status == 200),
            "{host}{path} {name}: upstream saw it"
        );
        if r.status != 200 {
            let code = r.error_code();
            assert!(
                matches!(
                    code.as_str(),
                    "unauthenticated" | "forbidden" | "token_spent" | "ambiguous_credentials"
                ),
                "{name}: {code}"
            );
        }
    }
    assert_eq!(w.app.count(), 0, "nothing fell through to the app");
}

/// The agent path as a plain request: cookies decide, and no token is a credential there
/// (a terminal token opens upgrades only: a GET renders the owner's content to whoever follows
/// the link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_agent_path_credential_table() {
    let w = world().await;
    let t = tokens();
    let host = w.gw.ws_host(ID_A);
    let cases = [
        ("no credential", Cred::None, 401),
        ("owner's session", Cred::Session(OWNER_SESSION), 200),
        (
            "owner's session, expires later",
            Cred::Session("sess-later"),
            200,
        ),
        ("another user's session", Cred::Session(OTHER_SESSION), 403),
        ("expired session", Cred::Session("sess-expired"), 401),
        ("unknown session", Cred::Session("sess-nope"), 401),
        (
            "terminal token, bearer, not an upgrade",
            Cred::Bearer(&t.term),
            401,
        ),
        (
            "terminal token, query, not an upgrade",
            Cred::Query(&t.term),
            401,
        ),
        ("dev-ide token", Cred::Bearer(&t.dev), 401),
    ];
    run_table(&w, &w.a, &host, "/agent/ws", &cases).await;
}

/// The agent path as a WebSocket upgrade: a terminal token (Bearer or `?token=`) for the owner,
/// once; every bad one refused before the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_agent_upgrade_credential_table() {
    let w = world().await;
    let t = tokens();
    let host = w.gw.ws_host(ID_A);
    let (fresh_a, fresh_b) = (
        mint(TokenType::Terminal, ID_A, OWNER),
        mint(TokenType::Terminal, ID_A, OWNER),
    );
    let cases = [
        ("no credential", Cred::None, 401),
        ("owner's session", Cred::Session(OWNER_SESSION), 101),
        ("another user's session", Cred::Session(OTHER_SESSION), 403),
        ("expired session", Cred::Session("sess-expired"), 401),
        ("terminal token, bearer", Cred::Bearer(&t.term), 101),
        ("terminal token, query", Cred::Query(&fresh_a), 101),
        ("the same token again", Cred::Query(&fresh_a), 401),
        ("the first token again, bearer", Cred::Bearer(&t.term), 401),
        ("another fresh token", Cred::Bearer(&fresh_b), 101),
        ("dev-ide token", Cred::Bearer(&t.dev), 403),
        ("ide cookie value as token", Cred::Query(&t.ide_cookie), 403),
        ("expired terminal token", Cred::Query(&t.term_expired), 401),
        (
            "tampered terminal token",
            Cred::Query(&t.term_tampered),
            401,
        ),
        (
            "terminal token for another id",
            Cred::Query(&t.term_wrong_id),
            403,
        ),
        (
            "terminal token for another user",
            Cred::Bearer(&t.term_wrong_user),
            403,
        ),
        ("alg none", Cred::Query(&t.alg_none), 401),
        ("oversize", Cred::Bearer(&t.oversize), 401),
        (
            "exp - iat beyond the type's ttl",
            Cred::Query(&t.too_long_lived),
            401,
        ),
        ("no jti", Cred::Query(&t.no_jti), 401),
        ("wrong audience", Cred::Query(&t.wrong_aud), 401),
    ];
    run_upgrade_table(&w, &w.a, &host, "/agent/ws", &cases).await;
    // The spent marks live in Redis, under the configured key, with an expiry.
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg("edgegate:jti:*")
        .query(&mut w.redis.conn())
        .expect("KEYS");
    assert_eq!(marks.len(), 3, "{marks:?}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&marks[0])
        .query(&mut w.redis.conn())
        .expect("TTL");
    assert!((1..=70).contains(&ttl), "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_routes_take_terminal_tokens_only_on_the_agent_path() {
    let w = world().await;
    let t = tokens();
    let host = w.gw.ws_host(ID_A);
    let cases = [
        ("no credential", Cred::None, 401),
        ("owner's session", Cred::Session(OWNER_SESSION), 200),
        ("another user's session", Cred::Session(OTHER_SESSION), 403),
        ("expired session", Cred::Session("sess-expired"), 401),
        (
            "terminal token off the agent path",
            Cred::Bearer(&t.term),
            401,
        ),
        (
            "terminal token in query off the agent path",
            Cred::Query(&t.term),
            401,
        ),
        ("dev-ide token", Cred::Query(&t.dev), 401),
    ];
    run_table(&w, &w.a, &host, "/", &cases).await;

    let port_host = format!("ws-{ID_A}--{}.{DOMAIN}:{}", w.a.addr.port(), w.gw.port);
    let cases = [
        ("no credential", Cred::None, 401),
        ("owner's session", Cred::Session(OWNER_SESSION), 200),
        ("another user's session", Cred::Session(OTHER_SESSION), 403),
        ("expired session", Cred::Session("sess-expired"), 401),
        ("terminal token", Cred::Bearer(&t.term), 401),
        (
            "terminal token on the agent path",
            Cred::Query(&t.term),
            401,
        ),
    ];
    run_table(&w, &w.a, &port_host, "/agent/ws", &cases[..5]).await;
    run_table(&w, &w.a, &port_host, "/agent/ws", &cases[5..]).await;
}

/// The IDE tunnel: the ide cookie beside the app session it was minted under, or a dev-ide
/// token in `Authorization: Bearer` (non-browser clients), once; never a token from the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ide_tunnel_credential_table() {
    let w = world().await;
    let t = tokens();
    let bound = format!(
        "edgegate_ide={}; session={OWNER_SESSION}",
        ide_cookie(ID_A, OWNER, OWNER_SESSION)
    );
    let alone = format!("edgegate_ide={}", ide_cookie(ID_A, OWNER, OWNER_SESSION));
    let beside_another_session = format!(
        "edgegate_ide={}; session=sess-later",
        ide_cookie(ID_A, OWNER, OWNER_SESSION)
    );
    let expired_session = format!(
        "edgegate_ide={}; session=sess-expired",
        ide_cookie(ID_A, OWNER, "sess-expired")
    );
    let other_id = format!(
        "edgegate_ide={}; session={OWNER_SESSION}",
        ide_cookie(ID_B, OWNER, OWNER_SESSION)
    );
    let other_user = format!(
        "edgegate_ide={}; session={OTHER_SESSION}",
        ide_cookie(ID_A, "user-2", OTHER_SESSION)
    );
    let unbound = format!("edgegate_ide={}; session={OWNER_SESSION}", t.ide_cookie);
    let dev_as_cookie = format!("edgegate_ide={}; session={OWNER_SESSION}", t.dev);
    let garbage = format!("edgegate_ide=nope; session={OWNER_SESSION}");
    let tossed = format!("{bound}; session=sess-later");
    let app = w.gw.app_host();
    let path = format!("/__ide/{ID_A}/index.html");
    let cases = [
        ("no credential", Cred::None, 401),
        (
            "owner's app session is not an ide credential",
            Cred::Session(OWNER_SESSION),
            401,
        ),
        ("ide cookie without its session", Cred::Cookies(&alone), 401),
        ("ide cookie beside its session", Cred::Cookies(&bound), 200),
        (
            "ide cookie beside another session of its user",
            Cred::Cookies(&beside_another_session),
            401,
        ),
        (
            "ide cookie whose session expired",
            Cred::Cookies(&expired_session),
            401,
        ),
        ("ide cookie for another id", Cred::Cookies(&other_id), 403),
        (
            "ide cookie for another user",
            Cred::Cookies(&other_user),
            403,
        ),
        (
            "an ide cookie bound to no session",
            Cred::Cookies(&unbound),
            401,
        ),
        (
            "a dev-ide token as the cookie",
            Cred::Cookies(&dev_as_cookie),
            403,
        ),
        ("garbage cookie", Cred::Cookies(&garbage), 401),
        (
            "a second, tossed session cookie",
            Cred::Cookies(&tossed),
            401,
        ),
        ("dev-ide token, query", Cred::Query(&t.dev), 401),
        ("dev-ide token, bearer", Cred::Bearer(&t.dev), 200),
        ("dev-ide token, bearer, again", Cred::Bearer(&t.dev), 401),
        ("terminal token", Cred::Bearer(&t.term), 403),
        ("expired dev-ide token", Cred::Bearer(&t.dev_expired), 401),
        (
            "dev-ide token for another id",
            Cred::Bearer(&t.dev_wrong_id),
            403,
        ),
        (
            "dev-ide token for another user",
            Cred::Bearer(&t.dev_wrong_user),
            403,
        ),
        ("alg none", Cred::Bearer(&t.alg_none), 401),
        ("tampered", Cred::Bearer(&t.term_tampered), 401),
        ("oversize", Cred::Bearer(&t.oversize), 401),
    ];
    run_table(&w, &w.b, &app, &path, &cases).await;
    let r = send(&w, &app, &path, Cred::Cookies(&tossed)).await;
    assert_eq!(r.error_code(), "ambiguous_credentials");
    let r = send(
        &w,
        &app,
        &path,
        Cred::Query(&mint(TokenType::DevIde, ID_A, OWNER)),
    )
    .await;
    assert_eq!(
        r.error_code(),
        "unauthenticated",
        "a URL token is not even looked at"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_status_is_answered_for_the_owner_only() {
    let w = world().await;
    let t = tokens();
    let app = w.gw.app_host();
    let path = format!("/api/servers/{ID_A}/status");
    let r = send(&w, &app, &path, Cred::Session(OWNER_SESSION)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"state": "online", "agent_version": "1.2.3"})
    );
    for (cred, status) in [
        (Cred::None, 401),
        (Cred::Session(OTHER_SESSION), 403),
        (Cred::Session("sess-expired"), 401),
        (Cred::Bearer(&t.dev), 401),
    ] {
        assert_eq!(send(&w, &app, &path, cred).await.status, status);
    }
    // A dev record without agent state.
    w.redis.dev(ID_B, &w.b.addr.to_string());
    let r = send(
        &w,
        &app,
        &format!("/api/servers/{ID_B}/status"),
        Cred::Session(OWNER_SESSION),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(w.a.count() + w.b.count() + w.app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_needs_the_owners_session_and_a_post() {
    let w = world().await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let app = w.gw.app_host();
    let owner = format!("session={OWNER_SESSION}");
    let other = format!("session={OTHER_SESSION}");
    for path in [
        format!("/api/dev/{ID_A}/ide-token"),
        format!("/api/workspaces/{ID_A}/terminal-token"),
    ] {
        let r =
            w.gw.request("POST", &app, &path, &[("Cookie", &owner)])
                .await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let v = r.json();
        let token = v["token"].as_str().expect("token");
        assert!(
            v["expires_in"]
                .as_u64()
                .is_some_and(|s| s == 300 || s == 60),
            "{v}"
        );
        assert!(v["url"]
            .as_str()
            .expect("url")
            .ends_with(&format!("token={token}")));
        assert_eq!(
            w.gw.request("GET", &app, &path, &[("Cookie", &owner)])
                .await
                .status,
            405
        );
        assert_eq!(w.gw.request("POST", &app, &path, &[]).await.status, 401);
        assert_eq!(
            w.gw.request("POST", &app, &path, &[("Cookie", &other)])
                .await
                .status,
            403
        );
        // A cross-site POST with the owner's cookie.
        let r =
            w.gw.request(
                "POST",
                &app,
                &path,
                &[("Cookie", &owner), ("Origin", "https://evil.test")],
            )
            .await;
        assert_eq!(r.status, 403);
    }
    assert_eq!(w.a.count() + w.b.count() + w.app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_token_from_the_endpoint_opens_the_agent_websocket() {
    let w = world().await;
    let app = w.gw.app_host();
    let owner = format!("session={OWNER_SESSION}");
    let r =
        w.gw.request(
            "POST",
            &app,
            &format!("/api/workspaces/{ID_A}/terminal-token"),
            &[("Cookie", &owner)],
        )
        .await;
    let url = r.json()["url"].as_str().expect("url").to_string();
    let expected_prefix = format!("ws://{}/agent/ws?token=", w.gw.ws_host(ID_A));
    assert!(url.starts_with(&expected_prefix), "{url}");
    let path_and_query = &url[format!("ws://{}", w.gw.ws_host(ID_A)).len()..];
    // No cookie and no Origin: the token is the whole proof.
    let mut ws = ws_connect(w.gw.addr, &w.gw.ws_host(ID_A), path_and_query, &[])
        .await
        .expect("101 with the owner's terminal token");
    assert_eq!(ws_roundtrip(&mut ws, "ls").await, "upstream-a:ls");
    assert_eq!(ws_roundtrip(&mut ws, "pwd").await, "upstream-a:pwd");
    let seen = w.a.seen();
    assert_eq!(seen.len(), 1);
    // The agent validates the token too: on its path, ?token= is forwarded.
    assert!(
        seen[0].target.starts_with("/agent/ws?token="),
        "{}",
        seen[0].target
    );
    assert_eq!(seen[0].header("x-edgegate-user"), Some(OWNER));

    // Another user's token, and an expired one: refused, nothing reaches the upstream.
    let t = tokens();
    for bad in [&t.term_wrong_user, &t.term_expired] {
        let Err(e) = ws_connect(
            w.gw.addr,
            &w.gw.ws_host(ID_A),
            &format!("/agent/ws?token={bad}"),
            &[],
        )
        .await
        else {
            panic!("accepted")
        };
        let status = match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
            other => panic!("{other:?}"),
        };
        assert!(status == 401 || status == 403, "{status}");
    }
    assert_eq!(w.a.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_authenticated_requests_must_come_from_their_own_origin() {
    let extra = "";
    let w = World::start(extra).await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    let own = format!("http://{host}");
    let sibling = format!("http://{}", w.gw.ws_host(ID_B));
    let cookie = format!("session={OWNER_SESSION}");
    let r =
        w.gw.request("GET", &host, "/", &[("Cookie", &cookie), ("Origin", &own)])
            .await;
    assert_eq!(r.status, 200);
    let r =
        w.gw.request(
            "GET",
            &host,
            "/",
            &[("Cookie", &cookie), ("Origin", &sibling)],
        )
        .await;
    assert_eq!(r.status, 403, "workspace B's page using A's cookie");
    assert_eq!(w.a.count(), 1);

    // Upgrades: a cookie needs a matching Origin; a token needs none.
    let e = ws_connect(w.gw.addr, &host, "/agent/ws", &[("cookie", &cookie)]).await;
    assert!(e.is_err(), "cookie upgrade without Origin");
    let e = ws_connect(
        w.gw.addr,
        &host,
        "/agent/ws",
        &[("cookie", &cookie), ("origin", &sibling)],
    )
    .await;
    assert!(e.is_err(), "cookie upgrade from a sibling workspace");
    assert_eq!(w.a.count(), 1);
    let mut ws = ws_connect(
        w.gw.addr,
        &host,
        "/agent/ws",
        &[("cookie", &cookie), ("origin", &own)],
    )
    .await
    .expect("same-origin cookie upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "x").await, "upstream-a:x");
    let token = mint(TokenType::Terminal, ID_A, OWNER);
    let mut ws = ws_connect(
        w.gw.addr,
        &host,
        &format!("/agent/ws?token={token}"),
        &[("origin", &sibling)],
    )
    .await
    .expect("token upgrade does not depend on Origin");
    assert_eq!(ws_roundtrip(&mut ws, "y").await, "upstream-a:y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_trusted_origin_is_accepted() {
    let redis = Redis::start();
    redis.sessions();
    let a = upstream("a").await;
    let app = upstream("app").await;
    let text = config_text(free_port(), redis.port, app.addr, "").replace(
        "[auth]\n",
        "[auth]\ntrusted_origins = [\"https://app.example.test\"]\n",
    );
    let gw = Gateway::start(&text);
    redis.workspace(ID_A, &a.addr.to_string());
    let cookie = format!("session={OWNER_SESSION}");
    let host = gw.ws_host(ID_A);
    let ok = gw
        .request(
            "GET",
            &host,
            "/",
            &[("Cookie", &cookie), ("Origin", "https://app.example.test")],
        )
        .await;
    assert_eq!(ok.status, 200);
    let no = gw
        .request(
            "GET",
            &host,
            "/",
            &[("Cookie", &cookie), ("Origin", "https://evil.test")],
        )
        .await;
    assert_eq!(no.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_workspace_and_identity_headers_are_edgegates() {
    let w = world().await;
    let host = w.gw.ws_host(ID_A);
    let t = tokens();
    let cookie = format!(
        "theme=dark; session={OWNER_SESSION}; edgegate_ide={}; other=1",
        t.ide_cookie
    );
    let bearer = format!("Bearer {}", t.dev);
    let r =
        w.gw.request(
            "GET",
            &host,
            "/page?a=1&token=abc&b=2",
            &[
                ("Cookie", &cookie),
                ("Authorization", &bearer),
                ("X-Edgegate-User", "admin"),
                ("X-Edgegate-Workspace", ID_B),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = &w.a.seen()[0];
    assert_eq!(s.header("cookie"), Some("theme=dark; other=1"));
    assert_eq!(
        s.header("authorization"),
        None,
        "an edgegate token in Authorization is dropped"
    );
    assert_eq!(
        s.target, "/page?a=1&b=2",
        "?token= is not forwarded off the agent path"
    );
    assert_eq!(s.header("x-edgegate-user"), Some(OWNER));
    assert_eq!(s.header("x-edgegate-workspace"), Some(ID_A));
    assert_eq!(s.header_count("x-edgegate-user"), 1);

    // A foreign Authorization (the workspace app's own) is kept.
    let r =
        w.gw.request(
            "GET",
            &host,
            "/",
            &[
                ("Cookie", &format!("session={OWNER_SESSION}")),
                ("Authorization", "Basic dTpw"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.a.seen()[1].header("authorization"), Some("Basic dTpw"));
    assert_eq!(
        w.a.seen()[1].header("cookie"),
        None,
        "a Cookie header of nothing but credentials goes"
    );

    // The tunnel: the ide cookie and its session dropped, a `?token=` (in any spelling) too.
    let r =
        w.gw.request(
            "GET",
            &w.gw.app_host(),
            &format!("/__ide/{ID_A}/x?token=abc&q=1&%74oken=def"),
            &[(
                "Cookie",
                &format!(
                    "edgegate_ide={}; keep=me; session={OWNER_SESSION}",
                    ide_cookie(ID_A, OWNER, OWNER_SESSION)
                ),
            )],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = &w.b.seen()[0];
    assert_eq!(s.target, "/x?q=1");
    assert_eq!(s.header("cookie"), Some("keep=me"));

    // Without edgegate's cookies, one header goes as it came; split ones are joined. The
    // dev-ide token (Bearer, one per request) does not go upstream.
    let path = format!("/__ide/{ID_A}/y");
    for (cookies, want) in [
        (&["a=1;b=2"][..], "a=1;b=2"),
        (&["a=1", "b=2"][..], "a=1; b=2"),
    ] {
        let bearer = format!("Bearer {}", mint(TokenType::DevIde, ID_A, OWNER));
        let mut headers: Vec<_> = cookies.iter().map(|c| ("Cookie", *c)).collect();
        headers.push(("Authorization", &bearer));
        let r = w.gw.request("GET", &w.gw.app_host(), &path, &headers).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let seen = w.b.seen();
        let s = seen.last().expect("seen");
        assert_eq!(s.header_count("cookie"), 1);
        assert_eq!(s.header("cookie"), Some(want));
        assert_eq!(s.header("authorization"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ide_bootstrap_spends_the_token_once_and_sets_a_scoped_cookie() {
    let w = world().await;
    let app = w.gw.app_host();
    let owner = format!("session={OWNER_SESSION}");
    let r =
        w.gw.request(
            "POST",
            &app,
            &format!("/api/dev/{ID_A}/ide-token"),
            &[("Cookie", &owner)],
        )
        .await;
    let v = r.json();
    let token = v["token"].as_str().expect("token").to_string();
    let url = v["url"].as_str().expect("url").to_string();
    assert_eq!(
        url,
        format!("http://{app}/api/dev/{ID_A}/ide?token={token}")
    );

    let path = format!("/api/dev/{ID_A}/ide?token={token}");
    // Opened in another user's browser: refused, and the token is not spent.
    let other = format!("session={OTHER_SESSION}");
    assert_eq!(
        w.gw.request("GET", &app, &path, &[("Cookie", &other)])
            .await
            .status,
        403
    );
    assert_eq!(
        w.gw.request("GET", &app, &path, &[]).await.status,
        401,
        "no session at all"
    );
    let r =
        w.gw.request("GET", &app, &path, &[("Cookie", &owner)])
            .await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("/__ide/{ID_A}/").as_str())
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    let set = r.header("set-cookie").expect("set-cookie").to_string();
    let value = set
        .strip_prefix("edgegate_ide=")
        .and_then(|s| s.split(';').next())
        .expect("cookie value")
        .to_string();
    assert_ne!(value, token, "the cookie is not the bootstrap token");
    for attr in ["HttpOnly", "SameSite=Lax", &format!("Path=/__ide/{ID_A}/")] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
    assert!(
        !set.contains("Secure"),
        "cookie_secure = false in the test config: {set}"
    );

    // Replay: the jti is spent.
    let r =
        w.gw.request("GET", &app, &path, &[("Cookie", &owner)])
            .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "token_spent");
    // A token for another id.
    w.redis.dev(ID_B, &w.b.addr.to_string());
    let other = mint(TokenType::DevIde, ID_A, OWNER);
    let r =
        w.gw.request(
            "GET",
            &app,
            &format!("/api/dev/{ID_B}/ide?token={other}"),
            &[],
        )
        .await;
    assert_eq!(r.status, 403);

    // The cookie opens the tunnel beside the session it was minted under, HTTP and WebSocket
    // (with its own Origin); alone, it opens nothing.
    let alone = format!("edgegate_ide={value}");
    let r =
        w.gw.request(
            "GET",
            &app,
            &format!("/__ide/{ID_A}/"),
            &[("Cookie", &alone)],
        )
        .await;
    assert_eq!(r.status, 401);
    let cookie = format!("edgegate_ide={value}; {owner}");
    let r =
        w.gw.request(
            "GET",
            &app,
            &format!("/__ide/{ID_A}/"),
            &[("Cookie", &cookie)],
        )
        .await;
    assert_eq!(r.status, 200);
    let origin = format!("http://{app}");
    let mut ws = ws_connect(
        w.gw.addr,
        &app,
        &format!("/__ide/{ID_A}/stable"),
        &[("cookie", &cookie), ("origin", &origin)],
    )
    .await
    .expect("tunnel upgrade with the ide cookie");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await, "upstream-b:hi");
    assert!(w
        .b
        .seen()
        .iter()
        .any(|s| s.websocket && s.target == "/stable"));
    // No upgrade is answered with a redirect: the bootstrap refuses upgrades.
    let Err(e) = ws_connect(w.gw.addr, &app, &path, &[]).await else {
        panic!("accepted")
    };
    assert!(
        matches!(e, tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 400),
        "{e:?}"
    );
}

#[test]
fn token_mint_cli_prints_a_token_the_gateway_accepts() {
    let dir = std::env::temp_dir().join(format!("eg-mint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("c.toml");
    let text = config_text(
        free_port(),
        free_port(),
        "127.0.0.1:9".parse().expect("addr"),
        "",
    );
    std::fs::write(&cfg, text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgegate"))
        .args(["token", "mint", "-c"])
        .arg(&cfg)
        .args([
            "--type",
            "terminal",
            "--id",
            &ID_A.to_ascii_lowercase(),
            "--user",
            OWNER,
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let id = edgegate::route::WorkspaceId::parse(ID_A).expect("id");
    let v = keys()
        .verify(&token, TokenType::Terminal, &id)
        .expect("verifies");
    assert_eq!(v.sub, OWNER);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_edgegate"))
        .args(["token", "mint", "-c"])
        .arg(&cfg)
        .args(["--type", "admin", "--id", ID_A, "--user", OWNER])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(64));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_session_stops_working_as_soon_as_it_is_invalidated() {
    // A long TTL: only the message can explain the refusal.
    let w = World::start("[cache]\nttl_ms = 60000\n").await;
    w.redis.wait_for_subscriber("edgegate:invalidate");
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    assert_eq!(
        send(&w, &host, "/", Cred::Session(OWNER_SESSION))
            .await
            .status,
        200
    );
    let _: () = redis::cmd("DEL")
        .arg(format!("session:{OWNER_SESSION}"))
        .query(&mut w.redis.conn())
        .expect("DEL");
    assert_eq!(
        send(&w, &host, "/", Cred::Session(OWNER_SESSION))
            .await
            .status,
        200,
        "still cached"
    );
    w.redis
        .publish("edgegate:invalidate", &format!("session:{OWNER_SESSION}"));
    let refused = eventually(std::time::Duration::from_secs(1), || async {
        send(&w, &host, "/", Cred::Session(OWNER_SESSION))
            .await
            .status
            == 401
    })
    .await;
    assert!(refused, "the revoked session is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_route_upgrades_take_the_owners_session_from_its_own_origin() {
    let w = world().await;
    let host = format!("ws-{ID_A}--{}.{DOMAIN}:{}", w.a.addr.port(), w.gw.port);
    let origin = format!("http://{host}");
    let owner = format!("session={OWNER_SESSION}");
    let other = format!("session={OTHER_SESSION}");
    let mut ws = ws_connect(
        w.gw.addr,
        &host,
        "/socket",
        &[("cookie", &owner), ("origin", &origin)],
    )
    .await
    .expect("owner's upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "p").await, "upstream-a:p");
    for headers in [
        vec![("origin", origin.as_str())],
        vec![("cookie", &other), ("origin", &origin)],
    ] {
        let Err(tokio_tungstenite::tungstenite::Error::Http(r)) =
            ws_connect(w.gw.addr, &host, "/socket", &headers).await
        else {
            panic!("accepted")
        };
        assert!(matches!(r.status().as_u16(), 401 | 403));
    }
    assert_eq!(w.a.count(), 1);
}
