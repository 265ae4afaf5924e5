//! The auth boundary against an attacker (issue #15): one test per finding of the attack run on
//! 704e51a, each failing there and passing now, with real Redis, real upstreams and raw
//! sockets. What the attacker got and what the upstream saw are asserted, not only statuses.
//! docs/SECURITY.md names these tests in its tables.

mod common;

use common::*;
use edgegate::auth::token::TokenType;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The value of one series in a Prometheus text page (0 when absent).
fn series(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (lhs, value) = l.rsplit_once(' ')?;
            let (metric, rest) = lhs.split_once('{').unwrap_or((lhs, "}"));
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The records of the boundary tests: workspace A with dev record (upstream B), sessions.
async fn world(extra: &str) -> World {
    let w = World::start(extra).await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.dev(ID_A, &w.b.addr.to_string());
    w
}

/// Finding 1 (critical): a dev-ide token in the URL opened the IDE tunnel with no session, on
/// the app's origin, in whatever browser followed the link; the victim's other app cookies
/// reached the attacker's workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f01_a_dev_ide_token_in_a_link_opens_no_tunnel_in_the_victims_browser() {
    let w = world("").await;
    let app = w.gw.app_host();
    // The victim's browser: its own session and another app cookie.
    let victim = format!("session={OTHER_SESSION}; app_pref=victim-secret");
    for param in ["token", "%74oken", "TOKEN"] {
        let attackers = mint(TokenType::DevIde, ID_A, OWNER);
        let r =
            w.gw.request(
                "GET",
                &app,
                &format!("/__ide/{ID_A}/?{param}={attackers}"),
                &[("Cookie", &victim)],
            )
            .await;
        assert_eq!(r.status, 401, "{param}: {}", r.body);
        assert_eq!(r.error_code(), "unauthenticated");
        assert_eq!(r.header("set-cookie"), None, "no ide cookie planted");
        // Nothing of the attacker's workspace rendered: its upstream saw nothing.
        assert_eq!(
            w.b.count(),
            0,
            "{param}: the attacker's upstream was reached"
        );
    }
    // The lower-case spelling of the id, and the redirect without the slash, too.
    let attackers = mint(TokenType::DevIde, ID_A, OWNER);
    let lower = ID_A.to_ascii_lowercase();
    let r =
        w.gw.request(
            "GET",
            &app,
            &format!("/__ide/{lower}/?token={attackers}"),
            &[("Cookie", &victim)],
        )
        .await;
    assert_eq!(r.status, 401);
    let r =
        w.gw.request(
            "GET",
            &app,
            &format!("/__ide/{ID_A}?token={attackers}"),
            &[("Cookie", &victim)],
        )
        .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("/__ide/{ID_A}/").as_str()),
        "the token is not copied into the Location"
    );
    assert_eq!(w.b.count(), 0);
}

/// Finding 2: a bootstrap token whose `jti` was spent still opened the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f02_a_spent_bootstrap_token_opens_nothing() {
    let w = world("").await;
    let app = w.gw.app_host();
    let owner = format!("session={OWNER_SESSION}");
    let minted =
        w.gw.request(
            "POST",
            &app,
            &format!("/api/dev/{ID_A}/ide-token"),
            &[("Cookie", &owner)],
        )
        .await;
    let token = minted.json()["token"].as_str().expect("token").to_string();
    let r =
        w.gw.request(
            "GET",
            &app,
            &format!("/api/dev/{ID_A}/ide?token={token}"),
            &[("Cookie", &owner)],
        )
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    // Spent: as Bearer on the tunnel (the one place a dev-ide token opens it), it is refused.
    let bearer = format!("Bearer {token}");
    let r =
        w.gw.request(
            "GET",
            &app,
            &format!("/__ide/{ID_A}/"),
            &[("Authorization", &bearer)],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "token_spent");
    // And a fresh one, used on the tunnel first, is spent there: the bootstrap refuses it.
    let fresh = mint(TokenType::DevIde, ID_A, OWNER);
    let bearer = format!("Bearer {fresh}");
    let r =
        w.gw.request(
            "GET",
            &app,
            &format!("/__ide/{ID_A}/"),
            &[("Authorization", &bearer)],
        )
        .await;
    assert_eq!(r.status, 200);
    let r =
        w.gw.request(
            "GET",
            &app,
            &format!("/api/dev/{ID_A}/ide?token={fresh}"),
            &[("Cookie", &owner)],
        )
        .await;
    assert_eq!(r.error_code(), "token_spent");
    assert_eq!(w.b.count(), 1, "only the first use reached the upstream");
}

