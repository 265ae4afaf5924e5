//! Rate limits (issue #18): per client address on token minting, per user on proxied
//! requests; 429 with Retry-After, counted, and nothing minted or proxied past the limit.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request sent from `source` (any 127.0.0.0/8 address works on loopback).
async fn from(source: &str, gw: std::net::SocketAddr, req: &str) -> Resp {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind source");
    let mut s = socket.connect(gw).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer")
        .expect("read");
    parse_response(&buf)
}

fn mint_request(app: &str, extra: &str) -> String {
    format!(
        "POST /api/workspaces/{ID_A}/terminal-token HTTP/1.1\r\nHost: {app}\r\n\
         Cookie: session={OWNER_SESSION}\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_minting_is_limited_per_client_address() {
    let w = World::start("[rate_limits]\nendpoints_per_minute = 2\nendpoints_burst = 2\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let req = mint_request(&w.gw.app_host(), "");
    for _ in 0..2 {
        let r = from("127.0.0.1", w.gw.addr, &req).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.json()["token"].is_string());
    }
    let r = from("127.0.0.1", w.gw.addr, &req).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(!r.body.contains("token\""), "nothing minted: {}", r.body);
    // Another address has its own allowance.
    let r = from("127.0.0.2", w.gw.addr, &req).await;
    assert_eq!(r.status, 200, "{r:?}");

    let m = w.gw.admin_get("/metrics").await.body;
    assert!(
        m.contains("edgegate_rate_limited_total{scope=\"endpoint\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited() {
    let w = World::start("").await;
    let text = config_text(
        free_port(),
        w.redis.port,
        w.app.addr,
        "[rate_limits]\nendpoints_per_minute = 1\nendpoints_burst = 1\n",
    )
    .replacen(
        "[listen]\n",
        "[listen]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    let gw = Gateway::start(&text);
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let app = format!("app.{DOMAIN}:{}", gw.port);
    let as_client = |ip: &str| mint_request(&app, &format!("X-Forwarded-For: {ip}\r\n"));
    assert_eq!(
        from("127.0.0.1", gw.addr, &as_client("198.51.100.1"))
            .await
            .status,
        200
    );
    assert_eq!(
        from("127.0.0.1", gw.addr, &as_client("198.51.100.1"))
            .await
            .status,
        429
    );
    assert_eq!(
        from("127.0.0.1", gw.addr, &as_client("198.51.100.2"))
            .await
            .status,
        200,
        "each client behind the balancer has its own allowance"
    );
    // A client that writes its own X-Forwarded-For before the balancer's hop gains nothing.
    let spoof = as_client("203.0.113.7, 198.51.100.1");
    assert_eq!(from("127.0.0.1", gw.addr, &spoof).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_requests_are_limited_per_user() {
    let w = World::start("[rate_limits]\nuser_requests_per_second = 1\nuser_burst = 3\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.hset(
        &format!("workspace:{ID_B}"),
        &[
            ("backend", &w.b.addr.to_string()),
            ("owner", "user-2"),
            ("status", "running"),
        ],
    );
    let host = w.gw.ws_host(ID_A);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(w.gw.get(&host, "/", &[]).await.status);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(
        w.a.count(),
        3,
        "nothing past the limit reached the workspace"
    );
    let r = w.gw.get(&host, "/", &[]).await;
    assert_eq!(r.error_code(), "rate_limited");
    assert!(r.header("retry-after").is_some());

    // Another user is not held back by the first.
    let other = format!("session={OTHER_SESSION}");
    let r =
        w.gw.request("GET", &w.gw.ws_host(ID_B), "/", &[("Cookie", &other)])
            .await;
    assert_eq!(r.status, 200, "{r:?}");
    let m = w.gw.admin_get("/metrics").await.body;
    assert!(
        m.contains("edgegate_rate_limited_total{scope=\"user\"} 3"),
        "{m}"
    );
}
