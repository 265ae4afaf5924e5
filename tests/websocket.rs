//! WebSocket upgrades through the gateway: the target is bound to each request alone.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_interleaved_upgrades_each_reach_their_own_workspace() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.workspace(ID_B, &w.b.addr.to_string());
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (id, want) = if i % 2 == 0 {
            (ID_A, "upstream-a")
        } else {
            (ID_B, "upstream-b")
        };
        let host = w.gw.ws_host(id);
        let gw = w.gw.addr;
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_connect_as_owner(gw, &host, "/agent/ws").await;
            for n in 0..3 {
                let reply = ws_roundtrip(&mut ws, &format!("m{i}-{n}")).await;
                assert_eq!(reply, format!("{want}:m{i}-{n}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("websocket task");
    }
    let (sa, sb) = (w.a.seen(), w.b.seen());
    assert_eq!(sa.iter().filter(|s| s.websocket).count(), 30);
    assert_eq!(sb.iter().filter(|s| s.websocket).count(), 30);
    assert!(sa
        .iter()
        .all(|s| s.header("x-edgegate-workspace") == Some(ID_A)));
    assert!(sb
        .iter()
        .all(|s| s.header("x-edgegate-workspace") == Some(ID_B)));
    let host_a = w.gw.ws_host(ID_A);
    assert!(sa.iter().all(|s| s.header("host") == Some(host_a.as_str())
        && s.header("origin") == Some(format!("http://{host_a}").as_str())));
    assert_eq!(w.app.count(), 0, "nothing went to a fallback address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_connection_never_carries_a_target_to_its_next_request() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.workspace(ID_B, &w.b.addr.to_string());
    let mut s = tokio::net::TcpStream::connect(w.gw.addr)
        .await
        .expect("connect");
    // A plain keep-alive request for A, then an upgrade for B on the same connection.
    let first = format!(
        "GET /a HTTP/1.1\r\nHost: {}\r\nCookie: session={OWNER_SESSION}\r\n\r\n",
        w.gw.ws_host(ID_A)
    );
    s.write_all(first.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    let resp = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("first response in time")
            .expect("read");
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&buf[..n]);
        let r = parse_partial(&got);
        if let Some(r) = r {
            break r;
        }
    };
    assert_eq!(resp.header("x-upstream"), Some("upstream-a"));
    let second = format!(
        "GET /agent/ws HTTP/1.1\r\nHost: {h}\r\nOrigin: http://{h}\r\nCookie: session={OWNER_SESSION}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        h = w.gw.ws_host(ID_B)
    );
    s.write_all(second.as_bytes()).await.expect("write");
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("upgrade response in time")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(w.a.seen().len(), 1, "A got only its own request");
    let sb = w.b.seen();
    assert_eq!(sb.len(), 1);
    assert!(sb[0].websocket && sb[0].target == "/agent/ws");
}

/// A complete response with a content-length body, if `buf` holds one.
fn parse_partial(buf: &[u8]) -> Option<Resp> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let len: usize = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())?;
    (buf.len() >= n + len).then(|| parse_response(&buf[..n + len]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_get_json_errors_never_redirects() {
    let w = World::start("").await;
    w.redis.dev(ID_A, &w.a.addr.to_string());
    let upgrade = |host: String, path: String| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let r = raw(
        w.gw.addr,
        upgrade(w.gw.app_host(), format!("/__ide/{ID_A}")).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.error_code(), "bad_path");
    let r = raw(
        w.gw.addr,
        upgrade(w.gw.ws_host(ID_B), "/agent/ws".into()).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "unknown_workspace");
    assert_eq!(w.a.count(), 0);

    // Through the tunnel, with the prefix stripped (a non-browser client: its dev-ide token
    // in `Authorization`; a `?token=` would not be looked at, and goes nowhere).
    let bearer = format!(
        "Bearer {}",
        mint(edgegate::auth::token::TokenType::DevIde, ID_A, OWNER)
    );
    let mut ws = ws_connect(
        w.gw.addr,
        &w.gw.app_host(),
        &format!("/__ide/{ID_A}/socket?x=1&token=abc"),
        &[("authorization", &bearer)],
    )
    .await
    .expect("tunnel upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await, "upstream-a:hi");
    assert_eq!(w.a.seen()[0].target, "/socket?x=1");
}

/// Pingora's downstream read timeout is 60 s; edgegate's WS idle timeout (1 h) must win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_idle_for_70s_still_round_trips() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let mut ws = ws_connect_as_owner(w.gw.addr, &w.gw.ws_host(ID_A), "/agent/ws").await;
    assert_eq!(ws_roundtrip(&mut ws, "before").await, "upstream-a:before");
    let pings = ws_idle(&mut ws, Duration::from_secs(70)).await;
    assert!(pings >= 3, "pinged every 15 s while idle: {pings}");
    assert_eq!(ws_roundtrip(&mut ws, "after").await, "upstream-a:after");
}

/// A tunnel quiet for over a second gives its read buffers back (src/websocket.rs,
/// `RELEASE_AFTER`); the next messages, one larger than every buffer size it grows through,
/// still arrive whole and in order, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_after_the_buffers_were_released_arrive_whole() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let mut ws = ws_connect_as_owner(w.gw.addr, &w.gw.ws_host(ID_A), "/agent/ws").await;
    assert_eq!(ws_roundtrip(&mut ws, "before").await, "upstream-a:before");
    let big: String = (0..40_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            ws_roundtrip(&mut ws, &big).await,
            format!("upstream-a:{big}"),
            "round {round}"
        );
        assert_eq!(ws_roundtrip(&mut ws, "small").await, "upstream-a:small");
    }
}

