//! TLS termination with certificates made in the test (`openssl`): SNI picks the wildcard or the
//! other certificate, HTTP/2 is offered over ALPN, and WebSockets work on HTTP/1.1 over TLS.

mod common;

use common::tls::*;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_picks_certificates_by_sni_and_speaks_h1_h2_and_websocket() {
    let pki = pki();
    let redis = Redis::start();
    redis.sessions();
    let a = upstream("a").await;
    let app = upstream("app").await;
    let tls_port = free_port();
    let extra = format!(
        "[[listen.tls]]\naddr = \"127.0.0.1:{tls_port}\"\n\
         [[listen.tls.certs]]\ncert_file = {:?}\nkey_file = {:?}\nnames = [\"*.example.test\", \"example.test\"]\n\
         [[listen.tls.certs]]\ncert_file = {:?}\nkey_file = {:?}\nnames = [\"other.test\"]\n",
        s(&pki.wild.0), s(&pki.wild.1), s(&pki.other.0), s(&pki.other.1)
    );
    // The TLS listener must sit in [listen]: put it right after that table.
    let text = config_text(free_port(), redis.port, app.addr, "").replacen(
        "[admin]\n",
        &format!("{extra}[admin]\n"),
        1,
    );
    let gw = Gateway::start(&text);
    redis.workspace(ID_A, &a.addr.to_string());
    // Each certificate's expiry, for the alert that fires before it passes (issue #19).
    let m = gw.admin_get("/metrics").await.body;
    let expiry: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "edgegate_tls_certificate_expiry_timestamp_seconds{listener=\"listen.tls[0]\",names=\"other.test\"} ",
            )
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("the other.test certificate's expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs_f64();
    assert!(
        expiry > now && expiry < now + 3.0 * 86400.0,
        "made with -days 2: {expiry}"
    );
    let gw: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    let wild_der = pem_to_der(&std::fs::read(&pki.wild.0).expect("pem"));
    let other_der = pem_to_der(&std::fs::read(&pki.other.0).expect("pem"));

    // SNI → certificate (the handshake itself verifies the name against the chain).
    let h1 = client(&pki, &[b"http/1.1"]);
    let host = format!("ws-{}.{DOMAIN}", ID_A.to_ascii_lowercase());
    let mut stream = connect(gw, &h1, &host).await;
    let peer = stream.get_ref().1.peer_certificates().expect("certs")[0].to_vec();
    assert_eq!(peer, wild_der, "the wildcard serves a workspace host");
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: {host}:{tls_port}\r\nCookie: session={OWNER_SESSION}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    let r = parse_response(&buf);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &a.seen()[0];
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("host"),
        Some(format!("{host}:{tls_port}").as_str())
    );

    let stream = connect(gw, &h1, "other.test").await;
    assert_eq!(
        stream.get_ref().1.peer_certificates().expect("certs")[0].as_ref(),
        &other_der[..]
    );

    // HTTP/2 by ALPN, to the app.
    let both = client(&pki, &[b"h2", b"http/1.1"]);
    let stream = connect(gw, &both, "app.example.test").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2c, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("https://app.{DOMAIN}:{tls_port}/api/me"))
        .body(())
        .expect("request");
    let (resp, _) = h2c.send_request(req, true).expect("send");
    let resp = resp.await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    let seen = &app.seen()[0];
    assert_eq!(seen.target, "/api/me");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(format!("app.{DOMAIN}:{tls_port}").as_str())
    );

    // A WebSocket over TLS on an HTTP/1.1 connection (browsers offer only http/1.1 for them).
    let token = mint(edgegate::auth::token::TokenType::Terminal, ID_A, OWNER);
    let stream = connect(gw, &h1, &host).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let wsreq = format!("wss://{host}:{tls_port}/agent/ws?token={token}")
        .into_client_request()
        .expect("ws request");
    let (mut ws, _) = tokio_tungstenite::client_async(wsreq, stream)
        .await
        .expect("101 over TLS");
    assert_eq!(ws_roundtrip_tls(&mut ws, "hi").await, "a:hi");
}