/// Finding 3a: an idle kept-alive connection was never closed (Pingora keeps HTTP/1.1
/// connections forever between requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f03a_an_idle_keep_alive_connection_is_closed_after_its_timeout() {
    let w = world("[limits]\nkeepalive_timeout_secs = 1\n").await;
    let host = w.gw.ws_host(ID_A);
    let mut s = TcpStream::connect(w.gw.addr).await.expect("connect");
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nCookie: session={OWNER_SESSION}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let first = read_one_response(&mut s).await;
    assert_eq!(first.status, 200);
    // Kept alive: a second request on it is served…
    s.write_all(req.as_bytes()).await.expect("write");
    assert_eq!(read_one_response(&mut s).await.status, 200);
    // …then, idle, it is closed by the gateway (bounded wait: 10 s for a 1 s timeout).
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the idle connection was still open after 10 s"
    );
    assert!(rest.is_empty(), "nothing but the close: {rest:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before its timeout"
    );
}

/// The keep-alive timeout counts from the end of the last response, not the first: a
/// connection used again before its timeout each time stays open past the first wait's end
/// (the gateway keeps one timer per connection and moves it when it fires early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f03a_the_keep_alive_timeout_restarts_with_each_request() {
    let w = world("[limits]\nkeepalive_timeout_secs = 3\n").await;
    let host = w.gw.ws_host(ID_A);
    let mut s = TcpStream::connect(w.gw.addr).await.expect("connect");
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nCookie: session={OWNER_SESSION}\r\n\r\n");
    for i in 0..3 {
        if i > 0 {
            // Two thirds of the timeout idle; the third request comes after the first
            // wait's end (3 s after the first response).
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        s.write_all(req.as_bytes()).await.expect("write");
        assert_eq!(read_one_response(&mut s).await.status, 200, "request {i}");
    }
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the idle connection was still open after 15 s"
    );
    assert!(rest.is_empty(), "nothing but the close: {rest:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2700),
        "the last wait had its whole timeout: {waited:?}"
    );
    // Not moved past the wait's end either (twice the timeout: room for a slow machine).
    assert!(
        waited < Duration::from_secs(6),
        "closed at its timeout: {waited:?}"
    );
}

/// Finding 3b: a client that stops reading a large response held its connection and an
/// upstream connection forever (no write timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f03b_a_client_that_stops_reading_releases_its_upstream() {
    let w = World::start("[limits]\nsend_timeout_ms = 1000\n").await;
    // An upstream that streams an endless body and notes when its connection is dropped.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<u64>();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = l.accept().await {
            let mut head = [0u8; 4096];
            let _ = s.read(&mut head).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000000\r\n\r\n")
                .await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0u64;
            while s.write_all(&chunk).await.is_ok() {
                sent += chunk.len() as u64;
            }
            let _ = gone_tx.send(sent);
        }
    });
    w.redis.workspace(ID_A, &addr.to_string());
    let mut s = TcpStream::connect(w.gw.addr).await.expect("connect");
    let req = format!(
        "GET /big HTTP/1.1\r\nHost: {}\r\nCookie: session={OWNER_SESSION}\r\n\r\n",
        w.gw.ws_host(ID_A)
    );
    s.write_all(req.as_bytes()).await.expect("write");
    // The client never reads. The gateway gives up on it, and drops the upstream connection.
    let sent = tokio::time::timeout(Duration::from_secs(30), gone_rx)
        .await
        .expect("the upstream connection was released within 30 s")
        .expect("sent");
    assert!(sent > 0, "the body was flowing before the client stalled");
    drop(s);
}

/// Finding 3c: a request body that stops arriving holds nothing for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f03c_a_request_body_that_stalls_ends_with_its_timeout() {
    let w = world("[limits]\nbody_timeout_ms = 1000\n").await;
    let mut s = TcpStream::connect(w.gw.addr).await.expect("connect");
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nCookie: session={OWNER_SESSION}\r\n\
         Content-Length: 1000\r\n\r\nonly-some",
        w.gw.ws_host(ID_A)
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the stalled upload was still open after 15 s"
    );
}

