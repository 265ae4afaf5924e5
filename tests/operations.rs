//! Operating edgegate: the admin listener, metrics that move by the right amounts after known
//! traffic, and the JSON access log.

mod common;

use common::*;
use edgegate::auth::token::TokenType;
use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_the_right_amounts_after_known_traffic() {
    let w = World::start("[cache]\nttl_ms = 60000\nnegative_ttl_ms = 60000\n").await;
    w.redis.wait_for_subscriber("edgegate:invalidate");
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    let before = w.gw.admin_get("/metrics").await.body;

    // 3 proxied requests with the owner's session (1 record miss + 2 hits, 1 session miss + 2 hits).
    for _ in 0..3 {
        assert_eq!(w.gw.get(&host, "/", &[]).await.status, 200);
    }
    // 2 refused without a credential, 1 forbidden session.
    for _ in 0..2 {
        assert_eq!(w.gw.request("GET", &host, "/", &[]).await.status, 401);
    }
    let other = format!("session={OTHER_SESSION}");
    assert_eq!(
        w.gw.request("GET", &host, "/", &[("Cookie", &other)])
            .await
            .status,
        403
    );
    // 1 unknown workspace (a negative entry), asked twice.
    for _ in 0..2 {
        assert_eq!(w.gw.get(&w.gw.ws_host(ID_B), "/", &[]).await.status, 404);
    }
    // 1 upstream connect failure.
    w.redis.workspace(
        "01J0AAAAAAAAAAAAAAAAAAAAA9",
        &format!("127.0.0.1:{}", free_port()),
    );
    assert_eq!(
        w.gw.get(&w.gw.ws_host("01J0AAAAAAAAAAAAAAAAAAAAA9"), "/", &[])
            .await
            .status,
        502
    );
    // 1 terminal-token WebSocket, closed by the client.
    let mut ws = ws_connect(w.gw.addr, &host, &agent_path(ID_A, OWNER), &[])
        .await
        .expect("upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "m").await, "upstream-a:m");
    let open = eventually(Duration::from_secs(2), || async {
        let p = w.gw.admin_get("/metrics").await.body;
        series(&p, "edgegate_websockets_open", &[("route", "workspace")]) == 1.0
    })
    .await;
    assert!(open, "one WebSocket open");
    ws.close(None).await.expect("close");
    drop(ws);
    // 1 invalidation message.
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    let settled = eventually(Duration::from_secs(3), || async {
        let p = w.gw.admin_get("/metrics").await.body;
        series(&p, "edgegate_websocket_closes_total", &[]) >= 1.0
            && series(&p, "edgegate_cache_invalidations_total", &[]) >= 1.0
    })
    .await;
    assert!(
        settled,
        "the WebSocket close and the invalidation were counted"
    );
    let after = w.gw.admin_get("/metrics").await.body;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        series(&after, name, labels) - series(&before, name, labels)
    };

    // Pingora's benign reports are counted, at zero from the start; an upstream failure is
    // not one of them (it is still logged).
    for kind in ["reuse_race", "refused", "client_gone"] {
        assert!(
            before.contains(&format!(
                "edgegate_pingora_benign_total{{kind=\"{kind}\"}} 0"
            )),
            "{kind} at zero from the start"
        );
    }
    assert_eq!(
        delta("edgegate_pingora_benign_total", &[("kind", "refused")]),
        0.0,
        "a 502 is no benign report"
    );

    // What an operator alerts on: refusals by code (every code present from the start),
    // bytes by route, open connections, the build, the process.
    for e in edgegate::error::GatewayError::ALL {
        assert!(
            before.contains(&format!(
                "edgegate_refusals_total{{code=\"{}\"}} 0",
                e.code()
            )),
            "{} at zero from the start",
            e.code()
        );
    }
    assert_eq!(
        delta("edgegate_refusals_total", &[("code", "unauthenticated")]),
        2.0
    );
    assert_eq!(
        delta("edgegate_refusals_total", &[("code", "forbidden")]),
        1.0
    );
    assert_eq!(
        delta("edgegate_refusals_total", &[("code", "unknown_workspace")]),
        2.0
    );
    assert_eq!(
        delta(
            "edgegate_refusals_total",
            &[("code", "upstream_unreachable")]
        ),
        1.0
    );
    assert!(
        delta(
            "edgegate_bytes_total",
            &[("route", "workspace"), ("direction", "out")]
        ) > 0.0
    );
    assert!(after.contains(&format!(
        "edgegate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    // A client connection in the middle of its request is counted while it is open.
    let mut held = tokio::net::TcpStream::connect(w.gw.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut held, b"GET / HTTP/1.1\r\n")
        .await
        .expect("write");
    assert!(
        eventually(Duration::from_secs(2), || async {
            let p = w.gw.admin_get("/metrics").await.body;
            series(&p, "edgegate_connections_open", &[]) >= 1.0
        })
        .await
    );
    drop(held);
    assert!(
        eventually(Duration::from_secs(2), || async {
            let p = w.gw.admin_get("/metrics").await.body;
            series(&p, "edgegate_connections_open", &[]) == 0.0
        })
        .await,
        "and no longer once it closed"
    );
    // A WebSocket is a client connection for as long as its tunnel runs, after it has left
    // Pingora's task for one of its own.
    let mut ws = ws_connect_as_owner(w.gw.addr, &host, "/agent/ws").await;
    assert_eq!(ws_roundtrip(&mut ws, "open").await, "upstream-a:open");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = w.gw.admin_get("/metrics").await.body;
    assert_eq!(
        series(&p, "edgegate_connections_open", &[]),
        1.0,
        "an open WebSocket"
    );
    drop(ws);
    assert!(
        eventually(Duration::from_secs(3), || async {
            let p = w.gw.admin_get("/metrics").await.body;
            series(&p, "edgegate_connections_open", &[]) == 0.0
        })
        .await,
        "and no longer once it closed"
    );
    assert!(series(&after, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(series(&after, "process_open_fds", &[]) > 0.0);

    let ws_route = [("route", "workspace"), ("method", "GET")];
    assert_eq!(
        delta(
            "edgegate_requests_total",
            &[
                ws_route[0],
                ws_route[1],
                ("status", "2xx"),
                ("result", "proxied")
            ]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "edgegate_requests_total",
            &[ws_route[0], ("status", "1xx"), ("result", "proxied")]
        ),
        1.0,
        "the upgrade"
    );
    assert_eq!(
        delta(
            "edgegate_requests_total",
            &[ws_route[0], ("status", "4xx"), ("result", "refused")]
        ),
        5.0
    );
    assert_eq!(
        delta("edgegate_requests_total", &[ws_route[0], ("status", "5xx")]),
        1.0
    );
    // 3 proxied + the dead-backend request, decided twice (refused connect → fresh record →
    // one retry).
    assert_eq!(
        delta(
            "edgegate_auth_decisions_total",
            &[("method", "session"), ("result", "ok")]
        ),
        5.0
    );
    assert_eq!(
        delta(
            "edgegate_auth_decisions_total",
            &[("method", "none"), ("result", "unauthenticated")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "edgegate_auth_decisions_total",
            &[("method", "session"), ("result", "forbidden")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "edgegate_auth_decisions_total",
            &[("method", "terminal_token"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "edgegate_cache_lookups_total",
            &[("result", "negative_hit")]
        ),
        1.0
    );
    assert!(delta("edgegate_cache_lookups_total", &[("result", "hit")]) >= 5.0);
    assert_eq!(
        delta("edgegate_upstream_failures_total", &[("kind", "connect")]),
        1.0
    );
    assert_eq!(
        delta("edgegate_websockets_open", &[("route", "workspace")]),
        0.0
    );
    assert_eq!(
        delta(
            "edgegate_websocket_closes_total",
            &[("route", "workspace"), ("cause", "client")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "edgegate_websocket_duration_seconds_count",
            &[("route", "workspace")]
        ),
        1.0
    );
    assert_eq!(delta("edgegate_cache_invalidations_total", &[]), 1.0);
    assert!(
        delta(
            "edgegate_redis_command_duration_seconds_count",
            &[("command", "hgetall")]
        ) >= 3.0
    );
    assert!(
        delta(
            "edgegate_request_duration_seconds_count",
            &[("route", "workspace")]
        ) >= 10.0
    );
    // Never a workspace id, user or host in a label.
    for secretish in [ID_A, ID_B, OWNER, "example.test", OWNER_SESSION] {
        assert!(!after.contains(secretish), "{secretish} in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_redis_and_stay_off_the_public_listener() {
    let mut w = World::start("").await;
    assert_eq!(w.gw.admin_get("/healthz").await.status, 200);
    assert_eq!(w.gw.admin_get("/readyz").await.status, 200);
    assert_eq!(w.gw.admin_get("/nope").await.status, 404);
    // The public listener has no admin paths: an app host goes to the app, others are 404.
    let r = w.gw.request("GET", &w.gw.app_host(), "/metrics", &[]).await;
    assert_eq!(r.header("x-upstream"), Some("app"));
    assert_eq!(
        w.gw.request("GET", "admin", "/metrics", &[]).await.status,
        404
    );
    // Redis down with nothing cached: nothing can be served, not ready.
    w.redis.stop();
    let not_ready = eventually(Duration::from_secs(3), || async {
        w.gw.admin_get("/readyz").await.status == 503
    })
    .await;
    assert!(not_ready);
    assert_eq!(w.gw.admin_get("/healthz").await.status, 200);
    w.redis.spawn();
    let ready = eventually(Duration::from_secs(5), || async {
        w.gw.admin_get("/readyz").await.status == 200
    })
    .await;
    assert!(ready);

    // Redis down with routes in memory: still ready, degraded, and it says so.
    w.redis.sessions();
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    assert_eq!(w.gw.get(&w.gw.ws_host(ID_A), "/", &[]).await.status, 200);
    w.redis.stop();
    let degraded = eventually(Duration::from_secs(3), || async {
        let r = w.gw.admin_get("/readyz?verbose").await;
        r.status == 200 && r.json()["degraded"] == true
    })
    .await;
    assert!(
        degraded,
        "cached routes are served: no reason to leave the balancer"
    );
    let v = w.gw.admin_get("/readyz?verbose").await.json();
    assert_eq!(v["store"], "unreachable");
    assert_eq!(v["status"], "degraded");
    assert!(v["cached_records"].as_u64().is_some_and(|n| n >= 1));
    let m = w.gw.admin_get("/metrics").await.body;
    assert!(m.contains("edgegate_degraded 1") && m.contains("edgegate_ready 1"));
    let held = m
        .lines()
        .find_map(|l| l.strip_prefix("edgegate_cached_records "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert_eq!(
        held,
        v["cached_records"].as_u64(),
        "the gauge says what readiness counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_fails_readiness_first_then_stops_accepting() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    assert_eq!(w.gw.admin_get("/readyz").await.status, 200);
    let r =
        w.gw.request("POST", &format!("{}", w.gw.admin), "/drain", &[])
            .await;
    assert_eq!(r.status, 404, "the public listener has no /drain");
    let req =
        "POST /drain HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(w.gw.admin, req.as_bytes()).await.status, 202);
    // With drain_delay_secs = 0 the listeners close right after readiness failed.
    let closed = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(w.gw.addr).await.is_err()
    })
    .await;
    assert!(closed, "the public listener closed after the drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request_without_credentials() {
    let dir = Scratch::new("eg-access");
    let path = dir.join("access.log");
    let extra = format!("[log]\naccess_log = {:?}\n", path.display().to_string());
    let w = World::start(&extra).await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    // A URL token on a plain request is no credential, but still never logged.
    let token = mint(TokenType::Terminal, ID_A, OWNER);
    assert_eq!(
        w.gw.get(&host, &format!("/agent/ws?x=1&token={token}"), &[])
            .await
            .status,
        200
    );
    assert_eq!(w.gw.get(&host, "/page", &[]).await.status, 200);
    assert_eq!(w.gw.request("GET", &host, "/", &[]).await.status, 401);
    // Endpoints edgegate answers itself log how their caller was checked too.
    w.redis.dev(ID_A, &w.b.addr.to_string());
    let mint_path = format!("/api/dev/{ID_A}/ide-token");
    let owner = format!("session={OWNER_SESSION}");
    let app = w.gw.app_host();
    let minted =
        w.gw.request("POST", &app, &mint_path, &[("Cookie", &owner)])
            .await;
    assert_eq!(minted.status, 200);
    let dev_token = minted.json()["token"].as_str().expect("token").to_string();
    assert_eq!(
        w.gw.request("POST", &app, &mint_path, &[]).await.status,
        401
    );
    let lines = eventually(Duration::from_secs(2), || async {
        std::fs::read_to_string(&path)
            .map(|t| t.lines().count() >= 5)
            .unwrap_or(false)
    })
    .await;
    assert!(lines);
    let text = std::fs::read_to_string(&path).expect("access log");
    assert!(!text.contains(&token), "token in the access log");
    assert!(!text.contains(OWNER_SESSION), "cookie in the access log");
    assert!(!text.contains(&dev_token), "minted token in the access log");
    let entries: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(entries.len(), 5);
    let first = &entries[0];
    assert_eq!(first["route"], "workspace");
    assert_eq!(first["query"], "x=1&token=REDACTED");
    assert_eq!(first["auth_method"], "session");
    assert_eq!(first["auth_result"], "ok");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], w.a.addr.to_string());
    assert!(first["bytes_out"].as_u64().is_some_and(|b| b > 0));
    // Who, where and what the upstream said (issue #19).
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["host"], host);
    assert_eq!(first["workspace"], ID_A);
    assert_eq!(first["user"], OWNER);
    assert_eq!(first["upstream_status"], 200);
    assert!(first["upstream_ms"].as_f64().is_some());
    assert!(
        entries[2]["user"].is_null(),
        "a refused request names no user"
    );
    assert!(
        entries[2]["upstream_status"].is_null(),
        "nor an upstream answer"
    );
    for key in [
        "time",
        "request_id",
        "method",
        "path",
        "duration_ms",
        "bytes_in",
    ] {
        assert!(!first[key].is_null(), "{key}");
    }
    assert_eq!(entries[1]["auth_method"], "session");
    assert_eq!(entries[2]["status"], 401);
    assert_eq!(entries[2]["error"], "unauthenticated");
    assert_eq!(entries[2]["auth_result"], "unauthenticated");
    assert_eq!(entries[3]["status"], 200);
    assert_eq!(entries[3]["auth_method"], "session");
    assert_eq!(entries[3]["auth_result"], "ok");
    assert_eq!(entries[4]["status"], 401);
    assert_eq!(entries[4]["auth_method"], "session");
    assert_eq!(entries[4]["auth_result"], "unauthenticated");

    // A terminal token on the agent WebSocket: its line (written when the tunnel ends) names
    // the token as the credential, never its value, in any spelling of the parameter.
    let term = mint(TokenType::Terminal, ID_A, OWNER);
    let mut ws = ws_connect(
        w.gw.addr,
        &host,
        &format!("/agent/ws?x=1&%74oken={term}"),
        &[],
    )
    .await
    .expect("upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "m").await, "upstream-a:m");
    ws.close(None).await.expect("close");
    drop(ws);
    let six = eventually(Duration::from_secs(3), || async {
        std::fs::read_to_string(&path)
            .map(|t| t.lines().count() >= 6)
            .unwrap_or(false)
    })
    .await;
    assert!(six);
    let text = std::fs::read_to_string(&path).expect("access log");
    assert!(!text.contains(&term), "token in the access log");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().nth(5).expect("sixth line")).expect("JSON line");
    assert_eq!(last["status"], 101);
    assert_eq!(last["query"], "x=1&%74oken=REDACTED");
    assert_eq!(last["auth_method"], "terminal_token");
    assert_eq!(last["auth_result"], "ok");
    assert!(last["bytes_out"].as_u64().is_some_and(|b| b > 0));
}

fn last_activity(redis: &Redis, key: &str) -> Option<u64> {
    let v: Option<String> = redis::cmd("HGET")
        .arg(key)
        .arg("last_activity")
        .query(&mut redis.conn())
        .expect("HGET");
    v.and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_is_written_per_interval_from_requests_and_websocket_frames() {
    let w = World::start("[activity]\ninterval_secs = 1\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.workspace(ID_B, &w.b.addr.to_string());
    let key_a = format!("workspace:{ID_A}");
    let key_b = format!("workspace:{ID_B}");
    let start = edgegate::auth::token::now();

    // HTTP requests mark A.
    let evals_before = w.redis.calls("eval");
    for _ in 0..20 {
        assert_eq!(w.gw.get(&w.gw.ws_host(ID_A), "/", &[]).await.status, 200);
    }
    let written = eventually(Duration::from_secs(3), || async {
        last_activity(&w.redis, &key_a).is_some()
    })
    .await;
    assert!(written, "last_activity written for A");
    assert!(last_activity(&w.redis, &key_a).is_some_and(|t| t >= start));
    assert!(
        last_activity(&w.redis, &key_b).is_none(),
        "B had no traffic"
    );
    // 20 requests within a second or two: batched into at most a few writes, not 20.
    let evals = w.redis.calls("eval") - evals_before;
    assert!(
        (1..=3).contains(&evals),
        "{evals} activity writes for 20 requests"
    );

    // WebSocket frames mark B, long after its upgrade request.
    let token = mint(TokenType::Terminal, ID_B, OWNER);
    let mut ws = ws_connect(
        w.gw.addr,
        &w.gw.ws_host(ID_B),
        &format!("/agent/ws?token={token}"),
        &[],
    )
    .await
    .expect("upgrade");
    let first = eventually(Duration::from_secs(3), || async {
        last_activity(&w.redis, &key_b).is_some()
    })
    .await;
    assert!(first);
    let _: () = redis::cmd("HDEL")
        .arg(&key_b)
        .arg("last_activity")
        .query(&mut w.redis.conn())
        .expect("HDEL");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ws_roundtrip(&mut ws, "frame").await, "upstream-b:frame");
    let again = eventually(Duration::from_secs(3), || async {
        last_activity(&w.redis, &key_b).is_some()
    })
    .await;
    assert!(again, "a frame on the open WebSocket counts as activity");

    // A deleted record is not recreated by a late activity write: mark A, delete it before
    // the next flush.
    assert_eq!(w.gw.get(&w.gw.ws_host(ID_A), "/", &[]).await.status, 200);
    let _: () = redis::cmd("DEL")
        .arg(&key_a)
        .query(&mut w.redis.conn())
        .expect("DEL");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key_a)
        .query(&mut w.redis.conn())
        .expect("EXISTS");
    assert_eq!(exists, 0);
}

/// A WebSocket upstream that only pushes: a text frame every 200 ms, reads nothing.
async fn pushing_upstream() -> std::net::SocketAddr {
    use futures_util::SinkExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                // Bounded: the test is over long before.
                for i in 0..300 {
                    let msg = tokio_tungstenite::tungstenite::Message::text(format!("push {i}"));
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_frames_count_as_activity_and_background_traffic_does_not() {
    use futures_util::StreamExt;
    let w = World::start("[activity]\ninterval_secs = 1\n").await;
    let pusher = pushing_upstream().await;
    w.redis.workspace(ID_A, &pusher.to_string());
    w.redis.workspace(ID_B, &pusher.to_string());
    let (key_a, key_b) = (format!("workspace:{ID_A}"), format!("workspace:{ID_B}"));
    let cookie = format!("session={OWNER_SESSION}");
    let open = |id: &str, background: bool| {
        let host = w.gw.ws_host(id);
        let (gw, cookie) = (w.gw.addr, cookie.clone());
        async move {
            let origin = format!("http://{host}");
            let mut headers = vec![("Cookie", cookie.as_str()), ("Origin", origin.as_str())];
            if background {
                headers.push(("X-Edgegate-Background", "1"));
            }
            ws_connect(gw, &host, "/", &headers).await.expect("upgrade")
        }
    };

    // Background traffic first: plain requests and a pushing WebSocket on B. Nothing counts.
    for _ in 0..3 {
        let r =
            w.gw.get(&w.gw.ws_host(ID_B), "/", &[("X-Edgegate-Background", "1")])
                .await;
        // The pusher answers HTTP with nothing useful; the request still went through.
        assert_ne!(r.status, 401);
    }
    let mut quiet = open(ID_B, true).await;
    let mut pushed = 0;
    while pushed < 8 {
        if let Some(Ok(_)) = quiet.next().await {
            pushed += 1;
        }
    }

    // The client of A sends nothing; the upstream's frames alone keep A active.
    let mut ws = open(ID_A, false).await;
    assert!(ws.next().await.is_some_and(|m| m.is_ok()));
    let first = eventually(Duration::from_secs(3), || async {
        last_activity(&w.redis, &key_a).is_some()
    })
    .await;
    assert!(first, "A marked active");
    let _: () = redis::cmd("HDEL")
        .arg(&key_a)
        .arg("last_activity")
        .query(&mut w.redis.conn())
        .expect("HDEL");
    let again = eventually(Duration::from_secs(4), || async {
        last_activity(&w.redis, &key_a).is_some()
    })
    .await;
    assert!(
        again,
        "frames from the upstream, none from the client, count"
    );
    // By now B's background WebSocket has pushed for seconds, over several flushes.
    assert_eq!(
        last_activity(&w.redis, &key_b),
        None,
        "background traffic is not activity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_writes_the_user_clear_hashed_or_not_at_all() {
    for (mode, want) in [("hashed", Some(16)), ("off", None)] {
        let dir = Scratch::new("eg-access-user");
        let path = dir.join("access.log");
        let extra = format!(
            "[log]\naccess_log = {:?}\naccess_log_user = \"{mode}\"\n",
            path.display().to_string()
        );
        let w = World::start(&extra).await;
        w.redis.workspace(ID_A, &w.a.addr.to_string());
        assert_eq!(w.gw.get(&w.gw.ws_host(ID_A), "/", &[]).await.status, 200);
        assert!(
            eventually(Duration::from_secs(2), || async {
                std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() >= 1)
            })
            .await
        );
        let text = std::fs::read_to_string(&path).expect("access log");
        assert!(!text.contains(OWNER), "{mode}: {text}");
        let line: serde_json::Value =
            serde_json::from_str(text.lines().next().expect("line")).expect("JSON");
        assert_eq!(line["user"].as_str().map(str::len), want, "{mode}: {line}");
    }
}