async fn ws_roundtrip_tls<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, msg: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(msg)).await.expect("send");
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.as_str().to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("websocket ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_reach_its_upstream_over_verified_tls_with_sni() {
    let pki = pki();
    let redis = Redis::start();
    redis.sessions();
    let (up, snis) = tls_upstream(&pki).await;
    let app = upstream("app").await;
    let text = config_text(
        free_port(),
        redis.port,
        app.addr,
        &format!("[upstream]\nca_file = {:?}\n", s(&pki.ca)),
    )
    .replacen(
        "forward_token = true\n",
        "forward_token = true\nupstream_tls = true\nupstream_sni = \"vm.example.test\"\n",
        1,
    );
    let gw = Gateway::start(&text);
    redis.workspace(ID_A, &up.addr.to_string());
    let r = gw.get(&gw.ws_host(ID_A), "/over-tls", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.seen()[0].target, "/over-tls");
    assert_eq!(
        snis.lock().expect("snis")[0].as_deref(),
        Some("vm.example.test"),
        "the route's SNI was sent"
    );
    let mut ws = ws_connect(gw.addr, &gw.ws_host(ID_A), &agent_path(ID_A, OWNER), &[])
        .await
        .expect("upgrade to a TLS upstream");
    assert_eq!(ws_roundtrip(&mut ws, "t").await, "tls-up:t");

    // The same upstream named by a SNI its certificate does not cover is refused (502).
    let text = config_text(
        free_port(),
        redis.port,
        app.addr,
        &format!("[upstream]\nca_file = {:?}\n", s(&pki.ca)),
    )
    .replacen(
        "forward_token = true\n",
        "forward_token = true\nupstream_tls = true\nupstream_sni = \"vm.elsewhere.test\"\n",
        1,
    );
    let gw2 = Gateway::start(&text);
    let before = up.count();
    let r = gw2.get(&gw2.ws_host(ID_A), "/", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(up.count(), before, "the unverified upstream got nothing");
}

/// HTTP/2 connections end too (SPEC §8): a client whose preface does not come within the
/// header deadline is closed, and an idle one after the keep-alive timeout (Pingora's own
/// default keeps both forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_end_when_their_preface_is_late_or_they_idle() {
    let pki = pki();
    let redis = Redis::start();
    let app = upstream("app").await;
    let tls_port = free_port();
    let extra = format!(
        "[[listen.tls]]\naddr = \"127.0.0.1:{tls_port}\"\n\
         [[listen.tls.certs]]\ncert_file = {:?}\nkey_file = {:?}\nnames = [\"*.example.test\", \"example.test\"]\n",
        s(&pki.wild.0),
        s(&pki.wild.1)
    );
    let text = config_text(
        free_port(),
        redis.port,
        app.addr,
        "[limits]\nheader_timeout_ms = 1000\nkeepalive_timeout_secs = 1\n",
    )
    .replacen("[admin]\n", &format!("{extra}[admin]\n"), 1);
    let _gw = Gateway::start(&text);
    let gw: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    let h2 = client(&pki, &[b"h2"]);
    // No preface at all: closed by the deadline.
    let mut silent = connect(gw, &h2, "app.example.test").await;
    assert_eq!(
        silent.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "HTTP/2 by ALPN"
    );
    let mut buf = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(15), silent.read_to_end(&mut buf)).await;
    assert!(
        ended.is_ok(),
        "a connection without a preface was still open after 15 s"
    );

    // A preface and settings, then nothing: closed as idle.
    let mut idle = connect(gw, &h2, "app.example.test").await;
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let mut buf = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(15), idle.read_to_end(&mut buf)).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection was still open after 15 s"
    );
    assert!(
        !buf.is_empty(),
        "the server spoke HTTP/2 (its settings) before it closed"
    );
}