/// Finding 3d: an upstream that stalls in the middle of its body is cut off (the client sees a
/// truncated response, never a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f03d_an_upstream_that_stalls_mid_body_is_cut_off() {
    let w = World::start("[upstream]\nread_timeout_ms = 1000\n").await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((mut s, _)) = l.accept().await {
            let mut head = [0u8; 4096];
            let _ = s.read(&mut head).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npart")
                .await;
            // Stalls, holding the connection open.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
    w.redis.workspace(ID_A, &addr.to_string());
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        w.gw.get(&w.gw.ws_host(ID_A), "/", &[]),
    )
    .await
    .expect("the response ended within 15 s");
    assert_eq!(r.status, 200);
    assert!(r.body.len() < 1000, "truncated, not completed");
}

/// Finding 4: a terminal token in `?token=` authorised a plain GET of the agent path, so any
/// visitor could be shown the owner's content on a workspace subdomain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f04_a_terminal_token_authorises_no_plain_request() {
    let w = world("").await;
    let host = w.gw.ws_host(ID_A);
    for path in [
        agent_path(ID_A, OWNER),
        format!("{}&x=1", agent_path(ID_A, OWNER)),
    ] {
        let r = w.gw.request("GET", &host, &path, &[]).await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let bearer = format!("Bearer {}", mint(TokenType::Terminal, ID_A, OWNER));
    let r =
        w.gw.request("GET", &host, "/agent/ws", &[("Authorization", &bearer)])
            .await;
    assert_eq!(r.status, 401);
    assert_eq!(w.a.count(), 0, "the owner's content was never fetched");
    // The same token on an upgrade is what it is for.
    let r = upgrade(w.gw.addr, &host, &agent_path(ID_A, OWNER), &[]).await;
    assert_eq!(r.status, 101);
}

/// Finding 5: deleting the app session (and publishing the invalidation) did not revoke the
/// ide cookie, valid 12 h, nor the tunnels it had opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f05_an_ended_session_ends_its_ide_cookie_and_open_tunnels() {
    let w = world("").await;
    w.redis.wait_for_subscriber("edgegate:invalidate");
    let app = w.gw.app_host();
    let sid = "sess-revocable";
    w.redis.hset(&format!("session:{sid}"), &[("user", OWNER)]);
    let cookie = format!(
        "edgegate_ide={}; session={sid}",
        ide_cookie(ID_A, OWNER, sid)
    );
    let path = format!("/__ide/{ID_A}/");
    let headers = [("Cookie", cookie.as_str())];
    let get = || w.gw.request("GET", &app, &path, &headers);
    assert_eq!(get().await.status, 200);
    let origin = format!("http://{app}");
    let mut ws = ws_connect(
        w.gw.addr,
        &app,
        &format!("/__ide/{ID_A}/socket"),
        &[("cookie", &cookie), ("origin", &origin)],
    )
    .await
    .expect("tunnel");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await, "upstream-b:hi");

    let _: () = redis::cmd("DEL")
        .arg(format!("session:{sid}"))
        .query(&mut w.redis.conn())
        .expect("DEL");
    w.redis
        .publish("edgegate:invalidate", &format!("session:{sid}"));
    assert_eq!(expect_close(&mut ws, Duration::from_secs(5)).await, 1008);
    assert_eq!(get().await.status, 401, "the cookie opens nothing more");

    // A session that expires ends its tunnel at its expires_at, with no message at all.
    let sid = "sess-expiring";
    let exp = edgegate::auth::token::now() + 2;
    w.redis.hset(
        &format!("session:{sid}"),
        &[("user", OWNER), ("expires_at", &exp.to_string())],
    );
    let cookie = format!(
        "edgegate_ide={}; session={sid}",
        ide_cookie(ID_A, OWNER, sid)
    );
    let mut ws = ws_connect(
        w.gw.addr,
        &app,
        &format!("/__ide/{ID_A}/socket"),
        &[("cookie", &cookie), ("origin", &origin)],
    )
    .await
    .expect("tunnel");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await, "upstream-b:hi");
    assert_eq!(expect_close(&mut ws, Duration::from_secs(6)).await, 1008);
}

