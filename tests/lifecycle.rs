//! A workspace that is not running (issue #18): waking a stopped one on request, with real
//! Redis and two gateway instances; what each kind of client is told; nothing told to a caller
//! auth refuses.

mod common;

use common::*;
use std::time::Duration;

const STREAM: &str = "edgegate:wake";

fn stopped(w: &World, id: &str, status: &str) {
    w.redis.hset(
        &format!("workspace:{id}"),
        &[
            ("backend", &w.a.addr.to_string()),
            ("owner", OWNER),
            ("status", status),
        ],
    );
}

/// The wake stream's entries, each as its fields.
fn entries(r: &Redis) -> Vec<Vec<(String, String)>> {
    let v: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query(&mut r.conn())
        .expect("XRANGE");
    v.into_iter()
        .map(|(_, flat)| {
            let mut fields: Vec<(String, String)> = flat
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv.get(1).cloned().unwrap_or_default()))
                .collect();
            fields.sort();
            fields
        })
        .collect()
}

fn field<'a>(entry: &'a [(String, String)], name: &str) -> Option<&'a str> {
    entry
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_workspace_is_woken_once_however_many_requests_and_instances_see_it() {
    let w = World::start("").await;
    let second = Gateway::start(&config_text(free_port(), w.redis.port, w.app.addr, ""));
    stopped(&w, ID_A, "stopped");
    let cookie = format!("session={OWNER_SESSION}");

    // A burst on both instances: page loads, fetches, WebSocket upgrades.
    let mut burst = Vec::new();
    for i in 0..30 {
        let gw = if i % 2 == 0 { w.gw.addr } else { second.addr };
        let host = format!("ws-{}.{DOMAIN}:{}", ID_A.to_ascii_lowercase(), gw.port());
        let cookie = cookie.clone();
        burst.push(tokio::spawn(async move {
            let origin = format!("http://{host}");
            match i % 3 {
                0 => {
                    let req = format!(
                        "GET / HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\
                         Sec-Fetch-Mode: navigate\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
                    );
                    ("navigate", raw(gw, req.as_bytes()).await)
                }
                1 => {
                    let req = format!(
                        "GET /api HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\
                         Sec-Fetch-Mode: cors\r\nConnection: close\r\n\r\n"
                    );
                    ("fetch", raw(gw, req.as_bytes()).await)
                }
                _ => (
                    "upgrade",
                    upgrade(
                        gw,
                        &host,
                        "/ws",
                        &[("Cookie", &cookie), ("Origin", &origin)],
                    )
                    .await,
                ),
            }
        }));
    }
    for b in burst {
        let (kind, r) = b.await.expect("request task");
        assert_eq!(r.status, 503, "{kind}: {r:?}");
        assert_eq!(r.header("retry-after"), Some("2"), "{kind}");
        assert!(
            r.header("location").is_none(),
            "{kind}: never a redirect: {r:?}"
        );
        if kind == "navigate" {
            assert_eq!(
                r.header("content-type"),
                Some("text/html; charset=utf-8"),
                "{r:?}"
            );
            assert_eq!(r.header("refresh"), Some("2"), "the page reloads by itself");
            assert!(r.body.contains("starting"), "{}", r.body);
        } else {
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.error_code(), "workspace_starting", "{kind}");
            assert!(r.header("refresh").is_none());
        }
    }
    assert_eq!(
        w.a.count(),
        0,
        "nothing reached the stopped workspace's backend"
    );

    let got = entries(&w.redis);
    assert_eq!(got.len(), 1, "one wake request: {got:?}");
    let e = &got[0];
    assert_eq!(field(e, "workspace"), Some(ID_A));
    assert_eq!(field(e, "key"), Some(format!("workspace:{ID_A}").as_str()));
    assert_eq!(field(e, "route"), Some("workspace"));
    assert_eq!(field(e, "user"), Some(OWNER));
    assert!(field(e, "at").is_some_and(|t| t.parse::<u64>().is_ok()));
    assert!(
        !format!("{e:?}").contains(OWNER_SESSION),
        "no credential in the entry"
    );
    // Both instances counted what they did: one published, the rest repeated.
    let mut published = 0;
    for admin in [&w.gw, &second] {
        let m = admin.admin_get("/metrics").await.body;
        published += metric(&m, "edgegate_wake_requests_total{result=\"published\"}");
        assert_eq!(
            metric(&m, "edgegate_wake_requests_total{result=\"failed\"}"),
            0
        );
    }
    assert_eq!(published, 1);

    // The app starts it: the next request reaches the workspace.
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    let host = w.gw.ws_host(ID_A);
    let reached = eventually(Duration::from_secs(5), || async {
        w.gw.get(&host, "/", &[]).await.status == 200
    })
    .await;
    assert!(reached, "a running workspace is proxied again");
    assert_eq!(entries(&w.redis).len(), 1);
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_caller_allowed_in_wakes_it_or_learns_its_state() {
    let w = World::start("").await;
    stopped(&w, ID_A, "stopped");
    let host = w.gw.ws_host(ID_A);

    let anonymous = w.gw.request("GET", &host, "/", &[]).await;
    assert_eq!(
        (anonymous.status, anonymous.error_code().as_str()),
        (401, "unauthenticated"),
        "not 503: a stranger does not learn the workspace is stopped"
    );
    let other = format!("session={OTHER_SESSION}");
    let r = w.gw.request("GET", &host, "/", &[("Cookie", &other)]).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    let token = upgrade(w.gw.addr, &host, &agent_path(ID_A, "user-2"), &[]).await;
    assert_eq!(token.status, 403, "another user's token: {token:?}");
    assert!(entries(&w.redis).is_empty(), "nobody allowed in asked");

    // The owner's terminal token on the agent's upgrade is allowed in: it wakes.
    let r = upgrade(w.gw.addr, &host, &agent_path(ID_A, OWNER), &[]).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "workspace_starting")
    );
    let got = entries(&w.redis);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(field(&got[0], "user"), Some(OWNER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitioning_and_other_states_are_503_and_wake_nothing() {
    let w = World::start(
        "[lifecycle]\nstartable = [\"stopped\"]\ntransitioning = [\"starting\", \"stopping\"]\n",
    )
    .await;
    let host = w.gw.ws_host(ID_A);
    for (status, code, page_reloads) in [
        ("starting", "workspace_transitioning", true),
        ("stopping", "workspace_transitioning", true),
        ("failed", "workspace_not_running", false),
    ] {
        stopped(&w, ID_A, status);
        w.redis
            .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = w.gw.get(&host, "/", &[]).await;
        assert_eq!((r.status, r.error_code().as_str()), (503, code), "{status}");
        assert!(r.header("retry-after").is_some(), "{status}");
        let page =
            w.gw.get(&host, "/", &[("Sec-Fetch-Mode", "navigate")])
                .await;
        assert_eq!(page.status, 503);
        assert_eq!(
            page.header("refresh").is_some(),
            page_reloads,
            "{status}: {page:?}"
        );
    }
    assert!(entries(&w.redis).is_empty());
    assert_eq!(w.a.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_interval_wakes_again_and_waking_can_be_turned_off() {
    let w = World::start("[lifecycle]\nwake_interval_secs = 1\n").await;
    stopped(&w, ID_A, "stopped");
    let host = w.gw.ws_host(ID_A);
    assert_eq!(w.gw.get(&host, "/", &[]).await.status, 503);
    assert_eq!(w.gw.get(&host, "/", &[]).await.status, 503);
    assert_eq!(entries(&w.redis).len(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(w.gw.get(&host, "/", &[]).await.status, 503);
    assert_eq!(entries(&w.redis).len(), 2, "the workspace is still stopped");

    let off = World::start("[lifecycle]\nwake_stream = \"\"\n").await;
    stopped(&off, ID_A, "stopped");
    let r = off.gw.get(&off.gw.ws_host(ID_A), "/", &[]).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "workspace_not_running")
    );
    assert!(entries(&off.redis).is_empty());
}

/// An upstream that holds requests open: `/warm` is answered whole (empty, kept alive) and
/// the connection reads its next request; `/stream` gets a chunked head and one chunk;
/// `/close-delimited` a head without a length and one line of a body that runs until the
/// close; anything else nothing at all. Counts the request heads it read and the connections
/// its peer closed.
async fn holding_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let closed = std::sync::Arc::new(AtomicUsize::new(0));
    let heads = std::sync::Arc::new(AtomicUsize::new(0));
    let (closed_count, head_count) = (closed.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (closed, heads) = (closed_count.clone(), head_count.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let head = loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    heads.fetch_add(1, Ordering::SeqCst);
                    if !head.starts_with(b"GET /warm") {
                        break head;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                };
                if head.starts_with(b"GET /stream") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n",
                        )
                        .await;
                } else if head.starts_with(b"GET /close-delimited") {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nfirst\n").await;
                }
                // Hold until the other side goes (bounded: the test ends well before).
                let _ = tokio::time::timeout(Duration::from_secs(120), async {
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, closed, heads)
}

/// Open a request through the gateway and return the connection once `until` was read.
async fn open_request(
    gw: std::net::SocketAddr,
    host: &str,
    path: &str,
    until: &[u8],
) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw).await.expect("connect");
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: session={OWNER_SESSION}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !until.is_empty() && !got.windows(until.len()).any(|w| w == until) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the response starts")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    (s, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_end_when_their_workspace_stops_on_every_instance() {
    let w = World::start("[upstream]\nread_timeout_ms = 60000\n").await;
    let second = Gateway::start(&config_text(
        free_port(),
        w.redis.port,
        w.app.addr,
        "[upstream]\nread_timeout_ms = 60000\n",
    ));
    w.redis.wait_for_subscriber("edgegate:invalidate");
    let (held_a, closed_a, _) = holding_upstream().await;
    let (held_b, closed_b, _) = holding_upstream().await;
    w.redis.workspace(ID_A, &held_a.to_string());
    w.redis.workspace(ID_B, &held_b.to_string());
    let host = |gw: &Gateway, id: &str| gw.ws_host(id);

    // In flight on both instances: a long poll (nothing answered yet) and a stream (started).
    let (mut poll, _) = open_request(w.gw.addr, &host(&w.gw, ID_A), "/poll", b"").await;
    let (mut stream, head) =
        open_request(second.addr, &host(&second, ID_A), "/stream", b"first\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    // Another workspace's request, on the first instance: it must not end.
    let (mut other, _) = open_request(w.gw.addr, &host(&w.gw, ID_B), "/stream", b"first\n").await;
    // The app stops A and says so.
    w.redis.hset(
        &format!("workspace:{ID_A}"),
        &[
            ("backend", &held_a.to_string()),
            ("owner", OWNER),
            ("status", "stopped"),
        ],
    );
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    // B changed too, but still runs: nothing of it ends.
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_B}"));

    let answer = read_to_close(&mut poll).await;
    let r = parse_response(&answer);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "workspace_not_running"),
        "the long poll is told why"
    );
    let rest = read_to_close(&mut stream).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("0\r\n\r\n"),
        "the started stream is cut, not completed: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            closed_a.load(std::sync::atomic::Ordering::SeqCst) == 2
        })
        .await,
        "both upstream connections to A were closed"
    );

    // B's stream is still open: its upstream holds it, and the client has read nothing more.
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let still = tokio::time::timeout(Duration::from_millis(300), other.read(&mut buf)).await;
    assert!(still.is_err(), "B's request goes on: {still:?}");
    assert_eq!(closed_b.load(std::sync::atomic::Ordering::SeqCst), 0);

    let mut drained = 0;
    for gw in [&w.gw, &second] {
        let m = gw.admin_get("/metrics").await.body;
        drained += metric(
            &m,
            "edgegate_drained_total{cause=\"stopped\",kind=\"http\"}",
        );
    }
    assert_eq!(drained, 2, "one drained request per instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_close_with_1001_when_their_workspace_stops_or_goes() {
    let w = World::start("").await;
    w.redis.wait_for_subscriber("edgegate:invalidate");
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.workspace(ID_B, &w.a.addr.to_string());
    let cookie = format!("session={OWNER_SESSION}");
    let open = |id: &'static str| {
        let host = w.gw.ws_host(id);
        let cookie = cookie.clone();
        let gw = w.gw.addr;
        async move {
            let origin = format!("http://{host}");
            ws_connect(
                gw,
                &host,
                "/ws",
                &[("Cookie", &cookie), ("Origin", &origin)],
            )
            .await
            .expect("websocket opens")
        }
    };
    let mut a = open(ID_A).await;
    let mut b = open(ID_B).await;
    assert_eq!(ws_roundtrip(&mut a, "hi").await, "upstream-a:hi");

    // A stops; B's record is deleted.
    w.redis.hset(
        &format!("workspace:{ID_A}"),
        &[
            ("backend", &w.a.addr.to_string()),
            ("owner", OWNER),
            ("status", "stopping"),
        ],
    );
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    assert_eq!(expect_close(&mut a, Duration::from_secs(10)).await, 1001);
    let _: () = redis::cmd("DEL")
        .arg(format!("workspace:{ID_B}"))
        .query(&mut w.redis.conn())
        .expect("DEL");
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_B}"));
    assert_eq!(expect_close(&mut b, Duration::from_secs(10)).await, 1001);

    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = w.gw.admin_get("/metrics").await.body;
            metric(
                &m,
                "edgegate_drained_total{cause=\"gone\",kind=\"websocket\"}",
            ) == 1
                && metric(
                    &m,
                    "edgegate_drained_total{cause=\"stopped\",kind=\"websocket\"}",
                ) == 1
        })
        .await,
        "drained WebSockets counted by cause"
    );
    let m = w.gw.admin_get("/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "edgegate_websocket_closes_total{cause=\"workspace_stopped\",route=\"workspace\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "edgegate_websocket_closes_total{cause=\"workspace_gone\",route=\"workspace\"}"
        ),
        1
    );
}

