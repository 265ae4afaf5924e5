//! Faults: a backend that moved, an upstream that dies mid-body or mid-WebSocket, a paused
//! Redis, and an h2c upgrade attempt.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_backend_is_re_read_and_the_request_retried_once() {
    // A long TTL: only the refusal can make edgegate read the record again.
    let w = World::start("[cache]\nttl_ms = 60000\n").await;
    let dead = free_port();
    w.redis.workspace(ID_A, &format!("127.0.0.1:{dead}"));
    let host = w.gw.ws_host(ID_A);
    assert_eq!(
        w.gw.get(&host, "/", &[]).await.status,
        502,
        "cached at a dead address"
    );
    // The app moves the workspace but the message is lost.
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let before = w.redis.calls("hgetall");
    let r = w.gw.get(&host, "/moved", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(w.a.seen()[0].target, "/moved");
    assert_eq!(
        w.redis.calls("hgetall") - before,
        1,
        "one fresh read of the record"
    );

    // The same for a WebSocket: a refused connect is a 502 with its JSON body, as for plain
    // requests (its token was spent on the way: the retry of the same request did not spend
    // it twice, a new request needs a new one).
    w.redis.workspace(ID_B, &format!("127.0.0.1:{dead}"));
    let r = upgrade(
        w.gw.addr,
        &w.gw.ws_host(ID_B),
        &agent_path(ID_B, OWNER),
        &[],
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.error_code(), "upstream_unreachable");
    w.redis.workspace(ID_B, &w.b.addr.to_string());
    let mut ws = ws_connect(
        w.gw.addr,
        &w.gw.ws_host(ID_B),
        &agent_path(ID_B, OWNER),
        &[],
    )
    .await
    .expect("reached the moved backend");
    assert_eq!(ws_roundtrip(&mut ws, "x").await, "upstream-b:x");

    // Still dead after a fresh read: 502 after one retry, not a loop.
    let other = "01J0AAAAAAAAAAAAAAAAAAAAA8";
    w.redis.workspace(other, &format!("127.0.0.1:{dead}"));
    let r = w.gw.get(&w.gw.ws_host(other), "/", &[]).await;
    assert_eq!(r.status, 502);
}