/// Finding 6: `X_Edgegate_User` and `X-Edgegate_User` reached the upstream beside edgegate's
/// own header (CGI and WSGI upstreams fold `_` into `-`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f06_owned_headers_in_folded_spellings_never_reach_the_upstream() {
    let w = world("").await;
    let r =
        w.gw.get(
            &w.gw.ws_host(ID_A),
            "/",
            &[
                ("X_Edgegate_User", "admin"),
                ("X-Edgegate_User", "admin"),
                ("x--edgegate--user", "admin"),
                ("X_Edgegate_Workspace", ID_B),
                ("X_Forwarded_For", "6.6.6.6"),
                ("Proxy", "http://evil.test:3128"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = &w.a.seen()[0];
    let mut folded: Vec<&str> = seen
        .headers
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.replace('_', "-").contains("edgegate") || k.contains("forwarded"))
        .collect();
    folded.sort_unstable();
    assert_eq!(
        folded,
        [
            "x-edgegate-user",
            "x-edgegate-workspace",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
        ],
        "edgegate's own copies only"
    );
    assert_eq!(seen.header("x-edgegate-user"), Some(OWNER));
    assert_eq!(seen.header("proxy"), None, "httpoxy");
}

/// Finding 7: six random `session` cookies cost four Redis lookups, and each random sid a
/// cache entry without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f07_unauthenticated_work_is_one_lookup_at_most_and_the_session_cache_is_bounded() {
    let w = world("[cache]\nmax_entries = 50\n").await;
    let host = w.gw.ws_host(ID_A);
    // Warm the record.
    assert_eq!(w.gw.get(&host, "/", &[]).await.status, 200);
    let before = w.redis.calls("hgetall");
    let six: String = (0..6)
        .map(|i| format!("session=random-{i}"))
        .collect::<Vec<_>>()
        .join("; ");
    let r = w.gw.request("GET", &host, "/", &[("Cookie", &six)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "ambiguous_credentials");
    assert_eq!(w.redis.calls("hgetall") - before, 0, "no lookup at all");
    // One random sid: one lookup; the same again: none (negative answers are cached).
    let one = "session=random-one";
    for _ in 0..3 {
        let r = w.gw.request("GET", &host, "/", &[("Cookie", one)]).await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(w.redis.calls("hgetall") - before, 1);
    // Two hundred random sids: the session cache stays inside its bound, evictions counted.
    for i in 0..200 {
        let c = format!("session=flood-{i}");
        assert_eq!(
            w.gw.request("GET", &host, "/", &[("Cookie", &c)])
                .await
                .status,
            401
        );
    }
    let page = w.gw.admin_get("/metrics").await.body;
    let evicted = series(
        &page,
        "edgegate_cache_evictions_total",
        &[("cache", "sessions")],
    );
    assert!(evicted >= 150.0, "{evicted} evictions");
    // The owner's session still works (looked up again when evicted).
    assert_eq!(w.gw.get(&host, "/", &[]).await.status, 200);
}

/// Finding 8: a WebSocket upgrade to a backend that refuses the connection got 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f08_a_websocket_to_a_refusing_backend_is_502_like_a_plain_request() {
    let w = World::start("").await;
    w.redis
        .workspace(ID_A, &format!("127.0.0.1:{}", free_port()));
    let host = w.gw.ws_host(ID_A);
    let origin = format!("http://{host}");
    let cookie = format!("session={OWNER_SESSION}");
    let plain = w.gw.get(&host, "/", &[]).await;
    let ws = upgrade(
        w.gw.addr,
        &host,
        "/agent/ws",
        &[("Cookie", &cookie), ("Origin", &origin)],
    )
    .await;
    assert_eq!(plain.status, 502);
    assert_eq!(ws.status, 502, "{}", ws.body);
    assert_eq!(ws.error_code(), plain.error_code());
}

/// Finding 9: `?%74oken=` was neither redacted in the access log nor stripped before the
/// upstream (parameter names were not decoded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f09_an_encoded_token_parameter_is_stripped_and_redacted() {
    let dir = Scratch::new("eg-f09");
    let log = dir.join("access.log");
    let w = world(&format!(
        "[log]\naccess_log = {:?}\n",
        log.display().to_string()
    ))
    .await;
    let r =
        w.gw.get(
            &w.gw.ws_host(ID_A),
            "/page?a=1&%74oken=s3cret-one&To%6Ben=s3cret-two&b=2",
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.a.seen()[0].target, "/page?a=1&b=2");
    let logged = eventually(Duration::from_secs(3), || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/page"))
    })
    .await;
    assert!(logged);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.contains("s3cret"),
        "a token in the access log: {text}"
    );
}

