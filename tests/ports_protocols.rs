//! How edgegate speaks to a shared port (issue #17): `h2c` (HTTP/2 with prior knowledge, for
//! gRPC: a streamed body both ways and trailers, end to end, with HTTP/2 over TLS downstream)
//! and `https` with `verify` per port. The real gRPC client and server run in `scripts/e2e`
//! (tests/e2e/grpc_check.py); here an `h2` server and client pin down the frames.

mod common;

use common::tls::*;
use common::*;
use std::time::Duration;

/// A gateway with a TLS listener (the test PKI's wildcard certificate covers the content
/// site) and a content route; returns it with its TLS port.
fn gateway(redis: &Redis, app: std::net::SocketAddr, pki: &Pki) -> (Gateway, u16) {
    let tls_port = free_port();
    let tls = format!(
        "[[listen.tls]]\naddr = \"127.0.0.1:{tls_port}\"\n\
         [[listen.tls.certs]]\ncert_file = {:?}\nkey_file = {:?}\n\
         names = [\"*.example.test\", \"example.test\", \"*.{CONTENT}\"]\n",
        s(&pki.wild.0),
        s(&pki.wild.1)
    );
    let text = with_content_domain(&config_text(free_port(), redis.port, app, PORTS)).replacen(
        "[admin]\n",
        &format!("{tls}[admin]\n"),
        1,
    );
    (Gateway::start(&text), tls_port)
}

/// What the h2c upstream saw of one request.
#[derive(Debug, Clone)]
struct H2Seen {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// An HTTP/2 server with prior knowledge (h2c), as a gRPC server is: it reads the whole
/// request body, answers `200 application/grpc` with two DATA frames echoing it, then
/// trailers (`grpc-status: 0`, `grpc-message: ok`, `x-trailer: end`).
async fn h2c_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<H2Seen>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let record = record.clone();
                    tokio::spawn(async move {
                        let (parts, mut body) = req.into_parts();
                        let mut got = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            got.extend_from_slice(&chunk);
                        }
                        let mut headers: Vec<(String, String)> = parts
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                            })
                            .collect();
                        headers.push((
                            ":authority".into(),
                            parts
                                .uri
                                .authority()
                                .map_or(String::new(), |a| a.to_string()),
                        ));
                        headers.push((":path".into(), parts.uri.path().to_string()));
                        if let Ok(mut v) = record.lock() {
                            v.push(H2Seen {
                                headers,
                                body: got.clone(),
                            });
                        }
                        let resp = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("response");
                        let Ok(mut send) = respond.send_response(resp, false) else {
                            return;
                        };
                        let _ = send.send_data(bytes::Bytes::from_static(b"first|"), false);
                        let _ = send.send_data(bytes::Bytes::from(got), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        trailers.insert("grpc-message", http::HeaderValue::from_static("ok"));
                        trailers.insert("x-trailer", http::HeaderValue::from_static("end"));
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_port_gets_http2_end_to_end_with_a_streamed_body_and_trailers() {
    let pki = pki();
    let redis = Redis::start();
    let app = upstream("app").await;
    let (gw, tls_port) = gateway(&redis, app.addr, &pki);
    let (h2_addr, seen) = h2c_upstream().await;
    redis.hset(
        &format!("workspace:{ID_A}"),
        &[
            ("backend", &h2_addr.to_string()),
            ("owner", OWNER),
            ("status", "running"),
            (
                &format!("port.{}", h2_addr.port()),
                r#"{"visibility":"public","protocol":"h2c"}"#,
            ),
        ],
    );
    let host = format!(
        "ws-{}--{}.{CONTENT}",
        ID_A.to_ascii_lowercase(),
        h2_addr.port()
    );
    let tls = client(&pki, &[b"h2"]);
    let stream = connect(
        std::net::SocketAddr::from(([127, 0, 0, 1], tls_port)),
        &tls,
        &host,
    )
    .await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://{host}:{tls_port}/echo.Echo/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, mut body) = client.send_request(req, false).expect("send");
    // A body streamed in two frames, the second after a pause.
    body.send_data(bytes::Bytes::from_static(b"one,"), false)
        .expect("data");
    tokio::time::sleep(Duration::from_millis(100)).await;
    body.send_data(bytes::Bytes::from_static(b"two"), true)
        .expect("data");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );
    let mut recv = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("chunk");
        let _ = recv.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"first|one,two");
    let trailers = tokio::time::timeout(Duration::from_secs(10), recv.trailers())
        .await
        .expect("in time")
        .expect("trailers")
        .expect("the upstream's trailers arrive");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("x-trailer").map(|v| v.as_bytes()),
        Some(&b"end"[..])
    );

    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1, "one request upstream, over HTTP/2");
    let header = |n: &str| {
        seen[0]
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(seen[0].body, b"one,two");
    assert_eq!(
        header("te").as_deref(),
        Some("trailers"),
        "gRPC servers ask for it"
    );
    assert_eq!(header(":path").as_deref(), Some("/echo.Echo/Stream"));
    assert_eq!(header("x-forwarded-proto").as_deref(), Some("https"));
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_port_is_verified_unless_its_settings_say_not() {
    let pki = pki();
    let redis = Redis::start();
    redis.sessions();
    let app = upstream("app").await;
    let (gw, _) = gateway(&redis, app.addr, &pki);
    let (up, _) = tls_upstream(&pki).await;
    let port = up.addr.port();
    let set = |settings: &str| {
        redis.hset(
            &format!("workspace:{ID_A}"),
            &[
                ("backend", &up.addr.to_string()),
                ("owner", OWNER),
                ("status", "running"),
                (&format!("port.{port}"), settings),
            ],
        );
        redis.publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    };
    let host = format!(
        "ws-{}--{port}.{CONTENT}:{}",
        ID_A.to_ascii_lowercase(),
        gw.port
    );
    // The test CA is not among the gateway's roots: a verified connection is refused.
    set(r#"{"visibility":"public","protocol":"https"}"#);
    let r = gw.request("GET", &host, "/v", &[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        up.count(),
        0,
        "no request went over an unverified connection"
    );
    // verify = false: the same upstream, over TLS.
    set(r#"{"visibility":"public","protocol":"https","verify":false}"#);
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.request("GET", &host, "/v", &[]).await.status == 200
        })
        .await
    );
    assert_eq!(
        up.seen().last().map(|s| s.target.clone()).as_deref(),
        Some("/v")
    );
    // And back to verified: the pooled unverified connection is not reused. Requests sent
    // before the invalidation lands still use the cached settings (and may reach the
    // upstream), so the count is taken once the new settings answer.
    set(r#"{"visibility":"public","protocol":"https"}"#);
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.request("GET", &host, "/v", &[]).await.status == 502
        })
        .await
    );
    let before = up.count();
    for _ in 0..3 {
        let r = gw.request("GET", &host, "/v", &[]).await;
        assert_eq!(r.status, 502, "{r:?}");
    }
    assert_eq!(
        up.count(),
        before,
        "no request went over the pooled connection"
    );
}

