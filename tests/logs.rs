//! No log line contains a token, a cookie value or a secret: every log record of an
//! auth-heavy run (edgegate's and Pingora's, at every level, through the same guard the binary
//! installs) is captured and searched.

mod common;

use common::*;
use edgegate::auth::token::TokenType;
use std::sync::Mutex;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Recorder;

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {} {}", record.level(), record.target(), record.args());
        if let Ok(mut v) = LINES.lock() {
            v.push(line);
        }
    }
    fn flush(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_heavy_run_logs_no_token_cookie_or_secret() {
    log::set_boxed_logger(Box::new(edgegate::logging::Guarded::new(Recorder))).expect("logger");
    log::set_max_level(log::LevelFilter::Trace);

    // Long TTLs: records stay cached when Redis goes away, so the outage hits session lookups.
    let w = World::start("[cache]\nttl_ms = 60000\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    w.redis.dev(ID_A, &w.b.addr.to_string());
    // A bad record and a session without a user, so warnings are logged too.
    w.redis.hset(
        &format!("workspace:{ID_B}"),
        &[("owner", OWNER), ("status", "running")],
    );
    w.redis.hset("session:sess-broken", &[("nouser", "x")]);
    let app = w.gw.app_host();
    let ws_host = w.gw.ws_host(ID_A);
    let owner = format!("session={OWNER_SESSION}");
    let mut secrets: Vec<String> = vec![
        SECRET.into(),
        OWNER_SESSION.into(),
        OTHER_SESSION.into(),
        "sess-broken".into(),
    ];

    // Minting and the bootstrap.
    let r =
        w.gw.request(
            "POST",
            &app,
            &format!("/api/dev/{ID_A}/ide-token"),
            &[("Cookie", &owner)],
        )
        .await;
    let dev = r.json()["token"].as_str().expect("token").to_string();
    let r =
        w.gw.request(
            "GET",
            &app,
            &format!("/api/dev/{ID_A}/ide?token={dev}"),
            &[("Cookie", &owner)],
        )
        .await;
    assert_eq!(r.status, 302);
    let ide_cookie = r
        .header("set-cookie")
        .and_then(|c| c.strip_prefix("edgegate_ide="))
        .and_then(|c| c.split(';').next())
        .expect("cookie")
        .to_string();
    // Replay, refused.
    let _ =
        w.gw.request(
            "GET",
            &app,
            &format!("/api/dev/{ID_A}/ide?token={dev}"),
            &[],
        )
        .await;
    let r =
        w.gw.request(
            "POST",
            &app,
            &format!("/api/workspaces/{ID_A}/terminal-token"),
            &[("Cookie", &owner)],
        )
        .await;
    let term = r.json()["token"].as_str().expect("token").to_string();
    let foreign = mint(TokenType::Terminal, ID_A, "user-2");
    let tampered = format!("{}x", &term[..term.len() - 1]);

    // Every credential, accepted and refused, in every place it can travel.
    let other = format!("session={OTHER_SESSION}");
    let broken = "session=sess-broken".to_string();
    let cookie_hdr = format!("edgegate_ide={ide_cookie}");
    for (host, path, headers) in [
        (ws_host.clone(), format!("/agent/ws?token={term}"), vec![]),
        (
            ws_host.clone(),
            format!("/agent/ws?token={foreign}"),
            vec![],
        ),
        (
            ws_host.clone(),
            format!("/agent/ws?token={tampered}"),
            vec![],
        ),
        (
            ws_host.clone(),
            "/x?token=abc".to_string(),
            vec![("Cookie", owner.clone())],
        ),
        (
            ws_host.clone(),
            "/".to_string(),
            vec![("Cookie", other.clone())],
        ),
        (
            ws_host.clone(),
            "/".to_string(),
            vec![("Cookie", broken.clone())],
        ),
        (
            w.gw.ws_host(ID_B),
            "/".to_string(),
            vec![("Cookie", owner.clone())],
        ),
        (
            app.clone(),
            format!("/__ide/{ID_A}/"),
            vec![("Cookie", cookie_hdr.clone())],
        ),
        (
            app.clone(),
            format!("/__ide/{ID_A}/"),
            vec![("Authorization", format!("Bearer {foreign}"))],
        ),
        (app.clone(), format!("/__ide/{ID_A}/?token={dev}"), vec![]),
    ] {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = w.gw.request("GET", &host, &path, &hs).await;
        // Upstream echoes are the workspace's business; edgegate's own answers carry none.
        if r.header("x-upstream").is_none() {
            for s in [&term, &dev, &ide_cookie, &foreign] {
                assert!(
                    !r.body.contains(s.as_str()),
                    "a credential in an error body: {}",
                    r.body
                );
            }
        }
    }
    let mut ws = ws_connect(w.gw.addr, &ws_host, &format!("/agent/ws?token={term}"), &[])
        .await
        .expect("upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "hello").await, "upstream-a:hello");
    drop(ws);
    // And with Redis gone, so store errors are logged.
    let mut redis = w.redis;
    redis.stop();
    let r =
        w.gw.request(
            "GET",
            &ws_host,
            "/",
            &[("Cookie", "session=sess-during-outage")],
        )
        .await;
    assert_eq!(
        r.status, 503,
        "the session lookup met the outage: {}",
        r.body
    );
    secrets.push("sess-during-outage".into());
    secrets.extend([
        term.clone(),
        dev.clone(),
        ide_cookie.clone(),
        foreign.clone(),
        tampered,
    ]);
    // Long enough to be specific: a signature alone identifies a token.
    for t in [&term, &dev, &ide_cookie] {
        if let Some(sig) = t.rsplit('.').next() {
            secrets.push(sig.to_string());
        }
    }

    let lines = LINES.lock().expect("lines").clone();
    assert!(
        lines.iter().any(|l| l.contains("edgegate")),
        "the recorder saw edgegate's own log lines ({} lines)",
        lines.len()
    );
    for line in &lines {
        for s in &secrets {
            assert!(
                !line.contains(s.as_str()),
                "secret {s:.12}… in a log line: {line}"
            );
        }
    }
}