/// Finding 10: a request-smuggling corpus got through where a header spelled `_` or `---`
/// named the framing (forwarded while edgegate read no body), where equal duplicate lengths
/// went upstream as sent, and where control characters in the target were percent-encoded
/// and forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f10_ambiguous_framing_is_refused_and_duplicate_lengths_go_as_one() {
    let w = world("").await;
    let host = w.gw.ws_host(ID_A);
    let head = |extra: &str, target: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nCookie: session={OWNER_SESSION}\r\n\
             Connection: close\r\n{extra}\r\n"
        )
    };
    for (name, extra) in [
        ("Transfer_Encoding", "Transfer_Encoding: chunked\r\n"),
        ("Content_Length", "Content_Length: 1000\r\n"),
        ("Transfer---Encoding", "Transfer---Encoding: chunked\r\n"),
        ("transfer-encoding_", "transfer-encoding_: chunked\r\n"),
    ] {
        let r = raw(w.gw.addr, head(extra, "/").as_bytes()).await;
        assert_eq!(r.status, 400, "{name}");
        assert_eq!(r.error_code(), "bad_framing", "{name}");
    }
    for (name, target) in [
        ("control", "/a\x01b"),
        ("tab", "/a\tb"),
        ("DEL", "/a\x7fb"),
        ("space", "/a b"),
    ] {
        let r = raw(w.gw.addr, head("", target).as_bytes()).await;
        assert_eq!(r.status, 400, "{name}");
        assert_eq!(r.error_code(), "bad_path", "{name}");
    }
    assert_eq!(w.a.count(), 0, "nothing ambiguous reached the upstream");
    // Equal duplicate lengths: one goes upstream, with the body it frames.
    for lengths in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5,5\r\n",
    ] {
        let mut req = head(lengths, "/dup").into_bytes();
        req.extend_from_slice(b"hello");
        let r = raw(w.gw.addr, &req).await;
        assert_eq!(r.status, 200, "{lengths:?}: {}", r.body);
        let seen = w.a.seen();
        let s = seen.last().expect("seen");
        assert_eq!(s.header_count("content-length"), 1, "{lengths:?}");
        assert_eq!(s.header("content-length"), Some("5"));
    }
    // Differing lengths are refused by Pingora before any route is asked.
    let mut req = head("Content-Length: 5\r\nContent-Length: 6\r\n", "/").into_bytes();
    req.extend_from_slice(b"hello!");
    let mut s = TcpStream::connect(w.gw.addr).await.expect("connect");
    s.write_all(&req).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(
        !String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "differing lengths were proxied"
    );
    assert_eq!(w.a.count(), 2);
}

/// Finding 11: the port route reached any port of the record's host (edgegate's own metrics
/// among them, with a loopback backend), names resolving to loopback, link-local or metadata
/// addresses were proxied, and a token-opened tunnel lived forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f11_backends_only_where_the_operator_allowed() {
    let redis = Redis::start();
    redis.sessions();
    let a = upstream("a").await;
    let app = upstream("app").await;
    // No loopback exception here: the operator's default.
    let text = config_text(free_port(), redis.port, app.addr, "")
        .replace("allowed_networks = [\"127.0.0.0/8\"]\n", "")
        .replace(
            "allowed_ports = [\"1024-65535\"]",
            &format!("allowed_ports = [{}]", a.addr.port()),
        );
    let gw = Gateway::start(&text);
    for backend in [
        a.addr.to_string(),
        format!("localhost:{}", a.addr.port()),
        "169.254.169.254:80".to_string(),
        "[::1]:80".to_string(),
        "0.0.0.0:80".to_string(),
    ] {
        redis.workspace(ID_A, &backend);
        redis.publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
        let r = gw.get(&gw.ws_host(ID_A), "/", &[]).await;
        assert_eq!(r.status, 502, "{backend}: {}", r.body);
        assert_eq!(r.error_code(), "upstream_not_allowed", "{backend}");
    }
    assert_eq!(a.count(), 0, "no blocked address was connected to");
    // Ports: only the listed one; the admin listener's is not.
    let port_host = |p: u16| format!("ws-{ID_A}--{p}.{DOMAIN}:{}", gw.port);
    let r = gw.get(&port_host(gw.admin.port()), "/metrics", &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "port_not_allowed");
    let r = gw.get(&port_host(a.addr.port()), "/", &[]).await;
    assert_eq!(
        r.error_code(),
        "upstream_not_allowed",
        "a listed port is still refused on a blocked address"
    );
}