/// A stopping process closes its WebSockets with 1012 (service restart), between frames, so
/// clients reconnect at once instead of seeing 1006.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_closes_open_websockets_with_1012() {
    let mut w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let mut sockets = Vec::new();
    for i in 0..3 {
        let mut ws = ws_connect(
            w.gw.addr,
            &w.gw.ws_host(ID_A),
            &agent_path(ID_A, OWNER),
            &[],
        )
        .await
        .expect("upgrade");
        assert_eq!(
            ws_roundtrip(&mut ws, &format!("m{i}")).await,
            format!("upstream-a:m{i}")
        );
        sockets.push(ws);
    }
    let started = std::time::Instant::now();
    let stopper = w.gw.stop_gracefully();
    for mut ws in sockets {
        assert_eq!(expect_close(&mut ws, Duration::from_secs(5)).await, 1012);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::task::spawn_blocking(move || stopper.join())
        .await
        .expect("join")
        .expect("server stopped");
}

/// Revoking a session (or giving the workspace to someone else) ends the WebSockets it opened,
/// with 1008; a Redis outage ends none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_credentials_close_their_open_websockets() {
    let mut w = World::start("[cache]\nttl_ms = 60000\n").await;
    w.redis.wait_for_subscriber("edgegate:invalidate");
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.workspace(ID_B, &w.b.addr.to_string());
    let host_a = w.gw.ws_host(ID_A);
    let origin = format!("http://{host_a}");
    let cookie = format!("session={OWNER_SESSION}");
    let mut by_session = ws_connect(
        w.gw.addr,
        &host_a,
        "/agent/ws",
        &[("cookie", &cookie), ("origin", &origin)],
    )
    .await
    .expect("session upgrade");
    let token = mint(edgegate::auth::token::TokenType::Terminal, ID_B, OWNER);
    let mut by_token = ws_connect(
        w.gw.addr,
        &w.gw.ws_host(ID_B),
        &format!("/agent/ws?token={token}"),
        &[],
    )
    .await
    .expect("token upgrade");
    assert_eq!(ws_roundtrip(&mut by_session, "1").await, "upstream-a:1");
    assert_eq!(ws_roundtrip(&mut by_token, "1").await, "upstream-b:1");

    // An unrelated invalidation changes nothing.
    w.redis.publish(
        "edgegate:invalidate",
        "workspace:01J0AAAAAAAAAAAAAAAAAAAAA7",
    );
    assert_eq!(ws_roundtrip(&mut by_session, "2").await, "upstream-a:2");

    // The session is deleted: its socket closes with 1008; the token's socket stays.
    let _: () = redis::cmd("DEL")
        .arg(format!("session:{OWNER_SESSION}"))
        .query(&mut w.redis.conn())
        .expect("DEL");
    w.redis
        .publish("edgegate:invalidate", &format!("session:{OWNER_SESSION}"));
    assert_eq!(
        expect_close(&mut by_session, Duration::from_secs(5)).await,
        1008
    );
    assert_eq!(ws_roundtrip(&mut by_token, "3").await, "upstream-b:3");

    // Workspace B changes hands: the old owner's token socket closes.
    w.redis.hset(
        &format!("workspace:{ID_B}"),
        &[
            ("backend", &w.b.addr.to_string()),
            ("owner", "someone-else"),
            ("status", "running"),
        ],
    );
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_B}"));
    assert_eq!(
        expect_close(&mut by_token, Duration::from_secs(5)).await,
        1008
    );

    // Through a Redis outage an open socket stays up.
    w.redis.sessions();
    let mut steady = ws_connect(
        w.gw.addr,
        &host_a,
        &format!(
            "/agent/ws?token={}",
            mint(edgegate::auth::token::TokenType::Terminal, ID_A, OWNER)
        ),
        &[],
    )
    .await
    .expect("upgrade");
    w.redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ws_roundtrip(&mut steady, "still").await, "upstream-a:still");

    let metrics = w.gw.admin_get("/metrics").await.body;
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "edgegate_websocket_closes_total{cause=\"revoked\",route=\"workspace\"} 2"
        )),
        "{metrics}"
    );
}