/// A drained request is not sent out again: Pingora retries an idempotent request whose
/// reused upstream connection closed before the answer, and the drain's shutdown looks just
/// like that; retried, the request would go out on the decision the drain revoked (and here
/// hang on the upstream). And a body that runs until the upstream closes reaches the client
/// cut, not looking complete (the shutdown looks like that close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_request_is_not_retried_and_a_body_until_close_is_cut() {
    use tokio::io::AsyncWriteExt;
    let w = World::start("[upstream]\nread_timeout_ms = 60000\n").await;
    let (held, _, heads) = holding_upstream().await;
    w.redis.workspace(ID_A, &held.to_string());
    let host = w.gw.ws_host(ID_A);
    let request = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: session={OWNER_SESSION}\r\n\r\n")
    };
    // One client connection: `/warm` answered whole (its upstream connection back in the
    // pool before the next request on this connection is read), then the long poll on it.
    let mut poll = tokio::net::TcpStream::connect(w.gw.addr)
        .await
        .expect("connect");
    poll.write_all(request("/warm").as_bytes())
        .await
        .expect("write");
    let warm = read_response(&mut poll).await;
    assert_eq!(warm.status, 200, "{warm:?}");
    poll.write_all(request("/poll").as_bytes())
        .await
        .expect("write");
    let (mut body, head) = open_request(w.gw.addr, &host, "/close-delimited", b"first\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            heads.load(std::sync::atomic::Ordering::SeqCst) == 3
        })
        .await,
        "both requests are in flight at the upstream"
    );
    w.redis.hset(
        &format!("workspace:{ID_A}"),
        &[
            ("backend", &held.to_string()),
            ("owner", OWNER),
            ("status", "stopped"),
        ],
    );
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    let answer = read_to_close(&mut poll).await;
    let r = parse_response(&answer);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "workspace_not_running"),
        "the long poll is told why, not sent out again"
    );
    assert_eq!(
        heads.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "nothing went out again"
    );
    let rest = read_to_close(&mut body).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("0\r\n\r\n"),
        "the body until close is cut, not completed: {:?}",
        String::from_utf8_lossy(&rest)
    );
}