/// Finding 11 (last part): a tunnel opened with a token ends at `auth.token_tunnel_max_secs`,
/// and is re-checked on revocation like a cookie-opened one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f11_a_token_opened_tunnel_has_a_maximum_life_and_is_rechecked() {
    let redis = Redis::start();
    redis.sessions();
    let a = upstream("a").await;
    let app = upstream("app").await;
    let gw = Gateway::start(
        &config_text(free_port(), redis.port, app.addr, "").replacen(
            "cookie_secure = false\n",
            "cookie_secure = false\ntoken_tunnel_max_secs = 1\n",
            1,
        ),
    );
    redis.workspace(ID_A, &a.addr.to_string());
    let host = gw.ws_host(ID_A);
    let mut ws = ws_connect(gw.addr, &host, &agent_path(ID_A, OWNER), &[])
        .await
        .expect("upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await, "a:hi");
    assert_eq!(expect_close(&mut ws, Duration::from_secs(5)).await, 1008);

    // The record changes owner with no message at all: the periodic re-check closes it, long
    // before the default maximum life (12 h).
    let w = world("").await;
    let host = w.gw.ws_host(ID_A);
    let mut ws = ws_connect(w.gw.addr, &host, &agent_path(ID_A, OWNER), &[])
        .await
        .expect("upgrade");
    w.redis.hset(
        &format!("workspace:{ID_A}"),
        &[
            ("backend", &w.a.addr.to_string()),
            ("owner", "someone-else"),
            ("status", "running"),
        ],
    );
    assert_eq!(expect_close(&mut ws, Duration::from_secs(5)).await, 1008);
}

/// Read one response framed by Content-Length from a kept-alive connection.
async fn read_one_response(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let r = parse_response(&buf);
            let len: usize = r
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= head + 4 + len {
                return r;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .expect("read");
        assert!(n > 0, "closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An upstream that answers one request with `response` (written as it stands), then holds
/// the connection a while.
async fn one_answer_upstream(response: &'static [u8]) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let _ = s.write_all(response).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    addr
}

/// Found by the attacker's read after the fixes: the answer to a WebSocket upgrade (a 101 or a
/// declined one) never went through the response filter, so a workspace could set the app's
/// session cookie for the whole domain with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f12_an_upgrade_answer_cannot_set_what_reaches_beyond_its_workspace() {
    let w = world("").await;
    w.redis.wait_for_subscriber("edgegate:invalidate");
    let host = w.gw.ws_host(ID_A);
    for (what, response) in [
        (
            "101",
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
               Set-Cookie: session=ATTACKER; Domain=example.test; Path=/; HttpOnly\r\n\
               Set-Cookie: planted=1; Path=/\r\nClear-Site-Data: \"cookies\"\r\n\
               Keep-Alive: timeout=5\r\n\r\n"[..],
        ),
        (
            "declined",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\
               Set-Cookie: session=ATTACKER; Domain=example.test; Path=/\r\n\
               Set-Cookie: edgegate_ide=forged; Path=/\r\nSet-Cookie: planted=1; Path=/\r\n\
               Clear-Site-Data: \"cookies\"\r\n\r\nno"[..],
        ),
    ] {
        let up = one_answer_upstream(response).await;
        w.redis.workspace(ID_A, &up.to_string());
        w.redis
            .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
        let r = upgrade(w.gw.addr, &host, &agent_path(ID_A, OWNER), &[]).await;
        let cookies: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["planted=1; Path=/"], "{what}: {:?}", r.headers);
        assert_eq!(r.header("clear-site-data"), None, "{what}");
        assert_eq!(r.header("keep-alive"), None, "{what}: hop-by-hop");
        assert!(r.header("x-request-id").is_some(), "{what}");
    }
    // Through the tunnel, on the app's own origin: the cookie's path is the tunnel's.
    let up = one_answer_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSet-Cookie: planted=1; Path=/\r\n\
          Service-Worker-Allowed: /\r\n\r\n",
    )
    .await;
    w.redis.dev(ID_A, &up.to_string());
    let app = w.gw.app_host();
    let cookie = format!(
        "edgegate_ide={}; session={OWNER_SESSION}",
        ide_cookie(ID_A, OWNER, OWNER_SESSION)
    );
    let origin = format!("http://{app}");
    let r = upgrade(
        w.gw.addr,
        &app,
        &format!("/__ide/{ID_A}/socket"),
        &[("Cookie", &cookie), ("Origin", &origin)],
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.body);
    assert_eq!(
        r.header("set-cookie"),
        Some(format!("planted=1; Path=/__ide/{ID_A}/").as_str())
    );
    assert_eq!(r.header("service-worker-allowed"), None);
}