/// An upstream behind TLS that reads a request's head and then holds the connection without
/// answering until the other side goes (bounded). Counts the heads it read.
async fn holding_tls_upstream(
    pki: &Pki,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = upstream_acceptor(pki);
    let heads = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = heads.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, heads) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                heads.fetch_add(1, Ordering::SeqCst);
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    });
    (addr, heads)
}

/// A workspace that stops ends its requests to an HTTPS port at once, as it does over plain
/// TCP: the drain reaches the upstream socket under the TLS stream (the stream hands on its
/// socket's digest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_workspace_ends_its_requests_over_tls_too() {
    use tokio::io::AsyncWriteExt;
    let pki = pki();
    let redis = Redis::start();
    redis.sessions();
    let app = upstream("app").await;
    let (gw, _) = gateway(&redis, app.addr, &pki);
    let (addr, heads) = holding_tls_upstream(&pki).await;
    let port = addr.port();
    let record = |status: &str| {
        redis.hset(
            &format!("workspace:{ID_A}"),
            &[
                ("backend", &addr.to_string()),
                ("owner", OWNER),
                ("status", status),
                (
                    &format!("port.{port}"),
                    r#"{"visibility":"public","protocol":"https","verify":false}"#,
                ),
            ],
        )
    };
    record("running");
    let host = format!(
        "ws-{}--{port}.{CONTENT}:{}",
        ID_A.to_ascii_lowercase(),
        gw.port
    );
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(format!("GET /poll HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    assert!(
        eventually(Duration::from_secs(5), || async {
            heads.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await,
        "the request reached the upstream over TLS"
    );
    record("stopped");
    redis.publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    let r = parse_response(&read_to_close(&mut s).await);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "workspace_not_running"),
        "{r:?}"
    );
}