/// An upstream that answers one request with `response` as it stands, then closes.
async fn raw_upstream(response: &'static [u8]) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_mid_body_leaves_a_truncated_response() {
    let w = World::start("").await;
    // The connection closes 986 bytes short.
    let addr = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly-this-much").await;
    w.redis.workspace(ID_A, &addr.to_string());
    let r = w.gw.get(&w.gw.ws_host(ID_A), "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    assert!(
        r.body.len() < 1000,
        "never a clean end: {} bytes",
        r.body.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_hop_by_hop_headers_do_not_reach_the_client() {
    let w = World::start("").await;
    let addr = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\
                      Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
                      Connection: Upgrade, X-Hop\r\nX-Hop: 1\r\nX-Kept: 1\r\n\r\nok",
    )
    .await;
    w.redis.workspace(ID_A, &addr.to_string());
    let r = w.gw.get(&w.gw.ws_host(ID_A), "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    assert_eq!(r.header("x-kept"), Some("1"), "end-to-end headers pass");
    assert!(r.header("x-request-id").is_some());
    for gone in ["keep-alive", "proxy-connection", "upgrade", "x-hop"] {
        assert_eq!(r.header(gone), None, "{gone}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upstream_that_dies_closes_the_client_socket() {
    use futures_util::StreamExt;
    let w = World::start("").await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Ok((s, _)) = l.accept().await {
            let ws = tokio_tungstenite::accept_async(s).await.expect("handshake");
            let _ = kill_rx.await;
            drop(ws); // dies without a close frame
        }
    });
    w.redis.workspace(ID_A, &addr.to_string());
    let token = mint(edgegate::auth::token::TokenType::Terminal, ID_A, OWNER);
    let mut ws = ws_connect(
        w.gw.addr,
        &w.gw.ws_host(ID_A),
        &format!("/agent/ws?token={token}"),
        &[],
    )
    .await
    .expect("upgrade");
    let _ = kill_tx.send(());
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match ws.next().await {
                Some(Ok(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the client's socket closed within 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_costs_its_deadline_and_cached_routes_keep_working() {
    // Records expire fast; the stale window keeps known workspaces reachable. An open route
    // (the upstream does its own auth) needs nothing else from Redis; every credential does
    // (a session is looked up, a one-time token spent), and fails closed.
    let w = World::start(
        "[cache]\nttl_ms = 100\nnegative_ttl_ms = 100\n\
         [[route]]\nname = \"open\"\nhost = \"open-{id}.{base_domain}\"\n\
         key = \"workspace:{id}\"\nauth = [\"none\"]\n",
    )
    .await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    let open = format!("open-{}.{DOMAIN}:{}", ID_A.to_ascii_lowercase(), w.gw.port);
    assert_eq!(w.gw.request("GET", &open, "/", &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;

    w.redis.signal("-STOP");
    let started = std::time::Instant::now();
    let r = w.gw.request("GET", &open, "/", &[]).await;
    assert_eq!(
        r.status, 200,
        "a known workspace is served from its last good record: {}",
        r.body
    );
    // A terminal token cannot be spent while Redis sleeps: refused, never accepted twice.
    let r = upgrade(w.gw.addr, &host, &agent_path(ID_A, OWNER), &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let r = w.gw.get(&w.gw.ws_host(ID_B), "/", &[]).await;
    assert_eq!(r.status, 503, "an unknown one gets 503: {}", r.body);
    assert!(r.header("retry-after").is_some());
    // A session cannot be checked while Redis sleeps: refused, never served stale.
    let r = w.gw.get(&host, "/", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let paused_for = started.elapsed();
    w.redis.signal("-CONT");
    // Four requests that each met the 500 ms deadline at most once or twice, never a hang.
    assert!(paused_for < Duration::from_secs(10), "{paused_for:?}");
    let back = eventually(Duration::from_secs(5), || async {
        w.gw.get(&host, "/", &[]).await.status == 200
    })
    .await;
    assert!(back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_record_is_never_served_stale() {
    // The stale window covers an outage, not a change: once the app has said a record changed,
    // the old copy is gone, and a Redis that cannot be read means 503, never the old upstream.
    let w = World::start(
        "[cache]\nttl_ms = 60000\n\
         [[route]]\nname = \"open\"\nhost = \"open-{id}.{base_domain}\"\n\
         key = \"workspace:{id}\"\nauth = [\"none\"]\n",
    )
    .await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.wait_for_subscriber("edgegate:invalidate");
    let open = format!("open-{}.{DOMAIN}:{}", ID_A.to_ascii_lowercase(), w.gw.port);
    assert_eq!(w.gw.request("GET", &open, "/", &[]).await.status, 200);
    assert_eq!(w.a.count(), 1);
    // The workspace moves; the app publishes the change.
    w.redis.workspace(ID_A, &w.b.addr.to_string());
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            w.gw.admin_get("/metrics")
                .await
                .body
                .contains("edgegate_cache_invalidations_total 1")
        })
        .await
    );
    w.redis.signal("-STOP");
    let r = w.gw.request("GET", &open, "/", &[]).await;
    w.redis.signal("-CONT");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(w.a.count(), 1, "the old upstream was not reached");
    assert_eq!(w.b.count(), 0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            w.gw.request("GET", &open, "/", &[]).await.status == 200
        })
        .await
    );
    assert_eq!((w.a.count(), w.b.count()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrades_are_refused() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let cookie = format!("session={OWNER_SESSION}");
    let r =
        w.gw.request(
            "GET",
            &w.gw.ws_host(ID_A),
            "/",
            &[
                ("Cookie", &cookie),
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "bad_upgrade");
    assert_eq!(w.a.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_a_full_workspace_are_refused_with_their_status() {
    let w = World::start("[limits]\nmax_uri_bytes = 1000\nmax_header_bytes = 2048\nmax_headers = 20\nmax_connections_per_workspace = 2\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    let long = format!("/{}", "a".repeat(1100));
    assert_eq!(w.gw.get(&host, &long, &[]).await.status, 414);
    let big = "b".repeat(3000);
    assert_eq!(w.gw.get(&host, "/", &[("X-Big", &big)]).await.status, 431);
    let many: Vec<(String, String)> = (0..30)
        .map(|i| (format!("X-H{i}"), "v".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(w.gw.get(&host, "/", &many).await.status, 431);
    assert_eq!(w.a.count(), 0);

    // Two WebSockets fill workspace A; the third request waits outside (429), B is unaffected.
    let mut one = ws_connect(w.gw.addr, &host, &agent_path(ID_A, OWNER), &[])
        .await
        .expect("first");
    let _two = ws_connect(w.gw.addr, &host, &agent_path(ID_A, OWNER), &[])
        .await
        .expect("second");
    let r = w.gw.get(&host, "/", &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "too_many_connections");
    assert!(r.header("retry-after").is_some());
    w.redis.workspace(ID_B, &w.b.addr.to_string());
    assert_eq!(w.gw.get(&w.gw.ws_host(ID_B), "/", &[]).await.status, 200);
    // Closing one frees its place.
    one.close(None).await.expect("close");
    drop(one);
    let freed = eventually(Duration::from_secs(3), || async {
        w.gw.get(&host, "/", &[]).await.status == 200
    })
    .await;
    assert!(freed);
}

/// Read until the gateway closes (bounded); returns what it sent and how long it took.
async fn read_until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    (buf, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_get_408_or_a_close_while_others_are_served() {
    let w = World::start("[limits]\nheader_timeout_ms = 1000\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    let cookie = format!("Cookie: session={OWNER_SESSION}\r\n");

    // A slowloris: one header byte every 100 ms, never the blank line.
    let slow = {
        let (addr, host) = (w.gw.addr, host.clone());
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let head = format!("GET /slow HTTP/1.1\r\nHost: {host}\r\nX-Slow: ");
            s.write_all(head.as_bytes()).await.expect("write");
            let started = std::time::Instant::now();
            for _ in 0..60 {
                if s.write_all(b"a").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut probe = [0u8; 1];
                // The gateway answered (or closed): stop dribbling.
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(1), s.peek(&mut probe)).await
                {
                    let _ = n;
                    break;
                }
            }
            let (buf, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
            (buf, started.elapsed())
        })
    };
    // A client that connects and says nothing.
    let silent = {
        let addr = w.gw.addr;
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            read_until_closed(&mut s, Duration::from_secs(5)).await
        })
    };
    // Meanwhile other clients are served, each well inside the deadline.
    for i in 0..20 {
        let started = std::time::Instant::now();
        let r = w.gw.get(&host, &format!("/fast/{i}"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "a normal request waited behind the slow ones"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (buf, took) = slow.await.expect("slow client");
    let resp = parse_response(&buf);
    assert_eq!(resp.status, 408, "{resp:?}");
    assert_eq!(resp.error_code(), "request_timeout");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "the deadline is 1 s from accept: closed after {took:?}"
    );
    let (buf, took) = silent.await.expect("silent client");
    assert!(buf.is_empty(), "a silent client gets no response: {buf:?}");
    assert!(took < Duration::from_secs(4), "silent client held {took:?}");
    // The partial request never reached the upstream.
    assert!(w.a.seen().iter().all(|s| s.target != "/slow"));
    assert_eq!(w.a.count(), 20);

    // Kept alive: idle longer than the deadline between requests is fine (the next request's
    // clock starts at its first byte), and a body may take longer than the deadline.
    let mut s = tokio::net::TcpStream::connect(w.gw.addr)
        .await
        .expect("connect");
    let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie}\r\n");
    s.write_all(req("/ka/1").as_bytes()).await.expect("write");
    let first = read_response(&mut s).await;
    assert_eq!(first.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let body = "x".repeat(30);
    let post = format!(
        "POST /ka/2 HTTP/1.1\r\nHost: {host}\r\n{cookie}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(post.as_bytes()).await.expect("write");
    for chunk in body.as_bytes().chunks(10) {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.write_all(chunk).await.expect("slow body");
    }
    let second = read_response(&mut s).await;
    assert_eq!(second.status, 200, "{second:?}");
    assert!(w.a.seen().iter().any(|s| s.target == "/ka/2"));
    // A third request on the same connection whose headers stall is cut at its deadline.
    s.write_all(format!("GET /ka/3 HTTP/1.1\r\nHost: {host}\r\n").as_bytes())
        .await
        .expect("write");
    let (buf, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(parse_response(&buf).status, 408);
    assert!(took >= Duration::from_millis(800), "cut after {took:?}");
    assert!(w.a.seen().iter().all(|s| s.target != "/ka/3"));
}
