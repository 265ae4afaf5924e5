//! The audit trail (issue #18): one event per WebSocket session and per first HTTP access per
//! user, workspace, port and route per interval; in a file and a capped Redis stream; never a
//! credential's value.

mod common;

use common::*;
use edgegate::auth::token::TokenType;
use std::time::Duration;

fn stream_events(r: &Redis) -> Vec<serde_json::Value> {
    let v: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("edgegate:audit")
        .arg("-")
        .arg("+")
        .query(&mut r.conn())
        .expect("XRANGE");
    v.into_iter()
        .map(|(_, kv)| {
            assert_eq!(kv.first().map(String::as_str), Some("event"));
            serde_json::from_str(&kv[1]).expect("event is JSON")
        })
        .collect()
}

fn file_events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_opened_what_with_which_credential_for_how_long() {
    let dir = Scratch::new("eg-audit");
    let file = dir.join("audit.jsonl");
    let w = World::start(&format!(
        "[audit]\nfile = {:?}\nredis_stream = \"edgegate:audit\"\nhttp_interval_secs = 60\n",
        file.display().to_string()
    ))
    .await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.workspace(ID_B, &w.b.addr.to_string());

    // Five page loads of A, one of B: two accesses. Another user's refused attempt: none.
    for _ in 0..5 {
        assert_eq!(w.gw.get(&w.gw.ws_host(ID_A), "/", &[]).await.status, 200);
    }
    assert_eq!(w.gw.get(&w.gw.ws_host(ID_B), "/x", &[]).await.status, 200);
    let other = format!("session={OTHER_SESSION}");
    let r =
        w.gw.request("GET", &w.gw.ws_host(ID_A), "/", &[("Cookie", &other)])
            .await;
    assert_eq!(r.status, 403);

    // A terminal session on A: opened with a token, a few frames, closed by the client.
    let token = mint(TokenType::Terminal, ID_A, OWNER);
    let mut ws = ws_connect(
        w.gw.addr,
        &w.gw.ws_host(ID_A),
        &format!("/agent/ws?token={token}"),
        &[],
    )
    .await
    .expect("upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "ls").await, "upstream-a:ls");
    ws.close(None).await.expect("close");
    drop(ws);

    let complete = eventually(Duration::from_secs(5), || async {
        stream_events(&w.redis).len() == 3 && file_events(&file).len() == 3
    })
    .await;
    assert!(
        complete,
        "stream {:?}\nfile {:?}",
        stream_events(&w.redis),
        file_events(&file)
    );
    let events = stream_events(&w.redis);
    assert_eq!(events, file_events(&file), "the same events in both");

    let http: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "http_access")
        .collect();
    assert_eq!(http.len(), 2, "{http:?}");
    let a = http
        .iter()
        .find(|e| e["workspace"] == ID_A)
        .expect("A's access");
    assert_eq!(a["user"], OWNER);
    assert_eq!(a["credential"], "session");
    assert_eq!(a["route"], "workspace");
    assert_eq!(a["port"], w.a.addr.port());
    assert_eq!(a["status"], 200);
    assert_eq!(a["client"], "127.0.0.1");
    assert!(http.iter().any(|e| e["workspace"] == ID_B));

    let ws = events
        .iter()
        .find(|e| e["event"] == "websocket")
        .expect("the WebSocket session");
    assert_eq!(ws["user"], OWNER);
    assert_eq!(ws["workspace"], ID_A);
    assert_eq!(ws["credential"], "terminal_token");
    assert_eq!(ws["close"], "client");
    assert!(ws["bytes_in"].as_u64().is_some_and(|b| b > 0));
    assert!(ws["bytes_out"].as_u64().is_some_and(|b| b > 0));
    assert!(ws["duration_ms"].as_u64().is_some());
    assert!(ws["opened"].as_f64() <= ws["time"].as_f64());

    let text = std::fs::read_to_string(&file).expect("file");
    for secret in [OWNER_SESSION, OTHER_SESSION, token.as_str()] {
        assert!(!text.contains(secret), "a credential in the audit trail");
    }
}