/// A terminal token authorises its upgrade; its short life must not end the terminal when the
/// workspace record is merely refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_does_not_end_its_healthy_websocket_on_an_invalidation() {
    let w = World::start("").await;
    w.redis.wait_for_subscriber("edgegate:invalidate");
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let now = edgegate::auth::token::now();
    // Valid for 3 more seconds (plus the 5 s leeway), 60 s lifetime in all.
    let claims = serde_json::json!({
        "sub": OWNER, "ws": ID_A, "type": "terminal", "iat": now - 57, "exp": now + 3,
        "jti": "short-lived", "iss": "edgegate", "aud": "edgegate",
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let mut ws = ws_connect(
        w.gw.addr,
        &w.gw.ws_host(ID_A),
        &format!("/agent/ws?token={token}"),
        &[],
    )
    .await
    .expect("upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "a").await, "upstream-a:a");
    tokio::time::sleep(Duration::from_secs(9)).await;
    // The record is rewritten unchanged and announced.
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ws_roundtrip(&mut ws, "b").await,
        "upstream-a:b",
        "still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_right_behind_the_upgrade_request_reaches_the_upstream() {
    // Some clients write their first frame without waiting for the 101: it arrives in the same
    // read as the request, and must be handed on when the tunnel takes the connection over.
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let mut s = tokio::net::TcpStream::connect(w.gw.addr)
        .await
        .expect("connect");
    let mut bytes = format!(
        "GET /agent/ws HTTP/1.1\r\nHost: {h}\r\nOrigin: http://{h}\r\nCookie: session={OWNER_SESSION}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        h = w.gw.ws_host(ID_A)
    )
    .into_bytes();
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    bytes.extend_from_slice(&[0x81, 0x80 | 5]);
    bytes.extend_from_slice(&mask);
    bytes.extend(b"early".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&bytes).await.expect("write");

    let want = b"upstream-a:early";
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                return false;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(want.len()).any(|x| x == want) {
                return true;
            }
        }
    })
    .await
    .unwrap_or(false);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(found, "the upstream's echo of the early frame: {text:?}");
}

/// A load balancer that drops a connection after `idle` without a byte either way.
async fn idle_dropping_relay(to: std::net::SocketAddr, idle: Duration) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut u) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
                loop {
                    tokio::select! {
                        r = c.read(&mut a) => match r {
                            Ok(n) if n > 0 => { if u.write_all(&a[..n]).await.is_err() { return; } }
                            _ => return,
                        },
                        r = u.read(&mut b) => match r {
                            Ok(n) if n > 0 => { if c.write_all(&b[..n]).await.is_err() { return; } }
                            _ => return,
                        },
                        _ = tokio::time::sleep(idle) => return,
                    }
                }
            });
        }
    });
    addr
}

async fn open_through(w: &World, via: std::net::SocketAddr) -> Ws {
    ws_connect_as_owner(via, &w.gw.ws_host(ID_A), "/").await
}

