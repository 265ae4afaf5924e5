//! `edgegate explain`: the routing and auth decision for one URL, without proxying.

mod common;

use common::*;

fn explain(cfg: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgegate"))
        .args(["explain", "-c"])
        .arg(cfg)
        .args(args)
        .output()
        .expect("run edgegate explain");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reports_each_step_and_exits_by_the_verdict() {
    let redis = Redis::start();
    redis.sessions();
    let a = upstream("a").await;
    redis.hset(
        &format!("workspace:{ID_A}"),
        &[
            ("backend", &a.addr.to_string()),
            ("owner", OWNER),
            ("status", "running"),
            ("agent_token", "s3cr3t-agent-token"),
        ],
    );
    redis.workspace(ID_B, &format!("127.0.0.1:{}", free_port()));
    let dir = Scratch::new("eg-explain");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, config_text(free_port(), redis.port, a.addr, "")).expect("write");
    let url = |id: &str| format!("http://ws-{}.{DOMAIN}/agent/ws", id.to_ascii_lowercase());
    let owner = format!("session={OWNER_SESSION}");

    let (code, text) = explain(&cfg, &[&url(ID_A), "--cookie", &owner]);
    assert_eq!(code, 0, "{text}");
    for want in [
        "route      workspace".to_string(),
        format!("id         {ID_A}"),
        format!("key        workspace:{ID_A}"),
        format!("upstream   {}", a.addr),
        "connect    ok".to_string(),
        format!("auth       ok: user {OWNER} by session"),
        "verdict    proxied".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} missing in:\n{text}");
    }
    assert!(
        !text.contains("s3cr3t-agent-token"),
        "a secret field is masked:\n{text}"
    );
    assert!(
        !text.contains(OWNER_SESSION),
        "the cookie is not echoed:\n{text}"
    );
    assert_eq!(a.count(), 0, "explain never proxies");

    let (code, text) = explain(
        &cfg,
        &[&url(ID_A), "--cookie", &format!("session={OTHER_SESSION}")],
    );
    assert_eq!(code, 1);
    assert!(text.contains("refused: 403"), "{text}");

    let (code, text) = explain(&cfg, &[&url(ID_B), "--cookie", &owner]);
    assert_eq!(code, 1);
    assert!(text.contains("connect    failed"), "{text}");

    let (code, text) = explain(&cfg, &[&format!("http://ws-nope.{DOMAIN}/")]);
    assert_eq!(code, 1);
    assert!(text.contains("400 bad_id"), "{text}");
}
