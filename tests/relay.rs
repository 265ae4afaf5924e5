//! The response relay of a request without a body (pingora-proxy patch 0001, "relay in
//! sequence"): what the two joined halves did, the one future must still do. The request's end
//! reaches the upstream, the answer reaches the client, both connections are kept for the next
//! request, and a client that leaves (or sends bytes no request announced) while the upstream
//! has not answered ends the upstream request at once instead of at the read timeout. And the
//! request's future stays small (pingora-core 0003, pingora-proxy 0002).

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// What the silent upstream saw on one connection.
#[derive(Debug, PartialEq)]
enum Upstream {
    /// The request arrived (its first line).
    Request(String),
    /// The proxy closed the connection.
    Closed,
}

/// An upstream that reads each request and never answers, reporting what it sees; each
/// connection lives at most 30 s.
async fn silent_upstream() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Upstream>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let life = tokio::time::sleep(Duration::from_secs(30));
                tokio::pin!(life);
                loop {
                    tokio::select! {
                        n = s.read(&mut buf) => match n {
                            Ok(0) | Err(_) => {
                                let _ = tx.send(Upstream::Closed);
                                return;
                            }
                            Ok(n) => {
                                let text = String::from_utf8_lossy(&buf[..n]);
                                let line = text.lines().next().unwrap_or("").to_string();
                                let _ = tx.send(Upstream::Request(line));
                            }
                        },
                        _ = &mut life => return,
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Upstream>, limit: Duration) -> Option<Upstream> {
    tokio::time::timeout(limit, rx.recv()).await.ok().flatten()
}

fn get(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: session={OWNER_SESSION}\r\n\r\n")
}

/// The upstream's read timeout is far beyond the 10 s the test waits: only the relay's watch
/// of the client can end the upstream request inside it.
const LONG_READ: &str = "[upstream]\nread_timeout_ms = 600000\n";

/// A gateway in front of the silent upstream, and a client whose `GET path` has reached it.
async fn request_left_unanswered(
    path: &str,
) -> (
    World,
    tokio::net::TcpStream,
    mpsc::UnboundedReceiver<Upstream>,
) {
    let w = World::start(LONG_READ).await;
    let (addr, mut seen) = silent_upstream().await;
    w.redis.workspace(ID_A, &addr.to_string());
    let mut client = tokio::net::TcpStream::connect(w.gw.addr)
        .await
        .expect("connect");
    client
        .write_all(get(&w.gw.ws_host(ID_A), path).as_bytes())
        .await
        .expect("write");
    assert_eq!(
        next(&mut seen, Duration::from_secs(10)).await,
        Some(Upstream::Request(format!("GET {path} HTTP/1.1")))
    );
    (w, client, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_ends_the_upstream_request() {
    let (_w, client, mut seen) = request_left_unanswered("/slow").await;
    drop(client);
    assert_eq!(
        next(&mut seen, Duration::from_secs(10)).await,
        Some(Upstream::Closed),
        "the upstream request outlived its client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_bodyless_request_end_it_and_never_reach_the_upstream() {
    let (_w, mut client, mut seen) = request_left_unanswered("/first").await;
    // Not a pipelined request that edgegate takes (it does not pipeline): bytes no request
    // announced, smuggled behind a request without a body.
    client
        .write_all(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        next(&mut seen, Duration::from_secs(10)).await,
        Some(Upstream::Closed),
        "the upstream request outlived the client's extra bytes"
    );
    // The client's connection is closed too, with nothing of /smuggled answered.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the client connection stayed open");
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_relayed_in_sequence_keep_both_connections_for_the_next_request() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    let mut client = tokio::net::TcpStream::connect(w.gw.addr)
        .await
        .expect("connect");
    for i in 0..20 {
        client
            .write_all(get(&host, &format!("/seq/{i}")).as_bytes())
            .await
            .expect("write");
        // One whole response (the echo upstream sends a Content-Length) before the next.
        let (buf, end) = read_response_bytes(&mut client).await;
        assert_eq!(buf.len(), end, "nothing beyond the answer");
        let r = parse_response(&buf);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains(&format!("/seq/{i}")), "{}", r.body);
    }
    let seen = w.a.seen();
    assert_eq!(seen.len(), 20);
    assert!(
        seen.iter().all(|s| s.conn == seen[0].conn),
        "one upstream connection carried them all: {:?}",
        seen.iter().map(|s| s.conn).collect::<Vec<_>>()
    );
}

/// A proxy that is never asked for a peer: only the size of Pingora's request future is read.
struct SizeOnly;

#[async_trait::async_trait]
impl pingora::prelude::ProxyHttp for SizeOnly {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        _: &mut pingora::prelude::Session,
        _: &mut (),
    ) -> pingora::Result<Box<pingora::prelude::HttpPeer>> {
        Err(pingora::Error::new(pingora::ErrorType::InternalError))
    }
}

/// Every request's future is moved into its box whole, so its size is paid per request: with
/// the TLS connect, the HTTP/2 and custom upstream paths and the joined halves inline it was
/// 13.4 KB; boxed (pingora-core 0003, pingora-proxy 0002) it is ~7.5 KB. This fails if a
/// Pingora release without them comes in unnoticed.
#[tokio::test]
async fn a_requests_future_is_not_sized_for_tls_or_http2_upstreams() {
    use pingora::apps::HttpServerApp;
    let (_client, server) = tokio::io::duplex(1024);
    let session = pingora::protocols::http::ServerSession::new_http1(Box::new(server));
    let conf = std::sync::Arc::new(pingora::server::configuration::ServerConf::default());
    let proxy = std::sync::Arc::new(pingora::proxy::http_proxy(&conf, SizeOnly));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let future = proxy.process_new_http(session, &shutdown);
    let size = std::mem::size_of_val(&*future);
    assert!(size <= 8 * 1024, "a request's future is {size} bytes");
}