/// Issue #18: pings every 15 s keep an idle WebSocket through a balancer that drops idle
/// connections after 60 s, for the hour of the idle timeout. Scaled: pings every 100 ms, a
/// balancer that drops after 1 s, and 240 ping intervals (an hour at 15 s) of silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_an_idle_websocket_through_a_balancer_for_a_simulated_hour() {
    let w =
        World::start("[upstream]\nws_ping_interval_ms = 100\nws_pong_timeout_ms = 2000\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let relay = idle_dropping_relay(w.gw.addr, Duration::from_secs(1)).await;
    let mut ws = open_through(&w, relay).await;
    assert_eq!(ws_roundtrip(&mut ws, "before").await, "upstream-a:before");
    let pings = ws_idle(&mut ws, Duration::from_secs(24)).await;
    assert!(pings >= 100, "pinged while idle: {pings}");
    assert_eq!(ws_roundtrip(&mut ws, "after").await, "upstream-a:after");
    // The pongs went on to the workspace, which ignores them as RFC 6455 lets it.
    assert_eq!(ws_roundtrip(&mut ws, "again").await, "upstream-a:again");

    // The control: without pings the balancer drops the same idle WebSocket.
    let quiet = World::start("[upstream]\nws_ping_interval_ms = 0\n").await;
    quiet.redis.workspace(ID_A, &quiet.a.addr.to_string());
    let relay = idle_dropping_relay(quiet.gw.addr, Duration::from_secs(1)).await;
    let mut ws = open_through(&quiet, relay).await;
    use futures_util::StreamExt;
    let ended = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(ended, Ok(None) | Ok(Some(Err(_)))),
        "dropped by the balancer: {ended:?}"
    );
}

/// A client that stops answering is closed once the pong timeout passes after a ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed() {
    let w = World::start("[upstream]\nws_ping_interval_ms = 200\nws_pong_timeout_ms = 300\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    let origin = format!("http://{host}");
    let cookie = format!("session={OWNER_SESSION}");
    let mut s = tokio::net::TcpStream::connect(w.gw.addr)
        .await
        .expect("connect");
    let req = upgrade_request(&host, "/", &[("Origin", &origin), ("Cookie", &cookie)]);
    s.write_all(req.as_bytes()).await.expect("write");
    // Reads everything until the gateway closes; never answers.
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the gateway closed the silent client")
        .expect("read");
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let frames = &got[head_end..];
    assert!(
        frames.starts_with(&[0x89, 0x00]),
        "a ping first: {frames:?}"
    );
    assert!(
        frames.ends_with(&[0x88, 0x02, 0x03, 0xE9]),
        "then a 1001 close: {frames:?}"
    );
    let m = w.gw.admin_get("/metrics").await.body;
    assert!(
        eventually(Duration::from_secs(3), || async {
            w.gw.admin_get("/metrics").await.body.contains(
                "edgegate_websocket_closes_total{cause=\"ping_timeout\",route=\"workspace\"} 1",
            )
        })
        .await,
        "{m}"
    );
}

/// Pongs keep a tunnel alive for the network, not from its idle timeout: a WebSocket whose
/// client answers every ping but sends no data still ends when the idle timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pongs_do_not_hold_a_websocket_past_its_idle_timeout() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let w = World::start("[upstream]\nws_idle_timeout_secs = 2\nws_ping_interval_ms = 200\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let mut ws = open_through(&w, w.gw.addr).await;
    let mut pings = 0;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(other)) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "closed by the idle timeout");
    assert!(pings >= 3, "answered pings meanwhile: {pings}");
    let m = w.gw.admin_get("/metrics").await.body;
    assert!(
        eventually(Duration::from_secs(3), || async {
            w.gw.admin_get("/metrics").await.body.contains(
                "edgegate_websocket_closes_total{cause=\"idle_timeout\",route=\"workspace\"} 1",
            )
        })
        .await,
        "{m}"
    );
}

/// The default settings for real (issue #18): pings every 15 s keep a WebSocket that is idle
/// for 10 minutes through a balancer that drops connections idle for 60 s (an AWS ALB's
/// default). Ten minutes long, so not in the suite: `scripts/soak` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 10-minute soak: scripts/soak"]
async fn soak_default_pings_keep_a_websocket_idle_for_ten_minutes_through_a_60s_balancer() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let relay = idle_dropping_relay(w.gw.addr, Duration::from_secs(60)).await;
    let mut ws = open_through(&w, relay).await;
    assert_eq!(ws_roundtrip(&mut ws, "before").await, "upstream-a:before");
    let pings = ws_idle(&mut ws, Duration::from_secs(600)).await;
    eprintln!("soak: {pings} pings in 600 s of silence");
    assert!(pings >= 35, "a ping every 15 s: {pings}");
    assert_eq!(ws_roundtrip(&mut ws, "after").await, "upstream-a:after");
}
