//! The Redis route store and its cache: single-flight misses, invalidation, TTL, outages.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_key_cost_one_redis_call() {
    let w = World::start("[cache]\nttl_ms = 60000\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let before = w.redis.calls("hgetall");
    let host = w.gw.ws_host(ID_A);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (addr, host) = (w.gw.addr, host.clone());
        tasks.push(tokio::spawn(async move {
            let req = format!(
                "GET / HTTP/1.1\r\nHost: {host}\r\nCookie: session={OWNER_SESSION}\r\nConnection: close\r\n\r\n"
            );
            raw(addr, req.as_bytes()).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    // One per key, however many requests: the workspace record and the owner's session.
    assert_eq!(w.redis.calls("hgetall") - before, 2);
    assert_eq!(w.a.count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_message_moves_a_workspace_at_once() {
    // A long TTL: only the message can explain the move.
    let w = World::start("[cache]\nttl_ms = 60000\nnegative_ttl_ms = 60000\n").await;
    w.redis.wait_for_subscriber("edgegate:invalidate");
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    assert_eq!(
        w.gw.get(&host, "/", &[]).await.header("x-upstream"),
        Some("upstream-a")
    );

    w.redis.workspace(ID_A, &w.b.addr.to_string());
    assert_eq!(
        w.gw.get(&host, "/", &[]).await.header("x-upstream"),
        Some("upstream-a"),
        "cached until invalidated"
    );
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    let moved = eventually(Duration::from_secs(1), || async {
        w.gw.get(&host, "/", &[]).await.header("x-upstream") == Some("upstream-b")
    })
    .await;
    assert!(moved, "the next requests reach the new backend");

    // A negative entry is dropped the same way.
    let r = w.gw.get(&w.gw.ws_host(ID_B), "/", &[]).await;
    assert_eq!(r.status, 404);
    w.redis.workspace(ID_B, &w.b.addr.to_string());
    w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_B}"));
    let found = eventually(Duration::from_secs(1), || async {
        w.gw.get(&w.gw.ws_host(ID_B), "/", &[]).await.status == 200
    })
    .await;
    assert!(found);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_message_a_moved_workspace_is_reached_after_the_default_ttl() {
    let w = World::start("").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    assert_eq!(
        w.gw.get(&host, "/", &[]).await.header("x-upstream"),
        Some("upstream-a")
    );
    w.redis.workspace(ID_A, &w.b.addr.to_string());
    let started = std::time::Instant::now();
    // Default TTL is 1 s; allow scheduling slack on a loaded CI machine.
    let moved = eventually(Duration::from_secs(3), || async {
        w.gw.get(&host, "/", &[]).await.header("x-upstream") == Some("upstream-b")
    })
    .await;
    assert!(moved, "not moved after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_starts_without_redis_answers_503_and_recovers_when_redis_comes() {
    let mut redis = Redis::not_started();
    let a = upstream("a").await;
    let app = upstream("app").await;
    let gw = Gateway::start(&config_text(free_port(), redis.port, app.addr, ""));
    let r = gw.get(&gw.ws_host(ID_A), "/", &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.error_code(), "store_unavailable");
    assert!(r.header("retry-after").is_some());
    // Routes that need no Redis keep working.
    assert_eq!(gw.get(&gw.app_host(), "/", &[]).await.status, 200);

    redis.spawn();
    redis.sessions();
    redis.workspace(ID_A, &a.addr.to_string());
    let ok = eventually(Duration::from_secs(5), || async {
        gw.get(&gw.ws_host(ID_A), "/", &[]).await.status == 200
    })
    .await;
    assert!(ok, "requests succeed within 5 s of Redis coming up");
    assert!(a.count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived_without_restarting_the_gateway() {
    let mut w = World::start("[cache]\nttl_ms = 100\nnegative_ttl_ms = 100\n").await;
    w.redis.workspace(ID_A, &w.a.addr.to_string());
    let host = w.gw.ws_host(ID_A);
    assert_eq!(w.gw.get(&host, "/", &[]).await.status, 200);

    w.redis.stop();
    let down = eventually(Duration::from_secs(3), || async {
        w.gw.get(&host, "/", &[]).await.status == 503
    })
    .await;
    assert!(down, "an uncached lookup with Redis down is 503");

    w.redis.spawn();
    w.redis.sessions();
    w.redis.workspace(ID_A, &w.b.addr.to_string());
    let back = eventually(Duration::from_secs(5), || async {
        w.gw.get(&host, "/", &[]).await.header("x-upstream") == Some("upstream-b")
    })
    .await;
    assert!(back, "reconnected within 5 s");
}

/// A grant's life is extended by its expiry alone, never by writing it back: a grant the app
/// deleted (revoked) after the gateway read it stays deleted. (The code exchange used to
/// rewrite the grant it had read, which brought back one revoked in between.)
#[test]
fn extending_a_record_never_brings_back_a_deleted_one() {
    use redis::Commands;
    let redis = Redis::start();
    let app: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let text = config_text(free_port(), redis.port, app, "");
    let config = edgegate::config::Config::parse(&text).expect("config");
    let runtime = edgegate::route::store::RedisRuntime::new().expect("runtime");
    let metrics = std::sync::Arc::new(edgegate::metrics::Metrics::new().expect("metrics"));
    let store =
        edgegate::route::store::build(&config, Some(&runtime), metrics, None).expect("store");
    let handle = runtime.handle().expect("the Redis runtime");
    redis.hset("grant:x", &[("kind", "session"), ("user", "alice")]);
    let mut conn = redis.conn();
    assert!(handle
        .block_on(store.expire("grant:x", 600))
        .expect("expire"));
    let ttl: i64 = conn.ttl("grant:x").expect("ttl");
    assert!((590..=600).contains(&ttl), "its expiry is set: {ttl}");
    let _: i64 = conn.del("grant:x").expect("del");
    assert!(!handle
        .block_on(store.expire("grant:x", 600))
        .expect("expire"));
    let exists: bool = conn.exists("grant:x").expect("exists");
    assert!(!exists, "a deleted grant stays deleted");
}