/// Found by the attacker's read: Pingora buffers up to a MiB of request head before any limit
/// is checked; the head is refused (431) once it outgrows the limits, as it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f13_an_oversized_request_head_is_refused_as_it_arrives() {
    let w = world("").await;
    let mut s = TcpStream::connect(w.gw.addr).await.expect("connect");
    let start = format!("GET / HTTP/1.1\r\nHost: {}\r\n", w.gw.ws_host(ID_A));
    s.write_all(start.as_bytes()).await.expect("write");
    // Never finished: 200 KiB of headers, no blank line.
    let line = format!("X-Pad: {}\r\n", "p".repeat(1000));
    let mut refused = Vec::new();
    for _ in 0..200 {
        if s.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut refused)).await;
    let r = parse_response(&refused);
    assert_eq!(r.status, 431, "{}", r.body);
    assert_eq!(r.error_code(), "headers_too_large");
    assert_eq!(w.a.count(), 0);
}

/// Found by the attacker's read: an edgegate token in a second `Authorization` header reached
/// the workspace (only the first was looked at).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f14_an_edgegate_token_in_any_authorization_header_stays_here() {
    let w = world("").await;
    let bearer = format!("Bearer {}", mint(TokenType::DevIde, ID_A, OWNER));
    let r =
        w.gw.get(
            &w.gw.ws_host(ID_A),
            "/two",
            &[("Authorization", "Basic dTpw"), ("Authorization", &bearer)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.a.seen()[0].header("authorization"), None);
}

/// A token the endpoints mint is bound to the app session that minted it (its client sends
/// no cookie): once that session has ended the token opens nothing, and a WebSocket it opened
/// closes (1008) — as a cookie-opened one does. (The attacker's read found token tunnels
/// outliving the session by up to `auth.token_tunnel_max_secs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f15_a_token_tunnel_ends_with_the_session_that_minted_its_token() {
    let w = world("").await;
    w.redis.wait_for_subscriber("edgegate:invalidate");
    let app = w.gw.app_host();
    let host = w.gw.ws_host(ID_A);
    let mint_under = |sid: &'static str| {
        let w = &w;
        let app = app.clone();
        async move {
            w.redis.hset(&format!("session:{sid}"), &[("user", OWNER)]);
            let r =
                w.gw.request(
                    "POST",
                    &app,
                    &format!("/api/workspaces/{ID_A}/terminal-token"),
                    &[("Cookie", &format!("session={sid}"))],
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["token"].as_str().expect("token").to_string()
        }
    };
    let end = |sid: &str| {
        let _: () = redis::cmd("DEL")
            .arg(format!("session:{sid}"))
            .query(&mut w.redis.conn())
            .expect("DEL");
        w.redis
            .publish("edgegate:invalidate", &format!("session:{sid}"));
    };

    let token = mint_under("sess-minting").await;
    let mut ws = ws_connect(w.gw.addr, &host, &format!("/agent/ws?token={token}"), &[])
        .await
        .expect("upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await, "upstream-a:hi");
    end("sess-minting");
    assert_eq!(expect_close(&mut ws, Duration::from_secs(5)).await, 1008);

    // Minted, then the session ends before the token is used: it opens nothing.
    let token = mint_under("sess-short").await;
    end("sess-short");
    let r = upgrade(w.gw.addr, &host, &format!("/agent/ws?token={token}"), &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // One minted by the operator (`edgegate token mint`) names no session, and opens.
    let r = upgrade(w.gw.addr, &host, &agent_path(ID_A, OWNER), &[]).await;
    assert_eq!(r.status, 101);
}
