//! Routing core against real parts: Redis, recording upstreams, the gateway on its own port.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_route_reaches_backend_with_browser_host_origin_and_forwarded_headers() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    let r =
        w.gw.get(
            &host,
            "/some/path?q=1",
            &[
                ("Origin", &format!("http://{host}")),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Host", "evil.test"),
                ("X-Edgegate-User", "admin"),
                ("X-Request-Id", "spoofed"),
                ("Forwarded", "for=6.6.6.6;host=evil.test"),
                ("X-Real-IP", "6.6.6.6"),
                ("X-Forwarded-Port", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some("upstream-a"));
    let seen = w.a.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.target, "/some/path?q=1");
    assert_eq!(
        s.header("host"),
        Some(host.as_str()),
        "browser Host, port included"
    );
    assert_eq!(s.header("origin"), Some(format!("http://{host}").as_str()));
    assert_eq!(
        s.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "untrusted client XFF dropped"
    );
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header("x-forwarded-host"), Some(host.as_str()));
    assert_eq!(s.header_count("x-forwarded-host"), 1);
    assert_eq!(
        s.header("x-edgegate-user"),
        Some(OWNER),
        "the verified user replaces the client's copy"
    );
    assert_eq!(s.header("x-edgegate-workspace"), Some(ID_A));
    for name in ["forwarded", "x-real-ip", "x-forwarded-port"] {
        assert_eq!(s.header(name), None, "client's {name} removed");
    }
    let rid = r
        .header("x-request-id")
        .expect("response carries x-request-id");
    assert_ne!(rid, "spoofed");
    assert_eq!(s.header("x-request-id"), Some(rid));
    assert_eq!(w.b.count() + w.app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_is_never_invented_and_upper_case_host_with_trailing_dot_routes_the_same() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let odd_host = format!("WS-{ID_A}.EXAMPLE.TEST.:{}", w.gw.port);
    let r = w.gw.get(&odd_host, "/", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = w.a.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("origin"), None);
    assert_eq!(seen[0].header("host"), Some(odd_host.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_forwarded_for_is_appended() {
    let w = World::start("").await;
    // Same world but with loopback trusted: start a second gateway with that listen section.
    let text = config_text(free_port(), w.redis.port, w.app.addr, "").replacen(
        "[listen]\n",
        "[listen]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        1,
    );
    let gw = Gateway::start(&text);
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    // Behind a TLS-terminating balancer: the browser's Origin is https.
    let origin = format!("https://{}", gw.ws_host(ID_A));
    let r = gw
        .get(
            &gw.ws_host(ID_A),
            "/",
            &[
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-Proto", "https"),
                ("Origin", &origin),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &w.a.seen()[0];
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    // From an untrusted peer the same header changes nothing.
    let r =
        w.gw.get(
            &w.gw.ws_host(ID_A),
            "/",
            &[
                ("X-Forwarded-Proto", "https"),
                ("Origin", &format!("https://{}", w.gw.ws_host(ID_A))),
            ],
        )
        .await;
    assert_eq!(
        r.status, 403,
        "an https Origin on a plain-HTTP hop is cross-origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_hosts_go_to_the_app_and_unknown_hosts_are_404() {
    let w = World::start("").await;
    let r = w.gw.get(&w.gw.app_host(), "/api/me", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(w.app.seen()[0].target, "/api/me");
    let r = w.gw.get(&format!("{DOMAIN}:{}", w.gw.port), "/", &[]).await;
    assert_eq!(r.status, 200);
    let r = w.gw.get("elsewhere.test", "/", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "no_route");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(w.app.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_and_traversal_are_400_before_redis_is_asked() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.hset(
        &format!("dev:{ID_B}"),
        &[("target", &w.b.addr.to_string()), ("owner", "u")],
    );
    let before = w.redis.calls("hgetall");
    let app = w.gw.app_host();
    let cases: Vec<(String, String, &str)> = vec![
        (format!("ws-nope.{DOMAIN}"), "/".into(), "bad_id"),
        (format!("ws-{}.{DOMAIN}", &ID_A[..25]), "/".into(), "bad_id"),
        (
            format!("ws-{}u.{DOMAIN}", &ID_A[..25]),
            "/".into(),
            "bad_id",
        ),
        (
            format!("ws-{ID_A}--80.{DOMAIN}"),
            "/".into(),
            "port_not_allowed",
        ),
        ("bad host!".into(), "/".into(), "bad_host"),
        (
            app.clone(),
            format!("/__ide/{ID_A}%2F..%2F{ID_B}/"),
            "bad_id",
        ),
        (app.clone(), format!("/__ide/..%2F{ID_B}/"), "bad_id"),
        (app.clone(), format!("/__ide/%2e%2e/{ID_B}/"), "bad_id"),
        (app.clone(), format!("/__ide/{ID_A}/../{ID_B}/"), "bad_path"),
        (
            app.clone(),
            format!("/__ide/{ID_A}/%2E%2e/{ID_B}/"),
            "bad_path",
        ),
        (app.clone(), format!("/__ide/{ID_A}/x%2fy"), "bad_path"),
    ];
    for (host, path, code) in cases {
        let r = w.gw.get(&host, &path, &[]).await;
        assert_eq!(r.status, 400, "{host} {path}: {r:?}");
        assert_eq!(r.error_code(), code, "{host} {path}");
    }
    assert_eq!(
        w.redis.calls("hgetall"),
        before,
        "no Redis lookup for a malformed id"
    );
    assert_eq!(
        w.a.count() + w.b.count() + w.app.count(),
        0,
        "no upstream was contacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_or_missing_host_is_400() {
    let w = World::start("").await;
    let dup = format!(
        "GET / HTTP/1.1\r\nHost: ws-{ID_A}.{DOMAIN}\r\nHost: app.{DOMAIN}\r\nConnection: close\r\n\r\n"
    );
    let r = raw(w.gw.addr, dup.as_bytes()).await;
    assert_eq!(r.status, 400, "{r:?}");
    let abs = format!(
        "GET http://app.{DOMAIN}/ HTTP/1.1\r\nHost: ws-{ID_A}.{DOMAIN}\r\nConnection: close\r\n\r\n"
    );
    let r = raw(w.gw.addr, abs.as_bytes()).await;
    assert_eq!(
        r.status, 400,
        "absolute-form target disagreeing with Host: {r:?}"
    );
    let none = b"GET / HTTP/1.0\r\n\r\n";
    let r = raw(w.gw.addr, none).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(w.a.count() + w.app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stay_on_the_clients_hop() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    let req = format!(
        "GET /hop HTTP/1.1\r\nHost: {host}\r\nCookie: session={OWNER_SESSION}\r\n\
         Connection: close, X-Hop-Secret\r\nX-Hop-Secret: s3cret\r\nKeep-Alive: timeout=5\r\n\
         TE: trailers\r\nProxy-Authorization: Basic c2VjcmV0\r\nX-Kept: yes\r\n\r\n"
    );
    let r = raw(w.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = w.a.seen();
    assert_eq!(seen.len(), 1);
    for gone in ["x-hop-secret", "keep-alive", "te", "proxy-authorization"] {
        assert_eq!(seen[0].header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(seen[0].header("x-kept"), Some("yes"));

    // A Connection option naming a forwarding header is refused before any upstream.
    let req = format!(
        "GET /hop HTTP/1.1\r\nHost: {host}\r\nCookie: session={OWNER_SESSION}\r\n\
         Connection: close, X-Forwarded-For\r\n\r\n"
    );
    let r = raw(w.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(!r.error_code().is_empty());
    assert_eq!(w.a.count(), 1, "the refused request reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_goes_upstream_in_origin_form() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    let req = format!(
        "GET http://{host}/x/y?z=1 HTTP/1.1\r\nHost: {host}\r\nCookie: session={OWNER_SESSION}\r\nConnection: close\r\n\r\n"
    );
    let r = raw(w.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = w.a.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/x/y?z=1");
    assert_eq!(seen[0].header("host"), Some(host.as_str()));
    assert_eq!(seen[0].header("x-forwarded-host"), Some(host.as_str()));

    // Without a Host header the target's authority is the host, and the upstream gets it as
    // Host (an HTTP/1.1 request without one is invalid).
    let req = format!(
        "GET http://{host}/no-host HTTP/1.1\r\nCookie: session={OWNER_SESSION}\r\nConnection: close\r\n\r\n"
    );
    let r = raw(w.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = w.a.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].target, "/no-host");
    assert_eq!(seen[1].header("host"), Some(host.as_str()));
    assert_eq!(seen[1].header_count("host"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ide_tunnel_strips_prefix_and_redirects_the_bare_prefix() {
    let w = World::start("").await;
    w.redis.dev(ID_A, &w.b.addr.to_string());
    let app = w.gw.app_host();
    let lower = ID_A.to_ascii_lowercase();
    let token = mint(edgegate::auth::token::TokenType::DevIde, ID_A, OWNER);
    let bearer = format!("Bearer {token}");
    let r =
        w.gw.get(
            &app,
            &format!("/__ide/{lower}/static/main.js?v=2"),
            &[("Origin", "http://x.test"), ("Authorization", &bearer)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let s = &w.b.seen()[0];
    assert_eq!(s.target, "/static/main.js?v=2");
    assert_eq!(s.header("host"), Some(app.as_str()));
    assert_eq!(s.header("origin"), Some("http://x.test"));

    let r = w.gw.get(&app, &format!("/__ide/{lower}"), &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("/__ide/{ID_A}/").as_str())
    );
    assert_eq!(w.b.count(), 1, "a redirect never reaches the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ide_route_can_keep_its_prefix() {
    let redis = Redis::start();
    let b = upstream("b").await;
    let text = config_text(free_port(), redis.port, b.addr, "").replace(
        "upstream_field = \"target\"",
        "upstream_field = \"target\"\nstrip_prefix = false",
    );
    let gw = Gateway::start(&text);
    redis.dev(ID_A, &b.addr.to_string());
    let cookie = format!(
        "edgegate_ide={}; session={OWNER_SESSION}",
        ide_cookie(ID_A, OWNER, OWNER_SESSION)
    );
    redis.sessions();
    let r = gw
        .request(
            "GET",
            &gw.app_host(),
            &format!("/__ide/{ID_A}/x"),
            &[("Cookie", &cookie)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b.seen()[0].target, format!("/__ide/{ID_A}/x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_route_goes_to_the_named_port_on_the_backend_host() {
    let w = World::start("").await;
    // The record names another port; the host's `--{port}` wins.
    w.redis.workspace(ID_A, "127.0.0.1:1");
    let host = format!("ws-{ID_A}--{}.{DOMAIN}:{}", w.b.addr.port(), w.gw.port);
    let r = w.gw.get(&host, "/p", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.b.seen()[0].header("host"), Some(host.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_can_be_set_to_the_upstreams_per_route() {
    let redis = Redis::start();
    let a = upstream("a").await;
    let app = upstream("app").await;
    let text = config_text(free_port(), redis.port, app.addr, "").replacen(
        "status_field = \"status\"\n",
        "status_field = \"status\"\npreserve_host = false\n",
        1,
    );
    let gw = Gateway::start(&text);
    redis.sessions();
    redis.workspace(ID_A, &a.addr.to_string());
    let browser = gw.ws_host(ID_A);
    let r = gw.get(&browser, "/", &[]).await;
    assert_eq!(r.status, 200);
    let s = &a.seen()[0];
    assert_eq!(s.header("host"), Some(a.addr.to_string().as_str()));
    assert_eq!(s.header("x-forwarded-host"), Some(browser.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_workspace_is_404_and_bad_records_are_502_json() {
    let w = World::start("").await;
    let r = w.gw.get(&w.gw.ws_host(ID_A), "/", &[]).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "unknown_workspace")
    );

    let ids = [
        "01J0AAAAAAAAAAAAAAAAAAAAA1",
        "01J0AAAAAAAAAAAAAAAAAAAAA2",
        "01J0AAAAAAAAAAAAAAAAAAAAA3",
        "01J0AAAAAAAAAAAAAAAAAAAAA4",
        "01J0AAAAAAAAAAAAAAAAAAAAA5",
    ];
    let a = w.a.addr.to_string();
    w.redis.hset(
        &format!("workspace:{}", ids[0]),
        &[("owner", OWNER), ("status", "running")],
    );
    w.redis.hset(
        &format!("workspace:{}", ids[1]),
        &[
            ("backend", "not a host!"),
            ("owner", OWNER),
            ("status", "running"),
        ],
    );
    w.redis.hset(
        &format!("workspace:{}", ids[2]),
        &[("backend", &a), ("status", "running")],
    );
    w.redis.hset(
        &format!("workspace:{}", ids[3]),
        &[("backend", &a), ("owner", OWNER)],
    );
    let _: () = redis::cmd("SET")
        .arg(format!("workspace:{}", ids[4]))
        .arg("a string, not a hash")
        .query(&mut w.redis.conn())
        .expect("SET");
    for id in ids {
        let r = w.gw.get(&w.gw.ws_host(id), "/", &[]).await;
        assert_eq!(r.status, 502, "{id}: {r:?}");
        assert_eq!(r.error_code(), "bad_route_record");
        assert!(
            !r.body.contains("backend") && !r.body.contains("workspace:"),
            "no internals: {}",
            r.body
        );
    }
    assert_eq!(w.a.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_named_backend_resolves_and_an_unresolvable_name_is_502() {
    let redis = Redis::start();
    // Bind where `localhost` resolves first, as the gateway will.
    let first = tokio::net::lookup_host("localhost:0")
        .await
        .expect("resolve localhost")
        .next()
        .expect("an address");
    let up = edgegate::demo::EchoUpstream::start("named", std::net::SocketAddr::new(first.ip(), 0))
        .await
        .expect("upstream");
    let app = upstream("app").await;
    let gw = Gateway::start(&config_text(free_port(), redis.port, app.addr, ""));
    redis.sessions();
    redis.workspace(ID_A, &format!("localhost:{}", up.addr.port()));
    redis.workspace(ID_B, "vm-does-not-exist.invalid");
    let r = gw.get(&gw.ws_host(ID_A), "/", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.count(), 1);
    let r = gw.get(&gw.ws_host(ID_B), "/", &[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.error_code(), "upstream_unresolvable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refused_is_502_and_silent_upstream_is_504_json() {
    let w = World::start("[upstream]\nread_timeout_ms = 500\nconnect_timeout_ms = 500\n").await;
    let closed = free_port();
    w.redis.workspace(ID_A, &format!("127.0.0.1:{closed}"));
    let r = w.gw.get(&w.gw.ws_host(ID_A), "/", &[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.error_code(), "upstream_unreachable");

    // Accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..8 {
            if let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    w.redis.workspace(ID_B, &silent_addr.to_string());
    let r = w.gw.get(&w.gw.ws_host(ID_B), "/", &[]).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.error_code(), "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_upstream_connections_are_never_shared_between_workspaces() {
    let w = World::start("").await;
    // Two workspaces behind one address.
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.workspace(ID_B, &w.a.addr.to_string());
    for _ in 0..5 {
        for id in [ID_A, ID_B] {
            let r = w.gw.get(&w.gw.ws_host(id), "/", &[]).await;
            assert_eq!(r.status, 200);
        }
    }
    let seen = w.a.seen();
    assert_eq!(seen.len(), 10);
    let conns = |id: &str| -> std::collections::HashSet<u64> {
        seen.iter()
            .filter(|s| s.header("x-edgegate-workspace") == Some(id))
            .map(|s| s.conn)
            .collect()
    };
    let (ca, cb) = (conns(ID_A), conns(ID_B));
    assert!(
        ca.is_disjoint(&cb),
        "A {ca:?} and B {cb:?} shared a connection"
    );
    // And the pool is used at all (otherwise disjointness proves nothing).
    assert!(
        ca.len() < 5 || cb.len() < 5,
        "no connection was reused: {ca:?} {cb:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_html_to_navigations_and_json_to_everything_else() {
    let dir = Scratch::new("eg-pages");
    let template = dir.join("page.html");
    std::fs::write(
        &template,
        "<html><body data-brand=acme>{{status}} {{title}}: {{message}} [{{code}}] #{{request_id}}</body></html>",
    )
    .expect("template");
    let w = World::start(&format!(
        "[errors]\npage_template = {:?}\n",
        template.display().to_string()
    ))
    .await;
    let host = w.gw.ws_host(ID_A);

    let nav =
        w.gw.get(
            &host,
            "/",
            &[("Sec-Fetch-Mode", "navigate"), ("Accept", "text/html")],
        )
        .await;
    assert_eq!(nav.status, 404, "{nav:?}");
    assert_eq!(nav.header("content-type"), Some("text/html; charset=utf-8"));
    let rid = nav.header("x-request-id").expect("request id").to_string();
    assert_eq!(
        nav.body,
        format!(
            "<html><body data-brand=acme>404 Not Found: unknown workspace [unknown_workspace] #{rid}</body></html>"
        ),
        "the operator's template, filled in"
    );
    let csp = nav.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(nav.header("x-content-type-options"), Some("nosniff"));

    // An old browser without Fetch Metadata still gets the page for a GET asking for HTML.
    let old = w.gw.get(&host, "/", &[("Accept", "text/html,*/*")]).await;
    assert_eq!(old.status, 404);
    assert!(old.body.starts_with("<html>"), "{old:?}");

    // A page's fetch, an API client, curl: the SPEC §7 JSON, same status.
    for headers in [
        &[("Sec-Fetch-Mode", "cors"), ("Accept", "text/html")][..],
        &[("Accept", "*/*")][..],
        &[][..],
    ] {
        let r = w.gw.get(&host, "/", headers).await;
        assert_eq!(r.status, 404, "{headers:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.error_code(), "unknown_workspace", "{headers:?}");
    }

    // A refused WebSocket upgrade is never a page, whatever it claims to accept.
    let up = upgrade(
        w.gw.addr,
        &host,
        "/",
        &[("Sec-Fetch-Mode", "navigate"), ("Accept", "text/html")],
    )
    .await;
    assert_eq!(up.status, 404, "{up:?}");
    assert_eq!(up.header("content-type"), Some("application/json"));
    assert!(w.a.seen().is_empty(), "nothing reached an upstream");
}
